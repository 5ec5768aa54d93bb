"""Turn what Slurm says about a job (hook environment, `scontrol show job`, `sacct`) into the
columns of NØMADE's `jobs` table.  Pure functions: a field that cannot be had is None, never a
default, so the model can tell "not requested" from "unknown".
"""

from __future__ import annotations

import json
from typing import Any

from aggregator.jobs.outcome import classify
from collectors.slurm import slurmvalues as sv


def _safe(fn, text, *args):
    try:
        return fn(text, *args)
    except ValueError:
        return None


def _int(text: str | None) -> int | None:
    return _safe(sv.integer, text)


def request_from_scontrol(rec: dict[str, str]) -> dict[str, Any]:
    """Columns from one `scontrol show job -o` record (what was asked for, and queue facts)."""
    user, _, uid = (rec.get("UserId") or "").partition("(")
    tres = sv.tres(rec.get("ReqTRES") or rec.get("TRES"))
    mem_node = mem_cpu = None
    if rec.get("MinMemoryNode") not in (None, "", "0"):
        mem_node = _safe(sv.memory, rec["MinMemoryNode"], "M")
        mem_node = mem_node[0] if mem_node else None
    if rec.get("MinMemoryCPU") not in (None, "", "0"):
        mem_cpu = _safe(sv.memory, rec["MinMemoryCPU"], "M")
        mem_cpu = mem_cpu[0] if mem_cpu else None
    gres = rec.get("TresPerNode") or rec.get("Gres") or None
    gpus = sv.gpus_from_tres(tres)
    if gpus is None:
        gpus = sv.gpus_from_gres(gres)
    return {
        "job_id": _int(rec.get("JobId")),
        "job_name": rec.get("JobName"),
        "user": user or None,
        "user_id": _int(uid.rstrip(")")),
        "account": rec.get("Account") or None,
        "partition": rec.get("Partition") or None,
        "submit_time": _safe(sv.timestamp, rec.get("SubmitTime")),
        "start_time": _safe(sv.timestamp, rec.get("StartTime")),
        "time_limit_seconds": _safe(sv.duration, rec.get("TimeLimit")),
        "nodes_requested": _int((rec.get("NumNodes") or "").split("-")[0]),
        "node_list": None if sv.absent(rec.get("NodeList")) else rec.get("NodeList"),
        "cpus": _int((rec.get("NumCPUs") or "").split("-")[0]),
        "mem_per_node_bytes": mem_node,
        "mem_per_cpu_bytes": mem_cpu,
        "gpus": gpus,
        "gres": gres,
        "work_dir": rec.get("WorkDir") or None,
        "array_job_id": _int(rec.get("ArrayJobId")),
        "array_task_id": _int(rec.get("ArrayTaskId")),
        "het_job_id": _int(rec.get("HetJobId")),
        "het_job_offset": _int(rec.get("HetJobOffset")),
    }


def request_from_env(env: dict[str, str]) -> dict[str, Any]:
    """What PrologSlurmctld's environment carries (no memory, time limit, GPUs or submit time)."""
    return {
        "job_id": _int(env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")),
        "job_name": env.get("SLURM_JOB_NAME"),
        "user": env.get("SLURM_JOB_USER"),
        "user_id": _int(env.get("SLURM_JOB_UID")),
        "account": env.get("SLURM_JOB_ACCOUNT"),
        "partition": env.get("SLURM_JOB_PARTITION"),
        "node_list": env.get("SLURM_JOB_NODELIST"),
        "work_dir": env.get("SLURM_JOB_WORK_DIR"),
        "array_job_id": _int(env.get("SLURM_ARRAY_JOB_ID")),
        "array_task_id": _int(env.get("SLURM_ARRAY_TASK_ID")),
        "het_job_id": _int(env.get("SLURM_HET_JOB_ID")),
    }


def merge(*parts: dict[str, Any]) -> dict[str, Any]:
    """Later parts fill what earlier ones lack; a known value is never replaced by None."""
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if value is not None or key not in out:
                out[key] = value if value is not None else out.get(key)
    return out


def final_from_sacct(
    rows: list[dict[str, str]], submit_time: float | None
) -> dict[str, Any] | None:
    """Final columns from sacct rows of one job id (job line plus its steps).

    Requeued jobs and reused ids give several job lines: the one whose Submit matches is taken
    (the newest when the submit time is unknown).  Returns None while the job has not finished.
    """
    groups: list[tuple[dict[str, str], list[dict[str, str]]]] = []
    for row in rows:  # sacct -D prints each run of a job followed by its own steps
        if not row["step"]:
            groups.append((row, []))
        elif groups:
            groups[-1][1].append(row)
    if not groups:
        return None
    if submit_time is not None:
        matching = [g for g in groups if _safe(sv.timestamp, g[0].get("Submit")) == submit_time]
        groups = matching or groups
    job, steps = groups[-1]
    outcome, by = classify(
        job.get("State", ""), [s.get("State", "") for s in steps], job.get("ExitCode")
    )
    if outcome is None:
        return None
    code, sig = _safe(sv.exit_code, job.get("ExitCode")) or (None, None)
    tres = sv.tres(job.get("ReqTRES"))
    mem_node, mem_cpu = sv.memory_request(
        job.get("ReqMem"), job.get("AllocTRES"), job.get("ReqTRES"), job.get("NNodes")
    )
    # The job's peak: the largest MaxRSS of its steps, leaving out the extern step (Slurm's
    # placeholder process, ~100 KB, not the job's work) and zeros (a step that ended before
    # Slurm's first accounting sample was never measured: unknown, not 0).
    rss = [
        m[0]
        for m in (
            _safe(sv.memory, r.get("MaxRSS"), "K") for r in [job, *steps] if r["step"] != "extern"
        )
        if m and m[0]
    ]
    return {
        "state": job.get("State"),
        "outcome": outcome,
        "cancelled_by": by,
        "exit_code": code,
        "signal": sig,
        "elapsed_seconds": _safe(sv.duration, job.get("Elapsed")),
        "total_cpu_seconds": _safe(sv.duration, job.get("TotalCPU")),
        "max_rss_bytes": max(rss) if rss else None,
        "submit_time": _safe(sv.timestamp, job.get("Submit")),
        "start_time": _safe(sv.timestamp, job.get("Start")),
        "end_time": _safe(sv.timestamp, job.get("End")),
        # The request, for jobs whose start report never arrived (REQUEST_KEYS: fill only).
        "user": job.get("User") or None,
        "account": job.get("Account") or None,
        "partition": job.get("Partition") or None,
        "job_name": job.get("JobName") or None,
        "work_dir": job.get("WorkDir") or None,
        "node_list": None if sv.absent(job.get("NodeList")) else job.get("NodeList"),
        "nodes_requested": _int(job.get("NNodes")),
        "cpus": _int(job.get("AllocCPUS")),
        "time_limit_seconds": _safe(sv.duration, job.get("Timelimit")),
        "mem_per_cpu_bytes": mem_cpu,
        "mem_per_node_bytes": mem_node,
        "gpus": sv.gpus_from_tres(tres),
    }


REQUEST_KEYS = (
    "user",
    "account",
    "partition",
    "job_name",
    "work_dir",
    "node_list",
    "nodes_requested",
    "cpus",
    "time_limit_seconds",
    "mem_per_cpu_bytes",
    "mem_per_node_bytes",
    "gpus",
)


def as_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
