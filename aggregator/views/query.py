"""Read-side views of the store shared by `nomadectl` and the aggregator's JSON API.

Units are in the names.  Per-node figures come from the node's samples (cumulative counters: the
last value is the total); a job's memory peak is the larger of its sampled cgroup peak and
sacct's MaxRSS.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aggregator import store
from aggregator.jobs.outcome import is_failure

JOB_COLUMNS = (
    "job_id",
    "submit_time",
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
    "array_job_id",
    "array_task_id",
    "het_job_id",
    "het_job_offset",
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
)


def _row_job(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: row[k] for k in JOB_COLUMNS}
    out["failed"] = is_failure(out["outcome"])
    return out


def _list_job(row: dict[str, Any]) -> dict[str, Any]:
    """A row of `nomadectl jobs`: the job, and its efficiency from what sacct and the agents
    recorded (max_rss_bytes holds the larger of sacct's MaxRSS and the sampled peak)."""
    out = _row_job(row)
    out["efficiency"] = efficiency(row, row["total_cpu_seconds"], row["max_rss_bytes"])
    return out


def mem_request_per_node(row: dict[str, Any]) -> int | None:
    """The memory the job asked for on each node: --mem, or --mem-per-cpu times its CPUs per
    node (CPUs spread evenly over its nodes, as Slurm spreads them unless told otherwise)."""
    if row["mem_per_node_bytes"]:
        return row["mem_per_node_bytes"]
    if row["mem_per_cpu_bytes"] and row["cpus"]:
        nodes = max(1, row["nodes_requested"] or 1)
        return int(row["mem_per_cpu_bytes"] * -(-row["cpus"] // nodes))
    return None


def efficiency(
    row: dict[str, Any],
    cpu_seconds: float | None,
    mem_peak_bytes: int | None,
    now: float | None = None,
) -> dict[str, Any]:
    """CPU efficiency: CPU seconds over elapsed times CPUs; memory efficiency: the peak on a
    node over the memory asked for per node.  As percentages, None where a figure is unknown
    (no request, not started, no samples and no sacct record).  A running job's elapsed time
    runs to NOW (None: not computed for running jobs)."""
    elapsed = row["elapsed_seconds"]
    if elapsed is None and row["start_time"] is not None:
        end = row["end_time"] if row["end_time"] is not None else now
        elapsed = None if end is None else max(0.0, end - row["start_time"])
    core_seconds = elapsed * row["cpus"] if elapsed and row["cpus"] else None
    request = mem_request_per_node(row)
    return {
        "cpu_percent": round(100 * cpu_seconds / core_seconds, 1)
        if cpu_seconds is not None and core_seconds
        else None,
        "cpu_seconds": cpu_seconds,
        "core_seconds": core_seconds,
        "mem_percent": round(100 * mem_peak_bytes / request, 1)
        if mem_peak_bytes is not None and request
        else None,
        "mem_peak_bytes": mem_peak_bytes,
        "mem_request_per_node_bytes": request,
    }


def io_split(readings: dict[str, Any]) -> dict[str, Any]:
    """A node's bytes read and written on its local block devices (what the job's cgroup was
    charged) and elsewhere (what its processes read and wrote beyond that: network
    filesystems such as NFS, which charge no local device).  None where either figure is
    missing.  On cgroup v1 the kernel does not charge buffered writes to the job's cgroup, so
    there local writes count as elsewhere (docs/json.md)."""

    def peak(name: str) -> float | None:
        r = readings.get(name)
        return None if r is None else r["peak"]

    out: dict[str, Any] = {}
    for way in ("read", "write"):
        local, total = peak(f"cgroup_{way}_bytes"), peak(f"proc_{way}_bytes")
        out[f"local_{way}_bytes"] = local
        out[f"network_{way}_bytes"] = (
            max(0, total - local) if local is not None and total is not None else None
        )
    return out


def job(conn: Any, job_id: int, series_points: int = 20) -> dict[str, Any] | None:
    """Job JOB_ID's record, per-node summaries, series, verdict and advice, as of one moment."""
    with store.snapshot(conn):
        return _job(conn, job_id, series_points)


def _job(conn: Any, job_id: int, series_points: int) -> dict[str, Any] | None:
    now = time.time()
    row = store.find_job(conn, job_id)
    if row is None:
        return None
    out = _row_job(row)
    nodes = []
    for n in store.job_node_summaries(conn, row["uid"]):
        nodes.append(
            {
                "node": n["node"],
                "samples": n["samples"],
                "first_sample_time": n["first_t"],
                "last_sample_time": n["last_t"],
                "cpu_seconds": n["cpu_seconds"],
                "mem_peak_bytes": n["mem_peak_bytes"] if n["has_mem"] else None,
                "read_bytes": n["read_bytes"] if n["has_io"] else None,
                "write_bytes": n["write_bytes"] if n["has_io"] else None,
                **io_split(n.get("readings", {})),
            }
        )
    out["nodes"] = nodes
    peaks = [n["mem_peak_bytes"] for n in nodes if n["mem_peak_bytes"] is not None]
    if row["max_rss_bytes"] is not None:
        peaks.append(row["max_rss_bytes"])
    out["mem_peak_bytes"] = max(peaks) if peaks else None
    # CPU time: the larger of the agents' sum over nodes (short of the last interval) and
    # sacct's TotalCPU (short of processes killed before they were waited for).
    sampled = [n["cpu_seconds"] for n in nodes if n["cpu_seconds"] is not None]
    cpu = [
        v for v in (sum(sampled) if sampled else None, row["total_cpu_seconds"]) if v is not None
    ]
    out["efficiency"] = efficiency(row, max(cpu) if cpu else None, out["mem_peak_bytes"], now)
    out["gpus_used"] = store.job_gpus(conn, row["uid"])
    out["series"] = series(conn, row["uid"], series_points)
    out["queue_at_start"] = json.loads(row["queue_json"]) if row["queue_json"] else None
    out["verdict"] = store.job_verdict(conn, row["uid"])
    out["advice"] = store.job_advice(conn, row["uid"])
    return out


def series(conn: Any, uid: int, points: int) -> list[dict[str, Any]]:
    """A compact time series: at most POINTS samples per node, evenly spaced."""
    return [
        {
            "node": r["node"],
            "t": r["t"],
            "cpu_seconds": r["cpu_usage_seconds"],
            "mem_bytes": r["mem_current_bytes"],
            "read_bytes": r["proc_read_bytes"],
            "write_bytes": r["proc_write_bytes"],
        }
        for r in store.job_samples(conn, uid, points)
    ]


def jobs(
    conn: Any,
    user: str | None = None,
    state: str | None = None,
    since: float | None = None,
    limit: int = 100,
    efficiency_below: float | None = None,
) -> list[dict[str, Any]]:
    """Jobs newest first; with EFFICIENCY_BELOW (percent), ended jobs whose CPU or memory
    efficiency is below it, least efficient first."""
    return [
        _list_job(r)
        for r in store.find_jobs(conn, user, state, since, limit, efficiency_below=efficiency_below)
    ]


def status(conn: Any, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    nodes = store.agent_nodes(conn)
    for n in nodes:
        n["seconds_since_seen"] = round(now - n["last_seen"], 1)
    envelopes, samples = store.received_since(conn, now - 60)
    counters = store.counters(conn)
    return {
        "time": now,
        "nodes": nodes,
        "running_jobs": store.running_jobs(conn),
        "ingest": {
            "envelopes_last_minute": envelopes,
            "samples_last_minute": samples,
            "samples_per_second": round(samples / 60, 2),
        },
        "counters": counters,
        "jobs_total": store.count_jobs(conn),
        "unreconciled_jobs": store.count_jobs(conn, reconcile="unreconciled"),
        "agents_refused": agents_refused(conn, counters),
        "agents_on_plain": agents_on_plain(conn),
    }


REFUSED = "agents_refused_"


def agents_refused(conn: Any, counters: dict[str, int]) -> dict[str, Any]:
    """Handshakes and messages the agent socket refused, by reason, and the last one."""
    by_reason = {k[len(REFUSED) :]: v for k, v in counters.items() if k.startswith(REFUSED)}
    last = store.last_event(conn, "agent_refused")
    peer, _, reason = (last[1] or "").rpartition(": ") if last else ("", "", "")
    return {
        "total": sum(by_reason.values()),
        "by_reason": by_reason,
        "last_time": last[0] if last else None,
        "last_peer": peer or None,
        "last_reason": reason or None,
    }


PLAIN_RECENT_SECONDS = 600.0  # a node heard on the plain port within this is "still on plain"


def agents_on_plain(conn: Any, now: float | None = None) -> list[str]:
    """Nodes heard over plain ZeroMQ lately (security.curve "rollout") and never over CURVE."""
    since = (time.time() if now is None else now) - PLAIN_RECENT_SECONDS
    return store.nodes_on_plain(conn, since)
