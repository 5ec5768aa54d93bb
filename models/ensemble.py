"""How the ensemble's members are combined and calibrated: pure numpy, shared by training,
evaluation and live scoring, so the aggregator computes exactly what the report measured.

    p(class) = sum_m w_m * p_m(class)                      (members: gnn, gbt, lr)
    p_fail   = sigmoid(a * logit(1 - p(COMPLETED) - p(CANCELLED)) + b)      (Platt scaling)
    health   = sum_c p(class c) * H_c      (H_c: mean health target of class c in training)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .features import CLASSES

MEMBERS = ("gnn", "gbt", "lr")
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
    p_fail = 1.0 / (1.0 + np.exp(-(a * logit(raw_failure(probs)) + b)))
    health = probs @ np.asarray(params["class_health"])
    return {"probs": probs, "p_fail": p_fail, "health": health}


def expand(probs: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Probabilities over the classes a model saw -> over all CLASSES (absent classes get 0)."""
    out = np.zeros((len(probs), len(CLASSES)))
    out[:, present] = probs
    return out


def log_loss(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-9, 1.0))))


def choose_weights(
    members: dict[str, np.ndarray], y: np.ndarray, step: float = 0.1
) -> dict[str, float]:
    """The convex combination of the members with the lowest log loss on validation data."""
    best, best_loss = None, np.inf
    grid = np.arange(0.0, 1.0 + 1e-9, step)
    for wg in grid:
        for wb in grid:
            wl = 1.0 - wg - wb
            if wl < -1e-9:
                continue
            w = {"gnn": wg, "gbt": wb, "lr": max(wl, 0.0)}
            loss = log_loss(sum(w[m] * members[m] for m in MEMBERS), y)
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
