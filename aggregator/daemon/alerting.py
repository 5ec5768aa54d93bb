"""The aggregator's alerting: every `[alerts] evaluate_seconds` each rule of `[[alerts.rules]]`
(aggregator/alerts/rules.py) is evaluated on a read connection, what it found is applied in the
writer (alerts opened, refreshed, resolved: aggregator/store/sqlite/alerts.py), and what opened
or resolved is handed to the dispatcher (aggregator/alerts/dispatch.py), which sends it in its
own threads: a rule that fails or a channel that hangs never holds up ingestion.

A rule that raises is recorded (its error in `runtime()`, one log line per new error) and the
others still run; its open alerts stay as they are until it evaluates again.

A reload (SIGHUP) brings new rules and channels without a restart: `prepare` checks them before
anything is applied (a wrong rule or an unreadable secrets file refuses the whole reload), and
`install` puts them in place; a new dispatcher takes over what the old one had not sent.  The
open alerts of a rule no longer configured (taken out at a reload, or while the aggregator was
down) are resolved, and their resolves sent, rather than left open for ever."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from aggregator.alerts import rules
from aggregator.alerts.dispatch import Alert, Dispatcher
from aggregator.store import WorkItem, Writer, open_alert_rules, retire_rules
from nomade_common.config import Config
from nomade_common.errors import ConfigError

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
        self._lock = threading.Lock()  # a reload's install against a cycle
        self._looping = False
        self._retire_due = True  # at start: rules taken out while the aggregator was down
        self._failing: str | None = None  # why the last round failed
        self._pending = False  # a write of alerts waits on the store (_write)
        self.write_wait = 60.0  # seconds an evaluation waits for its COMMIT

    # -- reloads ----------------------------------------------------------------------------
    def prepare(self, new: Config) -> tuple[list[rules.Rule], Dispatcher | None]:
        """NEW's rules and a dispatcher for its channels (not started), checked: ConfigError in
        one line for a wrong rule or a secrets file that cannot be read.  The channels name the
        running cluster_name (a setting read at start only)."""
        running = dataclasses.replace(new.general, cluster_name=self.cfg.general.cluster_name)
        return checked(dataclasses.replace(new, general=running))

    def install(self, prepared: tuple[list[rules.Rule], Dispatcher | None]) -> str | None:
        """PREPARED's rules from the next evaluation on, and its dispatcher where the channels
        or their secrets changed; what changed, in words, or None.

        The old dispatcher's queue moves to the new one at once, and the new one takes alerts
        from then on but sends nothing until the old one has stopped: an alert that was in
        flight there and fails goes first (Dispatcher.hand_over), so that a resolve never
        reaches a channel before its firing.  That wait is bounded by one attempt's timeout."""
        parsed, fresh = prepared
        said = []
        with self._lock:
            old = self.dispatcher
            keep = fresh is not None and old is not None and fresh.built_from == old.built_from
            if parsed != self.rules:
                said.append(f"{len(parsed)} rule(s)")
            self.rules = parsed
            names = {r.name for r in parsed}
            self.errors = {k: v for k, v in self.errors.items() if k in names}
            self.evaluated = {k: v for k, v in self.evaluated.items() if k in names}
            self._retire_due = True
            swap = not keep and (old is not None or fresh is not None)
            if swap:
                if old is not None:
                    old.move_queued(fresh)
                self.dispatcher = fresh
                said.append(
                    "channels " + (", ".join(ln.channel.name for ln in fresh.lanes) or "none")
                    if fresh is not None
                    else "no channels"
                )
        if swap and old is not None:
            old.hand_over(fresh, timeout=self.cfg.alerts.timeout_seconds + 2.0)
        if swap and fresh is not None:
            with self._lock:
                if self.stop.is_set() or self.dispatcher is not fresh:
                    fresh.stop(0.0)  # the aggregator stopped meanwhile, or another reload came
                elif self._looping:
                    fresh.start()
        return "; ".join(said) or None

    def close(self) -> None:
        """At the aggregator's stop: the dispatcher stops (what it could not send is logged).
        Without the lock, which an evaluation may hold while it waits for a failing store."""
        dispatcher, self.dispatcher = self.dispatcher, None
        if dispatcher is not None:
            dispatcher.stop()

    # -- evaluation -------------------------------------------------------------------------
    def loop(self) -> None:
        with self._lock:
            self._looping = True
            if self.dispatcher is not None:
                self.dispatcher.start()
        while not self.stop.wait(self.cfg.alerts.evaluate_seconds):
            if self._pending:
                continue  # a write waits on the store: its alerts go out when it commits
            try:
                with self._lock:
                    if self._retire_due:
                        self.retire(time.time())
                    if self.rules:
                        self.cycle(time.time())
            except Exception as exc:  # the store failing (a writer timeout): the next round
                why = f"{type(exc).__name__}: {exc}"[:300]
                if why != self._failing:  # once per new reason, not each second
                    log.warning("alerts: evaluation failed, tried again each round: %s", why)
                self._failing = why
            else:
                self._failing = None

    def retire(self, now: float) -> int:
        """Resolve (and send the resolves of) the open alerts of rules no longer configured."""
        names = {r.name for r in self.rules}
        if open_alert_rules(self.reader()) <= names:  # the usual case: nothing to write
            self._retire_due = False
            return 0

        def sent(gone: list[dict[str, Any]]) -> None:
            self._retire_due = False
            for a in gone:
                summary = f"{a['subject']}: rule {a['rule']} is no longer configured"
                self._send(a["id"], a["rule"], a["severity"], a["subject"], a["user"], summary, now)
            if gone:
                log.info(
                    "alerts: %d open alert(s) of rules no longer configured resolved (%s)",
                    len(gone),
                    ", ".join(sorted({a["rule"] for a in gone})),
                )

        return len(self._write(lambda c: retire_rules(c, names, now), sent))

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

        def sent(changes: list[rules.Change]) -> None:
            for change in changes:
                self.dispatch(change, now)

        changes = self._write(apply, sent) if found else []
        self.cycles += 1
        self.last_cycle, self.cycle_seconds = now, round(time.monotonic() - started, 4)
        return changes

    def _write(self, apply: Callable[[Any], Any], sent: Callable[[Any], None]) -> Any:
        """APPLY in the writer, and SENT(its result) right after its COMMIT, in the writer's
        thread: what opened or resolved is sent once it is in the store, also where the store
        was failing and the COMMIT comes after this call gave up waiting (write_wait).  Until then
        the loop evaluates nothing more (`_pending`), so an outage queues one write, not one
        a round; what a later evaluation finds is then measured against what was committed."""
        done, box = threading.Event(), {}

        def committed(result: Any) -> None:
            try:
                sent(result)
            finally:
                box["result"], self._pending = result, False
                done.set()

        def refused(exc: BaseException) -> None:
            box["error"], self._pending = exc, False
            done.set()

        self._pending = True
        self.writer.submit(WorkItem(apply, committed, refused))
        if not done.wait(self.write_wait):
            why = self.writer.health().get("reason") or "busy"
            raise TimeoutError(f"the store did not commit the alerts within {self.write_wait:g} s"
                               f" ({why}); they are sent when it does")  # fmt: skip
        if "error" in box:
            raise box["error"]
        return box["result"]

    def dispatch(self, change: rules.Change, now: float) -> None:
        rule = change.rule
        self._send(
            change.alert_id,
            rule.name,
            rule.severity,
            change.subject,
            change.user,
            change.summary,
            now,
            change.state,
        )

    def _send(
        self,
        alert_id: int,
        rule: str,
        severity: str,
        subject: str,
        user: str | None,
        summary: str,
        now: float,
        state: str = "resolved",
    ) -> None:
        dispatcher = self.dispatcher
        if dispatcher is None:
            return
        dispatcher.send(
            Alert(
                id=alert_id,
                rule=rule,
                severity=severity,
                subject=subject,
                user=user,
                state=state,
                summary=summary,
                detail="",
                time=now,
            )
        )
        self.sent += 1

    def runtime(self) -> dict[str, Any]:
        dispatcher = self.dispatcher  # once: a reload may replace it meanwhile
        return {
            "rules": len(self.rules),
            "cycles": self.cycles,
            "last_cycle": self.last_cycle,
            "cycle_seconds": self.cycle_seconds,
            "rule_errors": dict(self.errors),
            "dispatched": self.sent,
            "channels": dispatcher.status() if dispatcher is not None else None,
        }


def checked(cfg: Config) -> tuple[list[rules.Rule], Dispatcher | None]:
    """CFG's rules, and a dispatcher for its channels where alerts are on (also without rules:
    the resolves of a rule taken out still go out), not started; ConfigError in one line for a
    wrong rule or a secrets file that cannot be read."""
    try:
        parsed = rules.parse_rules(cfg.alerts.rules)
    except ValueError as exc:
        raise ConfigError(cfg.path, "alerts.rules", str(exc)) from None
    return parsed, Dispatcher(cfg) if cfg.alerts.enabled else None
