"""The enrolled agent keys (`agent_keys`) and how each node was last heard (`agent_links`):
what `nomadectl keys` changes and the aggregator's ZAP handler
(aggregator/daemon/agentauth.py) reads.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from typing import Any

LINK_COLUMNS = ("curve_seen", "plain_seen")


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction on CONN (a connection of its own, not the writer's): committed
    when the block ends, rolled back when it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def agent_keys(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every enrolled key, revoked ones too: node, public_key, added, added_by, revoked,
    revoked_by."""
    return [dict(r) for r in conn.execute("SELECT * FROM agent_keys")]


def agent_key(conn: sqlite3.Connection, node: str) -> dict[str, Any] | None:
    """NODE's enrolled key (as agent_keys gives it), None when it has none."""
    row = conn.execute("SELECT * FROM agent_keys WHERE node = ?", (node,)).fetchone()
    return None if row is None else dict(row)


def enrol_key(conn: sqlite3.Connection, node: str, key: str, now: float, user: str) -> None:
    """KEY becomes NODE's (a revoked or other key it had is replaced), enrolled by USER."""
    conn.execute(
        "INSERT INTO agent_keys (node, public_key, added, added_by) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (node) DO UPDATE SET public_key = excluded.public_key, added ="
        " excluded.added, added_by = excluded.added_by, revoked = NULL, revoked_by = NULL",
        (node, key, now, user),
    )


def revoke_key(conn: sqlite3.Connection, node: str, now: float, user: str) -> None:
    conn.execute(
        "UPDATE agent_keys SET revoked = ?, revoked_by = ? WHERE node = ?", (now, user, node)
    )


def key_listing(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """`nomadectl keys list`: every enrolled key by node, with when it was last seen over CURVE
    (last_seen_curve)."""
    rows = conn.execute(
        "SELECT k.node, k.public_key, k.added, k.added_by, k.revoked, k.revoked_by,"
        " l.curve_seen AS last_seen_curve FROM agent_keys k"
        " LEFT JOIN agent_links l ON l.node = k.node ORDER BY k.node"
    )
    return [dict(r) for r in rows]


def curve_seen_nodes(conn: sqlite3.Connection) -> list[str]:
    """Nodes that have ever been heard over CURVE."""
    return [r[0] for r in conn.execute("SELECT node FROM agent_links WHERE curve_seen IS NOT NULL")]


def note_agent_link(conn: sqlite3.Connection, node: str, column: str, now: float) -> None:
    """NODE was heard at NOW over CURVE (COLUMN "curve_seen") or plain ZeroMQ ("plain_seen")."""
    if column not in LINK_COLUMNS:
        raise ValueError(f"agent link column must be one of {LINK_COLUMNS}, not {column!r}")
    conn.execute(
        f"INSERT INTO agent_links (node, {column}) VALUES (?, ?)"
        f" ON CONFLICT (node) DO UPDATE SET {column} = excluded.{column}",
        (node, now),
    )
