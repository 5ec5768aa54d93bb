"""Scoring one starting job with a history of 1,000,000 jobs: NØMADE's whole live path.

The path under test is `aggregator.predict.scoring.Scorer.examine` (what the start hook calls):
the job's features from the store (its user's and account's last 100 ended jobs, the starts of
the last hour: indexed queries), its neighbours from the in-memory index of recently ended jobs,
the three ONNX members in ONNX Runtime and the calibrated combination, and the right-sizing
advice (models/rightsize.py: the Kaplan-Meier quantiles of memory and run time over the user's
similar jobs).  Baseline, in the same run: the bare onnxruntime calls of the three members for
one job on precomputed inputs.

The store is filled with jobs from the workload generator (workload.synthesize), repeated
with shifted times, job ids and user names until it holds --history jobs; a small model is
trained on the first of them.  Last stdout line: one JSON object (`value` = p99 in ms).

    python bench/score.py [--quick] [--history 1000000] [--scores 1000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import workload  # noqa: E402
from aggregator import store  # noqa: E402
from aggregator.predict import training  # noqa: E402
from aggregator.predict.scoring import Scorer  # noqa: E402
from models import rightsize  # noqa: E402
from models.features import JOB_KEYS  # noqa: E402

COLUMNS = [k for k in JOB_KEYS if k != "job_id"] + [
    "job_id",
    "state",
    "exit_code",
    "total_cpu_seconds",
]


def fill(conn, history: int, base_jobs: list[dict], first_copy: int = 0) -> None:
    """HISTORY jobs: BASE_JOBS repeated, each copy later in time, with its own ids and users."""
    span = base_jobs[-1]["end_time"] - base_jobs[0]["submit_time"] + 3600
    sql = (
        f"INSERT INTO jobs (cluster, {', '.join(COLUMNS)}, reconcile, created, updated)"
        f" VALUES ('bench', {', '.join('?' * len(COLUMNS))}, 'done', 0, 0)"
    )
    copies = -(-history // len(base_jobs))
    done = 0
    for c in range(first_copy, first_copy + copies):
        rows = []
        for j in base_jobs[: history - done]:
            row = dict(j)
            for key in ("submit_time", "start_time", "end_time"):
                if row[key] is not None:
                    row[key] += c * span
            row["job_id"] = j["job_id"] + c * 10_000_000
            row["user"] = f"{j['user']}-{c % 50}"  # 50 copies of each simulated user
            rows.append(tuple(row.get(k) for k in COLUMNS))
        conn.execute("BEGIN")
        conn.executemany(sql, rows)
        conn.execute("COMMIT")
        done += len(rows)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--history", type=int, default=None)
    ap.add_argument("--scores", type=int, default=None)
    args = ap.parse_args()
    history = args.history or (100_000 if args.quick else 1_000_000)
    scores = args.scores or (300 if args.quick else 1000)
    base = workload.synthesize(20_000, seed=5)
    tmp = Path(tempfile.mkdtemp(prefix="nomade-bench-score-"))
    db = str(tmp / "nomade.db")
    t0 = time.time()
    train_conn = store.open_store(db)
    fill(train_conn, 4000, base[:4000])
    training.run(db, str(tmp), epochs=3, activate="always")
    fill(train_conn, history - 4000, base, first_copy=1)  # the rest of the history, later
    print(f"store: {history} jobs in {time.time() - t0:.0f} s", file=sys.stderr)
    scorer = Scorer(db)
    scorer.reload()
    conn = scorer.conn()
    last = conn.execute("SELECT max(end_time) FROM jobs").fetchone()[0]
    probe = [dict(j) for j in base[-scores:]]
    copies = min(50, -(-history // len(base)))  # the users `fill` made: <user>-0 .. -<copies-1>
    for i, j in enumerate(probe):  # new jobs starting now, from users with long histories
        j.update(
            job_id=900_000_000 + i,
            user=f"{j['user']}-{i % copies}",
            submit_time=last + i,
            start_time=last + i + 1,
        )
    for j in probe[:20]:
        scorer.examine(j)  # warm caches
    live, verdicts, advised = [], [], 0
    for j in probe:
        t = time.perf_counter()
        found = scorer.examine(j)
        live.append((time.perf_counter() - t) * 1000)
        verdicts.append(found.verdict)
        advised += sum(a is not None for a in found.advice.values())
    advice_ms = []  # the right-sizing part alone, on the histories examine read
    for j in probe:
        past = store.start_history(conn, j)
        t = time.perf_counter()
        rightsize.advise(j, past.user, past.kind)
        advice_ms.append((time.perf_counter() - t) * 1000)
    model = scorer.model
    k, d = model.k, len(model.meta["feature_names"])
    x = np.zeros((1, d))
    nx, ny, s, m = (
        np.zeros((1, k, d)),
        np.zeros((1, k, model.classes)),
        np.zeros((1, k)),
        np.ones((1, k)),
    )
    g = np.zeros((1, len(model.meta["graph_feature_names"])))
    bare = []
    for _ in range(scores):
        t = time.perf_counter()
        model.members(x, nx, ny, s, m, g)
        bare.append((time.perf_counter() - t) * 1000)
    p99, p50, base99 = percentile(live, 99), percentile(live, 50), percentile(bare, 99)
    warned = sum(v["warned"] for v in verdicts)
    print(
        f"scored {scores} jobs against {history} stored: p50 {p50:.2f} ms, p99 {p99:.2f} ms;"
        f" bare ONNX Runtime p99 {base99:.2f} ms; {warned} warned;"
        f" {advised} --mem/--time suggestions"
    )
    print(
        json.dumps(
            {
                "bench": "score",
                "value": round(p99, 3),
                "unit": "ms",
                "baseline": round(base99, 3),
                "ratio": round(p99 / base99, 2),
                "goal": "p99 <= 10 ms with 1,000,000 jobs",
                "p50_ms": round(p50, 3),
                "history": history,
                "scores": scores,
                "suggestions": advised,
                "advice_p99_ms": round(percentile(advice_ms, 99), 3),
            }
        )
    )


if __name__ == "__main__":
    main()
