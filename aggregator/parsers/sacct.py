"""Pure parser of `sacct --parsable/--parsable2` output, any delimiter, with or without header.

Rows come out as dicts keyed by sacct's field names; job steps (`123.batch`, `123.0`, `123.extern`)
are kept with the `step` key set, so a caller can look at step states (older Slurm versions put
OUT_OF_MEMORY only on the step).
"""

from __future__ import annotations

from nomade_common.errors import ParseError

# The fields NØMADE asks sacct for when it reconciles a job; the order is the command's.
RECONCILE_FIELDS = (
    "JobIDRaw,JobID,JobName,User,Account,Partition,Submit,Start,End,Elapsed,State,ExitCode,"
    "DerivedExitCode,TotalCPU,MaxRSS,ReqMem,AllocCPUS,NNodes,NodeList,Timelimit,ReqTRES,WorkDir"
).split(",")

# Longer delimiters first: a '^|^' line holds as many '|' as '^|^', and max() keeps the first.
_DELIMS = ("^|^", "|", "☃", ";", ",")


def _guess_delimiter(line: str) -> str:
    best = max(_DELIMS, key=line.count)
    return best if line.count(best) else "|"


def parse(
    text: str,
    source: str = "sacct",
    fields: list[str] | None = None,
    delimiter: str | None = None,
) -> list[dict[str, str]]:
    """Parse sacct output.  FIELDS is required when the output has no header line."""
    numbered = [(n, ln) for n, ln in enumerate(text.splitlines(), start=1) if ln.strip()]
    if not numbered:
        return []
    lines = [ln for _, ln in numbered]
    delim = delimiter or _guess_delimiter(lines[0])
    header = lines[0].split(delim)
    if "JobID" in header or "JobIDRaw" in header:
        fields, start = [h.strip() for h in header], 1
    elif fields is None:
        raise ParseError(source, 1, "no header line (JobID|...) and no field list given")
    else:
        start = 0
    if fields and fields[-1] == "" and lines[0].endswith(delim):
        fields = fields[:-1]  # --parsable (not 2) ends each line with the delimiter
    rows = []
    for number, line in numbered[start:]:  # numbers are the file's, blank lines included
        values = line.split(delim)
        if len(values) == len(fields) + 1 and values[-1] == "":
            values = values[:-1]
        if len(values) != len(fields):
            raise ParseError(
                source,
                number,
                f"expected {len(fields)} fields separated by {delim!r}, got {len(values)}",
            )
        row = dict(zip(fields, values, strict=True))
        job = row.get("JobIDRaw") or row.get("JobID") or ""
        base, _, step = job.partition(".")
        if not base:
            raise ParseError(source, number, "empty JobID")
        row["step"] = step or ""
        rows.append(row)
    return rows


def records(text: str, source: str = "sacct") -> list[dict]:
    """`nomadectl parse sacct`: one record per job line and step, typed, units in the names."""
    from . import slurmvalues as sv

    out = []
    for row in parse(text, source, fields=list(RECONCILE_FIELDS)):

        def safe(fn, value, *args):
            try:
                return fn(value, *args)
            except ValueError:
                return None

        code = safe(sv.exit_code, row.get("ExitCode")) or (None, None)
        out.append({
            "job_id": row.get("JobIDRaw") or row.get("JobID"),
            "step": row["step"] or None,
            "user": row.get("User") or None,
            "account": row.get("Account") or None,
            "partition": row.get("Partition") or None,
            "state": row.get("State") or None,
            "exit_code": code[0],
            "signal": code[1],
            "submit_time": safe(sv.timestamp, row.get("Submit")),
            "start_time": safe(sv.timestamp, row.get("Start")),
            "end_time": safe(sv.timestamp, row.get("End")),
            "elapsed_seconds": safe(sv.duration, row.get("Elapsed")),
            "total_cpu_seconds": safe(sv.duration, row.get("TotalCPU")),
            "max_rss_bytes": (safe(sv.memory, row.get("MaxRSS"), "K") or (None,))[0],
            "time_limit_seconds": safe(sv.duration, row.get("Timelimit")),
        })  # fmt: skip
    return out
