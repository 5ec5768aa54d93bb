"""The aggregator's HTTP API against real callers: a real aggregator on loopback, the real munged,
the real users alice (2001) and bob (2002), SlurmUser and root, through the installed
/usr/local/bin/nomadectl (slurm-conf/install-nomade.sh) and through raw HTTP.  Nothing of the
authentication is switched off or mocked.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import grp
import http.client
import json
import logging
import os
import pwd
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import types
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from clusterlib import api_as, free_port, needs_real_users, wait_for
from conftest import SITE_NOMADECTL, SITE_PYTHON, required
from test_hooks import Site, slurm_env

from aggregator import daemon as server
from aggregator.admin import apiclient
from aggregator.daemon import api
from aggregator.views import policy
from nomade_common import config, keys, munge

NOMADECTL, VENV_PYTHON = SITE_NOMADECTL, SITE_PYTHON
ALICE_JOB, BOB_JOB = 9100001, 9100002
ONE_LINE_ERROR = "Error: "


@pytest.fixture(scope="module", autouse=True)
def _needs():
    needs_real_users()
    if not os.path.exists(NOMADECTL):
        required(f"{NOMADECTL} is not installed (slurm-conf/install-nomade.sh)")
    for user in ("alice", "bob", "slurm"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            required(f"user {user} does not exist (slurm-conf/cluster-up.sh makes it)")


# -- the site: one store, aggregators started on it with the settings a test needs --------------
class Running:
    def __init__(self, agg: server.Aggregator, url: str, client: Path) -> None:
        self.agg, self.url, self.client = agg, url, client


class Head:
    """A head node's NØMADE under ROOT: keys, a store only root can read, a stand-in scontrol."""

    def __init__(self, root: Path) -> None:
        self.root = root
        keys.make_pair(str(root / "keys"), "server")
        (root / "data").mkdir(mode=0o700)
        (root / "state" / "reports").mkdir(parents=True)
        self.scontrol = root / "scontrol"
        self.scontrol.write_text("#!/bin/sh\nexit 1\n")  # the jobs are not in Slurm
        self.scontrol.chmod(0o755)
        self.n = 0

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.write_text(text)
        path.chmod(0o644)
        return path

    def aggregator_config(
        self, http_port: int, squeue: str = "", extra: str = "", **security
    ) -> Path:
        sec = "".join(f"{k} = {json.dumps(v)}\n" for k, v in security.items())
        self.n += 1
        return self.write(
            f"aggregator-{self.n}.toml",
            f"""
[general]
cluster_name = "nomadedev"
data_dir = "{self.root}/data"
[aggregator]
listen = "tcp://127.0.0.1:{free_port()}"
http_listen = "127.0.0.1:{http_port}"
scontrol = "{self.scontrol}"
squeue = "{squeue or self.root / "no-squeue"}"
[hooks]
state_dir = "{self.root}/state"
[security]
keys_dir = "{self.root}/keys"
{sec}
[collectors.job_history]
enabled = false
{extra}""",
        )

    def client_config(self, url: str, tls_ca: str = "") -> Path:
        self.n += 1
        return self.write(
            f"client-{self.n}.toml",
            f"""
[general]
data_dir = "{self.root}/data"
[hooks]
aggregator_url = "{url}"
[security]
tls_ca = "{tls_ca}"
""",
        )

    @contextlib.contextmanager
    def aggregator(self, client_ca: str = "", squeue: str = "", extra: str = "", **security):
        port = free_port()
        cfg = config.load(str(self.aggregator_config(port, squeue, extra, **security)))
        agg = server.Aggregator(cfg)
        agg.start()
        url = f"{agg.http.scheme}://127.0.0.1:{port}"
        try:
            yield Running(agg, url, self.client_config(url, client_ca))
        finally:
            agg.stop()

    def stored(self, job_id: int):
        conn = sqlite3.connect(f"file:{self.root}/data/nomade.db?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(
                "SELECT user, user_id FROM jobs WHERE job_id = ?", (job_id,)
            ).fetchone()
        except sqlite3.OperationalError:
            return None
        finally:
            conn.close()


def start_report(job_id: int, user: str) -> bytes:
    pw = pwd.getpwnam(user)
    env = {
        "SLURM_JOB_ID": str(job_id),
        "SLURM_JOB_USER": user,
        "SLURM_JOB_UID": str(pw.pw_uid),
        "SLURM_JOB_PARTITION": "debug",
        "SLURM_JOB_NODELIST": "node1",
    }
    return json.dumps({"env": env, "kind": "prologslurmctld", "t": time.time()}).encode()


@pytest.fixture(scope="module")
def head():
    root = Path(tempfile.mkdtemp(prefix="nomade-api-"))
    root.chmod(0o755)
    h = Head(root)
    with h.aggregator(private_data="none") as run:  # the jobs both users have
        for job_id, user in ((ALICE_JOB, "alice"), (BOB_JOB, "bob")):
            apiclient.call(run.url, "POST", "/api/v1/hooks/job-start", start_report(job_id, user))
        wait_for("both jobs stored", lambda: h.stored(ALICE_JOB) and h.stored(BOB_JOB), 20, 0.1)
    yield h
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def site(head):
    with head.aggregator(private_data="none") as run:
        yield run


# -- callers ------------------------------------------------------------------------------------
def raw(url: str, method: str, target: str, body: bytes = b"", auth: str | None = None):
    """(status, answer) of one request exactly as given (AUTH: the Authorization header)."""
    req = urllib.request.Request(
        url + target,
        data=body if method == "POST" else None,
        method=method,
        headers={"Authorization": auth} if auth else {},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def nomadectl(user: str, client: Path, *args: str) -> subprocess.CompletedProcess:
    """The installed nomadectl as USER (root: as it is)."""
    cmd = [NOMADECTL, "--config", str(client), *args]
    if user != "root":
        cmd = ["runuser", "-u", user, "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd="/")


def as_user(user: str, url: str, method: str, target: str, body: bytes = b"") -> tuple[int, dict]:
    """A request signed by USER's own credential (apiclient in the installed venv)."""
    return api_as(user, url, method, target, body)  # type: ignore[return-value]


def one_line_refusal(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(ONE_LINE_ERROR), proc.stderr
    return lines[0]


def job_ids(proc: subprocess.CompletedProcess) -> set[int]:
    assert proc.returncode == 0, proc.stderr
    return {j["job_id"] for j in json.loads(proc.stdout)}


# -- authentication -----------------------------------------------------------------------------
ENDPOINTS = [
    "/api/v1/status",
    "/api/v1/queue",
    "/api/v1/nodes",
    "/api/v1/licenses",
    "/api/v1/collectors",
    "/api/v1/jobs",
    f"/api/v1/jobs/{ALICE_JOB}",
]


def test_without_a_credential_only_health_answers(site):
    for target in ENDPOINTS:
        status, answer = raw(site.url, "GET", target)
        assert status == 401, target
        assert (
            list(answer) == ["error"] and "\n" not in answer["error"] and "MUNGE" in answer["error"]
        )
    for target in ("/api/v1/hooks/job-start", "/api/v1/hooks/job-end", "/api/v1/check"):
        assert raw(site.url, "POST", target, b"{}")[0] == 401
    assert raw(site.url, "GET", "/api/v1/health") == (200, {"ok": True})  # and nothing more
    assert raw(site.url, "GET", "/api/v1/jobs", auth="MUNGE MUNGE:forged:")[0] == 401


def test_job_reports_come_only_from_root_and_slurm_user(site, head):
    forged = start_report(9100010, "bob")  # alice pretends bob's job starts
    status, answer = as_user("alice", site.url, "POST", "/api/v1/hooks/job-start", forged)
    assert status == 403 and "root and slurm" in answer
    status, _ = as_user("alice", site.url, "POST", "/api/v1/hooks/job-end", forged)
    assert status == 403
    status, answer = as_user(
        "slurm", site.url, "POST", "/api/v1/hooks/job-start", start_report(9100011, "bob")
    )
    assert (status, answer) == (200, {"ok": True})
    apiclient.call(
        site.url, "POST", "/api/v1/hooks/job-start", start_report(9100012, "alice")
    )  # root
    wait_for(
        "slurm's and root's reports stored",
        lambda: head.stored(9100011) and head.stored(9100012),
        20,
        0.1,
    )
    time.sleep(0.5)  # alice's would have been stored by now
    assert head.stored(9100010) is None


def test_a_credential_is_good_for_its_own_request_once(site):
    auth = munge.sign("GET", "/api/v1/jobs", b"")
    assert raw(site.url, "GET", "/api/v1/jobs", auth=auth)[0] == 200
    status, answer = raw(site.url, "GET", "/api/v1/jobs", auth=auth)
    assert status == 401 and "replayed" in answer["error"]
    other = [
        ("GET", "/api/v1/jobs?user=alice", "/api/v1/jobs?user=bob", b"", b""),
        ("GET", "/api/v1/jobs", "/api/v1/status", b"", b""),
        (
            "POST",
            "/api/v1/hooks/job-start",
            "/api/v1/hooks/job-start",
            start_report(9100013, "alice"),
            start_report(9100014, "bob"),
        ),
    ]
    for method, signed, sent, body, sent_body in other:
        auth = munge.sign(method, signed, body)
        status, answer = raw(site.url, method, sent, sent_body, auth=auth)
        assert status == 401 and "another request" in answer["error"], (signed, sent)


def test_an_expired_credential_is_refused(head):
    auth = munge.sign("GET", "/api/v1/jobs", b"")
    time.sleep(2.5)
    with head.aggregator(private_data="none", credential_max_age_seconds=1.0) as run:
        status, answer = raw(run.url, "GET", "/api/v1/jobs", auth=auth)
    assert status == 401 and "ago (at most 1 s)" in answer["error"]


def test_bodies_are_bounded(site):
    big = b'{"env": {"X": "' + b"x" * (1 << 20) + b'"}}'
    status, answer = raw(
        site.url,
        "POST",
        "/api/v1/hooks/job-start",
        big,
        auth=munge.sign("POST", "/api/v1/hooks/job-start", big),
    )
    assert status == 413 and "bytes" in answer["error"]
    deep = b'{"env": ' * 40 + b"{}" + b"}" * 40
    status, answer = raw(
        site.url,
        "POST",
        "/api/v1/hooks/job-start",
        deep,
        auth=munge.sign("POST", "/api/v1/hooks/job-start", deep),
    )
    assert status == 400 and "nested deeper" in answer["error"]


# -- each user sees their own -------------------------------------------------------------------
def test_a_user_reads_only_their_own_jobs(site):
    line = one_line_refusal(nomadectl("bob", site.client, "job", str(ALICE_JOB)))
    assert f"job {ALICE_JOB} is not in the database" in line
    mine = nomadectl("alice", site.client, "job", str(ALICE_JOB), "--json")
    assert mine.returncode == 0 and json.loads(mine.stdout)["user"] == "alice"
    assert nomadectl("bob", site.client, "job", str(BOB_JOB)).returncode == 0
    # another's job answers as a job that does not exist: its existence is not disclosed
    assert as_user("bob", site.url, "GET", f"/api/v1/jobs/{ALICE_JOB}") == as_user(
        "bob", site.url, "GET", "/api/v1/jobs/1"
    )
    listed = job_ids(nomadectl("alice", site.client, "jobs", "--json"))
    assert ALICE_JOB in listed and BOB_JOB not in listed
    assert job_ids(nomadectl("alice", site.client, "jobs", "--user", "bob", "--json")) == set()
    assert {ALICE_JOB, BOB_JOB} <= job_ids(nomadectl("root", site.client, "jobs", "--json"))
    assert nomadectl("alice", site.client, "jobs").stdout.count("alice") >= 1


def test_check_scores_as_the_caller(site):
    script = Path(site.client).parent / "job.sh"
    script.write_text("#!/bin/bash\n#SBATCH -t 5 --mem=100M\ntrue\n")
    script.chmod(0o644)
    assert "only root" in one_line_refusal(
        nomadectl("alice", site.client, "check", str(script), "--user", "bob")
    )
    # the server refuses it too, whatever the client does
    req = json.dumps({"request": {"user": "bob", "partition": "debug", "cpus": 1}}).encode()
    status, answer = as_user("alice", site.url, "POST", "/api/v1/check", req)
    assert status == 403 and "another user" in answer
    own = nomadectl("alice", site.client, "check", str(script), "--json")
    assert own.returncode == 0, own.stderr
    assert json.loads(own.stdout)["ok"] is True and "bob" not in own.stdout
    req = json.dumps({"request": {"partition": "debug", "cpus": 1}}).encode()  # no user named
    status, answer = as_user("alice", site.url, "POST", "/api/v1/check", req)
    assert status == 200 and "bob" not in json.dumps(answer)
    req = json.dumps({"request": {"user": "bob", "partition": "debug", "cpus": 1}}).encode()
    assert apiclient.call(site.url, "POST", "/api/v1/check", req)["ok"] is True  # root may
    # A request whose fields are not a job's gets one line, not a 500 and a traceback in the log.
    for odd in ({"cpus": "x"}, {"time_limit_seconds": [1]}, {"mem_per_node_bytes": {"a": 1}}):
        req = json.dumps({"request": {"partition": "debug", **odd}}).encode()
        status, answer = as_user("alice", site.url, "POST", "/api/v1/check", req)
        assert status == 400 and "not what a job asks for" in answer, (odd, status, answer)


def test_an_admin_group_member_sees_every_job(head):
    alices_group = grp.getgrgid(pwd.getpwnam("alice").pw_gid).gr_name
    with head.aggregator(private_data="nodes", admin_groups=[alices_group]) as run:
        assert {ALICE_JOB, BOB_JOB} <= job_ids(nomadectl("alice", run.client, "jobs", "--json"))
        assert nomadectl("alice", run.client, "job", str(BOB_JOB)).returncode == 0
        assert nomadectl("alice", run.client, "nodes").returncode == 0
        assert ALICE_JOB not in job_ids(nomadectl("bob", run.client, "jobs", "--json"))


def test_private_nodes_hides_the_nodes_from_users(head):
    with head.aggregator(private_data="nodes") as run:
        line = one_line_refusal(nomadectl("alice", run.client, "nodes"))
        assert "PrivateData=nodes" in line and "403" in line
        status = nomadectl("alice", run.client, "status", "--json")
        assert status.returncode == 0, status.stderr
        shown = json.loads(status.stdout)
        assert shown["slurm_nodes"] == [] and shown["nodes"] == [] and shown["node_metrics"] == {}
        assert "nodes" in apiclient.call(run.url, "GET", "/api/v1/nodes")  # root sees them
        assert as_user("alice", run.url, "GET", "/api/v1/collectors")[0] == 403
    with head.aggregator(private_data="none") as run:
        assert nomadectl("alice", run.client, "nodes").returncode == 0
        assert nomadectl("alice", run.client, "queue").returncode == 0
        assert nomadectl("alice", run.client, "licenses").returncode == 0


def test_with_munged_unreachable_callers_get_503_and_root_reads_the_store(head):
    missing = str(head.root / "no-munged.socket")
    with head.aggregator(private_data="none", munge_socket=missing) as run:
        status, answer = raw(
            run.url, "GET", "/api/v1/jobs", auth=munge.sign("GET", "/api/v1/jobs", b"")
        )
        assert status == 503 and answer["error"].startswith(
            "munged is not answering on the head node: "
        )
        line = one_line_refusal(nomadectl("alice", run.client, "jobs"))
        assert "munged is not answering on the head node" in line and "503" in line
        assert {ALICE_JOB, BOB_JOB} <= job_ids(nomadectl("root", run.client, "jobs", "--json"))
        # what the hooks' reports directory brings is still stored
        report = (
            head.root
            / "state"
            / "reports"
            / f"{time.time_ns() // 1000}-9100020-prologslurmctld.json"
        )
        report.write_bytes(start_report(9100020, "alice") + b"\n")
        wait_for("the report stored", lambda: head.stored(9100020), 20, 0.1)


def test_plain_http_off_loopback_refuses_to_start(head):
    cfg = head.aggregator_config(free_port())
    cfg.write_text(cfg.read_text().replace('http_listen = "127.0.0.1:', 'http_listen = "0.0.0.0:'))
    binary = Path(sys.executable).parent / "nomade-aggregator"
    proc = subprocess.run(
        [str(binary), "--config", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert "aggregator.http_listen 0.0.0.0:" in line
    assert "security.tls_cert" in line and "security.tls_key" in line


def self_signed(root: Path) -> tuple[Path, Path]:
    cert, key = root / "tls-cert.pem", root / "tls-key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    cert.chmod(0o644)
    key.chmod(0o600)
    return cert, key


def test_over_https_with_a_self_signed_certificate(head):
    cert, key = self_signed(head.root)
    with head.aggregator(
        client_ca=str(cert), private_data="none", tls_cert=str(cert), tls_key=str(key)
    ) as run:
        assert run.url.startswith("https://")
        listed = job_ids(nomadectl("alice", run.client, "jobs", "--json"))
        assert ALICE_JOB in listed and BOB_JOB not in listed
        untrusted = head.client_config(run.url)  # the system's store does not know this CA
        line = one_line_refusal(nomadectl("alice", untrusted, "jobs"))
        assert "CERTIFICATE_VERIFY_FAILED" in line or "certificate verify failed" in line
        # the controller hook over https: curl, verified with hooks.json's tls_ca, signed by slurm
        hooks_dir = head.root / "hooks-https"
        hooks_dir.mkdir()
        hooks_dir.chmod(0o755)
        hook_site = Site(hooks_dir, aggregator_url=run.url, controller_transport="http")
        hook_site.settings(tls_ca=str(cert))
        env = slurm_env("prologslurmctld", SLURM_JOB_ID="9100030")
        proc, took = hook_site.run("prologslurmctld", env, user="slurm")
        assert proc.returncode == 0 and took < hook_site.limit + 0.5
        wait_for("the https report stored", lambda: head.stored(9100030), 20, 0.1)
        assert hook_site.log("prologslurmctld") == []
        hook_site.settings(tls_ca="")  # not verifiable: the hook fails, logs one line, exits 0
        proc, _ = hook_site.run(
            "prologslurmctld", slurm_env("prologslurmctld", SLURM_JOB_ID="9100031"), user="slurm"
        )
        assert proc.returncode == 0
        (logged,) = hook_site.log("prologslurmctld")
        assert "CurlError" in logged and head.stored(9100031) is None


# -- the answer before the work -----------------------------------------------------------------
class _SlowStarts:
    """An aggregator whose start work blocks until released: the hook's answer must not wait."""

    def __init__(self, cfg: config.Config) -> None:
        self.cfg, self.release, self.ran = cfg, threading.Event(), threading.Event()

    def receive_report(self, kind, body):
        stored = concurrent.futures.Future()
        stored.set_result(1)  # committed at once: the answer may go
        return types.SimpleNamespace(future=stored, cancel=lambda: None), self.work

    def work(self) -> None:
        self.ran.set()
        self.release.wait(10)


def test_a_start_report_is_answered_before_its_work_begins():
    port = free_port()
    fake = _SlowStarts(config.parse(f'[aggregator]\nhttp_listen = "127.0.0.1:{port}"\n'))
    http = api.HttpServer(fake)
    http.start()
    try:
        body = start_report(9100040, "alice")
        t0 = time.monotonic()
        answer = apiclient.call(f"http://127.0.0.1:{port}", "POST", "/api/v1/hooks/job-start", body)
        assert answer == {"ok": True} and time.monotonic() - t0 < 2.0
        wait_for("the work to start after the answer", fake.ran.is_set, 5, 0.05)
    finally:
        fake.release.set()
        http.stop()


# -- slow, refused and odd requests ------------------------------------------------------------
def port_of(url: str) -> int:
    return urllib.parse.urlsplit(url).port


def begin(
    url: str, method: str, target: str, length: int, auth: str | None = None
) -> socket.socket:
    """A request whose headers are sent whole, declaring a body of LENGTH bytes, none sent."""
    sock = socket.create_connection(("127.0.0.1", port_of(url)), timeout=10)
    head = f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n"
    sock.sendall((head + (f"Authorization: {auth}\r\n" if auth else "") + "\r\n").encode())
    return sock


def answer_on(sock: socket.socket, within: float) -> tuple[int, bytes]:
    sock.settimeout(within)
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    return resp.status, resp.read()


class Trickle(threading.Thread):
    """One byte of body every EVERY seconds, until the server closes the connection."""

    def __init__(self, sock: socket.socket, every: float = 0.3) -> None:
        super().__init__(daemon=True)
        self.sock, self.every, self.stop, self.cut = (
            sock,
            every,
            threading.Event(),
            threading.Event(),
        )

    def run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                self.sock.send(b" ")
            except OSError:
                self.cut.set()
                return


def one_json_line(raw_body: bytes) -> str:
    assert raw_body.count(b"\n") == 0, raw_body
    shown = json.loads(raw_body)
    assert list(shown) == ["error"], shown
    return shown["error"]


def closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def signed_as(user: str, method: str, target: str, body: bytes, n: int) -> list[str]:
    """N Authorization headers made by USER's own munged credentials."""
    code = (
        "import sys\nfrom nomade_common import munge\n"
        "print('\\n'.join(munge.sign(sys.argv[1], sys.argv[2], sys.argv[3].encode())"
        " for _ in range(int(sys.argv[4]))))\n"
    )
    proc = subprocess.run(
        [
            "runuser",
            "-u",
            user,
            "--",
            VENV_PYTHON,
            "-c",
            code,
            method,
            target,
            body.decode(),
            str(n),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_a_request_without_a_credential_is_refused_before_its_body(site):
    sock = begin(site.url, "POST", "/api/v1/check", 100_000)  # and not a byte of it
    trickle = Trickle(sock)
    trickle.start()
    try:
        t0 = time.monotonic()
        status, body = answer_on(sock, 3)
        assert status == 401 and "MUNGE" in one_json_line(body)
        assert time.monotonic() - t0 < 2
        # and the connection is not held open by the trickle that goes on
        assert trickle.cut.wait(api.LINGER_SECONDS + 3) or closed_within(sock, 1)
    finally:
        trickle.stop.set()
        sock.close()


def test_an_authenticated_body_has_one_deadline_for_all_of_it(site, monkeypatch):
    monkeypatch.setattr(api, "BODY_SECONDS", 2.0)
    body = b'{"request": {}}' + b" " * 1000
    sock = begin(
        site.url, "POST", "/api/v1/check", len(body), auth=munge.sign("POST", "/api/v1/check", body)
    )
    trickle = Trickle(sock)  # a byte every 0.3 s: never late for one chunk, late for the body
    trickle.start()
    try:
        t0 = time.monotonic()
        status, answer = answer_on(sock, 8)
        took = time.monotonic() - t0
        assert status == 408 and "within 2 s" in one_json_line(answer)
        assert 1.5 < took < 4, took
        assert trickle.cut.wait(api.LINGER_SECONDS + 3) or closed_within(sock, 1)
    finally:
        trickle.stop.set()
        sock.close()


def test_one_user_cannot_take_the_servers_concurrency(site, monkeypatch):
    monkeypatch.setattr(api, "BODY_SECONDS", 60.0)  # bob's slow requests last the whole test
    n = policy.USER_REQUESTS
    body = b'{"request": {}}'
    auths = signed_as("bob", "POST", "/api/v1/check", body, n + 2)
    slow = [begin(site.url, "POST", "/api/v1/check", len(body), auth=a) for a in auths[:n]]
    try:
        time.sleep(1.0)  # their credentials decoded: n requests of bob's in progress
        assert as_user("alice", site.url, "GET", "/api/v1/jobs")[0] == 200
        over = begin(site.url, "POST", "/api/v1/check", len(body), auth=auths[n])
        status, answer = answer_on(over, 3)
        over.close()
        assert status == 429 and f"{n} requests in progress" in one_json_line(answer)
    finally:
        for sock in slow:
            sock.close()
    time.sleep(0.5)  # once they are gone, bob is answered again
    assert raw(site.url, "POST", "/api/v1/check", body, auth=auths[n + 1])[0] == 200


def test_refusals_are_logged_once_a_minute_per_reason(head, monkeypatch, caplog):
    monkeypatch.setattr(api, "REFUSALS_LOG_SECONDS", 1.5)
    caplog.set_level(logging.INFO, logger="nomade.api")
    with head.aggregator(private_data="none") as run:
        for _ in range(20):
            assert raw(run.url, "GET", "/api/v1/jobs")[0] == 401
        assert raw(run.url, "GET", "/api/v1/jobs", auth="MUNGE MUNGE:forged:")[0] == 401
        time.sleep(1.6)
        assert raw(run.url, "GET", "/api/v1/status")[0] == 401
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 3, lines  # no credential, a forged one, no credential again
    assert "no credential" in lines[0] and "more refused" not in lines[0]
    assert "(19 more refused for this reason in the last minute)" in lines[2]


def test_a_jobs_queue_at_start_names_only_the_callers_own(head):
    squeue = head.write(
        "squeue-with-alice",
        "#!/bin/sh\nprintf '1|RUNNING|debug|alice|4|None\\n2|PENDING|debug|bob|1|Priority\\n'\n",
    )
    squeue.chmod(0o755)
    with head.aggregator(private_data="jobs,users", squeue=str(squeue)) as run:
        apiclient.call(run.url, "POST", "/api/v1/hooks/job-start", start_report(9100050, "bob"))
        wait_for("bob's job stored", lambda: head.stored(9100050), 20, 0.1)
        shown = nomadectl("bob", run.client, "job", "9100050", "--json")
        assert shown.returncode == 0, shown.stderr
        snap = json.loads(shown.stdout)["queue_at_start"]
        assert snap["by_user_state"] == {"bob:PENDING": 1} and "alice" not in shown.stdout
        assert snap["by_state"] == {"RUNNING": 1, "PENDING": 1}
        full = apiclient.call(run.url, "GET", "/api/v1/jobs/9100050")  # root sees the queue
        assert full["queue_at_start"]["by_user_state"]["alice:RUNNING"] == 1


def test_a_users_status_leaves_out_the_agents_side(site):
    status, shown = as_user("alice", site.url, "GET", "/api/v1/status")
    assert status == 200
    assert (shown["counters"], shown["agents_refused"], shown["agents_on_plain"]) == ({}, {}, [])
    assert "total" in apiclient.call(site.url, "GET", "/api/v1/status")["agents_refused"]


def test_every_error_of_the_app_is_one_json_line(site, caplog):
    caplog.set_level(logging.INFO, logger="nomade.api")

    def plain(method: str, target: str) -> tuple[int, bytes]:  # no redirect followed
        conn = http.client.HTTPConnection("127.0.0.1", port_of(site.url), timeout=10)
        try:
            conn.request(method, target, headers={"Authorization": munge.sign(method, target, b"")})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    for target in ("/api/v1/jobs/99999999999999999999999", f"/api/v1/jobs/{1 << 63}"):
        status, body = plain("GET", target)
        assert (status, one_json_line(body)) == (404, "no such job")
    status, body = plain("GET", "/api/v1/status/")  # no 307 to /api/v1/status
    assert status == 404 and "no such endpoint" in one_json_line(body)
    status, body = plain("GET", "/api/v1/nowhere")
    assert status == 404 and "no such endpoint" in one_json_line(body)
    status, body = plain("DELETE", "/api/v1/status")
    assert status == 405 and one_json_line(body)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- an administrator's alert actions, from their own account -----------------------------------
# A rule that evaluates once at start, then not for a day: the alert raised below stays open.
SILENT_RULE = '[[alerts.rules]]\nname = "node_silent"\nkind = "node_silent"\nevery = 86400\n'


def _alert(run: Running, subject: str) -> int:
    from aggregator import store

    wait_for("the rule's first evaluation", lambda: run.agg.alerting.cycles >= 1, 30, 0.05)

    def raise_one(c):
        return store.raise_alert(c, "node_silent", subject, "critical", "silent", time.time())[0]

    return run.agg.writer.call(raise_one)


def test_an_admin_acks_and_silences_alerts_as_themselves_and_a_user_cannot(head):
    """carol, named in security.admin_users, acknowledges an alert and silences a node with
    the installed nomadectl (through the API, her own credential); each is in the admin log
    under her uid and name.  bob gets one line and writes nothing."""
    try:
        carol = pwd.getpwnam("carol").pw_uid
    except KeyError:
        required("user carol does not exist (slurm-conf/cluster-up.sh makes it)")
    with head.aggregator(private_data="none", admin_users=["carol"], extra=SILENT_RULE) as run:
        alert = _alert(run, "node7")
        for args in (
            ("alerts", "ack", str(alert)),
            ("alerts", "silence", "--subject", "node7", "--for", "2h", "--reason", "bob's"),
            ("alerts", "silences"),
        ):
            line = one_line_refusal(nomadectl("bob", run.client, *args))
            assert "for administrators" in line and "HTTP 403" in line, line
        ack = nomadectl("carol", run.client, "alerts", "ack", str(alert))
        assert ack.returncode == 0, ack.stderr
        assert ack.stdout.strip() == f"alert {alert} acknowledged by carol"
        out = nomadectl(
            "carol", run.client, "alerts", "silence", "--subject", "node7", "--for", "2h",
            "--reason", "DIMM swap",
        )  # fmt: skip
        assert out.returncode == 0 and "every rule about node7" in out.stdout, out.stderr
        listed = nomadectl("carol", run.client, "alerts", "silences", "--json")
        (shown,) = json.loads(listed.stdout)
        assert (shown["subject"], shown["created_by"], shown["reason"]) == (
            "node7",
            "carol",
            "DIMM swap",
        )
        line = one_line_refusal(nomadectl("carol", run.client, "alerts", "ack", "999999"))
        assert "no alert 999999" in line
        conn = sqlite3.connect(f"file:{head.root}/data/nomade.db?mode=ro", uri=True, timeout=10)
        try:
            acked = conn.execute(
                "SELECT acked_by, state FROM alerts WHERE id = ?", (alert,)
            ).fetchone()
            log = conn.execute(
                "SELECT uid, user, action FROM admin_log WHERE action LIKE 'alert %' ORDER BY id"
            ).fetchall()
            silences = conn.execute("SELECT count(*) FROM alert_silences").fetchone()[0]
        finally:
            conn.close()
        assert acked == ("carol", "firing") and silences == 1
        assert log == [(carol, "carol", "alert ack"), (carol, "carol", "alert silence")]


@pytest.mark.parametrize(
    "body, expected",
    [
        (b"[]", "expected a JSON object"),
        (b'{"subject": "n1", "until": "tomorrow", "reason": "x"}', "until: expected Unix"),
        (b'{"subject": "n1", "until": 1e300, "reason": "x"}', "until: expected Unix"),
        (b'{"subject": "n1", "until": NaN, "reason": "x"}', "until: expected Unix"),
        (b'{"subject": "n1", "until": 1' + b"0" * 400 + b', "reason": "x"}', "until: expected"),
        (b'{"subject": "\\ud800", "until": 4e9, "reason": "x"}', "subject: expected one"),
        (b'{"subject": "n1\\nnode9", "until": 4e9, "reason": "x"}', "subject: expected one"),
        (b'{"subject": "n1", "until": 4e9, "reason": ""}', "reason: expected one"),
        (b'{"subject": "n1", "until": 4e9, "reason": "x", "by": "root"}', "unknown field 'by'"),
        (b'{"until": 4e9, "reason": "x"}', "names a rule, a subject or both"),
        (b'{"subject": "n1", "until": 1000, "reason": "x"}', "over before it began"),
        (b'{"subject": "n1", "until": 9e10, "reason": "x"}', "at most 400 days"),
    ],
)
def test_a_silence_the_api_cannot_take_is_one_line_and_nothing_stored(head, body, expected):
    try:
        pwd.getpwnam("carol")
    except KeyError:
        required("user carol does not exist (slurm-conf/cluster-up.sh makes it)")
    with head.aggregator(private_data="none", admin_users=["carol"]) as run:
        before = as_user("carol", run.url, "GET", "/api/v1/alerts/silences")
        status, answer = as_user("carol", run.url, "POST", "/api/v1/alerts/silences", body)
        assert status == 400 and expected in str(answer) and "\n" not in str(answer), answer
        assert as_user("carol", run.url, "GET", "/api/v1/alerts/silences") == before
