"""What an administrator does to alerts: acknowledge one, or hold new ones back with a silence
(a maintenance window).  The same checks and the same record whether root runs `nomadectl
alerts ack|silence` on the head node (on the store) or an admin named in
`security.admin_users`/`admin_groups` does it from any host (POST /api/v1/alerts/..., the
aggregator writing for them): each action is in the admin log (`nomadectl audit`) under the
name of whoever did it."""

from __future__ import annotations

import math
from typing import Any

from aggregator import store
from nomade_common.text import printable

MAX_NAME = 200  # characters of a rule or subject named
MAX_REASON = 1000
MAX_SILENCE_SECONDS = 400 * 86400  # a silence longer than a year is a rule to take out


def ack(conn: Any, alert_id: int, by: tuple[int, str], now: float) -> bool:
    """Acknowledge ALERT_ID as BY (uid, name), recorded in the admin log; False where there is
    no such alert."""
    if not store.ack_alert(conn, alert_id, by[1], now):
        return False
    store.audit(conn, "alert ack", str(alert_id), by)
    return True


def silence(
    conn: Any,
    rule: str | None,
    subject: str | None,
    start: float,
    until: float,
    reason: str,
    by: tuple[int, str],
    now: float,
) -> int:
    """Hold back new alerts of RULE about SUBJECT (either None: any) from START until UNTIL,
    for REASON, as BY; its id.  ValueError in one line where the window or a name is wrong."""
    check_silence(rule, subject, start, until, reason, now)
    sid = store.add_silence(conn, rule, subject, start, until, by[1], reason, now)
    what = f"{sid}: {rule or 'every rule'} about {subject or 'every subject'}: {reason}"
    store.audit(conn, "alert silence", what, by)
    return sid


def check_silence(
    rule: str | None, subject: str | None, start: float, until: float, reason: str, now: float
) -> None:
    if rule is None and subject is None:
        raise ValueError("a silence names a rule, a subject or both")
    for what, text, most in (("rule", rule, MAX_NAME), ("subject", subject, MAX_NAME),
                             ("reason", reason, MAX_REASON)):  # fmt: skip
        if text is not None and not _one_line(text, most):
            raise ValueError(f"{what}: expected one printable line of 1 to {most} characters")
    if reason is None:
        raise ValueError(f"reason: expected one printable line of 1 to {MAX_REASON} characters")
    if until <= max(start, now):
        raise ValueError("the silence would be over before it began")
    if until - max(start, now) > MAX_SILENCE_SECONDS:
        raise ValueError(f"a silence lasts at most {MAX_SILENCE_SECONDS // 86400} days")


def _one_line(text: str, most: int) -> bool:
    """TEXT is 1 to MOST printable characters on one line, which UTF-8 can carry (no lone
    surrogate, which JSON's \\ud800 can bring)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return 0 < len(text) <= most and printable(text, most) == text


def silence_request(body: Any, now: float) -> dict[str, Any]:
    """POST /api/v1/alerts/silences's body, {"rule", "subject", "start", "until", "reason"}
    (rule or subject may be left out; start: now where left out), checked: ValueError in one
    line naming the field."""
    if not isinstance(body, dict):
        raise ValueError('expected {"rule": ..., "subject": ..., "until": ..., "reason": ...}')
    unknown = sorted(set(body) - {"rule", "subject", "start", "until", "reason"})
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r}")
    for key in ("rule", "subject", "reason"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise ValueError(f"{key}: expected a string")
    times = {}
    for key, default in (("start", now), ("until", None)):
        value = body.get(key)
        value = default if value is None else value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key}: expected Unix seconds")
        if not (isinstance(value, int) or math.isfinite(value)) or not 0 <= value <= 1e11:
            raise ValueError(f"{key}: expected Unix seconds, 0 to 1e11")  # ints of any size too
        times[key] = float(value)
    out = {
        "rule": body.get("rule"),
        "subject": body.get("subject"),
        "start": times["start"],
        "until": times["until"],
        "reason": body.get("reason"),
    }
    check_silence(out["rule"], out["subject"], out["start"], out["until"], out["reason"], now)
    return out
