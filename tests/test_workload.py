"""The workload generator: deterministic jobs, resumable runs, the offline twin's statistics,
and the recorded dataset of real jobs (data/workload-v1/)."""

from __future__ import annotations

import collections
import gzip
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aggregator.jobs.fields import final_from_sacct
from collectors.slurm.sacct import RECONCILE_FIELDS, parse
from workload import generator as wl

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "workload-v1"


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    for value in np.unique(score):  # average ranks of ties
        tie = score == value
        ranks[tie] = ranks[tie].mean()
    pos = y.sum()
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * (len(y) - pos)))


@pytest.fixture(scope="module")
def jobs() -> list[dict]:
    return [wl.draw_job(wl.DEFAULT_SEED, i) for i in range(20_000)]


# --- determinism -----------------------------------------------------------------------------


def test_same_seed_and_index_give_the_same_job():
    assert wl.draw_job(5, 123) == wl.draw_job(5, 123)
    assert wl.draw_job(5, 123) != wl.draw_job(6, 123)
    assert wl.draw_job(5, 123) != wl.draw_job(5, 124)
    # Job i does not depend on which jobs were drawn before it.
    later = [wl.draw_job(5, i) for i in (124, 9, 123)][2]
    assert later == wl.draw_job(5, 123)


def test_synthesize_draws_exactly_the_jobs_of_the_real_run():
    rows = wl.synthesize(50, seed=11)
    for i, row in enumerate(rows):
        job = wl.draw_job(11, i)
        assert row["user"] == job["user"] and row["job_name"] == job["job_name"]
        assert row["outcome"] == job["outcome"] and row["p_fail"] == job["p_fail"]
        assert row["mem_per_node_bytes"] == job["mem_mb"] << 20
        assert row["time_limit_seconds"] == job["time_limit_min"] * 60


# --- resumability ----------------------------------------------------------------------------


class FakeCluster:
    """Takes submissions, numbers them, and can fail after accepting one (a crash mid-submit)."""

    def __init__(self, crash_at: int | None = None):
        self.submitted: list[tuple[int, int]] = []  # (index, job id)
        self.crash_at = crash_at

    def submit(self, job: dict) -> int:
        job_id = 1000 + len(self.submitted)
        self.submitted.append((job["index"], job_id))
        if job["index"] == self.crash_at:
            self.crash_at = None
            raise KeyboardInterrupt("stopped between sbatch and saving the state")
        return job_id

    def find(self, job: dict) -> int | None:
        return next((jid for idx, jid in self.submitted if idx == job["index"]), None)


def _run(state: Path, cluster: FakeCluster, n: int, **kw) -> dict:
    return wl.run(
        n,
        state,
        seed=3,
        submit=cluster.submit,
        active=lambda: 0,
        find=cluster.find,
        sleep=lambda s: None,
        clock=lambda: 0.0,
        **kw,
    )


def test_a_run_in_two_parts_submits_what_one_run_does(tmp_path):
    one = FakeCluster()
    _run(tmp_path / "one", one, 40)
    two = FakeCluster()
    first = _run(tmp_path / "two", two, 40, stop_after=17)
    assert first["next"] == 17
    _run(tmp_path / "two", two, 40)
    assert two.submitted == one.submitted
    assert [j["index"] for j in wl.load_state(tmp_path / "two")["jobs"]] == list(range(40))


def test_a_crash_between_sbatch_and_saving_does_not_duplicate_the_job(tmp_path):
    reference = FakeCluster()
    _run(tmp_path / "ref", reference, 20)
    cluster = FakeCluster(crash_at=8)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "s", cluster, 20)
    assert wl.load_state(tmp_path / "s")["pending"] == 8
    st = _run(tmp_path / "s", cluster, 20)
    assert cluster.submitted == reference.submitted
    assert [j["job_id"] for j in st["jobs"]] == [jid for _, jid in reference.submitted]


def test_a_failed_sbatch_is_retried_without_duplicates(tmp_path):
    reference = FakeCluster()
    _run(tmp_path / "ref", reference, 12)
    cluster, calls = FakeCluster(), []

    def flaky(job):
        calls.append(job["index"])
        if calls.count(job["index"]) == 1 and job["index"] in (3, 7):
            if job["index"] == 7:
                cluster.submit(job)  # accepted, but the answer was lost
            raise RuntimeError("sbatch failed (1): Socket timed out")
        return cluster.submit(job)

    wl.run(
        12,
        tmp_path / "s",
        seed=3,
        submit=flaky,
        active=lambda: 0,
        find=cluster.find,
        sleep=lambda s: None,
        clock=lambda: 0.0,
    )
    assert cluster.submitted == reference.submitted


def test_a_state_dir_refuses_another_seed(tmp_path):
    _run(tmp_path, FakeCluster(), 3)
    with pytest.raises(SystemExit, match="seed 3"):
        wl.run(5, tmp_path, seed=4, submit=FakeCluster().submit, active=lambda: 0)


def test_the_queue_is_kept_short(tmp_path):
    waits = []
    wl.run(
        3,
        tmp_path,
        seed=1,
        submit=FakeCluster().submit,
        active=lambda: 20 if len(waits) < 5 else 3,
        sleep=waits.append,
        max_active=20,
    )
    assert waits.count(1.0) == 5


def test_sbatch_line_carries_the_request(tmp_path):
    job = next(wl.draw_job(1, i) for i in range(200) if wl.draw_job(1, i)["nodes"] == 2)
    argv = wl.sbatch_argv(job, tmp_path)
    assert f"--uid={job['uid']}" in argv and f"--mem={job['mem_mb']}" in argv
    assert f"--time={job['time_limit_min']}" in argv and "--nodes=2" in argv
    assert argv[-1].startswith("--wrap=/usr/bin/srun /usr/bin/python3 ")


# --- the job script ----------------------------------------------------------------------------


def _job_script(tmp_path: Path, *args: float) -> subprocess.CompletedProcess:
    script = tmp_path / "wljob.py"
    script.write_text(wl.JOB_SCRIPT)
    argv = [sys.executable, str(script), *map(str, args), str(tmp_path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def test_job_script_fails_over_quota_and_cleans_up(tmp_path):
    # write 3 MB against a 1.5 MB quota: exit 1 after the write, nothing left behind
    done = _job_script(tmp_path, 3, 1.5, 1, 0.1, 0.1, -1, 0, 0)
    assert done.returncode == 1 and "Disk quota exceeded" in done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["wljob.py"]


def test_job_script_exits_with_its_drawn_code(tmp_path):
    assert _job_script(tmp_path, 1, -1, 5, 0.2, 0.1, 0.5, 3, 0).returncode == 3
    assert _job_script(tmp_path, 1, -1, 5, 0.2, 0.1, -1, 0, 0).returncode == 0


# --- the offline twin's statistics ---------------------------------------------------------------


def test_failure_rate_and_timeouts_are_in_their_bands(jobs):
    failed = np.array([j["outcome"] != "COMPLETED" for j in jobs])
    assert 0.18 <= failed.mean() <= 0.30
    timeouts = np.mean([j["outcome"] == "TIMEOUT" for j in jobs])
    assert 0.04 <= timeouts <= 0.10


def test_each_users_habit_shows_in_its_outcome_mix(jobs):
    mix = collections.defaultdict(collections.Counter)
    for j in jobs:
        mix[j["user"]][j["outcome"]] += 1
    share = {u: {k: v / sum(c.values()) for k, v in c.items()} for u, c in mix.items()}
    top = {o: max(share, key=lambda u: share[u].get(o, 0)) for o in ("OUT_OF_MEMORY", "TIMEOUT")}
    assert top == {"OUT_OF_MEMORY": "carol", "TIMEOUT": "dave"}
    assert share["carol"]["OUT_OF_MEMORY"] > 0.3 and share["dave"]["TIMEOUT"] > 0.25
    assert 0.25 <= share["frank"]["FAILED"] <= 0.35
    assert share["erin"]["FAILED"] > 0.15
    for u in ("grace", "heidi", "ivan"):
        assert 1 - share[u]["COMPLETED"] < 0.07, u
    # carol's OOMs depend on the job type
    oom = collections.defaultdict(list)
    for j in jobs:
        if j["user"] == "carol":
            oom[j["job_type"]].append(j["outcome"] == "OUT_OF_MEMORY")
    rates = {t: np.mean(v) for t, v in oom.items()}
    assert rates["train_resnet"] > 2 * rates["postproc_stats"]


def test_the_heavy_writers_risk_rises_with_what_it_writes(jobs):
    erin = [j for j in jobs if j["user"] == "erin"]
    written = np.array([j["behaviour"]["write_mb"] for j in erin])
    assert written.min() >= 20 and written.max() <= 100
    quota = np.array([j["outcome"] == "FAILED" and j["exit_code"] == 1 for j in erin])
    low, high = written < np.quantile(written, 1 / 3), written > np.quantile(written, 2 / 3)
    assert quota[high].mean() > 3 * quota[low].mean()


def test_p_fail_is_calibrated_and_not_trivially_separating(jobs):
    y = np.array([j["outcome"] != "COMPLETED" for j in jobs])
    p = np.array([j["p_fail"] for j in jobs])
    assert abs(p.mean() - y.mean()) < 0.012
    for part, outcome in (("p_oom", "OUT_OF_MEMORY"), ("p_timeout", "TIMEOUT")):
        # the parts are marginal odds; the outcome is the first fate met, so it is at most these
        seen = np.mean([j["outcome"] == outcome for j in jobs])
        assert seen <= np.mean([j[part] for j in jobs]) + 0.01
    edges = np.quantile(p, np.linspace(0, 1, 11))
    bins = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, 9)
    for b in range(10):
        assert abs(p[bins == b].mean() - y[bins == b].mean()) < 0.04, b
    assert 0.84 <= _auc(y, p) <= 0.93
    assert math.isclose(wl.auc(y, p), _auc(y, p))


def test_synthesize_queues_jobs_like_a_two_node_cluster():
    rows = wl.synthesize(5000, seed=2)
    assert [r["job_id"] for r in rows] == sorted(r["job_id"] for r in rows)
    waits = np.array([r["start_time"] - r["submit_time"] for r in rows])
    assert waits.min() > 0 and np.median(waits) < 60 and np.quantile(waits, 0.9) > 5
    for r in rows:
        assert r["end_time"] >= r["start_time"] and r["mem_per_cpu_bytes"] is None
        if r["outcome"] == "TIMEOUT":
            assert r["elapsed_seconds"] >= r["time_limit_seconds"]
    # never more CPUs busy than the two nodes have
    events = sorted(
        [(r["start_time"], r["cpus"]) for r in rows] + [(r["end_time"], -r["cpus"]) for r in rows]
    )
    busy = np.cumsum([c for _, c in sorted(events, key=lambda e: (e[0], e[1]))])
    assert busy.max() <= 16


# --- the recorded dataset ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recorded():
    text = gzip.open(DATA / "sacct.txt.gz", "rt", encoding="utf-8").read()
    gen = [json.loads(line) for line in gzip.open(DATA / "generator.jsonl.gz", "rt")]
    return parse(text, source="sacct.txt.gz"), gen, text


def test_recorded_dataset_parses_and_matches_the_generator(recorded):
    rows, gen, text = recorded
    assert text.splitlines()[0].split("|") == RECONCILE_FIELDS
    by_id = collections.defaultdict(list)
    for row in rows:
        by_id[int(row["JobIDRaw"].split(".")[0])].append(row)
    ids = {g["job_id"] for g in gen}
    assert set(by_id) == ids and len(ids) == len(gen)
    ended = {i: final_from_sacct(by_id[i], None) for i in ids}
    ended = {i: f for i, f in ended.items() if f is not None}
    assert len(ended) >= 1500
    for g in gen:
        job = wl.draw_job(g["seed"], g["index"])  # the generator still draws the recorded jobs
        assert (g["user"], g["job_name"], g["mem_mb"]) == (
            job["user"],
            job["job_name"],
            job["mem_mb"],
        )
        assert math.isclose(g["p_fail"], job["p_fail"]) and g["intended_outcome"] == job["outcome"]
        final = ended.get(g["job_id"])
        if final is not None:
            assert final["user"] == g["user"] and final["job_name"] == g["job_name"]
            assert final["time_limit_seconds"] == 60 * g["time_limit_min"]
            assert final["mem_per_node_bytes"] == g["mem_mb"] << 20
            assert final["nodes_requested"] == g["nodes"]


def test_recorded_outcomes_follow_the_intended_ones(recorded):
    rows, gen, _ = recorded
    by_id = collections.defaultdict(list)
    for row in rows:
        by_id[int(row["JobIDRaw"].split(".")[0])].append(row)
    pairs = [(g, final_from_sacct(by_id[g["job_id"]], None)) for g in gen]
    pairs = [(g, f["outcome"]) for g, f in pairs if f is not None]
    agree = np.mean([g["intended_outcome"] == real for g, real in pairs])
    assert agree > 0.95
    y = np.array([real not in ("COMPLETED", "CANCELLED") for _, real in pairs])
    assert _auc(y, np.array([g["p_fail"] for g, _ in pairs])) > 0.8
