"""Pure parsers of `squeue` output: text (default, `-l`, `-o FORMAT` with a header) and `--json`.

Both give one record per job with the same keys (docs/parsers-slurm.md); a value the output does
not carry is None.  Pending jobs get their reason explained in words (`reason_text`) with what
would let them start (`unblock`), the answer to "why is my job waiting".

The `queue` collector (`collect`) runs `squeue -a -t ACTIVE_STATES -o COLLECTOR_FORMAT` (header
kept): '|' between fields and the job name last, so a name holding '|' still parses.
"""

from __future__ import annotations

import json
import re
from typing import Any

from collectors.runner import run_tool
from nomade_common import jsonin
from nomade_common.config import Config
from nomade_common.errors import ParseError

from . import SLURM_TIMEOUT
from . import slurmvalues as sv

COLLECTOR_FORMAT = "%i|%A|%F|%K|%T|%r|%P|%u|%a|%q|%C|%D|%m|%l|%M|%V|%S|%e|%E|%b|%Q|%N|%j"
# Older NØMADE formats, read without a header (aggregator/daemon/queue.py, the first collector).
_HEADERLESS = {6: "%i|%T|%P|%u|%C|%r", 8: "%i|%T|%P|%u|%C|%r|%V|%S"}

# squeue -o letters -> our column key; squeue's header names -> the same keys.
_LETTERS = {
    "i": "job_id",
    "A": "job_id_raw",
    "F": "array_job_id",
    "K": "array_task",
    "T": "state",
    "t": "state",
    "r": "reason",
    "R": "nodelist_reason",
    "P": "partition",
    "u": "user",
    "a": "account",
    "q": "qos",
    "C": "cpus",
    "D": "node_count",
    "m": "min_memory",
    "l": "time_limit",
    "M": "elapsed",
    "V": "submit_time",
    "S": "start_time",
    "e": "end_time",
    "E": "dependency",
    "b": "tres_per_node",
    "Q": "priority",
    "p": "priority",
    "N": "nodelist",
    "j": "name",
}
_HEADERS = {
    "JOBID": "job_id",
    "ARRAY_JOB_ID": "array_job_id",
    "ARRAY_TASK_ID": "array_task",
    "STATE": "state",
    "ST": "state",
    "REASON": "reason",
    "NODELIST(REASON)": "nodelist_reason",
    "PARTITION": "partition",
    "USER": "user",
    "ACCOUNT": "account",
    "QOS": "qos",
    "CPUS": "cpus",
    "NODES": "node_count",
    "MIN_MEMORY": "min_memory",
    "TIME_LIMIT": "time_limit",
    "TIME_LIMI": "time_limit",
    "TIME": "elapsed",
    "SUBMIT_TIME": "submit_time",
    "START_TIME": "start_time",
    "END_TIME": "end_time",
    "DEPENDENCY": "dependency",
    "TRES_PER_NODE": "tres_per_node",
    "PRIORITY": "priority",
    "NODELIST": "nodelist",
    "NAME": "name",
}
_HEADER_OF = {"i": "JOBID", "A": "JOBID", "t": "ST", "R": "NODELIST(REASON)"}

STATES = {
    "PD": "PENDING",
    "R": "RUNNING",
    "CG": "COMPLETING",
    "CD": "COMPLETED",
    "CA": "CANCELLED",
    "F": "FAILED",
    "TO": "TIMEOUT",
    "NF": "NODE_FAIL",
    "PR": "PREEMPTED",
    "S": "SUSPENDED",
    "ST": "STOPPED",
    "OOM": "OUT_OF_MEMORY",
    "BF": "BOOT_FAIL",
    "DL": "DEADLINE",
    "CF": "CONFIGURING",
    "RD": "RESV_DEL_HOLD",
    "RF": "REQUEUE_FED",
    "RH": "REQUEUE_HOLD",
    "RQ": "REQUEUED",
    "RS": "RESIZING",
    "RV": "REVOKED",
    "SI": "SIGNALING",
    "SE": "SPECIAL_EXIT",
    "SO": "STAGE_OUT",
}

FIELDS = (
    "job_id",
    "job_id_raw",
    "array_job_id",
    "array_task",
    "name",
    "user",
    "account",
    "partition",
    "qos",
    "state",
    "reason",
    "reason_detail",
    "reason_text",
    "unblock",
    "dependency",
    "cpus",
    "node_count",
    "nodelist",
    "tres_per_node",
    "gpus",
    "min_memory_bytes",
    "priority",
    "time_limit_seconds",
    "elapsed_seconds",
    "submit_time",
    "start_time",
    "end_time",
)

_DATE_LINE = re.compile(r"^\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4}$")
_SPEC = re.compile(r"%(\.?\d*)([A-Za-z])")

# ---------------------------------------------------------------------------------------------
# Pending reasons in words

_WAIT_RUNNING = "nothing to do but wait for running jobs to end"
REASONS: dict[str, tuple[str, str]] = {
    "Resources": (
        "waiting for resources (CPUs, memory or nodes) to free up",
        "nothing to do: it starts when running jobs end; asking for fewer CPUs, less memory or "
        "a shorter time limit can start it sooner",
    ),
    "Priority": (
        "jobs with a higher priority are ahead of it in the queue",
        "wait; a shorter time limit lets the backfill scheduler start it in a gap",
    ),
    "Dependency": (
        "waiting for the jobs it depends on (--dependency) to finish",
        "the jobs named in its dependency must end as the dependency asks",
    ),
    "DependencyNeverSatisfied": (
        "its dependency can never be met: a job it depends on ended in a way that rules it out",
        "cancel it (scancel) and submit it again without that dependency",
    ),
    "BeginTime": (
        "its earliest start time (--begin) has not come yet",
        "wait until the begin time, or move it: scontrol update job=ID StartTime=now",
    ),
    "JobHeldUser": (
        "held by its owner (--hold or scontrol hold)",
        "release it: scontrol release ID",
    ),
    "JobHeldAdmin": (
        "held by an administrator",
        "ask an administrator to release it",
    ),
    "ReqNodeNotAvail": (
        "a node it needs is down, drained or reserved",
        "wait for the node to return, or remove it from the request (--nodelist, --exclude)",
    ),
    "PartitionTimeLimit": (
        "its time limit is longer than the partition's maximum",
        "it will not start as it is: lower the limit (scontrol update job=ID TimeLimit=...) or "
        "move it to a partition that allows it",
    ),
    "PartitionNodeLimit": (
        "it asks for more or fewer nodes than the partition allows per job",
        "change the node count or the partition",
    ),
    "PartitionDown": (
        "its partition is down",
        "wait for an administrator to bring the partition up, or move the job",
    ),
    "PartitionInactive": (
        "its partition is inactive",
        "wait for an administrator to activate the partition, or move the job",
    ),
    "NodeDown": ("a node it needs is down", "wait for an administrator to bring the node back"),
    "Reservation": (
        "waiting for its reservation to start or have room",
        "wait for the reservation's start time",
    ),
    "Licenses": (
        "waiting for licenses (--licenses) held by other jobs",
        "wait for other jobs to release the licenses",
    ),
    "JobArrayTaskLimit": (
        "its array already runs as many tasks at once as its %N limit allows",
        "wait for running tasks of the array, or raise the limit: "
        "scontrol update job=ID ArrayTaskThrottle=N",
    ),
    "BadConstraints": (
        "its constraints (features, node counts, memory) can never be met",
        "cancel it and submit it again with a request the cluster can meet",
    ),
    "InvalidAccount": (
        "its account is not valid for this user or partition",
        "cancel it and submit it again with --account set to a valid account",
    ),
    "InvalidQOS": (
        "its QOS is not valid for this user or partition",
        "cancel it and submit it again with a valid --qos",
    ),
    "JobHoldMaxRequeue": (
        "held after being requeued too many times",
        "ask an administrator to look at why it fails to start, then release it",
    ),
    "launch_failed_requeued_held": (
        "held after failing to launch",
        "ask an administrator to look at the node, then release it",
    ),
    "Cleaning": (
        "its earlier run is still being cleaned up before it is requeued",
        "wait",
    ),
    "Prolog": ("its prolog is running", "wait"),
    "BurstBufferResources": ("waiting for burst buffer space", "wait"),
    "BurstBufferStageIn": ("its burst buffer is staging data in", "wait"),
    "FrontEndDown": ("no front end node is available", "wait for an administrator"),
    "SchedDefer": ("the scheduler defers immediate allocations", "wait"),
    "MaxRequeue": ("it was requeued too many times", "ask an administrator"),
}

_LIMIT = re.compile(
    r"^(QOS|Assoc)(Grp|Max)?(.*?)(PerUser|PerAccount|PerJob|PerNode|PerAcct)?(Limit)?$"
)
_RESOURCE = [
    ("CpuRunMinutes", "CPU-minutes of running jobs"),
    ("CPURunMinutes", "CPU-minutes of running jobs"),
    ("RunMinutes", "TRES-minutes of running jobs"),
    ("CpuMinutes", "CPU-minutes"),
    ("CPUMinutes", "CPU-minutes"),
    ("BillingMinutes", "billing minutes"),
    ("Minutes", "minutes"),
    ("SubmitJob", "submitted jobs"),
    ("Jobs", "running jobs"),
    ("Job", "running jobs"),
    ("WallDuration", "time limit"),
    ("Wall", "time limit"),
    ("Cpu", "CPUs"),
    ("CPU", "CPUs"),
    ("Memory", "memory"),
    ("Mem", "memory"),
    ("Node", "nodes"),
    ("GRES", "GPUs or other GRES"),
    ("Gres", "GPUs or other GRES"),
    ("Billing", "billing units"),
    ("Energy", "energy"),
    ("License", "licenses"),
    ("Unk", "resources"),
    ("Time", "time limit"),
    ("Resource", "resources"),
]


def _explain_limit(code: str) -> tuple[str, str] | None:
    m = _LIMIT.match(code)
    if not m or not (m.group(2) or m.group(5) or m.group(4)):
        return None
    who = "its QOS" if m.group(1) == "QOS" else "its association (account and user)"
    what = next((w for k, w in _RESOURCE if m.group(3).startswith(k)), "resources")
    per = {
        "PerUser": " per user",
        "PerAccount": " per account",
        "PerAcct": " per account",
        "PerJob": " per job",
        "PerNode": " per node",
    }.get(m.group(4) or "", "")
    if per == " per job" or what == "time limit":
        return (
            f"it asks for more {what} than {who} allows{per or ' per job'}",
            f"it will not start as it is: ask for less ({what}) or use another QOS or account",
        )
    scope = f"{per.strip()}" if per else "for all its jobs together"
    by = "jobs already queued" if what == "submitted jobs" else "jobs already running"
    return (
        f"the limit of {who} on {what} ({scope}) is reached by {by}",
        f"{_WAIT_RUNNING} under the same limit; ask for less, or ask an administrator to raise it",
    )


# Free-text descriptions Slurm puts in place of the reason code (job state_desc).
_DESCRIPTIONS = (
    ("Nodes required for job are DOWN, DRAINED", "Resources"),
    ("ReqNodeNotAvail", "ReqNodeNotAvail"),
    ("Requested node configuration is not available", "BadConstraints"),
    ("Job's QOS not permitted", "InvalidQOS"),
)


def explain(printed: str | None, code: str | None = None) -> dict[str, str | None]:
    """What Slurm printed as the reason -> reason, reason_detail, reason_text, unblock.

    PRINTED is squeue's %r/%R ('Resources', '(Priority)') or a description Slurm put in its
    place ('ReqNodeNotAvail, UnavailableNodes:n[1-2]', 'Nodes required for job are DOWN, ...');
    CODE is the reason code where the output gives it apart (--json state_reason).
    reason is the code, reason_detail the description when there was one.
    """
    s = (printed or "").strip()
    lo, hi = 0, len(s)
    while lo < hi and s[lo] == "(" and s[hi - 1] == ")":  # '((Priority))' -> 'Priority'
        lo, hi = lo + 1, hi - 1
        while lo < hi and s[lo].isspace():
            lo += 1
        while hi > lo and s[hi - 1].isspace():
            hi -= 1
    s = s[lo:hi]  # cut once: slicing at every step is quadratic in the parentheses
    code = None if sv.absent(code) else (code or "").strip()
    if sv.absent(s):
        s = ""
    if code is None and s:
        head = s.split(",")[0].strip()
        if s == head and " " not in s:
            code, s = s, ""
        elif " " not in head and (head in REASONS or _explain_limit(head)):
            code = head
        else:
            code = next((c for start, c in _DESCRIPTIONS if s.startswith(start)), None)
    words = (REASONS.get(code) or _explain_limit(code)) if code else None
    return {
        "reason": code,
        "reason_detail": s if s and s != code else None,
        "reason_text": words[0] if words else None,
        "unblock": words[1] if words else None,
    }


# ---------------------------------------------------------------------------------------------
# Text


def _split_format(fmt: str) -> tuple[list[str], list[str]]:
    """-o FORMAT -> its letters and the literal text around them (one more than the letters)."""
    letters = [m.group(2) for m in _SPEC.finditer(fmt)]
    return letters, _SPEC.split(fmt)[::3]  # text between the specs


def _split_line(line: str, literals: list[str]) -> list[str] | None:
    """LINE cut into the fields of a format with LITERALS around them, or None if it does not fit.

    Each literal is taken at its first occurrence after the field before it, the last field runs
    to the final literal at the end of the line: what '^L0(.*?)L1(.*?)...(.*)Ln$' matches, in
    one pass (that regex backtracks over the whole line at every lazy field that fails)."""
    first, *between, last = literals
    if not line.startswith(first) or not line.endswith(last):
        return None
    fields, pos = [], len(first)
    for literal in between:
        end = line.find(literal, pos)
        if end < 0:
            return None
        fields.append(line[pos:end])
        pos = end + len(literal)
    if pos > len(line) - len(last):
        return None
    return [*fields, line[pos : len(line) - len(last)]]


def _keys_of_header(cols: list[str]) -> list[str | None]:
    keys: list[str | None] = []
    seen: set[str | None] = set()  # not `in keys`: quadratic in a header of 100,000 columns
    for col in cols:
        key = _HEADERS.get(col.strip().upper())
        if key == "job_id" and key in seen:
            key = "job_id_raw"  # %A's header is JOBID too
        keys.append(key)
        seen.add(key)
    return keys


def _rows(text: str, source: str, fmt: str | None) -> list[tuple[int, dict[str, str]]]:
    lines = [(n, ln) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    if lines and _DATE_LINE.match(lines[0][1].strip()):
        lines = lines[1:]  # squeue -l starts with the time
    if not lines:
        return []
    first = lines[0][1]
    if fmt is None and "JOBID" not in first.upper().replace("|", " ").split():
        fmt = _HEADERLESS.get(first.count("|") + 1)
        if fmt is None and first.count("|") + 1 >= COLLECTOR_FORMAT.count("|") + 1:
            fmt = COLLECTOR_FORMAT
        if fmt is None:
            raise ParseError(source, lines[0][0], "no header line (JOBID ...) and no format given")
    if fmt is not None:
        letters, literals = _split_format(fmt)
        if not letters:
            raise ParseError(source, None, f"format {fmt[:60]!r} has no %-fields")
        keys: list[str | None] = [_LETTERS.get(c) for c in letters]
        head = _HEADER_OF.get(letters[0]) or next(
            (h for h, k in _HEADERS.items() if k == keys[0]), ""
        )
        if first.strip().upper().startswith(head or "\0"):
            lines = lines[1:]

        def split(line: str) -> list[str] | None:
            return _split_line(line, literals)

    else:
        sep = "|" if "|" in first else None
        cols = first.split(sep)
        keys = _keys_of_header(cols)
        lines = lines[1:]

        def split(line: str) -> list[str] | None:  # with spaces, empty values end the line
            vals = line.split(sep) if sep else line.split(None, len(cols) - 1)
            return vals if len(vals) == len(cols) or sep is None else None

    # key -> its (last) column: a row costs the keys we know, not a header's 100,000 columns
    where = {k: i for i, k in enumerate(keys) if k}
    out = []
    for number, line in lines:
        vals = split(line)
        if vals is None:
            raise ParseError(source, number, f"expected {len(keys)} columns")
        row = {k: vals[i].strip() if i < len(vals) else "" for k, i in where.items()}
        if not row.get("job_id"):
            raise ParseError(source, number, "empty job id")
        out.append((number, row))
    return out


def _record(**values) -> dict:
    rec = dict.fromkeys(FIELDS)
    rec.update(values)
    return rec


def _int(value: str | None) -> int | None:
    value = (value or "").strip()
    return int(value) if value.isdigit() else None


def _text_record(row: dict[str, str], source: str, number: int) -> dict:
    try:
        state = row.get("state")
        state = STATES.get(state, state) if state else None
        nodelist, reason = row.get("nodelist"), row.get("reason")
        both = row.get("nodelist_reason")
        if both is not None:
            if both.startswith("("):
                reason = reason or both
            else:
                nodelist = nodelist or both
        task, array = sv.string(row.get("array_task")), sv.string(row.get("array_job_id"))
        if task is None and "_" in row["job_id"]:
            array, _, task = row["job_id"].partition("_")
        task = task.strip("[]") if task else None
        prio = row.get("priority", "")
        return _record(
            job_id=row["job_id"],
            job_id_raw=sv.string(row.get("job_id_raw")),
            array_job_id=array if task else None,
            array_task=task,
            name=sv.string(row.get("name")),
            user=sv.string(row.get("user")),
            account=sv.string(row.get("account")),
            partition=sv.string(row.get("partition")),
            qos=sv.string(row.get("qos")),
            state=state,
            **explain(reason),
            dependency=sv.string(row.get("dependency")),
            cpus=_int(row.get("cpus")),
            node_count=_int(row.get("node_count")),
            nodelist=sv.string(nodelist),
            tres_per_node=sv.string(row.get("tres_per_node")),
            gpus=sv.gpus_from_gres(row.get("tres_per_node")),
            min_memory_bytes=sv.memory(row.get("min_memory"), "M")[0],
            priority=_int(prio),
            time_limit_seconds=sv.duration(row.get("time_limit")),
            elapsed_seconds=sv.duration(row.get("elapsed")),
            submit_time=sv.timestamp(row.get("submit_time")),
            start_time=sv.timestamp(row.get("start_time")),
            end_time=sv.timestamp(row.get("end_time")),
        )
    except ValueError as exc:
        raise ParseError(source, number, str(exc)) from None


def records(text: str, source: str = "squeue", format: str | None = None) -> list[dict]:
    """`squeue` text: the default or `-l` layout, or `-o FORMAT` output with its header line.

    Without a header, pass the -o FORMAT (e.g. "%i|%E;%R"); NØMADE's own '|' formats are
    recognised by their number of fields.
    """
    return [_text_record(row, source, n) for n, row in _rows(text, source, format)]


# ---------------------------------------------------------------------------------------------
# JSON


MAX_JSON_DEPTH = jsonin.TOOL_OUTPUT_DEPTH  # Slurm's --json nests about 10 deep


def decode_json(text: str, source: str):
    """TEXT as JSON, or ParseError: not JSON, or nested deeper than MAX_JSON_DEPTH."""
    try:
        return jsonin.loads(text, MAX_JSON_DEPTH)
    except json.JSONDecodeError as exc:
        raise ParseError(source, exc.lineno, f"not JSON: {exc.msg}") from None
    except ValueError as exc:
        raise ParseError(source, None, str(exc)) from None


def load_json(text: str, source: str, key: str) -> tuple[dict, list]:
    doc = decode_json(text, source)
    if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
        raise ParseError(source, None, f"no {key!r} list: not Slurm --json output")
    return doc, doc[key]


def _state(value) -> str | None:
    if isinstance(value, list):  # 23.02+: ["PENDING"] or ["RUNNING", "COMPLETING"]
        value = value[0] if value else None
    return sv.string(value)


def job_id_of(job: dict) -> tuple[str, str | None, str | None]:
    """(job id as squeue shows it, array job id, array task) from a --json job."""
    raw = str(sv.number(job.get("job_id")))
    array = sv.number(job.get("array_job_id"))
    task = sv.number(job.get("array_task_id"))
    string = sv.string(job.get("array_task_string"))
    if not array:
        return raw, None, None
    if task is not None:
        return f"{array}_{task}", str(array), str(task)
    if string:
        return f"{array}_[{string}]", str(array), string
    return raw, str(array), None


def _text(value) -> str | None:
    """A --json string field: None for another type (corrupt output) or Slurm's words for none."""
    return sv.string(value) if isinstance(value, str) else None


def _mb(value) -> int | None:
    n = sv.number(value)
    return int(n) << 20 if n else None


_ACTIVE = {"RUNNING", "SUSPENDED", "COMPLETING", "CONFIGURING", "STOPPED", "SIGNALING"}


def _elapsed(job: dict, state: str | None) -> float | None:
    """--json carries no 'now': 0 for a pending job, end - start for a finished one, else None."""
    if state == "PENDING":
        return 0.0
    start, end = sv.epoch(job.get("start_time")), sv.epoch(job.get("end_time"))
    if state in _ACTIVE or start is None or end is None:
        return None
    return end - start


def json_record(job: dict) -> dict:
    """One squeue record from a job object of squeue --json or slurmrestd /jobs."""
    job_id, array, task = job_id_of(job)
    limit = sv.number(job.get("time_limit"))
    limit = None if limit is None or not 0 <= limit < 0xFFFFFFFE else limit
    state = _state(job.get("job_state"))
    mem = _mb(job.get("memory_per_node")) or _mb(job.get("memory_per_cpu"))
    desc = job.get("state_description")  # a description, or '' where Slurm has none
    return _record(
        job_id=job_id,
        job_id_raw=str(sv.number(job.get("job_id"))),
        array_job_id=array,
        array_task=task,
        name=sv.string(job.get("name")),
        user=sv.string(job.get("user_name")),
        account=sv.string(job.get("account")),
        partition=sv.string(job.get("partition")),
        qos=sv.string(job.get("qos")),
        state=state,
        **explain(
            desc if isinstance(desc, str) else None, sv.string(job.get("state_reason")) or "None"
        ),
        dependency=sv.string(job.get("dependency")),
        cpus=sv.number(job.get("cpus")),
        node_count=sv.number(job.get("node_count")),
        nodelist=sv.string(job.get("nodes")),
        tres_per_node=_text(job.get("tres_per_node")),
        gpus=sv.gpus_from_gres(job.get("tres_per_node")),
        min_memory_bytes=mem,
        priority=sv.number(job.get("priority")),
        time_limit_seconds=float(limit) * 60 if limit is not None else None,
        elapsed_seconds=_elapsed(job, state),
        submit_time=sv.epoch(job.get("submit_time")),
        start_time=sv.epoch(job.get("start_time")),
        end_time=sv.epoch(job.get("end_time")),
    )


def records_json(text: str, source: str = "squeue") -> list[dict]:
    """`squeue --json` (openapi v0.0.37/v0.0.38, data_parser v0.0.39 and later) or the jobs of
    slurmrestd's /slurm/vX/jobs: the same records as `records`."""
    _doc, jobs = load_json(text, source, "jobs")
    out = []
    for i, job in enumerate(jobs):
        if not isinstance(job, dict):
            continue
        try:
            out.append(json_record(job))
        except ValueError as exc:  # a value slurmvalues cannot read ('gpu:' and 5000 digits)
            raise ParseError(source, None, f"job {i}: {exc}") from None
    return out


# -- the collector (collectors/registry.py) -----------------------------------------------------
ACTIVE_STATES = "PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING,REQUEUED,RESIZING"


def collect(cfg: Config, state: dict[str, Any]) -> list[dict[str, Any]]:
    argv = [cfg.aggregator.squeue, "-a", "-t", ACTIVE_STATES, "-o", COLLECTOR_FORMAT]
    return records(run_tool(argv, SLURM_TIMEOUT), "squeue")
