"""Seconds to train NØMADE's ensemble on 100,000 jobs: prepare + fit + export.

The jobs come from `workload.synthesize` (the generator's users and habits, a simulated
two-node FIFO queue).  Timed stages, all in this process:

    prepare  train.prepare: start-time features of every job (features.matrix), its neighbours
             in the similarity network (graph.neighbours) and the neighbour tensors
    fit      train.fit: logistic regression, gradient-boosted trees, the GNN (--epochs), ensemble
             weights and calibration on the last 20% of the jobs
    export   train.export: three ONNX files and meta.json

    value    = prepare + fit + export
    baseline = fitting the gradient-boosted trees alone on the same features and rows (the
               cheapest model worth deploying; measured in the same run), ratio = value / baseline

The last line of stdout is one JSON object, with each stage's (and sub-stage's) seconds.

    python bench/train.py [--quick] [--jobs N] [--epochs E] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

import workload  # noqa: E402
from models import features, graph, train  # noqa: E402

GOAL_S, GOAL_JOBS = 300.0, 100_000


class Stopwatch:
    """Seconds spent inside wrapped module functions (train.prepare calls them by attribute)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, module: Any, name: str, key: str) -> None:
        original = getattr(module, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t0

        setattr(module, name, timed)


def fit_stages(p: train.Prepared, n: int, epochs: int, seed: int) -> tuple[train.Fitted, dict]:
    """train.fit, with the seconds between its progress reports grouped by member."""
    marks: list[tuple[str, float]] = [("start", time.perf_counter())]
    fitted = train.fit(
        p,
        n,
        epochs=epochs,
        seed=seed,
        progress=lambda msg, _: marks.append((msg, time.perf_counter())),
    )
    stages: dict[str, float] = {}
    for (_, t0), (msg, t1) in zip(marks, marks[1:], strict=False):
        key = {
            "logistic regression": "fit_lr",
            "gradient-boosted trees": "fit_gbt",
            "ensemble weights and calibration": "fit_weights_calibration",
        }.get(msg)
        key = key or ("fit_gnn" if msg.startswith("GNN epoch") else "fit_other")
        stages[key] = stages.get(key, 0.0) + t1 - t0
    return fitted, stages


def baseline_gbt(p: train.Prepared, n: int, seed: int) -> float:
    """Seconds to fit the trees alone, as train.fit fits its GBT member (same rows, settings)."""
    rows = slice(0, max(1, int(n * 0.8)))
    x = train._f32(np.hstack([p.x[rows], p.gfeat[rows]]))
    t0 = time.perf_counter()
    train.gbt_model(seed).fit(x, p.y[rows])
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10,000 jobs and 3 GNN epochs")
    parser.add_argument("--jobs", type=int, help="jobs to generate (default: by --quick)")
    parser.add_argument("--epochs", type=int, help="GNN epochs (default 25; 3 with --quick)")
    parser.add_argument("--seed", type=int, default=workload.DEFAULT_SEED)
    args = parser.parse_args(argv)
    n_jobs = args.jobs or (10_000 if args.quick else GOAL_JOBS)
    epochs = args.epochs or (3 if args.quick else 25)

    t0 = time.perf_counter()
    jobs = workload.synthesize(n_jobs, seed=args.seed)
    generate_s = time.perf_counter() - t0

    watch = Stopwatch()
    watch.wrap(features, "matrix", "prepare_features")
    watch.wrap(graph, "neighbours", "prepare_neighbours")
    t0 = time.perf_counter()
    p = train.prepare(jobs)
    prepare_s = time.perf_counter() - t0
    n = len(p.jobs)
    t0 = time.perf_counter()
    fitted, stages = fit_stages(p, n, epochs, seed=0)
    fit_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="nomade-bench-train-") as tmp:
        t0 = time.perf_counter()
        train.export(fitted, tmp)
        export_s = time.perf_counter() - t0
    baseline = baseline_gbt(p, n, seed=0)

    total = prepare_s + fit_s + export_s
    result = {
        "bench": "train",
        "value": round(total, 2),
        "unit": "s",
        "baseline": round(baseline, 2),
        "ratio": round(total / baseline, 2),
        "goal": f"<= {GOAL_S:g} s for {GOAL_JOBS:,} jobs",
        "jobs": n,
        "epochs": epochs,
        "generate_s": round(generate_s, 2),
        "prepare_s": round(prepare_s, 2),
        "fit_s": round(fit_s, 2),
        "export_s": round(export_s, 2),
        **{f"{k}_s": round(v, 2) for k, v in watch.seconds.items()},
        **{f"{k}_s": round(v, 2) for k, v in stages.items()},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
