"""NFS per node and mount as rates: operations, bytes and retransmissions per second and the
mean round trip per operation, between consecutive readings of the nfs collector.

The collector stores /proc/self/mountstats as the kernel keeps it: counters since the mount
(collectors/nfs.py).  The aggregator keeps one reading per `aggregator.readings_history_seconds`
(600 s by default) and the newest one, so the rates here are means over those intervals, the
last one from the history reading before the newest to the newest.  Intervals are as long as
the readings are apart (a missed run makes one interval longer, not a wrong rate).  A counter
that went down, or a mount younger than the interval, is a remount or a reboot: that interval's
rates are the counters over the mount's age (`reset: true`), never a negative rate.

`intervals(readings)` is pure; `nfs(conn, ...)` reads the store.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from aggregator import store
from aggregator.views.health import clean, count, number, path, text

OPS = (
    "read",
    "write",
    "commit",
    "getattr",
    "setattr",
    "lookup",
    "access",
    "open",
    "close",
    "readdir",
    "readdirplus",
)
# (rate, the byte counters it adds up): what applications read and wrote (through the page
# cache and O_DIRECT), and what went over the wire.
BYTES = (
    ("read_bytes_per_s", ("read_bytes", "direct_read_bytes")),
    ("write_bytes_per_s", ("write_bytes", "direct_write_bytes")),
    ("server_read_bytes_per_s", ("server_read_bytes",)),
    ("server_write_bytes_per_s", ("server_write_bytes",)),
)
MOUNT_FIELDS = {
    "device": path,
    "server": text,
    "export": path,
    "mount_point": path,
    "fstype": text,
    "nfs_version": text,
    "protocol": text,
}
MOUNT_KEYS = tuple(MOUNT_FIELDS)
HOURS = 2.0  # the default window
MAX_HOURS = 24 * 31


def _counters(r: dict[str, Any]) -> list[str]:
    names = [c for _, cs in BYTES for c in cs]
    return names + [f"{op}_{f}" for op in OPS for f in ("ops", "retrans", "rtt_ms", "exe_ms")]


def _counter(r: dict[str, Any], key: str) -> int | None:
    """Counter KEY of mount record R: a whole number, else unknown."""
    return count(r.get(key))


def _delta(a: dict, b: dict, key: str, reset: bool) -> int | None:
    """How much counter KEY grew from A to B (from 0 after a reset); None where unknown."""
    after, before = _counter(b, key), 0 if reset else _counter(a, key)
    if after is None or before is None:
        return None
    return after - before


def _sum(values: list[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _per(n: float | None, d: float | None, digits: int = 3) -> float | None:
    return None if n is None or not d else round(n / d, digits)


def is_reset(a: dict[str, Any], b: dict[str, Any], seconds: float) -> bool:
    """Whether mount B is not the mount A was: a counter went down or B's mount is younger than
    the interval (remounted, or the node rebooted)."""
    age = _counter(b, "age_seconds")
    if age is not None and (age + 1 < seconds or (_counter(a, "age_seconds") or 0) > age):
        return True
    for k in _counters(b):
        before, after = _counter(a, k), _counter(b, k)
        if before is not None and after is not None and after < before:
            return True
    return False


def rates(a: dict[str, Any], b: dict[str, Any], t0: float, t1: float) -> dict[str, Any]:
    """The rates of one mount from its record A at T0 to its record B at T1."""
    seconds = t1 - t0
    reset = is_reset(a, b, seconds)
    span: float | None = seconds
    if reset:
        age = _counter(b, "age_seconds")
        span = float(age) if age is not None and 0 < age <= seconds else None
    d = {k: _delta(a, b, k, reset) for k in _counters(b)}
    ops = _sum([d[f"{op}_ops"] for op in OPS])
    retrans = _sum([d[f"{op}_retrans"] for op in OPS])
    out: dict[str, Any] = {
        "t0": t0,
        "t1": t1,
        "seconds": round(seconds, 3),
        "reset": reset,
        "ops_per_s": _per(ops, span),
        "read_ops_per_s": _per(d["read_ops"], span),
        "write_ops_per_s": _per(d["write_ops"], span),
    }
    for name, keys in BYTES:
        out[name] = _per(_sum([d[k] for k in keys]), span, 1)
    out["retrans"] = retrans if span else None
    out["retrans_per_s"] = _per(retrans, span, 4)
    rtt = _sum([d[f"{op}_rtt_ms"] for op in OPS])
    exe = _sum([d[f"{op}_exe_ms"] for op in OPS])
    out["rtt_ms"] = _per(rtt, ops) if span else None
    out["exe_ms"] = _per(exe, ops) if span else None
    for op in ("read", "write"):
        out[f"{op}_rtt_ms"] = _per(d[f"{op}_rtt_ms"], d[f"{op}_ops"]) if span else None
    return out


def _keyed(records: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """A reading's mounts by (device, mount point, fstype, n): the same mount twice on one
    point (a stacked mount) is told apart by its order.  A record without a mount point is
    skipped; a device or fstype that is no text is ""."""
    out: dict[tuple, dict[str, Any]] = {}
    seen: dict[tuple, int] = defaultdict(int)
    for r in records:
        if not isinstance(r, dict) or path(r.get("mount_point")) is None:
            continue
        base = (
            path(r.get("device")) or "",
            path(r.get("mount_point")),
            text(r.get("fstype")) or "",
        )
        out[(*base, seen[base])] = r
        seen[base] += 1
    return out


def intervals(readings: list[tuple[float, list[dict[str, Any]]]]) -> dict[tuple, dict[str, Any]]:
    """Per mount of one node's READINGS ((time, nfs_mount records), any order): the mount as
    last seen, and the rates of each interval between two readings that both hold it."""
    out: dict[tuple, dict[str, Any]] = {}
    ordered = sorted(readings, key=lambda tr: tr[0])
    for (t0, a), (t1, b) in zip(ordered, ordered[1:], strict=False):
        if t1 <= t0:
            continue
        before = _keyed(a)
        for key, rb in _keyed(b).items():
            ra = before.get(key)
            if ra is not None:
                out.setdefault(key, {"intervals": []})["intervals"].append(rates(ra, rb, t0, t1))
    for t, recs in ordered:
        for key, r in _keyed(recs).items():
            out.setdefault(key, {"intervals": []}).update(clean(r, MOUNT_FIELDS), t=t)
    return out


def nfs(
    conn: Any, now: float | None = None, hours: float = HOURS, node: str | None = None
) -> dict[str, Any]:
    """Each node's NFS mounts with their rates over the last HOURS (on NODE only, if given):
    `latest` is the newest interval, `intervals` all of them, oldest first."""
    now = time.time() if now is None else now
    by: dict[str, dict[float, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    found = store.reading_records_between(
        conn, "nfs", "nfs_mount", now - hours * 3600, nodes=[node] if node else None
    )
    for n, t, r in found:
        if number(t) is not None:
            by[n][t].append(r)
    mounts = []
    for n in sorted(by):
        for _, m in sorted(intervals(list(by[n].items())).items(), key=lambda kv: kv[0][1:]):
            m["latest"] = m["intervals"][-1] if m["intervals"] else None
            mounts.append({"node": n, **m})
    return {"time": now, "hours": hours, "node": node, "mounts": mounts}
