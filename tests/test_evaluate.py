"""models/evaluate.py and models/report.py on small synthetic workloads with a learnable signal."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("skl2onnx")

from models import evaluate, report  # noqa: E402

EPOCHS = 3
PNG = b"\x89PNG\r\n\x1a\n"


def workload(n: int, seed: int = 1, fail_after: float = 1.0) -> list[dict]:
    """Users with their own flakiness and memory habits: a job runs out of memory when its peak
    passes its request, and fails at random with its user's rate.  p_fail is the true odds.
    Only the first FAIL_AFTER share of jobs may fail."""
    rng = np.random.default_rng(seed)
    users = {f"u{i}": (rng.uniform(0.6, 1.3), rng.uniform(0.01, 0.35)) for i in range(10)}
    jobs, t = [], 0.0
    for i in range(n):
        user = str(rng.choice(list(users)))
        mem_factor, flaky = users[user]
        t += rng.exponential(5)
        req = float(rng.choice([256, 512, 1024, 2048])) * 2**20
        peak = req * mem_factor * rng.lognormal(0, 0.2)
        p_oom = 0.5 * math.erfc(math.log(1 / mem_factor) / 0.2 / math.sqrt(2))
        may_fail = i < fail_after * n
        outcome = "COMPLETED"
        if may_fail and peak > req:
            outcome = "OUT_OF_MEMORY"
        elif may_fail and rng.random() < flaky:
            outcome = "FAILED"
        dur = float(rng.uniform(5, 100))
        jobs.append(
            {
                "job_id": i + 1,
                "user": user,
                "account": "a" + user[-1],
                "partition": "debug",
                "job_name": str(rng.choice(["train_a", "align_b"])),
                "submit_time": t,
                "start_time": t + 1,
                "end_time": t + 1 + dur,
                "nodes_requested": 1,
                "cpus": 1,
                "mem_per_node_bytes": req,
                "mem_per_cpu_bytes": None,
                "gpus": None,
                "time_limit_seconds": 600,
                "outcome": outcome,
                "elapsed_seconds": dur,
                "max_rss_bytes": min(peak, req),
                "p_fail": 1 - (1 - p_oom) * (1 - flaky) if may_fail else 0.0,
            }
        )
    return jobs


@pytest.fixture(scope="module")
def jobs() -> list[dict]:
    return workload(1500)


@pytest.fixture(scope="module")
def result(jobs) -> dict:
    return evaluate.evaluate(jobs, epochs=EPOCHS)


def test_learnable_signal_beats_chance_and_shuffled_labels_do_not(jobs, result):
    assert not result["insufficient"]
    auc = result["failure"]["ensemble"]["auc"]
    shuffled = evaluate.shuffled_labels_auc(jobs, seed=0, epochs=EPOCHS)
    assert abs(shuffled - 0.5) <= 0.1, shuffled
    assert auc > shuffled + 0.15, (auc, shuffled)


def test_every_baseline_is_scored_on_the_same_test_part(result):
    assert set(result["failure"]) == set(evaluate.LABELS)  # the jobs carry p_fail
    test_jobs = result["protocol"]["test_jobs"]
    assert test_jobs == 450
    for scores in result["arrays"]["scores"].values():
        assert len(scores) == test_jobs
    assert result["failure"]["majority"]["auc"] == 0.5
    assert result["ensemble"]["onnx_vs_framework_max_abs_diff"] < 1e-5


def test_too_few_test_jobs_or_failures_give_no_auc():
    small = evaluate.evaluate(workload(400), epochs=EPOCHS)  # 120 test jobs
    assert small["insufficient"] and "failure" not in small
    assert small["protocol"]["test_jobs"] == 120
    quiet = evaluate.evaluate(workload(1000, fail_after=0.69), epochs=EPOCHS)  # no late failures
    assert quiet["insufficient"] and "failure" not in quiet
    assert (quiet["protocol"]["test_jobs"], quiet["protocol"]["test_failures"]) == (300, 0)


def test_a_test_part_of_failures_with_few_successes_gives_no_auc():
    jobs = workload(1000)
    for i, j in enumerate(jobs[700:]):  # the test part: all failed but 4
        j["outcome"] = "COMPLETED" if i < 4 else "FAILED"
    result = evaluate.evaluate(jobs, epochs=EPOCHS)
    assert result["insufficient"] and "failure" not in result
    assert result["reason"] == (
        "the test part has 300 jobs, 296 failures and 4 successes; at least 200 jobs,"
        " 10 failures and 10 successes are needed"
    )


def brute_force_cost(p: np.ndarray, failed: np.ndarray, miss: float, alarm: float) -> float:
    best = math.inf
    for t in [*p.tolist(), math.inf]:  # warning when p >= t: every distinct outcome
        warn = p >= t
        best = min(best, miss * np.sum(~warn & failed) + alarm * np.sum(warn & ~failed))
    return best


@pytest.mark.parametrize("seed", range(20))
def test_threshold_has_the_lowest_cost(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 30))
    p = np.round(rng.random(n), 1)  # ties
    failed = rng.random(n) < np.clip(p + rng.normal(0, 0.3, n), 0, 1)
    miss, alarm = float(rng.choice([1, 2, 5, 10])), float(rng.choice([0.5, 1, 3]))
    t, cost = evaluate.choose_threshold(p, failed, miss, alarm)
    at = evaluate.at_threshold(p, failed, t, miss, alarm)
    assert cost == at["cost"] == brute_force_cost(p, failed, miss, alarm)


def test_threshold_extremes():
    p, failed = np.array([0.1, 0.2, 0.9]), np.array([True, False, True])
    assert evaluate.choose_threshold(p, failed, 100.0, 1.0) == (0.0, 1.0)  # warn for all
    t, cost = evaluate.choose_threshold(p, ~failed, 1.0, 100.0)
    assert t > 0.9 and cost == 1.0  # warn for none


def test_report_has_its_sections_and_plots(result, tmp_path):
    verdicts = [
        {"job_id": 1, "p_fail": 0.8, "warned": True, "outcome": "FAILED"},
        {"job_id": 2, "p_fail": 0.7, "warned": True, "outcome": "COMPLETED"},
        {"job_id": 3, "p_fail": 0.1, "warned": False, "outcome": "OUT_OF_MEMORY"},
        {"job_id": 4, "p_fail": 0.1, "warned": False, "outcome": None},
    ]
    path = report.write_report(result, tmp_path, verdicts=verdicts)
    text = path.read_text()
    for heading in (
        "## Data",
        "## Failure prediction on the test part",
        "## What beat what",
        "## Calibration on the test part",
        "## Per outcome class",
        "## Alarm threshold",
        "## Confusion matrix",
        "## Right-sizing: --mem and --time advice",
        "## How the warnings did",
    ):
        assert heading in text, heading
    assert text.count("| Predicted | Jobs | Mean predicted | Observed failure rate |") == 2
    c = result["calibration"]
    assert f"{c['brier_before']:.4f} before, {c['brier_after']:.4f} after" in text
    for label in evaluate.LABELS.values():
        assert f"| {label} |" in text, label
    assert "| 1 | 1 | 1 | 0 |" in text  # hits, misses, false alarms, quiet
    for name in report.PLOTS:
        data = (tmp_path / name).read_bytes()
        assert data[:8] == PNG and b"IEND" in data[-12:], name
        assert f"]({name})" in text


def test_evaluation_json_keeps_its_keys_and_adds_calibration_and_member_aucs(result, tmp_path):
    import json

    report.write_report(result, tmp_path)
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    old = {
        "data",
        "protocol",
        "insufficient",
        "failure",
        "per_class",
        "confusion",
        "ensemble",
        "best_baseline",
        "best_simple_baseline",
        "ensemble_vs_simple",
        "ensemble_vs_best",
        "graph_contribution",
    }
    assert old | {"calibration"} <= set(saved)
    assert {"weights", "platt", "onnx_vs_framework_max_abs_diff"} <= set(saved["ensemble"])
    aucs = saved["ensemble"]["member_validation_auc"]
    assert set(aucs) == {"gnn", "gbt", "lr"} and all(0 <= a <= 1 for a in aucs.values())
    assert saved["ensemble"]["excluded_members"] == [m for m, a in aucs.items() if a <= 0.5]
    c = saved["calibration"]
    test_jobs, failed = result["protocol"]["test_jobs"], result["arrays"]["failed"]
    assert c["brier_after"] == pytest.approx(saved["failure"]["ensemble"]["brier"])
    for key in ("reliability_before", "reliability_after"):
        rows = c[key]
        assert sum(r["jobs"] for r in rows) == test_jobs and len(rows) <= c["bins"] == 5
        assert sum(r["observed_rate"] * r["jobs"] for r in rows) == pytest.approx(failed.sum())
        assert all(r["lo"] <= r["mean_predicted"] <= r["hi"] for r in rows)
    after = result["arrays"]["scores"]["ensemble"]
    assert after.min() >= 0.02 and after.max() <= 0.98  # p_fail as users see it


def test_report_of_insufficient_data_and_no_verdicts(tmp_path):
    result = evaluate.evaluate(workload(300), epochs=EPOCHS)
    text = report.write_report(result, tmp_path).read_text()
    assert "## Result: not enough data" in text and "AUC |" not in text
    assert "No stored verdicts" in text
    # Right-sizing needs no model: it is judged all the same, and called too small to judge by.
    assert (
        "## Right-sizing: --mem and --time advice" in text and "**Too small to judge by**" in text
    )
    assert result["rightsizing"]["mem"]["too_small"]
    assert not any((tmp_path / name).exists() for name in report.PLOTS)


def test_docs_name_every_feature_and_baseline():
    from conftest import ROOT

    from models import features, graph

    text = (ROOT / "docs" / "models.md").read_text()
    for name in (*features.FEATURE_NAMES, *graph.GRAPH_FEATURE_NAMES):
        bucket = name.rsplit("_", 1)[0] + "_0" if "bucket" in name else name
        assert f"`{bucket}`" in text, name
    for key, label in evaluate.LABELS.items():
        if key != "ensemble" and not key.startswith("member_"):  # "Each member alone"
            assert f"| {label.split(' (')[0]}" in text, label


def test_auc_difference_agrees_with_scikit_learn_and_brackets_it():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    failed = rng.random(400) < 0.25
    a = np.round(rng.random(400) + 0.4 * failed, 1)  # ties
    b = rng.random(400)
    d = evaluate.auc_difference(failed, a, b)
    assert d["diff"] == pytest.approx(roc_auc_score(failed, a) - roc_auc_score(failed, b))
    assert d["lo"] < d["diff"] < d["hi"] and d["lo"] > 0
