"""Right-sizing: how much memory and time a starting job will need, from its user's earlier jobs.

    advise(job, user_jobs, kind_jobs) -> {"mem": Advice | None, "time": Advice | None}

The need of an ended job is what it used, or, where the job was stopped before it could show its
need, a lower bound (a *censored* observation):

- memory: the peak (MaxRSS or the agents' cgroup peak) of a COMPLETED job; an OUT_OF_MEMORY job
  needed more than its limit (at least the larger of its limit and its peak); a job that failed,
  timed out or was cancelled peaked at least as high as it got before it stopped.
- time: the run time of a COMPLETED job; a TIMEOUT job needed more than its time limit; a job that
  failed, ran out of memory or was cancelled ran for less than it would have needed (at least its
  run time).

The pool is the user's most recent POOL jobs of the same kind (`features.name_key`: the first
word of the job name), or, with fewer than KIND_MIN of those, the user's most recent POOL jobs.
The need's QUANTILE comes from the Kaplan-Meier estimate over the pool (censored observations
count as "at least"), times HEADROOM, rounded up to a value Slurm takes.  When the quantile lies
beyond every observation (the largest ones hit their limit), the need is known only to exceed
the largest limit hit: the advice is that limit times GROWTH, and says that it is a guess.

Only the job's own user's jobs are read, and the advice names no other user's job.  Pure Python
over job dicts, shared by live scoring (aggregator/predict/scoring.py), `nomadectl check` and the
evaluation (models/rightsize_eval.py), so the report measures what users are told.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .features import name_key, requested_mem_bytes

QUANTILE = 0.95  # the share of similar jobs the suggestion should fit
HEADROOM = 1.1  # over the quantile: a new run varies, and sacct samples MaxRSS only now and then
GROWTH = 2.0  # when every job like it hit its limit: twice the largest limit hit
POOL = 30  # the most recent similar jobs looked at
KIND_MIN = 5  # fewer jobs of the kind than this: the user's jobs of any kind are the pool
MIN_JOBS = 3  # fewer observations than this: no advice
KIND_SHOWN = 40  # characters of the kind a line names (a job name's first word can be long)
MiB, GiB = float(1 << 20), float(1 << 30)
MIN_MEM, MIN_TIME = 100 * MiB, 60.0


@dataclass(frozen=True)
class Need:
    value: float  # bytes or seconds
    censored: bool  # the job needed more than VALUE
    at_limit: bool  # censored because it hit its own limit (OUT_OF_MEMORY, TIMEOUT)


MAX_VALUE = 2.0**62  # bytes or seconds beyond any job: a corrupt row, not a need


def _value(v: Any) -> float:
    """V as a positive finite number of bytes or seconds, else 0 (unknown): a stored row may
    hold anything an import or a report put there."""
    try:
        f = float(v or 0)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    return f if 0 < f < MAX_VALUE else 0.0  # NaN fails both comparisons


def memory_need(job: dict[str, Any]) -> Need | None:
    rss, asked = _value(job.get("max_rss_bytes")), _value(requested_mem_bytes(job))
    outcome = job.get("outcome")
    if outcome == "OUT_OF_MEMORY":
        bound = max(rss, asked)
        return Need(bound, True, True) if bound > 0 else None
    if rss <= 0 or not outcome:
        return None
    return Need(rss, outcome != "COMPLETED", False)


def time_need(job: dict[str, Any]) -> Need | None:
    elapsed, limit = _value(job.get("elapsed_seconds")), _value(job.get("time_limit_seconds"))
    outcome = job.get("outcome")
    if outcome == "TIMEOUT":
        bound = max(elapsed, limit)
        return Need(bound, True, True) if bound > 0 else None
    if elapsed <= 0 or not outcome:
        return None
    return Need(elapsed, outcome != "COMPLETED", False)


NEEDS = {"mem": memory_need, "time": time_need}


def km_quantile(needs: Sequence[Need], q: float) -> float | None:
    """The smallest observed need v with Kaplan-Meier F(v) >= Q; None when F stays below Q (the
    largest observations are censored).  At a tie an event comes before a censoring."""
    obs = sorted(needs, key=lambda n: (n.value, n.censored))
    at_risk, survive, i = len(obs), 1.0, 0
    while i < len(obs):
        v, events, censored = obs[i].value, 0, 0
        while i < len(obs) and obs[i].value == v:
            censored += obs[i].censored
            events += not obs[i].censored
            i += 1
        if events:
            survive *= 1.0 - events / at_risk
            if 1.0 - survive >= q - 1e-12:
                return v
        at_risk -= events + censored
    return None


# -- values Slurm takes, rounded up ------------------------------------------------------------
def round_mem(nbytes: float) -> float:
    """Up to 100 MiB steps below 2 GiB, 256 MiB steps below 16 GiB, whole GiB above."""
    nbytes = max(nbytes, MIN_MEM)
    step = 100 * MiB if nbytes < 2 * GiB else 256 * MiB if nbytes < 16 * GiB else GiB
    return math.ceil(nbytes / step - 1e-9) * step


def mem_option(nbytes: float) -> str:
    mib = round(nbytes / MiB)
    return f"--mem={mib // 1024}G" if mib % 1024 == 0 else f"--mem={mib}M"


def round_time(seconds: float) -> float:
    """Up to whole minutes below 10 min, 5 min below 2 h, 15 min below a day, hours above."""
    seconds = max(seconds, MIN_TIME)
    step = 60 if seconds < 600 else 300 if seconds < 7200 else 900 if seconds < 86400 else 3600
    return math.ceil(seconds / step - 1e-9) * step


def clock(seconds: float) -> str:
    """Slurm's [D-]H:MM:SS."""
    s = int(round(seconds))
    days, s = divmod(s, 86400)
    if days:
        return f"{days}-{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def time_option(seconds: float) -> str:
    return f"--time={clock(seconds)}"


def size(nbytes: float) -> str:
    return f"{nbytes / GiB:.1f} GB" if nbytes >= GiB else f"{nbytes / MiB:.0f} MB"


ROUND = {"mem": round_mem, "time": round_time}
OPTION = {"mem": mem_option, "time": time_option}
SHOW = {"mem": size, "time": clock}


# -- the advice ------------------------------------------------------------------------------
@dataclass
class Advice:
    resource: str  # "mem" (bytes per node) or "time" (seconds)
    value: float  # the suggestion, rounded up to what Slurm takes
    option: str  # "--mem=3584M", "--time=0:20:00"
    requested: float | None  # what the job asked for
    basis: str  # "kind": the user's jobs of this kind; "user": the user's jobs of any kind
    kind: str  # the kind's name key ('' for "user")
    jobs: int  # observations in the pool
    limit_hits: int  # of them, jobs that hit their limit (censored at it)
    known: int  # observations whose fit to VALUE is known (needs, and limit hits at or above it)
    fit: int  # of KNOWN, those VALUE would have fitted
    ran: int  # observations that are needs (ran to the end), not "at least" ones
    beyond: bool  # the need lies above every limit the pool hit: VALUE is the largest times GROWTH
    largest: float  # the largest need seen (or limit hit, when BEYOND)
    several_limits: bool  # BEYOND: the limits hit were not all the same
    confidence: str  # "firm", "fair", "rough", "guess"

    @property
    def actionable(self) -> bool:
        """Worth a line in the job's output: the request is likely too small, or at least twice
        what the job will need."""
        if not self.requested:
            return True
        if self.beyond:  # only "more than the largest limit hit" is known: never advise less
            return self.value > self.requested
        return self.value > self.requested or self.requested >= 2 * self.value

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "actionable": self.actionable, "text": self.text()}

    def text(self) -> str:
        what = "memory" if self.resource == "mem" else "time"
        whose = (
            f"your '{self.kind[:KIND_SHOWN]}' jobs" if self.basis == "kind" else "your recent jobs"
        )
        asked = f" You asked for {SHOW[self.resource](self.requested)}." if self.requested else ""
        if self.beyond:
            verb = "ran out of memory" if self.resource == "mem" else "hit their time limit"
            at = "at up to" if self.several_limits else "at"
            head = (
                f"NØMADE: {what}: {self.limit_hits} of {whose} {verb} {at}"
                f" {SHOW[self.resource](self.largest)}"
            )
            if self.requested and self.requested >= self.value:
                return (
                    f"{head}; this one asks for {SHOW[self.resource](self.requested)}, well above"
                    " that: their history cannot tell whether it is enough."
                )
            return (
                f"{head}, so this one likely needs more; their history cannot tell how much:"
                f" try {self.option}.{asked}"
            )
        used = "peaked at up to" if self.resource == "mem" else "ran for at most"
        sure = CONFIDENCE_WORDS[self.confidence]
        return (
            f"NØMADE: {what}: {self.option} fits {self.fit} of {self.known} of {whose} (they"
            f" {used} {SHOW[self.resource](self.largest)}; {sure}).{asked}"
        )


CONFIDENCE_WORDS = {
    "firm": "a firm estimate",
    "fair": "a fair estimate",
    "rough": "a rough estimate from few jobs",
    "guess": "a guess",
}


def confidence(ran: int, beyond: bool) -> str:
    """How sure, from the jobs that ran to the end (a job stopped early tells only "at least")."""
    if beyond:
        return "guess"
    return "firm" if ran >= 20 else "fair" if ran >= 8 else "rough"


def pool(
    resource: str,
    user_jobs: Sequence[dict[str, Any]],
    kind_jobs: Sequence[dict[str, Any]],
    kind: str,
    need: Callable[[dict[str, Any]], Need | None] | None = None,
) -> tuple[list[Need], str]:
    """The needs of the most recent POOL similar jobs (oldest first in the inputs) and the basis;
    NEED reads a job's need (default: the resource's, censored where the job was stopped)."""
    need = need or NEEDS[resource]
    of_kind = [n for n in map(need, kind_jobs) if n is not None][-POOL:]
    if len(of_kind) >= KIND_MIN and kind:
        return of_kind, "kind"
    return [n for n in map(need, user_jobs) if n is not None][-POOL:], "user"


def suggest(
    resource: str,
    needs: Sequence[Need],
    requested: float | None,
    basis: str = "user",
    kind: str = "",
    quantile: float | None = None,
    headroom: float | None = None,
) -> Advice | None:
    """The advice from NEEDS, or None when they are too few (MIN_JOBS) or tell nothing about
    the top (early failures only)."""
    if len(needs) < MIN_JOBS:
        return None
    quantile = QUANTILE if quantile is None else quantile
    headroom = HEADROOM if headroom is None else headroom
    q = km_quantile(needs, quantile)
    hits = [n for n in needs if n.at_limit]
    if q is None:
        top = max(needs, key=lambda n: n.value)
        if not top.at_limit:
            return None  # the largest runs stopped early for other reasons: nothing to go on
        value, beyond, largest = ROUND[resource](top.value * GROWTH), True, top.value
    else:
        value, beyond = ROUND[resource](q * headroom), False
        largest = max(n.value for n in needs if not n.censored)
    fit = sum(not n.censored and n.value <= value for n in needs)
    missed = sum(n.value >= value if n.censored else n.value > value for n in needs)
    ran = sum(not n.censored for n in needs)
    several = beyond and len({n.value for n in hits}) > 1
    return Advice(
        resource,
        value,
        OPTION[resource](value),
        requested,
        basis,
        kind,
        len(needs),
        len(hits),
        fit + missed,
        fit,
        ran,
        beyond,
        largest,
        several,
        confidence(ran, beyond),
    )


def requested(resource: str, job: dict[str, Any]) -> float | None:
    value = requested_mem_bytes(job) if resource == "mem" else job.get("time_limit_seconds")
    return _value(value) or None


def advise(
    job: dict[str, Any],
    user_jobs: Sequence[dict[str, Any]],
    kind_jobs: Sequence[dict[str, Any]] | None = None,
    **params: float,
) -> dict[str, Advice | None]:
    """Memory and time advice for JOB from its user's ended jobs (oldest first); KIND_JOBS are
    those of them with the job's name key (taken from USER_JOBS when not given)."""
    kind = name_key(job.get("job_name"))
    if kind_jobs is None:
        kind_jobs = [j for j in user_jobs if name_key(j.get("job_name")) == kind]
    out: dict[str, Advice | None] = {}
    for resource in NEEDS:
        needs, basis = pool(resource, user_jobs, kind_jobs, kind)
        out[resource] = suggest(
            resource,
            needs,
            requested(resource, job),
            basis,
            kind if basis == "kind" else "",
            **params,
        )
    return out


def as_json(advice: dict[str, Advice | None]) -> dict[str, Any]:
    return {r: (a.as_dict() if a else None) for r, a in advice.items()}


def lines(advice: dict[str, Advice | None], only_actionable: bool = True) -> list[str]:
    """The advice's lines for a job's output or `nomadectl check`."""
    return [a.text() for a in advice.values() if a and (a.actionable or not only_actionable)]
