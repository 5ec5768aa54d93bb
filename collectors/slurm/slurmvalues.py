"""Pure conversions of the values Slurm prints, the same on every version NØMADE reads.

Each returns None for Slurm's words for "nothing here" (Unknown, None, N/A, INVALID), never 0.
"""

from __future__ import annotations

import math
import re
from datetime import datetime

_ABSENT = {"", "unknown", "none", "none assigned", "n/a", "invalid", "(null)", "partition_limit"}
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_MEM = re.compile(r"^(\d+(?:\.\d+)?)([KMGTP]?)([nc]?)$", re.IGNORECASE)
_DURATION = re.compile(r"^(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)$")


def absent(text: str | None) -> bool:
    """None or one of Slurm's words for nothing; a value that is not text (a number or a list
    where --json had a string) is not absent."""
    if not isinstance(text, str):
        return text is None
    return text.strip().lower() in _ABSENT


def memory(text: str | None, default_unit: str = "") -> tuple[int | None, str | None]:
    """'4000M' -> (4000 MiB in bytes, None); '500Mc' -> (..., 'cpu'); '4Gn' -> (..., 'node').

    Slurm prints MaxRSS in bytes with a unit suffix (K by default) and ReqMem with a per-node or
    per-CPU suffix in versions before 21.08.  The second element says which, when Slurm said.
    """
    if absent(text):
        return None, None
    m = _MEM.match(text.strip())
    if not m:
        raise ValueError(f"expected a memory size like 4000M or 2Gc, got {text[:60]!r}")
    number, unit, per = m.groups()
    size = float(number) * _UNITS[(unit or default_unit).upper()]
    if not math.isfinite(size):  # '999...9K' past float's range
        raise ValueError(f"expected a memory size like 4000M or 2Gc, got {text[:60]!r}")
    return int(size), {"n": "node", "c": "cpu"}.get(per.lower()) if per else None


def duration(text: str | None) -> float | None:
    """Slurm durations: 'D-HH:MM:SS', 'HH:MM:SS', 'MM:SS', 'MM:SS.mmm', or minutes alone."""
    if absent(text) or text.strip().upper() == "UNLIMITED":
        return None
    s = text.strip()
    if s.isdecimal():  # a bare number is minutes (Timelimit as given to --time)
        seconds = float(s) * 60
    elif m := _DURATION.match(s):
        d, h, mins, secs = m.groups()
        seconds = float(d or 0) * 86400 + float(h or 0) * 3600 + float(mins) * 60 + float(secs)
    else:
        seconds = math.nan
    if not math.isfinite(seconds):  # not a duration, or one past float's range ('999...9-00:00')
        raise ValueError(f"expected a duration like 1-02:03:04 or 05:06.789, got {text[:60]!r}")
    return seconds


def timestamp(text: str | None) -> float | None:
    """'2026-11-24T08:25:42' in the cluster's local time -> Unix seconds."""
    if absent(text):
        return None
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise ValueError(f"expected a time like 2026-11-24T08:25:42, got {text!r}") from None


def exit_code(text: str | None) -> tuple[int | None, int | None]:
    """'1:0' -> (1, 0): the exit status and the signal that ended the job."""
    if absent(text):
        return None, None
    code, _, sig = text.strip().partition(":")
    if not code.isdigit() or (sig and not sig.isdigit()):
        raise ValueError(f"expected an exit code like 0:0, got {text!r}")
    return int(code), int(sig) if sig else None


def integer(text: str | None) -> int | None:
    if absent(text):
        return None
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"expected an integer, got {text[:60]!r}") from None


def tres(text: str | None) -> dict[str, str]:
    """'cpu=2,mem=1G,node=1,gres/gpu=2' -> {'cpu': '2', 'mem': '1G', ...}."""
    if absent(text):
        return {}
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def gpus_from_tres(items: dict[str, str]) -> int | None:
    """GPU count from a TRES map: 'gres/gpu' if present, else the sum of 'gres/gpu:TYPE'."""
    if "gres/gpu" in items:
        return integer(items["gres/gpu"])
    typed = [
        integer(v) for k, v in items.items() if k.startswith("gres/gpu:") and k.count(":") == 1
    ]
    return sum(v or 0 for v in typed) if typed else None


def gpus_from_gres(text: str | None) -> int | None:
    """'gres:gpu:2', 'gres/gpu:a100:4', 'gpu:2(IDX:0-1)' -> GPU count; None when none are named.
    TEXT may be any --json value: one that is not a string names none."""
    if absent(text) or not isinstance(text, str):
        return None
    total = None
    for part in text.split(","):
        name = part.strip().removeprefix("gres:").removeprefix("gres/")
        if not name.startswith("gpu"):
            continue
        count = name.split("(")[0].rsplit(":", 1)[-1]
        total = (total or 0) + (integer(count) if count.isdecimal() else 1)
    return total


HOSTLIST_MAX = 1_000_000  # nodes one list may name unless the caller allows fewer


class _Next:
    """Where CHAR next occurs in TEXT at or after a position (len(TEXT) if nowhere), for
    positions that never go back: each character is looked at once, however often it is asked."""

    def __init__(self, text: str, char: str) -> None:
        self.text, self.char, self.at = text, char, -1

    def __call__(self, i: int) -> int:
        if self.at < i:
            found = self.text.find(self.char, i)
            self.at = found if found >= 0 else len(self.text)
        return self.at


_PLAIN = re.compile(r"[^,\[\]]+")


def _hostlist_parts(text: str) -> list[tuple[str, str, str]]:
    r"""(prefix, ranges, '') for each 'prefix[ranges]' of a node list and ('', '', name) for each
    plain name, left to right; commas and stray brackets between them are skipped: the parts
    re.findall(r"([^,\[]+)\[([^\]]+)\]|([^,\[\]]+)", text) finds, in linear time (that regex
    scans to the end of the text again at each '[' with no ']' after it: quadratic)."""
    comma, opening, closing = _Next(text, ","), _Next(text, "["), _Next(text, "]")
    last = text.rfind("]")
    out: list[tuple[str, str, str]] = []
    i = 0
    while i < len(text):
        run = min(comma(i), opening(i))  # a prefix runs to the next ',' or '['
        if run >= last:  # no ']' after it: plain names to the end
            out += [("", "", name) for name in _PLAIN.findall(text, i)]
            break
        end = closing(run + 1)
        if i < run and text[run] == "[" and end > run + 1:
            out.append((text[i:run], text[run + 1 : end], ""))
            i = end + 1
        else:  # no 'prefix[ranges]' starts before RUN: the names between ']'s up to it
            out += [("", "", name) for name in text[i:run].split("]") if name]
            i = run + 1
    return out


def hostlist_size(text: str | None) -> int:
    """How many nodes TEXT names, counted without expanding it; ValueError if not a node list."""
    if absent(text):
        return 0
    total = 0
    for _prefix, ranges, plain in _hostlist_parts(text.strip()):
        if plain:
            total += 1
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            if not lo.isdecimal() or not (hi.isdecimal() or not hi) or max(len(lo), len(hi)) > 18:
                raise ValueError(f"node list range {part[:40]!r} is not N or N-M")
            if hi and int(hi) < int(lo):
                raise ValueError(f"node list range {part[:40]!r} runs backwards")
            total += int(hi) - int(lo) + 1 if hi else 1
    return total


def hostlist(text: str | None, limit: int = HOSTLIST_MAX) -> list[str]:
    """'node[1-3,7],gpu01' -> ['node1', 'node2', 'node3', 'node7', 'gpu01'] (zero padding kept).
    A list naming more than LIMIT nodes is refused (ValueError) before it is expanded."""
    size = hostlist_size(text)
    if size > limit:
        raise ValueError(f"node list {text[:60]!r} names {size} nodes, more than {limit}")
    if not size:
        return []
    out: list[str] = []
    for prefix, ranges, plain in _hostlist_parts(text.strip()):
        if plain:
            out.append(plain)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            if not hi:
                out.append(prefix + lo)
                continue
            out += [f"{prefix}{i:0{len(lo)}d}" for i in range(int(lo), int(hi) + 1)]
    return out


def number(value):
    """A JSON number as Slurm's --json prints it, plain (21.08-22.05) or {"set", "infinite",
    "number"} (data_parser, 23.02 and later): the number, or None when unset or infinite.
    NaN, Infinity and numbers no 64-bit field holds (1e400, 400 digits) are not Slurm's: None."""
    if isinstance(value, dict):
        if not value.get("set", True) or value.get("infinite"):
            return None
        value = value.get("number")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if -(2**63) <= value < 2**64 else None  # False for NaN too


def epoch(value) -> float | None:
    """A Unix time from --json (0 is Slurm's "never"); None when unset."""
    n = number(value)
    return float(n) if n else None


def string(value) -> str | None:
    """A string field of --json or text output: None for Slurm's words for nothing."""
    if value is None:
        return None
    s = str(value).strip()
    return None if absent(s) else s


# Node states as sinfo prints them short (%t) -> the long form (%T); suffixes -> flags.
_NODE_SHORT = {
    "alloc": "allocated",
    "comp": "completing",
    "drng": "draining",
    "drain": "drained",
    "fail": "fail",
    "failg": "failing",
    "futr": "future",
    "inval": "invalid",
    "mix": "mixed",
    "npc": "perfctrs",
    "plnd": "planned",
    "resv": "reserved",
    "unk": "unknown",
    "boot": "rebooting",
    "pow_dn": "power_down",
    "pow_up": "powering_up",
    "blocked": "blocked",
}
_NODE_SUFFIX = {
    "*": "NOT_RESPONDING",
    "~": "POWERED_DOWN",
    "#": "POWERING_UP",
    "!": "POWER_DOWN",
    "%": "POWERING_DOWN",
    "$": "MAINTENANCE",
    "@": "REBOOT_REQUESTED",
    "^": "REBOOT_ISSUED",
    "-": "PLANNED",
}


def node_state(value) -> tuple[str | None, list[str]]:
    """A node's state in any form Slurm prints it -> (sinfo's long state, lower case; flags).

    'drain*', 'DRAINED*', 'IDLE+DRAIN', 'DOWN*+DRAIN+NOT_RESPONDING', ['IDLE', 'DRAIN'] (23.02+
    JSON) and ('idle', ['DRAIN']) (21.08/22.05 JSON) all come out the way sinfo -o %T shows them:
    idle+DRAIN is 'drained', allocated or mixed+DRAIN 'draining'.
    """
    words = value if isinstance(value, list) else str(value or "").strip().split("+")
    words = [w for w in words if w]
    if not words:
        return None, []
    word = str(words[0])
    first = word.rstrip("".join(_NODE_SUFFIX))  # 'drain*' -> 'drain', '*' a flag
    flags = [_NODE_SUFFIX[c] for c in reversed(word[len(first) :])]
    base = _NODE_SHORT.get(first.lower(), first.lower())
    flags += [str(w).strip().upper() for w in words[1:]]
    flags = list(dict.fromkeys(flags))
    if "DRAIN" in flags and base in ("idle", "down"):
        base = "drained"
    elif "DRAIN" in flags and base in ("allocated", "mixed", "completing"):
        base = "draining"
    elif base in ("drained", "draining") and "DRAIN" not in flags:
        flags.append("DRAIN")
    return base, flags


# -- a job's identity and request, as sacct rows give them ------------------------------------
# The aggregator stores these (aggregator/jobs/); `nomadectl parse sacct` prints the same values.


def _job_number(text: str) -> int | None:
    """A job id's digits as a number; None for anything else ('²', '[1-5]', 30 digits)."""
    return int(text) if text.isdecimal() and len(text) <= 18 else None


def job_ids(shown: str | None, raw: str | None) -> dict[str, int | None] | None:
    """Job, array and het ids from sacct's JobID ('123_4', '123+1') and JobIDRaw.

    None when the job's own id cannot be known: an array task or het component shown without
    JobIDRaw carries only its parent's id.
    """
    shown, raw = (shown or "").strip(), (raw or "").strip()
    ids: dict[str, int | None] = dict.fromkeys(
        ("job_id", "array_job_id", "array_task_id", "het_job_id", "het_job_offset")
    )
    parent, sep, member = shown.partition("_") if "_" in shown else shown.partition("+")
    if sep:
        first, second = (
            ("array_job_id", "array_task_id") if sep == "_" else ("het_job_id", "het_job_offset")
        )
        ids[first] = _job_number(parent)
        ids[second] = _job_number(member)  # None for '[1-5%2]' of a pending array
    if _job_number(raw) is not None:
        ids["job_id"] = _job_number(raw)
    elif not raw and not sep and _job_number(shown) is not None:
        ids["job_id"] = _job_number(shown)
    elif not raw and ids["het_job_offset"] == 0:
        ids["job_id"] = ids["het_job_id"]  # the het leader's id is the het job's
    else:
        return None
    return ids


def _or_none(fn, *args):
    try:
        return fn(*args)
    except ValueError:
        return None


def memory_request(
    req_mem: str | None, alloc_tres: str | None, req_tres: str | None, nnodes: str | None
) -> tuple[int | None, int | None]:
    """(memory per node, memory per CPU) in bytes that a job asked for, one of them None.

    ReqMem says per node or per CPU only before 21.08 ('4Gn', '500Mc'); from 21.08 on it has no
    suffix, and a TRES mem (the whole job's) divided by the same TRES's node count is the
    per-node limit: AllocTRES when the job started (ReqTRES keeps the minimum node count of
    `--nodes=1-2`, and `--mem-per-cpu` spreads it over the nodes), else ReqTRES.
    """
    size, per = _or_none(memory, req_mem, "M") or (None, None)
    if per == "cpu":
        return None, size
    sized = next((t for t in (tres(alloc_tres), tres(req_tres)) if "mem" in t), None)
    if per is None and sized:
        total = _or_none(memory, sized["mem"], "M")
        nodes = _or_none(integer, sized.get("node")) or _or_none(integer, nnodes) or 1
        size = total[0] // nodes if total and total[0] else None
    return size, None


def job_gpus(req_tres: str | None, alloc_tres: str | None) -> int | None:
    """The GPUs a job asked for: gres/gpu of ReqTRES, else of AllocTRES."""
    gpus = _or_none(gpus_from_tres, tres(req_tres))
    return gpus if gpus is not None else _or_none(gpus_from_tres, tres(alloc_tres))


def job_cpus(row: dict[str, str]) -> int | None:
    """A sacct row's CPUs: AllocCPUS, or for a job that never started (AllocCPUS 0) what it
    asked for: NCPUS, ReqCPUS, the cpu of ReqTRES."""
    cpus = _or_none(integer, row.get("AllocCPUS"))
    if cpus:
        return cpus
    asked = (
        _or_none(integer, row.get("NCPUS"))
        or _or_none(integer, row.get("ReqCPUS"))
        or _or_none(integer, tres(row.get("ReqTRES")).get("cpu"))
    )
    return asked or cpus
