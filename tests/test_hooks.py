"""The Slurm hooks as Slurm runs them: installed with `nomadectl install-hooks`, started as real
processes through their shell wrappers, under the identity Slurm gives each one (root for
Prolog/Epilog, SlurmUser for the slurmctld hooks, the job's user for TaskProlog), with the
environment captured from the dev cluster (tests/fixtures/slurm/22.05/hook-env/), against a real
HTTP server on loopback.  Nothing of the hook itself is mocked.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import FIXTURES, ROOT

import nomadectl as ctl
from aggregator.admin import hooksetup
from nomade_common import munge

HOOK_ENV = FIXTURES / "slurm" / "22.05" / "hook-env"
SCONTROL_RUNNING = FIXTURES / "slurm" / "22.05" / "scontrol-show-job-o-running.txt"
WRAPPERS = ("prolog", "epilog", "taskprolog", "prologslurmctld", "epilogslurmctld")
CONTROLLER = {"prologslurmctld": "job-start", "epilogslurmctld": "job-end"}
MARGIN = 0.5  # what a hook may take beyond its hard limit: process start and exit


# What these tests need, `./test.sh` provides (as root: slurm-conf/install-deps.sh installs the
# tools, slurm-conf/cluster-up.sh creates the users); a machine without them fails, naming what
# is missing, rather than passing without having tested the hooks.
def _need(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if not path:
        pytest.fail(f"{tool} not found: install {package} (slurm-conf/install-deps.sh does)")
    return path


def _need_identities() -> None:
    if os.geteuid() != 0:
        pytest.fail("the hooks run as root, slurm and alice: run the tests as root (./test.sh)")
    _need("setpriv", "util-linux")
    for user in ("slurm", "alice"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            pytest.fail(f"user {user!r} does not exist (slurm-conf/cluster-up.sh creates it)")


def slurm_env(capture: str, **override: str | None) -> dict[str, str]:
    """The environment a hook saw on the dev cluster (a KEY=VALUE per line), with overrides."""
    env = {}
    for line in (HOOK_ENV / f"{capture}.env").read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            env[key] = value
    for key, value in override.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


# -- a real aggregator stand-in --------------------------------------------------------------
class Aggregator:
    """An HTTP server on 127.0.0.1 (port 0) answering the hooks' POSTs as MODE says:
    ok, slow (answers after 5 s), hang (never answers), garbage (200, not JSON), error (500),
    notok (200, {"ok": false}).  Each request's MUNGE credential is checked against the real
    munged, as the aggregator checks it: `callers` has the uid it proves, or why it is refused."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.requests: list[tuple[str, dict]] = []
        self.callers: list[int | str] = []
        self.release = threading.Event()
        agg = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                agg.requests.append((self.path, json.loads(body)))
                try:
                    ident = munge.verify(self.headers.get("Authorization"), "POST", self.path, body)
                    agg.callers.append(ident.uid)
                except munge.MungeError as exc:
                    agg.callers.append(str(exc))
                if agg.mode == "slow":
                    agg.release.wait(5)
                elif agg.mode == "hang":
                    agg.release.wait(60)
                    return
                status, payload = 200, b'{"ok": true}'
                if agg.mode == "garbage":
                    payload = b"<html>proxy error</html>"
                elif agg.mode == "error":
                    status, payload = 500, b'{"ok": false, "error": "database is locked"}'
                elif agg.mode == "notok":
                    payload = b'{"ok": false}'
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the hook gave up waiting, as it should

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def aggregator():
    servers = []

    def start(mode: str = "ok") -> Aggregator:
        servers.append(Aggregator(mode))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# -- installing and running -----------------------------------------------------------------
@pytest.fixture
def world():
    """A temporary directory every user can traverse (pytest's tmp_path is root-only)."""
    _need_identities()
    path = Path(tempfile.mkdtemp(prefix="nomade-hooks-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def write_config(path: Path, spool: Path, **hooks) -> Path:
    lines = ["[agent]", f"spool_dir = {json.dumps(str(spool))}", "[hooks]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in hooks.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def nomadectl(config: Path, *args: str) -> str:
    result = CliRunner().invoke(ctl.main, ["--config", str(config), *args])
    assert result.exit_code == 0, result.output
    return result.output


class Site:
    """Hooks installed under ROOT/prefix with their state in ROOT/state, spool in ROOT/spool."""

    def __init__(self, root: Path, **hooks) -> None:
        self.root = root
        self.prefix = root / "prefix"
        self.state = root / "state"
        self.spool = root / "spool"
        hooks.setdefault("state_dir", str(self.state))
        hooks.setdefault("aggregator_url", closed_port_url())
        # The HTTP path; test_controller_reports.py tests the reports directory.
        hooks.setdefault("controller_transport", "http")
        self.config = write_config(root / "nomade.toml", self.spool, **hooks)
        nomadectl(self.config, "install-hooks", "--prefix", str(self.prefix))
        self.limit = float(hooks.get("timeout_seconds", 1.0))

    def settings(self, **changes) -> None:
        """Edit the installed hooks.json, as an operator could."""
        path = self.prefix / "hooks.json"
        conf = json.loads(path.read_text(encoding="utf-8"))
        conf.update(changes)
        path.write_text(json.dumps(conf), encoding="utf-8")

    def breaker(self) -> dict:
        path = self.state / "breaker.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    def log(self, kind: str) -> list[str]:
        path = self.state / f"hooks-{kind}.log"
        return path.read_text(encoding="utf-8").splitlines() if path.exists() else []

    def run(self, kind: str, env: dict[str, str], user: str = "root"):
        return run_hook(self.prefix, kind, env, user)


def run_hook(prefix: Path, kind: str, env: dict[str, str], user: str = "root"):
    """Run the installed wrapper as USER with exactly ENV, from /, as slurmd/slurmctld do.
    Returns (CompletedProcess, wall seconds)."""
    cmd = [str(prefix / kind)]
    if user != "root":
        pw = pwd.getpwnam(user)
        cmd = [
            shutil.which("setpriv"),
            f"--reuid={pw.pw_uid}",
            f"--regid={pw.pw_gid}",
            "--init-groups",
            "--",
            *cmd,
        ]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd="/", capture_output=True, timeout=60)
    return proc, time.monotonic() - t0


def fake_scontrol(root: Path, script: str) -> str:
    path = root / "scontrol"
    path.write_text("#!/bin/sh\n" + script + "\n", encoding="utf-8")
    path.chmod(0o755)
    return str(path)


# -- 1. prolog / epilog: a report in the node's inbox ---------------------------------------
@pytest.mark.parametrize(
    "kind, capture, event",
    [("prolog", "prolog-node1", "start"), ("epilog", "epilog-node2", "end")],
)
def test_node_hook_drops_report_in_inbox(world, kind, capture, event):
    site = Site(world)
    env = slurm_env(capture)
    assert "PATH" not in env and "HOME" not in env  # what slurmd gives
    proc, _ = site.run(kind, env)
    assert proc.returncode == 0
    assert proc.stdout == b"" and proc.stderr == b""
    inbox = site.spool / env["SLURMD_NODENAME"] / "inbox"
    names = os.listdir(inbox)
    assert len(names) == 1 and names[0].endswith(f"-23-{event}.json"), names
    report = json.loads((inbox / names[0]).read_text(encoding="utf-8"))
    assert report["event"] == event
    assert report["job_id"] == 23
    assert report["node"] == env["SLURMD_NODENAME"]
    assert report["user"] == "alice" and report["uid"] == "2001"
    assert abs(report["t"] - time.time()) < 60
    assert site.log(kind) == []


def test_node_report_is_one_write_by_a_hook_that_starts_no_process(world):
    """The Prolog runs in the one bash that slurmd starts (no other process: each costs a job
    start milliseconds) and writes its report in one write, newline last, under its final name;
    the agent takes a report only once that newline is there."""
    strace = _need("strace", "strace")
    site = Site(world)
    inbox = site.spool / "node1" / "inbox"
    inbox.mkdir(parents=True)  # as the running agent has (without it the hook makes it)
    trace = world / "strace"
    env = slurm_env("prolog-node1")
    cmd = [
        strace,
        "-f",
        "-qq",
        "-s",
        "400",
        "-e",
        "trace=execve,openat,write,rename,renameat,renameat2",
        "-o",
        str(trace),
        str(site.prefix / "prolog"),
    ]
    assert subprocess.run(cmd, env=env, cwd="/", timeout=60).returncode == 0
    text = trace.read_text(encoding="utf-8")
    assert re.findall(r"execve\(\"([^\"]+)\"", text) == [str(site.prefix / "prolog")]
    assert "rename" not in text
    final = os.listdir(inbox)
    assert len(final) == 1 and final[0].endswith(".json")
    created = re.findall(
        rf'openat\(AT_FDCWD, "{re.escape(str(inbox))}/([^"]+)", [^)]*O_CREAT', text
    )
    assert created == final
    writes = re.findall(r'write\(\d+, "(\{\\"event.*)", \d+\) = \d+', text)
    report = (inbox / final[0]).read_text(encoding="utf-8")
    assert len(writes) == 1 and writes[0].endswith("\\n")
    assert report.endswith("\n") and json.loads(report)["job_id"] == 23


def test_node_hook_fails_open_when_spool_is_unusable(world):
    spool_file = world / "spool"
    spool_file.write_text("not a directory\n", encoding="utf-8")
    site = Site(world)
    proc, took = site.run("prolog", slurm_env("prolog-node1"))
    assert proc.returncode == 0 and took < site.limit + MARGIN
    (line,) = site.log("prolog")
    assert "job=23" in line and "cannot create" in line


# -- 2. prologslurmctld / epilogslurmctld: POST to the aggregator -----------------------------
def test_prologslurmctld_posts_env_as_slurm_and_leaves_scontrol_to_the_aggregator(
    world, aggregator
):
    # Inside PrologSlurmctld, `scontrol show job` waits on slurmctld's own locks: the hook makes
    # one local HTTP request and the aggregator asks scontrol after the hook has returned.
    agg = aggregator("ok")
    site = Site(world, aggregator_url=agg.url)
    env = slurm_env("prologslurmctld")
    proc, took = site.run("prologslurmctld", env, user="slurm")
    assert proc.returncode == 0 and took < site.limit + MARGIN
    assert len(agg.requests) == 1
    path, body = agg.requests[0]
    assert path == "/api/v1/hooks/job-start"
    assert body["env"] == {k: v for k, v in env.items() if k.startswith("SLURM")}
    assert "scontrol" not in body
    # signed by `munge -s` over the body's sha256sum, as munge.payload says: the same request
    assert agg.callers == [pwd.getpwnam("slurm").pw_uid]
    assert site.log("prologslurmctld") == []
    assert site.breaker().get("failures_total", 0) == 0


def test_job_names_with_quotes_backslashes_and_tabs_reach_the_aggregator_intact(world, aggregator):
    """Values are JSON-escaped only when they need it (most do not): both kinds arrive as sent."""
    agg = aggregator("ok")
    site = Site(world, aggregator_url=agg.url)
    env = dict(
        slurm_env("prologslurmctld"),
        SLURM_JOB_NAME='fit "v2" C:\\runs\ttab',
        SLURM_JOB_COMMENT="plain value, with spaces",
    )
    proc, _took = site.run("prologslurmctld", env, user="slurm")
    assert proc.returncode == 0 and len(agg.requests) == 1
    assert agg.callers == [pwd.getpwnam("slurm").pw_uid]  # escaped bytes, digested as sent
    sent = agg.requests[0][1]["env"]
    assert sent["SLURM_JOB_NAME"] == env["SLURM_JOB_NAME"]
    assert sent["SLURM_JOB_COMMENT"] == env["SLURM_JOB_COMMENT"]


def test_epilogslurmctld_posts_job_end(world, aggregator):
    agg = aggregator("ok")
    site = Site(world, aggregator_url=agg.url)
    env = slurm_env("epilogslurmctld")
    proc, _ = site.run("epilogslurmctld", env, user="slurm")
    assert proc.returncode == 0
    (req,) = agg.requests
    assert req[0] == "/api/v1/hooks/job-end"
    assert agg.callers == [pwd.getpwnam("slurm").pw_uid]
    assert req[1]["env"]["SLURM_JOB_EXIT_CODE2"] == "0:0"
    assert "scontrol" not in req[1]


# -- 3. fail-open -----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["down", "slow", "garbage", "error", "notok"])
@pytest.mark.parametrize("kind", sorted(CONTROLLER))
def test_controller_hook_fails_open(world, aggregator, kind, mode):
    url = closed_port_url() if mode == "down" else aggregator(mode).url
    site = Site(world, aggregator_url=url)
    site.settings(scontrol=str(world / "no-such-scontrol"))
    proc, took = site.run(kind, slurm_env(kind), user="slurm")
    assert proc.returncode == 0
    assert took < site.limit + MARGIN, f"{kind} took {took:.2f} s with the aggregator {mode}"
    state = site.breaker()
    assert state["failures_total"] == 1 and state["failures_in_row"] == 1
    (line,) = site.log(kind)
    assert f"{kind} job=23 " in line
    assert state["last_error"] in line


# -- 4. circuit breaker -----------------------------------------------------------------------
def test_breaker_opens_skips_the_aggregator_then_closes(world, aggregator):
    agg = aggregator("error")
    site = Site(world, aggregator_url=agg.url, breaker_failures=3, breaker_seconds=2.0)
    site.settings(scontrol=str(world / "no-such-scontrol"))
    env = slurm_env("prologslurmctld")
    for _ in range(3):
        assert site.run("prologslurmctld", env, user="slurm")[0].returncode == 0
    assert len(agg.requests) == 3
    state = site.breaker()
    assert state["failures_total"] == 3 and state["open_until"] > time.time()

    agg.mode = "ok"  # the aggregator is back, but the breaker is open: not even asked
    for kind in ("prologslurmctld", "epilogslurmctld"):
        proc, took = site.run(kind, slurm_env(kind), user="slurm")
        assert proc.returncode == 0 and took < site.limit + MARGIN
    assert len(agg.requests) == 3
    assert site.breaker()["skipped_total"] == 2

    # The five reports not taken (three failed, two skipped) were kept in unsent/: once the
    # breaker closes, each hook sends its own report and, within its time, some kept ones.
    def delivered_or_kept() -> int:
        return len(agg.requests) - 3 + len(list((site.state / "unsent").glob("*.json")))

    time.sleep(max(0.0, state["open_until"] - time.time()) + 0.1)
    assert site.run("prologslurmctld", env, user="slurm")[0].returncode == 0
    assert len(agg.requests) >= 4 and delivered_or_kept() == 6
    closed = site.breaker()
    assert closed["failures_in_row"] == 0 and closed["open_until"] == 0
    assert closed["failures_total"] == 3
    assert (
        site.run("epilogslurmctld", slurm_env("epilogslurmctld"), user="slurm")[0].returncode == 0
    )
    assert len(agg.requests) >= 5 and delivered_or_kept() == 7
    assert len(site.log("prologslurmctld")) == 3


# -- 5. taskprolog ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "notice, capture, lines",
    [
        (True, "taskprolog-node1-batch", 1),  # the batch step's first task
        (False, "taskprolog-node1-batch", 0),
        (True, "taskprolog-node2-step0", 0),  # SLURM_PROCID=1
        (True, "taskprolog-node1-step0", 0),  # a later step of a batch job
    ],
)
def test_taskprolog_notice(world, notice, capture, lines):
    site = Site(world, task_notice=notice)
    proc, _ = site.run("taskprolog", slurm_env(capture), user="alice")
    assert proc.returncode == 0
    out = proc.stdout.decode("utf-8").splitlines()
    assert len(out) == lines, out
    for line in out:
        assert line.startswith("print NØMADE: ") and "23" in line
    assert site.log("taskprolog") == []


def test_taskprolog_notice_in_interactive_job(world):
    """`srun --pty bash` from a login shell: no batch step (nor ENVIRONMENT=BATCH), so step 0's
    first task carries the notice."""
    site = Site(world, task_notice=True)
    env = slurm_env("taskprolog-node1-step0", ENVIRONMENT=None, SLURM_PTY_PORT="40000")
    proc, _ = site.run("taskprolog", env, user="alice")
    assert proc.returncode == 0
    assert proc.stdout.decode("utf-8").count("print NØMADE: ") == 1


# -- 6. the wrapper's hard limit --------------------------------------------------------------
@pytest.mark.parametrize("limit", [0.1, 0.5])
def test_wrapper_kills_a_hook_past_its_limit_and_exits_0(world, aggregator, limit):
    """hooks.json says 5 s (python would wait for the hung aggregator), the wrapper says LIMIT:
    the wrapper kills it at its own limit and still exits 0."""
    agg = aggregator("hang")
    site = Site(world, aggregator_url=agg.url, timeout_seconds=limit)
    assert f"\nlimit_us={round(limit * 1e6)}\n" in (site.prefix / "prologslurmctld").read_text()
    site.settings(timeout_seconds=5.0, scontrol=str(world / "no-such-scontrol"))
    proc, took = site.run("prologslurmctld", slurm_env("prologslurmctld"), user="slurm")
    assert proc.returncode == 0
    assert took < limit + MARGIN, f"the wrapper returned after {took:.2f} s"
    assert len(agg.requests) <= 1
    # killed, not returned: a hook that gives up on its own records the failure
    assert site.breaker() == {} and site.log("prologslurmctld") == []
    pgrep = shutil.which("pgrep") or "/usr/bin/pgrep"
    leftover = subprocess.run([pgrep, "-f", str(site.prefix)], capture_output=True, text=True)
    assert leftover.stdout == "", "a hook process outlived its wrapper"


# -- 7. install / uninstall leave no trace ----------------------------------------------------
def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ROOT (ROOT included): type, mode, owner and content."""
    seen = {}
    for entry in [root, *sorted(root.rglob("*"))]:
        st = entry.lstat()
        if stat.S_ISLNK(st.st_mode):
            content = os.readlink(entry)
        elif stat.S_ISREG(st.st_mode):
            content = entry.read_bytes()
        else:
            content = None
        seen[str(entry.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, content)
    return seen


def site_layout(world: Path, existing: bool) -> tuple[Path, Path, Path, Path]:
    """(site, prefix, include, state_dir): a site tree, fresh or already holding those places."""
    site = world / "site"
    (site / "etc" / "slurm").mkdir(parents=True)
    (site / "etc" / "slurm" / "slurm.conf").write_text("ClusterName=nomadedev\n")
    prefix = site / "opt" / "nomade" / "hooks"
    include = site / "etc" / "slurm" / "nomade-hooks.conf"
    state = site / "var" / "spool" / "nomade" / "hooks"
    if existing:
        prefix.mkdir(parents=True)
        (prefix / "site-hook.sh").write_text("#!/bin/sh\nexit 0\n")
        include.write_text("# the site's own lines\nPrologFlags=Alloc,Contain\n")
        include.chmod(0o600)
        state.mkdir(parents=True, mode=0o750)
        (state / "keep.txt").write_text("the site's\n")
    return site, prefix, include, state


@pytest.mark.parametrize("transport", ["http", "spool"])
@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "existing"])
@pytest.mark.parametrize("installs", [1, 2], ids=["once", "twice"])
def test_install_uninstall_leaves_no_trace(world, aggregator, existing, installs, transport):
    site, prefix, include, state = site_layout(world, existing)
    agg = aggregator("error")
    config = write_config(
        world / "nomade.toml",
        world / "spool",
        state_dir=str(state),
        aggregator_url=agg.url,
        breaker_failures=1,
        controller_transport=transport,
    )
    before = snapshot(site)
    for _ in range(installs):
        out = nomadectl(config, "install-hooks", "--prefix", str(prefix), "--include", str(include))
    for key, name in [
        ("Prolog", "prolog"),
        ("Epilog", "epilog"),
        ("TaskProlog", "taskprolog"),
        ("PrologSlurmctld", "prologslurmctld"),
        ("EpilogSlurmctld", "epilogslurmctld"),
    ]:
        assert f"{key}={prefix}/{name}" in out
        assert f"{key}={prefix}/{name}" in include.read_text()
    assert state.stat().st_uid == pwd.getpwnam("slurm").pw_uid
    reports = state / "reports"
    if transport == "spool":  # only SlurmUser may leave reports: a user must not forge a start
        assert reports.stat().st_uid == pwd.getpwnam("slurm").pw_uid
        assert stat.S_IMODE(reports.stat().st_mode) == 0o700
    else:
        assert not reports.exists()
    # The hooks at work leave their state behind: a report that no aggregator took, or (in a
    # state directory that install made) breaker and failure log.
    if transport == "spool" or not existing:
        proc, _ = run_hook(prefix, "prologslurmctld", slurm_env("prologslurmctld"), "slurm")
        assert proc.returncode == 0
        if transport == "spool":
            assert len(list(reports.glob("*-prologslurmctld.json"))) == 1
        else:
            assert (state / "breaker.json").exists()
    removed = nomadectl(config, "uninstall-hooks", "--prefix", str(prefix))
    assert "removed" in removed
    assert snapshot(site) == before
    assert "no NØMADE hooks installed there" in nomadectl(
        config, "uninstall-hooks", "--prefix", str(prefix)
    )


# -- 8. shellcheck ----------------------------------------------------------------------------
@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_wrappers_pass_shellcheck(wrapper, tmp_path):
    """As install-hooks writes them (four come from one template), and the template itself."""
    path = tmp_path / wrapper
    path.write_text(hooksetup.hook_text(wrapper, 2.5), encoding="utf-8")
    assert "@" not in path.read_text(), "a template placeholder was left"
    for script in (path, ROOT / "hooks" / "wrapper.sh"):
        proc = subprocess.run(
            [_need("shellcheck", "shellcheck"), str(script)], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize("shown, warned", [("(null)", True), ("/opt/site/prologslurmctld", False)])
def test_install_hooks_says_when_slurmctld_must_be_restarted(tmp_path, monkeypatch, shown, warned):
    """A slurmctld started without PrologSlurmctld never runs one added by reconfigure."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "scontrol").write_text(f"#!/bin/sh\necho 'PrologSlurmctld         = {shown}'\n")
    (bindir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    config = write_config(
        tmp_path / "nomade.toml", tmp_path / "spool", state_dir=str(tmp_path / "state")
    )
    result = CliRunner().invoke(
        ctl.main, ["--config", str(config), "install-hooks", "--prefix", str(tmp_path / "p")]
    )
    assert result.exit_code == 0
    assert ("restart slurmctld once" in result.output) is warned


def _make_user_fifo(node_dir: Path, user: str) -> Path:
    """What the agent makes on taking a start report: wait/<uid>, 0600, the user's own."""
    pw = pwd.getpwnam(user)
    (node_dir / "wait").mkdir(mode=0o711, parents=True, exist_ok=True)
    fifo = node_dir / "wait" / str(pw.pw_uid)
    os.mkfifo(fifo, 0o600)
    os.chown(fifo, pw.pw_uid, -1)
    return fifo


def _traced_taskprolog(
    site: Site, trace: Path, during=None
) -> tuple[subprocess.CompletedProcess, str]:
    """TaskProlog run as alice under strace (execs and timed reads, one file per process, so
    that no call is split across lines); DURING(trace) runs while it does.  Returns (process,
    the traces' text)."""
    pw = pwd.getpwnam("alice")
    cmd = [
        _need("strace", "strace"),
        "-ff",
        "-qq",
        "-e",
        "trace=execve,pselect6",
        "-o",
        str(trace),
        shutil.which("setpriv"),
        f"--reuid={pw.pw_uid}",
        f"--regid={pw.pw_gid}",
        "--init-groups",
        "--",
        str(site.prefix / "taskprolog"),
    ]
    proc = subprocess.Popen(
        cmd,
        env=slurm_env("taskprolog-node1-batch"),
        cwd="/",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    if during is not None:
        during(trace)
    out, err = proc.communicate(timeout=60)
    done = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    return done, _traces(trace)


def _traces(trace: Path) -> str:
    return "".join(
        p.read_text(encoding="utf-8", errors="replace")
        for p in trace.parent.glob(trace.name + ".*")
    )


SLEEP_EXEC = re.compile(r'execve\("[^"]*/sleep"')
TIMED_READ = re.compile(
    r"pselect6\(\d+, \[\d+\], NULL, NULL, \{tv_sec=0, tv_nsec=\d+\}.*= 0 \(Timeout\)"
)


@pytest.mark.parametrize(
    "offline, fifo, waits, sleeps",
    [(False, True, 10, 0), (False, False, 10, 10), (True, True, 0, 0)],
    ids=["waits-on-fifo", "waits-with-sleep", "offline"],
)
def test_taskprolog_waits_for_a_verdict_only_while_the_aggregator_answers(
    world, offline, fifo, waits, sleeps
):
    """With no verdict for the job, TaskProlog polls for it (10 waits of 20 ms: reads with a
    timeout on its user's FIFO, which start no process, or `sleep` where there is none) unless
    the agent has marked the aggregator offline: then no job start pays that wait."""
    site = Site(world, task_notice=True)
    node_dir = site.spool / "node1"
    node_dir.mkdir(parents=True, exist_ok=True)
    if fifo:
        _make_user_fifo(node_dir, "alice")
    if offline:
        (node_dir / "offline").touch()
    proc, text = _traced_taskprolog(site, world / "strace")
    assert proc.returncode == 0 and "print NØMADE" in proc.stdout.decode("utf-8")
    assert len(SLEEP_EXEC.findall(text)) == sleeps
    assert len(TIMED_READ.findall(text)) == waits - sleeps


def test_taskprolog_sleeps_only_until_its_users_fifo_appears(world):
    """A user's first job on a node: TaskProlog may start before the agent has taken the Prolog's
    report and made wait/<uid>; it sleeps meanwhile, and waits on the FIFO once it is there."""
    site = Site(world, task_notice=True)
    node_dir = site.spool / "node1"
    node_dir.mkdir(parents=True, exist_ok=True)

    def agent_takes_the_report(trace: Path) -> None:
        wait_for_text(trace, SLEEP_EXEC)
        _make_user_fifo(node_dir, "alice")

    proc, text = _traced_taskprolog(site, world / "strace", agent_takes_the_report)
    assert proc.returncode == 0
    sleeps, reads = len(SLEEP_EXEC.findall(text)), len(TIMED_READ.findall(text))
    assert sleeps >= 1 and reads >= 1 and sleeps + reads == 10, (sleeps, reads)


def test_taskprolog_does_not_wait_on_another_users_fifo(world):
    """The FIFO named for alice's uid but not hers (as a 0666 one of an older agent could have
    been replaced): she cannot open it, and sleeps rather than reading from it."""
    site = Site(world, task_notice=True)
    node_dir = site.spool / "node1"
    fifo = _make_user_fifo(node_dir, "alice")
    os.chown(fifo, pwd.getpwnam("bob").pw_uid, -1)
    proc, text = _traced_taskprolog(site, world / "strace")
    assert proc.returncode == 0
    assert len(SLEEP_EXEC.findall(text)) == 10 and TIMED_READ.findall(text) == []


def wait_for_text(trace: Path, pattern: re.Pattern, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if pattern.search(_traces(trace)):
            return
        time.sleep(0.002)
    raise AssertionError(f"{pattern.pattern} never appeared in {trace}.*")
