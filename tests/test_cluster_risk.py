"""Risk at job start on the real cluster: a user whose jobs of one shape ran out of memory gets a
warning in the next such job's own output; an ordinary job gets none; every number the warning
states is recomputed from the store; with the aggregator stopped, both jobs still run."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from click.testing import CliRunner
from clusterlib import PY, py, running_pipeline, sbatch, wait_for
from conftest import ROOT

import nomadectl as ctl

workload = pytest.importorskip("workload")
pytestmark = pytest.mark.cluster

MiB = 1 << 20
# Allocates 400 MB in a 200 MB job after a few seconds (so sacct's MaxRSS sees it first).
OOM_AT_200M = (
    "import time\ntime.sleep(3)\nchunks = []\n"
    "for _ in range(40):\n    chunks.append(bytearray(10 * 1024 * 1024))\n"
    "    for i in range(0, len(chunks[-1]), 4096): chunks[-1][i] = 1\n    time.sleep(0.1)\n"
)
# An ordinary job: uses about 60% of what it asks for, as the generator's well-behaved users do.
ORDINARY = (
    "import time\nb = bytearray(240 * 1024 * 1024)\n"
    "for i in range(0, len(b), 4096): b[i] = 1\ntime.sleep(4)\n"
)


def ended(p, ids):
    # The imported history reuses job ids (its cluster numbered from 118 to 1894, as a fresh dev
    # cluster numbers from 1): only this run's jobs count, those submitted since the pipeline began.
    rows = p.query(
        "SELECT count(*) FROM jobs WHERE reconcile = 'done'"
        f" AND job_id IN ({','.join(map(str, ids))})"
        " AND submit_time >= ?",
        p.started - 60,
    )
    return rows[0][0] == len(ids)


def output(p, name, job_id):
    return (p.base / "jobs" / f"{name}-{job_id}.out").read_text()


def sacct_state(job_id):
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "State", "-j", str(job_id)],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


@pytest.fixture(scope="module")
def scored(slurm_cluster):
    with running_pipeline("[models]\nwarn_threshold = 0.5\n") as p:
        # Background history: the recorded workload (1,600 real jobs of this cluster's kind, seven
        # users with different habits), imported as a site would import its accounting.
        p.ctl("import", "sacct", str(ROOT / "data" / "workload-v1" / "sacct.txt.gz"))
        # alice's own history, for real: six jobs of one shape that run out of memory.
        shape = ("--mem=200M", "-t", "3")
        oom = [sbatch(p, "oomhist", *shape, script=py(OOM_AT_200M)) for _ in range(8)]
        # bob's: ordinary jobs that complete.
        fine = [
            sbatch(p, "finehist", "--mem=400M", "-t", "3", script=py(ORDINARY), user="bob")
            for _ in range(4)
        ]
        wait_for("the history jobs to end", lambda: ended(p, oom + fine), 180, every=1)
        p.ctl("train", "--epochs", "8", "--activate", "always")
        wait_for(
            "the aggregator to load the model",
            lambda: (
                json.loads(p.ctl("model", "list", "--json"))[0]["active"]
                and "scoring with model" in p.log()
            ),
            30,
        )
        warned = sbatch(p, "again", *shape, script=py(OOM_AT_200M))
        plain = sbatch(p, "plain", "--mem=400M", "-t", "3", script=py(ORDINARY), user="bob")
        wait_for("the two scored jobs to end", lambda: ended(p, [warned, plain]), 180, every=1)
        yield p, oom, warned, plain


def test_the_repeat_of_a_failing_shape_is_warned_in_its_own_output(scored):
    p, oom, warned, _ = scored
    out = output(p, "again", warned)
    lines = [ln for ln in out.splitlines() if ln.startswith("NØMADE:")]
    assert lines and out.startswith("NØMADE: high risk"), out
    assert "runs out of memory" in lines[0]
    # Every number it states, from the store.
    uid, p_fail, warned_flag = p.query(
        "SELECT j.uid, v.p_fail, v.warned FROM verdicts v JOIN jobs j ON j.uid = v.job_uid"
        " WHERE j.job_id = ?",
        warned,
    )[0]
    assert warned_flag == 1
    assert re.search(r"high risk \((\d\.\d\d)\)", lines[0]).group(1) == f"{p_fail:.2f}"
    submit = p.query("SELECT submit_time FROM jobs WHERE uid = ?", uid)[0][0]
    mine = p.query(
        "SELECT outcome, max_rss_bytes FROM jobs WHERE user = 'alice' AND end_time <= ?"
        " AND mem_per_node_bytes = ? AND outcome IS NOT NULL",
        submit,
        200 * MiB,
    )
    failed = sum(o == "OUT_OF_MEMORY" for o, _ in mine)
    m = re.search(r"(\d+) of your (\d+) recent jobs that requested 200 MB ran out of memory", out)
    assert m and (int(m.group(1)), int(m.group(2))) == (failed, len(mine)) and failed >= 8
    # Those jobs were killed at their 200 MB limit: a peak cut off there is not their need, so
    # none is stated as one, and the advice is above the limit, saying it is a guess.
    assert "ran out of memory at that limit: they needed more" in out and "largest peak" not in out
    assert re.search(
        r"ran out of memory at 200 MB, so this one likely needs more.* try --mem=400M", out
    )
    assert f"nomadectl job {warned}" in out
    assert "syn-" not in out  # never names other users


def test_an_ordinary_job_gets_no_warning_but_a_stored_verdict(scored):
    p, _, _, plain = scored
    assert "NØMADE: high risk" not in output(p, "plain", plain)
    ((p_fail, flag),) = p.query(
        "SELECT v.p_fail, v.warned FROM verdicts v JOIN jobs j ON j.uid = v.job_uid"
        " WHERE j.job_id = ?",
        plain,
    )
    assert flag == 0 and p_fail < 0.5


def test_nomadectl_check_gives_the_same_verdict_before_submission(scored, tmp_path):
    p, *_ = scored
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\n#SBATCH --mem=200M -t 3\npython3 work.py\n")
    result = CliRunner().invoke(
        ctl.main, ["--config", str(p.config), "check", "--user", "alice", str(script), "--json"]
    )
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["request"]["mem_per_node_bytes"] == 200 * MiB
    assert answer["verdict"]["warned"] and answer["verdict"]["lines"][0].startswith(
        "NØMADE: high risk"
    )
    mem = answer["advice"]["mem"]
    assert mem["option"] == "--mem=400M" and mem["beyond"] and mem["confidence"] == "guess"


def test_with_the_aggregator_stopped_both_jobs_still_start_and_finish(scored):
    p, *_ = scored
    p.aggregator.terminate()
    p.aggregator.wait(10)
    again = sbatch(p, "down1", "--mem=200M", "-t", "3", script=py(OOM_AT_200M))
    plain = sbatch(
        p,
        "down2",
        "--mem=400M",
        "-t",
        "3",
        script=f"{PY} -c 'import time; time.sleep(2)'",
        user="bob",
    )
    wait_for(
        "both jobs to finish without the aggregator",
        lambda: sacct_state(again) == "OUT_OF_MEMORY" and sacct_state(plain) == "COMPLETED",
        120,
        every=1,
    )
    assert "NØMADE: high risk" not in output(p, "down1", again)
    p.start_aggregator()
