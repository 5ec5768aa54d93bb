"""Pure parsers of `sinfo` output: text with a header (default, `-N`, `-l`, `-o FORMAT`) and
`--json`.  One record per node and partition, the rows of `sinfo -N` (a node in two partitions
gives two records), with the same keys from text and JSON (docs/parsers-slurm.md).

The `partitions` collector (`collect`) runs `sinfo --json` where Slurm has it, else
`sinfo -N -o COLLECTOR_FORMAT`: '|' between fields, the free-text reason last.
"""

from __future__ import annotations

import re
from typing import Any

from collectors.runner import run_tool
from nomade_common.config import Config
from nomade_common.errors import ParseError

from . import SLURM_TIMEOUT, json_works
from . import slurmvalues as sv
from .squeue import load_json

COLLECTOR_FORMAT = "%N|%P|%a|%l|%T|%c|%C|%m|%e|%O|%G|%f|%u|%H|%E"

FIELDS = (
    "node",
    "partition",
    "partition_default",
    "partition_available",
    "partition_time_limit_seconds",
    "state",
    "state_flags",
    "cpus",
    "cpus_alloc",
    "cpus_idle",
    "cpus_other",
    "cpu_load",
    "memory_bytes",
    "memory_alloc_bytes",
    "memory_free_bytes",
    "gres",
    "gpus",
    "features",
    "reason",
    "reason_user",
    "reason_time",
)

_HEADERS = {
    "NODELIST": "nodelist",
    "PARTITION": "partition",
    "AVAIL": "avail",
    "TIMELIMIT": "timelimit",
    "STATE": "state",
    "CPUS": "cpus",
    "CPUS(A/I/O/T)": "cpus_aiot",
    "MEMORY": "memory",
    "FREE_MEM": "free_mem",
    "CPU_LOAD": "cpu_load",
    "GRES": "gres",
    "AVAIL_FEATURES": "features",
    "AVAIL_FE": "features",
    "REASON": "reason",
    "USER": "user",
    "TIMESTAMP": "timestamp",
}
_DATE_LINE = re.compile(r"^\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4}$")
_MIB = 1 << 20
# Nodes one row's NODELIST may name: more than any cluster has (a node list is expanded into
# one record per node, so 'n[1-99999999]' in a capture must not become 10^8 records).
NODES_MAX = 100_000


def _record(**values) -> dict:
    rec = dict.fromkeys(FIELDS)
    rec.update(values)
    return rec


def _int(value: str | None) -> int | None:
    value = (value or "").strip()
    return int(value) if value.isdigit() else None  # '8000+' or '100-200' (grouped rows): None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value and not sv.absent(value) else None
    except ValueError:
        return None  # a range like '0.01-3.08' on a grouped row


def _limit(value: str | None) -> float | None:
    if not value or value.strip().lower() in ("infinite", "unlimited", "n/a"):
        return None
    return sv.duration(value)


def _table(text: str, source: str) -> list[tuple[int, dict[str, str]]]:
    lines = [(n, ln) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    if lines and _DATE_LINE.match(lines[0][1].strip()):
        lines = lines[1:]  # sinfo -l starts with the time
    if not lines:
        return []
    number, head = lines[0]
    sep = "|" if "|" in head else None
    cols = [c.strip().upper() for c in head.split(sep)]
    if "NODELIST" not in cols:
        raise ParseError(source, number, "no header line with NODELIST (sinfo without -h)")
    keys = [_HEADERS.get(c) for c in cols]
    rows = []
    for number, line in lines[1:]:
        vals = line.split(sep) if sep else line.split(None, len(cols) - 1)
        if len(vals) != len(cols):
            raise ParseError(source, number, f"expected {len(cols)} columns, got {len(vals)}")
        rows.append((number, {k: v.strip() for k, v in zip(keys, vals, strict=True) if k}))
    return rows


def _text_records(row: dict[str, str]) -> list[dict]:
    part = sv.string(row.get("partition"))
    aiot = (row.get("cpus_aiot") or "").split("/")
    alloc, idle, other, total = (_int(x) for x in aiot) if len(aiot) == 4 else (None,) * 4
    state, flags = sv.node_state(row["state"]) if "state" in row else (None, [])
    reason = sv.string(row.get("reason"))
    common = {
        "partition": part.rstrip("*") if part else None,
        "partition_default": part.endswith("*") if part else None,
        "partition_available": sv.string(row.get("avail")),
        "partition_time_limit_seconds": _limit(row.get("timelimit")),
        "state": state,
        "state_flags": flags,
        "cpus": _int(row.get("cpus")) or total,
        "cpus_alloc": alloc,
        "cpus_idle": idle,
        "cpus_other": other,
        "cpu_load": _float(row.get("cpu_load")),
        "memory_bytes": _mib(_int(row.get("memory"))),
        "memory_free_bytes": _mib(_int(row.get("free_mem"))),
        "gres": sv.string(row.get("gres")),
        "gpus": sv.gpus_from_gres(row.get("gres")),
        "features": sv.string(row.get("features")),
        "reason": reason,
        "reason_user": sv.string(row.get("user")) if reason else None,
        "reason_time": sv.timestamp(row.get("timestamp")) if reason else None,
    }
    nodes = row.get("nodelist")
    size = sv.hostlist_size(nodes)
    if size > NODES_MAX:
        raise ValueError(
            f"node list {nodes[:60]!r} names {size} nodes, more than sinfo.NODES_MAX ({NODES_MAX})"
        )
    return [_record(node=node, **common) for node in sv.hostlist(nodes)]


def _mib(n: int | float | None) -> int | None:
    return int(n * _MIB) if n is not None else None


def records(text: str, source: str = "sinfo") -> list[dict]:
    """`sinfo` text with its header: the default (one row per partition and state, expanded to
    nodes), `-N`, `-l` and `-o FORMAT` with '|' (free text like REASON only last)."""
    out = []
    for number, row in _table(text, source):
        try:
            out += _text_records(row)
        except ValueError as exc:
            raise ParseError(source, number, str(exc)) from None
    return out


def json_records(node: dict) -> list[dict]:
    """The records of one node object of sinfo --json or slurmrestd /nodes."""
    flags = node.get("state_flags") if isinstance(node.get("state_flags"), list) else []
    state, flags = sv.node_state(
        node.get("state")
        if isinstance(node.get("state"), list)
        else [node.get("state") or "", *flags]
    )
    load = sv.number(node.get("cpu_load"))
    reason = sv.string(node.get("reason"))
    common = {
        "state": state,
        "state_flags": flags,
        "cpus": sv.number(node.get("cpus")),
        "cpus_alloc": sv.number(node.get("alloc_cpus")),
        "cpus_idle": sv.number(node.get("idle_cpus")),
        "cpu_load": load / 100 if load is not None else None,  # Slurm keeps load * 100
        "memory_bytes": _mib(sv.number(node.get("real_memory"))),
        "memory_alloc_bytes": _mib(sv.number(node.get("alloc_memory"))),
        "memory_free_bytes": _mib(sv.number(node.get("free_memory"))),
        "gres": sv.string(node.get("gres")),
        "gpus": sv.gpus_from_gres(node.get("gres")),
        "features": sv.string(node.get("features")),
        "reason": reason,
        "reason_user": sv.string(node.get("reason_set_by_user")) if reason else None,
        "reason_time": sv.epoch(node.get("reason_changed_at")) if reason else None,
    }
    parts = node.get("partitions") if isinstance(node.get("partitions"), list) else None
    parts = parts or [None]
    return [_record(node=node.get("name"), partition=p, **common) for p in parts]


def records_json(text: str, source: str = "sinfo") -> list[dict]:
    """`sinfo --json` of Slurm 21.08/22.05 (openapi v0.0.37/38) or slurmrestd's /nodes."""
    _doc, nodes = load_json(text, source, "nodes")
    out = []
    for i, node in enumerate(nodes):
        if not isinstance(node, dict) or not node.get("name"):
            raise ParseError(source, None, f"node {i} has no name")
        try:
            out += json_records(node)
        except ValueError as exc:  # a value slurmvalues cannot read ('gpu:' and 5000 digits)
            raise ParseError(source, None, f"node {i}: {exc}") from None
    return out


# -- the collector (collectors/registry.py) -----------------------------------------------------
def collect(cfg: Config, state: dict[str, Any]) -> list[dict[str, Any]]:
    if json_works(state, ["sinfo"]):
        return records_json(run_tool(["sinfo", "--json"], SLURM_TIMEOUT), "sinfo --json")
    argv = ["sinfo", "-N", "-o", COLLECTOR_FORMAT]
    return records(run_tool(argv, SLURM_TIMEOUT), "sinfo -N -o")
