"""Job records for training and evaluation, from NØMADE's store (pure sqlite3 + stdlib)."""

from __future__ import annotations

import sqlite3
from typing import Any

from .features import JOB_KEYS


def ended_jobs(conn: sqlite3.Connection, since: float | None = None) -> list[dict[str, Any]]:
    """Every finished job with a known outcome, oldest start first (uid kept for bookkeeping)."""
    sql = f"SELECT uid, {', '.join(JOB_KEYS)} FROM jobs WHERE outcome IS NOT NULL AND end_time IS NOT NULL"
    args: tuple = ()
    if since is not None:
        sql += " AND coalesce(start_time, submit_time) >= ?"
        args = (since,)
    sql += " ORDER BY coalesce(start_time, submit_time), job_id"
    cur = conn.execute(sql, args)
    names = [d[0] for d in cur.description]
    return [
        dict(zip(names, row, strict=True))
        for row in cur.fetchall()
        if row[names.index("submit_time")] is not None
    ]
