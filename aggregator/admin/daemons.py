"""`nomadectl start|stop`: run the aggregator and agents in the background where there is no
service manager (systemd units for sites that have one are in slurm-conf/systemd/)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from nomade_common.config import Config


def run_dir(cfg: Config) -> Path:
    return Path(cfg.general.data_dir) / "run"


def _alive(pid: int, needle: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return needle in cmdline


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def start(cfg: Config, nodes: list[str], what: str = "all") -> list[str]:
    """Start the aggregator (unless running) and one agent per node; return what was started."""
    rd = run_dir(cfg)
    rd.mkdir(parents=True, exist_ok=True)
    bindir = Path(sys.executable).parent
    wanted = []
    if what in ("all", "aggregator"):
        wanted.append(("aggregator", [str(bindir / "nomade-aggregator"), "--config", cfg.path], {}))
    if what in ("all", "agents"):
        for node in nodes:
            argv = [str(bindir / "nomade-agent"), "--config", cfg.path, "--node", node]
            wanted.append((f"agent-{node}", argv, {"SLURMD_NODENAME": node}))
    started = []
    for name, argv, extra in wanted:
        pidfile = rd / f"{name}.pid"
        pid = _pid(pidfile)
        if pid and _alive(pid, argv[0].rsplit("/", 1)[-1]):
            continue
        log = open(rd / f"{name}.log", "ab")  # noqa: SIM115 (handed to the child)
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **extra},
            start_new_session=True,
        )
        pidfile.write_text(str(proc.pid))
        started.append(f"{name} (pid {proc.pid}, log {rd / f'{name}.log'})")
    time.sleep(0.5)
    for name, argv, _ in wanted:
        pid = _pid(rd / f"{name}.pid")
        if pid and not _alive(pid, argv[0].rsplit("/", 1)[-1]):
            tail = (rd / f"{name}.log").read_text(errors="replace").strip().splitlines()[-1:]
            raise RuntimeError(f"{name} exited at start: {tail[0] if tail else 'no output'}")
    return started


def stop(cfg: Config, what: str = "all", timeout: float = 10.0) -> list[str]:
    """Stop what `start` started (only processes whose PID file and command line both match)."""
    stopped = []
    for pidfile in sorted(run_dir(cfg).glob("*.pid")):
        name = pidfile.stem
        if (
            what == "agents"
            and not name.startswith("agent-")
            or what == "aggregator"
            and name != "aggregator"
        ):
            continue
        pid = _pid(pidfile)
        needle = "nomade-aggregator" if name == "aggregator" else "nomade-agent"
        if pid and _alive(pid, needle):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _alive(pid, needle) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid, needle):
                os.kill(pid, signal.SIGKILL)
            stopped.append(f"{name} (pid {pid})")
        pidfile.unlink(missing_ok=True)
    return stopped
