"""Pressure stall information (PSI) from /proc/pressure/{cpu,memory,io}.

``read`` does only I/O and returns ``[]`` where the kernel has no /proc/pressure (before 4.20,
or booted with ``psi=0``); ``parse`` is pure.  One record per file (docs/parsers-node.md)::

    some avg10=0.18 avg60=0.34 avg300=0.10 total=159886802
    full avg10=0.18 avg60=0.34 avg300=0.10 total=159229614

becomes ``some_avg10_percent`` ... ``full_total_seconds`` (total is microseconds in the file).
A line the kernel does not print (``full`` of cpu before 5.13) leaves its fields None; unknown
lines and keys are skipped.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from collectors.procio import read_text
from nomade_common.config import Config
from nomade_common.errors import ParseError

log = logging.getLogger(__name__)

RESOURCES: tuple[str, ...] = ("cpu", "memory", "io")
_KINDS = ("some", "full")
_AVERAGES = ("avg10", "avg60", "avg300")
FIELDS: tuple[str, ...] = tuple(
    f"{kind}_{name}"
    for kind in _KINDS
    for name in (*(f"{a}_percent" for a in _AVERAGES), "total_seconds")
)


def _resource(source: str) -> str | None:
    name = os.path.basename(source.rstrip("/"))
    for resource in RESOURCES:
        if name == resource or name.endswith(f"pressure_{resource}"):
            return resource
    return None


def _value(key: str, raw: str, source: str, line: int) -> float:
    try:
        return int(raw) / 1e6 if key == "total" else float(raw)
    except (ValueError, OverflowError):  # not a number; a total past float range
        raise ParseError(source, line, f"{key}={raw[:40]!r} is not a number") from None


def parse(text: str, source: str = "/proc/pressure/cpu") -> list[dict[str, Any]]:
    """One record for one pressure file; ``resource`` is taken from the source's file name."""
    record: dict[str, Any] = {"record": "pressure", "resource": _resource(source)}
    record.update(dict.fromkeys(FIELDS))
    seen = False
    for number, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if not tokens or tokens[0] not in _KINDS:
            continue
        seen = True
        for token in tokens[1:]:
            key, eq, raw = token.partition("=")
            if not eq:
                raise ParseError(source, number, f"expected key=value, got {token[:40]!r}")
            if key in _AVERAGES:
                record[f"{tokens[0]}_{key}_percent"] = _value(key, raw, source, number)
            elif key == "total":
                record[f"{tokens[0]}_total_seconds"] = _value(key, raw, source, number)
    if not seen:
        raise ParseError(source, 1 if text.strip() else None, "no 'some' or 'full' line")
    return [record]


def read(proc_root: str = "/proc") -> list[dict[str, Any]]:
    """The records of <proc_root>/pressure/{cpu,memory,io}; [] where PSI is absent."""
    out: list[dict[str, Any]] = []
    for resource in RESOURCES:
        path = f"{proc_root}/pressure/{resource}"
        try:
            text = read_text(path)
        except OSError as exc:  # EOPNOTSUPP where the kernel was booted with psi=0
            log.debug("pressure: %s unreadable: %s", path, exc)
            continue
        if text is None:
            log.debug("pressure: %s absent", path)
            continue
        out.extend(parse(text, path))
    return out


# -- the collector (collectors/registry.py) -----------------------------------------------------
def collect(cfg: Config, state: dict[str, Any]) -> list[dict[str, Any]]:
    return read(cfg.agent.proc_root)


def absent(cfg: Config) -> str | None:
    if os.path.isdir(f"{cfg.agent.proc_root}/pressure"):
        return None
    return f"no {cfg.agent.proc_root}/pressure (kernel before 4.20 or booted with psi=0)"
