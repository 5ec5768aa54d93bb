"""NFS client statistics per mount: /proc/self/mountstats and the text of ``nfsiostat``.

Readers (I/O only): ``read`` (``<proc_root>/self/mountstats``, ``[]`` where it is absent or
holds no NFS mount) and ``read_nfsiostat`` (runs the tool with a timeout).  Pure:
``parse_mountstats``, ``parse_nfsiostat``, ``mount_table`` (a /proc/<pid>/mountinfo text) and
``classify_paths`` (network or local filesystem, for the job I/O split).

mountstats counters are cumulative since the mount, and the agent reports them so: the
aggregator's NFS view turns consecutive readings of a mount into rates (`nomadectl nfs`).
Per-op ``*_queue_ms``, ``*_rtt_ms`` and ``*_exe_ms`` are the kernel's summed milliseconds,
not means.  A counter the
kernel printed as a negative number cast to unsigned (at or above 2**63) is None.  Records are
described in docs/parsers-node.md.
"""

from __future__ import annotations

import logging
import math
import re
import subprocess
from collections.abc import Iterable, Mapping
from typing import Any

from collectors.procio import read_text
from nomade_common.config import Config
from nomade_common.errors import ParseError

log = logging.getLogger(__name__)

NFS_FSTYPES = frozenset({"nfs", "nfs4"})
# Filesystems whose I/O goes over the network (mountinfo fstype, fuse.* subtype included).
NETWORK_FSTYPES = frozenset(
    {"nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "smbfs", "beegfs", "ceph", "glusterfs"}
    | {"fuse.sshfs", "fuse.glusterfs", "fuse.ceph", "fuse.s3fs", "fuse.cvmfs", "fuse.gcsfuse"}
)

# The ops reported per mount, with the four numbers of each (docs/parsers-node.md).
OPS: tuple[str, ...] = (
    "READ",
    "WRITE",
    "COMMIT",
    "GETATTR",
    "SETATTR",
    "LOOKUP",
    "ACCESS",
    "OPEN",
    "CLOSE",
    "READDIR",
    "READDIRPLUS",
)
_OP_FIELDS = (
    "ops",
    "retrans",
    "timeouts",
    "bytes_sent",
    "bytes_received",
    "queue_ms",
    "rtt_ms",
    "exe_ms",
    "errors",
)
# "bytes:" counters, in the kernel's order (fs/nfs/iostat.h, enum nfs_stat_bytecounters).
_BYTES = (
    "read_bytes",
    "write_bytes",
    "direct_read_bytes",
    "direct_write_bytes",
    "server_read_bytes",
    "server_write_bytes",
    "read_pages",
    "write_pages",
)
_U64_NEGATIVE = 1 << 63
# The kernel escapes space, tab, newline, backslash and '#' in the device and the mount point
# (\040 ...): neither holds a space, so the pattern has one way to split a line (a (.+) here
# would try every " mounted on " against every " with fstype ": quadratic in a hostile line).
_DEVICE = re.compile(r"^device (\S+) mounted on (\S+) with fstype (\S+)(?: statvers=(\S+))?\s*$")

MOUNT_FIELDS: tuple[str, ...] = (
    "server",
    "export",
    "nfs_version",
    "protocol",
    "age_seconds",
    *_BYTES,
    *(f"{op.lower()}_{field}" for op in OPS for field in _OP_FIELDS),
)


# ---------------------------------------------------------------------------------------------
# /proc/self/mountstats


def _counters(values: list[str], source: str, line: int) -> list[int | None]:
    try:
        # The kernel prints u64 counters, 20 digits at most: a longer figure is none of them.
        if any(len(v) > 20 for v in values):
            raise ValueError("more than 20 digits")
        numbers = [int(v) for v in values]
    except ValueError:
        raise ParseError(
            source, line, f"expected integers, got {' '.join(values)[:60]!r}"
        ) from None
    return [None if n >= _U64_NEGATIVE else n for n in numbers]


def _new_mount(match: re.Match[str]) -> dict[str, Any]:
    device, mount_point, fstype, statvers = match.groups()
    record: dict[str, Any] = {
        "record": "nfs_mount",
        "device": device,
        "mount_point": mount_point,
        "fstype": fstype,
        "statvers": statvers,
    }
    record.update(dict.fromkeys(MOUNT_FIELDS))
    record["server"], record["export"] = split_device(device)
    return record


def split_device(device: str) -> tuple[str | None, str | None]:
    """``("server", "/export")`` from ``server:/export`` (IPv6 servers are in brackets)."""
    at = device.find(":/")
    if at <= 0:
        return None, None
    return device[:at].strip("[]"), device[at + 1 :]


def _mount_line(record: dict[str, Any], line: str, source: str, number: int) -> None:
    key, colon, rest = line.strip().partition(":")
    if not colon:
        if key != "per-op statistics":
            raise ParseError(source, number, f"expected 'key: values', got {line.strip()[:60]!r}")
        return
    values = rest.split()
    if key == "opts":
        for option in rest.strip().split(","):
            name, _, value = option.strip().partition("=")
            if name == "vers":
                record["nfs_version"] = value
    elif key == "age" and values:
        record["age_seconds"] = _counters(values[:1], source, number)[0]
    elif key == "bytes":
        record.update(zip(_BYTES, _counters(values, source, number), strict=False))
    elif key == "xprt" and values:
        record["protocol"] = values[0]
    elif key in OPS:
        _op_line(record, key, values, source, number)


def _op_line(record: dict[str, Any], op: str, values: list[str], source: str, line: int) -> None:
    """``OP: ops trans timeouts bytes_sent bytes_recv queue_ms rtt_ms exe_ms [errors]``
    (errors since `RPC iostats version: 1.1`: None in 1.0)."""
    numbers = _counters(values, source, line)
    if len(numbers) < 8:
        raise ParseError(source, line, f"{op}: {len(numbers)} counters, expected 8 or more")
    ops, trans, timeouts, sent, received, queue, rtt, exe = numbers[:8]
    name = op.lower()
    record[f"{name}_ops"] = ops
    record[f"{name}_retrans"] = None if ops is None or trans is None else trans - ops
    record[f"{name}_timeouts"] = timeouts
    record[f"{name}_bytes_sent"] = sent
    record[f"{name}_bytes_received"] = received
    record[f"{name}_queue_ms"] = queue
    record[f"{name}_rtt_ms"] = rtt
    record[f"{name}_exe_ms"] = exe
    record[f"{name}_errors"] = numbers[8] if len(numbers) > 8 else None


def parse_mountstats(text: str, source: str = "/proc/self/mountstats") -> list[dict[str, Any]]:
    """One ``nfs_mount`` record per NFS mount of /proc/<pid>/mountstats; others are skipped."""
    out: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("device "):
            match = _DEVICE.match(line)
            if match is None:
                raise ParseError(source, number, f"unreadable device line: {line[:60]!r}")
            current = _new_mount(match) if match.group(3) in NFS_FSTYPES else None
            if current is not None:
                out.append(current)
        elif not line[0].isspace():
            raise ParseError(
                source, number, f"expected 'device ... with fstype ...': {line[:60]!r}"
            )
        elif current is not None:
            _mount_line(current, line, source, number)
    return out


# ---------------------------------------------------------------------------------------------
# nfsiostat (nfs-utils)

_NFSIOSTAT_COLUMNS = {
    "ops/s": ("ops_per_s", 1),
    "kB/s": ("bytes_per_s", 1024),
    "kB/op": ("bytes_per_op", 1024),
    "retrans": ("retrans", 1),
    "avg RTT (ms)": ("rtt_ms", 1),
    "avg exe (ms)": ("exe_ms", 1),
    "avg queue (ms)": ("queue_ms", 1),
    "errors": ("errors", 1),
}
_NFSIOSTAT_OPS = ("read", "write")
NFSIOSTAT_FIELDS: tuple[str, ...] = (
    "ops_per_s",
    "rpc_backlog",
    *(f"{op}_{field}" for op in _NFSIOSTAT_OPS for field, _ in _NFSIOSTAT_COLUMNS.values()),
)
_MOUNTED = re.compile(r"^(\S+) mounted on (.+):$")
# "(0.0%)" after a figure; no "(" inside, so a search from each "(" stops at the next one (with
# a leading \s* or [^)]*, each start would rescan a long run of spaces or of "(": quadratic).
_PERCENT = re.compile(r"\([^()]*%\)")


def _nfsiostat_values(line: str, source: str, number: int) -> list[float]:
    try:
        values = [float(v) for v in _PERCENT.sub("", line).split()]
    except ValueError:
        raise ParseError(source, number, f"expected numbers, got {line.strip()[:60]!r}") from None
    if not all(map(math.isfinite, values)):  # nfsiostat prints no inf or nan; 1e400 is inf
        raise ParseError(source, number, f"expected finite numbers, got {line.strip()[:60]!r}")
    return values


def parse_nfsiostat(text: str, source: str = "nfsiostat") -> list[dict[str, Any]]:
    """``nfsiostat [interval [count]]`` text (nfs-utils 1.x and 2.x): one ``nfsiostat`` record
    per mount and report, the columns found by name in each header."""
    out: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    header: tuple[str, list[str]] | None = None  # (section, column names) awaiting values
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        mounted = _MOUNTED.match(line)
        if mounted:
            current = {"record": "nfsiostat", "device": mounted[1], "mount_point": mounted[2]}
            current.update(dict.fromkeys(NFSIOSTAT_FIELDS))
            current["server"], current["export"] = split_device(mounted[1])
            out.append(current)
            header = None
        elif current is None:
            raise ParseError(
                source, number, f"expected '<server:export> mounted on <dir>:', got {line[:60]!r}"
            )
        elif header is not None and line[0].isdigit():
            _nfsiostat_row(current, header, _nfsiostat_values(line, source, number), source, number)
            header = None
        else:
            section, colon, rest = line.partition(":")
            names = rest if colon and " " not in section else line
            header = (section.lower() if colon else "", re.split(r"\s{2,}", names.strip()))
    if not out and text.strip():
        raise ParseError(source, 1, "no '... mounted on ...:' line: not nfsiostat output")
    return out


def _nfsiostat_row(
    record: dict, header: tuple[str, list[str]], values: list[float], source: str, line: int
) -> None:
    section, names = header
    if len(values) != len(names):
        raise ParseError(source, line, f"{len(values)} values under {len(names)} columns")
    row = dict(zip(names, values, strict=True))
    if section == "":
        record["ops_per_s"] = row.get("ops/s")
        record["rpc_backlog"] = row.get("rpc bklog")
    elif section in _NFSIOSTAT_OPS:
        for name, value in row.items():
            known = _NFSIOSTAT_COLUMNS.get(name)
            if known is not None:
                field, factor = known
                record[f"{section}_{field}"] = (
                    int(value) if field in ("retrans", "errors") else round(value * factor, 3)
                )
    # Other sections (-a attribute cache, -d directory, -p page cache) are skipped.


# ---------------------------------------------------------------------------------------------
# Network or local: the I/O split


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040 ...)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def mount_table(text: str, source: str = "mountinfo") -> dict[str, str]:
    """Mount point -> fstype from a /proc/<pid>/mountinfo text (the last mount on a point wins)."""
    table: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        before, dash, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if not dash or len(fields) < 5 or not tail:
            raise ParseError(
                source,
                number,
                f"expected 'id parent dev root mount ... - fstype ...': {line[:60]!r}",
            )
        table[_unescape(fields[4])] = tail[0]
    return table


def classify_paths(paths: Iterable[str], mounts: Mapping[str, str]) -> dict[str, str]:
    """``{path: "network" | "local"}``: the filesystem of the longest mount point holding each
    path decides.  ``mounts`` maps mount point to fstype (``mount_table``, or
    ``{r["mount_point"]: r["fstype"] for r in parse_mountstats(...)}``, where every other path
    is local)."""
    points = sorted(mounts, key=len, reverse=True)
    out: dict[str, str] = {}
    for path in paths:
        fstype = next((mounts[p] for p in points if _under(path, p)), "")
        out[path] = "network" if fstype in NETWORK_FSTYPES else "local"
    return out


def _under(path: str, mount_point: str) -> bool:
    if mount_point == "/":
        return path.startswith("/")
    return path == mount_point or path.startswith(mount_point.rstrip("/") + "/")


# ---------------------------------------------------------------------------------------------
# Readers


def read(proc_root: str = "/proc") -> list[dict[str, Any]]:
    """The NFS mounts of <proc_root>/self/mountstats; [] where there is none or no file."""
    path = f"{proc_root}/self/mountstats"
    text = read_text(path)
    if text is None:
        log.debug("nfs: %s absent", path)
        return []
    return parse_mountstats(text, path)


def read_nfsiostat(nfsiostat: str = "nfsiostat", timeout: float = 10.0) -> list[dict[str, Any]]:
    """``nfsiostat`` records (since mount); [] where it is not installed or fails."""
    try:
        done = subprocess.run([nfsiostat], capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        log.debug("nfs: %s is not installed", nfsiostat)
        return []
    if done.returncode != 0:
        log.debug("nfs: %s exited %d", nfsiostat, done.returncode)
        return []
    return parse_nfsiostat(done.stdout, nfsiostat)


# -- the collector (collectors/registry.py) -----------------------------------------------------
def collect(cfg: Config, state: dict[str, Any]) -> list[dict[str, Any]]:
    return read(cfg.agent.proc_root)


def absent(cfg: Config) -> str | None:
    table = mount_table(read_text(f"{cfg.agent.proc_root}/self/mountinfo") or "")
    return None if any(t.startswith("nfs") for t in table.values()) else "no NFS mount on this node"
