"""Storage hygiene on a node's scratch directory: large, stale and orphaned files, per-owner
totals, and job directories left behind after their job ended.

Off by default: the caller decides whether and how often (a walk of a big scratch costs I/O).

* ``scan(root, max_entries, max_seconds)`` (I/O): a bounded walk.  It never follows symbolic
  links, never descends into another filesystem (a directory whose ``st_dev`` differs from the
  root's is counted but not entered), and stops after ``max_entries`` directory entries or
  ``max_seconds``, saying so with ``truncated`` and ``truncated_by``.
* ``report(scanned, now, ...)`` (pure): the records of one scan.
* ``read(root, ...)``: both, for the runner.
* ``leftover_job_dirs(scratch_root, running_job_ids)`` (I/O) with ``job_id_of(name)`` (pure):
  directories directly under the root named like a job (``job_1234``, ``1234``,
  ``slurm-1234``, ``slurm.1234``, ``job.1234``, ``slurm_job_1234``) whose job is not running.

Records (docs/parsers-health-disk.md): ``scratch_file`` (one per flagged file, the largest
first, at most ``max_files``), ``scratch_owner`` (one per uid), ``scratch_summary`` (one per
scan), ``leftover_job_dir``.  Sizes are apparent sizes (``st_size``); "stale" means not modified
(``st_mtime``) for ``stale_days``: access times are unreliable under ``noatime``/``relatime``.
"""

from __future__ import annotations

import heapq
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from collectors.runner import running_jobs
from nomade_common.config import Config

log = logging.getLogger(__name__)

DAY = 86400
GIB = 1 << 30


class Entry(NamedTuple):
    """One regular file seen by the walk."""

    path: str
    uid: int
    size_bytes: int
    mtime_epoch: float


@dataclass
class Scan:
    """What one bounded walk saw."""

    root: str
    files: list[Entry] = field(default_factory=list)
    entries: int = 0  # directory entries looked at (files, directories, links, others)
    dirs: int = 0
    errors: int = 0  # directories or entries that could not be read (permissions, races)
    other_filesystems: int = 0  # directories not entered: another filesystem is mounted there
    truncated_by: str | None = None  # "max_entries" or "max_seconds"
    elapsed_seconds: float = 0.0


def scan(
    root: str,
    max_entries: int = 200_000,
    max_seconds: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
) -> Scan:
    """Walk ``root`` depth-first without following links or crossing filesystems."""
    out = Scan(root)
    start = clock()
    try:
        device = os.stat(root).st_dev  # the configured root itself may be a link
    except OSError as exc:
        log.debug("scratch: %s unreadable: %s", root, exc)
        out.errors += 1
        return out
    stack = [root]
    while stack and out.truncated_by is None:
        out.dirs += 1
        try:
            with os.scandir(stack.pop()) as listing:
                for entry in listing:
                    if out.entries >= max_entries:
                        out.truncated_by = "max_entries"
                        break
                    if clock() - start > max_seconds:
                        out.truncated_by = "max_seconds"
                        break
                    out.entries += 1
                    _visit(entry, device, stack, out)
        except OSError as exc:  # permission denied, or removed while we walked
            log.debug("scratch: cannot list a directory under %s: %s", root, exc)
            out.errors += 1
    out.elapsed_seconds = round(clock() - start, 3)
    return out


def _visit(entry: os.DirEntry[str], device: int, stack: list[str], out: Scan) -> None:
    try:
        st = entry.stat(follow_symlinks=False)
    except OSError:
        out.errors += 1
        return
    if stat.S_ISDIR(st.st_mode):
        if st.st_dev != device:
            out.other_filesystems += 1
        else:
            stack.append(entry.path)
    elif stat.S_ISREG(st.st_mode):
        out.files.append(Entry(entry.path, st.st_uid, st.st_size, st.st_mtime))
    # Symbolic links, sockets, fifos and devices are counted as entries, nothing more.


def report(
    scanned: Scan,
    now: float,
    large_bytes: int = 10 * GIB,
    stale_days: float = 30.0,
    running_uids: Collection[int] | None = None,
    max_files: int = 1000,
) -> list[dict[str, Any]]:
    """The records of one scan (pure).  A file is ``large`` at or above ``large_bytes``,
    ``stale`` when modified more than ``stale_days`` before ``now``, ``orphaned`` when its
    owner is not among ``running_uids`` (the owners of the jobs running on the node; None
    leaves orphan detection off)."""
    stale_before = now - stale_days * DAY
    flagged: list[tuple[int, str, dict[str, Any]]] = []
    owners: dict[int, dict[str, Any]] = {}
    counts = {"large": 0, "stale": 0, "orphaned": 0}
    for entry in scanned.files:
        flags = {
            "large": entry.size_bytes >= large_bytes,
            "stale": entry.mtime_epoch < stale_before,
            "orphaned": running_uids is not None and entry.uid not in running_uids,
        }
        _add_owner(owners, entry, flags, running_uids, scanned.root)
        for name, on in flags.items():
            counts[name] += on
        if any(flags.values()):
            record = {
                "record": "scratch_file",
                "root": scanned.root,
                "path": entry.path,
                "uid": entry.uid,
                "size_bytes": entry.size_bytes,
                "mtime_epoch": int(entry.mtime_epoch),
                **flags,
            }
            _keep(flagged, (entry.size_bytes, entry.path, record), max_files)
    files = [item[2] for item in sorted(flagged, key=lambda t: (-t[0], t[1]))]
    summary = _summary(scanned, counts, len(files))
    return [summary, *(owners[uid] for uid in sorted(owners)), *files]


def _keep(heap: list[tuple[int, str, dict[str, Any]]], item: tuple, limit: int) -> None:
    """Keep the ``limit`` largest items in a min-heap."""
    if len(heap) < limit:
        heapq.heappush(heap, item)
    elif limit > 0 and item[:2] > heap[0][:2]:
        heapq.heapreplace(heap, item)


def _add_owner(
    owners: dict[int, dict[str, Any]],
    entry: Entry,
    flags: dict[str, bool],
    running_uids: Collection[int] | None,
    root: str,
) -> None:
    owner = owners.get(entry.uid)
    if owner is None:
        owner = owners[entry.uid] = {
            "record": "scratch_owner",
            "root": root,
            "uid": entry.uid,
            "files": 0,
            "bytes": 0,
            "large_files": 0,
            "stale_files": 0,
            "stale_bytes": 0,
            "orphaned": None if running_uids is None else entry.uid not in running_uids,
        }
    owner["files"] += 1
    owner["bytes"] += entry.size_bytes
    owner["large_files"] += flags["large"]
    owner["stale_files"] += flags["stale"]
    owner["stale_bytes"] += entry.size_bytes if flags["stale"] else 0


def _summary(scanned: Scan, counts: dict[str, int], listed: int) -> dict[str, Any]:
    return {
        "record": "scratch_summary",
        "root": scanned.root,
        "entries": scanned.entries,
        "files": len(scanned.files),
        "dirs": scanned.dirs,
        "bytes": sum(entry.size_bytes for entry in scanned.files),
        "large_files": counts["large"],
        "stale_files": counts["stale"],
        "orphaned_files": counts["orphaned"],
        "files_listed": listed,
        "errors": scanned.errors,
        "other_filesystems": scanned.other_filesystems,
        "truncated": scanned.truncated_by is not None,
        "truncated_by": scanned.truncated_by,
        "elapsed_seconds": scanned.elapsed_seconds,
    }


def read(
    root: str,
    large_bytes: int = 10 * GIB,
    stale_days: float = 30.0,
    running_uids: Collection[int] | None = None,
    max_entries: int = 200_000,
    max_seconds: float = 30.0,
    max_files: int = 1000,
) -> list[dict[str, Any]]:
    """Scan ``root`` within the bounds and report; [] where the root does not exist."""
    if not os.path.isdir(root):
        log.debug("scratch: %s is not a directory", root)
        return []
    scanned = scan(root, max_entries, max_seconds)
    return report(scanned, time.time(), large_bytes, stale_days, running_uids, max_files)


# ---------------------------------------------------------------------------------------------
# Job directories left behind

_JOB_DIR = re.compile(r"(?:(?:slurm[-_.]?job|slurm|job)[-_.]?)?(\d+)", re.IGNORECASE)


def job_id_of(name: str) -> str | None:
    """The job id a directory name stands for (``job_1234``, ``1234``, ``slurm-1234``,
    ``slurm.1234``, ``slurm_job_1234``), or None (pure)."""
    found = _JOB_DIR.fullmatch(name)
    return found.group(1) if found else None


def leftover_job_dirs(
    scratch_root: str, running_job_ids: Iterable[int | str]
) -> list[dict[str, Any]]:
    """One ``leftover_job_dir`` record per directory directly under ``scratch_root`` that is
    named like a job not among ``running_job_ids``.  Links are not followed; [] where the root
    does not exist.  Sizes are not computed (that would be a walk: see ``scan``)."""
    running = {str(job) for job in running_job_ids}
    out: list[dict[str, Any]] = []
    try:
        listing = sorted(os.scandir(scratch_root), key=lambda e: e.name)
    except OSError as exc:
        log.debug("scratch: %s unreadable: %s", scratch_root, exc)
        return []
    for entry in listing:
        job_id = job_id_of(entry.name)
        if job_id is None or job_id in running:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue
        out.append(
            {
                "record": "leftover_job_dir",
                "root": scratch_root,
                "path": entry.path,
                "job_id": job_id,
                "uid": st.st_uid,
                "mtime_epoch": int(st.st_mtime),
            }
        )
    return out


# -- the collector (collectors/registry.py) -----------------------------------------------------
def collect(cfg: Config, state: dict[str, Any]) -> list[dict[str, Any]]:
    """Large, stale and orphaned files under each scratch path (bounded walks), and job
    directories left there by jobs no longer running on this node."""
    sc, running = cfg.collectors.scratch, running_jobs(state)
    uids = {uid for uid in running.values() if uid is not None}
    records: list[dict[str, Any]] = []
    for path in sc.paths:
        records += read(path, sc.large_bytes, sc.stale_days, uids, sc.max_entries, sc.max_seconds)
        records += leftover_job_dirs(path, running)
    return records


def absent(cfg: Config) -> str | None:
    return None if cfg.collectors.scratch.paths else "no scratch path configured"
