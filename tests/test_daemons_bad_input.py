"""Bad input never reaches a user as a traceback, and never loses what was already stored."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import nomadectl as ctl
from aggregator import store
from aggregator.daemon.liveness import NodeLife, tick
from aggregator.jobs.reconcile import Reconciler
from aggregator.store import Ingest
from nomade_common import config, keys

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("program", ["nomade-aggregator", "nomade-agent"])
def test_a_corrupt_config_stops_a_daemon_with_one_line_naming_file_and_key(tmp_path, program):
    bad = tmp_path / "nomade.toml"
    bad.write_text("[agent]\ninterval_seconds = 'often'\n")
    proc = subprocess.run(
        [str(BIN / program), "--config", str(bad)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"{program}: {bad} [agent.interval_seconds]: expected float, got str"]


def test_nomadectl_reports_a_corrupt_config_in_one_line(tmp_path):
    bad = tmp_path / "nomade.toml"
    bad.write_text("[general\n")
    result = CliRunner().invoke(ctl.main, ["--config", str(bad), "status"])
    assert result.exit_code == 1
    assert result.output.strip().startswith(f"Error: {bad}: not valid TOML")
    assert "Traceback" not in result.output


def test_nomadectl_without_a_database_says_so(tmp_path):
    cfg = tmp_path / "nomade.toml"
    cfg.write_text(f'[general]\ndata_dir = "{tmp_path}/data"\n')
    result = CliRunner().invoke(ctl.main, ["--config", str(cfg), "jobs"])
    assert result.exit_code == 1 and "no database yet (run nomadectl init)" in result.output


def test_a_missing_sacct_leaves_jobs_pending_then_unreconciled_and_keeps_their_data(
    tmp_path, caplog
):
    cfg = config.parse(
        f'[general]\ndata_dir = "{tmp_path}"\n[aggregator]\nsacct = "{tmp_path}/no-sacct"\n'
        "reconcile_attempts = 2\nreconcile_delay_seconds = 1.0\n"
    )
    writer = store.Writer(cfg.database)
    writer.start()
    ing = Ingest("c")
    writer.call(
        lambda c: ing.job_start(c, {"job_id": 5, "submit_time": 10.0, "user": "alice"}, None, 10.0)
    )
    writer.call(lambda c: ing.job_end(c, {"job_id": 5}, 0.0, 20.0))
    rec = Reconciler(store.connect(cfg.database), writer, ing, cfg.aggregator)
    with caplog.at_level(logging.WARNING, logger="nomade.reconcile"):
        rec.run_once(now=21.0)
        rec.run_once(now=1e12)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "cannot ask sacct" in warnings[0] and "no-sacct" in warnings[0]
    row = writer.call(
        lambda c: c.execute("SELECT user, reconcile, reconcile_attempts FROM jobs").fetchone()
    )
    assert tuple(row) == ("alice", "unreconciled", 2)
    writer.stop()


def test_an_unreadable_hook_report_is_set_aside_and_the_good_ones_are_read(tmp_path):
    from nodeagent.agent import Agent

    cfg = config.parse(
        f'[agent]\nspool_dir = "{tmp_path}/spool"\ncgroup_root = "{tmp_path}/cg"\n'
        f'proc_root = "{tmp_path}/proc"\n'
    )
    agent = Agent(cfg, node="n1")
    (agent.inbox / "1-5-start.json").write_text("{not json\n")
    (agent.inbox / "2-6-start.json").write_text(
        json.dumps({"event": "start", "job_id": 6, "t": 1.0}) + "\n"
    )
    agent.read_inbox(0.0)
    assert (agent.inbox / "bad" / "1-5-start.json").exists()
    assert list(agent.inbox.glob("*.json")) == []
    assert [r[1] for r in agent.outbox.pending()] == ["job_event"]
    agent.close()


def test_a_report_still_being_written_waits_and_one_left_half_written_is_set_aside(tmp_path):
    """The hooks write a report under its final name in one write, without a rename: the agent
    takes it only once its closing newline is there."""
    from nodeagent.agent import Agent
    from nomade_common.reportdir import INCOMPLETE_GRACE_SECONDS

    cfg = config.parse(
        f'[agent]\nspool_dir = "{tmp_path}/spool"\ncgroup_root = "{tmp_path}/cg"\n'
        f'proc_root = "{tmp_path}/proc"\n'
    )
    agent = Agent(cfg, node="n1")
    line = json.dumps({"event": "start", "job_id": 7, "t": 1.0})
    young, old = agent.inbox / "1-7-start.json", agent.inbox / "2-8-start.json"
    young.write_text(line[:20])
    old.write_text('{"event": "start", "job_id": 8')
    past = time.time() - INCOMPLETE_GRACE_SECONDS - 1
    os.utime(old, (past, past))
    agent.read_inbox(0.0)
    assert young.exists() and agent.outbox.pending() == []
    assert (agent.inbox / "bad" / old.name).exists()
    young.write_text(line + "\n")
    agent.read_inbox(0.0)
    assert not young.exists()
    assert [r[1] for r in agent.outbox.pending()] == ["job_event"]
    agent.close()


def test_the_epilogs_report_removes_the_jobs_verdict_and_warning(tmp_path):
    """The Epilog starts no process: the agent removes the verdict and the warning lines (left
    for TaskProlog) when it takes the job's end report."""
    from nodeagent.agent import Agent

    cfg = config.parse(
        f'[agent]\nspool_dir = "{tmp_path}/spool"\ncgroup_root = "{tmp_path}/cg"\n'
        f'proc_root = "{tmp_path}/proc"\n'
    )
    agent = Agent(cfg, node="n1")
    for job in (41, 42):
        agent.keep_verdict(
            {
                "job_id": job,
                "user_id": os.getuid(),
                "warned": True,
                "lines": [f"NØMADE: job {job}"],
                "p_fail": 0.9,
            }
        )
    jobs = agent.spool / "jobs"
    assert {p.name for p in jobs.iterdir()} == {"41", "42"}
    (agent.inbox / "1-41-end.json").write_text(json.dumps({"event": "end", "job_id": 41}) + "\n")
    agent.read_inbox(0.0)
    assert {p.name for p in jobs.iterdir()} == {"42"}
    assert {p.name for p in agent.verdicts.iterdir()} == {"42.json"}
    agent.close()


def test_a_start_report_gives_the_jobs_user_a_wait_fifo_of_their_own(tmp_path):
    """TaskProlog runs as the job's user and waits for the verdict on wait/<uid>: a FIFO only
    that user can open (nobody else can write to it and end the wait early).  It is made at the
    user's first start report, kept for later jobs, and swept after a day without one."""
    from nodeagent.agent import Agent

    cfg = config.parse(
        f'[agent]\nspool_dir = "{tmp_path}/spool"\ncgroup_root = "{tmp_path}/cg"\n'
        f'proc_root = "{tmp_path}/proc"\n'
    )
    agent = Agent(cfg, node="n1")
    starts = [
        ("1", 41, "2001"),
        ("2", 42, "2002"),
        ("3", 43, "2001"),
        ("4", 44, ""),
        ("6", 46, "²"),
    ]
    for name, job, uid in starts:
        report = {"event": "start", "job_id": job, "t": 1.0, "uid": uid}
        (agent.inbox / f"{name}-{job}-start.json").write_text(json.dumps(report) + "\n")
    agent.read_inbox(0.0)
    wait = agent.spool / "wait"
    assert sorted(p.name for p in wait.iterdir()) == ["2001", "2002"]
    for uid in (2001, 2002):
        st = (wait / str(uid)).lstat()
        assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == uid
    assert stat.S_IMODE(wait.stat().st_mode) == 0o711 and wait.stat().st_uid == 0
    day_ago = time.time() - 86400 - 60
    for uid in ("2001", "2002"):
        os.utime(wait / uid, (day_ago, day_ago))
    (agent.inbox / "5-45-start.json").write_text(
        json.dumps({"event": "start", "job_id": 45, "t": 2.0, "uid": "2001"}) + "\n"
    )
    agent.read_inbox(0.0)  # alice is back: her FIFO is kept
    agent.sweep(time.time())
    assert [p.name for p in wait.iterdir()] == ["2001"]
    agent.close()


def test_an_agent_tightens_the_spool_an_older_version_left_open(tmp_path):
    """Before 0.2 the node's spool was 0755, the outbox 0644 and the wait FIFO 0666 (any user
    could read every job's outbox and flood every job's wait)."""
    from nodeagent.agent import Agent

    cfg = config.parse(
        f'[agent]\nspool_dir = "{tmp_path}/spool"\ncgroup_root = "{tmp_path}/cg"\n'
        f'proc_root = "{tmp_path}/proc"\n'
    )
    node = tmp_path / "spool" / "n1"
    for sub in ("inbox", "verdicts", "jobs"):
        (node / sub).mkdir(parents=True, mode=0o755)
    os.mkfifo(node / "wait", 0o666)
    (node / "outbox.db").touch(mode=0o644)
    (node / "verdicts" / "7.json").touch(mode=0o644)
    for path in (node, node / "wait", node / "outbox.db", node / "verdicts" / "7.json"):
        os.chmod(path, 0o777 if path.is_dir() else 0o666 if path.is_fifo() else 0o644)
    agent = Agent(cfg, node="n1")
    agent.enqueue("job_event", {"event": "start", "job_id": 5, "t": 1.0})
    modes = {str(p.relative_to(node)): stat.S_IMODE(p.lstat().st_mode) for p in node.rglob("*")}
    modes["."] = stat.S_IMODE(node.stat().st_mode)
    assert modes == {
        ".": 0o711,
        "inbox": 0o700,
        "verdicts": 0o711,
        "jobs": 0o711,
        "wait": 0o711,
        "outbox.db": 0o600,
        "outbox.db-wal": 0o600,
        "outbox.db-shm": 0o600,
        "verdicts/7.json": 0o600,
    }
    agent.close()


def test_a_warning_reaches_the_jobs_output_without_terminal_control_characters(tmp_path):
    """A job name is the user's to choose, and its warning is printed into the job's output,
    which a terminal shows: escape sequences and bidirectional overrides are blanked."""
    from nodeagent.agent import Agent

    cfg = config.parse(
        f'[agent]\nspool_dir = "{tmp_path}/spool"\ncgroup_root = "{tmp_path}/cg"\n'
        f'proc_root = "{tmp_path}/proc"\n'
    )
    agent = Agent(cfg, node="n1")
    line = "NØMADE: job 9 (\x1b]0;owned\x07\x1b[2J\u202eevil) may fail\nexport X=1\r"
    agent.keep_verdict({"job_id": 9, "user_id": 2001, "warned": True, "lines": [line]})
    warning = agent.spool / "jobs" / "9"
    assert warning.read_text(encoding="utf-8") == (
        "NØMADE: job 9 ( ]0;owned  [2J evil) may fail export X=1 \n"
    )
    st = warning.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (2001, 0o400)
    verdict = (agent.verdicts / "9.json").stat()
    assert (verdict.st_uid, stat.S_IMODE(verdict.st_mode)) == (0, 0o600)
    agent.close()


def test_liveness_marks_silent_nodes_down_and_back_up():
    nodes = [NodeLife("a", 100.0), NodeLife("b", 10.0)]
    nodes, events = tick(nodes, 120.0, down_after=60)
    assert events == [("b", "node_down")] and [n.state for n in nodes] == ["up", "down"]
    nodes = [NodeLife("b", 119.0, "down")]
    assert tick(nodes, 120.0, down_after=60)[1] == [("b", "node_up")]
    assert tick([NodeLife("a", 100.0)], 120.0, down_after=60)[1] == []


def test_the_agent_marks_the_aggregator_offline_when_nothing_is_acknowledged(tmp_path):
    from nodeagent.agent import Agent

    cfg = config.parse(
        f'[agent]\nspool_dir = "{tmp_path}/spool"\ncgroup_root = "{tmp_path}/cg"\n'
        f'proc_root = "{tmp_path}/proc"\nresend_seconds = 2.0\n'
    )
    agent = Agent(cfg, node="n1")
    agent._first_sent = {7: 100.0}  # envelope 7 went out at t=100 and was never acknowledged
    assert not agent.mark_offline(105.0) and not (agent.spool / "offline").exists()
    assert agent.mark_offline(107.0) and (agent.spool / "offline").exists()
    agent._first_sent.pop(7)  # acknowledged at last
    assert not agent.mark_offline(108.0) and not (agent.spool / "offline").exists()
    agent.close()


def test_an_aggregator_never_reached_is_marked_offline(tmp_path):
    """Nothing listening: ZeroMQ sends nothing at all (no connection), which counts as well."""
    from nodeagent.agent import Agent

    cfg = config.parse(
        f'[agent]\nspool_dir = "{tmp_path}/spool"\ncgroup_root = "{tmp_path}/cg"\n'
        f'proc_root = "{tmp_path}/proc"\nresend_seconds = 1.0\n'
        'aggregator = "tcp://127.0.0.1:9"\n'
        f'[security]\nkeys_dir = "{tmp_path}/keys"\n'
    )
    for name in ("server", "n1"):  # CURVE, as always: the node's pair and the server's key
        keys.make_pair(cfg.security.keys_dir, name)
    agent = Agent(cfg, node="n1")
    agent.connect()
    agent.enqueue("job_event", {"event": "start", "job_id": 5, "t": 1.0})
    agent.pump(10.0)
    assert agent.mark_offline(14.0) and (agent.spool / "offline").exists()
    agent.close()
