"""Pure parser of `scontrol show job -o` and `scontrol show node -o` (one record per line).

`collect_nodes` is the `node_state` collector's read (`scontrol show node -o`).
"""

from __future__ import annotations

import re
from typing import Any

from collectors.runner import run_tool
from nomade_common.config import Config
from nomade_common.errors import ParseError

from . import SLURM_TIMEOUT
from . import slurmvalues as sv
from .squeue import FIELDS, REASONS, _explain_limit, explain

# A key starts a token: letters, digits, '/', ':' and '_' before '='.  Values may contain spaces
# (WorkDir, Command, Reason), so a token ends only where the next key begins.
_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/.]*)=")


def parse_record(line: str) -> dict[str, str]:
    keys = list(_KEY.finditer(line))
    out: dict[str, str] = {}
    for i, m in enumerate(keys):
        end = keys[i + 1].start() if i + 1 < len(keys) else len(line)
        out[m.group(1)] = line[m.end() : end].strip()
    return out


def parse(text: str, source: str = "scontrol") -> list[dict[str, str]]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if "=" not in line:
            raise ParseError(source, number, "expected KEY=VALUE pairs (scontrol show -o output)")
        records.append(parse_record(line.strip()))
    return records


# ---------------------------------------------------------------------------------------------
# Typed records (`nomadectl parse scontrol-node|scontrol-job`), docs/parsers-slurm.md


def blocks(text: str, source: str = "scontrol") -> list[tuple[int, dict[str, str]]]:
    """`scontrol show node|job` in either form -> (first line, KEY=VALUE dict) per record.

    The default form spreads a record over indented lines and ends it with a blank line; `-o`
    puts each on one line.  A line that starts at the margin starts a record either way.
    """
    out: list[tuple[int, dict[str, str]]] = []
    start, parts = 0, list[str]()
    for number, line in enumerate([*text.splitlines(), ""], start=1):
        if not line.strip() or not line[0].isspace():
            if parts:
                out.append((start, parse_record(" ".join(parts))))
            start, parts = number, []
        if not line.strip():
            continue
        if line.strip().startswith("No ") and line.strip().endswith("in the system"):
            continue  # "No jobs in the system", "No nodes in the system"
        if "=" not in line:
            raise ParseError(source, number, "expected KEY=VALUE pairs (scontrol show output)")
        parts.append(line.strip())
    return out


_MIB = 1 << 20


def _reason(text: str | None) -> tuple[str | None, str | None, str | None]:
    r"""'Not responding [slurm@2026-11-24T08:25:42]' -> (reason, user, time as printed).

    The '[user@time]' Slurm appends is found back from the ']' that ends TEXT: the earliest '['
    after any other ']', then the first '@' (what r"^(.*?)\s*\[([^@\]]*)@([^\]]*)\]\s*$"
    matches, without its backtracking, quadratic in a reason full of '[' or spaces).
    """
    if not text or not text.endswith("]"):
        return text, None, None
    end = len(text) - 1
    start = text.find("[", text.rfind("]", 0, end) + 1, end)
    at = text.find("@", start, end) if start >= 0 else -1
    if at < 0:
        return text, None, None
    return text[:start].rstrip() or None, text[start + 1 : at] or None, text[at + 1 : end]


def _mib(value) -> int | None:
    try:
        n = sv.number(float(value)) if value not in (None, "") and not sv.absent(value) else None
    except ValueError:
        return None
    return int(n * _MIB) if n is not None else None


def _int(value: str | None) -> int | None:
    value = (value or "").strip()
    return int(value) if value.isdigit() else None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value and value.strip().upper() != "N/A" else None
    except ValueError:
        return None


NODE_FIELDS = (
    "node",
    "state",
    "state_flags",
    "partitions",
    "cpus",
    "cpus_alloc",
    "cpus_effective",
    "cpu_load",
    "sockets",
    "cores_per_socket",
    "threads_per_core",
    "memory_bytes",
    "memory_alloc_bytes",
    "memory_free_bytes",
    "tmp_disk_bytes",
    "gres",
    "gpus",
    "gpus_alloc",
    "features",
    "active_features",
    "reason",
    "reason_user",
    "reason_time",
    "boot_time",
    "slurmd_start_time",
    "last_busy_time",
    "version",
    "arch",
    "os",
    "weight",
)


def _node_record(rec: dict[str, str]) -> dict:
    cfg, alloc = sv.tres(rec.get("CfgTRES")), sv.tres(rec.get("AllocTRES"))
    state, flags = sv.node_state(rec.get("State")) if rec.get("State") else (None, [])
    reason, user, when = _reason(sv.string(rec.get("Reason")))
    mem = rec.get("RealMemory")
    if mem is None and cfg.get("mem"):
        mem_bytes = sv.memory(cfg["mem"], "M")[0]
    else:
        mem_bytes = _mib(mem)
    out = dict.fromkeys(NODE_FIELDS)
    out.update(
        node=rec.get("NodeName"),
        state=state,
        state_flags=flags,
        partitions=[p for p in (rec.get("Partitions") or "").split(",") if p.strip()],
        cpus=_int(rec.get("CPUTot")) or sv.integer(cfg.get("cpu")),
        cpus_alloc=_int(rec.get("CPUAlloc")),
        cpus_effective=_int(rec.get("CPUEfctv")),
        cpu_load=_float(rec.get("CPULoad")),
        sockets=_int(rec.get("Sockets")),
        cores_per_socket=_int(rec.get("CoresPerSocket")),
        threads_per_core=_int(rec.get("ThreadsPerCore")),
        memory_bytes=mem_bytes,
        memory_alloc_bytes=_mib(rec.get("AllocMem")),
        memory_free_bytes=_mib(rec.get("FreeMem")),
        tmp_disk_bytes=_mib(rec.get("TmpDisk")),
        gres=sv.string(rec.get("Gres")),
        gpus=sv.gpus_from_tres(cfg) or sv.gpus_from_gres(rec.get("Gres")),
        gpus_alloc=sv.gpus_from_tres(alloc) if "AllocTRES" in rec else None,
        features=sv.string(rec.get("AvailableFeatures")),
        active_features=sv.string(rec.get("ActiveFeatures")),
        reason=reason,
        reason_user=user,
        reason_time=sv.timestamp(when),
        boot_time=sv.timestamp(rec.get("BootTime")),
        slurmd_start_time=sv.timestamp(rec.get("SlurmdStartTime")),
        last_busy_time=sv.timestamp(rec.get("LastBusyTime")),
        version=sv.string(rec.get("Version")),
        arch=sv.string(rec.get("Arch")),
        os=sv.string(rec.get("OS")),
        weight=_int(rec.get("Weight")),
    )
    return out


def node_records(text: str, source: str = "scontrol") -> list[dict]:
    """`scontrol show node` (default or -o): one record per node, units in the names."""
    out = []
    for number, rec in blocks(text, source):
        if "NodeName" not in rec:
            raise ParseError(source, number, "a record without NodeName: not scontrol show node")
        try:
            out.append(_node_record(rec))
        except ValueError as exc:
            raise ParseError(source, number, str(exc)) from None
    return out


JOB_EXTRA_FIELDS = (
    "uid",
    "exit_code",
    "signal",
    "eligible_time",
    "tasks",
    "restarts",
    "batch_host",
    "work_dir",
    "stdout",
    "stderr",
    "alloc_memory_bytes",
    "mem_per_node_bytes",
    "mem_per_cpu_bytes",
    "gres",
    "het_job_id",
    "het_job_offset",
)


def _min_memory(value: str | None) -> int | None:
    """MinMemoryNode or MinMemoryCPU in bytes (MiB without a unit); None when 0 (not asked)."""
    return None if value in (None, "", "0") else sv.memory(value, "M")[0]


def _job_record(rec: dict[str, str]) -> dict:
    raw = rec["JobId"]
    array, task = sv.string(rec.get("ArrayJobId")), sv.string(rec.get("ArrayTaskId"))
    job_id = raw
    if array and task:
        job_id = f"{array}_{task}" if task.isdigit() else f"{array}_[{task}]"
    user, _, uid = (rec.get("UserId") or "").partition("(")
    reason = rec.get("Reason") or ""
    if reason not in REASONS and not _explain_limit(reason):
        reason = reason.replace("_", " ")  # scontrol writes descriptions with '_' for ' '
    tres = sv.tres(rec.get("AllocTRES") or rec.get("TRES")) or sv.tres(rec.get("ReqTRES"))
    mem = rec.get("MinMemoryNode") or rec.get("MinMemoryCPU")
    code = sv.exit_code(rec.get("ExitCode"))
    nodes = (rec.get("NumNodes") or "").split("-")[0]
    gres = rec.get("TresPerNode") or rec.get("Gres") or None
    gpus = sv.gpus_from_tres(sv.tres(rec.get("ReqTRES") or rec.get("TRES")))
    out = dict.fromkeys((*FIELDS, *JOB_EXTRA_FIELDS))
    out.update(
        job_id=job_id,
        job_id_raw=raw,
        array_job_id=array if task else None,
        array_task=task.strip("[]") if task else None,
        name=sv.string(rec.get("JobName")),
        user=sv.string(user),
        uid=_int(uid.rstrip(")")),
        account=sv.string(rec.get("Account")),
        partition=sv.string(rec.get("Partition")),
        qos=sv.string(rec.get("QOS")),
        state=sv.string(rec.get("JobState")),
        **explain(reason),
        dependency=sv.string(rec.get("Dependency")),
        cpus=_int((rec.get("NumCPUs") or "").split("-")[0]),
        node_count=_int(nodes),
        nodelist=sv.string(rec.get("NodeList")),
        tres_per_node=sv.string(rec.get("TresPerNode")),
        gpus=gpus if gpus is not None else sv.gpus_from_gres(gres),
        min_memory_bytes=sv.memory(mem, "M")[0],
        priority=_int(rec.get("Priority")),
        time_limit_seconds=sv.duration(rec.get("TimeLimit")),
        elapsed_seconds=sv.duration(rec.get("RunTime")),
        submit_time=sv.timestamp(rec.get("SubmitTime")),
        start_time=sv.timestamp(rec.get("StartTime")),
        end_time=sv.timestamp(rec.get("EndTime")),
        eligible_time=sv.timestamp(rec.get("EligibleTime")),
        exit_code=code[0],
        signal=code[1],
        tasks=_int(rec.get("NumTasks")),
        restarts=_int(rec.get("Restarts")),
        batch_host=sv.string(rec.get("BatchHost")),
        work_dir=sv.string(rec.get("WorkDir")),
        stdout=sv.string(rec.get("StdOut")),
        stderr=sv.string(rec.get("StdErr")),
        alloc_memory_bytes=sv.memory(tres.get("mem"), "M")[0] if tres.get("mem") else None,
        mem_per_node_bytes=_min_memory(rec.get("MinMemoryNode")),
        mem_per_cpu_bytes=_min_memory(rec.get("MinMemoryCPU")),
        gres=sv.string(gres),
        het_job_id=_int(rec.get("HetJobId")),
        het_job_offset=_int(rec.get("HetJobOffset")),
    )
    return out


def job_records(text: str, source: str = "scontrol") -> list[dict]:
    """`scontrol show job` (default or -o): the squeue record's keys plus JOB_EXTRA_FIELDS."""
    out = []
    for number, rec in blocks(text, source):
        if "JobId" not in rec:
            raise ParseError(source, number, "a record without JobId: not scontrol show job")
        try:
            out.append(_job_record(rec))
        except ValueError as exc:
            raise ParseError(source, number, str(exc)) from None
    return out


# -- the collector (collectors/registry.py) -----------------------------------------------------
def collect_nodes(cfg: Config, state: dict[str, Any]) -> list[dict[str, Any]]:
    argv = [cfg.aggregator.scontrol, "show", "node", "-o"]
    return node_records(run_tool(argv, SLURM_TIMEOUT), "scontrol show node -o")
