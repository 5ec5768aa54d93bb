"""The samples' upkeep, in its own thread ("compactor"): landed envelopes compacted into chunks,
the store of an older NØMADE moved into chunks, and the raw retention applied.

A compaction step is prepared by a planner process of its own (`Planner`: its CPU beside the
ingest's rather than under the same interpreter lock), on a read snapshot, decoding the chunks
it touches and encoding them again; only its result goes through the writer: one WorkItem that
checks nothing changed meanwhile, replaces the chunks and deletes the envelopes, so acknowledgements
of new envelopes never wait behind the encoding.  The other steps (the old layout's move, the
retention) are WorkItems of tens of milliseconds.  The next step follows the last one's
COMMIT.  A crash (even SIGKILL) between steps or inside one leaves the store as the last COMMIT
left it: the landed envelopes stay until the COMMIT that wrote their chunks deletes them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from aggregator.store import (
    Plan,
    Writer,
    apply_compaction,
    compaction_due,
    connect,
    legacy_left,
    migrate_v1,
    plan_compaction,
    reduce_old,
)
from nomade_common.config import Config

log = logging.getLogger("nomade.aggregator")

STEP_SAMPLES = 100_000  # samples one step compacts: ~0.2 s, the chunks touched once each
MIGRATE_SAMPLES = 50_000  # old-layout rows one step moves
REDUCE_SERIES = 50  # series one retention step reduces
RETENTION_EVERY = 3600.0  # seconds between retention passes
SEAL_EVERY = 60.0  # seconds between looks for closed windows when nothing lands


class Compactor:
    """READER() is a read connection of the calling thread's own.  The samples_* settings are
    read from CFG at each step, so a reload of the configuration (SIGHUP) applies them."""

    def __init__(
        self, cfg: Config, writer: Writer, reader: Callable[[], Any], stop: threading.Event
    ) -> None:
        self.cfg = cfg
        self.writer, self.reader, self._stop = writer, reader, stop
        self.planner = Planner(cfg.database)
        self.compacted = 0  # samples, since start
        self.migration: dict[str, Any] | None = None  # {"total", "left"} while one runs
        self._next_retention = 0.0
        self._next_seal = 0.0

    @property
    def after(self) -> float:
        return self.cfg.aggregator.samples_compact_after_seconds

    @property
    def backlog_envelopes(self) -> int:
        return self.cfg.aggregator.samples_compact_backlog

    @property
    def raw_days(self) -> float:
        return self.cfg.aggregator.samples_raw_retention_days

    def reconfigured(self) -> None:
        """The settings changed: the retention pass and the look for closed windows are due
        now rather than at their next hour or minute."""
        self._next_retention = self._next_seal = 0.0

    def loop(self) -> None:
        try:
            self._loop()
        finally:
            self.planner.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.step(time.time())
            except TimeoutError:
                busy = False  # the store is failing: the writer says why; try again later
            except Exception:
                log.exception("compactor: a step failed; continuing")
                busy = False
            if not busy and self._stop.wait(1.0):
                return

    def step(self, now: float) -> bool:
        """One step of whatever is due; whether more is waiting."""
        if self.writer.failing_since is not None:
            return False
        due = compaction_due(self.reader(), now - self.after, self.backlog_envelopes)
        if due or now >= self._next_seal:  # a quiet store still has its closed windows merged
            self._next_seal = now + SEAL_EVERY
            # Decoded and encoded by the planner process, on a read snapshot; the writer only
            # swaps the result in.
            plan = self.planner.plan(now - self.after, STEP_SAMPLES, self.backlog_envelopes)
            if plan is not None:
                moved = self.writer.call(lambda c: apply_compaction(c, plan), timeout=60)
                self.compacted += moved
                return True
        left = legacy_left(self.reader())
        if left is not None:
            return self._migrate(left)
        if now >= self._next_retention:
            cutoff = now - self.raw_days * 86400
            done = self.writer.call(lambda c: reduce_old(c, cutoff, REDUCE_SERIES), timeout=60)
            if done < REDUCE_SERIES:
                self._next_retention = now + RETENTION_EVERY
            return done > 0
        return False

    def _migrate(self, left: int) -> bool:
        if self.migration is None:
            self.migration = {"total": left, "left": left, "logged": 0}
            if left:
                log.info("store: moving %d samples of the old layout into chunks", left)
        moved, rest = self.writer.call(lambda c: migrate_v1(c, MIGRATE_SAMPLES), timeout=120)
        m = self.migration
        if rest is None:
            if m["total"]:
                log.info("store: all %d samples of the old layout are in chunks", m["total"])
            self.migration = None
            return True
        m["left"] = rest
        done = 100 * (m["total"] - rest) // max(m["total"], 1)
        if done >= m["logged"] + 10:
            m["logged"] = done - done % 10
            log.info("store: old layout %d%% moved (%d samples left)", done, rest)
        return moved > 0 or rest == 0


class Planner:
    """plan_compaction in a child process ("nomade-compactor"), started when first needed and
    again after it dies; where no process can be started, in the calling thread."""

    def __init__(self, database: str) -> None:
        self.database = database
        self._proc: Any = None
        self._pipe: Any = None
        self._in_thread = False

    def plan(self, older_than: float, max_samples: int, max_envelopes: int) -> Plan | None:
        if self._in_thread:
            return plan_compaction(self._conn(), older_than, max_samples, max_envelopes)
        if self._proc is None or self._proc.poll() is not None:
            if not self._start():
                return self.plan(older_than, max_samples, max_envelopes)
        try:
            self._pipe.send((older_than, max_samples, max_envelopes))
        except OSError:
            self.close()
            raise TimeoutError("the compaction planner exited") from None
        if not self._pipe.poll(120):
            self.close()
            raise TimeoutError("the compaction planner did not answer in 120 s")
        try:
            kind, value = self._pipe.recv()
        except (EOFError, OSError):
            self.close()
            raise TimeoutError("the compaction planner exited") from None
        if kind == "error":
            raise RuntimeError(f"compaction planner: {value}")
        return value

    def _start(self) -> bool:
        # A plain child interpreter on one end of a socket pair, not multiprocessing's spawn:
        # spawn's child reads its instructions from the parent before any of NØMADE's code
        # runs, so an aggregator killed at that moment (SIGKILL, the OOM killer) left an
        # EOFError traceback in its log.  Here the child is NØMADE's code from its first line,
        # and a parent gone at any moment is an end of file it answers by exiting quietly.
        import socket
        import subprocess
        import sys
        from multiprocessing.connection import Connection

        try:
            mine, theirs = socket.socketpair()
        except OSError as exc:
            return self._no_process(exc)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", PLANNER_CHILD, str(theirs.fileno()), self.database],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C on a foreground aggregator is its to answer
            )
        except OSError as exc:
            mine.close()
            return self._no_process(exc)
        finally:
            theirs.close()
        self._pipe = Connection(mine.detach())
        return True

    def _no_process(self, exc: OSError) -> bool:
        log.warning("compactor: no planner process (%s): compacting in the aggregator", exc)
        self._in_thread = True
        return False

    def _conn(self) -> Any:
        if self._proc is None:
            self._proc = connect(self.database, readonly=True)
        return self._proc

    def close(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None
        if self._proc is not None and hasattr(self._proc, "terminate"):
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except Exception:  # noqa: BLE001 - a planner that ignores SIGTERM is killed
                self._proc.kill()
                self._proc.wait()
        self._proc = None


# The planner process's first line: its end of the socket pair and the store's path in argv.
PLANNER_CHILD = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "from aggregator.daemon.compaction import planner_process; "
    "planner_process(int(sys.argv[1]), sys.argv[2])"
)


def planner_process(fd: int, database: str) -> None:
    """The planner process's entry: a Connection on the inherited end of the socket pair."""
    from multiprocessing.connection import Connection

    _planner_main(database, Connection(fd))


def _planner_main(database: str, pipe: Any) -> None:
    """The planner process: a plan for each request, until the aggregator closes the pipe.
    Whatever fails is answered as one line (the aggregator logs it), never a traceback."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the aggregator decides when it stops
    conn = None
    while True:
        try:
            args = pipe.recv()
        except (EOFError, OSError):
            return
        try:
            if conn is None:
                conn = connect(database, readonly=True)
            answer = ("plan", plan_compaction(conn, *args))
        except Exception as exc:
            answer = ("error", f"{type(exc).__name__}: {exc}")
        try:
            pipe.send(answer)
        except OSError:  # the aggregator stopped (or died) meanwhile
            return
