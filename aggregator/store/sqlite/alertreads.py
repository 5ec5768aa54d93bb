"""Reads for alert rules (aggregator/alerts/rules.py) that no view needs."""

from __future__ import annotations

import sqlite3
from typing import Any

import numpy as np

from aggregator.store.sqlite import samples


def ended_job_processes(conn: sqlite3.Connection, now: float, grace: float) -> list[dict[str, Any]]:
    """Per job that Slurm says ended more than GRACE seconds before NOW, and node whose agent
    still samples processes in its cgroup: uid, job_id, user, node, end_time, and the newest
    sample's time `t` and process count `nprocs`.  Only samples taken more than GRACE seconds
    after the job's end and within the last GRACE seconds count, and the newest of them must
    count processes: a cgroup that emptied, or a node that stopped sampling it, is no zombie."""
    since = now - grace
    recent = samples.recent_uids(conn, since)
    if not recent:
        return []
    out = []
    rows = [
        row
        for uid in recent  # the few jobs sampled lately, looked up by key, not every ended job
        for row in conn.execute(
            "SELECT uid, job_id, user, end_time FROM jobs WHERE uid = ? AND end_time < ?",
            (uid, since),
        )
    ]
    for uid, job_id, user, end_time in sorted(rows, key=lambda r: (r[1], r[0])):
        after = max(since, end_time + grace)
        for node, s in samples.series(conn, uid, since=after).items():
            t, nprocs = s.t, s.column("nprocs")
            later = np.nonzero((t > end_time + grace) & ~np.isnan(nprocs))[0]
            if len(later) and nprocs[later[-1]] > 0:
                out.append(
                    {
                        "uid": uid,
                        "job_id": job_id,
                        "user": user,
                        "node": node,
                        "end_time": end_time,
                        "t": float(t[later[-1]]),
                        "nprocs": int(nprocs[later[-1]]),
                    }
                )
    return out
