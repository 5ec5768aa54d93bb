"""Where NØMADE keeps samples: landed as received, then compacted into chunks, then reduced.

Three rooms, each holding one form of the same data:

    sample_log        what agents sent, one row per envelope, appended in the COMMIT that
                      precedes its ACK: the envelope's rows (job uid, t, readings) as one
                      float64 matrix (None as NaN), or msgpack where a value passes 2^53
    sample_chunks     per job, node and four hours (CHUNK_SECONDS) the samples in it, packed by
                      aggregator/store/samplecodec.py, in parts until the window closes;
                      step = 0.  After the raw retention a
                      job's node keeps one chunk with step > 0: its curve at reduced resolution
    sample_summaries  per job and node whose raw samples passed the retention: how many, when,
                      and per reading its peak, mean, p95, first and last value

Compaction (`compact`) moves the oldest landed envelopes into chunks in one transaction: each
window they touch gets a new part, and windows that have closed are merged into one chunk (a
time stored twice, as a replayed envelope can bring, kept once); the envelopes are deleted in
the same transaction.  A crash before its COMMIT leaves everything
as it was; a sample is never in no room or in two.  Every read (`series`) takes all three
rooms (and the table of the layout before this one, `samples_v1`, while `migrate_v1` moves
it), so a sample is visible from the COMMIT that acknowledged it, compacted or not.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from aggregator.store import samplecodec as codec
from aggregator.store.sqlite.core import bump
from nomade_common.wire import SAMPLE_FIELDS

# One chunk per job, node and four hours: 1,440 samples at the agent's 10 s, enough that the
# page a chunk leaves part-empty costs little per sample.  Until its window closes, a chunk
# grows in parts (one per compaction); the first compaction after it closes merges them.
CHUNK_SECONDS = 4 * 3600.0
REDUCED_POINTS = 200  # a job's curve on one node after the raw retention, at most (≥ 100)
WIDTH = len(SAMPLE_FIELDS)  # job uid, t, readings
FIELDS = codec.FIELDS
COL = {name: i for i, name in enumerate(FIELDS)}
_FLOAT_LOG, _PACKED_LOG = b"F", b"M"
LEGACY = "samples_v1"  # the one-row-per-sample table of schema versions 1 to 8
# Readings that only grow (counters): a reduced curve keeps each bucket's last value; the
# others (memory, processes) the bucket's largest.
GAUGES = frozenset(
    {
        "mem_current_bytes",
        "mem_rss_bytes",
        "mem_cache_bytes",
        "mem_swap_bytes",
        "mem_limit_bytes",
        "nprocs",
    }
)


# -- landing -----------------------------------------------------------------------------------
def land(conn: sqlite3.Connection, node: str, rows: list[list[Any]], now: float) -> None:
    """Append ROWS of NODE (each [job_uid, t, *readings], checked) as received: as one float64
    matrix (None as NaN; what the compactor reads without decoding), or as msgpack where a
    value passes 2^53, which a double cannot hold exactly."""
    if not rows:
        return
    m = np.array(rows, dtype=np.float64)
    if m.shape != (len(rows), WIDTH) or np.nanmax(m, initial=0.0) >= codec.EXACT:
        blob = _PACKED_LOG + msgpack.packb(rows)
    else:
        blob = _FLOAT_LOG + m.tobytes()
    uids = "," + ",".join(map(str, dict.fromkeys(r[0] for r in rows))) + ","
    conn.execute(
        "INSERT INTO sample_log (node, t, n, uids, rows) VALUES (?, ?, ?, ?, ?)",
        (node, now, len(rows), uids, blob),
    )


@dataclass
class Block:
    """Samples of one source: a float64 matrix (job uid, t, readings; NaN for None) and the
    integer reading columns a double cannot hold exactly, by column of M."""

    m: np.ndarray
    exact: dict[int, np.ndarray] = field(default_factory=dict)


def _log_block(blob: bytes) -> Block:
    kind, body = blob[:1], blob[1:]
    if kind == _FLOAT_LOG:
        return Block(np.frombuffer(body, dtype=np.float64).reshape(-1, WIDTH))
    m, exact = codec.matrix(msgpack.unpackb(body), SAMPLE_FIELDS)
    return Block(m, exact)


def _chunk_block(uid: int, data: bytes) -> Block:
    chunk = codec.decode(data)
    m = np.empty((chunk.n, WIDTH))
    m[:, 0] = uid
    exact = {}
    for c in range(len(FIELDS)):
        m[:, c + 1] = chunk.column(c)
        if (
            chunk.kind[c] == codec.INTEGER
            and chunk.n
            and np.abs(chunk.ints[:, c]).max() >= codec.EXACT
        ):
            exact[c + 1] = chunk.ints[:, c].copy()
    return Block(m, exact)


def _rows_block(rows: list[tuple]) -> Block:
    """Rows [job_uid, t, *readings] (Python numbers) as a Block."""
    m, exact = codec.matrix(rows, SAMPLE_FIELDS)
    return Block(m, exact)


def _concat(blocks: list[Block]) -> Block:
    if len(blocks) == 1:
        return blocks[0]
    m = np.concatenate([b.m for b in blocks]) if blocks else np.empty((0, WIDTH))
    exact: dict[int, np.ndarray] = {}
    for c in {c for b in blocks for c in b.exact}:
        parts = []
        for b in blocks:
            if c in b.exact:
                parts.append(b.exact[c])
            else:
                parts.append(np.nan_to_num(b.m[:, c]).astype(np.int64))
        exact[c] = np.concatenate(parts)
    return Block(m, exact)


def _take(block: Block, index: np.ndarray | slice) -> Block:
    return Block(block.m[index], {c: v[index] for c, v in block.exact.items()})


def _sorted_unique(block: Block) -> Block:
    """BLOCK's rows by time, the first of any rows with one time kept (rows of one series)."""
    if len(block.m) < 2:
        return block
    t = block.m[:, 1]
    order = np.argsort(t, kind="stable")
    st = t[order]
    keep = np.concatenate([[True], st[1:] != st[:-1]])
    return _take(block, order[keep])


def _encode(block: Block) -> bytes:
    return codec.encode(block.m[:, 1:], {c - 1: v for c, v in block.exact.items()})


# -- compaction --------------------------------------------------------------------------------
def sample_backlog(conn: sqlite3.Connection) -> dict[str, Any]:
    """What waits in the landing room: envelopes, samples and the oldest one's arrival."""
    row = conn.execute("SELECT count(*), coalesce(sum(n), 0), min(t) FROM sample_log").fetchone()
    return {"envelopes": row[0], "samples": row[1], "oldest": row[2]}


def compaction_due(conn: sqlite3.Connection, older_than: float, max_envelopes: int) -> bool:
    """Whether landed envelopes wait for compaction: one arrived before OLDER_THAN, or more
    than MAX_ENVELOPES wait (by their ids: no scan)."""
    first = conn.execute("SELECT id, t FROM sample_log ORDER BY id LIMIT 1").fetchone()
    if first is None:
        return False
    last = conn.execute("SELECT max(id) FROM sample_log").fetchone()[0]
    return first[1] < older_than or last - first[0] + 1 > max_envelopes


@dataclass
class Plan:
    """A compaction prepared on a read snapshot: the landed envelopes up to id UPTO
    (ENVELOPES of them, SAMPLES samples) and the chunks to write, each with the ids of the
    chunks it replaces (none: a new part of its window)."""

    upto: int
    envelopes: int
    samples: int
    chunks: list[tuple]  # (job_uid, node, t0, n, first_t, last_t, data, replaces)


SEAL_WINDOWS = 200  # closed windows one plan merges into one chunk each, at most


def plan_compaction(
    conn: sqlite3.Connection,
    older_than: float,
    max_samples: int,
    max_envelopes: int = 0,
    now: float | None = None,
) -> Plan | None:
    """On a snapshot of CONN (a read connection: nothing is locked while it encodes): the
    oldest landed envelopes (those that arrived before OLDER_THAN, or all but the newest
    MAX_ENVELOPES when more wait; at most about MAX_SAMPLES samples) as new parts of their
    (job, node, window) chunks, encoded without touching what is stored; and windows that
    closed before NOW (sample time) and hold several parts, each merged into one chunk.
    None when nothing is due."""
    now = time.time() if now is None else now
    with snapshot(conn):
        last = conn.execute("SELECT max(id) FROM sample_log").fetchone()[0]
        picked: list[tuple[int, str, bytes]] = []
        total = 0
        if last is not None:
            by_age = conn.execute(
                "SELECT max(id) FROM sample_log WHERE id <= ? AND t < ?", (last, older_than)
            ).fetchone()[0]
            upto = max(by_age or 0, last - max_envelopes if max_envelopes else 0)
            for row in conn.execute(
                "SELECT id, node, n, rows FROM sample_log WHERE id <= ? ORDER BY id", (upto,)
            ):
                picked.append((row[0], row[1], row[3]))
                total += row[2]
                if total >= max_samples:
                    break
        by_node: dict[str, list[Block]] = {}
        for _id, node, blob in picked:
            by_node.setdefault(node, []).append(_log_block(blob))
        chunks = []
        for node, blocks in by_node.items():
            chunks += _chunks(node, _windows(_concat(blocks)))
        chunks += _sealed(conn, now)
    if not picked and not chunks:
        return None
    return Plan(picked[-1][0] if picked else 0, len(picked), total, chunks)


def _windows(block: Block) -> list[tuple[int, float, Block]]:
    """BLOCK's rows cut by job and window: (job_uid, t0, rows by time, each time once)."""
    m = block.m
    if not len(m):
        return []
    window = np.floor(m[:, 1] / CHUNK_SECONDS) * CHUNK_SECONDS
    order = np.lexsort((m[:, 1], window, m[:, 0]))
    block = _take(block, order)
    uid, window = block.m[:, 0], window[order]
    cut = np.nonzero((uid[1:] != uid[:-1]) | (window[1:] != window[:-1]))[0] + 1
    starts = [0, *cut.tolist()]
    out = []
    for a, b in zip(starts, [*starts[1:], len(uid)], strict=True):
        part = _take(block, slice(a, b))
        t = part.m[:, 1]
        if not (t[1:] > t[:-1]).all():
            part = _sorted_unique(part)
        out.append((int(uid[a]), float(window[a]), part))
    return out


def _chunks(node: str, windows: list[tuple], replaces: list[tuple] | None = None) -> list[tuple]:
    """WINDOWS of NODE encoded in one pass (samplecodec.encode_many) as chunk rows; REPLACES
    gives each the ids of the chunks it takes the place of."""
    if not windows:
        return []
    parts = [w[2] for w in windows]
    joined = _concat(parts)
    cuts = np.cumsum([0, *[len(p.m) for p in parts[:-1]]])
    blobs = codec.encode_many(joined.m[:, 1:], cuts, {c - 1: v for c, v in joined.exact.items()})
    ids = replaces or [()] * len(windows)
    return [
        (uid, node, t0, len(p.m), float(p.m[0, 1]), float(p.m[-1, 1]), blob, old)
        for (uid, t0, p), blob, old in zip(windows, blobs, ids, strict=True)
    ]


def _merged(conn: sqlite3.Connection, uid: int, node: str, t0: float, extra: Block | None):
    """The parts stored for (UID, NODE, window T0), and EXTRA, as one block, and their ids."""
    ids, blocks = [], []
    for chunk_id, data in conn.execute(
        "SELECT id, data FROM sample_chunks WHERE job_uid = ? AND node = ? AND t0 = ?"
        " AND step = 0 ORDER BY id",
        (uid, node, t0),
    ):
        ids.append(chunk_id)
        blocks.append(_chunk_block(uid, data))
    if extra is not None:
        blocks.append(extra)
    return _sorted_unique(_concat(blocks)), tuple(ids)


def _sealed(conn: sqlite3.Connection, now: float) -> list[tuple]:
    """Windows that closed before NOW and hold several parts, each merged into one chunk."""
    rows = conn.execute(
        "SELECT job_uid, node, t0 FROM sample_chunks WHERE step = 0 AND t0 <= ?"
        " GROUP BY job_uid, node, t0 HAVING count(*) > 1 LIMIT ?",
        (now - CHUNK_SECONDS, SEAL_WINDOWS),
    ).fetchall()
    out = []
    for uid, node, t0 in rows:
        block, ids = _merged(conn, uid, node, t0, None)
        out += _chunks(node, [(uid, t0, block)], [ids])
    return out


def apply_compaction(conn: sqlite3.Connection, plan: Plan | None) -> int:
    """PLAN written in the caller's transaction: its chunks in place of those they replace and
    its envelopes deleted, or nothing when the store changed since it was prepared (another
    compaction took them): the next plan starts again from what is there.  Returns the samples
    moved from the landing room."""
    if plan is None:
        return 0
    have = conn.execute("SELECT count(*) FROM sample_log WHERE id <= ?", (plan.upto,)).fetchone()
    if have[0] != plan.envelopes:
        return 0
    gone = [i for c in plan.chunks for i in c[7]]
    if gone:
        marks = ",".join("?" * len(gone))
        there = conn.execute(
            f"SELECT count(*) FROM sample_chunks WHERE id IN ({marks})", gone
        ).fetchone()[0]
        if there != len(gone):
            return 0
        conn.execute(f"DELETE FROM sample_chunks WHERE id IN ({marks})", gone)
    # Merged chunks first: holding the older samples, they get the older ids, so that where a
    # replay brought a time twice, the value stored first is the one read (as before chunks).
    _write_chunks(conn, sorted(plan.chunks, key=lambda c: not c[7]))
    conn.execute("DELETE FROM sample_log WHERE id <= ?", (plan.upto,))
    if plan.samples:
        bump(conn, "samples_compacted", plan.samples)
    return plan.samples


def compact(
    conn: sqlite3.Connection,
    older_than: float,
    max_samples: int,
    max_envelopes: int = 0,
    now: float | None = None,
) -> int:
    """plan_compaction and apply_compaction on one connection, in the caller's transaction
    (`nomadectl db compact`, tests); returns the samples moved from the landing room."""
    plan = plan_compaction(conn, older_than, max_samples, max_envelopes, now)
    return apply_compaction(conn, plan)


def _write_chunks(conn: sqlite3.Connection, chunks: list[tuple]) -> None:
    conn.executemany(
        "INSERT INTO sample_chunks (job_uid, node, t0, step, n, first_t, last_t, data)"
        " VALUES (?, ?, ?, 0, ?, ?, ?, ?)",
        [c[:7] for c in chunks],
    )


# -- the layout before chunks --------------------------------------------------------------------
def _legacy_exists(conn: sqlite3.Connection) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (LEGACY,)
        ).fetchone()
        is not None
    )


def legacy_left(conn: sqlite3.Connection) -> int | None:
    """Rows the one-row-per-sample table still holds (None: it is gone)."""
    if not conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (LEGACY,)
    ).fetchone():
        return None
    return conn.execute(f"SELECT count(*) FROM {LEGACY}").fetchone()[0]


def migrate_v1(conn: sqlite3.Connection, max_samples: int) -> tuple[int, int | None]:
    """Move about MAX_SAMPLES samples (whole jobs) of the old table into chunks, in the caller's
    transaction; the table is dropped once empty.  Returns (moved, left; None when done)."""
    left = legacy_left(conn)
    if left is None:
        return 0, None
    if left == 0:
        conn.execute(f"DROP TABLE {LEGACY}")
        return 0, None
    uids: list[int] = []
    total = 0
    for uid, count in conn.execute(
        f"SELECT job_uid, count(*) FROM {LEGACY} GROUP BY job_uid ORDER BY job_uid"
    ):
        uids.append(uid)
        total += count
        if total >= max_samples:
            break
    columns = ", ".join(SAMPLE_FIELDS[1:])
    marks = ",".join("?" * len(uids))
    rows = conn.execute(
        f"SELECT node, job_uid, {columns} FROM {LEGACY} WHERE job_uid IN ({marks})", uids
    ).fetchall()
    by_node: dict[str, list[tuple]] = {}
    for r in rows:
        by_node.setdefault(r[0], []).append(tuple(r)[1:])
    for node, node_rows in by_node.items():
        for uid, t0, block in _windows(_rows_block(node_rows)):
            merged, ids = _merged(conn, uid, node, t0, block)
            if ids:
                conn.execute(
                    f"DELETE FROM sample_chunks WHERE id IN ({','.join('?' * len(ids))})", ids
                )
            _write_chunks(conn, _chunks(node, [(uid, t0, merged)]))
    conn.execute(f"DELETE FROM {LEGACY} WHERE job_uid IN ({marks})", uids)
    return len(rows), left - len(rows)


# -- reading ------------------------------------------------------------------------------------
class Series:
    """One job's samples on one node, by time: raw (STEP 0) or its reduced curve (STEP > 0)."""

    def __init__(self, block: Block, step: float = 0.0) -> None:
        self.block, self.step = block, step

    def __len__(self) -> int:
        return len(self.block.m)

    @property
    def t(self) -> np.ndarray:
        return self.block.m[:, 1]

    def column(self, name: str) -> np.ndarray:
        """Reading NAME as float64, NaN where not available."""
        return self.block.m[:, COL[name] + 1]

    def largest(self, name: str) -> int | float | None:
        """Reading NAME's largest value, exactly (None: not available)."""
        c = COL[name] + 1
        column = self.block.m[:, c]
        present = ~np.isnan(column)
        if not present.any():
            return None
        if c in self.block.exact:
            return int(self.block.exact[c][present].max())
        top = float(column[present].max())
        return top if name in codec.FLOAT_FIELDS else int(top)

    def values(self, name: str, index: np.ndarray | None = None) -> list[Any]:
        """Reading NAME (at INDEX) exactly as the agent sent it: ints, floats and None."""
        c = COL[name] + 1
        column = self.block.m[:, c] if index is None else self.block.m[index, c]
        nan = np.isnan(column)
        if c in self.block.exact:
            ex = self.block.exact[c] if index is None else self.block.exact[c][index]
            items = ex.tolist()
        elif name in codec.FLOAT_FIELDS:
            items = column.tolist()
        else:
            filled = np.where(nan, 0.0, column)
            if (filled == np.floor(filled)).all() and filled.max(initial=0.0) < 2.0**63:
                items = filled.astype(np.int64).tolist()
            else:  # a fraction (or a value past 2^63) in an integer field: as it came
                items = [int(v) if v.is_integer() and v < 2.0**63 else v for v in filled.tolist()]
        if nan.any():
            items = [None if n else v for v, n in zip(items, nan.tolist(), strict=True)]
        return items


@contextlib.contextmanager
def snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """The reads inside see the store as of one moment (one read transaction), so that a
    compaction committing between them cannot hide samples it moved from one room to another.
    Inside a transaction already (the writer's), nothing more is needed."""
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")


Rooms = dict[tuple[int, str], list[Block]]


def _gather(
    conn: sqlite3.Connection, uid: int | None, since: float | None = None
) -> tuple[Rooms, dict[tuple[int, str], tuple[Block, float]]]:
    """The raw blocks per (job uid, node) from every room, and the reduced curves with their
    step: of job UID, or of every job (None).  The caller holds a snapshot."""
    raw: Rooms = {}
    reduced: dict[tuple[int, str], tuple[Block, float]] = {}
    where, args = ("job_uid = ?", [uid]) if uid is not None else ("1", [])
    if since is not None:
        where += " AND last_t >= ?"
        args.append(since)
    for job, node, step, data in conn.execute(
        f"SELECT job_uid, node, step, data FROM sample_chunks WHERE {where} ORDER BY t0, id", args
    ):
        if step:
            reduced[(job, node)] = (_chunk_block(job, data), step)
        else:
            raw.setdefault((job, node), []).append(_chunk_block(job, data))
    log_sql = "SELECT node, rows FROM sample_log"
    log_args: tuple = ()
    if uid is not None:
        log_sql += " WHERE instr(uids, ?)"
        log_args = (f",{uid},",)
    for node, blob in conn.execute(log_sql + " ORDER BY id", log_args):
        b = _log_block(blob)
        jobs = [uid] if uid is not None else np.unique(b.m[:, 0]).astype(np.int64).tolist()
        for job in jobs:
            raw.setdefault((job, node), []).append(_take(b, np.nonzero(b.m[:, 0] == job)[0]))
    if _legacy_exists(conn):
        columns = ", ".join(SAMPLE_FIELDS[1:])
        legacy_where = "WHERE job_uid = ?" if uid is not None else ""
        by: dict[tuple[int, str], list[tuple]] = {}
        for r in conn.execute(
            f"SELECT node, job_uid, {columns} FROM {LEGACY} {legacy_where}",
            (uid,) if uid is not None else (),
        ):
            by.setdefault((r[1], r[0]), []).append(tuple(r)[1:])
        for key, rows in by.items():
            raw.setdefault(key, []).append(_rows_block(rows))
    return raw, reduced


def _assemble(raw: list[Block], reduced: tuple[Block, float] | None) -> Series:
    """One node's series: its reduced curve (when the raw retention passed) followed by raw
    samples that arrived after it, by time."""
    parts = ([reduced[0]] if reduced else []) + raw
    return Series(_sorted_unique(_concat(parts)), reduced[1] if reduced else 0.0)


def series(conn: sqlite3.Connection, uid: int, *, since: float | None = None) -> dict[str, Series]:
    """Job UID's samples per node (by node name), from every room as of one moment; only those
    at or after SINCE when given.  A node whose raw samples passed the retention gives its
    reduced curve (step > 0), with any samples that arrived later."""
    with snapshot(conn):
        raw, reduced = _gather(conn, uid, since)
    out: dict[str, Series] = {}
    for key in sorted(set(raw) | set(reduced)):
        s = _assemble(raw.get(key, []), reduced.get(key))
        if since is not None:
            s = Series(_take(s.block, np.nonzero(s.t >= since)[0]), s.step)
        if len(s):
            out[key[1]] = s
    return out


def summary_of(s: Series) -> dict[str, Any]:
    """What `nomadectl job` shows per node, and every reading's peak, mean, p95, first, last."""

    def largest(*names: str) -> int:
        return max((s.largest(n) or 0 for n in names), default=0) if len(s) else 0

    cpu = s.largest("cpu_usage_seconds")
    has_mem = int((~np.isnan(s.column("mem_peak_bytes"))).sum())
    has_io = int(
        (~np.isnan(s.column("proc_read_bytes"))).sum()
        + (~np.isnan(s.column("cgroup_read_bytes"))).sum()
    )
    stats = {}
    for name in FIELDS[1:]:
        v = s.column(name)
        v = v[~np.isnan(v)]
        if len(v):
            stats[name] = {
                "peak": s.largest(name),
                "mean": float(v.mean()),
                "p95": float(np.percentile(v, 95)),
                "first": float(v[0]),
                "last": float(v[-1]),
                "count": len(v),
            }
    return {
        "samples": len(s),
        "first_t": float(s.t[0]),
        "last_t": float(s.t[-1]),
        "cpu_seconds": cpu,
        "mem_peak_bytes": largest("mem_peak_bytes", "mem_current_bytes"),
        "read_bytes": largest("proc_read_bytes", "cgroup_read_bytes"),
        "write_bytes": largest("proc_write_bytes", "cgroup_write_bytes"),
        "has_mem": has_mem,
        "has_io": has_io,
        "readings": stats,
    }


def merge_summaries(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary of a series summarised in PARTS (a summary kept at the retention and one of
    samples that came later): counts added, peaks the largest, means weighted by their counts,
    first and last from the earliest and latest part; p95 the largest of the parts' (an upper
    bound of the whole's)."""
    if len(parts) == 1:
        return parts[0]
    parts = sorted(parts, key=lambda p: p["first_t"])

    def top(key: str):
        values = [p[key] for p in parts if p.get(key) is not None]
        return max(values) if values else None

    readings: dict[str, dict[str, Any]] = {}
    for name in {n for p in parts for n in p.get("readings", {})}:
        have = [p["readings"][name] for p in parts if name in p.get("readings", {})]
        counts = [h.get("count", 1) for h in have]
        readings[name] = {
            "peak": max(h["peak"] for h in have),
            "mean": sum(h["mean"] * c for h, c in zip(have, counts, strict=True)) / sum(counts),
            "p95": max(h["p95"] for h in have),
            "first": have[0]["first"],
            "last": have[-1]["last"],
            "count": sum(counts),
        }
    return {
        "samples": sum(p["samples"] for p in parts),
        "first_t": parts[0]["first_t"],
        "last_t": max(p["last_t"] for p in parts),
        "cpu_seconds": top("cpu_seconds"),
        "mem_peak_bytes": top("mem_peak_bytes") or 0,
        "read_bytes": top("read_bytes") or 0,
        "write_bytes": top("write_bytes") or 0,
        "has_mem": sum(p["has_mem"] for p in parts),
        "has_io": sum(p["has_io"] for p in parts),
        "readings": readings,
    }


def _stored_summaries(conn: sqlite3.Connection, uid: int) -> dict[str, dict[str, Any]]:
    out = {}
    for node, samples, first_t, last_t, stats in conn.execute(
        "SELECT node, samples, first_t, last_t, stats_json FROM sample_summaries WHERE job_uid = ?",
        (uid,),
    ):
        out[node] = json.loads(stats) | {"samples": samples, "first_t": first_t, "last_t": last_t}
    return out


def node_summaries(conn: sqlite3.Connection, uid: int) -> list[dict[str, Any]]:
    """Per node of job UID, by node name: the summary of its samples (summary_of), from the
    raw samples where they are kept, the summary kept when they were reduced, or both merged
    where samples came after the reduction."""
    with snapshot(conn):
        raw, _reduced = _gather(conn, uid)
        stored = _stored_summaries(conn, uid)
    out: dict[str, dict[str, Any]] = {}
    for (_uid, node), blocks in raw.items():
        out[node] = summary_of(Series(_sorted_unique(_concat(blocks))))
    for node, summary in stored.items():
        out[node] = merge_summaries([summary, out[node]]) if node in out else summary
    return [{"node": node, **out[node]} for node in sorted(out)]


def picked(n: int, points: int) -> np.ndarray:
    """At most about POINTS indexes of N evenly spaced, the last always among them."""
    step = max(1, -(-n // points))
    index = np.arange(0, n, step)
    if n and index[-1] != n - 1:
        index = np.append(index, n - 1)
    return index


def sampled_totals(conn: sqlite3.Connection, uid: int) -> tuple[int | None, float | None]:
    """What NØMADE's agents sampled of job UID: its largest memory peak on a node, and its CPU
    seconds summed over its nodes (None: none sampled)."""
    nodes = node_summaries(conn, uid)
    peaks = [
        n["readings"]["mem_peak_bytes"]["peak"]
        for n in nodes
        if "mem_peak_bytes" in n.get("readings", {})
    ]
    cpu = [n["cpu_seconds"] for n in nodes if n["cpu_seconds"] is not None]
    return (
        min(int(max(peaks)), (1 << 63) - 1) if peaks else None,
        float(sum(cpu)) if cpu else None,
    )


def recent_uids(conn: sqlite3.Connection, since: float) -> set[int]:
    """Jobs with samples at or after SINCE in any room."""
    with snapshot(conn):
        uids = {
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT job_uid FROM sample_chunks WHERE last_t >= ?", (since,)
            )
        }
        for (text,) in conn.execute("SELECT uids FROM sample_log"):
            uids.update(int(u) for u in text.strip(",").split(",") if u)
        if _legacy_exists(conn):
            uids.update(
                r[0]
                for r in conn.execute(
                    f"SELECT DISTINCT job_uid FROM {LEGACY} WHERE t >= ?", (since,)
                )
            )
    return uids


# -- retention ----------------------------------------------------------------------------------
def reduce_old(conn: sqlite3.Connection, cutoff: float, max_series: int) -> int:
    """Series (job and node) whose newest raw sample is older than CUTOFF and that nothing
    newer waits for: their raw chunks replaced by a summary (sample_summaries) and their curve
    at reduced resolution (at most REDUCED_POINTS samples, at least 100 where they had that
    many); a series reduced before (samples came after its reduction) has the new samples
    merged into its summary and curve.  At most MAX_SERIES per call, in the caller's
    transaction; returns how many."""
    old = conn.execute(
        "SELECT job_uid, node FROM sample_chunks WHERE step = 0 GROUP BY job_uid, node"
        " HAVING max(last_t) < ? LIMIT ?",
        (cutoff, max_series),
    ).fetchall()
    done = 0
    for uid, node in old:
        if conn.execute(
            "SELECT 1 FROM sample_log WHERE node = ? AND instr(uids, ?) LIMIT 1",
            (node, f",{uid},"),
        ).fetchone():
            continue  # samples of it still landing: not done yet
        raw: list[Block] = []
        before: tuple[Block, float] | None = None
        for step, data in conn.execute(
            "SELECT step, data FROM sample_chunks WHERE job_uid = ? AND node = ? ORDER BY t0, id",
            (uid, node),
        ):
            if step:
                before = (_chunk_block(uid, data), step)
            else:
                raw.append(_chunk_block(uid, data))
        summary = summary_of(Series(_sorted_unique(_concat(raw))))
        kept = _stored_summaries(conn, uid).get(node)
        if kept is not None:
            summary = merge_summaries([kept, summary])
        curve, step = _reduced(_assemble(raw, before))
        conn.execute("DELETE FROM sample_chunks WHERE job_uid = ? AND node = ?", (uid, node))
        conn.execute(
            "INSERT OR REPLACE INTO sample_summaries VALUES (?, ?, ?, ?, ?, ?)",
            (
                uid,
                node,
                summary.pop("samples"),
                summary.pop("first_t"),
                summary.pop("last_t"),
                json.dumps(summary),
            ),
        )
        t = curve.m[:, 1]
        conn.execute(
            "INSERT INTO sample_chunks (job_uid, node, t0, step, n, first_t, last_t, data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (uid, node, float(t[0]), step, len(t), float(t[0]), float(t[-1]), _encode(curve)),
        )
        done += 1
    if done:
        bump(conn, "series_reduced", done)
    return done


def _reduced(s: Series) -> tuple[Block, float]:
    """S at most REDUCED_POINTS samples: equal time buckets, each the bucket's last sample with
    the gauges' largest value in it; S itself when it is that short.  And the bucket length."""
    n = len(s)
    if n <= REDUCED_POINTS:
        span = float(s.t[-1] - s.t[0]) if n > 1 else 0.0
        return s.block, max(span / max(n - 1, 1), 1e-3)
    t = s.t
    span = float(t[-1] - t[0]) or 1.0
    step = span / REDUCED_POINTS
    bucket = np.minimum(((t - t[0]) / step).astype(np.int64), REDUCED_POINTS - 1)
    starts = np.concatenate([[0], np.nonzero(bucket[1:] != bucket[:-1])[0] + 1])
    ends = np.concatenate([starts[1:], [n]]) - 1
    block = _take(s.block, ends)
    m = block.m.copy()
    for name in GAUGES:
        c = COL[name] + 1
        column = s.block.m[:, c]
        if np.isnan(column).all():
            continue
        filled = np.where(np.isnan(column), -np.inf, column)
        peak = np.maximum.reduceat(filled, starts)
        m[:, c] = np.where(np.isinf(peak), np.nan, peak)
    exact = dict(block.exact)
    return Block(m, exact), step


# -- what `nomadectl db` shows ------------------------------------------------------------------
def sample_sizes(conn: sqlite3.Connection) -> dict[str, Any]:
    """Per room of samples and readings: rows and bytes on disk; the oldest raw sample."""
    out: dict[str, Any] = {}
    try:
        pages = dict(conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall())
    except sqlite3.Error:
        pages = {}
    for table in (
        "sample_log",
        "sample_chunks",
        "sample_summaries",
        LEGACY,
        "readings",
        "readings_latest",
    ):
        try:
            rows = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        except sqlite3.OperationalError:
            continue
        indexes = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?", (table,)
            )
        ]
        out[table] = {
            "rows": rows,
            "bytes": (pages.get(table) or 0) + sum(pages.get(i) or 0 for i in indexes)
            if pages
            else None,
        }
    chunks = conn.execute(
        "SELECT coalesce(sum(n), 0), min(first_t), count(DISTINCT job_uid) FROM sample_chunks"
        " WHERE step = 0"
    ).fetchone()
    reduced = conn.execute(
        "SELECT coalesce(sum(n), 0), count(*) FROM sample_chunks WHERE step > 0"
    ).fetchone()
    out["raw_samples"] = chunks[0]
    out["raw_oldest"] = chunks[1]
    out["raw_jobs"] = chunks[2]
    out["reduced_samples"] = reduced[0]
    out["reduced_series"] = reduced[1]
    return out


def all_samples(conn: sqlite3.Connection) -> list[tuple]:
    """Every raw sample in every room as (job_uid, node, t, *readings), by job, node and time,
    as of one moment: for checks that nothing was lost or duplicated."""
    with snapshot(conn):
        raw, _reduced = _gather(conn, None)
    out = []
    for (uid, node), blocks in sorted(raw.items()):
        s = Series(_sorted_unique(_concat(blocks)))
        columns = [s.values(name) for name in FIELDS]
        out += [(uid, node, *row) for row in zip(*columns, strict=True)]
    return out
