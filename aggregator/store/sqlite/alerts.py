"""Alerts and silences: the state behind `nomadectl alerts` and what the rules raise.

An alert is about one subject (a node, a filesystem, a job) and raised by one rule; while its
condition holds it stays open (`firing`), at most one per rule and subject (a partial unique
index), and each evaluation that still finds it refreshes `last_t`.  It is resolved when the
condition clears.  Raising again within the rule's cooldown after a resolve opens nothing (a
condition that flaps is one alert, not one per flap).  A silence holds back new alerts of a
rule, of a subject, or of both, from its start until its end (a maintenance window); alerts
open when it begins stay open and are shown.

Every function runs inside the writer's transaction (or a reader's, for the reads).
"""

from __future__ import annotations

import sqlite3
from typing import Any

RAISED, ONGOING, COOLING, SILENCED = "raised", "ongoing", "cooling down", "silenced"
MAX_TEXT = 2000  # characters of a summary or detail kept


def raise_alert(
    conn: sqlite3.Connection,
    rule: str,
    subject: str,
    severity: str,
    summary: str,
    now: float,
    cooldown: float = 0.0,
    detail: str | None = None,
    job_uid: int | None = None,
    user: str | None = None,
) -> tuple[int | None, str]:
    """Open an alert of RULE about SUBJECT, or refresh the open one: (its id, RAISED or
    ONGOING); (None, SILENCED) under a silence; (None, COOLING) within COOLDOWN seconds of the
    last one's resolve."""
    summary, detail = summary[:MAX_TEXT], detail[:MAX_TEXT] if detail else None
    row = conn.execute(
        "SELECT id FROM alerts WHERE rule = ? AND subject = ? AND state = 'firing'",
        (rule, subject),
    ).fetchone()
    if row is not None:
        conn.execute(
            "UPDATE alerts SET last_t = ?, summary = ?, detail = ?, severity = ? WHERE id = ?",
            (now, summary, detail, severity, row[0]),
        )
        return row[0], ONGOING
    if silenced(conn, rule, subject, now):
        return None, SILENCED
    last = conn.execute(
        "SELECT max(resolved_t) FROM alerts WHERE rule = ? AND subject = ?", (rule, subject)
    ).fetchone()[0]
    if last is not None and now - last < cooldown:
        return None, COOLING
    cur = conn.execute(
        "INSERT INTO alerts (rule, subject, severity, job_uid, user, state, summary, detail,"
        " first_t, last_t) VALUES (?, ?, ?, ?, ?, 'firing', ?, ?, ?, ?)",
        (rule, subject, severity, job_uid, user, summary, detail, now, now),
    )
    return cur.lastrowid, RAISED


def resolve_alert(conn: sqlite3.Connection, rule: str, subject: str, now: float) -> int | None:
    """Close the open alert of RULE about SUBJECT (its condition cleared): its id, or None."""
    row = conn.execute(
        "SELECT id FROM alerts WHERE rule = ? AND subject = ? AND state = 'firing'",
        (rule, subject),
    ).fetchone()
    if row is None:
        return None
    conn.execute("UPDATE alerts SET state = 'resolved', resolved_t = ? WHERE id = ?", (now, row[0]))
    return row[0]


def open_alert_rules(conn: sqlite3.Connection) -> set[str]:
    """The rules with an open alert."""
    rows = conn.execute("SELECT DISTINCT rule FROM alerts WHERE state = 'firing'").fetchall()
    return {r[0] for r in rows}


def retire_rules(
    conn: sqlite3.Connection, configured: set[str], now: float
) -> list[dict[str, Any]]:
    """Resolve the open alerts of every rule not in CONFIGURED (one taken out of the
    configuration: nothing would evaluate, so resolve, them again); what was resolved."""
    rows = conn.execute(
        "SELECT id, rule, subject, severity, user FROM alerts WHERE state = 'firing'"
    ).fetchall()
    gone = [r for r in rows if r[1] not in configured]
    conn.executemany(
        "UPDATE alerts SET state = 'resolved', resolved_t = ? WHERE id = ?",
        [(now, r[0]) for r in gone],
    )
    keys = ("id", "rule", "subject", "severity", "user")
    return [dict(zip(keys, r, strict=True)) for r in gone]


def open_subjects(conn: sqlite3.Connection, rule: str) -> set[str]:
    """The subjects RULE has an open alert about (those an evaluation may resolve)."""
    rows = conn.execute(
        "SELECT subject FROM alerts WHERE rule = ? AND state = 'firing'", (rule,)
    ).fetchall()
    return {r[0] for r in rows}


def open_alert_users(conn: sqlite3.Connection, rule: str) -> dict[str, str | None]:
    """Subject -> the job's user (None where no job's) of RULE's open alerts: those an
    evaluation may resolve, and whom a job's resolve goes to."""
    rows = conn.execute(
        "SELECT subject, user FROM alerts WHERE rule = ? AND state = 'firing'", (rule,)
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def ack_alert(conn: sqlite3.Connection, alert_id: int, by: str, now: float) -> bool:
    """Acknowledge alert ALERT_ID (someone is on it); False where there is no such alert."""
    cur = conn.execute(
        "UPDATE alerts SET acked_by = ?, acked_t = ? WHERE id = ?", (by[:64], now, alert_id)
    )
    return cur.rowcount == 1


def add_silence(
    conn: sqlite3.Connection,
    rule: str | None,
    subject: str | None,
    start: float,
    until: float,
    by: str,
    reason: str | None,
    now: float,
) -> int:
    """Hold back new alerts of RULE (any where None) about SUBJECT (any where None) from START
    until UNTIL; its id."""
    if rule is None and subject is None:
        raise ValueError("a silence names a rule, a subject or both")
    if until <= start:
        raise ValueError("a silence ends after it starts")
    cur = conn.execute(
        "INSERT INTO alert_silences (rule, subject, start_t, until_t, created_by, reason, created)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (rule, subject, start, until, by[:64], (reason or "")[:MAX_TEXT] or None, now),
    )
    return cur.lastrowid  # type: ignore[return-value]


def silenced(conn: sqlite3.Connection, rule: str, subject: str, now: float) -> bool:
    """Whether a silence holds back RULE's alerts about SUBJECT at NOW.  A silence of a node
    also holds back the subjects the rules name after it: "node7:/tmp" (a node-local
    filesystem, an NFS mount) and "node7: gpu" (a collector)."""
    return (
        conn.execute(
            "SELECT 1 FROM alert_silences WHERE start_t <= ? AND until_t > ?"
            " AND (rule IS NULL OR rule = ?) AND (subject IS NULL OR subject = ?"
            " OR substr(?, 1, length(subject) + 1) = subject || ':') LIMIT 1",
            (now, now, rule, subject, subject),
        ).fetchone()
        is not None
    )


def silences(conn: sqlite3.Connection, now: float) -> list[dict[str, Any]]:
    """The silences not yet over, soonest end first."""
    return [
        dict(r)
        for r in conn.execute(
            "SELECT * FROM alert_silences WHERE until_t > ? ORDER BY until_t, id", (now,)
        )
    ]


def find_alerts(
    conn: sqlite3.Connection,
    unresolved: bool = False,
    since: float | None = None,
    user: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Alerts, newest first: only open ones where UNRESOLVED, raised at or after SINCE, about
    USER's jobs only where USER is given."""
    where, args = [], []
    if unresolved:
        where.append("state = 'firing'")
    if since is not None:
        where.append("first_t >= ?")
        args.append(since)
    if user is not None:
        where.append("user = ?")
        args.append(user)
    sql = "SELECT * FROM alerts" + (" WHERE " + " AND ".join(where) if where else "")
    rows = conn.execute(sql + " ORDER BY first_t DESC, id DESC LIMIT ?", (*args, limit))
    return [dict(r) for r in rows]
