"""`nomadectl jobs|job|check`: recent jobs, one job in detail, and a job script scored before it
is submitted (with their text views; `--json` prints the views themselves)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import click

from aggregator.views import query

from . import base
from .base import main
from .fmt import seconds, size, when

LEAST_EFFICIENT_PERCENT = 50.0  # `jobs --least-efficient` without --below


@main.command()
@click.option("--user", default=None)
@click.option("--state", default=None, help="outcome or Slurm state, e.g. FAILED, OUT_OF_MEMORY")
@click.option("--since", default=None, help="30m, 2h, 3d or a date")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000))
@click.option(
    "--least-efficient",
    "least",
    is_flag=True,
    help="ended jobs that used least of what they asked for first (CPU or memory under 50%)",
)
@click.option(
    "--below",
    type=click.FloatRange(0, 1000),
    default=None,
    metavar="PERCENT",
    help="with --least-efficient: CPU or memory efficiency under PERCENT (default 50)",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def jobs(ctx, user, state, since, limit, least, below, as_json) -> None:
    """Recent jobs, newest first, with their CPU and memory efficiency (a user sees only their
    own; root and admins see all).  --least-efficient lists the ended jobs that used least of
    the CPUs or memory they asked for."""
    cfg, after = base.config(ctx), base.since(since)
    if below is not None and not least:
        raise click.UsageError("--below goes with --least-efficient")
    under = (LEAST_EFFICIENT_PERCENT if below is None else below) if least else None
    if base.from_store():
        rows = query.jobs(base.reader(cfg), user, state, after, limit, efficiency_below=under)
    else:
        params = {"user": user, "state": state, "since": after, "limit": limit}
        if under is not None:
            params["efficiency_below"] = under
        rows = base.api(cfg, "/api/v1/jobs", params)
    base.emit(rows, as_json, render_jobs)


@main.command()
@click.argument("job_id", type=click.IntRange(0, 2**63 - 1))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def job(ctx: click.Context, job_id: int, as_json: bool) -> None:
    """One job: request, outcome, CPU and memory efficiency, its verdict and advice at start,
    per-node CPU, memory and I/O (local and network), its GPUs, per-node curves and a compact
    time series."""
    cfg = base.config(ctx)
    if base.from_store():
        found = query.job(base.reader(cfg), job_id)
    else:
        found = base.api(cfg, f"/api/v1/jobs/{job_id}", none_if_404=True)
    if found is None:
        mine = "" if base.from_store() else " (or it is another user's)"
        raise click.ClickException(f"job {job_id} is not in the database{mine}")
    base.emit(found, as_json, render_job)


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("script", type=click.File("r"))
@click.argument("sbatch_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--user", default=None, help="score as this user (root only)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def check(ctx: click.Context, script, sbatch_args, user: str | None, as_json: bool) -> None:
    """Score a job script before submitting it: `nomadectl check job.sh [sbatch options]`."""
    import getpass

    from aggregator.admin import request

    cfg = base.config(ctx)
    try:
        req = request.request(
            request.options(script.read(), list(sbatch_args)), request.cluster_defaults()
        )
    except ValueError as exc:
        raise click.ClickException(f"{script.name}: {exc}") from None
    if user and os.geteuid() != 0:
        raise click.ClickException("only root may score a job as another user")
    req["user"] = user or getpass.getuser()
    if not req.get("account"):  # as Slurm will charge it: the user's default account
        req["account"] = request.default_account(req["user"])
    from aggregator.admin.apiclient import ApiError

    try:
        answer = request.ask_aggregator(
            cfg.hooks.aggregator_url,
            req,
            ca=cfg.security.tls_ca,
            munge_socket=cfg.security.munge_socket,
        )
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None
    base.emit(answer, as_json, render_check)


# --- the text views ----------------------------------------------------------------------------


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def render_jobs(rows: list[dict[str, Any]]) -> str:
    out = [
        f"{'JOBID':<9}{'USER':<10}{'PARTITION':<11}{'OUTCOME':<15}"
        f"{'EXIT':<6}{'ELAPSED':<12}{'CPU EFF':>8}{'MEM EFF':>8}  SUBMITTED"
    ]
    for j in rows:
        outcome = j["outcome"] or (
            "RUNNING" if j["start_time"] and not j["end_time"] else j["state"] or "-"
        )
        eff = j.get("efficiency") or {}
        out.append(
            f"{j['job_id']:<9}{j['user'] or '-':<10}{j['partition'] or '-':<11}{outcome:<15}"
            f"{'-' if j['exit_code'] is None else j['exit_code']:<6}"
            f"{seconds(j['elapsed_seconds']):<12}"
            f"{percent(eff.get('cpu_percent')):>8}{percent(eff.get('mem_percent')):>8}  "
            f"{when(j['submit_time'])}"
        )
    return "\n".join(out)


def render_job(j: dict[str, Any]) -> str:
    mem = (
        j["mem_per_node_bytes"]
        and f"{size(j['mem_per_node_bytes'])}/node"
        or (j["mem_per_cpu_bytes"] and f"{size(j['mem_per_cpu_bytes'])}/CPU")
        or "-"
    )
    out = [
        f"Job {j['job_id']}  {j['job_name'] or ''}",
        f"  user {j['user'] or '-'}  account {j['account'] or '-'}"
        f"  partition {j['partition'] or '-'}",
        f"  request: {j['nodes_requested'] or '-'} node(s), {j['cpus'] or '-'} CPUs, memory {mem},"
        f" GPUs {j['gpus'] if j['gpus'] is not None else '-'},"
        f" time limit {seconds(j['time_limit_seconds'])}",
        f"  submitted {when(j['submit_time'])}  started {when(j['start_time'])}"
        f"  ended {when(j['end_time'])}",
        f"  outcome {j['outcome'] or '(not finished or not reconciled)'}"
        + (f" by {j['cancelled_by']}" if j["cancelled_by"] else "")
        + f"  exit {j['exit_code'] if j['exit_code'] is not None else '-'}"
        + (f" signal {j['signal']}" if j["signal"] else "")
        + f"  elapsed {seconds(j['elapsed_seconds'])}  sacct: {j['reconcile']}",
        f"  memory peak {size(j['mem_peak_bytes'])} (cgroup samples and sacct MaxRSS)",
        *efficiency_lines(j.get("efficiency")),
        "",
        f"  {'NODE':<10}{'SAMPLES':>8}{'CPU s':>10}{'MEM PEAK':>12}{'READ':>12}{'WRITTEN':>12}"
        f"{'NET READ':>12}{'NET WRITTEN':>13}",
    ]
    v = j.get("verdict")
    if v is not None:
        out[-2:-2] = [
            f"  verdict at start: p_fail {v['p_fail']:.2f},"
            f" {'warned' if v['warned'] else 'not warned'}"
            f" (model {v['model_version']})",
            *(f"    {ln}" for ln in v["lines"] if v["warned"]),
        ]
    if j.get("advice"):
        printed = v["lines"] if v is not None and v["warned"] else []
        advised = advice_lines(j["advice"], printed)  # what the warning did not say already
        if advised:
            out[-2:-2] = ["  advised at start:", *("    " + ln for ln in advised)]
    for n in j["nodes"]:
        cpu = "-" if n["cpu_seconds"] is None else f"{n['cpu_seconds']:.1f}"
        out.append(
            f"  {n['node']:<10}{n['samples']:>8}{cpu:>10}{size(n['mem_peak_bytes']):>12}"
            f"{size(n['read_bytes']):>12}{size(n['write_bytes']):>12}"
            f"{size(n.get('network_read_bytes')):>12}{size(n.get('network_write_bytes')):>13}"
        )
    out += gpu_lines(j.get("gpus_used") or [])
    per_node = max(1, j["nodes_requested"] or len(j["nodes"]) or 1)
    eff = j.get("efficiency") or {}
    out += curve_lines(
        j["series"],
        j["cpus"] / per_node if j["cpus"] else None,
        eff.get("mem_request_per_node_bytes"),
    )
    if j["series"]:
        out += ["", f"  {'TIME':<10}{'NODE':<10}{'CPU s':>9}{'MEMORY':>12}{'WRITTEN':>12}"]
        for p in j["series"]:
            cpu = "-" if p["cpu_seconds"] is None else f"{p['cpu_seconds']:.1f}"
            out.append(
                f"  {time.strftime('%H:%M:%S', time.localtime(p['t'])):<10}{p['node']:<10}{cpu:>9}"
                f"{size(p['mem_bytes']):>12}{size(p['write_bytes']):>12}"
            )
    return "\n".join(out)


def efficiency_lines(eff: dict[str, Any] | None) -> list[str]:
    """What share of the CPUs and memory the job asked for it used."""
    if not eff:
        return []
    cpu = (
        f"CPU {percent(eff['cpu_percent'])} ({eff['cpu_seconds']:.1f} CPU s of"
        f" {eff['core_seconds']:.1f} core s)"
        if eff["cpu_percent"] is not None
        else "CPU - (no CPU time or elapsed time yet)"
    )
    mem = (
        f"memory {percent(eff['mem_percent'])} ({size(eff['mem_peak_bytes'])} peak of"
        f" {size(eff['mem_request_per_node_bytes'])} per node)"
        if eff["mem_percent"] is not None
        else "memory - (no memory request or no peak)"
    )
    return [f"  efficiency: {cpu}, {mem}"]


def gpu_lines(gpus: list[dict[str, Any]]) -> list[str]:
    """Per GPU the job's processes ran on: utilisation, memory, power, temperature."""
    if not gpus:
        return []
    out = [
        "",
        f"  {'GPU':<22}{'NODE':<10}{'UTIL mean/max':>14}{'IDLE':>6}{'JOB MEM':>10}"
        f"{'GPU MEM':>10}{'OF':>10}{'POWER mean/max':>16}{'TEMP':>6}",
    ]
    for g in gpus:
        label = f"{g['index'] if g['index'] is not None else '?'} {g['name'] or g['gpu']}"[:21]
        util = f"{percent(g['util_mean_percent'])}/{percent(g['util_max_percent'])}"
        power = (
            "-"
            if g["power_mean_w"] is None
            else f"{g['power_mean_w']:.0f}/{g['power_max_w']:.0f} W"
        )
        idle = "-" if g["idle_share"] is None else f"{100 * g['idle_share']:.0f}%"
        temp = "-" if g["temperature_max_c"] is None else f"{g['temperature_max_c']:.0f}C"
        out.append(
            f"  {label:<22}{g['node']:<10}{util:>14}{idle:>6}{size(g['job_memory_max_bytes']):>10}"
            f"{size(g['memory_used_max_bytes']):>10}{size(g['memory_total_bytes']):>10}"
            f"{power:>16}{temp:>6}"
        )
    return out


BARS = "▁▂▃▄▅▆▇█"


def spark(values: list[float | None], full: float | None = None) -> str:
    """VALUES as a line of bars from 0 to FULL (what the job asked for; the largest value where
    that is smaller or unknown), so that a steady job draws a flat line at its level; a space
    where a value is unknown."""
    known = [v for v in values if v is not None]
    if not known:
        return ""
    top = max(max(known), full or 0)
    return "".join(
        " "
        if v is None
        else BARS[0 if top <= 0 else min(len(BARS) - 1, int(max(0.0, v) / top * len(BARS)))]
        for v in values
    )


def curve_lines(
    series: list[dict[str, Any]], cores: float | None = None, memory: float | None = None
) -> list[str]:
    """Per node, the job's CPU use (cores: CPU seconds between samples over their interval)
    and its memory, as curves over the samples of the series, drawn from 0 to what it asked
    for on a node (CORES, MEMORY)."""
    by: dict[str, list[dict[str, Any]]] = {}
    for p in series:
        by.setdefault(p["node"], []).append(p)
    out = []
    for node, points in by.items():
        if len(points) < 2:
            continue
        used: list[float | None] = []
        for a, b in zip(points, points[1:], strict=False):
            dt = b["t"] - a["t"]
            ok = dt > 0 and a["cpu_seconds"] is not None and b["cpu_seconds"] is not None
            used.append(max(0.0, (b["cpu_seconds"] - a["cpu_seconds"]) / dt) if ok else None)
        mem = [p["mem_bytes"] for p in points]
        top_cores = max((c for c in used if c is not None), default=None)
        top_mem = max((m for m in mem if m is not None), default=None)
        span = seconds(points[-1]["t"] - points[0]["t"])
        if not out:
            out.append("")
        out.append(
            f"  {node:<10}CPU {spark(used, cores):<20} up to "
            + ("-" if top_cores is None else f"{top_cores:.2f} cores")
            + (f" of {cores:g}" if cores else "")
            + f" (over {span})"
        )
        out.append(
            f"  {'':<10}MEM {spark(mem, memory):<20} up to {size(top_mem)}"
            + (f" of {size(memory)}" if memory else "")
        )
    return out


def render_check(answer: dict[str, Any]) -> str:
    v = answer.get("verdict")
    if v is None:
        out = ["NØMADE: no model is active yet, so this job cannot be scored (nomadectl train)."]
    elif v["warned"]:
        out = [ln for ln in v["lines"] if not ln.startswith("NØMADE: Details:")]
    else:
        out = [
            f"NØMADE: low risk ({v['p_fail']:.2f}) that this job fails"
            f" (model {v['model_version']})."
        ]
    return "\n".join(out + advice_lines(answer.get("advice"), out))


def advice_lines(advice: dict[str, Any] | None, shown: Sequence[str] = ()) -> list[str]:
    """Right-sizing advice, each resource once: its text, or why there is none."""
    if not advice:
        return []
    out = []
    for resource, what in (("mem", "--mem"), ("time", "--time")):
        a = advice.get(resource)
        if a is None:
            out.append(
                f"NØMADE: no {what} advice: too few of your jobs like this one ran to the end."
            )
        elif a["text"] not in shown:
            out.append(a["text"])
    return out
