"""`nomadectl init|start|stop|status`: the store and keys made, the daemons started and stopped
where there is no systemd, and how the whole system fares (with `status`'s text view)."""

from __future__ import annotations

import time
from typing import Any

import click

from aggregator import store
from aggregator.admin import daemons
from aggregator.views import clusterviews, query
from nomade_common.text import printable

from . import base
from .base import main
from .cluster import license_lines, node_lines, queue_lines
from .fmt import pct, seconds, size, when


@main.command()
@click.pass_context
def init(ctx: click.Context) -> None:
    """Create the data directory, the database (applies pending migrations) and the
    aggregator's key pair in security.keys_dir (made with CURVE off too: turning CURVE on in a
    running cluster starts by copying server.key to the nodes)."""
    cfg = base.config(ctx)
    conn = store.open_store(cfg.database)
    click.echo(f"database {cfg.database}: schema version {store.schema_version(conn)}")
    conn.close()
    from aggregator.admin import keyscmd

    try:
        owner = keyscmd.service_owner(cfg.database)
        path, made = keyscmd.ensure_server_pair(cfg.security, owner)
    except OSError as exc:
        raise click.ClickException(
            f"cannot make the server key in {cfg.security.keys_dir}: {exc}"
        ) from None
    click.echo(
        f"server key {path}{' (new)' if made else ''}: copy it to every node's "
        f"{cfg.security.keys_dir}"
    )


@main.command()
@click.option("--nodes", default=None, help="agents to start, by Slurm node name (comma-separated)")
@click.option("--only", type=click.Choice(["all", "aggregator", "agents"]), default="all")
@click.pass_context
def start(ctx: click.Context, nodes: str | None, only: str) -> None:
    """Start the aggregator and agents in the background (where there is no systemd)."""
    cfg = base.config(ctx)
    names = nodes.split(",") if nodes else [cfg.agent.node_name()]
    try:
        started = daemons.start(cfg, names, only)
    except (RuntimeError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("\n".join(f"started {s}" for s in started) or "already running")


@main.command()
@click.option("--only", type=click.Choice(["all", "aggregator", "agents"]), default="all")
@click.pass_context
def stop(ctx: click.Context, only: str) -> None:
    """Stop what `nomadectl start` started."""
    stopped = daemons.stop(base.config(ctx), only)
    click.echo("\n".join(f"stopped {s}" for s in stopped) or "nothing was running")


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Filesystems, queue, I/O, CPU, memory, nodes, licenses, agents, running jobs, ingest and
    each collector's runs and success rate."""
    cfg = base.config(ctx)
    found = base.view(
        ctx, "/api/v1/status", lambda c: {**query.status(c), **clusterviews.overview(c)}
    )
    if "aggregator" not in found:  # read from the store: the running daemon says how it fares
        from aggregator.admin import apiclient

        try:
            found["aggregator"] = apiclient.call(
                cfg.hooks.aggregator_url,
                "GET",
                "/api/v1/aggregator",
                ca=cfg.security.tls_ca,
                munge_socket=cfg.security.munge_socket,
                timeout=3.0,
            )
        except apiclient.ApiError as exc:
            found["aggregator"] = {"answering": False, "why": str(exc)}
    base.emit(found, as_json, render_status)


# --- `nomadectl status` as text; `--json` prints the view itself -----------------------------


def render_status(st: dict[str, Any]) -> str:
    """`nomadectl status`: the collectors' views, then the agents, running jobs and ingest."""
    return "\n".join(
        [
            "═══ NØMADE Status ═══",
            "",
            *store_line(st.get("aggregator")),
            *status_sections(st),
            "",
            *agent_sections(st),
            *agent_security(st),
        ]
    )


def store_line(agg: dict[str, Any] | None) -> list[str]:
    """The running aggregator and its store, first in `nomadectl status`: a store that takes no
    writes must not go unnoticed."""
    if agg is None:
        return []
    if not agg.get("answering"):
        return [f"Aggregator: NOT ANSWERING ({agg.get('why', '?')})", ""]
    db = agg.get("store") or {}
    if db.get("ok"):
        line = f"Store: taking writes ({db.get('backlog', 0)} waiting"
        failed = db.get("failed_batches")
        return [line + (f"; {failed} failed writes since start, retried)" if failed else ")"), ""]
    since = db.get("failing_since")
    for_ = f" for {seconds(time.time() - since)}" if since else ""
    return [
        f"Store: FAILING since {when(since)}{for_} ({db.get('reason', '?')}); "
        f"{db.get('failed_batches', 0)} failed writes, {db.get('backlog', 0)} waiting, "
        f"nothing of it acknowledged" + ("; gave up, restarting" if db.get("gave_up") else ""),
        "",
    ]


def bar(fraction: float | None, width: int = 20) -> str:
    if fraction is None:
        return "[" + "?" * width + "]"
    full = max(0, min(width, round(fraction * width)))
    return "[" + "█" * full + "░" * (width - full) + "]"


def filesystems(rows: list[dict[str, Any]]) -> list[str]:
    out = ["Filesystems:"]
    for fs in rows:
        if fs.get("responsive") is False:
            out.append(f"  {fs['path']:<20} NOT RESPONDING (seen from {fs['node']})")
            continue
        out.append(
            f"  {fs['path']:<20} {bar(fs.get('used_fraction'))}"
            f" {pct((fs.get('used_fraction') or 0) * 100)}"
            f" ({size(fs.get('used_bytes'))}/{size(fs.get('size_bytes'))})"
        )
    return out if rows else ["Filesystems: (no disk readings yet)"]


def node_metrics(metrics: dict[str, dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for node, m in sorted(metrics.items()):
        out.append(f"{node}:")
        io = m.get("io")
        if io and io.get("cpu"):
            c = io["cpu"]
            out.append(
                f"  CPU iowait: {pct(c.get('iowait_percent'))}"
                f"   user/sys: {pct(c.get('user_percent'))}"
                f" / {pct(c.get('system_percent'))}"
            )
        for d in (io or {}).get("devices", [])[:8]:
            await_ms = d.get("await_ms") if d.get("await_ms") is not None else d.get("w_await_ms")
            out.append(
                f"  {d['device']:<12} util: {pct(d.get('util_percent'))}"
                f"  write: {size(d.get('write_bytes_per_s'))}/s"
                f"  latency: {'-' if await_ms is None else f'{await_ms:.1f} ms'}"
            )
        cpu = m.get("cpu")
        if cpu and cpu.get("cores"):
            out.append(
                f"  Cores: {cpu['cores']}  avg busy {pct(cpu.get('busy_mean_percent'))}  range"
                f" {pct(cpu.get('busy_min_percent'))} - {pct(cpu.get('busy_max_percent'))}"
                f"  imbalance {cpu.get('imbalance')} (std/avg)"
                f"  saturated {cpu.get('saturated_cores')} (>95%)"
            )
        mem = m.get("memory")
        if mem:
            out.append(
                f"  Memory free: {size(mem.get('mem_free_bytes'))}"
                f"  cache: {size(mem.get('mem_cache_bytes'))}"
                f"  swap used: {size(mem.get('swap_used_bytes'))}"
                f"  swap in/out: {mem.get('swap_in_bytes_per_s', '-')}"
                f"/{mem.get('swap_out_bytes_per_s', '-')} B/s"
                f"  blocked: {mem.get('blocked_procs', '-')}"
                f"  PSI memory: {pct(mem.get('pressure_some_avg60_percent'))}"
            )
    return (["Node I/O, CPU and memory:"] + ["  " + line for line in out]) if out else []


def collection_lines(rows: list[dict[str, Any]]) -> list[str]:
    out = ["Collection:"]
    for c in rows:
        if c["runs"] == 0 and c["skipped"]:
            out.append(f"  {c['collector']:<13} skipped: {c['skipped']}")
            continue
        rate = "-" if c["success_rate"] is None else f"{c['success_rate'] * 100:.0f}%"
        line = (
            f"  {c['collector']:<13} {c['runs']:>6} runs  {rate:>4} success"
            f"  on {c['nodes']} {'host' if c['nodes'] == 1 else 'hosts'}"
        )
        if c["skipped_on"]:
            line += f" (skipped on {c['skipped_on']}: {c['skipped']})"
        out.append(line)
        if c["last_error"]:
            out.append(f"    └─ last error: {c['last_error']}")
    return out if rows else ["Collection: (no collector has reported yet)"]


def status_sections(st: dict[str, Any]) -> list[str]:
    queue = queue_lines(st["queue"])
    if st.get("queue_time") and st["queue"]:
        queue[0] = f"Queue (squeue at {when(st['queue_time'])}):"
    out = [*filesystems(st["filesystems"]), "", *queue, ""]
    metrics = node_metrics(st["node_metrics"])
    if metrics:
        out += [*metrics, ""]
    if st["slurm_nodes"]:
        out += ["Slurm nodes:", *node_lines(st["slurm_nodes"]), ""]
    if st["licenses"]["servers"] or st["licenses"]["features"]:
        out += ["Licenses:", *license_lines(st["licenses"]), ""]
    return [*out, *collection_lines(st["collection"])]


def agent_sections(st: dict[str, Any]) -> list[str]:
    """`nomadectl status`'s agents, running jobs and ingest (after the collectors' views)."""
    out = ["Agents:"]
    for n in st["nodes"] or [{"node": "(no agent has reported yet)"}]:
        if "state" not in n:
            out.append(f"  {n['node']}")
            continue
        out.append(
            f"  {n['node']:<14} {n['state'].upper():<5}"
            f" last heard {n['seconds_since_seen']:>6.1f} s ago"
            f"  jobs: {n['running_jobs'] if n['running_jobs'] is not None else '-'}"
            f"  outbox: {n['outbox_depth'] if n['outbox_depth'] is not None else '-'}"
        )
        if n.get("agent_nacked"):
            out.append(
                f"    {n['agent_nacked']} envelopes refused by the aggregator"
                " and dropped by the agent"
            )
        if n.get("samples_refused"):
            out.append(
                f"    {n['samples_refused']} samples refused: {n.get('samples_refused_why') or '?'}"
                " (is the node's clock right?)"
            )
    out += ["", f"Running jobs: {len(st['running_jobs'])}"]
    for j in st["running_jobs"][:20]:
        out.append(
            f"  {j['job_id']:<8} {j['user'] or '-':<10} {j['partition'] or '-':<8}"
            f" {j['node_list'] or '-'}"
        )
    ing = st["ingest"]
    out += [
        "",
        "Ingest:",
        f"  {ing['samples_per_second']} samples/s over the last minute"
        f" ({ing['envelopes_last_minute']} envelopes)",
        f"  jobs stored: {st['jobs_total']}, unreconciled: {st['unreconciled_jobs']}",
    ]
    rejected = st["counters"].get("messages_rejected")
    if rejected:
        out.append(f"  rejected messages: {rejected}")
    return out


def _terminal(text: str) -> str:
    """A node name or peer from a refused message (the sender's) for the terminal."""
    return printable(text, 160, "?")


def agent_security(st: dict[str, Any]) -> list[str]:
    """Refused agents (by reason, and the last one) and, in rollout, the nodes still on plain."""
    out = []
    refused = st.get("agents_refused") or {}
    if refused.get("total"):
        reasons = ", ".join(
            f"{k.replace('_', ' ')} {v}"
            for k, v in sorted(refused["by_reason"].items(), key=lambda kv: -kv[1])
        )
        last = ""
        if refused.get("last_time") is not None:
            clock = time.strftime("%H:%M:%S", time.localtime(refused["last_time"]))
            last = f"; last {clock} from {_terminal(refused.get('last_peer') or '?')}"
        out.append(f"  agents refused: {refused['total']} ({reasons}{last})")
    plain = st.get("agents_on_plain") or []
    if plain:
        names = ", ".join(_terminal(n) for n in plain[:10]) + (", ..." if len(plain) > 10 else "")
        out.append(f"  agents still on plain ZeroMQ (not moved to CURVE): {len(plain)} ({names})")
    return out
