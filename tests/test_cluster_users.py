"""Users on the real cluster, with CURVE and MUNGE on: alice's job is hers alone.  Alice reads it
with the installed nomadectl from an ordinary shell; bob's `nomadectl job`, `nomadectl jobs` and
`nomadectl check --user alice` get nothing of it."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from clusterlib import running_pipeline, sbatch, wait_for
from conftest import SITE_NOMADECTL, SITE_PYTHON, required

pytestmark = pytest.mark.cluster
NOMADECTL = SITE_NOMADECTL


def as_user(user: str, config, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["runuser", "-u", user, "--", NOMADECTL, "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )


@pytest.fixture(scope="module")
def alices_job(slurm_cluster):
    if not os.path.exists(NOMADECTL):
        required(f"{NOMADECTL} is not installed (slurm-conf/install-nomade.sh)")
    with running_pipeline() as p:
        job = sbatch(p, "private-work", "-t", "2", script="sleep 2", user="alice")
        wait_for(
            f"job {job} to be reconciled",
            lambda: p.query("SELECT 1 FROM jobs WHERE job_id = ? AND reconcile = 'done'", job),
            120,
        )
        script = p.base / "jobs" / "check.sh"
        script.write_text("#!/bin/bash\n#SBATCH -J private-work\n#SBATCH -t 2\nsleep 2\n")
        script.chmod(0o644)
        yield p, job, script


def test_alice_reads_her_own_job_through_the_api(alices_job):
    p, job, _ = alices_job
    mine = as_user("alice", p.config, "job", str(job), "--json")
    assert mine.returncode == 0, mine.stderr
    view = json.loads(mine.stdout)
    assert view["user"] == "alice"
    # The advice her job got at its start: none yet, her first job (no history to learn from).
    assert view["advice"]["mem"] is None and view["advice"]["time"] is None
    shown = as_user("alice", p.config, "job", str(job))
    assert "no --mem advice: too few of your jobs like this one ran to the end" in shown.stdout
    listed = as_user("alice", p.config, "jobs", "--json")
    assert job in [j["job_id"] for j in json.loads(listed.stdout)]


def test_bob_gets_nothing_of_alices_job(alices_job):
    p, job, _ = alices_job
    other = as_user("bob", p.config, "job", str(job))
    assert other.returncode != 0 and "alice" not in other.stdout + other.stderr
    assert len(other.stderr.strip().splitlines()) == 1, other.stderr  # one line, no traceback
    listed = as_user("bob", p.config, "jobs", "--user", "alice", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == []


def test_bob_cannot_score_a_job_as_alice(alices_job):
    p, _, script = alices_job
    refused = as_user("bob", p.config, "check", str(script), "--user", "alice")
    assert refused.returncode != 0 and "root" in refused.stderr
    # Past the client, the aggregator itself refuses to score as a user other than the caller.
    code = (
        "import sys; from aggregator.admin import request, apiclient\n"
        "try: request.ask_aggregator(sys.argv[1], {'user': 'alice', 'job_name': 'private-work'})\n"
        "except apiclient.ApiError as exc: print(exc); sys.exit(3)"
    )
    raw = subprocess.run(
        ["runuser", "-u", "bob", "--", SITE_PYTHON, "-c", code, f"http://127.0.0.1:{p.http_port}"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert raw.returncode == 3 and "403" in raw.stdout and "another user" in raw.stdout, raw


def test_bob_cannot_read_the_store_file(alices_job):
    p, _, _ = alices_job
    proc = subprocess.run(
        [
            "runuser",
            "-u",
            "bob",
            "--",
            SITE_PYTHON,
            "-c",
            f"import sqlite3; sqlite3.connect('file:{p.db}?mode=ro', uri=True)"
            ".execute('SELECT user FROM jobs').fetchall()",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert proc.returncode != 0 and "unable to open" in proc.stderr


def test_alice_checks_a_script_with_sbatch_options_after_it(alices_job):
    p, _, script = alices_job
    out = as_user("alice", p.config, "check", str(script), "-p", "debug", "--mem=400M", "--json")
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["request"]["mem_per_node_bytes"] == 400 << 20
    # The script names no account: scored as Slurm will charge it, to her default (research),
    # so that the verdict is the one the job gets at its start.
    assert answer["request"]["account"] == "research"
    bobs = as_user("bob", p.config, "check", str(script), "--json")
    assert json.loads(bobs.stdout)["request"]["account"] == "physics", bobs.stderr
    # Right-sizing is always given: one ended job of hers is too few to advise from.
    assert answer["advice"] == {"mem": None, "time": None}
    human = as_user("alice", p.config, "check", str(script), "--mem=400M")
    assert "no --time advice: too few of your jobs like this one ran to the end" in human.stdout


def test_alice_lists_the_models_through_the_api(alices_job):
    p, _, _ = alices_job
    out = as_user("alice", p.config, "model", "list", "--json")
    assert out.returncode == 0, out.stderr
    assert all("path" not in m for m in json.loads(out.stdout))


@pytest.mark.parametrize(
    "args",
    [
        ["init"],
        ["train"],
        ["model", "report"],
        ["import", "sacct", "/etc/hostname"],
        ["audit"],
        ["stop"],
    ],
)
def test_a_users_admin_command_fails_in_one_line(alices_job, args):
    p, _, _ = alices_job
    out = as_user("bob", p.config, *args)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
