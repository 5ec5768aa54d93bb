"""Per-process I/O counters from /proc/<pid>/io, and process identity from /proc/<pid>/stat.

``read`` only does I/O; ``parse``, ``parse_stat`` and ``parse_starttime`` are pure.  The sampler
keys a process by ``(pid, starttime)`` so that a reused pid is seen as a new process.
"""

from __future__ import annotations

import os

from nomade_common.errors import ParseError

# The counters we report, in this order, as the kernel names them in /proc/<pid>/io.
IO_FIELDS: tuple[str, ...] = ("read_bytes", "write_bytes", "rchar", "wchar", "syscr", "syscw")
_IO_KEYS = tuple(name + ":" for name in IO_FIELDS)

# The order in which every kernel since 2.6.20 prints them (proc_pid_io_accounting).
_KERNEL_ORDER = ("rchar:", "wchar:", "syscr:", "syscw:", "read_bytes:", "write_bytes:")

# A seq_file read returns less than asked only when its buffer (one page or more) is full.
_SHORT_READ = 3840


def read_text(path: str) -> str | None:
    """The whole text of a small kernel file, or None when it does not exist.

    Other OSErrors (permission, a process that exited mid-read) propagate to the caller.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        data = os.read(fd, 65536)
        if len(data) >= _SHORT_READ:
            chunks = [data]
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            data = b"".join(chunks)
    finally:
        os.close(fd)
    return data.decode("utf-8", "replace")


def read(proc_root: str, pid: int) -> str | None:
    """Text of ``<proc_root>/<pid>/io``; None when the process is gone."""
    try:
        return read_text(f"{proc_root}/{pid}/io")
    except ProcessLookupError:  # ESRCH: the process exited while we read
        return None


def read_stat(proc_root: str, pid: int) -> str | None:
    """Text of ``<proc_root>/<pid>/stat``; None when the process is gone."""
    try:
        return read_text(f"{proc_root}/{pid}/stat")
    except ProcessLookupError:
        return None


def parse(text: str, source: str = "io") -> dict[str, int]:
    """``{"read_bytes", "write_bytes", "rchar", "wchar", "syscr", "syscw"}`` from /proc/<pid>/io.

    Unknown keys (``cancelled_write_bytes``, newer ones) are skipped; a missing one is an error
    because the kernel always prints all of them together.
    """
    return dict(zip(IO_FIELDS, parse_counters(text, source), strict=True))


def parse_counters(text: str, source: str = "io") -> tuple[int, ...]:
    """parse()'s values as a tuple in IO_FIELDS order (the sampler's form: no dict per process)."""
    parts = text.split()
    if tuple(parts[0:12:2]) == _KERNEL_ORDER:  # the kernel's own order: no dict to build
        try:
            r, w, sr, sw, rb, wb = map(int, parts[1:12:2])
            return rb, wb, r, w, sr, sw
        except ValueError:
            pass  # the general path below names the bad line
    values = dict(zip(parts[::2], parts[1::2], strict=False))
    out = []
    for key in _IO_KEYS:
        raw = values.get(key)
        if raw is None:
            raise ParseError(source, None, f"no {key} line")
        try:
            out.append(int(raw))
        except ValueError:
            raise ParseError(
                source, _line_of(text, key), f"{key} {raw!r} is not an integer"
            ) from None
    return tuple(out)


def parse_stat(text: str, source: str = "stat") -> tuple[int, int]:
    """``(ppid, starttime)`` from /proc/<pid>/stat; starttime is in clock ticks since boot.

    The comm field (2) may hold spaces, parentheses and newlines, so split at the last ')'.
    """
    head, paren, rest = text.rpartition(")")
    fields = rest.split(None, 20)  # state ... starttime, then the rest unsplit
    if not paren or len(fields) < 20:
        raise ParseError(source, None, "expected 'pid (comm) state ppid ...' with 22+ fields")
    try:
        return int(fields[1]), int(fields[19])  # fields 4 and 22 of proc(5)
    except ValueError:
        raise ParseError(source, None, "ppid or starttime is not an integer") from None


def parse_starttime(text: str, source: str = "stat") -> int:
    """Field 22 of /proc/<pid>/stat: when the process started, in clock ticks since boot."""
    return parse_stat(text, source)[1]


def _line_of(text: str, key: str) -> int | None:
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith(key):
            return number
    return None


def records(text: str, source: str = "io") -> list[dict[str, int]]:
    """``parse`` as a one-record list, for ``nomadectl parse proc-io FILE``."""
    return [parse(text, source)]
