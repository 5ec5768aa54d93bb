"""The node agent's collectors: each a thin read over a pure parser in nodeagent/collectors/.

Raw values only, as the kernel and the tools give them (cumulative counters stay cumulative; the
aggregator turns them into rates).  A source this host lacks is skipped, with the reason, never
reported as a failure: `absent` says why.  Defaults and settings: `[collectors.NAME]`
(docs/configuration.md).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from typing import Any

from nomade_common.collect import Collector, CollectorError, missing_tool, run_tool
from nomade_common.config import Config

from .collectors import disk, gpu, health, nfs, pressure, scratch, sysstat
from .collectors.procio import read_text

TOOL_TIMEOUT = 15.0


def _json_ok(tool: str, state: dict[str, Any]) -> bool:
    """Whether TOOL has `-o JSON` (sysstat 11 and later), asked once."""
    if "json" not in state:
        state["json"] = sysstat.has_json(tool, TOOL_TIMEOUT, run=run_tool)
    return bool(state["json"])


def read_iostat(cfg: Config, state: dict[str, Any]) -> list[dict[str, Any]]:
    return sysstat.read_iostat(json_ok=_json_ok("iostat", state), timeout=TOOL_TIMEOUT, run=run_tool)


def read_mpstat(cfg: Config, state: dict[str, Any]) -> list[dict[str, Any]]:
    return sysstat.read_mpstat(json_ok=_json_ok("mpstat", state), timeout=TOOL_TIMEOUT, run=run_tool)


def read_vmstat(cfg: Config, state: dict[str, Any]) -> list[dict[str, Any]]:
    return sysstat.read_vmstat(timeout=TOOL_TIMEOUT, run=run_tool)


def read_pressure(cfg: Config, state: dict[str, Any]) -> list[dict[str, Any]]:
    return pressure.read(cfg.agent.proc_root)


def absent_pressure(cfg: Config) -> str | None:
    if os.path.isdir(f"{cfg.agent.proc_root}/pressure"):
        return None
    return f"no {cfg.agent.proc_root}/pressure (kernel before 4.20 or booted with psi=0)"


def _has_nvml() -> bool:
    return importlib.util.find_spec("pynvml") is not None


def read_gpu(cfg: Config, state: dict[str, Any]) -> list[dict[str, Any]]:
    records = gpu.read(cfg.agent.proc_root, cfg.collectors.gpu.nvidia_smi, TOOL_TIMEOUT)
    if not records:
        raise CollectorError("neither NVML nor nvidia-smi answered")
    return records


def absent_gpu(cfg: Config) -> str | None:
    if _has_nvml() and os.path.exists("/dev/nvidiactl"):
        return None
    if shutil.which(cfg.collectors.gpu.nvidia_smi):
        return None
    return "no NVIDIA GPU here (neither NVML nor nvidia-smi)"


def _nfs_mounts(cfg: Config) -> list[str]:
    table = nfs.mount_table(read_text(f"{cfg.agent.proc_root}/self/mountinfo") or "")
    return [point for point, fstype in table.items() if fstype.startswith("nfs")]


def read_nfs(cfg: Config, state: dict[str, Any]) -> list[dict[str, Any]]:
    return nfs.read(cfg.agent.proc_root)


def absent_nfs(cfg: Config) -> str | None:
    return None if _nfs_mounts(cfg) else "no NFS mount on this node"


def _running(state: dict[str, Any]) -> dict[int, int | None]:
    """Job id -> uid of the jobs on this node, as the agent's sampler last saw them."""
    return dict(state.get("shared", {}).get("running") or {})


def read_disk(cfg: Config, state: dict[str, Any]) -> list[dict[str, Any]]:
    """Usage of each configured filesystem (a mount that does not answer is reported, never
    waited for); quotas where configured: repquota on `quota_filesystems`, and `lfs quota` on
    `lustre_filesystems` for the users with jobs on this node."""
    dc = cfg.collectors.disk
    records = disk.read_usage(list(dc.filesystems), dc.probe_timeout_seconds)
    if dc.quota_filesystems:
        records += disk.read_repquota(list(dc.quota_filesystems))
    uids = sorted({uid for uid in _running(state).values() if uid is not None})
    for path in dc.lustre_filesystems:
        for uid in uids:
            records += disk.read_lfs_quota(str(uid), path)
    return records


def read_health(cfg: Config, state: dict[str, Any]) -> list[dict[str, Any]]:
    """Temperatures, EDAC counts, whether the node's daemons run, and hardware errors the kernel
    logged since the last run (the ring buffer is read whole; lines already reported are
    skipped by their uptime stamp)."""
    hc, sys_root = cfg.collectors.health, "/sys"
    records = health.parse_hwmon(f"{sys_root}/class/hwmon") + health.parse_edac(f"{sys_root}/devices/system/edac/mc")
    records += health.services(cfg.agent.proc_root, list(hc.services))
    if hc.kernel_log:
        text = health.read_kmsg()
        if text:
            errors = health.parse_kernel_errors(text, "/dev/kmsg")
            after = state.get("kernel_uptime", -1.0)
            fresh = [e for e in errors if (e.get("uptime_seconds") or 0.0) > after]
            if errors:
                state["kernel_uptime"] = max(e.get("uptime_seconds") or 0.0 for e in errors)
            records += fresh
    return records


def read_scratch(cfg: Config, state: dict[str, Any]) -> list[dict[str, Any]]:
    """Large, stale and orphaned files under each scratch path (bounded walks), and job
    directories left there by jobs no longer running on this node."""
    sc, running = cfg.collectors.scratch, _running(state)
    uids = {uid for uid in running.values() if uid is not None}
    records: list[dict[str, Any]] = []
    for path in sc.paths:
        records += scratch.read(path, sc.large_bytes, sc.stale_days, uids, sc.max_entries, sc.max_seconds)
        records += scratch.leftover_job_dirs(path, running)
    return records


def absent_scratch(cfg: Config) -> str | None:
    return None if cfg.collectors.scratch.paths else "no scratch path configured"


NODE_COLLECTORS: list[Collector] = [
    Collector("iostat", read_iostat, missing_tool("iostat", "install sysstat: no device I/O"),
              "iostat -x: device utilisation, await, throughput; CPU %iowait"),
    Collector("mpstat", read_mpstat, missing_tool("mpstat", "install sysstat: no per-core CPU"),
              "mpstat -P ALL: per-core busy, imbalance, saturated cores"),
    Collector("vmstat", read_vmstat, missing_tool("vmstat", "install procps: no memory pressure"),
              "vmstat: memory, swap in/out, blocked processes"),
    Collector("pressure", read_pressure, absent_pressure, "/proc/pressure: PSI stall averages"),
    Collector("gpu", read_gpu, absent_gpu, "NVML or nvidia-smi: GPUs, MIG, processes by job"),
    Collector("nfs", read_nfs, absent_nfs, "/proc/self/mountstats: per-mount NFS ops, bytes, RTT"),
    Collector("disk", read_disk, what="filesystem usage and responsiveness; quotas where configured"),
    Collector("health", read_health, what="temperatures, EDAC, kernel hardware errors, daemons"),
    Collector("scratch", read_scratch, absent_scratch, "scratch hygiene: large, stale, orphaned files"),
]
