"""The history that features, scoring and training are built from: ended jobs as plain rows.

ended_jobs(conn, since)          every finished job with a known outcome, oldest start first
start_history(conn, job)         what a starting job's features read (models.features.StartHistory)
recent_vectors(conn, version, n) the stored feature vectors of the latest ended jobs
save_features(conn, rows)        feature vectors of jobs, in the writer's transaction
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from models.features import ACTIVITY_SECONDS, JOB_KEYS, KIND_WINDOW, WINDOW, StartHistory, name_key

# What a failed read raises (a locked or half-made store): callers catch it as store.StoreError.
StoreError = sqlite3.Error

_HISTORY_SQL = (
    "SELECT {keys} FROM jobs WHERE {who} = ? AND end_time <= ? AND outcome IS NOT NULL"
    " ORDER BY end_time DESC, job_id DESC LIMIT ?"
)


def _rows(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> list[dict[str, Any]]:
    cur = conn.execute(sql, args)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def ended_jobs(conn: sqlite3.Connection, since: float | None = None) -> list[dict[str, Any]]:
    """Every finished job with a known outcome, oldest start first (uid kept for bookkeeping)."""
    sql = (
        f"SELECT uid, {', '.join(JOB_KEYS)} FROM jobs"
        " WHERE outcome IS NOT NULL AND end_time IS NOT NULL"
    )
    args: tuple = ()
    if since is not None:
        sql += " AND coalesce(start_time, submit_time) >= ?"
        args = (since,)
    sql += " ORDER BY coalesce(start_time, submit_time), job_id"
    return [r for r in _rows(conn, sql, args) if r["submit_time"] is not None]


def _kind_rows(conn: sqlite3.Connection, job: dict[str, Any]) -> list[dict[str, Any]]:
    """The user's last KIND_WINDOW ended jobs with the job's name key, newest first.  SQL narrows
    to names containing the key (LIKE ignores ASCII case, and the key is ASCII letters); the exact
    `name_key` test is applied here, reading rows until KIND_WINDOW match."""
    key = name_key(job.get("job_name"))
    sql = (
        f"SELECT {', '.join(JOB_KEYS)} FROM jobs WHERE user = ? AND end_time <= ?"
        " AND outcome IS NOT NULL"
        + (" AND job_name LIKE ?" if key else "")
        + " ORDER BY end_time DESC, job_id DESC"
    )
    args: tuple = (job.get("user") or "", job["submit_time"]) + ((f"%{key}%",) if key else ())
    cur = conn.execute(sql, args)
    names = [d[0] for d in cur.description]
    out: list[dict[str, Any]] = []
    for row in cur:
        r = dict(zip(names, row, strict=True))
        if name_key(r.get("job_name")) == key:
            out.append(r)
            if len(out) >= KIND_WINDOW:
                break
    cur.close()
    return out


def start_history(conn: sqlite3.Connection, job: dict[str, Any]) -> StartHistory:
    """What a starting job's features read, as `features.Replay` builds it in training: its
    user's and account's last WINDOW jobs ended by its submit time and the user's last
    KIND_WINDOW of its kind (each oldest first), and the starts of the hour before it."""
    keys = ", ".join(JOB_KEYS)
    submit = job["submit_time"]
    user = _rows(
        conn, _HISTORY_SQL.format(keys=keys, who="user"), (job.get("user") or "", submit, WINDOW)
    )
    account = _rows(
        conn,
        _HISTORY_SQL.format(keys=keys, who="account"),
        (job.get("account") or "", submit, WINDOW),
    )
    start = job.get("start_time") or submit
    since = start - ACTIVITY_SECONDS
    cluster = conn.execute(
        "SELECT count(*) FROM jobs WHERE start_time >= ? AND start_time < ?", (since, start)
    ).fetchone()[0]
    mine = conn.execute(
        "SELECT count(*) FROM jobs WHERE user = ? AND start_time >= ? AND start_time < ?",
        (job.get("user") or "", since, start),
    ).fetchone()[0]
    return StartHistory(user[::-1], account[::-1], cluster, mine, _kind_rows(conn, job)[::-1])


def recent_vectors(conn: sqlite3.Connection, feature_version: int, limit: int) -> list[tuple]:
    """(end_time, job_id, outcome, vector bytes) of the latest LIMIT ended jobs with stored
    features of FEATURE_VERSION, newest first."""
    return [
        tuple(r)
        for r in conn.execute(
            "SELECT j.end_time, j.job_id, j.outcome, f.vector"
            " FROM jobs j JOIN job_features f ON f.job_uid = j.uid"
            " WHERE j.outcome IS NOT NULL AND j.end_time IS NOT NULL AND f.feature_version = ?"
            " ORDER BY j.end_time DESC LIMIT ?",
            (feature_version, limit),
        )
    ]


def save_features(conn: sqlite3.Connection, rows: Iterable[tuple[int, int, bytes]]) -> None:
    """(job uid, feature version, vector bytes) of jobs, replacing what was stored."""
    conn.executemany(
        "INSERT OR REPLACE INTO job_features (job_uid, feature_version, vector) VALUES (?, ?, ?)",
        list(rows),
    )
