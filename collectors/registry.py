"""The registry behind `nomadectl parse KIND FILE`: every parser NØMADE has, by kind.

Each kind maps to "module:function" of a pure parser `parse(text: str, source: str) -> list[dict]`
that raises nomade_common.errors.ParseError (the `cgroup` kind reads a directory instead and its
function takes the directory's path).  Records follow one documented schema per kind
(docs/parsers.md): units in the field names, None for absent values.  Modules are imported only
when their kind is asked for, so a kind whose parser is not installed reports that cleanly.

`parser(kind)` is the one door to them, and it is guarded: an exception a parser lets out on input
it did not foresee (a bug: TypeError, OverflowError, ...) comes out as a ParseError naming the
source, so `nomadectl parse` and the importers answer with one line, never a traceback.
"""

from __future__ import annotations

import csv
import functools
import importlib
import inspect
from collections.abc import Callable
from typing import Any
from xml.parsers import expat

from nomade_common.errors import ParseError

KINDS: dict[str, str] = {
    # Slurm, read on the head node
    "sacct": "aggregator.parsers.sacct:records",
    "sacct-json": "aggregator.parsers.sacct:records_json",
    "squeue": "aggregator.parsers.squeue:records",
    "squeue-json": "aggregator.parsers.squeue:records_json",
    "sinfo": "aggregator.parsers.sinfo:records",
    "sinfo-json": "aggregator.parsers.sinfo:records_json",
    "scontrol-node": "aggregator.parsers.scontrol:node_records",
    "scontrol-job": "aggregator.parsers.scontrol:job_records",
    "sstat": "aggregator.parsers.sstat:records",
    "sshare": "aggregator.parsers.sshare:records",
    "sdiag": "aggregator.parsers.sdiag:records",
    # node collectors
    "nvidia-smi-xml": "nodeagent.collectors.gpu:parse_xml",
    "nvidia-smi-csv": "nodeagent.collectors.gpu:parse_csv",
    "nvidia-smi-text": "nodeagent.collectors.gpu:parse_text",
    "iostat": "nodeagent.collectors.sysstat:parse_iostat",
    "iostat-json": "nodeagent.collectors.sysstat:parse_iostat_json",
    "mpstat": "nodeagent.collectors.sysstat:parse_mpstat",
    "mpstat-json": "nodeagent.collectors.sysstat:parse_mpstat_json",
    "vmstat": "nodeagent.collectors.sysstat:parse_vmstat",
    "pressure": "nodeagent.collectors.pressure:parse",
    "mountstats": "nodeagent.collectors.nfs:parse_mountstats",
    "nfsiostat": "nodeagent.collectors.nfs:parse_nfsiostat",
    "proc-io": "nodeagent.collectors.procio:records",
    "cgroup": "nodeagent.collectors.cgroup:records",
    "lmstat": "nodeagent.collectors.licenses:parse_lmstat",
    "rlmstat": "nodeagent.collectors.licenses:parse_rlmstat",
    # node health and storage (docs/parsers-health-disk.md)
    "repquota": "nodeagent.collectors.disk:parse_repquota",
    "quota": "nodeagent.collectors.disk:parse_quota",
    "lfs-quota": "nodeagent.collectors.disk:parse_lfs_quota",
    "hwmon": "nodeagent.collectors.health:parse_hwmon",
    "edac": "nodeagent.collectors.health:parse_edac",
    "kernel-errors": "nodeagent.collectors.health:parse_kernel_errors",
}

# The kinds whose parser reads a directory (a captured /sys or cgroup tree) and takes its path
# instead of (text, source).
DIRECTORY_KINDS: frozenset[str] = frozenset({"cgroup", "hwmon", "edac"})


# What a parser's bug lets out on input it did not foresee.  Not OSError (a directory kind's tree
# that cannot be read: the caller says so) nor MemoryError or a caller's timeout.
_LEAKS = (ArithmeticError, AttributeError, LookupError, TypeError, ValueError, RecursionError,
          csv.Error, expat.ExpatError)  # fmt: skip


def parser(kind: str) -> Callable[..., list[dict[str, Any]]]:
    """The parser of KIND, guarded (see above); KeyError for a kind NØMADE does not have."""
    if kind not in KINDS:
        raise KeyError(f"unknown kind {kind!r} (known: {', '.join(sorted(KINDS))})")
    module, _, name = KINDS[kind].partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise KeyError(f"kind {kind!r} has no parser in this version of NØMADE yet") from None
    return _guarded(kind, fn)


def _guarded(kind: str, fn: Callable[..., list[dict[str, Any]]]) -> Callable[..., Any]:
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        call = signature.bind(*args, **kwargs)  # a wrong call stays the caller's TypeError
        try:
            return fn(*args, **kwargs)
        except ParseError:
            raise
        except _LEAKS as exc:
            call.apply_defaults()  # the source: `source`, else a directory kind's path
            source = call.arguments.get("source", next(iter(call.arguments.values()), kind))
            what = " ".join(str(exc).split())[:100]
            raise ParseError(str(source), None, f"not {kind} output as NØMADE reads it "
                             f"({type(exc).__name__}: {what})") from exc  # fmt: skip

    return guarded
