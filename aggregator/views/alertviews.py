"""What `nomadectl alerts` and GET /api/v1/alerts show: the alerts, newest first, with how long
each has been open, and the silences not yet over."""

from __future__ import annotations

import time
from typing import Any

from aggregator import store

ALERT_KEYS = (
    "id",
    "rule",
    "subject",
    "severity",
    "state",
    "summary",
    "detail",
    "user",
    "first_t",
    "last_t",
    "resolved_t",
    "acked_by",
    "acked_t",
)


def alerts(
    conn: Any,
    unresolved: bool = False,
    since: float | None = None,
    user: str | None = None,
    limit: int = 100,
    now: float | None = None,
) -> list[dict[str, Any]]:
    """Alerts newest first (about USER's jobs only where given), each with `open_seconds`: how
    long it has been open, or was."""
    now = time.time() if now is None else now
    out = []
    for a in store.find_alerts(conn, unresolved, since, user, limit):
        row = {k: a[k] for k in ALERT_KEYS}
        row["open_seconds"] = round((a["resolved_t"] or now) - a["first_t"], 1)
        out.append(row)
    return out


def silences(conn: Any, now: float | None = None) -> list[dict[str, Any]]:
    return store.silences(conn, time.time() if now is None else now)
