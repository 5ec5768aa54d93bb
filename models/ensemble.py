"""How the ensemble's members are combined and calibrated: pure numpy, shared by training,
evaluation and live scoring, so the aggregator computes exactly what the report measured.

    p(class) = sum_m w_m * p_m(class)                      (members: gnn, gbt, lr)
    p_fail   = sigmoid(a * logit(1 - p(COMPLETED) - p(CANCELLED)) + b)      (Platt scaling)
               clipped to [0.02, 0.98]
    health   = sum_c p(class c) * H_c      (H_c: mean health target of class c in training)

p_fail is clipped to [P_MIN, P_MAX]: a few thousand jobs of history cannot vouch for "certain
to fail" or "cannot fail".  A member whose failure score does no better than chance on the
validation slice (AUC at or below 0.5) gets weight 0 (`choose_weights`).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from .features import CLASSES

MEMBERS = ("gnn", "gbt", "lr")
P_MIN, P_MAX = 0.02, 0.98  # the range of p_fail shown to users
CHANCE = 0.5  # a member's validation AUC must be above this to get any weight
_OK = np.array([c in ("COMPLETED", "CANCELLED") for c in CLASSES])


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def raw_failure(probs: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - probs[:, _OK].sum(axis=1), 0.0, 1.0)


def combine(members: dict[str, np.ndarray], params: dict[str, Any]) -> dict[str, np.ndarray]:
    weights = params["weights"]
    probs = sum(weights[m] * members[m] for m in MEMBERS if weights.get(m, 0) > 0)
    a, b = params["platt"]
    p_fail = np.clip(1.0 / (1.0 + np.exp(-(a * logit(raw_failure(probs)) + b))), P_MIN, P_MAX)
    health = probs @ np.asarray(params["class_health"])
    return {"probs": probs, "p_fail": p_fail, "health": health}


def expand(probs: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Probabilities over the classes a model saw -> over all CLASSES (absent classes get 0)."""
    out = np.zeros((len(probs), len(CLASSES)))
    out[:, present] = probs
    return out


def log_loss(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-9, 1.0))))


def auc(failed: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC of SCORE for FAILED (ties count one half), in numpy; None without both kinds."""
    failed = np.asarray(failed, dtype=bool)
    pos, neg = int(failed.sum()), int((~failed).sum())
    if pos == 0 or neg == 0:
        return None
    _, inv, counts = np.unique(np.asarray(score), return_inverse=True, return_counts=True)
    rank = (np.cumsum(counts) - (counts - 1) / 2.0)[inv]  # mean 1-based rank of tied scores
    return float((rank[failed].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def member_aucs(members: dict[str, np.ndarray], y: np.ndarray) -> dict[str, float | None]:
    """Each member's failure AUC (`raw_failure` of its class probabilities against the jobs
    that failed) on jobs of outcome classes Y; None where Y lacks failures or successes."""
    failed = ~_OK[np.asarray(y, dtype=np.int64)]
    return {m: auc(failed, raw_failure(members[m])) for m in MEMBERS}


def eligible(aucs: dict[str, float | None]) -> list[str]:
    """The members that may get weight: those whose validation AUC is above CHANCE, or every
    member when none is (the model is then no better than chance, `no_better_than_chance`)
    or when the AUCs could not be computed (validation jobs all failed or none did)."""
    above = [m for m in MEMBERS if aucs.get(m) is None or aucs[m] > CHANCE]
    return above or list(MEMBERS)


def no_better_than_chance(aucs: dict[str, float | None]) -> bool:
    """True when every member's validation AUC was computed and none is above CHANCE."""
    return all(aucs.get(m) is not None and aucs[m] <= CHANCE for m in MEMBERS)


def choose_weights(
    members: dict[str, np.ndarray],
    y: np.ndarray,
    step: float = 0.1,
    aucs: dict[str, float | None] | None = None,
) -> dict[str, float]:
    """The convex combination (grid STEP) of the eligible members with the lowest log loss on
    validation data; a member at or below chance (AUCS, computed from Y when not given) gets
    weight 0."""
    allowed = eligible(member_aucs(members, y) if aucs is None else aucs)
    steps = int(round(1.0 / step))
    best, best_loss = None, np.inf
    for counts in itertools.product(range(steps + 1), repeat=len(allowed) - 1):
        if sum(counts) > steps:
            continue
        w = dict.fromkeys(MEMBERS, 0.0)
        w.update(zip(allowed, [*counts, steps - sum(counts)], strict=True))
        w = {m: v / steps for m, v in w.items()}
        loss = log_loss(sum(w[m] * members[m] for m in allowed), y)
        if loss < best_loss - 1e-12:
            best, best_loss = w, loss
    return {m: round(float(v), 4) for m, v in best.items()}


def fit_platt(p_raw: np.ndarray, failed: np.ndarray) -> tuple[float, float]:
    """Logistic calibration of the failure probability: damped Newton steps on the log loss
    (a step that does not lower the loss is halved), so overconfident scores cannot make it
    run away."""
    x = logit(p_raw)
    y = failed.astype(np.float64)

    def loss(a: float, b: float) -> float:
        z = a * x + b
        return float(np.mean(np.logaddexp(0.0, z) - y * z))

    a, b = 1.0, 0.0
    current = loss(a, b)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(a * x + b)))
        g = np.array([np.sum((p - y) * x), np.sum(p - y)])
        w = p * (1 - p) + 1e-9
        h = np.array(
            [[np.sum(w * x * x), np.sum(w * x)], [np.sum(w * x), np.sum(w)]]
        ) + 1e-6 * np.eye(2)
        step = np.linalg.solve(h, g)
        scale = 1.0
        while scale > 1e-6 and loss(a - scale * step[0], b - scale * step[1]) > current:
            scale /= 2
        if scale <= 1e-6:
            break
        a, b = a - scale * step[0], b - scale * step[1]
        new = loss(a, b)
        if current - new < 1e-12:
            current = new
            break
        current = new
    return float(a), float(b)
