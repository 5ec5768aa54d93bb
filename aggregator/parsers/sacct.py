"""Pure parser of `sacct --parsable/--parsable2` output, any delimiter, with or without header.

Rows come out as dicts keyed by sacct's field names; job steps (`123.batch`, `123.0`, `123.extern`)
are kept with the `step` key set, so a caller can look at step states (older Slurm versions put
OUT_OF_MEMORY only on the step).
"""

from __future__ import annotations

from nomade_common.errors import ParseError

from . import slurmvalues as sv
from .squeue import decode_json

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


def _obj(value) -> dict:
    """VALUE where --json has an object: a value of another type (corrupt output) is empty."""
    return value if isinstance(value, dict) else {}


def _list(value) -> list:
    """VALUE where --json has an array, else empty."""
    return value if isinstance(value, list) else []


def _json_state(value) -> str | None:
    if isinstance(value, dict):
        value = value.get("current")
    if isinstance(value, list):  # 23.02+: ["COMPLETED"]
        value = value[0] if value else None
    return str(value) if value else None


def _json_exit(value, state: str | None) -> tuple[int | None, int | None]:
    """exit_code {status, return_code, signal} -> (exit status, signal) as text sacct shows them.

    22.05 (dbv0.0.38) loses non-zero exit statuses: a FAILED job or step comes out as SUCCESS 0
    (jobs 14 and 17 of tests/fixtures/slurm/22.05/sacct.json); that is reported as unknown.
    """
    if not isinstance(value, dict):
        return None, None
    status = value.get("status")
    status = (status[0] if status else None) if isinstance(status, list) else status
    signal = value.get("signal") or {}
    sig = sv.number(signal.get("signal_id", signal.get("id"))) if isinstance(signal, dict) else None
    code = sv.number(value.get("return_code"))
    if status == "SIGNALED":
        return 0, sig
    if status == "SUCCESS" and not code and state in ("FAILED", "NODE_FAIL", "OUT_OF_MEMORY"):
        return None, None
    return code, ((sig or 0) if code is not None else None)


def _cpu_seconds(value) -> float | None:
    if not isinstance(value, dict):
        return None
    secs, micro = sv.number(value.get("seconds")), sv.number(value.get("microseconds"))
    if secs is None and micro is None:
        return None
    return (secs or 0) + (micro or 0) / 1e6  # 22.05 lets microseconds exceed a second


def _max_rss(step: dict) -> int | None:
    # 'requested' holds the usage in (TRESUsageIn*): Slurm's name, not a request.
    for item in _list(_obj(_obj(step.get("tres")).get("requested")).get("max")):
        if isinstance(item, dict) and item.get("type") == "mem":
            return sv.number(item.get("count"))
    return None


def _step_name(step: dict) -> str:
    ident = _obj(step.get("step")).get("id")
    if isinstance(ident, dict):
        ident = ident.get("id", ident.get("name"))
    text = str(ident if ident is not None else _obj(step.get("step")).get("name", ""))
    return text.rsplit(".", 1)[-1] if "." in text else text  # 23.02+: "12.batch"


def records_json(text: str, source: str = "sacct") -> list[dict]:
    """`sacct --json` (dbv0.0.38 of 22.05, data_parser v0.0.39+): the records of `records`.

    A job's TotalCPU is the sum of its steps' (22.05 reports 0 for the job itself).
    """
    doc = decode_json(text, source)
    if not isinstance(doc, dict) or not isinstance(doc.get("jobs"), list):
        raise ParseError(source, None, "no 'jobs' list: not sacct --json output")
    out = []
    for job in (j for j in doc["jobs"] if isinstance(j, dict)):
        jid = str(sv.number(job.get("job_id")))
        t = _obj(job.get("time"))
        state = _json_state(job.get("state"))
        steps = [s for s in _list(job.get("steps")) if isinstance(s, dict)]
        total = _cpu_seconds(t.get("total"))
        if not total and steps:
            total = sum(_cpu_seconds(_obj(s.get("time")).get("total")) or 0 for s in steps)
        limit = sv.number(t.get("limit"))
        code = _json_exit(job.get("exit_code"), state)
        account = sv.string(job.get("account"))
        out.append({
            "job_id": jid, "step": None, "user": sv.string(job.get("user")), "account": account,
            "partition": sv.string(job.get("partition")), "state": state,
            "exit_code": code[0], "signal": code[1],
            "submit_time": sv.epoch(t.get("submission")), "start_time": sv.epoch(t.get("start")),
            "end_time": sv.epoch(t.get("end")), "elapsed_seconds": _float(t.get("elapsed")),
            "total_cpu_seconds": total, "max_rss_bytes": None,
            "time_limit_seconds": limit * 60.0 if limit is not None else None,
        })  # fmt: skip
        for step in steps:
            st = _obj(step.get("time"))
            name, sstate = _step_name(step), _json_state(step.get("state"))
            code = _json_exit(step.get("exit_code"), sstate)
            out.append({
                "job_id": f"{jid}.{name}", "step": name, "user": None, "account": account,
                "partition": None, "state": sstate, "exit_code": code[0], "signal": code[1],
                "submit_time": sv.epoch(st.get("start")), "start_time": sv.epoch(st.get("start")),
                "end_time": sv.epoch(st.get("end")), "elapsed_seconds": _float(st.get("elapsed")),
                "total_cpu_seconds": _cpu_seconds(st.get("total")), "max_rss_bytes": _max_rss(step),
                "time_limit_seconds": None,
            })  # fmt: skip
    return out


def _float(value) -> float | None:
    n = sv.number(value)
    return float(n) if n is not None else None
