"""`nomadectl keys`: which nodes' agents may send to the aggregator (CurveZMQ keys).

A site enrols its nodes from the lines `nomade-agent --make-key` prints on each of them, one node
at a time or a whole cluster's collected output at once (`pdsh -w node[1-1000] nomade-agent
--make-key | nomadectl keys add --file -`), in one transaction: one bad line and nothing is
enrolled.  The running aggregator sees a change within a second; a revoked key's connections
are dropped at once.  Every change is root's alone and recorded in `admin_log` with the uid.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from aggregator import store
from nomade_common import keys
from nomade_common.config import Security

MAX_PROBLEMS_SHOWN = 20


class KeysError(Exception):
    """What a key command refuses, in one line (or one line per refused input line)."""


def require_root(command: str) -> None:
    if os.geteuid() != 0:
        raise KeysError(
            f"nomadectl {command}: only root may manage agent keys (they decide which "
            f"nodes may send data to the aggregator)"
        )


def service_owner(database: str) -> int | None:
    """Who the aggregator runs as, to own the server's secret key: the owner of the database's
    directory (the SlurmUser under slurm-conf/systemd; root where root runs it)."""
    try:
        uid = Path(database).parent.stat().st_uid
    except OSError:
        return None
    return uid if uid != os.geteuid() and os.geteuid() == 0 else None


def ensure_server_pair(sec: Security, owner: int | None = None) -> tuple[str, bool]:
    """The aggregator's key pair in keys_dir, made if missing (the secret owned by OWNER, the
    aggregator's service user): (public key path, made now)."""
    if Path(sec.server_secret()).exists():
        return sec.server_public(), False
    keys.make_pair(sec.keys_dir, "server", owner=owner)
    return sec.server_public(), True


def parse(text: str, source: str) -> list[tuple[int, str, str]]:
    """(line number, node, key) from enrolment lines; KeysError naming a bad line."""
    try:
        pairs = keys.parse_enrolment(text, source)
    except ValueError as exc:
        raise KeysError(str(exc)) from None
    numbers = [
        n
        for n, line in enumerate(text.splitlines(), 1)
        if line.split() and not line.split()[0].startswith("#")
    ]
    return [(n, node, key) for n, (node, key) in zip(numbers, pairs, strict=True)]


def _duplicates(lines: list[tuple[int, str, str]], source: str) -> list[str]:
    problems: list[str] = []
    nodes: dict[str, str] = {}
    owners: dict[str, str] = {}
    for n, node, key in lines:
        if nodes.setdefault(node, key) != key:
            problems.append(f"{source}:{n}: {node} appears again with another key")
        if owners.setdefault(key, node) != node:
            problems.append(f"{source}:{n}: {node} has the same key as {owners[key]}")
    return problems


def _verdict(
    row: dict[str, Any] | None, owner: str | None, node: str, key: str, replace: bool
) -> str:
    """What enrolling KEY for NODE does: add, replace, keep, or why not ("!...")."""
    if owner is not None and owner != node:
        return f"!this key is already enrolled for {owner}"
    if row is None:
        return "add"
    if row["public_key"] == key:
        return (
            "keep"
            if row["revoked"] is None
            else "!this key was revoked: make a new pair "
            f"on the node (nomade-agent --make-key --force --node {node})"
        )
    if row["revoked"] is None and not replace:
        return "!enrolled with another key (give --replace to change it)"
    return "replace"


def add(
    conn: Any, lines: list[tuple[int, str, str]], source: str, replace: bool = False
) -> dict[str, int]:
    """Enrol LINES in one transaction; KeysError listing every refused line, nothing written."""
    problems = _duplicates(lines, source)
    counts = {"add": 0, "replace": 0, "keep": 0}
    now, user = time.time(), store.whoami()[1]
    with store.transaction(conn):
        rows = {r["node"]: r for r in store.agent_keys(conn)}
        owners = {r["public_key"]: r["node"] for r in rows.values()}
        for n, node, key in lines:
            what = _verdict(rows.get(node), owners.get(key), node, key, replace)
            if what.startswith("!"):
                problems.append(f"{source}:{n}: {node}: {what[1:]}")
                continue
            counts[what] += 1
            if what != "keep":
                store.enrol_key(conn, node, key, now, user)
        if problems:
            raise KeysError(_refused(problems))
        changed = [node for _, node, _ in lines][:20]
        store.audit(
            conn,
            "keys add",
            f"{counts['add']} added, {counts['replace']} replaced, "
            f"{counts['keep']} unchanged from {source}: {' '.join(changed)}",
        )
    return counts


def _refused(problems: list[str]) -> str:
    shown = problems[:MAX_PROBLEMS_SHOWN]
    more = len(problems) - len(shown)
    tail = [f"... and {more} more"] if more else []
    return "\n".join([f"nothing enrolled: {len(problems)} line(s) refused", *shown, *tail])


def revoke(conn: Any, node: str) -> None:
    with store.transaction(conn):
        row = store.agent_key(conn, node)
        if row is None:
            raise KeysError(f"{node} has no enrolled key (nomadectl keys list)")
        if row["revoked"] is not None:
            raise KeysError(f"{node}'s key is already revoked")
        store.revoke_key(conn, node, time.time(), store.whoami()[1])
        store.audit(conn, "keys revoke", node)


def listing(conn: Any) -> list[dict[str, Any]]:
    return store.key_listing(conn)


def rotate_server(conn: Any, sec: Security, owner: int | None = None) -> str:
    """A new server pair; the old one kept as server.key.previous (and .key_secret.previous).
    Returns the new public key."""
    d = Path(sec.keys_dir)
    for name in ("server.key", "server.key_secret"):
        if (d / name).exists():
            shutil.copy2(d / name, d / f"{name}.previous")  # keeps the secret's 0600
    with store.transaction(conn):
        public = keys.make_pair(sec.keys_dir, "server", owner=owner)
        store.audit(conn, "keys rotate-server", public)
    return public
