"""`nomadectl disk PATH`: a filesystem's usage, fill rate, acceleration, trend class and when it
is full (docs/trends.md), and its text view.  Root reads the store; everyone else asks the
aggregator's API (/api/v1/disk)."""

from __future__ import annotations

from typing import Any

import click

from aggregator.views import trendviews

from . import base
from .base import main
from .cluster import view
from .fmt import seconds, size, when


@main.command("disk")
@click.argument("path")
@click.option(
    "--hours",
    type=click.FloatRange(0.01, trendviews.MAX_HOURS),
    default=trendviews.HOURS,
    show_default=True,
    help="fit the readings of this many hours",
)
@click.option("--node", default=None, help="this node's readings only (a node-local path)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def disk_cmd(ctx: click.Context, path: str, hours: float, node: str | None, as_json: bool) -> None:
    """A filesystem's usage, fill rate, acceleration, trend and projected time to full."""
    try:
        path = trendviews.check_path(path)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="PATH") from None
    v = view(
        ctx,
        "/api/v1/disk",
        {"path": path, "hours": hours, "node": node},
        lambda c: trendviews.disk(c, path, hours=hours, node=node),
    )
    base.emit(v, as_json, render_disk)


# --- the text view -----------------------------------------------------------------------------


def _signed(value: float | None, unit: str, se: float | None) -> str:
    if value is None:
        return "- (too few readings)"
    sign = "+" if value >= 0 else "-"
    spread = "" if se is None else f" (± {size(se)})"
    return f"{sign}{size(abs(value))}/{unit}{spread}"


def _full(p: dict[str, Any] | None) -> str:
    if not p or p.get("at") is None:
        return "not within 10 years at this rate"
    out = f"in {seconds(max(0.0, p['in_seconds']))} ({when(p['at'])})"
    if p.get("band"):
        early = p.get("earliest_in_seconds")
        late = p.get("latest_in_seconds")
        late_text = "maybe never" if late is None else seconds(max(0.0, late))
        early_text = "-" if early is None else seconds(max(0.0, early))
        out += f", band {early_text} to {late_text}"
    return out


def render_disk(v: dict[str, Any]) -> str:
    where = v["path"] + (f" on {v['node']}" if v.get("node") else "")
    if not v["readings"]:
        known = ", ".join(v.get("known_paths") or []) or "none"
        return (
            f"no readings of {where} in the last {v['hours']:g} h (filesystems read: {known};"
            " [collectors.disk] filesystems sets them)"
        )
    used = v["used_bytes"]
    fraction = "" if v["used_fraction"] is None else f" ({v['used_fraction'] * 100:.1f}%)"
    nodes = len(v["nodes"])
    seen = f", read by {nodes} node{'s' if nodes != 1 else ''}" if nodes else ""
    full = v.get("full") or {}
    lines = [
        f"{where} over the last {v['hours']:g} h: {v['readings']} readings{seen},"
        f" newest {when(v['time'])}",
        f"  used          {size(used)} of {size(v['limit_bytes'])} usable{fraction}",
        "  fill rate     "
        + _signed(v["fill_rate_bytes_per_hour"], "hour", v["fill_rate_se_bytes_per_hour"]),
        "  acceleration  "
        + _signed(v["acceleration_bytes_per_hour2"], "hour²", v["acceleration_se_bytes_per_hour2"]),
        f"  trend         {v['class'] or '- (too few readings)'}",
        f"  full, linear     {_full(full.get('linear'))}",
        f"  full, quadratic  {_full(full.get('quadratic'))}",
    ]
    return "\n".join(lines)
