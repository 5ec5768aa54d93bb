"""Read-side views of what the collectors read: queue, nodes, filesystems, I/O, CPU, memory,
licenses and the collectors' own health.  Shared by `nomadectl` and the JSON API; each view
works on the latest reading of each (node, collector) and says how old it is.
"""

from __future__ import annotations

import pwd
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

from aggregator import store
from aggregator.views import health as nodehealth
from aggregator.views.health import clean, count, flag, number, of_kind, path, text

ERRORS_HOURS = 24.0  # how far back the nodes view counts the kernel's hardware errors


def _newest(conn: Any, collector: str) -> tuple[float | None, list[dict]]:
    """The newest reading of a head-node collector (one aggregator writes it)."""
    found = store.latest_readings(conn, collector)
    if not found:
        return None, []
    return max(found.values(), key=lambda v: v[0])


def queue(conn: Any, now: float | None = None) -> dict[str, Any]:
    """The squeue reading (`queue_reading`), and from the store: running jobs without CPU
    progress and job arrays with failed tasks."""
    now = time.time() if now is None else now
    return {**queue_reading(conn, now), "stuck": stuck(conn, now), "arrays": arrays(conn, now)}


def queue_reading(conn: Any, now: float | None = None) -> dict[str, Any]:
    """Per partition: running and pending jobs, the longest wait; pending reasons in words."""
    now = time.time() if now is None else now
    t, records = _newest(conn, "queue")
    parts: dict[str, Counter] = defaultdict(Counter)
    waits: dict[str, float] = {}
    reasons: Counter = Counter()
    explain: dict[str, tuple[str | None, str | None]] = {}
    pending = []
    for r in records:
        part, state = r.get("partition") or "-", (r.get("state") or "").upper()
        parts[part][state] += 1
        if state != "PENDING":
            continue
        # Waits as of the reading (a view of an old reading must not make them grow).
        wait = (t or now) - r["submit_time"] if r.get("submit_time") else None
        if wait is not None:
            waits[part] = max(waits.get(part, 0.0), wait)
        reason = r.get("reason") or "None"
        reasons[reason] += 1
        explain[reason] = (
            r.get("reason_text")
            or ("not yet considered by the scheduler" if reason == "None" else None),
            r.get("unblock"),
        )
        pending.append(
            {
                "job_id": r.get("job_id"),
                "user": r.get("user"),
                "partition": part,
                "reason": r.get("reason"),
                "reason_text": r.get("reason_text"),
                "unblock": r.get("unblock"),
                "wait_seconds": wait,
            }
        )
    return {
        "time": t,
        "age_seconds": round(now - t, 1) if t else None,
        "partitions": [
            {
                "partition": p,
                "running": c["RUNNING"],
                "pending": c["PENDING"],
                "other": sum(c.values()) - c["RUNNING"] - c["PENDING"],
                "longest_wait_seconds": waits.get(p),
            }
            for p, c in sorted(parts.items())
        ],
        "pending_reasons": [
            {"reason": k, "jobs": n, "reason_text": explain[k][0], "unblock": explain[k][1]}
            for k, n in reasons.most_common()
        ],
        "pending": sorted(pending, key=lambda j: -(j["wait_seconds"] or 0)),
    }


def stuck(
    conn: Any, now: float | None = None, window: float = 1800.0, min_cpu_seconds: float = 1.0
) -> list[dict[str, Any]]:
    """Running jobs that used less than MIN_CPU_SECONDS of CPU over the last WINDOW seconds on
    every node they run on, though sampled across most of it: hung, waiting on a dead mount or
    a lost peer, or sleeping on an allocation someone else could use."""
    now = time.time() if now is None else now
    by: dict[int, list] = defaultdict(list)
    for r in store.running_job_cpu(conn, now - window):
        by[r[0]].append(r)
    out = []
    for job_id, rs in sorted(by.items()):
        covered = min(r[7] - r[6] for r in rs)
        used = max((r[8] or 0.0) for r in rs)
        if covered >= window / 2 and used < min_cpu_seconds:
            r = rs[0]
            out.append(
                {
                    "job_id": job_id,
                    "user": r[1],
                    "partition": r[2],
                    "node_list": r[3],
                    "start_time": r[4],
                    "cpu_seconds_in_window": round(used, 3),
                    "window_seconds": window,
                }
            )
    return out


def arrays(conn: Any, now: float | None = None, days: float = 7.0) -> list[dict[str, Any]]:
    """Job arrays of the last DAYS: how many tasks ended in each outcome, failures first."""
    now = time.time() if now is None else now
    out = store.array_outcomes(conn, now - days * 86400)
    return sorted(out, key=lambda a: (-(a["failed"] or 0), -a["array_job_id"]))


def nodes(
    conn: Any, now: float | None = None, hours: float = ERRORS_HOURS, health: bool = True
) -> dict[str, Any]:
    """Slurm's view of each node (state, allocation, load, drain reason) beside its agent's,
    and (HEALTH) what the agent reads of its hardware: temperatures, memory errors, kernel
    hardware errors of the last HOURS, daemons, GPUs; worst first, each with its problem words
    (aggregator/views/health.py)."""
    now = time.time() if now is None else now
    out = _slurm_nodes(conn, now)
    if not health:
        return out
    healths = store.latest_readings(conn, "health")
    gpus = store.latest_readings(conn, "gpu")
    errors: dict[str, list] = defaultdict(list)
    since = now - hours * 3600
    for node, t, r in store.reading_records_between(conn, "health", "kernel_error", since):
        errors[node].append((t, r))
    for row in out["nodes"]:
        n = row["node"]
        row.update(nodehealth.node_health(healths.get(n), gpus.get(n), errors[n], hours, now))
        row["problems"], row["problem_details"] = nodehealth.problems(row)
        row["severity"] = nodehealth.severity(row["problems"])
    out["nodes"].sort(key=lambda r: (-r["severity"], r["node"]))
    out["errors_hours"] = hours
    return out


def _slurm_nodes(conn: Any, now: float) -> dict[str, Any]:
    t, records = _newest(conn, "node_state")
    agents = {r["node"]: r for r in store.agent_nodes(conn)}
    out = []
    for r in records:
        a = agents.pop(r["node"], None)
        mem, alloc = r.get("memory_bytes"), r.get("memory_alloc_bytes")
        out.append(
            {
                **{
                    k: r.get(k)
                    for k in (
                        "node",
                        "state",
                        "state_flags",
                        "cpus",
                        "cpus_alloc",
                        "cpu_load",
                        "memory_bytes",
                        "memory_alloc_bytes",
                        "reason",
                        "reason_user",
                        "reason_time",
                        "partitions",
                    )
                },
                "memory_alloc_fraction": round(alloc / mem, 4)
                if mem and alloc is not None
                else None,
                "agent": a["state"] if a else None,
                "agent_seconds_since_seen": round(now - a["last_seen"], 1) if a else None,
            }
        )
    for node, a in sorted(agents.items()):  # an agent whose node Slurm does not list
        out.append(
            {
                "node": node,
                "state": None,
                "agent": a["state"],
                "agent_seconds_since_seen": round(now - a["last_seen"], 1),
            }
        )
    return {"time": t, "nodes": out}


def licenses(conn: Any) -> dict[str, Any]:
    t, records = _newest(conn, "licenses")
    users: dict[tuple, Counter] = defaultdict(Counter)
    for r in records:
        if r.get("record") == "checkout":
            users[(r.get("vendor"), r.get("feature"))][r.get("user") or "-"] += r.get("count") or 1
    features = [
        {
            **{
                k: r.get(k) for k in ("vendor", "feature", "issued", "in_use", "reserved", "expiry")
            },
            "users": dict(users.get((r.get("vendor"), r.get("feature")), {})),
        }
        for r in records
        if r.get("record") == "feature"
    ]
    servers = [
        {k: r.get(k) for k in ("name", "kind", "up", "version", "message")}
        for r in records
        if r.get("record") == "server"
    ]
    return {"time": t, "servers": servers, "features": features}


def _node_summary(conn: Any) -> dict[str, Any]:
    """I/O, CPU cores and memory of each node, from its newest iostat, mpstat and vmstat."""
    out: dict[str, dict[str, Any]] = defaultdict(dict)
    for node, (t, recs) in store.latest_readings(conn, "iostat").items():
        cpu = [r for r in recs if r.get("record") == "cpu"]
        out[node]["io"] = {
            "t": t,
            "cpu": cpu[-1] if cpu else None,
            "devices": [r for r in recs if r.get("record") == "device"],
        }
    for node, (t, recs) in store.latest_readings(conn, "mpstat").items():
        summary = [r for r in recs if r.get("record") == "summary"]
        cores = [
            r["busy_percent"]
            for r in recs
            if r.get("record") == "cpu"
            and r.get("cpu") != "all"
            and r.get("busy_percent") is not None
        ]
        out[node]["cpu"] = {
            "t": t,
            **(summary[-1] if summary else {}),
            "busy_min_percent": min(cores) if cores else None,
            "busy_max_percent": max(cores) if cores else None,
        }
    for node, (t, recs) in store.latest_readings(conn, "vmstat").items():
        out[node]["memory"] = {"t": t, **(recs[-1] if recs else {})}
    for node, (t, recs) in store.latest_readings(conn, "pressure").items():
        mem = [r for r in recs if r.get("resource") == "memory"]
        if mem:
            out[node].setdefault("memory", {"t": t})["pressure_some_avg60_percent"] = mem[0].get(
                "some_avg60_percent"
            )
    return dict(out)


def filesystems(conn: Any) -> list[dict[str, Any]]:
    """Each configured filesystem once (shared filesystems are seen by every node: the newest)."""
    best: dict[str, tuple[float, str, dict]] = {}
    for node, (t, recs) in store.latest_readings(conn, "disk").items():
        for r in of_kind(recs, "filesystem"):
            fs = clean(r, FILESYSTEM_FIELDS)
            if fs["path"] is not None and (fs["path"] not in best or best[fs["path"]][0] < t):
                best[fs["path"]] = (t, node, fs)
    return [{**r, "node": node, "t": t} for t, node, r in (best[p] for p in sorted(best))]


FILESYSTEM_FIELDS = {
    "path": path,
    "size_bytes": count,
    "used_bytes": count,
    "avail_bytes": count,
    "used_fraction": number,
    "inodes_total": count,
    "inodes_used": count,
    "read_only": flag,
    "responsive": flag,
    "probe_seconds": number,
    "error": text,
}


def collection(conn: Any) -> list[dict[str, Any]]:
    """Per collector: runs and success rate over every node that runs it, the newest error."""
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in store.collector_statuses(conn):
        by[r["collector"]].append(r)
    out = []
    for name, rs in sorted(by.items()):
        runs, failures = sum(r["runs"] for r in rs), sum(r["failures"] for r in rs)
        errors = sorted((r for r in rs if r["last_error"]), key=lambda r: r["last_t"] or 0)
        skipped = [r for r in rs if r["skipped"]]
        out.append(
            {
                "collector": name,
                "role": rs[0]["role"],
                "nodes": len(rs),
                "runs": runs,
                "failures": failures,
                "success_rate": round(1 - failures / runs, 4) if runs else None,
                "skipped_on": len(skipped),
                "skipped": skipped[0]["skipped"] if skipped else None,
                "last_error": f"{errors[-1]['node']}: {errors[-1]['last_error']}"
                if errors
                else None,
                "mean_seconds": round(
                    statistics.mean(r["last_seconds"] for r in rs if r["last_seconds"] is not None),
                    3,
                )
                if any(r["last_seconds"] is not None for r in rs)
                else None,
            }
        )
    return out


def overview(conn: Any, now: float | None = None) -> dict[str, Any]:
    """Everything `nomadectl status` adds to the agents' view."""
    q = queue_reading(conn, now)  # the partitions only: no stuck-job query for a status
    return {
        "filesystems": filesystems(conn),
        "queue": q["partitions"],
        "queue_time": q["time"],
        "node_metrics": _node_summary(conn),
        "slurm_nodes": nodes(conn, now, health=False)["nodes"],
        "licenses": licenses(conn),
        "collection": collection(conn),
    }


# -- quotas, scratch, fair share, partitions ---------------------------------------------------
def _fraction(used: Any, soft: Any, hard: Any) -> float | None:
    """How near USED is to its nearer limit (the soft one where set): 1.0 at the limit."""
    limit = soft or hard
    return round(used / limit, 4) if used is not None and limit else None


QUOTA_FIELDS = {
    "kind": text,
    "name": text,
    "id": count,
    "filesystem": path,
    "mountpoint": path,
    "used_bytes": count,
    "soft_limit_bytes": count,
    "hard_limit_bytes": count,
    "files_used": count,
    "files_soft": count,
    "files_hard": count,
    "block_grace_seconds": number,
    "files_grace_seconds": number,
    "block_grace_expires_epoch": number,
    "files_grace_expires_epoch": number,
    "over_soft": flag,
}


def quotas(conn: Any, user: str | None = None) -> dict[str, Any]:
    """Every quota the nodes read (repquota, lfs quota), each (kind, name or id, filesystem)
    once from its newest reading, closest to its limit first (space or files, whichever is
    nearer); of USER only, where given (their user quotas: what a user may see of theirs
    besides, their groups' quotas, is policy.own_quota's).  A quota that names neither its
    kind nor its owner is skipped."""
    best: dict[tuple, tuple[float, str, dict[str, Any]]] = {}
    for node, (t, recs) in store.latest_readings(conn, "disk").items():
        for r in of_kind(recs, "quota"):
            q = clean(r, QUOTA_FIELDS)
            if q["kind"] is None or (q["name"] is None and q["id"] is None):
                continue
            # repquota names a user, `quota` names them and gives the uid: one quota either way
            who = q["name"] if q["name"] is not None else f"#{q['id']}"
            key = (q["kind"], who, q["filesystem"])
            if key not in best or best[key][0] < t:
                best[key] = (t, node, q)
    rows = []
    for t, node, q in best.values():
        if user is not None and not (q["kind"] == "user" and q["name"] == user):
            continue
        space = _fraction(q["used_bytes"], q["soft_limit_bytes"], q["hard_limit_bytes"])
        files = _fraction(q["files_used"], q["files_soft"], q["files_hard"])
        near = max((f for f in (space, files) if f is not None), default=None)
        rows.append(
            {**q, "space_fraction": space, "files_fraction": files, "fraction": near}
            | {"node": node, "t": t}
        )
    rows.sort(
        key=lambda q: (
            q["fraction"] is None,
            -(q["fraction"] or 0),
            q["name"] or "",
            q["id"] if q["id"] is not None else -1,
        )
    )
    return {"quotas": rows}


def _user_of(uid: Any) -> str | None:
    try:
        return pwd.getpwuid(int(uid)).pw_name
    except (KeyError, TypeError, ValueError, OverflowError):
        return None


def scratch(
    conn: Any, user: str | None = None, names: Callable[[Any], str | None] = _user_of
) -> dict[str, Any]:
    """Storage hygiene per node and scratch path (the scratch collector's newest scan): the
    scan's totals, per owner (user names from the head node's, by uid) their bytes, large and
    stale files and whether they run a job there, the flagged files and the job directories
    left behind.  Owners with stale or orphaned data first; of USER only, where given."""
    out: dict[str, list[dict[str, Any]]] = {
        "filesystems": [],
        "owners": [],
        "files": [],
        "leftover_dirs": [],
    }
    lists = {
        "scratch_summary": "filesystems",
        "scratch_owner": "owners",
        "scratch_file": "files",
        "leftover_job_dir": "leftover_dirs",
    }
    for node, (t, recs) in sorted(store.latest_readings(conn, "scratch").items()):
        for record, kind in lists.items():
            for r in of_kind(recs, record):
                row = {"node": node, "t": t, **clean(r, SCRATCH_FIELDS[record])}
                if row["root"] is None:
                    continue
                if kind != "filesystems":
                    if row["uid"] is None:
                        continue
                    row["user"] = names(row["uid"])
                    if user is not None and row["user"] != user:
                        continue
                out[kind].append(row)
    out["owners"].sort(
        key=lambda o: (not o["orphaned"], -(o["stale_bytes"] or 0), -(o["bytes"] or 0))
    )
    return out


_SCRATCH_COUNTS = ("files", "bytes", "large_files", "stale_files")
SCRATCH_FIELDS: dict[str, dict[str, Callable[[Any], Any]]] = {
    "scratch_summary": {
        "root": path,
        **dict.fromkeys(("entries", "dirs", *_SCRATCH_COUNTS, "orphaned_files"), count),
        **dict.fromkeys(("files_listed", "errors", "other_filesystems"), count),
        "truncated": flag,
        "truncated_by": text,
        "elapsed_seconds": number,
    },
    "scratch_owner": {
        "root": path,
        "uid": count,
        **dict.fromkeys((*_SCRATCH_COUNTS, "stale_bytes"), count),
        "orphaned": flag,
    },
    "scratch_file": {
        "root": path,
        "path": path,
        "uid": count,
        "size_bytes": count,
        "mtime_epoch": number,
        "large": flag,
        "stale": flag,
        "orphaned": flag,
    },
    "leftover_job_dir": {
        "root": path,
        "path": path,
        "job_id": text,
        "uid": count,
        "mtime_epoch": number,
    },
}


def fairshare(conn: Any, now: float | None = None) -> dict[str, Any]:
    """The fair-share tree as `sshare -a -l` shows it (the fairshare collector's newest
    reading): one row per account and per user in an account, in sshare's order."""
    now = time.time() if now is None else now
    t, records = _newest(conn, "fairshare")
    return {
        "time": t,
        "age_seconds": round(now - t, 1) if t else None,
        "associations": [dict(r) for r in records],
    }


def partitions(conn: Any, now: float | None = None) -> dict[str, Any]:
    """Each partition from sinfo (the partitions collector's newest reading, one record per
    node and partition): default, availability, time limit, its nodes by state, CPUs and memory
    in all and allocated, GPUs; partitions with nodes down or drained first."""
    now = time.time() if now is None else now
    t, records = _newest(conn, "partitions")
    parts: dict[str, dict[str, Any]] = {}
    for r in records:
        name = r.get("partition") or "-"
        p = parts.setdefault(
            name,
            {
                "partition": name,
                "default": r.get("partition_default"),
                "available": r.get("partition_available"),
                "time_limit_seconds": r.get("partition_time_limit_seconds"),
                "nodes": [],
                "states": Counter(),
                "unavailable_nodes": 0,
                "cpus": 0,
                "cpus_alloc": 0,
                "cpus_idle": 0,
                "memory_bytes": 0,
                "memory_alloc_bytes": 0,
                "gpus": 0,
            },
        )
        p["nodes"].append(r.get("node"))
        p["states"][r.get("state") or "unknown"] += 1
        flags = set(r.get("state_flags") or ())
        bad = nodehealth.slurm_problems(r.get("state"), list(flags))
        p["unavailable_nodes"] += bool(bad)
        for key in ("cpus", "cpus_alloc", "cpus_idle", "memory_bytes", "memory_alloc_bytes"):
            p[key] += r.get(key) or 0
        p["gpus"] += r.get("gpus") or 0
    rows = sorted(parts.values(), key=lambda p: (-p["unavailable_nodes"], p["partition"]))
    for p in rows:
        p["states"] = dict(p["states"])
        p["nodes"] = sorted(n for n in p["nodes"] if n)
    return {"time": t, "age_seconds": round(now - t, 1) if t else None, "partitions": rows}
