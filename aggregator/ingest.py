"""Applying what arrives (agent envelopes, hook reports, sacct answers) to the store.

Every function here runs inside the writer's transaction (see store.Writer) and is given the
write connection; none commits.  Envelopes are stored at most once: the `received` table's key
(node, epoch, seq) is written in the same transaction as the data it carried.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from itertools import chain
from typing import Any

from nomade_common import wire
from nomade_common.collect import STATUS_FIELDS

from . import jobs as jobfields
from .store import bump, event

# Samples go in as multi-row INSERTs of these sizes (largest first, as many as fit SQLite's
# limit on parameters): one statement per up to 256 rows binds and steps about 30% faster than
# executemany's one step per row, and a handful of fixed sizes keeps the statement cache warm.
# Every row of a statement names the envelope's node as the same parameter, ?1, so the rows
# are bound as they arrived (wire order, job id replaced by the job's uid) with nothing inserted.
_CHUNK_SIZES = (256, 64, 16, 4, 1)
_SAMPLE_WIDTH = len(wire.SAMPLE_FIELDS)


@functools.cache
def _sample_sql(rows: int) -> str:
    one = f"(?1, {', '.join('?' * _SAMPLE_WIDTH)})"
    return (
        f"INSERT OR IGNORE INTO samples (node, job_uid, {', '.join(wire.SAMPLE_FIELDS[1:])}) "
        f"VALUES {', '.join([one] * rows)}"
    )


def insert_samples(conn: sqlite3.Connection, node: str, rows: list[list[Any]]) -> None:
    """Insert ROWS of NODE, each ``[job_uid, t, ...]``: SAMPLE_FIELDS with the job's uid first."""
    limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    i, n = 0, len(rows)
    for size in _CHUNK_SIZES:
        if size * _SAMPLE_WIDTH + 1 > limit and size > 1:
            continue
        while n - i >= size:
            params = [node]
            params.extend(chain.from_iterable(rows[i : i + size]))
            conn.execute(_sample_sql(size), params)
            i += size


_JOB_COLUMNS = (
    "submit_time", "array_job_id", "array_task_id", "het_job_id", "het_job_offset", "user",
    "user_id", "account", "partition", "job_name", "work_dir", "nodes_requested", "node_list",
    "cpus", "mem_per_node_bytes", "mem_per_cpu_bytes", "gpus", "gres", "time_limit_seconds",
    "start_time", "end_time", "state", "outcome", "cancelled_by", "exit_code", "signal",
    "elapsed_seconds", "total_cpu_seconds", "max_rss_bytes", "reconcile", "reconcile_attempts",
    "reconcile_after", "request_json", "queue_json",
)  # fmt: skip


# Samples for a job id whose newest run ended this long before them belong to a new run.
REUSED_AFTER_SECONDS = 3600.0


class Rejected(ValueError):
    """An envelope that is well-formed msgpack but whose content can never be stored."""


class Ingest:
    """Owned by the writer thread: keeps the job-id -> row cache that samples need."""

    def __init__(self, cluster: str, reconcile_delay: float = 2.0,
                 readings_history_seconds: float = 600.0) -> None:  # fmt: skip
        self.cluster, self.reconcile_delay = cluster, reconcile_delay
        self.readings_history_seconds = readings_history_seconds
        self._uids: dict[int, int] = {}

    def forget(self) -> None:
        self._uids.clear()

    # -- jobs ---------------------------------------------------------------------------------
    def job_uid(self, conn: sqlite3.Connection, job_id: int, now: float, t: float | None = None) -> int:
        """The newest row for JOB_ID; a placeholder row when the job is not known yet, or when
        what arrives at time T is from long after that row's run ended: job ids come round again
        (a controller reset, history imported from another cluster), and a new run's first
        samples often arrive before its start report."""
        uid = self._uids.get(job_id)
        if uid is None:
            row = conn.execute(
                "SELECT uid, end_time FROM jobs WHERE cluster = ? AND job_id = ? ORDER BY uid DESC LIMIT 1",
                (self.cluster, job_id),
            ).fetchone()
            if row is None or (t is not None and row[1] is not None and t > row[1] + REUSED_AFTER_SECONDS):
                uid = conn.execute(
                    "INSERT INTO jobs (cluster, job_id, created, updated) VALUES (?, ?, ?, ?)",
                    (self.cluster, job_id, now, now),
                ).lastrowid
            elif row[1] is not None:
                return row[0]  # late data of an ended run: not cached, the next run is found anew
            else:
                uid = row[0]
            self._uids[job_id] = uid
        return uid

    def upsert_job(self, conn: sqlite3.Connection, fields: dict[str, Any], now: float) -> int:
        """Insert or complete the row of (cluster, job_id, submit_time).

        A placeholder row (made from agent samples before the hook's report arrived, so with no
        submit time) is completed rather than duplicated.
        """
        job_id, submit = fields["job_id"], fields.get("submit_time")
        if submit is None:  # a report that cannot tell runs apart: the newest run of this id
            uid = self.job_uid(conn, job_id, now)
        else:
            row = conn.execute(
                "SELECT uid FROM jobs WHERE cluster = ? AND job_id = ?"
                " AND (submit_time = ? OR submit_time IS NULL) ORDER BY submit_time IS NULL, uid DESC",
                (self.cluster, job_id, submit),
            ).fetchone()
            uid = (
                row[0]
                if row
                else conn.execute(
                    "INSERT INTO jobs (cluster, job_id, created, updated) VALUES (?, ?, ?, ?)",
                    (self.cluster, job_id, now, now),
                ).lastrowid
            )
        known = {k: v for k, v in fields.items() if k in _JOB_COLUMNS and v is not None}
        if known:
            sets = ", ".join(f"{k} = ?" for k in known)
            conn.execute(
                f"UPDATE jobs SET {sets}, updated = ? WHERE uid = ?", (*known.values(), now, uid)
            )
        # An ended run is not cached: a later run of this id is found anew.  A start can arrive
        # after its end (over HTTP, a short job's end is stored while its start is scored), so
        # it is the row that says whether the run has ended, not the report.
        ended = fields.get("end_time") is not None or (
            conn.execute("SELECT end_time FROM jobs WHERE uid = ?", (uid,)).fetchone()[0] is not None
        )
        newest = self._uids.get(job_id)
        if ended:
            if newest == uid:
                self._uids.pop(job_id)
        elif newest is None or uid > newest:
            self._uids[job_id] = uid
        return uid

    # -- envelopes ----------------------------------------------------------------------------
    def apply_envelope(
        self, conn: sqlite3.Connection, env: wire.Envelope, now: float | None = None
    ) -> str:
        now = time.time() if now is None else now
        if env.type in (wire.HELLO, wire.HEARTBEAT):
            self._touch_node(conn, env, now)
            return "live"
        rows = env.payload.get("rows") if isinstance(env.payload, dict) else None
        n_rows = len(rows) if isinstance(rows, list) else 0
        fresh = conn.execute(
            "INSERT OR IGNORE INTO received VALUES (?, ?, ?, ?, ?, ?)",
            (env.node, env.epoch, env.seq, env.type, n_rows, now),
        ).rowcount
        if not fresh:
            bump(conn, "envelopes_duplicate")
            return "duplicate"
        self._touch_node(conn, env, now)
        try:
            if env.type == wire.SAMPLES:
                self._samples(conn, env, rows, now)
            elif env.type == wire.JOB_EVENT:
                self._job_event(conn, env, now)
            elif env.type == wire.READINGS:
                self._readings(conn, env.node, env.payload, now)
        except Exception:
            self.forget()  # the writer rolls this envelope back: rows it created are gone
            raise
        bump(conn, f"envelopes_{env.type}")
        return "stored"

    def _touch_node(self, conn: sqlite3.Connection, env: wire.Envelope, now: float) -> None:
        p = env.payload if isinstance(env.payload, dict) else {}
        conn.execute(
            "INSERT INTO nodes (node, first_seen, last_seen, state) VALUES (?, ?, ?, 'up')"
            " ON CONFLICT (node) DO UPDATE SET last_seen = excluded.last_seen",
            (env.node, now, now),
        )
        if env.type == wire.HELLO:
            conn.execute(
                "UPDATE nodes SET host = ?, agent_version = ?, interval_seconds = ? WHERE node = ?",
                (p.get("host"), p.get("agent_version"), p.get("interval_seconds"), env.node),
            )
        elif env.type == wire.HEARTBEAT:
            if isinstance(p.get("collectors"), dict):
                store_collector_status(conn, env.node, "node", p["collectors"], now)
            jobs = p.get("jobs")
            conn.execute(
                "UPDATE nodes SET last_heartbeat = ?, running_jobs = ?, outbox_depth = ?,"
                " outbox_dropped = ? WHERE node = ?",
                (now, len(jobs) if isinstance(jobs, list) else None, p.get("outbox_depth"),
                 p.get("dropped"), env.node),
            )  # fmt: skip

    # -- collectors -----------------------------------------------------------------------------
    def _readings(self, conn: sqlite3.Connection, node: str, p: Any, now: float) -> None:
        if not (isinstance(p, dict) and isinstance(p.get("collector"), str)
                and isinstance(p.get("t"), (int, float)) and isinstance(p.get("records"), list)):  # fmt: skip
            raise Rejected("readings payload needs 'collector', a numeric 't' and a 'records' list")
        store_reading(conn, node, p["collector"], float(p["t"]), p.get("seconds"), p["records"],
                      self.readings_history_seconds)  # fmt: skip

    def _samples(self, conn: sqlite3.Connection, env: wire.Envelope, rows: Any, now: float) -> None:
        if not isinstance(rows, list):
            raise Rejected("samples payload has no 'rows' list")
        # The rows are this envelope's own lists: each row's job id is replaced by its uid in place.
        uids, width = self._uids, _SAMPLE_WIDTH
        for i, row in enumerate(rows):
            if type(row) is not list or len(row) != width or type(row[0]) is not int:
                raise Rejected(
                    f"sample row {i} is not a list of {width} values starting with a job id"
                )
            uid = uids.get(row[0])
            if uid is None:
                t = row[1] if isinstance(row[1], (int, float)) else None
                uid = self.job_uid(conn, row[0], now, t)
            row[0] = uid
        insert_samples(conn, env.node, rows)

    def _job_event(self, conn: sqlite3.Connection, env: wire.Envelope, now: float) -> None:
        p = env.payload
        if not isinstance(p, dict) or not isinstance(p.get("job_id"), int):
            raise Rejected("job_event payload needs an integer job_id")
        t = p.get("t") if isinstance(p.get("t"), (int, float)) else None
        uid = self.job_uid(conn, p["job_id"], now, t if p.get("event") == "start" else None)
        kind = f"node_job_{p.get('event', 'unknown')}"
        event(conn, kind, node=env.node, job_uid=uid, detail=json.dumps(p), t=p.get("t", now))
        if p.get("event") == "end":
            self._uids.pop(p["job_id"], None)  # a later run of this id is found anew (job_uid)
            # The Epilog's report is durable (it travels through the agent's outbox), so a job
            # whose EpilogSlurmctld could not reach the aggregator is still reconciled.
            conn.execute(
                "UPDATE jobs SET end_time = coalesce(end_time, ?),"
                " reconcile_after = coalesce(reconcile_after, ?) WHERE uid = ? AND reconcile = 'pending'",
                (p.get("t", now), now + self.reconcile_delay, uid),
            )

    # -- hook reports -------------------------------------------------------------------------
    def job_start(self, conn: sqlite3.Connection, fields: dict[str, Any], queue: Any, now: float,
                  vector: bytes | None = None, feature_version: int | None = None,
                  verdict: dict[str, Any] | None = None) -> int:  # fmt: skip
        fields = dict(
            fields, request_json=jobfields.as_json(fields), queue_json=jobfields.as_json(queue)
        )
        uid = self.upsert_job(conn, fields, now)
        event(conn, "job_start", job_uid=uid, t=now)
        if vector is not None:
            conn.execute(
                "INSERT OR REPLACE INTO job_features VALUES (?, ?, ?)",
                (uid, feature_version, vector),
            )
        if verdict is not None:
            conn.execute(
                "INSERT OR REPLACE INTO verdicts (job_uid, model_version, t, p_fail, health, probs_json, risk,"
                " warned, reasons_json, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (uid, verdict["model_version"], now, verdict["p_fail"], verdict["health"],
                 jobfields.as_json(verdict["probs"]), verdict["risk"], int(verdict["warned"]),
                 jobfields.as_json(verdict["reasons"]), "\n".join(verdict["lines"])),
            )  # fmt: skip
        return uid

    def job_end(
        self, conn: sqlite3.Connection, fields: dict[str, Any], delay: float, now: float
    ) -> int:
        fields = dict(fields, end_time=fields.get("end_time") or now, reconcile="pending",
                      reconcile_after=now + delay)  # fmt: skip
        uid = self.upsert_job(conn, fields, now)
        event(conn, "job_end", job_uid=uid, t=now)
        return uid

    def reconciled(self, conn: sqlite3.Connection, uid: int, final: dict[str, Any] | None,
                   attempts: int, max_attempts: int, delay: float, now: float) -> None:  # fmt: skip
        """Store sacct's final record, or schedule the next try with exponential backoff."""
        if final is not None:
            known = {k: v for k, v in final.items() if v is not None}
            # The job's memory peak: the larger of sacct's MaxRSS (0 or a few KB for short jobs,
            # sampled only every JobAcctGatherFrequency) and the peak NØMADE's agents sampled.
            sampled = conn.execute(
                "SELECT max(mem_peak_bytes) FROM samples WHERE job_uid = ?", (uid,)
            ).fetchone()[0]
            if sampled is not None and sampled > (known.get("max_rss_bytes") or 0):
                known["max_rss_bytes"] = sampled
            if (
                conn.execute("SELECT submit_time FROM jobs WHERE uid = ?", (uid,)).fetchone()[0]
                is not None
            ):
                known.pop("submit_time", None)  # part of the job's identity: set once
            known.update(reconcile="done", reconcile_attempts=attempts)
            sets = ", ".join(f"{k} = ?" for k in known)
            conn.execute(
                f"UPDATE jobs SET {sets}, updated = ? WHERE uid = ?", (*known.values(), now, uid)
            )
            return
        state = "pending" if attempts < max_attempts else "unreconciled"
        conn.execute(
            "UPDATE jobs SET reconcile = ?, reconcile_attempts = ?, reconcile_after = ?, updated = ?"
            " WHERE uid = ?",
            (state, attempts, now + delay * 2**attempts, now, uid),
        )
        if state == "unreconciled":
            event(conn, "job_unreconciled", job_uid=uid, t=now)


# -- collectors (node readings arrive in envelopes; head-node ones from the aggregator itself) ---
def store_reading(conn: sqlite3.Connection, node: str, collector: str, t: float,
                  seconds: Any, records: list[Any], history_seconds: float) -> None:  # fmt: skip
    """The latest reading of (node, collector), and one reading per HISTORY_SECONDS kept as
    history (for fill rates and trends) so that a 1,000-node cluster does not store every run."""
    text = json.dumps(records, separators=(",", ":"), default=str)
    row = conn.execute("SELECT t FROM readings_latest WHERE node = ? AND collector = ?",
                       (node, collector)).fetchone()  # fmt: skip
    if row is not None and row[0] > t:
        return  # an older reading delivered late (resent after an aggregator restart)
    conn.execute("INSERT OR REPLACE INTO readings_latest VALUES (?, ?, ?, ?, ?)",
                 (node, collector, t, seconds if isinstance(seconds, (int, float)) else None, text))  # fmt: skip
    last = conn.execute("SELECT max(t) FROM readings WHERE collector = ? AND node = ?",
                        (collector, node)).fetchone()[0]  # fmt: skip
    if last is None or t - last >= history_seconds:
        conn.execute("INSERT INTO readings (node, collector, t, records_json) VALUES (?, ?, ?, ?)",
                     (node, collector, t, text))  # fmt: skip


_STATUS_SQL = (
    f"INSERT OR REPLACE INTO collector_status (node, collector, role, {', '.join(STATUS_FIELDS)},"
    f" updated) VALUES ({', '.join('?' * (len(STATUS_FIELDS) + 4))})"
)


def store_collector_status(conn: sqlite3.Connection, node: str, role: str,
                           status: dict[Any, Any], now: float) -> None:  # fmt: skip
    """Each collector's STATUS_FIELDS values as its runner reports them (wire.HEARTBEAT);
    malformed entries are skipped."""
    for name, values in status.items():
        if isinstance(name, str) and isinstance(values, list) and len(values) == len(STATUS_FIELDS):
            conn.execute(_STATUS_SQL, (node, name, role, *values, now))
