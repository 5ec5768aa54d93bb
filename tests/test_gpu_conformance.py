"""The GPU and licence parsers against every real GPU capture in ../shared/fixtures/gpu/.

The expected GPU count, model and total memory of each file were read by hand (grep) from the
file itself, not from the parser.  NVML is tested through a fake pynvml module (there is no GPU
on the test machines); `read()` is tested on a machine with neither NVML nor nvidia-smi.
"""

from __future__ import annotations

import sys
import types

import pytest

from collectors import gpu, licenses
from nomade_common.errors import ParseError
from tests.conftest import FIXTURES, shared

MIB = 1 << 20

# file -> (GPUs in the file, product name, total framebuffer MiB); from
# `grep -c '<gpu id'`, `grep '<product_name>'` and <fb_memory_usage><total> of each file.
XML_FILES: dict[str, tuple[int, str, int]] = {
    "3090-v13.xml": (1, "NVIDIA GeForce RTX 3090", 24576),
    # attached_gpus says 4, but the capture holds one <gpu> (the others were cut by telegraf)
    "a100-sxm4-v12.xml": (1, "NVIDIA A100-SXM4-80GB", 81920),
    "a10g.xml": (1, "NVIDIA A10G", 23028),
    "dual_2070-v13.xml": (2, "NVIDIA GeForce RTX 2070", 8192),
    "dual_2080-v13.xml": (2, "NVIDIA GeForce RTX 2080", 8192),
    "dual_a5000-v13.xml": (2, "NVIDIA RTX A5000", 24564),
    "gt-1030.xml": (1, "NVIDIA GeForce GT 1030", 1998),
    "gtx-1070-ti.xml": (1, "GeForce GTX 1070 Ti", 4096),
    "gtx-1660-ti.xml": (1, "Graphics Device", 5912),
    "pro-6000-maxq-blackwell-v13.xml": (
        1,
        "NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition",
        97887,
    ),
    "quadro-p2000-v12.xml": (1, "Quadro P2000", 5120),
    "quadro-p400.xml": (1, "Quadro P400", 1998),
    "rtx-3060-v12.xml": (1, "NVIDIA GeForce RTX 3060", 12288),
    "rtx-3080-v12.xml": (1, "NVIDIA GeForce RTX 3080", 10240),
    "rtx-3080-v13.xml": (1, "NVIDIA GeForce RTX 3080", 10240),
    "rtx-3090-v12.xml": (1, "NVIDIA GeForce RTX 3090", 24576),
    "rtx-4000-sff-ada-v13.xml": (1, "NVIDIA RTX 4000 SFF Ada Generation", 20475),
    "tesla-t4.xml": (1, "Tesla T4", 15360),
    "tesla_p4.xml": (1, "GRID P4-1Q", 1024),
}
# utkuozdemir captures: several commands' output in one file (-q text, --query-gpu CSV,
# --query-compute-apps CSV, ...); "Attached GPUs", "Product Name" and "FB Memory Usage/Total".
CAPTURES: dict[str, tuple[int, str, int]] = {
    "capture__linux-x86_64__nvidia-geforce-rtx-2080-super__595.71.05.txt": (
        1,
        "NVIDIA GeForce RTX 2080 SUPER",
        8192,
    ),
    "capture__linux-x86_64__nvidia-geforce-rtx-4080-super__595.71.05.txt": (
        1,
        "NVIDIA GeForce RTX 4080 SUPER",
        16376,
    ),
    "capture__linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01.txt": (
        1,
        "NVIDIA H100 80GB HBM3",
        81559,
    ),
    "capture__linux-x86_64__nvidia-h100-mig__590.48.01.txt": (1, "NVIDIA H100 80GB HBM3", 81559),
}
BAR = "#" * 80


def sections(text: str) -> dict[str, str]:
    """The capture's sections by title ('load :: query (-q)'): the body between the bars."""
    lines = text.splitlines()
    out: dict[str, str] = {}
    i = 0
    while i < len(lines) - 1:
        if lines[i] == BAR and lines[i + 1].startswith("# "):
            title = lines[i + 1][2:]
            j = i + 2
            while j < len(lines) and lines[j] != BAR:
                j += 1
            k = j + 1
            while k < len(lines) and lines[k] != BAR:
                k += 1
            out[title] = "\n".join(lines[j + 1 : k]) + "\n"
            i = k
        else:
            i += 1
    return out


def _of(records: list[dict], kind: str) -> list[dict]:
    return [r for r in records if r["record"] == kind]


def test_every_gpu_fixture_is_in_a_table():
    folder = shared("gpu")
    found = {p.name for p in folder.glob("influxdata_telegraf/*")}
    found |= {p.name for p in folder.glob("utkuozdemir_nvidia_gpu_exporter/*")}
    assert found == set(XML_FILES) | set(CAPTURES)


@pytest.mark.parametrize("name", sorted(XML_FILES))
def test_xml_gpu_count_model_memory(name):
    count, model, total_mib = XML_FILES[name]
    records = gpu.parse_xml(shared("gpu", "influxdata_telegraf", name).read_text(), name)
    gpus = _of(records, "gpu")
    assert len(gpus) == count
    assert [g["index"] for g in gpus] == list(range(count))
    for g in gpus:
        assert g["name"] == model
        assert g["memory_total_bytes"] == total_mib * MIB
        assert g["uuid"].startswith("GPU-")
        assert g["memory_used_bytes"] <= g["memory_total_bytes"]
    for p in _of(records, "process"):
        assert p["pid"] > 0 and p["gpu_uuid"] in {g["uuid"] for g in gpus}


def test_xml_version_quirks():
    def first(name):
        return gpu.parse_xml(shared("gpu", "influxdata_telegraf", name).read_text(), name)[0]

    # v13 <clocks_event_reasons>, and <gpu_power_readings> with average/instant draw
    g = first("3090-v13.xml")
    assert g["throttle_reasons"] == ["sw_power_cap"]
    assert g["power_draw_w"] == 35.06 and g["power_limit_w"] == 350.0
    # pre-v12 <clocks_throttle_reasons> and <power_readings>
    g = first("a10g.xml")
    assert g["throttle_reasons"] == ["gpu_idle"]
    assert (g["power_draw_w"], g["power_limit_w"]) == (25.58, 300.0)
    # old single_bit/double_bit ECC blocks; a GeForce with no ECC has None, never 0
    assert first("quadro-p400.xml")["ecc_volatile_corrected"] is None
    assert first("tesla-t4.xml")["ecc_aggregate_uncorrected"] == 0
    # DTD v10, no driver version, no power reading; vGPU guest with <clocks_throttle_reasons>N/A
    g = first("gtx-1070-ti.xml")
    assert (g["driver_version"], g["power_draw_w"], g["throttle_reasons"]) == (None, None, None)
    assert first("tesla_p4.xml")["throttle_reasons"] is None


def test_xml_mig_devices():
    records = gpu.parse_xml(
        shared("gpu", "influxdata_telegraf", "a100-sxm4-v12.xml").read_text(), "a100"
    )
    (parent,) = _of(records, "gpu")
    migs = _of(records, "mig")
    assert parent["mig_enabled"] is True
    assert [(m["index"], m["gpu_instance_id"], m["compute_instance_id"]) for m in migs] == [
        (0, 3, 0),
        (1, 4, 0),
        (2, 5, 0),
        (3, 6, 0),
    ]
    assert {m["memory_total_bytes"] for m in migs} == {19968 * MIB}
    assert {m["gpu_uuid"] for m in migs} == {parent["uuid"]}


@pytest.mark.parametrize("name", sorted(CAPTURES))
def test_capture_text_and_csv(name):
    count, model, total_mib = CAPTURES[name]
    parts = sections(shared("gpu", "utkuozdemir_nvidia_gpu_exporter", name).read_text())
    for phase in ("idle", "load"):
        text = gpu.parse_text(parts[f"{phase} :: query (-q)"], name)
        csv = gpu.parse_csv(parts[f"{phase} :: query-gpu (csv, what the exporter parses)"], name)
        for records in (text, csv):
            gpus = _of(records, "gpu")
            assert [(g["name"], g["memory_total_bytes"]) for g in gpus] == [
                (model, total_mib * MIB)
            ] * count
        # the same GPU seen by -q and by --query-gpu a moment later
        assert text[0]["uuid"] == csv[0]["uuid"] and text[0]["bus_id"] == csv[0]["bus_id"]
        assert text[0]["mig_enabled"] == csv[0]["mig_enabled"]
        apps = gpu.parse_csv(parts[f"{phase} :: query-compute-apps (per-process)"], name)
        compute = {p["pid"]: p["used_memory_bytes"] for p in _of(text, "process")}
        for app in apps:
            assert app["record"] == "process"
            assert compute[app["pid"]] == app["used_memory_bytes"]
        assert gpu.parse_csv(parts[f"{phase} :: query-accounted-apps"], name) == []
        assert gpu.parse_csv(parts[f"{phase} :: query-retired-pages"], name) == []


def test_capture_h100_mig_devices_and_processes():
    name = "capture__linux-x86_64__nvidia-h100-mig__590.48.01.txt"
    parts = sections(shared("gpu", "utkuozdemir_nvidia_gpu_exporter", name).read_text())
    records = gpu.parse_text(parts["load :: query (-q)"], name)
    (parent,) = _of(records, "gpu")
    assert parent["mig_enabled"] is True and parent["util_gpu_percent"] is None
    migs = _of(records, "mig")
    # nvidia-smi -L: 3g.40gb, 2g.20gb, 1g.10gb, 1g.10gb
    assert [
        (m["gpu_instance_id"], m["sm_count"], m["memory_total_bytes"] // MIB) for m in migs
    ] == [
        (2, 60, 40448),
        (3, 32, 20096),
        (9, 16, 9984),
        (10, 16, 9984),
    ]
    procs = _of(records, "process")
    assert [(p["pid"], p["gpu_instance_id"], p["used_memory_bytes"] // MIB) for p in procs] == [
        (21180, 2, 2296),
        (21181, 2, 1272),
        (21198, 2, 7484),
    ]


def test_csv_noheader_nounits_with_nomade_fields():
    line = (
        "0, GPU-1, NVIDIA H100 80GB HBM3, 00000000:00:09.0, 590.48.01, 81559, 11125, 69956, "
        "100, 11, 59, 631.95, 700.00, 0, 0, 0, 0, 0x0000000000000044, P0, Disabled\n"
    )
    (record,) = gpu.parse_csv(line, "q", fields=gpu.QUERY_GPU_FIELDS)
    assert record["memory_used_bytes"] == 11125 * MIB
    assert record["power_draw_w"] == 631.95 and record["util_gpu_percent"] == 100.0
    assert record["throttle_reasons"] == ["sw_power_cap", "hw_thermal_slowdown"]
    assert record["mig_enabled"] is False


# ---------------------------------------------------------------------------------------------
# NØMADE's own capture: an H200 (driver 580.159.04) while tests/gpu_holder.py (pid 460) held
# 1 GiB and ran matrix products.  Expected values read by hand from each file.

H200 = FIXTURES / "gpu" / "h200-580.159.04"
H200_UUID = "GPU-a79b6375-f09a-a160-8248-ca7ae62d4a59"


@pytest.mark.parametrize(
    "name, parse",
    [
        ("q-x.xml", lambda text: gpu.parse_xml(text, "q-x.xml")),
        ("q.txt", lambda text: gpu.parse_text(text, "q.txt")),
        ("query-gpu.csv", lambda text: gpu.parse_csv(text, "query-gpu.csv")),
        (
            "query-gpu-noheader-nounits.csv",
            lambda text: gpu.parse_csv(text, "noheader", fields=gpu.QUERY_GPU_FIELDS),
        ),
    ],
)
def test_own_h200_capture_in_every_form(name, parse):
    records = parse((H200 / name).read_text())
    (card,) = gpu.records_of(records, "gpu")
    assert card["uuid"] == H200_UUID and card["name"] == "NVIDIA H200"
    assert card["bus_id"] == "00000000:00:06.0" and card["driver_version"] == "580.159.04"
    assert card["memory_total_bytes"] == 143771 * MIB
    assert card["memory_used_bytes"] == 1869 * MIB
    assert card["util_gpu_percent"] == 100.0 and card["util_memory_percent"] == 5.0
    assert card["temperature_gpu_c"] == 58.0 and card["power_limit_w"] == 700.0
    # the GPU's own draw (each form read a moment apart), not the memory's 59.76 W after it
    assert 547 < card["power_draw_w"] < 549
    assert card["throttle_reasons"] == [] and card["pstate"] == "P0"
    assert card["mig_enabled"] is False and card["ecc_volatile_uncorrected"] == 0
    if name.endswith(("xml", "txt")):
        (process,) = gpu.records_of(records, "process")
        assert (process["pid"], process["name"], process["type"]) == (460, "python3", "C")
        assert process["used_memory_bytes"] == 1860 * MIB
        assert card["cuda_version"] == "13.0" and card["temperature_memory_c"] == 44.0


def test_own_h200_compute_apps_csv():
    (process,) = gpu.parse_csv((H200 / "query-compute-apps.csv").read_text())
    assert process["gpu_uuid"] == H200_UUID and process["pid"] == 460
    assert process["used_memory_bytes"] == 1860 * MIB  # header says used_gpu_memory [MiB]


# ---------------------------------------------------------------------------------------------
# Malformed input


@pytest.mark.parametrize(
    "fn, text, line",
    [
        (gpu.parse_xml, "<nvidia_smi_log>\n<gpu id='0'>\n</nvidia_smi_log>\n", 3),
        (gpu.parse_xml, "<?xml version='1.0'?>\n<other/>\n", 1),
        (
            gpu.parse_xml,
            "<nvidia_smi_log>\n<gpu id='0'>\n<fb_memory_usage>\n<total>lots MiB</total>\n"
            "</fb_memory_usage></gpu></nvidia_smi_log>",
            None,  # 'lots MiB' has no digit: None, not an error
        ),
        (
            gpu.parse_xml,
            "<nvidia_smi_log>\n<gpu id='0'>\n<fb_memory_usage>\n<total>12 parsecs</total>\n"
            "</fb_memory_usage></gpu></nvidia_smi_log>",
            4,
        ),
        (gpu.parse_text, "Driver Version : 1\n", 1),
        (gpu.parse_csv, "memory.used [MiB], pid\n12 MiB\n", 2),
        (gpu.parse_csv, "foo, bar\n1, 2\n", 1),
        (gpu.parse_csv, "pid, used_memory [MiB]\n12, 3.5.1 MiB\n", 2),
        (licenses.parse_lmstat, "hello\nworld\n", 1),
        (licenses.parse_rlmstat, "hello\n", 1),
        (
            licenses.parse_rlmstat,
            "foundry license pool status on h (port 1)\nnuke v1\ncount: many, inuse: 0\n",
            3,
        ),
    ],
)
def test_malformed_input_names_source_and_line(fn, text, line):
    if line is None:
        assert fn(text, "src")[0]["memory_total_bytes"] is None
        return
    with pytest.raises(ParseError) as info:
        fn(text, "src")
    assert info.value.source == "src" and info.value.line == line
    assert str(info.value).startswith(f"src:{line}: ")


# ---------------------------------------------------------------------------------------------
# GPU process -> Slurm job


def test_job_of_cgroup_v1_v2_and_none():
    v1 = (
        "12:pids:/slurm/uid_1000/job_4242/step_0/task_0\n"
        "4:memory:/slurm/uid_1000/job_4242/step_0/task_0\n1:name=systemd:/system.slice/slurmd\n"
    )
    v2 = "0::/system.slice/node17_slurmstepd.scope/job_917/step_batch/user/task_0\n"
    assert gpu.job_of_cgroup(v1) == 4242
    assert gpu.job_of_cgroup(v2) == 917
    assert gpu.job_of_cgroup("0::/user.slice/user-1000.slice/session-3.scope\n") is None
    assert gpu.job_of_cgroup("0::/system.slice/slurmstepd.scope/job_12x/step_0\n") is None


def test_attach_jobs_reads_proc_root(tmp_path):
    (tmp_path / "5762").mkdir()
    (tmp_path / "5762" / "cgroup").write_text(
        "0::/system.slice/slurmstepd.scope/job_31337/step_0/user/task_0\n"
    )
    (tmp_path / "675").mkdir()
    (tmp_path / "675" / "cgroup").write_text("0::/system.slice/display-manager.service\n")
    records = gpu.parse_xml(shared("gpu", "influxdata_telegraf", "tesla-t4.xml").read_text(), "t4")
    gpu.attach_jobs(records, str(tmp_path))
    assert {p["pid"]: p["job_id"] for p in _of(records, "process")} == {675: None, 5762: 31337}
    # a process gone since nvidia-smi ran: no cgroup file, no job, no error
    gone = [{"record": "process", "pid": 99999, "job_id": None}]
    assert gpu.attach_jobs(gone, str(tmp_path))[0]["job_id"] is None


# ---------------------------------------------------------------------------------------------
# NVML through a fake pynvml (the only fake here: there is no GPU on the test machines)


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):  # noqa: N801 - pynvml's own spelling
    pass


def _ns(**kw):
    return types.SimpleNamespace(**kw)


def fake_pynvml(fail_init: bool = False) -> types.ModuleType:
    """A pynvml with the tesla-t4.xml GPU (values copied from that capture) and an A100 in MIG
    mode with two MIG devices; calls the T4 does not support raise NVMLError_NotSupported."""
    m = types.ModuleType("pynvml")
    m.NVMLError = NVMLError
    calls: list[str] = []
    m.calls = calls

    def nvmlInit():
        calls.append("init")
        if fail_init:
            raise type("NVMLError_LibraryNotFound", (NVMLError,), {})("no libnvidia-ml.so.1")

    def unsupported(*_a):
        raise NVMLError_NotSupported("Not Supported")

    t4 = _ns(
        uuid="GPU-d37e67a5-91dd-3774-a5cb-99096249601a",
        name="Tesla T4",
        bus="00000000:00:1E.0",
        minor=0,
        mem=_ns(total=15360 * MIB, used=1032 * MIB, free=13939 * MIB, reserved=388 * MIB),
        util=_ns(gpu=0, memory=0),
        temp=40,
        power=26780,
        limit=70000,
        ecc=0,
        mask=0,
        pstate=0,
        mig=None,
        compute=[_ns(pid=5762, usedGpuMemory=1005 * MIB, gpuInstanceId=0xFFFFFFFF)],
        graphics=[_ns(pid=675, usedGpuMemory=22 * MIB, gpuInstanceId=0xFFFFFFFF)],
        migs=[],
    )
    a100 = _ns(
        uuid="GPU-a100",
        name=b"NVIDIA A100-SXM4-80GB",  # old pynvml returns bytes
        bus=b"00000000:07:00.0",
        minor=1,
        mem=_ns(total=81920 * MIB, used=50 * MIB, free=80000 * MIB),
        util=None,
        temp=27,
        power=67030,
        limit=500000,
        ecc=2,
        mask=0x44,
        pstate=0,
        mig=(1, 1),
        compute=[
            _ns(pid=777, usedGpuMemory=None, gpuInstanceId=3, computeInstanceId=0),
        ],
        graphics=[],
        migs=[
            _ns(uuid="MIG-aaa", gi=3, ci=0, mem=_ns(total=19968 * MIB, used=12 * MIB, free=1)),
            _ns(uuid="MIG-bbb", gi=4, ci=0, mem=_ns(total=19968 * MIB, used=12 * MIB, free=1)),
        ],
    )
    devices = [t4, a100]

    def util(d):
        if d.util is None:
            unsupported()
        return d.util

    def mig_mode(d):
        if d.mig is None:
            unsupported()
        return d.mig

    def mig_handle(d, i):
        if i >= len(d.migs):
            raise type("NVMLError_NotFound", (NVMLError,), {})("Not Found")
        return d.migs[i]

    m.nvmlInit = nvmlInit
    m.nvmlShutdown = lambda: calls.append("shutdown")
    m.nvmlSystemGetDriverVersion = lambda: "515.105.01"
    m.nvmlSystemGetCudaDriverVersion = lambda: 11070
    m.nvmlDeviceGetCount = lambda: len(devices)
    m.nvmlDeviceGetHandleByIndex = lambda i: devices[i]
    m.nvmlDeviceGetUUID = lambda d: d.uuid
    m.nvmlDeviceGetName = lambda d: d.name
    m.nvmlDeviceGetPciInfo = lambda d: _ns(busId=d.bus)
    m.nvmlDeviceGetMinorNumber = lambda d: d.minor
    m.nvmlDeviceGetMemoryInfo = lambda d: d.mem
    m.nvmlDeviceGetUtilizationRates = util
    m.nvmlDeviceGetTemperature = lambda d, sensor: d.temp
    m.nvmlDeviceGetPowerUsage = lambda d: d.power
    m.nvmlDeviceGetEnforcedPowerLimit = lambda d: d.limit
    m.nvmlDeviceGetTotalEccErrors = lambda d, kind, counter: d.ecc if kind == 0 else 0
    m.nvmlDeviceGetCurrentClocksThrottleReasons = lambda d: d.mask
    m.nvmlDeviceGetPerformanceState = lambda d: d.pstate
    m.nvmlDeviceGetMigMode = mig_mode
    m.nvmlDeviceGetMaxMigDeviceCount = lambda d: 7 if d.mig else unsupported()
    m.nvmlDeviceGetMigDeviceHandleByIndex = mig_handle
    m.nvmlDeviceGetGpuInstanceId = lambda mig: mig.gi
    m.nvmlDeviceGetComputeInstanceId = lambda mig: mig.ci
    m.nvmlDeviceGetAttributes = lambda mig: _ns(multiprocessorCount=14)
    m.nvmlDeviceGetComputeRunningProcesses = lambda d: d.compute
    m.nvmlDeviceGetGraphicsRunningProcesses = lambda d: d.graphics
    m.NVML_TEMPERATURE_GPU = 0
    return m


def test_nvml_reader_has_parse_xml_layout():
    from_xml = gpu.parse_xml(shared("gpu", "influxdata_telegraf", "tesla-t4.xml").read_text(), "x")
    module = fake_pynvml()
    from_nvml = gpu.read_nvml(module)
    assert module.calls == ["init", "shutdown"]
    # the same fields in the same order, for every record of every kind
    for kind in ("gpu", "process"):
        layouts = {tuple(r) for r in _of(from_nvml, kind)} | {tuple(r) for r in _of(from_xml, kind)}
        assert len(layouts) == 1
    t4_xml, t4_nvml = from_xml[0], from_nvml[0]
    same = ("uuid", "name", "bus_id", "driver_version", "cuda_version", "memory_total_bytes")
    same += ("util_gpu_percent", "temperature_gpu_c", "power_draw_w", "power_limit_w")
    same += ("ecc_volatile_corrected", "ecc_aggregate_uncorrected", "throttle_reasons", "pstate")
    assert {k: t4_nvml[k] for k in same} == {k: t4_xml[k] for k in same}
    assert t4_nvml["mig_enabled"] is None  # NotSupported -> None, as N/A in the XML
    procs = {
        p["pid"]: (p["type"], p["used_memory_bytes"])
        for p in _of(from_nvml, "process")
        if p["gpu_index"] == 0
    }
    assert procs == {
        p["pid"]: (p["type"], p["used_memory_bytes"]) for p in _of(from_xml, "process")
    }


def test_nvml_reader_mig_and_bytes_names():
    records = gpu.read_nvml(fake_pynvml())
    a100 = _of(records, "gpu")[1]
    assert a100["name"] == "NVIDIA A100-SXM4-80GB" and a100["bus_id"] == "00000000:07:00.0"
    assert a100["util_gpu_percent"] is None and a100["mig_enabled"] is True
    assert a100["throttle_reasons"] == ["sw_power_cap", "hw_thermal_slowdown"]
    migs = _of(records, "mig")
    assert [(m["uuid"], m["gpu_instance_id"], m["gpu_uuid"]) for m in migs] == [
        ("MIG-aaa", 3, "GPU-a100"),
        ("MIG-bbb", 4, "GPU-a100"),
    ]
    xml_mig = _of(
        gpu.parse_xml(shared("gpu", "influxdata_telegraf", "a100-sxm4-v12.xml").read_text(), "x"),
        "mig",
    )[0]
    assert list(migs[0]) == list(xml_mig)
    (proc,) = [p for p in _of(records, "process") if p["gpu_uuid"] == "GPU-a100"]
    assert (proc["gpu_instance_id"], proc["used_memory_bytes"]) == (3, None)


def test_read_prefers_nvml_and_maps_jobs(tmp_path, monkeypatch):
    (tmp_path / "5762").mkdir()
    (tmp_path / "5762" / "cgroup").write_text("4:memory:/slurm/uid_1/job_88/step_0/task_0\n")
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
    ran = []
    monkeypatch.setattr(gpu, "run_nvidia_smi", lambda *a: ran.append(a))
    records = gpu.read(proc_root=str(tmp_path))
    assert ran == []  # NVML answered: nvidia-smi is not run
    assert {p["pid"]: p["job_id"] for p in _of(records, "process")} == {
        5762: 88,
        675: None,
        777: None,
    }


def test_read_falls_back_to_nvidia_smi_when_nvml_fails(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(fail_init=True))
    xml = shared("gpu", "influxdata_telegraf", "a10g.xml").read_text()
    monkeypatch.setattr(gpu, "run_nvidia_smi", lambda *a: xml)
    records = gpu.read(proc_root=str(tmp_path))
    assert _of(records, "gpu")[0]["name"] == "NVIDIA A10G"


def test_read_without_nvml_or_nvidia_smi_is_empty(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    caplog.set_level("DEBUG", logger=gpu.__name__)
    missing = str(tmp_path / "no-such-nvidia-smi")
    assert gpu.read(proc_root=str(tmp_path), nvidia_smi=missing) == []
    assert all(r.levelname == "DEBUG" for r in caplog.records)
    assert any("not installed" in r.getMessage() for r in caplog.records)


def test_read_when_nvidia_smi_finds_no_driver(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        "#!/bin/sh\necho \"NVIDIA-SMI has failed because it couldn't communicate with the "
        'NVIDIA driver."\nexit 9\n'
    )
    fake.chmod(0o755)
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert gpu.read(proc_root=str(tmp_path), nvidia_smi=str(fake)) == []
