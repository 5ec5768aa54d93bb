import pytest

from aggregator.jobs.fields import final_from_sacct
from aggregator.jobs.outcome import classify, is_failure
from collectors.slurm import sacct


@pytest.mark.parametrize(
    "state, steps, code, want",
    [
        ("COMPLETED", [], "0:0", ("COMPLETED", None)),
        ("FAILED", ["FAILED"], "1:0", ("FAILED", None)),
        ("TIMEOUT", [], "0:0", ("TIMEOUT", None)),
        ("OUT_OF_MEMORY", [], "0:125", ("OUT_OF_MEMORY", None)),
        ("FAILED", ["OUT_OF_MEMORY", "COMPLETED"], "0:125", ("OUT_OF_MEMORY", None)),  # Slurm 17-20
        ("CANCELLED by 2001", [], "0:0", ("CANCELLED", "2001")),
        ("NODE_FAIL", [], "0:0", ("NODE_FAIL", None)),
        ("PREEMPTED", [], "0:0", ("PREEMPTED", None)),
        ("BOOT_FAIL", [], "0:0", ("NODE_FAIL", None)),
        ("REVOKED", [], "0:0", ("OTHER", None)),
        ("RUNNING", [], "0:0", (None, None)),
        ("PENDING", [], "0:0", (None, None)),
    ],
)
def test_outcome_classes(state, steps, code, want):
    assert classify(state, steps, code) == want


def test_failure_target_excludes_success_and_user_cancellation():
    assert [
        is_failure(o) for o in ("COMPLETED", "CANCELLED", "OUT_OF_MEMORY", "TIMEOUT", None)
    ] == [False, False, True, True, None]


SACCT = """JobIDRaw|JobID|State|ExitCode|Elapsed|TotalCPU|MaxRSS|Submit|Start|End
41|41|FAILED|0:125|00:00:07|00:03.100||2026-11-24T08:00:00|2026-11-24T08:00:01|2026-11-24T08:00:08
41.batch|41.batch|OUT_OF_MEMORY|0:125|00:00:07|00:03.100|409600K|2026-11-24T08:00:01|2026-11-24T08:00:01|2026-11-24T08:00:08
41.extern|41.extern|COMPLETED|0:0|00:00:07|00:00:00|0|2026-11-24T08:00:01|2026-11-24T08:00:01|2026-11-24T08:00:08
"""


def test_final_record_from_sacct_takes_step_oom_and_the_largest_maxrss():
    final = final_from_sacct(sacct.parse(SACCT), None)
    assert final["outcome"] == "OUT_OF_MEMORY"
    assert final["max_rss_bytes"] == 409600 * 1024
    assert final["elapsed_seconds"] == 7 and final["total_cpu_seconds"] == pytest.approx(3.1)
    assert (final["exit_code"], final["signal"]) == (0, 125)


def test_a_requeued_job_is_matched_by_submit_time():
    text = SACCT + (
        "41|41|COMPLETED|0:0|00:00:09|00:01.000||2026-11-24T09:00:00|2026-11-24T09:00:01"
        "|2026-11-24T09:00:10\n"
    )
    rows = sacct.parse(text)
    from collectors.slurm.slurmvalues import timestamp

    first = final_from_sacct(rows, timestamp("2026-11-24T08:00:00"))
    second = final_from_sacct(rows, timestamp("2026-11-24T09:00:00"))
    assert (first["outcome"], second["outcome"]) == ("OUT_OF_MEMORY", "COMPLETED")


def test_a_job_still_running_in_sacct_has_no_final_record():
    text = "JobIDRaw|JobID|State|ExitCode\n7|7|RUNNING|0:0\n"
    assert final_from_sacct(sacct.parse(text), None) is None
