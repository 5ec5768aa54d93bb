"""NVIDIA GPUs: NVML when it is there, else ``nvidia-smi -q -x``; each GPU process mapped to
its job.

Readers (I/O only): ``read`` (NVML through the optional ``pynvml`` of nvidia-ml-py, else
nvidia-smi with a timeout; ``[]`` where there is no GPU), ``read_nvml``, ``read_cgroup`` and
``attach_jobs``.  Pure parsers: ``parse_xml`` (``nvidia-smi -q -x``, DTD v10 to v13),
``parse_text`` (``nvidia-smi -q``), ``parse_csv`` (``--query-gpu``/``--query-compute-apps``/
``--query-accounted-apps``/``--query-retired-pages`` with ``--format=csv[,noheader][,nounits]``)
and ``job_of_cgroup`` (the text of /proc/<pid>/cgroup).

Every reader and parser returns the same records (docs/parsers-gpu-licenses.md), one dict per
GPU (``record: "gpu"``), MIG device (``"mig"``) and process (``"process"``), in that order per
GPU.  Units are in the field names; values nvidia-smi prints as ``N/A``, ``[N/A]``,
``[Not Supported]``, ``Requested functionality has been deprecated`` and the like are None.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import math
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from xml.parsers import expat

from collectors.procio import read_text
from collectors.runner import CollectorError
from nomade_common.config import Config
from nomade_common.errors import ParseError

log = logging.getLogger(__name__)

MIB = 1 << 20

# NØMADE's own --query-gpu list, for `nvidia-smi --query-gpu=... --format=csv,noheader,nounits`
# (parse_csv(text, source, fields=QUERY_GPU_FIELDS)).  clocks_throttle_reasons.active is the
# name every driver since 2012 accepts; newer ones also call it clocks_event_reasons.active.
QUERY_GPU_FIELDS: tuple[str, ...] = (
    "index",
    "uuid",
    "name",
    "pci.bus_id",
    "driver_version",
    "memory.total",
    "memory.used",
    "memory.free",
    "utilization.gpu",
    "utilization.memory",
    "temperature.gpu",
    "power.draw",
    "enforced.power.limit",
    "ecc.errors.corrected.volatile.total",
    "ecc.errors.uncorrected.volatile.total",
    "ecc.errors.corrected.aggregate.total",
    "ecc.errors.uncorrected.aggregate.total",
    "clocks_throttle_reasons.active",
    "pstate",
    "mig.mode.current",
)
QUERY_COMPUTE_APPS_FIELDS: tuple[str, ...] = ("gpu_uuid", "pid", "process_name", "used_memory")

# NVML's clocks-event (throttle) reason bits, named as nvidia-smi -q -x names them.
THROTTLE_BITS: tuple[tuple[int, str], ...] = (
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clocks_setting"),
)

GPU_FIELDS: tuple[str, ...] = (
    "index",
    "uuid",
    "name",
    "bus_id",
    "minor_number",
    "driver_version",
    "cuda_version",
    "memory_total_bytes",
    "memory_used_bytes",
    "memory_free_bytes",
    "memory_reserved_bytes",
    "util_gpu_percent",
    "util_memory_percent",
    "temperature_gpu_c",
    "temperature_memory_c",
    "power_draw_w",
    "power_limit_w",
    "ecc_volatile_corrected",
    "ecc_volatile_uncorrected",
    "ecc_aggregate_corrected",
    "ecc_aggregate_uncorrected",
    "throttle_reasons",
    "pstate",
    "mig_enabled",
)
MIG_FIELDS: tuple[str, ...] = (
    "gpu_index",
    "gpu_uuid",
    "index",
    "uuid",
    "gpu_instance_id",
    "compute_instance_id",
    "sm_count",
    "memory_total_bytes",
    "memory_used_bytes",
    "memory_free_bytes",
    "memory_reserved_bytes",
    "ecc_volatile_uncorrected",
)
PROCESS_FIELDS: tuple[str, ...] = (
    "gpu_index",
    "gpu_uuid",
    "pid",
    "type",
    "name",
    "used_memory_bytes",
    "gpu_instance_id",
    "compute_instance_id",
    "job_id",
)


def _record(kind: str, names: tuple[str, ...], values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"record": kind}
    out.update((name, values.get(name)) for name in names)
    return out


# ---------------------------------------------------------------------------------------------
# Values

_NUMBER = re.compile(r"^([-+]?\d+(?:\.\d+)?)\s*([A-Za-z%]*)$")
_TO_BYTES = {"b": 1, "kib": 1 << 10, "mib": MIB, "gib": 1 << 30, "kb": 1000, "mb": 10**6}


def _absent(raw: str | None) -> bool:
    """N/A, [N/A], [Not Supported], 'Requested functionality has been deprecated', '' ..."""
    if raw is None:
        return True
    raw = raw.strip()
    return not raw or raw.startswith("[") or not any(ch.isdigit() for ch in raw)


def _number(raw: str | None, source: str, line: int | None) -> tuple[float, str] | None:
    """(value, unit) of '81559 MiB', '35.06 W', '0 %', '39 C', '4000'; None when absent."""
    if _absent(raw):
        return None
    assert raw is not None
    match = _NUMBER.match(raw.strip())
    if match is None:
        raise ParseError(source, line, f"expected a number, got {raw.strip()[:40]!r}")
    value = float(match.group(1))
    if not math.isfinite(value):  # digits past float range
        raise ParseError(source, line, f"expected a number, got {raw.strip()[:40]!r}...")
    return value, match.group(2)


def _int(raw: str | None, source: str, line: int | None) -> int | None:
    got = _number(raw, source, line)
    return None if got is None else int(got[0])


def _float(raw: str | None, source: str, line: int | None) -> float | None:
    got = _number(raw, source, line)
    return None if got is None else got[0]


def _bytes(raw: str | None, source: str, line: int | None, unit: str = "MiB") -> int | None:
    got = _number(raw, source, line)
    if got is None:
        return None
    assert raw is not None
    scale = _TO_BYTES.get((got[1] or unit).lower())
    if scale is None:
        raise ParseError(source, line, f"unknown memory unit in {raw[:40]!r}")
    value = got[0] * scale
    if not math.isfinite(value):
        raise ParseError(source, line, f"expected a memory size, got {raw.strip()[:40]!r}...")
    return int(value)


def _text(raw: str | None) -> str | None:
    if raw is None:
        return None
    raw = raw.strip()
    return None if not raw or raw == "N/A" or raw.startswith("[") else raw


def _mig_enabled(raw: str | None) -> bool | None:
    value = _text(raw)
    return None if value is None or value not in ("Enabled", "Disabled") else value == "Enabled"


def throttle_reasons_of(mask: int) -> list[str]:
    """The names of the active reasons in an NVML clocks-event bit mask."""
    return [name for bit, name in THROTTLE_BITS if mask & bit]


# ---------------------------------------------------------------------------------------------
# One tree for XML and plain text


@dataclass
class Node:
    """An element of nvidia-smi's report: tag, text, children and the line it starts on."""

    tag: str
    line: int
    text: str = ""
    attrs: dict[str, str] = field(default_factory=dict)
    children: list[Node] = field(default_factory=list)

    def child(self, path: str) -> Node | None:
        node: Node | None = self
        for part in path.split("/"):
            node = next((c for c in node.children if c.tag == part), None) if node else None
        return node

    def all(self, tag: str) -> list[Node]:
        return [c for c in self.children if c.tag == tag]

    def first(self, *paths: str) -> Node | None:
        """The first of ``paths`` present (the tag names of different driver versions)."""
        for path in paths:
            node = self.child(path)
            if node is not None:
                return node
        return None


def _xml_tree(text: str, source: str) -> Node:
    parser = expat.ParserCreate()
    stack: list[Node] = []
    # The text of each open element, joined at its end: adding each chunk to a string would
    # copy the text so far again (quadratic in a long text that expat hands over line by line).
    chunks: list[list[str]] = []
    root: list[Node] = []

    def start(tag: str, attrs: dict[str, str]) -> None:
        node = Node(tag, parser.CurrentLineNumber, attrs=attrs)
        (stack[-1].children if stack else root).append(node)
        stack.append(node)
        chunks.append([])

    def end(_tag: str) -> None:
        node = stack.pop()
        node.text = "".join(chunks.pop()).strip()

    def data(chunk: str) -> None:
        if stack:
            chunks[-1].append(chunk)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = data
    try:
        parser.Parse(text, True)
    except expat.ExpatError as exc:
        raise ParseError(
            source, exc.lineno, f"not well-formed XML: {expat.errors.messages[exc.code]}"
        ) from None
    if not root or root[0].tag != "nvidia_smi_log":
        raise ParseError(source, 1, "not an nvidia-smi -q -x report (no <nvidia_smi_log>)")
    return root[0]


# `nvidia-smi -q` labels whose snake_case differs from the -q -x tag of the same value.
_TEXT_TAGS = {
    "gpu_uuid": "uuid",
    "bus_id": "pci_bus_id",
    "gpu_current_temp": "gpu_temp",
    "memory_current_temp": "memory_temp",
    "instantaneous_power_draw": "instant_power_draw",
    "sram_uncorrectable_sec_ded": "sram_uncorrectable_secded",
    "shared_fb_memory_usage": "fb_memory_usage",
}
# The label ends in a non-space, so the spaces before the colon are tried from one place only
# (a label of (\S.*?) would rescan a long run of spaces from each of its characters).
_TEXT_LINE = re.compile(r"^( *)(\S(?:.*?\S)??)\s+:\s?(.*)$")


def _snake(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def _text_tree(text: str, source: str) -> Node:
    """``nvidia-smi -q`` as a Node tree shaped like the XML one (4 spaces per level)."""
    root = Node("nvidia_smi_log", 1)
    stack: list[tuple[int, Node]] = [(-1, root)]
    seen_log = False
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.strip().startswith("====") and "NVSMI LOG" in line:
            seen_log = True
            continue
        depth = len(line) - len(line.lstrip(" "))
        match = _TEXT_LINE.match(line)
        label, value = (match.group(2), match.group(3)) if match else (line.strip(), "")
        while stack[-1][0] >= depth:
            stack.pop()
        if depth == 0 and label.startswith("GPU ") and not match:
            node = Node("gpu", number, attrs={"id": label[4:].strip()})
        else:
            tag = _snake(label)
            node = Node(_TEXT_TAGS.get(tag, tag), number, text=value.strip())
        stack[-1][1].children.append(node)
        stack.append((depth, node))
    if not seen_log:
        raise ParseError(source, 1, "not an nvidia-smi -q report (no '==NVSMI LOG==' line)")
    for gpu in root.all("gpu"):
        _regroup_text_processes(gpu)
    return root


def _regroup_text_processes(gpu: Node) -> None:
    """-q prints 'GPU instance ID', 'Compute instance ID', then 'Process ID' with its details
    as siblings; -q -x nests each process in <process_info>.  Rebuild the XML shape."""
    processes = gpu.child("processes")
    if processes is None:
        return
    grouped: list[Node] = []
    pending: list[Node] = []
    for node in processes.children:
        if node.tag != "process_id":
            pending.append(node)
            continue
        info = Node("process_info", node.line, children=pending)
        info.children.append(Node("pid", node.line, node.text))
        for detail in node.children:
            tag = {"name": "process_name", "used_gpu_memory": "used_memory"}.get(detail.tag)
            info.children.append(Node(tag or detail.tag, detail.line, detail.text))
        grouped.append(info)
        pending = []
    processes.children = grouped


# ---------------------------------------------------------------------------------------------
# Records from the tree


class _Reader:
    """Typed values from a Node tree, with the source for ParseError."""

    def __init__(self, source: str) -> None:
        self.source = source

    def as_text(self, node: Node, *paths: str) -> str | None:
        found = node.first(*paths)
        return None if found is None else _text(found.text)

    def as_int(self, node: Node, *paths: str) -> int | None:
        found = node.first(*paths)
        return None if found is None else _int(found.text, self.source, found.line)

    def as_float(self, node: Node, *paths: str) -> float | None:
        found = node.first(*paths)
        return None if found is None else _float(found.text, self.source, found.line)

    def as_bytes(self, node: Node, *paths: str) -> int | None:
        found = node.first(*paths)
        return None if found is None else _bytes(found.text, self.source, found.line)

    def total(self, node: Node | None, *paths: str) -> int | None:
        """The sum of those of ``paths`` that hold a number; None when none does."""
        if node is None:
            return None
        values = [self.as_int(node, path) for path in paths]
        present = [value for value in values if value is not None]
        return sum(present) if present else None


_CORRECTED = ("sram_correctable", "dram_correctable", "single_bit/total")
_UNCORRECTED = (
    "sram_uncorrectable",
    "sram_uncorrectable_parity",
    "sram_uncorrectable_secded",
    "dram_uncorrectable",
    "double_bit/total",
)
_REASON_PREFIXES = ("clocks_event_reason_", "clocks_throttle_reason_")
_REASON_ALIASES = {"idle": "gpu_idle", "display_clock_setting": "display_clocks_setting"}


def _throttle_reasons(gpu: Node) -> list[str] | None:
    """Active reasons of <clocks_event_reasons> (v12+) or <clocks_throttle_reasons> (older)."""
    block = gpu.first("clocks_event_reasons", "clocks_throttle_reasons")
    if block is None or not block.children:
        return None  # absent, or N/A (vGPU guests)
    active: list[str] = []
    stack = list(block.children)
    while stack:
        node = stack.pop(0)
        stack[:0] = node.children  # -q nests 'HW Thermal Slowdown' under 'HW Slowdown'
        if node.text == "Active":
            name = node.tag
            for prefix in _REASON_PREFIXES:
                name = name.removeprefix(prefix)
            active.append(_REASON_ALIASES.get(name, name))
    return active


def _gpu_record(gpu: Node, index: int, top: dict[str, str | None], r: _Reader) -> dict:
    memory = gpu.child("fb_memory_usage") or Node("fb_memory_usage", gpu.line)
    ecc = gpu.child("ecc_errors")
    power = ("gpu_power_readings", "power_readings")
    return _record(
        "gpu",
        GPU_FIELDS,
        {
            "index": index,
            "uuid": r.as_text(gpu, "uuid"),
            "name": r.as_text(gpu, "product_name"),
            "bus_id": r.as_text(gpu, "pci/pci_bus_id") or _text(gpu.attrs.get("id")),
            "minor_number": r.as_int(gpu, "minor_number"),
            **top,
            "memory_total_bytes": r.as_bytes(memory, "total"),
            "memory_used_bytes": r.as_bytes(memory, "used"),
            "memory_free_bytes": r.as_bytes(memory, "free"),
            "memory_reserved_bytes": r.as_bytes(memory, "reserved"),
            "util_gpu_percent": r.as_float(gpu, "utilization/gpu_util", "utilization/gpu"),
            "util_memory_percent": r.as_float(gpu, "utilization/memory_util", "utilization/memory"),
            "temperature_gpu_c": r.as_float(gpu, "temperature/gpu_temp"),
            "temperature_memory_c": r.as_float(gpu, "temperature/memory_temp"),
            "power_draw_w": _first_float(gpu, r, [f"{p}/{k}" for p in power for k in _DRAW_KEYS]),
            "power_limit_w": _first_float(gpu, r, [f"{p}/{k}" for p in power for k in _LIMIT_KEYS]),
            "ecc_volatile_corrected": r.total(ecc and ecc.child("volatile"), *_CORRECTED),
            "ecc_volatile_uncorrected": r.total(ecc and ecc.child("volatile"), *_UNCORRECTED),
            "ecc_aggregate_corrected": r.total(ecc and ecc.child("aggregate"), *_CORRECTED),
            "ecc_aggregate_uncorrected": r.total(ecc and ecc.child("aggregate"), *_UNCORRECTED),
            "throttle_reasons": _throttle_reasons(gpu),
            "pstate": r.as_text(gpu, "performance_state"),
            "mig_enabled": _mig_enabled(r.as_text(gpu, "mig_mode/current_mig", "mig_mode/current")),
        },
    )


# Power draw as the driver reports it by default (the 1 s average on Ampere and newer, as
# nvidia-smi's power.draw); the instantaneous sample where no average is given.
_DRAW_KEYS = ("average_power_draw", "power_draw", "instant_power_draw")
_LIMIT_KEYS = ("current_power_limit", "enforced_power_limit", "power_limit")


def _first_float(node: Node, r: _Reader, paths: list[str]) -> float | None:
    """The first of ``paths`` that holds a number (older drivers print N/A in some)."""
    for path in paths:
        value = r.as_float(node, path)
        if value is not None:
            return value
    return None


def _mig_records(gpu: Node, parent: dict, r: _Reader) -> list[dict]:
    devices = gpu.all("mig_device")
    holder = gpu.child("mig_devices")
    if holder is not None:
        devices += holder.all("mig_device")
    out = []
    for dev in devices:
        memory = dev.child("fb_memory_usage") or Node("fb_memory_usage", dev.line)
        ecc = dev.first("ecc_error_count/volatile_count", "ecc_errors/volatile")
        out.append(
            _record(
                "mig",
                MIG_FIELDS,
                {
                    "gpu_index": parent["index"],
                    "gpu_uuid": parent["uuid"],
                    "index": r.as_int(dev, "index"),
                    "uuid": r.as_text(dev, "uuid"),
                    "gpu_instance_id": r.as_int(dev, "gpu_instance_id"),
                    "compute_instance_id": r.as_int(dev, "compute_instance_id"),
                    "sm_count": r.as_int(dev, "device_attributes/shared/multiprocessor_count"),
                    "memory_total_bytes": r.as_bytes(memory, "total"),
                    "memory_used_bytes": r.as_bytes(memory, "used"),
                    "memory_free_bytes": r.as_bytes(memory, "free"),
                    "memory_reserved_bytes": r.as_bytes(memory, "reserved"),
                    "ecc_volatile_uncorrected": r.total(ecc, "sram_uncorrectable"),
                },
            )
        )
    return out


def _process_records(gpu: Node, parent: dict, r: _Reader) -> list[dict]:
    processes = gpu.child("processes")
    out = []
    for info in processes.all("process_info") if processes is not None else []:
        out.append(
            _record(
                "process",
                PROCESS_FIELDS,
                {
                    "gpu_index": parent["index"],
                    "gpu_uuid": parent["uuid"],
                    "pid": r.as_int(info, "pid"),
                    "type": r.as_text(info, "type"),
                    "name": r.as_text(info, "process_name"),
                    "used_memory_bytes": r.as_bytes(info, "used_memory"),
                    "gpu_instance_id": r.as_int(info, "gpu_instance_id"),
                    "compute_instance_id": r.as_int(info, "compute_instance_id"),
                },
            )
        )
    return out


def _records(root: Node, source: str) -> list[dict[str, Any]]:
    r = _Reader(source)
    top = {
        "driver_version": r.as_text(root, "driver_version"),
        "cuda_version": r.as_text(root, "cuda_version"),
    }
    out: list[dict[str, Any]] = []
    for index, gpu in enumerate(root.all("gpu")):
        record = _gpu_record(gpu, index, top, r)
        out.append(record)
        out.extend(_mig_records(gpu, record, r))
        out.extend(_process_records(gpu, record, r))
    return out


def parse_xml(text: str, source: str = "nvidia-smi -q -x") -> list[dict[str, Any]]:
    """``nvidia-smi -q -x``: gpu, mig and process records (GPUs in nvidia-smi's index order)."""
    return _records(_xml_tree(text, source), source)


def parse_text(text: str, source: str = "nvidia-smi -q") -> list[dict[str, Any]]:
    """``nvidia-smi -q`` (the plain-text report): the same records as parse_xml."""
    return _records(_text_tree(text, source), source)


# ---------------------------------------------------------------------------------------------
# --query-* CSV

# query field -> (record field, converter name).  Columns not listed are skipped.
_CSV_GPU: dict[str, tuple[str, str]] = {
    "index": ("index", "int"),
    "uuid": ("uuid", "text"),
    "name": ("name", "text"),
    "pci.bus_id": ("bus_id", "text"),
    "driver_version": ("driver_version", "text"),
    "memory.total": ("memory_total_bytes", "bytes"),
    "memory.used": ("memory_used_bytes", "bytes"),
    "memory.free": ("memory_free_bytes", "bytes"),
    "memory.reserved": ("memory_reserved_bytes", "bytes"),
    "utilization.gpu": ("util_gpu_percent", "float"),
    "utilization.memory": ("util_memory_percent", "float"),
    "temperature.gpu": ("temperature_gpu_c", "float"),
    "temperature.memory": ("temperature_memory_c", "float"),
    "power.draw": ("power_draw_w", "float"),
    "enforced.power.limit": ("power_limit_w", "float"),
    "power.limit": ("power_limit_w", "float"),
    "ecc.errors.corrected.volatile.total": ("ecc_volatile_corrected", "int"),
    "ecc.errors.uncorrected.volatile.total": ("ecc_volatile_uncorrected", "int"),
    "ecc.errors.corrected.aggregate.total": ("ecc_aggregate_corrected", "int"),
    "ecc.errors.uncorrected.aggregate.total": ("ecc_aggregate_uncorrected", "int"),
    "clocks_throttle_reasons.active": ("throttle_reasons", "mask"),
    "clocks_event_reasons.active": ("throttle_reasons", "mask"),
    "pstate": ("pstate", "text"),
    "mig.mode.current": ("mig_enabled", "mig"),
}
_CSV_PROCESS: dict[str, tuple[str, str]] = {
    "gpu_uuid": ("gpu_uuid", "text"),
    "pid": ("pid", "int"),
    "process_name": ("name", "text"),
    "name": ("name", "text"),
    "used_memory": ("used_memory_bytes", "bytes"),
    "used_gpu_memory": ("used_memory_bytes", "bytes"),
    "max_memory_usage": ("max_memory_bytes", "bytes"),
    "gpu_utilization": ("util_gpu_percent", "float"),
    "gpu_util": ("util_gpu_percent", "float"),
    "mem_utilization": ("util_memory_percent", "float"),
    "mem_util": ("util_memory_percent", "float"),
    "time": ("time_ms", "int"),
}
ACCOUNTED_FIELDS = ("max_memory_bytes", "util_gpu_percent", "util_memory_percent", "time_ms")
_CSV_RETIRED: dict[str, tuple[str, str]] = {
    "gpu_uuid": ("gpu_uuid", "text"),
    "retired_pages.address": ("address", "text"),
    "retired_pages.timestamp": ("timestamp", "text"),
    "retired_pages.cause": ("cause", "text"),
}
RETIRED_PAGE_FIELDS = ("gpu_uuid", "address", "timestamp", "cause")


def _header_column(column: str) -> tuple[str, str | None]:
    """(name, unit) of a header column: 'memory.used [MiB]' -> ('memory.used', 'MiB'); the unit
    is the bracketed text that ends the column.  (String operations: the regex this replaces
    backtracked over long runs of spaces and of '['.)"""
    if column.endswith("]"):
        start = column.find("[", column.rfind("]", 0, -1) + 1)
        if start >= 0:
            return column[:start].rstrip(), column[start + 1 : -1]
    return column, None


def _convert(kind: str, raw: str, unit: str, source: str, line: int) -> Any:
    if kind == "text":
        return _text(raw)
    if kind == "int":
        return _int(raw, source, line)
    if kind == "float":
        return _float(raw, source, line)
    if kind == "bytes":
        return _bytes(raw, source, line, unit or "MiB")
    if kind == "mig":
        return _mig_enabled(raw)
    if _absent(raw):  # mask
        return None
    try:
        return throttle_reasons_of(int(raw.strip(), 16))
    except ValueError:
        raise ParseError(
            source, line, f"expected a hex bit mask, got {raw.strip()[:40]!r}"
        ) from None


def _csv_shape(names: list[str]) -> tuple[str, dict[str, tuple[str, str]], tuple[str, ...]]:
    if "pid" in names:
        read = {_CSV_PROCESS[n][0] for n in names if n in _CSV_PROCESS}
        extra = ACCOUNTED_FIELDS if read & set(ACCOUNTED_FIELDS) else ()
        return "process", _CSV_PROCESS, PROCESS_FIELDS + extra
    if "retired_pages.address" in names:
        return "retired_page", _CSV_RETIRED, RETIRED_PAGE_FIELDS
    return "gpu", _CSV_GPU, GPU_FIELDS


def parse_csv(
    text: str, source: str = "nvidia-smi --query", fields: Iterable[str] | None = None
) -> list[dict[str, Any]]:
    """``nvidia-smi --query-{gpu,compute-apps,accounted-apps,retired-pages}=... --format=csv``.

    The header names the columns; for ``noheader`` output pass the query's ``fields``.  Units
    come from the header (``memory.used [MiB]``) or the value (``81559 MiB``); ``nounits``
    values are read in nvidia-smi's units (MiB, W, %, C).  A header that lists ``pid`` gives
    process records, ``retired_pages.address`` retired_page records, any other gpu records;
    columns NØMADE does not use are skipped.
    """
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        return []
    if fields is None:
        header_line, header = lines[0]
        lines = lines[1:]
        columns = [_header_column(c.strip()) for c in header.split(",")]
    else:
        header_line, columns = 0, [(name.strip(), None) for name in fields]
    names = [name for name, _unit in columns]
    kind, table, layout = _csv_shape(names)
    if not any(name in table for name in names):
        raise ParseError(source, header_line or None, "no column NØMADE reads (not a query CSV?)")
    out = []
    for number, line in lines:
        try:
            values = next(csv.reader([line], skipinitialspace=True))
        except csv.Error as exc:  # a field over csv's size limit (131072 characters)
            raise ParseError(source, number, f"unreadable CSV line: {exc}") from None
        if len(values) != len(columns):
            raise ParseError(source, number, f"{len(values)} values for {len(columns)} columns")
        got: dict[str, Any] = {}
        for (name, unit), raw in zip(columns, values, strict=True):
            target = table.get(name)
            if target is not None and got.get(target[0]) is None:
                got[target[0]] = _convert(target[1], raw, unit or "", source, number)
        if kind == "retired_page" and got.get("address") is None:
            continue  # a '[N/A]' row per cause: nothing retired (or not supported)
        out.append(_record(kind, layout, got))
    return out


# ---------------------------------------------------------------------------------------------
# Process -> Slurm job

_JOB = re.compile(r"/job_([0-9]{1,20})(?:/|$)")  # no job id has more digits (int() would refuse)


def job_of_cgroup(text: str) -> int | None:
    """The Slurm job id in /proc/<pid>/cgroup (v1 or v2: ``.../job_<id>/step_...``), or None."""
    for line in text.splitlines():
        match = _JOB.search(line.rpartition(":")[2])
        if match:
            return int(match.group(1))
    return None


def read_cgroup(proc_root: str, pid: int) -> str | None:
    """Text of ``<proc_root>/<pid>/cgroup``; None when the process is gone or unreadable."""
    try:
        return read_text(f"{proc_root}/{pid}/cgroup")
    except OSError:
        return None


def attach_jobs(records: list[dict[str, Any]], proc_root: str = "/proc") -> list[dict[str, Any]]:
    """Fill ``job_id`` of every process record from its cgroup; returns ``records``."""
    for record in records:
        if record.get("record") == "process" and record.get("pid") is not None:
            text = read_cgroup(proc_root, record["pid"])
            record["job_id"] = None if text is None else job_of_cgroup(text)
    return records


# ---------------------------------------------------------------------------------------------
# NVML


def _call(fn: Any, *args: Any) -> Any:
    """fn(*args), or None where the GPU or driver does not support it (any NVMLError)."""
    if fn is None:
        return None
    try:
        return fn(*args)
    except Exception as exc:  # pynvml.NVMLError and its many subclasses
        if type(exc).__name__.startswith("NVMLError"):
            return None
        raise


def _str(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _scaled(value: Any, scale: float) -> float | None:
    return None if value is None else value / scale


class _Nvml:
    """pynvml calls by name, each None where the installed binding lacks it."""

    def __init__(self, module: Any) -> None:
        self.m = module

    def __call__(self, name: str, *args: Any) -> Any:
        return _call(getattr(self.m, name, None), *args)

    def const(self, name: str, default: int) -> int:
        return getattr(self.m, name, default)


def _nvml_ecc(nv: _Nvml, handle: Any, error: str, counter: str) -> int | None:
    return nv(
        "nvmlDeviceGetTotalEccErrors",
        handle,
        nv.const(f"NVML_MEMORY_ERROR_TYPE_{error}", 0 if error == "CORRECTED" else 1),
        nv.const(f"NVML_{counter}_ECC", 0 if counter == "VOLATILE" else 1),
    )


def _nvml_gpu(nv: _Nvml, index: int, handle: Any, top: dict) -> dict[str, Any]:
    memory = nv("nvmlDeviceGetMemoryInfo", handle)
    util = nv("nvmlDeviceGetUtilizationRates", handle)
    pci = nv("nvmlDeviceGetPciInfo", handle)
    mask = nv("nvmlDeviceGetCurrentClocksEventReasons", handle)
    if mask is None:
        mask = nv("nvmlDeviceGetCurrentClocksThrottleReasons", handle)
    mig = nv("nvmlDeviceGetMigMode", handle)
    pstate = nv("nvmlDeviceGetPerformanceState", handle)
    temp = nv("nvmlDeviceGetTemperature", handle, nv.const("NVML_TEMPERATURE_GPU", 0))
    return _record(
        "gpu",
        GPU_FIELDS,
        {
            "index": index,
            "uuid": _str(nv("nvmlDeviceGetUUID", handle)),
            "name": _str(nv("nvmlDeviceGetName", handle)),
            "bus_id": _str(getattr(pci, "busId", None)),
            "minor_number": nv("nvmlDeviceGetMinorNumber", handle),
            **top,
            "memory_total_bytes": getattr(memory, "total", None),
            "memory_used_bytes": getattr(memory, "used", None),
            "memory_free_bytes": getattr(memory, "free", None),
            "memory_reserved_bytes": getattr(memory, "reserved", None),
            "util_gpu_percent": _scaled(getattr(util, "gpu", None), 1),
            "util_memory_percent": _scaled(getattr(util, "memory", None), 1),
            "temperature_gpu_c": _scaled(temp, 1),
            "temperature_memory_c": None,  # NVML exposes it only through field values
            "power_draw_w": _scaled(nv("nvmlDeviceGetPowerUsage", handle), 1000),
            "power_limit_w": _scaled(nv("nvmlDeviceGetEnforcedPowerLimit", handle), 1000),
            "ecc_volatile_corrected": _nvml_ecc(nv, handle, "CORRECTED", "VOLATILE"),
            "ecc_volatile_uncorrected": _nvml_ecc(nv, handle, "UNCORRECTED", "VOLATILE"),
            "ecc_aggregate_corrected": _nvml_ecc(nv, handle, "CORRECTED", "AGGREGATE"),
            "ecc_aggregate_uncorrected": _nvml_ecc(nv, handle, "UNCORRECTED", "AGGREGATE"),
            "throttle_reasons": None if mask is None else throttle_reasons_of(mask),
            "pstate": None if pstate is None or pstate == 32 else f"P{pstate}",
            "mig_enabled": None if not mig else bool(mig[0]),
        },
    )


def _nvml_migs(nv: _Nvml, handle: Any, parent: dict) -> list[dict[str, Any]]:
    out = []
    for i in range(nv("nvmlDeviceGetMaxMigDeviceCount", handle) or 0):
        mig = nv("nvmlDeviceGetMigDeviceHandleByIndex", handle, i)
        if mig is None:
            continue
        memory = nv("nvmlDeviceGetMemoryInfo", mig)
        attrs = nv("nvmlDeviceGetAttributes", mig)
        values = {
            "gpu_index": parent["index"],
            "gpu_uuid": parent["uuid"],
            "index": i,
            "uuid": _str(nv("nvmlDeviceGetUUID", mig)),
            "gpu_instance_id": nv("nvmlDeviceGetGpuInstanceId", mig),
            "compute_instance_id": nv("nvmlDeviceGetComputeInstanceId", mig),
            "sm_count": getattr(attrs, "multiprocessorCount", None),
            "memory_total_bytes": getattr(memory, "total", None),
            "memory_used_bytes": getattr(memory, "used", None),
            "memory_free_bytes": getattr(memory, "free", None),
            "memory_reserved_bytes": getattr(memory, "reserved", None),
            "ecc_volatile_uncorrected": _nvml_ecc(nv, mig, "UNCORRECTED", "VOLATILE"),
        }
        out.append(_record("mig", MIG_FIELDS, values))
    return out


# NVML's "not a MIG process" instance id (0xFFFFFFFF); pynvml passes it through.
_NO_INSTANCE = 0xFFFFFFFF


def _instance(value: Any) -> int | None:
    return None if value is None or value == _NO_INSTANCE else value


def _nvml_processes(nv: _Nvml, handle: Any, parent: dict) -> list[dict[str, Any]]:
    seen: dict[int, dict[str, Any]] = {}
    for kind, call in (
        ("C", "nvmlDeviceGetComputeRunningProcesses"),
        ("G", "nvmlDeviceGetGraphicsRunningProcesses"),
    ):
        for proc in nv(call, handle) or []:
            if proc.pid in seen:
                seen[proc.pid]["type"] = "C+G"
                continue
            seen[proc.pid] = _record(
                "process",
                PROCESS_FIELDS,
                {
                    "gpu_index": parent["index"],
                    "gpu_uuid": parent["uuid"],
                    "pid": proc.pid,
                    "type": kind,
                    "name": None,  # the reader that wants it reads /proc/<pid>/comm
                    "used_memory_bytes": getattr(proc, "usedGpuMemory", None),
                    "gpu_instance_id": _instance(getattr(proc, "gpuInstanceId", None)),
                    "compute_instance_id": _instance(getattr(proc, "computeInstanceId", None)),
                },
            )
    return list(seen.values())


def read_nvml(module: Any = None) -> list[dict[str, Any]] | None:
    """The GPUs through NVML, as parse_xml's records; None when pynvml or the driver is missing.

    ``module`` is the pynvml module (imported here when None).  nvmlShutdown is always called
    after a successful nvmlInit.
    """
    if module is None:
        try:
            import pynvml as module  # type: ignore[import-not-found,no-redef]
        except ImportError:
            log.debug("gpu: pynvml is not installed")
            return None
    nv = _Nvml(module)
    try:
        module.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
        log.debug("gpu: nvmlInit failed: %s", exc)
        return None
    try:
        cuda = nv("nvmlSystemGetCudaDriverVersion")
        top = {
            "driver_version": _str(nv("nvmlSystemGetDriverVersion")),
            "cuda_version": None if not cuda else f"{cuda // 1000}.{cuda % 1000 // 10}",
        }
        out: list[dict[str, Any]] = []
        for index in range(nv("nvmlDeviceGetCount") or 0):
            handle = nv("nvmlDeviceGetHandleByIndex", index)
            if handle is None:
                continue
            record = _nvml_gpu(nv, index, handle, top)
            out.append(record)
            if record["mig_enabled"]:
                out.extend(_nvml_migs(nv, handle, record))
            out.extend(_nvml_processes(nv, handle, record))
        return out
    finally:
        _call(getattr(module, "nvmlShutdown", None))


# ---------------------------------------------------------------------------------------------
# The collector


def run_nvidia_smi(nvidia_smi: str = "nvidia-smi", timeout: float = 10.0) -> str | None:
    """Stdout of ``nvidia-smi -q -x``; None where it is not installed or finds no GPU/driver.

    A timeout raises subprocess.TimeoutExpired: a hung nvidia-smi is a problem to record.
    """
    try:
        done = subprocess.run(
            [nvidia_smi, "-q", "-x"], capture_output=True, text=True, timeout=timeout
        )
    except FileNotFoundError:
        log.debug("gpu: %s is not installed", nvidia_smi)
        return None
    if done.returncode != 0:
        first = (done.stderr or done.stdout).strip().splitlines()[:1]
        log.debug("gpu: %s exited %d: %s", nvidia_smi, done.returncode, "".join(first))
        return None
    return done.stdout


def read(
    proc_root: str = "/proc",
    nvidia_smi: str = "nvidia-smi",
    timeout: float = 10.0,
    nvml: Any = None,
    use_nvml: bool = True,
) -> list[dict[str, Any]]:
    """GPU, MIG and process records, processes with their job; [] where there is no GPU.

    NVML first (``nvml`` is a pynvml module to use instead of importing one); nvidia-smi
    -q -x when pynvml is missing or nvmlInit fails.
    """
    records = read_nvml(nvml) if use_nvml else None
    if records is None:
        text = run_nvidia_smi(nvidia_smi, timeout)
        if text is None:
            return []
        records = parse_xml(text, f"{nvidia_smi} -q -x")
    return attach_jobs(records, proc_root)


def records_of(records: Iterable[dict[str, Any]], kind: str) -> Iterator[dict[str, Any]]:
    """The records of one kind ("gpu", "mig", "process")."""
    return (r for r in records if r.get("record") == kind)


# -- the collector (collectors/registry.py) -----------------------------------------------------
TOOL_TIMEOUT = 15.0


def collect(cfg: Config, state: dict[str, Any]) -> list[dict[str, Any]]:
    records = read(cfg.agent.proc_root, cfg.collectors.gpu.nvidia_smi, TOOL_TIMEOUT)
    if not records:
        raise CollectorError("neither NVML nor nvidia-smi answered")
    return records


def _has_nvml() -> bool:
    return importlib.util.find_spec("pynvml") is not None


def absent(cfg: Config) -> str | None:
    if _has_nvml() and os.path.exists("/dev/nvidiactl"):
        return None
    if shutil.which(cfg.collectors.gpu.nvidia_smi):
        return None
    return "no NVIDIA GPU here (neither NVML nor nvidia-smi)"
