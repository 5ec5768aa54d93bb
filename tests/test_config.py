import pytest

from nomade_common import config
from nomade_common.errors import ConfigError


def test_example_config_in_slurm_conf_is_valid_and_matches_defaults():
    from conftest import ROOT

    cfg = config.load(str(ROOT / "slurm-conf" / "nomade.toml"))
    default = config.Config()
    assert (cfg.agent, cfg.aggregator, cfg.hooks) == (
        default.agent,
        default.aggregator,
        default.hooks,
    )


@pytest.mark.parametrize(
    "text, where, why",
    [
        ("[agent]\nintervall = 2\n", "[agent.intervall]", "unknown setting"),
        ("[agnet]\n", "[agnet]", "unknown section"),
        (
            "[agent]\ninterval_seconds = 'fast'\n",
            "[agent.interval_seconds]",
            "expected float, got str",
        ),
        ("[agent]\ninterval_seconds = 0.1\n", "[agent.interval_seconds]", "between 1 and 3600"),
        ("[aggregator]\nlisten = 'localhost:1'\n", "[aggregator.listen]", "ZeroMQ address"),
        ("[agent\n", "nomade.toml", "not valid TOML"),
    ],
)
def test_a_bad_config_names_the_file_and_the_key(tmp_path, text, where, why):
    path = tmp_path / "nomade.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        config.load(str(path))
    assert str(path) in str(err.value) and where in str(err.value) and why in str(err.value)


def test_a_named_config_that_does_not_exist_is_an_error_not_defaults(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        config.load(str(tmp_path / "missing.toml"))


def test_integers_are_accepted_where_seconds_are_floats():
    assert config.parse("[agent]\ninterval_seconds = 2\n").agent.interval_seconds == 2.0


# -- every number and address has bounds, and a value beyond them names its key ------------------

NUMBERS = config.number_settings(config.Config())


def _load(tmp_path, key: str, literal: str, extra: str = ""):
    """Load a file that sets KEY (dotted, e.g. collectors.disk.interval_seconds) to the TOML
    LITERAL; the ConfigError's message, or None when it loads."""
    table, _, name = key.rpartition(".")
    path = tmp_path / "nomade.toml"
    path.write_text(f"[{table}]\n{name} = {literal}\n{extra}")
    try:
        config.load(str(path))
    except ConfigError as exc:
        assert str(exc).startswith(f"{path} [{key}]: "), str(exc)
        return str(exc)
    return None


def _outside(low, high):
    if isinstance(low, int) and isinstance(high, int):
        return [low - 1, high + 1]
    return [low / 2 if low > 0 else -1.0, high * 2.0]


def test_every_int_and_float_setting_has_a_range_that_holds_its_default():
    assert len(NUMBERS) > 40 and "collectors.scratch.large_bytes" in NUMBERS
    for key, default in NUMBERS.items():
        bounds = config.range_of(key)
        assert bounds is not None, f"{key} has no range in config._RANGES"
        assert bounds[0] <= default <= bounds[1], key


@pytest.mark.parametrize("key", sorted(NUMBERS))
def test_a_number_outside_its_range_or_not_finite_is_refused_naming_the_key(tmp_path, key):
    low, high = config.range_of(key)
    for bound in (low, high):
        literal = repr(float(bound)) if isinstance(NUMBERS[key], float) else str(bound)
        assert _load(tmp_path, key, literal) is None, (key, bound)
    for value in _outside(low, high):
        why = _load(tmp_path, key, repr(value))
        assert why is not None and "must be between" in why, (key, value)
    for literal in ("nan", "inf", "-inf", "+nan"):
        why = _load(tmp_path, key, literal)
        assert why is not None, (key, literal)
        if isinstance(NUMBERS[key], float):
            assert f"must be finite, got {literal.lstrip('+')}" in why


def test_the_message_shows_the_range_and_the_value():
    with pytest.raises(ConfigError) as err:
        config.parse("[aggregator]\nnode_down_seconds = -1\n", "n.toml")
    assert str(err.value) == (
        "n.toml [aggregator.node_down_seconds]: must be between 5 and 86400, got -1"
    )
    with pytest.raises(ConfigError) as err:
        config.parse("[collectors.scratch]\nlarge_bytes = " + "9" * 500 + "\n", "n.toml")
    assert "[collectors.scratch.large_bytes]" in str(err.value) and len(str(err.value)) < 150
    with pytest.raises(ConfigError, match=r"\[agent.resend_seconds\]: must be finite"):
        config.parse("[agent]\nresend_seconds = " + "9" * 400 + "\n")  # no float holds it


@pytest.mark.parametrize(
    "key, value, extra",
    [
        ("agent.aggregator", "tcp://127.0.0.1:99999", ""),
        ("agent.aggregator", "tcp://head:0", ""),
        ("agent.aggregator", "ipc://", ""),
        ("agent.aggregator", "http://head:27010", ""),
        ("aggregator.listen", "tcp://127.0.0.1:65536", ""),
        ("aggregator.listen", "tcp://:27010", ""),
        ("aggregator.listen", "tcp://0.0.0.0:*", ""),
        ("aggregator.listen", "tcp://::1:27010", ""),
        ("aggregator.http_listen", "127.0.0.1:70000", ""),
        ("aggregator.http_listen", "127.0.0.1:0", ""),
        ("aggregator.http_listen", ":27011", ""),
        ("aggregator.http_listen", "127.0.0.1:", ""),
        ("aggregator.http_listen", "127.0.0.1", ""),
        ("aggregator.http_listen", "127.0.0.1:http", ""),
        ("aggregator.http_listen", "[]:27011", ""),
        ("aggregator.http_listen", "::1:27011", ""),
        ("security.plain_listen", "tcp://127.0.0.1:99999", 'curve = "rollout"\n'),
        ("security.plain_listen", "tcp://127.0.0.1:0", 'curve = "on"\n'),
    ],
)
def test_an_impossible_address_is_refused_naming_the_key(tmp_path, key, value, extra):
    why = _load(tmp_path, key, f'"{value}"', extra)
    assert why is not None and repr(value) in why


@pytest.mark.parametrize(
    "text",
    [
        '[aggregator]\nhttp_listen = "[::1]:27011"\nlisten = "tcp://[::1]:1"\n',
        '[aggregator]\nhttp_listen = "head.example.org:65535"\nlisten = "tcp://*:27010"\n',
        '[agent]\naggregator = "ipc:///run/nomade/aggregator.sock"\n',
        '[security]\ncurve = "rollout"\nplain_listen = "tcp://0.0.0.0:27012"\n',
    ],
)
def test_possible_addresses_load(text):
    config.parse(text)


def test_store_synchronous_is_normal_or_full():
    cfg = config.parse('[aggregator]\nstore_synchronous = "full"\n')
    assert cfg.aggregator.store_synchronous == "full"
    with pytest.raises(ConfigError, match=r"\[aggregator.store_synchronous\]: must be one of"):
        config.parse('[aggregator]\nstore_synchronous = "off"\n')


def test_the_defaults_and_an_empty_file_load(tmp_path):
    (tmp_path / "empty.toml").write_text("")
    cfg = config.load(str(tmp_path / "empty.toml"))
    assert config.number_settings(cfg) == NUMBERS
    assert (cfg.agent, cfg.aggregator, cfg.security) == (
        config.Config().agent,
        config.Config().aggregator,
        config.Config().security,
    )
