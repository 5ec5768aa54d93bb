"""Directories of hook reports: the agent's inbox on each node, the aggregator's reports directory
on the head node.

A hook writes each report as one line of JSON, in one write, under its final name (a rename would
cost the hook a process).  A reader therefore takes a file only once its closing newline is
there; one still without it after INCOMPLETE_GRACE_SECONDS was left half-written (a hook killed
at its limit, a full disk) and is set aside in bad/, like a malformed one, with one log line.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("nomade.reports")

INCOMPLETE_GRACE_SECONDS = 10.0


class Incomplete(Exception):
    """A hook report still being written (its closing newline has not arrived)."""


def read_report(path: Path) -> dict[str, Any]:
    """One report: a JSON object on one line.  Raises Incomplete until the newline is there,
    OSError or ValueError when it cannot be read as one."""
    text = path.read_text(encoding="utf-8")
    if not text.endswith("\n"):
        raise Incomplete(path.name)
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    return data


class ReportDir:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def ready(self, skip: set[str] | frozenset[str] = frozenset()) -> Iterator[tuple[Path, dict[str, Any]]]:
        """The complete reports, oldest name first (names begin with the hook's time in µs),
        except those named in SKIP; unreadable ones are set aside on the way."""
        try:
            names = sorted(e.name for e in os.scandir(self.path) if e.name.endswith(".json"))
        except FileNotFoundError:
            return
        for name in names:
            if name in skip:
                continue
            path = self.path / name
            try:
                report = read_report(path)
            except FileNotFoundError:
                continue  # taken by someone else meanwhile
            except Incomplete:
                try:
                    if time.time() - path.stat().st_mtime < INCOMPLETE_GRACE_SECONDS:
                        continue  # being written: taken at the next look
                except FileNotFoundError:
                    continue
                self.set_aside(path, f"no end of line after {INCOMPLETE_GRACE_SECONDS:g} s")
                continue
            except (OSError, ValueError) as exc:
                self.set_aside(path, str(exc))
                continue
            yield path, report

    def set_aside(self, path: Path, why: str) -> None:
        bad = self.path / "bad"
        log.warning("hook report %s unreadable (%s); moved to %s", path, why, bad)
        try:
            bad.mkdir(exist_ok=True)
            os.replace(path, bad / path.name)
        except OSError as exc:
            log.warning("cannot set %s aside (%s); removing it", path, exc)
            path.unlink(missing_ok=True)
