"""What the aggregator daemon's own parts read and write (aggregator/daemon/): node liveness, the
pruning of old readings, the size of the cluster, the retraining schedule and the feature vector
of a job that has ended.

    node_lives(conn)                   (node, last_seen, state) of every node
    set_node_states(conn, states)      each (node, state) of STATES, in the writer's transaction
    prune_readings(conn, cutoff)       readings older than CUTOFF (Unix seconds) removed
    newest_records_json(conn, name)    the records (JSON text) of collector NAME's newest reading
    last_model_created(conn)           when the newest model was registered, None if none was
    ended_job_count(conn)              jobs whose outcome is known
    job_vector(conn, uid, version)     a job's stored feature vector of that version, None if none
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable


def node_lives(conn: sqlite3.Connection) -> list[tuple[str, float, str]]:
    return conn.execute("SELECT node, last_seen, state FROM nodes").fetchall()


def set_node_states(conn: sqlite3.Connection, states: Iterable[tuple[str, str]]) -> None:
    for node, state in states:
        conn.execute("UPDATE nodes SET state = ? WHERE node = ?", (state, node))


def prune_readings(conn: sqlite3.Connection, cutoff: float) -> None:
    conn.execute("DELETE FROM readings WHERE t < ?", (cutoff,))


def newest_records_json(conn: sqlite3.Connection, collector: str) -> str | None:
    row = conn.execute(
        "SELECT records_json FROM readings_latest WHERE collector = ? ORDER BY t DESC LIMIT 1",
        (collector,),
    ).fetchone()
    return row[0] if row else None


def last_model_created(conn: sqlite3.Connection) -> float | None:
    return conn.execute("SELECT max(created) FROM models").fetchone()[0]


def ended_job_count(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM jobs WHERE outcome IS NOT NULL").fetchone()[0]


def job_vector(conn: sqlite3.Connection, uid: int, feature_version: int) -> bytes | None:
    row = conn.execute(
        "SELECT vector FROM job_features WHERE job_uid = ? AND feature_version = ?",
        (uid, feature_version),
    ).fetchone()
    return row[0] if row else None
