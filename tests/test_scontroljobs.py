"""One `scontrol show job -o` per job array burst, on a real answer captured from the dev cluster
(tests/fixtures/slurm/22.05/scontrol-show-job-o-array-running.txt: tasks 1-16 running as jobs
7050-7065, tasks 17-40 pending in job 7049's record)."""

from __future__ import annotations

import threading
import time

from conftest import FIXTURES

from aggregator.daemon.scontroljobs import ScontrolJobs
from aggregator.jobs import fields as jobs
from collectors.slurm import scontrol

ARRAY = (FIXTURES / "slurm" / "22.05" / "scontrol-show-job-o-array-running.txt").read_text()
SINGLE = (FIXTURES / "slurm" / "22.05" / "scontrol-show-job-o-running.txt").read_text()


class Scontrol:
    """Answers as scontrol did: the array's records for 7049, the single job's for others."""

    def __init__(self, delay: float = 0.0) -> None:
        self.asked: list[int] = []
        self.delay = delay

    def __call__(self, job_id: int) -> str | None:
        self.asked.append(job_id)
        time.sleep(self.delay)
        return ARRAY if job_id == 7049 else SINGLE


def request(text: str) -> dict:
    (rec,) = scontrol.parse(text)
    return jobs.request_from_scontrol(rec)


def test_a_burst_of_array_tasks_costs_one_call_and_each_gets_its_own_record():
    run = Scontrol(delay=0.1)  # slow enough that the burst's lookups overlap
    sj = ScontrolJobs(run)
    got: dict[int, str | None] = {}
    tasks = [
        threading.Thread(target=lambda i=i: got.__setitem__(i, sj.text(7049 + i, 7049, i)))
        for i in range(1, 17)
    ]
    for t in tasks:
        t.start()
    for t in tasks:
        t.join()
    assert run.asked == [7049]
    for i in range(1, 17):
        r = request(got[i])
        assert (r["job_id"], r["array_job_id"], r["array_task_id"]) == (7049 + i, 7049, i)
        assert r["mem_per_node_bytes"] == 50 << 20 and r["time_limit_seconds"] == 60


def test_a_task_missing_from_the_answer_asks_again_then_alone():
    run = Scontrol()
    sj = ScontrolJobs(run)
    sj.text(7050, 7049, 1)
    # Task 17 was pending (in 7049's range record) when the array was asked: ask the array
    # again, and as it is still not there, the job itself.
    assert sj.text(7066, 7049, 17) == SINGLE
    assert run.asked == [7049, 7049, 7066]


def test_an_old_answer_is_not_used_and_jobs_outside_arrays_ask_alone():
    run = Scontrol()
    sj = ScontrolJobs(run, max_age=0.05)
    sj.text(7050, 7049, 1)
    time.sleep(0.1)
    sj.text(7051, 7049, 2)
    assert run.asked == [7049, 7049]
    assert sj.text(16) == SINGLE and run.asked[-1] == 16
