"""One sample per running Slurm job on this node: raw cgroup values plus summed /proc/<pid>/io.

The sampler runs every few seconds on every compute node, so it keeps what it can between
cycles: the list of jobs is re-listed only when a directory that holds jobs changes (its link
count or mtime), and a job's tree of ``cgroup.procs`` files only when the job directory changes,
a listed file vanishes, or the last walk found a different tree than the one before (a step
being created).  Everything is re-listed every ``RELIST_EVERY`` cycles regardless.

Per-process I/O: a job's counters are the sum over every process seen in it, keyed by
``(pid, starttime)`` so a reused pid counts as a new process.  A process that is gone keeps
contributing its last values, except when its parent is still in the job: the kernel adds a
reaped child's counters to its parent's, so counting it again would count it twice.  Reported
totals never decrease (a child that left the job's list before its parent reaped it would
otherwise dip them for a cycle).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable

from collectors import cgroup, procio
from nomade_common.errors import ParseError
from nomade_common.wire import SAMPLE_FIELDS

RELIST_EVERY = 30
_PROC_FIELDS = tuple("proc_" + name for name in procio.IO_FIELDS)
_ZERO = (0, 0, 0, 0, 0, 0)


def _stamp(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_nlink, st.st_mtime_ns


_UID = re.compile(r"/uid_(\d+)(?:/|$)")


class _Job:
    """What the sampler remembers about one running job."""

    __slots__ = ("dirs", "uid", "files", "stamp", "settled", "procs", "gone", "last", "reported")

    def __init__(self, dirs: cgroup.JobDirs) -> None:
        self.dirs = dirs
        # The owner, where the layout names it (v1 ``uid_<U>``): read once, at discovery.
        found = next(filter(None, map(_UID.search, dirs.values())), None)
        self.uid: int | None = int(found.group(1)) if found else None
        self.files: list[str] = []  # cgroup.procs files of the job's tree
        self.stamp: tuple[int, int] | None = None  # of the job dir when files was walked
        self.settled = False  # two walks in a row found the same tree
        self.procs: dict[tuple[int, int], tuple[int, tuple[int, ...]]] = {}  # key -> ppid, io
        self.gone: tuple[int, ...] | None = None  # summed io of processes that left
        self.last: tuple[int, ...] | None = None  # last reported totals
        self.reported: set[str] = set()  # problem keys already reported


class JobSampler:
    """Samples the Slurm jobs of one node; see the module docstring."""

    def __init__(
        self,
        node: str,
        cgroup_root: str = "/sys/fs/cgroup",
        proc_root: str = "/proc",
        clock: Callable[[], float] = time.time,
        user_hz: int | None = None,
    ) -> None:
        self.node, self.cgroup_root, self.proc_root, self.clock = (
            node,
            cgroup_root,
            proc_root,
            clock,
        )
        self.user_hz = user_hz or os.sysconf("SC_CLK_TCK")
        self._layout: cgroup.Layout | None = None
        self._parents: dict[str, tuple[int, int]] = {}  # dirs holding job_*, with their stamps
        self._base_stamp: tuple[int, int] | None = None
        self._jobs: dict[int, _Job] = {}
        self._cycles = 0
        self._problems: list[str] = []
        self._reported: set[str] = set()  # problem keys not tied to one job

    # -- public ---------------------------------------------------------------------------------

    def running_jobs(self) -> set[int]:
        """Ids of the jobs with a cgroup on this node now."""
        self._refresh_jobs(force=False)
        return set(self._jobs)

    def job_owners(self) -> dict[int, int | None]:
        """Job id -> the uid in its cgroup path (v1 ``uid_<U>``), None where the path has none."""
        return {job_id: job.uid for job_id, job in self._jobs.items()}

    def sample(self, only_jobs: Iterable[int] | None = None) -> list[dict]:
        """One dict per running job (restricted to ``only_jobs`` if given), keyed by
        SAMPLE_FIELDS."""
        self._cycles += 1
        self._refresh_jobs(force=self._cycles % RELIST_EVERY == 0)
        wanted = None if only_jobs is None else set(only_jobs)
        rows, vanished = [], False
        for job_id, job in list(self._jobs.items()):
            if wanted is None or job_id in wanted:
                row = self._sample_job(job_id, job)
                if row is None:
                    vanished = True
                else:
                    rows.append(row)
        if vanished:  # a job ended: the listing may also be missing one that started
            done = {row["job_id"] for row in rows}
            self._refresh_jobs(force=True)
            for job_id, job in list(self._jobs.items()):
                if job_id not in done and (wanted is None or job_id in wanted):
                    row = self._sample_job(job_id, job)
                    if row is not None:
                        rows.append(row)
        return rows

    def problems(self) -> list[str]:
        """One-line messages about files that could not be read, since the last call."""
        out, self._problems = self._problems, []
        return out

    # -- jobs -------------------------------------------------------------------------------------

    def _refresh_jobs(self, force: bool) -> None:
        if self._layout is None:
            self._layout = cgroup.discover(self.cgroup_root, self.node)
            if self._layout is None:
                return
            force = True
        layout = self._layout
        base = dict(layout.dirs)[layout.primary]
        try:
            if not force:
                force = _stamp(base) != self._base_stamp or any(
                    _stamp(path) != stamp for path, stamp in self._parents.items()
                )
            if force:
                self._relist(layout, base)
        except FileNotFoundError:  # slurmd gone and its cgroup root with it
            self._layout, self._parents, self._base_stamp = None, {}, None
            self._jobs.clear()

    def _relist(self, layout: cgroup.Layout, base: str) -> None:
        self._base_stamp = _stamp(base)
        self._parents = {path: _stamp(path) for path in cgroup.job_parents(layout)}
        listed = cgroup.list_jobs(layout)
        for job_id in list(self._jobs):
            if job_id not in listed:
                del self._jobs[job_id]
        for job_id, dirs in listed.items():
            if job_id not in self._jobs:
                self._jobs[job_id] = _Job(dirs)

    # -- one job ----------------------------------------------------------------------------------

    def _sample_job(self, job_id: int, job: _Job) -> dict | None:
        """The job's row, or None when its cgroup is gone."""
        layout = self._layout
        assert layout is not None
        t = self.clock()
        pids = self._pids(job, layout)
        if pids is None:
            self._jobs.pop(job_id, None)
            return None
        raw = cgroup.read_job(layout, job.dirs)
        fields, problems = cgroup.parse_job(raw, layout.version, self.user_hz)
        for name, reason in problems:
            controller = next(c for c, n in layout.files if n == name)
            path = f"{job.dirs[controller]}/{name}"
            self._problem(job.reported, path, f"cgroup file {path} {reason}")
        row = dict.fromkeys(SAMPLE_FIELDS)
        row.update(fields)
        row["job_id"], row["t"], row["nprocs"] = job_id, t, len(pids)
        totals = self._proc_totals(job, pids)
        if totals is not None:
            row.update(zip(_PROC_FIELDS, totals, strict=True))
        return row

    def _pids(self, job: _Job, layout: cgroup.Layout) -> set[int] | None:
        """The pids in the job's tree; None when the job directory is gone."""
        top = job.dirs[layout.primary]
        for attempt in range(2):
            try:
                stamp = _stamp(top)
                if stamp != job.stamp or not job.settled or attempt:
                    files = cgroup.procs_files(top)
                    job.settled, job.files, job.stamp = files == job.files, files, stamp
                pids = self._read_pids(job)
            except FileNotFoundError:
                if not os.path.isdir(top):
                    return None
                continue  # a step ended while we walked or read: walk again
            if pids is not None:
                return pids
        return set()

    def _read_pids(self, job: _Job) -> set[int] | None:
        """Pids from the job's cached procs files; None if one of them has vanished."""
        pids: set[int] = set()
        for path in job.files:
            try:
                text = procio.read_text(path)
            except OSError as exc:
                message = f"cgroup file {path} unreadable: {type(exc).__name__}"
                self._problem(job.reported, path, message)
                continue
            if text is None:
                return None
            if text:
                try:
                    pids.update(cgroup.parse_pids(text, path))
                except ParseError as exc:
                    message = f"cgroup file {path} malformed: {exc.reason}"
                    self._problem(job.reported, path, message)
        return pids

    def _proc_totals(self, job: _Job, pids: set[int]) -> tuple[int, ...] | None:
        """Summed /proc/<pid>/io counters over every process ever seen in the job."""
        live: dict[tuple[int, int], tuple[int, tuple[int, ...]]] = {}
        root, read = self.proc_root, procio.read_text
        for pid in pids:
            base = f"{root}/{pid}/"
            try:
                io_text = read(base + "io")
                stat_text = read(base + "stat") if io_text is not None else None
            except ProcessLookupError:  # ESRCH: it exited while we read
                continue
            except OSError as exc:
                kind = type(exc).__name__
                message = f"proc file {base}io unreadable: {kind} (reported once)"
                self._problem(self._reported, "proc unreadable " + kind, message)
                continue
            if io_text is None or stat_text is None:
                continue  # exited between the cgroup listing and now
            try:
                ppid, start = procio.parse_stat(stat_text)
                live[(pid, start)] = (ppid, procio.parse_counters(io_text))
            except ParseError as exc:
                message = f"proc file {base}{exc.source} malformed: {exc.reason}"
                self._problem(self._reported, "proc malformed", message + " (reported once)")
        live_pids = {pid for pid, _ in live}
        gone = job.gone
        for key, (ppid, values) in job.procs.items():
            if key not in live and ppid not in live_pids:
                gone = values if gone is None else tuple(map(int.__add__, gone, values))
        job.procs, job.gone = live, gone
        if not live and gone is None:
            return job.last
        totals = tuple(map(sum, zip(gone or _ZERO, *(v for _, v in live.values()), strict=True)))
        if job.last is not None:
            totals = tuple(map(max, totals, job.last))
        job.last = totals
        return totals

    def _problem(self, seen: set[str], key: str, message: str) -> None:
        """Queue ``message`` unless one with the same key was queued before (report once)."""
        if key not in seen:
            seen.add(key)
            self._problems.append(message)
