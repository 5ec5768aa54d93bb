"""Shared test helpers: where the shared real-world fixtures are, and the dev cluster probe."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("NOMADE_SHARED_FIXTURES") or ROOT.parent / "shared" / "fixtures")
FIXTURES = ROOT / "tests" / "fixtures"
# NØMADE as a site installs it (slurm-conf/install-nomade.sh), what tests run as ordinary users.
SITE_BIN = Path("/usr/local/bin")
SITE_NOMADECTL = str(SITE_BIN / "nomadectl")
SITE_PYTHON = "/opt/nomade/venv/bin/python"


def shared(*parts: str) -> Path:
    """A path in ../shared/fixtures; the test is skipped where that folder is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"shared fixtures not present at {SHARED}")
    return SHARED.joinpath(*parts)


def required(reason: str) -> None:
    """Skip for REASON, except under the README's test command (./test.sh), which provides
    what the test needs: there the absence is a failure."""
    if os.environ.get("NOMADE_TEST_COMMAND"):
        pytest.fail(f"{reason}, although ./test.sh provides it")
    pytest.skip(reason)


def cluster_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "node1" in out.stdout


@pytest.fixture(scope="session")
def slurm_cluster():
    """The dev cluster of slurm-conf/cluster-up.sh; tests that need it skip where it is down."""
    if not cluster_up():
        required("the dev Slurm cluster is not running (slurm-conf/cluster-up.sh)")
    return True


@pytest.fixture
def db(tmp_path):
    """A store with its writer thread running (tests call it with `db.call(fn)`)."""
    from aggregator import store

    w = store.Writer(str(tmp_path / "n.db"))
    w.start()
    yield w
    w.stop()


@pytest.fixture
def utc(monkeypatch):
    """Slurm's text times are local times: the captures were made on hosts in UTC."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()
