"""Alert rules: declarative (plain values from the configuration, never code), each evaluated
on the store and turned into alerts (aggregator/store/sqlite/alerts.py).

A rule is a table of plain values:

    name        what `nomadectl alerts` shows as its rule (letters, digits, `_`, `-`)
    kind        one of KINDS (below)
    severity    info, warning or critical
    window      seconds of history the rule reads (the last reading within it, or the series it
                fits a trend to)
    cooldown    seconds after a resolve during which the same rule and subject raise nothing
    ...         the kind's own keys

Kinds:

    node_silent     a node's agent not heard for `window` seconds
    node_problem    a node whose health (aggregator/views/health.py) shows one of `problems`
                    (default PROBLEMS: uncorrected memory errors, MCE, GPU Xid, overheating,
                    a daemon down)
    time_to_limit   a series of `collector` readings (`record` kind, numeric `key`, one series
                    per `subject_key` value) projected to reach its limit (`limit_key` of the
                    same record, or the number `limit`) within `within` seconds, by the trend
                    fitted over `window` (aggregator/analysis/trends.py): "full in 3 days"
    job_memory      a running job whose memory on a node is projected to reach the job's limit
                    within `within` seconds, or already holds `fraction` of it: the time to OOM
    threshold       the newest reading's numeric `key` of `record` records of `collector` (one
                    subject per `subject_key` value, the node where none) compared with `op`
                    (>, >=, <, <=) and `value`
    rate            a series (selected as for time_to_limit) whose fitted rate exceeds `value`
                    units per second
    acceleration    a series whose trend over `window` is classed "accelerating"
    collector_failing  a collector (`collector`, or any) whose runs on a node have failed for
                    longer than `window` seconds
    license_down    a license server or vendor daemon that the newest licenses reading finds down
    license_expiry  a licensed feature whose expiry falls within `within` seconds
    job_pending     a job pending for longer than `within` seconds (the newest queue reading)
    job_stuck       a running job without CPU progress over `window` (clusterviews.stuck)
    gpu_idle        a running job whose GPUs sat idle in `share` of at least `min_readings`
                    readings
    job_zombie      a job Slurm says ended more than `window` seconds ago (default 300) whose
                    node still samples processes in its cgroup
    nfs_storm       a node's NFS mount whose newest interval's operations or bytes per second
                    (aggregator/views/nfsrates.py) exceed `ops_per_second` or `bytes_per_second`
    fairshare_imbalance  an account whose fair-share factor is under `value` (default 0.1) while
                    it has jobs pending in the newest queue reading

Nodes that Slurm has drained, or that are in a MAINT reservation, raise no node alerts: their
admins know.  A subject found no more resolves its open alert.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from aggregator import store
from aggregator.analysis import trends
from nomade_common.text import printable, size

KINDS = (
    "node_silent",
    "node_problem",
    "time_to_limit",
    "job_memory",
    "threshold",
    "rate",
    "acceleration",
    "collector_failing",
    "license_down",
    "license_expiry",
    "job_pending",
    "job_stuck",
    "gpu_idle",
    "job_zombie",
    "nfs_storm",
    "fairshare_imbalance",
)
OPS = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
}
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
SEVERITIES = ("info", "warning", "critical")
PROBLEMS = ("ue", "mce", "xid", "gpu-ecc", "gpu-lost", "hot", "gpu-hot", "service-down")
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
MAX_RECORDS = 100_000  # reading records a series rule reads per evaluation
MAX_FINDINGS = 500  # subjects one rule raises per evaluation; past it, one alert says so
QUIET_STATES = ("DRAIN", "MAINT")  # in Slurm's node state or flags: no node alerts
# Each kind's keys: (type, default); a default of ... is required.
KEYS: dict[str, dict[str, tuple[type | tuple[type, ...], Any]]] = {
    "node_silent": {},
    "node_problem": {"problems": (list, list(PROBLEMS))},
    "time_to_limit": {
        "collector": (str, ...),
        "record": (str, ...),
        "key": (str, ...),
        "subject_key": (str, "path"),
        "per_node": (bool, False),
        "limit_key": (str, None),
        "limit": ((int, float), None),
        "within": ((int, float), ...),
    },
    "job_memory": {
        "within": ((int, float), 600.0),
        "fraction": ((int, float), 0.95),
        "min_fraction": ((int, float), 0.5),
    },
    "threshold": {
        "collector": (str, ...),
        "record": (str, ...),
        "key": (str, ...),
        "subject_key": (str, None),
        "op": (str, ...),
        "value": ((int, float), ...),
    },
    "rate": {
        "collector": (str, ...),
        "record": (str, ...),
        "key": (str, ...),
        "subject_key": (str, "path"),
        "per_node": (bool, False),
        "value": ((int, float), ...),
    },
    "acceleration": {
        "collector": (str, ...),
        "record": (str, ...),
        "key": (str, ...),
        "subject_key": (str, "path"),
        "per_node": (bool, False),
    },
    "collector_failing": {"collector": (str, None)},
    "license_down": {},
    "license_expiry": {"within": ((int, float), ...)},
    "job_pending": {"within": ((int, float), ...)},
    "job_stuck": {},
    "gpu_idle": {"share": ((int, float), 0.9), "min_readings": (int, 5)},
    # Its window is the grace after the end: the time Slurm gives a job's processes to go.
    "job_zombie": {"window": ((int, float), 300.0)},
    "nfs_storm": {"ops_per_second": ((int, float), None), "bytes_per_second": ((int, float), None)},
    "fairshare_imbalance": {"value": ((int, float), 0.1)},
}
COMMON = {
    "name": (str, ...),
    "kind": (str, ...),
    "severity": (str, "warning"),
    "window": ((int, float), 3600.0),
    "cooldown": ((int, float), 0.0),
    "every": ((int, float), None),
}
# How often a rule is evaluated where it does not say (`every`): rules that fit a trend to hours
# of readings once a minute (their answer moves slowly and each reads many series), the others
# at each `[alerts] evaluate_seconds`.
TREND_EVERY = 60.0
TREND_KINDS = frozenset({"time_to_limit", "rate", "acceleration"})


class RuleError(Exception):
    """A rule that cannot be evaluated now (its open alerts are kept as they are)."""


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str
    severity: str
    window: float
    cooldown: float
    params: dict[str, Any] = field(default_factory=dict)
    every: float | None = None  # seconds between evaluations; None: each evaluate_seconds


@dataclass(frozen=True)
class Finding:
    """A subject RULE's condition holds for, as of one evaluation."""

    subject: str
    summary: str
    detail: str | None = None
    job_uid: int | None = None
    user: str | None = None


@dataclass(frozen=True)
class Change:
    """An alert opened or resolved by an evaluation: what the dispatchers send."""

    alert_id: int
    rule: Rule
    subject: str
    state: str  # "firing" or "resolved"
    summary: str
    user: str | None = None


def parse_rules(items: Any) -> list[Rule]:
    """The rules of a configuration's `[[alerts.rules]]` tables, checked: ValueError with one
    line naming the rule and the key that is wrong."""
    if not isinstance(items, list):
        raise ValueError("alerts.rules must be a list of tables ([[alerts.rules]])")
    out: list[Rule] = []
    for i, item in enumerate(items):
        where = f"alerts.rules[{i}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: expected a table")
        kind = item.get("kind")
        if kind not in KINDS:
            raise ValueError(f"{where}: kind must be one of {', '.join(KINDS)}, not {kind!r}")
        keys = {**COMMON, **KEYS[kind]}
        unknown = sorted(set(item) - set(keys))
        if unknown:
            raise ValueError(f"{where}: unknown key {unknown[0]!r} for kind {kind}")
        values = {}
        for key, (kind_of, default) in keys.items():
            value = item.get(key, default)
            if value is ...:
                raise ValueError(f"{where}: {key} is required for kind {kind}")
            if value is not None and (
                not isinstance(value, kind_of) or isinstance(value, bool) and kind_of is not bool
            ):
                raise ValueError(f"{where}: {key} must be a {_type_name(kind_of)}")
            values[key] = value
        name = values.pop("name")
        where = f"{where} ({name})"
        if not NAME.match(name):
            raise ValueError(f"{where}: name must be letters, digits, _ or - (at most 64)")
        if name in {r.name for r in out}:
            raise ValueError(f"{where}: another rule has this name")
        if values["severity"] not in SEVERITIES:
            raise ValueError(f"{where}: severity must be one of {', '.join(SEVERITIES)}")
        for key in ("window", "cooldown", "within", "fraction", "min_fraction"):
            if key in values and not 0 <= values[key] <= 10 * 365 * 86400:
                raise ValueError(f"{where}: {key} must be between 0 and ten years of seconds")
        if values["window"] <= 0:
            raise ValueError(f"{where}: window must be more than 0 seconds")
        if kind == "time_to_limit" and (values["limit"] is None) == (values["limit_key"] is None):
            raise ValueError(f"{where}: give limit_key or limit (one of them)")
        if kind == "threshold" and values["op"] not in OPS:
            raise ValueError(f"{where}: op must be one of {', '.join(OPS)}")
        if kind == "gpu_idle" and not (0 <= values["share"] <= 1 and values["min_readings"] >= 1):
            raise ValueError(f"{where}: share must be between 0 and 1, min_readings at least 1")
        if kind == "nfs_storm" and values["ops_per_second"] is None is values["bytes_per_second"]:
            raise ValueError(f"{where}: give ops_per_second or bytes_per_second (or both)")
        if kind == "node_problem" and not all(isinstance(p, str) for p in values["problems"]):
            raise ValueError(f"{where}: problems must be a list of words (docs/api.md)")
        if values["every"] is not None and not 0.1 <= values["every"] <= 86400:
            raise ValueError(f"{where}: every must be between 0.1 and 86400 seconds")
        if values["every"] is None and kind in TREND_KINDS:
            values["every"] = TREND_EVERY
        common = {k: values.pop(k) for k in ("kind", "severity", "window", "cooldown", "every")}
        out.append(Rule(name=name, params=values, **common))
    return out


def _type_name(kind: type | tuple[type, ...]) -> str:
    return (
        "number"
        if kind == (int, float)
        else {str: "text", list: "list", int: "whole number"}.get(kind, "value")
    )


# -- evaluation: what holds now (reads only) ----------------------------------------------------
def evaluate(conn: Any, rule: Rule, now: float) -> list[Finding]:
    """The subjects RULE's condition holds for at NOW."""
    return EVALUATORS[rule.kind](conn, rule, now)


def quiet_nodes(conn: Any) -> set[str]:
    """Nodes Slurm has drained or put in a MAINT reservation (its newest node reading)."""
    quiet = set()
    for _t, records in store.latest_readings(conn, "node_state").values():
        for r in records:
            words = " ".join(
                str(w) for w in (r.get("state"), *(r.get("state_flags") or ())) if w is not None
            ).upper()
            if isinstance(r.get("node"), str) and any(q in words for q in QUIET_STATES):
                quiet.add(r["node"])
    return quiet


def _node_silent(conn: Any, rule: Rule, now: float) -> list[Finding]:
    quiet = quiet_nodes(conn)
    return [
        Finding(
            n["node"],
            f"{n['node']}: its agent has not been heard for {_ago(now - n['last_seen'])}",
        )
        for n in store.agent_nodes(conn)
        if n["node"] not in quiet and now - n["last_seen"] > rule.window
    ]


def _node_problem(conn: Any, rule: Rule, now: float) -> list[Finding]:
    from aggregator.views import clusterviews

    quiet, wanted, out = quiet_nodes(conn), rule.params["problems"], []
    hours = rule.window / 3600.0
    for n in clusterviews.nodes(conn, now, hours=hours)["nodes"]:
        found = [p for p in n.get("problems") or () if p in wanted]
        if found and n["node"] not in quiet:
            details = n.get("problem_details") or {}
            why = "; ".join(f"{p}: {details.get(p, p)}" for p in found)
            out.append(Finding(n["node"], f"{n['node']}: {why}"))
    return out


def _series(
    conn: Any, rule: Rule, now: float
) -> dict[str, dict[float, tuple[float, float | None]]]:
    """Subject -> time -> (value, limit) of RULE's series over its window (time_to_limit, rate
    and acceleration): the `key` of `record` records of `collector`, one per `subject_key` (a
    shared filesystem: every node's readings of it are one series), or per node and
    `subject_key` where `per_node` (a node-local one: NODE:PATH)."""
    p = rule.params
    series: dict[str, dict[float, tuple[float, float | None]]] = {}
    records = store.reading_records_between(
        conn, p["collector"], p["record"], now - rule.window, now, limit=MAX_RECORDS
    )
    if len(records) >= MAX_RECORDS:  # cut off: what is missing must not read as "cleared"
        raise RuleError(
            f"more than {MAX_RECORDS} {p['record']} records of {p['collector']} in its window:"
            " not evaluated, its open alerts kept (a node sending floods of records?)"
        )
    for node, t, r in records:
        subject, value = r.get(p["subject_key"]), r.get(p["key"])
        if not isinstance(subject, str) or not _number(value):
            continue
        if p["per_node"]:  # a local filesystem (/tmp, /local): each node's its own series
            subject = f"{node}:{subject}"
        limit = p.get("limit") if p.get("limit") is not None else r.get(p.get("limit_key") or "")
        series.setdefault(subject, {})[t] = (float(value), limit if _number(limit) else None)
    return series


def _time_to_limit(conn: Any, rule: Rule, now: float) -> list[Finding]:
    p, out = rule.params, []
    for subject, points in sorted(_series(conn, rule, now).items()):
        times = sorted(points)
        limit = next((points[t][1] for t in reversed(times) if points[t][1] is not None), None)
        if limit is None or len(times) < 3:
            continue
        f = trends.fit(times, [points[t][0] for t in times])
        if f.slope is None:
            continue
        ways = (("at its acceleration", trends.reaches(f, limit, 2)),)
        ways += (("at its rate", trends.reaches(f, limit, 1)),)
        soonest = [(seconds, how) for how, seconds in ways if seconds is not None]
        if not soonest:
            continue
        seconds, how = min(soonest)
        if seconds <= p["within"]:
            klass = trends.classify(f) or "unknown"
            out.append(
                Finding(
                    subject,
                    f"{subject}: {p['key']} reaches {p['limit_key'] or 'its limit'} in"
                    f" {_ago(seconds)} {how} ({klass})",
                    detail=_trend_detail(f),
                )
            )
    return out


def _job_memory(conn: Any, rule: Rule, now: float) -> list[Finding]:
    p, out, seen = rule.params, [], set()
    for s in store.running_job_memory(conn, now - rule.window):
        if s["limit"] is None or not s["limit"] > 0 or s["uid"] in seen:
            continue  # no limit (or a node's nonsense of 0): nothing to run out of
        points = [(t, m) for t, m in zip(s["t"], s["mem"], strict=True) if m is not None]
        if not points:
            continue
        last = points[-1][1]
        why = None
        if last >= p["fraction"] * s["limit"]:
            why = f"holds {100 * last / s['limit']:.0f}% of its {size(s['limit'])} limit"
        elif len(points) >= 3 and last >= p["min_fraction"] * s["limit"]:
            # Still growing (a start-up ramp that has levelled off is `decelerating`, and one
            # under min_fraction of the limit is not yet worth a page).
            f = trends.fit([t for t, _ in points], [m for _, m in points])
            growing = trends.classify(f, scale=s["limit"]) in ("growing", "accelerating")
            seconds = trends.reaches(f, s["limit"], 1) if growing else None
            if seconds is not None and seconds <= p["within"]:
                why = (
                    f"grows {size((f.slope or 0) * 60)}/min toward its {size(s['limit'])}"
                    f" limit: out of memory in about {_ago(seconds)}"
                )
        if why is not None:
            seen.add(s["uid"])
            out.append(
                Finding(
                    f"job {s['job_id']}",
                    f"job {s['job_id']} on {s['node']} {why}",
                    job_uid=s["uid"],
                    user=s["user"],
                )
            )
    return out


def _threshold(conn: Any, rule: Rule, now: float) -> list[Finding]:
    p, quiet = rule.params, quiet_nodes(conn)
    high = p["op"].startswith(">")
    newest: dict[str, tuple[float, str, float]] = {}  # subject -> (time, node, its worst value)
    for node, (t, records) in store.latest_readings(conn, p["collector"]).items():
        if now - t > rule.window or (p["subject_key"] is None and node in quiet):
            continue
        for r in records:
            if not isinstance(r, dict) or r.get("record") != p["record"]:
                continue
            subject = node if p["subject_key"] is None else r.get(p["subject_key"])
            value = r.get(p["key"])
            if not isinstance(subject, str) or not _number(value):
                continue
            had = newest.get(subject)
            # The newest reading of the subject; of its records, the highest (for > and >=)
            # or the lowest value (for < and <=).
            if had is None or t > had[0] or t == had[0] and (value > had[2]) == high:
                newest[subject] = (t, node, float(value))
    out = []
    for subject, (_t, node, value) in sorted(newest.items()):
        if OPS[p["op"]](value, p["value"]):
            where = subject if p["subject_key"] is None else f"{node}: {subject}"
            out.append(
                Finding(
                    subject,
                    f"{where} {p['key']} {value:g} (threshold {p['op']} {p['value']:g})",
                )
            )
    return out


def _fits(conn: Any, rule: Rule, now: float) -> list[tuple[str, trends.Fit]]:
    """(subject, fit) of each of RULE's series with at least three readings in its window."""
    out = []
    for subject, points in sorted(_series(conn, rule, now).items()):
        if len(points) >= 3:
            times = sorted(points)
            f = trends.fit(times, [points[t][0] for t in times])
            if f.slope is not None:
                out.append((subject, f))
    return out


def _trend_detail(f: trends.Fit) -> str:
    return (
        f"rate {f.slope or 0:.4g}/s, acceleration {f.accel or 0:.4g}/s²,"
        f" {f.n} readings over {_ago(f.span_seconds or 0)}"
    )


def _rate(conn: Any, rule: Rule, now: float) -> list[Finding]:
    p = rule.params
    return [
        Finding(
            subject,
            f"{subject}: {p['key']} grows {f.slope:.4g}/s ({f.slope * 3600:.4g}/h;"
            f" threshold {p['value']:g}/s) over {_ago(f.span_seconds or 0)}",
            detail=_trend_detail(f),
        )
        for subject, f in _fits(conn, rule, now)
        if f.slope > p["value"]
    ]


def _acceleration(conn: Any, rule: Rule, now: float) -> list[Finding]:
    key = rule.params["key"]
    return [
        Finding(
            subject,
            f"{subject}: {key} is accelerating ({f.accel or 0:.4g}/s², now {f.slope:.4g}/s)"
            f" over {_ago(f.span_seconds or 0)}",
            detail=_trend_detail(f),
        )
        for subject, f in _fits(conn, rule, now)
        if trends.classify(f) == "accelerating"
    ]


def _collector_failing(conn: Any, rule: Rule, now: float) -> list[Finding]:
    wanted, quiet, out = rule.params["collector"], quiet_nodes(conn), []
    for s in store.collector_statuses(conn):
        if wanted is not None and s["collector"] != wanted or s["node"] in quiet:
            continue
        last_t, ok_t = s.get("last_t"), s.get("last_ok_t")
        if not s.get("failures") or last_t is None or ok_t is not None and ok_t >= last_t:
            continue  # its last run succeeded
        # Failing since its last success; one that never succeeded, since its first run.
        since = ok_t
        if since is None:
            since = last_t - max(0, (s.get("runs") or 1) - 1) * (s.get("interval_seconds") or 0)
        if now - since > rule.window:
            subject = f"{s['node']}: {s['collector']}"
            what = "since " + (f"its last success {_ago(now - ok_t)} ago" if ok_t else "it started")
            out.append(
                Finding(
                    subject,
                    f"{subject} collector failing {what}: {s.get('last_error') or 'no error text'}",
                    detail=f"{s['failures']} of {s['runs']} runs failed",
                )
            )
    return out


def _licenses(conn: Any, rule: Rule, now: float) -> dict[str, Any] | None:
    """The licenses view, where its newest reading is within RULE's window."""
    from aggregator.views import clusterviews

    view = clusterviews.licenses(conn)
    return view if view["time"] is not None and now - view["time"] <= rule.window else None


def _license_down(conn: Any, rule: Rule, now: float) -> list[Finding]:
    view = _licenses(conn, rule, now)
    return [
        Finding(
            f"license {s['name']}",
            f"license {s.get('kind') or 'server'} {s['name']} is down"
            + (f": {s['message']}" if s.get("message") else ""),
        )
        for s in (view or {}).get("servers", ())
        if s.get("up") is False and isinstance(s.get("name"), str)
    ]


def expiry_time(text: Any) -> float | None:
    """When a license expiry as lmstat and rlmstat print it ("31-dec-2024") ends, in local
    time; None for one that never expires ("permanent", year 0) or that is not a date."""
    parts = text.strip().lower().split("-") if isinstance(text, str) else []
    if len(parts) != 3 or parts[1][:3] not in MONTHS or not (parts[0] + parts[2]).isdigit():
        return None
    day, month, year = int(parts[0]), MONTHS.index(parts[1][:3]) + 1, int(parts[2])
    if year == 0 or not 1 <= day <= 31:
        return None
    year += 2000 if year < 100 else 0
    return time.mktime((year, month, day, 23, 59, 59, 0, 0, -1))


def _license_expiry(conn: Any, rule: Rule, now: float) -> list[Finding]:
    view, out = _licenses(conn, rule, now), []
    for f in (view or {}).get("features", ()):
        ends = expiry_time(f.get("expiry"))
        if ends is None or ends - now > rule.params["within"]:
            continue
        subject = f"license {f.get('vendor') or '-'} {f.get('feature')}"
        when = f"expires in {_ago(ends - now)}" if ends > now else "has expired"
        out.append(
            Finding(
                subject,
                f"{subject} {when} ({f['expiry']}; {f.get('issued')} issued,"
                f" {f.get('in_use')} in use)",
            )
        )
    return out


def _job_pending(conn: Any, rule: Rule, now: float) -> list[Finding]:
    from aggregator.views import clusterviews

    q = clusterviews.queue_reading(conn, now)
    if q["time"] is None or now - q["time"] > rule.window:
        return []
    return [
        Finding(
            f"job {j['job_id']}",
            f"job {j['job_id']} of {j['user']} pending in {j['partition']} for"
            f" {_ago(j['wait_seconds'])} ({j['reason'] or 'no reason given'})",
            detail=j.get("reason_text"),
            user=j.get("user"),
        )
        for j in q["pending"]
        if j["wait_seconds"] is not None and j["wait_seconds"] > rule.params["within"]
    ]


def _running_uids(conn: Any, since: float) -> dict[int, dict[str, Any]]:
    """Job id -> {uid, job_id, user} of the running jobs sampled since SINCE."""
    return {j["job_id"]: j for j in store.sampled_running_jobs(conn, since)}


def _job_stuck(conn: Any, rule: Rule, now: float) -> list[Finding]:
    from aggregator.views import clusterviews

    found = clusterviews.stuck(conn, now, window=rule.window)
    uids = _running_uids(conn, now - rule.window) if found else {}
    return [
        Finding(
            f"job {j['job_id']}",
            f"job {j['job_id']} on {j['node_list']} used {j['cpu_seconds_in_window']:g} s of"
            f" CPU in {_ago(rule.window)}: no progress",
            job_uid=uids.get(j["job_id"], {}).get("uid"),
            user=j["user"],
        )
        for j in found
    ]


def _gpu_idle(conn: Any, rule: Rule, now: float) -> list[Finding]:
    p, out = rule.params, []
    for job in sorted(_running_uids(conn, now - rule.window).values(), key=lambda j: j["job_id"]):
        idle = [
            g
            for g in store.job_gpus(conn, job["uid"])
            if g["idle_share"] is not None
            and g["idle_share"] >= p["share"]
            and (g["readings"] or 0) >= p["min_readings"]
        ]
        if idle:
            which = ", ".join(
                f"{g['node']} GPU {g['index'] if g['index'] is not None else g['gpu']}"
                for g in idle
            )
            share = min(g["idle_share"] for g in idle)
            out.append(
                Finding(
                    f"job {job['job_id']}",
                    f"job {job['job_id']}: {len(idle)} GPU(s) idle in {100 * share:.0f}% or more"
                    f" of their readings ({which})",
                    job_uid=job["uid"],
                    user=job["user"],
                )
            )
    return out


def _job_zombie(conn: Any, rule: Rule, now: float) -> list[Finding]:
    out: dict[int, Finding] = {}
    for z in store.ended_job_processes(conn, now, rule.window):
        if z["uid"] in out:
            continue  # its first node names it; the others would repeat the alert
        out[z["uid"]] = Finding(
            f"job {z['job_id']}",
            f"job {z['job_id']} ended {_ago(now - z['end_time'])} ago but {z['node']} still has"
            f" {z['nprocs']} process(es) in its cgroup",
            detail=f"sampled {_ago(now - z['t'])} ago",
            job_uid=z["uid"],
            user=z["user"],
        )
    return list(out.values())


def _nfs_storm(conn: Any, rule: Rule, now: float) -> list[Finding]:
    from aggregator.views import nfsrates

    p, quiet = rule.params, quiet_nodes(conn)
    # NODE:MOUNT -> [operations/s, bytes/s]: a mount point that holds two mounts (stacked)
    # carries the traffic of both.
    rates: dict[str, list[float]] = {}
    for m in nfsrates.nfs(conn, now, hours=rule.window / 3600)["mounts"]:
        latest = m.get("latest")
        if m["node"] in quiet or not latest:
            continue
        # Bytes over the wire where the kernel counts them, else what applications moved.
        wire = [latest.get(k) for k in ("server_read_bytes_per_s", "server_write_bytes_per_s")]
        if all(v is None for v in wire):
            wire = [latest.get(k) for k in ("read_bytes_per_s", "write_bytes_per_s")]
        total = rates.setdefault(f"{m['node']}:{m['mount_point']}", [0.0, 0.0])
        total[0] += latest.get("ops_per_s") or 0.0
        total[1] += sum(v for v in wire if v is not None)
    out = []
    for subject, (ops, moved) in sorted(rates.items()):
        over = []
        if p["ops_per_second"] is not None and ops > p["ops_per_second"]:
            over.append(f"{ops:.4g} operations/s (threshold {p['ops_per_second']:g})")
        if p["bytes_per_second"] is not None and moved > p["bytes_per_second"]:
            over.append(f"{size(moved)}/s (threshold {size(p['bytes_per_second'])}/s)")
        if over:
            out.append(Finding(subject, f"{subject}: NFS storm: {' and '.join(over)}"))
    return out


def _fairshare_imbalance(conn: Any, rule: Rule, now: float) -> list[Finding]:
    from aggregator.views import clusterviews

    shares = clusterviews.fairshare(conn, now)
    newest = store.latest_readings(conn, "queue").values()
    if shares["time"] is None or now - shares["time"] > rule.window:
        return []
    queue = max(newest, key=lambda tr: tr[0], default=(None, []))
    if queue[0] is None or now - queue[0] > rule.window:
        return []
    pending: dict[str, int] = {}
    for j in queue[1]:
        if (
            isinstance(j, dict)
            and j.get("state") == "PENDING"
            and isinstance(j.get("account"), str)
        ):
            pending[j["account"]] = pending.get(j["account"], 0) + 1
    # An account's factor: its own row's, where sshare prints one (Fair Tree prints it for
    # users only); else its best-placed user's, so that the account is short of its share
    # only when every user in it is.
    own: dict[str, float] = {}
    users: dict[str, float] = {}
    for a in shares["associations"]:
        account, factor = a.get("account"), a.get("fairshare")
        if not isinstance(account, str) or not _number(factor):
            continue
        if a.get("user") is None:
            own[account] = float(factor)
        else:
            users[account] = max(users.get(account, float(factor)), float(factor))
    out = []
    for account in sorted(pending):
        factor = own.get(account, users.get(account))
        if factor is not None and factor < rule.params["value"]:
            out.append(
                Finding(
                    f"account {account}",
                    f"account {account} has {pending[account]} job(s) pending with a fair-share"
                    f" factor of {factor:.3g} (threshold {rule.params['value']:g})",
                )
            )
    return out


EVALUATORS = {
    "node_silent": _node_silent,
    "node_problem": _node_problem,
    "time_to_limit": _time_to_limit,
    "job_memory": _job_memory,
    "threshold": _threshold,
    "rate": _rate,
    "acceleration": _acceleration,
    "collector_failing": _collector_failing,
    "license_down": _license_down,
    "license_expiry": _license_expiry,
    "job_pending": _job_pending,
    "job_stuck": _job_stuck,
    "gpu_idle": _gpu_idle,
    "job_zombie": _job_zombie,
    "nfs_storm": _nfs_storm,
    "fairshare_imbalance": _fairshare_imbalance,
}


# -- applying what holds: alerts opened, refreshed and resolved (in the writer) -----------------
def apply(conn: Any, rule: Rule, findings: list[Finding], now: float) -> list[Change]:
    """Raise or refresh an alert for each finding; resolve RULE's open alerts whose subject is
    no longer found.  The alerts opened and resolved, for the dispatchers."""
    changes = []
    findings = [_printable(f) for f in findings]
    if len(findings) > MAX_FINDINGS:  # one node's flood of subjects: not thousands of alerts
        kept = sorted(findings, key=lambda f: f.subject)[: MAX_FINDINGS - 1]
        more = len(findings) - len(kept)
        findings = [*kept, Finding("(more)", f"{rule.name}: {more} more subjects not shown")]
    found = {f.subject for f in findings}
    for f in findings:
        alert_id, state = store.raise_alert(
            conn,
            rule.name,
            f.subject,
            rule.severity,
            f.summary,
            now,
            rule.cooldown,
            f.detail,
            f.job_uid,
            f.user,
        )
        if state == "raised" and alert_id is not None:
            changes.append(Change(alert_id, rule, f.subject, "firing", f.summary, f.user))
    users = store.open_alert_users(conn, rule.name)
    for subject in sorted(set(users) - found):
        alert_id = store.resolve_alert(conn, rule.name, subject, now)
        if alert_id is not None:
            summary = f"{subject}: {rule.name} no longer holds"
            changes.append(Change(alert_id, rule, subject, "resolved", summary, users[subject]))
    return changes


def _printable(f: Finding) -> Finding:
    """F with its subject and text on one printable line each: they carry what nodes and users
    wrote (paths, mount points, job names), and go to terminals, mail and chat."""
    return Finding(
        printable(f.subject, 200),
        printable(f.summary, 1000),
        printable(f.detail, 2000) if f.detail else f.detail,
        f.job_uid,
        f.user,
    )


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _ago(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds / length:.1f} {unit}"
    return f"{seconds:.0f} s"
