"""Every input gets an answer within bounds: what a user controls reaches the administrator's
terminal without control characters, JSON nested too deep is one line (never a traceback, never
retried for ever), and the reports directory sets aside what is not a regular file without
blocking or writing through a planted link."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from aggregator import store
from aggregator.daemon import api
from aggregator.store import Ingest
from nomade_common import jsonin
from nomade_common.reportdir import MAX_REPORT_DEPTH, ReportDir

ROOT = Path(__file__).resolve().parents[1]

# An OSC title change, a bell, a screen clear, a C1 CSI, a bidi override: each acts on a terminal.
EVIL_NAME = "train\x1b]0;pwned\x07\x1b[2J\x9b31m\u202emodel"
CONTROLS = [chr(c) for c in (*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0))]
CONTROLS += ["\u200e", "\u200f", *map(chr, range(0x2028, 0x202F)), *map(chr, range(0x2066, 0x206A))]


def nomadectl(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """The command as an administrator runs it: its own process, its real stdout and stderr."""
    return subprocess.run(
        [sys.executable, "-m", "nomadectl", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        timeout=60,
    )


def text(raw: bytes) -> str:
    return raw.decode("utf-8")


def terminal_safe(out: str) -> bool:
    return not any(c in out for c in CONTROLS)


# -- 1. no control characters reach the terminal ------------------------------------------------
@pytest.fixture
def site(tmp_path) -> Path:
    """A configuration whose store holds job 42, named and owned with escape sequences."""
    cfg = tmp_path / "nomade.toml"
    cfg.write_text(f'[general]\ncluster_name = "c"\ndata_dir = "{tmp_path}/data"\n')
    conn = store.open_store(str(tmp_path / "data" / "nomade.db"))
    fields = {
        "job_id": 42,
        "submit_time": 1_000.0,
        "start_time": 1_010.0,
        "job_name": EVIL_NAME,
        "user": "eve\x1b[8m",
        "partition": "gpu\x07",
        "work_dir": "/home/eve/\x1b[2J",
    }
    Ingest("c").upsert_job(conn, fields, 1_020.0)
    conn.close()
    return cfg


@pytest.mark.skipif(os.geteuid() != 0, reason="only root's nomadectl reads the store itself")
def test_job_and_jobs_print_a_job_name_without_its_escape_sequences(site):
    shown = nomadectl("--config", str(site), "job", "42")
    assert shown.returncode == 0, shown.stderr
    out = text(shown.stdout)
    assert terminal_safe(out)
    # What is printable shows (click drops whole CSI sequences, ESC[2J; the rest loses its ESC).
    title = out.splitlines()[0]
    assert title.startswith("Job 42  train]0;pwned") and title.endswith("31mmodel")
    assert out.splitlines()[1] == "  user eve  account -  partition gpu"
    listed = nomadectl("--config", str(site), "jobs")
    assert listed.returncode == 0, listed.stderr
    assert terminal_safe(text(listed.stdout))
    assert text(listed.stdout).splitlines()[1].split()[:3] == ["42", "eve", "gpu"]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root's nomadectl reads the store itself")
def test_json_output_stays_valid_json_and_keeps_the_name_as_it_was(site):
    for args in (("job", "42", "--json"), ("jobs", "--json")):
        proc = nomadectl("--config", str(site), *args)
        assert proc.returncode == 0, proc.stderr
        assert terminal_safe(text(proc.stdout))  # JSON escapes them: \u001b, never a raw ESC
        doc = json.loads(proc.stdout)
        job = doc if isinstance(doc, dict) else doc[0]
        assert job["job_name"] == EVIL_NAME and job["user"] == "eve\x1b[8m"


def test_an_error_line_naming_user_text_reaches_stderr_without_control_characters(tmp_path):
    name = tmp_path / "squeue\x1b]0;pwned\x07\x1b[2J.txt"
    proc = nomadectl("parse", "squeue", str(name))
    err = text(proc.stderr)
    assert proc.returncode == 2 and terminal_safe(err)
    assert err.startswith(f"nomadectl parse squeue: {tmp_path}/squeue]0;pwned")
    assert err.endswith(".txt: cannot read (No such file or directory)\n") and err.count("\n") == 1


# -- 2. JSON nested too deep: one line ----------------------------------------------------------
DEEP_ARRAY = ("[" * 50_000 + "]" * 50_000).encode()
DEEP_OBJECT = ('{"a": ' * 50_000 + "1" + "}" * 50_000).encode()


@pytest.mark.parametrize(
    "kind, doc",
    [
        ("squeue-json", DEEP_ARRAY),
        ("sacct-json", DEEP_OBJECT),
        ("sinfo-json", DEEP_ARRAY),
        ("sdiag", DEEP_OBJECT),
        ("iostat-json", DEEP_OBJECT),
        ("mpstat-json", DEEP_ARRAY),
    ],
    ids=lambda v: v if isinstance(v, str) else "array" if v[:1] == b"[" else "object",
)
def test_parse_of_json_nested_50000_deep_is_one_line(tmp_path, kind, doc):
    path = tmp_path / "deep.json"
    path.write_bytes(doc)
    proc = nomadectl("parse", kind, str(path))
    assert proc.returncode == 2
    assert (
        text(proc.stderr) == f"nomadectl parse {kind}: {path}: JSON nested deeper than 64 levels\n"
    )
    assert proc.stdout == b""
    from_stdin = nomadectl("parse", kind, "-", stdin=doc)
    assert from_stdin.returncode == 2
    assert (
        text(from_stdin.stderr) == f"nomadectl parse {kind}: -: JSON nested deeper than 64 levels\n"
    )


def test_parse_reads_slurm_json_as_deep_as_slurm_nests_it(tmp_path):
    leaf: dict = {}
    deep = leaf
    for _ in range(60):  # {"jobs": [{"extra": ...}]} is 3 deep, the 61 below it: 64 in all
        deep = {"x": deep}
    job = {
        "job_id": 7,
        "job_state": "RUNNING",
        "user_name": "alice",
        "partition": "gpu",
        "extra": deep,
    }
    path = tmp_path / "squeue.json"
    path.write_text(json.dumps({"jobs": [job]}))
    proc = nomadectl("parse", "squeue-json", str(path))
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["job_id"] for line in proc.stdout.splitlines()] == ["7"]
    leaf["x"] = {}  # one level more
    path.write_text(json.dumps({"jobs": [job]}))
    proc = nomadectl("parse", "squeue-json", str(path))
    assert proc.returncode == 2 and b"nested deeper than 64 levels" in proc.stderr


def test_the_depth_scan_counts_brackets_outside_strings_only():
    assert jsonin.loads('[[["]]]]]]]]"]]]', 3) == [[["]]]]]]]]"]]]
    assert jsonin.loads(json.dumps({"a": '\\"[[[[[[[', "b": "{{{{"}), 1)["b"] == "{{{{"
    assert jsonin.loads(b'{"a": [1, {"b": []}]}', 4) == {"a": [1, {"b": []}]}
    with pytest.raises(ValueError, match="JSON nested deeper than 3 levels"):
        jsonin.loads(b'{"a": [1, {"b": []}]}', 3)
    with pytest.raises(jsonin.TooDeep):
        jsonin.loads("[" * 100_000, 64)  # never closed: refused for its depth all the same
    with pytest.raises(jsonin.TooDeep):  # a limit beyond Python's recursion: still a ValueError
        jsonin.loads("[" * 20_000 + "]" * 20_000, 100_000)
    with pytest.raises(json.JSONDecodeError):
        jsonin.loads('{"a": ', 64)
    with pytest.raises(ValueError, match="nested deeper than 32 levels"):
        api.parse_json(DEEP_OBJECT)


@pytest.mark.parametrize(
    "doc",
    [
        "[]" * 500_000,
        "[" * 1_000_000,
        "[" * 500_000 + "]" * 500_000,
        "[" + ",".join(["[" * 63 + "]" * 63] * 7_800) + "]",
        json.dumps('\\"[' * 333_333),
    ],
    ids=["flat", "open", "chain", "64-deep-wide", "escapes"],
)
def test_the_depth_scan_of_a_megabyte_takes_milliseconds(doc):
    start = time.perf_counter()
    jsonin.deeper_than(doc, 64)
    assert time.perf_counter() - start < 0.5  # about 10-35 ms measured


# -- 3. the reports directory -------------------------------------------------------------------
def report(path: Path, job_id: int) -> None:
    path.write_text(
        json.dumps({"kind": "prologslurmctld", "env": {"SLURM_JOB_ID": str(job_id)}}) + "\n"
    )


def read_in_time(d: ReportDir) -> list[str]:
    """The names ready() gives, read in a thread: a reader blocked on a FIFO fails the test."""
    names: list[str] = []
    reader = threading.Thread(
        target=lambda: names.extend(p.name for p, _ in d.ready()), daemon=True
    )
    reader.start()
    reader.join(5)
    assert not reader.is_alive(), "the reports directory blocked its reader"
    return names


@pytest.mark.parametrize("trusted", [None, "self"])
def test_a_fifo_and_a_link_named_like_reports_are_set_aside_and_the_rest_is_read(tmp_path, trusted):
    reports = tmp_path / "reports"
    reports.mkdir(mode=0o700)
    os.mkfifo(reports / "1-x.json")
    (reports / "2-y.json").symlink_to("/etc/passwd")
    elsewhere = tmp_path / "elsewhere.json"  # a valid report, reached only through a link
    report(elsewhere, 9)
    (reports / "3-z.json").symlink_to(elsewhere)
    report(reports / "4-good.json", 4)
    passwd = Path("/etc/passwd").read_bytes()
    d = ReportDir(reports, None if trusted is None else frozenset({os.geteuid()}))
    start = time.monotonic()
    assert read_in_time(d) == ["4-good.json"]
    assert time.monotonic() - start < 2
    bad = reports / "bad"
    assert stat.S_ISFIFO(os.lstat(bad / "1-x.json").st_mode)
    assert os.readlink(bad / "2-y.json") == "/etc/passwd"
    assert os.readlink(bad / "3-z.json") == str(elsewhere)
    assert Path("/etc/passwd").read_bytes() == passwd and elsewhere.exists()
    assert stat.S_IMODE(os.stat(bad).st_mode) == 0o700
    assert read_in_time(d) == ["4-good.json"]  # the directory keeps being read


def test_a_report_nested_too_deep_is_set_aside_once_not_retried(tmp_path, caplog):
    deep = tmp_path / "1-deep.json"
    deep.write_text('{"a": ' * 50_000 + "1" + "}" * 50_000 + "\n")
    ok = tmp_path / "2-ok.json"
    ok.write_text('{"a": ' * (MAX_REPORT_DEPTH - 1) + "1" + "}" * (MAX_REPORT_DEPTH - 1) + "\n")
    d = ReportDir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="nomade.reports"):
        assert read_in_time(d) == ["2-ok.json"]
        ok.unlink()
        assert read_in_time(d) == []
    assert (tmp_path / "bad" / "1-deep.json").exists() and not deep.exists()
    (line,) = [r.getMessage() for r in caplog.records]
    assert f"nested deeper than {MAX_REPORT_DEPTH} levels" in line and "moved to" in line


def planted_link(reports: Path, tmp_path: Path) -> Path:
    target = tmp_path / "target"
    target.mkdir()
    (reports / "bad").symlink_to(target, target_is_directory=True)
    return target


def planted_file(reports: Path, tmp_path: Path) -> Path:
    (reports / "bad").write_text("mine\n")
    return reports / "bad"


def planted_fifo(reports: Path, tmp_path: Path) -> Path:
    os.mkfifo(reports / "bad")
    return reports / "bad"


@pytest.mark.parametrize("plant", [planted_link, planted_file, planted_fifo])
@pytest.mark.parametrize("trusted", [None, "self"])
def test_a_planted_bad_is_never_written_through_the_report_is_removed(
    tmp_path, caplog, plant, trusted
):
    reports = tmp_path / "reports"
    reports.mkdir(mode=0o700)
    planted = plant(reports, tmp_path)
    before = sorted(os.listdir(planted)) if planted.is_dir() else os.lstat(planted)
    (reports / "1-broken.json").write_text("not json\n")
    report(reports / "2-good.json", 2)
    d = ReportDir(reports, None if trusted is None else frozenset({os.geteuid()}))
    with caplog.at_level(logging.WARNING, logger="nomade.reports"):
        assert read_in_time(d) == ["2-good.json"]
    assert not (reports / "1-broken.json").exists()
    assert (sorted(os.listdir(planted)) if planted.is_dir() else os.lstat(planted)) == before
    (line,) = [r.getMessage() for r in caplog.records]
    assert "1-broken.json unreadable" in line and "removed, not moved" in line
    assert "is a link or not a directory" in line


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to other uids needs root")
def test_a_bad_directory_of_another_user_is_not_written_to(tmp_path, caplog):
    reports = tmp_path / "reports"
    reports.mkdir(mode=0o700)
    (reports / "bad").mkdir()
    os.chown(
        reports / "bad", 4242, 4242
    )  # as if a user had made it before the directory was locked
    (reports / "1-broken.json").write_text("not json\n")
    with caplog.at_level(logging.WARNING, logger="nomade.reports"):
        assert read_in_time(ReportDir(reports, frozenset({0}))) == []
    assert os.listdir(reports / "bad") == [] and not (reports / "1-broken.json").exists()
    (line,) = [r.getMessage() for r in caplog.records]
    assert "removed, not moved" in line and "belongs to uid 4242" in line
    # One of a trusted uid (the SlurmUser's, made when it read the reports itself) takes it.
    (reports / "2-broken.json").write_text("not json\n")
    assert read_in_time(ReportDir(reports, frozenset({0, 4242}))) == []
    assert os.listdir(reports / "bad") == ["2-broken.json"]
