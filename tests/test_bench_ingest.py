"""bench/ingest.py end to end, small: real aggregator, two simulated agent processes."""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "ingest.py"
KEYS = {
    "bench",
    "value",
    "compacted_during_run",
    "backlog_end_samples",
    "backlog_max_samples",
    "plain_value",
    "normal_value",
    "unit",
    "baseline",
    "ratio",
    "goal",
    "agents",
    "jobs_per_agent",
    "samples",
}


def test_every_sent_sample_is_acknowledged_stored_and_reported_as_json():
    agents, jobs, cycles = 2, 16, 25
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--quick",
            "--agents",
            str(agents),
            "--jobs",
            str(jobs),
            "--cycles",
            str(cycles),
            "--window",
            "8",
            "--baseline-samples",
            "300",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) == KEYS
    assert (result["bench"], result["unit"]) == ("ingest", "samples/s")
    assert (result["agents"], result["jobs_per_agent"]) == (agents, jobs)
    assert result["samples"] == agents * jobs * cycles
    assert result["value"] > 0 and result["baseline"] > 0 and result["ratio"] > 0
    assert result["plain_value"] > 0 and result["normal_value"] > 0
