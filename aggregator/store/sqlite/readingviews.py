"""What the collectors' views (aggregator/views/health.py, nfsrates.py, clusterviews.py) ask of the
readings' history beyond `latest_readings`: the records of one kind only, picked out of the
stored JSON by SQLite, so that a day of health readings from a thousand nodes is not decoded
whole in Python to find its few kernel errors.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any


def reading_records_between(
    conn: sqlite3.Connection,
    collector: str,
    record: str,
    since: float,
    until: float | None = None,
    nodes: list[str] | None = None,
    limit: int = 100_000,
) -> list[tuple[str, float, dict[str, Any]]]:
    """(node, time, record) of each record whose `record` is RECORD in COLLECTOR's kept history
    (one reading per `aggregator.readings_history_seconds`) and in its latest readings, between
    SINCE and UNTIL, on NODES (all where None).  Oldest first; where more than LIMIT match, the
    newest LIMIT.  A latest reading that is also kept as history comes once."""
    where, args = ["r.collector = ?", "r.t >= ?"], [collector, since]
    if until is not None:
        where.append("r.t <= ?")
        args.append(until)
    if nodes is not None:
        where.append(f"r.node IN ({','.join('?' * len(nodes))})")
        args += nodes
    # Readings are stored as compact JSON (store_reading): a reading without this text has no
    # such record, and instr() skips it far faster than json_each would read it (a day of
    # health readings from 1,000 nodes holds millions of records, a handful of kernel errors).
    where.append("instr(r.records_json, ?) > 0")
    args.append(json.dumps({"record": record}, separators=(",", ":"))[1:-1])
    cond = " AND ".join(where)
    sql = (
        "SELECT node, t, value FROM ("
        f" SELECT r.node, r.t, r.records_json FROM readings r WHERE {cond}"
        f" UNION SELECT r.node, r.t, r.records_json FROM readings_latest r WHERE {cond}"
        # Only objects are asked for their kind: a node may send any JSON as a record, and
        # json_extract of a bare string fails the whole query.
        "), json_each(records_json)"
        " WHERE CASE WHEN type = 'object' THEN json_extract(value, '$.record') END = ?"
        " ORDER BY t DESC, node LIMIT ?"
    )
    rows = conn.execute(sql, (*args, *args, record, limit)).fetchall()
    return [(r[0], r[1], json.loads(r[2])) for r in reversed(rows)]
