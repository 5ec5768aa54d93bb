"""Pure parser of `sacct --parsable/--parsable2` output, any delimiter, with or without header.

Rows come out as dicts keyed by sacct's field names; job steps (`123.batch`, `123.0`, `123.extern`)
are kept with the `step` key set, so a caller can look at step states (older Slurm versions put
OUT_OF_MEMORY only on the step).

`collect_history` is the `job_history` collector's read: the jobs that ended since its last run.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

from collectors.runner import run_tool
from nomade_common.config import Config
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
    return _rows(numbered[start:], fields, delim, source)


def _rows(
    numbered: list[tuple[int, str]], fields: list[str], delim: str, source: str
) -> list[dict[str, str]]:
    """The rows of data lines (their numbers are the file's, blank lines included)."""
    rows = []
    for number, line in numbered:
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


_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def _header(line: str, delimiter: str | None) -> tuple[list[str], str] | None:
    """(fields, delimiter) when LINE is a header: sacct's field names, JobID or JobIDRaw among
    them.  A data line is never one: its job id is not a name."""
    if "JobID" not in line:
        return None
    for delim in (delimiter,) if delimiter else _DELIMS:
        names = [n.strip() for n in line.split(delim)]
        if len(names) > 1 and names[-1] == "":
            names.pop()  # --parsable ends the header with the delimiter too
        if ("JobID" in names or "JobIDRaw" in names) and all(map(_NAME.fullmatch, names)):
            return names, delim
    return None


def parse_history(
    text: str,
    source: str = "sacct",
    fields: list[str] | None = None,
    delimiter: str | None = None,
) -> tuple[list[dict[str, str]], int]:
    """A history file: the rows of `parse`, and how many comment lines were skipped.

    A line whose first non-blank character is '#' is a comment.  A header line anywhere starts
    a block read with its own fields and delimiter, so several sacct outputs may be concatenated;
    lines before the first header are read with FIELDS (sacct --noheader).  ParseError on the
    first malformed line, with the file's line number.
    """
    comments = 0
    blocks: list[tuple[list[str] | None, str | None, list[tuple[int, str]]]] = [
        (fields, delimiter, [])
    ]
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            comments += 1
            continue
        header = _header(line, delimiter)
        if header:
            blocks.append((*header, []))
        else:
            blocks[-1][2].append((number, line))
    rows: list[dict[str, str]] = []
    for names, delim, lines in blocks:
        if not lines:
            continue
        if names is None:
            raise ParseError(
                source, lines[0][0], "no header line (JobID|...) and no field list given"
            )
        rows += _rows(lines, names, delim or _guess_delimiter(lines[0][1]), source)
    return rows, comments


def _safe(fn, value, *args):
    try:
        return fn(value, *args)
    except ValueError:
        return None


def request(row: dict[str, str]) -> dict[str, Any]:
    """What a sacct row says about a job beyond its times and usage, as the aggregator stores it
    (aggregator/jobs/): names, where it ran, what it asked for, its array or het ids."""
    mem_node, mem_cpu = sv.memory_request(
        row.get("ReqMem"), row.get("AllocTRES"), row.get("ReqTRES"), row.get("NNodes")
    )
    ids = sv.job_ids(row.get("JobID"), row.get("JobIDRaw")) or {}
    derived = _safe(sv.exit_code, row.get("DerivedExitCode")) or (None, None)
    return {
        "job_name": row.get("JobName") or None,
        "user_id": _safe(sv.integer, row.get("UID")),
        "work_dir": row.get("WorkDir") or None,
        "node_list": None if sv.absent(row.get("NodeList")) else row.get("NodeList"),
        "nodes_requested": _safe(sv.integer, row.get("NNodes")),
        "cpus": sv.job_cpus(row),
        "mem_per_node_bytes": mem_node,
        "mem_per_cpu_bytes": mem_cpu,
        "gpus": sv.job_gpus(row.get("ReqTRES"), row.get("AllocTRES")),
        "req_tres": _tres_counts(row.get("ReqTRES")),
        "derived_exit_code": derived[0],
        "derived_signal": derived[1],
        **{k: ids.get(k) for k in _IDS},
    }


_IDS = ("array_job_id", "array_task_id", "het_job_id", "het_job_offset")


def _tres_counts(text: str | None) -> dict[str, int] | None:
    """ReqTRES as counts: {'cpu': 2, 'mem': bytes, 'node': 1, 'gres/gpu': 1}; None when empty.
    A count that is not a number is left out."""
    out = {}
    for key, value in sv.tres(text).items():
        if key == "mem":
            count = (_safe(sv.memory, value, "M") or (None,))[0]
        else:
            count = _safe(sv.integer, value)
        if count is not None:
            out[key] = count
    return out or None


def records(text: str, source: str = "sacct") -> list[dict]:
    """`nomadectl parse sacct`: one record per job line and step, typed, units in the names."""
    out = []
    for row in parse(text, source, fields=list(RECONCILE_FIELDS)):
        code = _safe(sv.exit_code, row.get("ExitCode")) or (None, None)
        out.append(
            {
                "job_id": row.get("JobIDRaw") or row.get("JobID"),
                "step": row["step"] or None,
                "user": row.get("User") or None,
                "account": row.get("Account") or None,
                "partition": row.get("Partition") or None,
                "state": row.get("State") or None,
                "exit_code": code[0],
                "signal": code[1],
                "submit_time": _safe(sv.timestamp, row.get("Submit")),
                "start_time": _safe(sv.timestamp, row.get("Start")),
                "end_time": _safe(sv.timestamp, row.get("End")),
                "elapsed_seconds": _safe(sv.duration, row.get("Elapsed")),
                "total_cpu_seconds": _safe(sv.duration, row.get("TotalCPU")),
                "max_rss_bytes": (_safe(sv.memory, row.get("MaxRSS"), "K") or (None,))[0],
                "time_limit_seconds": _safe(sv.duration, row.get("Timelimit")),
                **request(row),
            }
        )
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
    (jobs 14 and 17 of tests/fixtures/slurm/22.05/sacct.json); that is reported as unknown.  Its
    jobs ended by SIGTERM (13 timed out, 15 cancelled) say SIGNALED 15 where sacct's text output
    of the same jobs says ExitCode 0:0, and it leaves `kill_request_user` null (text: CANCELLED
    by 0).
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
    us = _cpu_us(value)
    return None if us is None else us / 1e6


def _max_rss(step: dict) -> int | None:
    # 'requested' holds the usage in (TRESUsageIn*): Slurm's name, not a request.
    for item in _list(_obj(_obj(step.get("tres")).get("requested")).get("max")):
        if isinstance(item, dict) and item.get("type") == "mem":
            return sv.number(item.get("count"))
    return None


def _step_name(step: dict) -> str:
    ident = _obj(step.get("step")).get("id")
    if isinstance(ident, dict):  # 23.02 (v0.0.39): {"job_id": 12, "step_id": "batch"}
        ident = ident.get("step_id", ident.get("id", ident.get("name")))
    text = str(ident if ident is not None else _obj(step.get("step")).get("name", ""))
    return text.rsplit(".", 1)[-1] if "." in text else text  # 23.02+: "12.batch"


def records_json(text: str, source: str = "sacct") -> list[dict]:
    """`sacct --json` (dbv0.0.38 of 22.05, data_parser v0.0.39+): the records of `records`.

    A job's TotalCPU is the sum of its steps' (22.05 reports 0 for the job itself).  The request
    (`request`) is read from the rows `parse_json` gives, so that text and JSON agree.
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
        row = _json_job(job, sv.number(job.get("job_id")), steps)  # as text sacct prints it
        out.append(
            {
                "job_id": jid,
                "step": None,
                "user": sv.string(job.get("user")),
                "account": account,
                "partition": sv.string(job.get("partition")),
                "state": state,
                "exit_code": code[0],
                "signal": code[1],
                "submit_time": sv.epoch(t.get("submission")),
                "start_time": sv.epoch(t.get("start")),
                "end_time": sv.epoch(t.get("end")),
                "elapsed_seconds": _float(t.get("elapsed")),
                "total_cpu_seconds": total,
                "max_rss_bytes": None,
                "time_limit_seconds": limit * 60.0 if limit is not None else None,
                **request(row),
            }
        )
        for step in steps:
            st = _obj(step.get("time"))
            name, sstate = _step_name(step), _json_state(step.get("state"))
            code = _json_exit(step.get("exit_code"), sstate)
            out.append(
                {
                    "job_id": f"{jid}.{name}",
                    "step": name,
                    "user": None,
                    "account": account,
                    "partition": None,
                    "state": sstate,
                    "exit_code": code[0],
                    "signal": code[1],
                    "submit_time": sv.epoch(st.get("start")),
                    "start_time": sv.epoch(st.get("start")),
                    "end_time": sv.epoch(st.get("end")),
                    "elapsed_seconds": _float(st.get("elapsed")),
                    "total_cpu_seconds": _cpu_seconds(st.get("total")),
                    "max_rss_bytes": _max_rss(step),
                    "time_limit_seconds": None,
                    **request(_json_step(step, row)),
                }
            )
    return out


def _float(value) -> float | None:
    n = sv.number(value)
    return float(n) if n is not None else None


# -- `sacct --json` as the rows of `parse` ----------------------------------------------------
# 21.08 and 22.05 print plain numbers: these two 32-bit values mean "not set" and "unlimited".
_NO_VAL, _INFINITE = 0xFFFFFFFE, 0xFFFFFFFF
_MEM_PER_CPU = 1 << 63  # the flag 21.08 and 22.05 leave in required.memory for --mem-per-cpu
_LAST_SECOND = 253402300799  # 9999-12-31T23:59:59Z, the last time an ISO date can say


def parse_json(text: str, source: str = "sacct") -> list[dict[str, str]]:
    """`sacct --json` (or slurmrestd's /slurmdb/vX/jobs) of Slurm 21.08 to 25.x as the rows
    `parse` gives for `--parsable2` output: sacct's field names -> the text sacct prints, a job
    line followed by its steps (`step` set), so that one conversion (aggregator/jobs/fields.py)
    serves both.  Times carry their UTC offset (sacct prints local time without one), so no time
    zone is guessed; ReqMem says per CPU or per node ('512Mc', '4096Mn') as sacct did before
    21.08.

    ParseError (no line number) for a document without a 'jobs' list, a job that is not an
    object or has no integer job_id, and squeue's or scontrol's --json; a field of another type
    than Slurm prints is absent.
    """
    doc = decode_json(text, source)
    if not isinstance(doc, dict) or not isinstance(doc.get("jobs"), list):
        raise ParseError(source, None, "no 'jobs' list: not sacct --json output")
    rows: list[dict[str, str]] = []
    for index, job in enumerate(doc["jobs"]):
        if not isinstance(job, dict):
            raise ParseError(source, None, f"jobs[{index}]: expected a job object")
        if "job_state" in job and "state" not in job:
            raise ParseError(
                source, None, f"jobs[{index}]: a squeue or scontrol --json job, not sacct --json"
            )
        raw = sv.number(job.get("job_id"))
        if not isinstance(raw, int) or raw <= 0:
            got = repr(job.get("job_id"))[:40]
            raise ParseError(source, None, f"jobs[{index}]: expected an integer job_id, got {got}")
        steps = [s for s in _list(job.get("steps")) if isinstance(s, dict)]
        row = _json_job(job, raw, steps)
        rows.append(row)
        rows += [_json_step(s, row) for s in steps]
    return rows


def _json_job(job: dict, raw: int, steps: list[dict]) -> dict[str, str]:
    t, required = _obj(job.get("time")), _obj(job.get("required"))
    state = _json_state(job.get("state")) or ""
    killer = _text(job.get("kill_request_user"))
    if state == "CANCELLED" and killer:
        state = f"CANCELLED by {killer}"
    total = _cpu_us(t.get("total"))
    if not total and steps:  # 22.05 reports 0 for the job itself; sacct sums the steps
        parts = [_cpu_us(_obj(s.get("time")).get("total")) for s in steps]
        known = [p for p in parts if p is not None]
        total = sum(known) if known else total
    alloc = _obj(job.get("tres")).get("allocated")
    word = state.partition(" ")[0]
    return {
        "JobIDRaw": str(raw),
        "JobID": _shown_id(job, raw),
        "JobName": _text(job.get("name")),
        "User": _text(job.get("user")) or _text(_obj(job.get("association")).get("user")),
        "Account": _text(job.get("account")),
        "Partition": _text(job.get("partition")),
        "Submit": _clock(t.get("submission")),
        "Start": _clock(t.get("start")),
        "End": _clock(t.get("end")),
        "Elapsed": _hms(t.get("elapsed")),
        "State": state,
        "ExitCode": _exit_text(job.get("exit_code"), word),
        "DerivedExitCode": _exit_text(job.get("derived_exit_code"), word),
        "TotalCPU": _cpu_text(total),
        "MaxRSS": "",
        "ReqMem": _req_mem(required),
        "AllocCPUS": _tres_count(alloc, "cpu"),
        "ReqCPUS": _count(required.get("CPUs")),
        "NNodes": _count(job.get("allocation_nodes")) or _tres_count(alloc, "node"),
        "NodeList": _text(job.get("nodes")),
        "Timelimit": _limit(t.get("limit")),
        "ReqTRES": _tres_text(_obj(job.get("tres")).get("requested")),
        "AllocTRES": _tres_text(alloc),
        "WorkDir": _text(job.get("working_directory")),
        "step": "",
    }


def _json_step(step: dict, job: dict[str, str]) -> dict[str, str]:
    t, nodes = _obj(step.get("time")), _obj(step.get("nodes"))
    name = _step_name(step) or "?"
    state = _json_state(step.get("state")) or ""
    alloc = _obj(step.get("tres")).get("allocated")
    rss = _max_rss(step)
    return {
        **dict.fromkeys(("User", "Partition", "DerivedExitCode", "ReqMem", "ReqCPUS"), ""),
        **dict.fromkeys(("Timelimit", "ReqTRES", "WorkDir"), ""),
        "JobIDRaw": f"{job['JobIDRaw']}.{name}",
        "JobID": f"{job['JobID']}.{name}",
        "JobName": _text(_obj(step.get("step")).get("name")),
        "Account": job["Account"],
        "Submit": _clock(t.get("start")),
        "Start": _clock(t.get("start")),
        "End": _clock(t.get("end")),
        "Elapsed": _hms(t.get("elapsed")),
        "State": state,
        "ExitCode": _exit_text(step.get("exit_code"), state),
        "TotalCPU": _cpu_text(_cpu_us(t.get("total"))),
        "MaxRSS": _kib(rss) if isinstance(rss, int | float) and rss >= 0 else "",
        "AllocCPUS": _tres_count(alloc, "cpu"),
        "NNodes": _count(nodes.get("count")),
        "NodeList": _text(nodes.get("range")),
        "AllocTRES": _tres_text(alloc),
        "step": name,
    }


def _text(value) -> str:
    return value.strip() if isinstance(value, str) else ""


def _count(value) -> str:
    n = sv.number(value)
    if n is None and isinstance(value, str) and value.strip().isdecimal() and len(value) < 20:
        n = int(value)  # 21.08 documents allocation_nodes as a string
    return str(int(n)) if n is not None and n >= 0 else ""


def _shown_id(job: dict, raw: int) -> str:
    """JobID as sacct shows it: '40_7' for an array task, '45+1' for a het component."""
    array, het = _obj(job.get("array")), _obj(job.get("het"))
    parent, task = sv.number(array.get("job_id")), sv.number(array.get("task_id"))
    if parent and parent > 0 and task is not None and task >= 0:
        return f"{int(parent)}_{int(task)}"
    if parent and parent > 0 and _text(array.get("task")):
        return f"{int(parent)}_[{_text(array.get('task'))}]"
    leader, offset = sv.number(het.get("job_id")), sv.number(het.get("job_offset"))
    if leader and leader > 0 and offset is not None and offset >= 0:
        return f"{int(leader)}+{int(offset)}"
    return str(raw)


def _clock(value) -> str:
    """A Unix time as an ISO 8601 time with its offset; '' when unset (0)."""
    n = sv.epoch(value)
    if n is None or not 0 < n <= _LAST_SECOND:
        return ""
    return datetime.fromtimestamp(int(n), UTC).isoformat()


def _hms(value) -> str:
    """Seconds as sacct prints Elapsed: '00:01:15', '2-03:04:05'."""
    n = sv.number(value)
    if n is None or n < 0:
        return ""
    minutes, secs = divmod(int(n), 60)
    hours, mins = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    clock = f"{hours:02d}:{mins:02d}:{secs:02d}"
    return f"{days}-{clock}" if days else clock


def _limit(value) -> str:
    """A time limit in minutes as sacct prints Timelimit: UNLIMITED, or '' when not set."""
    if isinstance(value, dict) and value.get("set", True) and value.get("infinite"):
        return "UNLIMITED"
    n = sv.number(value)
    if n is None or n < 0 or n == _NO_VAL:
        return ""
    return "UNLIMITED" if n == _INFINITE else _hms(int(n) * 60)


def _cpu_us(value) -> int | None:
    """{seconds, microseconds} -> microseconds (22.05 lets microseconds exceed a second)."""
    if not isinstance(value, dict):
        return None
    secs, micro = sv.number(value.get("seconds")), sv.number(value.get("microseconds"))
    if secs is None and micro is None:
        return None
    total = (secs or 0) * 1_000_000 + (micro or 0)
    return int(total) if 0 <= total < 2**63 else None  # NaN and infinities fail too


def _cpu_text(micro: int | None) -> str:
    """Microseconds as sacct prints TotalCPU: '02:28.377' (milliseconds cut), '01:02:03'."""
    if micro is None:
        return ""
    secs, millis = divmod(micro // 1000, 1000)
    minutes, secs = divmod(secs, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"
    if hours:
        return f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{minutes:02d}:{secs:02d}.{millis:03d}"


def _kib(size: float) -> str:
    """Bytes as sacct prints MaxRSS, in KiB."""
    size = int(size)
    return f"{size // 1024}K" if size % 1024 == 0 else f"{size / 1024:.3f}K"


def _exit_text(value, state: str | None) -> str:
    code, sig = _json_exit(value, state or None)
    return "" if code is None else f"{int(code)}:{int(sig or 0)}"


def _req_mem(required: dict) -> str:
    """ReqMem in MiB with sacct's old per-CPU ('c') or per-node ('n') suffix; '' when unknown.

    23.02 and later say memory_per_cpu / memory_per_node; 21.08 and 22.05 say memory, with the
    per-CPU flag (bit 63) set for --mem-per-cpu, read as a negative number or one past 2**63.
    """
    for key, per in (("memory_per_cpu", "c"), ("memory_per_node", "n")):
        value = required.get(key)
        if isinstance(value, dict) and (not value.get("set", True) or value.get("infinite")):
            continue
        n = sv.number(value)
        if n is not None and n >= 0:
            return f"{int(n)}M{per}"
    n = sv.number(required.get("memory"))
    if n is None:
        return ""
    n, per = int(n), "n"
    if n < 0 or n >= _MEM_PER_CPU:
        n, per = n % _MEM_PER_CPU, "c"
    return f"{n}M{per}"


def _tres_items(items) -> list[tuple[str, int]]:
    """(name as sacct prints it, count) of a --json TRES list: ('gres/gpu', 2), ('mem', 200)."""
    out = []
    for item in _list(items):
        if not isinstance(item, dict) or not _text(item.get("type")):
            continue
        kind, name = _text(item.get("type")), _text(item.get("name"))
        n, key = sv.number(item.get("count")), f"{kind}/{name}" if name else kind
        if n is not None and n >= 0 and not any(c in key for c in ",="):  # energy: -2, not counted
            out.append((key, int(n)))
    return out


def _tres_text(items) -> str:
    """'cpu=1,mem=200M,node=1,billing=1,gres/gpu=2' (mem in MiB, as --json counts it)."""
    return ",".join(f"{k}={n}M" if k == "mem" else f"{k}={n}" for k, n in _tres_items(items))


def _tres_count(items, key: str) -> str:
    return next((str(n) for k, n in _tres_items(items) if k == key), "")


# -- the collector (collectors/registry.py) -----------------------------------------------------
# The states of a finished job (sacct -s): what the job_history collector asks for.
FINISHED_STATES = "CA,CD,DL,F,NF,OOM,PR,TO,BF"


def history_argv(command: str, start: str, end: str) -> list[str]:
    """sacct's command line for the jobs and steps of [START, END], every user, RECONCILE_FIELDS."""
    return [
        command,
        "--parsable2",
        "-D",
        "-a",
        "-S",
        start,
        "-E",
        end,
        "-o",
        ",".join(RECONCILE_FIELDS),
    ]


def collect_history(cfg: Config, state: dict[str, Any]) -> list[dict[str, str]]:
    """The sacct rows (jobs and their steps) of the jobs that ended since the last run, less an
    overlap for late accounting records: never days of history each time.  The aggregator
    turns them into `jobs` rows (aggregator/daemon/headcollect.py)."""
    now = time.time()
    since = state.get("since", now - 86400.0) - cfg.collectors.job_history.overlap_seconds
    start = datetime.fromtimestamp(since).replace(microsecond=0).isoformat()
    end = datetime.fromtimestamp(now).replace(microsecond=0).isoformat()
    argv = [*history_argv(cfg.aggregator.sacct, start, end), "-s", FINISHED_STATES]
    rows = parse(run_tool(argv, 600.0), f"sacct -S {start} -E {end}", fields=list(RECONCILE_FIELDS))
    state["since"] = now
    return rows
