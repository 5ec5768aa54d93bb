"""`nomadectl syscheck`: what this host has for NØMADE, each item OK, missing (with the reason
and what it costs) or failed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from aggregator.store import SCHEMA_VERSION, StoreError, event_job_counts, schema_version_at
from nomade_common.config import Config


@dataclass
class Check:
    section: str
    name: str
    status: str  # ok | skip | fail
    detail: str


def _tool(section: str, name: str, missing: str) -> Check:
    path = shutil.which(name)
    return Check(section, name, "ok" if path else "skip", path or f"not found ({missing})")


def slurm_config() -> dict[str, str]:
    """`scontrol show config` as a dict; {} where scontrol is missing or does not answer."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "config"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    conf = {}
    for line in out.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            conf[key.strip()] = value.strip()
    return conf


def _cgroup(root: str) -> Check:
    if Path(root, "cgroup.controllers").exists():
        return Check("System", "cgroup", "ok", f"v2 at {root}")
    if Path(root, "memory").is_dir():
        return Check("System", "cgroup", "ok", f"v1 at {root} (memory, cpuacct)")
    return Check(
        "System", "cgroup", "fail", f"no cgroup hierarchy under {root}: no per-job CPU or memory"
    )


def _database(path: str) -> list[Check]:
    if not Path(path).exists():
        return [
            Check("Database", "database", "fail", f"{path} does not exist (run nomadectl init)")
        ]
    try:
        version = schema_version_at(path)
    except StoreError as exc:
        return [Check("Database", "database", "fail", f"{path}: {exc}")]
    state = "ok" if version == SCHEMA_VERSION else "fail"
    return [
        Check("Database", "database", "ok", path),
        Check(
            "Database", "schema version", state, f"{version} (this NØMADE expects {SCHEMA_VERSION})"
        ),
    ]


def _collectors(cfg: Config) -> list[Check]:
    """Each collector: will it run on this host, and if not, why."""
    from aggregator.daemon.headcollect import HEAD_COLLECTORS
    from collectors.registry import NODE_COLLECTORS
    from collectors.runner import skip_reason

    out = []
    for role, collectors in (("node", NODE_COLLECTORS), ("head", HEAD_COLLECTORS)):
        for c in collectors:
            why = skip_reason(c, cfg)
            every = getattr(cfg.collectors, c.name).interval_seconds
            out.append(
                Check(
                    f"Collectors ({role})",
                    c.name,
                    "skip" if why else "ok",
                    why or f"every {every:g} s: {c.what}",
                )
            )
    return out


def _slurmdbd(conf: dict[str, str]) -> list[Check]:
    """slurmdbd answers, and knows this cluster (sacct has the jobs NØMADE reconciles)."""
    cluster = conf.get("ClusterName", "")
    try:
        out = subprocess.run(
            ["sacctmgr", "-n", "-P", "show", "cluster", "format=cluster"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [Check("Slurm", "slurmdbd answers", "fail", f"sacctmgr: {type(exc).__name__}")]
    if out.returncode != 0:
        first = (out.stderr.strip().splitlines() or ["no message"])[0]
        return [
            Check("Slurm", "slurmdbd answers", "fail", f"sacctmgr exited {out.returncode}: {first}")
        ]
    known = out.stdout.split()
    return [
        Check(
            "Slurm",
            "slurmdbd answers",
            "ok" if cluster in known else "fail",
            f"cluster {cluster} registered"
            if cluster in known
            else f"cluster {cluster!r} not in slurmdbd (known: {', '.join(known) or 'none'})",
        )
    ]


def _controller_hooks_report(path: str) -> list[Check]:
    """Whether PrologSlurmctld reports reach NØMADE: jobs whose node Prolog reported a start in
    the last day but none from PrologSlurmctld mean slurmctld does not run it (Slurm decides at
    its start whether to run PrologSlurmctld at all: restart slurmctld after installing)."""
    if not Path(path).exists():
        return []
    try:
        since = __import__("time").time() - 86400
        node, head = event_job_counts(path, ("node_job_start", "job_start"), since)
    except StoreError:
        return []
    if node == 0:
        return [
            Check(
                "Slurm hooks", "PrologSlurmctld reports", "skip", "no job started in the last day"
            )
        ]
    if head == 0:
        return [
            Check(
                "Slurm hooks",
                "PrologSlurmctld reports",
                "fail",
                f"none for the {node} jobs whose nodes reported a start in the last day: restart "
                "slurmctld (it runs PrologSlurmctld only if it was configured when slurmctld "
                "started)",
            )
        ]
    return [
        Check("Slurm hooks", "PrologSlurmctld reports", "ok", f"{head} job starts in the last day")
    ]


def run(cfg: Config) -> list[Check]:
    checks = [
        Check(
            "Python",
            "version",
            "ok" if sys.version_info >= (3, 11) else "fail",
            sys.version.split()[0] + " (requires >= 3.11)",
        )
    ]
    for mod in ("zmq", "msgpack", "click"):
        try:
            __import__(mod)
            checks.append(Check("Python", mod, "ok", "importable"))
        except ImportError:
            checks.append(Check("Python", mod, "fail", "missing: pip install nomade"))
    for cmd in ("sinfo", "squeue", "sacct", "sstat", "scontrol"):
        checks.append(_tool("Slurm", cmd, "no Slurm commands on this host"))
    conf = slurm_config()
    if conf:
        storage = conf.get("AccountingStorageType", "")
        checks.append(
            Check(
                "Slurm",
                "slurmdbd",
                "ok" if "slurmdbd" in storage else "skip",
                storage or "not set (sacct has no history: no reconciliation)",
            )
        )
        if "slurmdbd" in storage and shutil.which("sacctmgr"):
            checks += _slurmdbd(conf)
        gather = conf.get("JobAcctGatherType", "")
        checks.append(
            Check(
                "Slurm",
                "JobAcctGather",
                "ok" if gather and "none" not in gather else "skip",
                gather or "not set (MaxRSS and TotalCPU missing from sacct)",
            )
        )
        for key in ("Prolog", "PrologSlurmctld", "Epilog", "EpilogSlurmctld", "TaskProlog"):
            value = conf.get(key, "(null)")
            ok = (
                value not in ("(null)", "")
                and "nomade" in value.lower()
                or Path(value, "..").exists()
                and value.startswith(cfg.hooks.prefix)
            )
            checks.append(
                Check(
                    "Slurm hooks",
                    key,
                    "ok" if ok else "skip",
                    value if value != "(null)" else "not set (nomadectl install-hooks)",
                )
            )
    for tool, why in (
        ("iostat", "no device I/O"),
        ("mpstat", "no per-core CPU"),
        ("vmstat", "no memory pressure"),
        ("nvidia-smi", "no GPU monitoring"),
        ("nfsiostat", "no NFS monitoring"),
    ):
        checks.append(_tool("System tools", tool, why))
    checks.append(_cgroup(cfg.agent.cgroup_root))
    io_ok = os.access(f"{cfg.agent.proc_root}/1/io", os.R_OK)
    checks.append(
        Check(
            "System",
            "/proc/<pid>/io",
            "ok" if io_ok else "skip",
            "readable" if io_ok else "not readable (run the agent as root): no per-job I/O bytes",
        )
    )
    checks += _collectors(cfg)
    checks += _database(cfg.database)
    checks += _controller_hooks_report(cfg.database)
    checks.append(Check("Config", "config", "ok", cfg.path))
    return checks
