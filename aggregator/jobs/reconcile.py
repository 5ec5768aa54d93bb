"""Reconciling ended jobs with `sacct`: the final state, exit code, elapsed time, CPU and MaxRSS.

slurmdbd lags behind slurmctld, so a job that has just ended may not be in sacct yet (or still
show RUNNING): each job is retried with exponential backoff and marked `unreconciled` when sacct
never answers.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections import defaultdict

from aggregator.jobs.fields import final_from_sacct
from aggregator.store import reconcile_due
from collectors.slurm import sacct
from nomade_common.errors import ParseError

log = logging.getLogger("nomade.reconcile")


def run_sacct(command: str, job_ids: list[int], timeout: float = 20.0) -> str:
    """Ask sacct about JOB_IDS (and their steps); raises OSError or RuntimeError on failure."""
    argv = [
        command,
        "--parsable2",
        "--noheader",
        "-D",
        "-j",
        ",".join(map(str, job_ids)),
        "-o",
        ",".join(sacct.RECONCILE_FIELDS),
    ]
    return run_command(argv, timeout)


def run_command(argv: list[str], timeout: float) -> str:
    """A Slurm command's stdout; OSError or RuntimeError (with its first error line) otherwise."""
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, errors="replace", timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{argv[0]} did not answer within {timeout:.0f} s") from None
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["no message"])[0]
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {first}")
    return proc.stdout


def group_by_job(rows: list[dict[str, str]]) -> dict[int, list[dict[str, str]]]:
    out: dict[int, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        base = (row.get("JobIDRaw") or row.get("JobID") or "").split(".")[0].split("_")[0]
        if base.isdigit():
            out[int(base)].append(row)
    return out


class Reconciler:
    """Called periodically by the aggregator: one sacct call for every job that is due."""

    def __init__(self, reader, writer, ingest, cfg) -> None:
        self.reader, self.writer, self.ingest, self.cfg = reader, writer, ingest, cfg
        self._last_error: str | None = None
        self.on_final = None  # called (uid, job_id, final) once a job's final record is stored

    def due(self, now: float) -> list[tuple[int, int, float | None, int]]:
        return reconcile_due(self.reader, now)

    def run_once(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        due = self.due(now)
        if not due:
            return 0
        try:
            text = run_sacct(self.cfg.sacct, sorted({r[1] for r in due}))
            by_job = group_by_job(sacct.parse(text, "sacct", fields=list(sacct.RECONCILE_FIELDS)))
            self._last_error = None
        except (OSError, RuntimeError, ParseError) as exc:
            message = f"reconcile: cannot ask sacct ({self.cfg.sacct!r}): {exc}; will retry"
            if message != self._last_error:
                log.warning(message)
                self._last_error = message
            by_job = {}
        done = 0
        for uid, job_id, submit, attempts in due:
            final = final_from_sacct(by_job.get(job_id, []), submit)
            done += final is not None
            self.writer.call(
                lambda c, u=uid, f=final, a=attempts: self.ingest.reconciled(
                    c,
                    u,
                    f,
                    a + 1,
                    self.cfg.reconcile_attempts,
                    self.cfg.reconcile_delay_seconds,
                    now,
                )
            )
        return done
