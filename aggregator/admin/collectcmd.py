"""`nomadectl collect --once`: every collector, node and head, run once here and shown."""

from __future__ import annotations

from aggregator.daemon.headcollect import HEAD_COLLECTORS
from collectors.registry import NODE_COLLECTORS
from collectors.runner import Reading, run_one, skip_reason
from nomade_common.config import Config

ALL = [*NODE_COLLECTORS, *HEAD_COLLECTORS]


def collect_once(
    cfg: Config, only: list[str] | None = None
) -> tuple[list[Reading], dict[str, str]]:
    """The readings of the collectors asked for (default: every enabled one), and those skipped
    here with the reason.  An unknown name raises KeyError with the known ones."""
    names = [c.name for c in ALL]
    for name in only or []:
        if name not in names:
            raise KeyError(f"unknown collector {name!r} (known: {', '.join(names)})")
    readings, skipped = [], {}
    for c in ALL:
        if only is not None and c.name not in only:
            continue
        why = skip_reason(c, cfg, respect_enabled=only is None)  # a collector named runs
        if why:
            skipped[c.name] = why
            continue
        readings.append(run_one(c, cfg, {}))
    return readings, skipped
