"""`nomadectl train`: train on the store's finished jobs, register the model, and activate it
only when it is not worse than the active one on the most recent jobs."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from aggregator import registry
from aggregator.scoring import model_dir, pack

from . import dataset, ensemble, features, runtime, train

MIN_JOBS = 200
TOLERANCE = 0.01  # a new model may be this much worse in AUC and still replace the active one


def _auc(failed: np.ndarray, p: np.ndarray) -> float | None:
    return float(roc_auc_score(failed, p)) if 0 < failed.sum() < len(failed) else None


def score_rows(model: runtime.Model, p: train.Prepared, rows: slice) -> np.ndarray:
    members = model.members(p.x[rows], *(a[rows] for a in p.nbr), p.gfeat[rows])
    return ensemble.combine(members, model.meta)["p_fail"]


def run(conn: sqlite3.Connection, data_dir: str, recent_fraction: float = 0.2, epochs: int = 25,
        activate: str = "if-better", progress=None) -> dict[str, Any]:  # fmt: skip
    """Train, export, register; ACTIVATE is 'if-better', 'always' or 'never'."""
    say = progress or (lambda *_: None)
    jobs = dataset.ended_jobs(conn)
    if len(jobs) < MIN_JOBS:
        raise ValueError(
            f"only {len(jobs)} finished jobs in the store; training needs at least {MIN_JOBS}"
        )
    n_train = len(jobs) - max(1, int(len(jobs) * recent_fraction))
    p = train.prepare(jobs, n_train)
    fitted = train.fit(p, n_train, epochs=epochs, progress=say)
    digest_src = hashlib.sha256(str(time.time_ns()).encode()).hexdigest()[:8]
    version = time.strftime("%Y%m%d-%H%M%S") + "-" + digest_src
    out = model_dir(data_dir, version)
    train.export(fitted, out)
    new = runtime.Model(out)
    recent = slice(n_train, len(p.jobs))
    failed = p.failed[recent]
    metrics: dict[str, Any] = {"recent_jobs": int(len(failed)), "recent_failures": int(failed.sum()),
                               "recent_auc": _auc(failed, score_rows(new, p, recent))}  # fmt: skip
    current = registry.active(_row_conn(conn))
    if (
        current
        and Path(current["path"]).exists()
        and current["feature_version"] == features.FEATURE_VERSION
    ):
        old = runtime.Model(current["path"])
        q = train.prepare(jobs, n_train, scaler=old.scaler)
        metrics["active_version"] = current["version"]
        metrics["active_recent_auc"] = _auc(failed, score_rows(old, q, recent))
    better = (metrics.get("active_recent_auc") is None or metrics["recent_auc"] is None
              or metrics["recent_auc"] >= metrics["active_recent_auc"] - TOLERANCE)  # fmt: skip
    activated = activate == "always" or (activate == "if-better" and better)
    conn.execute("BEGIN IMMEDIATE")
    try:
        registry.register(conn, version, str(out), runtime.digest(out), fitted.meta, metrics)
        conn.executemany(
            "INSERT OR REPLACE INTO job_features (job_uid, feature_version, vector) VALUES (?, ?, ?)",
            [
                (j["uid"], features.FEATURE_VERSION, pack(x))
                for j, x in zip(p.jobs, p.x, strict=True)
            ],
        )
        if activated:
            registry.activate(conn, version)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        shutil.rmtree(out, ignore_errors=True)
        raise
    return {"version": version, "path": str(out), "activated": activated, "train_jobs": n_train,
            "weights": fitted.meta["weights"], **metrics}  # fmt: skip


def _row_conn(conn: sqlite3.Connection) -> sqlite3.Connection:
    conn.row_factory = sqlite3.Row
    return conn
