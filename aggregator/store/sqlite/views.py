"""What the read-side views (aggregator/views/query.py, aggregator/views/clusterviews.py) ask of
the store: rows as dicts by column name or tuples by position, JSON columns decoded, never
SQLite's own row type.  The views shape them for `nomadectl` and the JSON API.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import numpy as np

from aggregator.store.sqlite import samples
from aggregator.store.sqlite.core import JOB_TIME


# -- jobs ---------------------------------------------------------------------------------------
def find_job(conn: sqlite3.Connection, job_id: int) -> dict[str, Any] | None:
    """The `jobs` row of the newest run of JOB_ID by submit time (ids are reused after
    controller resets, and imported history makes newer rows for older runs)."""
    row = conn.execute(
        f"SELECT * FROM jobs WHERE job_id = ? ORDER BY {JOB_TIME} DESC, uid DESC LIMIT 1", (job_id,)
    ).fetchone()
    return None if row is None else dict(row)


# A job's efficiencies as fractions, as aggregator/views/query.py:efficiency computes them from a
# jobs row (NULL where a figure is unknown): CPU seconds over elapsed times CPUs, and the memory
# peak over the memory asked for per node.
CPU_EFFICIENCY_SQL = (
    "(total_cpu_seconds"
    " / nullif(coalesce(elapsed_seconds, max(0, end_time - start_time)) * cpus, 0))"
)
MEM_EFFICIENCY_SQL = (
    "(max_rss_bytes * 1.0 / nullif(coalesce(nullif(mem_per_node_bytes, 0), mem_per_cpu_bytes"
    " * ((cpus + max(1, coalesce(nodes_requested, 1)) - 1) / max(1, coalesce(nodes_requested,"
    " 1)))), 0))"
)


def find_jobs(
    conn: sqlite3.Connection,
    user: str | None = None,
    state: str | None = None,
    since: float | None = None,
    limit: int = 100,
    efficiency_below: float | None = None,
) -> list[dict[str, Any]]:
    """`jobs` rows, newest first: of USER, whose outcome is STATE or whose Slurm state begins
    with it (either case), submitted (else started, else first seen) at or after SINCE.  With
    EFFICIENCY_BELOW (percent): ended jobs whose CPU or memory efficiency (EFFICIENCY_SQL) is
    below it, least efficient first."""
    where: list[str] = []
    args: list[Any] = []
    if user:
        where.append("user = ?")
        args.append(user)
    if state:
        where.append("(outcome = ? OR state LIKE ?)")
        args += [state.upper(), state.upper() + "%"]
    if since is not None:
        where.append(f"{JOB_TIME} >= ?")
        args.append(since)
    order = f"{JOB_TIME} DESC, uid DESC"  # the indexes jobs_by_time, _user_time
    if efficiency_below is not None:
        cpu, mem = CPU_EFFICIENCY_SQL, MEM_EFFICIENCY_SQL
        where.append(f"end_time IS NOT NULL AND ({cpu} < ? OR {mem} < ?)")
        args += [efficiency_below / 100] * 2
        order = f"min(coalesce({cpu}, 1e300), coalesce({mem}, 1e300)), {order}"
    sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
    sql += f" ORDER BY {order} LIMIT ?"
    return [dict(r) for r in conn.execute(sql, (*args, limit))]


def job_node_summaries(conn: sqlite3.Connection, uid: int) -> list[dict[str, Any]]:
    """Per node of job UID, by node name: samples, first_t, last_t, cpu_seconds and the
    largest memory and I/O figures (0 where none: has_mem and has_io count the values), and
    per reading its peak, mean, p95, first and last value ("readings")."""
    return samples.node_summaries(conn, uid)


def job_samples(
    conn: sqlite3.Connection, uid: int, points: int | None = None
) -> list[dict[str, Any]]:
    """Job UID's samples by node, then time: their CPU, memory and process I/O figures; at
    most about POINTS per node, evenly spaced and the last among them, when given."""
    out = []
    for node, s in samples.series(conn, uid).items():
        index = samples.picked(len(s), points) if points else None
        t = s.t.tolist() if index is None else s.t[index].tolist()
        columns = [
            s.values(name, index)
            for name in (
                "cpu_usage_seconds",
                "mem_current_bytes",
                "proc_read_bytes",
                "proc_write_bytes",
            )
        ]
        out += [
            {
                "node": node,
                "t": ti,
                "cpu_usage_seconds": cpu,
                "mem_current_bytes": mem,
                "proc_read_bytes": rd,
                "proc_write_bytes": wr,
            }
            for ti, cpu, mem, rd, wr in zip(t, *columns, strict=True)
        ]
    return out


def job_verdict(conn: sqlite3.Connection, uid: int) -> dict[str, Any] | None:
    """The verdict job UID got at its start (None: it was not scored)."""
    v = conn.execute(
        "SELECT model_version, t, p_fail, warned, message FROM verdicts WHERE job_uid = ?", (uid,)
    ).fetchone()
    if v is None:
        return None
    return {
        "model_version": v["model_version"],
        "t": v["t"],
        "p_fail": v["p_fail"],
        "warned": bool(v["warned"]),
        "lines": v["message"].splitlines() if v["message"] else [],
    }


def job_advice(conn: sqlite3.Connection, uid: int) -> dict[str, Any] | None:
    """The right-sizing advice job UID got at its start: per resource ("mem", "time") the
    suggestion and its evidence, and the lines printed into its output."""
    a = conn.execute("SELECT advice_json FROM advice WHERE job_uid = ?", (uid,)).fetchone()
    return json.loads(a[0]) if a else None


def running_jobs(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Jobs started and not ended, by job id: job_id, user, partition, node_list, start_time."""
    rows = conn.execute(
        "SELECT job_id, user, partition, node_list, start_time FROM jobs"
        " WHERE start_time IS NOT NULL AND end_time IS NULL ORDER BY job_id"
    ).fetchall()
    return [dict(r) for r in rows]


def count_jobs(conn: sqlite3.Connection, reconcile: str | None = None) -> int:
    """How many job runs the store holds (whose reconcile state is RECONCILE, if given)."""
    if reconcile is None:
        return conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
    return conn.execute("SELECT count(*) FROM jobs WHERE reconcile = ?", (reconcile,)).fetchone()[0]


# -- agents and ingest ------------------------------------------------------------------------
def agent_nodes(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every node an agent has reported from, by name, with what its agent last said."""
    rows = conn.execute(
        "SELECT node, host, state, last_seen, last_heartbeat, running_jobs, outbox_depth,"
        " outbox_dropped, interval_seconds, samples_refused, samples_refused_why, agent_nacked"
        " FROM nodes ORDER BY node"
    )
    return [dict(r) for r in rows]


def received_since(conn: sqlite3.Connection, since: float) -> tuple[int, int]:
    """(envelopes, sample rows) stored since SINCE."""
    row = conn.execute(
        "SELECT count(*), coalesce(sum(rows), 0) FROM received WHERE t >= ?", (since,)
    ).fetchone()
    return row[0], row[1]


def counters(conn: sqlite3.Connection) -> dict[str, int]:
    """Every counter (store.bump) by name."""
    return dict(conn.execute("SELECT name, value FROM counters").fetchall())


def last_event(conn: sqlite3.Connection, kind: str) -> tuple[float, str | None] | None:
    """(time, detail) of the newest event of KIND; None when there is none."""
    row = conn.execute(
        "SELECT t, detail FROM events WHERE kind = ? ORDER BY t DESC LIMIT 1", (kind,)
    ).fetchone()
    return None if row is None else (row[0], row[1])


def nodes_on_plain(conn: sqlite3.Connection, since: float) -> list[str]:
    """Nodes heard over plain ZeroMQ since SINCE and never over CURVE, by name."""
    try:
        rows = conn.execute(
            "SELECT node FROM agent_links WHERE plain_seen >= ?"
            " AND curve_seen IS NULL ORDER BY node",
            (since,),
        ).fetchall()
    except sqlite3.OperationalError:  # a database from before migration 0005
        return []
    return [r[0] for r in rows]


# -- what the collectors read ------------------------------------------------------------------
def latest_readings(
    conn: sqlite3.Connection, collector: str
) -> dict[str, tuple[float, list[dict]]]:
    """node -> (time, records) of COLLECTOR's newest reading."""
    rows = conn.execute(
        "SELECT node, t, records_json FROM readings_latest WHERE collector = ? ORDER BY node",
        (collector,),
    ).fetchall()
    return {r[0]: (r[1], json.loads(r[2])) for r in rows}


def running_job_cpu(conn: sqlite3.Connection, since: float) -> list[tuple]:
    """Per running job and node sampled since SINCE: (job_id, user, partition, node_list,
    start_time, node, first sample time, last sample time, CPU seconds used between them)."""
    recent = samples.recent_uids(conn, since)
    out = []
    for r in conn.execute(
        "SELECT uid, job_id, user, partition, node_list, start_time FROM jobs"
        " WHERE start_time IS NOT NULL AND end_time IS NULL"
    ).fetchall():
        if r[0] not in recent:
            continue
        for node, s in samples.series(conn, r[0], since=since).items():
            cpu = s.column("cpu_usage_seconds")
            used = None if np.isnan(cpu).all() else float(np.nanmax(cpu) - np.nanmin(cpu))
            out.append((*tuple(r)[1:], node, float(s.t[0]), float(s.t[-1]), used))
    return out


def sampled_running_jobs(conn: sqlite3.Connection, since: float) -> list[dict[str, Any]]:
    """The running jobs sampled since SINCE, by job id: uid, job_id, user."""
    recent = samples.recent_uids(conn, since)
    rows = conn.execute(
        "SELECT uid, job_id, user FROM jobs WHERE start_time IS NOT NULL AND end_time IS NULL"
        " ORDER BY job_id, uid"
    ).fetchall()
    return [{"uid": r[0], "job_id": r[1], "user": r[2]} for r in rows if r[0] in recent]


def running_job_memory(conn: sqlite3.Connection, since: float) -> list[dict[str, Any]]:
    """Per running job and node sampled since SINCE: uid, job_id, user, node, the sample times
    `t`, the memory in use `mem` (bytes) and the job's memory limit on that node `limit` (the
    newest sampled, None where the cgroup has none)."""
    out = []
    for job in sampled_running_jobs(conn, since):
        for node, s in samples.series(conn, job["uid"], since=since).items():
            mem, limit = s.column("mem_current_bytes"), s.column("mem_limit_bytes")
            known = limit[~np.isnan(limit)]
            out.append(
                {
                    **job,
                    "node": node,
                    "t": s.t.tolist(),
                    "mem": [None if np.isnan(v) else float(v) for v in mem],
                    "limit": float(known[-1]) if len(known) else None,
                }
            )
    return out


def array_outcomes(conn: sqlite3.Connection, since: float) -> list[dict[str, Any]]:
    """Per job array submitted (else started, else first seen) since SINCE: its tasks, how
    many are unfinished, completed and failed, and the outcomes they ended in."""
    rows = conn.execute(
        "SELECT array_job_id, user, count(*), sum(outcome IS NULL),"
        " sum(outcome = 'COMPLETED'),"
        " sum(outcome IS NOT NULL AND outcome NOT IN ('COMPLETED', 'CANCELLED')),"
        " group_concat(DISTINCT outcome) FROM jobs WHERE array_job_id IS NOT NULL"
        " AND coalesce(submit_time, start_time, created) >= ? GROUP BY array_job_id",
        (since,),
    ).fetchall()
    return [
        {
            "array_job_id": r[0],
            "user": r[1],
            "tasks": r[2],
            "unfinished": r[3],
            "completed": r[4],
            "failed": r[5],
            "outcomes": sorted((r[6] or "").split(",")) if r[6] else [],
        }
        for r in rows
    ]


def collector_statuses(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Each (node, collector)'s run counts, last error and duration, by collector then node."""
    rows = conn.execute("SELECT * FROM collector_status ORDER BY collector, node").fetchall()
    return [dict(r) for r in rows]
