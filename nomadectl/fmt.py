"""Small formatting helpers shared by nomadectl's text renderers: sizes, times, durations."""

from __future__ import annotations

import time

from nomade_common.text import size

__all__ = ["pct", "seconds", "size", "when"]


def when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def seconds(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    return (
        f"{s // 86400}-{s % 86400 // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"
        if s >= 86400
        else f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"
    )


def pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}%"
