"""Training, ONNX export, the registry, and the live scoring path against training."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import nomadectl as ctl
from aggregator import store
from aggregator.predict import training
from aggregator.predict.scoring import Scorer
from aggregator.store import Ingest
from models import features, runtime, train

workload = pytest.importorskip("workload")

N_JOBS = 1600


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A store holding N_JOBS finished jobs from the workload generator, and its config."""
    base = tmp_path_factory.mktemp("models")
    cfg = base / "nomade.toml"
    cfg.write_text(f'[general]\ncluster_name = "c"\ndata_dir = "{base}/data"\n')
    writer = store.Writer(str(base / "data" / "nomade.db"))
    writer.start()
    ing = Ingest("c")
    jobs = workload.synthesize(N_JOBS, seed=7)
    keys = set(features.JOB_KEYS) | {"state", "exit_code", "total_cpu_seconds"}

    def put(c):
        for j in jobs:
            ing.upsert_job(
                c, {k: v for k, v in j.items() if k in keys} | {"reconcile": "done"}, 0.0
            )

    writer.call(put, timeout=120)
    writer.stop()
    result = CliRunner().invoke(
        ctl.main, ["--config", str(cfg), "train", "--epochs", "4", "--activate", "always", "--json"]
    )
    assert result.exit_code == 0, result.output
    trained = json.loads(result.output[result.output.index("{") :])
    return base, cfg, trained


def test_train_registers_and_activates_a_model_with_its_hash(stored):
    base, cfg, trained = stored
    out = CliRunner().invoke(ctl.main, ["--config", str(cfg), "model", "list", "--json"])
    models = json.loads(out.output)
    assert [m["version"] for m in models] == [trained["version"]] and models[0]["active"]
    assert models[0]["sha256"] == runtime.digest(models[0]["path"])
    assert models[0]["train_jobs"] == trained["train_jobs"] == N_JOBS - int(N_JOBS * 0.2)
    assert 0.5 < trained["recent_auc"] <= 1.0
    # Enough recent jobs, failures and successes: the activation rule is met, nothing overridden.
    assert trained["activation_rule_met"] and not trained["overrode_rule"]
    assert trained["activation"] == "activated" and models[0]["metrics"]["activation_rule_met"]


def test_onnx_runtime_agrees_with_the_training_frameworks_on_1000_jobs(tmp_path):
    jobs = workload.synthesize(1500, seed=3)
    p = train.prepare(jobs, 500)
    fitted = train.fit(p, 500, epochs=2)
    model = runtime.Model(train.export(fitted, tmp_path / "m"))
    rows = slice(500, 1500)
    theirs = fitted.members(p, rows)
    ours = model.members(p.x[rows], *(a[rows] for a in p.nbr), p.gfeat[rows])
    for member in ("gnn", "gbt", "lr"):
        assert np.abs(theirs[member] - ours[member]).max() < 1e-5, member


def test_the_live_path_gives_the_same_features_and_scores_as_training_for_1000_stored_jobs(stored):
    base, _cfg, trained = stored
    db = str(base / "data" / "nomade.db")
    conn = store.connect(db, readonly=True)
    jobs = store.ended_jobs(conn)
    scorer = Scorer(db)
    assert scorer.reload() == trained["version"]
    p = train.prepare(jobs, scaler=scorer.model.scaler)
    replayed = jobs[-1000:]
    live = np.vstack([features.live_vector(j, store.start_history(conn, j)) for j in replayed])
    np.testing.assert_allclose(live, p.x[-1000:], rtol=0, atol=1e-9)
    scores = np.array([scorer.score(j, x)["p_fail"] for j, x in zip(replayed, live, strict=True)])
    expected = training.score_rows(scorer.model, p, slice(len(jobs) - 1000, len(jobs)))
    assert np.abs(scores - np.round(expected, 4)).max() <= 1e-4


def test_rollback_and_activate(stored):
    base, cfg, trained = stored
    runner = CliRunner()
    second = runner.invoke(
        ctl.main, ["--config", str(cfg), "train", "--epochs", "2", "--activate", "always", "--json"]
    )
    assert second.exit_code == 0, second.output
    new = json.loads(second.output[second.output.index("{") :])["version"]
    back = runner.invoke(ctl.main, ["--config", str(cfg), "model", "rollback"])
    assert back.exit_code == 0 and trained["version"] in back.output
    again = runner.invoke(ctl.main, ["--config", str(cfg), "model", "activate", new])
    assert again.exit_code == 0
    bad = runner.invoke(ctl.main, ["--config", str(cfg), "model", "activate", "nope"])
    assert bad.exit_code == 1 and "no model 'nope'" in bad.output
    # Each change of the scoring model is in the administrators' log, with who made it.
    log = json.loads(runner.invoke(ctl.main, ["--config", str(cfg), "audit", "--json"]).output)
    actions = [(r["action"], r["detail"], r["user"], r["uid"]) for r in log[:3]]
    assert actions == [
        ("model activate", new, "root", 0),
        ("model rollback", trained["version"], "root", 0),
        ("model activate", new, "root", 0),
    ]


def test_an_active_model_of_another_feature_version_scores_nothing(stored, tmp_path):
    import sqlite3

    base, _cfg, _trained = stored
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    with sqlite3.connect(base / "data" / "nomade.db") as source:  # the WAL's pages included
        source.backup(conn)
    conn.execute("UPDATE models SET feature_version = ?", (features.FEATURE_VERSION - 1,))
    conn.commit()
    conn.close()
    scorer = Scorer(str(db))
    assert scorer.reload() is None and scorer.model is None
    job = store.ended_jobs(store.connect(str(db), readonly=True))[-1]
    x, verdict = scorer.assess(job)
    assert verdict is None and x.shape == (len(features.FEATURE_NAMES),)
