"""The node agent: samples every running job, takes job start/end from the hooks' spool files,
and streams envelopes to the aggregator through a durable outbox.

One thread, one loop: a ZeroMQ DEALER socket, polled with a timeout that is the time to the next
piece of due work.  ZeroMQ reconnects with backoff by itself; unacknowledged envelopes are sent
again after `resend_seconds`, so delivery survives restarts of either side.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import socket
import time
from pathlib import Path
from typing import Any

import zmq

from nomade_common import wire
from nomade_common.collect import CollectorThread, Reading
from nomade_common.config import Config
from nomade_common.reportdir import ReportDir

from .node_collectors import NODE_COLLECTORS
from .outbox import Outbox
from .sampler import JobSampler

log = logging.getLogger("nomade.agent")
VERSION = "0.1.0"
INBOX_POLL_SECONDS = 0.2
WINDOW = 256  # envelopes in flight at once


def _write_private(directory: Path, name: str, text: str, uid: int) -> None:
    """Write NAME readable only by UID (mode 0400), renamed into place."""
    directory.mkdir(mode=0o755, exist_ok=True)
    tmp = directory / f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    if uid and os.geteuid() == 0:
        os.chown(tmp, uid, -1)
    os.replace(tmp, directory / name)


def check_job_report(data: dict[str, Any]) -> dict[str, Any]:
    """A node hook's report: 'event' start or end and an integer 'job_id' (ValueError if not)."""
    if data.get("event") not in ("start", "end"):
        raise ValueError("expected a JSON object with event 'start' or 'end'")
    if not isinstance(data.get("job_id"), int):
        raise ValueError("expected an integer job_id")
    return data


def _make_wait_fifo(path: Path) -> None:
    """The FIFO TaskProlog waits on (a read with a timeout: a sleep that starts no process).
    Every job's user opens it read-write, so it is mode 0666; nobody ever writes to it."""
    try:
        if not path.is_fifo():
            path.unlink(missing_ok=True)
            os.mkfifo(path)
        os.chmod(path, 0o666)
    except OSError as exc:
        log.warning("cannot make %s (%s): TaskProlog waits with sleep instead", path, exc)


class Agent:
    def __init__(self, cfg: Config, node: str | None = None, ledger: str | None = None) -> None:
        a = cfg.agent
        self.cfg, self.node = cfg, node or a.node_name()
        self.spool = Path(a.spool_dir) / self.node
        self.inbox = self.spool / "inbox"
        self.inbox.mkdir(parents=True, exist_ok=True, mode=0o755)
        self.inbox_reports = ReportDir(self.inbox)
        self.verdicts = self.spool / "verdicts"
        _make_wait_fifo(self.spool / "wait")
        self.outbox = Outbox(str(self.spool / "outbox.db"), a.outbox_max_envelopes)
        self.sampler = JobSampler(self.node, a.cgroup_root, a.proc_root)
        self.ledger = open(ledger, "a", encoding="utf-8") if ledger else None  # noqa: SIM115
        self.inflight: dict[int, float] = {}
        self.sock: zmq.Socket | None = None
        self._stop = False
        self._followups: dict[int, float] = {}
        self.collectors = CollectorThread(cfg, NODE_COLLECTORS)
        self._first_sent: dict[int, float] = {}  # seq -> when it was first due to be sent
        self._status_sent: dict[str, list[Any]] | None = None
        self._status_sent_at = 0.0
        self.job_uids: dict[int, int] = {}  # from the Prolog's reports, where cgroup paths have none

    # -- transport ----------------------------------------------------------------------------
    def connect(self) -> None:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        for opt, value in ((zmq.LINGER, 0), (zmq.IMMEDIATE, 1), (zmq.SNDHWM, 1000),
                           (zmq.RECONNECT_IVL, 200), (zmq.RECONNECT_IVL_MAX, 5000)):  # fmt: skip
            sock.setsockopt(opt, value)
        sock.connect(self.cfg.agent.aggregator)
        self.sock = sock

    def _send(self, data: bytes) -> bool:
        try:
            self.sock.send(data, zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def pump(self, now: float) -> None:
        """Send what the aggregator has not acknowledged: new envelopes and overdue ones."""
        resend = self.cfg.agent.resend_seconds
        for seq, mtype, payload in self.outbox.pending(limit=WINDOW):
            self._first_sent.setdefault(seq, now)  # when it was first due: unsent counts too
            sent = self.inflight.get(seq)
            if sent is not None and now - sent < resend:
                continue
            if not self._send(wire.pack_stored(mtype, self.node, self.outbox.epoch, seq, payload)):
                return  # not connected: try again on the next pump
            self.inflight[seq] = now

    def receive(self) -> None:
        while True:
            try:
                data = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                env = wire.unpack(data)
            except wire.WireError as exc:
                log.warning("ignored a reply from %s: %s", self.cfg.agent.aggregator, exc)
                continue
            if env.type == wire.VERDICT:
                self.keep_verdict(env.payload)
                continue
            if env.type in (wire.ACK, wire.NACK) and env.epoch == self.outbox.epoch:
                if env.type == wire.NACK:
                    log.error(
                        "aggregator rejected envelope %d: %s", env.seq, env.payload.get("reason")
                    )
                self.outbox.ack(env.seq)
                self.inflight.pop(env.seq, None)
                self._first_sent.pop(env.seq, None)

    def keep_verdict(self, payload: Any) -> None:
        """A starting job's verdict: kept for TaskProlog, and when the job is warned, its lines in
        a file only the job's user can read (both renamed into place; removed at the Epilog's
        report, see forget_verdict)."""
        if not isinstance(payload, dict) or not isinstance(payload.get("job_id"), int):
            log.warning("ignored a verdict without a job id from %s", self.cfg.agent.aggregator)
            return
        job, uid = payload["job_id"], payload.get("user_id")
        lines = payload.get("lines") if payload.get("warned") else None
        if lines and isinstance(uid, int):
            text = "".join(str(line).replace("\n", " ") + "\n" for line in lines[:6])
            _write_private(self.spool / "jobs", str(job), text, uid)
        _write_private(self.verdicts, f"{job}.json", json.dumps(payload), 0)

    def forget_verdict(self, job: int) -> None:
        """The job has ended: its verdict and warning lines go (done here, not by the Epilog,
        which would need a process for it)."""
        for path in (self.verdicts / f"{job}.json", self.spool / "jobs" / str(job)):
            path.unlink(missing_ok=True)

    def sweep_verdicts(self, now: float, max_age: float = 86400.0) -> None:
        """Verdicts of jobs whose Epilog never came (a crashed node) are removed after a day."""
        for path in [*self.verdicts.glob("*.json"), *(self.spool / "jobs").glob("*")]:
            try:
                if now - path.stat().st_mtime > max_age:
                    path.unlink()
            except OSError:
                pass

    # -- work ---------------------------------------------------------------------------------
    def enqueue(self, mtype: str, payload: Any) -> int:
        return self.outbox.put(mtype, wire.pack_payload(payload))

    def sample(self, only: list[int] | None = None) -> int:
        rows = self.sampler.sample(only)
        owners = self.sampler.job_owners()
        self.collectors.scheduler.shared["running"] = {
            job: uid if uid is not None else self.job_uids.get(job) for job, uid in owners.items()}  # fmt: skip
        for problem in self.sampler.problems():
            log.warning("%s", problem)
        if not rows:
            return 0
        self.enqueue(wire.SAMPLES, {"rows": [[r[f] for f in wire.SAMPLE_FIELDS] for r in rows]})
        if self.ledger is not None:
            self.ledger.writelines(f"{r['job_id']} {r['t']!r}\n" for r in rows)
            self.ledger.flush()
        return len(rows)

    def drain_readings(self) -> int:
        """Move what the collector thread read into the outbox (durable, sent like samples)."""
        n = 0
        while True:
            try:
                r: Reading = self.collectors.readings.get_nowait()
            except queue.Empty:
                return n
            if r.ok:
                self.enqueue(wire.READINGS, {"collector": r.collector, "t": r.t,
                                             "seconds": round(r.seconds, 4), "records": r.records})  # fmt: skip
                n += 1

    def mark_offline(self, now: float) -> bool:
        """Whether the aggregator has acknowledged nothing due over 3 resend intervals ago; kept
        as the spool file `offline`, so that TaskProlog does not wait for a verdict that cannot
        come (every job start would pay that wait while the aggregator is down)."""
        oldest = min(self._first_sent.values(), default=now)
        offline = now - oldest > 3 * self.cfg.agent.resend_seconds
        marker = self.spool / "offline"
        try:
            if offline and not marker.exists():
                marker.touch(mode=0o644)
                log.warning("aggregator %s acknowledges nothing: job starts get no verdict", self.cfg.agent.aggregator)
            elif not offline and marker.exists():
                marker.unlink()
                log.info("aggregator %s answers again", self.cfg.agent.aggregator)
        except OSError:
            pass
        return offline

    def heartbeat(self, now: float) -> None:
        payload = {"t": now, "jobs": sorted(self.sampler.running_jobs()),
                   "outbox_depth": self.outbox.depth(), "dropped": self.outbox.dropped()}  # fmt: skip
        # The collectors' status only when it changed, or once a minute (an aggregator that
        # restarted learns it again): 1,000 nodes beating every 5 s must not each rewrite it.
        status = self.collectors.scheduler.snapshot()
        if status != self._status_sent or now - self._status_sent_at >= 60.0:
            payload["collectors"] = status
            self._status_sent, self._status_sent_at = status, now
        self._send(wire.Envelope(wire.HEARTBEAT, self.node, self.outbox.epoch, 0, payload).pack())

    def hello(self) -> None:
        payload = {"host": socket.gethostname(), "agent_version": VERSION,
                   "interval_seconds": self.cfg.agent.interval_seconds, "started": time.time()}  # fmt: skip
        self._send(wire.Envelope(wire.HELLO, self.node, self.outbox.epoch, 0, payload).pack())

    def read_inbox(self, now: float) -> None:
        for path, report in self.inbox_reports.ready():
            try:
                check_job_report(report)
            except ValueError as exc:
                self.inbox_reports.set_aside(path, str(exc))
                continue
            self.enqueue(wire.JOB_EVENT, report)
            if report["event"] == "start" and str(report.get("uid", "")).isdigit():
                self.job_uids[report["job_id"]] = int(report["uid"])
            elif report["event"] == "end":
                self.job_uids.pop(report["job_id"], None)
                self.forget_verdict(report["job_id"])
            if report["event"] == "start":  # short jobs must not be missed
                self.sample([report["job_id"]])
                self._followups[report["job_id"]] = now + 1.0
            path.unlink(missing_ok=True)

    def run(self) -> None:
        self.connect()
        self.hello()
        self.collectors.start()
        interval, beat = self.cfg.agent.interval_seconds, self.cfg.agent.heartbeat_seconds
        now = time.monotonic()
        next_sample, next_beat, next_inbox = now, now, now
        log.info("agent %s: sampling every %.1f s, sending to %s, spool %s",
                 self.node, interval, self.cfg.agent.aggregator, self.spool)  # fmt: skip
        while not self._stop:
            now = time.monotonic()
            if now >= next_inbox:
                self.read_inbox(now)
                next_inbox = now + INBOX_POLL_SECONDS
            due = [j for j, t in self._followups.items() if t <= now]
            if due:
                self.sample(due)
                for j in due:
                    del self._followups[j]
            if now >= next_sample:
                self.sample()
                next_sample += interval
                if next_sample < now:  # we fell behind (suspended host): do not burst
                    next_sample = now + interval
            if now >= next_beat:
                self.mark_offline(now)
                self.heartbeat(time.time())
                next_beat = now + beat
                if int(now) % 3600 < beat:
                    self.sweep_verdicts(time.time())
            self.drain_readings()
            self.pump(now)
            wait = min(next_inbox, next_sample, next_beat) - time.monotonic()
            if self.sock.poll(max(1, int(wait * 1000)), zmq.POLLIN):
                self.receive()

    def stop(self) -> None:
        self._stop = True
        self.collectors.stop()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(0)
        self.outbox.close()
        if self.ledger is not None:
            self.ledger.close()
