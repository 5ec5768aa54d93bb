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


def view(ctx: click.Context, path: str, params: dict[str, Any], local: Any) -> Any:
    """A read view with query PARAMS (None values left out): LOCAL(connection) from the store
    as root, else the API's PATH (base.view, with parameters)."""
    cfg = base.config(ctx)
    if base.from_store():
        return local(base.reader(cfg))
    return base.api(cfg, path, {k: v for k, v in params.items() if v is not None} or None)


@main.command("nodes")
@click.option("--problems", "only_problems", is_flag=True, help="only nodes with a problem")
@click.option(
    "--hours",
    type=click.FloatRange(0.01, 24 * 31),
    default=clusterviews.ERRORS_HOURS,
    show_default=True,
    help="count the kernel's hardware errors this far back",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def nodes_cmd(ctx: click.Context, only_problems: bool, hours: float, as_json: bool) -> None:
    """Each node: Slurm state, allocation, load, drain reason, its agent, and its health
    (temperatures, memory and hardware errors, daemons, GPUs), what is wrong first."""
    v = view(
        ctx,
        "/api/v1/nodes",
        {"hours": hours if hours != clusterviews.ERRORS_HOURS else None},
        lambda c: clusterviews.nodes(c, hours=hours),
    )
    if only_problems:
        v = {**v, "nodes": [n for n in v["nodes"] if n.get("problems")]}
    base.emit(v, as_json, lambda x: render_nodes(x, only_problems))


@main.command("partitions")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def partitions_cmd(ctx: click.Context, as_json: bool) -> None:
    """Each partition from sinfo: its nodes by state, CPUs, memory and GPUs in use."""
    v = view(ctx, "/api/v1/partitions", {}, clusterviews.partitions)
    base.emit(v, as_json, render_partitions)


@main.command("fairshare")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def fairshare_cmd(ctx: click.Context, as_json: bool) -> None:
    """The fair-share tree per account and user, as sshare shows it."""
    v = view(ctx, "/api/v1/fairshare", {}, clusterviews.fairshare)
    base.emit(v, as_json, render_fairshare)


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
            out.append(
                f"  {n['node']:<15} (not in Slurm)  agent {n.get('agent') or '-'}"
                + (health_columns(n) if "problems" in n else "")
            )
            out += problem_lines(n)
            continue
        cpus = f"{n.get('cpus_alloc') or 0}/{n.get('cpus') or '-'}"
        frac = n.get("memory_alloc_fraction")
        agent = n.get("agent") or "no agent"
        out.append(
            f"  {n['node']:<15} {n['state'].upper():<12} CPU: {cpus:<8}"
            f" Mem: {pct(None if frac is None else frac * 100):<7}"
            f" Load: {n.get('cpu_load') if n.get('cpu_load') is not None else '-':<6}"
            f" agent: {agent:<8}" + (health_columns(n) if "problems" in n else "")
        )
        out += problem_lines(n)
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


def health_columns(n: dict[str, Any]) -> str:
    """The nodes view's health columns: hottest sensor, memory errors, GPUs, daemons."""
    h, g = n.get("health"), n.get("gpus")
    if h is None:
        temp = mem = svc = "-"
    else:
        t = h.get("temperature")
        hot = t and t["hottest"]
        limit = hot and (hot.get("max_celsius") or hot.get("crit_celsius"))
        temp = (
            "no sensors"
            if not hot
            else f"{hot['temp_celsius']:.0f}°C" + (f"/{limit:.0f}" if limit else "")
        )
        e = h.get("edac")
        mem = "no EDAC" if e is None else f"CE {e['ce_count']} UE {e['ue_count']}"
        down = [s["name"] for s in h.get("services") or [] if s.get("running") is False]
        svc = "DOWN " + ",".join(down) if down else ("ok" if h.get("services") else "-")
    gpu = "none" if g is None else _gpu_summary(g)
    return f"  Temp: {temp:<10} ECC: {mem:<12} GPU: {gpu:<22} Svc: {svc}"


def _gpu_summary(g: dict[str, Any]) -> str:
    util = g.get("util_gpu_percent")
    temp = g.get("temperature_max_c")
    return (
        f"{g['count']}×"
        + (f" {util:.0f}%" if util is not None else "")
        + (f" {temp:.0f}°C" if temp is not None else "")
        + (f" {g['power_draw_w']:.0f} W" if g.get("power_draw_w") is not None else "")
    )


def problem_lines(n: dict[str, Any]) -> list[str]:
    details = n.get("problem_details") or {}
    return [f"    !! {p:<14} {details.get(p) or ''}".rstrip() for p in n.get("problems") or []]


def render_nodes(v: dict[str, Any], only_problems: bool = False) -> str:
    hours = v.get("errors_hours")
    head = f"Nodes at {when(v['time'])}" + (
        f" (worst first; kernel hardware errors of the last {hours:g} h)" if hours else ""
    )
    if only_problems and not v["nodes"]:
        return "\n".join([head, "  no node has a problem"])
    return "\n".join([head, *node_lines(v["nodes"])])


def render_partitions(v: dict[str, Any]) -> str:
    if not v["partitions"]:
        return "no sinfo reading yet (the aggregator's partitions collector)"
    out = [
        f"Partitions as sinfo showed them at {when(v['time'])}",
        f"  {'PARTITION':<14}{'AVAIL':<7}{'TIMELIMIT':<12}{'NODES':>5}  {'CPUS A/I/T':<16}"
        f"{'MEM ALLOC':<10}{'GPUS':>5}  STATES",
    ]
    for p in v["partitions"]:
        name = p["partition"] + ("*" if p.get("default") else "")
        limit = p.get("time_limit_seconds")
        cpus = f"{p['cpus_alloc']}/{p['cpus_idle']}/{p['cpus']}"
        mem = p["memory_alloc_bytes"] / p["memory_bytes"] * 100 if p["memory_bytes"] else None
        states = ", ".join(f"{s} {k}" for s, k in sorted(p["states"].items()))
        out.append(
            f"  {name:<14}{p.get('available') or '-':<7}"
            f"{seconds(limit) if limit is not None else 'infinite':<12}"
            f"{sum(p['states'].values()):>5}  {cpus:<16}{pct(mem):<10}{p['gpus']:>5}  {states}"
        )
        if p["unavailable_nodes"]:
            out.append(f"    └─ {p['unavailable_nodes']} node(s) down, drained or failing")
    return "\n".join(out)


def render_fairshare(v: dict[str, Any]) -> str:
    rows = v["associations"]
    if not rows:
        return "no sshare reading yet (the aggregator's fairshare collector)"

    def num(x: Any) -> str:
        return "-" if x is None else f"{x:.6g}" if isinstance(x, float) else str(x)

    out = [
        f"Fair share as sshare showed it at {when(v['time'])}",
        f"  {'ACCOUNT':<22}{'USER':<12}{'RAWSHARES':>10}{'NORMSHARES':>12}{'RAWUSAGE':>12}"
        f"{'EFFECTVUSAGE':>14}{'FAIRSHARE':>11}",
    ]
    for r in rows:
        account = " " * (r.get("depth") or 0) + str(r.get("account") or "")
        out.append(
            f"  {account:<22}{r.get('user') or '':<12}{num(r.get('raw_shares')):>10}"
            f"{num(r.get('norm_shares')):>12}{num(r.get('raw_usage')):>12}"
            f"{num(r.get('effective_usage')):>14}{num(r.get('fairshare')):>11}"
        )
    return "\n".join(out)


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
