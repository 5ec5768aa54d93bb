"""The aggregator daemon: receives agent streams over ZeroMQ and the head-node hooks' reports
(files in the reports directory, or HTTP), stores them through the one writer, acknowledges
envelopes after their COMMIT, reconciles ended jobs with sacct and tracks node liveness.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import json
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from models import features, rightsize
from nomade_common import wire
from nomade_common.collect import Reading, Scheduler
from nomade_common.config import Config
from nomade_common.reportdir import ReportDir
from nomade_common.text import printable

from . import api, importer, liveness
from . import jobs as jobfields
from .agentauth import INSECURE_WARNING, AgentAuth, HandshakeWatch
from .headcollect import HEAD_COLLECTORS
from .ingest import Ingest, store_collector_status, store_reading
from .parsers import scontrol, slurmvalues
from .queue import QueueSnapshots
from .reconcile import Reconciler, run_command
from .scontroljobs import ScontrolJobs
from .scoring import Scorer, pack, unpack
from .store import WorkItem, Writer, connect, event

log = logging.getLogger("nomade.aggregator")
REPORTS_POLL_SECONDS = 0.02  # how often the reports directory is looked at
# Hook report fields are cut to these lengths (others to 1,024 characters).
MAX_FIELD_CHARS = {"work_dir": 4096, "node_list": 65536}
MAX_JOB_ID = (1 << 63) - 1
FAILING_BACKLOG = 20_000  # items queued for a failing store past which agents' messages wait
MAX_BACKLOG = 200_000  # items queued, store failing or not
MAX_BACKLOG_BYTES = 512 << 20  # agents' message bytes queued
LATE_REPORT_SECONDS = 60.0  # a start report older than this was kept while the aggregator was down
Settle = Callable[..., None]  # settle(True) once a report is stored, settle(False, why) if not
Peer = tuple[int, bytes]  # (index of the agent socket, ZeroMQ routing id)
BIND_RETRY_SECONDS = 5.0  # a rebound port the old socket has not quite released yet
Later = Callable[..., None]  # later(fn, *args): run fn(*args) once the HTTP answer is sent


class Aggregator:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        a = cfg.aggregator
        self.writer = Writer(cfg.database, max_wait=a.batch_max_seconds,
                             busy_timeout=a.store_busy_timeout_seconds,
                             synchronous=a.store_synchronous,
                             failing_exit_seconds=a.store_failing_exit_seconds)  # fmt: skip
        self.ingest = Ingest(cfg.general.cluster_name, a.reconcile_delay_seconds,
                             a.readings_history_seconds, a.sample_future_seconds,
                             a.sample_max_age_days * 86400)  # fmt: skip
        self.writer.on_rollback.append(self.ingest.rolled_back)
        self._readers = threading.local()
        self.queue = QueueSnapshots(
            cfg.aggregator.squeue, cfg.aggregator.queue_snapshot_max_age_seconds
        )
        self.reconciler = Reconciler(
            connect(cfg.database), self.writer, self.ingest, cfg.aggregator
        )
        # Replies wait here as ((socket index, routing id), data): index 0 is aggregator.listen
        # (CURVE unless security.curve is "off"), 1 the plain rollout socket.
        self._acks: collections.deque[tuple[Peer, bytes]] = collections.deque()
        self._zctx = zmq.Context()  # its own: the ZAP handler answers for these sockets alone
        self.auth: AgentAuth | None = None
        self._socks: list[zmq.Socket] = []
        self._watch: HandshakeWatch | None = None
        # The writer thread wakes the ZeroMQ loop through this pipe when it queues replies, so an
        # acknowledgement leaves as soon as its COMMIT is done, not at the loop's next timeout.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._zmq_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._idents: dict[str, Peer] = {}  # node -> where its agent is (admitted messages only)
        self.deferred = 0  # agents' messages not taken while the store failed (sent again)
        self.started = time.time()
        self.cluster_nodes = 0  # nodes in Slurm's newest node_state reading (0: not known yet)
        self.scorer = Scorer(cfg.database, cfg.models.warn_threshold, cfg.models.advice)
        self.scoring_failures = 0
        self._retraining: subprocess.Popen | None = None
        # Job starts are processed off the HTTP thread, two at a time, in arrival order per worker.
        self._starts = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="start")
        self.scontrol_jobs = ScontrolJobs(self._scontrol_job)  # one call per job array burst
        self._reports_taken: set[str] = set()  # reports handed on and not yet stored
        self.reconciler.on_final = self._job_ended
        self.http: api.HttpServer | None = None
        self.head = socket.gethostname().split(".")[0]
        self.collectors = Scheduler(cfg, HEAD_COLLECTORS, self._store_reading)

    def runtime(self) -> dict[str, Any]:
        """What only the running aggregator knows: whether its store takes writes (since when
        it fails, and why), what waits for the writer, messages deferred meanwhile."""
        return {"answering": True, "store": self.writer.health(), "deferred_messages": self.deferred,
                "started": self.started, "cluster_nodes": self.cluster_nodes}  # fmt: skip

    def reader(self):
        """A read connection of this thread's own (SQLite connections are not shared)."""
        conn = getattr(self._readers, "conn", None)
        if conn is None:
            conn = self._readers.conn = connect(self.cfg.database)
        return conn

    # -- ZeroMQ -------------------------------------------------------------------------------
    def _receive(self, peer: Peer, frames: list[Any]) -> None:
        """One message from an agent, handed to the writer as it came.  The writer decodes it,
        so this thread only moves bytes and sends acknowledgements and verdicts without waiting
        behind a backlog of decoding; and the thousand-odd objects of a samples envelope are
        made, bound and freed by one thread (4 to 9% more samples/s in bench/ingest.py).

        Every envelope whose key can be read is answered: ACK after its COMMIT, NACK with the
        reason when it can never be stored, REFUSED when its sender's key is not enrolled for
        the node it names (over CURVE the frame carries that node, User-Id).  A store that is
        failing answers nothing until it is written, and, while its backlog is long, takes no
        more: the agents keep what is unanswered and send it again."""
        ident = peer[1]
        if len(frames) != 1:
            why = f"expected one frame, got {len(frames)}"
            self.writer.submit(WorkItem(lambda c: self.ingest.note_bad(c, ident.hex(), why, time.time())))
            return
        frame = frames[0]
        data = frame.bytes if isinstance(frame, zmq.Frame) else frame
        # Bounded work in waiting: past these, messages are not taken (nor answered) and the
        # agents send them again; their outboxes, not this process's memory, hold the backlog.
        backlog = self.writer.backlog()
        if (backlog > MAX_BACKLOG or self.writer.queued_bytes > MAX_BACKLOG_BYTES
                or (self.writer.failing_since is not None and backlog > FAILING_BACKLOG)):  # fmt: skip
            self.deferred += 1
            return
        auth = self.auth if peer[0] == 0 or self.cfg.security.curve == "rollout" else None
        admit = None
        if auth is not None:
            user_id = frame.get("User-Id") if peer[0] == 0 else None
            address = _address(frame)

            def admit(c: sqlite3.Connection, env: wire.Envelope) -> bool:
                return auth.admit(c, env.node, user_id, address)

        def apply(c: sqlite3.Connection) -> Any:
            answer = self.ingest.take(c, data, admit=admit, peer=ident.hex())
            if answer.env is not None and answer.kind in ("ack", "live"):
                self._idents[answer.env.node] = peer
            return answer

        self.writer.submit(WorkItem(apply, lambda answer: self._answer(peer, answer), atomic=True,
                                    size=len(data)))  # fmt: skip

    def _answer(self, peer: Peer, answer: Any) -> None:
        """After the COMMIT: the reply ANSWER calls for (a heartbeat's is none)."""
        if answer.key is None or answer.kind in ("live", "drop"):
            return
        node, epoch, seq = answer.key
        if answer.kind == "ack":
            reply = wire.ack(node, epoch, seq)
        elif answer.kind == "refused":
            reply = wire.refused(node, epoch, seq, answer.reason)
        else:
            reply = wire.nack(node, epoch, seq, answer.reason)
        self._acks.append((peer, reply))
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full: the loop has been woken already

    def _bind(self) -> list[zmq.Socket]:
        """The agent sockets: aggregator.listen (CURVE unless security.curve is "off") and, in
        rollout, the plain security.plain_listen."""
        sec = self.cfg.security
        if sec.curve == "off":
            log.warning(INSECURE_WARNING, self.cfg.aggregator.listen)
            return [self._socket(self.cfg.aggregator.listen, curve=False)]
        if self.auth is None:
            self.auth = AgentAuth(self.cfg, self._zctx, self.writer)  # the server key, or fails
            self.writer.on_rollback.append(self.auth.rolled_back)
        socks = [self._socket(self.cfg.aggregator.listen, curve=True)]
        if sec.curve == "rollout":
            socks.append(self._socket(sec.plain_listen, curve=False))
        return socks

    def _socket(self, address: str, *, curve: bool) -> zmq.Socket:
        sock = self._zctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # A larger message closes its connection before it is read into memory.
        sock.setsockopt(zmq.MAXMSGSIZE, self.cfg.aggregator.max_message_bytes)
        if curve and self.auth is not None:
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.setsockopt(zmq.CURVE_SECRETKEY, self.auth.secret)
            sock.setsockopt(zmq.ZAP_DOMAIN, b"nomade")
            sock.setsockopt(zmq.HANDSHAKE_IVL, 5000)  # a refused peer is left, then closed
            if self._watch is not None:
                self._watch.close()
            self._watch = HandshakeWatch(sock, self.auth.refusals)
        deadline = time.monotonic() + BIND_RETRY_SECONDS
        while True:
            try:
                sock.bind(address)
                return sock
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                    sock.close(0)
                    raise
                time.sleep(0.05)

    def _rebind(self, poller: zmq.Poller) -> None:
        """Drop every CURVE connection (a key was revoked, the server key changed): a new
        socket, so that each agent must pass the handshake again with the current keys."""
        assert self.auth is not None
        self.auth.rebind.clear()
        old = self._socks[0]
        poller.unregister(old)
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        old.close(0)
        self._acks = collections.deque(a for a in self._acks if a[0][0] != 0)
        self._socks[0] = self._socket(self.cfg.aggregator.listen, curve=True)
        poller.register(self._socks[0], zmq.POLLIN)

    def _zmq_loop(self, socks: list[zmq.Socket]) -> None:
        self._socks = socks
        poller = zmq.Poller()
        for sock in socks:
            poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(5 if self._acks or self.writer.q.qsize() else 100))
                if self._wake_r in events:
                    try:
                        os.read(self._wake_r, 65536)
                    except BlockingIOError:
                        pass
                for i, sock in enumerate(self._socks):
                    if sock in events:
                        self._drain(i, sock)
                self._send_replies()
                if self.auth is not None and self._watch is not None:
                    self._watch.read()
                if self.auth is not None and self.auth.rebind.is_set():
                    self._rebind(poller)
        finally:
            if self._watch is not None:
                self._watch.close()
            for sock in self._socks:
                sock.close(0)
            if self.auth is not None:
                self.auth.stop()

    def _drain(self, index: int, sock: zmq.Socket) -> None:
        copy = self.auth is None  # else frames with metadata: User-Id (CURVE), Peer-Address
        for _ in range(1000):
            try:
                ident, *frames = sock.recv_multipart(zmq.NOBLOCK, copy=copy)
            except zmq.Again:
                return
            self._receive((index, ident.bytes if isinstance(ident, zmq.Frame) else ident), frames)

    def _send_replies(self) -> None:
        while self._acks:
            (index, ident), data = self._acks.popleft()
            try:
                self._socks[index].send_multipart([ident, data], zmq.NOBLOCK)
            except (zmq.ZMQError, IndexError):
                pass  # the agent is gone; it resends and we acknowledge again

    # -- periodic work ------------------------------------------------------------------------
    def _job_ended(self, uid: int, job_id: int, final: dict[str, Any]) -> None:
        """A job's outcome is known: it may now be a neighbour of the jobs that start after it."""
        row = self.reader().execute("SELECT vector FROM job_features WHERE job_uid = ? AND feature_version = ?",
                                    (uid, features.FEATURE_VERSION)).fetchone()  # fmt: skip
        if row is not None and final.get("end_time") is not None:
            self.scorer.add_ended(job_id, final["end_time"], final["outcome"], unpack(row[0]))

    # -- head-node collectors ---------------------------------------------------------------
    def _store_reading(self, r: Reading) -> None:
        """A head collector's run: its records (finished jobs go to `jobs`), and the status of
        every collector, written through the writer like everything else."""
        status = self.collectors.snapshot()
        history = self.cfg.aggregator.readings_history_seconds

        def apply(c):
            if r.ok and r.collector == "job_history":
                counts = importer.store_jobs(c, self.ingest, r.records, time.time())
                store_reading(c, self.head, r.collector, r.t, r.seconds, [dict(counts)], history)
            elif r.ok:
                store_reading(c, self.head, r.collector, r.t, r.seconds, r.records, history)
            store_collector_status(c, self.head, "head", status, time.time())

        self.writer.submit(WorkItem(apply))

    def _collect(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self.collectors.run_due()
            except Exception:
                log.exception("head-node collectors failed; continuing")
                wait = 5.0
            self._stop.wait(min(wait, 5.0))

    def _prune_readings(self) -> None:
        cutoff = time.time() - self.cfg.aggregator.readings_retention_days * 86400
        self.writer.submit(WorkItem(lambda c: c.execute("DELETE FROM readings WHERE t < ?", (cutoff,))))

    def _housekeeping(self) -> None:
        ticks = 0
        while not self._stop.wait(1.0):
            try:
                if ticks % 5 == 0:
                    self.scorer.reload()
                if ticks % 60 == 0:
                    self._maybe_retrain()
                    self._count_cluster_nodes()
                if ticks % 3600 == 0:
                    self._prune_readings()
                ticks += 1
                self._liveness()
                if self.writer.failing_since is None:  # else its writes would only queue up
                    self.reconciler.run_once()
            except Exception:
                log.exception("housekeeping failed; continuing")

    def _maybe_retrain(self) -> None:
        """Retrain on schedule (models.retrain_interval_hours), in a separate process (torch stays
        out of the aggregator); the new model is activated only if it is not worse."""
        hours = self.cfg.models.retrain_interval_hours
        if hours <= 0 or (self._retraining is not None and self._retraining.poll() is None):
            return
        last = self.reader().execute("SELECT max(created) FROM models").fetchone()[0]
        if last is not None and time.time() - last < hours * 3600:
            return
        ended = (
            self.reader()
            .execute("SELECT count(*) FROM jobs WHERE outcome IS NOT NULL")
            .fetchone()[0]
        )
        # Below this, the most recent 20% (the part that decides activation) cannot hold the 200
        # jobs the activation rule asks for (models.evaluate.too_little): a model trained now
        # could never be activated, and one would be registered every interval.
        if ended < 1000:
            return
        ctl = Path(sys.executable).parent / "nomadectl"
        log_path = Path(self.cfg.general.data_dir) / "retrain.log"
        log.info("retraining on schedule (every %.1f h); log %s", hours, log_path)
        with open(log_path, "ab") as out:
            self._retraining = subprocess.Popen(
                [str(ctl), "--config", self.cfg.path, "train", "--activate", "if-better"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip

    def _liveness(self) -> None:
        rows = self.reader().execute("SELECT node, last_seen, state FROM nodes").fetchall()
        nodes = [liveness.NodeLife(r[0], r[1], r[2]) for r in rows]
        new, events = liveness.tick(nodes, time.time(), self.cfg.aggregator.node_down_seconds)
        if not events:
            return

        def apply(c):
            for n in new:
                c.execute("UPDATE nodes SET state = ? WHERE node = ?", (n.state, n.node))
            for node, kind in events:
                event(c, kind, node=node)

        self.writer.submit(WorkItem(apply))
        for node, kind in events:
            log.warning("%s: %s", node, kind.replace("_", " "))

    # -- hooks over HTTP ----------------------------------------------------------------------
    def hook_job_start(self, body: dict[str, Any], settle: Settle | None = None,
                       later: Later | None = None) -> dict[str, Any]:  # fmt: skip
        """PrologSlurmctld's report from the reports directory (whose file is its durable copy
        until SETTLE(True) follows the COMMIT that stored it; SETTLE(False, why) a failure):
        completed from `scontrol show job`, scored, stored and sent to the job's nodes by the
        start worker.  Over HTTP see receive_report: LATER(fn, *args) runs the work once the
        answer is sent, since work begun before would hold the GIL while the answer waits."""
        fields, t = self.report_fields(body)
        (later or _now)(self._starts.submit, self._job_started, fields, body.get("scontrol"), t,
                        settle)  # fmt: skip
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

            def store(c: sqlite3.Connection) -> Any:
                return self.ingest.upsert_job(c, fields, now)

            def after() -> None:
                self._starts.submit(self._job_started, fields, body.get("scontrol"), t)
        else:
            fields["end_time"] = t
            delay = self.cfg.aggregator.reconcile_delay_seconds

            def store(c: sqlite3.Connection) -> Any:
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
            raise ValueError(f"no job id from 0 to {MAX_JOB_ID} (SLURM_JOB_ID) in the hook's report")
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

    def node_limit(self) -> int:
        """The most nodes a job's node list may name: aggregator.max_job_nodes, or the number
        of nodes Slurm reported (the node_state collector) when that is smaller."""
        cap = self.cfg.aggregator.max_job_nodes
        return min(cap, self.cluster_nodes) if self.cluster_nodes else cap

    def _count_cluster_nodes(self) -> None:
        row = self.reader().execute(
            "SELECT records_json FROM readings_latest WHERE collector = 'node_state' ORDER BY t DESC LIMIT 1"
        ).fetchone()
        try:
            self.cluster_nodes = len(json.loads(row[0])) if row else 0
        except ValueError:
            self.cluster_nodes = 0

    def _job_started(self, fields: dict[str, Any], text: Any, t: float | None,
                     settle: Settle | None = None) -> None:  # fmt: skip
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
            vector, verdict, advice = self._score(fields)
            # Stored through the writer without waiting (heavy ingest must not delay a start).
            self.writer.submit(_settled(lambda c: self.ingest.job_start(
                c, fields, snapshot, now, vector, features.FEATURE_VERSION, verdict, advice), settle))  # fmt: skip
            # Every start gets a verdict message, even without a model: TaskProlog waits for it.
            if not late:
                self._push_verdict(fields, verdict, advice)
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

    def _score(self, fields: dict[str, Any]) -> tuple[bytes | None, dict[str, Any] | None, dict[str, Any] | None]:
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
        advice = {**rightsize.as_json(found.advice), "printed": [ln for ln in lines if ln in offered],
                  "lines": lines if advised else []}  # fmt: skip
        return pack(found.x), found.verdict, advice

    def _push_verdict(self, fields: dict[str, Any], verdict: dict[str, Any] | None,
                      advice: dict[str, Any] | None = None) -> None:  # fmt: skip
        """The verdict message to the job's nodes; ADVICE's lines (advice for a job that was not
        warned, under models.advice = "always") are printed too ("advised")."""
        keys = ("warned", "p_fail", "lines", "model_version")
        payload = {k: verdict[k] for k in keys} if verdict else {"warned": False, "p_fail": None, "lines": [],
                                                                    "model_version": None}  # fmt: skip
        if advice and advice["lines"]:
            payload.update(lines=advice["lines"], advised=True)
        payload.update(job_id=fields["job_id"], user_id=fields.get("user_id"))
        try:
            nodes = slurmvalues.hostlist(fields.get("node_list"), self.node_limit())
        except ValueError as exc:
            log.warning("job %s: no verdict sent: %s", fields["job_id"], exc)
            return
        for node in nodes:
            ident = self._idents.get(node)
            if ident is not None:
                self._acks.append((ident, wire.Envelope(wire.VERDICT, node, 0, 0, payload).pack()))
        self._wake()

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
            raise ValueError(f"the request's fields are not what a job asks for ({type(exc).__name__}: "
                             f"{printable(str(exc), 120)})") from None  # fmt: skip
        # `nomadectl check` always gives the advice, whatever the site prints into jobs.
        return {"ok": True, "verdict": found.verdict, "model": self.scorer.version,
                "advice": rightsize.as_json(found.advice)}  # fmt: skip

    def hook_job_end(self, body: dict[str, Any], settle: Settle | None = None,
                     later: Later | None = None) -> dict[str, Any]:  # fmt: skip
        fields, t = self.report_fields(body)
        fields["end_time"] = t
        now = time.time()
        delay = self.cfg.aggregator.reconcile_delay_seconds
        # Stored asynchronously, like the start: the reports loop never waits for the writer.
        self.writer.submit(_settled(lambda c: self.ingest.job_end(c, fields, delay, now), settle))
        return {"ok": True}

    # -- hooks through the reports directory --------------------------------------------------
    def _reports_loop(self) -> None:
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
            log.warning("security.slurm_user %r is not a user here: only root's hook reports are "
                        "believed", self.cfg.security.slurm_user)  # fmt: skip
        return frozenset(u for u in (0, os.geteuid(), slurm) if u is not None)

    def take_reports(self, reports: ReportDir) -> int:
        """Hand every complete report in REPORTS to its handler; each file is removed once what
        it says is stored (a report read again after a crash is stored again, idempotently)."""
        taken = 0
        handlers = {"prologslurmctld": self.hook_job_start, "epilogslurmctld": self.hook_job_end}
        for path, body in reports.ready(skip=self._reports_taken):
            handler, env = handlers.get(body.get("kind")), body.get("env")
            if handler is None or not isinstance(env, dict):
                reports.set_aside(path, "expected kind prologslurmctld or epilogslurmctld and an env object")
                continue
            # A job's end waits while its start (named <µs>-<job>-prologslurmctld.json by the
            # hook) is still being scored, and is stored after it, at a later look.
            started = f"-{env.get('SLURM_JOB_ID', '')}-prologslurmctld.json"
            if body["kind"] == "epilogslurmctld" and any(n.endswith(started) for n in list(self._reports_taken)):
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

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self.http = api.HttpServer(self)  # a port in use or no TLS off loopback fails here
            socks = self._bind()  # bind first: a port in use or a missing key fails start-up
        except BaseException:
            if self.http is not None:
                self.http.sock.close()
            self._close_sockets()
            raise
        self.writer.start()
        self._zmq_thread = threading.Thread(
            target=self._zmq_loop, args=(socks,), name="zmq", daemon=True
        )
        self._zmq_thread.start()
        if self.auth is not None:
            self.auth.start()
        threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True).start()
        threading.Thread(target=self._collect, name="collectors", daemon=True).start()
        threading.Thread(target=self._reports_loop, name="reports", daemon=True).start()
        self.http.start()
        log.info("aggregator listening on %s (agents) and %s://%s (hooks, API); store %s",
                 self.cfg.aggregator.listen, self.http.scheme, self.cfg.aggregator.http_listen,
                 self.cfg.database)  # fmt: skip
        why = api.munged_answers(self.cfg.security.munge_socket)
        if why:
            log.warning("HTTP callers get 503 until munged answers: %s", why)

    def stop(self) -> None:
        self._stop.set()
        self._starts.shutdown(wait=False, cancel_futures=True)
        if self.http is not None:
            self.http.stop()
        self.writer.stop()
        self._close_wake_pipe()
        self._close_sockets()

    def _close_sockets(self) -> None:
        """Close the HTTP socket and the ZeroMQ context once no thread uses them: a context
        left to the garbage collector would wait in its destructor for sockets nobody closes."""
        threads = [t for t in (self._zmq_thread, self.auth) if t is not None and t.ident]
        if self.auth is not None:
            self.auth.stop()
        for t in threads:
            t.join(2.0)
        if not any(t.is_alive() for t in threads):
            if self.auth is not None and not self.auth.ident:
                self.auth.close()  # made, never started: its ZAP socket is still open
            self._zctx.destroy(linger=0)

    def _close_wake_pipe(self) -> None:
        """Close the pipe once neither the writer nor the ZeroMQ loop can touch it again."""
        users = [t for t in (self.writer, self._zmq_thread) if t is not None and t.ident]
        for t in users:
            t.join(1.0)
        if self._wake_w >= 0 and not any(t.is_alive() for t in users):
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1


def _now(fn: Callable[..., Any], *args: Any) -> None:
    fn(*args)


def _address(frame: Any) -> str:
    """The peer's IP address, where the frame carries it."""
    try:
        return str(frame.get("Peer-Address")) if isinstance(frame, zmq.Frame) else "?"
    except zmq.ZMQError:
        return "?"


class _Received:
    """A hook report over HTTP waiting for its COMMIT.  If its answer is due first (the store
    is slow or failing), the caller cancels it: the hook keeps the report and sends it again,
    and an item cancelled before the writer reached it is not stored twice."""

    def __init__(self) -> None:
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self._lock = threading.Lock()
        self._state = "waiting"

    def item(self, store: Callable[[sqlite3.Connection], Any]) -> WorkItem:
        def apply(c: sqlite3.Connection) -> Any:
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
