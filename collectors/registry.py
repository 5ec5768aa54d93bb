"""The one registry of NØMADE's collectors, node and head side, and of `nomadectl parse KIND FILE`.

Each entry says what a collector is:

    name              its `[collectors.NAME]` section and the name its readings carry
    side              NODE (nomade-agent, on every compute node) or HEAD (nomade-aggregator)
    interval_seconds  the default of `[collectors.NAME] interval_seconds` (nomade_common/config.py
                      holds the setting; tests/test_collect.py keeps the two equal)
    read              `collect(cfg, state) -> records`, in the collector's own module beside its
                      parsers: the command or file it reads, parsed
    absent            why it cannot run on this host (no GPU, no NFS mount): skipped, not failed
    what              one line for `nomadectl check` and the docs
    kinds             the `nomadectl parse` kinds it answers: the parse its read runs

Two entries have no read of their own and are here for their kinds: `job_samples`, the cgroup
and /proc files the agent's job sampler reads each `[agent] interval_seconds`
(nodeagent/sampler.py), and `job_details`, the Slurm job details the aggregator asks for when it
needs them (`scontrol show job`, `sstat`).

A parse is `parse(text, source) -> list[dict]` and raises nomade_common.errors.ParseError; a
directory kind's parse reads a captured tree (/sys, a cgroup root) and takes its path.  Records
follow one documented schema per kind (docs/parsers-*.md): units in the field names, None for
absent values.  `parser(kind)` is the one door to them, and it is guarded: an exception a parser
lets out on input it did not foresee (a bug: TypeError, OverflowError, ...) comes out as a
ParseError naming the source, so `nomadectl parse` and the importers answer with one line, never
a traceback.

Nothing here imports numpy or the aggregator: the node agent imports this module.
"""

from __future__ import annotations

import csv
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from xml.parsers import expat

from collectors import cgroup, disk, gpu, health, licenses, nfs, pressure, procio, scratch, sysstat
from collectors.runner import missing_tool
from collectors.slurm import sacct, scontrol, sdiag, sinfo, squeue, sshare, sstat
from nomade_common.config import Config
from nomade_common.errors import ParseError

NODE, HEAD = "node", "head"

Records = list[dict[str, Any]]
Reader = Callable[[Config, dict[str, Any]], Records]


@dataclass(frozen=True)
class Kind:
    """One kind of `nomadectl parse`: a name and the pure parse behind it, FUNCTION of MODULE
    (looked up when asked for, as docs/parsers-*.md name it: `collectors.gpu:parse_xml`)."""

    name: str
    module: ModuleType
    function: str
    directory: bool = False  # the parse reads a directory (a captured tree) and takes its path

    @property
    def parse(self) -> Callable[..., Records]:
        return getattr(self.module, self.function)


def _present(cfg: Config) -> str | None:
    return None


@dataclass(frozen=True)
class Collector:
    name: str
    read: Reader | None = None  # None: read by another part (see above), not on a schedule
    absent: Callable[[Config], str | None] = _present
    what: str = ""
    side: str = NODE
    interval_seconds: float | None = None
    kinds: tuple[Kind, ...] = ()


def _slurm(tool: str) -> Callable[[Config], str | None]:
    return missing_tool(tool, "no Slurm commands here")


# name, read, absent, what, side, interval_seconds, kinds
COLLECTORS: tuple[Collector, ...] = (
    # -- node: nomade-agent ---------------------------------------------------------------------
    Collector(
        "iostat",
        sysstat.collect_iostat,
        missing_tool("iostat", "install sysstat: no device I/O"),
        "iostat -x: device utilisation, await, throughput; CPU %iowait",
        NODE,
        60.0,
        (
            Kind("iostat", sysstat, "parse_iostat"),
            Kind("iostat-json", sysstat, "parse_iostat_json"),
        ),
    ),
    Collector(
        "mpstat",
        sysstat.collect_mpstat,
        missing_tool("mpstat", "install sysstat: no per-core CPU"),
        "mpstat -P ALL: per-core busy, imbalance, saturated cores",
        NODE,
        60.0,
        (
            Kind("mpstat", sysstat, "parse_mpstat"),
            Kind("mpstat-json", sysstat, "parse_mpstat_json"),
        ),
    ),
    Collector(
        "vmstat",
        sysstat.collect_vmstat,
        missing_tool("vmstat", "install procps: no memory pressure"),
        "vmstat: memory, swap in/out, blocked processes",
        NODE,
        60.0,
        (Kind("vmstat", sysstat, "parse_vmstat"),),
    ),
    Collector(
        "pressure",
        pressure.collect,
        pressure.absent,
        "/proc/pressure: PSI stall averages",
        NODE,
        30.0,
        (Kind("pressure", pressure, "parse"),),
    ),
    Collector(
        "gpu",
        gpu.collect,
        gpu.absent,
        "NVML or nvidia-smi: GPUs, MIG, processes by job",
        NODE,
        30.0,
        (
            Kind("nvidia-smi-xml", gpu, "parse_xml"),
            Kind("nvidia-smi-csv", gpu, "parse_csv"),
            Kind("nvidia-smi-text", gpu, "parse_text"),
        ),
    ),
    Collector(
        "nfs",
        nfs.collect,
        nfs.absent,
        "/proc/self/mountstats: per-mount NFS ops, bytes, RTT",
        NODE,
        60.0,
        (Kind("mountstats", nfs, "parse_mountstats"), Kind("nfsiostat", nfs, "parse_nfsiostat")),
    ),
    Collector(
        "disk",
        disk.collect,
        _present,
        "filesystem usage and responsiveness; quotas where configured",
        NODE,
        300.0,
        (
            Kind("repquota", disk, "parse_repquota"),
            Kind("quota", disk, "parse_quota"),
            Kind("lfs-quota", disk, "parse_lfs_quota"),
        ),
    ),
    Collector(
        "health",
        health.collect,
        _present,
        "temperatures, EDAC, kernel hardware errors, daemons",
        NODE,
        300.0,
        (
            Kind("hwmon", health, "parse_hwmon", directory=True),
            Kind("edac", health, "parse_edac", directory=True),
            Kind("kernel-errors", health, "parse_kernel_errors"),
        ),
    ),
    Collector(
        "scratch",
        scratch.collect,
        scratch.absent,
        "scratch hygiene: large, stale, orphaned files",
        NODE,
        3600.0,
    ),
    Collector(
        "job_samples",
        None,
        _present,
        "per job: its cgroup, its processes' /proc/PID/io (nodeagent/sampler.py)",
        NODE,
        None,
        (Kind("cgroup", cgroup, "records", directory=True), Kind("proc-io", procio, "records")),
    ),
    # -- head node: nomade-aggregator -----------------------------------------------------------
    Collector(
        "queue",
        squeue.collect,
        missing_tool("squeue", "no Slurm commands on this host"),
        "squeue: queue depth, pending reasons in words, wait times per partition",
        HEAD,
        60.0,
        (Kind("squeue", squeue, "records"), Kind("squeue-json", squeue, "records_json")),
    ),
    Collector(
        "partitions",
        sinfo.collect,
        _slurm("sinfo"),
        "sinfo: partition and node states",
        HEAD,
        60.0,
        (Kind("sinfo", sinfo, "records"), Kind("sinfo-json", sinfo, "records_json")),
    ),
    Collector(
        "node_state",
        scontrol.collect_nodes,
        _slurm("scontrol"),
        "scontrol show node: allocation, load, memory, drain reasons",
        HEAD,
        60.0,
        (Kind("scontrol-node", scontrol, "node_records"),),
    ),
    Collector(
        "fairshare",
        sshare.collect,
        _slurm("sshare"),
        "sshare: fair-share tree",
        HEAD,
        300.0,
        (Kind("sshare", sshare, "records"),),
    ),
    Collector(
        "scheduler",
        sdiag.collect,
        _slurm("sdiag"),
        "sdiag: scheduler cycles, backfill, RPC load",
        HEAD,
        300.0,
        (Kind("sdiag", sdiag, "records"),),
    ),
    Collector(
        "licenses",
        licenses.collect,
        licenses.absent,
        "lmstat/rlmstat: features, in use, checkouts, expiry, server down",
        HEAD,
        300.0,
        (Kind("lmstat", licenses, "parse_lmstat"), Kind("rlmstat", licenses, "parse_rlmstat")),
    ),
    Collector(
        "job_history",
        sacct.collect_history,
        missing_tool("sacct", "no accounting here"),
        "sacct: finished jobs, incrementally by end time",
        HEAD,
        300.0,
        (Kind("sacct", sacct, "records"), Kind("sacct-json", sacct, "records_json")),
    ),
    Collector(
        "job_details",
        None,
        _present,
        "scontrol show job, sstat: read when the aggregator needs them",
        HEAD,
        None,
        (Kind("scontrol-job", scontrol, "job_records"), Kind("sstat", sstat, "records")),
    ),
)


def scheduled(side: str) -> list[Collector]:
    """The collectors SIDE runs on their intervals, in the registry's order."""
    return [c for c in COLLECTORS if c.side == side and c.read is not None]


NODE_COLLECTORS: list[Collector] = scheduled(NODE)

KINDS: dict[str, Kind] = {k.name: k for c in COLLECTORS for k in c.kinds}
# The kinds whose parser reads a directory (a captured /sys or cgroup tree) and takes its path
# instead of (text, source).
DIRECTORY_KINDS: frozenset[str] = frozenset(k.name for k in KINDS.values() if k.directory)


# What a parser's bug lets out on input it did not foresee.  Not OSError (a directory kind's tree
# that cannot be read: the caller says so) nor MemoryError or a caller's timeout.
_LEAKS = (
    ArithmeticError,
    AttributeError,
    LookupError,
    TypeError,
    ValueError,
    RecursionError,
    csv.Error,
    expat.ExpatError,
)


def parser(kind: str) -> Callable[..., Records]:
    """The parser of KIND, guarded (see above); KeyError for a kind NØMADE does not have."""
    if kind not in KINDS:
        raise KeyError(f"unknown kind {kind!r} (known: {', '.join(sorted(KINDS))})")
    return _guarded(kind, KINDS[kind].parse)


def _guarded(kind: str, fn: Callable[..., Records]) -> Callable[..., Any]:
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Records:
        call = signature.bind(*args, **kwargs)  # a wrong call stays the caller's TypeError
        try:
            return fn(*args, **kwargs)
        except ParseError:
            raise
        except _LEAKS as exc:
            call.apply_defaults()  # the source: `source`, else a directory kind's path
            source = call.arguments.get("source", next(iter(call.arguments.values()), kind))
            what = " ".join(str(exc).split())[:100]
            raise ParseError(
                str(source),
                None,
                f"not {kind} output as NØMADE reads it ({type(exc).__name__}: {what})",
            ) from exc

    return guarded
