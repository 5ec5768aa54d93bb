"""Node hardware health: temperatures (hwmon), memory errors (EDAC), kernel-reported hardware
errors, Slurm daemons, and whether mounts answer.

Directory readers like ``cgroup.records`` (every root is a setting, so a test points them at a
captured tree): ``parse_hwmon(root)`` reads /sys/class/hwmon, ``parse_edac(root)``
/sys/devices/system/edac/mc, ``services(proc_root)`` /proc/<pid>/comm.  ``parse_kernel_errors``
is a pure text parser of ``dmesg``, ``dmesg -T``/``-x``, /dev/kmsg records and ``journalctl -k``
lines; ``read_kmsg`` reads the kernel ring buffer for it.  ``mount_responsiveness`` reuses the
statvfs probe of ``disk.read_usage``.

Records (docs/parsers-health-disk.md): ``temperature`` (degrees Celsius, converted from the
kernel's millidegrees), ``edac`` (counts since the driver loaded or the counters were reset),
``kernel_error`` (one per matching log line), ``service``, ``mount``.  A sensor or counter the
kernel does not have, or one whose read fails (EIO, ENODATA: a sensor that is not ready), is
None; a value that is not a number raises ParseError naming the file.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from typing import Any

from collectors import disk
from nomade_common.config import Config
from nomade_common.errors import ParseError

log = logging.getLogger(__name__)

SERVICES: tuple[str, ...] = ("slurmd", "munged", "slurmctld", "slurmdbd")
_COMM_LEN = 15  # the kernel keeps the first 15 bytes of a command name in /proc/<pid>/comm

# ---------------------------------------------------------------------------------------------
# Small file reads


def _read(path: str) -> str | None:
    """The stripped text of a sysfs file; None when it is absent or its read fails (a sensor
    driver answers EIO, ENXIO or ENODATA when the sensor cannot be read right now)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.debug("health: %s unreadable: %s", path, exc)
        return None


def _int(path: str, what: str) -> int | None:
    text = _read(path)
    if not text:  # absent, unreadable, or empty in a capture whose read failed
        return None
    # sysfs prints a C long, 20 characters at most: longer text is no value of the kernel's
    # (and past float range, 400 digits, the conversion to degrees would overflow).
    if len(text) <= 20:
        try:
            return int(text)
        except ValueError:
            pass
    raise ParseError(path, 1, f"expected an integer ({what}), got {text[:40]!r}")


def _natural(name: str) -> tuple[str, int]:
    head = name.rstrip("0123456789")
    tail = name[len(head) :]
    return head, int(tail) if tail else -1


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path), key=_natural)
    except (FileNotFoundError, NotADirectoryError):
        return []


# ---------------------------------------------------------------------------------------------
# hwmon temperatures

_TEMP_INPUT = re.compile(r"temp([0-9]+)_input")


def _millidegrees(path: str) -> float | None:
    value = _int(path, "millidegrees Celsius")
    return None if value is None else value / 1000


def _hwmon_dir(path: str) -> str:
    """Where a chip's files are: the hwmonN directory, or its ``device/`` subdirectory, where
    drivers of older kernels put ``name`` and the sensor files."""
    if os.path.exists(os.path.join(path, "name")):
        return path
    device = os.path.join(path, "device")
    return device if os.path.exists(os.path.join(device, "name")) else path


def parse_hwmon(root: str = "/sys/class/hwmon") -> list[dict[str, Any]]:
    """One ``temperature`` record per ``temp<N>_input`` of every hwmon chip under ``root``;
    [] where there is no hwmon (virtual machines, containers)."""
    out: list[dict[str, Any]] = []
    for hwmon in _listdir(root):
        if not hwmon.startswith("hwmon"):
            continue
        base = _hwmon_dir(os.path.join(root, hwmon))
        chip = _read(os.path.join(base, "name"))
        inputs = [m for m in map(_TEMP_INPUT.fullmatch, _listdir(base)) if m]
        for index in sorted(int(m.group(1)) for m in inputs):
            prefix = os.path.join(base, f"temp{index}")
            out.append(
                {
                    "record": "temperature",
                    "hwmon": hwmon,
                    "chip": chip,
                    "sensor": _read(f"{prefix}_label") or f"temp{index}",
                    "temp_celsius": _millidegrees(f"{prefix}_input"),
                    "max_celsius": _millidegrees(f"{prefix}_max"),
                    "crit_celsius": _millidegrees(f"{prefix}_crit"),
                }
            )
    return out


# ---------------------------------------------------------------------------------------------
# EDAC memory controllers


def parse_edac(root: str = "/sys/devices/system/edac/mc") -> list[dict[str, Any]]:
    """One ``edac`` record per memory controller ``mc<N>`` under ``root``: corrected (``ce``)
    and uncorrected (``ue``) error counts; [] where no EDAC driver is loaded."""
    out: list[dict[str, Any]] = []
    for mc in _listdir(root):
        path = os.path.join(root, mc)
        if not re.fullmatch(r"mc\d+", mc) or not os.path.isdir(path):
            continue
        out.append(
            {
                "record": "edac",
                "mc": mc,
                "mc_name": _read(os.path.join(path, "mc_name")),
                "ce_count": _int(os.path.join(path, "ce_count"), "corrected error count"),
                "ue_count": _int(os.path.join(path, "ue_count"), "uncorrected error count"),
            }
        )
    return out


# ---------------------------------------------------------------------------------------------
# Kernel log: hardware errors

# Prefixes of the log formats, each leaving the kernel's own message.
_KMSG = re.compile(r"(\d+),(\d+),(\d+),[^;]*;(.*)")  # /dev/kmsg: level,seq,usec,flags;msg
_DMESG = re.compile(r"\[\s*(\d+\.\d+)\]\s?(.*)")  # dmesg: [  183.685247] msg
_DMESG_T = re.compile(r"\[[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}\]\s?(.*)")
_DMESG_X = re.compile(r"[a-z]+\s*:[a-z]+\s*: (.*)")  # dmesg -x: "kern  :err   : "
_SYSLOG = re.compile(
    r"(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d|\d{4}-\d\d-\d\dT\S+) \S+ kernel: (.*)"
)

_PCI = r"([0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7])"
_BUS = r"([0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}(?:\.[0-7])?)"  # NVRM's PCI:0000:3b:00
_CPU = r"\bCPU ?(\d+)"

# (category, pattern, device patterns, device prefix), first match wins.  The device is the
# pattern's own group when it has one, else the first device pattern found in the message.
#
# A pattern "HEAD.*TAIL" searched in a line that holds HEAD k times scans the rest of the line
# from each of them (quadratic; cubic with a second ".*" in TAIL).  Such patterns start with
# "^(?>.*?HEAD)": the first HEAD, kept (atomic), and the rest of the line looked at once; the
# first HEAD is the one a search would report, and the one with the most line after it.  A
# group in "(...)" excludes "(", so that its scan ends at the next occurrence.
_RULE_TEXT: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("gpu_xid", r"NVRM: Xid \(", (_BUS,), ""),
    ("gpu", r"^(?>.*?NVRM: ).*(?:fallen off the bus|RmInitAdapter failed)", (_BUS,), ""),
    (
        "edac",
        r"^(?>.*?\bEDAC\b)(?:.*(?:\b\d+ [CU]E\b|MEMORY ERROR)|(?>.*?\b[CU]E\b).*[Ee]rror)",
        (r"\bMC(\d+)\b",),
        "mc",
    ),
    ("thermal", r"CPU\d+: (?:Core|Package) temperature above threshold", (_CPU,), "cpu"),
    ("disk", r"error, dev ([^,\s]+), sector", (), ""),
    ("disk", r"Buffer I/O error on dev(?:ice)? ([^,\s]+)", (), ""),
    (
        "disk",
        r"^(?>.*?\[(\w+)\] ).*(?:Sense Key : (?:Medium|Hardware) Error|Unrecovered read error"
        r"|FAILED Result)",
        (),
        "",
    ),
    (
        "disk",
        r"^(ata\d+(?:\.\d+)?): (?:failed command|exception Emask|error: \{"
        r"|COMRESET failed|status: \{.*ERR)",
        (),
        "",
    ),
    (
        "disk",
        r"\bnvme (nvme\d+): (?:I/O \d+ QID \d+ timeout|controller is down"
        r"|Removing after probe failure|Device not ready)",
        (),
        "",
    ),
    ("disk", r"^(?>.*?\b(nvme\d+n\d+): I/O Cmd).*I/O Error", (), ""),
    ("disk", r"md/raid\d*:\w+: Disk failure on (\w+)", (), ""),
    ("filesystem", r"EXT4-fs error \(device ([^()]+)\)", (), ""),
    (
        "filesystem",
        r"^(?>.*?EXT4-fs warning \(device ([^()]+)\): ext4_end_bio:).*I/O error",
        (),
        "",
    ),
    (
        "filesystem",
        r"EXT4-fs \(([^()]+)\): (?:Remounting filesystem read-only"
        r"|error count since last fsck|I/O error while writing superblock)",
        (),
        "",
    ),
    (
        "filesystem",
        r"XFS \(([^()]+)\): (?:Corruption|Metadata corruption|metadata I/O error"
        r"|log I/O error|Filesystem has been shut down|xfs_do_force_shutdown"
        r"|I/O Error Detected)",
        (),
        "",
    ),
    ("filesystem", r"BTRFS (?:error|critical) \(device ([^()]+)\)", (), ""),
    ("filesystem", r"Aborting journal on device ([\w.]+?)(?:-\d+)?\.?$", (), ""),
    ("pcie", r"^(?>.*?AER: ).*[Ee]rror|PCIe Bus Error", (r"received: " + _PCI, _PCI), ""),
    (
        "mce",
        r"\[Hardware Error\]|^(?>.*?\bmce: ).*(?:Machine Check|machine check|events logged"
        r"|CMCI storm)|Memory failure: ",
        (_CPU,),
        "cpu",
    ),
    ("nfs", r"\bnfs: server (\S+) not responding", (), ""),
    ("hung_task", r"INFO: task \S+ blocked for more than \d+ seconds", (), ""),
    (
        "lockup",
        r"soft lockup - CPU#\d+ stuck|hard LOCKUP on cpu \d+"
        r"|rcu: INFO: rcu_\w+ (?:self-)?detected stall",
        (r"CPU#(\d+)", r"cpu (\d+)"),
        "cpu",
    ),
)
_RULES = tuple(
    (category, re.compile(pattern), tuple(map(re.compile, devices)), prefix)
    for category, pattern, devices, prefix in _RULE_TEXT
)


def _message(raw: str) -> tuple[str, float | None] | None:
    """(message, seconds since boot or None) of one log line; None for a /dev/kmsg
    continuation line (`` KEY=value`` device properties)."""
    for pattern, uptime in ((_KMSG, 3), (_DMESG, 1)):
        found = pattern.match(raw)
        if found:
            seconds = float(found.group(uptime))
            return found.groups()[-1], seconds / 1e6 if pattern is _KMSG else seconds
    if raw.startswith(" ") and "=" in raw and " " not in raw.strip():
        return None
    for pattern in (_DMESG_T, _SYSLOG, _DMESG_X):
        found = pattern.match(raw)
        if found:
            rest = found.group(1)
            inner = _DMESG.match(rest)  # dmesg -x and journalctl may still carry [uptime]
            return (inner.group(2), float(inner.group(1))) if inner else (rest, None)
    return raw, None


def _classify(message: str) -> tuple[str, str | None] | None:
    for category, pattern, devices, prefix in _RULES:
        found = pattern.search(message)
        if not found:
            continue
        device = found.group(1) if pattern.groups else None
        for candidate in devices if device is None else ():
            near = candidate.search(message)
            if near:
                device = near.group(1)
                break
        if device is not None and prefix:
            device = prefix + device
        return category, device.lower() if device and (prefix or ":" in device) else device
    return None


def parse_kernel_errors(text: str, source: str = "dmesg") -> list[dict[str, Any]]:
    """One ``kernel_error`` record per log line that reports a hardware problem: machine
    checks, EDAC memory errors, disk and filesystem I/O errors, PCIe AER, NVIDIA Xid, CPU
    thermal throttling, NFS servers not responding, hung tasks, lockups.  Other lines yield
    nothing."""
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise ParseError(source, line, "a NUL byte: expected kernel log text, got binary data")
    out: list[dict[str, Any]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        parsed = _message(raw.rstrip())
        if parsed is None:
            continue
        message, uptime = parsed
        found = _classify(message)
        if found:
            out.append(
                {
                    "record": "kernel_error",
                    "category": found[0],
                    "device": found[1],
                    "message": message.strip(),
                    "uptime_seconds": uptime,
                    "line": number,
                }
            )
    return out


def read_kmsg(path: str = "/dev/kmsg") -> str | None:
    """Every record now in the kernel ring buffer, in /dev/kmsg format (needs CAP_SYSLOG where
    dmesg_restrict is set); None where it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        log.debug("health: %s unreadable: %s", path, exc)
        return None
    chunks: list[bytes] = []
    try:
        while True:
            try:
                chunk = os.read(fd, 8192)  # one record per read
            except BlockingIOError:
                break
            except BrokenPipeError:  # records overwritten while reading: go on with the next
                continue
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------
# Daemons and mounts


def services(proc_root: str = "/proc", names: Sequence[str] = SERVICES) -> list[dict[str, Any]]:
    """One ``service`` record per daemon name: whether a process of that command name runs,
    and its pids (from ``<proc_root>/<pid>/comm``)."""
    wanted = {name[:_COMM_LEN]: name for name in names}
    pids: dict[str, list[int]] = {name: [] for name in names}
    for entry in _listdir(proc_root):
        if not (entry.isascii() and entry.isdigit()):  # "²".isdigit(), but int() refuses it
            continue
        comm = _read(os.path.join(proc_root, entry, "comm"))
        if comm in wanted:
            pids[wanted[comm]].append(int(entry))
    return [
        {"record": "service", "name": name, "running": bool(pids[name]), "pids": sorted(pids[name])}
        for name in names
    ]


def mount_responsiveness(paths: Sequence[str], timeout: float = 5.0) -> list[dict[str, Any]]:
    """One ``mount`` record per path: whether statvfs answered within ``timeout`` (the same
    probes as ``disk.read_usage``: a hung mount is probed once, never piled up)."""
    return [
        {
            "record": "mount",
            "path": record["path"],
            "responsive": record["responsive"],
            "probe_seconds": record["probe_seconds"],
            "error": record["error"],
        }
        for record in disk.read_usage(list(paths), timeout)
    ]


# -- the collector (collectors/registry.py) -----------------------------------------------------
def collect(cfg: Config, state: dict[str, Any]) -> list[dict[str, Any]]:
    """Temperatures, EDAC counts, whether the node's daemons run, and hardware errors the kernel
    logged since the last run (the ring buffer is read whole; lines already reported are
    skipped by their uptime stamp)."""
    hc, sys_root = cfg.collectors.health, "/sys"
    records = parse_hwmon(f"{sys_root}/class/hwmon")
    records += parse_edac(f"{sys_root}/devices/system/edac/mc")
    records += services(cfg.agent.proc_root, list(hc.services))
    if hc.kernel_log:
        text = read_kmsg()
        if text:
            errors = parse_kernel_errors(text, "/dev/kmsg")
            after = state.get("kernel_uptime", -1.0)
            fresh = [e for e in errors if (e.get("uptime_seconds") or 0.0) > after]
            if errors:
                state["kernel_uptime"] = max(e.get("uptime_seconds") or 0.0 for e in errors)
            records += fresh
    return records
