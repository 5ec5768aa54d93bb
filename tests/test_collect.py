"""Collectors on schedule: the runner, how readings are stored, and the views an admin reads."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
from click.testing import CliRunner
from conftest import ROOT

import nomadectl as ctl
from aggregator import store
from aggregator.daemon.headcollect import HEAD_COLLECTORS
from aggregator.store import Ingest, Rejected, store_collector_status, store_reading
from aggregator.store.sqlite import samples
from aggregator.views import clusterviews
from collectors import registry
from collectors.registry import Collector
from collectors.runner import CollectorError, Scheduler, run_one
from collectors.slurm import sacct, scontrol, squeue
from nomade_common import config, wire
from nomade_common.errors import ParseError

CASES = ROOT / "tests" / "cases"


def cfg_with(text: str = "") -> config.Config:
    return config.parse(text)


# -- the runner --------------------------------------------------------------------------------
def test_a_failing_collector_is_counted_and_never_stops_the_others():
    def broken(cfg, state):
        raise ParseError("iostat -x", 7, "expected a device line")

    def fine(cfg, state):
        state["n"] = state.get("n", 0) + 1
        return [{"record": "x", "n": state["n"]}]

    got, clock = [], [0.0]
    s = Scheduler(
        cfg_with(),
        [Collector("iostat", broken), Collector("vmstat", fine)],
        got.append,
        clock=lambda: clock[0],
    )
    for t in (0.0, 61.0, 122.0):
        clock[0] = t
        s.run_due()
    by = {name: st for name, st in s.status.items()}
    assert by["iostat"].runs == 3 and by["iostat"].failures == 3
    assert "iostat -x:7: expected a device line" in by["iostat"].last_error
    assert by["vmstat"].runs == 3 and by["vmstat"].failures == 0
    assert [r.records[0]["n"] for r in got if r.collector == "vmstat"] == [1, 2, 3]


def test_each_collector_runs_on_its_own_interval_from_the_configuration():
    calls = []

    def read(cfg, state):
        calls.append(1)
        return []

    cfg = cfg_with("[collectors.vmstat]\ninterval_seconds = 10\n")
    clock = [0.0]
    s = Scheduler(
        cfg,
        [Collector("vmstat", read), Collector("mpstat", read)],
        lambda r: None,
        clock=lambda: clock[0],
    )
    for t in range(0, 60, 5):
        clock[0] = float(t)
        s.run_due()
    assert s.status["vmstat"].runs == 6  # 0, 10, ..., 50
    assert s.status["mpstat"].runs == 1  # 60 s default


def test_a_disabled_collector_never_runs_and_an_absent_source_is_skipped_with_its_reason():
    ran = []
    cfg = cfg_with("[collectors.mpstat]\nenabled = false\n")
    s = Scheduler(
        cfg,
        [
            Collector("mpstat", lambda c, st: ran.append("m") or []),
            Collector(
                "gpu", lambda c, st: ran.append("g") or [], absent=lambda c: "no NVIDIA GPU here"
            ),
        ],
        lambda r: None,
    )
    s.run_due()
    assert ran == [] and "mpstat" not in s.status
    assert s.status["gpu"].skipped == "no NVIDIA GPU here" and s.status["gpu"].runs == 0


def test_a_tool_that_fails_gives_one_line_naming_it():
    r = run_one(
        Collector("x", lambda c, s: (_ for _ in ()).throw(CollectorError("iostat not found"))),
        cfg_with(),
        {},
    )
    assert not r.ok and r.error == "iostat not found"
    r = run_one(Collector("y", lambda c, s: 1 / 0), cfg_with(), {})
    assert r.error.startswith("ZeroDivisionError") and "\n" not in r.error


def test_collector_settings_are_validated_with_the_key_named():
    with pytest.raises(config.ConfigError, match=r"collectors\.disk\.filesystem"):
        config.parse("[collectors.disk]\nfilesystem = ['/']\n", "n.toml")
    with pytest.raises(config.ConfigError, match=r"collectors\.queue\.interval_seconds"):
        config.parse("[collectors.queue]\ninterval_seconds = 0.5\n", "n.toml")
    with pytest.raises(config.ConfigError, match=r"collectors\.nope"):
        config.parse("[collectors.nope]\nenabled = true\n", "n.toml")


def test_a_reading_takes_as_long_as_its_read():
    r = run_one(Collector("vmstat", lambda c, s: time.sleep(0.05) or []), cfg_with(), {})
    assert r.ok and r.seconds >= 0.05


# -- the registry ------------------------------------------------------------------------------
def test_the_registry_has_each_configured_collector_with_its_default_interval():
    defaults = config.Config().collectors
    scheduled = registry.scheduled(registry.NODE) + registry.scheduled(registry.HEAD)
    assert {c.name for c in scheduled} == {f.name for f in dataclasses.fields(defaults)}
    for c in scheduled:
        assert c.interval_seconds == getattr(defaults, c.name).interval_seconds, c.name
    assert len(registry.KINDS) == sum(len(c.kinds) for c in registry.COLLECTORS)  # none twice
    assert all(callable(k.parse) for k in registry.KINDS.values())


def test_the_head_side_stores_finished_jobs_as_jobs_rows(monkeypatch):
    text = (ROOT / "tests" / "fixtures" / "slurm" / "22.05" / "sacct-parsable2.txt").read_text()
    monkeypatch.setattr(sacct, "run_tool", lambda argv, timeout: text)
    raw = next(c for c in registry.COLLECTORS if c.name == "job_history")
    bound = next(c for c in HEAD_COLLECTORS if c.name == "job_history")
    rows, state = raw.read(cfg_with(), {}), {}
    jobs = bound.read(cfg_with(), state)
    assert rows and all("JobID" in r for r in rows)
    assert jobs and all("outcome" in j and "JobID" not in j for j in jobs)
    assert "since" in state  # the next run asks sacct from here, not for a day again


# -- storage -----------------------------------------------------------------------------------
def test_readings_keep_the_newest_and_a_history_point_every_interval(db):
    for t in (1000.0, 1100.0, 1700.0, 1650.0, 2400.0):  # 1650 arrives late (a resend)
        db.call(lambda c, t=t: store_reading(c, "node1", "disk", t, 0.01, [{"t": t}], 600.0))
    latest = db.call(lambda c: c.execute("SELECT t, records_json FROM readings_latest").fetchall())
    history = db.call(lambda c: [r[0] for r in c.execute("SELECT t FROM readings ORDER BY t")])
    assert [tuple(r) for r in latest] == [
        (2400.0, json.dumps([{"t": 2400.0}], separators=(",", ":")))
    ]
    assert history == [1000.0, 1700.0, 2400.0]


def test_a_readings_envelope_is_stored_once_and_a_malformed_one_is_rejected(db):
    ing = Ingest("c")
    env = wire.Envelope(
        wire.READINGS,
        "node1",
        3,
        1,
        {"collector": "vmstat", "t": 5.0, "seconds": 1.0, "records": [{"record": "vm"}]},
    )
    assert [db.call(lambda c: ing.apply_envelope(c, env)) for _ in range(2)] == [
        "stored",
        "duplicate",
    ]
    bad = wire.Envelope(wire.READINGS, "node1", 3, 2, {"collector": "vmstat", "records": "x"})
    with pytest.raises(Rejected, match="readings payload"):
        db.call(lambda c: ing.apply_envelope(c, bad))
    assert db.call(lambda c: c.execute("SELECT count(*) FROM readings_latest").fetchone()[0]) == 1


def test_heartbeat_collector_status_shows_in_the_collection_view(db):
    ing = Ingest("c")
    for node, runs, failures, err in (
        ("node1", 10, 0, None),
        ("node2", 10, 5, "iostat exited 1: boom"),
    ):
        hb = wire.Envelope(
            wire.HEARTBEAT,
            node,
            1,
            0,
            {
                "t": 1.0,
                "jobs": [],
                "collectors": {
                    "iostat": [60.0, runs, failures, 100.0, 90.0, err, 1.01, None],
                    "gpu": [30.0, 0, 0, None, None, None, None, "no NVIDIA GPU here"],
                },
            },
        )
        db.call(lambda c, hb=hb: ing.apply_envelope(c, hb))
    rows = {r["collector"]: r for r in db.call(clusterviews.collection)}
    assert rows["iostat"]["runs"] == 20 and rows["iostat"]["success_rate"] == 0.75
    assert rows["iostat"]["last_error"] == "node2: iostat exited 1: boom"
    assert rows["gpu"]["skipped"] == "no NVIDIA GPU here" and rows["gpu"]["skipped_on"] == 2


# -- views over real captures ------------------------------------------------------------------
def _case_records(name: str, parse):
    case = CASES / name
    src = (case / "source").read_text().strip() if (case / "source").exists() else None
    path = ROOT / src if src and not src.startswith("shared:") else case / "input"
    return parse(path.read_text(), name)


def test_the_queue_view_counts_partitions_and_explains_why_jobs_wait(db):
    records = _case_records("slurm-squeue-22.05-nomade-format", squeue.records)
    db.call(lambda c: store_reading(c, "head", "queue", 1795515200.0, 0.1, records, 600.0))
    q = db.call(lambda c: clusterviews.queue(c, now=1795515200.0))
    expected: dict[str, dict[str, int]] = {}
    for r in records:
        p = expected.setdefault(r["partition"], {"RUNNING": 0, "PENDING": 0})
        if r["state"] in p:
            p[r["state"]] += 1
    assert {
        p["partition"]: {"RUNNING": p["running"], "PENDING": p["pending"]} for p in q["partitions"]
    } == expected
    pending = [r for r in records if r["state"] == "PENDING"]
    assert sum(r["jobs"] for r in q["pending_reasons"]) == len(pending) > 0
    assert all(r["reason_text"] for r in q["pending_reasons"])
    waits = [j["wait_seconds"] for j in q["pending"]]
    assert waits == sorted(waits, reverse=True)


def test_nodes_view_puts_slurm_state_beside_the_agent(db):
    records = _case_records("slurm-scontrol-node-22.05-o", scontrol.node_records)
    db.call(lambda c: store_reading(c, "head", "node_state", 100.0, 0.1, records, 600.0))
    db.call(
        lambda c: c.execute(
            "INSERT INTO nodes (node, first_seen, last_seen, state) VALUES ('node1', 1, 95, 'up')"
        )
    )
    v = db.call(lambda c: clusterviews.nodes(c, now=100.0))
    by = {n["node"]: n for n in v["nodes"]}
    assert set(by) == {r["node"] for r in records}
    assert by["node1"]["agent"] == "up" and by["node1"]["agent_seconds_since_seen"] == 5.0
    assert by["node2"]["agent"] is None


def test_status_and_the_views_print_from_a_database_with_readings(tmp_path):
    data = tmp_path / "data"
    cfg_path = tmp_path / "n.toml"
    cfg_path.write_text(
        f'[general]\ndata_dir = "{data}"\n[security]\nkeys_dir = "{tmp_path}/keys"\n'
    )
    run = CliRunner()
    assert run.invoke(ctl.main, ["--config", str(cfg_path), "init"]).exit_code == 0
    conn = store.connect(str(data / "nomade.db"))
    records = _case_records("slurm-squeue-22.05-nomade-format", squeue.records)
    conn.execute("BEGIN")
    store_reading(conn, "head", "queue", 1795515200.0, 0.1, records, 600.0)
    store_reading(
        conn,
        "node1",
        "disk",
        1795515200.0,
        0.1,
        [
            {
                "record": "filesystem",
                "path": "/scratch",
                "size_bytes": 100 << 30,
                "used_bytes": 90 << 30,
                "used_fraction": 0.9,
                "responsive": True,
            },
            {"record": "filesystem", "path": "/nfs/home", "responsive": False},
        ],
        600.0,
    )
    store_collector_status(
        conn, "node1", "node", {"disk": [300.0, 4, 1, 9.0, 9.0, "x", 0.1, None]}, 10.0
    )
    conn.execute("COMMIT")
    out = run.invoke(ctl.main, ["--config", str(cfg_path), "status"]).output
    assert "/scratch" in out and "90.0%" in out and "/nfs/home" in out and "NOT RESPONDING" in out
    assert "debug" in out and "Pending:" in out
    assert "disk" in out and "75% success" in out
    q = run.invoke(ctl.main, ["--config", str(cfg_path), "queue"])
    assert q.exit_code == 0 and "Why jobs wait:" in q.output
    js = run.invoke(ctl.main, ["--config", str(cfg_path), "queue", "--json"])
    assert json.loads(js.output)["pending_reasons"]


def test_collect_once_names_an_unknown_collector(tmp_path):
    result = CliRunner().invoke(ctl.main, ["collect", "--once", "-C", "iostat,nonesuch"])
    assert result.exit_code == 2 and "unknown collector 'nonesuch'" in result.output


def test_a_running_job_without_cpu_progress_is_stuck_and_a_busy_one_is_not(db):
    def setup(c):
        for uid, job, cpu_step in ((1, 101, 0.0), (2, 102, 5.0)):
            c.execute(
                "INSERT INTO jobs (uid, cluster, job_id, user, start_time, created, updated)"
                " VALUES (?, 'c', ?, 'alice', 0, 0, 0)",
                (uid, job),
            )
            rows = []
            for i in range(31):
                r = [None] * len(wire.SAMPLE_FIELDS)
                r[0], r[1] = uid, 1000.0 + 60 * i
                r[wire.SAMPLE_FIELDS.index("cpu_usage_seconds")] = 10.0 + cpu_step * i
                rows.append(r)
            samples.land(c, "node1", rows, 1000.0 + 60 * 30)  # in the writer's transaction

    db.call(setup)
    found = db.call(lambda c: clusterviews.stuck(c, now=1000.0 + 1800))
    assert [j["job_id"] for j in found] == [101]


def test_array_health_counts_failed_tasks(db):
    def setup(c):
        for task, outcome in enumerate(["COMPLETED", "FAILED", "OUT_OF_MEMORY", "CANCELLED", None]):
            c.execute(
                "INSERT INTO jobs (cluster, job_id, array_job_id, array_task_id, user, submit_time,"
                " outcome, created, updated) VALUES ('c', ?, 500, ?, 'bob', 100, ?, 0, 0)",
                (501 + task, task, outcome),
            )

    db.call(setup)
    (a,) = db.call(lambda c: clusterviews.arrays(c, now=200.0))
    assert (a["tasks"], a["completed"], a["failed"], a["unfinished"]) == (5, 1, 2, 1)


def test_a_collector_that_stays_broken_logs_once_and_once_more_when_it_recovers(caplog):
    outcomes = iter([CollectorError("squeue exited 1: slurmctld down")] * 3 + [None])

    def read(cfg, state):
        err = next(outcomes)
        if err:
            raise err
        return []

    clock = [0.0]
    s = Scheduler(cfg_with(), [Collector("queue", read)], lambda r: None, clock=lambda: clock[0])
    for t in range(4):
        clock[0] = 60.0 * t
        s.run_due()
    lines = [r.getMessage() for r in caplog.records if r.name == "nomade.collect"]
    assert lines == [
        "collector queue: squeue exited 1: slurmctld down",
        "collector queue: works again",
    ]
    assert s.status["queue"].failures == 3 and s.status["queue"].runs == 4
