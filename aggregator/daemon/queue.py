"""A cached snapshot of the Slurm queue, taken when a job starts (for the model's features).

PrologSlurmctld must stay fast, so it does not run squeue itself: the aggregator keeps one
snapshot at most `queue_snapshot_max_age_seconds` old and attaches it to each starting job.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from typing import Any

SQUEUE_FORMAT = "%i|%T|%P|%u|%C|%r"


def parse_squeue(text: str) -> dict[str, Any]:
    """Counts of the queue: per state, per partition and state, per user and state, CPUs."""
    by_state: Counter[str] = Counter()
    by_partition: Counter[str] = Counter()
    by_user: Counter[str] = Counter()
    cpus: Counter[str] = Counter()
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 5:
            continue
        _job, state, partition, user, ncpu = parts[:5]
        by_state[state] += 1
        by_partition[f"{partition}:{state}"] += 1
        by_user[f"{user}:{state}"] += 1
        if ncpu.isdigit():
            cpus[state] += int(ncpu)
    return {
        "by_state": dict(by_state),
        "by_partition_state": dict(by_partition),
        "by_user_state": dict(by_user),
        "cpus_by_state": dict(cpus),
    }


class QueueSnapshots:
    def __init__(self, squeue: str = "squeue", max_age: float = 5.0) -> None:
        self.squeue, self.max_age = squeue, max_age
        self._lock = threading.Lock()
        self._snapshot: dict[str, Any] | None = None
        self._taken = 0.0

    def get(self) -> dict[str, Any] | None:
        """The snapshot, refreshed when older than max_age; None when squeue cannot be run."""
        with self._lock:
            if self._snapshot is None or time.time() - self._taken > self.max_age:
                try:
                    out = subprocess.run(
                        [self.squeue, "-h", "-a", "-o", SQUEUE_FORMAT],
                        capture_output=True,
                        text=True,
                        errors="replace",
                        timeout=5,
                    )
                    snap = parse_squeue(out.stdout) if out.returncode == 0 else None
                except (OSError, subprocess.TimeoutExpired):
                    snap = None
                self._snapshot = snap
                self._taken = time.time()
                if snap is not None:
                    snap["taken"] = self._taken
            return self._snapshot
