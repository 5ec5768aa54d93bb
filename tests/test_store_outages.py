"""The store's outages against the real daemon: `nomade-aggregator` run as a process on a real
database, fed by simulated node agents over real ZeroMQ, while the test really locks the
database past the busy timeout, really fills the filesystem under it (a small tmpfs), and really
SIGKILLs it during heavy ingest.  In each case everything sent during the outage is stored
exactly once after it, and nothing acknowledged is lost.

The simulated agent is what the aggregator sees of nomade-agent: a DEALER that keeps a window of
envelopes unanswered, sends each unanswered one again every second, and forgets an envelope only
once it is answered (ACK: stored; NACK: never storable).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import zmq
from clusterlib import free_port, wait_for
from conftest import required

from aggregator import store
from aggregator.admin import apiclient
from aggregator.daemon.headcollect import HEAD_COLLECTORS
from aggregator.store import Ingest
from nomade_common import munge, wire

BIN = Path(sys.executable).parent
T0 = float(int(time.time()) - 7 * 86400)  # sample times from a week ago: inside the 30-day window
RESEND_SECONDS = 1.0
BUSY_SECONDS = 0.5  # aggregator.store_busy_timeout_seconds
HOOK_SECONDS = 2.0  # hooks.timeout_seconds: a report waits at most 0.4 of it for its COMMIT
GAVE_UP = "nomade-aggregator: the store stayed unusable; exiting for a restart"


# -- what is sent ---------------------------------------------------------------------------------
def sample_row(job_id: int, t: float, seq: int, bad: bool = False) -> list:
    """One row in wire.SAMPLE_FIELDS order; BAD: a negative memory value, never storable."""
    return [
        job_id,
        t,
        float(seq),
        seq * 0.75,
        seq * 0.25,
        -1 if bad else 1 << 30,
        2 << 30,
        700 << 20,
        300 << 20,
        None,
        None,
        4096 * seq,
        8192 * seq,
        4096,
        8192,
        100,
        200,
        10,
        20,
        1,
    ]


class Sender(threading.Thread):
    """A node agent as the aggregator sees it (see the module's docstring).  Everything it was
    given, and when each answer came, is kept for the test to check."""

    def __init__(
        self,
        endpoint: str,
        node: str,
        first_job: int,
        jobs: int,
        rows_per_job: int = 1,
        window: int = 256,
    ) -> None:
        super().__init__(name=f"sender-{node}", daemon=True)
        self.endpoint, self.node, self.window = endpoint, node, window
        self.epoch = time.time_ns() // 1000
        self.job_ids = [first_job + j for j in range(jobs)]
        self.rows_per_job = rows_per_job
        self.lock = threading.Lock()
        self.next_seq = 1
        self.rows: dict[int, list[list]] = {}  # seq -> the rows it carries
        self.bad: set[int] = set()  # seqs that must be NACKed
        self._new: collections.deque[tuple[int, bytes]] = collections.deque()
        self._data: dict[int, bytes] = {}
        self.unanswered: dict[int, float] = {}  # seq -> when last sent (monotonic)
        self.acked: dict[int, float] = {}  # seq -> when its first ACK came (monotonic)
        self.nacked: dict[int, tuple[float, str]] = {}
        self.sends = 0
        self.stopping = threading.Event()

    def add(self, n: int, bad: bool = False) -> list[int]:
        """N more SAMPLES envelopes, one row per job and per rows_per_job; their seqs."""
        seqs = []
        with self.lock:
            for _ in range(n):
                seq = self.next_seq
                self.next_seq += 1
                rows = [
                    sample_row(job_id, T0 + seq * 100.0 + k, seq, bad and j == 0)
                    for j, job_id in enumerate(self.job_ids)
                    for k in range(self.rows_per_job)
                ]
                self.rows[seq] = rows
                if bad:
                    self.bad.add(seq)
                data = wire.Envelope(
                    wire.SAMPLES, self.node, self.epoch, seq, {"rows": rows}
                ).pack()
                self._data[seq] = data
                self._new.append((seq, data))
                seqs.append(seq)
        return seqs

    def run(self) -> None:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 10_000)
        sock.connect(self.endpoint)
        try:
            while not self.stopping.is_set():
                self._send_some(sock)
                if sock.poll(20, zmq.POLLIN):
                    self._read_answers(sock)
        finally:
            sock.close(0)

    def _send_some(self, sock: zmq.Socket) -> None:
        now = time.monotonic()
        with self.lock:
            again = [s for s, last in self.unanswered.items() if now - last >= RESEND_SECONDS]
            for seq in again:
                if not self._send(sock, self._data[seq]):
                    return
                self.unanswered[seq] = now
            while self._new and len(self.unanswered) < self.window:
                seq, data = self._new[0]
                if not self._send(sock, data):
                    return
                self._new.popleft()
                self.unanswered[seq] = now

    def _send(self, sock: zmq.Socket, data: bytes) -> bool:
        try:
            sock.send(data, zmq.NOBLOCK)
        except zmq.Again:
            return False  # the pipe is full (the aggregator is away): tried again later
        self.sends += 1
        return True

    def _read_answers(self, sock: zmq.Socket) -> None:
        while True:
            try:
                env = wire.unpack(sock.recv(zmq.NOBLOCK))
            except zmq.Again:
                return
            if env.node != self.node or env.epoch != self.epoch:
                continue  # a verdict for a job on this node, not an answer
            now = time.monotonic()
            with self.lock:
                if env.type == wire.ACK:
                    self.acked.setdefault(env.seq, now)
                elif env.type == wire.NACK:
                    self.nacked.setdefault(env.seq, (now, env.payload.get("reason", "")))
                else:
                    continue
                self.unanswered.pop(env.seq, None)

    def answered(self, seqs) -> bool:
        with self.lock:
            return all(s in self.acked or s in self.nacked for s in seqs)

    def acked_now(self) -> set[int]:
        with self.lock:
            return set(self.acked)

    def in_flight(self) -> int:
        with self.lock:
            return len(self.unanswered)

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)

    def good(self) -> set[int]:
        with self.lock:
            return set(self.rows) - self.bad

    def expected_samples(self, seqs) -> collections.Counter:
        return collections.Counter(
            (self.node, r[0], r[1], r[2]) for s in seqs for r in self.rows[s]
        )


# -- the daemon -----------------------------------------------------------------------------------
class Daemon:
    """nomade-aggregator on free loopback ports, its database under DATA_DIR."""

    def __init__(self, root: Path, data_dir: Path, aggregator: str = "") -> None:
        self.root, self.db = root, data_dir / "nomade.db"
        self.zmq_port, self.http_port = free_port(), free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.zmq_port}"
        self.url = f"http://127.0.0.1:{self.http_port}"
        # Only what the test sends is written: the head collectors (real Slurm tools) are off.
        off = "".join(f"[collectors.{c.name}]\nenabled = false\n" for c in HEAD_COLLECTORS)
        self.config = root / "nomade.toml"
        self.config.write_text(f"""
[general]
cluster_name = "outages"
data_dir = "{data_dir}"
[aggregator]
listen = "{self.endpoint}"
http_listen = "127.0.0.1:{self.http_port}"
sacct = "{root}/no-sacct"
squeue = "{root}/no-squeue"
scontrol = "{root}/no-scontrol"
store_busy_timeout_seconds = {BUSY_SECONDS}
{aggregator}
[hooks]
aggregator_url = "{self.url}"
state_dir = "{root}/hookstate"
timeout_seconds = {HOOK_SECONDS}
[security]
curve = "off"
keys_dir = "{root}/keys"
{off}""")
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, *args: str) -> None:
        self.starts += 1
        self.stderr = self.root / f"aggregator-{self.starts}.err"
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [str(BIN / "nomade-aggregator"), "--config", str(self.config), *args],
                stdout=subprocess.DEVNULL,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
        wait_for(
            "the aggregator to answer",
            lambda: self.health() is not None or self.proc.poll() is not None,
            60,
            0.1,
        )
        assert self.proc.poll() is None, self.log()

    def health(self) -> int | None:
        """GET /api/v1/health: its status, None when nothing answers."""
        try:
            with urllib.request.urlopen(self.url + "/api/v1/health", timeout=5) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, OSError):
            return None

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        """SIGTERM, as the service manager stops it; its exit status."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("the aggregator did not stop within 30 s of SIGTERM") from None

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()

    def log(self) -> str:
        return "".join(
            p.read_text(errors="replace") for p in sorted(self.root.glob("aggregator-*.err"))
        )

    def nomadectl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "nomadectl"), "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def query(self, sql: str, *args) -> list:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def samples(self) -> list[tuple]:
        """Every stored sample, in every room of the store, as (node, job_id, t,
        cpu_usage_seconds)."""
        conn = store.connect(str(self.db), readonly=True)
        try:
            conn.execute("BEGIN")  # one snapshot, while the daemon may be compacting
            job_id = dict(conn.execute("SELECT uid, job_id FROM jobs").fetchall())
            cpu = wire.SAMPLE_FIELDS.index("cpu_usage_seconds") + 1
            return [(s[1], job_id[s[0]], s[2], s[cpu]) for s in store.all_samples(conn)]
        finally:
            conn.close()


@contextlib.contextmanager
def running(root: Path, data_dir: Path | None = None, aggregator: str = "", *args: str):
    d = Daemon(root, data_dir or root / "data", aggregator)
    senders: list[Sender] = []
    d.senders = senders
    try:
        d.start(*args)
        yield d
    finally:
        for s in senders:
            s.stop()
        d.close()


def sender(d: Daemon, node: str, jobs: int = 4, rows_per_job: int = 1, window: int = 256) -> Sender:
    s = Sender(d.endpoint, node, 1_000_000 + 1000 * len(d.senders), jobs, rows_per_job, window)
    d.senders.append(s)
    s.start()
    return s


@contextlib.contextmanager
def locked(db: Path):
    """The database's write lock, held by another process's connection (this one's) the way a
    stray `sqlite3` shell or backup tool holds it: BEGIN IMMEDIATE, released on leaving."""
    conn = sqlite3.connect(str(db), isolation_level=None, timeout=30)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield conn
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()


def assert_stored_exactly_once(d: Daemon, senders: list[Sender]) -> None:
    """Every envelope each sender was given, but those meant to be NACKed, is in `received`
    once and its rows are stored once; nothing else is; each job has one row."""
    keys = collections.Counter(d.query("SELECT node, epoch, seq FROM received"))
    want = collections.Counter((s.node, s.epoch, seq) for s in senders for seq in s.good())
    assert keys == want, (
        f"missing {sorted(want - keys)[:10]}, unexpected {sorted(keys - want)[:10]}"
        f" ({sum((want - keys).values())} missing, {sum((keys - want).values())} extra)"
    )
    samples = collections.Counter(d.samples())
    expected = sum((s.expected_samples(s.good()) for s in senders), collections.Counter())
    assert samples == expected, (
        f"{sum((expected - samples).values())} sample rows missing, "
        f"{sum((samples - expected).values())} extra"
    )
    per_job = d.query("SELECT job_id, count(*) FROM jobs GROUP BY job_id HAVING count(*) > 1")
    assert per_job == [], f"jobs stored more than once: {per_job}"


def assert_acked_stored(d: Daemon, acked: dict[Sender, set[int]]) -> None:
    have = set(d.query("SELECT node, epoch, seq FROM received"))
    for s, seqs in acked.items():
        lost = {(s.node, s.epoch, seq) for seq in seqs} - have
        assert not lost, f"{len(lost)} acknowledged envelopes of {s.node} are not in the store"


def munged_answers() -> None:
    try:
        munge.verify(munge.sign("GET", "/probe", b""), "GET", "/probe", b"")
    except munge.MungeError as exc:
        required(f"munged is not answering ({exc})")


def start_report(job_id: int) -> bytes:
    """PrologSlurmctld's report, as the hook posts it."""
    env = {
        "SLURM_JOB_ID": str(job_id),
        "SLURM_JOB_USER": "root",
        "SLURM_JOB_UID": "0",
        "SLURM_JOB_PARTITION": "debug",
        "SLURM_JOB_NODELIST": "lk1",
    }
    return json.dumps({"env": env, "kind": "prologslurmctld", "t": time.time()}).encode()


def post_report(d: Daemon, body: bytes) -> tuple[int, str, float]:
    """(HTTP status, answer, seconds it took) of a signed job-start report."""
    began = time.monotonic()
    try:
        apiclient.call(d.url, "POST", "/api/v1/hooks/job-start", body, timeout=30)
        status, text = 200, ""
    except apiclient.ApiError as exc:
        status, text = exc.status, str(exc)
    return status, text, time.monotonic() - began


# -- a lock held past the busy timeout ------------------------------------------------------------
def test_a_lock_past_the_busy_timeout_holds_every_answer_until_it_is_released(tmp_path):
    """While another process holds the write lock for six busy timeouts: nothing is ACKed or
    NACKed, health is 503, `nomadectl status` says FAILING and why, a hook's report gets 503
    within the hook's limit (and 200 when sent again after).  Released: every envelope is
    answered and stored once, and the outage is recorded as a store_failed event."""
    munged_answers()
    with running(tmp_path) as d:
        s = sender(d, "lk1")
        before = s.add(20)
        wait_for(
            "the envelopes sent before the lock to be acknowledged",
            lambda: s.answered(before),
            30,
            0.05,
        )
        assert d.health() == 200
        with locked(d.db):
            locked_at = time.monotonic()
            during = s.add(100)
            bad = s.add(1, bad=True)
            status, text, took = post_report(d, start_report(4242))
            assert status == 503 and "send it again" in text, text
            assert took < HOOK_SECONDS, f"the hook would have given up: 503 came after {took:.2f} s"
            wait_for("health to say 503", lambda: d.health() == 503, 20, 0.1)
            shown = d.nomadectl("status")
            assert shown.returncode == 0, shown.stderr
            line = next((x for x in shown.stdout.splitlines() if x.startswith("Store:")), "")
            assert "FAILING since" in line and "database is locked" in line, shown.stdout
            time.sleep(max(0.0, locked_at + 6 * BUSY_SECONDS - time.monotonic()))
            assert s.acked_now() == set(before), (
                "an envelope was acknowledged while the store was locked"
            )
            assert not s.nacked, "an envelope was answered while the store was locked"
            released_at = time.monotonic()
        wait_for("every envelope to be answered", lambda: s.answered(during + bad), 30, 0.05)
        assert set(s.nacked) == set(bad) and "row 0" in s.nacked[bad[0]][1], s.nacked
        assert all(s.acked[seq] >= released_at for seq in during)
        assert all(s.nacked[seq][0] >= released_at for seq in bad)
        status, text, _ = post_report(d, start_report(4242))
        assert status == 200, text
        wait_for("health to say 200", lambda: d.health() == 200, 20, 0.1)
        shown = d.nomadectl("status")
        assert "Store: taking writes" in shown.stdout and "FAILING" not in shown.stdout, (
            shown.stdout
        )
        assert d.stop() == 0, d.log()
        assert_stored_exactly_once(d, [s])
        assert d.query("SELECT count(*), min(user) FROM jobs WHERE job_id = 4242") == [(1, "root")]
        events = d.query("SELECT detail FROM events WHERE kind = 'store_failed'")
        assert len(events) == 1 and "database is locked" in events[0][0], events


def test_a_store_locked_past_store_failing_exit_seconds_exits_3_and_a_restart_stores_it_all(
    tmp_path,
):
    """Locked past aggregator.store_failing_exit_seconds (10): the daemon exits with status 3
    and one line on stderr, having acknowledged nothing of the outage; started again on the
    released database, it stores all that the agent sends again, once."""
    exit_after = "store_failing_exit_seconds = 10"
    with running(tmp_path, None, exit_after, "--log-level", "ERROR") as d:  # stderr: errors only
        s = sender(d, "ex1")
        before = s.add(10)
        wait_for(
            "the envelopes sent before the lock to be acknowledged",
            lambda: s.answered(before),
            30,
            0.05,
        )
        with locked(d.db):
            during = s.add(30)
            locked_at = time.monotonic()
            wait_for("the aggregator to give up", lambda: d.proc.poll() is not None, 60, 0.2)
            gave_up_after = time.monotonic() - locked_at
            assert d.proc.returncode == 3, d.log()
            assert s.acked_now() == set(before) and not s.nacked
        assert gave_up_after >= 10, f"exited {gave_up_after:.1f} s into the outage"
        err = d.stderr.read_text().strip().splitlines()
        assert err[-1] == GAVE_UP, err
        assert "Traceback" not in d.log()
        assert any("giving up" in x and "database is locked" in x for x in err[:-1]), err
        d.start()
        wait_for("every envelope to be acknowledged", lambda: s.answered(during), 30, 0.05)
        assert not s.nacked
        assert d.stop() == 0, d.log()
        assert_stored_exactly_once(d, [s])


# -- a full filesystem ----------------------------------------------------------------------------
@contextlib.contextmanager
def small_filesystem(path: Path, size: str = "8m"):
    if os.geteuid() != 0:
        required("mounting a tmpfs needs root (./test.sh runs as root)")
    path.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def fill(path: Path) -> int:
    """Write PATH until the filesystem has no room left; the bytes written."""
    written = 0
    chunk = b"\xa5" * (64 << 10)
    with open(path, "wb", buffering=0) as f:
        for size in (64 << 10, 4096, 512, 1):
            while True:
                try:
                    written += f.write(chunk[:size])
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    return written


def test_a_full_filesystem_holds_every_answer_until_there_is_room_and_loses_nothing(tmp_path):
    """The database on an 8 MiB tmpfs that another file fills: the store fails (health 503,
    "database or disk is full"), nothing sent meanwhile is lost; once the file is removed,
    everything sent is stored once and acknowledged, with what was stored before intact."""
    with small_filesystem(tmp_path / "fs") as fs, running(tmp_path, fs / "data") as d:
        s = sender(d, "df1", jobs=8, rows_per_job=25)
        before = s.add(40)
        wait_for(
            "the envelopes sent before the outage to be acknowledged",
            lambda: s.answered(before),
            30,
            0.05,
        )
        assert_acked_stored(d, {s: set(before)})
        filler = fs / "filler"
        fill(filler)
        sent = []
        deadline = time.monotonic() + 60
        while d.health() != 503:  # the WAL reuses its own room first: send until it needs more
            assert time.monotonic() < deadline, "the store never failed on a full filesystem"
            sent += s.add(10)
            time.sleep(0.2)
        shown = d.nomadectl("status")
        line = next((x for x in shown.stdout.splitlines() if x.startswith("Store:")), "")
        assert "FAILING since" in line and "full" in line, shown.stdout + shown.stderr
        held = s.add(20)
        time.sleep(3 * RESEND_SECONDS)  # sent, and sent again, while the store fails
        assert not set(held) & s.acked_now(), "acknowledged while the filesystem was full"
        assert d.health() == 503
        filler.unlink()
        wait_for("every envelope to be answered", lambda: s.answered(before + sent + held), 60, 0.1)
        assert not s.nacked, s.nacked
        wait_for("health to say 200", lambda: d.health() == 200, 20, 0.1)
        assert d.stop() == 0, d.log()
        assert_stored_exactly_once(d, [s])
        events = d.query("SELECT detail FROM events WHERE kind = 'store_failed'")
        assert len(events) == 1 and "full" in events[0][0], events
        assert d.query("PRAGMA integrity_check") == [("ok",)]


def test_a_refused_envelope_keeps_its_event_when_its_first_batch_could_not_be_written(tmp_path):
    """An envelope refused (NACK) in a batch the full filesystem rolled back is refused again
    when the batch is written: its bad_message event must be in the store then, as it is
    when nothing fails.  (Writer's contract: APPLY changes nothing outside the connection, or
    undoes it through on_rollback.)"""
    with small_filesystem(tmp_path / "fs") as fs:
        writer = store.Writer(str(fs / "nomade.db"))
        ingest = Ingest("outages")
        writer.on_rollback.append(ingest.rolled_back)  # as the aggregator does
        t = time.time() - 3600
        bad = wire.Envelope(wire.SAMPLES, "bd1", 1, 1, {"rows": [sample_row(7, t, 1, bad=True)]})
        big = [sample_row(8, t + i * 0.001, i) for i in range(20_000)]  # more than the WAL holds
        good = wire.Envelope(wire.SAMPLES, "bd1", 1, 2, {"rows": big})
        answers: list = []
        filler = fs / "filler"
        fill(filler)
        for env in (bad, good):  # queued before the writer starts: one batch
            data = env.pack()
            writer.submit(store.WorkItem(lambda c, data=data: ingest.take(c, data), answers.append))
        writer.start()
        try:
            wait_for("the store to fail", lambda: writer.failing_since is not None, 30, 0.05)
            assert "full" in writer.failing_reason and answers == []
            filler.unlink()
            wait_for("both envelopes to be answered", lambda: len(answers) == 2, 30, 0.05)
            assert [a.kind for a in answers] == ["nack", "ack"]
            events = writer.call(
                lambda c: [tuple(r) for r in c.execute("SELECT kind, detail FROM events")]
            )
            kinds = {kind for kind, _ in events}
            assert "store_failed" in kinds
            assert any(kind == "bad_message" and "bd1" in detail for kind, detail in events), events
        finally:
            writer.stop()


# -- SIGKILL during heavy ingest ------------------------------------------------------------------
def test_sigkill_during_heavy_ingest_loses_nothing_acknowledged_and_stores_everything_once(
    tmp_path,
):
    """Four agents stream 8,000 envelopes (200,000 samples); the aggregator is SIGKILLed with
    hundreds of them in flight.  Everything it acknowledged is in the store it left; started
    again on that store, it stores all the rest, each envelope and each sample once."""
    with running(tmp_path) as d:
        senders = [sender(d, f"kn{k}", jobs=25) for k in range(4)]
        for s in senders:
            s.add(2000)
        total = sum(len(s.rows) for s in senders)
        wait_for(
            "a quarter of the envelopes to be acknowledged",
            lambda: sum(len(s.acked_now()) for s in senders) >= total // 4,
            60,
            0.01,
        )
        d.kill()
        acked = {s: s.acked_now() for s in senders}
        in_flight = sum(s.in_flight() for s in senders)
        assert in_flight > 0 and sum(map(len, acked.values())) < total, "killed after the ingest"
        assert_acked_stored(d, acked)
        d.start()
        wait_for(
            "every envelope to be acknowledged",
            lambda: all(s.answered(s.rows) for s in senders),
            90,
            0.1,
        )
        assert not any(s.nacked for s in senders)
        assert d.stop() == 0, d.log()
        assert_stored_exactly_once(d, senders)
        assert d.query("PRAGMA integrity_check") == [("ok",)]
