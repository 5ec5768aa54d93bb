"""The configuration sections and keys that NØMADE's design documents show: each is NØMADE's
own, or read through config.DESIGN_KEYS (moved to the NØMADE key it means, with a notice;
accepted where it asks for what NØMADE always does; refused with a line naming the replacement),
and each row of that table is documented.
"""

from __future__ import annotations

import pytest
from conftest import ROOT

from nomade_common import config
from nomade_common.errors import ConfigError

# Every section and key of the design's configuration example (the prototype's README,
# "Configuration"), as dotted keys; a section alone stands for its table.
DESIGN = [
    "general.cluster_name",
    "general.data_dir",
    "general.log_level",
    "collectors",
    "collectors.disk.enabled",
    "collectors.disk.filesystems",
    "collectors.slurm.enabled",
    "collectors.slurm.partitions",
    "collectors.job_metrics.enabled",
    "collectors.job_metrics.lookback_hours",
    "collectors.job_metrics.min_runtime_seconds",
    "collectors.iostat.enabled",
    "collectors.iostat.devices",
    "collectors.mpstat.enabled",
    "collectors.mpstat.store_per_core",
    "collectors.mpstat.store_summary",
    "collectors.vmstat.enabled",
    "collectors.node_state.enabled",
    "collectors.node_state.nodes",
    "collectors.gpu.enabled",
    "collectors.nfs.enabled",
    "monitor.sample_interval",
    "monitor.nfs_paths",
    "monitor.local_paths",
    "monitor.port",
    "alerts.email_enabled",
    "alerts.email_to",
    "alerts.email_from",
    "alerts.smtp_host",
    "alerts.slack_enabled",
    "alerts.slack_webhook",
    "alerts.disk_warning_percent",
    "alerts.disk_critical_percent",
    "alerts.queue_stuck_days",
    "alerts.gpu_temp_warning",
    "alerts.derivatives.disk_acceleration_warning",
    "alerts.derivatives.queue_acceleration_warning",
    "prediction.enabled",
    "prediction.similarity_threshold",
    "prediction.health_threshold",
    "prediction.retrain_interval_days",
    "dashboard.host",
    "dashboard.port",
]

# A design key moved to NØMADE's: a value in the design's file, and what NØMADE reads.
MOVED = {
    "monitor.sample_interval": ("30", {"agent.interval_seconds": 30.0}),
    "prediction.health_threshold": ("0.25", {"models.warn_threshold": 0.75}),
    "prediction.high_risk_threshold": ("0.35", {"models.warn_threshold": 0.35}),
    "prediction.retrain_interval_days": ("7", {"models.retrain_interval_hours": 168.0}),
    "collectors.slurm.enabled": (
        "false",
        {"collectors.queue.enabled": False, "collectors.partitions.enabled": False},
    ),
    "collectors.job_metrics.enabled": ("false", {"collectors.job_history.enabled": False}),
    "alerts.email_enabled": ("false", {"alerts.email": False}),
    "alerts.slack_enabled": ("false", {"alerts.slack": False}),
}
DOCS = (ROOT / "docs" / "configuration.md").read_text()


def with_key(key: str, literal: str) -> str:
    table, _, name = key.rpartition(".")
    return f"[{table}]\n{name} = {literal}\n"


def nomade_key(key: str) -> bool:
    """Whether KEY is one of NØMADE's own settings or tables."""
    return any(k == key or k.startswith(f"{key}.") for k in config.setting_keys())


@pytest.mark.parametrize("key", DESIGN)
def test_every_key_of_the_design_is_nomades_own_or_has_a_row(key):
    assert nomade_key(key) or config.design_row(key) is not None, key


@pytest.mark.parametrize("key", sorted(config.DESIGN_KEYS))
def test_every_row_is_documented_and_names_what_nomade_does_not_know(key):
    """A row for a key that became NØMADE's own would never be read: remove it (issue 17's
    [alerts] is one such row removed)."""
    table, _, name = key.rpartition(".")
    rows = [line for line in DOCS.splitlines() if line.startswith("| `[")]
    assert any(
        line.startswith(f"| `[{key}]`")
        or (line.startswith(f"| `[{table}]` ") and f"`{name}`" in line.split("|")[1])
        for line in rows
    ), f"{key} has no row in configuration.md's table of the design's keys"
    assert not nomade_key(key), f"{key} is NØMADE's own now: remove its row in DESIGN_KEYS"


@pytest.mark.parametrize("key", sorted(config.DESIGN_KEYS))
def test_every_row_moves_accepts_or_refuses_in_one_line(key):
    row = config.DESIGN_KEYS[key]
    if isinstance(row, config.Refused):
        # as a key set to a value, or as a table (a row covers everything under it)
        for text in [with_key(key, "1")] * ("." in key) + [f"[{key}]\nanything = 1\n"]:
            with pytest.raises(ConfigError) as err:
                config.parse(text, "n.toml")
            assert str(err.value) == f"n.toml [{key}]: {row.why}"
        assert "\n" not in row.why
    elif isinstance(row, config.Kept):
        literal = str(row.value).lower()
        cfg = config.parse(with_key(key, literal), "n.toml")
        assert cfg.notices == [f"n.toml [{key}]: a design key; {row.why}, nothing to set"]
        assert (cfg.agent, cfg.collectors) == (config.Config().agent, config.Config().collectors)
        with pytest.raises(ConfigError, match=rf"\[{key}\]: .* only {literal} is accepted"):
            config.parse(with_key(key, str(not row.value).lower()), "n.toml")
    else:
        literal, want = MOVED[key]
        cfg = config.parse(with_key(key, literal), "n.toml")
        got = {target: config.setting(cfg, target) for target in want}
        assert got == want
        assert all(type(got[k]) is type(want[k]) for k in want)
        assert len(cfg.notices) == 1 and f"n.toml [{key}]: a design key, read as" in cfg.notices[0]
        assert ", ".join(row.to) in cfg.notices[0]


def test_a_design_file_loads_once_its_refused_sections_are_gone():
    """The design's example, less its alert thresholds and Slack URL, [dashboard] and what
    NØMADE refuses, loads; its [alerts] dispatch keys are NØMADE's."""
    text = """
[general]
cluster_name = "mycluster"
[collectors.disk]
enabled = true
filesystems = ["/", "/home"]
[collectors.slurm]
enabled = true
[collectors.job_metrics]
enabled = true
[collectors.mpstat]
enabled = true
store_per_core = true
store_summary = true
[monitor]
sample_interval = 30
[prediction]
enabled = true
health_threshold = 0.4
retrain_interval_days = 7
[alerts]
email_enabled = true
email_to = ["admin@example.edu"]
email_from = "nomade@cluster.example.edu"
smtp_host = "smtp.example.edu"
slack_enabled = false
"""
    cfg = config.parse(text, "n.toml")
    assert cfg.alerts.email and cfg.alerts.email_to == ["admin@example.edu"]
    assert (cfg.alerts.smtp_host, cfg.alerts.slack) == ("smtp.example.edu", False)
    assert cfg.agent.interval_seconds == 30.0
    assert cfg.models.warn_threshold == pytest.approx(0.6)
    assert cfg.models.retrain_interval_hours == 168.0
    assert cfg.collectors.job_history.enabled and cfg.collectors.queue.enabled
    assert len(cfg.notices) == 10


@pytest.mark.parametrize(
    "text, why",
    [
        (
            "[prediction]\nhealth_threshold = 0.3\n[models]\nwarn_threshold = 0.5\n",
            "[prediction.health_threshold]: is read as models.warn_threshold, which is also set",
        ),
        (
            "[prediction]\nhealth_threshold = 0\n",
            "[prediction.health_threshold]: read as models.warn_threshold (1 - health_threshold): "
            "must be between 0.001 and 0.999, got 1",
        ),
        (
            "[monitor]\nsample_interval = 'often'\n",
            "[monitor.sample_interval]: read as agent.interval_seconds: expected float, got str",
        ),
        (
            "[collectors.job_metrics]\nenabled = true\nlookback_hour = 3\n",
            "[collectors.job_metrics.lookback_hour]: unknown in the design's "
            "[collectors.job_metrics] (enabled, lookback_hours, min_runtime_seconds)",
        ),
        ("[alerts.derivatives]\n", "[alerts.derivatives]: trends take their window per query"),
        (
            "[alerts]\nslack_enabled = true\nslack_webhook = 'https://hooks.slack.com/x'\n",
            "[alerts.slack_webhook]: a secret: write slack_webhook in the file "
            "alerts.secrets_file names",
        ),
    ],
)
def test_a_design_key_that_cannot_be_read_names_itself(text, why):
    with pytest.raises(ConfigError) as err:
        config.parse(text, "n.toml")
    assert str(err.value).startswith(f"n.toml {why}")


def test_every_refused_design_key_of_a_file_is_named_at_once():
    # A site's file written from the design documents: one error names every key to change,
    # not one per restart.
    text = (
        "[monitor]\nsample_interval = 10\nport = 5555\n"
        "[alerts]\nemail = false\ngpu_temp_warning = 83\n[alerts.derivatives]\nwindow = 3\n"
        "[dashboard]\nport = 5000\n"
    )
    with pytest.raises(ConfigError) as exc:
        config.parse(text, "/etc/nomade/nomade.toml")
    message = str(exc.value)
    assert message.startswith("/etc/nomade/nomade.toml: 4 design keys not taken: ")
    for key in (
        "[monitor.port]",
        "[alerts.gpu_temp_warning]",
        "[alerts.derivatives]",
        "[dashboard]",
    ):
        assert key in message
    assert "\n" not in message and "sample_interval" not in message  # that one is taken
