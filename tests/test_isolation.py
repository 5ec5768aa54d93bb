"""Local isolation, as real unprivileged users would meet it: after the aggregator and a node agent
have run (real daemons, started as a site starts them), bob (uid 2002) can read none of alice's
jobs from the aggregator's database, the agent's outbox, the key files or alice's warning file,
and cannot cut short the wait of alice's TaskProlog for her verdict; the aggregator runs as the
unprivileged SlurmUser.  Every "bob tries" below runs as bob through `runuser`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from clusterlib import free_port, wait_for
from conftest import SITE_BIN, required
from test_hooks import fake_scontrol, nomadectl, run_hook, slurm_env, world  # noqa: F401

from nomade_common import keys

BIN = Path(sys.executable).parent  # root's interpreter: the daemons root starts
JOB, ALICE, BOB = 23, 2001, 2002  # job 23 is alice's in the captured hook environments
JOB_NAME = "fx-hooks"  # its name there (SLURM_JOB_NAME)


def as_user(user: str, *cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["runuser", "-u", user, "--", *cmd],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=30,
        **kw,
    )


def bob_reads(path: Path) -> subprocess.CompletedProcess:
    """bob opens PATH for reading with python, the way any script would."""
    code = "import sys; sys.stdout.write(open(sys.argv[1], 'rb').read().decode('latin-1'))"
    return as_user("bob", "/usr/bin/python3", "-c", code, str(path))


def refused(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode != 0 and "Permission denied" in proc.stderr


def write_config(base: Path, **extra: str) -> Path:
    scontrol = fake_scontrol(base, "exit 1")  # the job is gone: the report's env is all we know
    path = base / "nomade.toml"
    zmq_port = free_port()
    path.write_text(f"""
[general]
cluster_name = "nomadedev"
data_dir = "{base}/data"
[agent]
aggregator = "tcp://127.0.0.1:{zmq_port}"
spool_dir = "{base}/spool"
interval_seconds = 1.0
heartbeat_seconds = 1.0
[aggregator]
listen = "tcp://127.0.0.1:{zmq_port}"
http_listen = "127.0.0.1:{free_port()}"
scontrol = "{scontrol}"
squeue = "{base}/no-squeue"
[hooks]
prefix = "{base}/hooks"
state_dir = "{base}/state"
controller_transport = "spool"
timeout_seconds = 1.0
[security]
keys_dir = "{base}/keys"
[collectors.job_history]
enabled = false
{extra.get("more", "")}""")
    path.chmod(0o644)
    return path


def stored_job_names(db: Path) -> list[str]:
    """What root reads from the database: the proof that there is something to hide."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return [
                r[0] for r in conn.execute("SELECT job_name FROM jobs WHERE job_id = ?", (JOB,))
            ]
        finally:
            conn.close()
    except sqlite3.Error:
        return []  # not created yet


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture(scope="module")
def ran():
    """Hooks installed, the aggregator and node1's agent running as root (as `nomadectl start`
    runs them), alice's job 23 started through PrologSlurmctld and node1's Prolog."""
    base = Path(tempfile.mkdtemp(prefix="nomade-isolation-"))
    base.chmod(0o755)  # every user traverses it, as they would /var/spool and /var/lib
    cfg = write_config(base)
    keys.make_pair(str(base / "keys"), "server")
    keys.make_pair(str(base / "keys"), "node1")
    nomadectl(cfg, "init")
    nomadectl(cfg, "install-hooks", "--prefix", str(base / "hooks"))
    procs = [
        start([str(BIN / "nomade-aggregator"), "--config", str(cfg)], base / "aggregator.log"),
        start(
            [str(BIN / "nomade-agent"), "--config", str(cfg), "--node", "node1"], base / "agent.log"
        ),
    ]
    try:
        proc, _ = run_hook(base / "hooks", "prologslurmctld", slurm_env("prologslurmctld"), "slurm")
        assert proc.returncode == 0
        proc, _ = run_hook(base / "hooks", "prolog", slurm_env("prolog-node1"))
        assert proc.returncode == 0
        db = base / "data" / "nomade.db"
        wait_for(
            "the aggregator to store alice's job", lambda: stored_job_names(db) == [JOB_NAME], 30
        )
        node = base / "spool" / "node1"
        wait_for(
            "the agent to take the Prolog's report",
            lambda: (node / "wait" / str(ALICE)).exists(),
            30,
        )
        yield base
    finally:
        for p in procs:
            stop(p)
        logs = "".join(
            (base / n).read_text(errors="replace") for n in ("aggregator.log", "agent.log")
        )
        if "Traceback" in logs:
            print(logs)
        shutil.rmtree(base, ignore_errors=True)


def test_bob_cannot_read_any_job_from_the_aggregators_database(ran):
    db = ran / "data" / "nomade.db"
    assert stored_job_names(db) == [JOB_NAME]  # root (the aggregator) sees it
    query = "SELECT job_id, user, job_name, work_dir FROM jobs"
    by_sqlite3 = as_user("bob", "sqlite3", "-readonly", str(db), query)
    assert by_sqlite3.returncode != 0 and JOB_NAME not in by_sqlite3.stdout
    assert "unable to open database" in by_sqlite3.stderr
    code = (
        f"import sqlite3; print(sqlite3.connect('file:{db}?mode=ro', uri=True)"
        f".execute({query!r}).fetchall())"
    )
    by_python = as_user("bob", "/usr/bin/python3", "-c", code)
    assert by_python.returncode != 0 and "unable to open database file" in by_python.stderr
    # Nor the raw files, where the newest rows wait in the WAL until a checkpoint.
    for name in ("nomade.db", "nomade.db-wal", "nomade.db-shm"):
        seen = bob_reads(ran / "data" / name)
        assert refused(seen) and JOB_NAME not in seen.stdout, name
    assert refused(as_user("bob", "ls", str(ran / "data")))


def test_the_database_wal_and_shm_are_the_aggregators_alone(ran):
    """What the check above rests on, as `ls -l` shows it."""
    data = ran / "data"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for name in ("nomade.db", "nomade.db-wal", "nomade.db-shm"):
        st = (data / name).stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600), name


def test_bob_cannot_read_the_agents_outbox(ran):
    outbox = ran / "spool" / "node1" / "outbox.db"
    seen = as_user("bob", "sqlite3", "-readonly", str(outbox), "SELECT payload FROM outbox")
    assert seen.returncode != 0 and "unable to open database" in seen.stderr
    for name in ("outbox.db", "outbox.db-wal"):
        assert refused(bob_reads(outbox.with_name(name))), name


def test_bob_cannot_list_the_spool_nor_read_its_reports(ran):
    node = ran / "spool" / "node1"
    for path in (node, node / "inbox", node / "verdicts", node / "jobs", node / "wait"):
        assert refused(as_user("bob", "ls", str(path))), path


def test_bob_cannot_read_the_secret_keys(ran):
    for name in ("server.key_secret", "node1.key_secret"):
        seen = bob_reads(ran / "keys" / name)
        assert refused(seen) and "secret_key" not in seen.stdout, name
    public = bob_reads(ran / "keys" / "server.key")  # what the nodes are given: not a secret
    assert public.returncode == 0 and "public_key" in public.stdout


def test_alices_wait_fifo_is_hers_alone(ran):
    fifo = ran / "spool" / "node1" / "wait" / str(ALICE)
    st = fifo.lstat()
    assert stat.S_ISFIFO(st.st_mode) and (st.st_uid, stat.S_IMODE(st.st_mode)) == (ALICE, 0o600)
    # bob can neither write into it (which would end alice's wait at once), nor read from it,
    # nor put a FIFO of his own in its place.
    assert refused(as_user("bob", "bash", "-c", f"echo wake >{fifo}"))
    assert refused(as_user("bob", "bash", "-c", f"read -t 0.1 line <>{fifo}"))
    assert refused(as_user("bob", "mkfifo", str(fifo.with_name("9999"))))
    assert refused(as_user("bob", "rm", "-f", str(fifo)))
    assert fifo.exists()


def test_alices_taskprolog_gets_her_late_verdict_while_bob_tries_to_flood_her_wait(ran):
    """The verdict comes while alice's TaskProlog is already waiting on her FIFO; bob writes
    into it all the while (with the shared 0666 FIFO of old, each write ended a 20 ms wait at
    once, and the job started without its warning)."""
    from nodeagent.agent import Agent
    from nomade_common import config

    node = ran / "spool" / "node1"
    fifo = node / "wait" / str(ALICE)
    flood = subprocess.Popen(
        [
            "runuser",
            "-u",
            "bob",
            "--",
            "bash",
            "-c",
            f"while :; do echo wake 2>/dev/null >{fifo} && echo written; done",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    agent = Agent(config.load(str(ran / "nomade.toml")), node="node1")  # the agent's own code

    def verdict_when_alice_waits() -> None:
        wait_for(
            "alice's TaskProlog to open her FIFO",
            lambda: fifo_opened_by(fifo, ALICE),
            10,
            every=0.002,
        )
        agent.keep_verdict(
            {
                "job_id": JOB,
                "user_id": ALICE,
                "warned": True,
                "p_fail": 0.9,
                "lines": ["NØMADE: job 23 (\x1b[8mfx-hooks) may fail: memory"],
            }
        )

    late = threading.Thread(target=verdict_when_alice_waits)
    late.start()
    try:
        env = slurm_env("taskprolog-node1-batch")
        proc, _took = run_hook(ran / "hooks", "taskprolog", env, "alice")
    finally:
        late.join(15)
        agent.close()
        flood.terminate()
        flood_out, _ = flood.communicate(timeout=10)
    assert proc.returncode == 0
    assert proc.stdout.decode("utf-8").splitlines() == [
        "print NØMADE: job 23 ( [8mfx-hooks) may fail: memory"
    ]
    assert "written" not in flood_out
    warning = node / "jobs" / str(JOB)
    assert (warning.stat().st_uid, stat.S_IMODE(warning.stat().st_mode)) == (ALICE, 0o400)
    assert refused(bob_reads(warning))
    assert refused(bob_reads(node / "verdicts" / f"{JOB}.json"))


def fifo_opened_by(fifo: Path, uid: int) -> bool:
    """Whether a process of UID has FIFO open (as TaskProlog does while it waits)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            if any(
                os.readlink(f"/proc/{pid}/fd/{fd}") == str(fifo)
                for fd in os.listdir(f"/proc/{pid}/fd")
            ):
                return True
        except OSError:
            continue
    return False


# -- the aggregator as the SlurmUser ------------------------------------------------------------
def test_the_aggregator_runs_as_slurm_stores_a_hook_report_and_keeps_its_database_private(world):  # noqa: F811
    """As slurm-conf/systemd/nomade-aggregator.service runs it: the SlurmUser, which reads
    Slurm's state and the reports directory install-hooks gives it; its data directory is its
    own (systemd's StateDirectory=)."""
    aggregator = SITE_BIN / "nomade-aggregator"
    if not os.access(aggregator, os.X_OK):
        required(f"{aggregator} missing: slurm-conf/install-nomade.sh installs it")
    slurm = pwd.getpwnam("slurm")
    cfg = write_config(world)
    data = world / "data"
    data.mkdir(mode=0o700)
    os.chown(data, slurm.pw_uid, slurm.pw_gid)
    keys.make_pair(str(world / "keys"), "server", owner=slurm.pw_uid)
    nomadectl(cfg, "install-hooks", "--prefix", str(world / "hooks"))
    reports = world / "state" / "reports"
    assert reports.stat().st_uid == slurm.pw_uid and stat.S_IMODE(reports.stat().st_mode) == 0o700
    log = world / "aggregator.log"
    proc = start(["runuser", "-u", "slurm", "--", str(aggregator), "--config", str(cfg)], log)
    try:
        hook, _ = run_hook(
            world / "hooks", "prologslurmctld", slurm_env("prologslurmctld"), "slurm"
        )
        assert hook.returncode == 0
        db = data / "nomade.db"
        wait_for(
            "the aggregator to store the job start", lambda: stored_job_names(db) == [JOB_NAME], 30
        )
        assert proc.poll() is None, log.read_text(errors="replace")
        assert list(reports.glob("*.json")) == []  # taken
        for name in ("nomade.db", "nomade.db-wal", "nomade.db-shm"):
            st = (data / name).stat()
            assert (pwd.getpwuid(st.st_uid).pw_name, stat.S_IMODE(st.st_mode)) == (
                "slurm",
                0o600,
            ), name
        seen = as_user("alice", "sqlite3", "-readonly", str(db), "SELECT job_name FROM jobs")
        assert seen.returncode != 0 and JOB_NAME not in seen.stdout
    finally:
        stop(proc)
    assert "Traceback" not in log.read_text(errors="replace")


def test_the_agent_will_not_work_in_a_spool_another_user_controls(world):  # noqa: F811
    """Bob made the spool before the agent first ran, with a link where the agent writes its
    offline marker: the agent, as root, refuses with one line instead of writing through it."""
    shared = world / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    spool = shared / "spool"
    assert as_user("bob", "mkdir", "-p", str(spool / "node9")).returncode == 0
    target = world / "root-would-create-this"
    assert as_user("bob", "ln", "-s", str(target), str(spool / "node9" / "offline")).returncode == 0
    (world / "cfg").mkdir()
    cfg = write_config(world / "cfg")
    cfg.write_text(
        cfg.read_text().replace(f'spool_dir = "{world}/cfg/spool"', f'spool_dir = "{spool}"')
    )
    keys.make_pair(str(world / "cfg" / "keys"), "server")
    keys.make_pair(str(world / "cfg" / "keys"), "node9")
    proc = subprocess.run(
        [str(BIN / "nomade-agent"), "--config", str(cfg), "--node", "node9"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert str(spool) in lines[0] and "owner uid 2002" in lines[0]
    assert not target.exists()
