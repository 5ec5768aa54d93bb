"""Environment overrides: NOMADE_SECTION__KEY sets any setting for the daemons and nomadectl,
checked as the file is, a bad or unknown one refused in one line naming the variable; the hooks,
whose environment a job's user sets, never read them.
"""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner
from clusterlib import free_port
from test_hooks import Site, slurm_env, world  # noqa: F401  (world: a fixture)
from test_store_outages import Daemon

import nomadectl as ctl
from nodeagent import cli as agentcli
from nomade_common import config
from nomade_common.errors import ConfigError


def loaded(tmp_path, env: dict[str, str], text: str = "") -> config.Config:
    path = tmp_path / "nomade.toml"
    path.write_text(text)
    return config.load(str(path), env)


@pytest.mark.parametrize(
    "variable, value, key, want",
    [
        ("NOMADE_AGGREGATOR__SAMPLES_RAW_RETENTION_DAYS", "7", None, 7.0),
        ("NOMADE_COLLECTORS__GPU__INTERVAL_SECONDS", "10", None, 10.0),
        ("NOMADE_COLLECTORS__SCRATCH__ENABLED", "true", None, True),
        ("NOMADE_SECURITY__ADMIN_USERS", '["alice", "bob"]', None, ["alice", "bob"]),
        ("NOMADE_AGGREGATOR__DATABASE", "/srv/nomade/db.sqlite", None, "/srv/nomade/db.sqlite"),
        ("NOMADE_GENERAL__CLUSTER_NAME", '"big one"', None, "big one"),
        ("NOMADE_GENERAL__CLUSTER_NAME", "2024", None, "2024"),  # a string setting: as written
        ("NOMADE_GENERAL__CLUSTER_NAME", "inf", None, "inf"),
        ("NOMADE_MODELS__WARN_THRESHOLD", "0.25", None, 0.25),
        ("NOMADE_AGGREGATOR__MAX_JOB_NODES", "5000", None, 5000),
        ("nomade_agent__interval_seconds".upper(), "2.5", None, 2.5),
        # a design key in a variable: read as NØMADE's own
        ("NOMADE_PREDICTION__RETRAIN_INTERVAL_DAYS", "2", "models.retrain_interval_hours", 48.0),
    ],
)
def test_a_variable_sets_its_setting(tmp_path, variable, value, key, want):
    cfg = loaded(tmp_path, {variable: value})
    key = key or variable[len("NOMADE_") :].lower().replace("__", ".")
    got = config.setting(cfg, key)
    assert got == want and type(got) is type(want)


def test_the_environment_overrides_the_file_and_the_rest_of_the_file_stays(tmp_path):
    text = "[agent]\ninterval_seconds = 30\nheartbeat_seconds = 7\n"
    cfg = loaded(tmp_path, {"NOMADE_AGENT__INTERVAL_SECONDS": "3"}, text)
    assert (cfg.agent.interval_seconds, cfg.agent.heartbeat_seconds) == (3.0, 7.0)


@pytest.mark.parametrize(
    "variable, value, why",
    [
        (
            "NOMADE_AGENT__INTERVAL_SECONDS",
            "fast",
            "[agent.interval_seconds]: expected float, got str",
        ),
        (
            "NOMADE_AGGREGATOR__NODE_DOWN_SECONDS",
            "-1",
            "[aggregator.node_down_seconds]: must be between 5 and 86400, got -1",
        ),
        ("NOMADE_AGENT__RESEND_SECONDS", "nan", "must be finite"),
        ("NOMADE_SECURITY__ADMIN_USERS", "alice", "expected list, got str"),
        ("NOMADE_SECURITY__ADMIN_USERS", "[1, 2]", "expected a list of strings"),
        ("NOMADE_COLLECTORS__SCRATCH__ENABLED", "yes", "expected bool, got str"),
        ("NOMADE_SECURITY__CURVE", "maybe", "[security.curve]: must be one of on, rollout, off"),
        ("NOMADE_AGGREGATOR__LISTEN", "localhost:1", "[aggregator.listen]: expected a ZeroMQ"),
        (
            "NOMADE_AGENT__INTERVALL_SECONDS",
            "3",
            "no setting agent.intervall_seconds by that name "
            "(did you mean NOMADE_AGENT__INTERVAL_SECONDS?)",
        ),
        ("NOMADE_FOO__BAR", "1", "no setting foo.bar by that name (docs/configuration.md"),
        ("NOMADE_AGENT____NODE", "x", "no setting"),
        ("NOMADE_COLLECTORS__GPU", "10", "names the table [collectors.gpu], not a setting"),
        ("NOMADE_DASHBOARD__PORT", "8080", "[dashboard]: NØMADE has no dashboard yet"),
        (
            "NOMADE_PREDICTION__HEALTH_THRESHOLD",
            "1.5",
            "[prediction.health_threshold]: read as models.warn_threshold (1 - health_threshold)"
            ": must be between 0.001 and 0.999",
        ),
    ],
)
def test_a_bad_or_unknown_variable_is_one_line_naming_it(tmp_path, variable, value, why):
    with pytest.raises(ConfigError) as err:
        loaded(tmp_path, {variable: value})
    line = str(err.value)
    assert line.startswith(f"${variable}") and why in line and "\n" not in line, line


def test_variables_without_a_double_underscore_are_not_settings(tmp_path):
    env = {"NOMADE_CONFIG": "/elsewhere.toml", "NOMADE_TEST_COMMAND": "1", "NOMADE_X": "y"}
    assert loaded(tmp_path, env).agent == config.Config().agent


def test_both_a_setting_and_the_design_key_read_as_it_is_refused(tmp_path):
    env = {"NOMADE_MODELS__WARN_THRESHOLD": "0.4", "NOMADE_PREDICTION__HIGH_RISK_THRESHOLD": "0.3"}
    with pytest.raises(ConfigError, match="models.warn_threshold, which is also set: keep one"):
        loaded(tmp_path, env)


def test_without_the_environment_given_the_variables_are_not_read(tmp_path, monkeypatch):
    """What is not a daemon or nomadectl loads the file alone, whatever the environment says."""
    monkeypatch.setenv("NOMADE_AGENT__SPOOL_DIR", "/tmp/elsewhere")
    monkeypatch.setenv("NOMADE_NO__SUCH", "1")
    path = tmp_path / "nomade.toml"
    path.write_text('[agent]\nspool_dir = "/var/spool/site"\n')
    assert config.load(str(path)).agent.spool_dir == "/var/spool/site"


# -- the programs that read them, and the hooks that do not --------------------------------------
def test_nomadectl_takes_the_variables_and_refuses_a_bad_one_in_one_line(tmp_path):
    path = tmp_path / "nomade.toml"
    path.write_text(
        f'[general]\ndata_dir = "{tmp_path}"\n[security]\nkeys_dir = "{tmp_path}/keys"\n'
    )
    run = CliRunner()
    db = tmp_path / "elsewhere.db"
    env = {"NOMADE_AGGREGATOR__DATABASE": str(db)}
    assert run.invoke(ctl.main, ["--config", str(path), "init"], env=env).exit_code == 0
    assert db.exists() and not (tmp_path / "nomade.db").exists()
    bad = run.invoke(ctl.main, ["--config", str(path), "jobs"], env={"NOMADE_JOBS__LIMIT": "5"})
    assert bad.exit_code == 1
    assert bad.output.strip().splitlines() == [
        "Error: $NOMADE_JOBS__LIMIT: no setting jobs.limit by that name "
        "(docs/configuration.md lists the settings)"
    ]


def test_nomade_agent_refuses_a_bad_variable_in_one_line_and_exits_2(tmp_path):
    path = tmp_path / "nomade.toml"
    path.write_text("")
    env = {"NOMADE_AGENT__INTERVAL_SECONDS": "0"}
    umask = os.umask(0o022)  # the agent sets its own, for this whole process
    try:
        result = CliRunner().invoke(agentcli.main, ["--config", str(path), "--once"], env=env)
    finally:
        os.umask(umask)
    assert result.exit_code == 2
    assert result.output.strip() == (
        "nomade-agent: $NOMADE_AGENT__INTERVAL_SECONDS [agent.interval_seconds]: "
        "must be between 1 and 3600, got 0"
    )


def test_nomade_aggregator_listens_where_a_variable_says(tmp_path, monkeypatch):
    d = Daemon(tmp_path, tmp_path / "data")
    port = free_port()
    monkeypatch.setenv("NOMADE_AGGREGATOR__HTTP_LISTEN", f"127.0.0.1:{port}")
    monkeypatch.setenv("NOMADE_PREDICTION__RETRAIN_INTERVAL_DAYS", "0")
    d.url = f"http://127.0.0.1:{port}"
    try:
        d.start()
        assert d.health() == 200
        log = d.log()
        assert "$NOMADE_PREDICTION__RETRAIN_INTERVAL_DAYS [prediction.retrain_interval_days]" in log
        assert "read as models.retrain_interval_hours = 0" in log
    finally:
        d.close()


def test_the_hooks_ignore_the_variables_a_jobs_user_sets(world):  # noqa: F811
    """TaskProlog runs in the job's environment, which its user controls; the Prolog in
    slurmd's.  Neither reads NOMADE_ variables: what install-hooks wrote is what they do."""
    site = Site(world, task_notice=False)
    elsewhere = world / "elsewhere"
    elsewhere.mkdir(mode=0o777)
    planted = {
        "NOMADE_HOOKS__TASK_NOTICE": "true",
        "NOMADE_AGENT__SPOOL_DIR": str(elsewhere),
        "NOMADE_HOOKS__STATE_DIR": str(elsewhere),
        "NOMADE_CONFIG": str(elsewhere / "nomade.toml"),
    }
    (elsewhere / "nomade.toml").write_text("[hooks]\ntask_notice = true\n")
    env = {**slurm_env("taskprolog-node1-batch"), **planted}
    proc, _ = site.run("taskprolog", env, user="alice")
    assert proc.returncode == 0 and proc.stdout == b""
    env = {**slurm_env("prolog-node1"), **planted}
    proc, _ = site.run("prolog", env)
    assert proc.returncode == 0
    inbox = site.spool / env["SLURMD_NODENAME"] / "inbox"
    assert len(os.listdir(inbox)) == 1
    assert sorted(os.listdir(elsewhere)) == ["nomade.toml"]
    assert json.loads((inbox / os.listdir(inbox)[0]).read_text())["job_id"] == 23


@pytest.mark.parametrize(
    "text",
    ["[general]\ncluster_name = 1" + "9" * 5000, "x = " + "[" * 5000],
    ids=["integer-of-5000-digits", "nested-5000-deep"],
)
def test_a_file_python_cannot_read_as_toml_is_one_line(text):
    with pytest.raises(ConfigError) as exc:
        config.parse(text, "/etc/nomade/nomade.toml")
    assert str(exc.value).startswith("/etc/nomade/nomade.toml: not valid TOML (")
    assert "\n" not in str(exc.value)


def test_a_variable_python_cannot_read_as_toml_is_one_line():
    with pytest.raises(ConfigError) as exc:
        config.parse("", "f.toml", {"NOMADE_AGENT__INTERVAL_SECONDS": "9" * 5000})
    assert "$NOMADE_AGENT__INTERVAL_SECONDS" in str(exc.value) and "\n" not in str(exc.value)
