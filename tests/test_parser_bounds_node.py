"""The node agent's parsers on hostile or corrupt input: a result or one ParseError, in bounded
time.

Each input here once escaped as another exception (OverflowError from a figure past float range,
ValueError from int()'s 4300-digit limit or from "²".isdigit(), RecursionError from deep JSON,
AttributeError and TypeError from JSON of the wrong shape, csv.Error) or took seconds in a regex
that backtracked over a long run of spaces (found by tests/test_fuzz.py and bench/fuzz.py).
The parsers are called as they are, not through ``registry.parser``, whose guard would turn
such a leak into a ParseError of its own.
"""

from __future__ import annotations

import pytest
from clusterlib import within

from collectors import cgroup, disk, gpu, health, licenses, nfs, pressure, sysstat
from nomade_common.errors import ParseError

PARSERS = {
    "iostat-json": sysstat.parse_iostat_json,
    "mpstat": sysstat.parse_mpstat,
    "mpstat-json": sysstat.parse_mpstat_json,
    "repquota": disk.parse_repquota,
    "quota": disk.parse_quota,
    "lfs-quota": disk.parse_lfs_quota,
    "lmstat": licenses.parse_lmstat,
    "rlmstat": licenses.parse_rlmstat,
    "nfsiostat": nfs.parse_nfsiostat,
    "mountstats": nfs.parse_mountstats,
    "nvidia-smi-csv": gpu.parse_csv,
    "nvidia-smi-xml": gpu.parse_xml,
    "nvidia-smi-text": gpu.parse_text,
    "pressure": pressure.parse,
    "kernel-errors": health.parse_kernel_errors,
}

N = "9" * 400  # float() gives inf
D = "1" * 5000  # past int()'s 4300-digit limit
SUP2 = "\u00b2"  # "²".isdigit() is True, int("²") fails

_HOSTS = '{"sysstat": {"hosts": [{"statistics": [%s]}]}}'
_NFS_READ = "s:/e mounted on /m:\n\nread: ops/s  kB/s  kB/op  retrans  avg RTT (ms)  avg exe (ms)\n"
_QUOTA_HEAD = (
    "Disk quotas for user alice (uid 2001):\n"
    "     Filesystem  blocks   quota   limit   grace   files   quota   limit   grace\n"
)
_REPQUOTA_HEAD = "*** Report for user quotas on device /dev/sda1\n---\n"

# (kind, text): each must end in a ParseError that names the source.
REFUSED = [
    ("iostat-json", '{"sysstat": []}'),
    ("mpstat-json", '{"sysstat": "x"}'),
    ("iostat-json", "[" * 100_000),
    ("iostat-json", '{"a": ' + D + "}"),
    ("iostat-json", _HOSTS % ('{"avg-cpu": {"user": ' + N + "}}")),
    ("iostat-json", _HOSTS % '{"disk": 5}'),
    ("mpstat-json", _HOSTS % '{"cpu-load": 5}'),
    ("mpstat-json", _HOSTS % '{"cpu-load": [{"cpu": "0", "idle": Infinity}]}'),
    ("mpstat", "12:00:00 CPU %usr %idle\n12:00:00 0 1.00 1e400\n"),
    ("repquota", _REPQUOTA_HEAD + "root -- " + N + " 0 0 0 3 0 0 0\n"),
    ("repquota", _REPQUOTA_HEAD + "root +- 2 2 1 4 5 0 " + SUP2 + "\n"),
    ("repquota", _REPQUOTA_HEAD + "root -- 3 0 0 " + D + " 2 0 0 0\n"),
    ("lfs-quota", _QUOTA_HEAD.replace("user", "usr") + "/lustre " + N + " 0 0 - 1 0 0 -\n"),
    ("lfs-quota", _QUOTA_HEAD.replace("user", "usr") + "/lustre 5* 0 0 " + D + "d 1 0 0 -\n"),
    ("quota", "Disk quotas for user alice (uid " + D + "):\n"),
    ("rlmstat", "y license pool status on h (port 2)\nn v1\ncount:" + SUP2 + "\n"),
    ("nfsiostat", _NFS_READ + "1.0 1.0 1.0 1e400 1.0 1.0\n"),
    ("nfsiostat", _NFS_READ + "1.0 1.0 1.0 NaN(%) 1.0 1.0\n"),
    ("nvidia-smi-csv", "index, memory.used [MiB]\n0, " + N + " MiB\n"),
    ("nvidia-smi-csv", "index, name\n0, " + "x" * 140_000 + "\n"),
    (
        "nvidia-smi-xml",
        "<nvidia_smi_log><gpu id='0'><minor_number>" + N + "</minor_number></gpu></nvidia_smi_log>",
    ),
    ("pressure", "some avg10=0.00 avg60=0.00 avg300=0.00 total=" + N + "\n"),
]


@pytest.mark.parametrize(
    ("kind", "text"), REFUSED, ids=[f"{k}-{i}" for i, (k, _) in enumerate(REFUSED)]
)
def test_a_figure_or_shape_no_tool_prints_is_one_parse_error(kind, text):
    with pytest.raises(ParseError) as caught:
        PARSERS[kind](text, "the-input")
    message = str(caught.value)
    assert message.startswith("the-input") and "\n" not in message and len(message) < 200


def test_a_license_port_or_count_of_odd_or_too_many_digits_is_absent():
    lm, rlm = licenses.parse_lmstat, licenses.parse_rlmstat
    servers = lm(
        "License server status: " + SUP2 + "@lic1\n      lic1: license server UP v11\n", "x"
    )
    assert servers[0]["up"] is True and servers[0]["port"] is None
    users = lm(
        "Users of f1:  (Total of " + D + " licenses issued;  Total of 2 licenses in use)\n", "x"
    )
    assert (users[0]["issued"], users[0]["in_use"]) == (None, 2)
    table = lm("Feature Version #licenses Expires Vendor\nC 0 " + SUP2 + " t L\n", "x")
    assert table[0]["feature"] == "C" and table[0]["issued"] is None
    rlm_server = rlm("rlm status on h1 (port " + D + ")\n", "x")[0]
    assert (rlm_server["host"], rlm_server["port"], rlm_server["up"]) == ("h1", None, True)


def test_a_checkout_queued_for_too_many_digits_is_queued_without_a_count():
    text = (
        "Users of f:  (Total of 2 licenses issued;  Total of 1 license in use)\n"
        "    dave node033 /dev/pts/3 (v44) (lic1/27000 3309) queued for " + D + " licenses\n"
    )
    checkout = licenses.parse_lmstat(text, "x")[1]
    assert (checkout["user"], checkout["state"], checkout["count"]) == ("dave", "queued", None)


def test_sysstat_version_and_job_id_of_absurd_length_are_none():
    assert sysstat.sysstat_version("sysstat version " + D) is None
    assert sysstat.sysstat_version("sysstat version 12.6.1\n") == (12, 6, 1)
    assert gpu.job_of_cgroup("0::/job_" + D + "/step_0") is None
    assert gpu.job_of_cgroup("0::/system.slice/slurmstepd.scope/job_42/step_0") == 42


@pytest.mark.parametrize(
    ("version", "raw", "file"),
    [
        (1, {"cpuacct.usage": N}, "cpuacct.usage"),
        (1, {"cpuacct.stat": "user " + N + "\nsystem 1\n"}, "cpuacct.stat"),
        (2, {"cpu.stat": "usage_usec " + N}, "cpu.stat"),
    ],
)
def test_cgroup_counter_past_u64_is_a_problem_not_a_crash(version, raw, file):
    parsed = cgroup.parse_job(raw, version)
    assert parsed.fields["cpu_usage_seconds"] is None
    assert [name for name, _ in parsed.problems] == [file]


def test_a_job_directory_with_other_digits_is_not_a_job(tmp_path):
    scope = tmp_path / "system.slice" / "slurmstepd.scope"
    for name in ("job_42", "job_" + SUP2):
        (scope / name).mkdir(parents=True)
    (scope / "job_42" / "memory.current").write_text("4096\n")
    assert [(r["job_id"], r["mem_current_bytes"]) for r in cgroup.records(str(tmp_path))] == [
        (42, 4096)
    ]


def test_a_hwmon_reading_past_float_range_names_its_file(tmp_path):
    chip = tmp_path / "hwmon0"
    chip.mkdir()
    (chip / "name").write_text("coretemp\n")
    (chip / "temp1_input").write_text(N + "\n")
    with pytest.raises(ParseError, match="temp1_input"):
        health.parse_hwmon(str(tmp_path))


# Lines that made a regex rescan a long run from each of its characters (seconds each before).
HANG_SECONDS = 30.0
SPACES = 400_000  # ten times what took the old patterns seconds: hours for them
SLOW_BEFORE = [
    (
        "lmstat",
        "Users of f:  (Total of 1 license issued;  Total of 1 license in use)\n"
        + "\t" * SPACES
        + "x\n",
    ),
    (
        "lmstat",
        "Users of f:  (Total of 1 license issued;  Total of 1 license in use)\n"
        "    a b c (v1) (s/1 2), start x" + " " * SPACES + "y\n",
    ),
    ("lmstat", "Users of " + "a:(" * 150_000 + "\n"),
    (
        "rlmstat",
        "f license usage status on h (port 5053)\nf v1: a@b 1/0 at x" + " " * SPACES + "y\n",
    ),
    ("nfsiostat", "s:/e mounted on /m:\n\nread: ops/s  kB/s\n1" + " " * SPACES + "x\n"),
    ("nfsiostat", "s:/e mounted on /m:\n\nread: ops/s  kB/s\n1 " + "(" * 1_000_000 + "\n"),
    ("mountstats", "device " + " mounted on" * 100_000 + "\n"),
    ("nvidia-smi-csv", "index, name" + " " * SPACES + "x\n0, a\n"),
    ("nvidia-smi-text", "==============NVSMI LOG==============\n\nx" + " " * SPACES + "y\n"),
    ("nvidia-smi-xml", "<nvidia_smi_log>" + "a\n" * 300_000 + "</nvidia_smi_log>"),
    ("kernel-errors", "EDAC CE " * 20_000 + "\n"),
    ("quota", _QUOTA_HEAD + "x\n" * 100_000),
    ("mpstat", "12:00:00 CPU %idle\n12:00:00 0 2.00\n" * 8_000),
]


@pytest.mark.parametrize(
    ("kind", "text"), SLOW_BEFORE, ids=[f"{k}-{i}" for i, (k, _) in enumerate(SLOW_BEFORE)]
)
def test_a_long_hostile_line_is_answered_in_linear_time(kind, text):
    """Linear, these take well under a second; quadratic, hours (within detects a hang)."""
    with within(HANG_SECONDS):
        try:
            PARSERS[kind](text, "x")
        except ParseError:
            pass
