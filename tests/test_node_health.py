"""Node health and storage collectors: hung mounts, quotas, hwmon/EDAC, kernel errors, daemons,
scratch hygiene (collectors/{disk,health,scratch}.py).

The parsers' outputs on real captures and hand-made inputs are the case folders
tests/cases/node-{repquota,quota,lfs-quota,hwmon,edac,kernel-errors}-*; these tests cover
behaviour: time bounds, what is reported and what is not, and errors naming their place.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT

from collectors import disk, health, registry, scratch
from nomade_common.errors import ParseError

FIXTURES = ROOT / "tests" / "fixtures"


def _wait_until(condition, limit: float = 30.0) -> None:
    """Poll for a condition a background thread brings about (no timing asserted)."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "background probe never finished"
        time.sleep(0.01)


# ---------------------------------------------------------------------------------------------
# Filesystem usage: a hung mount never hangs the caller


def test_hung_statvfs_gives_unresponsive_and_is_never_probed_twice(monkeypatch, tmp_path):
    hung, fine = str(tmp_path / "hung-nfs"), str(tmp_path)
    release = threading.Event()
    calls: list[str] = []
    real = os.statvfs

    def statvfs(path):
        calls.append(path)
        if path == hung:
            release.wait(600)  # far beyond any timeout below: as a dead NFS server
        return real(fine)

    monkeypatch.setattr(os, "statvfs", statvfs)
    try:
        first = {r["path"]: r for r in disk.read_usage([hung, fine], timeout=0.3)}
        # read_usage returned while the hung statvfs is still inside the "kernel"
        assert hung in disk.outstanding() and not release.is_set()
        assert first[hung]["responsive"] is False
        assert first[hung]["size_bytes"] is None and first[hung]["used_fraction"] is None
        assert first[hung]["probe_seconds"] > 0
        assert first[fine]["responsive"] is True and first[fine]["size_bytes"] > 0

        again = disk.read_usage([hung], timeout=0.3)
        assert again[0]["responsive"] is False
        assert calls.count(hung) == 1, "a second probe was started on a hung mount"
        assert health.mount_responsiveness([hung], timeout=0.1)[0]["responsive"] is False
        assert calls.count(hung) == 1
    finally:
        release.set()
    _wait_until(lambda: hung not in disk.outstanding())
    after = disk.read_usage([hung], timeout=30)
    assert calls.count(hung) == 2 and after[0]["responsive"] is True


def test_statvfs_error_is_an_answer_not_a_hang(tmp_path):
    [record] = disk.read_usage([str(tmp_path / "missing")], timeout=30)
    assert record["responsive"] is True
    assert record["error"].startswith("ENOENT") and record["size_bytes"] is None


def test_usage_matches_df_on_real_captures():
    """usage_record over the captured statvfs values gives what df printed for the same paths."""
    st = json.loads((FIXTURES / "disk" / "statvfs.json").read_text())
    lines = (FIXTURES / "disk" / "df-B1.txt").read_text().splitlines()[1:]
    for line in lines:
        target, _fstype, size, used, avail, pcent, itotal, iused, _ifree = line.split()
        record = disk.usage_record(target, st[target])
        assert record["size_bytes"] == int(size), target
        if target == "/":  # written to between the two commands: only the static figures
            assert record["inodes_total"] == int(itotal)
            continue
        assert (record["used_bytes"], record["avail_bytes"]) == (int(used), int(avail)), target
        if pcent == "-":
            assert record["used_fraction"] is None and record["inodes_total"] is None
        else:  # df rounds Use% up
            assert -(-record["used_fraction"] * 100 // 1) == int(pcent.rstrip("%")), target
            assert (record["inodes_total"], record["inodes_used"]) == (int(itotal), int(iused))


# ---------------------------------------------------------------------------------------------
# Quota tools: readers, and malformed input


def _tool(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def test_readers_run_the_tools_and_accept_quotas_exit_1(tmp_path):
    capture = FIXTURES / "quota" / "quota-tools-4.06"
    repquota = _tool(
        tmp_path,
        "repquota",
        'if [ "$4" = / ]; then echo "repquota: Mountpoint (or device) / not found or has no'
        ' quota enabled." >&2; exit 1; fi\n'
        f"cat {capture / 'repquota-a-u-g-p.txt'}",
    )
    assert disk.read_repquota(["/"], repquota=repquota) == []
    quota = _tool(tmp_path, "quota", f"cat {capture / 'quota-v-w-p-u-alice-bob.txt'}; exit 1")
    records = disk.read_repquota(["/", "/tmp/qfs/mnt"], repquota=repquota)
    assert {(r["kind"], r["name"], r["filesystem"]) for r in records} >= {
        ("user", "alice", "/dev/loop0"),
        ("group", "bob", "/dev/loop0"),
    }
    over = [r for r in disk.read_quota(["alice", "bob"], quota=quota) if r["over_soft"]]
    assert {(r["name"], r["filesystem"]) for r in over} == {
        ("alice", "/dev/loop0"),
        ("alice", "/dev/loop1"),
        ("bob", "/dev/loop0"),
        ("bob", "/dev/loop1"),
    }


def test_absent_failing_or_hanging_tools_give_nothing(tmp_path):
    assert disk.read_repquota(repquota=str(tmp_path / "not-installed")) == []
    assert disk.read_lfs_quota("alice", "/lustre", lfs=str(tmp_path / "no-lfs")) == []
    failing = _tool(tmp_path, "lfs", "echo 'user quotas are not enabled.' >&2; exit 3")
    assert disk.read_lfs_quota("alice", "/lustre", lfs=failing) == []
    pidfile = tmp_path / "child.pid"
    hanging = _tool(tmp_path, "repquota", f"sleep 600 & echo $! > {pidfile}; wait")
    assert disk.read_repquota(repquota=hanging, timeout=0.5) == []
    written = pidfile.read_text().strip() if pidfile.exists() else ""  # empty: killed first
    if written:
        _wait_until(lambda: _gone(int(written)))  # the tool's own children die with it


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


BAD = [
    ("repquota", "hello\n", 1),
    ("repquota", "*** Report for user quotas on device /dev/sda1\n---\nalice 12 0 0 0 1 0 0\n", 3),
    (
        "repquota",
        "*** Report for user quotas on device /dev/sda1\n---\nalice -- 12 x 0 0 1 0 0 0\n",
        3,
    ),
    ("quota", "not quota output\n", 1),
    (
        "quota",
        "Disk quotas for user a (uid 1):\n  Filesystem blocks quota limit grace files quota"
        " limit grace\n  /dev/sda1  12  0  0  1  0\n",
        3,
    ),
    (
        "quota",
        "Disk quotas for user a (uid 1):\n  Filesystem blocks quota limit grace files quota"
        " limit grace\n  /dev/sda1  12*  0  0  soon  1  0  0  0\n",
        3,
    ),
    (
        "lfs-quota",
        "Disk quotas for usr a (uid 1):\n     Filesystem  kbytes   quota   limit   grace   files"
        "   quota   limit   grace\n  /lustre  12  0  0  -  1  0  0\n",
        3,
    ),
    ("lfs-quota", "/lustre 12* 0 0 sometime 1 0 0 -\n", 1),
    ("kernel-errors", "[    1.0] ok\n\x00\x01\x02", 2),
]


@pytest.mark.parametrize(
    ("kind", "text", "line"), BAD, ids=[f"{k}-{i}" for i, (k, *_) in enumerate(BAD)]
)
def test_malformed_input_names_source_and_line(kind, text, line):
    with pytest.raises(ParseError) as info:
        registry.parser(kind)(text, "capture.txt")
    assert (info.value.source, info.value.line) == ("capture.txt", line)
    assert str(info.value).startswith(f"capture.txt:{line}: ")


def test_lfs_quota_q_takes_kind_and_name_from_the_caller():
    [record] = disk.parse_lfs_quota(
        "/lustre 1024* 1000 2000 6d23h59m57s 3 0 0 -\n", "lfs quota -q", "usr", "bob"
    )
    assert (record["kind"], record["name"], record["id"]) == ("user", "bob", None)
    assert record["block_grace_seconds"] == 6 * 86400 + 23 * 3600 + 59 * 60 + 57
    assert record["soft_limit_bytes"] == 1000 * 1024 and record["over_soft"] is True


# ---------------------------------------------------------------------------------------------
# hwmon, EDAC


def test_hwmon_value_that_is_not_a_number_names_the_file(tmp_path):
    chip = tmp_path / "hwmon0"
    chip.mkdir()
    (chip / "name").write_text("coretemp\n")
    (chip / "temp1_input").write_text("hot\n")
    with pytest.raises(ParseError) as info:
        health.parse_hwmon(str(tmp_path))
    assert info.value.source == str(chip / "temp1_input") and info.value.line == 1
    assert "millidegrees" in info.value.reason


def test_hwmon_unreadable_sensor_is_none_and_absent_root_is_empty(tmp_path):
    chip = tmp_path / "hwmon3"
    chip.mkdir()
    (chip / "name").write_text("nvme\n")
    (chip / "temp1_input").mkdir()  # reading it fails with an OSError, as EIO from a driver
    (chip / "temp1_crit").write_text("84850\n")
    [record] = health.parse_hwmon(str(tmp_path))
    assert record["temp_celsius"] is None and record["crit_celsius"] == 84.85
    assert health.parse_hwmon(str(tmp_path / "none")) == []
    assert health.parse_edac(str(tmp_path / "none")) == []


def test_edac_count_that_is_not_a_number_names_the_file(tmp_path):
    (tmp_path / "mc0").mkdir()
    (tmp_path / "mc0" / "ce_count").write_text("many\n")
    with pytest.raises(ParseError) as info:
        health.parse_edac(str(tmp_path))
    assert info.value.source == str(tmp_path / "mc0" / "ce_count")


# ---------------------------------------------------------------------------------------------
# Kernel errors


def test_kernel_errors_categories_on_a_dmesg_excerpt():
    text = (ROOT / "tests" / "cases" / "node-kernel-errors-handmade" / "input").read_text()
    records = health.parse_kernel_errors(text)
    by_category: dict[str, set] = {}
    for record in records:
        by_category.setdefault(record["category"], set()).add(record["device"])
    assert by_category["edac"] == {"mc0", "mc1"}
    assert by_category["gpu_xid"] == {"0000:3b:00", "0000:af:00"}
    assert {"sda", "sda2", "ata1.00", "nvme0", "nvme0n1"} <= by_category["disk"]
    assert by_category["filesystem"] == {"sda2", "nvme0n1p1"}
    assert by_category["pcie"] == {"0000:3b:00.0"}
    assert "cpu17" in by_category["mce"] and by_category["thermal"] == {"cpu12", "cpu40"}
    assert by_category["nfs"] == {"nas01"} and by_category["lockup"] == {"cpu7"}
    messages = " ".join(r["message"] for r in records)
    for ordinary in (
        "Thermal monitoring enabled",
        "Giving out device",
        "AER: enabled with IRQ",
        "configured for UDMA",
        "Ending clean mount",
        "nfs: server nas01 OK",
        "temperature/speed normal",
        "GPU at PCI",
        "Memory cgroup out of memory",
    ):
        assert ordinary not in messages, ordinary


def test_kernel_errors_read_every_log_format():
    lines = [
        "[Tue Mar  5 10:02:11 2024] EDAC MC1: 2 CE memory read error on DIMM_B1",
        "kern  :err   : [ 8123.441031] EDAC MC1: 1 UE memory read error on DIMM_B1",
        "3,1201,8123441031,-;nfs: server nas02 not responding, still trying",
        " SUBSYSTEM=nfs",
        "Mar  5 10:02:11 node017 kernel: [ 8124.000001] Buffer I/O error on dev sdb1,"
        " logical block 7",
        "ata3.00: failed command: WRITE FPDMA QUEUED",
    ]
    records = health.parse_kernel_errors("\n".join(lines), "mixed")
    got = [(r["line"], r["category"], r["device"], r["uptime_seconds"]) for r in records]
    assert got == [
        (1, "edac", "mc1", None),
        (2, "edac", "mc1", 8123.441031),
        (3, "nfs", "nas02", 8123.441031),
        (5, "disk", "sdb1", 8124.000001),
        (6, "disk", "ata3.00", None),
    ]
    assert records[2]["message"] == "nfs: server nas02 not responding, still trying"


def test_read_kmsg_reads_records_until_none_is_left(tmp_path):
    path = tmp_path / "kmsg"
    path.write_bytes(b"6,1,100,-;first\n6,2,200,-;second\n")
    assert health.read_kmsg(str(path)) == "6,1,100,-;first\n6,2,200,-;second\n"
    assert health.read_kmsg(str(tmp_path / "absent")) is None


# ---------------------------------------------------------------------------------------------
# Daemons


def test_services_from_proc_comm(tmp_path):
    for pid, comm in ((812, "slurmd"), (640, "munged"), (2210, "slurmstepd"), (813, "slurmd")):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "comm").write_text(comm + "\n")
    (tmp_path / "4242").mkdir()  # a process that exited while we looked: no comm
    (tmp_path / "self").mkdir()
    got = {r["name"]: (r["running"], r["pids"]) for r in health.services(str(tmp_path))}
    assert got == {
        "slurmd": (True, [812, 813]),
        "munged": (True, [640]),
        "slurmctld": (False, []),
        "slurmdbd": (False, []),
    }


# ---------------------------------------------------------------------------------------------
# Scratch hygiene

NOW = 1_800_000_000.0


def _entries() -> scratch.Scan:
    files = [
        scratch.Entry("/scratch/a/big.h5", 2001, 20 << 30, NOW - 3600),
        scratch.Entry("/scratch/a/old.log", 2001, 1000, NOW - 90 * 86400),
        scratch.Entry("/scratch/b/left.dat", 2002, 5000, NOW - 3600),
        scratch.Entry("/scratch/b/left-old.tar", 2002, 12 << 30, NOW - 40 * 86400),
        scratch.Entry("/scratch/c/ok.txt", 2003, 10, NOW - 60),
    ]
    return scratch.Scan("/scratch", files=files, entries=8, dirs=4)


def test_orphans_are_files_of_owners_without_a_running_job():
    records = scratch.report(
        _entries(), NOW, large_bytes=10 << 30, stale_days=30, running_uids={2001, 2003}
    )
    files = {r["path"]: r for r in records if r["record"] == "scratch_file"}
    assert set(files) == {
        "/scratch/a/big.h5",
        "/scratch/a/old.log",
        "/scratch/b/left.dat",
        "/scratch/b/left-old.tar",
    }
    assert files["/scratch/b/left.dat"]["orphaned"] and not files["/scratch/a/big.h5"]["orphaned"]
    flags = files["/scratch/b/left-old.tar"]
    assert (flags["large"], flags["stale"], flags["orphaned"]) == (True, True, True)
    assert (files["/scratch/a/old.log"]["stale"], files["/scratch/a/old.log"]["large"]) == (
        True,
        False,
    )
    owners = {r["uid"]: r for r in records if r["record"] == "scratch_owner"}
    assert owners[2002]["orphaned"] is True and owners[2001]["orphaned"] is False
    assert (owners[2002]["files"], owners[2002]["bytes"]) == (2, 5000 + (12 << 30))
    assert (owners[2001]["stale_files"], owners[2001]["stale_bytes"]) == (1, 1000)
    [summary] = [r for r in records if r["record"] == "scratch_summary"]
    assert (summary["large_files"], summary["stale_files"], summary["orphaned_files"]) == (2, 2, 2)


def test_without_running_uids_nothing_is_orphaned():
    records = scratch.report(_entries(), NOW, running_uids=None)
    assert not any(r.get("orphaned") for r in records)
    assert {r["orphaned"] for r in records if r["record"] == "scratch_owner"} == {None}


def test_flagged_file_list_keeps_the_largest():
    records = scratch.report(_entries(), NOW, large_bytes=1, running_uids=None, max_files=2)
    paths = [r["path"] for r in records if r["record"] == "scratch_file"]
    assert paths == ["/scratch/a/big.h5", "/scratch/b/left-old.tar"]
    assert records[0]["files_listed"] == 2 and records[0]["large_files"] == 5


def test_walk_stops_at_max_entries_and_says_so(tmp_path):
    for i in range(30):
        (tmp_path / f"f{i}").write_text("x")
    scanned = scratch.scan(str(tmp_path), max_entries=10)
    assert scanned.entries == 10 and len(scanned.files) == 10
    assert scanned.truncated_by == "max_entries"
    summary = scratch.report(scanned, time.time())[0]
    assert summary["truncated"] is True and summary["truncated_by"] == "max_entries"
    assert scratch.scan(str(tmp_path), max_entries=100).truncated_by is None


def test_walk_stops_at_max_seconds(tmp_path):
    for i in range(5):
        (tmp_path / f"d{i}").mkdir()
        (tmp_path / f"d{i}" / "f").write_text("x")
    ticks = iter(range(1000))  # a clock that advances one second per look
    scanned = scratch.scan(str(tmp_path), max_seconds=3, clock=lambda: float(next(ticks)))
    assert scanned.truncated_by == "max_seconds" and scanned.entries < 10


def test_walk_never_follows_links(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "huge.bin").write_bytes(b"x" * 4096)
    root = tmp_path / "scratch"
    root.mkdir()
    (root / "real.txt").write_text("hello")
    (root / "dirlink").symlink_to(outside, target_is_directory=True)
    (root / "filelink").symlink_to(outside / "huge.bin")
    scanned = scratch.scan(str(root))
    assert [Path(f.path).name for f in scanned.files] == ["real.txt"]
    assert scanned.entries == 3 and scanned.dirs == 1


def test_walk_does_not_cross_into_another_filesystem(tmp_path, monkeypatch):
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "a").write_text("a")
    (tmp_path / "mnt").mkdir()
    (tmp_path / "mnt" / "remote").write_text("b")
    real_scandir = os.scandir

    class OnOtherDevice:
        """A directory entry for a directory that another filesystem is mounted on."""

        def __init__(self, entry):
            self._entry, self.path, self.name = entry, entry.path, entry.name

        def stat(self, follow_symlinks=True):
            st = list(self._entry.stat(follow_symlinks=follow_symlinks))
            st[stat.ST_DEV] += 1
            return os.stat_result(st)

    class Listing:
        def __init__(self, path):
            self._it = real_scandir(path)

        def __enter__(self):
            return (OnOtherDevice(e) if e.name == "mnt" else e for e in self._it)

        def __exit__(self, *exc):
            self._it.close()

    monkeypatch.setattr(os, "scandir", Listing)
    scanned = scratch.scan(str(tmp_path))
    assert [Path(f.path).name for f in scanned.files] == ["a"]
    assert scanned.other_filesystems == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to other uids needs root")
def test_read_reports_real_files_by_owner(tmp_path):
    (tmp_path / "alice").mkdir()
    (tmp_path / "alice" / "out.dat").write_bytes(b"x" * 100)
    (tmp_path / "bob.tmp").write_bytes(b"y" * 10)
    os.chown(tmp_path / "alice" / "out.dat", 2001, 2001)
    os.chown(tmp_path / "bob.tmp", 2002, 2002)
    old = time.time() - 40 * 86400
    os.utime(tmp_path / "bob.tmp", (old, old))
    records = scratch.read(str(tmp_path), running_uids={2001})
    files = {Path(r["path"]).name: r for r in records if r["record"] == "scratch_file"}
    assert set(files) == {"bob.tmp"} and files["bob.tmp"]["stale"] and files["bob.tmp"]["orphaned"]
    assert scratch.read(str(tmp_path / "absent")) == []


def test_leftover_job_dirs(tmp_path):
    for name in ("job_1234", "1235", "slurm-1236", "slurm_job_1237", "job_77", "notes", "job_x"):
        (tmp_path / name).mkdir()
    (tmp_path / "4321").write_text("a file, not a job directory")
    (tmp_path / "job_999").symlink_to(tmp_path / "notes", target_is_directory=True)
    records = scratch.leftover_job_dirs(str(tmp_path), running_job_ids=[77, "1235"])
    assert [(r["job_id"], Path(r["path"]).name) for r in records] == [
        ("1234", "job_1234"),
        ("1236", "slurm-1236"),
        ("1237", "slurm_job_1237"),
    ]
    assert scratch.leftover_job_dirs(str(tmp_path / "absent"), []) == []


def test_job_id_of():
    assert [scratch.job_id_of(n) for n in ("job_12", "12", "slurm-12", "slurm.12", "job.12")] == [
        "12"
    ] * 5
    assert [scratch.job_id_of(n) for n in ("job_", "_12", "jobs12x", "tmp")] == [None] * 4


# ---------------------------------------------------------------------------------------------
# Documentation and imports


def test_every_new_kind_and_field_is_documented():
    doc = (ROOT / "docs" / "parsers-health-disk.md").read_text()
    for kind in ("repquota", "quota", "lfs-quota", "hwmon", "edac", "kernel-errors"):
        assert f"`{kind}`" in doc, kind
        assert kind in registry.KINDS
    records = [
        disk.usage_record("/", None),
        *health.parse_kernel_errors("[1.0] nfs: server a not responding"),
        *health.services("/nonexistent"),
        *scratch.report(_entries(), NOW, running_uids={1}),
    ]
    fields = {key for record in records for key in record} | set(disk.QUOTA_FIELDS)
    fields |= {"temp_celsius", "max_celsius", "crit_celsius", "ce_count", "ue_count", "mc_name"}
    for name in sorted(fields):
        assert f"`{name}`" in doc, name


def test_new_collectors_import_no_heavy_library():
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "import collectors.disk, collectors.health\n"
        "import collectors.scratch\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'pandas', 'torch',"
        " 'aggregator', 'models', 'sklearn', 'scipy'})\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
