"""cgroup layout discovery and parsers, on real captured cgroup trees and files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from collectors import cgroup
from nomade_common.errors import ParseError

SHARED = Path(
    os.environ.get("NOMADE_SHARED_FIXTURES")
    or Path(__file__).resolve().parents[2] / "shared" / "fixtures"
)
TREY = SHARED / "cgroup" / "treydock_cgroup_exporter" / "fixtures"
TELEGRAF = SHARED / "cgroup" / "influxdata_telegraf"
LIVE = Path(__file__).parent / "fixtures" / "cgroup" / "v1-slurm-22.05-node1-live"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} absent")


def v2_root(tmp_path: Path, scope: str = "slurmstepd.scope", under: str = "") -> str:
    """A cgroup root whose system.slice/<scope> is the shared v2 capture (linked, not copied)."""
    root = tmp_path / "cg"
    (root / under / "system.slice").mkdir(parents=True)
    (root / under / "system.slice" / scope).symlink_to(TREY / "system.slice" / "slurmstepd.scope")
    return str(root)


def telegraf(name: str) -> str:
    return (TELEGRAF / name).read_text()


# -- conformance over every job directory of the shared trees --------------------------------------


def _v1_dirs() -> list[Path]:
    base = TREY / "memory" / "slurm"
    return sorted(p for p in base.glob("uid_*/job_*/**") if p.is_dir()) if base.is_dir() else []


def _v2_dirs() -> list[Path]:
    base = TREY / "system.slice" / "slurmstepd.scope"
    return sorted(p for p in base.glob("job_*/**") if p.is_dir()) if base.is_dir() else []


@needs_shared
@pytest.mark.parametrize("mem_dir", _v1_dirs(), ids=str)
def test_every_v1_job_directory_parses(mem_dir):
    rel = mem_dir.relative_to(TREY / "memory")
    layout = cgroup.discover(str(TREY), "anynode")
    dirs = {"memory": str(mem_dir), "cpuacct": str(TREY / "cpuacct" / rel)}
    fields, problems = cgroup.parse_job(cgroup.read_job(layout, dirs), 1)
    assert problems == []
    assert isinstance(fields["mem_current_bytes"], int) and fields["mem_current_bytes"] >= 0
    assert isinstance(fields["cpu_usage_seconds"], float)
    assert fields["mem_rss_bytes"] is not None and fields["mem_cache_bytes"] is not None
    assert fields["cgroup_read_bytes"] is None  # no blkio hierarchy in that capture


@needs_shared
@pytest.mark.parametrize("job_dir", _v2_dirs(), ids=str)
def test_every_v2_job_directory_parses(job_dir, tmp_path):
    layout = cgroup.discover(v2_root(tmp_path), "anynode")
    fields, problems = cgroup.parse_job(cgroup.read_job(layout, {"unified": str(job_dir)}), 2)
    assert problems == []
    assert isinstance(fields["cpu_usage_seconds"], float)
    assert isinstance(fields["mem_current_bytes"], int)
    assert fields["mem_rss_bytes"] is not None


# -- values read by hand ---------------------------------------------------------------------------


@needs_shared
def test_v1_job_values_read_by_hand():
    layout = cgroup.discover(str(TREY), "anynode")
    jobs = cgroup.list_jobs(layout)
    assert sorted(jobs) == [10, 11]
    fields, problems = cgroup.parse_job(cgroup.read_job(layout, jobs[10]), 1)
    assert problems == []
    assert fields == {
        "cpu_usage_seconds": 7710215 / 1e9,
        "cpu_user_seconds": 0.0,
        "cpu_system_seconds": 0.0,
        "mem_current_bytes": 356352,
        "mem_peak_bytes": 552960,
        "mem_rss_bytes": 311296,  # total_rss, not the job dir's own rss 0
        "mem_cache_bytes": 4096,
        "mem_swap_bytes": 0,
        "mem_limit_bytes": 2147483648,
        "cgroup_read_bytes": None,
        "cgroup_write_bytes": None,
    }
    assert cgroup.job_pids(layout, jobs[11]) == [177773, 177788, 177819, 177820, 177837, 177838]


@needs_shared
def test_v2_job_values_read_by_hand(tmp_path):
    layout = cgroup.discover(v2_root(tmp_path), "anynode")
    jobs = cgroup.list_jobs(layout)
    assert list(jobs) == [4]  # system/ holds slurmstepd itself, not a job
    fields, problems = cgroup.parse_job(cgroup.read_job(layout, jobs[4]), 2)
    assert problems == []
    assert fields == {
        "cpu_usage_seconds": 0.126686,
        "cpu_user_seconds": 0.049043,
        "cpu_system_seconds": 0.077642,
        "mem_current_bytes": 5660672,
        "mem_peak_bytes": 7229440,
        "mem_rss_bytes": 2260992,
        "mem_cache_bytes": 516096,
        "mem_swap_bytes": 0,
        "mem_limit_bytes": 1835008000,
        "cgroup_read_bytes": None,  # no io.stat: the io controller is not enabled there
        "cgroup_write_bytes": None,
    }
    assert cgroup.job_pids(layout, jobs[4]) == [49249, 49253, 49256, 49276, 49334]


def test_live_v1_capture_values():
    layout = cgroup.discover(str(LIVE), "node1")
    assert layout.version == 1 and layout.primary == "memory"
    assert dict(layout.dirs) == {
        "memory": f"{LIVE}/memory/slurm_node1",
        "cpuacct": f"{LIVE}/cpuacct/slurm_node1",
    }
    jobs = cgroup.list_jobs(layout)
    assert list(jobs) == [3]
    fields, problems = cgroup.parse_job(cgroup.read_job(layout, jobs[3]), 1, user_hz=100)
    assert problems == []
    assert fields["mem_peak_bytes"] == 275140608 and fields["mem_limit_bytes"] == 524288000
    assert fields["mem_rss_bytes"] == 213196800 and fields["mem_cache_bytes"] == 46743552
    assert fields["cpu_usage_seconds"] == 0.585527179
    assert (fields["cpu_user_seconds"], fields["cpu_system_seconds"]) == (0.02, 0.56)
    # slurmstepd (6964, 6971) sits in the step directories of the memory hierarchy
    assert cgroup.job_pids(layout, jobs[3]) == [6964, 6968, 6971, 6975, 6976]


# -- discovery -------------------------------------------------------------------------------------


def test_discover_never_assumes_the_node_root():
    assert cgroup.discover(str(LIVE), "node2") is None  # only slurm_node1 is there


def test_discover_nothing_yet(tmp_path):
    assert cgroup.discover(str(tmp_path), "node1") is None


@needs_shared
@pytest.mark.parametrize(
    "scope, under",
    [
        ("slurmstepd.scope", ""),
        ("node7_slurmstepd.scope", ""),
        ("slurmstepd.scope", "unified"),
        ("node7_slurmstepd.scope", "unified"),
    ],
)
def test_discover_v2_variants(tmp_path, scope, under):
    root = v2_root(tmp_path, scope, under)
    layout = cgroup.discover(root, "node7")
    expected = os.path.join(root, under, "system.slice", scope) if under else None
    assert layout.version == 2
    assert layout.dirs[0][1] == (expected or f"{root}/system.slice/{scope}")
    assert list(cgroup.list_jobs(layout)) == [4]


@needs_shared
def test_discover_prefers_the_node_scope(tmp_path):
    root = v2_root(tmp_path, "node7_slurmstepd.scope")
    (Path(root) / "system.slice" / "slurmstepd.scope").mkdir()
    assert cgroup.discover(root, "node7").dirs[0][1].endswith("/node7_slurmstepd.scope")
    assert cgroup.discover(root, "node8").dirs[0][1].endswith("/system.slice/slurmstepd.scope")


@needs_shared
def test_discover_combined_cpu_cpuacct_mount(tmp_path):
    (tmp_path / "memory").symlink_to(TREY / "memory")
    (tmp_path / "cpu,cpuacct").symlink_to(TREY / "cpuacct")
    layout = cgroup.discover(str(tmp_path), "x")
    assert dict(layout.dirs)["cpuacct"] == f"{tmp_path}/cpu,cpuacct/slurm"
    fields, _ = cgroup.parse_job(cgroup.read_job(layout, cgroup.list_jobs(layout)[10]), 1)
    assert fields["cpu_usage_seconds"] == 7710215 / 1e9


# -- single files, including broken ones -----------------------------------------------------------


@needs_shared
def test_telegraf_v2_files():
    assert cgroup.parse_cpu_stat_v2(telegraf("v2_cpu.stat"))["cpu_usage_seconds"] == 98701.325189
    assert cgroup.parse_memory_stat_v2(telegraf("v2_memory.stat")) == {
        "mem_rss_bytes": 2471755776,
        "mem_cache_bytes": 8532865024,
    }
    assert cgroup.parse_io_stat_v2(telegraf("v2_io.stat")) == {
        "cgroup_read_bytes": 74526720,
        "cgroup_write_bytes": 3789381632,
    }
    assert cgroup.parse_max_v2(telegraf("v2_memory.max")) == 103079215104
    assert cgroup.parse_max_v2(telegraf("v2_memory.high")) is None  # "max"
    assert cgroup.parse_int(telegraf("v2_memory.peak"), "memory.peak") == 87302021120


@needs_shared
def test_telegraf_v1_files():
    # no total_* keys: fall back to the cgroup's own rss/cache/swap
    assert cgroup.parse_memory_stat_v1(telegraf("memory_memory.stat")) == {
        "mem_rss_bytes": 1775325184,
        "mem_cache_bytes": 1739362304123123123,
        "mem_swap_bytes": None,
    }
    assert cgroup.parse_limit_v1(telegraf("memory_memory.kmem.limit_in_bytes")) is None
    assert cgroup.parse_limit_v1(telegraf("memory_memory.limit_in_bytes")) == 223372036854771712
    blkio = cgroup.parse_blkio_v1(telegraf("blkio_blkio.throttle.io_serviced"))
    assert blkio["cgroup_read_bytes"] >= 49134 and blkio["cgroup_write_bytes"] >= 216703
    assert cgroup.parse_blkio_v1(telegraf("blkio_blkio.io_serviced")) == {
        "cgroup_read_bytes": 0,
        "cgroup_write_bytes": 0,
    }


@needs_shared
@pytest.mark.parametrize(
    "name, parser",
    [
        ("memory_memory.max_usage_in_bytes", lambda t: cgroup.parse_int(t, "x")),  # 3 lines
        ("memory_memory.empty", lambda t: cgroup.parse_int(t, "x")),
        ("broken_malformed.file", lambda t: cgroup.parse_int(t, "x")),
        ("broken_malformed.file", cgroup.parse_memory_stat_v1),
        ("broken_malformed.file", cgroup.parse_cpu_stat_v2),
        ("broken_malformed.file", cgroup.parse_io_stat_v2),
        ("broken_malformed.file", cgroup.parse_blkio_v1),
        ("v2_cpu.pressure", cgroup.parse_memory_stat_v2),
    ],
)
def test_broken_files_raise_parse_error(name, parser):
    with pytest.raises(ParseError):
        parser(telegraf(name))


def test_parse_job_missing_unreadable_and_malformed():
    raw = {
        "memory.usage_in_bytes": "12\n",
        "memory.max_usage_in_bytes": "0\n-1\n2\n",
        "memory.stat": PermissionError(13, "Permission denied"),
        "cpuacct.usage": None,
    }
    fields, problems = cgroup.parse_job(raw, 1)
    assert fields["mem_current_bytes"] == 12
    assert fields["mem_peak_bytes"] is None and fields["mem_rss_bytes"] is None
    assert fields["cpu_usage_seconds"] is None
    assert sorted(problems) == [
        ("memory.max_usage_in_bytes", "malformed: line 1: expected one integer, got '0\\n-1\\n2'"),
        ("memory.stat", "unreadable: PermissionError"),
    ]


def test_cpuacct_stat_tick_rate():
    assert cgroup.parse_cpuacct_stat("user 250\nsystem 50\n", user_hz=250) == {
        "cpu_user_seconds": 1.0,
        "cpu_system_seconds": 0.2,
    }
