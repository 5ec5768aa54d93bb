"""The job-similarity network: each job's nearest neighbours by cosine similarity on standardized
start-time features, among jobs that had ended before it started.

Candidates are the `window` most recently ended jobs (default 10,000), which bounds the cost of a
query (one matrix product) whatever the length of the history.  Training finds neighbours for
blocks of jobs at once; live scoring keeps a `NeighborIndex` of recently ended jobs in memory.
Pure numpy: the aggregator imports this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .features import CLASSES

K = 10
WINDOW = 10_000
CLIP = 4.0
GRAPH_FEATURE_NAMES = (
    "nbr_fail_rate",
    "nbr_oom_rate",
    "nbr_timeout_rate",
    "nbr_mean_sim",
    "nbr_count",
)
_FAIL = np.array([c not in ("COMPLETED", "CANCELLED") for c in CLASSES], dtype=np.float64)
_OOM = CLASSES.index("OUT_OF_MEMORY")
_TIMEOUT = CLASSES.index("TIMEOUT")


@dataclass
class Scaler:
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Scaler:
        std = x.std(axis=0)
        return cls(x.mean(axis=0), np.where(std > 1e-9, std, 1.0))

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Standardize, bounded to +-4 standard deviations: a job unlike any in training must
        not push the linear and neural members far outside what they learned."""
        return np.clip((x - self.mean) / self.std, -CLIP, CLIP)


def unit(z: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(z, axis=-1, keepdims=True)
    return z / np.where(norm > 1e-12, norm, 1.0)


def _top_k(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices and values of each row's k largest entries, best first (-inf = none)."""
    k_eff = min(k, sims.shape[1])
    if k_eff == 0:
        return np.zeros((sims.shape[0], 0), dtype=np.int64), np.zeros((sims.shape[0], 0))
    part = np.argpartition(-sims, k_eff - 1, axis=1)[:, :k_eff]
    vals = np.take_along_axis(sims, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(vals, order, axis=1)


def neighbours(
    z: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    k: int = K,
    window: int = WINDOW,
    block: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """For every job i: indices of its k most similar jobs j with end[j] < start[i] (-1 = none)
    and the cosine similarities.  Rows of Z are standardized feature vectors."""
    n = len(z)
    u = unit(z)
    by_end = np.argsort(end, kind="stable")
    end_sorted = end[by_end]
    idx = np.full((n, k), -1, dtype=np.int64)
    sim = np.zeros((n, k))
    order = np.argsort(start, kind="stable")
    for a in range(0, n, block):
        rows = order[a : a + block]
        hi = np.searchsorted(end_sorted, start[rows].max(), side="left")
        cand = by_end[max(0, hi - window) : hi]
        if len(cand) == 0:
            continue
        s = u[rows] @ u[cand].T
        s[end[cand][None, :] >= start[rows][:, None]] = -np.inf  # ended before *this* job started
        top, val = _top_k(s, k)
        ok = np.isfinite(val)
        idx[rows, : top.shape[1]] = np.where(ok, cand[top], -1)
        sim[rows, : top.shape[1]] = np.where(ok, val, 0.0)
    return idx, sim


def graph_features(nbr_class: np.ndarray, sim: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Similarity-weighted outcome rates of the neighbours (n, k) -> (n, 5)."""
    w = np.clip(sim, 0.0, None) * mask
    total = w.sum(axis=1)
    safe = np.where(total > 0, total, 1.0)
    cls = np.where(mask > 0, nbr_class, 0)
    fail = (w * _FAIL[cls]).sum(axis=1) / safe
    oom = (w * (cls == _OOM)).sum(axis=1) / safe
    timeout = (w * (cls == _TIMEOUT)).sum(axis=1) / safe
    count = mask.sum(axis=1)
    mean_sim = (sim * mask).sum(axis=1) / np.where(count > 0, count, 1.0)
    return np.column_stack([fail, oom, timeout, mean_sim, count])


def gather(idx: np.ndarray, sim: np.ndarray, z: np.ndarray, cls: np.ndarray):
    """Neighbour tensors for the GNN: features (n,k,d), one-hot outcomes (n,k,C), sims, mask."""
    mask = (idx >= 0).astype(np.float64)
    safe = np.where(idx >= 0, idx, 0)
    nx = z[safe] * mask[..., None]
    ncls = cls[safe]
    ny = np.eye(len(CLASSES))[ncls] * mask[..., None]
    return nx, ny, sim * mask, mask, np.where(idx >= 0, ncls, 0)


class NeighborIndex:
    """Recently ended jobs (standardized vectors, outcome classes, end times) for live queries.

    Kept as contiguous arrays sorted by end time, so a query is one slice and one matrix-vector
    product over at most `window` rows, however long the history.
    """

    def __init__(self, dim: int, window: int = WINDOW) -> None:
        self.window, self.dim = window, dim
        self.z = np.zeros((0, dim))
        self.u = np.zeros((0, dim))
        self.cls = np.zeros(0, dtype=np.int64)
        self.end = np.zeros(0)
        self.job_id = np.zeros(0, dtype=np.int64)
        self._seen: set[tuple[float, int]] = set()

    def __len__(self) -> int:
        return len(self.end)

    def extend(self, end: np.ndarray, job_id: np.ndarray, z: np.ndarray, cls: np.ndarray) -> None:
        """Add ended jobs (any order); keeps the newest 2 x window by end time."""
        keep = [
            i
            for i, key in enumerate(zip(end.tolist(), job_id.tolist(), strict=True))
            if key not in self._seen
        ]
        if not keep:
            return
        self._seen.update(zip(end[keep].tolist(), job_id[keep].tolist(), strict=True))
        end_all = np.concatenate([self.end, end[keep]])
        order = np.lexsort((np.concatenate([self.job_id, job_id[keep]]), end_all))[
            -2 * self.window :
        ]
        z_all = np.vstack([self.z, np.asarray(z, dtype=np.float64)[keep]])
        self.z, self.u = z_all[order], unit(z_all[order])
        self.cls = np.concatenate([self.cls, cls[keep]])[order]
        self.job_id = np.concatenate([self.job_id, job_id[keep]])[order]
        self.end = end_all[order]
        if len(self._seen) > 4 * self.window:
            self._seen = set(zip(self.end.tolist(), self.job_id.tolist(), strict=True))

    def query(self, z: np.ndarray, start: float, k: int = K):
        """The k most similar jobs that ended before START: (rows of z, classes, sims)."""
        hi = int(np.searchsorted(self.end, start, side="left"))
        lo = max(0, hi - self.window)
        if hi == lo:
            return np.zeros((0, self.dim)), np.zeros(0, dtype=np.int64), np.zeros(0)
        s = self.u[lo:hi] @ unit(np.asarray(z, dtype=np.float64))
        top, val = _top_k(s[None, :], k)
        rows = top[0] + lo
        return self.z[rows], self.cls[rows], val[0]
