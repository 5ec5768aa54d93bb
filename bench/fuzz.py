"""Inputs that end in anything but a clean result or a clean error, out of a million generated ones.

Every input gets an answer within bounds (STYLE.md rule 22).  The targets, and what is clean:

* ``wire``: ``nomade_common.wire.unpack(bytes)`` returns a ``wire.Envelope`` or raises
  ``wire.WireError``.
* ``ingest``: ``aggregator.store.Ingest.take(conn, bytes, now)`` on one SQLite store made by
  ``aggregator.store.open_store``, inside the caller's transaction (committed every
  INGEST_BATCH takes), returns an Answer whose kind is ack, nack, live or drop; after a nack or
  a drop nothing of the envelope is stored (samples, jobs, received, events other than the
  refusal's own, readings_latest, readings, nodes and collector_status are untouched, counted
  by TEMP triggers); after an ack ``received`` holds its (node, epoch, seq) and every sample
  it stored holds numbers (t a number, the other fields a number >= 0 or null).  The store here is
  healthy, so any exception (an OperationalError too) is the input's doing: unclean.  A nack
  whose reason is an exception take caught ("not storable (TypeError: ...)") is clean, but
  counted apart and shown (NOTE lines).
* ``parse:KIND``, every text kind of ``collectors.registry``: ``fn(text, source, **args)``
  returns a list of dict records that print the way ``nomadectl parse`` prints them
  (json.dumps(sort_keys=True, default=str)), or raises ``nomade_common.errors.ParseError``, the
  one error a parser raises (STYLE.md rule 4) and the one its callers turn into a line.  Any
  other exception leaks: a bare ValueError (json.JSONDecodeError, UnicodeError, int()'s digit
  limit), OverflowError, IndexError, KeyError, TypeError, AttributeError, RecursionError,
  MemoryError.
* ``dir:KIND``, the directory kinds (cgroup, hwmon, edac): the same, over a copy (in a temporary
  directory) of a captured tree of tests/fixtures in which one file was rewritten, deleted or
  added, or one directory added.
* ``parse:cgroup-job-v1``/``-v2`` (``cgroup.parse_job`` over mutated file texts: returns a
  ParsedJob), ``parse:proc-stat``, ``parse:proc-io-counters``, ``parse:cgroup-procs``,
  ``parse:mountinfo``, ``parse:proc-cgroup``, ``parse:sysstat-version``: the node agent's pure
  parsers outside the registry, clean as the parsers above (ParseError, or a result).

Texts reach the parsers the way ``read_text`` and ``nomadectl parse`` give them: bytes decoded
as UTF-8 with errors="replace".  Every input has a time bound: over LIMIT_SECONDS (SIGALRM in
the worker) is unclean ("Timeout"), and a worker that does not answer its alarm within
HANG_SECONDS is killed and its input counted ("Hang").  Workers run under an address-space
limit (MEMORY_LIMIT), so a runaway allocation is a MemoryError, unclean.

Inputs are mutations of real captures (tests/cases, tests/fixtures and, where present,
../shared/fixtures, read in place) and generated values: bit flips, inserted bytes, deletions,
truncation, splicing two inputs (of any kinds), duplicated and dropped lines, numbers replaced
by huge ones / NaN / inf / Unicode digits, JSON and XML values swapped for other types, deep
nesting, long lines, control characters.  Input I of target T depends only on (--seed, T, I):
``--replay T:I`` runs it again here and prints its traceback (an ingest input on an empty
store: what the store held before may have mattered); ``--save DIR`` writes each unclean input
(up to SAVE_PER_GROUP per target, exception and place) with a note.  The workers (one per core
by default) take chunks of CHUNK inputs; worker 0 runs every ingest chunk, in one store.

    value    = inputs that ended unclean     baseline = inputs run      goal = 0
    python bench/fuzz.py [--quick] [--inputs N] [--seed S] [--workers N] [--only T,...]
                         [--save DIR] [--replay T:I]
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import math
import multiprocessing as mp
import multiprocessing.connection
import os
import random
import re
import resource
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import msgpack  # noqa: E402

from collectors import cgroup, gpu, nfs, procio, registry, sysstat  # noqa: E402
from nomade_common import wire  # noqa: E402
from nomade_common.errors import ParseError  # noqa: E402

SHARED = Path(os.environ.get("NOMADE_SHARED_FIXTURES") or REPO.parent / "shared" / "fixtures")
CASES = REPO / "tests" / "cases"
LIMIT_SECONDS = 2.0  # one input, in the worker (SIGALRM)
HANG_SECONDS = 20.0  # a worker that does not answer its alarm is killed
MEMORY_LIMIT = 3 << 30  # bytes of address space per worker
MAX_INPUT = 1 << 20  # characters: a mutated text is cut there
CHUNK = 250  # inputs per task sent to a worker
INGEST_BATCH = 200  # takes per COMMIT
SHOW_PER_TARGET = 3  # unclean inputs printed per target as they come
SAVE_PER_GROUP = 10  # unclean inputs saved per (target, exception, place)
T0 = 1_700_000_000.0

# -- values that break parsers ------------------------------------------------------------------
NUMBERS = [
    "0",
    "-0",
    "-1",
    "1",
    "00",
    "007",
    "2147483648",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "9" * 40,
    "9" * 400,
    "9" * 4301,
    "1e308",
    "1e309",
    "1e400",
    "-1e400",
    "1e-400",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "Infinity",
    "0x10",
    "1_000",
    "1.5",
    ".5",
    "5.",
    "1e",
    "+1",
    "--1",
    "1.2.3",
    "\u0661\u0662",
    "\u00b2",
    "\uff11\uff12",
    "\u00bd",
    "\U0001d7d9",
    "3\u0301",
]
WORDS = [
    "",
    " ",
    "Unknown",
    "UNKNOWN",
    "N/A",
    "None",
    "(null)",
    "INVALID",
    "UNLIMITED",
    "infinite",
    "true",
    "false",
    "null",
    "[]",
    "{}",
    "-",
    ":",
    "=",
    "|",
    ",",
    ";",
    "(",
    ")",
    "[",
    "]",
    "node[0-99999999]",
    "node[1-3,7]",
    "node[a-z]",
    "node[5-1]",
    "node[",
    "n[01-1000000]",
    "node[1-2]x[3-4]",
    "2026-11-24T08:25:42",
    "0000-00-00T00:00:00",
    "9999-12-31T23:59:59",
    "0001-01-01T00:00:00",
    "2026-13-45T99:99:99",
    "1-02:03:04",
    "99999999999-00:00:00",
    "1:0",
    "0:999999999999999999999",
    ":",
    "1:",
    "gres/gpu:a100:4",
    "gpu:\u00b2",
    "gpu:2(IDX:0-1)",
    "gres:gpu:" + "9" * 400,
    "4000M",
    "9" * 400 + "K",
    "1.5Gc",
    "1e3M",
    "cpu=2,mem=1G,node=1,gres/gpu=2",
    "gres/gpu=" + "9" * 400,
    "=x",
    "a==b",
    "\x00",
    "\t",
    "\\040",
    "\\",
    "%",
    "%s%n",
    "<",
    ">",
    "&",
    "&amp;",
    "&#0;",
    "]]>",
    "<![CDATA[x]]>",
    "<?xml",
    '<!DOCTYPE a [<!ENTITY e "x">]>',
    "&e;",
    "job_" + "9" * 5000,
    "/job_\u00b2/",
]
INTERESTING = NUMBERS + WORDS
CONTROL = [
    "\x00",
    "\r",
    "\n",
    "\r\n",
    "\t",
    "\x0b",
    "\x0c",
    "\x1c",
    "\x1d",
    "\x1e",
    "\x85",
    "\u2028",
    "\u2029",
    "\ufeff",
    "\x1b[31m",
    "\x7f",
    "\ud7ff",
    "\uffff",
    " ",
]
UNICODE = [
    "\u00e9",
    "\u00df",
    "\u0130",
    "\u2160",
    "\u00b2",
    "\u0661",
    "\uff10",
    "\u200b",
    "\u202e",
    "\U0001f600",
    "\u0301",
    "\ufb01",
    "\u1e9e",
]
NUM_RE = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
TOKEN_RE = re.compile(r"[^\s|,=:;()\[\]{}<>\"']+")
KV_RE = re.compile(r"([\w/.-]{1,64})=([^\s,]{0,64})")  # bounded: no quadratic search
XML_TEXT_RE = re.compile(r">([^<>]*)<")
XML_ELEM_RE = re.compile(r"<(\w+)(?: [^>]*)?>[^<]*</\1>\n?")


# -- seeds ---------------------------------------------------------------------------------------
@dataclass
class Seed:
    name: str
    text: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    tree: Any = None  # the parsed JSON, when the text is JSON
    small: str | None = None  # the JSON with long lists cut to two items


# Captures that are no case of their own but are inputs of a kind all the same.
EXTRA_SEEDS: dict[str, list[str]] = {
    "sacct": ["tests/fixtures/slurm/22.05/sacct-parsable2-noheader.txt"],
    "scontrol-job": ["tests/fixtures/slurm/22.05/scontrol-show-job-o-array-running.txt"],
    "squeue": ["tests/fixtures/slurm/22.05/squeue-nomade-with-json.txt"],
    "sdiag": ["tests/fixtures/slurm/22.05/sdiag-json-unsupported.txt"],
    "iostat": [
        "tests/fixtures/sysstat/12.6.1/iostat-x.txt",
        "tests/fixtures/sysstat/12.6.1/iostat.txt",
    ],
    "iostat-json": ["tests/fixtures/sysstat/12.6.1/iostat-x.json"],
    "mpstat": ["tests/fixtures/sysstat/12.6.1/mpstat-P-ALL.txt"],
    "mpstat-json": ["tests/fixtures/sysstat/12.6.1/mpstat-P-ALL.json"],
    "vmstat": [
        "tests/fixtures/sysstat/procps-ng-4.0.2/vmstat.txt",
        "tests/fixtures/sysstat/procps-ng-4.0.2/vmstat-a.txt",
    ],
    "proc-io": ["tests/fixtures/proc/13260/io"],
    "nvidia-smi-text": ["tests/fixtures/gpu/h200-580.159.04/q.txt"],
    "nvidia-smi-xml": ["tests/fixtures/gpu/h200-580.159.04/q-x.xml"],
    "nvidia-smi-csv": [
        "tests/fixtures/gpu/h200-580.159.04/query-gpu.csv",
        "tests/fixtures/gpu/h200-580.159.04/query-compute-apps.csv",
    ],
}


def raw_parser(kind: str):
    """The parser of KIND itself, without the registry's safety net (which turns whatever escapes
    into a ParseError): the fuzzing is of the parsers, and a net would hide what they let out."""
    fn = registry.parser(kind)
    return getattr(fn, "__wrapped__", fn)


def _read(path: Path) -> str | None:
    try:
        return path.read_bytes().decode("utf-8", "replace")
    except OSError:
        return None


def _case_path(case: Path) -> Path:
    if (case / "source").is_file():
        ref = (case / "source").read_text().strip()
        if ref.startswith("shared:"):
            return SHARED.joinpath(*ref.removeprefix("shared:").split("/"))
        return REPO / ref
    return case / "input"


def _trim(tree: Any) -> Any:
    if isinstance(tree, list):
        return [_trim(x) for x in tree[:2]]
    if isinstance(tree, dict):
        return {k: _trim(v) for k, v in tree.items()}
    return tree


def _seed(name: str, text: str, kwargs: dict[str, Any]) -> Seed:
    seed = Seed(name, text, kwargs)
    if text.lstrip()[:1] in ("{", "["):
        try:
            seed.tree = json.loads(text)
            seed.small = json.dumps(_trim(seed.tree), indent=1)
        except ValueError:
            pass
    return seed


def text_seeds() -> dict[str, list[Seed]]:
    """Kind -> its captured inputs: every case folder's, then EXTRA_SEEDS."""
    out: dict[str, list[Seed]] = defaultdict(list)
    for case in sorted(CASES.iterdir()) if CASES.is_dir() else []:
        if not (case / "kind").is_file():
            continue
        kind = (case / "kind").read_text().strip()
        if kind in registry.DIRECTORY_KINDS:
            continue
        text = _read(_case_path(case))
        if text is None:
            continue  # shared fixtures absent
        args = case / "args.json"
        kwargs = json.loads(args.read_text()) if args.is_file() else {}
        out[kind].append(_seed(case.name, text, kwargs))
    for kind, paths in EXTRA_SEEDS.items():
        for rel in paths:
            text = _read(REPO / rel)
            if text is not None:
                out[kind].append(_seed(rel, text, {}))
    return dict(out)


def _files(*paths: str) -> list[str]:
    """The texts of those of PATHS (repository-relative, or shared:...) that exist."""
    texts = []
    for rel in paths:
        path = SHARED / rel.removeprefix("shared:") if rel.startswith("shared:") else REPO / rel
        text = _read(path)
        if text is not None:
            texts.append(text)
    return texts


V1_JOB = "tests/fixtures/cgroup/v1-slurm-22.05-multislurmd/{}/slurm_node1/uid_2001/job_16/{}"
TELEGRAF = "shared:cgroup/influxdata_telegraf/"
CGROUP_V1_TEXTS = {
    name: _files(V1_JOB.format(ctl, name), TELEGRAF + f"{ctl}_{name}")
    for ctl, name in cgroup.V1_FILES
}
CGROUP_V2_TEXTS = {name: _files(TELEGRAF + f"v2_{name}") for _, name in cgroup.V2_FILES}
EXTRA_PARSERS: dict[str, tuple[Callable[..., Any], list[str]]] = {
    "proc-stat": (
        procio.parse_stat,
        _files(
            "tests/fixtures/proc/13260/stat",
            "shared:procfs/kellyjonbrazil_jc/pid_stat",
            "shared:procfs/kellyjonbrazil_jc/pid_stat_w_space_and_nl_in_comm",
        ),
    ),
    "proc-io-counters": (
        procio.parse_counters,
        _files("tests/fixtures/proc/13260/io", "shared:procfs/kellyjonbrazil_jc/pid_io"),
    ),
    "cgroup-procs": (
        cgroup.parse_pids,
        _files(V1_JOB.format("freezer", "cgroup.procs"), V1_JOB.format("freezer", "tasks")),
    ),
    "mountinfo": (
        nfs.mount_table,
        _files(
            "shared:procfs/kellyjonbrazil_jc/pid_mountinfo",
            "shared:procfs/prometheus_node_exporter/proc_1_mountinfo",
            "shared:procfs/prometheus_node_exporter/proc_10_mountinfo",
        ),
    ),
    "proc-cgroup": (
        lambda text, source: gpu.job_of_cgroup(text),
        _files("tests/fixtures/proc/13260/cgroup"),
    ),
    "sysstat-version": (
        lambda text, source: sysstat.sysstat_version(text),
        ["sysstat version 12.6.1\n(C) Sebastien Godard (sysstat <at> orange.fr)\n"],
    ),
}
DIR_TREES = {
    "cgroup": "tests/fixtures/cgroup/v1-slurm-22.05-multislurmd",
    "hwmon": "tests/fixtures/sys/hwmon-handmade-2socket-intel-nvme",
    "edac": "tests/fixtures/sys/edac-handmade-skx-2socket",
}
NEW_NAMES = {
    "cgroup": ["job_\u00b2", "job_" + "9" * 200, "uid_x", "job_-1", "step_", "job_17", "task_"],
    "hwmon": [
        "hwmon" + "9" * 200,
        "hwmon\u00b2",
        "temp\u0661_input",
        "temp99999999999_input",
        "temp0_input",
        "name",
        "device",
        "temp1_label",
    ],
    "edac": ["mc" + "9" * 200, "mc\u0661", "mc99", "ce_count", "ue_count", "mc_name"],
}


# -- mutations of text ---------------------------------------------------------------------------
def _pos(rng: random.Random, s: str | bytes) -> int:
    return rng.randrange(len(s) + 1)


def _span(rng: random.Random, s: str) -> tuple[int, int]:
    i = rng.randrange(len(s) + 1)
    return i, i + rng.choice((1, 2, 3, 8, 64, len(s) // 4 + 1))


def _bytes_op(rng: random.Random, s: str, op: Callable[[bytearray], None]) -> str:
    b = bytearray(s.encode("utf-8"))
    op(b)
    return b.decode("utf-8", "replace")


def m_bitflip(rng: random.Random, s: str, donor: str) -> str:
    def flip(b: bytearray) -> None:
        for _ in range(rng.randint(1, 8) if b else 0):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)

    return _bytes_op(rng, s, flip)


def m_bytes(rng: random.Random, s: str, donor: str) -> str:
    def insert(b: bytearray) -> None:
        i = _pos(rng, b)
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))

    return _bytes_op(rng, s, insert)


def m_delete(rng: random.Random, s: str, donor: str) -> str:
    i, j = _span(rng, s)
    return s[:i] + s[j:]


def m_truncate(rng: random.Random, s: str, donor: str) -> str:
    return s[: _pos(rng, s)]


def m_splice(rng: random.Random, s: str, donor: str) -> str:
    return s[: _pos(rng, s)] + donor[_pos(rng, donor) :]


def m_dup_chunk(rng: random.Random, s: str, donor: str) -> str:
    i, j = _span(rng, s)
    k = _pos(rng, s)
    return s[:k] + s[i:j] * rng.choice((1, 2, 50)) + s[k:]


def _lines_op(rng: random.Random, s: str, op: Callable[[list[str], int], None]) -> str:
    lines = s.splitlines(keepends=True)
    if lines:
        op(lines, rng.randrange(len(lines)))
    return "".join(lines)


def m_dup_line(rng: random.Random, s: str, donor: str) -> str:
    k = rng.choice((1, 1, 2, 10, 1000))
    return _lines_op(rng, s, lambda ls, i: ls.__setitem__(slice(i, i), [ls[i]] * k))


def m_drop_line(rng: random.Random, s: str, donor: str) -> str:
    return _lines_op(rng, s, lambda ls, i: ls.__delitem__(i))


def m_swap_lines(rng: random.Random, s: str, donor: str) -> str:
    def swap(ls: list[str], i: int) -> None:
        j = rng.randrange(len(ls))
        ls[i], ls[j] = ls[j], ls[i]

    return _lines_op(rng, s, swap)


def m_number(rng: random.Random, s: str, donor: str) -> str:
    m = NUM_RE.search(s, _pos(rng, s)) or NUM_RE.search(s)
    if not m:
        return s + rng.choice(NUMBERS)
    return s[: m.start()] + rng.choice(NUMBERS) + s[m.end() :]


def m_token(rng: random.Random, s: str, donor: str) -> str:
    m = TOKEN_RE.search(s, _pos(rng, s)) or TOKEN_RE.search(s)
    if not m:
        return s + rng.choice(INTERESTING)
    other = TOKEN_RE.search(donor, _pos(rng, donor)) if rng.random() < 0.3 else None
    new = other.group() if other else rng.choice(INTERESTING)
    return s[: m.start()] + new + s[m.end() :]


def m_kv(rng: random.Random, s: str, donor: str) -> str:
    m = KV_RE.search(s, _pos(rng, s)) or KV_RE.search(s)
    if not m:
        return m_token(rng, s, donor)
    return s[: m.start(2)] + rng.choice(INTERESTING) + s[m.end(2) :]


def m_case(rng: random.Random, s: str, donor: str) -> str:
    m = TOKEN_RE.search(s, _pos(rng, s))
    if not m:
        return s
    word = rng.choice((str.upper, str.lower, str.swapcase, str.title))(m.group())
    return s[: m.start()] + word + s[m.end() :]


def _insert(rng: random.Random, s: str, what: str) -> str:
    i = _pos(rng, s)
    return s[:i] + what + s[i:]


def m_long(rng: random.Random, s: str, donor: str) -> str:
    unit = rng.choice(("A", "9", "x ", "=", "|", ",", "-1 ", "a=1 ", "\t", ":"))
    return _insert(rng, s, unit * rng.choice((100, 4096, 65536, 300_000)))


def m_control(rng: random.Random, s: str, donor: str) -> str:
    for _ in range(rng.randint(1, 5)):
        s = _insert(rng, s, rng.choice(CONTROL))
    return s


def m_unicode(rng: random.Random, s: str, donor: str) -> str:
    m = re.compile(r"\d").search(s, _pos(rng, s))
    if m and rng.random() < 0.6:
        digit = rng.choice(("\u0661", "\u00b2", "\uff11", "\U0001d7d9", "\u2460"))
        return s[: m.start()] + digit + s[m.end() :]
    return _insert(rng, s, rng.choice(UNICODE))


def m_nest(rng: random.Random, s: str, donor: str) -> str:
    unit = rng.choice(("[", '{"a":', "<a>", "(", "[[", "{", "<a x='1'>", '{"jobs":['))
    return _insert(rng, s, unit * rng.choice((50, 1000, 5000, 100_000)))


def m_interesting(rng: random.Random, s: str, donor: str) -> str:
    return _insert(rng, s, rng.choice(INTERESTING))


def m_empty(rng: random.Random, s: str, donor: str) -> str:
    first = s.split("\n", 1)[0]
    return rng.choice(("", "\n", " ", "\x00", "\ufeff", first, first + "\n", "\n" * 1000))


def m_xml_text(rng: random.Random, s: str, donor: str) -> str:
    m = XML_TEXT_RE.search(s, _pos(rng, s)) or XML_TEXT_RE.search(s)
    if not m:
        return m_token(rng, s, donor)
    return s[: m.start(1)] + rng.choice(INTERESTING) + s[m.end(1) :]


def m_xml_elem(rng: random.Random, s: str, donor: str) -> str:
    m = XML_ELEM_RE.search(s, _pos(rng, s)) or XML_ELEM_RE.search(s)
    if not m:
        return m_delete(rng, s, donor)
    copies = rng.choice((0, 0, 2, 3, 100))
    return s[: m.start()] + m.group() * copies + s[m.end() :]


TEXT_OPS = [
    (m_bitflip, 3),
    (m_bytes, 2),
    (m_delete, 3),
    (m_truncate, 2),
    (m_splice, 2),
    (m_dup_chunk, 1),
    (m_dup_line, 3),
    (m_drop_line, 3),
    (m_swap_lines, 2),
    (m_number, 6),
    (m_token, 6),
    (m_kv, 3),
    (m_case, 1),
    (m_long, 1),
    (m_control, 2),
    (m_unicode, 2),
    (m_nest, 1),
    (m_interesting, 2),
    (m_empty, 1),
]
XML_OPS = [(m_xml_text, 8), (m_xml_elem, 4)]
_OPS, _WEIGHTS = zip(*TEXT_OPS, strict=True)
_XOPS, _XWEIGHTS = zip(*(TEXT_OPS + XML_OPS), strict=True)


def mutate_text(rng: random.Random, s: str, donor: str, n: int | None = None) -> str:
    xml = s.lstrip().startswith("<?xml") or "</" in s[:4000]
    ops, weights = (_XOPS, _XWEIGHTS) if xml else (_OPS, _WEIGHTS)
    for op in rng.choices(ops, weights, k=n if n is not None else rng.choice((1, 1, 1, 2, 3, 5))):
        s = op(rng, s, donor)[:MAX_INPUT]
    return s


def crop(rng: random.Random, s: str) -> str:
    """A large line-oriented capture cut to its head and a window of lines, to keep inputs fast."""
    if len(s) < 8192 or rng.random() < 0.08 or s.lstrip()[:1] in ("<", "{", "["):
        return s
    lines = s.splitlines(keepends=True)
    i = rng.randrange(len(lines))
    return "".join(lines[:6] + lines[i : i + rng.choice((10, 40, 120))])


# -- random values (JSON trees, msgpack payloads) ------------------------------------------------
BIG_INTS = [0, 1, -1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63)]
FLOATS = [0.0, -0.0, 0.5, 1e308, -1e308, 5e-324, math.nan, math.inf, -math.inf]


def scalar(rng: random.Random, json_only: bool = False) -> Any:
    r = rng.randrange(14)
    if r == 0:
        return None
    if r == 1:
        return rng.random() < 0.5
    if r in (2, 3):
        return rng.choice(BIG_INTS) if rng.random() < 0.6 else rng.randint(-1000, 10**6)
    if r == 4 and json_only:
        return rng.choice((10**30, 10**400, -(10**400)))
    if r in (4, 5):
        return rng.choice(FLOATS) if rng.random() < 0.6 else rng.uniform(-1e12, 1e12)
    if r in (6, 7, 8):
        return rng.choice(INTERESTING)
    if r == 9:
        return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randint(0, 12)))
    if r == 10:
        return {
            "set": rng.random() < 0.8,
            "infinite": rng.random() < 0.2,
            "number": scalar(rng, json_only),
        }
    if json_only:
        return rng.choice(("x" * 100_000, [], {}))
    return rng.choice(
        (
            b"",
            b"\x00\xff",
            msgpack.ExtType(rng.randrange(128), b"xx"),
            msgpack.Timestamp(rng.randrange(2**32)),
            "x" * 100_000,
        )
    )


def value(rng: random.Random, depth: int = 3, json_only: bool = False) -> Any:
    r = rng.random()
    if depth <= 0 or r < 0.55:
        return scalar(rng, json_only)
    n = rng.choice((0, 1, 2, 3, 5))
    if r < 0.78:
        return [value(rng, depth - 1, json_only) for _ in range(n)]
    keys = [rng.choice(("a", "rows", "t", "job_id", "number", "", "x" * 300)) for _ in range(n)]
    if not json_only and rng.random() < 0.3:
        keys = [scalar(rng) for _ in range(n)]
        keys = [k for k in keys if isinstance(k, str | int | float | bool | bytes | type(None))]
    return {k: value(rng, depth - 1, json_only) for k in keys}


def _containers(tree: Any, rng: random.Random) -> list[Any]:
    """A random walk from the root: the containers met."""
    path, node = [], tree
    while isinstance(node, list | dict) and node:
        path.append(node)
        if rng.random() < 0.25:
            break
        node = rng.choice(node) if isinstance(node, list) else node[rng.choice(list(node))]
    return path


def mutate_tree(rng: random.Random, tree: Any) -> Any:
    """A JSON tree with one value replaced, removed, duplicated or retyped (in place)."""
    path = _containers(tree, rng)
    if not path:
        return value(rng, 2, json_only=True)
    node = rng.choice(path)
    keys = list(range(len(node))) if isinstance(node, list) else list(node)
    key = rng.choice(keys)
    r = rng.random()
    if r < 0.5:
        node[key] = value(rng, 2, json_only=True)
    elif r < 0.65:
        del node[key]
    elif r < 0.75 and isinstance(node, list):
        node.extend([node[key]] * rng.choice((1, 5, 50)))
    elif r < 0.85:
        node[key] = [node[key]] if rng.random() < 0.5 else {"number": node[key], "set": True}
    else:
        node[key] = str(node[key]) if not isinstance(node[key], str) else len(node[key])
    return tree


# -- targets -------------------------------------------------------------------------------------
class Unclean(Exception):
    """A result that breaks its target's contract (not an exception of the code under test)."""


class Timeout(BaseException):  # noqa: N818 - BaseException: `except Exception` must not swallow it
    """An input over LIMIT_SECONDS."""


@dataclass
class Target:
    name: str
    make: Callable[[random.Random], Any]
    run: Callable[[Any], str]  # "result" or "error" (clean), raises otherwise
    show: Callable[[Any], str]
    save: Callable[[Any], tuple[bytes, str]]  # (the input's bytes, a note)
    weight: float = 1.0
    setup: Callable[[str], None] | None = None  # in the worker, given a private directory
    flush: Callable[[], None] | None = None  # at the end of each chunk


def _short(data: str | bytes, n: int = 160) -> str:
    r = repr(data[:n])
    return r + (f"... ({len(data)} in all)" if len(data) > n else "")


# wire ------------------------------------------------------------------------------------------
ALL_TYPES = sorted(wire.AGENT_TYPES) + [wire.ACK, wire.NACK, wire.VERDICT, "bogus", "", "x" * 40]
NODES = ["node1", "node2", "gpu-07.cluster", "c" * 128, "c" * 129, "", "n/1", "n\x1b[2J", "n\u00e9"]


def sample_row(rng: random.Random) -> list[Any]:
    """One SAMPLE_FIELDS row: mostly plausible, with any field replaced by anything."""
    row: list[Any] = [rng.choice((1, 2, 3, 16, 17)), T0 + rng.uniform(-100, 100)]
    row += [
        rng.choice((None, rng.randint(0, 1 << 40), rng.uniform(0, 1e6)))
        for _ in wire.SAMPLE_FIELDS[2:]
    ]
    for _ in range(rng.choice((1, 2, 5)) if rng.random() < 0.03 else 0):
        row[rng.randrange(len(row))] = value(rng, 1)
    if rng.random() < 0.01:
        del row[rng.randrange(len(row)) :]
    elif rng.random() < 0.01:
        row.append(None)
    return row


def payload(rng: random.Random, mtype: str) -> Any:
    """A payload of MTYPE's shape (wire.py's comments), some of its values replaced."""
    t = T0 + rng.uniform(-5, 5)
    if mtype == wire.SAMPLES:
        p: Any = {"rows": [sample_row(rng) for _ in range(rng.choice((0, 1, 2, 3, 8, 300)))]}
    elif mtype == wire.JOB_EVENT:
        p = {
            "event": rng.choice(("start", "end", "end", "resume", "")),
            "job_id": rng.choice((1, 2, 3, 16, 17)),
            "t": t,
            "user": "alice",
            "uid": 2001,
        }
    elif mtype == wire.READINGS:
        records = [{"record": "pressure", "some_avg10_percent": rng.random()} for _ in range(3)]
        p = {
            "collector": rng.choice(("pressure", "gpu", "", "x" * 65, "a\nb")),
            "t": t,
            "seconds": rng.random(),
            "records": records,
        }
    elif mtype == wire.HEARTBEAT:
        status = [60.0, 3, 0, t, t, None, 0.01, None]
        p = {
            "t": t,
            "jobs": [1, 2],
            "outbox_depth": 0,
            "dropped": 0,
            "collectors": {"pressure": status, "gpu": list(status)},
        }
    elif mtype == wire.HELLO:
        p = {"host": "node1", "agent_version": "0.1", "interval_seconds": 10.0, "started": t}
    else:
        return value(rng, 3)
    for _ in range(rng.choice((0, 0, 0, 1, 2, 4))):
        p = mutate_value(rng, p)
    return p


def mutate_value(rng: random.Random, p: Any) -> Any:
    if rng.random() < 0.05:
        return value(rng, 2)
    path = _containers(p, rng)
    if not path:
        return p
    node = rng.choice(path)
    keys = list(range(len(node))) if isinstance(node, list) else list(node)
    key = rng.choice(keys)
    if rng.random() < 0.15:
        del node[key]
    else:
        node[key] = value(rng, 2)
    return p


def envelope(rng: random.Random, mtype: str | None = None) -> bytes:
    mtype = mtype or rng.choice(ALL_TYPES)
    node = rng.choice(NODES[:3]) if rng.random() < 0.85 else rng.choice(NODES)
    epoch = rng.choice((1, 1, 2)) if rng.random() < 0.9 else rng.choice(BIG_INTS)
    seq = rng.randrange(200) if rng.random() < 0.9 else rng.choice(BIG_INTS)
    version = wire.VERSION if rng.random() < 0.95 else scalar(rng)
    head = [version, mtype, node, [epoch, seq], payload(rng, mtype)]
    if rng.random() < 0.05:
        head[rng.randrange(5)] = value(rng, 2)
    return _pack(head)


def _pack(obj: Any) -> bytes:
    try:
        return msgpack.packb(obj, use_bin_type=True)
    except (OverflowError, TypeError, ValueError):
        return msgpack.packb([wire.VERSION, "samples", "node1", [1, 1], repr(obj)[:100]])


def mutate_bytes(rng: random.Random, b: bytes, donor: bytes) -> bytes:
    data = bytearray(b)
    for _ in range(rng.choice((1, 1, 2, 3, 6))):
        r, i = rng.randrange(8), _pos(rng, data)
        if r == 0 and data:
            data[min(i, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif r == 1:
            data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif r == 2:
            del data[i : i + rng.choice((1, 2, 4, 16))]
        elif r == 3:
            del data[i:]
        elif r == 4:
            data = data[:i] + donor[_pos(rng, donor) :]
        elif r == 5 and data:
            data[min(i, len(data) - 1)] = rng.choice((0xC1, 0xDD, 0xDF, 0xC6, 0xDB, 0xC7, 0xD4))
        elif r == 6:
            data[i:i] = rng.choice(
                (
                    b"\xdd\xff\xff\xff\xff",
                    b"\xdf\xff\xff\xff\xff",
                    b"\xdb\xff\xff\xff\xff",
                    b"\xc6\x7f\xff\xff\xff",
                    b"\xd6\xff\x00",
                    b"\xc7\xff\xff",
                )
            )
        else:
            data[i:i] = data[i : i + rng.choice((1, 8, 64))] * rng.choice((2, 10))
    return bytes(data)


def wire_input(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.12:
        return bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 5, 20, 100, 2000))))
    if r < 0.50:
        return mutate_bytes(rng, envelope(rng), envelope(rng))
    if r < 0.65:
        return envelope(rng)
    if r < 0.85:
        return _pack([value(rng, 3) for _ in range(rng.choice((5, 5, 5, 4, 6, 0)))])
    depth = rng.choice((10, 127, 128, 1000, 5000, 100_000))
    opener = rng.choice((b"\x91", b"\x81\xa1a", b"\xdc\x00\x01", b"\x81\x01"))
    return rng.choice((b"\x95\x01\xa7samples\xa5node1\x92\x01\x01", b"")) + opener * depth + b"\xc0"


def run_wire(data: bytes) -> str:
    try:
        env = wire.unpack(data)
    except wire.WireError:
        return "error"
    if not (
        isinstance(env, wire.Envelope)
        and isinstance(env.type, str)
        and isinstance(env.node, str)
        and isinstance(env.epoch, int)
        and isinstance(env.seq, int)
    ):
        raise Unclean(f"unpack returned {env!r:.200}")
    return "result"


def _save_bytes(data: bytes) -> tuple[bytes, str]:
    return data, ""


# ingest ----------------------------------------------------------------------------------------
WATCHED = (
    "sample_log",  # where ingest lands samples
    "jobs",
    "received",
    "events",
    "readings_latest",
    "readings",
    "nodes",
    "collector_status",
)
REFUSAL_EVENTS = ("bad_message", "envelope_refused")
ANSWERS = frozenset({"ack", "nack", "live", "drop"})


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def off_bounds(sample: tuple) -> bool:
    """Whether SAMPLE (a row of store.all_samples: job_uid, node, t, readings) holds what no
    stored sample may: t not a number, or a reading neither a number >= 0 nor None."""
    return not _number(sample[2]) or any(
        v is not None and (not _number(v) or v < 0) for v in sample[3:]
    )


# A NACK whose reason is an exception that take caught ("not storable (TypeError: ...)"): a clean
# answer, counted apart and shown, since it is code that failed rather than a check that refused.
INTERNAL = "nacks from a caught exception"


class IngestTarget:
    """One store, one Ingest, committed every INGEST_BATCH takes (one worker runs them all)."""

    def __init__(self) -> None:
        self.conn: sqlite3.Connection | None = None
        self.ingest: Any = None
        self.taken = 0

    def setup(self, directory: str) -> None:
        from aggregator.store import Ingest, open_store

        self.conn = open_store(os.path.join(directory, "fuzz.db"))
        self.conn.execute("CREATE TEMP TABLE fuzz_changes (n INTEGER NOT NULL)")
        self.conn.execute("INSERT INTO fuzz_changes VALUES (0)")
        refusals = ", ".join(f"'{k}'" for k in REFUSAL_EVENTS)
        for table in WATCHED:
            for op in ("INSERT", "UPDATE", "DELETE"):
                when = (
                    f" WHEN NEW.kind NOT IN ({refusals})"
                    if (table, op) == ("events", "INSERT")
                    else ""
                )
                self.conn.execute(
                    f"CREATE TEMP TRIGGER fuzz_{table}_{op} AFTER {op} ON main.{table}{when}"
                    " BEGIN UPDATE fuzz_changes SET n = n + 1; END"
                )
        self.ingest = Ingest("fuzz")
        self.conn.execute("BEGIN")

    def changes(self) -> int:
        return self.conn.execute("SELECT n FROM fuzz_changes").fetchone()[0]

    def landed(self) -> int:
        """Envelopes of samples landed so far (the newest one's id)."""
        return self.conn.execute("SELECT coalesce(max(id), 0) FROM sample_log").fetchone()[0]

    def run(self, data: bytes) -> str:
        conn = self.conn
        before = self.changes()
        landed = self.landed()
        try:
            answer = self.ingest.take(conn, data, T0 + self.taken * 0.01)
        except BaseException:
            self.restart()
            raise
        self.taken += 1
        if self.taken % INGEST_BATCH == 0:
            self.flush()
        kind = getattr(answer, "kind", None)
        if kind not in ANSWERS:
            raise Unclean(f"answer kind {kind!r}")
        if kind in ("nack", "drop") and self.changes() != before:
            raise Unclean(
                f"{kind} ({answer.reason[:80]}) left {self.changes() - before} rows changed"
            )
        if kind == "ack":
            env = answer.env
            key = (env.node, env.epoch, env.seq)
            if not conn.execute(
                "SELECT 1 FROM received WHERE node = ? AND epoch = ? AND seq = ?", key
            ).fetchone():
                raise Unclean(f"ack of {key} but received does not hold it")
            if self.landed() != landed:  # it stored samples: check every sample stored
                from aggregator import store

                bad = next(filter(off_bounds, store.all_samples(conn)), None)
                if bad:
                    raise Unclean(f"ack stored a sample out of bounds: {bad!r:.160}")
        if kind == "nack" and answer.reason.startswith("not storable"):
            return INTERNAL, answer.reason[:200]  # clean, but an exception inside take
        return "result" if kind in ("ack", "live") else "error"

    def restart(self) -> None:
        """After an exception the batch's state is unknown: roll it back, as the writer does."""
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        self.ingest.forget()
        self.conn.execute("BEGIN")

    def flush(self) -> None:
        if self.conn is not None:
            self.conn.execute("COMMIT")
            self.conn.execute("BEGIN")


def ingest_input(rng: random.Random) -> bytes:
    r = rng.random()
    types = (
        [wire.SAMPLES] * 4
        + [wire.JOB_EVENT] * 2
        + [wire.READINGS] * 2
        + [wire.HEARTBEAT, wire.HELLO, rng.choice(ALL_TYPES)]
    )
    data = envelope(rng, rng.choice(types))
    if r < 0.2:
        data = mutate_bytes(rng, data, envelope(rng))
    elif r < 0.25:
        data = wire_input(rng)
    return data


# parsers ---------------------------------------------------------------------------------------
def _check_records(out: Any) -> str:
    if not isinstance(out, list) or not all(isinstance(r, dict) for r in out):
        raise Unclean(f"returned {type(out).__name__}, not a list of dict records")
    for record in out:
        json.dumps(record, sort_keys=True, default=str)  # as `nomadectl parse` prints it
    return "result"


def text_target(kind: str, seeds: list[Seed], donors: list[Seed]) -> Target:
    fn = raw_parser(kind)

    def make(rng: random.Random) -> tuple[str, dict[str, Any]]:
        seed = rng.choice(seeds)
        donor = rng.choice(seeds if rng.random() < 0.7 else donors).text
        r = rng.random()
        if r < 0.04:
            return "".join(chr(rng.randrange(1, 0x300)) for _ in range(rng.randrange(200))), {}
        if seed.tree is not None and r < 0.6:
            tree = json.loads(seed.small if rng.random() < 0.85 else seed.text)
            for _ in range(rng.choice((1, 1, 2, 3, 6))):
                tree = mutate_tree(rng, tree)
            text = json.dumps(tree, indent=rng.choice((None, 1)))
            return (mutate_text(rng, text, donor, 1) if rng.random() < 0.2 else text), seed.kwargs
        return mutate_text(rng, crop(rng, seed.text), donor), seed.kwargs

    def run(inp: tuple[str, dict[str, Any]]) -> str:
        text, kwargs = inp
        try:
            out = fn(text, "fuzz", **kwargs)
        except ParseError:
            return "error"
        return _check_records(out)

    def save(inp: tuple[str, dict[str, Any]]) -> tuple[bytes, str]:
        return inp[0].encode("utf-8"), f"kwargs: {json.dumps(inp[1])}"

    return Target(f"parse:{kind}", make, run, lambda inp: _short(inp[0]), save)


def extra_target(name: str, fn: Callable[..., Any], texts: list[str], donors: list[Seed]) -> Target:
    def make(rng: random.Random) -> str:
        donor = rng.choice(donors).text if rng.random() < 0.3 else rng.choice(texts)
        return mutate_text(rng, crop(rng, rng.choice(texts)), donor)

    def run(text: str) -> str:
        try:
            fn(text, "fuzz")
        except ParseError:
            return "error"
        return "result"

    return Target(f"parse:{name}", make, run, _short, lambda t: (t.encode("utf-8"), ""))


def cgroup_job_target(version: int, texts: dict[str, list[str]], donors: list[Seed]) -> Target:
    names = [name for name, found in texts.items() if found]

    def make(rng: random.Random) -> dict[str, Any]:
        raw: dict[str, Any] = {name: rng.choice(texts[name]) for name in names}
        for name in rng.sample(names, rng.randint(1, len(names))):
            r = rng.random()
            if r < 0.05:
                raw[name] = None
            elif r < 0.08:
                raw[name] = PermissionError(13, "Permission denied")
            else:
                donor = rng.choice(texts[rng.choice(names)])
                raw[name] = mutate_text(rng, raw[name], donor)
        return raw

    def run(raw: dict[str, Any]) -> str:
        parsed = cgroup.parse_job(raw, version)
        if not isinstance(parsed, cgroup.ParsedJob):
            raise Unclean(f"parse_job returned {type(parsed).__name__}")
        return "error" if parsed.problems else "result"

    def save(raw: dict[str, Any]) -> tuple[bytes, str]:
        shown = {k: v if v is None or isinstance(v, str) else repr(v) for k, v in raw.items()}
        return json.dumps(shown, indent=1).encode(), f"cgroup.parse_job(raw, version={version})"

    return Target(
        f"parse:cgroup-job-v{version}",
        make,
        run,
        lambda raw: _short(json.dumps({k: str(v)[:40] for k, v in raw.items()})),
        save,
    )


class DirTarget:
    """A directory kind over a private copy of a captured tree; each input changes one entry and
    the change is undone after the parser ran."""

    def __init__(self, kind: str, tree: str) -> None:
        self.kind, self.source = kind, REPO / tree
        self.fn = raw_parser(kind)
        self.files = sorted(
            str(p.relative_to(self.source)) for p in self.source.rglob("*") if p.is_file()
        )
        self.dirs = [""] + sorted(
            str(p.relative_to(self.source)) for p in self.source.rglob("*") if p.is_dir()
        )
        self.root = ""

    def setup(self, directory: str) -> None:
        self.root = os.path.join(directory, self.kind)
        shutil.copytree(self.source, self.root, symlinks=True)

    def make(self, rng: random.Random) -> tuple[str, str, bytes | None]:
        """(op, relative path, content): op is "write", "delete", "file" or "dir"."""
        r = rng.random()
        if r < 0.08:
            return "delete", rng.choice(self.files), None
        if r < 0.16:
            parent = rng.choice(self.dirs)
            name = os.path.join(parent, rng.choice(NEW_NAMES[self.kind]))
            return ("dir" if rng.random() < 0.5 else "file"), name, b"1\n"
        rel = rng.choice(self.files)
        original = (self.source / rel).read_bytes().decode("utf-8", "replace")
        donor = (self.source / rng.choice(self.files)).read_bytes().decode("utf-8", "replace")
        return "write", rel, mutate_text(rng, original, donor).encode("utf-8")

    def run(self, inp: tuple[str, str, bytes | None]) -> str:
        op, rel, content = inp
        path = os.path.join(self.root, rel)
        made = op in ("file", "dir") and not os.path.lexists(path)
        try:
            if op == "write":
                Path(path).write_bytes(content or b"")
            elif op == "delete":
                os.remove(path)
            elif made and op == "dir":
                os.mkdir(path)
            elif made:
                Path(path).write_bytes(content or b"")
            try:
                out = self.fn(self.root)
            except ParseError:
                return "error"
            return _check_records(out)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)  # an alarm must not cut the restore short
            self.restore(op, rel, made)

    def restore(self, op: str, rel: str, made: bool) -> None:
        path = os.path.join(self.root, rel)
        if op in ("write", "delete"):
            shutil.copyfile(self.source / rel, path)
        elif made and op == "dir":
            shutil.rmtree(path, ignore_errors=True)
        elif made:
            os.remove(path)

    def target(self) -> Target:
        def save(inp: tuple[str, str, bytes | None]) -> tuple[bytes, str]:
            op, rel, content = inp
            return content or b"", f"{op} {rel} in a copy of {self.source.relative_to(REPO)}"

        return Target(
            f"dir:{self.kind}",
            self.make,
            self.run,
            lambda inp: f"{inp[0]} {inp[1]}: {_short(inp[2] or b'', 100)}",
            save,
            weight=0.3,
            setup=self.setup,
        )


def build_targets() -> dict[str, Target]:
    seeds = text_seeds()
    donors = [s for kind_seeds in seeds.values() for s in kind_seeds]
    targets = {
        "wire": Target("wire", wire_input, run_wire, _short, _save_bytes, weight=0.0),
    }
    from aggregator import store

    if hasattr(store.Ingest, "take"):
        it = IngestTarget()
        targets["ingest"] = Target(
            "ingest",
            ingest_input,
            it.run,
            _short,
            _save_bytes,
            weight=0.0,
            setup=it.setup,
            flush=it.flush,
        )
    for kind in registry.KINDS:
        if kind in registry.DIRECTORY_KINDS:
            if kind in DIR_TREES:
                targets[f"dir:{kind}"] = DirTarget(kind, DIR_TREES[kind]).target()
        elif seeds.get(kind):
            targets[f"parse:{kind}"] = text_target(kind, seeds[kind], donors)
    for name, (fn, texts) in EXTRA_PARSERS.items():
        if texts:
            targets[f"parse:{name}"] = extra_target(name, fn, texts, donors)
    for version, texts in ((1, CGROUP_V1_TEXTS), (2, CGROUP_V2_TEXTS)):
        if any(texts.values()):
            targets[f"parse:cgroup-job-v{version}"] = cgroup_job_target(version, texts, donors)
    return targets


def plan(targets: dict[str, Target], total: int) -> dict[str, int]:
    """Inputs per target: a quarter to the wire, a tenth to the ingest, the rest by weight."""
    shares = {n: f for n, f in (("wire", 0.25), ("ingest", 0.10)) if n in targets}
    weights = {n: t.weight for n, t in targets.items() if n not in shares}
    if weights:
        scale = (1.0 - sum(shares.values())) / sum(weights.values())
        shares.update({n: w * scale for n, w in weights.items()})
    counts = {n: int(total * f / sum(shares.values())) for n, f in shares.items()}
    counts[next(iter(counts))] += total - sum(counts.values())
    return counts


# -- running -------------------------------------------------------------------------------------
def _place(exc: BaseException) -> str:
    """The innermost frame of the code under test (not this file) that the exception passed."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [
        f for f in frames if f.filename.startswith(str(REPO)) and "bench/fuzz.py" not in f.filename
    ]
    f = (ours or frames or [None])[-1]
    if f is None:
        return "?"
    name = f.filename.removeprefix(str(REPO) + "/")
    return f"{name}:{f.lineno} in {f.name}"


def _alarm(signum: int, frame: Any) -> None:
    raise Timeout(f"over {LIMIT_SECONDS:g} s")


def run_one(target: Target, inp: Any) -> tuple[str, str | None, str, float]:
    """(outcome, exception type or None, place or message, seconds); outcome is "result",
    "error" (a clean error), "unclean", or a clean outcome worth a note (target.run returned
    it with a message)."""
    start = time.perf_counter()
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, LIMIT_SECONDS)
            outcome = target.run(inp)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if isinstance(outcome, tuple):
            return outcome[0], None, outcome[1], time.perf_counter() - start
    except Timeout:
        return "unclean", "Timeout", f"over {LIMIT_SECONDS:g} s", time.perf_counter() - start
    except Unclean as exc:
        return "unclean", "Unclean", str(exc)[:200], time.perf_counter() - start
    except (Exception, RecursionError, MemoryError) as exc:
        message = f"{_place(exc)}: {str(exc)[:120]}"
        return "unclean", type(exc).__name__, message, time.perf_counter() - start
    return outcome, None, "", time.perf_counter() - start


def rng_for(seed: int, target: str, index: int) -> random.Random:
    return random.Random(f"{seed}/{target}/{index}")


def worker(
    wid: int,
    targets: dict[str, Target],
    seed: int,
    conn: Any,
    busy: Any,
    where: Any,
    names: list[str],
    base: str,
) -> None:
    """Run the chunks the parent sends over CONN; report unclean inputs as they come."""
    signal.signal(signal.SIGALRM, _alarm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    faulthandler.register(signal.SIGUSR1, all_threads=False)  # the parent asks before a kill
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    directory = tempfile.mkdtemp(prefix=f"w{wid}-", dir=base)
    ready: set[str] = set()
    parent = os.getppid()
    while True:
        while not conn.poll(1.0):
            if os.getppid() != parent:
                return  # the parent is gone (other workers hold our pipe's far end too)
        if (task := conn.recv()) is None:
            return
        name, lo, hi = task
        target = targets[name]
        if name not in ready and target.setup is not None:
            target.setup(directory)
        ready.add(name)
        counts: Counter = Counter()
        slowest = 0.0
        for i in range(lo, hi):
            inp = target.make(rng_for(seed, name, i))
            where[wid] = names.index(name) * 10**9 + i
            busy[wid] = time.monotonic()
            outcome, kind, message, seconds = run_one(target, inp)
            busy[wid] = 0.0
            counts[outcome] += 1
            slowest = max(slowest, seconds)
            if outcome == "unclean":
                conn.send(("unclean", name, i, kind, message, target.show(inp)))
            elif message and counts[outcome] <= SHOW_PER_TARGET:
                conn.send(("note", name, i, outcome, message, target.show(inp)))
        if target.flush is not None:
            target.flush()
        conn.send(("done", name, lo, hi, dict(counts), slowest))


@dataclass
class Stats:
    planned: int = 0
    run: int = 0
    counts: Counter = field(default_factory=Counter)
    slowest: float = 0.0
    reported: bool = False


class Run:
    def __init__(self, args: argparse.Namespace, targets: dict[str, Target]) -> None:
        self.args, self.targets = args, targets
        self.names = sorted(targets)
        self.stats = {n: Stats() for n in self.names}
        self.unclean: dict[tuple[str, int], tuple[str, str, str]] = {}
        self.shown: Counter = Counter()
        self.noted: Counter = Counter()

    def chunks(self, counts: dict[str, int]) -> tuple[list[tuple[str, int, int]], list]:
        """Tasks, round-robin over the targets so that a cut-short run has covered them all."""
        per = {
            n: [(n, lo, min(lo + CHUNK, c)) for lo in range(0, c, CHUNK)] for n, c in counts.items()
        }
        ingest = per.pop("ingest", [])
        order: list[tuple[str, int, int]] = []
        while any(per.values()):
            for n in sorted(per):
                if per[n]:
                    order.append(per[n].pop(0))
        return order, ingest

    def note_unclean(self, name: str, i: int, kind: str, message: str, shown: str) -> None:
        if (name, i) in self.unclean:
            return
        self.unclean[(name, i)] = (kind, message, shown)
        if self.shown[name] < SHOW_PER_TARGET:
            self.shown[name] += 1
            print(
                f"UNCLEAN {name} #{i}: {kind}: {message}\n    input: {shown}\n"
                f"    replay: python bench/fuzz.py --seed {self.args.seed} --replay {name}:{i}",
                flush=True,
            )

    def note(self, name: str, i: int, outcome: str, message: str, shown: str) -> None:
        """A clean outcome worth showing (see INTERNAL)."""
        if self.noted[name] < SHOW_PER_TARGET:
            self.noted[name] += 1
            print(f"NOTE {name} #{i}: {outcome}: {message}\n    input: {shown}", flush=True)

    def note_done(
        self, name: str, lo: int, hi: int, counts: dict[str, int], slowest: float
    ) -> None:
        st = self.stats[name]
        st.run += hi - lo
        st.counts.update(counts)
        st.slowest = max(st.slowest, slowest)
        if st.run >= st.planned and not st.reported:
            st.reported = True
            print(self.line(name), flush=True)

    def line(self, name: str) -> str:
        st = self.stats[name]
        kinds = Counter(k for (n, _), (k, _, _) in self.unclean.items() if n == name)
        bad = ", ".join(f"{k} {v}" for k, v in kinds.most_common())
        notes = "".join(
            f", {v} {k}" for k, v in st.counts.items() if k not in ("result", "error", "unclean")
        )
        return (
            f"{name:<28} {st.run:>8} inputs {st.counts['result']:>8} results "
            f"{st.counts['error']:>8} clean errors{notes} {st.counts['unclean']:>6} unclean"
            f"{f' ({bad})' if bad else ''}  slowest {st.slowest:.3f} s"
        )

    def execute(self, counts: dict[str, int]) -> float:
        """Chunks to the workers, one at a time each, over a pipe of their own; worker 0 runs
        the ingest chunks (one store) before any other."""
        for name, c in counts.items():
            self.stats[name].planned = c
        order, ingest = self.chunks(counts)
        self.queues = {"": deque(order), "ingest": deque(ingest)}
        ctx = mp.get_context("fork")
        n = self.args.workers
        self.busy, self.where = ctx.RawArray("d", n), ctx.RawArray("q", n)
        started = last = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="nomade-bench-fuzz-") as base:
            self.ctx, self.base = ctx, base
            self.workers = [self.spawn(w) for w in range(n)]
            for wid in range(n):
                self.assign(wid)
            while any(w[2] for w in self.workers):
                conns = {w[1]: wid for wid, w in enumerate(self.workers) if w[2]}
                for conn in mp.connection.wait(list(conns), timeout=0.5):
                    self.receive(conns[conn])
                self.watch()
                if time.monotonic() - last >= 15:
                    last = time.monotonic()
                    run = sum(s.run for s in self.stats.values())
                    print(
                        f"... {run} of {sum(counts.values())} inputs, {len(self.unclean)} unclean,"
                        f" {last - started:.0f} s",
                        flush=True,
                    )
            for p, conn, _ in self.workers:
                conn.send(None)
                p.join(5)
                if p.is_alive():
                    p.kill()
        return time.monotonic() - started

    def spawn(self, wid: int) -> list[Any]:
        """[process, connection, task in hand or None]"""
        ours, theirs = self.ctx.Pipe()
        p = self.ctx.Process(
            target=worker,
            daemon=True,
            args=(
                wid,
                self.targets,
                self.args.seed,
                theirs,
                self.busy,
                self.where,
                self.names,
                self.base,
            ),
        )
        p.start()
        theirs.close()
        self.busy[wid] = 0.0
        return [p, ours, None]

    def assign(self, wid: int) -> None:
        w = self.workers[wid]
        q = self.queues["ingest"] if wid == 0 and self.queues["ingest"] else self.queues[""]
        w[2] = q.popleft() if q else None
        if w[2] is not None:
            w[1].send(w[2])

    def receive(self, wid: int) -> None:
        try:
            msg = self.workers[wid][1].recv()
        except (EOFError, OSError):
            return  # it died: watch() sees to it
        if msg[0] == "unclean":
            self.note_unclean(*msg[1:])
        elif msg[0] == "note":
            self.note(*msg[1:])
        else:
            self.note_done(*msg[1:])
            self.assign(wid)

    def watch(self) -> None:
        """A worker stuck past HANG_SECONDS, or dead, is replaced: the input it was on is
        unclean; the rest of its chunk runs again (inputs are deterministic; unclean ones are
        counted once, and only the chunks that finish count their inputs)."""
        now = time.monotonic()
        for wid, (p, conn, task) in enumerate(self.workers):
            since = self.busy[wid]
            hung = task is not None and since and now - since > HANG_SECONDS
            if not task or not (hung or not p.is_alive()):
                continue
            if hung:
                os.kill(p.pid, signal.SIGUSR1)  # its stack, on stderr
                time.sleep(0.5)
            p.kill()
            p.join()
            conn.close()
            name, lo, hi = task
            parts = [task]
            if since:
                code = self.where[wid]
                i = code % 10**9
                target = self.targets[name]
                shown = target.show(target.make(rng_for(self.args.seed, name, i)))
                why = (
                    f"no answer to its alarm in {HANG_SECONDS:g} s"
                    if hung
                    else f"exit {p.exitcode}"
                )
                self.note_unclean(name, i, "Hang" if hung else "Died", f"worker: {why}", shown)
                self.note_done(name, i, i + 1, {"unclean": 1}, now - since)
                parts = [(name, a, b) for a, b in ((lo, i), (i + 1, hi)) if a < b]
            self.queues["ingest" if name == "ingest" else ""].extendleft(reversed(parts))
            self.workers[wid] = self.spawn(wid)
            self.assign(wid)


def replay(targets: dict[str, Target], seed: int, spec: str) -> None:
    name, _, index = spec.rpartition(":")
    target = targets[name]
    inp = target.make(rng_for(seed, name, int(index)))
    directory = tempfile.mkdtemp(prefix="nomade-fuzz-replay-")
    try:
        if target.setup is not None:
            target.setup(directory)
        data, note = target.save(inp)
        print(f"{name} #{index} ({len(data)} bytes){': ' + note if note else ''}")
        print(repr(data[:1000]) + ("..." if len(data) > 1000 else ""))
        signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, LIMIT_SECONDS * 5)
        start = time.perf_counter()
        try:
            print("outcome:", target.run(inp))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            print(f"{time.perf_counter() - start:.3f} s")
    except (Exception, Timeout):
        traceback.print_exc()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _place_of(kind: str, message: str) -> str:
    if kind in ("Unclean", "Timeout", "Hang", "Died"):
        return message[:60]
    return message.split(": ", 1)[0]


def save_all(run: Run, targets: dict[str, Target], seed: int, directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    groups: Counter = Counter()
    saved = 0
    for (name, i), (kind, message, _) in sorted(run.unclean.items()):
        group = (name, kind, _place_of(kind, message))
        groups[group] += 1
        if groups[group] > SAVE_PER_GROUP:
            continue
        data, note = targets[name].save(targets[name].make(rng_for(seed, name, i)))
        stem = directory / f"{name.replace(':', '-')}-{i}"
        stem.with_suffix(".input").write_bytes(data)
        stem.with_suffix(".txt").write_text(
            f"target {name}\nindex {i}\nseed {seed}\n{note}\n{kind}: {message}\n"
            f"replay: python bench/fuzz.py --seed {seed} --replay {name}:{i}\n"
        )
        saved += 1
    return saved


def summary(run: Run) -> None:
    groups: Counter = Counter()
    for (name, _), (kind, message, _) in run.unclean.items():
        groups[(name, kind, _place_of(kind, message))] += 1
    if groups:
        print("unclean inputs by target, exception and place:")
        for (name, kind, place), n in sorted(groups.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"  {n:>7}  {name}  {kind}  {place}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 inputs: well under 30 s")
    parser.add_argument("--inputs", type=int, help="inputs in all (default 1,000,000)")
    parser.add_argument("--seed", type=int, default=1, help="the run's seed (inputs depend on it)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", help="comma-separated targets (see the list printed first)")
    parser.add_argument("--save", type=Path, help="write the unclean inputs into this directory")
    parser.add_argument("--replay", metavar="TARGET:INDEX", help="run one input here and show it")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the aggregator's line per refused message
    total = args.inputs or (20_000 if args.quick else 1_000_000)
    targets = build_targets()
    if args.replay:
        replay(targets, args.seed, args.replay)
        return
    if args.only:
        unknown = set(args.only.split(",")) - set(targets)
        if unknown:
            parser.error(f"unknown targets {sorted(unknown)}; known: {', '.join(sorted(targets))}")
        targets = {n: t for n, t in targets.items() if n in args.only.split(",")}
    counts = plan(targets, total)
    missing = "" if "ingest" in targets or args.only else " (no ingest: Ingest.take is missing)"
    print(
        f"fuzz: {total} inputs over {len(targets)} targets{missing}, seed {args.seed},"
        f" {args.workers} workers, {LIMIT_SECONDS:g} s per input",
        flush=True,
    )
    run = Run(args, targets)
    wall = run.execute(counts)
    print(f"--- {wall:.0f} s")
    for name in run.names:
        print(run.line(name))
    summary(run)
    if args.save:
        print(f"saved {save_all(run, targets, args.seed, args.save)} unclean inputs in {args.save}")
    ran = sum(s.run for s in run.stats.values())
    value = sum(s.counts["unclean"] for s in run.stats.values())
    print(
        json.dumps(
            {
                "bench": "fuzz",
                "value": value,
                "unit": "unclean inputs",
                "baseline": ran,
                "ratio": round(value / ran, 6) if ran else 0.0,
                "goal": 0,
                "targets": len(targets),
                "seed": args.seed,
            }
        )
    )


if __name__ == "__main__":
    main()
