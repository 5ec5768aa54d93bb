"""The real dev cluster with NØMADE running on it, for the end-to-end tests."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from click.testing import CliRunner
from conftest import SITE_PYTHON, required

import nomadectl as ctl

INCLUDE = "/etc/slurm/nomade-hooks.conf"
CLUSTER_UP = Path(__file__).resolve().parent.parent / "slurm-conf" / "cluster-up.sh"
PY = "/usr/bin/python3"
MiB = 1 << 20
HOLD_200MB_WRITE_50MB = (
    "import os, time\n"
    "block = bytearray(200 * 1024 * 1024)\n"
    "for i in range(0, len(block), 4096): block[i] = 1\n"
    "with open('out-%s.bin' % os.environ['SLURM_JOB_ID'], 'wb') as f:\n"
    "    for _ in range(50): f.write(os.urandom(1024 * 1024))\n"
    "    f.flush(); os.fsync(f.fileno())\n"
    "end = time.time() + 7\n"
    "while time.time() < end: pass\n"
)
HOLD_200MB = (
    "import time, socket\n"
    "block = bytearray(200 * 1024 * 1024)\n"
    "for i in range(0, len(block), 4096): block[i] = 1\n"
    "end = time.time() + 7\n"
    "while time.time() < end: pass\n"
)
# Grows past its 150 MB limit in 20 MB steps 0.3 s apart, so 1-second samples see the climb.
GROW_PAST_LIMIT = (
    "import time\n"
    "time.sleep(5)\n"
    "chunks = []\n"
    "for _ in range(100):\n"
    "    chunks.append(bytearray(20 * 1024 * 1024))\n"
    "    for i in range(0, len(chunks[-1]), 4096): chunks[-1][i] = 1\n"
    "    time.sleep(0.3)\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, predicate, deadline: float, every: float = 0.5):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {deadline:.0f} s waiting for {what}")


class Pipeline:
    def __init__(self, base: Path, extra_config: str = "") -> None:
        self.base = base
        self.zmq_port, self.http_port = free_port(), free_port()
        self.config = base / "nomade.toml"
        self.config.write_text(f"""
[general]
cluster_name = "nomadedev"
data_dir = "{base}/data"
[agent]
aggregator = "tcp://127.0.0.1:{self.zmq_port}"
interval_seconds = 1.0
heartbeat_seconds = 1.0
resend_seconds = 1.0
spool_dir = "{base}/spool"
[aggregator]
listen = "tcp://127.0.0.1:{self.zmq_port}"
http_listen = "127.0.0.1:{self.http_port}"
reconcile_delay_seconds = 1.0
reconcile_attempts = 8
[hooks]
prefix = "{base}/hooks"
aggregator_url = "http://127.0.0.1:{self.http_port}"
state_dir = "{base}/hookstate"
task_notice = true
[security]
keys_dir = "{base}/keys"
{extra_config}
""")
        if "[collectors.job_history]" not in extra_config:
            # Each test's database holds its own jobs only: no import of the cluster's sacct
            # history.
            with self.config.open("a") as f:
                f.write("[collectors.job_history]\nenabled = false\n")
        self.db = base / "data" / "nomade.db"
        self.started = time.time()
        self.bindir = Path(sys.executable).parent
        self.aggregator: subprocess.Popen | None = None
        self.agents: dict[str, subprocess.Popen] = {}

    def ctl(self, *args: str):
        result = CliRunner().invoke(ctl.main, ["--config", str(self.config), *args])
        assert result.exit_code == 0, result.output
        return result.output

    def start_aggregator(self) -> None:
        log = open(self.base / "aggregator.log", "ab")  # noqa: SIM115
        self.aggregator = subprocess.Popen(
            [str(self.bindir / "nomade-aggregator"), "--config", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def kill_aggregator(self) -> None:
        self.aggregator.send_signal(signal.SIGKILL)
        self.aggregator.wait(10)

    def enrol(self, nodes: tuple[str, ...]) -> None:
        """As a site does: each node makes its pair (`nomade-agent --make-key`), the collected
        lines are enrolled at once (`nomadectl keys add --file`)."""
        lines = [
            subprocess.run(
                [
                    str(self.bindir / "nomade-agent"),
                    "--config",
                    str(self.config),
                    "--make-key",
                    "--node",
                    node,
                ],
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            ).stdout
            for node in nodes
        ]
        (self.base / "enrol.txt").write_text("".join(lines))
        self.ctl("keys", "add", "--file", str(self.base / "enrol.txt"))

    def start_agent(self, node: str) -> None:
        log = open(self.base / f"agent-{node}.log", "ab")  # noqa: SIM115
        self.agents[node] = subprocess.Popen(
            [
                str(self.bindir / "nomade-agent"),
                "--config",
                str(self.config),
                "--node",
                node,
                "--ledger",
                str(self.base / f"ledger-{node}.txt"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def stop_agent(self, node: str) -> None:
        self.agents[node].send_signal(signal.SIGTERM)
        self.agents[node].wait(10)

    def query(self, sql: str, *args):
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def outbox_depth(self, node: str) -> int:
        conn = sqlite3.connect(str(self.base / "spool" / node / "outbox.db"), timeout=10)
        try:
            return conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
        finally:
            conn.close()

    def log(self) -> str:
        return (self.base / "aggregator.log").read_text(errors="replace")

    def daemon_logs(self, lines: int = 40) -> str:
        """The last LINES lines of the aggregator's and each agent's log, and whether each
        still runs: what a failed start-up is explained by (the directory goes at teardown)."""
        out = []
        for name, proc in [("aggregator", self.aggregator), *self.agents.items()]:
            path = self.base / ("aggregator.log" if name == "aggregator" else f"agent-{name}.log")
            text = path.read_text(errors="replace") if path.exists() else "(no log)"
            state = "running" if proc is not None and proc.poll() is None else "exited"
            tail = "\n".join(text.splitlines()[-lines:])
            code = "" if proc is None else f" rc={proc.poll()}"
            out.append(f"--- {name} ({state}{code}) ---\n{tail}")
        return "\n".join(out)

    def shutdown(self) -> None:
        _undo(self)

    def job_json(self, job_id: int) -> dict:
        return json.loads(self.ctl("job", str(job_id), "--json"))


@contextlib.contextmanager
def running_pipeline(extra_config: str = ""):
    """Hooks installed into the dev cluster, an aggregator and two agents; all undone after."""
    base = Path(tempfile.mkdtemp(prefix="nomade-it-", dir="/tmp"))
    base.chmod(0o755)
    (base / "jobs").mkdir(mode=0o777)
    (base / "jobs").chmod(0o1777)
    p = Pipeline(base, extra_config)
    p.ctl("init")  # the database and the aggregator's key pair
    p.enrol(("node1", "node2"))
    p.ctl("install-hooks", "--include", INCLUDE)
    try:
        subprocess.run(["scontrol", "reconfigure"], check=True, timeout=30)
        wait_for(
            "slurmctld to load NØMADE's hooks",
            lambda: (
                str(base / "hooks")
                in subprocess.run(
                    ["scontrol", "show", "config"], capture_output=True, text=True
                ).stdout
            ),
            30,
        )
        # A slurmctld started without PrologSlurmctld never runs one: the dev cluster restarts it.
        subprocess.run(
            [str(CLUSTER_UP), "--hooks-changed"], check=True, timeout=120, stdout=subprocess.DEVNULL
        )
        p.start_aggregator()
        for node in ("node1", "node2"):
            p.start_agent(node)
        try:
            wait_for(
                "both agents to say hello",
                lambda: len(p.query("SELECT node FROM nodes")) == 2 if p.db.exists() else False,
                60,
            )
        except AssertionError as exc:  # what the daemons said: the failure's only witness
            raise AssertionError(f"{exc}\n{p.daemon_logs()}") from None
        yield p
    finally:
        p.shutdown()


def _undo(p):
    base = p.base
    for proc in [p.aggregator, *p.agents.values()]:
        if proc and proc.poll() is None:
            proc.terminate()
            proc.wait(10)
    p.ctl("uninstall-hooks")  # restores the include, reconfigures and waits, then deletes
    if not os.environ.get("NOMADE_KEEP_TEST_DIRS"):
        shutil.rmtree(base, ignore_errors=True)


def sbatch(p: Pipeline, name: str, *args: str, script: str, user: str = "alice") -> int:
    out = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--uid={user}",
            f"--gid={user}",
            "-J",
            name,
            "-D",
            str(p.base / "jobs"),
            "-o",
            str(p.base / "jobs" / f"{name}-%j.out"),
            *args,
            "--wrap",
            script,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip().split(";")[0])


def py(code: str) -> str:
    return f"{PY} -c {shlex.quote(code)}"


class TooSlow(Exception):
    """A call did not return within its bound (a hang, not a timing: see within)."""


@contextlib.contextmanager
def within(seconds: float):
    """Raise TooSlow in a call that runs past SECONDS (SIGALRM; unbounded outside the main
    thread, where signals cannot be had).  A hang detector for inputs that take milliseconds
    when the code is linear and hours when it is not; it times nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def alarm(signum, frame) -> None:
        raise TooSlow(f"no answer within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def api_as(user: str, url: str, method: str, target: str, body: bytes = b"") -> tuple[int, object]:
    """(status, answer) of a request to the aggregator's API at URL signed with USER's own MUNGE
    credential, made by the installed client (so it runs with USER's rights only)."""
    code = (
        "import json, sys\nfrom aggregator.admin import apiclient\n"
        "try:\n    out = (200, apiclient.call(*sys.argv[1:4], sys.argv[4].encode()))\n"
        "except apiclient.ApiError as exc:\n    out = (exc.status, str(exc))\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run(
        ["runuser", "-u", user, "--", SITE_PYTHON, "-c", code, url, method, target, body.decode()],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert proc.returncode == 0, proc.stderr
    status, answer = json.loads(proc.stdout)
    return status, answer


def needs_real_users() -> None:
    """What the tests that act as real users need: munged answering, root with runuser, and
    the installed client; under ./test.sh a missing one fails (conftest.required)."""
    from nomade_common import munge

    try:
        munge.verify(munge.sign("GET", "/probe", b""), "GET", "/probe", b"")
    except munge.MungeError as exc:
        required(f"munged is not answering ({exc})")
    if os.geteuid() != 0 or not shutil.which("runuser"):
        required("these tests run users' commands with runuser, as root (./test.sh)")
    if not os.path.exists(SITE_PYTHON):
        required(f"{SITE_PYTHON} is not installed (slurm-conf/install-nomade.sh)")
