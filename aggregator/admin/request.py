"""One reading of a job's request from sbatch options (`#SBATCH` lines and the command line),
filled with the partition's and the cluster's defaults the way Slurm fills them.

`nomadectl check job.sh` uses it to score a job before it is submitted; its result has the same
keys as `jobs.request_from_scontrol`, which reads the request Slurm stored, and a test checks the
two against each other for scripts submitted with --hold.
"""

from __future__ import annotations

import math
import re
import shlex
import subprocess
from typing import Any

from collectors.slurm import scontrol
from collectors.slurm import slurmvalues as sv

_SHORT = {
    "-c": "--cpus-per-task",
    "-n": "--ntasks",
    "-N": "--nodes",
    "-t": "--time",
    "-p": "--partition",
    "-A": "--account",
    "-J": "--job-name",
    "-G": "--gpus",
    "-o": "--output",
    "-e": "--error",
    "-D": "--chdir",
    "-q": "--qos",
    "-w": "--nodelist",
}
_FLAGS = {"--exclusive", "--hold", "--requeue", "--no-requeue", "--parsable", "--wait", "-H", "-W"}


def time_option(text: str) -> float:
    """Every --time format: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S -> seconds, rounded up to whole
    minutes as Slurm stores them."""
    return math.ceil(_time_seconds(text) / 60) * 60.0


def _time_seconds(text: str) -> float:
    s = text.strip()
    if s.upper() in ("UNLIMITED", "INFINITE"):
        raise ValueError("an unlimited time limit")
    days, _, rest = s.rpartition("-") if "-" in s else ("", "", s)
    parts = [int(p) for p in rest.split(":")]
    if days:
        d = int(days)
        if len(parts) > 3:
            raise ValueError(f"expected a time like 2-12:00:00, got {text!r}")
        hms = (parts + [0, 0])[:3]
        return d * 86400 + hms[0] * 3600 + hms[1] * 60 + hms[2]
    if len(parts) == 1:
        return parts[0] * 60.0
    if len(parts) == 2:
        return parts[0] * 60.0 + parts[1]
    if len(parts) == 3:
        return parts[0] * 3600.0 + parts[1] * 60 + parts[2]
    raise ValueError(f"expected a time like 30, 1:30:00 or 2-12, got {text!r}")


def options(script: str, argv: list[str] = ()) -> dict[str, str]:
    """The sbatch options of SCRIPT's #SBATCH lines, overridden by ARGV, as {--long: value}."""
    tokens: list[str] = []
    for line in script.splitlines()[1:] if script.startswith("#!") else script.splitlines():
        stripped = line.strip()
        if stripped.startswith("#SBATCH"):
            tokens += shlex.split(stripped[len("#SBATCH") :], comments=True)
        elif stripped and not stripped.startswith("#"):
            break  # sbatch stops reading #SBATCH lines at the first command
    tokens += list(argv)
    out: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in _FLAGS or not tok.startswith("-"):
            i += 1
            continue
        if tok.startswith("--") and "=" in tok:
            key, value = tok.split("=", 1)
        elif tok.startswith("--"):
            key, value = tok, tokens[i + 1] if i + 1 < len(tokens) else ""
            i += 1
        elif len(tok) > 2:  # -c4
            key, value = tok[:2], tok[2:]
        else:
            key, value = tok, tokens[i + 1] if i + 1 < len(tokens) else ""
            i += 1
        out[_SHORT.get(key, key)] = value
        i += 1
    return out


def _gpus(opts: dict[str, str], nodes: int) -> int | None:
    if "--gpus" in opts:
        return int(opts["--gpus"].rsplit(":", 1)[-1])
    if "--gpus-per-node" in opts:
        return int(opts["--gpus-per-node"].rsplit(":", 1)[-1]) * nodes
    if "--gres" in opts:
        per_node = sv.gpus_from_gres(opts["--gres"])
        return per_node * nodes if per_node is not None else None
    return None


def request(opts: dict[str, str], defaults: dict[str, Any]) -> dict[str, Any]:
    """Request columns (as request_from_scontrol gives them) from sbatch OPTS and DEFAULTS
    (partition, DefMemPerCPU, DefMemPerNode, DefaultTime, MaxTime; see `cluster_defaults`)."""
    partition = opts.get("--partition") or defaults.get("default_partition")
    part = defaults.get("partitions", {}).get(partition, {})
    nodes = int((opts.get("--nodes") or "1").split("-")[0])
    per_task = int(opts.get("--cpus-per-task") or 1)
    if "--ntasks" in opts:
        ntasks = int(opts["--ntasks"])
    elif "--ntasks-per-node" in opts:
        ntasks = int(opts["--ntasks-per-node"]) * nodes
    else:
        ntasks = nodes
    mem_node = mem_cpu = None
    if "--mem" in opts:
        mem_node = sv.memory(opts["--mem"], "M")[0]
    elif "--mem-per-cpu" in opts:
        mem_cpu = sv.memory(opts["--mem-per-cpu"], "M")[0]
    elif part.get("DefMemPerNode") or defaults.get("DefMemPerNode"):
        mem_node = int(part.get("DefMemPerNode") or defaults["DefMemPerNode"]) << 20
    elif part.get("DefMemPerCPU") or defaults.get("DefMemPerCPU"):
        mem_cpu = int(part.get("DefMemPerCPU") or defaults["DefMemPerCPU"]) << 20
    if "--time" in opts:
        limit = time_option(opts["--time"])
    else:
        default = (
            part.get("DefaultTime")
            if part.get("DefaultTime") not in (None, "NONE")
            else part.get("MaxTime")
        )
        limit = None if default in (None, "UNLIMITED") else sv.duration(default)
    return {
        "partition": partition,
        "account": opts.get("--account"),
        "job_name": opts.get("--job-name"),
        "nodes_requested": nodes,
        "cpus": ntasks * per_task,
        "mem_per_node_bytes": mem_node,
        "mem_per_cpu_bytes": mem_cpu,
        "gpus": _gpus(opts, nodes),
        "time_limit_seconds": limit,
    }


def cluster_defaults(scontrol_cmd: str = "scontrol") -> dict[str, Any]:
    """Partitions and memory defaults from the running Slurm (empty where it cannot be asked)."""
    out: dict[str, Any] = {"partitions": {}}
    try:
        parts = subprocess.run(
            [scontrol_cmd, "show", "partition", "-o"], capture_output=True, text=True, timeout=10
        )
        conf = subprocess.run(
            [scontrol_cmd, "show", "config"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return out
    for rec in scontrol.parse(parts.stdout, "scontrol show partition"):
        name = rec.get("PartitionName")
        if not name:
            continue
        out["partitions"][name] = {
            k: rec.get(k)
            for k in ("DefMemPerCPU", "DefMemPerNode", "DefaultTime", "MaxTime")
            if rec.get(k) not in (None, "UNLIMITED") or k == "MaxTime"
        }
        if rec.get("Default") == "YES":
            out["default_partition"] = name
    for line in conf.stdout.splitlines():
        m = re.match(r"(DefMemPerCPU|DefMemPerNode)\s*=\s*(\d+)", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def default_account(user: str, sacctmgr: str = "sacctmgr") -> str | None:
    """USER's default account as Slurm's accounting has it (what Slurm charges a job that
    names none); None where sacctmgr cannot say (no accounting, PrivateData=users, a timeout)."""
    try:
        out = subprocess.run(
            [sacctmgr, "-nP", "show", "user", user, "format=DefaultAccount"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]
    return lines[0][:128] if out.returncode == 0 and len(lines) == 1 else None


def ask_aggregator(
    url: str, req: dict[str, Any], timeout: float = 10.0, *, ca: str = "", munge_socket: str = ""
) -> dict[str, Any]:
    """POST the request to the aggregator's /api/v1/check, signed with the caller's MUNGE
    credential (the aggregator scores it as that user); apiclient.ApiError when it cannot."""
    import json

    from aggregator.admin.apiclient import call

    body = json.dumps({"request": req}).encode()
    answer = call(
        url, "POST", "/api/v1/check", body, ca=ca, munge_socket=munge_socket, timeout=timeout
    )
    return {"request": req, **answer}
