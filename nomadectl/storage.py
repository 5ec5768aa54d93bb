"""`nomadectl quotas`, `scratch` and `nfs`: what the node agents read of the filesystems, and
their text views.  Root reads the store; everyone else asks the aggregator's API, which shows a
user their own quotas and scratch files only (aggregator/views/policy.py)."""

from __future__ import annotations

from typing import Any

import click

from aggregator.views import clusterviews, nfsrates

from . import base
from .base import main
from .cluster import view
from .fmt import seconds, size, when


@main.command("quotas")
@click.option("--user", default=None, help="this user's quotas only (users see only their own)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def quotas_cmd(ctx: click.Context, user: str | None, as_json: bool) -> None:
    """Quotas per user, group and filesystem, closest to its limit first."""
    v = view(ctx, "/api/v1/quotas", {"user": user}, lambda c: clusterviews.quotas(c, user))
    base.emit(v, as_json, render_quotas)


@main.command("scratch")
@click.option("--user", default=None, help="this user's files only (users see only their own)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def scratch_cmd(ctx: click.Context, user: str | None, as_json: bool) -> None:
    """Scratch hygiene per node and path: large, stale and orphaned files per user."""
    v = view(ctx, "/api/v1/scratch", {"user": user}, lambda c: clusterviews.scratch(c, user))
    base.emit(v, as_json, render_scratch)


@main.command("nfs")
@click.option("--node", default=None, help="this node only; with it, every interval is shown")
@click.option(
    "--hours",
    type=click.FloatRange(0.01, nfsrates.MAX_HOURS),
    default=nfsrates.HOURS,
    show_default=True,
    help="rates over this many hours of kept readings",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def nfs_cmd(ctx: click.Context, node: str | None, hours: float, as_json: bool) -> None:
    """NFS per node and mount: operations, throughput, round trip and retransmissions per
    second, between the readings the aggregator keeps."""
    v = view(
        ctx,
        "/api/v1/nfs",
        {"node": node, "hours": hours if hours != nfsrates.HOURS else None},
        lambda c: nfsrates.nfs(c, hours=hours, node=node),
    )
    base.emit(v, as_json, lambda x: render_nfs(x, bool(node)))


# --- the text views ----------------------------------------------------------------------------


def _fraction(f: float | None) -> str:
    return "-" if f is None else f"{f * 100:.0f}%"


def _grace(q: dict[str, Any], kind: str) -> str:
    expires = q.get(f"{kind}_grace_expires_epoch")
    if expires:
        return f"until {when(expires)}"
    left = q.get(f"{kind}_grace_seconds")
    return "" if left is None else ("grace over" if left == 0 else f"{seconds(left)} left")


def render_quotas(v: dict[str, Any]) -> str:
    rows = v["quotas"]
    if not rows:
        return (
            "no quotas to show: none read (configure [collectors.disk] quota_filesystems),"
            " or none of yours"
        )
    out = [
        f"  {'KIND':<6}{'NAME':<12}{'FILESYSTEM':<20}{'USED':>10}{'SOFT':>10}{'HARD':>10}"
        f"{'FILES':>8}{'SOFT':>7}{'HARD':>7}  {'NEAREST':<8}GRACE"
    ]
    for q in rows:
        name = q.get("name") or f"#{q.get('id')}"
        fs = q.get("mountpoint") or q.get("filesystem") or "-"
        over = "  OVER SOFT" if q.get("over_soft") else ""
        grace = " ".join(g for g in (_grace(q, "block"), _grace(q, "files")) if g)
        out.append(
            f"  {q.get('kind') or '-':<6}{name:<12}{fs:<20}{size(q.get('used_bytes')):>10}"
            f"{size(q.get('soft_limit_bytes')):>10}{size(q.get('hard_limit_bytes')):>10}"
            f"{_count(q.get('files_used')):>8}{_count(q.get('files_soft')):>7}"
            f"{_count(q.get('files_hard')):>7}  {_fraction(q.get('fraction')):<8}{grace}{over}"
        )
    return "\n".join(out)


def _count(n: int | None) -> str:
    return "-" if n is None else str(n)


def render_scratch(v: dict[str, Any]) -> str:
    if not (v["filesystems"] or v["owners"]):
        return "no scratch readings (enable [collectors.scratch] and set its paths)"
    out = []
    for f in v["filesystems"]:
        cut = f"; walk stopped by {f['truncated_by']}" if f.get("truncated") else ""
        out.append(
            f"{f['node']}:{f['root']} scanned {when(f['t'])}: {f['files']} files,"
            f" {size(f['bytes'])}; {f['large_files']} large, {f['stale_files']} stale,"
            f" {f['orphaned_files']} of users with no job there{cut}"
        )
    if v["owners"]:
        out += [
            "",
            f"  {'NODE':<12}{'PATH':<20} {'USER':<12}{'FILES':>8}{'SIZE':>11}{'LARGE':>7}"
            f"{'STALE':>7}{'STALE SIZE':>12}  JOB THERE",
        ]
        for o in v["owners"]:
            user = o.get("user") or f"uid {o.get('uid')}"
            job = "-" if o.get("orphaned") is None else ("no" if o["orphaned"] else "yes")
            out.append(
                f"  {o['node']:<12}{o['root'] or '-':<20} {user:<12}{_count(o.get('files')):>8}"
                f"{size(o.get('bytes')):>11}{_count(o.get('large_files')):>7}"
                f"{_count(o.get('stale_files')):>7}{size(o.get('stale_bytes')):>12}  {job}"
            )
    if v["files"]:
        out += ["", "Flagged files, largest first:"]
        for f in v["files"][:50]:
            flags = ",".join(k for k in ("large", "stale", "orphaned") if f.get(k))
            user = f.get("user") or f"uid {f.get('uid')}"
            out.append(
                f"  {size(f['size_bytes']):>10}  {user:<12} {flags:<22} {f['node']}:{f['path']}"
            )
    if v["leftover_dirs"]:
        out += ["", "Job directories left behind:"]
        for d in v["leftover_dirs"]:
            user = d.get("user") or f"uid {d.get('uid')}"
            out.append(f"  {d['node']}:{d['path']}  job {d['job_id']}  {user}")
    return "\n".join(out)


def _rate(r: dict[str, Any] | None, key: str, unit: str = "") -> str:
    value = None if r is None else r.get(key)
    if value is None:
        return "-"
    return f"{size(value)}/s" if unit == "bytes" else f"{value:g}"


def _interval_line(r: dict[str, Any] | None) -> str:
    if r is None:
        return "(one reading: no rate yet)"
    reset = "  remounted or rebooted" if r.get("reset") else ""
    return (
        f"{_rate(r, 'ops_per_s'):>9}{_rate(r, 'read_bytes_per_s', 'bytes'):>13}"
        f"{_rate(r, 'write_bytes_per_s', 'bytes'):>13}{_rate(r, 'rtt_ms'):>9}"
        f"{_rate(r, 'retrans_per_s'):>11}  {seconds(r['seconds'])}{reset}"
    )


def render_nfs(v: dict[str, Any], series: bool = False) -> str:
    if not v["mounts"]:
        return f"no NFS readings in the last {v['hours']:g} h"
    out = [
        f"NFS per mount over the last {v['hours']:g} h: the newest interval between kept readings",
        f"  {'NODE':<12}{'MOUNT':<24}{'OPS/s':>9}{'READ':>13}{'WRITE':>13}{'RTT ms':>9}"
        f"{'RETRANS/s':>11}  INTERVAL",
    ]
    for m in v["mounts"]:
        out.append(f"  {m['node']:<12}{m['mount_point']:<24}{_interval_line(m['latest'])}")
        if series:
            for r in m["intervals"]:
                out.append(f"    {when(r['t1']):<32}{_interval_line(r)}")
    return "\n".join(out)
