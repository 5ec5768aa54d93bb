"""Bootstrapping NØMADE's job history from Slurm accounting (`nomadectl import sacct`).

Pure conversions (`runs`, `identity`, `convert`, `convert_all`) turn parsed `sacct` rows into rows
of the `jobs` table; `store_jobs` applies them inside the writer's transaction, and `import_text`
and `import_range` are the thin shells that read, validate the whole input, then write it through
`store.Writer` in batches.  A job run is identified by (cluster, job_id, submit_time), so importing
the same output again changes nothing.
"""

from __future__ import annotations

import gzip
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TextIO

from .ingest import Ingest
from .jobs import REQUEST_KEYS, final_from_sacct
from .outcome import UNFINISHED, split_state
from .parsers import sacct
from .parsers import slurmvalues as sv
from .reconcile import run_command
from .store import Writer

BATCH = 2000  # job runs per transaction

# sacct's own spelling of the fields NØMADE reads; `--fields` may name them in any case.
KNOWN_FIELDS = (
    "JobID", "JobIDRaw", "JobName", "User", "UID", "Account", "Partition", "Submit", "Start",
    "End", "Elapsed", "State", "ExitCode", "DerivedExitCode", "TotalCPU", "MaxRSS", "ReqMem",
    "AllocCPUS", "NCPUS", "ReqCPUS", "NNodes", "NodeList", "Timelimit", "ReqTRES", "AllocTRES",
    "WorkDir",
)  # fmt: skip
_CANON = {name.lower(): name for name in KNOWN_FIELDS}

Run = tuple[dict[str, str], list[dict[str, str]]]


@dataclass
class Summary:
    outcomes: Counter = field(default_factory=Counter)  # outcome class -> job runs
    skipped: Counter = field(default_factory=Counter)  # reason -> job runs
    stored: Counter = field(default_factory=Counter)  # new / updated / unchanged

    def add(self, other: Summary) -> None:
        self.outcomes.update(other.outcomes)
        self.skipped.update(other.skipped)
        self.stored.update(other.stored)

    @property
    def imported(self) -> int:
        return sum(self.outcomes.values())

    def render(self) -> str:
        s = self.stored
        lines = [
            f"imported {self.imported} job runs"
            f" ({s['new']} new, {s['updated']} updated, {s['unchanged']} unchanged)"
        ]
        unfinished = {k: v for k, v in self.skipped.items() if not k.startswith("no ")}
        if unfinished:
            detail = ", ".join(f"{k} {v}" for k, v in sorted(unfinished.items()))
            lines.append(f"skipped {sum(unfinished.values())} unfinished ({detail})")
        for reason in sorted(set(self.skipped) - set(unfinished)):
            lines.append(f"skipped {self.skipped[reason]} with {reason}")
        lines += [f"  {name:<14} {n}" for name, n in sorted(self.outcomes.items())]
        return "\n".join(lines)


# -- pure conversions ------------------------------------------------------------------------
def canonical(fields: Iterable[str]) -> list[str]:
    """'jobid,ncpus,start' -> ['JobID', 'NCPUS', 'Start']; unknown names are kept as given."""
    return [_CANON.get(f.strip().lower(), f.strip()) for f in fields]


def parse(
    text: str, source: str, fields: list[str] | None = None, delimiter: str | None = None
) -> list[dict[str, str]]:
    """Every row of the output, or ParseError on the first malformed line (nothing half-read)."""
    fields = canonical(fields or sacct.RECONCILE_FIELDS)
    return sacct.parse(text, source, fields=fields, delimiter=delimiter)


def _raw_id(row: dict[str, str]) -> str:
    return (row.get("JobIDRaw") or row.get("JobID") or "").split(".")[0]


def runs(rows: list[dict[str, str]]) -> tuple[list[Run], int]:
    """Each job line with the steps that follow it (`sacct -D` prints every run this way).

    Returns the runs and the number of step lines whose job line is not in the output.
    """
    out: list[Run] = []
    latest: dict[str, int] = {}
    orphans = 0
    for row in rows:
        key = _raw_id(row)
        if not row["step"]:
            latest[key] = len(out)
            out.append((row, []))
        elif key in latest:
            out[latest[key]][1].append(row)
        else:
            orphans += 1
    return out, orphans


def identity(job: dict[str, str]) -> dict[str, int | None] | None:
    """Job, array and het ids from JobID ('123_4', '123+1') and JobIDRaw.

    None when the job's own id cannot be known: an array task or het component shown without
    JobIDRaw carries only its parent's id.
    """
    shown, raw = (job.get("JobID") or "").strip(), (job.get("JobIDRaw") or "").strip()
    ids: dict[str, int | None] = dict.fromkeys(
        ("job_id", "array_job_id", "array_task_id", "het_job_id", "het_job_offset")
    )
    parent, sep, member = shown.partition("_") if "_" in shown else shown.partition("+")
    if sep:
        kind = "array" if sep == "_" else "het"
        first, second = ("array_job_id", "array_task_id") if kind == "array" else (
            "het_job_id", "het_job_offset")  # fmt: skip
        ids[first] = int(parent) if parent.isdigit() else None
        ids[second] = int(member) if member.isdigit() else None  # '[1-5%2]' of a pending array
    if raw.isdigit():
        ids["job_id"] = int(raw)
    elif not raw and not sep and shown.isdigit():
        ids["job_id"] = int(shown)
    elif not raw and ids["het_job_offset"] == 0:
        ids["job_id"] = ids["het_job_id"]  # the het leader's id is the het job's
    else:
        return None
    return ids


def convert(job: dict[str, str], steps: list[dict[str, str]]) -> dict[str, Any] | None:
    """The `jobs` columns of one finished run; None while it has not finished."""
    ids = identity(job)
    final = final_from_sacct([job, *steps], None)
    if ids is None or final is None:
        return None
    if final["gpus"] is None:
        final["gpus"] = sv.gpus_from_tres(sv.tres(job.get("AllocTRES")))
    if not final["cpus"]:  # AllocCPUS is 0 for a job that never started: take the request
        final["cpus"] = _int(job.get("NCPUS")) or _int(job.get("ReqCPUS")) or _int(
            sv.tres(job.get("ReqTRES")).get("cpu")) or final["cpus"]  # fmt: skip
    return {**ids, **final, "user_id": _int(job.get("UID")), "reconcile": "done"}


def _int(text: str | None) -> int | None:
    try:
        return sv.integer(text)
    except ValueError:
        return None


def skip_reason(job: dict[str, str]) -> str:
    """Why `convert` gave None: the unfinished state, or what the output lacks."""
    word, _ = split_state(job.get("State") or "")
    if not word:
        return "no State"
    if word in UNFINISHED or identity(job) is not None:
        return word
    return "no JobIDRaw (array task or het component)"


def convert_all(rows: list[dict[str, str]]) -> tuple[list[dict[str, Any]], Summary]:
    """Finished runs as `jobs` rows, and a summary of what was converted and what was skipped."""
    summary, out = Summary(), []
    grouped, orphans = runs(rows)
    for job, steps in grouped:
        fields = convert(job, steps)
        if fields is None:
            summary.skipped[skip_reason(job)] += 1
        else:
            summary.outcomes[fields["outcome"]] += 1
            out.append(fields)
    if orphans:
        summary.skipped["no job line (step lines alone)"] += orphans
    return out, summary


# -- storing ---------------------------------------------------------------------------------
_SAME_RUN = (
    "SELECT * FROM jobs WHERE cluster = ? AND job_id = ? AND (submit_time = ? OR submit_time IS NULL)"
    " ORDER BY submit_time IS NULL, uid DESC LIMIT 1"
)
_NEWEST_RUN = "SELECT * FROM jobs WHERE cluster = ? AND job_id = ? ORDER BY uid DESC LIMIT 1"


def changes(row: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """What FIELDS would change in ROW: the request (REQUEST_KEYS) and submit time only fill."""
    out = {}
    for key, value in fields.items():
        if value is None or key not in row or row[key] == value:
            continue
        if (key in REQUEST_KEYS or key == "submit_time") and row[key] is not None:
            continue  # what the job's own start report said stays
        out[key] = value
    return out


def store_jobs(
    conn: sqlite3.Connection, ingest: Ingest, jobs: list[dict[str, Any]], now: float
) -> Counter:
    """Run inside the writer's transaction: insert new runs, complete known ones."""
    counts: Counter = Counter()
    for fields in jobs:
        key = (ingest.cluster, fields["job_id"])
        submit = fields.get("submit_time")
        found = conn.execute(_NEWEST_RUN, key) if submit is None else conn.execute(
            _SAME_RUN, (*key, submit))  # fmt: skip
        row = found.fetchone()
        if row is None:
            ingest.upsert_job(conn, fields, now)
            counts["new"] += 1
            continue
        diff = changes(dict(row), fields)
        if diff:
            sets = ", ".join(f"{k} = ?" for k in diff)
            conn.execute(
                f"UPDATE jobs SET {sets}, updated = ? WHERE uid = ?",
                (*diff.values(), now, row["uid"]),
            )
        counts["updated" if diff else "unchanged"] += 1
    return counts


def store(writer: Writer, ingest: Ingest, jobs: list[dict[str, Any]]) -> Counter:
    counts: Counter = Counter()
    for i in range(0, len(jobs), BATCH):
        chunk = jobs[i : i + BATCH]

        def apply(conn: sqlite3.Connection, chunk: list[dict[str, Any]] = chunk) -> Counter:
            return store_jobs(conn, ingest, chunk, time.time())

        counts.update(writer.call(apply, timeout=600))
    return counts


class _Store:
    """The writer thread for one import."""

    def __init__(self, database: str, cluster: str) -> None:
        self.writer, self.ingest = Writer(database), Ingest(cluster)

    def __enter__(self) -> _Store:
        self.writer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.writer.stop()

    def put(self, rows: list[dict[str, str]]) -> Summary:
        jobs, summary = convert_all(rows)
        summary.stored.update(store(self.writer, self.ingest, jobs))
        return summary


# -- the shells ------------------------------------------------------------------------------
def read_input(path: str, stdin: TextIO | None = None) -> str:
    """FILE's text: '-' is standard input, '*.gz' is gunzipped."""
    if path == "-":
        return (stdin or sys.stdin).read()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        return f.read()


def import_text(
    text: str,
    source: str,
    database: str,
    cluster: str,
    fields: list[str] | None = None,
    delimiter: str | None = None,
) -> Summary:
    """Parse all of TEXT first (a malformed line raises ParseError, nothing is stored), then store."""
    rows = parse(text, source, fields, delimiter)
    with _Store(database, cluster) as st:
        return st.put(rows)


def windows(start: datetime, end: datetime) -> Iterator[tuple[str, str]]:
    """Day-sized (start, end) windows in sacct's time format."""
    t = start
    while t < end:
        nxt = min(t + timedelta(days=1), end)
        yield t.isoformat(timespec="seconds"), nxt.isoformat(timespec="seconds")
        t = nxt


def sacct_argv(command: str, start: str, end: str) -> list[str]:
    return [command, "--parsable2", "-D", "-a", "-S", start, "-E", end,
            "-o", ",".join(sacct.RECONCILE_FIELDS)]  # fmt: skip


def run_sacct(argv: list[str], timeout: float = 600.0) -> str:
    return run_command(argv, timeout)


def import_range(
    command: str, database: str, cluster: str, start: datetime, end: datetime | None = None
) -> Summary:
    """Run the local sacct one day at a time; each day is validated before it is stored."""
    total = Summary()
    with _Store(database, cluster) as st:
        for s, e in windows(start, end or datetime.now().replace(microsecond=0)):
            argv = sacct_argv(command, s, e)
            rows = parse(run_sacct(argv), f"sacct -S {s} -E {e}")
            total.add(st.put(rows))
    return total
