"""Slurm job cgroups, v1 and v2: find them, read their files, parse the raw values.

Layouts (``<root>`` is the cgroup mount, usually /sys/fs/cgroup):

* v1: ``<root>/<controller>/slurm[_<node>]/uid_<U>/job_<J>/step_<S>/task_<T>``, with
  ``slurm_<node>`` where several slurmd share a host and ``slurm`` otherwise.  cpuacct may be
  mounted alone or combined as ``cpu,cpuacct``.
* v2: ``<root>[/unified]/system.slice/[<node>_]slurmstepd.scope/job_<J>/step_<S>/...``.

The ``read_*`` functions and ``discover``/``list_jobs``/``procs_files`` do only I/O; every
``parse_*`` function is pure and raises ParseError on text it cannot read.  A missing file gives
None for its fields (absent is None, never 0); unknown keys are skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple

from collectors.procio import read_text
from nomade_common.errors import ParseError

# memory.limit_in_bytes (v1) at or above this is "no limit": PAGE_COUNTER_MAX * PAGE_SIZE is
# 0x7FFFFFFFFFFFF000 with 4 KiB pages, a little less with 64 KiB pages.
UNLIMITED = 1 << 62

# The fields of nomade_common.wire.SAMPLE_FIELDS that come from the job's cgroup.
CGROUP_FIELDS: tuple[str, ...] = (
    "cpu_usage_seconds",
    "cpu_user_seconds",
    "cpu_system_seconds",
    "mem_current_bytes",
    "mem_peak_bytes",
    "mem_rss_bytes",
    "mem_cache_bytes",
    "mem_swap_bytes",
    "mem_limit_bytes",
    "cgroup_read_bytes",
    "cgroup_write_bytes",
)

# (controller, file) read per job; v2 has the single controller name "unified".
V1_FILES: tuple[tuple[str, str], ...] = (
    ("cpuacct", "cpuacct.usage"),
    ("cpuacct", "cpuacct.stat"),
    ("memory", "memory.usage_in_bytes"),
    ("memory", "memory.max_usage_in_bytes"),
    ("memory", "memory.limit_in_bytes"),
    ("memory", "memory.stat"),
    ("blkio", "blkio.throttle.io_service_bytes"),
)
V2_FILES: tuple[tuple[str, str], ...] = tuple(
    ("unified", name)
    for name in (
        "cpu.stat",
        "memory.current",
        "memory.peak",
        "memory.max",
        "memory.stat",
        "memory.swap.current",
        "io.stat",
    )
)

# A job's directories: controller name -> path of job_<J> in that controller's hierarchy.
JobDirs = dict[str, str]
# Raw text per file name: the text, None when the file does not exist, the OSError when it
# exists but could not be read.
RawJob = dict[str, "str | OSError | None"]


@dataclass(frozen=True, slots=True)
class Layout:
    """Where one Slurm node's job cgroups live.

    ``dirs`` maps each controller found to the directory that holds the ``uid_*`` (v1) or
    ``job_*`` (v2) entries; ``primary`` is the one whose tree is listed for jobs and pids.
    """

    version: int
    primary: str
    dirs: tuple[tuple[str, str], ...]

    @property
    def files(self) -> tuple[tuple[str, str], ...]:
        return V1_FILES if self.version == 1 else V2_FILES


class ParsedJob(NamedTuple):
    fields: dict[str, int | float | None]
    problems: list[tuple[str, str]]  # (file name, "unreadable: ..." or "malformed: ...")


# ---------------------------------------------------------------------------------------------
# Discovery and listing (I/O)


def discover(cgroup_root: str, node: str) -> Layout | None:
    """The layout of ``node``'s Slurm cgroups under ``cgroup_root``, or None if there is none yet.

    v1 is tried first: on a hybrid host the v1 hierarchies are what Slurm's cgroup/v1 uses.
    """
    for name in (f"slurm_{node}", "slurm"):
        found = []
        for controller, mounts in (
            ("memory", ("memory",)),
            ("cpuacct", ("cpuacct", "cpu,cpuacct", "cpuacct,cpu")),
            ("blkio", ("blkio",)),
        ):
            for mount in mounts:
                path = f"{cgroup_root}/{mount}/{name}"
                if os.path.isdir(path):
                    found.append((controller, path))
                    break
        if found:
            return Layout(1, found[0][0], tuple(found))
    for base in (cgroup_root, f"{cgroup_root}/unified"):
        for scope in (f"{node}_slurmstepd.scope", "slurmstepd.scope"):
            path = f"{base}/system.slice/{scope}"
            if os.path.isdir(path):
                return Layout(2, "unified", (("unified", path),))
    return None


def _job_id(name: str) -> int | None:
    digits = name[4:]
    if name.startswith("job_") and digits.isascii() and digits.isdigit():  # not "job_²"
        return int(name[4:])
    return None


def list_jobs(layout: Layout) -> dict[int, JobDirs]:
    """Job id -> the job's directory in each controller, for the jobs of every ``uid_*``."""
    base = dict(layout.dirs)[layout.primary]
    relative: dict[int, str] = {}
    for parent in job_parents(layout):
        rel = parent[len(base) + 1 :]
        with os.scandir(parent) as entries:
            for entry in entries:
                job = _job_id(entry.name)
                if job is not None and entry.is_dir(follow_symlinks=False):
                    relative[job] = f"{rel}/{entry.name}" if rel else entry.name
    return {
        job: {controller: f"{path}/{rel}" for controller, path in layout.dirs}
        for job, rel in relative.items()
    }


def job_parents(layout: Layout) -> list[str]:
    """The directories that hold ``job_*`` entries: the ``uid_*`` dirs (v1) or the scope (v2)."""
    base = dict(layout.dirs)[layout.primary]
    if layout.version == 2:
        return [base]
    with os.scandir(base) as entries:
        return [
            entry.path
            for entry in entries
            if entry.name.startswith("uid_") and entry.is_dir(follow_symlinks=False)
        ]


def procs_files(job_dir: str) -> list[str]:
    """The ``cgroup.procs`` file of the job directory and of every directory below it."""
    found = [f"{job_dir}/cgroup.procs"]
    stack = [job_dir]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    found.append(f"{entry.path}/cgroup.procs")
                    stack.append(entry.path)
    return found


def job_pids(layout: Layout, job: JobDirs) -> list[int]:
    """The processes in the job's cgroup tree (``cgroup.procs``, else ``tasks``), each once."""
    pids: set[int] = set()
    for path in procs_files(job[layout.primary]):
        text = read_text(path)
        if text is None:
            text = read_text(path[: -len("cgroup.procs")] + "tasks")
        if text:
            pids.update(parse_pids(text, path))
    return sorted(pids)


def read_job(layout: Layout, job: JobDirs) -> RawJob:
    """The raw text of each of the job's files, by file name (see RawJob); never raises."""
    raw: RawJob = {}
    for controller, name in layout.files:
        directory = job.get(controller)
        if directory is None:
            raw[name] = None
            continue
        try:
            raw[name] = read_text(f"{directory}/{name}")
        except OSError as exc:
            raw[name] = exc
    return raw


# ---------------------------------------------------------------------------------------------
# Pure parsers


# The kernel prints cgroup counters as u64 or s64: 20 characters at most.  A longer number is
# none of its values (and one past float range, 309 digits, would overflow the conversion to
# seconds).
_INT_CHARS = 20


def _int(raw: str) -> int:
    """RAW as an int; ValueError unless it is an integer of at most _INT_CHARS characters."""
    if len(raw) > _INT_CHARS:
        raise ValueError(f"more than {_INT_CHARS} characters")
    return int(raw)


def parse_int(text: str, source: str) -> int:
    """A file holding one integer."""
    value = text.strip()
    try:
        return _int(value)
    except ValueError:
        raise ParseError(source, 1, f"expected one integer, got {value[:40]!r}") from None


def parse_limit_v1(text: str, source: str = "memory.limit_in_bytes") -> int | None:
    """memory.limit_in_bytes; None when unlimited (a value near 2**63)."""
    value = parse_int(text, source)
    return None if value >= UNLIMITED else value


def parse_max_v2(text: str, source: str = "memory.max") -> int | None:
    """memory.max; None for ``max``."""
    return None if text.strip() == "max" else parse_int(text, source)


def parse_keyed(text: str, source: str) -> dict[str, str]:
    """Flat ``key value`` lines (memory.stat, cpu.stat, cpuacct.stat) as strings, unconverted."""
    parts = text.split()
    lines = text.count("\n") + (not text.endswith("\n"))
    if len(parts) != 2 * lines:
        _check_keyed_lines(text, source)
    return dict(zip(parts[::2], parts[1::2], strict=False))


def _check_keyed_lines(text: str, source: str) -> None:
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip() and len(line.split()) != 2:
            raise ParseError(source, number, f"expected 'key value', got {line[:60]!r}")


def _pick(values: dict[str, str], keys: tuple[str, ...], text: str, source: str) -> int | None:
    """The first of ``keys`` present in ``values``, as an int; None if none is present."""
    for key in keys:
        raw = values.get(key)
        if raw is not None:
            try:
                return _int(raw)
            except ValueError:
                line = next(
                    (n for n, ln in enumerate(text.splitlines(), 1) if ln.startswith(key + " ")),
                    None,
                )
                raise ParseError(source, line, f"{key} {raw[:40]!r} is not an integer") from None
    return None


def parse_cpuacct_stat(text: str, user_hz: int = 100, source: str = "cpuacct.stat") -> dict:
    """cpuacct.stat (v1): user and system time, given in USER_HZ ticks, as seconds."""
    values = parse_keyed(text, source)
    user = _pick(values, ("user",), text, source)
    system = _pick(values, ("system",), text, source)
    return {
        "cpu_user_seconds": None if user is None else user / user_hz,
        "cpu_system_seconds": None if system is None else system / user_hz,
    }


def parse_memory_stat_v1(text: str, source: str = "memory.stat") -> dict:
    """memory.stat (v1): hierarchical totals, or the cgroup's own values on old kernels."""
    values = parse_keyed(text, source)
    return {
        "mem_rss_bytes": _pick(values, ("total_rss", "rss"), text, source),
        "mem_cache_bytes": _pick(values, ("total_cache", "cache"), text, source),
        "mem_swap_bytes": _pick(values, ("total_swap", "swap"), text, source),
    }


def parse_blkio_v1(text: str, source: str = "blkio.throttle.io_service_bytes") -> dict:
    """blkio.throttle.io_service_bytes (v1): Read and Write bytes summed over devices."""
    read = write = 0
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if len(parts) != 3:
            if len(parts) == 2 and parts[0] == "Total" or not parts:
                continue
            raise ParseError(source, number, f"expected 'MAJ:MIN Op bytes', got {line[:60]!r}")
        if parts[1] in ("Read", "Write"):
            try:
                value = _int(parts[2])
            except ValueError:
                raise ParseError(source, number, f"{parts[2][:40]!r} is not an integer") from None
            if parts[1] == "Read":
                read += value
            else:
                write += value
    return {"cgroup_read_bytes": read, "cgroup_write_bytes": write}


def parse_cpu_stat_v2(text: str, source: str = "cpu.stat") -> dict:
    """cpu.stat (v2): usage, user and system time in microseconds, as seconds."""
    values = parse_keyed(text, source)
    out = {}
    for field, key in (
        ("cpu_usage_seconds", "usage_usec"),
        ("cpu_user_seconds", "user_usec"),
        ("cpu_system_seconds", "system_usec"),
    ):
        usec = _pick(values, (key,), text, source)
        out[field] = None if usec is None else usec / 1e6
    return out


def parse_memory_stat_v2(text: str, source: str = "memory.stat") -> dict:
    """memory.stat (v2): anon and file bytes."""
    values = parse_keyed(text, source)
    return {
        "mem_rss_bytes": _pick(values, ("anon",), text, source),
        "mem_cache_bytes": _pick(values, ("file",), text, source),
    }


def parse_io_stat_v2(text: str, source: str = "io.stat") -> dict:
    """io.stat (v2): rbytes and wbytes summed over devices; keys not asked for are skipped."""
    read = write = 0
    for number, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if tokens and ":" not in tokens[0]:
            raise ParseError(source, number, f"expected 'MAJ:MIN key=value...', got {line[:60]!r}")
        for token in tokens[1:]:
            key, eq, value = token.partition("=")
            if key in ("rbytes", "wbytes"):
                try:
                    amount = _int(value)
                except ValueError:
                    raise ParseError(source, number, f"{token[:40]!r} is not key=integer") from None
                if key == "rbytes":
                    read += amount
                else:
                    write += amount
            elif not eq:
                raise ParseError(source, number, f"expected key=value, got {token[:40]!r}")
    return {"cgroup_read_bytes": read, "cgroup_write_bytes": write}


def parse_pids(text: str, source: str = "cgroup.procs") -> list[int]:
    """cgroup.procs or tasks: one pid per line."""
    try:
        return [int(pid) for pid in text.split()]
    except ValueError:
        raise ParseError(source, None, "expected one pid per line") from None


def _seconds_from_ns(text: str, source: str) -> dict:
    return {"cpu_usage_seconds": parse_int(text, source) / 1e9}


def _v1_parsers(user_hz: int) -> dict:
    return {
        "cpuacct.usage": _seconds_from_ns,
        "cpuacct.stat": lambda t, s: parse_cpuacct_stat(t, user_hz, s),
        "memory.usage_in_bytes": lambda t, s: {"mem_current_bytes": parse_int(t, s)},
        "memory.max_usage_in_bytes": lambda t, s: {"mem_peak_bytes": parse_int(t, s)},
        "memory.limit_in_bytes": lambda t, s: {"mem_limit_bytes": parse_limit_v1(t, s)},
        "memory.stat": parse_memory_stat_v1,
        "blkio.throttle.io_service_bytes": parse_blkio_v1,
    }


_V2_PARSERS = {
    "cpu.stat": parse_cpu_stat_v2,
    "memory.current": lambda t, s: {"mem_current_bytes": parse_int(t, s)},
    "memory.peak": lambda t, s: {"mem_peak_bytes": parse_int(t, s)},
    "memory.max": lambda t, s: {"mem_limit_bytes": parse_max_v2(t, s)},
    "memory.stat": parse_memory_stat_v2,
    "memory.swap.current": lambda t, s: {"mem_swap_bytes": parse_int(t, s)},
    "io.stat": parse_io_stat_v2,
}
_V1_PARSERS_100 = _v1_parsers(100)


def parse_job(raw: RawJob, version: int, user_hz: int = 100) -> ParsedJob:
    """The cgroup fields of SAMPLE_FIELDS from read_job's output, and the problems met.

    Every field starts as None; a file that is missing leaves its fields None, one that was
    unreadable or malformed does too and adds a (file name, reason) problem.
    """
    if version == 1:
        parsers = _V1_PARSERS_100 if user_hz == 100 else _v1_parsers(user_hz)
    else:
        parsers = _V2_PARSERS
    fields: dict[str, int | float | None] = dict.fromkeys(CGROUP_FIELDS)
    problems: list[tuple[str, str]] = []
    for name, text in raw.items():
        if text is None:
            continue
        if isinstance(text, OSError):
            problems.append((name, f"unreadable: {type(text).__name__}"))
            continue
        parser = parsers.get(name)
        if parser is None:
            continue
        try:
            fields.update(parser(text, name))
        except ParseError as exc:
            where = f"line {exc.line}: " if exc.line is not None else ""
            problems.append((name, f"malformed: {where}{exc.reason}"))
    return ParsedJob(fields, problems)


# ---------------------------------------------------------------------------------------------
# A captured tree, for `nomadectl parse cgroup DIR`


def layouts_in(cgroup_root: str) -> list[tuple[str | None, Layout]]:
    """Every Slurm layout under ``cgroup_root``, with its node name (None for plain ``slurm``):
    v1 ``<controller>/slurm[_<node>]`` and v2 ``[unified/]system.slice/[<node>_]slurmstepd.scope``.
    """
    v1_nodes: set[str | None] = set()
    v2: list[tuple[str | None, Layout]] = []
    for entry in _subdirs(cgroup_root):
        for name in _subdirs(entry):
            base = os.path.basename(name)
            if base == "slurm" or base.startswith("slurm_"):
                v1_nodes.add(base[len("slurm_") :] if base != "slurm" else None)
    for base in (cgroup_root, f"{cgroup_root}/unified"):
        for scope in _subdirs(f"{base}/system.slice"):
            name = os.path.basename(scope)
            if name == "slurmstepd.scope":
                v2.append((None, Layout(2, "unified", (("unified", scope),))))
            elif name.endswith("_slurmstepd.scope"):
                v2_node = name[: -len("_slurmstepd.scope")]
                v2.append((v2_node, Layout(2, "unified", (("unified", scope),))))
    found: list[tuple[str | None, Layout]] = []
    for v1_node in sorted(v1_nodes, key=lambda n: n or ""):
        layout = discover(cgroup_root, v1_node or "")
        if layout is not None and layout.version == 1:
            found.append((v1_node, layout))
    return found + v2


def _subdirs(path: str) -> list[str]:
    try:
        with os.scandir(path) as entries:
            return sorted(e.path for e in entries if e.is_dir(follow_symlinks=False))
    except (FileNotFoundError, NotADirectoryError):
        return []


def records(path: str) -> list[dict]:
    """One record per Slurm job found in the cgroup tree at ``path``: ``job_id``, ``node``,
    ``cgroup_version``, the CGROUP_FIELDS and ``problems`` (["file: reason", ...])."""
    out: list[dict] = []
    for node, layout in layouts_in(path):
        for job_id, dirs in sorted(list_jobs(layout).items()):
            parsed = parse_job(read_job(layout, dirs), layout.version)
            record: dict = {"job_id": job_id, "node": node, "cgroup_version": layout.version}
            record.update(parsed.fields)
            record["problems"] = [f"{name}: {reason}" for name, reason in parsed.problems]
            out.append(record)
    return out
