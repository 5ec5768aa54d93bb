"""Head-node reports over HTTP that the aggregator does not take are kept, not lost: the real
hook, installed with `nomadectl install-hooks` and run through its wrapper as SlurmUser (as
tests/test_hooks.py runs it), against real HTTP servers on loopback that answer as a script says
(503 while the store cannot commit, then 200) and check each request's MUNGE credential with the
real munged.  What a site would notice: the report is in <state_dir>/unsent/, a later hook (or
`controller_hook.sh resend`) delivers the very same bytes, and unsent/ is then empty."""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import required
from test_hooks import Site, closed_port_url, slurm_env
from test_hooks import world as world  # the fixture: a directory every user can traverse

from nomade_common import munge

START, END = "/api/v1/hooks/job-start", "/api/v1/hooks/job-end"
UNSENT_MAX = 10_000  # controller_hook.sh's bound


@pytest.fixture(scope="module")
def munge_socket():
    """The munged that signs and checks: the host's (the dev cluster's) when it answers, else a
    private one of our own (its own key and socket) started here: real MUNGE either way."""
    try:
        munge.verify(munge.sign("GET", "/probe", b""), "GET", "/probe", b"")
        yield ""
        return
    except munge.MungeError:
        pass
    daemon = shutil.which("munged") or "/usr/sbin/munged"
    keygen = shutil.which("mungekey") or "/usr/sbin/mungekey"
    if os.geteuid() != 0 or not os.path.exists(daemon) or not os.path.exists(keygen):
        required("munged is not answering, and no munged of our own can start (root, munge)")
    home = Path(tempfile.mkdtemp(prefix="nomade-munged-"))
    home.chmod(0o755)  # SlurmUser's munge must reach the socket
    (home / "etc").mkdir(mode=0o700)
    key = home / "etc" / "munge.key"
    subprocess.run([keygen, "--create", f"--keyfile={key}"], check=True, timeout=30)
    sock = home / "munge.socket"
    proc = subprocess.Popen(
        [
            daemon,
            "--foreground",
            f"--socket={sock}",
            f"--key-file={key}",
            f"--pid-file={home / 'munged.pid'}",
            f"--seed-file={home / 'etc' / 'seed'}",
            f"--log-file={home / 'etc' / 'log'}",
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        end = time.monotonic() + 10
        while True:
            try:
                munge.verify(
                    munge.sign("GET", "/p", b"", str(sock)), "GET", "/p", b"", socket=str(sock)
                )
                break
            except munge.MungeError:
                if time.monotonic() > end or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield str(sock)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(home, ignore_errors=True)


class Aggregator:
    """An HTTP server on 127.0.0.1 answering each POST with the next status of ANSWERS, then
    with LATER; it records (path, body bytes, the uid the credential proves or why not)."""

    def __init__(self, socket: str, answers=(), later: int = 200) -> None:
        self.answers = deque(answers)
        self.later = later
        self.requests: list[tuple[str, bytes, int | str]] = []
        agg = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    caller: int | str = munge.verify(
                        self.headers.get("Authorization"), "POST", self.path, body, socket=socket
                    ).uid
                except munge.MungeError as exc:
                    caller = str(exc)
                agg.requests.append((self.path, body, caller))
                status = agg.answers.popleft() if agg.answers else agg.later
                payload = {
                    200: b'{"ok": true}',
                    503: b'{"ok": false, "error": "report not stored '
                    b'within 0.35 s (store busy); send it again"}',
                }.get(status, b'{"ok": false}')
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self, path: str | None = None) -> list[bytes]:
        return [b for p, b, _ in self.requests if path is None or p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def aggregator(munge_socket):
    servers: list[Aggregator] = []

    def start(answers=(), later: int = 200) -> Aggregator:
        servers.append(Aggregator(munge_socket, answers, later))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@pytest.fixture
def site(world, munge_socket):
    """Hooks installed for the HTTP transport; SITE(url, **hooks_json_changes) points them."""

    def make(url: str, **changes) -> Site:
        s = Site(world, aggregator_url=url)
        s.settings(munge_socket=munge_socket, **changes)
        return s

    return make


SLURM = "slurm"


def as_slurm(*cmd: str) -> list[str]:
    """CMD run as SlurmUser, as slurmctld runs its hooks."""
    pw = pwd.getpwnam(SLURM)
    return [
        shutil.which("setpriv") or "/usr/bin/setpriv",
        f"--reuid={pw.pw_uid}",
        f"--regid={pw.pw_gid}",
        "--init-groups",
        "--",
        *cmd,
    ]


def unsent(site: Site) -> list[Path]:
    d = site.state / "unsent"
    return sorted(d.glob("*.json")) if d.is_dir() else []


def run(site: Site, kind: str, job: int = 23) -> None:
    proc, took = site.run(kind, slurm_env(kind, SLURM_JOB_ID=str(job)), user=SLURM)
    assert proc.returncode == 0 and took < site.limit + 0.5, (proc, took)


def test_a_report_answered_503_is_kept_and_the_next_hook_delivers_it_unchanged(site, aggregator):
    agg = aggregator(answers=[503])
    s = site(agg.url)
    run(s, "prologslurmctld")
    ((path, sent, caller),) = agg.requests
    assert path == START and caller == pwd.getpwnam(SLURM).pw_uid
    (kept,) = unsent(s)
    assert kept.name.endswith("-23-prologslurmctld.json")
    assert kept.read_bytes() == sent + b"\n"  # one line: the very bytes the aggregator refused
    st = kept.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == pwd.getpwnam(SLURM).pw_uid
    (line,) = s.log("prologslurmctld")
    assert "503" in line and "kept" in line

    run(s, "epilogslurmctld")  # the aggregator takes reports again
    assert [p for p, _, _ in agg.requests] == [START, END, START]  # its own first, then the kept
    assert agg.requests[2][1] == sent  # the same bytes, with a credential of their own
    assert agg.requests[2][2] == pwd.getpwnam(SLURM).pw_uid
    assert unsent(s) == []
    assert not (s.state / "unsent" / ".lock").exists()


@pytest.mark.parametrize(
    "status, kept",
    [(400, False), (413, False), (403, True), (500, True), (503, True)],
)
def test_what_the_aggregator_refuses_as_bad_is_not_kept_and_the_rest_is(
    site, aggregator, status, kept
):
    """400 (unreadable or unstorable report) and 413 (too large) are the report's own fault:
    sending it again cannot help.  Anything else, 403 included (the sender's identity, which a
    corrected security.slurm_user or munge key makes right), may pass later."""
    agg = aggregator(answers=[status])
    s = site(agg.url)
    run(s, "prologslurmctld")
    assert len(agg.requests) == 1
    assert len(unsent(s)) == int(kept)
    (line,) = s.log("prologslurmctld")
    assert str(status) in line
    assert ("not kept" in line) is not kept
    assert s.breaker()["failures_total"] == 1


def test_reports_refused_as_bad_do_not_open_the_breaker_for_the_next_job(site, aggregator):
    """A user whose job names the aggregator keeps refusing (400) must not hold everyone else's
    reports back: the aggregator answered, so it is up."""
    agg = aggregator(answers=[400, 400, 400, 200])
    s = site(agg.url, breaker_failures=3)
    for job in (61, 62, 63, 64):
        run(s, "prologslurmctld", job=job)
    assert len(agg.requests) == 4 and unsent(s) == []
    state = s.breaker()
    assert state["failures_total"] == 3 and state["open_until"] == 0 and state["skipped_total"] == 0


def test_reports_made_while_the_breaker_is_open_are_kept_and_sent_once_it_closes(site, aggregator):
    agg = aggregator(answers=[503])
    s = site(agg.url, breaker_failures=1, breaker_seconds=1)
    run(s, "prologslurmctld", job=41)  # refused: the breaker opens
    run(s, "epilogslurmctld", job=40)  # not even tried
    assert len(agg.requests) == 1
    assert s.breaker()["skipped_total"] == 1
    kept = [k.read_bytes() for k in unsent(s)]
    assert len(kept) == 2 and b'"SLURM_JOB_ID": "40"' in kept[1]
    time.sleep(max(0.0, json.loads((s.state / "open_until").read_text()) - time.time()) + 1.05)
    run(s, "prologslurmctld", job=42)
    assert [p for p, _, _ in agg.requests] == [START, START, START, END]
    assert agg.bodies()[2:] == [k[:-1] for k in kept]  # oldest first, unchanged
    assert unsent(s) == []


def test_unsent_is_bounded_the_oldest_is_dropped_and_counted(site, aggregator):
    agg = aggregator(later=503)
    s = site(agg.url)
    d = s.state / "unsent"
    d.mkdir(mode=0o700)
    slurm = pwd.getpwnam(SLURM)
    os.chown(d, slurm.pw_uid, slurm.pw_gid)
    t0 = int((time.time() - 3600) * 1e6)
    names = [f"{t0 + i}-{1000 + i}-epilogslurmctld.json" for i in range(UNSENT_MAX)]
    for name in names:
        (d / name).write_text('{"env": {}, "kind": "epilogslurmctld", "t": 1}\n')
    run(s, "prologslurmctld")
    left = {p.name for p in unsent(s)}
    assert len(left) == UNSENT_MAX
    assert names[0] not in left and names[1] in left and names[-1] in left
    assert [n for n in left if n.endswith("-23-prologslurmctld.json")]
    assert s.breaker()["dropped_total"] == 1
    assert any(f"dropped the oldest, {names[0]}" in line for line in s.log("prologslurmctld"))


def test_a_kept_report_refused_as_bad_on_resend_is_set_aside_and_the_next_is_sent(site, aggregator):
    agg = aggregator(answers=[503, 503, 503])
    s = site(agg.url, breaker_failures=10)
    for job in (1, 2, 3):
        run(s, "prologslurmctld", job=job)
    agg.answers.extend([200, 200, 400, 200])  # job 4's own; job 1's; job 2's is refused; job 3's
    run(s, "prologslurmctld", job=4)
    assert len(agg.requests) == 7
    assert unsent(s) == []
    (bad,) = (s.state / "unsent" / "bad").iterdir()
    assert bad.name.endswith("-2-prologslurmctld.json") and bad.read_bytes()[:-1] == agg.bodies()[5]
    assert any("set aside" in line and "400" in line for line in s.log("prologslurmctld"))


def test_a_resend_that_fails_stops_and_keeps_the_rest_without_counting_against_the_breaker(
    site, aggregator
):
    agg = aggregator(answers=[503, 503, 200, 503])
    s = site(agg.url, breaker_failures=10)
    run(s, "prologslurmctld", job=1)
    run(s, "prologslurmctld", job=2)
    before = [k.read_bytes() for k in unsent(s)]
    run(s, "epilogslurmctld", job=3)  # its own is taken; job 1's answered 503: stop there
    assert len(agg.requests) == 4
    assert [k.read_bytes() for k in unsent(s)] == before
    state = s.breaker()
    assert state["failures_in_row"] == 0 and state["failures_total"] == 2


def test_an_old_report_cut_short_is_set_aside_not_sent(site, aggregator):
    agg = aggregator()
    s = site(agg.url)
    d = s.state / "unsent"
    d.mkdir(mode=0o700)
    os.chown(d, pwd.getpwnam(SLURM).pw_uid, -1)
    cut = d / f"{int((time.time() - 60) * 1e6)}-7-prologslurmctld.json"
    cut.write_text('{"env": {"SLURM_JOB_ID": "7"')  # a hook killed mid-write, a minute ago
    run(s, "epilogslurmctld")
    assert agg.bodies(START) == []
    assert unsent(s) == [] and (d / "bad" / cut.name).exists()


def test_a_burst_after_recovery_sends_each_kept_report_once(site, aggregator):
    agg = aggregator(answers=[503] * 4)
    s = site(agg.url, breaker_failures=10)
    for job in range(1, 5):
        run(s, "prologslurmctld", job=job)
    kept = [k.read_bytes()[:-1] for k in unsent(s)]
    assert len(kept) == 4
    env = slurm_env("epilogslurmctld")
    procs = [
        subprocess.Popen(
            as_slurm(str(s.prefix / "epilogslurmctld")),
            env=dict(env, SLURM_JOB_ID=str(100 + i)),
            cwd="/",
        )
        for i in range(12)
    ]
    assert [p.wait(30) for p in procs] == [0] * 12
    run(s, "epilogslurmctld", job=200)  # one more, should a burst have left some
    resent = agg.bodies(START)[4:]
    assert sorted(resent) == sorted(kept), "a kept report was sent twice, or not at all"
    assert unsent(s) == []


def test_resend_by_hand_sends_every_kept_report_and_says_so(site, aggregator):
    agg = aggregator(answers=[503] * 6)
    s = site(agg.url, breaker_failures=10)
    for job in range(1, 7):
        run(s, "epilogslurmctld", job=job)
    kept = [k.read_bytes()[:-1] for k in unsent(s)]
    assert len(kept) == 6
    hook = str(s.prefix / "controller_hook.sh")
    by_hand = as_slurm(hook, "resend")

    s.settings(aggregator_url=closed_port_url())  # the aggregator still away: nothing lost
    proc = subprocess.run(by_hand, capture_output=True, text=True, timeout=60, cwd="/")
    assert (
        proc.returncode == 1
        and "6 still kept" in proc.stdout
        and "ConnectionRefused" in proc.stdout
    )
    assert len(unsent(s)) == 6

    s.settings(aggregator_url=agg.url)
    proc = subprocess.run(by_hand, capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sent 6, set aside 0 (in unsent/bad/), 0 still kept" in proc.stdout
    assert agg.bodies(END)[6:] == kept
    assert unsent(s) == [] and not (s.state / "unsent" / ".lock").exists()


EXECVE = re.compile(r'execve\("([^"]+)"')


@pytest.mark.parametrize("with_dir", [False, True], ids=["no-unsent", "empty-unsent"])
def test_the_common_path_starts_only_munge(site, aggregator, world, with_dir):
    """A report taken at once costs what it did: one `munge`, nothing else, whether unsent/
    was never made or has been drained."""
    strace = shutil.which("strace") or pytest.fail("strace not found: install strace")
    agg = aggregator()
    s = site(agg.url)
    if with_dir:
        (s.state / "unsent").mkdir(mode=0o700)
        os.chown(s.state / "unsent", pwd.getpwnam(SLURM).pw_uid, -1)
    trace = world / "strace"
    cmd = [
        strace,
        "-f",
        "-qq",
        "-e",
        "trace=execve",
        "-o",
        str(trace),
        *as_slurm(str(s.prefix / "prologslurmctld")),
    ]
    assert (
        subprocess.run(cmd, env=slurm_env("prologslurmctld"), cwd="/", timeout=60).returncode == 0
    )
    assert len(agg.requests) == 1 and agg.requests[0][2] == pwd.getpwnam(SLURM).pw_uid
    execs = [Path(p).name for p in EXECVE.findall(trace.read_text())]
    assert execs == ["setpriv", "prologslurmctld", "munge"], execs
    assert unsent(s) == []
