"""Bytes the store needs per node and day for samples, and how fast one long job's series reads.

The day: NODES simulated nodes, each running 16 jobs at a time sampled every 10 s (8,640
cycles), replayed from samples NØMADE's agent recorded of real jobs on the dev cluster
(bench/data/agent-samples-v1.csv.gz, taken every 2 s; every 5th sample is used, from each of
the 5 offsets, so successive samples are 10 s apart with the recorded jitter and noise).  Each
of a node's 16 slots runs one job after another, each lasting 1 to 8 hours (seeded) and of one
recorded kind (cpu1, memgrow, iowrite, idle, ...): a job plays that kind's recorded series one
after another in a shuffled order, so that no stretch of noise repeats within a chunk, its
counters (CPU seconds, bytes and calls) carried on from where the last series ended and its
gauges (memory, processes) as recorded.

The samples go through the store as the aggregator writes them: one landed envelope per node
and cycle (`samples.land`), compacted every simulated minute as the compactor does with the
default aggregator.samples_compact_after_seconds, and a last compaction at the end.

    value     MB per node per day: the pages of sample_chunks and its indexes (dbstat)
    baseline  the same samples in the row layout NØMADE used before (schema versions 1 to 8:
              one row per sample, its unique index), written in the same run

The read: one job of a week (60,000 samples at 10 s on one node), built the same way, read
as `nomadectl job` and the API read it (aggregator.views.query.job: per-node summary and the
series of 120 points) 30 times; read_p95_ms, beside the same read of the row layout.

    python bench/storage.py [--quick] [--nodes 4]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aggregator import store  # noqa: E402
from aggregator.store.sqlite import samples  # noqa: E402
from aggregator.views import query  # noqa: E402
from nomade_common.wire import SAMPLE_FIELDS  # noqa: E402

DATA = REPO / "bench" / "data" / "agent-samples-v1.csv.gz"
INTERVAL = 10.0
DAY_CYCLES = 8640
SLOTS = 16
WEEK_SAMPLES = 60_000
READINGS = SAMPLE_FIELDS[2:]
# Readings that only grow: carried on across the passes of a replayed series.
COUNTERS = frozenset(
    f for f in READINGS if f.endswith("_seconds") or f.startswith(("proc_", "cgroup_"))
) | {"mem_peak_bytes"}
T0 = float(int(time.time()) - 20 * 86400)


def recorded() -> list[dict]:
    """The recorded series at 10 s: each job's 2 s samples taken every 5th, from each of the 5
    offsets (5 different 10 s series of the same job, with their own noise):
    {"name", "t": [...], "cols": {field: [...]}, "digits": {field: decimals}}."""
    by: dict[tuple[str, str], list[dict]] = {}
    with gzip.open(DATA, "rt") as f:
        for row in csv.DictReader(f):
            by.setdefault((row["node"], row["job_id"]), []).append(row)
    out = []
    for (_node, _job), rows in sorted(by.items()):
        rows.sort(key=lambda r: float(r["t"]))
        for offset in range(5):
            picked = rows[offset::5]
            if len(picked) < 12:
                continue
            cols = {f: [_number(r[f]) for r in picked] for f in READINGS}
            out.append(
                {
                    "name": picked[0]["job_name"],
                    "t": [float(r["t"]) for r in picked],
                    "cols": cols,
                    "digits": {f: _digits(cols[f]) for f in READINGS},
                }
            )
    return out


def _digits(values: list) -> int | None:
    """The decimals a recorded column's values carry (seconds from nanoseconds: 9; from 10 ms
    ticks: 2), so that a counter carried on across passes is rounded as the agent's own
    figures are rather than gaining float noise; None for integers."""
    floats = [v for v in values if isinstance(v, float)]
    if not floats:
        return None
    for k in range(10):
        if all(round(v, k) == v for v in floats):
            return k
    return None


def _number(text: str):
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        return float(text)


def play(pool: list[dict], cycles: int, rng: random.Random):
    """CYCLES samples of one job that runs as the recorded series of POOL (one kind of job),
    one after another in a shuffled order, each to its end, shuffled again when all have
    played: no stretch of noise repeats within a chunk.  Counters (CPU seconds, bytes,
    calls) carry on from where the last series ended; gauges are as recorded.  Yields
    (seconds since the previous sample, readings)."""
    carry = dict.fromkeys(COUNTERS, 0)
    order: list[dict] = []
    i = 0
    while True:
        if not order:
            order = rng.sample(pool, len(pool))
        series = order.pop()
        t, cols, digits = series["t"], series["cols"], series["digits"]
        for k in range(len(t)):
            if i == cycles:
                return
            values = []
            for f in READINGS:
                v = cols[f][k]
                if v is not None and f in COUNTERS and carry[f]:
                    v = v + carry[f]
                    if digits[f] is not None:
                        v = round(v, digits[f])
                values.append(v)
            yield (t[k] - t[k - 1] if k else INTERVAL) if i else 0.0, values
            i += 1
        for f in COUNTERS:
            last = cols[f][-1]
            if last is not None:
                carry[f] = (carry[f] or 0) + last


def day_rows(node: int, pool: list[dict], rng: random.Random, cycles: int):
    """Per cycle, NODE's 16 samples [job_id, t, *readings]: slots running job after job, each
    job of one recorded kind."""
    kinds: dict[str, list[dict]] = {}
    for series in pool:
        kinds.setdefault(series["name"], []).append(series)
    slots = [{"left": 0} for _ in range(SLOTS)]
    next_id = 1_000_000 * (node + 1)
    for c in range(cycles):
        rows = []
        for s in slots:
            if s["left"] <= 0:
                next_id += 1
                length = int(rng.uniform(1, 8) * 360)
                kind = kinds[rng.choice(sorted(kinds))]
                s.update(
                    job=next_id,
                    left=length,
                    gen=play(kind, length, rng),
                    t=T0 + c * INTERVAL + rng.random() * INTERVAL,
                )
            dt, values = next(s["gen"])
            s["t"] += dt if dt > 0 else 0.0
            s["left"] -= 1
            rows.append([s["job"], s["t"], *values])
        yield rows


# -- the layout before chunks, for the baseline --------------------------------------------------
def _v1_schema(conn: sqlite3.Connection) -> None:
    columns = ", ".join(f"{n} {'REAL' if n.endswith('_seconds') else 'INTEGER'}" for n in READINGS)
    conn.execute(
        f"CREATE TABLE samples (job_uid INTEGER NOT NULL, node TEXT NOT NULL, t REAL NOT NULL,"
        f" {columns})"
    )
    conn.execute("CREATE UNIQUE INDEX samples_key ON samples (job_uid, node, t)")


def _v1_insert(conn: sqlite3.Connection, node: str, rows: list[list]) -> None:
    marks = ", ".join("?" * (len(READINGS) + 3))
    conn.executemany(
        f"INSERT OR IGNORE INTO samples (node, job_uid, t, {', '.join(READINGS)}) VALUES ({marks})",
        [(node, *r) for r in rows],
    )


def _bytes(conn: sqlite3.Connection, names: tuple[str, ...]) -> int:
    rows = conn.execute(
        f"SELECT sum(pgsize) FROM dbstat WHERE name IN ({','.join('?' * len(names))})", names
    ).fetchone()
    return rows[0] or 0


# -- the day -----------------------------------------------------------------------------------
def simulate_day(tmp: Path, nodes: int, cycles: int, pool: list[dict]) -> dict:
    conn = store.open_store(str(tmp / "chunks.db"))
    old = sqlite3.connect(tmp / "rows.db", isolation_level=None)
    old.execute("PRAGMA journal_mode = WAL")
    _v1_schema(old)
    ingest = store.Ingest("bench")
    uids: dict[int, int] = {}
    total, t_land, t_compact = 0, 0.0, 0.0
    for node in range(nodes):
        name = f"simnode-{node}"
        rng = random.Random(20261206 + node)
        conn.execute("BEGIN IMMEDIATE")
        old.execute("BEGIN")
        for c, rows in enumerate(day_rows(node, pool, rng, cycles)):
            for r in rows:
                uid = uids.get(r[0])
                if uid is None:
                    uid = uids[r[0]] = ingest.job_uid(conn, r[0], T0, r[1])
                r[0] = uid
            t = time.perf_counter()
            samples.land(conn, name, rows, T0 + c * INTERVAL)
            t_land += time.perf_counter() - t
            _v1_insert(old, name, rows)
            total += len(rows)
            if c % 6 == 5:  # a simulated minute: the compactor's default age
                t = time.perf_counter()
                store.compact(conn, T0 + c * INTERVAL + 1, 10**9, now=T0 + c * INTERVAL)
                t_compact += time.perf_counter() - t
                conn.execute("COMMIT")
                conn.execute("BEGIN IMMEDIATE")
        t = time.perf_counter()
        store.compact(conn, float("inf"), 10**9, now=float("inf"))  # every window closed
        t_compact += time.perf_counter() - t
        conn.execute("COMMIT")
        old.execute("COMMIT")
    assert store.sample_backlog(conn)["envelopes"] == 0
    indexes = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE tbl_name = 'sample_chunks' AND type = 'index'"
        )
    ]
    chunk_bytes = _bytes(conn, ("sample_chunks", *indexes))
    row_bytes = _bytes(old, ("samples", "samples_key"))
    chunks = conn.execute("SELECT count(*), sum(n) FROM sample_chunks").fetchone()
    if chunks[1] != total:
        raise SystemExit(f"the chunks hold {chunks[1]} samples, {total} were landed")
    scale = DAY_CYCLES / cycles / nodes / 1e6
    return {
        "samples": total,
        "chunks": chunks[0],
        "mb_per_node_day": chunk_bytes * scale,
        "rows_mb_per_node_day": row_bytes * scale,
        "bytes_per_sample": chunk_bytes / total,
        "rows_bytes_per_sample": row_bytes / total,
        "land_us_per_sample": t_land / total * 1e6,
        "compact_us_per_sample": t_compact / total * 1e6,
    }


# -- the week-long job -------------------------------------------------------------------------
def week_job(tmp: Path, pool: list[dict], repeats: int) -> dict:
    conn = store.open_store(str(tmp / "week.db"))
    old = sqlite3.connect(tmp / "week-rows.db", isolation_level=None)
    _v1_schema(old)
    ingest = store.Ingest("bench")
    kinds: dict[str, list[dict]] = {}
    for s in pool:
        kinds.setdefault(s["name"], []).append(s)
    busiest = max(kinds.values(), key=lambda k: sum(len(s["t"]) for s in k))
    conn.execute("BEGIN IMMEDIATE")
    uid = ingest.job_uid(conn, 4242, T0, T0)
    conn.execute(
        "UPDATE jobs SET start_time = ?, end_time = ?, user = 'alice' WHERE uid = ?",
        (T0, T0 + WEEK_SAMPLES * INTERVAL, uid),
    )
    t = T0
    batch: list[list] = []
    old.execute("BEGIN")
    for i, (dt, values) in enumerate(play(busiest, WEEK_SAMPLES, random.Random(7))):
        t += dt
        batch.append([uid, t, *values])
        if len(batch) == 360 or i == WEEK_SAMPLES - 1:
            samples.land(conn, "node1", batch, T0)
            _v1_insert(old, "node1", batch)
            batch = []
    store.compact(conn, float("inf"), 10**9, now=float("inf"))
    conn.execute("COMMIT")
    old.execute("COMMIT")
    reader = store.connect(str(tmp / "week.db"), readonly=True)
    times = []
    for _ in range(repeats):
        t1 = time.perf_counter()
        job = query.job(reader, 4242)
        times.append(time.perf_counter() - t1)
    assert job is not None and job["nodes"][0]["samples"] == WEEK_SAMPLES, job and job["nodes"]
    old_times = []
    for _ in range(repeats):
        t1 = time.perf_counter()
        _v1_read(old, uid)
        old_times.append(time.perf_counter() - t1)
    return {
        "read_p95_ms": _p95(times) * 1e3,
        "read_median_ms": statistics.median(times) * 1e3,
        "rows_read_p95_ms": _p95(old_times) * 1e3,
        "week_chunks": reader.execute("SELECT count(*) FROM sample_chunks").fetchone()[0],
    }


def _v1_read(old: sqlite3.Connection, uid: int) -> None:
    """What the row layout's `nomadectl job` read: the per-node summary and all samples."""
    old.execute(
        "SELECT node, count(*), min(t), max(t), max(cpu_usage_seconds),"
        " max(max(coalesce(mem_peak_bytes, 0), coalesce(mem_current_bytes, 0))),"
        " max(max(coalesce(proc_read_bytes, 0), coalesce(cgroup_read_bytes, 0))),"
        " max(max(coalesce(proc_write_bytes, 0), coalesce(cgroup_write_bytes, 0))),"
        " count(mem_peak_bytes), count(proc_read_bytes) + count(cgroup_read_bytes)"
        " FROM samples WHERE job_uid = ? GROUP BY node",
        (uid,),
    ).fetchall()
    rows = old.execute(
        "SELECT node, t, cpu_usage_seconds, mem_current_bytes, proc_read_bytes, proc_write_bytes"
        " FROM samples WHERE job_uid = ? ORDER BY node, t",
        (uid,),
    ).fetchall()
    [dict(zip(("node", "t", "c", "m", "r", "w"), r, strict=True)) for r in rows]


def _p95(values: list[float]) -> float:
    return float(np.percentile(values, 95))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one node, a quarter day: under 30 s")
    ap.add_argument("--nodes", type=int, default=4)
    args = ap.parse_args()
    nodes, cycles = (1, DAY_CYCLES // 4) if args.quick else (args.nodes, DAY_CYCLES)
    pool = recorded()
    with tempfile.TemporaryDirectory(prefix="nomade-bench-storage-") as tmp:
        day = simulate_day(Path(tmp), nodes, cycles, pool)
        week = week_job(Path(tmp), pool, 10 if args.quick else 30)
    for k, v in {**day, **week}.items():
        print(f"{k:>24}: {v:,.3f}" if isinstance(v, float) else f"{k:>24}: {v:,}")
    print(
        json.dumps(
            {
                "bench": "storage",
                "value": round(day["mb_per_node_day"], 3),
                "unit": "MB per node per day (16 jobs at 10 s, after compaction)",
                "baseline": round(day["rows_mb_per_node_day"], 3),
                "ratio": round(day["mb_per_node_day"] / day["rows_mb_per_node_day"], 4),
                "goal": "<= 2 MB per node per day; read p95 < 100 ms",
                "read_p95_ms": round(week["read_p95_ms"], 2),
                "read_baseline_p95_ms": round(week["rows_read_p95_ms"], 2),
                "bytes_per_sample": round(day["bytes_per_sample"], 2),
                "nodes": nodes,
                "cycles": cycles,
                "recording": DATA.name,
            }
        )
    )


if __name__ == "__main__":
    main()
