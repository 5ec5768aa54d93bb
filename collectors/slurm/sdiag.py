"""Pure parser of `sdiag`: the text report (every version) and `sdiag --json` (23.02 and later;
22.05's sdiag has no --json, its slurmrestd /diag gives the same document).  The shape is
detected from the first character.

Records (docs/parsers-slurm.md): one `record: "stats"` with the scheduler counters, then one
`record: "rpc_type"` per RPC message type and one `record: "rpc_user"` per user.  Slurm measures
times in microseconds; the records give seconds.  `collect` is the `scheduler` collector's read.
"""

from __future__ import annotations

import re
from typing import Any

from collectors.runner import run_tool
from nomade_common.config import Config
from nomade_common.errors import ParseError

from . import SLURM_TIMEOUT, json_works
from . import slurmvalues as sv
from .squeue import decode_json

# JSON key -> record key; the unit conversion is by suffix of the record key.
_STATS = {
    "req_time": "sample_time",
    "req_time_start": "stats_start_time",
    "server_thread_count": "server_thread_count",
    "agent_queue_size": "agent_queue_size",
    "agent_count": "agent_count",
    "agent_thread_count": "agent_thread_count",
    "dbd_agent_queue_size": "dbd_agent_queue_size",
    "gettimeofday_latency": "gettimeofday_latency_seconds",
    "jobs_submitted": "jobs_submitted",
    "jobs_started": "jobs_started",
    "jobs_completed": "jobs_completed",
    "jobs_canceled": "jobs_canceled",
    "jobs_failed": "jobs_failed",
    "jobs_pending": "jobs_pending",
    "jobs_running": "jobs_running",
    "job_states_ts": "job_states_time",
    "schedule_cycle_last": "schedule_cycle_last_seconds",
    "schedule_cycle_max": "schedule_cycle_max_seconds",
    "schedule_cycle_mean": "schedule_cycle_mean_seconds",
    "schedule_cycle_total": "schedule_cycles",
    "schedule_cycle_mean_depth": "schedule_mean_depth",
    "schedule_cycle_per_minute": "schedule_cycles_per_minute",
    "schedule_queue_length": "schedule_queue_length",
    "bf_backfilled_jobs": "bf_backfilled_jobs",
    "bf_last_backfilled_jobs": "bf_last_backfilled_jobs",
    "bf_backfilled_het_jobs": "bf_backfilled_het_jobs",
    "bf_cycle_counter": "bf_cycles",
    "bf_when_last_cycle": "bf_last_cycle_time",
    "bf_cycle_last": "bf_cycle_last_seconds",
    "bf_cycle_max": "bf_cycle_max_seconds",
    "bf_cycle_mean": "bf_cycle_mean_seconds",
    "bf_last_depth": "bf_last_depth",
    "bf_last_depth_try": "bf_last_depth_try",
    "bf_depth_mean": "bf_mean_depth",
    "bf_depth_mean_try": "bf_mean_depth_try",
    "bf_queue_len": "bf_queue_length",
    "bf_queue_len_mean": "bf_mean_queue_length",
    "bf_table_size": "bf_table_size",
    "bf_table_size_mean": "bf_mean_table_size",
    "bf_active": "bf_active",
}
STATS_FIELDS = ("record", *_STATS.values())
RPC_FIELDS = (
    "record",
    "message_type",
    "type_id",
    "user",
    "user_id",
    "count",
    "average_time_seconds",
    "total_time_seconds",
)

# Text labels -> JSON keys, per section (the same label means different things in each).
_TEXT = {
    "": {
        "Server thread count": "server_thread_count",
        "Agent queue size": "agent_queue_size",
        "Agent count": "agent_count",
        "Agent thread count": "agent_thread_count",
        "DBD Agent queue size": "dbd_agent_queue_size",
        "Jobs submitted": "jobs_submitted",
        "Jobs started": "jobs_started",
        "Jobs completed": "jobs_completed",
        "Jobs canceled": "jobs_canceled",
        "Jobs failed": "jobs_failed",
        "Job states ts": "job_states_ts",
        "Jobs pending": "jobs_pending",
        "Jobs running": "jobs_running",
    },
    "main": {
        "Last cycle": "schedule_cycle_last",
        "Max cycle": "schedule_cycle_max",
        "Total cycles": "schedule_cycle_total",
        "Mean cycle": "schedule_cycle_mean",
        "Mean depth cycle": "schedule_cycle_mean_depth",
        "Cycles per minute": "schedule_cycle_per_minute",
        "Last queue length": "schedule_queue_length",
    },
    "backfill": {
        "Total backfilled jobs (since last slurm start)": "bf_backfilled_jobs",
        "Total backfilled jobs (since last stats cycle start)": "bf_last_backfilled_jobs",
        "Total backfilled heterogeneous job components": "bf_backfilled_het_jobs",
        "Total cycles": "bf_cycle_counter",
        "Last cycle when": "bf_when_last_cycle",
        "Last cycle": "bf_cycle_last",
        "Max cycle": "bf_cycle_max",
        "Mean cycle": "bf_cycle_mean",
        "Last depth cycle": "bf_last_depth",
        "Last depth cycle (try sched)": "bf_last_depth_try",
        "Depth Mean": "bf_depth_mean",
        "Depth Mean (try depth)": "bf_depth_mean_try",
        "Last queue length": "bf_queue_len",
        "Queue length mean": "bf_queue_len_mean",
        "Last table size": "bf_table_size",
        "Mean table size": "bf_table_size_mean",
    },
}
# Counters are 64-bit: at most 20 digits (a longer number is no counter, and past int()'s limit).
_EPOCH = re.compile(r"\((\d{1,20})\)\s*$")
_RPC = re.compile(
    r"^\s*(\S+)\s+\(\s*(\d{1,20})\)\s+count:(\d{1,20})\s+ave_time:(\d{1,20})\s+"
    r"total_time:(\d{1,20})\s*$"
)
_LATENCY = re.compile(r"^Latency for 1000 calls to gettimeofday\(\): (\d{1,20}) microseconds")


def _convert(record_key: str, value):
    value = sv.number(value) if not isinstance(value, bool) else value
    if value is None or isinstance(value, bool):
        return value
    if record_key.endswith("_seconds"):
        return value / 1e6
    if record_key.endswith("_time"):
        return float(value) if value else None
    return value


def _stats(values: dict) -> dict:
    out = dict.fromkeys(STATS_FIELDS)
    out["record"] = "stats"
    for key, rkey in _STATS.items():
        if key in values:
            out[rkey] = _convert(rkey, values[key])
    return out


def _rpc(kind: str, name_key: str, item: dict) -> dict:
    out = dict.fromkeys(RPC_FIELDS)
    id_key = "type_id" if kind == "rpc_type" else "user_id"
    out.update(
        record=kind,
        **{name_key: item.get(name_key), id_key: sv.number(item.get(id_key))},
        count=sv.number(item.get("count")),
        average_time_seconds=_convert("_seconds", item.get("average_time")),
        total_time_seconds=_convert("_seconds", item.get("total_time")),
    )
    return out


def records_json(text: str, source: str = "sdiag") -> list[dict]:
    doc = decode_json(text, source)
    stats = doc.get("statistics") if isinstance(doc, dict) else None
    if not isinstance(stats, dict):
        raise ParseError(source, None, "no 'statistics' object: not sdiag --json output")
    out = [_stats(stats)]
    for kind, name_key, key in (
        ("rpc_type", "message_type", "rpcs_by_message_type"),
        ("rpc_user", "user", "rpcs_by_user"),
    ):
        items = stats.get(key) if isinstance(stats.get(key), list) else []
        out += [_rpc(kind, name_key, i) for i in items if isinstance(i, dict)]
    return out


def _text_value(key: str, value: str, source: str, number: int):
    m = _EPOCH.search(value)
    if m:  # 'Tue Nov 24 09:56:15 2026 (1795514175)'
        return int(m.group(1))
    if sv.absent(value):
        return None
    try:
        return int(value.split()[0])
    except (ValueError, IndexError):  # not a number, or past int()'s 4300 digits
        raise ParseError(source, number, f"{key}: expected a number, got {value[:60]!r}") from None


def records_text(text: str, source: str = "sdiag") -> list[dict]:
    values: dict = {}
    rpcs: list[dict] = []
    section, rpc_kind = "", None
    for number, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if not s or s.startswith("****"):
            continue
        if s.startswith("sdiag output at"):
            values["req_time"] = _text_value("sdiag output at", s, source, number)
        elif s.startswith("Data since"):
            values["req_time_start"] = _text_value("Data since", s, source, number)
        elif s.startswith("Main schedule statistics"):
            section, rpc_kind = "main", None
        elif s.startswith("Backfilling stats"):
            section, rpc_kind = "backfill", None
            values["bf_active"] = "WARNING" in s  # "(WARNING: data obtained in the middle of
            # backfilling execution.)" while a cycle runs
        elif m := _LATENCY.match(s):
            values["gettimeofday_latency"] = int(m.group(1))
        elif s.startswith("Remote Procedure Call statistics by message type"):
            section, rpc_kind = "rpc", "rpc_type"
        elif s.startswith("Remote Procedure Call statistics by user"):
            section, rpc_kind = "rpc", "rpc_user"
        elif s.startswith(("Pending RPC statistics", "Main scheduler exit", "Backfill exit")):
            section, rpc_kind = "skip", None
        elif rpc_kind and (m := _RPC.match(line)):
            name_key = "message_type" if rpc_kind == "rpc_type" else "user"
            id_key = "type_id" if rpc_kind == "rpc_type" else "user_id"
            item = {
                name_key: m.group(1),
                id_key: int(m.group(2)),
                "count": int(m.group(3)),
                "average_time": int(m.group(4)),
                "total_time": int(m.group(5)),
            }
            rpcs.append(_rpc(rpc_kind, name_key, item))
        elif rpc_kind:
            raise ParseError(source, number, "expected an RPC line (NAME (ID) count:N ...)")
        elif ":" in s and section in _TEXT:
            label, _, value = s.partition(":")
            key = _TEXT[section].get(label.strip())
            if key:
                values[key] = _text_value(label.strip(), value.strip(), source, number)
    if "server_thread_count" not in values:
        raise ParseError(source, 1, "no 'Server thread count': not sdiag output")
    return [_stats(values), *rpcs]


def records(text: str, source: str = "sdiag") -> list[dict]:
    """`sdiag` or `sdiag --json` (or slurmrestd /diag): detected from the first character."""
    if text.lstrip().startswith("{"):
        return records_json(text, source)
    return records_text(text, source)


# -- the collector (collectors/registry.py) -----------------------------------------------------
def collect(cfg: Config, state: dict[str, Any]) -> list[dict[str, Any]]:
    if json_works(state, ["sdiag"]):
        return records(run_tool(["sdiag", "--json"], SLURM_TIMEOUT), "sdiag --json")
    return records(run_tool(["sdiag"], SLURM_TIMEOUT), "sdiag")
