"""Each node's health as `nomadectl nodes` and `GET /api/v1/nodes` show it, from what the node
agents read: temperatures, memory and hardware errors, daemons, GPUs; and what is wrong, worst
first.

Pure functions over plain records (the health and gpu collectors' schemas,
docs/parsers-health-disk.md and docs/parsers-gpu-licenses.md) and Slurm's node state, so that
the rules are tested without a store.  `node_health` puts one node together; `PROBLEMS` names
each problem word with its severity.

Severity, highest first: 6 the node cannot run jobs or NØMADE cannot see it (Slurm says down,
drained, failing or not responding; its agent went silent); 5 uncorrected errors (EDAC UE, GPU
uncorrected ECC, machine checks, a GPU fallen off the bus); 4 GPU Xid errors; 3 too hot (a
sensor at or above its limit, the kernel throttling a CPU, a GPU slowed down for heat); 2 a
daemon that must run does not; 1 everything else worth a look (disk, filesystem, PCIe and NFS
errors in the kernel log, lockups, corrected memory errors, no agent or no health reading); 0
nothing wrong.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from nomade_common.text import printable

# Problem word: (severity, what it means).  The words are the API's; docs/api.md lists them.
PROBLEMS: dict[str, tuple[int, str]] = {
    "down": (6, "Slurm has the node down"),
    "drained": (6, "Slurm has the node drained or draining"),
    "fail": (6, "Slurm has the node failing"),
    "not-responding": (6, "slurmctld gets no answer from the node's slurmd"),
    "agent-silent": (6, "the node's NØMADE agent stopped reporting"),
    "ue": (5, "uncorrected memory errors (EDAC)"),
    "gpu-ecc": (5, "a GPU with uncorrected ECC errors"),
    "mce": (5, "machine checks in the kernel log"),
    "gpu-lost": (5, "a GPU fell off the bus or failed to initialise"),
    "xid": (4, "GPU Xid errors in the kernel log"),
    "hot": (3, "a sensor at or above its limit"),
    "throttled": (3, "the kernel throttled a CPU for its temperature"),
    "gpu-hot": (3, "a GPU slowed down for its temperature"),
    "service-down": (2, "a daemon that must run does not"),
    "gpu-slowdown": (1, "a GPU slowed down by its hardware (power brake, slowdown)"),
    "disk-errors": (1, "disk I/O errors in the kernel log"),
    "fs-errors": (1, "filesystem errors in the kernel log"),
    "pcie-errors": (1, "PCIe errors in the kernel log"),
    "nfs-timeouts": (1, "an NFS server did not respond"),
    "lockup": (1, "CPU lockups or RCU stalls in the kernel log"),
    "hung-task": (1, "tasks blocked for minutes in the kernel log"),
    "ce": (1, "corrected memory errors (EDAC)"),
    "no-agent": (1, "no NØMADE agent reports from this node"),
    "no-health": (1, "the agent sends no health reading"),
}
# Kernel-log categories (collectors/health.py) and their problem words; Xid is per GPU below.
KERNEL_PROBLEMS = {
    "mce": "mce",
    "gpu": "gpu-lost",
    "thermal": "throttled",
    "disk": "disk-errors",
    "filesystem": "fs-errors",
    "pcie": "pcie-errors",
    "nfs": "nfs-timeouts",
    "lockup": "lockup",
    "hung_task": "hung-task",
}
BAD_STATES = {"down": "down", "drained": "drained", "draining": "drained", "drain": "drained"}
BAD_STATES |= {"fail": "fail", "failing": "fail"}
BAD_FLAGS = {"DRAIN": "drained", "NOT_RESPONDING": "not-responding", "FAIL": "fail"}
# Xids that an application causes (NVIDIA's Xid catalogue: 13 graphics engine exception, 31 MMU
# fault, 43 GPU stopped processing, 45 preemptive cleanup): listed, but no node problem.
APPLICATION_XIDS = frozenset({13, 31, 43, 45})
GPU_HEAT = frozenset({"sw_thermal_slowdown", "hw_thermal_slowdown"})
GPU_SLOW = frozenset({"hw_slowdown", "hw_power_brake_slowdown"})
# A limit outside this range is no real one (some NVMe drives report 65261.85 °C).
PLAUSIBLE_LIMIT_C = (20.0, 200.0)
RECENT_ERRORS = 10  # kernel-log lines kept per node in the view
_XID = re.compile(r"Xid \(PCI:([0-9A-Fa-f:.]+)\): (\d+)")


# -- what a node sent, read with care -----------------------------------------------------------
# A node's readings are stored as it sent them (checked for size only), so a view reads each
# value through one of these: a value of another type than the collector's is unknown (None),
# never an exception that would take the view from every user; and text is made fit for one
# terminal line, so that a node cannot forge lines in another node's row.
MAX_INTEGER = 1 << 64  # what msgpack carries; a larger integer is no reading
TEXT_LIMIT = 256  # a name: a sensor, a daemon, a GPU, a device
PATH_LIMIT = 1024  # a mount point, a scratch path
MESSAGE_LIMIT = 1024  # a kernel log line


def number(value: Any) -> int | float | None:
    """VALUE where it is a finite int or float (a bool is neither), else None."""
    if type(value) is int:
        return value if -MAX_INTEGER < value < MAX_INTEGER else None
    if type(value) is float:
        return value if math.isfinite(value) else None
    return None


def count(value: Any) -> int | None:
    """VALUE where it is a whole number of things (0 or more), else None."""
    return value if type(value) is int and 0 <= value < MAX_INTEGER else None


def text(value: Any, limit: int = TEXT_LIMIT) -> str | None:
    """VALUE where it is a string, on one line without control characters; else None."""
    return printable(value, limit) if isinstance(value, str) else None


def path(value: Any) -> str | None:
    return text(value, PATH_LIMIT)


def flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def texts(value: Any) -> list[str]:
    """The strings of list VALUE, each as `text` makes it; [] where VALUE is no list."""
    return (
        [printable(v, TEXT_LIMIT) for v in value if isinstance(v, str)]
        if isinstance(value, list)
        else []
    )


def of_kind(records: Any, kind: str) -> list[dict[str, Any]]:
    """The records of READINGS whose `record` is KIND (what is no record is skipped)."""
    if not isinstance(records, list):
        return []
    return [r for r in records if isinstance(r, dict) and r.get("record") == kind]


def clean(r: dict[str, Any], fields: dict[str, Callable[[Any], Any]]) -> dict[str, Any]:
    """Record R as FIELDS (key: reader) read it: each key read with care, other keys left out."""
    return {k: read(r.get(k)) for k, read in fields.items()}


def severity(problems: list[str]) -> int:
    return max((PROBLEMS[p][0] for p in problems if p in PROBLEMS), default=0)


def _limit(value: Any) -> float | None:
    low, high = PLAUSIBLE_LIMIT_C
    value = number(value)
    return float(value) if value is not None and low <= value <= high else None


def temperatures(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The hottest sensor with its limits, and the sensors at or above theirs; None where the
    node has no temperature sensor (a virtual machine): unknown, not 0 °C."""
    sensors = []
    for r in of_kind(records, "temperature"):
        temp = number(r.get("temp_celsius"))
        if temp is None:
            continue
        sensors.append(
            {
                "chip": text(r.get("chip")),
                "sensor": text(r.get("sensor")),
                "temp_celsius": temp,
                "max_celsius": _limit(r.get("max_celsius")),
                "crit_celsius": _limit(r.get("crit_celsius")),
            }
        )
    if not sensors:
        return None
    over = [s for s in sensors if _over(s)]
    return {
        "sensors": len(sensors),
        "hottest": max(sensors, key=lambda s: s["temp_celsius"]),
        "over": sorted(over, key=lambda s: -s["temp_celsius"]),
    }


def _over(s: dict[str, Any]) -> bool:
    limits = [v for v in (s["max_celsius"], s["crit_celsius"]) if v is not None]
    return bool(limits) and s["temp_celsius"] >= min(limits)


def edac(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Corrected and uncorrected memory errors per controller and in all (counts since the
    driver loaded); None where no EDAC driver is loaded."""
    fields = {"mc": text, "mc_name": text, "ce_count": count, "ue_count": count}
    mcs = [clean(r, fields) for r in of_kind(records, "edac")]
    if not mcs:
        return None
    return {
        "ce_count": sum(m["ce_count"] or 0 for m in mcs),
        "ue_count": sum(m["ue_count"] or 0 for m in mcs),
        "controllers": mcs,
    }


KERNEL_ERROR_FIELDS: dict[str, Callable[[Any], Any]] = {
    "category": text,
    "device": text,
    "message": lambda v: text(v, MESSAGE_LIMIT),
    "uptime_seconds": number,
}


def kernel_errors(found: list[tuple[float, dict[str, Any]]], hours: float) -> dict[str, Any]:
    """Hardware errors the kernel logged, from the (reading time, kernel_error record) pairs of
    the last HOURS: per category, and the newest lines.  A line seen in two readings counts
    once (by its uptime stamp and text)."""
    seen: dict[tuple[Any, str | None], tuple[float, dict[str, Any]]] = {}
    for t, r in found:
        if isinstance(r, dict) and number(t) is not None:
            line = clean(r, KERNEL_ERROR_FIELDS)
            seen.setdefault((line["uptime_seconds"], line["message"]), (t, line))
    lines = sorted(seen.values(), key=lambda tr: (tr[0], tr[1]["uptime_seconds"] or 0))
    return {
        "hours": hours,
        "counts": dict(Counter(r["category"] or "unknown" for _, r in lines)),
        "xids": [x for x in (_xid(r) for _, r in lines) if x is not None],
        "recent": [{"t": t, **r} for t, r in lines[-RECENT_ERRORS:]],
    }


def _xid(r: dict[str, Any]) -> dict[str, Any] | None:
    if r.get("category") != "gpu_xid":
        return None
    m = _XID.search(str(r.get("message") or ""))
    if m is None:
        return None
    return {"bus": _bus(m.group(1)), "xid": int(m.group(2))}


def _bus(text: Any) -> str | None:
    """A PCI address as domain:bus:device in lower case without leading zeros, whatever form
    it comes in: nvidia-smi's 00000000:3B:00.0, the kernel's 0000:3b:00 or 0000:3b:00.0."""
    parts = str(text or "").split(":")
    if len(parts) != 3:
        return None
    try:
        domain, bus, dev = (int(p.split(".")[0], 16) for p in parts)
    except ValueError:
        return None
    return f"{domain:x}:{bus:x}:{dev:x}"


def services(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The daemons the node checks (a record without a name is skipped)."""
    found = [clean(r, {"name": text, "running": flag}) for r in of_kind(records, "service")]
    return [s for s in found if s["name"] is not None]


def gpus(records: list[dict[str, Any]], xids: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The node's GPUs (count, mean utilisation, memory, hottest, power) and each GPU with its
    problems; None where the node reported no GPU."""
    devices = [_gpu(r, xids) for r in of_kind(records, "gpu")]
    if not devices:
        return None

    def total(key: str) -> float | None:
        values = [d[key] for d in devices if isinstance(d.get(key), (int, float))]
        return round(sum(values), 2) if values else None

    utils = [d["util_gpu_percent"] for d in devices if d.get("util_gpu_percent") is not None]
    temps = [d["temperature_gpu_c"] for d in devices if d.get("temperature_gpu_c") is not None]
    return {
        "count": len(devices),
        "util_gpu_percent": round(sum(utils) / len(utils), 1) if utils else None,
        "memory_used_bytes": total("memory_used_bytes"),
        "memory_total_bytes": total("memory_total_bytes"),
        "temperature_max_c": max(temps) if temps else None,
        "power_draw_w": total("power_draw_w"),
        "power_limit_w": total("power_limit_w"),
        "with_problems": sum(1 for d in devices if d["problems"]),
        "devices": devices,
    }


GPU_FIELDS: dict[str, Callable[[Any], Any]] = {
    "index": count,
    "name": text,
    "uuid": text,
    "bus_id": text,
    "util_gpu_percent": number,
    "memory_used_bytes": number,
    "memory_total_bytes": number,
    "temperature_gpu_c": number,
    "power_draw_w": number,
    "power_limit_w": number,
    "ecc_volatile_corrected": count,
    "ecc_volatile_uncorrected": count,
    "throttle_reasons": texts,
}
GPU_KEYS = tuple(GPU_FIELDS)


def _gpu(r: dict[str, Any], xids: list[dict[str, Any]]) -> dict[str, Any]:
    out = clean(r, GPU_FIELDS)
    bus = _bus(out["bus_id"])
    codes = sorted({x["xid"] for x in xids if bus is not None and x["bus"] == bus})
    out["xids"] = codes
    reasons = set(out["throttle_reasons"])
    problems = []
    if out["ecc_volatile_uncorrected"]:
        problems.append("gpu-ecc")
    if any(x not in APPLICATION_XIDS for x in codes):
        problems.append("xid")
    if reasons & GPU_HEAT:
        problems.append("gpu-hot")
    if reasons & GPU_SLOW:
        problems.append("gpu-slowdown")
    out["problems"] = problems
    return out


def slurm_problems(state: Any, flags: Any) -> list[str]:
    state = text(state)
    out = [BAD_STATES[state.lower()]] if state and state.lower() in BAD_STATES else []
    out += [BAD_FLAGS[f] for f in texts(flags) if f in BAD_FLAGS]
    return list(dict.fromkeys(out))


def node_health(
    health: tuple[float, list[dict[str, Any]]] | None,
    gpu: tuple[float, list[dict[str, Any]]] | None,
    errors: list[tuple[float, dict[str, Any]]],
    hours: float,
    now: float,
) -> dict[str, Any]:
    """`health` and `gpus` of one node's view from its newest health and gpu readings ((time,
    records) or None) and its kernel errors of the last HOURS; with the problems they show."""
    records = health[1] if health else []
    kern = kernel_errors(errors, hours)
    out: dict[str, Any] = {
        "health": None
        if health is None
        else {
            "time": health[0],
            "age_seconds": round(now - health[0], 1),
            "temperature": temperatures(records),
            "edac": edac(records),
            "kernel_errors": kern,
            "services": services(records),
        },
        "gpus": None if gpu is None else gpus(gpu[1], kern["xids"]),
    }
    if out["gpus"] is not None:
        out["gpus"]["time"] = gpu[0] if gpu else None
    return out


def problems(row: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """The problem words of one node's view (Slurm state, agent, health, GPUs), worst first,
    and a line saying why for each."""
    why: dict[str, str] = {}
    for p in slurm_problems(row.get("state"), row.get("state_flags")):
        why[p] = f"Slurm: {row.get('state')}" + (f" ({row['reason']})" if row.get("reason") else "")
    if row.get("agent") == "down":
        why["agent-silent"] = f"no word from its agent for {row.get('agent_seconds_since_seen')} s"
    elif row.get("agent") is None and row.get("state") is not None:
        why["no-agent"] = "no NØMADE agent has reported from this node"
    h = row.get("health")
    if h is None and row.get("agent") is not None:
        why["no-health"] = "no health reading from its agent"
    if h is not None:
        why.update(_health_problems(h))
    for d in (row.get("gpus") or {}).get("devices", []):
        for p in d["problems"]:
            why.setdefault(p, f"GPU {d.get('index')} ({d.get('bus_id')}): " + _gpu_why(p, d))
    order = sorted(why, key=lambda p: (-PROBLEMS[p][0], list(PROBLEMS).index(p)))
    return order, {p: why[p] for p in order}


def _health_problems(h: dict[str, Any]) -> dict[str, str]:
    why: dict[str, str] = {}
    mem = h.get("edac")
    if mem and mem["ue_count"]:
        why["ue"] = f"EDAC: {mem['ue_count']} uncorrected memory errors"
    if mem and mem["ce_count"]:
        why["ce"] = f"EDAC: {mem['ce_count']} corrected memory errors"
    temp = h.get("temperature")
    if temp and temp["over"]:
        s = temp["over"][0]
        limit = min(v for v in (s["max_celsius"], s["crit_celsius"]) if v is not None)
        why["hot"] = f"{s['chip']} {s['sensor']} at {s['temp_celsius']:g} °C, limit {limit:g} °C"
    down = [s["name"] for s in h.get("services", []) if s.get("running") is False]
    if down:
        why["service-down"] = "not running: " + ", ".join(map(str, down))
    kern = h.get("kernel_errors") or {}
    xids = [x for x in kern.get("xids", []) if x["xid"] not in APPLICATION_XIDS]
    if xids:
        why["xid"] = "Xid " + ", ".join(f"{x['xid']} (GPU {x['bus']})" for x in xids[-3:])
    for category, n in (kern.get("counts") or {}).items():
        word = KERNEL_PROBLEMS.get(category)
        if word:
            why[word] = f"kernel log: {n} {category} line(s) in {kern['hours']:g} h"
    return why


def _gpu_why(problem: str, d: dict[str, Any]) -> str:
    if problem == "gpu-ecc":
        return f"{d['ecc_volatile_uncorrected']} uncorrected ECC errors"
    if problem == "xid":
        return "Xid " + ", ".join(map(str, d["xids"]))
    return ", ".join(d.get("throttle_reasons") or ())
