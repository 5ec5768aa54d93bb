"""`nomadectl train`: train on the store's finished jobs, register the model, and activate it
only when it can be trusted and is not worse than the active one on the most recent jobs.
It reads the store's history and writes through the store's writer; the training itself is
models/ (a pure ML library: plain rows in, ONNX files out).

The activation rule (`activation_rule`): the recent part, held out from training, meets the
evaluation's rule (`evaluate.too_little`: enough jobs, failures and successes), the new model's
recent AUC can be computed and is above 0.5, and some member beat chance on the validation
slice.  With `--activate if-better` a model that breaks it is registered, not activated;
`--activate always` activates it anyway and says so."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from aggregator import store
from aggregator.predict.scoring import model_dir, pack
from models import ensemble, evaluate, features, runtime, train

MIN_JOBS = 200
TOLERANCE = 0.01  # a new model may be this much worse in AUC and still replace the active one


def _auc(failed: np.ndarray, p: np.ndarray) -> float | None:
    return float(roc_auc_score(failed, p)) if 0 < failed.sum() < len(failed) else None


def score_rows(model: runtime.Model, p: train.Prepared, rows: slice) -> np.ndarray:
    members = model.members(p.x[rows], *(a[rows] for a in p.nbr), p.gfeat[rows])
    return ensemble.combine(members, model.meta)["p_fail"]


def activation_rule(
    failed: np.ndarray, recent_auc: float | None, meta: dict[str, Any]
) -> str | None:
    """Why a model whose recent jobs failed as FAILED must not be activated unasked, or None."""
    short = evaluate.too_little(failed, "recent part")
    if short:
        return f"{short}; activation needs {evaluate.NEEDED}"
    if recent_auc is None or not np.isfinite(recent_auc):
        return "its failure AUC on the recent part cannot be computed"
    if recent_auc <= ensemble.CHANCE:
        return f"its failure AUC on the recent part is {recent_auc:.3f}, no better than chance"
    if meta.get("no_better_than_chance"):
        aucs = ", ".join(f"{m} {a:.3f}" for m, a in meta["member_validation_auc"].items())
        return f"no member beat chance on the validation slice (AUC {aucs})"
    return None


def decision(
    activate: str, rule: str | None, better: bool, metrics: dict[str, Any], version: str
) -> tuple[bool, str]:
    """Whether to activate (ACTIVATE: 'if-better', 'always' or 'never'), and one line saying so."""
    later = f"nomadectl model activate {version}"
    if activate == "never":
        return False, f"not activated (--activate never; {later})"
    if activate == "always":
        if rule is None:
            return True, "activated"
        return True, f"activated: --activate always overrode the activation rule ({rule})"
    if rule is not None:
        return False, f"not activated: {rule} (--activate always overrides)"
    if not better:
        return False, (
            f"not activated: its recent AUC {metrics['recent_auc']:.3f} is below the active"
            f" model's {metrics['active_recent_auc']:.3f} on the same jobs ({later})"
        )
    return True, "activated"


def run(
    database: str,
    data_dir: str,
    recent_fraction: float = 0.2,
    epochs: int = 25,
    activate: str = "if-better",
    progress=None,
) -> dict[str, Any]:
    """Train, export, register; ACTIVATE is 'if-better', 'always' or 'never'."""
    reader = store.connect(database, readonly=True)
    try:
        return _run(reader, database, data_dir, recent_fraction, epochs, activate, progress)
    finally:
        reader.close()


def _run(
    conn: Any,
    database: str,
    data_dir: str,
    recent_fraction: float,
    epochs: int,
    activate: str,
    progress,
) -> dict[str, Any]:
    say = progress or (lambda *_: None)
    jobs = store.ended_jobs(conn)
    if len(jobs) < MIN_JOBS:
        raise ValueError(
            f"only {len(jobs)} finished jobs in the store; training needs at least {MIN_JOBS}"
        )
    n_train = len(jobs) - max(1, int(len(jobs) * recent_fraction))
    say(f"{len(jobs)} finished jobs read", 0.0)
    p = train.prepare(jobs, n_train)
    fitted = train.fit(p, n_train, epochs=epochs, progress=say)
    digest_src = hashlib.sha256(str(time.time_ns()).encode()).hexdigest()[:8]
    version = time.strftime("%Y%m%d-%H%M%S") + "-" + digest_src
    out = model_dir(data_dir, version)
    train.export(fitted, out)
    say("exported", 1.0)
    new = runtime.Model(out)
    recent = slice(n_train, len(p.jobs))
    failed = p.failed[recent]
    metrics: dict[str, Any] = {
        "recent_jobs": int(len(failed)),
        "recent_failures": int(failed.sum()),
        "recent_successes": int(len(failed) - failed.sum()),
        "recent_auc": _auc(failed, score_rows(new, p, recent)),
    }
    current = store.active_model(conn)
    if (
        current
        and Path(current["path"]).exists()
        and current["feature_version"] == features.FEATURE_VERSION
    ):
        old = runtime.Model(current["path"])
        q = train.prepare(jobs, n_train, scaler=old.scaler)
        metrics["active_version"] = current["version"]
        metrics["active_recent_auc"] = _auc(failed, score_rows(old, q, recent))
    better = (
        metrics.get("active_recent_auc") is None
        or metrics["recent_auc"] is None
        or metrics["recent_auc"] >= metrics["active_recent_auc"] - TOLERANCE
    )
    rule = activation_rule(failed, metrics["recent_auc"], fitted.meta)
    members = ("member_validation_auc", "excluded_members", "no_better_than_chance")
    metrics.update(
        {k: fitted.meta[k] for k in members}, activation_rule_met=rule is None, activation_rule=rule
    )
    activated, line = decision(activate, rule, better, metrics, version)
    vectors = [
        (j["uid"], features.FEATURE_VERSION, pack(x)) for j, x in zip(p.jobs, p.x, strict=True)
    ]

    def save(wconn: Any) -> None:  # one transaction of the store's writer
        store.register_model(wconn, version, str(out), runtime.digest(out), fitted.meta, metrics)
        store.save_features(wconn, vectors)
        if activated:
            store.activate_model(wconn, version)

    writer = store.Writer(database)
    writer.start()
    try:
        writer.call(save, timeout=600)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        writer.stop()
    say(f"registered {version}" + (" and activated" if activated else ""), 1.0)
    return {
        "version": version,
        "path": str(out),
        "activated": activated,
        "activation": line,
        "overrode_rule": activated and rule is not None,
        "train_jobs": n_train,
        "weights": fitted.meta["weights"],
        **metrics,
    }
