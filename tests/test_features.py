"""models/features.py: a job's kind (`name_key`) and the kind features, the same from the replay
(training) and from the store (live scoring)."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from aggregator import store
from models import features

KIND = features.FEATURE_NAMES.index("kind_log_jobs")
KIND_OOM = features.FEATURE_NAMES.index("kind_oom_rate")
KIND_USUAL = features.FEATURE_NAMES.index("log2_mem_over_kind_usual_request")
MiB = 1 << 20


def test_name_key_is_the_first_word_of_the_name():
    assert features.name_key("train_resnet_e10") == "train"
    assert features.name_key("Align-BWA.sh") == "align"
    assert features.name_key("x_ab.sh") == "ab"  # one-letter words are skipped
    assert features.name_key("run.SH") == "run"
    assert features.name_key("123") == features.name_key("") == features.name_key(None) == ""
    assert features.name_key("\u212aelvin") == "elvin"  # ASCII letters only


def _job(i: int, name: str, outcome: str = "COMPLETED", mem: int = 1000, user: str = "u") -> dict:
    t = 100.0 * i
    return {
        "job_id": i,
        "user": user,
        "account": "a",
        "partition": "p",
        "job_name": name,
        "submit_time": t,
        "start_time": t + 1,
        "end_time": t + 50,
        "nodes_requested": 1,
        "cpus": 1,
        "mem_per_node_bytes": mem * MiB,
        "mem_per_cpu_bytes": None,
        "gpus": 0,
        "time_limit_seconds": 600,
        "outcome": outcome,
        "elapsed_seconds": 49.0,
        "max_rss_bytes": (mem if outcome == "OUT_OF_MEMORY" else 400) * MiB,
    }


def _jobs() -> list[dict]:
    names = ["Train_a", "sim_x", "train_b", "trainer_c", "TRAIN.sh", "sim_y", "7", "train_d", "8"]
    outcomes = [
        "OUT_OF_MEMORY",
        "COMPLETED",
        "OUT_OF_MEMORY",
        "FAILED",
        "COMPLETED",
        "FAILED",
        "COMPLETED",
        "COMPLETED",
        "FAILED",
    ]
    jobs = [
        _job(i, n, o, mem=500 + 100 * i)
        for i, (n, o) in enumerate(zip(names, outcomes, strict=True))
    ]
    jobs.append(_job(len(jobs), "train_e", user="other"))  # another user's job of the kind
    return jobs


def test_kind_features_see_only_the_users_earlier_jobs_of_the_kind():
    jobs = features.start_order(_jobs())
    x = features.matrix(jobs)
    # train_d (index 7) sees Train_a, train_b, TRAIN.sh: not trainer_c, sim_*, or other users.
    assert np.expm1(x[7, KIND]) == pytest.approx(3)
    assert x[7, KIND_OOM] == pytest.approx(
        (2 + 2 * x[7, features.FEATURE_NAMES.index("user_oom_rate")]) / 5
    )
    usual = np.mean(np.log2([500, 700, 900]))
    assert x[7, KIND_USUAL] == pytest.approx(np.log2(1200) - usual)
    assert x[0, KIND] == 0  # the first job has no history
    assert np.expm1(x[8, KIND]) == pytest.approx(1)  # '8' has the empty kind, like '7'
    assert x[9, KIND] == 0


def test_the_store_gives_the_same_kind_features_as_the_replay():
    jobs = features.start_order(_jobs())
    conn = sqlite3.connect(":memory:")
    conn.execute(f"CREATE TABLE jobs ({', '.join(features.JOB_KEYS)})")
    conn.executemany(
        f"INSERT INTO jobs VALUES ({', '.join('?' * len(features.JOB_KEYS))})",
        [tuple(j[k] for k in features.JOB_KEYS) for j in jobs],
    )
    live = np.vstack([features.live_vector(j, store.start_history(conn, j)) for j in jobs])
    np.testing.assert_allclose(live, features.matrix(jobs), rtol=0, atol=1e-12)
