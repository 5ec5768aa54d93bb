"""Read-side views of the store shared by `nomadectl` and the aggregator's JSON API.

Units are in the names.  Per-node figures come from the node's samples (cumulative counters: the
last value is the total); a job's memory peak is the larger of its sampled cgroup peak and
sacct's MaxRSS.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from .outcome import is_failure
from .store import JOB_TIME

JOB_COLUMNS = (
    "job_id", "submit_time", "user", "user_id", "account", "partition", "job_name", "work_dir",
    "nodes_requested", "node_list", "cpus", "mem_per_node_bytes", "mem_per_cpu_bytes", "gpus",
    "gres", "time_limit_seconds", "array_job_id", "array_task_id", "het_job_id", "het_job_offset",
    "start_time", "end_time", "state", "outcome", "cancelled_by", "exit_code", "signal",
    "elapsed_seconds", "total_cpu_seconds", "max_rss_bytes", "reconcile",
)  # fmt: skip

_NODE_SUMMARY = """
SELECT node, count(*) AS samples, min(t) AS first_t, max(t) AS last_t,
       max(cpu_usage_seconds) AS cpu_seconds,
       max(max(coalesce(mem_peak_bytes, 0), coalesce(mem_current_bytes, 0))) AS mem_peak_bytes,
       max(max(coalesce(proc_read_bytes, 0), coalesce(cgroup_read_bytes, 0))) AS read_bytes,
       max(max(coalesce(proc_write_bytes, 0), coalesce(cgroup_write_bytes, 0))) AS write_bytes,
       count(mem_peak_bytes) AS has_mem, count(proc_read_bytes) + count(cgroup_read_bytes) AS has_io
FROM samples WHERE job_uid = ? GROUP BY node ORDER BY node
"""


def _row_job(row: sqlite3.Row) -> dict[str, Any]:
    out = {k: row[k] for k in JOB_COLUMNS}
    out["failed"] = is_failure(out["outcome"])
    return out


def find_job(conn: sqlite3.Connection, job_id: int) -> sqlite3.Row | None:
    """The newest run of JOB_ID by submit time (ids are reused after controller resets, and
    imported history makes newer rows for older runs)."""
    return conn.execute(
        f"SELECT * FROM jobs WHERE job_id = ? ORDER BY {JOB_TIME} DESC, uid DESC LIMIT 1", (job_id,)
    ).fetchone()


def job(conn: sqlite3.Connection, job_id: int, series_points: int = 20) -> dict[str, Any] | None:
    row = find_job(conn, job_id)
    if row is None:
        return None
    out = _row_job(row)
    nodes = []
    for n in conn.execute(_NODE_SUMMARY, (row["uid"],)):
        nodes.append({
            "node": n["node"], "samples": n["samples"], "first_sample_time": n["first_t"],
            "last_sample_time": n["last_t"], "cpu_seconds": n["cpu_seconds"],
            "mem_peak_bytes": n["mem_peak_bytes"] if n["has_mem"] else None,
            "read_bytes": n["read_bytes"] if n["has_io"] else None,
            "write_bytes": n["write_bytes"] if n["has_io"] else None,
        })  # fmt: skip
    out["nodes"] = nodes
    peaks = [n["mem_peak_bytes"] for n in nodes if n["mem_peak_bytes"] is not None]
    if row["max_rss_bytes"] is not None:
        peaks.append(row["max_rss_bytes"])
    out["mem_peak_bytes"] = max(peaks) if peaks else None
    out["series"] = series(conn, row["uid"], series_points)
    out["queue_at_start"] = json.loads(row["queue_json"]) if row["queue_json"] else None
    out["verdict"], out["advice"] = verdict(conn, row["uid"]), advice(conn, row["uid"])
    return out


def verdict(conn: sqlite3.Connection, uid: int) -> dict[str, Any] | None:
    """The verdict the job got at its start (None: it was not scored)."""
    v = conn.execute(
        "SELECT model_version, t, p_fail, warned, message FROM verdicts WHERE job_uid = ?", (uid,)
    ).fetchone()
    if v is None:
        return None
    return {"model_version": v["model_version"], "t": v["t"], "p_fail": v["p_fail"],
            "warned": bool(v["warned"]), "lines": v["message"].splitlines() if v["message"] else []}  # fmt: skip


def advice(conn: sqlite3.Connection, uid: int) -> dict[str, Any] | None:
    """The right-sizing advice the job got at its start: per resource ("mem", "time") the
    suggestion and its evidence, and the lines printed into its output."""
    a = conn.execute("SELECT advice_json FROM advice WHERE job_uid = ?", (uid,)).fetchone()
    return json.loads(a[0]) if a else None


def series(conn: sqlite3.Connection, uid: int, points: int) -> list[dict[str, Any]]:
    """A compact time series: at most POINTS samples per node, evenly spaced."""
    rows = conn.execute(
        "SELECT node, t, cpu_usage_seconds, mem_current_bytes, proc_read_bytes, proc_write_bytes"
        " FROM samples WHERE job_uid = ? ORDER BY node, t",
        (uid,),
    ).fetchall()
    by_node: dict[str, list[sqlite3.Row]] = {}
    for r in rows:
        by_node.setdefault(r["node"], []).append(r)
    out = []
    for node, rs in by_node.items():
        step = max(1, -(-len(rs) // points))
        picked = rs[::step] if rs[-1] in rs[::step] else [*rs[::step], rs[-1]]
        out += [{"node": node, "t": r["t"], "cpu_seconds": r["cpu_usage_seconds"],
                 "mem_bytes": r["mem_current_bytes"], "read_bytes": r["proc_read_bytes"],
                 "write_bytes": r["proc_write_bytes"]} for r in picked]  # fmt: skip
    return out


def jobs(conn: sqlite3.Connection, user: str | None = None, state: str | None = None,
         since: float | None = None, limit: int = 100) -> list[dict[str, Any]]:  # fmt: skip
    where, args = [], []
    if user:
        where.append("user = ?")
        args.append(user)
    if state:
        where.append("(outcome = ? OR state LIKE ?)")
        args += [state.upper(), state.upper() + "%"]
    if since is not None:
        where.append(f"{JOB_TIME} >= ?")
        args.append(since)
    sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
    sql += f" ORDER BY {JOB_TIME} DESC, uid DESC LIMIT ?"  # the indexes jobs_by_time, _user_time
    return [_row_job(r) for r in conn.execute(sql, (*args, limit))]


def status(conn: sqlite3.Connection, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    nodes = [dict(r) for r in conn.execute(
        "SELECT node, host, state, last_seen, last_heartbeat, running_jobs, outbox_depth,"
        " outbox_dropped, interval_seconds, samples_refused, samples_refused_why, agent_nacked"
        " FROM nodes ORDER BY node")]  # fmt: skip
    for n in nodes:
        n["seconds_since_seen"] = round(now - n["last_seen"], 1)
    running = conn.execute(
        "SELECT job_id, user, partition, node_list, start_time FROM jobs"
        " WHERE start_time IS NOT NULL AND end_time IS NULL ORDER BY job_id"
    ).fetchall()
    recent = conn.execute(
        "SELECT count(*), coalesce(sum(rows), 0) FROM received WHERE t >= ?", (now - 60,)
    ).fetchone()
    counters = dict(conn.execute("SELECT name, value FROM counters").fetchall())
    return {
        "time": now,
        "nodes": nodes,
        "running_jobs": [dict(r) for r in running],
        "ingest": {
            "envelopes_last_minute": recent[0],
            "samples_last_minute": recent[1],
            "samples_per_second": round(recent[1] / 60, 2),
        },  # fmt: skip
        "counters": counters,
        "jobs_total": conn.execute("SELECT count(*) FROM jobs").fetchone()[0],
        "unreconciled_jobs": conn.execute(
            "SELECT count(*) FROM jobs WHERE reconcile = 'unreconciled'"
        ).fetchone()[0],
        "agents_refused": agents_refused(conn, counters),
        "agents_on_plain": agents_on_plain(conn),
    }


REFUSED = "agents_refused_"


def agents_refused(conn: sqlite3.Connection, counters: dict[str, int]) -> dict[str, Any]:
    """Handshakes and messages the agent socket refused, by reason, and the last one."""
    by_reason = {k[len(REFUSED) :]: v for k, v in counters.items() if k.startswith(REFUSED)}
    last = conn.execute(
        "SELECT t, detail FROM events WHERE kind = 'agent_refused' ORDER BY t DESC LIMIT 1"
    ).fetchone()
    peer, _, reason = (last[1] or "").rpartition(": ") if last else ("", "", "")
    return {"total": sum(by_reason.values()), "by_reason": by_reason,
            "last_time": last[0] if last else None, "last_peer": peer or None,
            "last_reason": reason or None}  # fmt: skip


PLAIN_RECENT_SECONDS = 600.0  # a node heard on the plain port within this is "still on plain"


def agents_on_plain(conn: sqlite3.Connection, now: float | None = None) -> list[str]:
    """Nodes heard over plain ZeroMQ lately (security.curve "rollout") and never over CURVE."""
    since = (time.time() if now is None else now) - PLAIN_RECENT_SECONDS
    try:
        rows = conn.execute("SELECT node FROM agent_links WHERE plain_seen >= ?"
                            " AND curve_seen IS NULL ORDER BY node", (since,)).fetchall()  # fmt: skip
    except sqlite3.OperationalError:  # a database from before migration 0005
        return []
    return [r[0] for r in rows]
