"""How good NØMADE's --mem and --time advice is, judged on later jobs than it learned from.

    evaluate(jobs, test_fraction) -> dict        section(result) -> Markdown lines

Jobs in start order; the latest TEST_FRACTION of them (the failure evaluation's test part) are
judged.  Each sees, as live scoring would, only its user's jobs that had ended by its submit time.
Every method suggests a value; a method with no history for the job leaves the user's request
in place (counted as not advised).  Methods (docs/risk.md#right-sizing):

    memory  nomade           models.rightsize: Kaplan-Meier quantile, limit hits censored
            nomade_naive     the same, with out-of-memory peaks taken as needs (no censoring)
            request          what the user asked for
            last_peak        LAST_PEAK_FACTOR x the peak of the user's last job
            user_p95         the 95th percentile of the user's last 100 peaks
    time    nomade, nomade_naive, request (the time limit)
            last_two_mean    the mean run time of the user's last two jobs (Tsafrir, Etsion and
                             Feitelson 2007)
    both    ceiling          hindsight: the 95th percentile of the known needs of the test part's
                             own jobs of the same user and kind.  It sees the answers (no method
                             can use it); it shows what the spread of needs within a kind leaves
                             to any suggestion: how much over-request a 95% fit costs there

Judged: for memory, COMPLETED jobs (their peak is their need) and OUT_OF_MEMORY jobs (they
needed more than their limit); for time, COMPLETED and TIMEOUT jobs.  A job that failed or was
cancelled says only that it needed at least what it used before it stopped, and is not judged.

Coverage: the share of the judged jobs whose fit is known that the suggestion fits.  A job killed
at its limit needed more than that limit: a suggestion at or below it missed; one above it may
have fitted (unknown).  `coverage` leaves the unknown out; `coverage_low` counts them as misses,
`coverage_high` as fits.  The goal is "met" when even `coverage_low` reaches it, "met where
known" when only `coverage` does.

Over-request: max(0, suggestion - need) on the jobs whose need is known and whose request is
known, the same jobs for every method: its median, and summed (GB-hours of memory held unused
over the jobs' run times, or hours of time limit not used).
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from typing import Any

from . import rightsize as rs
from .features import KIND_WINDOW, WINDOW, name_key, start_order

LAST_PEAK_FACTOR = 1.2
MIN_JUDGED = 100  # fewer judged jobs: the report says the dataset is too small to judge by
GOAL_COVERAGE, GOAL_OVER_SHARE = 0.95, 0.5

LABELS = {
    "nomade": "NØMADE (censored quantile)",
    "nomade_naive": "NØMADE without censoring",
    "request": "The user's own request",
    "last_peak": f"{LAST_PEAK_FACTOR:g} x the user's last peak",
    "user_p95": "95th percentile of the user's past peaks",
    "last_two_mean": "Mean of the user's last two run times",
    "ceiling": "Hindsight: 95th percentile of the test part's own needs, same user and kind",
}
METHODS = {
    "mem": ("nomade", "nomade_naive", "request", "last_peak", "user_p95", "ceiling"),
    "time": ("nomade", "nomade_naive", "request", "last_two_mean", "ceiling"),
}


class History:
    """Each job's user's ended jobs as of its submit time (fed in start order), as
    `features.views_from_store` reads them live: the last WINDOW, and KIND_WINDOW of its kind."""

    def __init__(self) -> None:
        self._pending: list[tuple[float, int, dict[str, Any]]] = []
        self._users: dict[str, deque] = defaultdict(lambda: deque(maxlen=WINDOW))
        self._kinds: dict[tuple[str, str], deque] = defaultdict(lambda: deque(maxlen=KIND_WINDOW))
        self._n = 0

    def before(self, job: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        while self._pending and self._pending[0][0] <= job["submit_time"]:
            _, _, done = heapq.heappop(self._pending)
            user = done.get("user") or ""
            self._users[user].append(done)
            self._kinds[(user, name_key(done.get("job_name")))].append(done)
        user = job.get("user") or ""
        return list(self._users[user]), list(self._kinds[(user, name_key(job.get("job_name")))])

    def add(self, job: dict[str, Any]) -> None:
        self._n += 1
        heapq.heappush(self._pending, (job["end_time"], self._n, job))


def _naive(need: Callable[[dict[str, Any]], rs.Need | None]):
    def taken_as_need(job: dict[str, Any]) -> rs.Need | None:
        n = need(job)
        if n is None or not n.at_limit:
            return n
        used = job.get("max_rss_bytes") if need is rs.memory_need else job.get("elapsed_seconds")
        return rs.Need(float(used), False, False) if used else None

    return taken_as_need


def _percentile(values: Sequence[float], q: float) -> float:
    v = sorted(values)
    pos = (len(v) - 1) * q
    lo = math.floor(pos)
    return v[lo] + (v[min(lo + 1, len(v) - 1)] - v[lo]) * (pos - lo)


def suggestions(
    resource: str, job: dict[str, Any], user: list[dict[str, Any]], kind: list[dict[str, Any]]
) -> dict[str, float | None]:
    """Every method's suggestion for JOB (None: no advice, the request stays)."""
    asked = rs.requested(resource, job)
    key = name_key(job.get("job_name"))
    out: dict[str, float | None] = {"request": asked}
    advice = rs.advise(job, user, kind)[resource]
    out["nomade"] = advice.value if advice else None
    needs, basis = rs.pool(resource, user, kind, key, _naive(rs.NEEDS[resource]))
    plain = rs.suggest(resource, needs, asked, basis, key if basis == "kind" else "")
    out["nomade_naive"] = plain.value if plain else None
    if resource == "mem":
        peaks = [float(j["max_rss_bytes"]) for j in user if j.get("max_rss_bytes")]
        out["last_peak"] = LAST_PEAK_FACTOR * peaks[-1] if peaks else None
        out["user_p95"] = _percentile(peaks, 0.95) if peaks else None
    else:
        runs = [float(j["elapsed_seconds"]) for j in user if j.get("elapsed_seconds")]
        out["last_two_mean"] = (runs[-1] + runs[-2]) / 2 if len(runs) >= 2 else None
    return out


def _ceiling(rows: dict[str, list], keys: list[tuple[str, str]]) -> None:
    """The "ceiling" rows: per test job, the 95th percentile of the known needs of the test
    part's jobs with its user and kind (the request where none is known)."""
    needs: dict[tuple[str, str], list[float]] = defaultdict(list)
    for (need, *_), key in zip(rows["request"], keys, strict=True):
        if not need.censored:
            needs[key].append(need.value)
    rows["ceiling"] = [
        (need, _percentile(needs[key], 0.95) if needs[key] else None, run, asked)
        for (need, _, run, asked), key in zip(rows["request"], keys, strict=True)
    ]


def judged_need(resource: str, job: dict[str, Any]) -> rs.Need | None:
    """The need a suggestion for JOB is judged against (None: the job is not judged)."""
    stopped_at_limit = "OUT_OF_MEMORY" if resource == "mem" else "TIMEOUT"
    if job.get("outcome") not in ("COMPLETED", stopped_at_limit):
        return None
    return rs.NEEDS[resource](job)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    if not n:
        return None
    p = k / n
    mid, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (mid - half) / (1 + z * z / n), (mid + half) / (1 + z * z / n)


def score(
    resource: str, rows: list[tuple[rs.Need, float | None, float, float | None]]
) -> dict[str, Any]:
    """Coverage and over-request of one method; ROWS: (need, suggestion, run seconds, request)."""
    hits = misses = unknown = advised = 0
    over: list[float] = []
    over_total = 0.0
    for need, value, run, asked in rows:
        advised += value is not None
        value = value if value is not None else asked
        if value is None:  # no request and no advice: Slurm's default, unknown here
            unknown += 1
            continue
        if need.censored:
            if value <= need.value:
                misses += 1
            else:
                unknown += 1
            continue
        if value >= need.value:
            hits += 1
        else:
            misses += 1
        if asked is None:
            continue  # over-request on the same jobs for every method: those with a request
        extra = max(0.0, value - need.value)
        over.append(extra)
        # memory held unused for the run (byte-hours); time asked for and not used (seconds)
        over_total += extra * run / 3600.0 if resource == "mem" else extra
    n = hits + misses + unknown
    over.sort()
    unit = rs.GiB if resource == "mem" else 60.0
    return {
        "judged": n,
        "advised": advised,
        "fit": hits,
        "missed": misses,
        "unknown": unknown,
        "coverage": hits / (hits + misses) if hits + misses else None,
        "coverage_interval": wilson(hits, hits + misses),
        "coverage_low": hits / n if n else None,
        "coverage_high": (hits + unknown) / n if n else None,
        "median_over": (_percentile(over, 0.5) / unit) if over else None,
        "over_unit": "GB" if resource == "mem" else "minutes",
        "over_total": over_total / (rs.GiB if resource == "mem" else 3600.0),
        "over_total_unit": "GB-hours" if resource == "mem" else "hours",
    }


def evaluate(jobs: list[dict[str, Any]], test_fraction: float = 0.3) -> dict[str, Any]:
    """Right-sizing on the latest TEST_FRACTION of JOBS (ended jobs with an outcome)."""
    jobs = start_order(j for j in jobs if j.get("outcome") and j.get("end_time") is not None)
    n_test = int(math.ceil(len(jobs) * test_fraction))
    first_test = len(jobs) - n_test
    history = History()
    rows: dict[str, dict[str, list]] = {r: defaultdict(list) for r in METHODS}
    censored = {r: 0 for r in METHODS}
    keys: dict[str, list[tuple[str, str]]] = {r: [] for r in METHODS}  # (user, kind) of each row
    users = set()
    for i, job in enumerate(jobs):
        user, kind = history.before(job)
        if i >= first_test:
            for resource, methods in METHODS.items():
                need = judged_need(resource, job)
                if need is None:
                    continue
                censored[resource] += need.censored
                users.add(job.get("user"))
                sug = suggestions(resource, job, user, kind)
                run = float(job.get("elapsed_seconds") or 0.0)
                for m in methods:
                    if m != "ceiling":
                        rows[resource][m].append((need, sug[m], run, rs.requested(resource, job)))
                keys[resource].append((job.get("user") or "", name_key(job.get("job_name"))))
        history.add(job)
    out: dict[str, Any] = {
        "jobs": len(jobs),
        "test_jobs": n_test,
        "test_fraction": test_fraction,
        "users": len(users),
        "params": {
            "quantile": rs.QUANTILE,
            "headroom": rs.HEADROOM,
            "growth": rs.GROWTH,
            "pool": rs.POOL,
            "last_peak_factor": LAST_PEAK_FACTOR,
        },
    }
    for resource in METHODS:
        _ceiling(rows[resource], keys[resource])
    for resource, methods in METHODS.items():
        scores = {m: score(resource, rows[resource][m]) for m in methods}
        judged = scores["nomade"]["judged"]
        ours, asked = scores["nomade"], scores["request"]
        goal = None
        if ours["coverage"] is not None and asked["median_over"] is not None:
            goal = {
                "coverage": ours["coverage"] >= GOAL_COVERAGE,
                "coverage_low": ours["coverage_low"] >= GOAL_COVERAGE,
                "over": ours["median_over"] is not None
                and ours["median_over"] <= GOAL_OVER_SHARE * asked["median_over"],
            }
        out[resource] = {
            "judged": judged,
            "censored": censored[resource],
            "too_small": judged < MIN_JUDGED,
            "methods": scores,
            "goal": goal,
        }
    return out


# -- the report ------------------------------------------------------------------------------
def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def section(
    result: dict[str, Any], title: str = "## Right-sizing: --mem and --time advice"
) -> list[str]:
    lines = [
        title,
        "",
        f"The latest {result['test_jobs']} of {result['jobs']} jobs (start order),"
        f" {result['users']}"
        " users; each job's suggestions come from its user's jobs that had ended by its submit"
        " time (docs/risk.md#right-sizing).  *Coverage*: the share of the jobs whose fit is known"
        " that the suggestion fits, with its 95% Wilson interval.  A job killed at its limit needed"
        " more than that limit: a suggestion at or below it missed; one above it may have fitted,"
        " unknown (*lower bound*: the unknown counted as misses; *upper*: as fits).  Over-request:"
        " suggestion minus need, on the jobs whose need is known.  A method without history for a"
        " job leaves the user's request (*advised*: the jobs it had history for).",
        "",
    ]
    for resource, what in (("mem", "Memory (per node)"), ("time", "Run time")):
        r = result[resource]
        lines += [
            f"### {what}: {r['judged']} jobs judged, {r['censored']} of them killed at their limit",
            "",
        ]
        if r["too_small"]:
            lines += [
                f"**Too small to judge by**: {r['judged']} judged jobs (at least {MIN_JUDGED} are"
                " needed for figures worth comparing); the figures below are shown for"
                " completeness.",
                "",
            ]
        rows = []
        for m, s in r["methods"].items():
            ci = s["coverage_interval"]
            rows.append(
                [
                    LABELS[m],
                    f"{s['advised']}",
                    _pct(s["coverage"]),
                    f"{_pct(ci[0])} to {_pct(ci[1])}" if ci else "-",
                    f"{_pct(s['coverage_low'])} to {_pct(s['coverage_high'])}",
                    f"{_num(s['median_over'])} {s['over_unit']}",
                    f"{_num(s['over_total'], 1)} {s['over_total_unit']}",
                ]
            )
        lines += _table(
            [
                "Method",
                "Advised",
                "Coverage",
                "95% interval",
                "Lower to upper bound",
                "Median over-request",
                "Total over-request",
            ],
            rows,
        )
        goal = r["goal"]
        ours, asked = r["methods"]["nomade"], r["methods"]["request"]
        if r["too_small"]:
            lines += [
                "",
                f"Goal (coverage at least {_pct(GOAL_COVERAGE)} with at most half the users'"
                " own median over-request): not judged on so few jobs.",
            ]
        elif goal is not None:
            if not (goal["coverage"] and goal["over"]):
                verdict = "not met"
            elif goal["coverage_low"]:
                verdict = "met"
            else:
                verdict = (
                    f"met where the fit is known; not shown for the {ours['unknown']} jobs"
                    " killed at a limit below the suggestion"
                )
            lines += [
                "",
                f"Goal (coverage at least {_pct(GOAL_COVERAGE)} with at most half the"
                f" users' own median over-request, {_num(asked['median_over'])}"
                f" {asked['over_unit']}): **{verdict}** (coverage {_pct(ours['coverage'])},"
                f" lower bound {_pct(ours['coverage_low'])}; median over-request"
                f" {_num(ours['median_over'])} {ours['over_unit']}).",
            ]
        lines.append("")
    return lines
