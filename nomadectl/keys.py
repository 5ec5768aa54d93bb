"""`nomadectl keys add|list|revoke|rotate-server` and `nomadectl audit`: which nodes' agents may
send to the aggregator, and what administrators did (root only; the work is
aggregator/admin/keyscmd.py's).  With their text views; `--json` prints the rows themselves."""

from __future__ import annotations

import os
import time
from typing import Any

import click

from aggregator import store

from . import base
from .base import main
from .fmt import when


@main.command("audit")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def audit_cmd(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Administrators' actions (keys, model activation) with the uid that made them (root)."""
    if os.geteuid() != 0:
        raise click.ClickException("nomadectl audit: only root reads the administrators' log")
    rows = store.admin_log(base.reader(base.config(ctx)), limit)
    base.emit(rows, as_json, render_admin_log)


@main.group("keys")
def keys_group() -> None:
    """Which nodes' agents may send to the aggregator: their CurveZMQ keys (root only)."""


def _keys(ctx: click.Context, command: str):
    """(keyscmd, config, write connection) for a key command run by root."""
    from aggregator.admin import keyscmd

    try:
        keyscmd.require_root(command)
    except keyscmd.KeysError as exc:
        raise click.ClickException(str(exc)) from None
    cfg = base.config(ctx.find_root())
    return keyscmd, cfg, base.writer(cfg)


# A Z85 key may begin with '-': taken as the KEY argument, not as an unknown option.
@keys_group.command("add", context_settings={"ignore_unknown_options": True})
@click.argument("node", required=False)
@click.argument("key", required=False)
@click.option(
    "--file",
    "path",
    type=click.Path(allow_dash=True),
    help="lines `NODE PUBLIC_KEY` as nomade-agent --make-key prints them ('-': stdin)",
)
@click.option("--replace", is_flag=True, help="change the key of a node enrolled with another")
@click.pass_context
def keys_add(ctx, node, key, path, replace) -> None:
    """Enrol NODE's KEY, or every line of --file in one transaction."""
    if (path is None) == (node is None) or (node is not None and key is None):
        raise click.UsageError("give NODE KEY, or --file FILE (or - for stdin)")
    keyscmd, _cfg, conn = _keys(ctx, "keys add")
    try:
        text = f"{node} {key}\n" if path is None else click.open_file(path, encoding="utf-8").read()
        source = "arguments" if path is None else path
        counts = keyscmd.add(conn, keyscmd.parse(text, source), source, replace)
    except (keyscmd.KeysError, OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"{counts['add']} enrolled, {counts['replace']} replaced, {counts['keep']} already enrolled"
        " (the aggregator accepts them within a second)"
    )


@keys_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def keys_list(ctx, as_json) -> None:
    """Enrolled nodes: key, added when and by whom, last seen over CURVE, revoked."""
    keyscmd, _cfg, conn = _keys(ctx, "keys list")
    base.emit(keyscmd.listing(conn), as_json, render_keys)


@keys_group.command("revoke")
@click.argument("node")
@click.pass_context
def keys_revoke(ctx, node) -> None:
    """Revoke NODE's key: its connections are dropped within a second."""
    keyscmd, _cfg, conn = _keys(ctx, "keys revoke")
    try:
        keyscmd.revoke(conn, node)
    except keyscmd.KeysError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{node}: key revoked; the aggregator drops its connection within a second")


@keys_group.command("rotate-server")
@click.pass_context
def keys_rotate_server(ctx) -> None:
    """A new aggregator key pair (the old one kept as server.key.previous)."""
    keyscmd, cfg, conn = _keys(ctx, "keys rotate-server")
    try:
        public = keyscmd.rotate_server(conn, cfg.security, keyscmd.service_owner(cfg.database))
    except OSError as exc:
        raise click.ClickException(f"cannot make the new server key: {exc}") from None
    sec = cfg.security
    click.echo(
        f"new server key {public}; the old one is {sec.server_public()}.previous\n"
        f"copy {sec.server_public()} to the same path on every node: each agent "
        "reconnects with it by itself and keeps its data until then; the aggregator uses "
        "the new key within a second"
    )


# --- the text views ----------------------------------------------------------------------------


def _minute(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def render_keys(rows: list[dict[str, Any]]) -> str:
    """`nomadectl keys list`, for a terminal."""
    if not rows:
        return "no agent keys enrolled (nomadectl keys add)"
    out = [f"{'NODE':<16}{'PUBLIC KEY':<42}{'ADDED':<18}{'BY':<10}{'LAST SEEN (CURVE)':<19}REVOKED"]
    for r in rows:
        revoked = "-" if r["revoked"] is None else f"{_minute(r['revoked'])} by {r['revoked_by']}"
        out.append(
            f"{r['node']:<16}{r['public_key']:<42}{_minute(r['added']):<18}{r['added_by']:<10}"
            f"{_minute(r['last_seen_curve']):<19}{revoked}"
        )
    return "\n".join(out)


def render_admin_log(rows: list[dict[str, Any]]) -> str:
    """`nomadectl audit`: who did what, newest first."""
    if not rows:
        return "no administrators' actions recorded"
    out = [f"{'WHEN':<20}{'WHO':<14}{'ACTION':<22}DETAIL"]
    for r in rows:
        who = f"{r['user']} ({r['uid']})"
        out.append(f"{when(r['t']):<20}{who:<14}{r['action']:<22}{r['detail'] or ''}")
    return "\n".join(out)
