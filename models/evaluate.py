"""How well NØMADE's ensemble predicts job failures, judged as the literature judges such models:
only what is known at job start, tested on LATER jobs, against simple baselines.

    evaluate(jobs) -> dict      (models/report.py turns it into report.md and plots)

Protocol (docs/models.md):
- Jobs in start order; the earliest (1 - test_fraction) are the training part, the rest the test
  part.  `train.prepare` runs once over all jobs (each job's features and neighbours only see
  jobs that had ended before it started; the scaler sees the training part only).
- `train.fit` on the training part: members on its first 80% (the fit slice), ensemble weights
  and calibration on its last 20% (the validation slice).  The model is exported, and the test
  part is scored through `runtime.Model` (ONNX Runtime) and `ensemble.combine`: the report
  measures what the aggregator runs.
- Every learned baseline is fitted on the same fit slice and Platt-calibrated on the same
  validation slice; every score's alarm threshold is chosen on the validation slice by
  minimising cost_missed_failure * FN + cost_false_alarm * FP, then applied to the test part.
- A test part with too few jobs, failures or successes (`too_little`, the rule `nomadectl train`
  activates models by) gives no numbers at all: `insufficient`, with the reason.
"""

from __future__ import annotations

import math
import tempfile
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score

from . import ensemble, features, rightsize_eval, runtime, train

# The one rule for judging a model on held-out jobs, shared with `nomadectl train`
# (aggregator/predict/training.py), which activates no model judged on fewer: `too_little`.
MIN_TEST_JOBS, MIN_TEST_FAILURES, MIN_TEST_SUCCESSES = 200, 10, 10
NEEDED = (
    f"at least {MIN_TEST_JOBS} jobs, {MIN_TEST_FAILURES} failures and"
    f" {MIN_TEST_SUCCESSES} successes"
)
RELIABILITY_BINS = 10
N_REQUEST = len(features.request_features({}))  # the request columns come first
USER_FAIL_RATE = features.FEATURE_NAMES.index("user_fail_rate")
LAST_FAILED = features.FEATURE_NAMES.index("user_last_failed")
SECOND_LAST_FAILED = features.FEATURE_NAMES.index("user_second_last_failed")
BOOTSTRAP = 200

# Display names of the scores, in the report's order.
LABELS = {
    "ensemble": "Ensemble (GNN + GBT + LR, calibrated, ONNX)",
    "majority": "Majority class (constant)",
    "user_fail_rate": "User's past failure rate",
    "user_last_two": "User's last two outcomes",
    "lr_request": "Logistic regression, request only",
    "gbt_no_graph": "GBT, all features but the graph",
    "member_gnn": "GNN member alone",
    "member_gbt": "GBT member alone (with graph features)",
    "member_lr": "LR member alone",
    "generator_p_fail": "Generator's true p_fail (ceiling)",
}
CEILING = "generator_p_fail"


# -- the alarm threshold -------------------------------------------------------------------------
def choose_threshold(
    p: np.ndarray, failed: np.ndarray, cost_miss: float, cost_false_alarm: float
) -> tuple[float, float]:
    """The threshold t (warn when p >= t) with the lowest cost_miss*FN + cost_false_alarm*FP on
    these jobs, and that cost.  Candidates lie between consecutive distinct scores, plus "warn
    for all" (0) and "warn for none" (above every score); ties go to the higher threshold."""
    p, failed = np.asarray(p, dtype=np.float64), np.asarray(failed, dtype=bool)
    values = np.unique(p)
    if len(values) == 0:
        return 1.0, 0.0
    cuts = np.concatenate(
        [[min(0.0, values[0])], (values[:-1] + values[1:]) / 2, [values[-1] + 1e-9]]
    )
    pos, neg = np.sort(p[failed]), np.sort(p[~failed])
    fn = np.searchsorted(pos, cuts, side="left")  # failures scored below the cut
    fp = len(neg) - np.searchsorted(neg, cuts, side="left")  # non-failures at or above it
    cost = cost_miss * fn + cost_false_alarm * fp
    best = int(np.flatnonzero(cost == cost.min())[-1])
    return float(cuts[best]), float(cost[best])


def at_threshold(
    p: np.ndarray, failed: np.ndarray, t: float, cost_miss: float, cost_false_alarm: float
) -> dict[str, float | int | None]:
    """Type 1 (false alarms / non-failures) and type 2 (misses / failures) error rates at T."""
    warn = np.asarray(p) >= t
    failed = np.asarray(failed, dtype=bool)
    tp, fp = int(np.sum(warn & failed)), int(np.sum(warn & ~failed))
    fn, tn = int(np.sum(~warn & failed)), int(np.sum(~warn & ~failed))
    return {
        "threshold": float(t),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "type1": fp / (fp + tn) if fp + tn else None,
        "type2": fn / (fn + tp) if fn + tp else None,
        "precision": tp / (tp + fp) if tp + fp else None,
        "cost": cost_miss * fn + cost_false_alarm * fp,
        "cost_per_job": (cost_miss * fn + cost_false_alarm * fp) / max(1, len(warn)),
    }


# -- the rule ------------------------------------------------------------------------------------
def too_little(failed: np.ndarray | list[bool], part: str) -> str | None:
    """None when a held-out PART whose jobs failed as FAILED (one bool a job) can judge a model:
    at least MIN_TEST_JOBS jobs, MIN_TEST_FAILURES failures and MIN_TEST_SUCCESSES successes
    (jobs that did not fail).  Otherwise what the part has, e.g. "the test part has 99 jobs,
    97 failures and 2 successes": from fewer, an AUC is noise (or cannot be computed)."""
    n, bad = len(failed), int(np.sum(failed))
    good = n - bad
    if n >= MIN_TEST_JOBS and bad >= MIN_TEST_FAILURES and good >= MIN_TEST_SUCCESSES:
        return None
    return f"the {part} has {n} jobs, {bad} failures and {good} successes"


# -- metrics ---------------------------------------------------------------------------------------
def _auc(y: np.ndarray, s: np.ndarray) -> float | None:
    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else None


def _pr_auc(y: np.ndarray, s: np.ndarray) -> float | None:
    return float(average_precision_score(y, s)) if 0 < y.sum() < len(y) else None


def score_metrics(
    p_val: np.ndarray,
    failed_val: np.ndarray,
    p_test: np.ndarray,
    failed_test: np.ndarray,
    costs: tuple[float, float],
) -> dict[str, Any]:
    """Failure metrics of one score on the test part, its threshold chosen on validation jobs."""
    t, _ = choose_threshold(p_val, failed_val, *costs)
    return {
        "auc": _auc(failed_test, p_test),
        "pr_auc": _pr_auc(failed_test, p_test),
        "brier": float(np.mean((p_test - failed_test) ** 2)),
        **at_threshold(p_test, failed_test, t, *costs),
    }


def reliability(p: np.ndarray, failed: np.ndarray, bins: int) -> list[dict[str, Any]]:
    """The non-empty ones of BINS equal-width bins of predicted probability P: each bin's
    edges, jobs, mean predicted probability and observed failure rate."""
    p, failed = np.asarray(p, dtype=np.float64), np.asarray(failed, dtype=np.float64)
    which = np.clip((p * bins).astype(int), 0, bins - 1)
    n = np.bincount(which, minlength=bins)
    mean_p = np.bincount(which, p, bins)
    rate = np.bincount(which, failed, bins)
    return [
        {
            "lo": b / bins,
            "hi": (b + 1) / bins,
            "jobs": int(n[b]),
            "mean_predicted": float(mean_p[b] / n[b]),
            "observed_rate": float(rate[b] / n[b]),
        }
        for b in range(bins)
        if n[b]
    ]


def calibration(raw: np.ndarray, p_fail: np.ndarray, failed: np.ndarray) -> dict[str, Any]:
    """Brier score and reliability table of the weighted mixture's raw failure probability RAW
    (before Platt scaling) and of the calibrated P_FAIL (after), on the same jobs: in ten
    equal-width bins, five with fewer than 500 jobs."""
    failed = np.asarray(failed, dtype=np.float64)
    bins = RELIABILITY_BINS if len(failed) >= 500 else RELIABILITY_BINS // 2
    return {
        "bins": bins,
        "brier_before": float(np.mean((raw - failed) ** 2)),
        "brier_after": float(np.mean((p_fail - failed) ** 2)),
        "reliability_before": reliability(raw, failed, bins),
        "reliability_after": reliability(p_fail, failed, bins),
    }


def _auc_weighted(inv: np.ndarray, failed: np.ndarray, w: np.ndarray, groups: int) -> float:
    """ROC AUC with job weights (ties count one half); INV: each job's rank among distinct
    scores."""
    pos = np.bincount(inv, w * failed, groups)
    neg = np.bincount(inv, w * (1.0 - failed), groups)
    below = np.cumsum(neg) - neg
    return float(np.sum(pos * (below + 0.5 * neg)) / (pos.sum() * neg.sum()))


def auc_difference(
    failed: np.ndarray, a: np.ndarray, b: np.ndarray, seed: int = 0, rounds: int = BOOTSTRAP
) -> dict[str, float]:
    """AUC(a) - AUC(b) on the same jobs, with a paired bootstrap 95% interval."""
    failed = np.asarray(failed, dtype=np.float64)
    ua, ia = np.unique(a, return_inverse=True)
    ub, ib = np.unique(b, return_inverse=True)
    rng = np.random.default_rng(seed)
    n, diffs = len(failed), []
    for _ in range(rounds):
        w = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        if 0 < np.sum(w * failed) < n:
            diffs.append(
                _auc_weighted(ia, failed, w, len(ua)) - _auc_weighted(ib, failed, w, len(ub))
            )
    lo, hi = np.percentile(diffs, [2.5, 97.5]) if diffs else (np.nan, np.nan)
    ones = np.ones(n)
    return {
        "diff": _auc_weighted(ia, failed, ones, len(ua)) - _auc_weighted(ib, failed, ones, len(ub)),
        "lo": float(lo),
        "hi": float(hi),
    }


# -- the data --------------------------------------------------------------------------------------
def ended(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The jobs `train.prepare` uses, in the same (start) order."""
    return features.start_order(
        j for j in jobs if j.get("outcome") and j.get("end_time") is not None
    )


def split_point(n: int, test_fraction: float) -> int:
    return n - int(math.ceil(n * test_fraction))


def summary(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    outcomes = [j["outcome"] if j["outcome"] in features.CLASSES else "OTHER" for j in jobs]
    failed = [features.is_failure(o) for o in outcomes]
    first = min((j["submit_time"] for j in jobs), default=None)
    last = max((j["end_time"] for j in jobs), default=None)
    return {
        "jobs": len(jobs),
        "users": len({j.get("user") for j in jobs}),
        "first_submit": first,
        "last_end": last,
        "span_days": (last - first) / 86400.0 if jobs else 0.0,
        "failures": int(sum(failed)),
        "failure_rate": float(np.mean(failed)) if jobs else None,
        "outcomes": {c: outcomes.count(c) for c in features.CLASSES if c in outcomes},
    }


# -- baselines -----------------------------------------------------------------------------------
def _platt(p_val: np.ndarray, failed_val: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Logistic calibration of a score on the validation slice, as the ensemble's p_fail is
    calibrated.  Fitted with scikit-learn (lbfgs) rather than `ensemble.fit_platt`, whose plain
    Newton steps can diverge on the saturated scores of gradient-boosted trees."""
    if not 0 < failed_val.sum() < len(failed_val):
        return np.full(len(p), float(failed_val.mean()) if len(failed_val) else 0.5)
    lr = LogisticRegression(C=1e4).fit(ensemble.logit(p_val)[:, None], failed_val)
    return lr.predict_proba(ensemble.logit(p)[:, None])[:, 1]


def _last_two_table(x: np.ndarray, failed: np.ndarray, rows: slice) -> dict[tuple, float]:
    """Failure rate of the fit slice's jobs for each (last failed, second last failed) pair."""
    keys = list(zip(x[rows, LAST_FAILED], x[rows, SECOND_LAST_FAILED], strict=True))
    prior = float(failed[rows].mean())
    table = {}
    for key in set(keys):
        sel = np.array([k == key for k in keys])
        table[key] = (failed[rows][sel].sum() + 2 * prior) / (sel.sum() + 2)
    return table


def baselines(
    p: train.Prepared, fitted_members: dict[str, np.ndarray], n_fit: int, n_train: int, seed: int
) -> dict[str, np.ndarray]:
    """Failure scores of every baseline for all jobs from the validation slice on."""
    fit, rest = slice(0, n_fit), slice(n_fit, None)
    val = slice(0, n_train - n_fit)  # rows of REST that are the validation slice
    failed = p.failed.astype(float)
    out: dict[str, np.ndarray] = {}
    out["majority"] = np.full(len(p.jobs) - n_fit, failed[fit].mean())
    out["user_fail_rate"] = p.x[rest, USER_FAIL_RATE]
    table = _last_two_table(p.x, failed, fit)
    prior = float(failed[fit].mean())
    out["user_last_two"] = np.array(
        [
            table.get(k, prior)
            for k in zip(p.x[rest, LAST_FAILED], p.x[rest, SECOND_LAST_FAILED], strict=True)
        ]
    )
    scores: dict[str, np.ndarray] = {}
    if 0 < p.failed[fit].sum() < n_fit:
        lr = LogisticRegression(max_iter=500).fit(p.z[fit, :N_REQUEST], p.failed[fit])
        scores["lr_request"] = lr.predict_proba(p.z[rest, :N_REQUEST])[:, 1]
    gbt = train.gbt_model(seed)  # the GBT member's settings
    gbt.fit(train._f32(p.x[fit]), p.y[fit])
    scores["gbt_no_graph"] = ensemble.raw_failure(
        ensemble.expand(gbt.predict_proba(train._f32(p.x[rest])), gbt.classes_)
    )
    for m in ensemble.MEMBERS:
        scores[f"member_{m}"] = ensemble.raw_failure(fitted_members[m])
    for name, s in scores.items():
        out[name] = _platt(s[val], p.failed[n_fit:n_train], s)
    if all(j.get("p_fail") is not None for j in p.jobs):
        out[CEILING] = np.array([float(j["p_fail"]) for j in p.jobs[n_fit:]])
    return out


# -- the evaluation -----------------------------------------------------------------------------
def _onnx_scores(fitted: train.Fitted, p: train.Prepared, rows: slice) -> dict[str, np.ndarray]:
    """Members' class probabilities through ONNX Runtime, as the aggregator computes them."""
    with tempfile.TemporaryDirectory(prefix="nomade-eval-") as tmp:
        train.export(fitted, tmp)
        model = runtime.Model(tmp)
        return model.members(p.x[rows], *(a[rows] for a in p.nbr), p.gfeat[rows])


def per_class(y: np.ndarray, probs: np.ndarray) -> dict[str, dict[str, Any]]:
    out = {}
    for c, name in enumerate(features.CLASSES):
        pos = y == c
        if 0 < pos.sum() < len(y):
            out[name] = {
                "support": int(pos.sum()),
                "auc": float(roc_auc_score(pos, probs[:, c])),
                "pr_auc": float(average_precision_score(pos, probs[:, c])),
            }
    return out


def confusion(y: np.ndarray, probs: np.ndarray) -> list[list[int]]:
    """Rows: true class, columns: argmax class, both in CLASSES order."""
    c = len(features.CLASSES)
    m = np.zeros((c, c), dtype=np.int64)
    np.add.at(m, (y, probs.argmax(axis=1)), 1)
    return m.tolist()


def evaluate(
    jobs: list[dict[str, Any]],
    test_fraction: float = 0.3,
    cost_missed_failure: float = 5.0,
    cost_false_alarm: float = 1.0,
    epochs: int = 25,
    seed: int = 0,
) -> dict[str, Any]:
    """Train on the earliest jobs, score the later ones through ONNX Runtime; see module doc."""
    jobs = ended(jobs)
    n = len(jobs)
    n_train = split_point(n, test_fraction)
    n_fit = max(1, int(n_train * 0.8))
    costs = (cost_missed_failure, cost_false_alarm)
    test_failed = sum(features.is_failure(j["outcome"]) for j in jobs[n_train:])
    result: dict[str, Any] = {
        "data": summary(jobs),
        "protocol": {
            "test_fraction": test_fraction,
            "train_jobs": n_train,
            "fit_jobs": n_fit,
            "validation_jobs": n_train - n_fit,
            "test_jobs": n - n_train,
            "test_failures": int(test_failed),
            "split_start_time": features.start_order(jobs[n_train : n_train + 1])[0].get(
                "start_time"
            )
            if n > n_train
            else None,
            "cost_missed_failure": cost_missed_failure,
            "cost_false_alarm": cost_false_alarm,
            "epochs": epochs,
            "seed": seed,
        },
        "insufficient": False,
        # --mem/--time advice on the same test part; it needs no model, so it is judged also
        # where failure prediction has too little data.
        "rightsizing": rightsize_eval.evaluate(jobs, test_fraction),
    }
    train_failed = sum(features.is_failure(j["outcome"]) for j in jobs[:n_fit])
    short = too_little([features.is_failure(j["outcome"]) for j in jobs[n_train:]], "test part")
    if short:
        result.update(insufficient=True, reason=f"{short}; {NEEDED} are needed")
        return result
    if not 0 < train_failed < n_fit or n_train - n_fit < 1:
        result.update(insufficient=True, reason="the fit slice needs failures and successes")
        return result

    p = train.prepare(jobs, n_train)
    fitted = train.fit(p, n_train, epochs=epochs, seed=seed)
    rest = slice(n_fit, n)
    members = _onnx_scores(fitted, p, rest)
    framework = fitted.members(p, slice(n_train, n))
    combined = ensemble.combine(members, fitted.meta)
    val_n = n_train - n_fit
    failed = p.failed.astype(float)
    scores = {"ensemble": combined["p_fail"], **baselines(p, members, n_fit, n_train, seed)}
    fv, ft = failed[n_fit:n_train], failed[n_train:]
    metrics = {
        name: score_metrics(s[:val_n], fv, s[val_n:], ft, costs) for name, s in scores.items()
    }
    test_probs = combined["probs"][val_n:]
    y_test = p.y[n_train:]
    torch_p = ensemble.combine(framework, fitted.meta)["p_fail"]
    best = _best_baseline(metrics, members=True)
    simple = _best_baseline(metrics, members=False)
    result.update(
        failure=metrics,
        per_class=per_class(y_test, test_probs),
        confusion=confusion(y_test, test_probs),
        ensemble={
            "weights": fitted.meta["weights"],
            "platt": fitted.meta["platt"],
            "onnx_vs_framework_max_abs_diff": float(
                np.abs(torch_p - combined["p_fail"][val_n:]).max()
            ),
            **{
                k: fitted.meta[k]
                for k in ("member_validation_auc", "excluded_members", "no_better_than_chance")
            },
        },
        calibration=calibration(ensemble.raw_failure(test_probs), combined["p_fail"][val_n:], ft),
        best_baseline=best,
        best_simple_baseline=simple,
        ensemble_vs_simple=auc_difference(
            ft, scores["ensemble"][val_n:], scores[simple][val_n:], seed
        )
        if simple
        else None,
        ensemble_vs_best=auc_difference(ft, scores["ensemble"][val_n:], scores[best][val_n:], seed)
        if best
        else None,
        graph_contribution=auc_difference(
            ft, scores["member_gbt"][val_n:], scores["gbt_no_graph"][val_n:], seed
        ),
        arrays={
            "failed": ft.astype(bool),
            "y": y_test,
            "probs": test_probs,
            "scores": {name: s[val_n:] for name, s in scores.items()},
        },
    )
    return result


def _best_baseline(metrics: dict[str, dict[str, Any]], members: bool) -> str | None:
    """The baseline with the highest test AUC, never the generator's ceiling; with MEMBERS,
    the ensemble's members alone count as baselines too."""
    names = [
        n
        for n in metrics
        if n not in ("ensemble", CEILING) and (members or not n.startswith("member_"))
    ]
    names = [n for n in names if metrics[n]["auc"] is not None]
    return max(names, key=lambda n: metrics[n]["auc"]) if names else None


def shuffled_labels_auc(jobs: list[dict[str, Any]], seed: int = 0, **kwargs: Any) -> float | None:
    """The ensemble's test failure AUC after permuting outcomes among jobs before training (the
    history features and neighbours then see the permuted outcomes too): should be near 0.5."""
    rng = np.random.default_rng(seed)
    outcomes = [j["outcome"] for j in jobs]
    perm = rng.permutation(len(jobs))
    shuffled = [
        {**j, "outcome": outcomes[i], "p_fail": None} for j, i in zip(jobs, perm, strict=True)
    ]
    result = evaluate(shuffled, seed=seed, **kwargs)
    return None if result["insufficient"] else result["failure"]["ensemble"]["auc"]
