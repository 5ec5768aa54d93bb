"""Samples in the time-series store (aggregator/store/sqlite/samples.py) as a user meets them:
a sample is readable (`nomadectl job`, the API) as soon as its envelope is acknowledged, and
reads the same once compacted; SIGKILLs of the aggregator while its compactor moves landed
envelopes and the old one-row-per-sample table into chunks lose and duplicate nothing; and a
database of schema version 8 migrates in place with every job's view unchanged.

The aggregator under test is the real one: in this process (test 1) or `nomade-aggregator` as
a process (test 2, with test_store_outages.py's Daemon and simulated agents), over real
ZeroMQ, on real SQLite files.
"""

from __future__ import annotations

import collections
import json
import math
import random
import sqlite3
import time
from pathlib import Path

import zmq
from clusterlib import wait_for
from conftest import required
from test_store_outages import Daemon, assert_acked_stored, running, sender

from aggregator import daemon as server
from aggregator import store
from aggregator.admin import apiclient
from aggregator.views import query
from nomade_common import config, munge, wire

FIELD = {name: i for i, name in enumerate(wire.SAMPLE_FIELDS)}  # index in a wire row
HOUR = 3600.0


# -- helpers --------------------------------------------------------------------------------------
def reading_row(job_id: int, t: float, **values) -> list:
    """A wire row of JOB_ID at T: the readings given, None elsewhere."""
    r = [None] * len(wire.SAMPLE_FIELDS)
    r[0], r[1] = job_id, t
    for name, value in values.items():
        r[FIELD[name]] = value
    return r


def view(conn: sqlite3.Connection, job_id: int) -> str:
    """`nomadectl job JOB_ID --json` as the store gives it (query.job), as comparable text."""
    return json.dumps(query.job(conn, job_id), sort_keys=True)


def fresh_view(db: Path, job_id: int) -> dict | None:
    """query.job on a read connection opened for this read, as nomadectl opens one."""
    conn = store.connect(str(db), readonly=True)
    try:
        return query.job(conn, job_id)
    finally:
        conn.close()


def v8_database(path: Path) -> sqlite3.Connection:
    """A database as NØMADE of schema version 8 left it: migrations 0001 to 0008 applied, as
    `store.migrate` applies them, and nothing after (samples one row each in `samples`)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    conn = store.connect(str(path))
    conn.execute("CREATE TABLE schema_migrations (name TEXT PRIMARY KEY, applied REAL NOT NULL)")
    for name, sql in store.MIGRATIONS[:8]:
        conn.execute("BEGIN IMMEDIATE")
        for statement in sql.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (name, time.time()))
        conn.execute("COMMIT")
    assert store.schema_version(conn) == 8
    return conn


def insert_v1_job(conn: sqlite3.Connection, uid: int, job_id: int, **columns) -> None:
    now = time.time()
    values = {"uid": uid, "cluster": "outages", "job_id": job_id, "created": now, "updated": now}
    values.update(columns)
    names = ", ".join(values)
    marks = ", ".join("?" * len(values))
    conn.execute(f"INSERT INTO jobs ({names}) VALUES ({marks})", list(values.values()))


def insert_v1_samples(conn: sqlite3.Connection, node: str, rows: list[list]) -> None:
    """ROWS (wire rows, the job's uid in place of its id) into version 8's `samples` table."""
    columns = ", ".join(wire.SAMPLE_FIELDS[1:])
    marks = ", ".join("?" * len(wire.SAMPLE_FIELDS))
    conn.executemany(
        f"INSERT INTO samples (node, job_uid, {columns}) VALUES (?, {marks})",
        [(node, *r) for r in rows],
    )


def as_stored(node: str, row: list) -> tuple:
    """A wire row (job uid first) as store.all_samples gives it: (job_uid, node, t, *readings)."""
    return (row[0], node, *row[1:])


def exactly(samples: list[tuple]) -> list[tuple]:
    """SAMPLES with each value's type beside it: 2**53 + 1 and 2.0**53 are not the same."""
    return sorted(tuple((type(v).__name__, v) for v in s) for s in samples)


def stored_per_room(conn: sqlite3.Connection) -> dict[str, int]:
    """Samples each room holds, counted in the room itself (not through a read that merges)."""
    legacy = store.legacy_left(conn)
    return {
        "landed": store.sample_backlog(conn)["samples"],
        "chunks": conn.execute(
            "SELECT coalesce(sum(n), 0) FROM sample_chunks WHERE step = 0"
        ).fetchone()[0],
        "legacy": legacy or 0,
    }


# -- 1. visible at the ACK, the same once compacted ------------------------------------------------
class Agent:
    """A node agent as the aggregator sees it, one envelope at a time: a DEALER that sends an
    envelope and waits for its answer."""

    def __init__(self, endpoint: str, node: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.node, self.epoch, self.seq = node, time.time_ns() // 1000, 0

    def send(self, kind: str, payload: dict) -> tuple[wire.Envelope, float]:
        """KIND with PAYLOAD; its answer and when it arrived (monotonic)."""
        self.seq += 1
        self.sock.send(wire.Envelope(kind, self.node, self.epoch, self.seq, payload).pack())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.sock.poll(10, zmq.POLLIN):
                env = wire.unpack(self.sock.recv())
                if env.type in (wire.ACK, wire.NACK) and env.seq == self.seq:
                    return env, time.monotonic()
        raise AssertionError(f"no answer to {kind} seq {self.seq} within 30 s")

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.destroy(0)


def in_process(root: Path, aggregator: str = "") -> tuple[server.Aggregator, Daemon]:
    """The aggregator in this process, configured as test_store_outages' Daemon configures
    nomade-aggregator (free loopback ports, curve off, no head collectors), started."""
    d = Daemon(root, root / "data", aggregator)
    agg = server.Aggregator(config.load(str(d.config)))
    agg.start()
    return agg, d


def split_of(rows: list[list]) -> dict:
    """Bytes on local disks (the cgroup's block I/O) and elsewhere (the processes' beyond it),
    as `nomadectl job` shows them per node: unknown where either figure is missing."""
    out = {}
    for way in ("read", "write"):
        local = [r[FIELD[f"cgroup_{way}_bytes"]] for r in rows]
        total = [r[FIELD[f"proc_{way}_bytes"]] for r in rows]
        local = max((v for v in local if v is not None), default=None)
        total = max((v for v in total if v is not None), default=None)
        out[f"local_{way}_bytes"] = local
        out[f"network_{way}_bytes"] = (
            max(0, total - local) if local is not None and total is not None else None
        )
    return out


def test_a_sample_is_readable_within_a_second_of_its_ack(tmp_path):
    """A job's samples, acknowledged to the agent, are in `nomadectl job`'s view (node summary
    and series) and in the API's within 1 s of the ACK, while still landed (default settings:
    compaction after 60 s); compacted later, the same read gives the identical answer."""
    try:
        munge.verify(munge.sign("GET", "/probe", b""), "GET", "/probe", b"")
        http_why = None
    except munge.MungeError as exc:
        http_why = f"munged is not answering ({exc}): the API was not read"
    job_id, node = 4711, "vis1"
    now = time.time()
    rows = [
        reading_row(
            job_id,
            now - 30 + k * 10 + 0.123457,
            cpu_usage_seconds=2.5 + 10 * k,
            cpu_user_seconds=2.0 + 9 * k,
            cpu_system_seconds=0.5 + k,
            mem_current_bytes=(300 + 50 * k) << 20,
            mem_peak_bytes=(400 + 100 * k) << 20,
            mem_rss_bytes=(250 + 40 * k) << 20,
            mem_limit_bytes=4 << 30,
            proc_read_bytes=4096 * (k + 1) * 1000,
            proc_write_bytes=8192 * (k + 1) * 1000,
            nprocs=3 + k,
        )
        for k in range(3)
    ]
    sent = [list(r) for r in rows]  # the envelope's rows are changed by the aggregator in place
    agg, d = in_process(tmp_path)
    agent = Agent(d.endpoint, node)
    try:
        answer, _ = agent.send(wire.JOB_EVENT, {"event": "start", "job_id": job_id, "t": now - 40})
        assert answer.type == wire.ACK, answer.payload
        answer, acked_at = agent.send(wire.SAMPLES, {"rows": rows})
        assert answer.type == wire.ACK, answer.payload
        seen = fresh_view(d.db, job_id)
        api = None
        if http_why is None:
            api = apiclient.call(d.url, "GET", f"/api/v1/jobs/{job_id}", timeout=5)
        took = time.monotonic() - acked_at
        assert seen is not None, "the job of an acknowledged JOB_EVENT is not in the store"
        assert took < 1.0, f"reading the job took {took:.2f} s after its ACK"
        conn = store.connect(str(d.db), readonly=True)
        landed = store.sample_backlog(conn)["samples"]
        conn.close()
        assert landed == 3, "the samples were compacted already: the landed room was not read"
    finally:
        agent.close()
        agg.stop()

    # What `nomadectl job` shows of the node: the samples sent, nothing more.
    cpu = [r[FIELD["cpu_usage_seconds"]] for r in sent]
    peaks = [max(r[FIELD["mem_peak_bytes"]], r[FIELD["mem_current_bytes"]]) for r in sent]
    assert seen["job_id"] == job_id
    assert seen["nodes"] == [
        {
            "node": node,
            "samples": 3,
            "first_sample_time": sent[0][1],
            "last_sample_time": sent[-1][1],
            "cpu_seconds": max(cpu),
            "mem_peak_bytes": max(peaks),
            "read_bytes": max(r[FIELD["proc_read_bytes"]] for r in sent),
            "write_bytes": max(r[FIELD["proc_write_bytes"]] for r in sent),
            **split_of(sent),
        }
    ]
    assert seen["mem_peak_bytes"] == max(peaks)
    assert seen["series"] == [
        {
            "node": node,
            "t": r[1],
            "cpu_seconds": r[FIELD["cpu_usage_seconds"]],
            "mem_bytes": r[FIELD["mem_current_bytes"]],
            "read_bytes": r[FIELD["proc_read_bytes"]],
            "write_bytes": r[FIELD["proc_write_bytes"]],
        }
        for r in sent
    ]
    if api is not None:
        assert api == json.loads(json.dumps(seen)), "the API shows the job otherwise"
    before = json.dumps(seen, sort_keys=True)

    # Compacted: the aggregator again, on the same store, compacting what is a second old.
    agg, d = in_process(tmp_path, "samples_compact_after_seconds = 1")
    try:
        conn = store.connect(str(d.db), readonly=True)
        try:
            wait_for(
                "the compactor to move the landed samples into chunks",
                lambda: store.sample_backlog(conn)["envelopes"] == 0,
                30,
                0.1,
            )
            assert store.sample_sizes(conn)["raw_samples"] == 3
            assert stored_per_room(conn) == {"landed": 0, "chunks": 3, "legacy": 0}
            assert view(conn, job_id) == before
        finally:
            conn.close()
        assert json.dumps(fresh_view(d.db, job_id), sort_keys=True) == before
        if http_why is None:
            api = apiclient.call(d.url, "GET", f"/api/v1/jobs/{job_id}", timeout=5)
            assert api == json.loads(before), "the API shows the compacted job otherwise"
    finally:
        agg.stop()
    if http_why is not None:
        required(http_why)  # everything else was checked


# -- 2. SIGKILL while compacting ----------------------------------------------------------------
def test_sigkill_during_compaction_loses_and_duplicates_nothing(tmp_path):
    """A store of schema version 8 with 100,000 samples in its one-row-per-sample table, and
    four agents streaming 144,000 or more; the aggregator (compacting after 1 s or past 10
    waiting envelopes) is SIGKILLed three times while its compactor is busy (once moving the
    old table, twice moving landed envelopes), and started again.  Once the compactor is done
    (nothing landed, the old table gone), the store holds every sample of the old table and
    every acknowledged one, exactly, each once, and each in one room."""
    rng = random.Random(8)
    data = tmp_path / "data"
    db = data / "nomade.db"
    base = math.floor((time.time() - 3 * 86400) / HOUR) * HOUR  # inside the raw retention
    legacy: list[tuple] = []
    conn = v8_database(db)
    conn.execute("BEGIN IMMEDIATE")
    for j in range(200):  # jobs of 500 samples on one of 3 nodes, 10 s apart
        uid, node = j + 1, f"old{j % 3}"
        insert_v1_job(conn, uid, 500_000 + j, submit_time=base - 600 + j)
        rows = [
            [
                uid,
                base + j * 7.25 + k * 10.0 + rng.random(),
                1.5 * k + j,
                1.2 * k,
                0.3 * k,
                (200 + k) << 20,
                (300 + k) << 20,
                (150 + k) << 20,
                (50 + j) << 12,
                None,
                None if j % 2 else 8 << 30,
                None if j % 3 == 0 else 512 * k,
                None if j % 3 == 0 else 1024 * k,
                4096 * k,
                8192 * k,
                (1 << 53) + 3 * k if j % 50 == 0 else 100_000 * k,
                200_000 * k,
                10 * k,
                20 * k,
                1 + k % 4,
            ]
            for k in range(500)
        ]
        insert_v1_samples(conn, node, rows)
        legacy += [as_stored(node, r) for r in rows]
    conn.execute("COMMIT")
    conn.close()

    settings = "samples_compact_after_seconds = 1\nsamples_compact_backlog = 10"
    kills = []
    with running(tmp_path, data, settings) as d:
        senders = [sender(d, f"kn{k}", jobs=25, rows_per_job=8, window=64) for k in range(4)]

        def progress() -> tuple[int, int, int]:
            """(samples compacted so far, by every start; old-layout samples left; landed)."""
            c = store.connect(str(db), readonly=True)
            try:
                compacted = store.counters(c).get("samples_compacted", 0)
                return compacted, store.legacy_left(c) or 0, store.sample_backlog(c)["samples"]
            finally:
                c.close()

        # Killed once while the old table is being moved, twice while landed envelopes are.
        for moving in ("old table", "landed", "landed"):
            for s in senders:
                s.add(60)  # 12,000 samples each, 200 an envelope
            compacted, left, _ = progress()

            def busy(compacted=compacted, left=left, moving=moving):
                if all(s.answered(s.rows) for s in senders):
                    for s in senders:
                        s.add(20)  # keep envelopes landing until the kill
                now = progress()
                if moving == "old table":
                    return 0 < now[1] < left and now
                return now[0] > compacted and now[2] > 0 and now

            seen = wait_for(f"the compactor to move samples of the {moving}", busy, 60, 0.005)
            time.sleep(rng.uniform(0.0, 0.03))  # into the step after the one just seen
            d.kill()
            acked = {s: s.acked_now() for s in senders}
            c = store.connect(str(db), readonly=True)
            rooms = stored_per_room(c)
            c.close()
            kills.append((moving, seen, rooms))
            assert rooms["landed"] or rooms["legacy"], f"killed after compaction ended: {kills}"
            assert_acked_stored(d, acked)
            d.start()
        wait_for(
            "every envelope to be acknowledged",
            lambda: all(s.answered(s.rows) for s in senders),
            90,
            0.1,
        )
        assert not any(s.nacked for s in senders)

        def done() -> bool:
            c = store.connect(str(db), readonly=True)
            try:
                return store.sample_backlog(c)["envelopes"] == 0 and store.legacy_left(c) is None
            finally:
                c.close()

        wait_for("the compactor to finish", done, 90, 0.2)
        assert d.stop() == 0, d.log()
        assert "Traceback" not in d.log(), d.log()

    conn = store.connect(str(db), readonly=True)
    try:
        uids = collections.defaultdict(list)
        for uid, job_id in conn.execute("SELECT uid, job_id FROM jobs"):
            uids[job_id].append(uid)
        assert all(len(v) == 1 for v in uids.values()), "a job has more than one row"
        sent = [
            as_stored(s.node, [uids[r[0]][0], *r[1:]])
            for s in senders
            for rows in s.rows.values()
            for r in rows
        ]
        expected = legacy + sent
        have = store.all_samples(conn)
        rooms = stored_per_room(conn)
        keys = collections.Counter((s[0], s[1], s[2]) for s in have)
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
    assert len(expected) >= 100_000 + 3 * 4 * 60 * 200
    assert len(set((s[0], s[1], s[2]) for s in expected)) == len(expected)
    missing = collections.Counter(expected) - collections.Counter(have)
    extra = collections.Counter(have) - collections.Counter(expected)
    assert not missing and not extra, (
        f"{sum(missing.values())} samples lost (e.g. {list(missing)[:3]}), "
        f"{sum(extra.values())} not sent (e.g. {list(extra)[:3]}); kills: {kills}"
    )
    assert exactly(have) == exactly(expected)
    assert [k for k, n in keys.items() if n > 1] == []
    # Each sample is in one room once: the chunks hold as many as were sent, no more.
    assert rooms == {"landed": 0, "chunks": len(expected), "legacy": 0}, rooms
    assert integrity == "ok"


# -- 3. the old layout, migrated in place --------------------------------------------------------
def test_the_old_layout_migrates_in_place_with_the_same_job_view(tmp_path):
    """A database of schema version 8 with three jobs' samples (one job on two nodes and over an
    hour boundary, one with readings missing, one with counters past 2^53) opens with the
    current code; its old table moved into chunks a job at a time, every job's view is the same
    after each step as before, the table is gone, and every sample is there exactly."""
    db = tmp_path / "data" / "nomade.db"
    conn = v8_database(db)
    base = math.floor((time.time() - 86400) / HOUR) * HOUR
    big = (1 << 53) + 1  # no double holds it
    jobs = {
        # job_id: (uid, job columns, {node: rows})
        601: (
            1,
            {"user": "alice", "submit_time": base - 100, "start_time": base - 50},
            {
                "m1": [
                    reading_row(
                        1,
                        base - 1200 + k * 600 + 0.1 * k,
                        cpu_usage_seconds=12.5 * k,
                        cpu_user_seconds=10.0 * k,
                        cpu_system_seconds=2.5 * k,
                        mem_current_bytes=(500 + 100 * k) << 20,
                        mem_peak_bytes=(600 + 50 * k) << 20,
                        mem_rss_bytes=(400 + 90 * k) << 20,
                        mem_cache_bytes=(100 + k) << 20,
                        mem_swap_bytes=0,
                        mem_limit_bytes=2 << 30,
                        cgroup_read_bytes=512 * k,
                        cgroup_write_bytes=1024 * k,
                        proc_read_bytes=4096 * k,
                        proc_write_bytes=8192 * k,
                        proc_rchar=10_000 * k,
                        proc_wchar=20_000 * k,
                        proc_syscr=10 * k,
                        proc_syscw=20 * k,
                        nprocs=4,
                    )
                    for k in range(6)  # from 20 minutes before the hour to 30 after it
                ],
                "m2": [
                    reading_row(
                        1,
                        base + 5 + k * 10,
                        cpu_usage_seconds=3.0 * k,
                        mem_current_bytes=(900 - 100 * k) << 20,  # above its peak reading
                        mem_peak_bytes=700 << 20,
                        proc_read_bytes=100 * k,
                        proc_write_bytes=50 * k,
                        nprocs=1,
                    )
                    for k in range(3)
                ],
            },
        ),
        602: (
            2,
            {"user": "bob", "submit_time": base - 90, "max_rss_bytes": 3 << 30},
            {
                "m3": [
                    reading_row(2, base + 100, nprocs=1),
                    reading_row(2, base + 110, cpu_usage_seconds=1.25, nprocs=None),
                    reading_row(2, base + 120, cpu_usage_seconds=None, mem_current_bytes=1 << 20),
                    reading_row(2, base + 130, cpu_usage_seconds=2.5, cgroup_write_bytes=7),
                ]
            },
        ),
        603: (
            3,
            {"user": "carol", "submit_time": base - 80},
            {
                "m1": [
                    reading_row(
                        3,
                        base + 200.5 + k,
                        cpu_usage_seconds=0.001 * k,
                        mem_current_bytes=1 << 30,
                        mem_peak_bytes=(1 << 30) + k,
                        proc_read_bytes=k,
                        proc_write_bytes=0,
                        proc_rchar=big + k,
                        proc_wchar=(1 << 62) + k,
                        nprocs=2,
                    )
                    for k in range(4)
                ]
            },
        ),
    }
    conn.execute("BEGIN IMMEDIATE")
    inserted = []
    for job_id, (uid, columns, nodes) in jobs.items():
        insert_v1_job(conn, uid, job_id, **columns)
        for node, rows in nodes.items():
            insert_v1_samples(conn, node, rows)
            inserted += [as_stored(node, r) for r in rows]
    conn.execute("COMMIT")
    conn.close()

    conn = store.open_store(str(db))
    try:
        assert store.schema_version(conn) == store.SCHEMA_VERSION
        assert store.legacy_left(conn) == len(inserted)  # 0009 renamed `samples` to samples_v1
        before = {job_id: view(conn, job_id) for job_id in jobs}
        assert exactly(store.all_samples(conn)) == exactly(inserted)
        steps = 0
        while True:
            conn.execute("BEGIN IMMEDIATE")
            moved, left = store.migrate_v1(conn, 2)  # a job at a time
            conn.execute("COMMIT")
            steps += 1
            assert {job_id: view(conn, job_id) for job_id in jobs} == before, f"step {steps}"
            if left is None:
                break
            assert moved and left == store.legacy_left(conn)
        assert steps == 4  # three jobs, then the empty table dropped
        assert store.legacy_left(conn) is None
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert "samples_v1" not in tables and "samples" not in tables
        assert exactly(store.all_samples(conn)) == exactly(inserted)
        assert stored_per_room(conn) == {"landed": 0, "chunks": len(inserted), "legacy": 0}
        after = {job_id: view(conn, job_id) for job_id in jobs}
    finally:
        conn.close()
    assert after == before

    # What the views say, against what the rows say, worked out here.
    def node_figures(rows: list[list]) -> dict:
        def top(*names):
            present = [r[FIELD[n]] for r in rows for n in names if r[FIELD[n]] is not None]
            return max(present) if present else None

        has_mem = any(r[FIELD["mem_peak_bytes"]] is not None for r in rows)
        has_io = any(
            r[FIELD[n]] is not None for r in rows for n in ("proc_read_bytes", "cgroup_read_bytes")
        )
        return {
            "samples": len(rows),
            "first_sample_time": min(r[1] for r in rows),
            "last_sample_time": max(r[1] for r in rows),
            "cpu_seconds": top("cpu_usage_seconds"),
            "mem_peak_bytes": (top("mem_peak_bytes", "mem_current_bytes") or 0)
            if has_mem
            else None,
            "read_bytes": (top("proc_read_bytes", "cgroup_read_bytes") or 0) if has_io else None,
            "write_bytes": (top("proc_write_bytes", "cgroup_write_bytes") or 0) if has_io else None,
            **split_of(rows),
        }

    for job_id, (_uid, columns, nodes) in jobs.items():
        shown = json.loads(after[job_id])
        want = [{"node": n, **node_figures(rows)} for n, rows in sorted(nodes.items())]
        assert shown["nodes"] == want, job_id
        peaks = [w["mem_peak_bytes"] for w in want if w["mem_peak_bytes"] is not None]
        if columns.get("max_rss_bytes") is not None:
            peaks.append(columns["max_rss_bytes"])
        assert shown["mem_peak_bytes"] == (max(peaks) if peaks else None), job_id
        assert len(shown["series"]) == sum(len(rows) for rows in nodes.values()), job_id
    assert json.loads(after[601])["nodes"][1]["mem_peak_bytes"] == 900 << 20  # memory.current
    assert json.loads(after[602])["nodes"][0]["cpu_seconds"] == 2.5
    assert json.loads(after[602])["mem_peak_bytes"] == 3 << 30  # sacct's, none sampled


PLANNER_KILLED = """
import os, signal, sys, time
from aggregator.daemon.compaction import Planner
planner = Planner(sys.argv[1])
planner.plan(time.time(), 100, 100)  # a first plan: the planner runs
planner._proc.kill(); planner._proc.wait()
planner._start()  # the compactor starts a new one, and the aggregator dies at once
open(sys.argv[2], "w").write(str(planner._proc.pid))
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_an_aggregator_killed_as_its_planner_starts_leaves_no_traceback_and_no_planner(tmp_path):
    """SIGKILL (or the OOM killer) can strike the aggregator while its compaction planner is
    still starting: the planner finds its parent gone, exits, and writes nothing to the log the
    two share. (With multiprocessing's spawn, a kill between the child's start and the
    parent's write of its instructions left an EOFError traceback there, once in a CI run.)"""
    import os
    import subprocess
    import sys

    db = tmp_path / "nomade.db"
    store.open_store(str(db)).close()
    pidfile, log = tmp_path / "planner.pid", tmp_path / "aggregator.log"
    with log.open("w") as err:
        rc = subprocess.run(
            [sys.executable, "-c", PLANNER_KILLED, str(db), str(pidfile)], stderr=err, timeout=60
        ).returncode
    assert rc == -9, log.read_text()
    pid = int(pidfile.read_text())
    wait_for("the orphaned planner to exit", lambda: not os.path.exists(f"/proc/{pid}"), 30)
    assert log.read_text() == ""
