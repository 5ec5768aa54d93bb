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
