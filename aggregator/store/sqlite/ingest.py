"""Applying what arrives (agent envelopes, hook reports, sacct answers) to the store.

Every function here runs inside the writer's transaction (see core.Writer) and is given the
write connection; none commits.  Envelopes are stored at most once: the `received` table's key
(node, epoch, seq) is written in the same transaction as the data it carried.
"""

from __future__ import annotations

import json
import logging
import math
import operator
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain, filterfalse
from typing import Any

from aggregator.jobs import fields as jobfields
from aggregator.store.sqlite import gpus, samples
from aggregator.store.sqlite.core import bump, event, store_failed
from collectors import registry
from collectors.runner import STATUS_FIELDS
from nomade_common import wire
from nomade_common.text import printable

log = logging.getLogger("nomade.aggregator")

_SAMPLE_WIDTH = len(wire.SAMPLE_FIELDS)


_JOB_COLUMNS = (
    "submit_time",
    "array_job_id",
    "array_task_id",
    "het_job_id",
    "het_job_offset",
    "user",
    "user_id",
    "account",
    "partition",
    "job_name",
    "work_dir",
    "nodes_requested",
    "node_list",
    "cpus",
    "mem_per_node_bytes",
    "mem_per_cpu_bytes",
    "gpus",
    "gres",
    "time_limit_seconds",
    "start_time",
    "end_time",
    "state",
    "outcome",
    "cancelled_by",
    "exit_code",
    "signal",
    "elapsed_seconds",
    "total_cpu_seconds",
    "max_rss_bytes",
    "reconcile",
    "reconcile_attempts",
    "reconcile_after",
    "request_json",
    "queue_json",
)


# Samples for a job id whose newest run ended this long before them belong to a new run.
REUSED_AFTER_SECONDS = 3600.0


class Rejected(ValueError):
    """An envelope that is well-formed msgpack but whose content can never be stored."""


@dataclass(slots=True)
class Answer:
    """What an envelope gets: "ack" (stored, or stored before), "nack" (never storable: KEY and
    REASON say which and why), "live" (a heartbeat or hello: stored, not acknowledged), "drop"
    (not even its key could be read: nothing to answer)."""

    kind: str
    env: wire.Envelope | None = None
    reason: str = ""
    key: tuple[str, int, int] | None = None


MAX_INT = (1 << 63) - 1  # SQLite's INTEGER
_FIRST, _SECOND = operator.itemgetter(0), operator.itemgetter(1)
_EMPTY_NUMBERS = frozenset({type(None), int, float, bool})  # what a falsy sample value may be
MAX_TEXT = 1024  # a host name, an agent version, a collector's name or error
MAX_DETAIL = 64 << 10  # a job event's payload, kept as JSON in its event
MAX_READING_CHARS = 4 << 20  # one node collector's records, as JSON
# The node agents' collectors (collectors/registry.py, side NODE): the names a readings
# envelope may carry.
NODE_COLLECTOR_NAMES = frozenset(c.name for c in registry.NODE_COLLECTORS)
BAD_LOG_SECONDS = 60.0  # one log line and one event per reason this often; all counted
BAD_LOG_MAX = 20  # and at most this many a minute, whatever the reasons


class Ingest:
    """Owned by the writer thread: keeps the job-id -> row cache that samples need."""

    def __init__(
        self,
        cluster: str,
        reconcile_delay: float = 2.0,
        readings_history_seconds: float = 600.0,
        sample_future_seconds: float = math.inf,
        sample_max_age_seconds: float = math.inf,
    ) -> None:
        """The sample-time window is the aggregator's (aggregator.sample_future_seconds and
        sample_max_age_days); an Ingest without one (an import, a test's story) takes any time."""
        self.cluster, self.reconcile_delay = cluster, reconcile_delay
        self.readings_history_seconds = readings_history_seconds
        self.sample_future_seconds = sample_future_seconds
        self.sample_max_age_seconds = sample_max_age_seconds
        self._uids: dict[int, int] = {}
        self._bad_noted: dict[str, float] = {}  # reason -> when last logged
        self._bad_minute: tuple[float, int] = (0.0, 0)  # (start, lines logged in it)

    def forget(self) -> None:
        self._uids.clear()

    def rolled_back(self) -> None:
        """The writer rolled a whole batch back: what this cached about it is void, the job
        rows it made and the refusals it noted (their events are to be written again)."""
        self._uids.clear()
        self._bad_noted.clear()
        self._bad_minute = (0.0, 0)

    # -- jobs ---------------------------------------------------------------------------------
    def job_uid(
        self, conn: sqlite3.Connection, job_id: int, now: float, t: float | None = None
    ) -> int:
        """The newest row for JOB_ID; a placeholder row when the job is not known yet, or when
        what arrives at time T is from long after that row's run ended: job ids come round again
        (a controller reset, history imported from another cluster), and a new run's first
        samples often arrive before its start report."""
        uid = self._uids.get(job_id)
        if uid is None:
            row = conn.execute(
                "SELECT uid, end_time FROM jobs WHERE cluster = ? AND job_id = ?"
                " ORDER BY uid DESC LIMIT 1",
                (self.cluster, job_id),
            ).fetchone()
            if row is None or (
                t is not None and row[1] is not None and t > row[1] + REUSED_AFTER_SECONDS
            ):
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
                " AND (submit_time = ? OR submit_time IS NULL)"
                " ORDER BY submit_time IS NULL, uid DESC",
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
            conn.execute("SELECT end_time FROM jobs WHERE uid = ?", (uid,)).fetchone()[0]
            is not None
        )
        newest = self._uids.get(job_id)
        if ended:
            if newest == uid:
                self._uids.pop(job_id)
        elif newest is None or uid > newest:
            self._uids[job_id] = uid
        return uid

    # -- envelopes ----------------------------------------------------------------------------
    def take(
        self,
        conn: sqlite3.Connection,
        data: bytes,
        now: float | None = None,
        admit: Callable[[sqlite3.Connection, wire.Envelope], bool] | None = None,
        peer: str = "?",
    ) -> Answer:
        """One message from an agent, inside the writer's transaction: decoded, checked against
        its bounds and stored, or refused with nothing of it stored (its own SAVEPOINT).  Every
        envelope whose key can be read gets an ACK or a NACK with the reason; ADMIT (CURVE:
        the key is this node's) refusing it answers "refused".  Only the store's own failures
        (sqlite3.OperationalError: locked, full) are raised, for the writer to retry."""
        now = time.time() if now is None else now
        try:
            return self._take(conn, data, now, admit, peer)
        except Exception as exc:
            if store_failed(exc):
                raise
            # Whatever else went wrong is this message's doing (a bug it found included): it is
            # refused, never taken for a failing store that would hold up everyone's batches.
            log.exception("message from %s not taken", printable(peer, 40))
            self.note_bad(conn, peer, f"not understood ({type(exc).__name__})", now)
            return Answer("drop", None, f"not understood ({type(exc).__name__})")

    def _take(
        self,
        conn: sqlite3.Connection,
        data: bytes,
        now: float,
        admit: Callable[[sqlite3.Connection, wire.Envelope], bool] | None,
        peer: str,
    ) -> Answer:
        try:
            env = wire.unpack(data)
        except wire.WireError as exc:
            self.note_bad(
                conn, peer if exc.key is None else f"{exc.key[0]} ({peer})", str(exc), now
            )
            return Answer("drop" if exc.key is None else "nack", None, str(exc), exc.key)
        key = (env.node, env.epoch, env.seq)
        if admit is not None and not admit(conn, env):
            return Answer("refused", env, "this agent's key is not enrolled for its node", key)
        if env.type not in wire.AGENT_TYPES:
            reason = f"unknown message type {env.type[:32]!r}"
            self.note_bad(conn, f"{env.node} ({peer})", reason, now)
            return Answer("nack", env, reason, key)
        conn.execute("SAVEPOINT envelope")
        try:
            result = self.apply_envelope(conn, env, now)
            conn.execute("RELEASE envelope")
        except Exception as exc:
            if store_failed(exc):
                raise  # the writer rolls the batch back and tries again
            conn.execute("ROLLBACK TO envelope")
            conn.execute("RELEASE envelope")
            self.forget()  # rows it created are gone
            reason = (
                str(exc)
                if isinstance(exc, Rejected)
                else f"not storable ({type(exc).__name__}: {exc})"
            )
            reason = printable(reason, 300)
            self.note_bad(conn, f"{env.node} ({peer})", reason, now)
            return Answer("nack", env, reason, key)
        return Answer("live" if result == "live" else "ack", env, "", key)

    def note_bad(self, conn: sqlite3.Connection, sender: str, reason: str, now: float) -> None:
        """Count a refused message; log it and keep an event (naming the sender of the first)
        at most once a minute per reason, so that a flood of bad messages, under as many node
        names as it likes, cannot fill the log or the store."""
        bump(conn, "messages_rejected")
        noted = reason.split("(")[0][:80]
        if now - self._bad_noted.get(noted, 0.0) < BAD_LOG_SECONDS:
            return
        minute, logged = self._bad_minute
        if now - minute >= BAD_LOG_SECONDS:
            self._bad_minute, self._bad_noted = (now, 0), {}
        elif logged >= BAD_LOG_MAX:  # reasons made to differ (a version number) count too
            return
        self._bad_minute = (self._bad_minute[0], self._bad_minute[1] + 1)
        self._bad_noted[noted] = now
        what = f"{printable(sender, 200)}: {printable(reason, 300)}"
        log.warning("refused a message from %s", what)
        event(conn, "bad_message", detail=what, t=now)

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
                (
                    _text(p, "host"),
                    _text(p, "agent_version"),
                    _number(p, "interval_seconds", 0, 86400),
                    env.node,
                ),
            )
        elif env.type == wire.HEARTBEAT:
            if isinstance(p.get("collectors"), dict):
                store_collector_status(conn, env.node, "node", p["collectors"], now)
            jobs = p.get("jobs")
            conn.execute(
                "UPDATE nodes SET last_heartbeat = ?, running_jobs = ?, outbox_depth = ?,"
                " outbox_dropped = ?, agent_nacked = ? WHERE node = ?",
                (
                    now,
                    len(jobs) if isinstance(jobs, list) else None,
                    _number(p, "outbox_depth", 0, MAX_INT, int),
                    _number(p, "dropped", 0, MAX_INT, int),
                    _number(p, "nacked", 0, MAX_INT, int),
                    env.node,
                ),
            )

    # -- collectors -----------------------------------------------------------------------------
    def _readings(self, conn: sqlite3.Connection, node: str, p: Any, now: float) -> None:
        if not (
            isinstance(p, dict)
            and isinstance(p.get("collector"), str)
            and isinstance(p.get("records"), list)
        ):
            raise Rejected("readings payload needs 'collector' and a 'records' list")
        if p["collector"] not in NODE_COLLECTOR_NAMES:  # each name keeps a history of its own
            raise Rejected(
                f"readings collector must be one of {', '.join(sorted(NODE_COLLECTOR_NAMES))}"
            )
        t = self._time(p.get("t"), "readings t", now)
        records = p["records"]
        try:
            text = json.dumps(records, separators=(",", ":"), allow_nan=False, default=_unstorable)
        except (ValueError, TypeError, RecursionError):  # NaN, a bytes key, nesting: made JSON
            records = _json_value(records)
            text = json.dumps(records, separators=(",", ":"), allow_nan=False)
        if len(text) > MAX_READING_CHARS:
            raise Rejected(
                f"readings records are {len(text)} characters as JSON, over {MAX_READING_CHARS}"
            )
        store_reading(
            conn,
            node,
            p["collector"],
            t,
            _number(p, "seconds", 0, 86400),
            records,
            self.readings_history_seconds,
            text,
        )

    def _time(self, t: Any, what: str, now: float) -> float:
        """T as a sample time: a finite number of Unix seconds near this clock, else Rejected."""
        if type(t) not in (int, float) or not math.isfinite(t):
            raise Rejected(f"{what} must be a finite number of Unix seconds, not {_shown(t)}")
        if not now - self.sample_max_age_seconds <= t <= now + self.sample_future_seconds:
            raise Rejected(
                f"{what} {t:.0f} is {t - now:+.0f} s from the aggregator's clock "
                f"(allowed: -{self.sample_max_age_seconds:.0f} to "
                f"+{self.sample_future_seconds:.0f} s)"
            )
        return float(t)

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
        if rows:
            rows = self._sample_bounds(conn, env.node, rows, now)
        for row in rows:
            uid = uids.get(row[0])
            if uid is None:
                t = row[1] if isinstance(row[1], (int, float)) else None
                uid = self.job_uid(conn, row[0], now, t)
            row[0] = uid
        samples.land(conn, env.node, rows, now)

    def _sample_bounds(
        self, conn: sqlite3.Connection, node: str, rows: list[list[Any]], now: float
    ) -> list[list[Any]]:
        """ROWS checked in a few passes in C over all their values at once (a thousand-row
        envelope costs microseconds): every value a non-negative integer below 2^63, a finite
        non-negative float, or null (a boolean counts as 0 or 1); job id an integer and time a
        number.  When that quick check fails, _bad_value looks value by value: a bad one refuses
        the envelope, naming its row and field.  Rows stamped too far from this clock are left
        out and counted on their node (nodes.samples_refused), the others stored."""
        present = list(filter(None, chain.from_iterable(rows)))  # None and 0 need no range check
        empty = set(map(type, filterfalse(None, chain.from_iterable(rows))))  # "", [], {} too
        times = list(map(_SECOND, rows))
        try:  # text or a map fails the sum (TypeError), NaN and infinities its finiteness
            total = sum(present)
            ok = (
                empty <= _EMPTY_NUMBERS
                and math.isfinite(total)
                and total <= MAX_INT
                and min(present) >= 0
                and set(map(type, map(_FIRST, rows))) == {int}
                and None not in times
            )
        except (OverflowError, TypeError, ValueError):
            ok = False
        if not ok:
            bad = _bad_value(rows)
            if bad:
                raise Rejected(bad)
        low, high = now - self.sample_max_age_seconds, now + self.sample_future_seconds
        if min(times) >= low and max(times) <= high:
            return rows
        kept = [r for r in rows if low <= r[1] <= high]
        worst = max(times, key=lambda t: abs(t - now))
        conn.execute(
            "UPDATE nodes SET samples_refused = samples_refused + ?, samples_refused_why = ?"
            " WHERE node = ?",
            (
                len(rows) - len(kept),
                f"sample time {worst - now:+.0f} s from the aggregator's clock",
                node,
            ),
        )
        bump(conn, "samples_refused_time", len(rows) - len(kept))
        return kept

    def _job_event(self, conn: sqlite3.Connection, env: wire.Envelope, now: float) -> None:
        p = env.payload
        if (
            not isinstance(p, dict)
            or type(p.get("job_id")) is not int
            or not 0 <= p["job_id"] <= MAX_INT
        ):
            raise Rejected(f"job_event payload needs an integer job_id from 0 to {MAX_INT}")
        if p.get("event") not in ("start", "end"):
            raise Rejected("job_event event must be 'start' or 'end'")
        t = self._time(p["t"], "job_event t", now) if "t" in p else now
        try:
            detail = json.dumps(p, default=str)
        except (TypeError, ValueError, RecursionError) as exc:
            raise Rejected(
                f"job_event payload is not JSON-like ({printable(str(exc), 80)})"
            ) from None
        if len(detail) > MAX_DETAIL:
            raise Rejected(f"job_event payload is {len(detail)} bytes as JSON, over {MAX_DETAIL}")
        uid = self.job_uid(conn, p["job_id"], now, t if p.get("event") == "start" else None)
        kind = f"node_job_{p['event']}"
        event(conn, kind, node=env.node, job_uid=uid, detail=detail, t=t)
        if p.get("event") == "end":
            self._uids.pop(p["job_id"], None)  # a later run of this id is found anew (job_uid)
            # The Epilog's report is durable (it travels through the agent's outbox), so a job
            # whose EpilogSlurmctld could not reach the aggregator is still reconciled.
            conn.execute(
                "UPDATE jobs SET end_time = coalesce(end_time, ?),"
                " reconcile_after = coalesce(reconcile_after, ?)"
                " WHERE uid = ? AND reconcile = 'pending'",
                (t, now + self.reconcile_delay, uid),
            )

    # -- hook reports -------------------------------------------------------------------------
    def job_start(
        self,
        conn: sqlite3.Connection,
        fields: dict[str, Any],
        queue: Any,
        now: float,
        vector: bytes | None = None,
        feature_version: int | None = None,
        verdict: dict[str, Any] | None = None,
        advice: dict[str, Any] | None = None,
    ) -> int:
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
                "INSERT OR REPLACE INTO verdicts (job_uid, model_version, t, p_fail, health,"
                " probs_json, risk, warned, reasons_json, message)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    uid,
                    verdict["model_version"],
                    now,
                    verdict["p_fail"],
                    verdict["health"],
                    jobfields.as_json(verdict["probs"]),
                    verdict["risk"],
                    int(verdict["warned"]),
                    jobfields.as_json(verdict["reasons"]),
                    "\n".join(verdict["lines"]),
                ),
            )
        if advice is not None:
            mem, limit = advice.get("mem"), advice.get("time")
            conn.execute(
                "INSERT OR REPLACE INTO advice"
                " (job_uid, t, mem_bytes, time_seconds, printed, advice_json)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    uid,
                    now,
                    mem and mem["value"],
                    limit and limit["value"],
                    int(bool(advice.get("printed"))),
                    jobfields.as_json(advice),
                ),
            )
        return uid

    def job_end(
        self, conn: sqlite3.Connection, fields: dict[str, Any], delay: float, now: float
    ) -> int:
        fields = dict(
            fields,
            end_time=fields.get("end_time") or now,
            reconcile="pending",
            reconcile_after=now + delay,
        )
        uid = self.upsert_job(conn, fields, now)
        event(conn, "job_end", job_uid=uid, t=now)
        return uid

    def reconciled(
        self,
        conn: sqlite3.Connection,
        uid: int,
        final: dict[str, Any] | None,
        attempts: int,
        max_attempts: int,
        delay: float,
        now: float,
    ) -> None:
        """Store sacct's final record, or schedule the next try with exponential backoff."""
        if final is not None:
            known = {k: v for k, v in final.items() if v is not None}
            # The job's memory peak and CPU time: the larger of sacct's and the agents'.
            known.update(_sampled_over(conn, uid, known))
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
            "UPDATE jobs SET reconcile = ?, reconcile_attempts = ?, reconcile_after = ?,"
            " updated = ? WHERE uid = ?",
            (state, attempts, now + delay * 2**attempts, now, uid),
        )
        if state == "unreconciled":
            # sacct never answered (no accounting here, or not for this job): what the agents
            # sampled is all NØMADE will know of the job's CPU time and memory peak.
            row = conn.execute(
                "SELECT max_rss_bytes, total_cpu_seconds FROM jobs WHERE uid = ?", (uid,)
            ).fetchone()
            known = {"max_rss_bytes": row[0], "total_cpu_seconds": row[1]}
            better = _sampled_over(conn, uid, known)
            if better:
                sets = ", ".join(f"{k} = ?" for k in better)
                conn.execute(f"UPDATE jobs SET {sets} WHERE uid = ?", (*better.values(), uid))
            event(conn, "job_unreconciled", job_uid=uid, t=now)


def _sampled_over(conn: sqlite3.Connection, uid: int, known: dict[str, Any]) -> dict[str, Any]:
    """The job's memory peak and CPU time where NØMADE's agents sampled more than KNOWN holds:
    sacct's MaxRSS is 0 or a few KB for short jobs (sampled only every
    JobAcctGatherFrequency), and its TotalCPU leaves out processes killed before they were
    waited for (a cancelled or timed-out job's can be 0)."""
    peak, cpu = samples.sampled_totals(conn, uid)
    out: dict[str, Any] = {}
    if peak is not None and peak > (known.get("max_rss_bytes") or 0):
        out["max_rss_bytes"] = peak
    if cpu is not None and cpu > (known.get("total_cpu_seconds") or 0):
        out["total_cpu_seconds"] = cpu
    return out


# -- collectors (node readings arrive in envelopes; head-node ones from the aggregator itself) ---
def store_reading(
    conn: sqlite3.Connection,
    node: str,
    collector: str,
    t: float,
    seconds: Any,
    records: list[Any],
    history_seconds: float,
    text: str | None = None,
) -> None:
    """The latest reading of (node, collector), and one reading per HISTORY_SECONDS kept as
    history (for fill rates and trends) so that a 1,000-node cluster does not store every run.
    TEXT: the records as JSON, when the caller has made it already."""
    if text is None:
        text = json.dumps(records, separators=(",", ":"), default=str)
    row = conn.execute(
        "SELECT t FROM readings_latest WHERE node = ? AND collector = ?", (node, collector)
    ).fetchone()
    if row is not None and row[0] > t:
        return  # an older reading delivered late (resent after an aggregator restart)
    conn.execute(
        "INSERT OR REPLACE INTO readings_latest VALUES (?, ?, ?, ?, ?)",
        (node, collector, t, seconds if isinstance(seconds, (int, float)) else None, text),
    )
    if collector == "gpu" and isinstance(records, list):
        gpus.fold_reading(conn, node, t, records)  # each job's GPUs, as the readings arrive
    last = conn.execute(
        "SELECT max(t) FROM readings WHERE collector = ? AND node = ?", (collector, node)
    ).fetchone()[0]
    # A health reading that carries kernel hardware errors is kept (at most one a minute, so a
    # node cannot grow the history faster): the collector reports each logged line once, so a
    # reading left out of the history would lose its errors.
    errors = collector == "health" and '"record":"kernel_error"' in text
    if last is None or t - last >= (min(history_seconds, 60.0) if errors else history_seconds):
        conn.execute(
            "INSERT INTO readings (node, collector, t, records_json) VALUES (?, ?, ?, ?)",
            (node, collector, t, text),
        )


_STATUS_SQL = (
    f"INSERT OR REPLACE INTO collector_status (node, collector, role, {', '.join(STATUS_FIELDS)},"
    f" updated) VALUES ({', '.join('?' * (len(STATUS_FIELDS) + 4))})"
)


def store_collector_status(
    conn: sqlite3.Connection, node: str, role: str, status: dict[Any, Any], now: float
) -> None:
    """Each collector's STATUS_FIELDS values as its runner reports them (wire.HEARTBEAT);
    malformed entries are skipped."""
    for name, values in status.items():
        if (
            isinstance(name, str)
            and 0 < len(name) <= 64
            and isinstance(values, list)
            and len(values) == len(STATUS_FIELDS)
            and all(map(_scalar, values))
        ):
            values = [printable(v, MAX_TEXT) if isinstance(v, str) else v for v in values]
            conn.execute(_STATUS_SQL, (node, printable(name, 64), role, *values, now))


def _scalar(v: Any) -> bool:
    """A value SQLite stores as it is: null, text, an integer in range, a finite float."""
    t = type(v)
    return (
        v is None
        or t is str
        or (t is int and -MAX_INT <= v <= MAX_INT)
        or (t is float and math.isfinite(v))
    )


READING_DEPTH = 32  # nesting a reading's records keep; deeper values are stored as null


def _json_value(value: Any, depth: int = 0) -> Any:
    """VALUE as JSON can carry it and every reader can read it: a number that is not finite
    (NaN, infinity) and anything nested deeper than READING_DEPTH become None, a number as a key
    its text; bytes are refused (Rejected) as before."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float)):
        return value
    if depth >= READING_DEPTH:
        return None
    if isinstance(value, (list, tuple)):
        return [_json_value(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {_key(k): _json_value(v, depth + 1) for k, v in value.items()}
    return _unstorable(value)  # bytes, msgpack's extension types: refused, as ever


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, (int, float)):
        return json.dumps(_json_value(key))  # as json.dumps writes such a key: 7 -> "7"
    return _unstorable(key)


def _unstorable(value: Any) -> Any:
    raise Rejected(f"readings records hold a {type(value).__name__}, which JSON cannot carry")


def _shown(value: Any) -> str:
    """VALUE as a refusal names it: its type, and its value when short."""
    text = repr(value)
    return f"{type(value).__name__} {text}" if len(text) <= 40 else type(value).__name__


def _bad_value(rows: list[list[Any]]) -> str:
    """Which value of ROWS refuses their envelope, and why (the first, row by row); "" when
    none does (large values whose sum passed 2^63, each of them in range)."""
    for i, row in enumerate(rows):
        for c, v in enumerate(row):
            field = wire.SAMPLE_FIELDS[c]
            if v is None and c > 1:
                continue
            if c == 0 and type(v) is not int:
                return f"sample row {i}: job_id is {_shown(v)}; expected an integer"
            if type(v) not in (int, float, bool):
                return f"sample row {i}: {field} is {_shown(v)}; expected a number or null"
            if not math.isfinite(v):
                return f"sample row {i}: {field} is {v}; expected a finite number"
            if not 0 <= v <= MAX_INT:
                return f"sample row {i}: {field} is {v}; expected 0 to {MAX_INT}"
    return ""


def _number(p: dict[Any, Any], key: str, low: float, high: float, kind: type = float) -> Any:
    """P[KEY] if it is a finite number from LOW to HIGH, else None (a heartbeat's or hello's
    optional figures: a wrong one is left out rather than refusing the node's liveness)."""
    v = p.get(key)
    if type(v) not in (int, float) or (kind is int and type(v) is not int):
        return None
    return v if math.isfinite(v) and low <= v <= high else None


def _text(p: dict[Any, Any], key: str) -> str | None:
    v = p.get(key)
    return printable(v, MAX_TEXT) if isinstance(v, str) else None
