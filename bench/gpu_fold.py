"""What folding each job's GPUs into `job_gpus` adds to the writer's cost of one GPU reading.

A node with 8 GPUs (the real H200 capture, tests/fixtures/gpu/h200-580.159.04/q-x.xml, its GPU
repeated with 8 UUIDs) runs 4 jobs of 2 GPUs each, one process per GPU.  Each reading goes
through the aggregator's ingest as an agent's READINGS envelope (`Ingest.apply_envelope`), one
transaction each, NODES nodes taking turns every 30 s of simulated time.

    value     microseconds of writer time per GPU reading, with the fold
    baseline  the same readings with their process records naming no job (nothing to fold),
              measured in the same run, interleaved
    ratio     value / baseline

A 1,000-node cluster with 8 GPUs per node sends about 33 GPU readings a second at the default
30 s interval: value times 33 is the share of the writer's second the fold's readings take.

    python bench/gpu_fold.py [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aggregator import store  # noqa: E402
from aggregator.store import Ingest  # noqa: E402
from collectors import gpu  # noqa: E402
from nomade_common import wire  # noqa: E402

CAPTURE = ROOT / "tests" / "fixtures" / "gpu" / "h200-580.159.04" / "q-x.xml"
GPUS, JOBS = 8, 4


def node_records(first_job: int | None) -> list[dict]:
    """One node's reading: 8 GPUs, each with one process of job FIRST_JOB + index // 2."""
    parsed = gpu.parse_xml(CAPTURE.read_text(), CAPTURE.name)
    card = next(r for r in parsed if r["record"] == "gpu")
    proc = next(r for r in parsed if r["record"] == "process")
    out = []
    for i in range(GPUS):
        uuid = f"GPU-bench-{i:02d}"
        out.append({**copy.deepcopy(card), "index": i, "uuid": uuid, "util_gpu_percent": 50.0 + i})
        job = None if first_job is None else first_job + i // (GPUS // JOBS)
        out.append({**proc, "gpu_index": i, "gpu_uuid": uuid, "pid": 1000 + i, "job_id": job})
    return out


def run(nodes: int, rounds: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        conn = store.open_store(f"{tmp}/b.db")
        ing, t0 = Ingest("bench"), time.time() - rounds * 30 - 60
        conn.execute("BEGIN")
        for n in range(nodes):
            for j in range(JOBS):
                job = {"job_id": 1 + n * JOBS + j, "submit_time": t0 - 10, "user": "u"}
                ing.job_start(conn, {**job, "node_list": f"g{n:04d}"}, None, t0 - 5)
        conn.execute("COMMIT")
        folded = {n: node_records(1 + n * JOBS) for n in range(nodes)}
        plain = {n: node_records(None) for n in range(nodes)}
        times: dict[str, list[float]] = {"fold": [], "plain": []}
        seq = 0
        for r in range(rounds):
            for n in range(nodes):
                for kind, records in (("fold", folded[n]), ("plain", plain[n])):
                    seq += 1
                    node = f"g{n:04d}" if kind == "fold" else f"p{n:04d}"
                    payload = {"collector": "gpu", "t": t0 + r * 30 + n * 0.01, "records": records}
                    env = wire.Envelope(wire.READINGS, node, 1, seq, payload)
                    start = time.perf_counter()
                    conn.execute("BEGIN")
                    assert ing.apply_envelope(conn, env) == "stored"
                    conn.execute("COMMIT")
                    times[kind].append(time.perf_counter() - start)
        rows = conn.execute("SELECT count(*), min(readings) FROM job_gpus").fetchone()
        assert tuple(rows) == (nodes * GPUS, rounds), tuple(rows)  # every GPU, every reading
        conn.close()
    return statistics.median(times["fold"]) * 1e6, statistics.median(times["plain"]) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer nodes and rounds: under 30 s")
    args = ap.parse_args()
    nodes, rounds = (20, 10) if args.quick else (100, 30)
    value, baseline = run(nodes, rounds)
    print(
        json.dumps(
            {
                "bench": "gpu_fold",
                "value": round(value, 1),
                "unit": "microseconds of writer time per GPU reading (8 GPUs, 4 jobs)",
                "baseline": round(baseline, 1),
                "ratio": round(value / baseline, 3),
                "goal": "the fold's readings of 1,000 8-GPU nodes at 30 s under 5% of the writer",
                "writer_share_1000_nodes": round(value * 1e-6 * 1000 / 30, 4),
                "nodes": nodes,
                "rounds": rounds,
            }
        )
    )


if __name__ == "__main__":
    main()
