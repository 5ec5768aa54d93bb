"""Each job's GPUs: what the node agents' GPU readings (collectors/gpu.py records) say about the
GPUs a job's processes run on, folded into `job_gpus` as each reading arrives.

A GPU belongs to a job in a reading when one of its `process` records names the job
(`job_id`, which the agent reads from the process's cgroup).  Per job, node and GPU the table
keeps the number of readings, running sums for the means (utilisation, power), maxima
(utilisation, memory used on the GPU, the job's own processes' memory, power, temperature) and
how many readings found the GPU idle.  A reading at or before the last one folded for a row
(an agent's resend) adds nothing.

Readings come from agents: every value is checked here (type, finite, range) and what does not
fit is left out, never stored.
"""

from __future__ import annotations

import math
import sqlite3
from typing import Any

from aggregator.store.sqlite.core import JOB_TIME
from collectors.slurm import slurmvalues as sv

IDLE_PERCENT = 5.0  # a reading under this utilisation finds the GPU idle
MAX_JOB_ID = 2**63 - 1
MAX_BYTES = 1 << 50  # larger than any GPU's memory: a value past it is not one
MAX_GPUS_PER_READING = 64  # GPUs per node a reading may name for jobs; more are ignored
MAX_PAIRS_PER_READING = 256  # (job, GPU) rows one reading may fold
MAX_GPUS_PER_JOB_NODE = 64  # GPUs a job may have on one node; a node naming more is ignored


def _num(value: Any, low: float, high: float) -> float | None:
    if type(value) not in (int, float) or not math.isfinite(value) or not low <= value <= high:
        return None
    return float(value)


def _int(value: Any, low: int, high: int) -> int | None:
    return value if type(value) is int and low <= value <= high else None


def _text(value: Any, limit: int = 128) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def fold_reading(conn: sqlite3.Connection, node: str, t: float, records: list[Any]) -> int:
    """Fold one GPU reading of NODE at T into job_gpus; returns how many (job, GPU) rows."""
    gpus: dict[str, dict[str, Any]] = {}
    jobs: dict[str, dict[int, int | None]] = {}  # gpu key -> job_id -> its processes' memory
    for r in records:
        if not isinstance(r, dict):
            continue
        if r.get("record") == "gpu":
            key = _text(r.get("uuid")) or _key_of_index(r.get("index"))
            if key is not None:
                gpus.setdefault(key, r)
                index = _int(r.get("index"), 0, 1 << 16)
                if index is not None:  # processes of CSV readings name only the uuid
                    gpus.setdefault(f"index {index}", r)
        elif r.get("record") == "process":
            job_id = _int(r.get("job_id"), 0, MAX_JOB_ID)
            key = _text(r.get("gpu_uuid")) or _key_of_index(r.get("gpu_index"))
            if job_id is None or key is None:
                continue
            used = _int(r.get("used_memory_bytes"), 0, MAX_BYTES)
            mem = jobs.setdefault(key, {})
            mem[job_id] = (mem.get(job_id) or 0) + used if used is not None else mem.get(job_id)
    folded = 0
    seen: set[tuple[int, str]] = set()
    for key, by_job in list(jobs.items())[:MAX_GPUS_PER_READING]:
        gpu = gpus.get(key)
        if gpu is None:
            continue
        name = _text(gpu.get("uuid")) or key
        for job_id, job_mem in by_job.items():
            if len(seen) >= MAX_PAIRS_PER_READING:
                return folded
            uid = _running_uid(conn, job_id, node, t)
            if uid is None or (uid, name) in seen:
                continue
            seen.add((uid, name))
            folded += _fold(conn, uid, node, name, t, gpu, job_mem)
    return folded


def _key_of_index(value: Any) -> str | None:
    index = _int(value, 0, 1 << 16)
    return None if index is None else f"index {index}"


def _running_uid(conn: sqlite3.Connection, job_id: int, node: str, t: float) -> int | None:
    """The run of JOB_ID that was running at T (started, not ended a minute before T) on NODE:
    a node outside the job's node list, where the list is known, cannot report its GPUs."""
    row = conn.execute(
        "SELECT uid, node_list FROM jobs WHERE job_id = ?"
        " AND (start_time IS NULL OR start_time <= ?) AND (end_time IS NULL OR end_time >= ?)"
        f" ORDER BY {JOB_TIME} DESC, uid DESC LIMIT 1",
        (job_id, t + 60, t - 60),
    ).fetchone()
    if row is None:
        return None
    if row[1]:
        try:
            if node not in sv.hostlist(row[1]):
                return None
        except ValueError:  # a list too long to expand: the node is not checked
            pass
    return row[0]


def _fold(
    conn: sqlite3.Connection,
    uid: int,
    node: str,
    gpu_key: str,
    t: float,
    gpu: dict[str, Any],
    job_mem: int | None,
) -> int:
    row = conn.execute(
        "SELECT * FROM job_gpus WHERE job_uid = ? AND node = ? AND gpu = ?", (uid, node, gpu_key)
    ).fetchone()
    old = dict(row) if row is not None else None
    if old is not None and t <= old["last_t"]:
        return 0  # a resend, or a reading older than one already folded
    if old is None and (
        conn.execute(
            "SELECT count(*) FROM job_gpus WHERE job_uid = ? AND node = ?", (uid, node)
        ).fetchone()[0]
        >= MAX_GPUS_PER_JOB_NODE
    ):
        return 0  # no node has more GPUs: new names past this are not GPUs of the job
    util = _num(gpu.get("util_gpu_percent"), 0, 100)
    power = _num(gpu.get("power_draw_w"), 0, 100_000)
    temp = _num(gpu.get("temperature_gpu_c"), -100, 300)
    used = _int(gpu.get("memory_used_bytes"), 0, MAX_BYTES)
    new = {
        "job_uid": uid,
        "node": node,
        "gpu": gpu_key,
        "gpu_index": _int(gpu.get("index"), 0, 1 << 16),
        "name": _text(gpu.get("name")),
        "memory_total_bytes": _int(gpu.get("memory_total_bytes"), 0, MAX_BYTES),
        "readings": 1,
        "first_t": t,
        "last_t": t,
        "util_sum": util or 0.0,
        "util_n": int(util is not None),
        "util_max": util,
        "idle_n": int(util is not None and util < IDLE_PERCENT),
        "memory_used_max_bytes": used,
        "job_memory_max_bytes": job_mem,
        "power_sum": power or 0.0,
        "power_n": int(power is not None),
        "power_max": power,
        "temperature_max_c": temp,
    }
    if old is not None:
        for k in ("readings", "util_sum", "util_n", "idle_n", "power_sum", "power_n"):
            new[k] += old[k]
        for k in (
            "util_max",
            "memory_used_max_bytes",
            "job_memory_max_bytes",
            "power_max",
            "temperature_max_c",
        ):
            new[k] = max((v for v in (old[k], new[k]) if v is not None), default=None)
        new["first_t"] = old["first_t"]
        for k in ("gpu_index", "name", "memory_total_bytes"):
            new[k] = new[k] if new[k] is not None else old[k]
    conn.execute(
        f"INSERT OR REPLACE INTO job_gpus ({', '.join(new)}) VALUES ({', '.join('?' * len(new))})",
        tuple(new.values()),
    )
    return 1


def job_gpus(conn: sqlite3.Connection, uid: int) -> list[dict[str, Any]]:
    """Per node and GPU of job UID, by node and GPU index: readings, the time they cover,
    utilisation (mean, max, share of readings idle), memory (the GPU's and the job's
    processes' peak, the GPU's total), power (mean, max) and the hottest temperature."""
    out = []
    for r in conn.execute(
        "SELECT * FROM job_gpus WHERE job_uid = ? ORDER BY node, gpu_index, gpu", (uid,)
    ):
        r = dict(r)
        out.append(
            {
                "node": r["node"],
                "gpu": r["gpu"],
                "index": r["gpu_index"],
                "name": r["name"],
                "readings": r["readings"],
                "first_time": r["first_t"],
                "last_time": r["last_t"],
                "util_mean_percent": round(r["util_sum"] / r["util_n"], 1) if r["util_n"] else None,
                "util_max_percent": r["util_max"],
                "idle_share": round(r["idle_n"] / r["util_n"], 3) if r["util_n"] else None,
                "memory_used_max_bytes": r["memory_used_max_bytes"],
                "job_memory_max_bytes": r["job_memory_max_bytes"],
                "memory_total_bytes": r["memory_total_bytes"],
                "power_mean_w": round(r["power_sum"] / r["power_n"], 1) if r["power_n"] else None,
                "power_max_w": r["power_max"],
                "temperature_max_c": r["temperature_max_c"],
            }
        )
    return out
