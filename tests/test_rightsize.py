"""Right-sizing advice (models/rightsize.py) and its evaluation (models/rightsize_eval.py): what a
researcher is told about --mem and --time, and how the report counts what would have fitted."""

from __future__ import annotations

import json

import pytest

from aggregator import store
from aggregator.predict.scoring import Assessment, Scorer, explain
from aggregator.store import Ingest
from aggregator.views import query
from models import rightsize as rs
from models import rightsize_eval as ev
from nomadectl.jobs import render_job

MiB, GiB = 1 << 20, 1 << 30


def job(
    i,
    name="train_a",
    user="alice",
    outcome="COMPLETED",
    peak=None,
    mem=2 * GiB,
    elapsed=600.0,
    limit=3600,
    t0=1_700_000_000.0,
):
    """The I-th ended job of a constructed history: one an hour, each ended before the next."""
    submit = t0 + i * 3600.0
    return {
        "job_id": 1000 + i,
        "user": user,
        "account": "lab",
        "partition": "cpu",
        "job_name": name,
        "submit_time": submit,
        "start_time": submit + 1,
        "end_time": submit + 1 + elapsed,
        "nodes_requested": 1,
        "cpus": 4,
        "mem_per_node_bytes": mem,
        "mem_per_cpu_bytes": None,
        "gpus": None,
        "time_limit_seconds": limit,
        "outcome": outcome,
        "elapsed_seconds": elapsed,
        "max_rss_bytes": peak,
    }


def test_kaplan_meier_quantile_without_censoring_is_the_empirical_quantile():
    needs = [rs.Need(float(v), False, False) for v in range(1, 101)]  # 1..100
    assert rs.km_quantile(needs, 0.95) == 95
    assert rs.km_quantile(needs, 0.5) == 50
    # Ten observations: the 95th percentile of ten is the largest.
    assert rs.km_quantile(needs[:10], 0.95) == 10


def test_censored_observations_raise_the_quantile_and_an_all_censored_top_leaves_it_open():
    # 19 jobs needed 1..19; the 20th was stopped at 10, needing more: the estimate moves up.
    needs = [rs.Need(float(v), False, False) for v in range(1, 20)]
    plain = rs.km_quantile([*needs, rs.Need(10.0, False, False)], 0.9)
    assert rs.km_quantile([*needs, rs.Need(10.0, True, True)], 0.9) > plain
    # The largest observations hit their limit: no quantile (more than 19 is all that is known).
    assert rs.km_quantile([*needs[:15], *[rs.Need(19.0, True, True)] * 5], 0.95) is None


def test_an_out_of_memory_history_gives_a_suggestion_above_the_limit():
    # alice's jobs asked for 150 MB and were killed there; sacct saw peaks just under it.
    history = [
        job(i, "big_run", outcome="OUT_OF_MEMORY", peak=140 * MiB, mem=150 * MiB, elapsed=20)
        for i in range(6)
    ]
    new = job(6, "big_run", mem=150 * MiB)
    advice = rs.advise(new, history)["mem"]
    assert advice.beyond and advice.value > 150 * MiB and advice.option == "--mem=300M"
    assert advice.confidence == "guess" and advice.actionable
    text = advice.text()
    assert "6 of your 'big' jobs ran out of memory at 150 MB" in text
    assert "try --mem=300M" in text and "You asked for 150 MB" in text
    # The naive reading (the peaks taken as needs) would claim that 200M fits all six.
    naive = rs.suggest("mem", [rs.Need(140.0 * MiB, False, False)] * 6, 150.0 * MiB)
    assert naive.value < advice.value and (naive.fit, naive.known) == (6, 6)


def test_memory_advice_states_how_many_similar_jobs_it_fits():
    peaks = [(600 + 10 * i) * MiB for i in range(24)]  # 600 .. 830 MB
    history = [job(i, peak=p) for i, p in enumerate(peaks)]
    history.insert(0, job(-1, "other_thing", peak=4 * GiB))  # another kind of job: not used
    advice = rs.advise(job(30), history)["mem"]
    assert advice.basis == "kind" and advice.jobs == 24
    # 95% quantile of 24 needs: the 23rd smallest (820 MB), +10%, up to 100 MB steps: 1000M.
    assert advice.option == "--mem=1000M"
    assert (advice.fit, advice.known, advice.confidence) == (24, 24, "firm")
    assert advice.requested == 2 * GiB and advice.actionable  # asked twice what it needs
    assert "fits 24 of 24 of your 'train' jobs" in advice.text()
    assert "peaked at up to 830 MB" in advice.text()


def test_time_advice_ignores_early_failures_and_counts_timeouts_as_needing_more():
    history = [job(i, elapsed=1200 + 30 * i) for i in range(10)]  # 20 to 24.5 minutes
    history += [job(10 + i, outcome="FAILED", elapsed=30) for i in range(5)]
    advice = rs.advise(job(20, limit=4 * 3600), history)["time"]
    # KM: the failed runs (at least 30 s) leave the risk set early; the top is 24.5 min.
    assert advice.option == "--time=0:30:00" and advice.fit == 10
    assert not advice.beyond and advice.actionable  # 4 hours asked, 30 minutes needed
    only_failed = [job(i, outcome="FAILED", elapsed=30) for i in range(6)]
    assert rs.advise(job(7), only_failed)["time"] is None  # nothing says how long it needs
    timeouts = [job(i, outcome="TIMEOUT", elapsed=3600, limit=3600) for i in range(4)]
    advice = rs.advise(job(5), timeouts)["time"]
    assert advice.beyond and advice.option == "--time=2:00:00"


def test_jobs_that_stopped_early_are_no_evidence_for_asking_less():
    # One run completed at 6 GB; twenty failed within seconds at 20 MB.  Their peaks say only
    # "at least 20 MB": the advice must not shrink --mem to 100M on their word.
    history = [job(0, peak=6 * GiB)]
    history += [job(1 + i, outcome="FAILED", peak=20 * MiB, elapsed=5) for i in range(20)]
    advice = rs.advise(job(30, mem=8 * GiB), history)["mem"]
    assert advice.value >= 6 * GiB and advice.ran == 1 and advice.confidence == "rough"
    assert not advice.actionable  # 8 GB asked, 6.6 GB suggested: nothing to act on


def test_a_guess_beyond_every_limit_hit_never_advises_less_than_was_asked():
    history = [job(i, outcome="OUT_OF_MEMORY", peak=8 * GiB, mem=8 * GiB) for i in range(3)]
    history += [job(3 + i, outcome="OUT_OF_MEMORY", peak=2 * GiB, mem=2 * GiB) for i in range(2)]
    asks_more = rs.advise(job(9, mem=64 * GiB), history)["mem"]
    assert asks_more.beyond and asks_more.option == "--mem=16G" and not asks_more.actionable
    assert "this one asks for 64.0 GB, well above that" in asks_more.text()
    assert "try" not in asks_more.text()
    asks_less = rs.advise(job(9, mem=8 * GiB), history)["mem"]
    assert asks_less.actionable and "ran out of memory at up to 8.0 GB" in asks_less.text()


def test_too_few_jobs_give_no_advice_and_a_request_near_the_need_is_not_worth_a_line():
    assert rs.advise(job(3), [job(0, peak=GiB), job(1, peak=GiB)]) == {"mem": None, "time": None}
    history = [job(i, peak=1800 * MiB, elapsed=3000) for i in range(5)]
    advice = rs.advise(job(6), history)
    assert not advice["mem"].actionable and not advice["time"].actionable
    assert rs.lines(advice) == []


def test_values_are_rounded_up_to_what_slurm_takes():
    assert rs.mem_option(rs.round_mem(50 * MiB)) == "--mem=100M"
    assert rs.mem_option(rs.round_mem(1.01 * GiB)) == "--mem=1100M"
    assert rs.mem_option(rs.round_mem(3.1 * GiB)) == "--mem=3328M"
    assert rs.mem_option(rs.round_mem(20.2 * GiB)) == "--mem=21G"
    assert rs.time_option(rs.round_time(10)) == "--time=0:01:00"
    assert rs.time_option(rs.round_time(61 * 60)) == "--time=1:05:00"
    assert rs.time_option(rs.round_time(30 * 3600 + 1)) == "--time=1-07:00:00"


# -- the evaluation ------------------------------------------------------------------------------
def test_coverage_and_over_request_are_counted_as_documented():
    """A constructed history: bob always asks for 4 GB; his jobs peak at 1 GB, but every fifth
    one at 3 GB; the test part (the last 10) holds one of those (job 22), eight of 1 GB and one
    (job 27) that asked for 2 GB and was killed there, needing more than 2 GB."""
    history = []
    for i in range(30):
        peak = 3 * GiB if i % 5 == 2 else GiB
        history.append(job(i, user="bob", peak=peak, mem=4 * GiB, elapsed=3600))
    history[27] = job(
        27, user="bob", outcome="OUT_OF_MEMORY", peak=2 * GiB, mem=2 * GiB, elapsed=3600
    )
    result = ev.evaluate(history, test_fraction=1 / 3)  # the last 10 jobs
    mem = result["mem"]
    assert mem["judged"] == 10 and mem["censored"] == 1 and mem["too_small"]
    asked = mem["methods"]["request"]
    # The request fits the 9 jobs whose need is known and misses the one killed at it.
    assert (asked["fit"], asked["missed"], asked["unknown"]) == (9, 1, 0)
    assert asked["coverage"] == pytest.approx(0.9)
    # Over-request on the 9 known: 3 GB for the eight 1 GB jobs, 1 GB for the 3 GB one.
    assert asked["median_over"] == pytest.approx(3.0)
    assert asked["over_total"] == pytest.approx(8 * 3 + 1 * 1)  # GB-hours over one-hour runs
    # 1.2 x the last peak: fits a 1 GB job after a 1 GB job, misses job 22 (3 GB after 1 GB)
    # and job 27 (1.2 GB is below the 2 GB it was killed at); fits job 28 (2.4 GB after it).
    last = mem["methods"]["last_peak"]
    assert (last["fit"], last["missed"], last["unknown"]) == (8, 2, 0)
    # NØMADE: from the 21 to 28 earlier needs (a fifth of them 3 GB) the 95% quantile is 3 GB,
    # +10%, 3.3 GB up to 3584M every time: it fits the nine known and is above the 2 GB job 27
    # was killed at, so whether it fitted that one is unknown.
    ours = mem["methods"]["nomade"]
    assert (ours["fit"], ours["missed"], ours["unknown"]) == (9, 0, 1)
    assert ours["coverage"] == 1.0 and ours["coverage_low"] == pytest.approx(0.9)
    assert ours["coverage_high"] == 1.0
    assert ours["median_over"] == pytest.approx(2.5)  # 3.5 GB - 1 GB
    # The goal: coverage met; 2.5 GB over is more than half the users' own 3 GB.
    assert mem["goal"] == {"coverage": True, "coverage_low": False, "over": False}


def test_the_report_section_says_a_small_dataset_is_too_small():
    history = [job(i, peak=GiB) for i in range(12)]
    lines = "\n".join(ev.section(ev.evaluate(history)))
    assert (
        "**Too small to judge by**: 4 judged jobs" in lines and "not judged on so few jobs" in lines
    )
    assert "| NØMADE (censored quantile) |" in lines and "The user's own request" in lines


# -- live: the store, the warning, the job's output -------------------------------------------
@pytest.fixture
def history_db(tmp_path):
    path = str(tmp_path / "n.db")
    conn = store.open_store(path)
    ing = Ingest("c")
    for i in range(8):
        j = job(i, "big_run", outcome="OUT_OF_MEMORY", peak=190 * MiB, mem=200 * MiB, elapsed=5)
        ing.upsert_job(conn, {**j, "reconcile": "done"}, 0.0)
    conn.commit()
    return path, conn


def test_without_a_model_a_starting_job_still_gets_advice(history_db):
    path, _ = history_db
    found = Scorer(path).examine(job(9, "big_run", mem=200 * MiB))
    assert found.verdict is None
    assert found.advice["mem"].option == "--mem=400M" and found.advice["time"] is None
    assert found.lines("always") == ([found.advice["mem"].text()], True)
    assert found.lines("risky") == ([], False) and found.lines("never") == ([], False)


def test_a_warning_for_an_out_of_memory_shape_states_no_censored_peak_and_advises_above_it():
    history = [
        job(i, "big_run", outcome="OUT_OF_MEMORY", peak=190 * MiB, mem=200 * MiB, elapsed=5)
        for i in range(8)
    ]
    new = job(9, "big_run", mem=200 * MiB)
    advice = rs.advise(new, history)
    probs = {
        "COMPLETED": 0.1,
        "FAILED": 0.1,
        "TIMEOUT": 0.0,
        "OUT_OF_MEMORY": 0.8,
        "CANCELLED": 0.0,
        "OTHER": 0.0,
    }
    lines, reasons = explain(new, history, 0.9, probs, 0.5, advice)
    text = "\n".join(lines)
    assert "8 of your 8 recent jobs that requested 200 MB ran out of memory at that limit" in text
    assert "190 MB" not in text  # a peak cut off at the limit is not stated as a need
    assert "try --mem=400M" in text and reasons["suggestion"] == "--mem=400M"
    assert lines[-1] == f"NØMADE: Details: nomadectl job {new['job_id']}"
    quiet, _ = explain(new, history, 0.9, probs, 0.5, advice, with_advice=False)
    assert not any("--mem=" in ln for ln in quiet)
    # Under "risky" the warned job gets the warning with the advice; "never" drops the advice.
    verdict = {"warned": True, "lines": lines}
    shown, advised = Assessment(None, verdict, advice).lines("risky")
    assert shown == lines and not advised


def test_a_warning_states_no_peak_where_the_others_were_never_measured():
    # Jobs too short for Slurm's accounting sample have no peak: the warning neither invents
    # one ("0 MB") nor says that the ones that completed needed more.
    history = [job(i, "quick", outcome="OUT_OF_MEMORY", mem=200 * MiB, elapsed=5) for i in range(5)]
    history += [job(5 + i, "quick", mem=200 * MiB, elapsed=5) for i in range(3)]
    probs = {"COMPLETED": 0.1, "FAILED": 0.1, "OUT_OF_MEMORY": 0.8, "TIMEOUT": 0.0}
    lines, reasons = explain(job(9, "quick", mem=200 * MiB), history, 0.9, probs, 0.5)
    assert lines[1] == "NØMADE: 5 of your 8 recent jobs that requested 200 MB ran out of memory."
    assert reasons["peak_bytes"] is None


def test_stored_advice_is_shown_by_nomadectl_job(history_db):
    path, conn = history_db
    new = job(9, "big_run", mem=200 * MiB)
    found = Scorer(path).examine(new)
    advice = {**rs.as_json(found.advice), "printed": [], "lines": []}
    Ingest("c").job_start(conn, new, None, new["start_time"], advice=advice)
    conn.commit()
    conn.row_factory = __import__("sqlite3").Row
    view = query.job(conn, new["job_id"])
    assert view["advice"]["mem"]["option"] == "--mem=400M"
    json.dumps(view)  # the API serves it as JSON
    text = render_job(view)
    assert "try --mem=400M" in text and "no --time advice" in text


def test_corrupt_history_values_are_unknown_not_a_hang_or_an_error():
    # Whatever a row holds (an import of a hand-edited file, a future bug), advice is computed
    # over the sane values and the rest are unknown; NaN once made the tie loop spin forever.
    odd = [float("nan"), float("inf"), -5.0, 0, "12", None, 2.0**70]
    history = []
    for i, v in enumerate(odd * 3):
        history.append(
            {
                **job(i),
                "max_rss_bytes": v,
                "elapsed_seconds": v,
                "time_limit_seconds": v,
                "mem_per_node_bytes": v,
            }
        )
    history += [job(30 + i, peak=GiB, elapsed=600) for i in range(5)]
    advice = rs.advise(job(40), history)
    assert advice["mem"].option == "--mem=1200M" and advice["mem"].jobs == 5 + 3  # "12" bytes
    assert advice["time"].option == "--time=0:15:00"
