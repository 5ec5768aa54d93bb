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
import re
import socket
import stat
import time
from pathlib import Path
from typing import Any

import zmq

from collectors.registry import NODE_COLLECTORS
from collectors.runner import CollectorThread, Reading
from nomade_common import wire
from nomade_common.config import Config
from nomade_common.errors import ConfigError
from nomade_common.reportdir import ReportDir
from nomade_common.text import printable

from . import curvekeys
from .outbox import Outbox
from .sampler import JobSampler

log = logging.getLogger("nomade.agent")
VERSION = "0.1.0"
INBOX_POLL_SECONDS = 0.2
WINDOW = 256  # envelopes in flight at once
INSECURE_AGENT = (
    'security.curve = "off": this agent talks to whatever listens on %s without knowing it is '
    "the aggregator, and any process that reaches the aggregator can send data under any node "
    'name; enrol this node\'s key and set curve = "on" (docs/security.md)'
)


# The spool layout (docs/security.md).  <spool>/<node> and the places TaskProlog looks into are
# traversable but not listable (0711): TaskProlog runs as the job's user and only tests or opens
# a name it knows.  What only the agent and the root Prolog/Epilog use is 0700/0600.
SPOOL_DIR_MODES = {".": 0o711, "inbox": 0o700, "verdicts": 0o711, "jobs": 0o711, "wait": 0o711}
PRIVATE_FILE = 0o600  # outbox.db and its -wal/-shm, verdicts, a wait FIFO (for its one user)
WARNING_FILE = 0o400  # jobs/<job>: the job's user reads it, nobody writes it
_UID = re.compile(r"[0-9]{1,10}")
MAX_UID = 2**32 - 2
MAX_WARNING_LINE = 500


def _tighten(path: Path, mode: int) -> None:
    """Take from PATH any permission beyond MODE (as an older version may have left it)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode) or not stat.S_IMODE(st.st_mode) & ~mode:
        return
    os.chmod(path, stat.S_IMODE(st.st_mode) & mode)
    log.info("tightened %s to mode %o", path, stat.S_IMODE(st.st_mode) & mode)


def _make_dir(path: Path, mode: int) -> None:
    """PATH a directory of exactly MODE, whatever the umask; anything else of that name (the
    single wait FIFO of versions before 0.2) is replaced."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    path.mkdir(mode=mode, exist_ok=True)
    if stat.S_IMODE(os.stat(path).st_mode) != mode:
        os.chmod(path, mode)


def _make_spool_root(path: Path) -> None:
    """The spool directory: made 0711 if missing; an existing one must let job users through
    (TaskProlog), so a missing search permission is added, with a warning."""
    if not path.is_dir():
        path.mkdir(parents=True, mode=0o711)
        os.chmod(path, 0o711)
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o011 != 0o011:
        os.chmod(path, mode | 0o011)
        log.warning("made %s traversable by job users (TaskProlog), mode %o", path, mode | 0o011)


def _check_owned(path: Path) -> None:
    """PermissionError unless PATH is a real directory of this daemon's user that nobody else
    may write to: the agent runs as root, and would otherwise create, chmod and chown files
    where a user's links point (a spool under /tmp, or one a user made before the agent ran)."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        what = (
            "not a directory"
            if not stat.S_ISDIR(st.st_mode)
            else (f"owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}")
        )
        raise PermissionError(
            f"{path}: {what}; the agent works only in a spool that is its "
            f"own and nobody else may write to (chown root, chmod 711)"
        )


def _write_private(directory: Path, name: str, text: str, uid: int, mode: int) -> None:
    """Write NAME with MODE, owned by UID (as root), renamed into place."""
    _make_dir(directory, SPOOL_DIR_MODES[directory.name])
    tmp = directory / f".{name}.tmp"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), mode)  # exactly MODE, whatever the umask
        f.write(text)
        if uid and os.geteuid() == 0:
            os.fchown(f.fileno(), uid, -1)
    os.replace(tmp, directory / name)


def report_uid(report: dict[str, Any]) -> int | None:
    """The job's uid from a Prolog's report (a string of digits; None if absent or not one)."""
    text = str(report.get("uid", ""))
    return int(text) if _UID.fullmatch(text) and int(text) <= MAX_UID else None


def check_job_report(data: dict[str, Any]) -> dict[str, Any]:
    """A node hook's report: 'event' start or end and an integer 'job_id' (ValueError if not)."""
    if data.get("event") not in ("start", "end"):
        raise ValueError("expected a JSON object with event 'start' or 'end'")
    if not isinstance(data.get("job_id"), int):
        raise ValueError("expected an integer job_id")
    return data


def make_wait_fifo(wait_dir: Path, uid: int) -> None:
    """The FIFO <wait_dir>/<uid> that TaskProlog of UID's jobs waits on (a read with a timeout:
    a sleep that starts no process).  Mode 0600, owned by UID: no other user can open it, hence
    none can write to it and cut a job's wait short.  One that is already right is only touched,
    which keeps it from the daily sweep.  Made under another name and renamed into place, so
    that TaskProlog never opens one that is not yet its user's."""
    path = wait_dir / str(uid)
    try:
        st = os.lstat(path)
        if stat.S_ISFIFO(st.st_mode) and st.st_uid == uid and stat.S_IMODE(st.st_mode) == 0o600:
            os.utime(path, follow_symlinks=False)
            return
    except FileNotFoundError:
        pass
    tmp = wait_dir / f".{uid}.tmp"
    tmp.unlink(missing_ok=True)
    os.mkfifo(tmp, 0o600)
    os.chmod(tmp, 0o600)
    if os.geteuid() == 0:
        os.chown(tmp, uid, -1)
    os.replace(tmp, path)


class Agent:
    def __init__(self, cfg: Config, node: str | None = None, ledger: str | None = None) -> None:
        a = cfg.agent
        self.cfg, self.node = cfg, node or a.node_name()
        self.spool = Path(a.spool_dir) / self.node
        self.inbox = self.spool / "inbox"
        # The Prolog and Epilog run as root: only root's reports are believed.
        self.inbox_reports = ReportDir(self.inbox, frozenset({0, os.geteuid()}))
        self.verdicts = self.spool / "verdicts"
        self.wait_dir = self.spool / "wait"
        self.make_spool()
        self.outbox = Outbox(str(self.spool / "outbox.db"), a.outbox_max_envelopes)
        self.sampler = JobSampler(self.node, a.cgroup_root, a.proc_root)
        self.ledger = open(ledger, "a", encoding="utf-8") if ledger else None  # noqa: SIM115
        self.inflight: dict[int, float] = {}
        self.sock: zmq.Socket | None = None
        self.keys: curvekeys.ClientKeys | None = None
        self._stop = False
        self._followups: dict[int, float] = {}
        self.collectors = CollectorThread(cfg, NODE_COLLECTORS)
        self._first_sent: dict[int, float] = {}  # seq -> when it was first due to be sent
        self._refused_logged = 0.0  # when the aggregator's last REFUSED was logged
        self._status_sent: dict[str, list[Any]] | None = None
        self._status_sent_at = 0.0
        # From the Prolog's reports, where cgroup paths have none:
        self.job_uids: dict[int, int] = {}

    def make_spool(self) -> None:
        """The node's spool with the modes of SPOOL_DIR_MODES; whatever an older version left
        looser (0755 directories, a 0666 wait FIFO, a 0644 outbox) is tightened here."""
        _make_spool_root(self.spool.parent)
        _check_owned(self.spool.parent)
        for name, mode in SPOOL_DIR_MODES.items():
            if name != "." and (self.spool / name).is_symlink():
                (self.spool / name).unlink()  # the node's spool is checked to be the agent's
            _make_dir(self.spool / name, mode)
            _check_owned(self.spool / name)
        _tighten(self.inbox / "bad", 0o700)
        outbox = self.spool / "outbox.db"
        if not outbox.exists():  # SQLite gives its -wal and -shm the database's own mode
            os.close(os.open(outbox, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, PRIVATE_FILE))
        for path in (outbox, self.spool / "outbox.db-wal", self.spool / "outbox.db-shm"):
            _tighten(path, PRIVATE_FILE)
        for path in self.verdicts.iterdir():
            _tighten(path, PRIVATE_FILE)
        for path in (self.spool / "jobs").iterdir():
            _tighten(path, WARNING_FILE)

    # -- transport ----------------------------------------------------------------------------
    def connect(self) -> None:
        """The DEALER socket; with CURVE (security.curve not "off") it proves this node with
        its key and talks only to the server key in keys_dir (ConfigError if one is missing)."""
        sock = zmq.Context.instance().socket(zmq.DEALER)
        for opt, value in (
            (zmq.LINGER, 0),
            (zmq.IMMEDIATE, 1),
            (zmq.SNDHWM, 1000),
            (zmq.RECONNECT_IVL, 200),
            (zmq.RECONNECT_IVL_MAX, 5000),
        ):
            sock.setsockopt(opt, value)
        if self.cfg.security.curve == "off":
            log.warning(INSECURE_AGENT, self.cfg.agent.aggregator)
        else:
            try:
                self.keys = curvekeys.load(self.cfg.security, self.node)
            except BaseException:
                sock.close(0)
                raise
            sock.setsockopt(zmq.CURVE_SERVERKEY, self.keys.server)
            sock.setsockopt(zmq.CURVE_PUBLICKEY, self.keys.public)
            sock.setsockopt(zmq.CURVE_SECRETKEY, self.keys.secret)
            # A refused handshake is dropped silently: try again soon (enrolled late, new key).
            sock.setsockopt(zmq.HANDSHAKE_IVL, 3000)
        sock.connect(self.cfg.agent.aggregator)
        self.sock = sock

    def watch_server_key(self) -> None:
        """Reconnect with a new server.key (rotated on the head node and copied here) or a new
        key pair of this node's own: what is unacknowledged is sent again at once; the outbox
        kept it all."""
        if self.keys is None:
            return
        if curvekeys.stamps(self.cfg.security, self.node) == self.keys.stamps:
            return
        old = self.keys
        try:
            new = curvekeys.load(self.cfg.security, self.node)
        except ConfigError as exc:
            log.warning("server key not usable (yet): %s", exc)
            return
        self.keys = new
        if (new.server, new.public) == (old.server, old.public):
            return
        which = "server key" if new.server != old.server else "this node's key"
        log.warning("%s changed: reconnecting to %s", which, self.cfg.agent.aggregator)
        if self.sock is not None:
            self.sock.close(0)
        self.connect()
        self.inflight.clear()
        self.hello()

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
            reason = env.payload.get("reason") if isinstance(env.payload, dict) else None
            if env.type == wire.REFUSED and env.epoch == self.outbox.epoch:
                # Kept and sent again: the admin who enrols this node's key makes it storable.
                if time.monotonic() - self._refused_logged > 60:
                    log.error(
                        "aggregator %s refuses this agent (%s); its envelopes are kept until "
                        "it takes them",
                        self.cfg.agent.aggregator,
                        printable(str(reason), 300),
                    )
                    self._refused_logged = time.monotonic()
                continue
            if env.type in (wire.ACK, wire.NACK) and env.epoch == self.outbox.epoch:
                if env.type == wire.NACK:
                    log.error(
                        "aggregator rejected envelope %d, dropped (counted in the heartbeat): %s",
                        env.seq,
                        printable(str(reason), 300),
                    )
                    self.outbox.ack(env.seq, nacked=True)
                else:
                    self.outbox.ack(env.seq)
                self.inflight.pop(env.seq, None)
                self._first_sent.pop(env.seq, None)

    def keep_verdict(self, payload: Any) -> None:
        """A starting job's verdict: kept for TaskProlog, and when the job is warned (or advised:
        right-sizing advice under the site's models.advice = "always"), its lines in a file only
        the job's user can read (both renamed into place; removed at the Epilog's
        report, see forget_verdict)."""
        if not isinstance(payload, dict) or not isinstance(payload.get("job_id"), int):
            log.warning("ignored a verdict without a job id from %s", self.cfg.agent.aggregator)
            return
        job, uid = payload["job_id"], payload.get("user_id")
        lines = payload.get("lines") if payload.get("warned") or payload.get("advised") else None
        if lines and isinstance(uid, int):
            # TaskProlog prints each line into the job's output: no control characters (a job
            # name could carry escape sequences for the terminal that shows it).
            text = "".join(printable(str(line), MAX_WARNING_LINE) + "\n" for line in lines[:6])
            _write_private(self.spool / "jobs", str(job), text, uid, WARNING_FILE)
        _write_private(self.verdicts, f"{job}.json", json.dumps(payload), 0, PRIVATE_FILE)

    def forget_verdict(self, job: int) -> None:
        """The job has ended: its verdict and warning lines go (done here, not by the Epilog,
        which would need a process for it)."""
        for path in (self.verdicts / f"{job}.json", self.spool / "jobs" / str(job)):
            path.unlink(missing_ok=True)

    def sweep(self, now: float, max_age: float = 86400.0) -> None:
        """Hourly: verdicts of jobs whose Epilog never came (a crashed node) are removed after a
        day, and so are the wait FIFOs of users who have had no job here for a day."""
        old = [*self.verdicts.glob("*.json"), *(self.spool / "jobs").glob("*")]
        old += [p for p in self.wait_dir.iterdir() if p.name.isdigit()]
        for path in old:
            try:
                if now - path.lstat().st_mtime > max_age:
                    path.unlink()
            except OSError:
                pass

    def wait_fifo(self, uid: int) -> None:
        """A start report names the job's uid: its TaskProlog will wait on wait/<uid>."""
        try:
            make_wait_fifo(self.wait_dir, uid)
        except OSError as exc:
            log.warning(
                "cannot make %s/%s (%s): TaskProlog waits with sleep", self.wait_dir, uid, exc
            )

    # -- work ---------------------------------------------------------------------------------
    def enqueue(self, mtype: str, payload: Any) -> int:
        """Keep PAYLOAD in the outbox as one envelope, or several: samples too many for one
        envelope within wire.MAX_PAYLOAD_BYTES are split (the aggregator closes a connection
        whose message passes its max_message_bytes, and an envelope it can never read would
        block this node's stream); anything else that large is dropped with a log line."""
        data = wire.pack_payload(payload)
        if len(data) <= wire.MAX_PAYLOAD_BYTES:
            return self.outbox.put(mtype, data)
        rows = payload.get("rows") if mtype == wire.SAMPLES and isinstance(payload, dict) else None
        if rows is not None and len(rows) > 1:
            half = len(rows) // 2
            self.enqueue(mtype, {**payload, "rows": rows[:half]})
            return self.enqueue(mtype, {**payload, "rows": rows[half:]})
        log.error(
            "a %s envelope of %d bytes is over %d: not sent",
            mtype,
            len(data),
            wire.MAX_PAYLOAD_BYTES,
        )
        return 0

    def sample(self, only: list[int] | None = None) -> int:
        rows = self.sampler.sample(only)
        owners = self.sampler.job_owners()
        self.collectors.scheduler.shared["running"] = {
            job: uid if uid is not None else self.job_uids.get(job) for job, uid in owners.items()
        }
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
                self.enqueue(
                    wire.READINGS,
                    {
                        "collector": r.collector,
                        "t": r.t,
                        "seconds": round(r.seconds, 4),
                        "records": r.records,
                    },
                )
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
                marker.touch()
                os.chmod(marker, 0o644)  # TaskProlog, as any job's user, looks for it
                log.warning(
                    "aggregator %s acknowledges nothing: job starts get no verdict",
                    self.cfg.agent.aggregator,
                )
            elif not offline and marker.exists():
                marker.unlink()
                log.info("aggregator %s answers again", self.cfg.agent.aggregator)
        except OSError:
            pass
        return offline

    def heartbeat(self, now: float) -> None:
        payload = {
            "t": now,
            "jobs": sorted(self.sampler.running_jobs()),
            "outbox_depth": self.outbox.depth(),
            "dropped": self.outbox.dropped(),
            "nacked": self.outbox.nacked(),
        }
        # The collectors' status only when it changed, or once a minute (an aggregator that
        # restarted learns it again): 1,000 nodes beating every 5 s must not each rewrite it.
        status = self.collectors.scheduler.snapshot()
        if status != self._status_sent or now - self._status_sent_at >= 60.0:
            payload["collectors"] = status
            self._status_sent, self._status_sent_at = status, now
        self._send(wire.Envelope(wire.HEARTBEAT, self.node, self.outbox.epoch, 0, payload).pack())

    def hello(self) -> None:
        payload = {
            "host": socket.gethostname(),
            "agent_version": VERSION,
            "interval_seconds": self.cfg.agent.interval_seconds,
            "started": time.time(),
        }
        self._send(wire.Envelope(wire.HELLO, self.node, self.outbox.epoch, 0, payload).pack())

    def read_inbox(self, now: float) -> None:
        for path, report in self.inbox_reports.ready():
            try:
                check_job_report(report)
            except ValueError as exc:
                self.inbox_reports.set_aside(path, str(exc))
                continue
            uid = report_uid(report)
            if report["event"] == "start" and uid is not None:
                self.wait_fifo(uid)  # first: the job's TaskProlog is about to wait on it
            self.enqueue(wire.JOB_EVENT, report)
            if report["event"] == "start" and uid is not None:
                self.job_uids[report["job_id"]] = uid
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
        log.info(
            "agent %s: sampling every %.1f s, sending to %s, spool %s",
            self.node,
            interval,
            self.cfg.agent.aggregator,
            self.spool,
        )
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
                self.watch_server_key()
                next_beat = now + beat
                if int(now) % 3600 < beat:
                    self.sweep(time.time())
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
