"""The GPU collector on a real NVIDIA GPU: NVML, nvidia-smi and the agent's collector agree.

Runs only where NVML answers (a GPU node, or the GPU machine some development sessions are
lent); skipped elsewhere, since no GPU exists on the CI machines.  A child process placed in a
Slurm-shaped cgroup (``.../job_424242/step_0``) holds 1 GiB of GPU memory and keeps the GPU busy:
every path of the collector must report it as job 424242's process with at least that memory,
and its GPU as busy.  Expected values come from the GPU itself (``nvidia-smi -L``, the holder's
own allocation), never from the parser under test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import required

from collectors import gpu
from collectors.registry import NODE_COLLECTORS
from collectors.runner import run_one, skip_reason
from nomade_common.config import Config

HELD_BYTES = 1 << 30
JOB_ID = 424242
MIB = 1 << 20


def _nvml_or_skip():
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        required("pynvml (nvidia-ml-py) is not installed")
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        pytest.skip(f"no NVIDIA GPU here: nvmlInit failed ({exc})")
    pynvml.nvmlShutdown()
    return pynvml


def _smi(*args: str) -> str:
    return subprocess.run(
        ["nvidia-smi", *args], capture_output=True, text=True, timeout=60, check=True
    ).stdout


def _job_cgroup() -> Path | None:
    """A fresh ``.../nomade-test/job_424242/step_0`` in a writable cgroup hierarchy, or None."""
    for base in ("/sys/fs/cgroup", "/sys/fs/cgroup/pids", "/sys/fs/cgroup/memory"):
        if not os.path.exists(f"{base}/cgroup.procs"):
            continue
        path = Path(base, "nomade-test", f"job_{JOB_ID}", "step_0")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        return path
    return None


def _remove_cgroup(path: Path) -> None:
    for p in (path, path.parent, path.parent.parent):
        try:
            p.rmdir()
        except OSError:
            pass


@pytest.fixture(scope="module")
def holder():
    """(pid, job id or None) of a process holding HELD_BYTES on GPU 0 and keeping it busy."""
    _nvml_or_skip()
    try:
        import torch  # noqa: F401
    except ImportError:
        required("torch is needed to put work on the GPU")
    cgroup = _job_cgroup()
    script = Path(__file__).with_name("gpu_holder.py")
    enter = f'echo $$ > "{cgroup}/cgroup.procs" && ' if cgroup else ""
    proc = subprocess.Popen(
        ["sh", "-c", f'{enter}exec "{sys.executable}" "{script}" {HELD_BYTES}'],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    line = proc.stdout.readline().strip()
    assert line == "ready", f"the GPU holder did not start: {line!r}"
    yield proc.pid, (JOB_ID if cgroup else None)
    proc.stdin.close()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if cgroup:
        _remove_cgroup(cgroup)


def _gpus(records):
    return list(gpu.records_of(records, "gpu"))


def _process(records, pid):
    found = [r for r in gpu.records_of(records, "process") if r["pid"] == pid]
    assert found, (
        f"pid {pid} is not among the GPU processes"
        f" {[r['pid'] for r in gpu.records_of(records, 'process')]}"
    )
    return found[0]


def _busy_reading(pid: int, deadline_s: float = 30.0):
    """NVML records once GPU 0 reports non-zero utilisation (polled, with a deadline)."""
    end = time.monotonic() + deadline_s
    while True:
        records = gpu.read()
        if (_gpus(records)[0]["util_gpu_percent"] or 0) > 0 or time.monotonic() > end:
            return records
        time.sleep(0.5)


def test_nvml_reports_every_gpu_with_its_vital_signs(holder):
    listed = [line for line in _smi("-L").splitlines() if line.startswith("GPU ")]
    records = gpu.read_nvml()
    assert records is not None
    gpus = _gpus(records)
    assert len(gpus) == len(listed)
    for record, line in zip(gpus, listed, strict=True):
        assert record["uuid"] in line and record["name"] in line
        assert record["memory_total_bytes"] > 0
        assert 0 < record["memory_used_bytes"] <= record["memory_total_bytes"]
        assert 0 <= record["memory_free_bytes"] <= record["memory_total_bytes"]
        assert 0 < record["temperature_gpu_c"] < 120
        assert 0 < record["power_draw_w"] <= record["power_limit_w"] * 1.5
        assert record["pstate"].startswith("P")
        assert isinstance(record["throttle_reasons"], list)
        assert record["driver_version"] and record["cuda_version"]


def test_a_jobs_gpu_process_is_counted_against_the_job(holder):
    pid, job_id = holder
    records = _busy_reading(pid)
    process = _process(records, pid)
    assert process["used_memory_bytes"] >= HELD_BYTES
    assert process["gpu_index"] == 0 and process["gpu_uuid"] == _gpus(records)[0]["uuid"]
    assert _gpus(records)[0]["util_gpu_percent"] > 0, "a GPU running matrix products reads idle"
    assert process["job_id"] == job_id  # None where no cgroup could be made: then no job


def test_nvidia_smi_xml_agrees_with_nvml(holder):
    pid, job_id = holder
    nvml = gpu.read()
    smi = gpu.read(use_nvml=False)
    for a, b in zip(_gpus(nvml), _gpus(smi), strict=True):
        assert a["uuid"] == b["uuid"] and a["name"] == b["name"]
        assert a["driver_version"] == b["driver_version"]
        assert a["cuda_version"] == b["cuda_version"]
        assert a["bus_id"].lower().endswith(b["bus_id"].lower()[-12:])
        assert abs(a["memory_total_bytes"] - b["memory_total_bytes"]) < MIB  # smi prints MiB
        assert a["power_limit_w"] == pytest.approx(b["power_limit_w"], abs=1)
        assert a["mig_enabled"] == b["mig_enabled"]
    process = _process(smi, pid)
    assert process["used_memory_bytes"] >= HELD_BYTES
    assert process["job_id"] == job_id


def test_query_csv_and_text_report_agree_with_the_xml(holder):
    pid, _job_id = holder
    xml = gpu.parse_xml(_smi("-q", "-x"), "nvidia-smi -q -x")
    fields = ",".join(gpu.QUERY_GPU_FIELDS)
    csv_gpus = gpu.parse_csv(
        _smi(f"--query-gpu={fields}", "--format=csv,noheader,nounits"),
        fields=gpu.QUERY_GPU_FIELDS,
    )
    text = gpu.parse_text(_smi("-q"), "nvidia-smi -q")
    for x, c, t in zip(_gpus(xml), csv_gpus, _gpus(text), strict=True):
        for name in ("uuid", "name", "driver_version", "memory_total_bytes", "mig_enabled"):
            assert x[name] == c[name] == t[name], name
    apps = gpu.parse_csv(
        _smi("--query-compute-apps=" + ",".join(gpu.QUERY_COMPUTE_APPS_FIELDS), "--format=csv")
    )
    assert _process(apps, pid)["used_memory_bytes"] >= HELD_BYTES
    assert _process(text, pid)["used_memory_bytes"] >= HELD_BYTES


def test_the_agents_gpu_collector_runs_and_reports(holder):
    pid, job_id = holder
    cfg = Config()
    collector = next(c for c in NODE_COLLECTORS if c.name == "gpu")
    assert skip_reason(collector, cfg) is None
    reading = run_one(collector, cfg, {})
    assert reading.ok, reading.error
    assert _process(reading.records, pid)["job_id"] == job_id
