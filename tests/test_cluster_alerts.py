"""The job-level alert on the real cluster: a job whose memory grows toward its limit (the agent
sampling every 2 s, the limit reached after more than a minute) is alerted, with its time to
OOM, well before Slurm kills it; its user sees the alert through the API, another user not."""

from __future__ import annotations

import json
import os

import pytest
from clusterlib import api_as, needs_real_users, py, running_pipeline, sbatch, wait_for

pytestmark = pytest.mark.cluster

# 5 MB more every second, each page touched: the 400 MB limit is reached after about 80 s.
GROWS = (
    "import time\nchunks = []\n"
    "while True:\n    chunks.append(bytearray(5 * 1024 * 1024))\n"
    "    for i in range(0, len(chunks[-1]), 4096): chunks[-1][i] = 1\n    time.sleep(1)\n"
)
RULES = """
[alerts]
evaluate_seconds = 1.0
[[alerts.rules]]
name = "oom_soon"
kind = "job_memory"
severity = "critical"
window = 60
within = 600
"""


@pytest.fixture(scope="module")
def grown(slurm_cluster):
    os.environ["NOMADE_AGENT__INTERVAL_SECONDS"] = "2"  # the agent at 2 s, as sites run it
    try:
        with running_pipeline(RULES) as p:
            job = sbatch(p, "grows", "--mem=400M", "-t", "4", "-w", "node1", script=py(GROWS))
            wait_for(
                f"job {job} to be reconciled",
                lambda: p.query("SELECT 1 FROM jobs WHERE job_id = ? AND reconcile = 'done'", job),
                240,
                every=1,
            )
            yield p, job
    finally:
        del os.environ["NOMADE_AGENT__INTERVAL_SECONDS"]


def test_the_job_is_alerted_before_slurm_kills_it(grown):
    p, job = grown
    ((outcome, end),) = p.query("SELECT outcome, end_time FROM jobs WHERE job_id = ?", job)
    assert outcome == "OUT_OF_MEMORY"
    alerts = p.query(
        "SELECT rule, subject, user, first_t, summary FROM alerts WHERE subject = ?", f"job {job}"
    )
    assert len(alerts) == 1, alerts
    rule, subject, user, first, summary = alerts[0]
    assert (rule, user) == ("oom_soon", "alice")
    assert "out of memory in about" in summary or "of its 400.0 MiB limit" in summary, summary
    # At least two sampling intervals (2 s each) before the kill: here, most of a minute.
    print(f"job {job}: alerted {end - first:.0f} s before Slurm killed it ({summary})")
    assert end - first >= 2 * 2, (end, first)


def test_its_user_sees_the_alert_and_another_user_does_not(grown):
    p, job = grown
    needs_real_users()
    url = f"http://127.0.0.1:{p.http_port}"
    status, mine = api_as("alice", url, "GET", "/api/v1/alerts")
    assert status == 200 and [a["subject"] for a in mine] == [f"job {job}"]
    status, theirs = api_as("bob", url, "GET", "/api/v1/alerts")
    assert status == 200 and theirs == []
    shown = json.loads(p.ctl("alerts", "--json"))
    assert [a["rule"] for a in shown] == ["oom_soon"]
