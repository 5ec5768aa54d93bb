"""What the models' evaluation report reads besides the ended jobs: the verdicts given at start.

verdict_outcomes(conn)    each scored job's verdict beside its outcome, for finished jobs
"""

from __future__ import annotations

import sqlite3
from typing import Any


def verdict_outcomes(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every verdict of a job whose outcome is known: job_id, p_fail, warned, outcome."""
    rows = conn.execute(
        "SELECT j.job_id, v.p_fail, v.warned, j.outcome FROM verdicts v"
        " JOIN jobs j ON j.uid = v.job_uid WHERE j.outcome IS NOT NULL"
    )
    names = [d[0] for d in rows.description]
    return [dict(zip(names, r, strict=True)) for r in rows.fetchall()]
