"""Start-time features of a job: one module for training and for live scoring.

Only what is known when a job starts: its request, the history of its user and account up to
its submit time (jobs that had *ended* by then), its name's tokens, and how busy the cluster was
in the hour before it started.  Never the job's own outcome, nothing from after it started.

Training replays jobs in order through `Replay`; live scoring builds the same `HistoryView`s from
the rows the store reads (`StartHistory`, from aggregator.store's `start_history`).  Both then
call `vector()`, so the two paths cannot compute a feature differently (a test replays stored
jobs through both and compares).
"""

from __future__ import annotations

import functools
import heapq
import math
import re
import zlib
from bisect import bisect_left
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

FEATURE_VERSION = 2
WINDOW = 100  # ended jobs of a user (or account) that the history features look at
KIND_WINDOW = 100  # ended jobs of a user's kind (same name key) that the kind features look at
ACTIVITY_SECONDS = 3600.0
CLASSES = ("COMPLETED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "CANCELLED", "OTHER")
NOT_FAILURE = {"COMPLETED", "CANCELLED"}
FAIL_PRIOR, RARE_PRIOR, PRIOR_WEIGHT = 0.2, 0.05, 2.0
NAME_BUCKETS, PARTITION_BUCKETS = 8, 4
MiB = float(1 << 20)

# What a job row must carry; the jobs table's columns.
JOB_KEYS = (
    "job_id",
    "user",
    "account",
    "partition",
    "job_name",
    "submit_time",
    "start_time",
    "end_time",
    "nodes_requested",
    "cpus",
    "mem_per_node_bytes",
    "mem_per_cpu_bytes",
    "gpus",
    "time_limit_seconds",
    "outcome",
    "elapsed_seconds",
    "max_rss_bytes",
)


def outcome_class(outcome: str | None) -> int:
    return CLASSES.index(outcome) if outcome in CLASSES else CLASSES.index("OTHER")


def is_failure(outcome: str | None) -> bool:
    return outcome not in NOT_FAILURE


def health(job: dict[str, Any]) -> float:
    """The health target, 0 to 1 (docs/models.md): 0 for a failure, 0.5 for a cancelled job;
    a completed job starts at 1 and loses 0.25 for each near miss: it used more than 90% of its
    time limit, or its peak memory passed 90% of what it asked for."""
    outcome = job.get("outcome")
    if is_failure(outcome):
        return 0.0
    if outcome == "CANCELLED":
        return 0.5
    score = 1.0
    limit, elapsed = job.get("time_limit_seconds"), job.get("elapsed_seconds")
    if limit and elapsed is not None and elapsed > 0.9 * limit:
        score -= 0.25
    mem, rss = requested_mem_bytes(job), job.get("max_rss_bytes")
    if mem and rss is not None and rss > 0.9 * mem:
        score -= 0.25
    return score


def requested_mem_bytes(job: dict[str, Any]) -> float | None:
    """Memory per node asked for (per-CPU requests times the CPUs of a node)."""
    if job.get("mem_per_node_bytes"):
        return float(job["mem_per_node_bytes"])
    if job.get("mem_per_cpu_bytes"):
        nodes = job.get("nodes_requested") or 1
        cpus = job.get("cpus") or 1
        return float(job["mem_per_cpu_bytes"]) * max(1.0, cpus / nodes)
    return None


def _hash_bucket(text: str, buckets: int) -> int:
    return zlib.crc32(text.encode()) % buckets


def name_tokens(name: str | None) -> list[str]:
    """'train_resnet-50.sh' -> ['train', 'resnet']: lower-case words, digits and suffix dropped."""
    if not name:
        return []
    stem = re.sub(r"\.(sh|slurm|sbatch|py|job)$", "", name.lower())
    return [t for t in re.split(r"[^a-z]+", stem) if len(t) > 1]


@functools.lru_cache(maxsize=8192)
def name_key(name: str | None) -> str:
    """The kind of a job as Slurm knows it at start: the first word of its name
    ('train_resnet_e10' -> 'train'), lower-case ASCII letters only, '' when the name has none.
    Only ASCII letters, so that the store's case-insensitive `LIKE '%key%'` finds every job of
    this kind (the store's `start_history`)."""
    if not name:
        return ""
    stem = re.sub(r"\.(sh|slurm|sbatch|py|job)$", "", name, flags=re.IGNORECASE)
    return next((t.lower() for t in re.findall(r"[A-Za-z]+", stem) if len(t) > 1), "")


@dataclass
class HistoryView:
    """The ended jobs of one user (or account) before a moment, oldest first, at most WINDOW."""

    jobs: Sequence[dict[str, Any]]


def history_features(view: HistoryView) -> list[float]:
    jobs = view.jobs
    n = len(jobs)
    fails = sum(is_failure(j.get("outcome")) for j in jobs)
    ooms = sum(j.get("outcome") == "OUT_OF_MEMORY" for j in jobs)
    timeouts = sum(j.get("outcome") == "TIMEOUT" for j in jobs)
    mem_ratios = [
        min(4.0, j["max_rss_bytes"] / requested_mem_bytes(j))
        for j in jobs
        if j.get("max_rss_bytes") and requested_mem_bytes(j)
    ]
    time_ratios = [
        min(4.0, j["elapsed_seconds"] / j["time_limit_seconds"])
        for j in jobs
        if j.get("elapsed_seconds") is not None and j.get("time_limit_seconds")
    ]
    last = [is_failure(j.get("outcome")) for j in jobs[-2:]]
    return [
        math.log1p(n),
        (fails + PRIOR_WEIGHT * FAIL_PRIOR) / (n + PRIOR_WEIGHT),
        (ooms + PRIOR_WEIGHT * RARE_PRIOR) / (n + PRIOR_WEIGHT),
        (timeouts + PRIOR_WEIGHT * RARE_PRIOR) / (n + PRIOR_WEIGHT),
        float(np.mean(mem_ratios)) if mem_ratios else 0.5,
        float(np.max(mem_ratios)) if mem_ratios else 0.5,
        float(np.mean(time_ratios)) if time_ratios else 0.5,
        float(last[-1]) if last else 0.0,
        float(last[0]) if len(last) == 2 else 0.0,
        float(jobs[-1].get("outcome") == "OUT_OF_MEMORY") if jobs else 0.0,
    ]


USER_NAMES = (
    "log_jobs",
    "fail_rate",
    "oom_rate",
    "timeout_rate",
    "mem_used_ratio_mean",
    "mem_used_ratio_max",
    "time_used_ratio_mean",
    "last_failed",
    "second_last_failed",
    "last_oom",
)


def _log2_ratio(a: float | None, b: float | None) -> float:
    """log2(a / b) bounded to [-8, 8] (a job that peaked at a few KB must not dominate);
    0 unknown."""
    if not a or not b:
        return 0.0
    return max(-8.0, min(8.0, math.log2(a / b)))


def _fit_features(job: dict[str, Any], user: HistoryView) -> list[float]:
    """The request against what this user's jobs actually used (log2 ratios; 0 when unknown)."""
    mem = requested_mem_bytes(job)
    peaks = [j["max_rss_bytes"] for j in user.jobs if j.get("max_rss_bytes")]
    used = [j["elapsed_seconds"] for j in user.jobs if j.get("elapsed_seconds")]
    limit = job.get("time_limit_seconds")
    return [
        _log2_ratio(mem, float(np.mean(peaks)) if peaks else None),
        _log2_ratio(mem, float(np.max(peaks)) if peaks else None),
        _log2_ratio(limit, float(np.mean(used)) if used else None),
        _log2_ratio(limit, float(np.max(used)) if used else None),
    ]


def _rate(count: float, n: int, prior: float) -> float:
    return (count + PRIOR_WEIGHT * prior) / (n + PRIOR_WEIGHT)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _would_not_fit(
    hit_limit: bool, want: float | None, asked: float | None, used: float | None
) -> float:
    """Whether an earlier job would not have fitted WANT (this job's request): one that hit its
    own limit (ran out of memory, timed out) used more than it ASKED, so more than WANT when it
    had asked at least as much, and unknown (one half) when it asked less; any other one when
    it USED more than WANT.  0 when this job's request is unknown."""
    if not want:
        return 0.0
    if hit_limit:
        return 1.0 if asked and asked >= want else 0.5
    return 1.0 if used and used > want else 0.0


def kind_features(
    job: dict[str, Any], kind: HistoryView, user_hist: list[float], user_fit: list[float]
) -> list[float]:
    """The request against the user's earlier jobs of the same kind (`name_key`): what those
    used, how they ended, what the user usually asks for them (a larger request than usual for
    this kind says the job is larger), and how many of them would not have fitted this request.
    With few such jobs, rates are smoothed towards the user's own rates, and a missing ratio
    falls back to the user's (0 when unknown).  USER_HIST and USER_FIT: `history_features` and
    `_fit_features` of the user's history."""
    jobs = kind.jobs
    n = len(jobs)
    ufail, uoom, utimeout = user_hist[1:4]
    mem = requested_mem_bytes(job)
    limit = job.get("time_limit_seconds")
    peaks, used, log_asked, log_limits, mem_ratios, time_ratios = [], [], [], [], [], []
    fails = ooms = timeouts = 0
    over_mem = over_time = 0.0  # jobs that would not have fitted this request (_would_not_fit)
    for j in jobs:
        outcome, asked = j.get("outcome"), requested_mem_bytes(j)
        rss, elapsed, own = (
            j.get("max_rss_bytes"),
            j.get("elapsed_seconds"),
            j.get("time_limit_seconds"),
        )
        fails += is_failure(outcome)
        if rss:
            peaks.append(rss)
            if asked:
                mem_ratios.append(min(4.0, rss / asked))
        if elapsed:
            used.append(elapsed)
        if elapsed is not None and own:
            time_ratios.append(min(4.0, elapsed / own))
        if asked:
            log_asked.append(math.log2(asked))
        if own:
            log_limits.append(math.log2(own))
        ooms += outcome == "OUT_OF_MEMORY"
        timeouts += outcome == "TIMEOUT"
        over_mem += _would_not_fit(outcome == "OUT_OF_MEMORY", mem, asked, rss)
        over_time += _would_not_fit(outcome == "TIMEOUT", limit, own, elapsed)
    fit = user_fit
    return [
        math.log1p(n),
        _rate(fails, n, ufail),
        _rate(ooms, n, uoom),
        _rate(timeouts, n, utimeout),
        _mean(mem_ratios) if mem_ratios else user_hist[4],
        max(mem_ratios) if mem_ratios else user_hist[5],
        _mean(time_ratios) if time_ratios else user_hist[6],
        _log2_ratio(mem, _mean(peaks)) if peaks else fit[0],
        _log2_ratio(mem, max(peaks)) if peaks else fit[1],
        _log2_ratio(limit, _mean(used)) if used else fit[2],
        _log2_ratio(limit, max(used)) if used else fit[3],
        _log2_ratio(mem, 2.0 ** _mean(log_asked)) if log_asked else 0.0,
        _log2_ratio(limit, 2.0 ** _mean(log_limits)) if log_limits else 0.0,
        _rate(over_mem, n, uoom) if mem else uoom,
        _rate(over_time, n, utimeout) if limit else utimeout,
    ]


KIND_NAMES = USER_NAMES[:7]  # the kind's history features: the user's first seven


def request_features(job: dict[str, Any]) -> list[float]:
    mem = requested_mem_bytes(job)
    limit = job.get("time_limit_seconds")
    part = [0.0] * PARTITION_BUCKETS
    if job.get("partition"):
        part[_hash_bucket(job["partition"], PARTITION_BUCKETS)] = 1.0
    names = [0.0] * NAME_BUCKETS
    for token in name_tokens(job.get("job_name")):
        names[_hash_bucket(token, NAME_BUCKETS)] += 1.0
    return [
        math.log2(mem / MiB) if mem else 0.0,
        float(mem is None),
        math.log2(job.get("cpus") or 1),
        float(job.get("nodes_requested") or 1),
        float(job.get("gpus") or 0),
        math.log2(limit / 60.0) if limit else 0.0,
        float(limit is None),
        *part,
        *names,
    ]


FEATURE_NAMES: tuple[str, ...] = (
    "log2_mem_mib",
    "mem_unknown",
    "log2_cpus",
    "nodes",
    "gpus",
    "log2_time_limit_min",
    "time_limit_unknown",
    *(f"partition_bucket_{i}" for i in range(PARTITION_BUCKETS)),
    *(f"name_bucket_{i}" for i in range(NAME_BUCKETS)),
    *(f"user_{n}" for n in USER_NAMES),
    "log2_mem_over_user_mean_peak",
    "log2_mem_over_user_max_peak",
    "log2_limit_over_user_mean_elapsed",
    "log2_limit_over_user_max_elapsed",
    *(f"account_{n}" for n in USER_NAMES[:4]),
    "log_cluster_starts_last_hour",
    "log_user_starts_last_hour",
    *(f"kind_{n}" for n in KIND_NAMES),
    "log2_mem_over_kind_mean_peak",
    "log2_mem_over_kind_max_peak",
    "log2_limit_over_kind_mean_elapsed",
    "log2_limit_over_kind_max_elapsed",
    "log2_mem_over_kind_usual_request",
    "log2_limit_over_kind_usual_limit",
    "kind_share_peak_over_request",
    "kind_share_elapsed_over_limit",
)


def vector(
    job: dict[str, Any],
    user: HistoryView,
    account: HistoryView,
    cluster_starts: int,
    user_starts: int,
    kind: HistoryView,
) -> np.ndarray:
    """KIND: the user's ended jobs with the job's `name_key` (at most KIND_WINDOW)."""
    user_hist, user_fit = history_features(user), _fit_features(job, user)
    values = [
        *request_features(job),
        *user_hist,
        *user_fit,
        *history_features(account)[:4],
        math.log1p(cluster_starts),
        math.log1p(user_starts),
        *kind_features(job, kind, user_hist, user_fit),
    ]
    return np.asarray(values, dtype=np.float64)


def _order(job: dict[str, Any]) -> tuple[float, int]:
    return (job["end_time"], job["job_id"])


class Replay:
    """Features of jobs in chronological order, each seeing only what had happened by its start.

    Feed jobs sorted by start time; `vector_for` returns a job's features.  A job's own outcome
    is added to the history only once its end time has passed another job's submit time.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[float, int, int, dict[str, Any]]] = []  # ended-later heap
        self._users: dict[str, deque] = defaultdict(lambda: deque(maxlen=WINDOW))
        self._accounts: dict[str, deque] = defaultdict(lambda: deque(maxlen=WINDOW))
        self._kinds: dict[tuple[str, str], deque] = defaultdict(lambda: deque(maxlen=KIND_WINDOW))
        self._starts: list[float] = []
        self._user_starts: dict[str, list[float]] = defaultdict(list)
        self._n = 0

    def _advance(self, until: float) -> None:
        while self._pending and self._pending[0][0] <= until:
            _, _, _, job = heapq.heappop(self._pending)
            self._users[job.get("user") or ""].append(job)
            self._accounts[job.get("account") or ""].append(job)
            self._kinds[(job.get("user") or "", name_key(job.get("job_name")))].append(job)

    def vector_for(self, job: dict[str, Any]) -> np.ndarray:
        self._advance(job["submit_time"])
        start = job.get("start_time") or job["submit_time"]
        user = job.get("user") or ""
        # Jobs that started in the hour before this one, strictly earlier (as the store sees it).
        since = start - ACTIVITY_SECONDS
        cluster = bisect_left(self._starts, start) - bisect_left(self._starts, since)
        mine = self._user_starts[user]
        user_count = bisect_left(mine, start) - bisect_left(mine, since)
        kind = HistoryView(list(self._kinds.get((user, name_key(job.get("job_name"))), ())))
        return vector(
            job,
            HistoryView(list(self._users[user])),
            HistoryView(list(self._accounts[job.get("account") or ""])),
            cluster,
            user_count,
            kind,
        )

    def record(self, job: dict[str, Any]) -> None:
        """Count the job's start, and queue its outcome for jobs submitted after it ended."""
        if job.get("start_time") is not None:  # a job cancelled while pending never started
            self._starts.append(job["start_time"])  # fed in start order: stays sorted
            self._user_starts[job.get("user") or ""].append(job["start_time"])
        if job.get("end_time") is not None and job.get("outcome"):
            self._n += 1
            heapq.heappush(self._pending, (job["end_time"], job["job_id"], self._n, job))


def start_order(jobs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(jobs, key=lambda j: (j.get("start_time") or j["submit_time"], j["job_id"]))


def matrix(jobs: Sequence[dict[str, Any]]) -> np.ndarray:
    """Features of JOBS (already in start order), each from the jobs before it in the list."""
    replay, rows = Replay(), []
    for job in jobs:
        rows.append(replay.vector_for(job))
        replay.record(job)
    return np.vstack(rows) if rows else np.zeros((0, len(FEATURE_NAMES)))


# -- the live path ---------------------------------------------------------------------------
@dataclass
class StartHistory:
    """What a starting job's features read from the store (aggregator.store's `start_history`),
    as plain rows oldest first: the same inputs `Replay` builds in training."""

    user: Sequence[dict[str, Any]]  # the user's last WINDOW ended jobs
    account: Sequence[dict[str, Any]]  # the account's last WINDOW ended jobs
    cluster_starts: int  # jobs started in the hour before it
    user_starts: int  # of them, the user's
    kind: Sequence[dict[str, Any]]  # the user's last KIND_WINDOW ended jobs of its name key

    def views(self) -> tuple[HistoryView, HistoryView, int, int, HistoryView]:
        return (
            HistoryView(self.user),
            HistoryView(self.account),
            self.cluster_starts,
            self.user_starts,
            HistoryView(self.kind),
        )


def live_vector(job: dict[str, Any], history: StartHistory) -> np.ndarray:
    return vector(job, *history.views())
