"""`nomadectl train` activates only what its own report would trust, says why not in one line,
reports its stages as lines where no terminal watches, and names the missing training extra."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import ROOT

import nomadectl as ctl
from aggregator import store
from aggregator.predict import training
from aggregator.store import Ingest
from models import features

workload = pytest.importorskip("workload")
pytest.importorskip("torch")
pytest.importorskip("skl2onnx")

N_JOBS = 1100  # the recent part (the latest 20%) has 220 jobs
SUCCESSES = 4  # of them, the only ones that did not fail


def _config(base) -> str:
    cfg = base / "nomade.toml"
    cfg.write_text(f'[general]\ncluster_name = "c"\ndata_dir = "{base}/data"\n')
    return str(cfg)


@pytest.fixture(scope="module")
def failing(tmp_path_factory):
    """A store whose most recent jobs nearly all failed: too few successes to judge a model."""
    base = tmp_path_factory.mktemp("trust")
    cfg = _config(base)
    jobs = workload.synthesize(N_JOBS, seed=11)
    jobs.sort(key=lambda j: (j["start_time"], j["job_id"]))  # as the store gives them back
    for i, j in enumerate(jobs[N_JOBS - int(N_JOBS * 0.2) :]):
        j["outcome"] = j["state"] = "COMPLETED" if i < SUCCESSES else "FAILED"
    keys = set(features.JOB_KEYS) | {"state", "exit_code", "total_cpu_seconds"}
    writer = store.Writer(str(base / "data" / "nomade.db"))
    writer.start()
    ing = Ingest("c")

    def put(c):
        for j in jobs:
            fields = {k: v for k, v in j.items() if k in keys}
            ing.upsert_job(c, fields | {"reconcile": "done"}, 0.0)

    writer.call(put, timeout=120)
    writer.stop()
    return cfg


def _train(cfg: str, *args: str):
    result = CliRunner().invoke(ctl.main, ["--config", cfg, "train", "--epochs", "2", *args])
    assert result.exit_code == 0, result.output
    return result


def _models(cfg: str) -> list[dict]:
    return json.loads(
        CliRunner().invoke(ctl.main, ["--config", cfg, "model", "list", "--json"]).stdout
    )


def test_too_few_recent_successes_register_a_model_but_activate_none_and_say_why(failing):
    result = _train(failing)  # --activate if-better, the default
    why = (
        f"not activated: the recent part has 220 jobs, {220 - SUCCESSES} failures and {SUCCESSES}"
        " successes; activation needs at least 200 jobs, 10 failures and 10 successes"
        " (--activate always overrides)"
    )
    assert why in result.stdout.splitlines()[-1]
    [model] = _models(failing)
    assert not model["active"] and model["metrics"]["activation_rule_met"] is False
    listing = CliRunner().invoke(ctl.main, ["--config", failing, "model", "list"]).stdout
    assert "RULE" in listing and "not met" in listing and "* " not in listing

    # The stages came as lines on stderr (no terminal here), each as it happened.
    stages = result.stderr.splitlines()
    for stage in (
        "features and graph ready",
        "logistic regression",
        "gradient-boosted trees",
        "GNN epoch 1/2",
        "GNN epoch 2/2",
        "exported",
        "registered ",
    ):
        assert any(line.startswith(f"training: {stage}") for line in stages), (stage, stages)
    assert stages[-1].startswith(f"training: registered {model['version']}")

    # --activate always is the way past the rule, and says that it overrode it.
    forced = _train(failing, "--activate", "always", "--json")
    out = json.loads(forced.stdout)
    assert out["activated"] and out["overrode_rule"]
    assert out["activation"].startswith("activated: --activate always overrode the activation rule")
    assert f"{SUCCESSES} successes" in out["activation"]
    models = _models(failing)
    assert [m["active"] for m in models] == [True, False]
    assert models[0]["version"] == out["version"]
    listing = CliRunner().invoke(ctl.main, ["--config", failing, "model", "list"]).stdout
    assert f"* {out['version']}" in listing  # the active model keeps its mark

    never = json.loads(_train(failing, "--activate", "never", "--json").stdout)
    assert not never["activated"] and never["activation"].startswith(
        "not activated (--activate never"
    )
    assert [m["active"] for m in _models(failing)] == [False, True, False]


def test_a_model_no_member_of_which_beats_chance_is_not_activated_unless_forced():
    failed = np.array([True] * 50 + [False] * 250)
    meta = {
        "no_better_than_chance": True,
        "member_validation_auc": {"gnn": 0.41, "gbt": 0.5, "lr": 0.48},
    }
    rule = training.activation_rule(failed, 0.7, meta)
    assert (
        rule == "no member beat chance on the validation slice (AUC gnn 0.410, gbt 0.500, lr 0.480)"
    )
    metrics = {"recent_auc": 0.7}
    assert training.decision("if-better", rule, True, metrics, "v1") == (
        False,
        f"not activated: {rule} (--activate always overrides)",
    )
    activated, line = training.decision("always", rule, True, metrics, "v1")
    assert activated and "overrode the activation rule" in line
    # Enough recent jobs of both kinds, a computable AUC above chance: the rule is met.
    assert training.activation_rule(failed, 0.7, {"no_better_than_chance": False}) is None
    assert "cannot be computed" in training.activation_rule(failed, None, {})
    assert "no better than chance" in training.activation_rule(failed, 0.5, {})


@pytest.mark.parametrize("package", ["torch", "skl2onnx"])
def test_train_without_the_training_extra_says_what_to_install_in_one_line(tmp_path, package):
    # The database does not exist: the packages are checked before anything else is looked at.
    code = (
        f"import sys; sys.modules[{package!r}] = None; from nomadectl import main;"
        f" main(['--config', {_config(tmp_path)!r}, 'train'], prog_name='nomadectl')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0 and done.stdout == ""
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert package in line and "pip install 'nomade[train]'" in line and "torch==2.13.0" in line


def test_an_imported_history_with_few_recent_successes_activates_nothing(tmp_path):
    """The recorded workload imported as a site imports its accounting, its most recent jobs
    rewritten as `sacct` would show a bad week: all but 3 of the latest 400 jobs FAILED."""
    import gzip

    cfg = _config(tmp_path)
    lines = gzip.open(ROOT / "data" / "workload-v1" / "sacct.txt.gz", "rt").read().splitlines()
    head, state = lines[0].split("|"), lines[0].split("|").index("State")
    jobs = sorted(
        (ln.split("|") for ln in lines[1:] if "." not in ln.split("|")[0]),
        key=lambda f: f[head.index("Start")],
    )
    bad = {f[0] for f in jobs[-400:-3]}
    text = []
    for ln in lines:
        f = ln.split("|")
        if f[0].split(".")[0] in bad:  # the job line and its steps
            f[state] = "FAILED"
        text.append("|".join(f))
    history = tmp_path / "bad-week.txt"
    history.write_text("\n".join(text) + "\n")
    runner = CliRunner()
    assert runner.invoke(ctl.main, ["--config", cfg, "init"]).exit_code == 0
    imported = runner.invoke(ctl.main, ["--config", cfg, "import", "sacct", str(history)])
    assert imported.exit_code == 0 and "imported 1600 job runs" in imported.stdout, imported.output
    out = json.loads(_train(cfg, "--json").stdout)
    assert not out["activated"] and out["recent_jobs"] == 320
    # The last 3 by sacct's Start kept their own outcome: at most 3 successes.
    m = re.match(
        r"not activated: the recent part has 320 jobs, (\d+) failures and (\d+) successes",
        out["activation"],
    )
    assert m and int(m.group(1)) + int(m.group(2)) == 320 and int(m.group(2)) <= 3, out
    assert [m["active"] for m in _models(cfg)] == [False]
