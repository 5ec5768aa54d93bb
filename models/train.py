"""Training NØMADE's job-outcome ensemble (GNN + gradient-boosted trees + logistic regression)
and exporting it to ONNX.  Needs torch (==2.13.0) and skl2onnx; the aggregator only needs
onnxruntime (models/runtime.py).

Data are used in time order only: features come from `features.matrix` (each job sees what had
happened by its start), neighbours from `graph.neighbours` (jobs that had ended before it
started), and the ensemble's weights and calibration from the latest 20% of the training jobs.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

from . import ensemble, features, gnn, graph


@dataclass
class Prepared:
    """Everything the members need, for all jobs in start order."""

    jobs: list[dict[str, Any]]
    x: np.ndarray
    y: np.ndarray
    failed: np.ndarray
    health: np.ndarray
    start: np.ndarray
    end: np.ndarray
    scaler: graph.Scaler
    z: np.ndarray
    nbr: tuple[np.ndarray, ...]  # nx, ny, s, m
    gfeat: np.ndarray


def prepare(
    jobs: list[dict[str, Any]],
    n_train: int | None = None,
    k: int = graph.K,
    window: int = graph.WINDOW,
    scaler: graph.Scaler | None = None,
) -> Prepared:
    """Features and the similarity graph of ended JOBS; the scaler sees the first N_TRAIN only
    (or is given: an existing model's, to score new jobs exactly as that model would)."""
    jobs = features.start_order(
        j for j in jobs if j.get("outcome") and j.get("end_time") is not None
    )
    x = features.matrix(jobs)
    n_train = len(jobs) if n_train is None else n_train
    y = np.array([features.outcome_class(j["outcome"]) for j in jobs], dtype=np.int64)
    start = np.array([j.get("start_time") or j["submit_time"] for j in jobs], dtype=np.float64)
    end = np.array([j["end_time"] for j in jobs], dtype=np.float64)
    scaler = scaler or graph.Scaler.fit(x[:n_train])
    z = scaler.transform(x)
    idx, sim = graph.neighbours(z, start, end, k=k, window=window)
    nx, ny, s, m, ncls = graph.gather(idx, sim, z, y)
    return Prepared(
        jobs,
        x,
        y,
        np.array([features.is_failure(j["outcome"]) for j in jobs]),
        np.array([features.health(j) for j in jobs]),
        start,
        end,
        scaler,
        z,
        (nx, ny, s, m),
        graph.graph_features(ncls, s, m),
    )


# The gradient-boosted trees' settings, shared by the GBT member and the evaluation's GBT
# baseline: shallow trees and a slow rate suit the few thousand jobs a cluster's history holds.
GBT_PARAMS: dict[str, Any] = {
    "max_iter": 100,
    "learning_rate": 0.05,
    "max_leaf_nodes": 4,
    "min_samples_leaf": 20,
    "l2_regularization": 1.0,
}


def gbt_model(seed: int = 0) -> HistGradientBoostingClassifier:
    return HistGradientBoostingClassifier(**GBT_PARAMS, random_state=seed)


def _f32(a: np.ndarray) -> np.ndarray:
    # Trees are fitted on float32 values, as ONNX Runtime will see them, so splits agree.
    return a.astype(np.float32).astype(np.float64)


def _sel(p: Prepared, rows: slice | np.ndarray) -> tuple[np.ndarray, ...]:
    return (p.z[rows], *(a[rows] for a in p.nbr))


@dataclass
class Fitted:
    gnn: Any
    gbt: HistGradientBoostingClassifier
    lr: LogisticRegression
    meta: dict[str, Any]

    def members(self, p: Prepared, rows: slice | np.ndarray) -> dict[str, np.ndarray]:
        """Each member's class probabilities from the training frameworks themselves."""
        return {
            "gnn": gnn.predict(self.gnn, _sel(p, rows)),
            "gbt": ensemble.expand(
                self.gbt.predict_proba(_f32(np.hstack([p.x[rows], p.gfeat[rows]]))),
                self.gbt.classes_,
            ),
            "lr": ensemble.expand(self.lr.predict_proba(_f32(p.z[rows])), self.lr.classes_),
        }


def fit(p: Prepared, n_train: int, epochs: int = 25, seed: int = 0, progress=None) -> Fitted:
    """Fit the members on the first 80% of the training jobs, weights and calibration on the
    rest."""
    t0 = time.time()
    n_fit = max(1, int(n_train * 0.8))
    fit_rows, val_rows = slice(0, n_fit), slice(n_fit, n_train)
    say = progress or (lambda *_: None)
    say("features and graph ready", 0.1)
    lr = LogisticRegression(max_iter=500, C=0.1).fit(_f32(p.z[fit_rows]), p.y[fit_rows])
    say("logistic regression", 0.2)
    gbt = gbt_model(seed)
    gbt.fit(_f32(np.hstack([p.x[fit_rows], p.gfeat[fit_rows]])), p.y[fit_rows])
    say("gradient-boosted trees", 0.4)
    net = gnn.fit(
        _sel(p, fit_rows),
        p.y[fit_rows],
        len(features.CLASSES),
        epochs=epochs,
        seed=seed,
        progress=lambda e, n: say(f"GNN epoch {e}/{n}", 0.4 + 0.5 * e / n),
    )
    fitted = Fitted(net, gbt, lr, {})
    val = fitted.members(p, val_rows)
    yv = p.y[val_rows]
    aucs = ensemble.member_aucs(val, yv)  # a member at or below chance gets weight 0
    weights = (
        ensemble.choose_weights(val, yv, aucs=aucs)
        if len(yv)
        else {"gnn": 1 / 3, "gbt": 1 / 3, "lr": 1 / 3}
    )
    mixed = sum(weights[m] * val[m] for m in ensemble.MEMBERS)
    platt = (
        ensemble.fit_platt(ensemble.raw_failure(mixed), p.failed[val_rows])
        if len(yv)
        else (1.0, 0.0)
    )
    class_health = [
        float(p.health[:n_train][p.y[:n_train] == c].mean()) if np.any(p.y[:n_train] == c) else 0.0
        for c in range(len(features.CLASSES))
    ]
    first = p.jobs[0]["submit_time"] if p.jobs else None
    fitted.meta = {
        "feature_version": features.FEATURE_VERSION,
        "feature_names": list(features.FEATURE_NAMES),
        "graph_feature_names": list(graph.GRAPH_FEATURE_NAMES),
        "classes": list(features.CLASSES),
        "scaler_mean": p.scaler.mean.tolist(),
        "scaler_std": p.scaler.std.tolist(),
        "gbt_classes": gbt.classes_.tolist(),
        "lr_classes": lr.classes_.tolist(),
        "weights": weights,
        "member_validation_auc": aucs,
        "excluded_members": [m for m in ensemble.MEMBERS if m not in ensemble.eligible(aucs)],
        "no_better_than_chance": ensemble.no_better_than_chance(aucs),
        "platt": list(platt),
        "class_health": class_health,
        "k": p.nbr[0].shape[1],
        "train_jobs": n_train,
        "train_first_submit": first,
        "train_last_submit": p.jobs[n_train - 1]["submit_time"] if n_train else None,
        "train_seconds": round(time.time() - t0, 1),
    }
    say("ensemble weights and calibration", 1.0)
    return fitted


@contextlib.contextmanager
def _skl2onnx_int_attributes():
    """skl2onnx 1.20 hands numpy bools and uint32s from scikit-learn 1.9's histogram trees to
    ONNX integer attributes, which onnx rejects; cast them while converting."""
    from skl2onnx.common import _container

    cls = _container.ModelComponentContainer
    original = cls.add_node
    names = (
        "nodes_missing_value_tracks_true",
        "nodes_truenodeids",
        "nodes_falsenodeids",
        "nodes_featureids",
    )

    def add_node(self, *args, **attrs):
        for name in names:
            if name in attrs:
                attrs[name] = [int(v) for v in attrs[name]]
        return original(self, *args, **attrs)

    cls.add_node = add_node
    try:
        yield
    finally:
        cls.add_node = original


def export(fitted: Fitted, out_dir: str | Path) -> Path:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dim = len(features.FEATURE_NAMES)
    gnn.export(fitted.gnn, dim, len(features.CLASSES), fitted.meta["k"], str(out / "gnn.onnx"))
    for name, model, width in (
        ("gbt", fitted.gbt, dim + len(graph.GRAPH_FEATURE_NAMES)),
        ("lr", fitted.lr, dim),
    ):
        with _skl2onnx_int_attributes():
            onx = convert_sklearn(
                model,
                initial_types=[("x", FloatTensorType([None, width]))],
                options={id(model): {"zipmap": False}},
                target_opset=17,
            )
        (out / f"{name}.onnx").write_bytes(onx.SerializeToString())
    (out / "meta.json").write_text(json.dumps(fitted.meta, indent=1))
    return out
