"""`nomadectl queue|nodes|licenses|collect|syscheck`: the cluster as the collectors read it, and
this host as NØMADE finds it (with their text views; `--json` prints the views themselves)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from aggregator.admin import syscheck
from aggregator.admin.syscheck import Check
from aggregator.views import clusterviews
from collectors.runner import Reading

from . import base
from .base import main
from .fmt import pct, seconds, when


@main.command("queue")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def queue_cmd(ctx: click.Context, as_json: bool) -> None:
    """Running and pending jobs per partition, and why each pending job waits."""
    base.emit(base.view(ctx, "/api/v1/queue", clusterviews.queue), as_json, render_queue)


@main.command("nodes")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def nodes_cmd(ctx: click.Context, as_json: bool) -> None:
    """Each node: Slurm state, allocation, load, drain reason, and its agent."""
    base.emit(base.view(ctx, "/api/v1/nodes", clusterviews.nodes), as_json, render_nodes)


@main.command("licenses")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def licenses_cmd(ctx: click.Context, as_json: bool) -> None:
    """License servers and features: issued, in use, by whom, expiry."""
    base.emit(base.view(ctx, "/api/v1/licenses", clusterviews.licenses), as_json, render_licenses)


@main.command("collect")
@click.option(
    "--once", is_flag=True, required=True, help="one cycle (the daemons run them on schedule)"
)
@click.option(
    "-C", "only", default=None, help="collectors to run, comma-separated (default: all enabled)"
)
@click.option("--json", "as_json", is_flag=True, help="JSON lines: one per record")
@click.pass_context
def collect(ctx: click.Context, once: bool, only: str | None, as_json: bool) -> None:
    """Run every collector once on this host and print what it read."""
    from aggregator.admin.collectcmd import collect_once

    try:
        readings, skipped = collect_once(base.config(ctx), only.split(",") if only else None)
    except KeyError as exc:
        raise click.UsageError(exc.args[0]) from None
    click.echo(render_collect(readings, skipped, as_json))
    if any(not r.ok for r in readings):
        sys.exit(1)


@main.command("syscheck")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def syscheck_cmd(ctx: click.Context, as_json: bool) -> None:
    """What this host has for NØMADE, with the reason when something is missing."""
    checks = syscheck.run(base.config(ctx))
    base.emit([c.__dict__ for c in checks], as_json, lambda _: render_syscheck(checks))
    if any(c.status == "fail" for c in checks):
        sys.exit(1)


# --- the text views; `nomadectl status` shows the queue, node and license lines too -----------


def queue_lines(parts: list[dict[str, Any]]) -> list[str]:
    out = ["Queue:"]
    for p in parts:
        wait = (
            f"  longest wait {seconds(p['longest_wait_seconds'])}"
            if p["longest_wait_seconds"]
            else ""
        )
        out.append(
            f"  {p['partition']:<15} Running: {p['running']:>4}  Pending: {p['pending']:>4}{wait}"
        )
    return out if parts else ["Queue: (no squeue reading yet, or the queue is empty)"]


def node_lines(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for n in rows:
        if n.get("state") is None:
            out.append(f"  {n['node']:<15} (not in Slurm)  agent {n.get('agent') or '-'}")
            continue
        cpus = f"{n.get('cpus_alloc') or 0}/{n.get('cpus') or '-'}"
        frac = n.get("memory_alloc_fraction")
        agent = n.get("agent") or "no agent"
        out.append(
            f"  {n['node']:<15} {n['state'].upper():<12} CPU: {cpus:<8}"
            f" Mem: {pct(None if frac is None else frac * 100):<7}"
            f" Load: {n.get('cpu_load') if n.get('cpu_load') is not None else '-':<6}"
            f" agent: {agent}"
        )
        if n.get("reason"):
            out.append(
                f"    └─ Reason: {n['reason']}"
                + (
                    f" ({n['reason_user']}, {when(n['reason_time'])})"
                    if n.get("reason_user")
                    else ""
                )
            )
    return out


def license_lines(lic: dict[str, Any]) -> list[str]:
    out = []
    for s in lic["servers"]:
        out.append(
            f"  server {s['name']:<20} {'up' if s['up'] else 'DOWN'}"
            + (f"  {s['message']}" if s.get("message") else "")
        )
    for f in lic["features"]:
        users = ", ".join(f"{u} {n}" for u, n in sorted(f["users"].items()))
        out.append(
            f"  {f['feature']:<20} {f['in_use'] if f['in_use'] is not None else '-':>4}"
            f"/{f['issued'] if f['issued'] is not None else '-':<5}"
            f" in use  expires {f['expiry'] or '-'}" + (f"  ({users})" if users else "")
        )
    return out


def render_queue(q: dict[str, Any]) -> str:
    age = f" ({seconds(q['age_seconds'])} ago)" if q.get("age_seconds") is not None else ""
    out = [f"Queue as squeue showed it at {when(q['time'])}{age}", *queue_lines(q["partitions"])]
    if q["pending_reasons"]:
        out += ["", "Why jobs wait:"]
        for r in q["pending_reasons"]:
            out.append(
                f"  {r['jobs']:>5} × {r['reason']}: {r['reason_text'] or '-'}"
                + (f"; {r['unblock']}" if r["unblock"] else "")
            )
    if q["pending"]:
        out += ["", f"  {'JOBID':<14}{'USER':<10}{'PARTITION':<11}{'WAITING':<12}REASON"]
        for j in q["pending"][:50]:
            out.append(
                f"  {str(j['job_id']):<14}{j['user'] or '-':<10}{j['partition']:<11}"
                f"{seconds(j['wait_seconds']):<12}{j['reason'] or '-'}"
            )
    if q.get("stuck"):
        out += ["", "Running but making no CPU progress (last 30 min):"]
        for j in q["stuck"]:
            out.append(
                f"  {j['job_id']:<10} {j['user'] or '-':<10} {j['node_list'] or '-':<16}"
                f" {j['cpu_seconds_in_window']} CPU s, running since {when(j['start_time'])}"
            )
    failing = [a for a in q.get("arrays", []) if a["failed"]]
    if failing:
        out += ["", "Job arrays with failed tasks (last 7 days):"]
        for a in failing[:20]:
            out.append(
                f"  {a['array_job_id']:<10} {a['user'] or '-':<10}"
                f" {a['failed']} of {a['tasks']} tasks failed"
                f" ({', '.join(a['outcomes'])}), {a['completed']} completed,"
                f" {a['unfinished']} unfinished"
            )
    return "\n".join(out)


def render_nodes(v: dict[str, Any]) -> str:
    return "\n".join([f"Nodes at {when(v['time'])}", *node_lines(v["nodes"])])


def render_licenses(lic: dict[str, Any]) -> str:
    lines = license_lines(lic)
    return (
        "\n".join([f"Licenses at {when(lic['time'])}", *lines])
        if lines
        else "no license readings (configure [collectors.licenses])"
    )


def render_collect(readings: list[Reading], skipped: dict[str, str], as_json: bool) -> str:
    if as_json:
        lines = [
            json.dumps({"collector": r.collector, **rec}, sort_keys=True, default=str)
            for r in readings
            for rec in r.records
        ]
        lines += [
            json.dumps({"collector": r.collector, "error": r.error}) for r in readings if not r.ok
        ]
        lines += [json.dumps({"collector": k, "skipped": v}) for k, v in skipped.items()]
        return "\n".join(lines)
    out = []
    for r in readings:
        if r.ok:
            kinds: dict[str, int] = {}
            for rec in r.records:
                kinds[str(rec.get("record", "record"))] = (
                    kinds.get(str(rec.get("record", "record")), 0) + 1
                )
            what = (
                ", ".join(
                    f"{n} {k if k != 'record' else 'records'}" for k, n in sorted(kinds.items())
                )
                or "no records"
            )
            out.append(f"OK {r.collector:<13} {what} in {r.seconds:.2f} s")
        else:
            out.append(f"!! {r.collector:<13} {r.error}")
    out += [f"○  {k:<13} skipped: {v}" for k, v in skipped.items()]
    return "\n".join(out)


MARK = {"ok": "OK", "skip": "○ ", "fail": "!!"}


def render_syscheck(checks: list[Check]) -> str:
    out, section = ["NØMADE System Check", "═" * 40], None
    for c in checks:
        if c.section != section:
            out.append(f"{c.section}:")
            section = c.section
        out.append(f"  {MARK[c.status]} {c.name}: {c.detail}")
    failed = sum(c.status == "fail" for c in checks)
    out += ["─" * 40, "OK All checks passed!" if not failed else f"!! {failed} check(s) failed"]
    return "\n".join(out)
