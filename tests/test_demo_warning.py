"""The demo's warning part (slurm-conf/demo-warning.sh, which ./demo.sh runs) on the real cluster:
with the recorded workload imported and a model trained on it, carol's job shaped like those of
hers that ran out of memory is warned in its own output; grace's ordinary job is not."""

from __future__ import annotations

import os
import pwd
import re
import subprocess

import pytest
from clusterlib import running_pipeline
from conftest import ROOT, required

pytestmark = pytest.mark.cluster
DEMO_WARNING = ROOT / "slurm-conf" / "demo-warning.sh"


@pytest.fixture(scope="module")
def shown(slurm_cluster):
    for user in ("carol", "grace"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            required(f"no user {user} on this host (slurm-conf/cluster-up.sh creates it)")
    with running_pipeline() as p:
        p.ctl("import", "sacct", str(ROOT / "data" / "workload-v1" / "sacct.txt.gz"))
        p.ctl("train")  # as the demo trains: activated by the activation rule, not forced
        run = subprocess.run(
            [str(DEMO_WARNING), str(p.config), str(p.base / "jobs")],
            env={**os.environ, "NOMADECTL": str(p.bindir / "nomadectl")},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        m = re.search(r"jobs: risky=(\d+) \(carol\) healthy=(\d+) \(grace\)", run.stdout)
        assert m, run.stdout
        yield p, run.stdout, int(m.group(1)), int(m.group(2))


def verdict(p, job_id):
    # Only this run's job: the imported history reuses job ids of a fresh cluster's range.
    ((user, p_fail, warned),) = p.query(
        "SELECT j.user, v.p_fail, v.warned FROM verdicts v JOIN jobs j ON j.uid = v.job_uid"
        " WHERE j.job_id = ? AND j.submit_time >= ?",
        job_id,
        p.started - 60,
    )
    return user, p_fail, warned


def test_the_risky_job_has_the_warning_in_its_own_output(shown):
    p, stdout, risky, _ = shown
    out = (p.base / "jobs" / f"train_resnet_e20-{risky}.out").read_text()
    assert out.startswith("NØMADE: high risk"), out
    assert "that this job runs out of memory" in out.splitlines()[0]
    assert re.search(r"\d+ of your \d+ recent jobs that requested 200 MB ran out of memory", out)
    assert f"nomadectl job {risky}" in out
    # The warning is the model's verdict on carol's job, stored as it was printed.
    user, p_fail, warned = verdict(p, risky)
    assert (user, warned) == ("carol", 1)
    assert f"high risk ({p_fail:.2f})" in out
    # ... and the demo shows it to whoever runs it.
    assert out.splitlines()[0] in stdout


def test_the_healthy_job_has_none_though_nomade_saw_it(shown):
    p, stdout, _, healthy = shown
    out = (p.base / "jobs" / f"postproc_stats_v2-{healthy}.out").read_text()
    assert "high risk" not in out
    # Scored, and printed into: only the notice that it is monitored (task_notice).
    assert f"NØMADE: job {healthy} is monitored by NØMADE" in out
    user, p_fail, warned = verdict(p, healthy)
    assert (user, warned) == ("grace", 0) and p_fail < 0.5
    assert f"job {healthy} is monitored" in stdout


def test_the_script_names_its_bad_arguments_in_one_line(tmp_path):
    run = subprocess.run(
        [str(DEMO_WARNING), str(tmp_path / "missing.toml"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 1
    assert run.stderr.strip().splitlines() == [
        f"demo-warning: ERROR: CONFIG {tmp_path / 'missing.toml'} is not a file"
        " (expected the aggregator's nomade.toml)"
    ]
