"""Fuzzing as tests: every input gets an answer within bounds (STYLE.md rule 22).

Property-based tests (hypothesis) over arbitrary inputs and mutations of real ones.  What counts
as a clean answer, per target (anything else fails the test):

* ``wire.unpack(data)``: a ``wire.Envelope``, or ``wire.WireError`` (the receiver's one error:
  it answers a NACK when the error carries the key, else drops the message).
* Every parser of ``collectors.registry`` (``fn(text, source, **args)``; the directory
  kinds ``fn(path)``) and the node agent's pure parsers outside it (``procio.parse_stat``,
  ``procio.parse_counters``, ``cgroup.parse_pids``, ``nfs.mount_table``, ``gpu.job_of_cgroup``,
  ``sysstat.sysstat_version``): its result (a registry kind: a list of dict records that print
  the way ``nomadectl parse`` prints them), or ``nomade_common.errors.ParseError``, the one
  error a parser raises (errors.py, STYLE.md rule 4), which ``nomadectl parse`` and the
  collectors' runner turn into one line.  ParseError is a ValueError, but not every ValueError
  is a ParseError: a bare ValueError (json.JSONDecodeError, UnicodeError, int()'s 4300-digit
  limit), OverflowError, IndexError, KeyError, TypeError, AttributeError, RecursionError or any
  other exception is a leak.  ``cgroup.parse_job`` turns each file's ParseError into a problem,
  so it always returns a ParsedJob.
* ``aggregator.store.Ingest.take(conn, data, now)`` inside the caller's transaction: an Answer
  whose kind is ack, nack, live or drop, and no exception (the store here is healthy; a failing
  store's sqlite3.OperationalError is the only one take passes on).  After a nack or a drop the
  rows of samples, jobs, received, events (but the refusal's own bad_message/envelope_refused
  events), readings_latest, readings, nodes and collector_status are as they were (counters
  may count the refusal); after an ack, received holds the envelope's (node, epoch, seq) and
  every stored sample holds numbers (t a number, the other fields a number >= 0 or null).
* Every call returns within LIMIT_SECONDS (a hang detector; how fast a parser is on long
  inputs is bench/fuzz.py's to find, with its own bound per input).

Texts reach parsers as ``read_text`` and ``nomadectl parse`` give them, bytes decoded as UTF-8
with errors="replace", so the texts here hold no lone surrogates either.  Seeds are the inputs of
tests/cases (../shared/fixtures ones where present, read in place) and the captures of
EXTRA_SEEDS.  Examples are derandomized
and no example database is kept, so every run tries the same inputs; bench/fuzz.py runs a
million.
"""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import msgpack
import pytest
from clusterlib import within
from hypothesis import HealthCheck, Phase, given, reject, settings
from hypothesis import strategies as st

from aggregator import store
from aggregator.store import Ingest, open_store
from collectors import cgroup, gpu, nfs, procio, registry, sysstat
from nomade_common import wire
from nomade_common.errors import ParseError
from tests.conftest import FIXTURES, ROOT, SHARED

LIMIT_SECONDS = 20.0  # a hang, not a speed: these inputs are small, and CI machines are shared


def raw_parser(kind: str):
    """The parser of KIND itself, without the registry's safety net (which turns whatever escapes
    into a ParseError): the fuzzing is of the parsers, and a net would hide what they let out."""
    fn = registry.parser(kind)
    return getattr(fn, "__wrapped__", fn)


def fuzz(n: int) -> settings:
    """N examples, the same on every run (no example database); no explain phase (slow)."""
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[p for p in Phase if p is not Phase.explain],
    )


# -- mutations -----------------------------------------------------------------------------------
INTERESTING = [
    "",
    " ",
    "0",
    "-1",
    "-0",
    "9223372036854775808",
    "18446744073709551616",
    "9" * 400,
    "9" * 4400,
    "1e400",
    "-1e400",
    "NaN",
    "inf",
    "0x1f",
    "1_0",
    "1.2.3",
    "\u00b2",
    "\u0661",
    "\uff11",
    "\u2460",
    "Unknown",
    "N/A",
    "(null)",
    "UNLIMITED",
    "node[0-99999999]",
    "node[5-1]",
    "node[a-b]",
    "[",
    "]",
    "{",
    "}",
    "=",
    "==",
    ":",
    "|",
    ",",
    "\t",
    "\x00",
    "\r",
    "\x0b",
    "\x0c",
    "\x1c",
    "\x85",
    "\u2028",
    "\ufeff",
    "\n" * 3,
    "2026-13-45T99:99:99",
    "99999999999-00:00:00",
    "1:\u00b2",
    "gres/gpu:\u00b2",
    "<a>",
    "</gpu>",
    "&amp;",
    "&bogus;",
]
# What a number in a capture is replaced by: over float's range, over int()'s digit limit, not
# finite, negative, digits that str.isdigit() accepts and int() does not, or that both accept.
BAD_NUMBERS = [
    "9" * 400,
    "9" * 4400,
    "1e400",
    "nan",
    "inf",
    "-1",
    "\u00b2",
    "\u0661",
    "18446744073709551616",
    "0x1f",
    "1.5",
]
TOKEN = re.compile(r"[^\s|,=:;()\[\]{}<>\"']+")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
OPS = (
    "insert",
    "delete",
    "truncate",
    "token",
    "number",
    "dup_line",
    "drop_line",
    "flip",
    "repeat",
    "splice",
)


def _at(text: str, where: float) -> int:
    return min(int(where * (len(text) + 1)), len(text))


def _replace(pattern: re.Pattern[str], text: str, i: int, new: str) -> str:
    m = pattern.search(text, i) or pattern.search(text)
    return text + new if m is None else text[: m.start()] + new + text[m.end() :]


def _lines(text: str, i: int, op: str) -> str:
    lines = text.splitlines(keepends=True)
    if not lines:
        return text
    k = min(text[:i].count("\n"), len(lines) - 1)
    lines[k:k] = [lines[k]] * 20 if op == "dup_line" else []
    if op == "drop_line":
        del lines[k]
    return "".join(lines)


def mutate(text: str, op: tuple[str, float, str, int], others: list[str]) -> str:
    """TEXT with one mutation: (what, where in it from 0 to 1, a value, which of OTHERS to
    splice in)."""
    name, where, arg, donor = op
    other = others[donor % len(others)] if others else ""
    i = _at(text, where)
    if name == "insert":
        return text[:i] + arg + text[i:]
    if name == "delete":
        return text[:i] + text[i + 1 + len(arg) * 8 :]
    if name == "truncate":
        return text[:i]
    if name == "token":
        return _replace(TOKEN, text, i, arg)
    if name == "number":
        return _replace(NUMBER, text, i, BAD_NUMBERS[len(arg) % len(BAD_NUMBERS)])
    if name in ("dup_line", "drop_line"):
        return _lines(text, i, name)
    if name == "flip":
        data = bytearray(text.encode())
        if data:
            data[min(i, len(data) - 1)] ^= 1 << (len(arg) % 8)
        return data.decode("utf-8", "replace")
    if name == "repeat":
        return text[:i] + (arg or "9") * 5_000 + text[i:]
    return text[:i] + other[_at(other, where) :]  # splice


def mutations(others: list[str]) -> st.SearchStrategy:
    values = st.one_of(st.sampled_from(INTERESTING), st.text(max_size=12))
    donors = st.integers(0, max(len(others) - 1, 0))
    return st.lists(
        st.tuples(st.sampled_from(OPS), st.floats(0, 1), values, donors), min_size=1, max_size=4
    )


def mutated(seeds: list[str]) -> st.SearchStrategy:
    def apply(seed_ops: tuple[str, list]) -> str:
        text, ops = seed_ops
        for op in ops:
            text = mutate(text, op, seeds)
        return text

    return st.tuples(st.sampled_from(seeds), mutations(seeds)).map(apply)


JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=8),
    st.sampled_from(
        [
            10**400,
            -(2**63),
            2**64,
            math.nan,
            math.inf,
            "9" * 400,
            "\u00b2",
            "",
            {"set": True, "infinite": False, "number": 10**400},
            {"set": False},
            {"number": "x"},
        ]
    ),
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _trim(tree: Any) -> Any:
    if isinstance(tree, list):
        return [_trim(x) for x in tree[:2]]
    if isinstance(tree, dict):
        return {k: _trim(v) for k, v in tree.items()}
    return tree


def _retyped(tree: Any, edits: list[tuple[list[float], Any, bool]]) -> str:
    """TREE with, per edit, the value at a path (chosen by the floats) replaced or deleted."""
    for path, new, delete in edits:
        node, parent, key = tree, None, None
        for f in path:
            if not isinstance(node, list | dict) or not node:
                break
            keys = list(range(len(node))) if isinstance(node, list) else list(node)
            parent, key = node, keys[min(int(f * len(keys)), len(keys) - 1)]
            node = node[key]
        new = copy.deepcopy(new)  # drawn values may be one object: never make a cycle of them
        if parent is None:
            tree = new
        elif delete:
            del parent[key]
        else:
            parent[key] = new
    return json.dumps(tree)


def json_mutated(trees: list[str]) -> st.SearchStrategy:
    edit = st.tuples(st.lists(st.floats(0, 1), min_size=1, max_size=8), JSON_VALUES, st.booleans())
    return st.builds(
        lambda t, edits: _retyped(json.loads(t), edits),
        st.sampled_from(trees),
        st.lists(edit, min_size=1, max_size=3),
    )


# -- seeds ---------------------------------------------------------------------------------------
def _case_input(case: Path) -> Path:
    if (case / "source").is_file():
        ref = (case / "source").read_text().strip()
        if ref.startswith("shared:"):
            return SHARED.joinpath(*ref.removeprefix("shared:").split("/"))
        return ROOT / ref
    return case / "input"


H200 = FIXTURES / "gpu" / "h200-580.159.04"
# Captures of a kind that are no case folder of their own.
EXTRA_SEEDS = {
    "nvidia-smi-text": [H200 / "q.txt"],
    "nvidia-smi-xml": [H200 / "q-x.xml"],
    "nvidia-smi-csv": [H200 / "query-gpu.csv", H200 / "query-compute-apps.csv"],
}


def _seeds() -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Kind -> [(text, keyword arguments)] of every case folder whose input is here, and
    EXTRA_SEEDS."""
    out: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for case in sorted((ROOT / "tests" / "cases").iterdir()):
        if not (case / "kind").is_file():
            continue
        path = _case_input(case)
        kind = (case / "kind").read_text().strip()
        if kind in registry.DIRECTORY_KINDS or not path.is_file():
            continue
        args = case / "args.json"
        kwargs = json.loads(args.read_text()) if args.is_file() else {}
        text = path.read_bytes().decode("utf-8", "replace")
        out.setdefault(kind, []).append((text, kwargs))
    for kind, paths in EXTRA_SEEDS.items():
        out.setdefault(kind, []).extend(
            (p.read_bytes().decode("utf-8", "replace"), {}) for p in paths
        )
    return out


SEEDS = _seeds()
TEXT_KINDS = sorted(k for k in registry.KINDS if k not in registry.DIRECTORY_KINDS)
JSON_KINDS = sorted(k for k in SEEDS if any(t.lstrip()[:1] == "{" for t, _ in SEEDS[k]))


def check_records(fn: Any, *args: Any, **kwargs: Any) -> None:
    """FN's records or its ParseError: nothing else, within LIMIT_SECONDS."""
    try:
        with within(LIMIT_SECONDS):
            records = fn(*args, **kwargs)
    except ParseError:
        return
    assert isinstance(records, list) and all(isinstance(r, dict) for r in records)
    json.dumps(records, sort_keys=True, default=str)  # as `nomadectl parse` prints them


def test_every_text_kind_has_a_captured_seed():
    """A kind without a capture here would be fuzzed with arbitrary text only."""
    missing = set(TEXT_KINDS) - set(SEEDS)
    assert not missing or not SHARED.is_dir(), f"kinds without a capture: {sorted(missing)}"


@pytest.mark.parametrize("kind", TEXT_KINDS)
@fuzz(100)
@given(text=st.text(max_size=400))
def test_parser_answers_arbitrary_text_with_records_or_a_parse_error(kind, text):
    check_records(raw_parser(kind), text, "fuzz")


@pytest.mark.parametrize("kind", sorted(SEEDS))
@fuzz(200)
@given(data=st.data())
def test_parser_answers_a_mutated_capture_with_records_or_a_parse_error(kind, data):
    seeds = SEEDS[kind]
    text, kwargs = seeds[data.draw(st.integers(0, len(seeds) - 1), label="seed")]
    others = [t[:20_000] for t, _ in seeds] + [text[:20_000]]
    for op in data.draw(mutations(others), label="mutations"):
        text = mutate(text, op, others)
    check_records(raw_parser(kind), text, "fuzz", **kwargs)


@pytest.mark.parametrize("kind", JSON_KINDS)
@fuzz(200)
@given(data=st.data())
def test_parser_answers_json_with_values_of_any_type_with_records_or_a_parse_error(kind, data):
    seeds = [
        (json.dumps(_trim(json.loads(t))), kw) for t, kw in SEEDS[kind] if t.lstrip()[:1] == "{"
    ]
    text, kwargs = seeds[data.draw(st.integers(0, len(seeds) - 1), label="seed")]
    text = data.draw(json_mutated([text]), label="json")
    check_records(raw_parser(kind), text, "fuzz", **kwargs)


# -- the node agent's own parsers ------------------------------------------------------------
def _texts(*paths: Path) -> list[str]:
    return [p.read_bytes().decode("utf-8", "replace") for p in paths if p.is_file()]


PROCFS = SHARED / "procfs"
V1_TREE = FIXTURES / "cgroup" / "v1-slurm-22.05-multislurmd"


def _job16(controller: str) -> Path:
    """Job 16's directory in one controller of the captured cgroup v1 tree."""
    return V1_TREE / controller / "slurm_node1" / "uid_2001" / "job_16"


NODE_PARSERS: dict[str, tuple[Any, list[str]]] = {
    "proc-stat": (
        procio.parse_stat,
        _texts(
            FIXTURES / "proc" / "13260" / "stat",
            PROCFS / "kellyjonbrazil_jc" / "pid_stat_w_space_and_nl_in_comm",
        ),
    ),
    "proc-io-counters": (procio.parse_counters, _texts(FIXTURES / "proc" / "13260" / "io")),
    "cgroup-procs": (
        cgroup.parse_pids,
        _texts(_job16("freezer") / "cgroup.procs", _job16("freezer") / "tasks"),
    ),
    "mountinfo": (
        nfs.mount_table,
        _texts(
            PROCFS / "kellyjonbrazil_jc" / "pid_mountinfo",
            PROCFS / "prometheus_node_exporter" / "proc_10_mountinfo",
        ),
    ),
    "proc-cgroup": (
        lambda text, source: gpu.job_of_cgroup(text),
        _texts(FIXTURES / "proc" / "13260" / "cgroup"),
    ),
    "sysstat-version": (
        lambda text, source: sysstat.sysstat_version(text),
        ["sysstat version 12.6.1\n(C) Sebastien Godard\n"],
    ),
}


@pytest.mark.parametrize("name", sorted(NODE_PARSERS))
@fuzz(150)
@given(data=st.data())
def test_node_parser_answers_a_mutated_capture_with_its_value_or_a_parse_error(name, data):
    fn, seeds = NODE_PARSERS[name]
    text = data.draw(st.one_of(mutated(seeds), st.text(max_size=200)) if seeds else st.text())
    try:
        with within(LIMIT_SECONDS):
            fn(text, "fuzz")
    except ParseError:
        pass


def _cgroup_files(version: int) -> dict[str, list[str]]:
    telegraf = SHARED / "cgroup" / "influxdata_telegraf"
    if version == 1:
        return {
            name: _texts(_job16(ctl) / name, telegraf / f"{ctl}_{name}")
            for ctl, name in cgroup.V1_FILES
        }
    return {name: _texts(telegraf / f"v2_{name}") for _, name in cgroup.V2_FILES}


@pytest.mark.parametrize("version", [1, 2])
@fuzz(150)
@given(data=st.data())
def test_cgroup_parse_job_turns_any_file_text_into_fields_and_problems(version, data):
    files = {name: texts for name, texts in _cgroup_files(version).items() if texts}
    if not files:
        # Skipped only where the shared captures are absent (a clone without ../shared); with
        # them present, a missing capture is a failure.
        assert not SHARED.is_dir(), f"no captured cgroup v{version} files in {SHARED}"
        pytest.skip(
            f"no captured cgroup v{version} files: their captures are in {SHARED}, absent here"
        )
    raw: dict[str, Any] = {}
    for name, texts in files.items():
        raw[name] = data.draw(
            st.one_of(
                mutated(texts),
                st.sampled_from(texts),
                st.none(),
                st.just(PermissionError(13, "denied")),
            ),
            label=name,
        )
    with within(LIMIT_SECONDS):
        parsed = cgroup.parse_job(raw, version)
    assert isinstance(parsed, cgroup.ParsedJob)


DIR_TREES = {
    "cgroup": V1_TREE,
    "hwmon": FIXTURES / "sys" / "hwmon-handmade-2socket-intel-nvme",
    "edac": FIXTURES / "sys" / "edac-handmade-skx-2socket",
}


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("trees")
    return {
        kind: shutil.copytree(src, base / kind, symlinks=True) for kind, src in DIR_TREES.items()
    }


@pytest.mark.parametrize("kind", sorted(DIR_TREES))
@fuzz(80)
@given(data=st.data())
def test_directory_parser_answers_a_tree_with_one_file_mutated(kind, trees, data):
    source = DIR_TREES[kind]
    files = sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file())
    rel = files[data.draw(st.integers(0, len(files) - 1), label="file")]
    original = (source / rel).read_bytes().decode("utf-8", "replace")
    text = data.draw(st.one_of(mutated([original]), st.text(max_size=100)), label="text")
    (trees[kind] / rel).write_bytes(text.encode())
    try:
        check_records(raw_parser(kind), str(trees[kind]))
    finally:
        shutil.copyfile(source / rel, trees[kind] / rel)


# -- the wire ------------------------------------------------------------------------------------
MSGPACK_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=10),
    st.binary(max_size=8),
    st.sampled_from([2**63, 2**64 - 1, -1, math.nan, math.inf, "\x00"]),
)
MSGPACK_KEYS = st.one_of(st.text(max_size=6), st.integers(-3, 3), st.binary(max_size=3), st.none())
MSGPACK_VALUES = st.recursive(
    MSGPACK_LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(MSGPACK_KEYS, inner, max_size=4)
    ),
    max_leaves=12,
)
NODES = st.one_of(st.sampled_from(["node1", "node2", "gpu-07.cluster"]), st.text(max_size=12))
KEYS = st.one_of(st.integers(0, 3), st.integers(-(2**63), 2**64 - 1), st.booleans())
TYPES = st.one_of(
    st.sampled_from(sorted(wire.AGENT_TYPES) + [wire.ACK, wire.VERDICT, "bogus"]),
    st.text(max_size=40),
)


def _pack(obj: Any) -> bytes:
    try:
        return msgpack.packb(obj, use_bin_type=True)
    except OverflowError:  # an integer msgpack cannot carry: no agent could ever send it
        reject()


def byte_mutated(data: bytes, ops: list[tuple[int, float, bytes]]) -> bytes:
    """DATA with, per op, a bit flipped, bytes inserted, a span deleted, or the rest cut."""
    b = bytearray(data)
    for what, where, arg in ops:
        i = min(int(where * (len(b) + 1)), len(b))
        if what == 0 and b:
            b[min(i, len(b) - 1)] ^= 1 << (len(arg) % 8)
        elif what == 1:
            b[i:i] = arg
        elif what == 2:
            del b[i : i + 1 + len(arg)]
        else:
            del b[i:]
    return bytes(b)


BYTE_OPS = st.lists(
    st.tuples(st.integers(0, 3), st.floats(0, 1), st.binary(max_size=6)), min_size=1, max_size=5
)


def check_unpack(data: bytes) -> None:
    try:
        with within(LIMIT_SECONDS):
            env = wire.unpack(data)
    except wire.WireError:
        return
    assert isinstance(env, wire.Envelope)


@fuzz(500)
@given(data=st.binary(max_size=512))
def test_unpack_answers_arbitrary_bytes_with_an_envelope_or_a_wire_error(data):
    check_unpack(data)


ENVELOPES = st.builds(
    lambda t, n, e, s, p: wire.Envelope(t, n, e, s, p).pack(),
    TYPES,
    NODES,
    st.integers(0, 2**63 - 1),
    st.integers(0, 2**63 - 1),
    MSGPACK_VALUES,
)


@fuzz(500)
@given(data=ENVELOPES, ops=BYTE_OPS)
def test_unpack_answers_a_mutated_envelope_with_an_envelope_or_a_wire_error(data, ops):
    check_unpack(byte_mutated(data, ops))


@fuzz(500)
@given(
    head=st.lists(
        st.one_of(MSGPACK_VALUES, st.just(wire.VERSION), TYPES, NODES, st.lists(KEYS, max_size=3)),
        max_size=7,
    )
)
def test_unpack_answers_any_msgpack_array_with_an_envelope_or_a_wire_error(head):
    check_unpack(_pack(head))


def test_unpack_answers_deep_nesting_and_huge_claimed_lengths_with_a_wire_error():
    prefix = b"\x95\x01\xa7samples\xa5node1\x92\x01\x01"
    for data in (
        b"\x91" * 100_000 + b"\xc0",
        prefix + b"\x91" * 100_000 + b"\xc0",
        prefix + b"\xdd\xff\xff\xff\xff",
        prefix + b"\xdb\xff\xff\xff\xff",
        prefix + b"\xc6\x7f\xff\xff\xff",
    ):
        check_unpack(data)


# -- the envelope ingest -------------------------------------------------------------------------
NOW = 1_700_000_000.0
SAMPLE_VALUES = st.one_of(
    st.none(),
    st.integers(0, 2**40),
    st.floats(0, 1e12),
    st.sampled_from(
        [
            math.nan,
            math.inf,
            -math.inf,
            -1,
            -0.0,
            2**63 - 1,
            2**63,
            2**64 - 1,
            "",
            "12",
            {},
            {"a": 1},
            [],
            True,
            False,
            b"",
            b"\x00",
        ]
    ),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=4),
)
JOB_IDS = st.one_of(st.integers(0, 5), SAMPLE_VALUES)
TIMES = st.one_of(st.floats(NOW - 100, NOW + 100), SAMPLE_VALUES)
PLAUSIBLE = st.one_of(st.none(), st.integers(0, 2**40), st.floats(0, 1e12))


def _row(parts: tuple[Any, Any, list[Any], list[tuple[int, Any]]]) -> list[Any]:
    job_id, t, values, replaced = parts
    row = [job_id, t, *values]
    for i, value in replaced:
        row[i] = value
    return row


# A row of plausible values with a few of them replaced by anything, or any list.
ROWS = st.one_of(
    st.tuples(
        JOB_IDS,
        TIMES,
        st.lists(PLAUSIBLE, min_size=18, max_size=18),
        st.lists(st.tuples(st.integers(0, 19), SAMPLE_VALUES), max_size=2),
    ).map(_row),
    st.lists(SAMPLE_VALUES, max_size=22),
)
PAYLOADS = {
    wire.SAMPLES: st.fixed_dictionaries({"rows": st.lists(ROWS, max_size=6)}),
    wire.JOB_EVENT: st.fixed_dictionaries(
        {"event": st.sampled_from(["start", "end", "resume", ""]), "job_id": JOB_IDS, "t": TIMES},
        optional={"user": st.text(max_size=8), "uid": SAMPLE_VALUES, "extra": MSGPACK_VALUES},
    ),
    wire.READINGS: st.fixed_dictionaries(
        {
            "collector": st.one_of(st.sampled_from(["pressure", "gpu"]), st.text(max_size=70)),
            "t": TIMES,
            "seconds": SAMPLE_VALUES,
            "records": st.lists(
                st.dictionaries(st.text(max_size=8), MSGPACK_VALUES, max_size=3), max_size=3
            ),
        }
    ),
    wire.HEARTBEAT: st.fixed_dictionaries(
        {
            "t": TIMES,
            "jobs": st.lists(JOB_IDS, max_size=3),
            "outbox_depth": SAMPLE_VALUES,
            "dropped": SAMPLE_VALUES,
        },
        optional={
            "collectors": st.dictionaries(
                st.one_of(st.text(max_size=8), st.integers()),
                st.one_of(st.lists(SAMPLE_VALUES, min_size=8, max_size=8), MSGPACK_VALUES),
                max_size=3,
            )
        },
    ),
    wire.HELLO: st.fixed_dictionaries(
        {
            "host": st.one_of(st.text(max_size=8), SAMPLE_VALUES),
            "agent_version": SAMPLE_VALUES,
            "interval_seconds": SAMPLE_VALUES,
            "started": TIMES,
        }
    ),
}


@st.composite
def agent_messages(draw: Any) -> bytes:
    mtype = draw(st.one_of(st.sampled_from(sorted(PAYLOADS)), TYPES))
    body = draw(PAYLOADS[mtype] if mtype in PAYLOADS else MSGPACK_VALUES)
    if mtype in PAYLOADS and draw(st.integers(0, 9)) == 0:
        body = draw(MSGPACK_VALUES)
    version = draw(st.one_of(st.just(wire.VERSION), MSGPACK_LEAVES)) if draw(st.booleans()) else 1
    data = _pack([version, mtype, draw(NODES), [draw(KEYS), draw(KEYS)], body])
    r = draw(st.integers(0, 9))
    if r == 0:
        return draw(st.binary(max_size=64))
    return byte_mutated(data, draw(BYTE_OPS)) if r == 1 else data


WATCHED = (
    "sample_log",  # where ingest lands samples (read whole through store.all_samples below)
    "jobs",
    "received",
    "readings_latest",
    "readings",
    "nodes",
    "collector_status",
)
REFUSAL_EVENTS = ("bad_message", "envelope_refused")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def off_bounds(sample: tuple) -> bool:
    """Whether SAMPLE (a row of store.all_samples: job_uid, node, t, readings) holds what no
    acknowledged sample may: t not a number, or a reading neither a number >= 0 nor None."""
    return not _number(sample[2]) or any(
        v is not None and (not _number(v) or v < 0) for v in sample[3:]
    )


def stored(conn: sqlite3.Connection) -> dict[str, Any]:
    """What an envelope may store: every row of the tables it writes (the refusal's own
    events and the counters aside)."""
    rows = {t: sorted(map(tuple, conn.execute(f"SELECT * FROM {t}")), key=repr) for t in WATCHED}
    rows["samples"] = store.all_samples(conn)
    marks = ", ".join("?" * len(REFUSAL_EVENTS))
    rows["events"] = sorted(
        map(
            tuple, conn.execute(f"SELECT * FROM events WHERE kind NOT IN ({marks})", REFUSAL_EVENTS)
        ),
        key=repr,
    )
    return rows


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A migrated, empty store that each example starts from a copy of."""
    path = tmp_path_factory.mktemp("store") / "template.db"
    open_store(str(path)).close()
    return path


def take_all(template: Path, messages: list[bytes]) -> None:
    """MESSAGES taken one by one, each in its transaction, by a fresh Ingest on a fresh store
    (a copy of TEMPLATE), each answer checked."""
    path = template.with_name("fuzz.db")
    shutil.copyfile(template, path)
    conn, ingest = open_store(str(path)), Ingest("cluster")
    try:
        for n, data in enumerate(messages):
            before = stored(conn)
            conn.execute("BEGIN")
            try:
                with within(LIMIT_SECONDS):
                    answer = ingest.take(conn, data, NOW + n)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            assert answer.kind in ("ack", "nack", "live", "drop"), answer
            if answer.kind in ("nack", "drop"):
                assert stored(conn) == before, f"{answer.kind} ({answer.reason}) stored rows"
            if answer.kind == "ack":
                env = answer.env
                key = (env.node, env.epoch, env.seq)
                assert conn.execute(
                    "SELECT 1 FROM received WHERE node = ? AND epoch = ? AND seq = ?", key
                ).fetchone(), key
                bad = next(filter(off_bounds, store.all_samples(conn)), None)
                assert bad is None, f"ack stored a sample out of bounds: {bad}"
    finally:
        conn.close()


@fuzz(300)
@given(messages=st.lists(agent_messages(), min_size=1, max_size=4))
def test_ingest_answers_every_envelope_and_stores_nothing_of_a_refused_one(template, messages):
    take_all(template, messages)


# Samples of known jobs at plausible times, a value or two of a row replaced by anything.
SAMPLE_ROWS = st.tuples(
    st.integers(0, 5),
    st.floats(NOW - 100, NOW + 100),
    st.lists(PLAUSIBLE, min_size=18, max_size=18),
    st.lists(st.tuples(st.integers(2, 19), SAMPLE_VALUES), max_size=2),
).map(_row)


@fuzz(200)
@given(envelopes=st.lists(st.lists(SAMPLE_ROWS, min_size=1, max_size=3), min_size=1, max_size=3))
def test_ingest_acknowledges_only_samples_within_bounds(template, envelopes):
    take_all(
        template,
        [
            wire.Envelope(wire.SAMPLES, "node1", 1, seq, {"rows": rows}).pack()
            for seq, rows in enumerate(envelopes)
        ],
    )
