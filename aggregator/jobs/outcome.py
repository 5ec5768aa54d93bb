"""Classify a finished job's outcome the same way on every Slurm version.

Classes: COMPLETED, FAILED, TIMEOUT, OUT_OF_MEMORY, CANCELLED (with who cancelled), NODE_FAIL,
PREEMPTED, OTHER.  Slurm before 17.11 has no OUT_OF_MEMORY job state: there an out-of-memory kill
shows as FAILED or CANCELLED on the job with OUT_OF_MEMORY (or exit 0:125 from the cgroup OOM
handler) on a step, so the steps are consulted too.
"""

from __future__ import annotations

OUTCOMES = (
    "COMPLETED",
    "FAILED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "CANCELLED",
    "NODE_FAIL",
    "PREEMPTED",
    "OTHER",
)
_DIRECT = {
    "COMPLETED": "COMPLETED",
    "FAILED": "FAILED",
    "TIMEOUT": "TIMEOUT",
    "OUT_OF_MEMORY": "OUT_OF_MEMORY",
    "OUT_OF_ME+": "OUT_OF_MEMORY",
    "CANCELLED": "CANCELLED",
    "NODE_FAIL": "NODE_FAIL",
    "PREEMPTED": "PREEMPTED",
    "DEADLINE": "TIMEOUT",
    "BOOT_FAIL": "NODE_FAIL",
}
# States of a job that has not finished: no outcome yet.
UNFINISHED = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "RESIZING",
    "SUSPENDED",
    "COMPLETING",
    "CONFIGURING",
}


def split_state(state: str) -> tuple[str, str | None]:
    """'CANCELLED by 1000' -> ('CANCELLED', '1000'); 'OUT_OF_ME+' -> ('OUT_OF_ME+', None)."""
    word, _, rest = state.strip().partition(" ")
    by = rest.removeprefix("by ").strip() if rest.startswith("by ") else None
    return word.upper(), by


def classify(
    job_state: str, step_states: list[str] = (), exit_code: str | None = None
) -> tuple[str | None, str | None]:
    """Return (outcome, cancelled_by), or (None, None) while the job has not finished."""
    word, by = split_state(job_state)
    if word in UNFINISHED or not word:
        return None, None
    steps = [split_state(s)[0] for s in step_states]
    if (
        word != "OUT_OF_MEMORY"
        and "OUT_OF_MEMORY" in steps
        or any(s == "OUT_OF_ME+" for s in steps)
    ):
        return "OUT_OF_MEMORY", None
    if word in ("FAILED", "CANCELLED") and exit_code == "0:125":
        return "OUT_OF_MEMORY", None
    outcome = _DIRECT.get(word, "OTHER")
    return outcome, by if outcome == "CANCELLED" else None


def is_failure(outcome: str | None) -> bool | None:
    """The binary target: anything but COMPLETED and a user's own cancellation is a failure."""
    if outcome is None:
        return None
    return outcome not in ("COMPLETED", "CANCELLED")
