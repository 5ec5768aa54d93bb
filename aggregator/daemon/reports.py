"""The head-node hooks' reports (PrologSlurmctld, EpilogSlurmctld): the reports directory's poller,
which hands each complete file to its handler and removes it once what it says is stored, and the
reports that come over HTTP (`receive_report`, answered after their COMMIT).  A job's start goes on
to the start workers (daemon/starts.py); its end is stored here.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aggregator.jobs import fields as jobfields
from aggregator.store import Ingest, WorkItem, Writer
from collectors.slurm import slurmvalues
from nomade_common.config import Config
from nomade_common.reportdir import ReportDir

if TYPE_CHECKING:
    from aggregator.daemon.starts import Starts

log = logging.getLogger("nomade.aggregator")
REPORTS_POLL_SECONDS = 0.02  # how often the reports directory is looked at
# Hook report fields are cut to these lengths (others to 1,024 characters).
MAX_FIELD_CHARS = {"work_dir": 4096, "node_list": 65536}
MAX_JOB_ID = (1 << 63) - 1
Settle = Callable[..., None]  # settle(True) once a report is stored, settle(False, why) if not
Later = Callable[..., None]  # later(fn, *args): run fn(*args) once the HTTP answer is sent


class Reports:
    """The hooks' reports, from the reports directory (`loop`, thread "reports") or over HTTP.
    NODE_LIMIT() is the most nodes a job's node list may name."""

    def __init__(
        self,
        cfg: Config,
        writer: Writer,
        ingest: Ingest,
        starts: Starts,
        node_limit: Callable[[], int],
        stop: threading.Event,
    ) -> None:
        self.cfg = cfg
        self.writer = writer
        self.ingest = ingest
        self.starts = starts
        self.node_limit = node_limit
        self._stop = stop
        self._reports_taken: set[str] = set()  # reports handed on and not yet stored

    def hook_job_start(
        self, body: dict[str, Any], settle: Settle | None = None, later: Later | None = None
    ) -> dict[str, Any]:
        """PrologSlurmctld's report from the reports directory (whose file is its durable copy
        until SETTLE(True) follows the COMMIT that stored it; SETTLE(False, why) a failure):
        completed from `scontrol show job`, scored, stored and sent to the job's nodes by the
        start worker.  Over HTTP see receive_report: LATER(fn, *args) runs the work once the
        answer is sent, since work begun before would hold the GIL while the answer waits."""
        fields, t = self.report_fields(body)
        (later or _now)(self.starts.submit, fields, body.get("scontrol"), t, settle)
        return {"ok": True}

    def receive_report(self, kind: str, body: dict[str, Any]) -> tuple[Any, Callable[[], None]]:
        """A hook's report over HTTP, which must not be answered before its COMMIT: the report
        as received goes to the writer as one small urgent item.  Returns (future of that
        COMMIT, what to do once it is answered); ValueError when the report is malformed."""
        fields, t = self.report_fields(body)
        now = time.time()
        received = _Received()
        if kind == "job-start":
            fields["start_time"] = fields.get("start_time") or t

            def store(c: Any) -> Any:
                return self.ingest.upsert_job(c, fields, now)

            def after() -> None:
                self.starts.submit(fields, body.get("scontrol"), t)
        else:
            fields["end_time"] = t
            delay = self.cfg.aggregator.reconcile_delay_seconds

            def store(c: Any) -> Any:
                return self.ingest.job_end(c, fields, delay, now)

            def after() -> None:
                pass

        self.writer.submit(received.item(store))
        return received, after

    def report_fields(self, body: dict[str, Any]) -> tuple[dict[str, Any], float | None]:
        """The job's fields and the hook's time from a head-node hook's report, within bounds
        (ValueError naming what is wrong): an env object of strings, a job id, a node list no
        longer than the cluster, a time near this clock; long strings are cut."""
        env = body.get("env")
        if not isinstance(env, dict):
            raise ValueError("the report has no env object")
        env = {k: v for k, v in env.items() if isinstance(k, str) and isinstance(v, str)}
        fields = jobfields.request_from_env(env)
        job_id = fields.get("job_id")
        if job_id is None or not 0 <= job_id <= MAX_JOB_ID:
            raise ValueError(
                f"no job id from 0 to {MAX_JOB_ID} (SLURM_JOB_ID) in the hook's report"
            )
        for key, value in fields.items():
            if isinstance(value, str) and len(value) > MAX_FIELD_CHARS.get(key, 1024):
                fields[key] = value[: MAX_FIELD_CHARS.get(key, 1024)]
        limit = self.node_limit()
        if slurmvalues.hostlist_size(fields.get("node_list")) > limit:
            size = slurmvalues.hostlist_size(fields.get("node_list"))
            raise ValueError(f"SLURM_JOB_NODELIST names {size} nodes; this cluster allows {limit}")
        t = body.get("t")
        if t is not None:
            if type(t) not in (int, float) or not abs(t - time.time()) < 366 * 86400:
                raise ValueError("t must be the hook's time in Unix seconds, within a year of now")
        return fields, t

    def hook_job_end(
        self, body: dict[str, Any], settle: Settle | None = None, later: Later | None = None
    ) -> dict[str, Any]:
        fields, t = self.report_fields(body)
        fields["end_time"] = t
        now = time.time()
        delay = self.cfg.aggregator.reconcile_delay_seconds
        # Stored asynchronously, like the start: the reports loop never waits for the writer.
        self.writer.submit(_settled(lambda c: self.ingest.job_end(c, fields, delay, now), settle))
        return {"ok": True}

    # -- hooks through the reports directory --------------------------------------------------
    def loop(self) -> None:
        reports = ReportDir(self.cfg.hooks.reports_dir, self.report_writers())
        while not self._stop.wait(REPORTS_POLL_SECONDS):
            try:
                self.take_reports(reports)
            except Exception:
                log.exception("reading %s failed", reports.path)

    def report_writers(self) -> frozenset[int]:
        """Whose report files are believed: root's and the SlurmUser's (PrologSlurmctld runs as
        the SlurmUser), and this daemon's own user."""
        slurm = self.cfg.security.slurm_uid()
        if slurm is None:
            log.warning(
                "security.slurm_user %r is not a user here: only root's hook reports are believed",
                self.cfg.security.slurm_user,
            )
        return frozenset(u for u in (0, os.geteuid(), slurm) if u is not None)

    def take_reports(self, reports: ReportDir) -> int:
        """Hand every complete report in REPORTS to its handler; each file is removed once what
        it says is stored (a report read again after a crash is stored again, idempotently)."""
        taken = 0
        handlers = {"prologslurmctld": self.hook_job_start, "epilogslurmctld": self.hook_job_end}
        for path, body in reports.ready(skip=self._reports_taken):
            handler, env = handlers.get(body.get("kind")), body.get("env")
            if handler is None or not isinstance(env, dict):
                reports.set_aside(
                    path, "expected kind prologslurmctld or epilogslurmctld and an env object"
                )
                continue
            # A job's end waits while its start (named <µs>-<job>-prologslurmctld.json by the
            # hook) is still being scored, and is stored after it, at a later look.
            started = f"-{env.get('SLURM_JOB_ID', '')}-prologslurmctld.json"
            if body["kind"] == "epilogslurmctld" and any(
                n.endswith(started) for n in list(self._reports_taken)
            ):
                continue
            self._reports_taken.add(path.name)

            def settle(ok: bool, why: str = "", path: Path = path) -> None:
                if ok:
                    path.unlink(missing_ok=True)
                else:
                    reports.set_aside(path, why)
                self._reports_taken.discard(path.name)

            try:
                handler(body, settle)
            except Exception as exc:  # a report that cannot be taken must not block the others
                if self._stop.is_set():  # shutting down: left for the next start
                    self._reports_taken.discard(path.name)
                    break
                settle(False, f"{type(exc).__name__}: {exc}")
            taken += 1
        return taken


def _now(fn: Callable[..., Any], *args: Any) -> None:
    fn(*args)


class _Received:
    """A hook report over HTTP waiting for its COMMIT.  If its answer is due first (the store
    is slow or failing), the caller cancels it: the hook keeps the report and sends it again,
    and an item cancelled before the writer reached it is not stored twice."""

    def __init__(self) -> None:
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self._lock = threading.Lock()
        self._state = "waiting"

    def item(self, store: Callable[[Any], Any]) -> WorkItem:
        def apply(c: Any) -> Any:
            with self._lock:
                if self._state == "cancelled":
                    return None
                self._state = "applying"
            return store(c)

        def done(result: Any) -> None:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                self.future.set_result(result)

        def failed(exc: BaseException) -> None:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                self.future.set_exception(exc)

        return WorkItem(apply, done, failed, urgent=True)

    def cancel(self) -> None:
        with self._lock:
            if self._state == "waiting":
                self._state = "cancelled"


def _settled(apply: Callable[[Any], Any], settle: Settle | None) -> WorkItem:
    """A writer item that settles its report: settle(True) after the COMMIT, else (False, why)."""
    if settle is None:
        return WorkItem(apply)
    return WorkItem(apply, lambda _: settle(True), lambda exc: settle(False, f"not stored: {exc}"))
