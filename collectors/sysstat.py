"""Node-wide CPU, disk and memory activity from sysstat (iostat, mpstat) and procps (vmstat).

Readers (I/O only): ``read_iostat``, ``read_mpstat`` and ``read_vmstat`` run the tool once with
a timeout and ``LC_ALL=C``; the sysstat ones ask ``-V`` for the version first and use
``-o JSON`` where it has it (sysstat 11 and later), else the text report.  Pure parsers:
``parse_iostat`` (``iostat [-x] [-k|-m]`` text of any version: the columns are read from each
header), ``parse_iostat_json``, ``parse_mpstat`` (``mpstat [-P ALL|-A]``), ``parse_mpstat_json``
and ``parse_vmstat`` (``vmstat [-a] [-w] [-t] [interval count]``).

Records (docs/parsers-node.md) carry ``record`` ("cpu", "device", "summary", "vm") and
``sample``: the 0-based index of the report in the output.  Report 0 of a tool run without
``-y`` holds averages since boot; later ones cover one interval each.  Rates are converted to
bytes (sysstat's kB and MB are 1024 and 1024*1024 bytes, sectors and blocks 512); a column the
report does not have is None.  ``Average:`` blocks are skipped: they are the mean of the
interval samples already returned.
"""

from __future__ import annotations

import logging
import math
import os
import re
import statistics
import subprocess
from collections.abc import Callable
from typing import Any

from collectors.runner import run_tool
from nomade_common import jsonin
from nomade_common.config import Config
from nomade_common.errors import ParseError

log = logging.getLogger(__name__)

KIB = 1024
MIB = 1024 * 1024
SECTOR = 512

# A core above this busy percentage counts as saturated in the mpstat summary.
SATURATED_PERCENT = 95.0

# iostat avg-cpu column -> field (text headers carry "%", JSON keys do not).
_IOSTAT_CPU = {
    "user": "user_percent",
    "nice": "nice_percent",
    "system": "system_percent",
    "iowait": "iowait_percent",
    "steal": "steal_percent",
    "idle": "idle_percent",
}
IOSTAT_CPU_FIELDS = tuple(_IOSTAT_CPU.values())

# iostat device column (text header or JSON key, any version) -> (field, factor to the unit).
_IOSTAT_DEVICE: dict[str, tuple[str, float]] = {
    "%util": ("util_percent", 1),
    "util": ("util_percent", 1),
    "r_await": ("r_await_ms", 1),
    "w_await": ("w_await_ms", 1),
    "await": ("await_ms", 1),
    "r/s": ("reads_per_s", 1),
    "r": ("reads_per_s", 1),  # sysstat 11 JSON
    "w/s": ("writes_per_s", 1),
    "w": ("writes_per_s", 1),
    "tps": ("transfers_per_s", 1),
    "aqu-sz": ("queue_length", 1),
    "avgqu-sz": ("queue_length", 1),
    "rkB/s": ("read_bytes_per_s", KIB),
    "rkB": ("read_bytes_per_s", KIB),  # sysstat 11 JSON: a rate despite the name
    "kB_read/s": ("read_bytes_per_s", KIB),
    "rMB/s": ("read_bytes_per_s", MIB),
    "MB_read/s": ("read_bytes_per_s", MIB),
    "rsec/s": ("read_bytes_per_s", SECTOR),
    "Blk_read/s": ("read_bytes_per_s", SECTOR),
    "wkB/s": ("write_bytes_per_s", KIB),
    "wkB": ("write_bytes_per_s", KIB),
    "kB_wrtn/s": ("write_bytes_per_s", KIB),
    "wMB/s": ("write_bytes_per_s", MIB),
    "MB_wrtn/s": ("write_bytes_per_s", MIB),
    "wsec/s": ("write_bytes_per_s", SECTOR),
    "Blk_wrtn/s": ("write_bytes_per_s", SECTOR),
}
IOSTAT_DEVICE_FIELDS = tuple(dict.fromkeys(field for field, _ in _IOSTAT_DEVICE.values()))

# mpstat column -> field (text headers carry "%", JSON keys do not).
_MPSTAT = {
    "usr": "user_percent",
    "nice": "nice_percent",
    "sys": "system_percent",
    "iowait": "iowait_percent",
    "irq": "irq_percent",
    "soft": "soft_percent",
    "steal": "steal_percent",
    "guest": "guest_percent",
    "gnice": "gnice_percent",
    "idle": "idle_percent",
}
MPSTAT_FIELDS = tuple(_MPSTAT.values())

# vmstat column -> (field, factor): memory in KiB (the default -S K), swap rates in KiB/s.
_VMSTAT: dict[str, tuple[str, int]] = {
    "r": ("runnable_procs", 1),
    "b": ("blocked_procs", 1),
    "swpd": ("swap_used_bytes", KIB),
    "free": ("mem_free_bytes", KIB),
    "buff": ("mem_buffer_bytes", KIB),
    "cache": ("mem_cache_bytes", KIB),
    "inact": ("mem_inactive_bytes", KIB),
    "active": ("mem_active_bytes", KIB),
    "si": ("swap_in_bytes_per_s", KIB),
    "so": ("swap_out_bytes_per_s", KIB),
    "bi": ("blocks_in_per_s", 1),
    "bo": ("blocks_out_per_s", 1),
    "in": ("interrupts_per_s", 1),
    "cs": ("context_switches_per_s", 1),
    "us": ("cpu_user_percent", 1),
    "sy": ("cpu_system_percent", 1),
    "id": ("cpu_idle_percent", 1),
    "wa": ("cpu_iowait_percent", 1),
    "st": ("cpu_steal_percent", 1),
    "gu": ("cpu_guest_percent", 1),
}
VMSTAT_FIELDS = tuple(field for field, _ in _VMSTAT.values())


# ---------------------------------------------------------------------------------------------
# Helpers


def _number(token: str, source: str, line: int | None) -> float:
    """A sysstat number; a decimal comma (sysstat prints in the locale) is accepted.  sysstat
    prints no infinity or NaN: one (or a figure past float range) is refused."""
    try:
        value = float(token.replace(",", ".") if "." not in token else token)
    except ValueError:
        raise ParseError(source, line, f"{token!r} is not a number") from None
    if not math.isfinite(value):
        raise ParseError(source, line, f"{token[:40]!r} is not a finite number")
    return value


def _json_number(value: Any, key: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ParseError(source, None, f"{key}: expected a number, got {str(value)[:40]!r}")
    try:
        number = float(value)
    except OverflowError:  # an integer past float range
        number = math.inf
    if not math.isfinite(number):
        raise ParseError(source, None, f"{key}: expected a finite number, got {str(value)[:40]}")
    return number


def _load_json(text: str, source: str) -> list[dict[str, Any]]:
    """The ``statistics`` lists of every host of a sysstat ``-o JSON`` document."""
    try:
        doc = jsonin.loads(text, jsonin.TOOL_OUTPUT_DEPTH)
    except ValueError as exc:  # JSONDecodeError, too deep, int()'s digit limit
        line = getattr(exc, "lineno", None)
        raise ParseError(source, line, f"not JSON: {getattr(exc, 'msg', str(exc))[:80]}") from None
    top = doc.get("sysstat") if isinstance(doc, dict) else None
    hosts = top.get("hosts") if isinstance(top, dict) else None
    if not isinstance(hosts, list):
        raise ParseError(source, None, "no sysstat.hosts list: not sysstat -o JSON output")
    stats: list[dict[str, Any]] = []
    for host in hosts:
        if not isinstance(host, dict) or not isinstance(host.get("statistics", []), list):
            raise ParseError(source, None, "a host without a statistics list")
        stats.extend(s for s in host.get("statistics", []) if isinstance(s, dict))
    return stats


def _json_list(stat: dict[str, Any], key: str, sample: int, source: str) -> list[Any]:
    """The KEY list of one report (absent or null: empty)."""
    found = stat.get(key) or []
    if not isinstance(found, list):
        raise ParseError(source, None, f"report {sample}: {key} is not a list")
    return found


def _row(header: list[str], values: list[str], source: str, line: int) -> dict[str, str]:
    if len(values) != len(header):
        raise ParseError(
            source, line, f"{len(values)} values under a header of {len(header)} columns"
        )
    return dict(zip(header, values, strict=True))


# ---------------------------------------------------------------------------------------------
# iostat


def _iostat_cpu(values: dict[str, Any], sample: int, source: str, line: int | None) -> dict:
    out: dict[str, Any] = {"record": "cpu", "sample": sample}
    out.update(dict.fromkeys(IOSTAT_CPU_FIELDS))
    for key, raw in values.items():
        field = _IOSTAT_CPU.get(key.lstrip("%"))
        if field is not None:
            out[field] = (
                _number(raw, source, line)
                if isinstance(raw, str)
                else _json_number(raw, key, source)
            )
    return out


def _iostat_device(
    device: str, values: dict[str, Any], sample: int, source: str, line: int | None
) -> dict:
    out: dict[str, Any] = {"record": "device", "sample": sample, "device": device}
    out.update(dict.fromkeys(IOSTAT_DEVICE_FIELDS))
    for key, raw in values.items():
        known = _IOSTAT_DEVICE.get(key)
        if known is not None:
            field, factor = known
            value = (
                _number(raw, source, line)
                if isinstance(raw, str)
                else _json_number(raw, key, source)
            )
            out[field] = round(value * factor, 3) if factor != 1 else value
    return out


def parse_iostat(text: str, source: str = "iostat -x") -> list[dict[str, Any]]:
    """``iostat`` text reports (with or without ``-x``, ``-k``, ``-m``, ``-t``): cpu and device
    records per report, the device columns found by name in each header."""
    out: list[dict[str, Any]] = []
    sample, block, header, cpu_pending = -1, None, [], False
    for number, raw in enumerate(text.splitlines(), 1):
        tokens = raw.split()
        if not tokens:
            block = None
        elif tokens[0] == "avg-cpu:":
            sample, block, header, cpu_pending = sample + 1, "cpu", tokens[1:], True
        elif tokens[0] in ("Device:", "Device"):
            sample += 0 if cpu_pending else 1
            block, header, cpu_pending = "device", tokens[1:], False
        elif block == "cpu":
            out.append(_iostat_cpu(_row(header, tokens, source, number), sample, source, number))
        elif block == "device":
            values = _row(header, tokens[1:], source, number)
            out.append(_iostat_device(tokens[0], values, sample, source, number))
        # Other lines outside a block (the "Linux ..." banner, -t timestamps) are skipped.
    if sample < 0 and text.strip():
        raise ParseError(source, 1, "no avg-cpu or Device report: not iostat output")
    return out


def parse_iostat_json(text: str, source: str = "iostat -x -o JSON") -> list[dict[str, Any]]:
    """``iostat [-x] -o JSON`` (sysstat 11 and later): the records of ``parse_iostat``."""
    out: list[dict[str, Any]] = []
    for sample, stat in enumerate(_load_json(text, source)):
        cpu = stat.get("avg-cpu")
        if isinstance(cpu, dict):
            out.append(_iostat_cpu(cpu, sample, source, None))
        for disk in _json_list(stat, "disk", sample, source):
            if not isinstance(disk, dict) or not isinstance(disk.get("disk_device"), str):
                raise ParseError(source, None, f"report {sample}: a disk without disk_device")
            values = {k: v for k, v in disk.items() if k != "disk_device"}
            out.append(_iostat_device(disk["disk_device"], values, sample, source, None))
    return out


# ---------------------------------------------------------------------------------------------
# mpstat


def _mpstat_cpu(cpu: str, values: dict[str, Any], sample: int, source: str, line: int | None):
    out: dict[str, Any] = {"record": "cpu", "sample": sample, "cpu": cpu, "busy_percent": None}
    out.update(dict.fromkeys(MPSTAT_FIELDS))
    for key, raw in values.items():
        field = _MPSTAT.get(key.lstrip("%"))
        if field is not None:
            out[field] = (
                _number(raw, source, line)
                if isinstance(raw, str)
                else _json_number(raw, key, source)
            )
    # mpstat prints an offline CPU as all zeros: no busy value for it.
    if out["idle_percent"] is not None and any(out[f] for f in MPSTAT_FIELDS):
        out["busy_percent"] = round(100.0 - out["idle_percent"], 2)
    return out


def mpstat_summary(cpus: list[dict[str, Any]], sample: int) -> dict[str, Any]:
    """The summary record of one report from its per-CPU records (the ``all`` row ignored)."""
    busy = [c["busy_percent"] for c in cpus if c["cpu"] != "all" and c["busy_percent"] is not None]
    mean = statistics.mean(busy) if busy else None  # exact: no overflow on huge figures
    return {
        "record": "summary",
        "sample": sample,
        "cores": len(busy),
        "busy_mean_percent": None if mean is None else round(mean, 2),
        "imbalance": (
            None if not mean else round(statistics.pstdev(busy) / mean, 4)
        ),  # std/mean of the per-core busy percentages
        "saturated_cores": sum(b > SATURATED_PERCENT for b in busy),
    }


def _with_summaries(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """RECORDS (in sample order: a report's records are adjacent) with each report's summary
    after its last record."""
    out: list[dict[str, Any]] = []
    first = 0  # where the current report's records begin
    for index, record in enumerate(records):
        out.append(record)
        last = index + 1 == len(records) or records[index + 1]["sample"] != record["sample"]
        if last:
            out.append(mpstat_summary(records[first : index + 1], record["sample"]))
            first = index + 1
    return out


def parse_mpstat(text: str, source: str = "mpstat -P ALL") -> list[dict[str, Any]]:
    """``mpstat [-P ALL] [-A] [interval count]`` text: a cpu record per CPU row (``all`` and
    each CPU) and a summary record per report; other blocks of ``-A`` are skipped."""
    records: list[dict[str, Any]] = []
    sample, block, seen = -1, None, False
    for number, raw in enumerate(text.splitlines(), 1):
        tokens = raw.split()
        if not tokens:
            block = None
            continue
        if "CPU" in tokens and not _is_number(tokens[-1]):
            at = tokens.index("CPU")
            seen = True
            block = None
            if tokens[0] != "Average:" and any(t.endswith("idle") for t in tokens):
                sample += 1
                block, header, prefix = "cpu", tokens[at + 1 :], at
            continue
        if block == "cpu":
            if len(tokens) <= prefix:
                raise ParseError(source, number, f"short row: {raw[:60]!r}")
            values = _row(header, tokens[prefix + 1 :], source, number)
            records.append(_mpstat_cpu(tokens[prefix], values, sample, source, number))
    if not seen and text.strip():
        raise ParseError(source, 1, "no CPU header: not mpstat output")
    return _with_summaries(records)


def _is_number(token: str) -> bool:
    return bool(re.fullmatch(r"-?\d+([.,]\d+)?", token))


def parse_mpstat_json(text: str, source: str = "mpstat -P ALL -o JSON") -> list[dict[str, Any]]:
    """``mpstat [-P ALL] -o JSON``: the records of ``parse_mpstat``."""
    records: list[dict[str, Any]] = []
    for sample, stat in enumerate(_load_json(text, source)):
        for load in _json_list(stat, "cpu-load", sample, source):
            if not isinstance(load, dict) or "cpu" not in load:
                raise ParseError(source, None, f"report {sample}: a cpu-load entry without cpu")
            values = {k: v for k, v in load.items() if k != "cpu"}
            records.append(_mpstat_cpu(str(load["cpu"]), values, sample, source, None))
    return _with_summaries(records)


# ---------------------------------------------------------------------------------------------
# vmstat


def parse_vmstat(text: str, source: str = "vmstat") -> list[dict[str, Any]]:
    """``vmstat [-a] [-w] [-t] [interval [count]]`` (the default report, memory in KiB): one vm
    record per line of numbers.  Other reports (``-d``, ``-D``, ``-s``, ``-m``) are errors."""
    out: list[dict[str, Any]] = []
    header: list[str] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        tokens = raw.split()
        if not tokens or tokens[0].lstrip("-").startswith("procs"):
            continue
        if tokens[:2] == ["r", "b"]:
            header = tokens
            continue
        if header is None:
            raise ParseError(source, number, "expected the 'r b swpd free ...' header of vmstat")
        # With -t the header ends in a time zone, over two values: the date and the time.
        widths = (len(header), len(header) + 1) if header[-1] not in _VMSTAT else (len(header),)
        if len(tokens) not in widths:
            raise ParseError(source, number, f"{len(tokens)} values under {len(header)} columns")
        record: dict[str, Any] = {"record": "vm", "sample": len(out)}
        record.update(dict.fromkeys(VMSTAT_FIELDS))
        for name, value in zip(header, tokens, strict=False):
            known = _VMSTAT.get(name)
            if known is not None:
                try:
                    if len(value) > 20:  # vmstat prints C longs; a longer figure is no value
                        raise ValueError(value)
                    record[known[0]] = int(value) * known[1]
                except ValueError:
                    raise ParseError(
                        source, number, f"{name} {value[:40]!r} is not an integer"
                    ) from None
        out.append(record)
    return out


# ---------------------------------------------------------------------------------------------
# Readers


def _run(argv: list[str], timeout: float) -> str | None:
    """Stdout of a tool run in the C locale; None where it is missing or fails."""
    env = {**os.environ, "LC_ALL": "C", "S_COLORS": "never"}
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except FileNotFoundError:
        log.debug("sysstat: %s is not installed", argv[0])
        return None
    if done.returncode != 0:
        first = (done.stderr or done.stdout).strip().splitlines()[:1]
        log.debug("sysstat: %s exited %d: %s", " ".join(argv), done.returncode, "".join(first))
        return None
    return done.stdout


def sysstat_version(text: str) -> tuple[int, ...] | None:
    """``(12, 6, 1)`` from ``iostat -V`` / ``mpstat -V`` output; None if it has no version."""
    found = re.search(r"sysstat version ([0-9]{1,9}(?:\.[0-9]{1,9})*)(?![0-9])", text)
    return tuple(int(p) for p in found.group(1).split(".")) if found else None


Runner = Callable[[list[str], float], "str | None"]


def has_json(tool: str = "iostat", timeout: float = 5.0, run: Runner = _run) -> bool:
    """Whether the installed sysstat has ``-o JSON`` (version 11 and later)."""
    out = run([tool, "-V"], timeout)
    version = sysstat_version(out or "")
    return version is not None and version >= (11,)


def read_iostat(
    interval: int = 1,
    iostat: str = "iostat",
    timeout: float = 10.0,
    json_ok: bool | None = None,
    run: Runner = _run,
) -> list[dict[str, Any]]:
    """One ``iostat -x -y`` interval as records; [] where iostat is not installed (RUN may
    raise instead: the node agent's runner reports a failing tool)."""
    use_json = has_json(iostat, run=run) if json_ok is None else json_ok
    argv = [iostat, "-x", "-y", "-k"] + (["-o", "JSON"] if use_json else []) + [str(interval), "1"]
    text = run(argv, timeout + interval)
    if text is None:
        return []
    parse = parse_iostat_json if use_json else parse_iostat
    return parse(text, " ".join(argv))


def read_mpstat(
    interval: int = 1,
    mpstat: str = "mpstat",
    timeout: float = 10.0,
    json_ok: bool | None = None,
    run: Runner = _run,
) -> list[dict[str, Any]]:
    """One ``mpstat -P ALL`` interval as records; [] where mpstat is not installed."""
    use_json = has_json(mpstat, run=run) if json_ok is None else json_ok
    argv = [mpstat, "-P", "ALL"] + (["-o", "JSON"] if use_json else []) + [str(interval), "1"]
    text = run(argv, timeout + interval)
    if text is None:
        return []
    parse = parse_mpstat_json if use_json else parse_mpstat
    return parse(text, " ".join(argv))


def read_vmstat(
    interval: int = 1, vmstat: str = "vmstat", timeout: float = 10.0, run: Runner = _run
) -> list[dict]:
    """The interval line of ``vmstat -w <interval> 2`` (line 0 is since boot); [] if absent."""
    argv = [vmstat, "-w", str(interval), "2"]
    text = run(argv, timeout + 2 * interval)
    if text is None:
        return []
    return [r for r in parse_vmstat(text, " ".join(argv)) if r["sample"] > 0]


# -- the collectors (collectors/registry.py) ----------------------------------------------------
TOOL_TIMEOUT = 15.0


def _json_ok(tool: str, state: dict[str, Any]) -> bool:
    """Whether TOOL has `-o JSON` (sysstat 11 and later), asked once."""
    if "json" not in state:
        state["json"] = has_json(tool, TOOL_TIMEOUT, run=run_tool)
    return bool(state["json"])


def collect_iostat(cfg: Config, state: dict[str, Any]) -> list[dict[str, Any]]:
    return read_iostat(json_ok=_json_ok("iostat", state), timeout=TOOL_TIMEOUT, run=run_tool)


def collect_mpstat(cfg: Config, state: dict[str, Any]) -> list[dict[str, Any]]:
    return read_mpstat(json_ok=_json_ok("mpstat", state), timeout=TOOL_TIMEOUT, run=run_tool)


def collect_vmstat(cfg: Config, state: dict[str, Any]) -> list[dict[str, Any]]:
    return read_vmstat(timeout=TOOL_TIMEOUT, run=run_tool)
