"""Trends of the readings history (docs/trends.md): `disk` for one filesystem's usage, fill
rate, acceleration, class and time to full; `trend` for any numeric field of any collector's
records, one series per node and record.  Shared by `nomadectl disk` and the API's /disk and
/trend.  The arithmetic is aggregator/analysis/trends.py; here are the store's readings, read
with care (a node may send any JSON), and their shaping.

The history holds one reading per `aggregator.readings_history_seconds` (600 s by default) and
each series' newest, so a window of N hours has about 6·N points per node.  A filesystem is
one path, as `nomadectl status` shows it: a shared filesystem is seen by every node, and their
readings of it make one series; `node` keeps one node's (a path local to each node).
"""

from __future__ import annotations

import math
import posixpath
import re
import time
from collections import defaultdict
from typing import Any

from aggregator import store
from aggregator.analysis import trends
from aggregator.views.clusterviews import FILESYSTEM_FIELDS, filesystems
from aggregator.views.health import clean, count, number, path, text

HOURS = 24.0  # the default window
MAX_HOURS = 24 * 31
MAX_PATH = 4096
MAX_SERIES = 200  # series one /trend answer fits, the longest first
NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# The fields that say which record of a reading a series follows: a filesystem's path, a
# mount's mount point, a device, a sensor, a GPU.  Other fields (values, errors) do not.
LABELS = (
    "path",
    "mount_point",
    "device",
    "resource",
    "chip",
    "sensor",
    "mc",
    "name",
    "cpu",
    "index",
    "uuid",
    "kind",
    "id",
    "filesystem",
    "root",
    "server",
    "feature",
)


def check_path(text: str | None) -> str:
    """TEXT as the path of a filesystem (normalised: /scratch/ is /scratch); else one clear
    ValueError naming what was expected."""
    if not text or not text.startswith("/") or len(text) > MAX_PATH or "\0" in text:
        got = repr(text[:40]) if text else "nothing"
        raise ValueError(
            f"path must be an absolute filesystem path (at most {MAX_PATH} characters), not {got}"
        )
    return posixpath.normpath(text).replace("//", "/")


def check_name(what: str, value: str | None) -> str:
    """A collector, record kind or field name: letters, digits, _ . - (at most 64)."""
    if value is None or not NAME.fullmatch(value):
        got = repr(value[:40]) if value else "nothing"
        raise ValueError(f"{what} must be a name of letters, digits, _ . or - (1 to 64), not {got}")
    return value


def summary(
    ts: list[float], vs: list[float], hours: float, scale: float | None, limit: float | None
) -> dict[str, Any]:
    """A series' fit (trends.fit over the last HOURS), class and, with LIMIT, projections."""
    f = trends.fit(ts, vs, hours * 3600)
    out: dict[str, Any] = {"fit": f.as_dict(), "class": trends.classify(f, scale)}
    if limit is not None:
        out["projection"] = trends.project(f, limit)
    return out


# -- one filesystem -----------------------------------------------------------------------------
def disk(
    conn: Any,
    fs_path: str,
    hours: float = HOURS,
    node: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """FS_PATH's usage now, fill rate (bytes/hour), acceleration (bytes/hour²), class, and when
    it is full: when used reaches what users may use (used + avail of the newest reading, which
    leaves out root's reserved blocks), along the line and the parabola, with their bands."""
    now = time.time() if now is None else now
    want = check_path(fs_path)
    rows = store.reading_records_between(
        conn, "disk", "filesystem", now - hours * 3600, None, [node] if node else None
    )
    ts, vs, nodes = [], [], set()
    newest: tuple[float, dict[str, Any]] | None = None
    for n, t, r in rows:
        fs = clean(r, FILESYSTEM_FIELDS)
        if fs["path"] is None or posixpath.normpath(fs["path"]) != want:
            continue
        if fs["used_bytes"] is None or number(t) is None:
            continue
        ts.append(t)
        vs.append(fs["used_bytes"])
        nodes.add(n)
        if newest is None or t >= newest[0]:
            newest = (t, fs)
    fs = newest[1] if newest else dict.fromkeys(FILESYSTEM_FIELDS)
    used, avail = fs["used_bytes"], fs["avail_bytes"]
    limit = used + avail if used is not None and avail is not None else None
    s = summary(ts, vs, hours, fs["size_bytes"] or limit, limit)
    f = s["fit"]
    return {
        "path": want,
        "node": node,
        "hours": hours,
        "time": newest[0] if newest else None,
        "nodes": sorted(nodes),
        "known_paths": [] if ts else [p["path"] for p in filesystems(conn)],
        **{k: fs[k] for k in ("size_bytes", "used_bytes", "avail_bytes", "used_fraction")},
        "limit_bytes": limit,
        "readings": f["n"],
        "fill_rate_bytes_per_hour": _per_hour(f["slope"], 1),
        "fill_rate_se_bytes_per_hour": _per_hour(f["slope_se"], 1),
        "acceleration_bytes_per_hour2": _per_hour(f["accel"], 2),
        "acceleration_se_bytes_per_hour2": _per_hour(f["accel_se"], 2),
        "class": s["class"],
        "full": {k: _from_now(p, now) for k, p in s.get("projection", {}).items() if k != "limit"},
        "fit": f,
    }


def _per_hour(value: float | None, power: int) -> float | None:
    return None if value is None else value * 3600.0**power


FROM_NOW = (
    ("at", "in_seconds"),
    ("earliest_at", "earliest_in_seconds"),
    ("latest_at", "latest_in_seconds"),
)


def _from_now(p: dict[str, Any], now: float) -> dict[str, Any]:
    """A projection as times (Unix seconds) and seconds from NOW."""
    t_last = None if p["at"] is None or p["seconds"] is None else p["at"] - p["seconds"]
    out = {"at": p["at"], "band": p["band"]}
    for key in ("earliest", "latest"):
        s = p[f"{key}_seconds"]
        out[f"{key}_at"] = None if s is None or t_last is None else t_last + s
    for at, left in FROM_NOW:
        out[left] = None if out[at] is None else out[at] - now
    return out


# -- any series ---------------------------------------------------------------------------------
def _labels(r: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    out = []
    for k in LABELS:
        v = r.get(k)
        value = count(v) if type(v) is int else (path(v) if k == "path" else text(v))
        if value is not None:
            out.append((k, value))
    return tuple(out)


def trend(
    conn: Any,
    collector: str,
    record: str,
    key: str,
    node: str | None = None,
    hours: float = HOURS,
    limit: float | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Field KEY of COLLECTOR's RECORD records over the last HOURS: one series per node and
    record (told apart by LABELS), each with its fit, class and, with LIMIT, when it reaches
    it; the series with the most points first, at most MAX_SERIES."""
    now = time.time() if now is None else now
    rows = store.reading_records_between(
        conn, collector, record, now - hours * 3600, None, [node] if node else None
    )
    points: dict[tuple, tuple[list[float], list[float]]] = defaultdict(lambda: ([], []))
    for n, t, r in rows:
        value = number(r.get(key))
        if value is None or number(t) is None or not math.isfinite(float(value)):
            continue
        ts, vs = points[(n, _labels(r))]
        ts.append(t)
        vs.append(float(value))
    series = [
        {"node": n, "labels": dict(labels), **summary(ts, vs, hours, None, limit)}
        for (n, labels), (ts, vs) in points.items()
    ]
    series.sort(key=lambda s: (-s["fit"]["n"], s["node"], repr(sorted(s["labels"].items()))))
    return {
        "collector": collector,
        "record": record,
        "key": key,
        "node": node,
        "hours": hours,
        "limit": limit,
        "series_total": len(series),
        "series": series[:MAX_SERIES],
    }
