"""/proc/<pid>/io and /proc/<pid>/stat parsers, on real captured files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from collectors import procio
from nomade_common.errors import ParseError

SHARED = Path(
    os.environ.get("NOMADE_SHARED_FIXTURES")
    or Path(__file__).resolve().parents[2] / "shared" / "fixtures"
)
LIVE = Path(__file__).parent / "fixtures" / "cgroup" / "v1-slurm-22.05-node1-live"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} absent")


def shared(rel: str) -> str:
    return (SHARED / rel).read_text()


@needs_shared
def test_parse_io_jc_capture():
    assert procio.parse(shared("procfs/kellyjonbrazil_jc/pid_io")) == {
        "read_bytes": 168468480,
        "write_bytes": 27357184,
        "rchar": 4699288382,
        "wchar": 2931802997,
        "syscr": 661897,
        "syscw": 890910,
    }


@needs_shared
def test_parse_io_skips_unknown_and_negative_cancelled_write_bytes():
    io = procio.parse(shared("procfs/prometheus_procfs/fixtures/proc/26231/io"))
    assert io["write_bytes"] == 2048 and io["rchar"] == 750339 and "cancelled_write_bytes" not in io


@needs_shared
@pytest.mark.parametrize(
    "rel, ppid, start",
    [
        ("procfs/kellyjonbrazil_jc/pid_stat", 0, 128),
        ("procfs/kellyjonbrazil_jc/pid_stat_w_space_and_nl_in_comm", 1888, 75513),
        ("procfs/prometheus_procfs/fixtures/proc/26231/stat", 5392, 82375),
        ("procfs/prometheus_procfs/fixtures/proc/26232/stat", 2, 5),
    ],
)
def test_parse_stat(rel, ppid, start):
    text = shared(rel)
    assert procio.parse_stat(text) == (ppid, start)
    assert procio.parse_starttime(text) == start


@needs_shared
def test_parse_stat_comm_with_parentheses_and_spaces():
    text = shared("procfs/prometheus_procfs/fixtures/proc/26231/stat").replace(
        "(vim)", "(a) b) (c)"
    )
    assert procio.parse_stat(text) == (5392, 82375)


@needs_shared
@pytest.mark.parametrize(
    "rel", ["cgroup/influxdata_telegraf/broken_malformed.file", "procfs/kellyjonbrazil_jc/pid_stat"]
)
def test_parse_io_rejects_other_files(rel):
    with pytest.raises(ParseError):
        procio.parse(shared(rel))


@needs_shared
@pytest.mark.parametrize(
    "rel",
    [
        "cgroup/treydock_cgroup_exporter/fixtures/stat.invalid",
        "procfs/kellyjonbrazil_jc/pid_io",
        "cgroup/influxdata_telegraf/memory_memory.empty",
    ],
)
def test_parse_stat_rejects_other_files(rel):
    with pytest.raises(ParseError):
        procio.parse_stat(shared(rel))


def test_read_live_capture_and_missing_pid():
    proc = str(LIVE / "proc")
    io = procio.parse(procio.read(proc, 6975))
    assert io["write_bytes"] == 52441088  # the shell that reaped dd carries dd's 50 MB
    assert procio.parse_starttime(procio.read_stat(proc, 6976)) == 139390
    assert procio.read(proc, 999999) is None and procio.read_stat(proc, 999999) is None


def test_read_text_reads_past_one_page(tmp_path):
    path = tmp_path / "big"
    text = "".join(f"{pid}\n" for pid in range(100000, 120000))  # 140 kB, several reads
    path.write_text(text)
    assert procio.read_text(str(path)) == text
