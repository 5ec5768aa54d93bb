"""Filesystem usage (statvfs, safe against hung mounts) and quotas (quota-tools, Lustre ``lfs``).

Readers (I/O only):

* ``read_usage(paths, timeout)``: ``os.statvfs`` of each configured path, each in a daemon
  thread, all waited for together with one deadline, so a hung NFS or Lustre mount costs the
  caller at most ``timeout`` seconds.  A path whose probe is still hanging from an earlier call
  gets no second probe (hung probes never pile up): its record says ``responsive: False``
  until the kernel returns from the first one.
* ``read_repquota``, ``read_quota``, ``read_lfs_quota``: run the tool with a timeout (a tool
  stuck in uninterruptible sleep on a dead server is abandoned, never waited for) and parse
  its output; ``[]`` where the tool is not installed.

Pure parsers: ``usage_record`` (one statvfs result), ``parse_repquota`` (``repquota -a -p`` and
``-u``/``-g``/``-s``/``-n`` shapes of GNU quota-tools 4.x), ``parse_quota`` (``quota -v -w -p``,
also without ``-p``/``-w``, with ``-s``, ``--show-mntpoint``, ``--hide-device``) and
``parse_lfs_quota`` (``lfs quota [-q] [-h] [-v] -u|-g|-p NAME PATH``).

Quota records (docs/parsers-health-disk.md) are in bytes and file counts; a limit the tool prints
as 0 ("no limit") is None.  quota-tools' space figures are 1 KiB blocks, its ``-s`` suffixes
K/M/G/T powers of 1024 (file counts k/m/g/t powers of 1000); Lustre's are KiB too.  Grace comes
as the tool gives it: ``*_grace_expires_epoch`` from ``-p`` (seconds since the epoch when the
grace runs out), ``*_grace_seconds`` from the human form (time left, 0 once it has run out:
"none").  Neither is computed from a clock here.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from collectors.runner import running_jobs
from nomade_common.config import Config
from nomade_common.errors import ParseError

log = logging.getLogger(__name__)

KIB = 1024

USAGE_FIELDS: tuple[str, ...] = (
    "size_bytes",
    "used_bytes",
    "avail_bytes",
    "used_fraction",
    "inodes_total",
    "inodes_used",
    "read_only",
)

QUOTA_FIELDS: tuple[str, ...] = (
    "kind",
    "name",
    "id",
    "filesystem",
    "mountpoint",
    "used_bytes",
    "soft_limit_bytes",
    "hard_limit_bytes",
    "files_used",
    "files_soft",
    "files_hard",
    "block_grace_seconds",
    "files_grace_seconds",
    "block_grace_expires_epoch",
    "files_grace_expires_epoch",
    "over_soft",
)

# ---------------------------------------------------------------------------------------------
# Filesystem usage: statvfs in a daemon thread, at most one outstanding probe per path


class Probe:
    """One ``os.statvfs(path)`` running in its own daemon thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.done = threading.Event()
        self.result: os.statvfs_result | None = None
        self.error: OSError | None = None
        self.started = time.monotonic()
        self.seconds: float | None = None

    def run(self) -> None:
        try:
            self.result = os.statvfs(self.path)
        except OSError as exc:
            self.error = exc
        finally:
            self.seconds = time.monotonic() - self.started
            with _LOCK:
                if _PROBES.get(self.path) is self:
                    del _PROBES[self.path]
            self.done.set()


_LOCK = threading.Lock()
_PROBES: dict[str, Probe] = {}  # path -> the probe still running for it


def _probe(path: str) -> Probe:
    """The running probe of ``path``, or a new one started now."""
    with _LOCK:
        probe = _PROBES.get(path)
        if probe is not None:
            return probe
        probe = _PROBES[path] = Probe(path)
    thread = threading.Thread(target=probe.run, name=f"nomade-statvfs {path}", daemon=True)
    thread.start()
    return probe


def outstanding() -> list[str]:
    """The paths whose statvfs has not returned yet (hung mounts, seen from this process)."""
    with _LOCK:
        return sorted(_PROBES)


def probe_paths(paths: Sequence[str], timeout: float = 5.0) -> list[Probe]:
    """Start (or join) one probe per path and wait for all of them until one shared deadline."""
    probes = [_probe(path) for path in paths]
    deadline = time.monotonic() + timeout
    for probe in probes:
        probe.done.wait(max(0.0, deadline - time.monotonic()))
    return probes


def usage_record(
    path: str,
    st: Sequence[int] | os.statvfs_result | None,
    responsive: bool = True,
    probe_seconds: float | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """The ``filesystem`` record of one statvfs result (pure).

    ``used`` is what df calls Used (blocks minus free blocks), ``avail`` what an unprivileged
    user can still write (reserved blocks excluded), and ``used_fraction`` df's Use%:
    used / (used + avail).  Inode figures are None where the filesystem does not count inodes
    (f_files 0: btrfs, procfs, some NFS servers)."""
    record: dict[str, Any] = {"record": "filesystem", "path": path}
    record.update(dict.fromkeys(USAGE_FIELDS))
    record.update(responsive=responsive, probe_seconds=probe_seconds, error=error)
    if st is None:
        return record
    st = os.statvfs_result(tuple(st))
    frsize = st.f_frsize or st.f_bsize
    used = (st.f_blocks - st.f_bfree) * frsize
    avail = st.f_bavail * frsize
    record.update(
        size_bytes=st.f_blocks * frsize,
        used_bytes=used,
        avail_bytes=avail,
        used_fraction=round(used / (used + avail), 6) if used + avail > 0 else None,
        read_only=bool(st.f_flag & os.ST_RDONLY),
    )
    if st.f_files > 0:
        record.update(inodes_total=st.f_files, inodes_used=st.f_files - st.f_ffree)
    return record


def read_usage(paths: list[str], timeout: float = 5.0) -> list[dict[str, Any]]:
    """One ``filesystem`` record per path, in at most about ``timeout`` seconds in all.

    A path whose statvfs did not return in time is ``responsive: False`` with
    ``probe_seconds`` the age of its outstanding probe; an error of statvfs itself (a missing
    path, ESTALE) is ``responsive: True`` with ``error`` set."""
    out = []
    for probe in probe_paths(paths, timeout):
        if not probe.done.is_set():
            age = round(time.monotonic() - probe.started, 3)
            log.debug("disk: statvfs(%s) has not returned for %.1f s", probe.path, age)
            out.append(usage_record(probe.path, None, False, age))
        elif probe.error is not None:
            code = errno.errorcode.get(probe.error.errno or 0, "error")
            reason = f"{code}: {probe.error.strerror or probe.error}"
            out.append(usage_record(probe.path, None, True, _round(probe.seconds), reason))
        else:
            out.append(usage_record(probe.path, probe.result, True, _round(probe.seconds)))
    return out


def _round(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 6)


# ---------------------------------------------------------------------------------------------
# Number helpers shared by the quota parsers

_SUFFIX = "KMGTPE"
_VALUE = re.compile(r"\[?([0-9]+(?:\.[0-9]+)?)([KMGTPEkmgtpe]?)\]?(\*?)")
_GRACE_HUMAN = re.compile(r"none|[0-9]+days|[0-9]+:[0-9][0-9]")  # quota-tools without -p
# No id, epoch or grace figure of the tools has more digits (2**64 has 20): a longer run is
# no figure of theirs (and int() refuses runs past 4300 digits).  Bounded, the search for
# Lustre's parts stays linear in a long run of digits.
_MAX_DIGITS = 20
_LUSTRE_GRACE = re.compile(r"([0-9]{1,20})([wdhms])")
_LUSTRE_UNIT = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}


def _integer(text: str) -> int | None:
    """TEXT as an int where it is 1 to _MAX_DIGITS ASCII digits, else None."""
    if 0 < len(text) <= _MAX_DIGITS and text.isascii() and text.isdigit():
        return int(text)
    return None


def _is_value(token: str) -> bool:
    return bool(_VALUE.fullmatch(token)) or token == "-"


def _figure(
    token: str, source: str, line: int, what: str, base: int, unit: int
) -> tuple[int | None, bool]:
    """(value, marked with '*') of a figure: a bare number counts UNITs, a suffixed one (K, M,
    G, ... each a factor of BASE) stands for itself; '-' is None."""
    if token == "-":
        return None, False
    found = _VALUE.fullmatch(token)
    if not found:
        raise ParseError(source, line, f"expected {what}, got {token!r}")
    number, suffix, star = found.groups()
    factor = base ** (_SUFFIX.index(suffix.upper()) + 1) if suffix else unit
    value = float(number) * factor
    if value == math.inf:  # past float range: no figure of a filesystem
        raise ParseError(source, line, f"expected {what}, got {token[:40]!r} (past float range)")
    return round(value), bool(star)


def _space(token: str, source: str, line: int) -> tuple[int | None, bool]:
    """(bytes, marked with '*') of a space figure in KiB, with an optional unit suffix."""
    return _figure(token, source, line, "a space figure in KiB", KIB, KIB)


def _count(token: str, source: str, line: int) -> tuple[int | None, bool]:
    """(count, marked with '*') of a file count; quota-tools' -s suffixes are powers of 1000."""
    return _figure(token, source, line, "a file count", 1000, 1)


def _limit(value: int | None) -> int | None:
    return value or None  # the tools print 0 for "no limit"


def _grace(token: str | None, source: str, line: int) -> tuple[int | None, int | None]:
    """(seconds left, expiry epoch) of a grace column: an epoch from ``-p`` (0: no grace), or
    "7days", "23:59" (quota-tools), "6d23h59m57s", "1w" (Lustre), "none" (run out: 0 left)."""
    if token is None or token in ("", "-"):
        return None, None
    epoch = _integer(token)
    if epoch is not None:
        return None, epoch or None
    text = token.lower()
    if text == "none":
        return 0, None
    days = _integer(text[:-4]) if text.endswith("days") else None
    if days is not None:
        return days * 86400, None
    hours, colon, minutes = text.partition(":")
    if colon and _integer(hours) is not None and _integer(minutes) is not None:
        return int(hours) * 3600 + int(minutes) * 60, None
    parts = _LUSTRE_GRACE.findall(text)
    if parts and "".join(n + u for n, u in parts) == text:
        return sum(int(n) * _LUSTRE_UNIT[u] for n, u in parts), None
    raise ParseError(source, line, f"expected a grace time, got {token[:40]!r}")


def _split_values(values: list[str], source: str, line: int) -> list[str | None]:
    """The 8 columns used, soft, hard, grace, files, soft, hard, grace; the human form leaves
    a grace column empty when not in grace, so 6 or 7 tokens are placed by what they look like."""
    if len(values) == 8:
        return list(values)
    if len(values) == 6:
        return [*values[:3], None, *values[3:], None]
    if len(values) == 7:
        if _GRACE_HUMAN.fullmatch(values[3]):
            return [*values, None]
        return [*values[:3], None, *values[3:]]
    raise ParseError(
        source,
        line,
        f"expected used, soft, hard, grace for blocks and files, got {len(values)} values",
    )


def _quota_record(
    kind: str | None,
    name: str | None,
    qid: int | None,
    filesystem: str | None,
    values: list[str | None],
    source: str,
    line: int,
    flags: str | None = None,
    mountpoint: str | None = None,
) -> dict[str, Any]:
    used, used_star = _space(values[0] or "", source, line)
    soft, _ = _space(values[1] or "", source, line)
    hard, _ = _space(values[2] or "", source, line)
    files, files_star = _count(values[4] or "", source, line)
    fsoft, _ = _count(values[5] or "", source, line)
    fhard, _ = _count(values[6] or "", source, line)
    block_left, block_epoch = _grace(values[3], source, line)
    files_left, files_epoch = _grace(values[7], source, line)
    over = "+" in flags if flags is not None else used_star or files_star
    record: dict[str, Any] = {"record": "quota"}
    record.update(
        kind=kind,
        name=name,
        id=qid,
        filesystem=filesystem,
        mountpoint=mountpoint,
        used_bytes=used,
        soft_limit_bytes=_limit(soft),
        hard_limit_bytes=_limit(hard),
        files_used=files,
        files_soft=_limit(fsoft),
        files_hard=_limit(fhard),
        block_grace_seconds=block_left,
        files_grace_seconds=files_left,
        block_grace_expires_epoch=block_epoch,
        files_grace_expires_epoch=files_epoch,
        over_soft=over,
    )
    return record


# ---------------------------------------------------------------------------------------------
# repquota

_REPORT = re.compile(r"\*\*\* Report for (user|group|project) quotas on device (\S+)")
_FLAGS = re.compile(r"[-+]{2}")


def parse_repquota(text: str, source: str = "repquota -a -p") -> list[dict[str, Any]]:
    """``repquota [-a] [-u] [-g] [-P] [-p] [-s] [-n] [-v]`` text: one ``quota`` record per row
    of every report (one report per filesystem and quota type)."""
    out: list[dict[str, Any]] = []
    kind: str | None = None
    device: str | None = None
    in_rows = seen = False
    for number, raw in enumerate(text.splitlines(), 1):
        report = _REPORT.match(raw)
        if report:
            kind, device = report.groups()
            in_rows, seen = False, True
        elif kind and raw.startswith("---"):
            in_rows = True
        elif not raw.strip():
            in_rows = False  # a blank line ends a report's rows
        elif in_rows and kind is not None:
            out.append(_repquota_row(raw, kind, device, source, number))
        # Grace-time lines, column headers and the -v statistics are skipped.
    if not seen and text.strip():
        raise ParseError(source, 1, "no '*** Report for ... quotas on device' line: not repquota")
    return out


def _repquota_row(raw: str, kind: str, device: str | None, source: str, line: int) -> dict:
    tokens = raw.split()
    if len(tokens) < 8 or not _FLAGS.fullmatch(tokens[1]):
        raise ParseError(source, line, f"expected NAME FLAGS used soft hard ..., got {raw[:60]!r}")
    label = tokens[0]
    name: str | None = label
    qid = None
    if label.startswith("#") and _integer(label[1:]) is not None:  # -n, or an id without a name
        name, qid = None, int(label[1:])
    values = _split_values(tokens[2:], source, line)
    return _quota_record(kind, name, qid, device, values, source, line, flags=tokens[1])


# ---------------------------------------------------------------------------------------------
# quota (quota-tools) and lfs quota share the "Disk quotas for ..." title

_TITLE = re.compile(
    r"Disk quotas for (user|usr|group|grp|project|prj) (.+?)"
    r" \((?:uid|gid|pid|projid) ([0-9]{1,20})\):?\s*(.*)$"
)
_KIND = {"usr": "user", "grp": "group", "prj": "project"}


def _title(raw: str) -> tuple[str, str, int, str] | None:
    found = _TITLE.match(raw.strip())
    if not found:
        return None
    kind, name, qid, tag = found.groups()
    return _KIND.get(kind, kind), name, int(qid), tag.strip()


def _row_split(tokens: list[str]) -> tuple[list[str], list[str]]:
    """(filesystem tokens, value tokens) of a table row."""
    at = next((i for i, t in enumerate(tokens) if _is_value(t)), len(tokens))
    return tokens[:at], tokens[at:]


def parse_quota(text: str, source: str = "quota -v -w -p") -> list[dict[str, Any]]:
    """``quota [-v] [-w] [-p] [-s] [--show-mntpoint] [--hide-device] -u|-g NAME ...``: one
    ``quota`` record per filesystem row of every "Disk quotas for ..." block.

    ``quota -q`` messages and a block tagged ``none`` (no limits) give no records."""
    out: list[dict[str, Any]] = []
    title: tuple[str, str, int, str] | None = None
    header = seen = False
    pending: list[str] = []  # a filesystem name that quota wrapped onto its own line
    for number, raw in enumerate(text.splitlines(), 1):
        found = _title(raw)
        if found:
            title, header, seen, pending = found, False, True, []
            continue
        tokens = raw.split()
        if not tokens or title is None:
            continue
        if tokens[0] == "Filesystem":
            header = True
        elif header:
            names, values = _row_split(tokens)
            if not values:
                pending.extend(names)  # in place: a run of such lines costs linear time
                continue
            names = pending + names
            if not names or len(names) > 2:
                raise ParseError(source, number, f"expected FILESYSTEM values..., got {raw[:60]!r}")
            kind, name, qid, _ = title
            row = _split_values(values, source, number)
            mount = names[1] if len(names) == 2 else None
            out.append(_quota_record(kind, name, qid, names[0], row, source, number, None, mount))
            pending = []
    if not seen and text.strip():
        raise ParseError(source, 1, "no 'Disk quotas for ...' line: not quota output")
    return out


# ---------------------------------------------------------------------------------------------
# Lustre lfs quota


def parse_lfs_quota(
    text: str, source: str = "lfs quota", kind: str | None = None, name: str | None = None
) -> list[dict[str, Any]]:
    """``lfs quota [-h] [-v] [-u|-g|-p NAME] PATH`` (``usr``/``grp``/``prj`` titles of Lustre
    2.x, ``user``/``group`` of older ones) and ``lfs quota -q`` (no title: ``kind`` and
    ``name`` come from the caller).  Per-MDT/OST rows of ``-v`` (``*_UUID``) are skipped: the
    filesystem row holds the totals.  Values in ``[...]`` (inaccurate, a target did not answer)
    are read as printed."""
    out: list[dict[str, Any]] = []
    current: tuple[str | None, str | None, int | None] = (
        _KIND.get(kind or "", kind),
        name,
        None,
    )
    pending: list[str] = []
    in_default = False
    for number, raw in enumerate(text.splitlines(), 1):
        found = _title(raw)
        tokens = raw.split()
        if found:
            current, pending, in_default = found[:3], [], False
            continue
        if not tokens or tokens[0] in ("Filesystem", "Some", "Total", "Block"):
            continue  # headers, the inaccuracy note, -v totals, -t grace times
        if raw.startswith("Disk default"):
            in_default = True  # lfs quota -d: default limits, not usage
            continue
        if in_default:
            continue
        names, values = _row_split(tokens)
        if not values:
            pending.extend(names)  # in place: a run of such lines costs linear time
            continue
        names = pending + names
        pending = []
        if len(names) != 1:
            raise ParseError(source, number, f"expected PATH and 8 values, got {raw[:60]!r}")
        if names[0].endswith("_UUID"):
            continue
        if len(values) != 8:
            raise ParseError(
                source, number, f"expected 8 values after {names[0]}, got {len(values)}"
            )
        kind_, name_, qid = current
        out.append(_quota_record(kind_, name_, qid, names[0], list(values), source, number))
    if pending:
        raise ParseError(source, None, f"{pending[0]}: a filesystem line without values")
    return out


# ---------------------------------------------------------------------------------------------
# Running the tools


def _reap(proc: subprocess.Popen[str]) -> None:
    try:
        proc.communicate()
    except (OSError, ValueError):
        pass


def _run(argv: list[str], timeout: float, ok: Iterable[int] = (0,)) -> str | None:
    """Stdout of a tool run in the C locale; None where it is missing, fails or times out.

    A tool stuck on a dead NFS or Lustre server may sit in uninterruptible sleep, where even
    SIGKILL takes effect only when the kernel call returns: it is killed and left to a daemon
    thread to reap, never waited for here."""
    env = {**os.environ, "LC_ALL": "C"}
    try:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,  # its own process group: a timeout kills its children too
        )
    except (FileNotFoundError, PermissionError):
        log.debug("disk: %s is not installed", argv[0])
        return None
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        threading.Thread(target=_reap, args=(proc,), name="nomade-reap", daemon=True).start()
        log.debug("disk: %s timed out after %.0f s", " ".join(argv), timeout)
        return None
    if proc.returncode not in tuple(ok):
        first = (stderr or stdout).strip().splitlines()[:1]
        log.debug("disk: %s exited %d: %s", " ".join(argv), proc.returncode, "".join(first))
        return None
    return stdout


def read_repquota(
    filesystems: Sequence[str] = (),
    repquota: str = "repquota",
    timeout: float = 30.0,
) -> list[dict[str, Any]]:
    """Every user and group quota (``repquota -u -g -p``) of each filesystem given, or of every
    filesystem with quotas (``-a``) when none is; [] where quota-tools is not installed.

    One run per filesystem: repquota prints nothing at all when one of several mount points
    has no quota enabled."""
    out: list[dict[str, Any]] = []
    for target in filesystems or ("-a",):
        argv = [repquota, "-u", "-g", "-p", target]
        text = _run(argv, timeout)
        out.extend(parse_repquota(text, " ".join(argv)) if text else [])
    return out


def read_quota(
    names: Sequence[str], kind: str = "user", quota: str = "quota", timeout: float = 30.0
) -> list[dict[str, Any]]:
    """``quota -v -w -p -u|-g NAME ...`` (local and NFS filesystems, the latter through
    rpc.rquotad); quota exits 1 when someone is over a limit, which is not a failure."""
    if not names:
        return []
    argv = [quota, "-v", "-w", "-p", "-g" if kind == "group" else "-u", *names]
    text = _run(argv, timeout, ok=(0, 1))
    return parse_quota(text, " ".join(argv)) if text else []


def read_lfs_quota(
    name: str, path: str, kind: str = "user", lfs: str = "lfs", timeout: float = 30.0
) -> list[dict[str, Any]]:
    """``lfs quota -u|-g|-p NAME PATH``; [] where lfs is not installed or fails."""
    flag = {"user": "-u", "group": "-g", "project": "-p"}[kind]
    argv = [lfs, "quota", flag, name, path]
    text = _run(argv, timeout, ok=(0, 1))
    return parse_lfs_quota(text, " ".join(argv), kind, name) if text else []


# -- the collector (collectors/registry.py) -----------------------------------------------------
def collect(cfg: Config, state: dict[str, Any]) -> list[dict[str, Any]]:
    """Usage of each configured filesystem (a mount that does not answer is reported, never
    waited for); quotas where configured: repquota on `quota_filesystems`, and `lfs quota` on
    `lustre_filesystems` for the users with jobs on this node."""
    dc = cfg.collectors.disk
    records = read_usage(list(dc.filesystems), dc.probe_timeout_seconds)
    if dc.quota_filesystems:
        records += read_repquota(list(dc.quota_filesystems))
    uids = sorted({uid for uid in running_jobs(state).values() if uid is not None})
    for path in dc.lustre_filesystems:
        for uid in uids:
            records += read_lfs_quota(str(uid), path)
    return records
