"""The aggregator's alerting: every `[alerts] evaluate_seconds` each rule of `[[alerts.rules]]`
(aggregator/alerts/rules.py) is evaluated on a read connection, what it found is applied in the
writer (alerts opened, refreshed, resolved: aggregator/store/sqlite/alerts.py), and what opened
or resolved is handed to the dispatcher (aggregator/alerts/dispatch.py), which sends it in its
own threads: a rule that fails or a channel that hangs never holds up ingestion.

A rule that raises is recorded (its error in `runtime()`, one log line per new error) and the
others still run; its open alerts stay as they are until it evaluates again."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from aggregator.alerts import rules
from aggregator.alerts.dispatch import Alert, Dispatcher
from aggregator.store import Writer
from nomade_common.config import Config

log = logging.getLogger("nomade.alerting")


class Alerting:
    def __init__(
        self,
        cfg: Config,
        writer: Writer,
        reader: Callable[[], Any],
        stop: threading.Event,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        self.cfg, self.writer, self.reader, self.stop = cfg, writer, reader, stop
        self.dispatcher = dispatcher
        self.rules = rules.parse_rules(cfg.alerts.rules)
        self.errors: dict[str, str] = {}
        self.evaluated: dict[str, float] = {}  # rule -> when it was last evaluated
        self.cycles, self.last_cycle, self.cycle_seconds = 0, None, None
        self.sent = 0

    def reconfigured(self) -> None:
        """After a reload: the rules as the new configuration has them (checked at load)."""
        self.rules = rules.parse_rules(self.cfg.alerts.rules)

    def loop(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.start()
        while not self.stop.wait(self.cfg.alerts.evaluate_seconds):
            if self.rules:
                self.cycle(time.time())

    def cycle(self, now: float) -> list[rules.Change]:
        """Evaluate every rule as of NOW, apply what they found, dispatch what changed."""
        started = time.monotonic()
        conn = self.reader()
        found: list[tuple[rules.Rule, list[rules.Finding]]] = []
        for rule in self.rules:
            last = self.evaluated.get(rule.name)
            if rule.every is not None and last is not None and now - last < rule.every - 0.05:
                continue  # not due yet (trend rules: once a minute)
            self.evaluated[rule.name] = now
            try:
                found.append((rule, rules.evaluate(conn, rule, now)))
            except Exception as exc:  # one rule's trouble: recorded, the others go on
                why = f"{type(exc).__name__}: {exc}"[:300]
                if self.errors.get(rule.name) != why:
                    log.warning("alert rule %s failed: %s", rule.name, why)
                self.errors[rule.name] = why
            else:
                self.errors.pop(rule.name, None)

        def apply(conn: Any) -> list[rules.Change]:
            return [c for rule, findings in found for c in rules.apply(conn, rule, findings, now)]

        changes = self.writer.call(apply, timeout=60.0) if found else []
        for change in changes:
            self.dispatch(change, now)
        self.cycles += 1
        self.last_cycle, self.cycle_seconds = now, round(time.monotonic() - started, 4)
        return changes

    def dispatch(self, change: rules.Change, now: float) -> None:
        if self.dispatcher is None:
            return
        self.dispatcher.send(
            Alert(
                id=change.alert_id,
                rule=change.rule.name,
                severity=change.rule.severity,
                subject=change.subject,
                user=change.user,
                state=change.state,
                summary=change.summary,
                detail="",
                time=now,
            )
        )
        self.sent += 1

    def runtime(self) -> dict[str, Any]:
        return {
            "rules": len(self.rules),
            "cycles": self.cycles,
            "last_cycle": self.last_cycle,
            "cycle_seconds": self.cycle_seconds,
            "rule_errors": dict(self.errors),
            "dispatched": self.sent,
            "channels": self.dispatcher.status() if self.dispatcher is not None else None,
        }
