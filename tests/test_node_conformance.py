"""Node collectors (sysstat, pressure, nfs, proc-io, cgroup) against real captures.

Every file of ../shared/fixtures/sysstat/ and the procfs files meant for these parsers is parsed;
the counts and values checked below were read by hand (grep, column by column) from the files
themselves, not from the parsers' output.  Files the parsers are not meant for are listed in
NOT_MEANT with the reason, so that a new shared file is noticed.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from collectors import cgroup, nfs, pressure, procio, registry, sysstat
from nomade_common.errors import ParseError
from tests.conftest import FIXTURES, ROOT, SHARED, shared

JC = "sysstat/kellyjonbrazil_jc"
DERIVED = "sysstat/derived_nfs-utils_mountstats_iostat"
LOCAL = FIXTURES / "sysstat" / "12.6.1"
PROCPS = FIXTURES / "sysstat" / "procps-ng-4.0.2"

# Shared files that are not input for the node parsers, and why.
NOT_MEANT: dict[str, str] = {
    f"{JC}/centos-7.7_vmstat-d.out": "vmstat -d: the per-disk report, not the vm report",
    f"{JC}/centos-7.7_vmstat-dt.out": "vmstat -d -t: the per-disk report, not the vm report",
    "sysstat/influxdata_telegraf/sadf_p_-C_cpu.txt": "sadf -p (sar files), not iostat/mpstat",
    "sysstat/influxdata_telegraf/sadf_p_-d_disk.txt": "sadf -p (sar files), not iostat/mpstat",
}
for _name in (
    "mountstats_from__procfs__prometheus_node_exporter__proc_10_mountstats.txt",
    "mountstats_from__procfs__prometheus_procfs__fixtures__proc__26231__mountstats.txt",
    "mountstats_from__sysstat__influxdata_telegraf__mountstats_nfs.txt.txt",
):
    NOT_MEANT[f"{DERIVED}/{_name}"] = "the nfs-utils mountstats command's report, not /proc"
for _name in (
    "nfsstat_from__procfs__prometheus_node_exporter__proc_10_mountstats.txt",
    "nfsstat_from__procfs__prometheus_procfs__fixtures__proc__26231__mountstats.txt",
    "nfsstat_from__sysstat__influxdata_telegraf__mountstats_nfs.txt.txt",
):
    NOT_MEANT[f"{DERIVED}/{_name}"] = "nfsstat: client-wide RPC counts, not per mount"

# procfs files these parsers read (the rest of procfs/ belongs to other collectors).
PROCFS_KINDS: dict[str, str] = {
    "procfs/prometheus_node_exporter/proc_pressure_cpu": "pressure",
    "procfs/prometheus_node_exporter/proc_pressure_io": "pressure",
    "procfs/prometheus_node_exporter/proc_pressure_memory": "pressure",
    "procfs/prometheus_procfs/fixtures/proc/pressure/cpu": "pressure",
    "procfs/prometheus_procfs/fixtures/proc/pressure/io": "pressure",
    "procfs/prometheus_procfs/fixtures/proc/pressure/memory": "pressure",
    "procfs/prometheus_node_exporter/proc_10_mountstats": "mountstats",
    "procfs/prometheus_procfs/fixtures/proc/26231/mountstats": "mountstats",
    "procfs/kellyjonbrazil_jc/pid_io": "proc-io",
    "procfs/prometheus_procfs/fixtures/proc/26231/io": "proc-io",
}


def kind_of(rel: str) -> str | None:
    """The parser kind of a shared sysstat/ file, by its name; None if it is in NOT_MEANT."""
    if rel in NOT_MEANT:
        return None
    name = rel.rsplit("/", 1)[-1]
    for tool in ("iostat", "mpstat", "vmstat", "nfsiostat"):
        if name.startswith(f"{tool}_") or f"_{tool}" in name:
            return f"{tool}-json" if name.endswith(".json") and tool != "vmstat" else tool
    if "mountstats" in name:
        return "mountstats"
    raise AssertionError(f"{rel}: new shared file; give it a kind or a NOT_MEANT reason")


def _sysstat_files() -> list[str]:
    if not SHARED.is_dir():
        return []
    base = SHARED / "sysstat"
    return sorted(str(p.relative_to(SHARED)) for p in base.rglob("*") if p.is_file())


def parse_shared(kind: str, rel: str) -> list[dict]:
    path = shared(*rel.split("/"))
    return registry.parser(kind)(path.read_text(), str(path))


def by(records: list[dict], **match) -> list[dict]:
    return [r for r in records if all(r.get(k) == v for k, v in match.items())]


# -- every shared file ----------------------------------------------------------------------------


@pytest.mark.parametrize("rel", _sysstat_files() or ["<no shared fixtures>"])
def test_every_shared_sysstat_file_parses_or_is_not_meant(rel):
    path = shared(*rel.split("/"))
    kind = kind_of(rel)
    if kind is None:
        with pytest.raises(ParseError):  # refused loudly, never half-read
            registry.parser(_guess(rel))(path.read_text(), str(path))
        return
    assert registry.parser(kind)(path.read_text(), str(path))


def _guess(rel: str) -> str:
    name = rel.rsplit("/", 1)[-1]
    return "vmstat" if "vmstat" in name else "mountstats" if "mountstats" in name else "iostat"


@pytest.mark.parametrize("rel", sorted(PROCFS_KINDS))
def test_every_procfs_file_meant_for_these_parsers_parses(rel):
    assert parse_shared(PROCFS_KINDS[rel], rel)


# -- iostat ----------------------------------------------------------------------------------------


def test_iostat_ubuntu_1804_extended_devices_and_util():
    records = parse_shared("iostat", f"{JC}/ubuntu-18.04_iostat-x.out")
    devices = by(records, record="device")
    assert len(devices) == 20  # loop0-15, fd0, sda, scd0, scd1
    (sda,) = by(devices, device="sda")
    # sda  127.92 67.15 8595.16 12457.33 ... r_await 2.57 w_await 6.93 ... %util 15.14
    assert sda["util_percent"] == 15.14
    assert sda["r_await_ms"] == 2.57 and sda["w_await_ms"] == 6.93
    assert sda["read_bytes_per_s"] == pytest.approx(8595.16 * 1024)
    assert sda["write_bytes_per_s"] == pytest.approx(12457.33 * 1024)
    (cpu,) = by(records, record="cpu")
    assert (cpu["user_percent"], cpu["system_percent"], cpu["iowait_percent"]) == (
        39.64,
        28.21,
        2.28,
    )


def test_iostat_columns_are_found_by_name_across_versions():
    # sysstat 10 (CentOS 7): "Device:" with rkB/s before await; sysstat 12 (Ubuntu 20.10):
    # r/s rkB/s ... d/s dkB/s ... f/s f_await aqu-sz %util.  Same fields either way.
    old = by(parse_shared("iostat", f"{JC}/centos-7.7_iostat-x.out"), device="sda")[0]
    assert (old["util_percent"], old["r_await_ms"], old["w_await_ms"]) == (0.01, 0.53, 1.29)
    assert old["read_bytes_per_s"] == pytest.approx(5.27 * 1024)
    new = by(parse_shared("iostat", f"{JC}/ubuntu-20.10_iostat-x.out"), device="sda")[0]
    assert (new["util_percent"], new["r_await_ms"], new["w_await_ms"]) == (0.41, 0.36, 0.42)
    assert new["write_bytes_per_s"] == pytest.approx(129.44 * 1024)
    assert new["await_ms"] is None  # sysstat 12 dropped the combined await column


def test_iostat_megabytes_and_plain_reports_convert_to_bytes():
    mx = by(parse_shared("iostat", f"{JC}/ubuntu-20.10_iostat-mx.out"), device="dm-0")[0]
    assert mx["read_bytes_per_s"] == pytest.approx(0.10 * 1024 * 1024)
    plain = by(parse_shared("iostat", f"{JC}/centos-7.7_iostat.out"), device="sda")[0]
    # Device: tps kB_read/s kB_wrtn/s kB_read kB_wrtn -> sda 0.24 5.28 1.10 ...
    assert plain["transfers_per_s"] == 0.24
    assert plain["read_bytes_per_s"] == pytest.approx(5.28 * 1024)
    assert plain["util_percent"] is None  # not in a report without -x


def test_iostat_interval_reports_are_numbered():
    records = parse_shared("iostat", f"{JC}/centos-7.7_iostat-1.out")
    assert sorted({r["sample"] for r in records}) == [0, 1, 2]
    assert len(by(records, record="device")) == 9  # sda, dm-0, dm-1 in each of 3 reports
    assert by(records, record="cpu", sample=1)[0]["idle_percent"] == 100.0


def test_iostat_text_and_json_of_sysstat_12_6_1_agree_on_the_shape():
    text = sysstat.parse_iostat((LOCAL / "iostat-x-1-2.txt").read_text(), "iostat -x 1 2")
    doc = sysstat.parse_iostat_json((LOCAL / "iostat-x-1-2.json").read_text(), "iostat -o JSON")
    assert [(r["record"], r["sample"]) for r in text] == [(r["record"], r["sample"]) for r in doc]
    # second report of the text capture: vda ... w/s 1326.00 wkB/s 25896.00 ... %util 1.60
    vda = by(text, device="vda", sample=1)[0]
    assert vda["writes_per_s"] == 1326.0 and vda["util_percent"] == 1.6
    assert vda["write_bytes_per_s"] == 25896 * 1024
    # the JSON capture (another run): "wkB/s": 28856.00, "util": 1.60
    assert by(doc, device="vda", sample=1)[0]["write_bytes_per_s"] == 28856 * 1024


def test_sysstat_11_json_keys_are_read():
    # sysstat 11.x wrote "r", "w", "rkB", "wkB", "avgqu-sz" (rates despite the names)
    doc = {
        "sysstat": {
            "hosts": [
                {
                    "statistics": [
                        {
                            "avg-cpu": {"user": 1.0, "iowait": 2.5, "idle": 96.5},
                            "disk": [
                                {
                                    "disk_device": "sda",
                                    "r": 3.0,
                                    "rkB": 10.0,
                                    "avgqu-sz": 0.5,
                                    "util": 7.0,
                                }
                            ],
                        }
                    ]
                }
            ]
        }
    }
    cpu, dev = sysstat.parse_iostat_json(json.dumps(doc), "iostat-11.json")
    assert cpu["iowait_percent"] == 2.5 and cpu["steal_percent"] is None
    assert (dev["reads_per_s"], dev["read_bytes_per_s"], dev["util_percent"]) == (3.0, 10240, 7.0)


# -- mpstat ----------------------------------------------------------------------------------------


def test_mpstat_cpus_and_summary_of_a_two_cpu_capture():
    records = sysstat.parse_mpstat((LOCAL / "mpstat-P-ALL.txt").read_text(), "mpstat -P ALL")
    cpus = by(records, record="cpu")
    assert [c["cpu"] for c in cpus] == ["all", "0", "1"]  # the capture says (2 CPU)
    # 09:50:30  0 ... %idle 68.80 ; 1 ... %idle 65.02
    assert by(cpus, cpu="0")[0]["busy_percent"] == pytest.approx(100 - 68.80)
    assert by(cpus, cpu="1")[0]["busy_percent"] == pytest.approx(100 - 65.02)
    (summary,) = by(records, record="summary")
    assert summary["cores"] == 2 and summary["saturated_cores"] == 0
    assert summary["busy_mean_percent"] == pytest.approx((31.20 + 34.98) / 2, abs=0.01)
    assert summary["imbalance"] == pytest.approx(1.89 / 33.09, abs=1e-3)  # std/mean


def test_mpstat_A_skips_interrupt_node_and_average_blocks():
    records = parse_shared("mpstat", f"{JC}/centos-7.7_mpstat-A-2-5.out")
    # 5 interval reports of 'all' and CPU 0 (1 CPU), then Average: (skipped)
    assert len(by(records, record="cpu")) == 10
    assert len(by(records, record="summary")) == 5
    assert by(records, cpu="0", sample=0)[0]["system_percent"] == 0.5
    node = parse_shared("mpstat", f"{JC}/ubuntu-18.04_mpstat-A.out")  # has a NODE block
    assert [r["cpu"] for r in by(node, record="cpu")] == ["all", "0"]
    assert by(node, cpu="0")[0]["busy_percent"] == pytest.approx(100 - 29.09)


def test_mpstat_json_matches_the_text_of_the_same_version():
    doc = sysstat.parse_mpstat_json((LOCAL / "mpstat-P-ALL.json").read_text(), "mpstat JSON")
    # {"cpu": "0", ... "idle": 68.80}, {"cpu": "1", ... "idle": 65.03}
    assert [r["cpu"] for r in by(doc, record="cpu")] == ["all", "0", "1"]
    assert by(doc, cpu="1")[0]["idle_percent"] == 65.03
    assert by(doc, record="summary")[0]["cores"] == 2


def test_mpstat_saturation_and_offline_cpus():
    text = (
        "12:00:00     CPU    %usr   %nice    %sys %iowait    %irq   %soft  %steal  %guest  "
        "%gnice   %idle\n"
        "12:00:01       0   97.00    0.00    2.00    0.00    0.00    0.00    0.00    0.00    0.00"
        "    1.00\n"
        "12:00:01       1   10.00    0.00    0.00    0.00    0.00    0.00    0.00    0.00    0.00"
        "   90.00\n"
        "12:00:01       2    0.00    0.00    0.00    0.00    0.00    0.00    0.00    0.00    0.00"
        "    0.00\n"
    )
    records = sysstat.parse_mpstat(text, "mpstat")
    assert by(records, cpu="2")[0]["busy_percent"] is None  # offline: all zeros
    (summary,) = by(records, record="summary")
    assert (summary["cores"], summary["saturated_cores"]) == (2, 1)
    assert summary["busy_mean_percent"] == 54.5  # (99 + 10) / 2


# -- vmstat ----------------------------------------------------------------------------------------


def test_vmstat_memory_in_bytes_and_procs():
    (vm,) = parse_shared("vmstat", f"{JC}/generic_vmstat-extra-wide.out")
    # 0 0 0 2430264 1011084 22658240 0 0 4 6 3 5 3 1 96 0 0
    assert vm["mem_free_bytes"] == 2430264 * 1024
    assert vm["mem_buffer_bytes"] == 1011084 * 1024
    assert vm["mem_cache_bytes"] == 22658240 * 1024
    assert (vm["runnable_procs"], vm["blocked_procs"], vm["cpu_iowait_percent"]) == (0, 0, 0)


def test_vmstat_repeated_header_timestamps_and_active_memory():
    long = parse_shared("vmstat", f"{JC}/ubuntu-18.04_vmstat-1-long.out")
    assert len(long) == 37  # the header is printed again at line 36
    assert long[0]["blocks_in_per_s"] == 288 and long[0]["swap_used_bytes"] == 524 * 1024
    timed = parse_shared("vmstat", f"{JC}/centos-7.7_vmstat-at-5-10.out")
    assert len(timed) == 4 and timed[0]["mem_inactive_bytes"] == 295968 * 1024
    assert timed[0]["mem_cache_bytes"] is None  # -a prints inact/active instead


def test_vmstat_procps_4_guest_column():
    (vm,) = sysstat.parse_vmstat((PROCPS / "vmstat-w.txt").read_text(), "vmstat -w")
    assert vm["cpu_guest_percent"] == 0 and vm["runnable_procs"] == 3


# -- pressure --------------------------------------------------------------------------------------


def test_pressure_values_and_total_in_seconds():
    (io,) = parse_shared("pressure", "procfs/prometheus_node_exporter/proc_pressure_io")
    # some avg10=0.18 avg60=0.34 avg300=0.10 total=159886802
    assert io["resource"] == "io"
    assert (io["some_avg10_percent"], io["some_avg300_percent"]) == (0.18, 0.10)
    assert io["some_total_seconds"] == pytest.approx(159.886802)
    assert io["full_total_seconds"] == pytest.approx(159.229614)
    (cpu,) = parse_shared("pressure", "procfs/prometheus_procfs/fixtures/proc/pressure/cpu")
    assert cpu["some_avg60_percent"] == 2.0
    assert cpu["full_avg10_percent"] is None  # this kernel prints no 'full' line for cpu


def test_pressure_read_is_empty_where_psi_is_absent(tmp_path):
    assert pressure.read(str(tmp_path)) == []
    local = pressure.read(str(FIXTURES / "proc"))
    assert [r["resource"] for r in local] == ["cpu", "memory", "io"]


# -- nfs -------------------------------------------------------------------------------------------


def test_mountstats_nfs_mounts_bytes_and_ops():
    mounts = parse_shared("mountstats", "procfs/prometheus_node_exporter/proc_10_mountstats")
    assert [(m["mount_point"], m["fstype"]) for m in mounts] == [
        ("/mnt/nfs/test", "nfs4"),
        ("/mnt/nfs/test-dupe", "nfs4"),
        ("/mnt/nfs/test-dupe", "nfs"),
    ]
    test = mounts[0]
    # bytes: 1207640230 0 0 0 1210214218 0 295483 0
    assert test["read_bytes"] == 1207640230 and test["server_read_bytes"] == 1210214218
    # READ: 1298 1298 0 207680 1210292152 6 79386 79407
    assert (test["read_ops"], test["read_retrans"], test["read_rtt_ms"]) == (1298, 0, 79386)
    assert test["read_exe_ms"] == 79407 and test["server"] == "192.168.1.1"
    assert mounts[2]["protocol"] == "udp" and mounts[2]["nfs_version"] == "3"
    # ACCESS: 2927395007 2927394995 0 526931094212 362996810236 18446743919241604546
    #         1667369447 1953587717 -- fewer transmissions than ops, a queue time below zero
    access = mounts[1]
    assert (access["access_ops"], access["access_retrans"]) == (2927395007, -12)
    assert (access["access_rtt_ms"], access["access_exe_ms"]) == (1667369447, 1953587717)


def test_mountstats_counter_printed_as_negative_unsigned_is_none():
    text = (
        "device s:/e mounted on /m with fstype nfs statvers=1.1\n"
        "\tbytes:\t18446744073709551615 5 0 0 0 0 0 0\n"
        "\tper-op statistics\n"
        "\t        READ: 4 4 0 0 0 0 18446743919241604546 9\n"
    )
    (mount,) = nfs.parse_mountstats(text, "mountstats")
    assert mount["read_bytes"] is None and mount["write_bytes"] == 5
    assert mount["read_rtt_ms"] is None and mount["read_exe_ms"] == 9


def test_mountstats_telegraf_skips_local_mounts_and_reads_statvers_1_1_ops():
    mounts = parse_shared("mountstats", "sysstat/influxdata_telegraf/mountstats_nfs.txt")
    assert [m["mount_point"] for m in mounts] == ["/A", "/B", "/C", "/D"]
    # /C: GETATTR: 145712 145712 0 22994472 16319744 532 107480 109969
    c = mounts[2]
    assert (c["getattr_ops"], c["getattr_rtt_ms"], c["getattr_exe_ms"]) == (145712, 107480, 109969)
    # /A: bytes: 204440464584 110857586443 ...
    assert mounts[0]["read_bytes"] == 204440464584 and mounts[0]["write_bytes"] == 110857586443
    assert mounts[3]["nfs_version"] == "4.2" and mounts[3]["age_seconds"] == 2


def test_nfsiostat_real_and_old_format():
    real = parse_shared(
        "nfsiostat", "sysstat/amirhnajafiz_nfs-metrics-exporter/nfsiostat_real_2mounts.txt"
    )
    assert [r["mount_point"] for r in real] == ["/home/anajafizadeh", "/var/lib/kubelet-nfs"]
    kube = real[1]
    # read: 13.069 207.339 15.866 0 (0.0%) 0.536 0.595 0.032 0 (0.0%)
    assert kube["read_ops_per_s"] == 13.069
    assert kube["read_bytes_per_s"] == pytest.approx(207.339 * 1024)
    assert (kube["read_rtt_ms"], kube["read_exe_ms"], kube["read_retrans"]) == (0.536, 0.595, 0)
    assert kube["write_exe_ms"] == 4.515 and kube["ops_per_s"] == 81.835
    derived = parse_shared(
        "nfsiostat",
        f"{DERIVED}/nfsiostat_from__sysstat__influxdata_telegraf__mountstats_nfs.txt.txt",
    )
    assert derived[0]["read_retrans"] == 1 and derived[1]["ops_per_s"] == 3668.316


def test_classify_paths_network_or_local():
    mounts = parse_shared("mountstats", "procfs/prometheus_node_exporter/proc_10_mountstats")
    table = {m["mount_point"]: m["fstype"] for m in mounts}
    got = nfs.classify_paths(
        ["/mnt/nfs/test/a.dat", "/mnt/nfs/testing/b", "/tmp/x", "/mnt/nfs/test-dupe"], table
    )
    assert got == {
        "/mnt/nfs/test/a.dat": "network",
        "/mnt/nfs/testing/b": "local",  # a prefix of the name, not of the path
        "/tmp/x": "local",
        "/mnt/nfs/test-dupe": "network",
    }
    info = shared("procfs", "prometheus_node_exporter", "proc_10_mountinfo").read_text()
    table = nfs.mount_table(info, "mountinfo")
    assert table["/mnt/nfs/test-dupe"] == "nfs" and table["/"] == "ext4"
    assert nfs.classify_paths(["/mnt/nfs/test-dupe/x", "/home/u"], table) == {
        "/mnt/nfs/test-dupe/x": "network",
        "/home/u": "local",
    }
    # a local scratch mounted below a network home stays local
    nested = {"/": "ext4", "/home": "nfs4", "/home/scratch": "xfs"}
    assert nfs.classify_paths(["/home/scratch/f", "/home/u/f"], nested) == {
        "/home/scratch/f": "local",
        "/home/u/f": "network",
    }


def test_nfs_read_without_mountstats_is_empty(tmp_path):
    assert nfs.read(str(tmp_path)) == []


# -- proc-io and cgroup ----------------------------------------------------------------------------


def test_proc_io_records():
    (io,) = parse_shared("proc-io", "procfs/kellyjonbrazil_jc/pid_io")
    assert io["read_bytes"] == 168468480 and io["wchar"] == 2931802997
    assert procio.records(
        "rchar: 1\nwchar: 2\nsyscr: 3\nsyscw: 4\nread_bytes: 5\nwrite_bytes: 6\n", "io"
    ) == [{"read_bytes": 5, "write_bytes": 6, "rchar": 1, "wchar": 2, "syscr": 3, "syscw": 4}]


def test_cgroup_records_of_a_captured_tree():
    (job,) = cgroup.records(str(FIXTURES / "cgroup" / "v1-slurm-22.05-multislurmd"))
    assert (job["job_id"], job["node"], job["cgroup_version"]) == (16, "node1", 1)
    base = FIXTURES / "cgroup/v1-slurm-22.05-multislurmd/memory/slurm_node1/uid_2001/job_16"
    assert job["mem_current_bytes"] == int((base / "memory.usage_in_bytes").read_text())
    assert job["problems"] == []


def test_cgroup_records_find_v1_and_v2_in_one_tree():
    records = cgroup.records(str(shared("cgroup", "treydock_cgroup_exporter", "fixtures")))
    assert sorted((r["cgroup_version"], r["job_id"]) for r in records) == [(1, 10), (1, 11), (2, 4)]
    assert cgroup.records(str(FIXTURES / "sysstat")) == []


def test_parse_command_reads_a_cgroup_directory():
    from click.testing import CliRunner

    from nomadectl import main

    tree = FIXTURES / "cgroup" / "v1-slurm-22.05-multislurmd"
    result = CliRunner().invoke(main, ["parse", "cgroup", str(tree)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["job_id"] == 16


# -- malformed input -------------------------------------------------------------------------------

BAD = [
    ("iostat", "avg-cpu:  %user   %nice\n           0.14\n", 2),
    ("iostat", "Device  r/s  %util\nsda  1.0  x\n", 2),
    ("iostat", "hello\n", 1),
    ("iostat-json", '{"sysstat": {"hosts": [', 1),
    ("mpstat", "10:00:00  CPU  %usr  %idle\n10:00:00  all  1.0\n", 2),
    ("mpstat-json", '{"sysstat": {"hosts": [{"statistics": [{"cpu-load": [{"usr": 1}]}]}]}}', None),
    ("vmstat", "procs ---\n r  b  swpd\n 1  0  x\n", 3),
    ("vmstat", " r  b  swpd\n 1  0\n", 2),
    ("pressure", "some avg10=abc avg60=0.00 avg300=0.00 total=0\n", 1),
    ("pressure", "nothing here\n", 1),
    ("mountstats", "device a:/b mounted on /c with fstype nfs\n\tbytes:\t1 two 3\n", 2),
    ("mountstats", "garbage at the top\n", 1),
    ("nfsiostat", "x:/y mounted on /z:\n\n   ops/s   rpc bklog\n  1.0\n", 4),
    ("nfsiostat", "Client rpc stats:\n", 1),
]


@pytest.mark.parametrize(
    ("kind", "text", "line"), BAD, ids=[f"{k}-{i}" for i, (k, *_) in enumerate(BAD)]
)
def test_malformed_input_names_source_and_line(kind, text, line):
    with pytest.raises(ParseError) as info:
        registry.parser(kind)(text, "capture.txt")
    assert info.value.source == "capture.txt" and info.value.line == line
    assert str(info.value).startswith("capture.txt")


def test_node_agent_imports_no_heavy_library():
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "import collectors.sysstat, collectors.pressure\n"
        "import collectors.nfs, collectors.procio\n"
        "import collectors.cgroup\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'pandas', 'torch',"
        " 'aggregator', 'models', 'sklearn', 'scipy'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


# -- case folders: private runner until tests/test_parser_cases.py exists --------------------------
