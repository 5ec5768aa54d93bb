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

Nodes that Slurm has drained, or that are in a MAINT reservation, raise no node alerts: their
admins know.  A subject found no more resolves its open alert.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from aggregator import store
from aggregator.analysis import trends

KINDS = ("node_silent", "node_problem", "time_to_limit", "job_memory")
SEVERITIES = ("info", "warning", "critical")
PROBLEMS = ("ue", "mce", "xid", "gpu-ecc", "gpu-lost", "hot", "gpu-hot", "service-down")
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
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
        "limit_key": (str, None),
        "limit": ((int, float), None),
        "within": ((int, float), ...),
    },
    "job_memory": {"within": ((int, float), 600.0), "fraction": ((int, float), 0.95)},
}
COMMON = {
    "name": (str, ...),
    "kind": (str, ...),
    "severity": (str, "warning"),
    "window": ((int, float), 3600.0),
    "cooldown": ((int, float), 0.0),
}


@dataclass(frozen=True)
class Rule:
    name: str
    kind: str
    severity: str
    window: float
    cooldown: float
    params: dict[str, Any] = field(default_factory=dict)


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
        for key in ("window", "cooldown", "within", "fraction"):
            if key in values and not 0 <= values[key] <= 10 * 365 * 86400:
                raise ValueError(f"{where}: {key} must be between 0 and ten years of seconds")
        if values["window"] <= 0:
            raise ValueError(f"{where}: window must be more than 0 seconds")
        if kind == "time_to_limit" and (values["limit"] is None) == (values["limit_key"] is None):
            raise ValueError(f"{where}: give limit_key or limit (one of them)")
        if kind == "node_problem" and not all(isinstance(p, str) for p in values["problems"]):
            raise ValueError(f"{where}: problems must be a list of words (docs/api.md)")
        common = {k: values.pop(k) for k in ("kind", "severity", "window", "cooldown")}
        out.append(Rule(name=name, params=values, **common))
    return out


def _type_name(kind: type | tuple[type, ...]) -> str:
    return "number" if kind == (int, float) else {str: "text", list: "list"}.get(kind, "value")


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


def _time_to_limit(conn: Any, rule: Rule, now: float) -> list[Finding]:
    p = rule.params
    series: dict[str, dict[float, tuple[float, float | None]]] = {}
    for _node, t, r in store.reading_records_between(
        conn, p["collector"], p["record"], now - rule.window, now
    ):
        subject, value = r.get(p["subject_key"]), r.get(p["key"])
        if not isinstance(subject, str) or not _number(value):
            continue
        limit = p["limit"] if p["limit"] is not None else r.get(p["limit_key"])
        series.setdefault(subject, {})[t] = (float(value), limit if _number(limit) else None)
    out = []
    for subject, points in sorted(series.items()):
        times = sorted(points)
        limit = next((points[t][1] for t in reversed(times) if points[t][1] is not None), None)
        if limit is None or len(times) < 3:
            continue
        f = trends.fit(times, [points[t][0] for t in times])
        if f.slope is None:
            continue
        reach = trends.project(f, limit)
        ways = (("at its acceleration", reach["quadratic"]), ("at its rate", reach["linear"]))
        soonest = [(c["seconds"], how) for how, c in ways if c.get("seconds") is not None]
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
                    detail=f"rate {f.slope:.4g}/s, acceleration {f.accel or 0:.4g}/s²,"
                    f" {f.n} readings over {_ago(f.span_seconds or 0)}",
                )
            )
    return out


def _job_memory(conn: Any, rule: Rule, now: float) -> list[Finding]:
    p, out, seen = rule.params, [], set()
    for s in store.running_job_memory(conn, now - rule.window):
        if s["limit"] is None or s["uid"] in seen:
            continue
        points = [(t, m) for t, m in zip(s["t"], s["mem"], strict=True) if m is not None]
        if not points:
            continue
        last = points[-1][1]
        why = None
        if last >= p["fraction"] * s["limit"]:
            why = f"holds {100 * last / s['limit']:.0f}% of its {_size(s['limit'])} limit"
        elif len(points) >= 3:
            f = trends.fit([t for t, _ in points], [m for _, m in points])
            reach = trends.project(f, s["limit"])["linear"]
            if reach.get("seconds") is not None and reach["seconds"] <= p["within"]:
                why = (
                    f"grows {_size((f.slope or 0) * 60)}/min toward its {_size(s['limit'])}"
                    f" limit: out of memory in about {_ago(reach['seconds'])}"
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


EVALUATORS = {
    "node_silent": _node_silent,
    "node_problem": _node_problem,
    "time_to_limit": _time_to_limit,
    "job_memory": _job_memory,
}


# -- applying what holds: alerts opened, refreshed and resolved (in the writer) -----------------
def apply(conn: Any, rule: Rule, findings: list[Finding], now: float) -> list[Change]:
    """Raise or refresh an alert for each finding; resolve RULE's open alerts whose subject is
    no longer found.  The alerts opened and resolved, for the dispatchers."""
    changes = []
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
    for subject in sorted(store.open_subjects(conn, rule.name) - found):
        alert_id = store.resolve_alert(conn, rule.name, subject, now)
        if alert_id is not None:
            changes.append(Change(alert_id, rule, subject, "resolved", f"{subject}: cleared"))
    return changes


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _ago(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
