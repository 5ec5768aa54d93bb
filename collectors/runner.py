"""Running collectors: each one on its own interval, timed, its success and last error counted.

A collector (collectors/registry.py) is a name, a default interval (overridable in
`[collectors.NAME]`), an `absent` check that says why it cannot run on this host (no GPU, no NFS
mount, no server configured: not an error, it is skipped quietly) and a `read` that returns
records.  One collector failing never stops the others: `run_one` turns any exception into a
failed Reading with one line of error.

The node agent runs the registry's node collectors in a thread of their own (tools such as
`iostat 1 1` take a second; the job sampler must not wait for them); the aggregator runs the
head-node collectors (aggregator/daemon/headcollect.py) with the same runner.  Both report through
`Status`.  `run_tool` is the one way a collector's read runs a command.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from nomade_common.config import Config
from nomade_common.errors import ParseError

if TYPE_CHECKING:
    from collectors.registry import Collector

log = logging.getLogger("nomade.collect")


class CollectorError(RuntimeError):
    """A collector's read failed; the message is the one line shown in `nomadectl status`."""


@dataclass
class Reading:
    collector: str
    t: float
    seconds: float
    records: list[dict[str, Any]]
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Status:
    """What `nomadectl status` shows under Collection, per collector."""

    interval_seconds: float
    runs: int = 0
    failures: int = 0
    last_t: float | None = None
    last_ok_t: float | None = None
    last_error: str | None = None
    last_seconds: float | None = None
    skipped: str | None = None

    def count(self, r: Reading) -> None:
        self.runs += 1
        self.last_t, self.last_seconds = r.t, round(r.seconds, 4)
        if r.ok:
            self.last_ok_t = r.t
        else:
            self.failures += 1
            self.last_error = r.error

    def as_list(self) -> list[Any]:
        """The values in STATUS_FIELDS order: what the heartbeat carries."""
        return [getattr(self, name) for name in STATUS_FIELDS]


STATUS_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Status))


def run_tool(argv: list[str], timeout: float) -> str:
    """Stdout of a tool run in the C locale, or CollectorError with its first error line."""
    env = {**os.environ, "LC_ALL": "C", "S_COLORS": "never"}
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise CollectorError(f"{argv[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise CollectorError(f"{argv[0]} did not answer within {timeout:g} s") from None
    if done.returncode != 0:
        first = (done.stderr or done.stdout).strip().splitlines()[:1]
        raise CollectorError(f"{' '.join(argv)} exited {done.returncode}: {''.join(first)}")
    return done.stdout


def missing_tool(name: str, why: str) -> Callable[[Config], str | None]:
    return lambda cfg: None if shutil.which(name) else f"{name} not found ({why})"


def run_one(c: Collector, cfg: Config, state: dict[str, Any]) -> Reading:
    """Run one collector; never raises.  STATE is the collector's own memory between runs."""
    t, start = time.time(), time.monotonic()
    try:
        if c.read is None:
            raise CollectorError(f"{c.name} is read by another part, not on a schedule")
        records = c.read(cfg, state)  # timed: the read, not just the call's set-up
        return Reading(c.name, t, time.monotonic() - start, records)
    except CollectorError as exc:  # a tool that failed: its own line says it all
        error = str(exc)
    except Exception as exc:  # a collector that fails never stops the cycle
        if not isinstance(exc, (OSError, ParseError)):  # a bug: keep the traceback for debug
            log.debug("collector %s failed", c.name, exc_info=True)
        lines = str(exc).strip().splitlines()
        error = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return Reading(c.name, t, time.monotonic() - start, [], error)


def running_jobs(state: dict[str, Any]) -> dict[int, int | None]:
    """Job id -> uid of the jobs on this node, as the agent's sampler last saw them (what the
    agent shares with its collectors: `Scheduler.shared`)."""
    return dict(state.get("shared", {}).get("running") or {})


def settings(cfg: Config, name: str) -> Any:
    return getattr(cfg.collectors, name)


def skip_reason(c: Collector, cfg: Config, respect_enabled: bool = True) -> str | None:
    """Why C does not run here (disabled, or its source absent), or None when it runs."""
    if respect_enabled and not settings(cfg, c.name).enabled:
        return "disabled in the configuration"
    try:
        return c.absent(cfg)
    except Exception as exc:  # a probe that fails says so; the caller goes on
        return f"cannot tell whether it can run here ({type(exc).__name__}: {exc})"


@dataclass
class Scheduler:
    """Runs COLLECTORS on their intervals and hands each Reading to DELIVER."""

    cfg: Config
    collectors: list[Collector]
    deliver: Callable[[Reading], None]
    only: set[str] | None = None
    clock: Callable[[], float] = time.monotonic
    status: dict[str, Status] = field(default_factory=dict)
    # What the host process shares with its collectors (every collector's state["shared"]):
    # the agent publishes {"running": {job_id: uid}} after each sampling cycle.
    shared: dict[str, Any] = field(default_factory=dict)
    _state: dict[str, dict[str, Any]] = field(default_factory=dict)
    _due: dict[str, float] = field(default_factory=dict)
    _absent_checked: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        now = self.clock()
        self._enabled = [
            c
            for c in self.collectors
            if settings(self.cfg, c.name).enabled and (self.only is None or c.name in self.only)
        ]
        for c in self._enabled:
            self.status[c.name] = Status(settings(self.cfg, c.name).interval_seconds)
            self._state[c.name] = {"shared": self.shared}
            self._due[c.name] = now

    def _skipped(self, c: Collector, now: float) -> str | None:
        """Whether C's source is absent here, asked again every ten intervals (a GPU driver
        loaded or an NFS mount made later is picked up)."""
        st = self.status[c.name]
        if now - self._absent_checked.get(c.name, -1e18) >= 10 * st.interval_seconds:
            self._absent_checked[c.name] = now
            st.skipped = skip_reason(c, self.cfg)
        return st.skipped

    def run_due(self) -> float:
        """Run every collector that is due; return the seconds until the next one is."""
        now = self.clock()
        for c in self._enabled:
            if self._due[c.name] > now:
                continue
            st = self.status[c.name]
            self._due[c.name] = now + st.interval_seconds
            if self._skipped(c, now):
                continue
            was_ok, last_error = st.last_t is None or st.last_ok_t == st.last_t, st.last_error
            reading = run_one(c, self.cfg, self._state[c.name])
            st.count(reading)
            # One line when a collector starts failing or fails differently, one when it
            # recovers: a source that stays broken must not fill the log every interval.
            if not reading.ok and (was_ok or reading.error != last_error):
                log.warning("collector %s: %s", c.name, reading.error)
            elif reading.ok and not was_ok:
                log.warning("collector %s: works again", c.name)
            self.deliver(reading)
            now = self.clock()
        return max(0.0, min(self._due.values(), default=now + 60) - self.clock())

    def snapshot(self) -> dict[str, list[Any]]:
        return {name: st.as_list() for name, st in self.status.items()}


class CollectorThread(threading.Thread):
    """The agent's collectors, away from its sampling loop; readings come out of `readings`."""

    def __init__(self, cfg: Config, collectors: list[Collector]) -> None:
        super().__init__(name="collectors", daemon=True)
        self.readings: queue.Queue[Reading] = queue.Queue(maxsize=1000)
        self.scheduler = Scheduler(cfg, collectors, self._put)
        self._stop_event = threading.Event()

    def _put(self, reading: Reading) -> None:
        try:
            self.readings.put_nowait(reading)
        except queue.Full:
            log.warning(
                "collector %s: reading dropped (the agent is not draining)", reading.collector
            )

    def run(self) -> None:
        while not self._stop_event.is_set():
            wait = self.scheduler.run_due()
            self._stop_event.wait(min(wait, 5.0))

    def stop(self) -> None:
        self._stop_event.set()
