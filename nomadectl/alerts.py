"""`nomadectl alerts [list]|ack|silence|silences|test`: the alerts NØMADE raised, acknowledging
one, silences (maintenance windows) that hold new ones back, and what a configured rule would
raise on the stored data.  With their text views.

Reading is for everyone (a user sees the alerts about their own jobs, through the API);
acknowledging and silencing are an administrator's: root's on the store, or an admin's of
`security.admin_users`/`admin_groups` through the API from any host, recorded in the admin log
(`nomadectl audit`) under their name (aggregator/alerts/actions.py)."""

from __future__ import annotations

import time
from typing import Any

import click

from aggregator import store
from aggregator.alerts import actions
from aggregator.views import alertviews
from nomade_common.text import printable

from . import base
from .base import main
from .fmt import when

DURATION = {"m": 60, "h": 3600, "d": 86400}


@main.group(invoke_without_command=True)
@click.option("--unresolved", is_flag=True, help="open alerts only")
@click.option("--since", default=None, help="raised since: 30m, 2h, 3d or a date")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def alerts(ctx: click.Context, unresolved: bool, since: str | None, limit: int, as_json: bool):
    """Alerts, newest first (a user sees those about their own jobs; root and admins all)."""
    if ctx.invoked_subcommand is not None:
        return
    cfg, after = base.config(ctx), base.since(since)
    if base.from_store():
        rows = alertviews.alerts(base.reader(cfg), unresolved, after, None, limit)
    else:
        params = {"unresolved": "1" if unresolved else None, "since": after, "limit": limit}
        rows = base.api(cfg, "/api/v1/alerts", params)
    base.emit(rows, as_json, render_alerts)


@alerts.command("ack")
@click.argument("alert_id", type=click.IntRange(1, 2**63 - 1))
@click.pass_context
def ack(ctx: click.Context, alert_id: int) -> None:
    """Acknowledge alert ALERT_ID: someone is on it (it stays open until its condition
    clears).  Root on the head node, or an administrator anywhere (through the API)."""
    cfg = base.config(ctx)
    if base.from_store():
        conn, me = base.writer(cfg), store.whoami()
        with store.transaction(conn):
            if not actions.ack(conn, alert_id, me, time.time()):
                raise click.ClickException(f"no alert {alert_id} (nomadectl alerts lists them)")
        user = me[1]
    else:
        user = base.api_post(cfg, f"/api/v1/alerts/{alert_id}/ack", {})["acked_by"]
    click.echo(f"alert {alert_id} acknowledged by {user}")


def duration(text: str) -> float:
    """'90m', '2h', '3d' in seconds; one clear line otherwise."""
    if text and text[-1] in DURATION and text[:-1].isdigit() and 0 < int(text[:-1]) <= 10**6:
        return int(text[:-1]) * DURATION[text[-1]]
    raise click.BadParameter(f"expected a duration like 90m, 2h or 3d, got {text!r}")


@alerts.command("silence")
@click.option("--rule", default=None, help="the rule to hold back (any rule where omitted)")
@click.option("--subject", default=None, help="the node, filesystem or job (any where omitted)")
@click.option("--for", "length", default=None, help="how long: 90m, 2h, 3d")
@click.option("--start", default=None, help="when it begins (a date; now where omitted)")
@click.option("--until", "end", default=None, help="when it ends (a date), instead of --for")
@click.option("--reason", required=True, help="why, for whoever sees the alerts held back")
@click.pass_context
def silence(ctx, rule, subject, length, start, end, reason) -> None:
    """Hold back new alerts of a rule, a subject or both for a while (a maintenance window):
    `nomadectl alerts silence --subject node7 --for 4h --reason "DIMM swap"`."""
    if rule is None and subject is None:
        raise click.UsageError("name a --rule, a --subject or both")
    if (length is None) == (end is None):
        raise click.UsageError("give --for or --until (one of them)")
    now = time.time()
    begin = _date(start, "--start") if start else now
    finish = begin + duration(length) if length else _date(end, "--until")
    if finish <= max(begin, now):
        raise click.UsageError("the silence would be over before it began")
    cfg = base.config(ctx)
    if base.from_store():
        conn = base.writer(cfg)
        with store.transaction(conn):
            try:
                sid = actions.silence(
                    conn, rule, subject, begin, finish, reason, store.whoami(), now
                )
            except ValueError as exc:
                raise click.UsageError(str(exc)) from None
    else:
        asked = {"rule": rule, "subject": subject, "start": begin, "until": finish}
        sid = base.api_post(cfg, "/api/v1/alerts/silences", {**asked, "reason": reason})["id"]
    click.echo(
        f"silence {sid}: {rule or 'every rule'} about {subject or 'every subject'}"
        f" from {when(begin)} until {when(finish)}"
    )


def _date(text: str, option: str) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise click.BadParameter(f"expected a date like 2026-12-24T08:00, got {text!r}",
                                 param_hint=option) from None  # fmt: skip


@alerts.command("silences")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def silences_cmd(ctx: click.Context, as_json: bool) -> None:
    """The silences not yet over (root, and administrators through the API)."""
    cfg = base.config(ctx)
    if base.from_store():
        rows = alertviews.silences(base.reader(cfg))
    else:
        rows = base.api(cfg, "/api/v1/alerts/silences")
    base.emit(rows, as_json, render_silences)


@alerts.command("test")
@click.argument("rule_name", metavar="RULE")
@click.option("--at", "at", default=None, help="evaluate as of this date (now where omitted)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def test_cmd(ctx: click.Context, rule_name: str, at: str | None, as_json: bool) -> None:
    """What rule RULE of the configuration's [[alerts.rules]] would raise on the stored data now
    (or --at a date): its findings, without writing anything (root)."""
    from aggregator.alerts import rules

    if not base.from_store():
        raise click.ClickException("nomadectl alerts test: for root on the head node")
    cfg = base.config(ctx)
    try:
        configured = rules.parse_rules(cfg.alerts.rules)
    except ValueError as exc:
        raise click.ClickException(f"{cfg.path}: {exc}") from None
    rule = next((r for r in configured if r.name == rule_name), None)
    if rule is None:
        known = ", ".join(r.name for r in configured) or "none"
        raise click.ClickException(
            f"no rule {printable(rule_name, 64)!r} in [[alerts.rules]] (configured: {known})"
        )
    now = _date(at, "--at") if at else time.time()
    found = rules.evaluate(base.reader(cfg), rule, now)
    rows = [{"subject": f.subject, "summary": f.summary, "user": f.user} for f in found]
    base.emit(
        {"rule": rule.name, "kind": rule.kind, "at": now, "findings": rows},
        as_json,
        render_test,
    )


# --- the text views ----------------------------------------------------------------------------


def render_alerts(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no alerts"
    out = [f"{'ID':<7}{'STATE':<10}{'SEVERITY':<10}{'RULE':<20}{'SUBJECT':<20}{'SINCE':<21}SUMMARY"]
    for a in rows:
        state = a["state"] if a["state"] != "firing" or not a["acked_by"] else "acked"
        out.append(
            f"{a['id']:<7}{state:<10}{a['severity']:<10}{printable(a['rule'], 19):<20}"
            f"{printable(a['subject'], 19):<20}{when(a['first_t']):<21}"
            f"{printable(a['summary'], 1000)}"
        )
    return "\n".join(out)


def render_test(result: dict[str, Any]) -> str:
    head = f"rule {result['rule']} ({result['kind']}) as of {when(result['at'])}"
    if not result["findings"]:
        return f"{head}: would raise nothing"
    lines = [f"{head}: would raise {len(result['findings'])}"]
    for f in result["findings"]:
        user = f"  (user {f['user']})" if f["user"] else ""
        lines.append(f"{printable(f['subject'], 200):<20}{printable(f['summary'], 500)}{user}")
    return "\n".join(lines)


def render_silences(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no silences"
    return "\n".join(
        f"{r['id']:<5}{r['rule'] or 'every rule':<20}{r['subject'] or 'every subject':<20}"
        f"{when(r['start_t'])} - {when(r['until_t'])}  by {r['created_by']}: {r['reason'] or ''}"
        for r in rows
    )
