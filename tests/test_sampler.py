"""JobSampler: rows of SAMPLE_FIELDS over captured cgroup trees and fake /proc trees."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from nodeagent.sampler import JobSampler
from nomade_common.wire import SAMPLE_FIELDS

LIVE = Path(__file__).parent / "fixtures" / "cgroup" / "v1-slurm-22.05-node1-live"
LIVE_JOB = "slurm_node1/uid_2001/job_3"
IO_TEXT = (LIVE / "proc" / "6975" / "io").read_text()
STAT_TEXT = (LIVE / "proc" / "6976" / "stat").read_text()
MB = 1024 * 1024


# -- a writable tree made of the live capture ------------------------------------------------------


def make_job(root: Path, job: int, pids: tuple[int, ...] = (), uid: int = 2001) -> Path:
    """job_<job> for node1 under root, copied from the live capture, holding only ``pids``."""
    for controller in ("memory", "cpuacct"):
        dest = root / controller / "slurm_node1" / f"uid_{uid}" / f"job_{job}"
        shutil.copytree(LIVE / controller / LIVE_JOB, dest)
        for procs in dest.rglob("cgroup.procs"):
            procs.write_text("")
    set_pids(root, job, pids, uid)
    return root / "memory" / "slurm_node1" / f"uid_{uid}" / f"job_{job}"


def set_pids(root: Path, job: int, pids: tuple[int, ...], uid: int = 2001) -> None:
    for controller in ("memory", "cpuacct"):
        task = root / controller / "slurm_node1" / f"uid_{uid}" / f"job_{job}" / "step_batch/task_0"
        (task / "cgroup.procs").write_text("".join(f"{pid}\n" for pid in pids))


def put_proc(proc: Path, pid: int, ppid: int, start: int, **io: int) -> None:
    """/proc/<pid>/{io,stat} from the captured files, with the given ppid, start and counters."""
    lines = []
    for line in IO_TEXT.splitlines():
        key = line.partition(":")[0]
        lines.append(f"{key}: {io.get(key, 0)}")
    fields = STAT_TEXT.rpartition(")")[2].split()
    fields[1], fields[19] = str(ppid), str(start)
    (proc / str(pid)).mkdir(parents=True, exist_ok=True)
    (proc / str(pid) / "io").write_text("\n".join(lines) + "\n")
    (proc / str(pid) / "stat").write_text(f"{pid} (python3) " + " ".join(fields) + "\n")


@pytest.fixture
def tree(tmp_path):
    cg, proc = tmp_path / "cg", tmp_path / "proc"
    proc.mkdir()
    return cg, proc


def sampler(cg: Path, proc: Path) -> JobSampler:
    return JobSampler("node1", cgroup_root=str(cg), proc_root=str(proc), clock=lambda: 1000.0)


def one(rows: list[dict]) -> dict:
    assert len(rows) == 1
    return rows[0]


# -- the live capture ------------------------------------------------------------------------------


def test_live_capture_row():
    s = JobSampler("node1", str(LIVE), str(LIVE / "proc"), clock=lambda: 1234.5, user_hz=100)
    row = one(s.sample())
    assert tuple(row) == SAMPLE_FIELDS
    assert row == {
        "job_id": 3,
        "t": 1234.5,
        "cpu_usage_seconds": 0.585527179,
        "cpu_user_seconds": 0.02,
        "cpu_system_seconds": 0.56,
        "mem_current_bytes": 263127040,
        "mem_peak_bytes": 275140608,
        "mem_rss_bytes": 213196800,
        "mem_cache_bytes": 46743552,
        "mem_swap_bytes": 0,
        "mem_limit_bytes": 524288000,
        "cgroup_read_bytes": None,  # Slurm made no blkio cgroup on that host
        "cgroup_write_bytes": None,
        # summed over slurmstepd x2, sleep, the batch shell (which reaped dd) and python
        "proc_read_bytes": 0 + 0 + 0 + 229376 + 8200192,
        "proc_write_bytes": 4096 + 0 + 16384 + 52441088 + 53248,
        "proc_rchar": 55310 + 6976 + 70001 + 52440245 + 44117,
        "proc_wchar": 540 + 1 + 5737 + 52428894 + 0,
        "proc_syscr": 2937 + 10 + 3137 + 71 + 31,
        "proc_syscw": 25 + 1 + 30 + 54 + 0,
        "nprocs": 5,
    }
    assert s.running_jobs() == {3} and s.problems() == []


def test_live_capture_other_node_sees_nothing():
    s = JobSampler("node2", str(LIVE), str(LIVE / "proc"))
    assert s.sample() == [] and s.running_jobs() == set() and s.problems() == []


# -- per-process I/O -------------------------------------------------------------------------------


def test_exiting_process_does_not_make_counters_go_backwards(tree):
    cg, proc = tree
    make_job(cg, 7, (100, 101))
    put_proc(proc, 100, ppid=1, start=500, write_bytes=100, wchar=1000)
    put_proc(proc, 101, ppid=1, start=501, write_bytes=50, wchar=500)
    s = sampler(cg, proc)
    assert one(s.sample())["proc_write_bytes"] == 150
    # 101 exits (its parent is outside the job): its last values stay in the sum
    set_pids(cg, 7, (100,))
    shutil.rmtree(proc / "101")
    row = one(s.sample())
    assert (row["proc_write_bytes"], row["proc_wchar"], row["nprocs"]) == (150, 1500, 1)
    put_proc(proc, 100, ppid=1, start=500, write_bytes=120, wchar=1200)
    assert one(s.sample())["proc_write_bytes"] == 170


def test_child_reaped_by_a_parent_in_the_job_is_not_counted_twice(tree):
    cg, proc = tree
    make_job(cg, 7, (100, 101))
    put_proc(proc, 100, ppid=1, start=500, write_bytes=10)
    put_proc(proc, 101, ppid=100, start=501, write_bytes=50)
    s = sampler(cg, proc)
    assert one(s.sample())["proc_write_bytes"] == 60
    # 101 exits and 100 reaps it: the kernel adds 101's counters to 100's
    set_pids(cg, 7, (100,))
    shutil.rmtree(proc / "101")
    put_proc(proc, 100, ppid=1, start=500, write_bytes=60)
    assert one(s.sample())["proc_write_bytes"] == 60


def test_child_gone_before_its_parent_reaped_it_does_not_dip(tree):
    cg, proc = tree
    make_job(cg, 7, (100, 101))
    put_proc(proc, 100, ppid=1, start=500, write_bytes=10)
    put_proc(proc, 101, ppid=100, start=501, write_bytes=50)
    s = sampler(cg, proc)
    assert one(s.sample())["proc_write_bytes"] == 60
    set_pids(cg, 7, (100,))
    shutil.rmtree(proc / "101")
    assert one(s.sample())["proc_write_bytes"] == 60  # not 10
    put_proc(proc, 100, ppid=1, start=500, write_bytes=70)  # reaped, and wrote 10 more
    assert one(s.sample())["proc_write_bytes"] == 70


def test_pid_reuse_is_a_new_process(tree):
    cg, proc = tree
    make_job(cg, 7, (100,))
    put_proc(proc, 100, ppid=1, start=500, write_bytes=500, syscw=5)
    s = sampler(cg, proc)
    assert one(s.sample())["proc_write_bytes"] == 500
    put_proc(proc, 100, ppid=1, start=900, write_bytes=20, syscw=1)  # another process, same pid
    row = one(s.sample())
    assert (row["proc_write_bytes"], row["proc_syscw"]) == (520, 6)


def test_no_process_seen_yet_is_none_not_zero(tree):
    cg, proc = tree
    make_job(cg, 7, ())
    row = one(sampler(cg, proc).sample())
    assert row["nprocs"] == 0 and row["proc_write_bytes"] is None
    assert row["mem_peak_bytes"] == 275140608


# -- problems --------------------------------------------------------------------------------------


def test_unreadable_file_gives_one_problem_line_and_none(tree):
    cg, proc = tree
    job = make_job(cg, 7, (100,))
    put_proc(proc, 100, ppid=1, start=500, write_bytes=1)
    (job / "memory.stat").unlink()
    (job / "memory.stat").symlink_to(job.parent)  # exists, and reading it fails (even as root)
    s = sampler(cg, proc)
    row = one(s.sample())
    assert row["mem_rss_bytes"] is None and row["mem_cache_bytes"] is None
    assert row["mem_peak_bytes"] == 275140608 and row["proc_write_bytes"] == 1
    assert s.problems() == [f"cgroup file {job}/memory.stat unreadable: IsADirectoryError"]
    assert one(s.sample())["mem_rss_bytes"] is None
    assert s.problems() == []  # reported once


def test_malformed_file_gives_a_problem_line_and_none(tree):
    cg, proc = tree
    job = make_job(cg, 7, ())
    (job / "memory.max_usage_in_bytes").write_text("0\n-1\n2\n")
    s = sampler(cg, proc)
    row = one(s.sample())
    assert row["mem_peak_bytes"] is None and row["mem_current_bytes"] == 263127040
    [line] = s.problems()
    assert line.startswith(f"cgroup file {job}/memory.max_usage_in_bytes malformed: line 1:")


def test_unreadable_proc_io_is_reported_once(tree):
    cg, proc = tree
    make_job(cg, 7, (100, 101))
    for pid in (100, 101):
        (proc / str(pid) / "io").mkdir(parents=True)
    s = sampler(cg, proc)
    row = one(s.sample())
    assert row["proc_write_bytes"] is None and row["nprocs"] == 2
    [line] = s.problems()
    assert "/io unreadable: IsADirectoryError" in line
    s.sample()
    assert s.problems() == []


# -- jobs coming and going -------------------------------------------------------------------------


def test_slurmd_starting_after_the_agent(tree):
    cg, proc = tree
    s = sampler(cg, proc)
    assert s.sample() == [] and s.running_jobs() == set()
    make_job(cg, 7, ())
    assert [row["job_id"] for row in s.sample()] == [7]


def test_jobs_start_and_end(tree):
    cg, proc = tree
    make_job(cg, 7, ())
    s = sampler(cg, proc)
    assert s.running_jobs() == {7}
    make_job(cg, 8, (), uid=2002)
    assert sorted(row["job_id"] for row in s.sample()) == [7, 8]
    for controller in ("memory", "cpuacct"):
        shutil.rmtree(cg / controller / "slurm_node1" / "uid_2001" / "job_7")
    assert [row["job_id"] for row in s.sample()] == [8]
    assert s.running_jobs() == {8}
    # a job ending and another starting in the same uid directory between two samples
    for controller in ("memory", "cpuacct"):
        shutil.rmtree(cg / controller / "slurm_node1" / "uid_2002" / "job_8")
    make_job(cg, 9, (), uid=2002)
    assert [row["job_id"] for row in s.sample()] == [9]


def test_new_step_is_found(tree):
    cg, proc = tree
    job = make_job(cg, 7, (100,))
    put_proc(proc, 100, ppid=1, start=500, write_bytes=1)
    s = sampler(cg, proc)
    for _ in range(3):
        assert one(s.sample())["nprocs"] == 1
    (job / "step_0" / "task_0").mkdir(parents=True)
    (job / "step_0" / "task_0" / "cgroup.procs").write_text("200\n201\n")
    (job / "step_0" / "cgroup.procs").write_text("")
    put_proc(proc, 200, ppid=1, start=600, write_bytes=10)
    put_proc(proc, 201, ppid=200, start=601, write_bytes=100)
    row = one(s.sample())
    assert (row["nprocs"], row["proc_write_bytes"]) == (3, 111)


def test_only_jobs(tree):
    cg, proc = tree
    make_job(cg, 7, ())
    make_job(cg, 8, ())
    s = sampler(cg, proc)
    assert [row["job_id"] for row in s.sample(only_jobs=[8])] == [8]
    assert s.sample(only_jobs=()) == []


# -- the real cluster ------------------------------------------------------------------------------


def _cluster_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return any(state.startswith(("idle", "mix", "alloc")) for state in out.split())


def _squeue(job: str, fmt: str) -> str:
    cmd = ["squeue", "-h", "-o", fmt, "-j", job]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()


@pytest.mark.cluster
@pytest.mark.skipif(not _cluster_up(), reason="no Slurm cluster up (sinfo absent or nodes down)")
def test_real_job_on_the_dev_cluster():
    script = (
        'python3 -c "b = bytearray(200 * 1024 * 1024); import time; time.sleep(60)" & '
        "dd if=/dev/zero of=/tmp/nomade-test.$SLURM_JOB_ID bs=1M count=50 conv=fsync; "
        "rm -f /tmp/nomade-test.$SLURM_JOB_ID; wait"
    )
    as_user = ["--uid=alice"] if os.geteuid() == 0 else []
    submit = ["sbatch", "--parsable", *as_user, "-o", "/dev/null", "-t", "5", "--wrap", script]
    job = subprocess.run(submit, capture_output=True, text=True, timeout=30, check=True)
    job_id = job.stdout.strip().split(";")[0]
    try:
        deadline, node = time.monotonic() + 60, ""
        while time.monotonic() < deadline and _squeue(job_id, "%T") != "RUNNING":
            time.sleep(0.5)
        node = _squeue(job_id, "%N")
        assert node, f"job {job_id} did not start"
        s = JobSampler(node)
        peak = written = 0
        while time.monotonic() < deadline and (peak < 200 * MB or written < 50 * MB):
            for row in s.sample(only_jobs=[int(job_id)]):
                peak = max(peak, row["mem_peak_bytes"] or 0)
                written = max(written, row["proc_write_bytes"] or 0)
            time.sleep(0.5)
        assert peak >= 200 * MB, (peak, s.problems())
        assert written >= 50 * MB, (written, s.problems())
    finally:
        subprocess.run(["scancel", job_id], timeout=30)
