"""How long `nomadectl nodes` (and GET /api/v1/nodes) takes to build its view for a large cluster.

NODES nodes, each with a day of health readings kept as the aggregator keeps them (one per
`readings_history_seconds`, 600 s: 144 a node), each reading 16 temperature sensors, 4 services
and an EDAC controller; one node in 50 logged the hand-made kernel log's hardware errors once
(tests/cases/node-kernel-errors-handmade).  The view reads Slurm's and the agents' state and
each node's kernel errors of the last 24 h (`store.reading_records_between`).

    value     seconds for clusterviews.nodes (median of 3)
    baseline  seconds for the same kernel-error query read the plain way (json_each over every
              kept reading, no text pre-filter), in the same run
    ratio     value / baseline

    python bench/nodes_view.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aggregator import store  # noqa: E402
from aggregator.views import clusterviews  # noqa: E402
from collectors import health  # noqa: E402

KERNEL_LOG = ROOT / "tests" / "cases" / "node-kernel-errors-handmade" / "input"
PLAIN = (
    "SELECT node, t, value FROM ("
    " SELECT r.node, r.t, r.records_json FROM readings r WHERE r.collector = ? AND r.t >= ?"
    " UNION SELECT r.node, r.t, r.records_json FROM readings_latest r"
    " WHERE r.collector = ? AND r.t >= ?"
    "), json_each(records_json)"
    " WHERE CASE WHEN type = 'object' THEN json_extract(value, '$.record') END = ?"
)


def build(conn, nodes: int, now: float) -> None:
    errors = health.parse_kernel_errors(KERNEL_LOG.read_text(), "dmesg")
    records: list[dict] = [
        {
            "record": "sensor",
            "chip": "coretemp",
            "sensor": f"Core {i}",
            "temp_celsius": 50.0 + i,
            "max_celsius": 84.0,
            "crit_celsius": 100.0,
        }
        for i in range(16)
    ]
    records += [{"record": "service", "name": n, "running": True} for n in ("slurmd", "munged")]
    records += [{"record": "edac", "mc": 0, "ce_count": 0, "ue_count": 0}]
    conn.execute("BEGIN")
    for n in range(nodes):
        node = f"n{n:04d}"
        for k in range(144):
            extra = errors if n % 50 == 0 and k == 100 else []
            store.store_reading(
                conn, node, "health", now - 86400 + k * 600, 0.1, records + extra, 600
            )
        conn.execute(
            "INSERT INTO nodes (node, first_seen, last_seen, state) VALUES (?, 1, ?, 'up')",
            (node, now),
        )
    conn.execute("COMMIT")


def timed(fn) -> float:
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200 nodes: under 30 s")
    nodes = 200 if ap.parse_args().quick else 1000
    now = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        conn = store.open_store(f"{tmp}/b.db")
        build(conn, nodes, now)
        view = clusterviews.nodes(conn, now)
        with_errors = sum(1 for n in view["nodes"] if n["problems"])
        assert with_errors == -(-nodes // 50), with_errors  # each node that logged them
        value = timed(lambda: clusterviews.nodes(conn, now))
        since = now - 86400
        args = ("health", since, "health", since, "kernel_error")
        baseline = timed(lambda: conn.execute(PLAIN, args).fetchall())
        conn.close()
    print(
        json.dumps(
            {
                "bench": "nodes_view",
                "value": round(value, 3),
                "unit": "seconds for the nodes view (a day of health readings)",
                "baseline": round(baseline, 3),
                "ratio": round(value / baseline, 3),
                "goal": "under 1 s for 1,000 nodes",
                "nodes": nodes,
            }
        )
    )


if __name__ == "__main__":
    main()
