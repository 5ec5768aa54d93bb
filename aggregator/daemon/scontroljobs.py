"""`scontrol show job -o` for starting jobs, one call per job array burst.

PrologSlurmctld's environment lacks most of a job's request (memory, time limit, GPUs, submit
time), so the aggregator asks scontrol for each starting job.  A job array starts its tasks by
the dozen, and one process per task queues on the head node exactly when it is busiest.
`scontrol show job -o <array job id>` lists every task of the array that has a record of its own
(running ones, with their own job ids) and one record for those still pending, so one call
serves all the tasks of a burst: a task is looked up in the last answer for its array if that is
at most MAX_AGE_SECONDS old, and the array is asked again when it is missing there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from collectors.slurm import scontrol

MAX_AGE_SECONDS = 2.0


class ScontrolJobs:
    def __init__(self, run: Callable[[int], str | None], max_age: float = MAX_AGE_SECONDS) -> None:
        """RUN(job_id) is `scontrol show job -o JOB_ID`'s output, or None when it failed."""
        self.run, self.max_age = run, max_age
        self._lock = threading.Lock()
        self._arrays: dict[int, tuple[float, dict[tuple[str, str], str]]] = {}
        self._array_locks: dict[int, threading.Lock] = {}

    def text(
        self, job_id: int, array_job_id: int | None = None, array_task_id: int | None = None
    ) -> str | None:
        """The record (one line) of JOB_ID; for an array task, from its array's answer."""
        if array_job_id is None or array_task_id is None:
            return self.run(job_id)
        key = (str(job_id), str(array_task_id))
        with self._lock:
            lock = self._array_locks.setdefault(array_job_id, threading.Lock())
        with lock:  # the other tasks of a burst wait for the one call, then read its answer
            line = self._cached(array_job_id, key)
            if line is None:
                out = self.run(array_job_id)
                lines = _by_task(out) if out else {}
                with self._lock:
                    self._forget_old(keep=array_job_id)
                    self._arrays[array_job_id] = (time.monotonic(), lines)
                line = lines.get(key)
        return line if line is not None else self.run(job_id)

    def _cached(self, array_job_id: int, key: tuple[str, str]) -> str | None:
        with self._lock:
            taken, lines = self._arrays.get(array_job_id, (0.0, {}))
        return lines.get(key) if time.monotonic() - taken <= self.max_age else None

    def _forget_old(self, keep: int) -> None:
        now = time.monotonic()
        for array in [
            a for a, (t, _) in self._arrays.items() if now - t > self.max_age and a != keep
        ]:
            del self._arrays[array]
            self._array_locks.pop(array, None)


def _by_task(text: str) -> dict[tuple[str, str], str]:
    """Each record's line by (JobId, ArrayTaskId); the pending tasks' record (a range of task
    ids) is not one task's and is left out."""
    out = {}
    for line in text.splitlines():
        if "=" not in line:
            continue
        rec = scontrol.parse_record(line.strip())
        task = rec.get("ArrayTaskId", "")
        if task.isdigit():
            out[(rec.get("JobId", ""), task)] = line.strip()
    return out
