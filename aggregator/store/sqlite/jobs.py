"""Job runs as the importer and the reconciler find and complete them (the `jobs` table;
what agents and hooks report goes through ingest.py)."""

from __future__ import annotations

import sqlite3
from typing import Any

_SAME_RUN = (
    "SELECT * FROM jobs WHERE cluster = ? AND job_id = ?"
    " AND (submit_time = ? OR submit_time IS NULL)"
    " ORDER BY submit_time IS NULL, uid DESC LIMIT 1"
)
_NEWEST_RUN = "SELECT * FROM jobs WHERE cluster = ? AND job_id = ? ORDER BY uid DESC LIMIT 1"


def find_run(
    conn: sqlite3.Connection, cluster: str, job_id: int, submit_time: float | None
) -> dict[str, Any] | None:
    """The `jobs` row of CLUSTER's run of JOB_ID submitted at SUBMIT_TIME, or the row of a run
    of it whose submit time is not known yet (a placeholder); with no SUBMIT_TIME, the newest
    run of JOB_ID.  None when there is none."""
    key = (cluster, job_id)
    found = (
        conn.execute(_NEWEST_RUN, key)
        if submit_time is None
        else conn.execute(_SAME_RUN, (*key, submit_time))
    )
    row = found.fetchone()
    return None if row is None else dict(row)


def update_job(conn: sqlite3.Connection, uid: int, fields: dict[str, Any], now: float) -> None:
    """Set FIELDS (column name -> value, at least one) of run UID, updated at NOW."""
    sets = ", ".join(f"{k} = ?" for k in fields)
    conn.execute(f"UPDATE jobs SET {sets}, updated = ? WHERE uid = ?", (*fields.values(), now, uid))


def reconcile_due(conn: sqlite3.Connection, now: float, limit: int = 500) -> list[tuple]:
    """(uid, job_id, submit_time, reconcile_attempts) of at most LIMIT runs waiting for sacct's
    final record whose next try is due at NOW, the longest waiting first."""
    rows = conn.execute(
        "SELECT uid, job_id, submit_time, reconcile_attempts FROM jobs"
        " WHERE reconcile = 'pending' AND reconcile_after <= ? ORDER BY reconcile_after LIMIT ?",
        (now, limit),
    ).fetchall()
    return [tuple(r) for r in rows]
