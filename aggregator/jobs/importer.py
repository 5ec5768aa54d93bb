"""Bootstrapping NØMADE's job history from Slurm accounting (`nomadectl import sacct`).

Pure conversions (`read_history`, `runs`, `identity`, `convert`, `convert_all`) turn `sacct`
output (--parsable2 text, any delimiter, comment lines and several header blocks, or --json) into
rows of the `jobs` table; `store_jobs` applies them inside the writer's transaction, and
`import_text`, `import_files` and `import_range` are the thin shells that read, validate a whole
input, then write it through `store.Writer` in batches.  A job run is identified by (cluster,
job_id, submit_time), so importing the same output again changes nothing.
"""

from __future__ import annotations

import gzip
import re
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TextIO

from aggregator.jobs.fields import REQUEST_KEYS, final_from_sacct
from aggregator.jobs.outcome import UNFINISHED, split_state
from aggregator.jobs.reconcile import run_command
from aggregator.store import Ingest, Writer, find_run, update_job
from collectors.slurm import sacct
from collectors.slurm import slurmvalues as sv
from nomade_common.errors import ParseError
from nomade_common.text import printable

BATCH = 2000  # job runs per transaction

# sacct's own spelling of the fields NØMADE reads; `--fields` may name them in any case.
KNOWN_FIELDS = (
    "JobID",
    "JobIDRaw",
    "JobName",
    "User",
    "UID",
    "Account",
    "Partition",
    "Submit",
    "Start",
    "End",
    "Elapsed",
    "State",
    "ExitCode",
    "DerivedExitCode",
    "TotalCPU",
    "MaxRSS",
    "ReqMem",
    "AllocCPUS",
    "NCPUS",
    "ReqCPUS",
    "NNodes",
    "NodeList",
    "Timelimit",
    "ReqTRES",
    "AllocTRES",
    "WorkDir",
)
_CANON = {name.lower(): name for name in KNOWN_FIELDS}

Run = tuple[dict[str, str], list[dict[str, str]]]


# Why a job run is skipped, besides its unfinished state (the words of outcome.UNFINISHED).
NO_USER = "no User (a job is never pooled under an empty user)"
NO_USER_COLUMN = "no User column"
UNREADABLE = "a value sacct does not print (GPU count, size, time)"


@dataclass
class Summary:
    outcomes: Counter = field(default_factory=Counter)  # outcome class -> job runs
    skipped: Counter = field(default_factory=Counter)  # reason -> job runs
    stored: Counter = field(default_factory=Counter)  # new / updated / unchanged
    comments: int = 0  # comment lines skipped
    no_memory: int = 0  # job runs imported without a memory request

    def add(self, other: Summary) -> None:
        self.outcomes.update(other.outcomes)
        self.skipped.update(other.skipped)
        self.stored.update(other.stored)
        self.comments += other.comments
        self.no_memory += other.no_memory

    @property
    def imported(self) -> int:
        return sum(self.outcomes.values())

    def line(self, source: str) -> str:
        """One line: what SOURCE gave, what was stored, what was skipped and why."""
        s, skipped = self.stored, dict(self.skipped)
        parts = [
            f"{printable(source, 500)}: imported {self.imported} job runs"
            f" ({s['new']} new, {s['updated']} updated, {s['unchanged']} unchanged)"
        ]
        unfinished = {k: v for k, v in skipped.items() if k in UNFINISHED}
        if unfinished:
            detail = ", ".join(f"{k} {v}" for k, v in sorted(unfinished.items()))
            parts.append(f"skipped {sum(unfinished.values())} unfinished ({detail})")
        if NO_USER_COLUMN in skipped:
            parts.append(
                f"skipped {skipped.pop(NO_USER_COLUMN)} finished: the input has no User column"
                " (add User to sacct -o)"
            )
        parts += [f"skipped {skipped[k]} with {k}" for k in sorted(set(skipped) - set(unfinished))]
        if self.comments:
            parts.append(f"skipped {self.comments} comment line{'s' * (self.comments != 1)}")
        if self.no_memory:
            parts.append(
                f"{self.no_memory} imported without a memory request (ReqMem empty or 0):"
                " --mem advice cannot learn from them"
            )
        return "; ".join(parts)

    def outcome_lines(self) -> list[str]:
        return [f"  {name:<14} {n}" for name, n in sorted(self.outcomes.items())]


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


_FIRST = re.compile(r"[^\s\ufeff]")


def read_history(
    text: str, source: str, fields: list[str] | None = None, delimiter: str | None = None
) -> tuple[list[dict[str, str]], int]:
    """Every row of a history and how many comment lines it had; ParseError on the first
    malformed line or record (nothing half-read).  `sacct --json` is told from text by its
    first non-blank character; FIELDS and DELIMITER are for text alone."""
    first = _FIRST.search(text)
    if first and first.group() in "{[":
        return sacct.parse_json(text, source), 0
    fields = canonical(fields or sacct.RECONCILE_FIELDS)
    return sacct.parse_history(text, source, fields=fields, delimiter=delimiter)


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
    """Job, array and het ids from JobID and JobIDRaw (collectors/slurm/slurmvalues.job_ids)."""
    return sv.job_ids(job.get("JobID"), job.get("JobIDRaw"))


def convert(job: dict[str, str], steps: list[dict[str, str]]) -> dict[str, Any] | None:
    """The `jobs` columns of one finished run; None while it has not finished."""
    ids = identity(job)
    final = final_from_sacct([job, *steps], None)
    if ids is None or final is None:
        return None
    if final["gpus"] is None:  # a count sacct cannot print raises: the job is skipped, said why
        final["gpus"] = sv.gpus_from_tres(sv.tres(job.get("AllocTRES")))
    final["cpus"] = sv.job_cpus(job)  # AllocCPUS, or the request for a job that never started
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
    """Finished runs as `jobs` rows, and a summary of what was converted and what was skipped.

    A run without a User is skipped (NO_USER, or NO_USER_COLUMN when the rows have no User
    field): the model learns per user, and an empty one would pool everybody's jobs.
    """
    summary, out = Summary(), []
    grouped, orphans = runs(rows)
    for job, steps in grouped:
        try:
            fields = convert(job, steps)
        except (ValueError, ArithmeticError):  # e.g. 'gres/gpu=x' in a hand-edited file
            summary.skipped[UNREADABLE] += 1
            continue
        if fields is None:
            summary.skipped[skip_reason(job)] += 1
        elif not all(-(2**63) <= v < 2**63 for v in fields.values() if isinstance(v, int)):
            summary.skipped[UNREADABLE] += 1  # a size or id no SQLite INTEGER holds
        elif not (fields["user"] or "").strip():
            summary.skipped[NO_USER if "User" in job else NO_USER_COLUMN] += 1
        else:
            summary.outcomes[fields["outcome"]] += 1
            summary.no_memory += not (fields["mem_per_cpu_bytes"] or fields["mem_per_node_bytes"])
            out.append(fields)
    if orphans:
        summary.skipped["no job line (step lines alone)"] += orphans
    return out, summary


# -- storing ---------------------------------------------------------------------------------
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


def store_jobs(conn: Any, ingest: Ingest, jobs: list[dict[str, Any]], now: float) -> Counter:
    """Run inside the writer's transaction: insert new runs, complete known ones."""
    counts: Counter = Counter()
    for fields in jobs:
        row = find_run(conn, ingest.cluster, fields["job_id"], fields.get("submit_time"))
        if row is None:
            ingest.upsert_job(conn, fields, now)
            counts["new"] += 1
            continue
        diff = changes(row, fields)
        if diff:
            update_job(conn, row["uid"], diff, now)
        counts["updated" if diff else "unchanged"] += 1
    return counts


def store(writer: Writer, ingest: Ingest, jobs: list[dict[str, Any]]) -> Counter:
    counts: Counter = Counter()
    for i in range(0, len(jobs), BATCH):
        chunk = jobs[i : i + BATCH]

        def apply(conn: Any, chunk: list[dict[str, Any]] = chunk) -> Counter:
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
    """FILE's text: '-' is standard input, '*.gz' is gunzipped.  ParseError (no line) when it
    cannot be read."""
    try:
        if path == "-":
            return (stdin or sys.stdin).read()
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        raise ParseError(path, None, "no such file") from None
    except IsADirectoryError:
        raise ParseError(path, None, "a directory, expected a file of sacct output") from None
    except PermissionError:
        raise ParseError(path, None, "permission denied (run as a user who may read it)") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ParseError(path, None, f"expected a complete gzip file: {exc}") from None
    except OSError as exc:
        raise ParseError(path, None, f"cannot be read: {exc.strerror or exc}") from None


def import_text(
    text: str,
    source: str,
    database: str,
    cluster: str,
    fields: list[str] | None = None,
    delimiter: str | None = None,
) -> Summary:
    """Parse all of TEXT first (a malformed line raises ParseError, nothing is stored), then
    store."""
    rows, comments = read_history(text, source, fields, delimiter)
    with _Store(database, cluster) as st:
        summary = st.put(rows)
    summary.comments = comments
    return summary


def import_files(
    paths: Iterable[str],
    database: str,
    cluster: str,
    fields: list[str] | None = None,
    delimiter: str | None = None,
    stdin: TextIO | None = None,
) -> Iterator[tuple[str, Summary | ParseError]]:
    """Each of PATHS ('-' is standard input) with its summary, or the ParseError that rejected
    it whole (nothing of it stored); a rejected file does not stop the next."""
    with _Store(database, cluster) as st:
        for path in paths:
            try:
                rows, comments = read_history(read_input(path, stdin), path, fields, delimiter)
            except ParseError as exc:
                yield path, exc
                continue
            summary = st.put(rows)
            summary.comments = comments
            yield path, summary


def error_line(exc: ParseError) -> str:
    """The one line that says why an input was rejected, fit for a terminal."""
    return printable(str(exc), 2000)


def windows(start: datetime, end: datetime) -> Iterator[tuple[str, str]]:
    """Day-sized (start, end) windows in sacct's time format."""
    t = start
    while t < end:
        nxt = min(t + timedelta(days=1), end)
        yield t.isoformat(timespec="seconds"), nxt.isoformat(timespec="seconds")
        t = nxt


def run_sacct(argv: list[str], timeout: float = 600.0) -> str:
    return run_command(argv, timeout)


def range_source(start: datetime, end: datetime | None) -> str:
    """How a --start/--end import names its input."""
    until = end.isoformat(timespec="seconds") if end else "now"
    return f"sacct -S {start.isoformat(timespec='seconds')} -E {until}"


def import_range(
    command: str, database: str, cluster: str, start: datetime, end: datetime | None = None
) -> Summary:
    """Run the local sacct one day at a time; each day is validated before it is stored."""
    total = Summary()
    with _Store(database, cluster) as st:
        for s, e in windows(start, end or datetime.now().replace(microsecond=0)):
            argv = sacct.history_argv(command, s, e)
            rows = parse(run_sacct(argv), f"sacct -S {s} -E {e}")
            total.add(st.put(rows))
    return total
