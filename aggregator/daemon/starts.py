"""Jobs at their start: completed from `scontrol show job`, scored (features, verdict, right-sizing
advice), stored, and the verdict sent to the agents of the job's nodes, which TaskProlog waits
for; two start workers, off the HTTP and reports threads.  Also the verdict `nomadectl check`
asks for, and the ended jobs the scorer learns from.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable
from typing import Any

from aggregator.daemon.agents import Agents
from aggregator.daemon.queue import QueueSnapshots
from aggregator.daemon.reports import Settle, _settled
from aggregator.daemon.scontroljobs import ScontrolJobs
from aggregator.jobs import fields as jobfields
from aggregator.jobs.reconcile import run_command
from aggregator.predict.scoring import Scorer, pack, unpack
from aggregator.store import Ingest, Writer, job_vector
from collectors.slurm import scontrol, slurmvalues
from models import features, rightsize
from nomade_common import wire
from nomade_common.config import Config
from nomade_common.text import printable

log = logging.getLogger("nomade.aggregator")
LATE_REPORT_SECONDS = 60.0  # a start report older than this was kept while the aggregator was down


class Starts:
    """The start workers (threads "start_N").  READER() is a read connection of the calling
    thread's own; NODE_LIMIT() the most nodes a job's node list may name."""

    def __init__(
        self,
        cfg: Config,
        writer: Writer,
        ingest: Ingest,
        reader: Callable[[], Any],
        queue: QueueSnapshots,
        scorer: Scorer,
        agents: Agents,
        node_limit: Callable[[], int],
    ) -> None:
        self.cfg = cfg
        self.writer = writer
        self.ingest = ingest
        self.reader = reader
        self.queue = queue
        self.scorer = scorer
        self.agents = agents
        self.node_limit = node_limit
        self.scoring_failures = 0
        # Job starts are processed off the HTTP thread, two at a time, in arrival order per worker.
        self._starts = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="start")
        self.scontrol_jobs = ScontrolJobs(self._scontrol_job)  # one call per job array burst

    def submit(
        self, fields: dict[str, Any], text: Any, t: float | None, settle: Settle | None = None
    ) -> None:
        """The start of a job whose report is FIELDS (TEXT: its `scontrol show job -o` line,
        if the hook sent one) to a start worker."""
        self._starts.submit(self.job_started, fields, text, t, settle)

    def shutdown(self) -> None:
        self._starts.shutdown(wait=False, cancel_futures=True)

    def job_started(
        self, fields: dict[str, Any], text: Any, t: float | None, settle: Settle | None = None
    ) -> None:
        try:
            if not isinstance(text, str) or not text.strip():
                text = self.scontrol_jobs.text(
                    fields["job_id"], fields.get("array_job_id"), fields.get("array_task_id")
                )
            recs = scontrol.parse(text, "scontrol show job") if text else []
            if recs:
                # What slurmctld put in the hook's environment (the job's id, user, nodes...)
                # wins: `scontrol show job -o` is one line of KEY=VALUE in which a user's own
                # job name, comment or directory can print a "NodeList=" or "UserId=" of its own.
                asked = jobfields.request_from_scontrol(recs[0])
                fields = jobfields.merge(asked, fields)
                if slurmvalues.hostlist_size(fields.get("node_list")) > self.node_limit():
                    raise ValueError(f"node list names more than {self.node_limit()} nodes")
            fields["start_time"] = fields.get("start_time") or t
            now = time.time()
            # A report taken long after the job started (the aggregator was down) gets no queue
            # snapshot, since today's queue is not the one it met, and no verdict is sent: its
            # TaskProlog has run long since.
            late = isinstance(t, (int, float)) and now - t > LATE_REPORT_SECONDS
            snapshot = None if late else self.queue.get()
            vector, verdict, advice = self.score(fields)
            # Stored through the writer without waiting (heavy ingest must not delay a start).
            self.writer.submit(
                _settled(
                    lambda c: self.ingest.job_start(
                        c, fields, snapshot, now, vector, features.FEATURE_VERSION, verdict, advice
                    ),
                    settle,
                )
            )
            # Every start gets a verdict message, even without a model: TaskProlog waits for it.
            if not late:
                self.push_verdict(fields, verdict, advice)
        except Exception as exc:
            log.exception("job %s: start report not processed", fields.get("job_id"))
            if settle is not None:
                settle(False, f"not processed: {type(exc).__name__}")

    def _scontrol_job(self, job_id: int) -> str | None:
        try:
            return run_command(
                [self.cfg.aggregator.scontrol, "show", "job", "-o", str(job_id)], 10.0
            )
        except (OSError, RuntimeError) as exc:
            log.warning(
                "job %s: scontrol show job failed (%s); its request stays incomplete", job_id, exc
            )
            return None

    def score(
        self, fields: dict[str, Any]
    ) -> tuple[bytes | None, dict[str, Any] | None, dict[str, Any] | None]:
        """Features, verdict and right-sizing advice of a starting job; any failure means "no
        verdict", never an error.  The verdict's lines become those printed into the job's output
        under the site's `models.advice`; ADVICE records what was advised and what was printed."""
        job = dict(fields)
        job["submit_time"] = job.get("submit_time") or job.get("start_time") or time.time()
        try:
            found = self.scorer.examine(job)
        except Exception:
            log.exception(
                "scoring job %s failed; it starts without a verdict", fields.get("job_id")
            )
            self.scoring_failures += 1
            return None, None, None
        lines, advised = found.lines(self.cfg.models.advice)
        if found.verdict is not None:
            found.verdict["lines"] = lines
        offered = set(rightsize.lines(found.advice, only_actionable=False))
        advice = {
            **rightsize.as_json(found.advice),
            "printed": [ln for ln in lines if ln in offered],
            "lines": lines if advised else [],
        }
        return pack(found.x), found.verdict, advice

    def push_verdict(
        self,
        fields: dict[str, Any],
        verdict: dict[str, Any] | None,
        advice: dict[str, Any] | None = None,
    ) -> None:
        """The verdict message to the job's nodes; ADVICE's lines (advice for a job that was not
        warned, under models.advice = "always") are printed too ("advised")."""
        keys = ("warned", "p_fail", "lines", "model_version")
        payload = (
            {k: verdict[k] for k in keys}
            if verdict
            else {"warned": False, "p_fail": None, "lines": [], "model_version": None}
        )
        if advice and advice["lines"]:
            payload.update(lines=advice["lines"], advised=True)
        payload.update(job_id=fields["job_id"], user_id=fields.get("user_id"))
        try:
            nodes = slurmvalues.hostlist(fields.get("node_list"), self.node_limit())
        except ValueError as exc:
            log.warning("job %s: no verdict sent: %s", fields["job_id"], exc)
            return
        self.agents.push(
            nodes, lambda node: wire.Envelope(wire.VERDICT, node, 0, 0, payload).pack()
        )

    def check(self, body: dict[str, Any]) -> dict[str, Any]:
        """`nomadectl check`: the verdict a job with this request would get now."""
        job = dict(body.get("request") or {})
        if not job.get("user"):
            raise ValueError("the request names no user")
        now = time.time()
        job.update(job_id=job.get("job_id") or 0, submit_time=now, start_time=now)
        try:
            found = self.scorer.examine(job)
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
            raise ValueError(
                f"the request's fields are not what a job asks for ({type(exc).__name__}: "
                f"{printable(str(exc), 120)})"
            ) from None
        # `nomadectl check` always gives the advice, whatever the site prints into jobs.
        return {
            "ok": True,
            "verdict": found.verdict,
            "model": self.scorer.version,
            "advice": rightsize.as_json(found.advice),
        }

    def job_ended(self, uid: int, job_id: int, final: dict[str, Any]) -> None:
        """A job's outcome is known: it may now be a neighbour of the jobs that start after it."""
        vector = job_vector(self.reader(), uid, features.FEATURE_VERSION)
        if vector is not None and final.get("end_time") is not None:
            self.scorer.add_ended(job_id, final["end_time"], final["outcome"], unpack(vector))
