"""bench/alert_latency.py runs end to end (a real aggregator, a webhook on loopback, the rules'
evaluation cost) and ends with the one JSON line the benchmarks share."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from conftest import ROOT

NUMBERS = (
    "value",
    "baseline",
    "ratio",
    "from_received",
    "evaluation_seconds_per_cycle",
    "core_share",
)


def test_the_quick_run_ends_with_one_json_object_of_finite_numbers():
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "alert_latency.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["bench"] == "alert_latency"
    for key in (*NUMBERS, "unit", "goal", "goal_met", "rules", "series", "trials"):
        assert key in result, key
    for key in NUMBERS:
        assert isinstance(result[key], (int, float)) and math.isfinite(result[key]), key
    assert result["value"] > 0 and result["baseline"] > 0
    assert result["trials"] == 5 and result["series"] == 10 * result["rules"]
    assert result["goal"] == "under 2 s at the default evaluation interval"
    assert result["goal_met"] == (result["value"] < 2 and result["core_share"] <= 1)
