"""Every envelope gets one clear answer within bounds, and the writer survives its store.

What an agent (or anyone on the agent port) sends is checked before it is stored: a value that
is not a number, NaN, an infinity, a negative or an integer past 2^63 refuses its envelope with
the field named, and nothing of it is stored; sample times far from the aggregator's clock are
left out and counted on their node.  The writer, when its store is locked by another process
past the busy timeout, keeps the batch, acknowledges nothing of it, and writes it once the lock
is gone.  Real SQLite files and locks throughout; the daemon-level outages (SIGKILL, a full
filesystem) are in test_store_outages.py.
"""

from __future__ import annotations

import math
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zmq
from clusterlib import free_port, wait_for

from aggregator import daemon as server
from aggregator import store
from aggregator.store import Ingest
from collectors.slurm import slurmvalues
from nodeagent.outbox import Outbox
from nomade_common import config, wire

WIDTH = len(wire.SAMPLE_FIELDS)
NOW = time.time()
TABLES = ("jobs", "received", "readings_latest")


def row(job: int, t: float, **values) -> list:
    r = [None] * WIDTH
    r[0], r[1] = job, t
    for name, value in values.items():
        r[wire.SAMPLE_FIELDS.index(name)] = value
    return r


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Rows of each table in TABLES, and "samples": the samples stored (every room)."""
    out = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
    return {"samples": len(store.all_samples(conn)), **out}


@pytest.fixture
def conn(tmp_path):
    c = store.open_store(str(tmp_path / "s.db"))
    yield c
    c.close()


def take(conn, ing, data, now=NOW):
    conn.execute("BEGIN IMMEDIATE")
    try:
        return ing.take(conn, data, now)
    finally:
        conn.execute("COMMIT")


def samples(seq: int, *rows, node: str = "c1") -> bytes:
    return wire.Envelope(wire.SAMPLES, node, 1, seq, {"rows": list(rows)}).pack()


BAD_ROWS = [
    (row(7, math.nan), "t is nan"),
    (row(7, math.inf), "t is inf"),
    (row(7, "yesterday"), "t is str 'yesterday'"),
    (row(7, {"a": 1}), "t is dict"),
    (row(7, NOW, mem_peak_bytes={"x": 1}), "mem_peak_bytes is dict"),
    (row(7, NOW, mem_peak_bytes=(1 << 64) - 1), "mem_peak_bytes is 18446744073709551615"),
    (row(7, NOW, cpu_usage_seconds=-3.5), "cpu_usage_seconds is -3.5"),
    (row(7, NOW, nprocs="3"), "nprocs is str '3'"),
    (row(7, NOW, cpu_user_seconds=-math.inf), "cpu_user_seconds is -inf"),
    (row(7.5, NOW), "is not a list of 20 values starting with a job id"),
    (row(-2, NOW), "job_id is -2"),
    (row(7, None), "t is NoneType"),
    (row(7, NOW, cpu_usage_seconds=""), "cpu_usage_seconds is str ''"),
    (row(7, NOW, cpu_usage_seconds=b""), "cpu_usage_seconds is bytes b''"),
    (row(7, NOW, nprocs=[]), "nprocs is list []"),
    (row(7, NOW, nprocs={}), "nprocs is dict {}"),
]


@pytest.mark.parametrize("bad, named", BAD_ROWS, ids=[b[1] for b in BAD_ROWS])
def test_a_bad_value_nacks_its_envelope_naming_the_field_and_stores_none_of_it(conn, bad, named):
    ing = Ingest("c")
    good = row(7, NOW - 10, mem_peak_bytes=1 << 30)
    before = counts(conn)
    answer = take(conn, ing, samples(1, good, bad))
    assert answer.kind == "nack" and answer.key == ("c1", 1, 1)
    assert answer.reason.startswith("sample row 1") and named in answer.reason
    assert counts(conn) == before  # not the good row either: the envelope is refused whole
    # Counted, and the next envelope from the same node is stored as usual.
    assert (
        conn.execute("SELECT value FROM counters WHERE name = 'messages_rejected'").fetchone()[0]
        == 1
    )
    assert take(conn, ing, samples(2, good)).kind == "ack"
    assert counts(conn)["samples"] == 1


def test_sample_times_far_from_the_clock_are_left_out_and_counted_on_their_node(tmp_path):
    conn = store.open_store(str(tmp_path / "s.db"))
    ing = Ingest("c", sample_future_seconds=300, sample_max_age_seconds=86400)
    rows = [row(3, NOW - 5), row(3, NOW + 3600), row(3, NOW - 2 * 86400), row(3, NOW)]
    answer = take(conn, ing, samples(1, *rows))
    assert answer.kind == "ack"
    stored = sorted(s[2] for s in store.all_samples(conn))
    assert stored == [NOW - 5, NOW]
    refused, why = conn.execute(
        "SELECT samples_refused, samples_refused_why FROM nodes WHERE node = 'c1'"
    ).fetchone()
    assert refused == 2 and "clock" in why


@pytest.mark.parametrize(
    "payload, named",
    [
        ({"event": "start", "job_id": 5, "t": math.nan}, "t must be a finite number"),
        ({"event": "start", "job_id": 1 << 63, "t": NOW}, "job_id from 0"),
        ({"event": "start", "job_id": 5, "t": NOW + 86400}, "from the aggregator's clock"),
        ({"event": "restart", "job_id": 5, "t": NOW}, "'start' or 'end'"),
        ({"event": "end", "job_id": 5, "t": NOW, "env": "x" * (100 << 10)}, "over 65536"),
    ],
)
def test_a_bad_job_event_is_nacked_with_the_field_named(conn, payload, named):
    before = counts(conn)
    answer = take(
        conn,
        Ingest("c", 300, 600, 300, 86400),
        wire.Envelope(wire.JOB_EVENT, "c1", 1, 9, payload).pack(),
    )
    assert answer.kind == "nack" and named in answer.reason
    assert counts(conn) == before


def test_a_heartbeat_with_odd_figures_keeps_its_node_alive_and_stores_no_odd_value(conn):
    ing = Ingest("c")
    beat = {
        "t": NOW,
        "jobs": [1, 2],
        "outbox_depth": math.inf,
        "dropped": {"x": 1},
        "nacked": 4,
        "collectors": {
            "gpu": [10.0, {"x": 1}, 0, None, None, None, None, None],
            "disk": [10.0, 3, 1, NOW, NOW, "\x1b[2Jgone", 0.1, None],
        },
    }
    answer = take(conn, ing, wire.Envelope(wire.HEARTBEAT, "c1", 1, 0, beat).pack())
    assert answer.kind == "live"
    node = conn.execute(
        "SELECT running_jobs, outbox_depth, outbox_dropped, agent_nacked FROM nodes"
    ).fetchone()
    assert tuple(node) == (2, None, None, 4)
    status = {
        r[0]: r[1] for r in conn.execute("SELECT collector, last_error FROM collector_status")
    }
    assert status == {"disk": " [2Jgone"}  # the escape character is gone; the odd entry left out


def test_what_cannot_be_read_is_dropped_and_what_can_be_addressed_is_nacked(conn):
    ing = Ingest("c")
    assert take(conn, ing, b"\xc1 not msgpack").kind == "drop"
    answer = take(conn, ing, msgpack.packb([9, "samples", "c4", [1, 2], {}]))
    assert answer.kind == "nack" and answer.key == ("c4", 1, 2) and "version 9" in answer.reason
    answer = take(conn, ing, wire.Envelope("verdict", "c4", 1, 3, {}).pack())
    assert answer.kind == "nack" and "unknown message type" in answer.reason
    # A flood of them is counted in full but logged and kept as events once a minute.
    for seq in range(200):
        take(conn, ing, msgpack.packb([9, "samples", "c4", [1, seq], {}]))
    assert (
        conn.execute("SELECT value FROM counters WHERE name = 'messages_rejected'").fetchone()[0]
        == 203
    )
    assert conn.execute("SELECT count(*) FROM events WHERE kind = 'bad_message'").fetchone()[0] <= 3


# -- the writer and its store -------------------------------------------------------------------
def test_a_store_locked_past_the_busy_timeout_is_written_once_the_lock_is_gone(tmp_path):
    path = str(tmp_path / "w.db")
    writer = store.Writer(path, busy_timeout=0.2, max_wait=0.01)
    forgot = []
    writer.on_rollback.append(lambda: forgot.append(1))
    writer.start()
    committed: list[int] = []
    try:
        writer.call(lambda c: store.bump(c, "warm"))
        other = sqlite3.connect(path, isolation_level=None)  # another process's shell, say
        other.execute("BEGIN IMMEDIATE")
        for i in range(50):
            writer.submit(store.WorkItem(lambda c, i=i: store.bump(c, f"n{i}"), committed.append))
        wait_for(
            "the writer to report its store failing", lambda: not writer.health()["ok"], 10, 0.05
        )
        health = writer.health()
        assert "locked" in health["reason"] and health["failing_since"] <= time.time()
        time.sleep(1.0)  # several retries, all refused
        assert committed == [] and writer.health()["failed_batches"] >= 2 and forgot
        other.execute("COMMIT")
        wait_for("all 50 items committed", lambda: len(committed) == 50, 10, 0.05)
        assert writer.health()["ok"]
        names = writer.call(
            lambda c: [r[0] for r in c.execute("SELECT name FROM counters WHERE value = 1")]
        )
        assert sorted(names) == sorted(["warm", *(f"n{i}" for i in range(50))])
        wait_for(
            "the outage kept as an event",
            lambda: writer.call(
                lambda c: c.execute(
                    "SELECT detail FROM events WHERE kind = 'store_failed'"
                ).fetchone()
            ),
            5,
            0.05,
        )
        other.close()
    finally:
        writer.stop()


def test_an_item_refusing_its_input_is_not_retried_and_does_not_fail_the_store(tmp_path):
    writer = store.Writer(str(tmp_path / "w.db"), max_wait=0.01)
    writer.start()
    try:
        errors: list[BaseException] = []
        writer.submit(
            store.WorkItem(lambda c: c.execute("SELECT ?", ({"a": 1},)), None, errors.append)
        )
        writer.submit(
            store.WorkItem(lambda c: c.execute("SELECT ?", (1 << 70,)), None, errors.append)
        )
        assert writer.call(lambda c: 42) == 42
        assert len(errors) == 2 and writer.health() == {
            "ok": True,
            "failed_batches": 0,
            "backlog": 0,
        }
    finally:
        writer.stop()


def test_a_store_unusable_past_the_limit_makes_the_writer_give_up_with_nothing_acknowledged(
    tmp_path,
):
    path = str(tmp_path / "w.db")
    writer = store.Writer(path, busy_timeout=0.1, max_wait=0.01, failing_exit_seconds=1.0)
    writer.start()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    acked: list = []
    writer.submit(store.WorkItem(lambda c: store.bump(c, "x"), acked.append))
    assert writer.fatal.wait(15)
    assert acked == [] and writer.health()["gave_up"]
    other.execute("ROLLBACK")
    other.close()
    writer.stop()


def test_the_durability_setting_reaches_sqlite(tmp_path):
    for name, level in (("full", 2), ("normal", 1)):
        writer = store.Writer(str(tmp_path / f"{name}.db"), synchronous=name)
        assert writer.conn.execute("PRAGMA synchronous").fetchone()[0] == level
        writer.conn.close()


def test_an_urgent_item_is_written_before_a_backlog(tmp_path):
    writer = store.Writer(str(tmp_path / "w.db"), max_wait=0.05)
    order: list[str] = []
    gate = threading.Event()
    writer.submit(store.WorkItem(lambda c: gate.wait(5), lambda _: order.append("first")))
    for i in range(2000):
        writer.submit(store.WorkItem(lambda c: None, lambda _, i=i: order.append("bulk")))
    writer.submit(store.WorkItem(lambda c: None, lambda _: order.append("urgent"), urgent=True))
    writer.start()
    gate.set()
    wait_for("everything written", lambda: len(order) == 2002, 10, 0.02)
    writer.stop()
    assert order.index("urgent") < order.index("bulk")


def test_db_backup_is_consistent_while_the_writer_keeps_writing(tmp_path):
    db = tmp_path / "data" / "nomade.db"
    db.parent.mkdir()
    writer = store.Writer(str(db), max_wait=0.005)
    writer.start()
    ing = Ingest("c")
    stop = threading.Event()

    def feed() -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            env = wire.unpack(samples(seq, *(row(j, NOW - seq + j * 1e-3) for j in range(20))))
            writer.submit(store.WorkItem(lambda c, e=env: ing.apply_envelope(c, e)))
            time.sleep(0.0005)

    feeder = threading.Thread(target=feed)
    feeder.start()
    cfg = tmp_path / "n.toml"
    cfg.write_text(f'[general]\ndata_dir = "{db.parent}"\n')
    try:
        wait_for("some rows", lambda: writer.commits > 20, 10, 0.05)
        ctl = [sys.executable, "-m", "nomadectl", "--config", str(cfg), "db", "backup"]
        done = subprocess.run(
            [*ctl, str(tmp_path / "copy.db")], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        again = subprocess.run(
            [*ctl, str(tmp_path / "copy.db")], capture_output=True, text=True, timeout=60
        )
        assert (
            again.returncode != 0 and "exists" in again.stderr and "Traceback" not in again.stderr
        )
    finally:
        stop.set()
        feeder.join()
        writer.stop()
    copy = tmp_path / "copy.db"
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    c = sqlite3.connect(copy)
    envelopes, rows = c.execute("SELECT count(*), sum(rows) FROM received").fetchone()
    assert envelopes > 20 and rows == len(store.all_samples(c))
    assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# -- bounds on the aggregator's doors ------------------------------------------------------------
def test_a_node_list_is_counted_before_it_is_expanded():
    assert slurmvalues.hostlist_size("n[1-99999999],gpu[01-04,09]") == 99_999_999 + 5
    with pytest.raises(ValueError, match="names 100000000 nodes, more than 1000"):
        slurmvalues.hostlist("n[0-99999999]", 1000)
    assert slurmvalues.hostlist("c[01-03],g7") == ["c01", "c02", "c03", "g7"]


def aggregator(tmp_path: Path, extra: str = "") -> server.Aggregator:
    cfg = config.parse(
        f'[general]\ndata_dir = "{tmp_path}"\n'
        f'[aggregator]\nlisten = "tcp://127.0.0.1:{free_port()}"\n'
        f'http_listen = "127.0.0.1:{free_port()}"\nsqueue = "{tmp_path}/none"\n'
        f'scontrol = "{tmp_path}/none"\nsacct = "{tmp_path}/none"\n{extra}'
        f'[security]\ncurve = "off"\n[collectors.job_history]\nenabled = false\n'
    )
    return server.Aggregator(cfg)


def test_a_report_naming_more_nodes_than_allowed_is_refused_unexpanded(tmp_path):
    agg = aggregator(tmp_path, "max_job_nodes = 5000\n")
    try:
        body = {
            "kind": "prologslurmctld",
            "t": time.time(),
            "env": {"SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "n[1-99999999]"},
        }
        with pytest.raises(ValueError, match="names 99999999 nodes; this cluster allows 5000"):
            agg.report_fields(body)
        agg.cluster_nodes = 2  # what Slurm's node_state reading said
        body["env"]["SLURM_JOB_NODELIST"] = "node[1-3]"
        with pytest.raises(ValueError, match="allows 2"):
            agg.report_fields(body)
        body["env"].update(
            SLURM_JOB_NODELIST="node[1-2]",
            SLURM_JOB_NAME="x" * 100_000,
            SLURM_JOB_ACCOUNT={"not": "a string"},
        )
        fields, _ = agg.report_fields(body)
        assert len(fields["job_name"]) == 1024 and fields["account"] is None
        for t in (math.nan, math.inf, "noon", time.time() + 400 * 86400):
            with pytest.raises(ValueError, match="t must be"):
                agg.report_fields({**body, "t": t})
    finally:
        agg.writer.conn.close()


def test_a_message_over_the_size_limit_is_not_read_and_the_socket_keeps_serving(tmp_path):
    agg = aggregator(tmp_path, "max_message_bytes = 8388608\n")
    agg.start()
    ctx = zmq.Context()
    try:
        big = ctx.socket(zmq.DEALER)
        big.connect(agg.cfg.aggregator.listen)
        record = {"mount": "/", "note": "x" * (9 << 20)}
        p = {"collector": "disk", "t": NOW, "seconds": 0.1, "records": [record]}
        big.send(wire.Envelope(wire.READINGS, "big", 1, 1, p).pack())
        assert big.poll(1500) == 0  # no answer: the connection was closed unread
        small = ctx.socket(zmq.DEALER)
        small.connect(agg.cfg.aggregator.listen)
        small.send(samples(1, row(1, NOW), node="small"))
        assert small.poll(10_000)
        assert wire.unpack(small.recv()).type == wire.ACK
        big.close(0)
        small.close(0)
    finally:
        ctx.destroy(0)
        agg.stop()
    c = sqlite3.connect(agg.cfg.database)
    assert [r[0] for r in c.execute("SELECT node FROM received")] == ["small"]


def test_the_agent_counts_what_the_aggregator_nacked(tmp_path):
    box = Outbox(str(tmp_path / "outbox.db"), 100)
    seqs = [box.put(wire.SAMPLES, wire.pack_payload({"rows": []})) for _ in range(3)]
    box.ack(seqs[0])
    box.ack(seqs[1], nacked=True)
    box.ack(seqs[1], nacked=True)  # a second NACK of the same envelope is not counted again
    assert (box.depth(), box.nacked()) == (1, 1)
    box.close()
    assert Outbox(str(tmp_path / "outbox.db"), 100).nacked() == 1  # it survives a restart
    os.sync()


def test_the_agent_splits_samples_too_many_for_one_envelope_and_stores_every_row(tmp_path, conn):
    """An envelope over the aggregator's message limit would be refused unread at every resend
    and hold up the node's whole stream: the agent splits it, and every row arrives."""
    from nodeagent.agent import Agent

    cfg = config.parse(
        f'[agent]\nspool_dir = "{tmp_path}/spool"\ncgroup_root = "{tmp_path}/cg"\n'
        f'proc_root = "{tmp_path}/proc"\n'
    )
    agent = Agent(cfg, node="n1")
    rows = [row(j, NOW, proc_rchar=10**15 + j, proc_wchar=10**15, nprocs=j) for j in range(120_000)]
    agent.enqueue(wire.SAMPLES, {"rows": rows})
    pending = agent.outbox.pending(limit=100)
    assert len(pending) > 1 and all(len(p[2]) <= wire.MAX_PAYLOAD_BYTES for p in pending)
    ing = Ingest("c")
    for seq, mtype, payload in pending:
        data = wire.pack_stored(mtype, "n1", agent.outbox.epoch, seq, payload)
        assert take(conn, ing, data).kind == "ack"
    assert counts(conn)["samples"] == 120_000
    agent.close()


def test_values_each_in_range_are_stored_even_when_their_sum_is_not(conn):
    """The quick check sums an envelope's values; the value-by-value check has the last word."""
    big = (1 << 63) - 1
    answer = take(conn, Ingest("c"), samples(1, row(8, NOW, proc_rchar=big, proc_wchar=big)))
    assert answer.kind == "ack"
    (stored,) = store.all_samples(conn)
    assert stored[wire.SAMPLE_FIELDS.index("proc_rchar") + 1] == big


def test_a_version_nested_a_thousand_deep_is_refused_and_the_store_keeps_working(tmp_path):
    """Found in review: str() of such a version raised RecursionError, which the writer took
    for a failing store and retried for ever.  Now it is the message that is refused."""
    head = b"\x95" + b"\x91" * 1015 + b"\x01"
    data = head + b"".join(msgpack.packb(v) for v in ("samples", "node1", [1, 1], {}))
    writer = store.Writer(str(tmp_path / "w.db"), max_wait=0.01)
    ing = Ingest("c")
    writer.start()
    try:
        answers: list = []
        writer.submit(store.WorkItem(lambda c: ing.take(c, data), answers.append, atomic=True))
        writer.submit(
            store.WorkItem(
                lambda c: ing.take(c, samples(2, row(1, NOW))), answers.append, atomic=True
            )
        )
        wait_for("both answered", lambda: len(answers) == 2, 10, 0.02)
        assert (
            answers[0].kind == "nack" and "unsupported envelope version list" in answers[0].reason
        )
        assert answers[1].kind == "ack" and writer.health()["ok"]
        assert writer.health()["failed_batches"] == 0
    finally:
        writer.stop()


def test_refusals_are_logged_once_a_minute_per_reason_whatever_node_names_they_carry(conn):
    ing = Ingest("c")
    for i in range(300):
        take(conn, ing, msgpack.packb([9, "samples", f"n{i}", [1, 1], {}]))
    assert conn.execute("SELECT count(*) FROM events WHERE kind = 'bad_message'").fetchone()[0] == 1
    assert (
        conn.execute("SELECT value FROM counters WHERE name = 'messages_rejected'").fetchone()[0]
        == 300
    )


def test_a_job_cannot_rename_its_nodes_or_user_through_its_comment(tmp_path):
    """`scontrol show job -o` is one line of KEY=VALUE: a user's comment can print a NodeList=
    or UserId= of its own after the real ones.  What slurmctld put in the hook's environment
    wins, and nothing is expanded past the cluster's bound (found in review: 1.4 GB)."""
    agg = aggregator(tmp_path)
    agg.writer.start()
    try:
        line = (
            "JobId=4003 JobName=ok UserId=alice(2001) GroupId=alice(2001) JobState=RUNNING "
            "NumNodes=1 NodeList=node1 Comment=x NodeList=n[1-20000000],m[20000000-1] "
            "UserId=root(0) WorkDir=/home/alice\n"
        )
        body = {
            "t": time.time(),
            "env": {
                "SLURM_JOB_ID": "4003",
                "SLURM_JOB_USER": "alice",
                "SLURM_JOB_UID": "2001",
                "SLURM_JOB_NODELIST": "node1",
            },
        }
        fields, t = agg.report_fields(body)
        agg._job_started(fields, line, t)
        wait_for(
            "the start stored",
            lambda: agg.writer.call(
                lambda c: c.execute(
                    "SELECT count(*) FROM events WHERE kind = 'job_start'"
                ).fetchone()[0]
            ),
            10,
            0.05,
        )
        row = agg.writer.call(
            lambda c: tuple(
                c.execute(
                    "SELECT node_list, user, user_id FROM jobs WHERE job_id = 4003"
                ).fetchone()
            )
        )
        assert row == ("node1", "alice", 2001)
        with pytest.raises(ValueError, match="runs backwards"):
            slurmvalues.hostlist("n[1-3],m[9-1]")
    finally:
        agg.stop()


def test_readings_name_a_known_collector_and_fit_their_bound(conn):
    from aggregator.store import NODE_COLLECTOR_NAMES
    from collectors.registry import NODE_COLLECTORS

    assert NODE_COLLECTOR_NAMES == {c.name for c in NODE_COLLECTORS}  # the two lists agree
    ing = Ingest("c")

    def readings(seq, collector, records):
        p = {"collector": collector, "t": NOW, "seconds": 0.1, "records": records}
        return wire.Envelope(wire.READINGS, "c1", 1, seq, p).pack()

    assert take(conn, ing, readings(1, "disk", [{"mount": "/", "used": 1}])).kind == "ack"
    answer = take(conn, ing, readings(2, "x" * 60, [{}]))
    assert answer.kind == "nack" and "collector must be one of" in answer.reason
    answer = take(conn, ing, readings(3, "disk", [{"blob": b"\x00" * 10}]))
    assert answer.kind == "nack" and "bytes, which JSON cannot carry" in answer.reason
    answer = take(conn, ing, readings(4, "disk", [{"s": "x" * (5 << 20)}]))
    assert answer.kind == "nack" and "over 4194304" in answer.reason
    assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == 1


def test_a_batch_gathers_a_bounded_number_of_bytes(tmp_path):
    writer = store.Writer(str(tmp_path / "w.db"), max_wait=0.5)
    for _ in range(6):
        writer.submit(store.WorkItem(lambda c: None, size=30 << 20))
    assert writer.queued_bytes == 180 << 20
    writer.start()
    wait_for("all written", lambda: writer.queued_bytes == 0, 10, 0.02)
    writer.stop()
    assert writer.commits == 2  # a batch stops gathering once it holds 64 MiB: 3 items, not 6


def test_a_reading_with_values_json_cannot_carry_is_stored_readable(db):
    # msgpack carries NaN, infinity, number keys and any nesting; JSON and SQLite's json_each
    # (which the views query) refuse them.  The reading is kept, those values as null.
    ing, now = Ingest("c"), time.time()
    deep: list = []
    for _ in range(200):
        deep = [deep]
    records = [
        {"record": "sensor", "temp_celsius": math.nan, "max_celsius": math.inf, "chip": "k10"},
        {"record": "nfs_mount", "read_ops": -math.inf, "nested": deep, 7: "seven"},
    ]
    env = wire.Envelope(
        wire.READINGS, "n1", 1, 1, {"collector": "health", "t": now, "records": records}
    )
    assert db.call(lambda c: ing.apply_envelope(c, env)) == "stored"
    ((node, (t, stored)),) = db.call(lambda c: store.latest_readings(c, "health")).items()
    assert stored[0] == {"record": "sensor", "temp_celsius": None, "max_celsius": None,
                         "chip": "k10"}  # fmt: skip
    assert stored[1]["read_ops"] is None and stored[1]["7"] == "seven"
    depth, v = 0, stored[1]["nested"]
    while isinstance(v, list) and v:
        depth, v = depth + 1, v[0]
    assert depth < 40  # cut at the reading depth, not stored 200 deep
    kinds = db.call(
        lambda c: c.execute(
            "SELECT count(*) FROM readings_latest, json_each(records_json) WHERE collector = ?",
            ("health",),
        ).fetchone()[0]
    )
    assert kinds == 2
