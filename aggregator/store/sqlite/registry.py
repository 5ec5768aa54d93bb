"""The model registry: every trained model's version, training window, metrics and file hash,
and which one scores jobs.  Rows live in the store's `models` table; files under
<data_dir>/models/<version>/."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from aggregator.store.sqlite.core import audit


def register_model(
    conn: sqlite3.Connection,
    version: str,
    path: str,
    sha256: str,
    meta: dict[str, Any],
    metrics: dict[str, Any],
) -> None:
    conn.execute(
        "INSERT INTO models (version, created, path, sha256, feature_version, train_first_submit,"
        " train_last_submit, train_jobs, metrics_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            version,
            time.time(),
            path,
            sha256,
            meta["feature_version"],
            meta.get("train_first_submit"),
            meta.get("train_last_submit"),
            meta.get("train_jobs"),
            json.dumps(metrics, sort_keys=True),
        ),
    )


def list_models(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT * FROM models ORDER BY created DESC, id DESC").fetchall()
    out = []
    for r in rows:
        d = {k: r[k] for k in r.keys()}  # noqa: SIM118 (sqlite3.Row)
        d["metrics"] = json.loads(d.pop("metrics_json") or "{}")
        d["active"] = bool(d["active"])
        out.append(d)
    return out


def active_model(conn: sqlite3.Connection) -> dict[str, Any] | None:
    return next((m for m in list_models(conn) if m["active"]), None)


def activate_model(conn: sqlite3.Connection, version: str, action: str = "model activate") -> None:
    """Make VERSION the scoring model, recorded in admin_log with the uid that did it."""
    if conn.execute("SELECT 1 FROM models WHERE version = ?", (version,)).fetchone() is None:
        raise KeyError(f"no model {version!r} (nomadectl model list)")
    conn.execute("UPDATE models SET active = 0 WHERE active = 1")
    conn.execute(
        "UPDATE models SET active = 1, activated = ? WHERE version = ?", (time.time(), version)
    )
    audit(conn, action, version)


def rollback_model(conn: sqlite3.Connection) -> str:
    """Activate the model that was active before the current one; return its version."""
    current = conn.execute("SELECT version, activated FROM models WHERE active = 1").fetchone()
    if current is None:
        raise KeyError("no model is active")
    previous = conn.execute(
        "SELECT version FROM models WHERE activated IS NOT NULL AND activated < ? AND version != ?"
        " ORDER BY activated DESC LIMIT 1",
        (current[1], current[0]),
    ).fetchone()
    if previous is None:
        raise KeyError(f"{current[0]} is the only model ever activated: nothing to roll back to")
    activate_model(conn, previous[0], "model rollback")
    return previous[0]
