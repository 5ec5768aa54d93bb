"""Scoring a starting job with the active model: features from the store (read-only), the
neighbours from an in-memory index of recently ended jobs, the members in ONNX Runtime.

Scoring never waits for the store's writer: it reads through its own connection, and the caller
stores the verdict asynchronously.  A warning says why, and its evidence comes only from the
job's own user's past jobs: it never names other users or their jobs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aggregator import store
from models import ensemble, features, graph, rightsize
from models.runtime import Model

log = logging.getLogger("nomade.scoring")
CLASS_WORDS = {
    "OUT_OF_MEMORY": "runs out of memory",
    "TIMEOUT": "hits its time limit",
    "FAILED": "fails",
    "OTHER": "does not complete",
}


def pack(vec: np.ndarray) -> bytes:
    return np.asarray(vec, dtype=np.float64).tobytes()


def unpack(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.float64)


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.1f} GB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MB"


def explain(
    job: dict[str, Any],
    user_jobs: list[dict[str, Any]],
    p_fail: float,
    probs: dict[str, float],
    threshold: float,
    advice: dict[str, rightsize.Advice | None] | None = None,
    with_advice: bool = True,
) -> tuple[list[str], dict[str, Any]]:
    """The lines of a warning and its reasons; evidence from the user's own ended jobs only.
    WITH_ADVICE: end with the right-sizing line for the likely failure (memory or time)."""
    advice = advice or {}
    failure_classes = {c: p for c, p in probs.items() if c not in ("COMPLETED", "CANCELLED")}
    main = max(failure_classes, key=failure_classes.get)
    # When most of the user's own jobs of this very shape ended one way, that is the reason to
    # give (the model's class split is less sure than its failure probability).
    mem, limit = features.requested_mem_bytes(job), job.get("time_limit_seconds")
    shape = [
        j
        for j in user_jobs
        if features.requested_mem_bytes(j) == mem and j.get("time_limit_seconds") == limit
    ]
    for cls in ("OUT_OF_MEMORY", "TIMEOUT"):
        if shape and sum(j.get("outcome") == cls for j in shape) * 2 >= len(shape):
            main = cls
    reasons: dict[str, Any] = {"main_outcome": main, "p_fail": round(p_fail, 2)}
    lines = [f"NØMADE: high risk ({p_fail:.2f}) that this job {CLASS_WORDS[main]}."]
    resource = {"OUT_OF_MEMORY": "mem", "TIMEOUT": "time"}.get(main)
    if main == "OUT_OF_MEMORY" and mem:
        alike = [j for j in user_jobs if features.requested_mem_bytes(j) == mem]
        oom = [j for j in alike if j.get("outcome") == "OUT_OF_MEMORY"]
        # A job killed for memory peaked at its limit because it was stopped there: its peak is
        # not what it needed, so only the others' peaks are stated.
        peaks = [j["max_rss_bytes"] for j in alike if j.get("max_rss_bytes") and j not in oom]
        if alike:
            text = (
                f"NØMADE: {len(oom)} of your {len(alike)} recent jobs that requested {_gib(mem)}"
                " ran out of memory"
            )
            if peaks:
                text += f"; the largest peak of the others was {_gib(max(peaks))}."
            elif len(oom) == len(alike):
                text += " at that limit: they needed more."
            else:  # the others' peaks were never measured (too short for Slurm's sampling)
                text += "."
            lines.append(text)
            reasons.update(
                similar_jobs=len(alike),
                similar_failed=len(oom),
                requested_bytes=mem,
                peak_bytes=max(peaks) if peaks else None,
            )
    elif main == "TIMEOUT" and limit:
        alike = [j for j in user_jobs if j.get("time_limit_seconds") == limit]
        hit = [j for j in alike if j.get("outcome") == "TIMEOUT"]
        if alike:
            lines.append(
                f"NØMADE: {len(hit)} of your {len(alike)} recent jobs with this time limit"
                " timed out."
            )
            reasons.update(similar_jobs=len(alike), similar_failed=len(hit))
    else:
        failed = [j for j in user_jobs[-20:] if features.is_failure(j.get("outcome"))]
        if user_jobs:
            lines.append(
                f"NØMADE: {len(failed)} of your last {len(user_jobs[-20:])} jobs did not complete."
            )
            reasons.update(recent_jobs=len(user_jobs[-20:]), recent_failed=len(failed))
    advised = advice.get(resource) if resource else None
    if advised is not None:
        reasons["suggestion"] = advised.option
        if with_advice:
            lines.append(advised.text())
    lines.append(f"NØMADE: Details: nomadectl job {job['job_id']}")
    return lines, reasons


@dataclass
class Assessment:
    """What scoring a starting job gives: its features, the verdict (None without an active
    model) and the right-sizing advice (from its user's history, with or without a model)."""

    x: np.ndarray
    verdict: dict[str, Any] | None
    advice: dict[str, rightsize.Advice | None]

    def lines(self, mode: str) -> tuple[list[str], bool]:
        """The lines for the job's output under the site's advice MODE, and whether any of
        them is advice for a job that was not warned (the agent prints those too)."""
        v = self.verdict
        if v is not None and v["warned"]:
            lines = list(v["lines"])
            if mode != "never":
                extra = [t for t in rightsize.lines(self.advice) if t not in lines]
                lines[-1:-1] = extra  # before "Details: ..."
            return lines, False
        if mode == "always":
            extra = rightsize.lines(self.advice)
            return extra, bool(extra)
        return [], False


class Scorer:
    """Holds the active model and the neighbour index; thread-safe."""

    def __init__(self, database: str, threshold: float = 0.5, advice: str = "risky") -> None:
        self.database, self.threshold, self.advice_mode = database, threshold, advice
        self.model: Model | None = None
        self.version: str | None = None
        self.index: graph.NeighborIndex | None = None
        self._stale: str | None = None  # an active model of another feature version, logged once
        self._lock = threading.Lock()
        self._local = threading.local()

    def conn(self) -> Any:
        """This thread's read-only connection to the store."""
        c = getattr(self._local, "conn", None)
        if c is None:
            c = self._local.conn = store.connect(self.database, readonly=True, busy_timeout=5.0)
        return c

    def reload(self) -> str | None:
        """Load the active model if it changed; (re)build the neighbour index."""
        conn = self.conn()
        try:
            row = store.active_model(conn)
        except store.StoreError:
            return None
        if row is None:
            self.model, self.version, self.index = None, None, None
            return None
        if row["version"] == self.version:
            return self.version
        if row["feature_version"] != features.FEATURE_VERSION:
            # Trained on features this code no longer computes: no verdicts until a retrain.
            if row["version"] != self._stale:
                log.warning(
                    "active model %s uses feature version %s, this aggregator computes version %s:"
                    " jobs are not scored until a model is trained (nomadectl train)",
                    row["version"],
                    row["feature_version"],
                    features.FEATURE_VERSION,
                )
                self._stale = row["version"]
            with self._lock:
                self.model, self.version, self.index = None, None, None
            return None
        model = Model(row["path"])
        index = graph.NeighborIndex(len(features.FEATURE_NAMES))
        rows = store.recent_vectors(conn, features.FEATURE_VERSION, 2 * index.window)
        if rows:
            x = np.vstack([unpack(r[3]) for r in rows])
            index.extend(
                np.array([r[0] for r in rows]),
                np.array([r[1] for r in rows]),
                model.scaler.transform(x),
                np.array([features.outcome_class(r[2]) for r in rows]),
            )
        with self._lock:
            self.model, self.version, self.index = model, row["version"], index
        log.info(
            "scoring with model %s (%d recent jobs in the neighbour index)",
            self.version,
            len(index),
        )
        return self.version

    def add_ended(self, job_id: int, end_time: float, outcome: str, vector: np.ndarray) -> None:
        with self._lock:
            if self.model is None or self.index is None:
                return
            z = self.model.scaler.transform(vector[None, :])
            self.index.extend(
                np.array([end_time]),
                np.array([job_id]),
                z,
                np.array([features.outcome_class(outcome)]),
            )

    def vector(self, job: dict[str, Any]) -> np.ndarray:
        return features.live_vector(job, store.start_history(self.conn(), job))

    def assess(self, job: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any] | None]:
        """A starting job's feature vector and verdict, reading its history once."""
        found = self.examine(job)
        return found.x, found.verdict

    def examine(self, job: dict[str, Any]) -> Assessment:
        """A starting job's features, verdict and right-sizing advice, reading its history once."""
        views = store.start_history(self.conn(), job).views()
        x = features.vector(job, *views)
        try:
            advice = rightsize.advise(job, views[0].jobs, views[4].jobs)
        except Exception:  # advice never costs a job its verdict
            log.exception("right-sizing job %s failed; it gets no advice", job.get("job_id"))
            advice = {"mem": None, "time": None}
        return Assessment(x, self.score(job, x, views[0].jobs, advice), advice)

    def score(
        self,
        job: dict[str, Any],
        x: np.ndarray | None = None,
        user_jobs: Sequence[dict[str, Any]] | None = None,
        advice: dict[str, rightsize.Advice | None] | None = None,
    ) -> dict[str, Any] | None:
        """The verdict for a starting job, or None when no model is active."""
        with self._lock:
            model, index, version = self.model, self.index, self.version
        if model is None or index is None:
            return None
        t0 = time.perf_counter()
        x = self.vector(job) if x is None else x
        z = model.scaler.transform(x[None, :])
        start = job.get("start_time") or job["submit_time"]
        nz, ncls, sims = index.query(z[0], start, model.k)
        k = model.k
        nx, ny = np.zeros((1, k, z.shape[1])), np.zeros((1, k, model.classes))
        s, m, cls = np.zeros((1, k)), np.zeros((1, k)), np.zeros((1, k), dtype=np.int64)
        n = len(ncls)
        nx[0, :n], ny[0, np.arange(n), ncls], s[0, :n], m[0, :n], cls[0, :n] = (
            nz,
            1.0,
            sims,
            1.0,
            ncls,
        )
        gfeat = graph.graph_features(cls, s, m)
        res = ensemble.combine(model.members(x[None, :], nx, ny, s, m, gfeat), model.meta)
        # Rounded once: the warning's "high risk (0.93)" and the stored p_fail must be one number
        # (0.934996 printed as 0.93 was stored as 0.935, which reads as 0.94).
        p_fail = round(float(res["p_fail"][0]), 4)
        probs = {
            c: round(float(p), 4) for c, p in zip(features.CLASSES, res["probs"][0], strict=True)
        }
        verdict = {
            "job_id": job["job_id"],
            "model_version": version,
            "p_fail": p_fail,
            "health": round(float(res["health"][0]), 4),
            "probs": probs,
            "risk": "high" if p_fail >= self.threshold else "low",
            "warned": p_fail >= self.threshold,
            "lines": [],
            "reasons": {},
            "score_ms": 0.0,
        }
        if verdict["warned"]:
            if user_jobs is None:
                user_jobs = store.start_history(self.conn(), job).user
            if advice is None:
                advice = rightsize.advise(job, user_jobs)
            verdict["lines"], verdict["reasons"] = explain(
                job,
                list(user_jobs),
                p_fail,
                probs,
                self.threshold,
                advice,
                with_advice=self.advice_mode != "never",
            )
        verdict["score_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        return verdict


def model_dir(data_dir: str, version: str) -> Path:
    return Path(data_dir) / "models" / version
