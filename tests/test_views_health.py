"""The cluster-side views on captured outputs: each capture goes through its real parser and
store.store_reading into a real store, and the view reads it back as `nomadectl` and the API
do.  Node health (aggregator/views/health.py), NFS rates (nfsrates.py), quotas, scratch, fair
share and partitions (clusterviews.py), and who sees what of them (policy.py)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT, required, shared

from aggregator import store
from aggregator.views import clusterviews, nfsrates, policy
from aggregator.views import health as nodehealth
from aggregator.views.policy import Caller, Forbidden
from collectors import disk, gpu, health, nfs, scratch
from collectors.slurm import scontrol, sinfo, sshare

NOW = 1_800_000_000.0
HISTORY = 600.0  # aggregator.readings_history_seconds, its default
ALICE = Caller(2001, "alice", groups=frozenset({"alice"}))
BOB = Caller(2002, "bob", groups=frozenset({"bob"}))
ROOT_CALLER = Caller(0, "root", admin=True)
H200_XML = FIXTURES / "gpu" / "h200-580.159.04" / "q-x.xml"
HWMON = FIXTURES / "sys" / "hwmon-handmade-2socket-intel-nvme"
EDAC = FIXTURES / "sys" / "edac-handmade-skx-2socket"
KERNEL_HANDMADE = ROOT / "tests" / "cases" / "node-kernel-errors-handmade" / "input"
KMSG_REAL = FIXTURES / "kernel" / "kmsg-firecracker-6.18.txt"
QUOTA = FIXTURES / "quota" / "quota-tools-4.06"
SLURM = FIXTURES / "slurm" / "22.05"


@pytest.fixture
def conn(tmp_path):
    c = store.open_store(str(tmp_path / "n.db"))
    yield c
    c.close()


def feed(conn, node: str, collector: str, t: float, records: list[dict]) -> None:
    """One reading, stored as the aggregator stores an agent's or a head collector's."""
    conn.execute("BEGIN")
    store.store_reading(conn, node, collector, t, 0.1, records, HISTORY)
    conn.execute("COMMIT")


def slurm_nodes(conn, **states: str) -> None:
    """Slurm's node states from the real `scontrol show node -o` capture (node1 mixed, node2
    idle), with STATES put in where a test needs a node down or drained."""
    records = scontrol.node_records((SLURM / "scontrol-show-node-o.txt").read_text())
    for r in records:
        if r["node"] in states:
            r["state"], r["reason"] = states[r["node"]], "test: bad DIMM"
    feed(conn, "head", "node_state", NOW - 30, records)


def agents(conn, **seen: tuple[str, float]) -> None:
    conn.execute("BEGIN")
    for node, (state, last) in seen.items():
        conn.execute(
            "INSERT INTO nodes (node, first_seen, last_seen, state) VALUES (?, 1, ?, ?)",
            (node, last, state),
        )
    conn.execute("COMMIT")


def by_node(view: dict) -> dict[str, dict]:
    return {n["node"]: n for n in view["nodes"]}


def handmade_health() -> list[dict]:
    return (
        health.parse_hwmon(str(HWMON))
        + health.parse_edac(str(EDAC))
        + health.parse_kernel_errors(KERNEL_HANDMADE.read_text(), "dmesg")
        + health.services(str(FIXTURES / "proc"), ["slurmd"])  # the capture has no slurmd
    )


# -- node health --------------------------------------------------------------------------------
def test_gpu_state_comes_from_the_captured_nvidia_smi_xml(conn):
    slurm_nodes(conn)
    agents(conn, node1=("up", NOW - 5), node2=("up", NOW - 5))
    feed(conn, "node1", "gpu", NOW - 20, gpu.parse_xml(H200_XML.read_text(), str(H200_XML)))
    feed(conn, "node1", "health", NOW - 20, [])
    feed(conn, "node2", "health", NOW - 20, [])
    n = by_node(clusterviews.nodes(conn, now=NOW))
    g = n["node1"]["gpus"]
    # What the capture says: one H200, 100 % busy, 1869 MiB used of 143771 MiB, 58 °C, 548 W.
    assert (g["count"], g["util_gpu_percent"], g["temperature_max_c"]) == (1, 100.0, 58.0)
    assert g["memory_used_bytes"] == 1869 << 20 and g["memory_total_bytes"] == 143771 << 20
    assert (g["power_draw_w"], g["power_limit_w"]) == (548.02, 700.0)
    assert g["devices"][0]["name"] == "NVIDIA H200" and g["devices"][0]["problems"] == []
    assert n["node1"]["problems"] == [] and n["node1"]["severity"] == 0
    assert n["node2"]["gpus"] is None  # no GPU reading: no GPU, not zero GPUs in use


@pytest.mark.parametrize("case", sorted(p.name for p in (ROOT / "tests/cases").glob("gpu-xml-*")))
def test_every_captured_gpu_model_is_counted_with_its_readings(conn, case):
    source = (ROOT / "tests/cases" / case / "source").read_text().strip()
    path = shared(*source.removeprefix("shared:").split("/"))
    records = gpu.parse_xml(path.read_text(), str(path))
    slurm_nodes(conn)
    feed(conn, "node1", "gpu", NOW - 20, records)
    g = by_node(clusterviews.nodes(conn, now=NOW))["node1"]["gpus"]
    gpus = [r for r in records if r["record"] == "gpu"]
    assert g["count"] == len(gpus)
    assert g["memory_total_bytes"] == sum(r["memory_total_bytes"] for r in gpus)
    assert [d["bus_id"] for d in g["devices"]] == [r["bus_id"] for r in gpus]


def test_an_xid_in_the_kernel_log_is_put_on_its_gpu(conn):
    slurm_nodes(conn)
    agents(conn, node1=("up", NOW - 5), node2=("up", NOW - 5))
    feed(conn, "node1", "gpu", NOW - 20, gpu.parse_xml(H200_XML.read_text()))
    # The hand-made kernel log's Xid 79 line, readdressed to the captured H200's PCI address
    # (nvidia-smi 00000000:00:06.0, the kernel's 0000:00:06), and an application's Xid 13.
    line = next(ln for ln in KERNEL_HANDMADE.read_text().splitlines() if "Xid" in ln)
    xid79 = line.replace("0000:3b:00", "0000:00:06")
    xid13 = xid79.replace("): 79,", "): 13,").replace("[12550.", "[12551.")
    feed(conn, "node1", "health", NOW - 20, health.parse_kernel_errors(f"{xid79}\n{xid13}\n"))
    feed(conn, "node2", "health", NOW - 20, health.parse_kernel_errors(xid13))
    n = by_node(clusterviews.nodes(conn, now=NOW))
    device = n["node1"]["gpus"]["devices"][0]
    assert device["xids"] == [13, 79] and device["problems"] == ["xid"]
    assert n["node1"]["problems"] == ["xid"] and n["node1"]["severity"] == 4
    assert "79" in n["node1"]["problem_details"]["xid"]
    # Xid 13 alone is the application's (a graphics engine exception): listed, no problem
    assert n["node2"]["health"]["kernel_errors"]["xids"][0]["xid"] == 13
    assert n["node2"]["problems"] == []


def test_hardware_errors_from_captured_edac_and_kernel_logs_put_the_node_first(conn):
    slurm_nodes(conn)
    agents(conn, node1=("up", NOW - 5), node2=("up", NOW - 5))
    feed(conn, "node2", "health", NOW - 20, handmade_health())
    # node1: the real kernel log of the development VM (OOM kills, firmware warnings: no
    # hardware error), without sensors or EDAC.
    real = health.parse_kernel_errors(KMSG_REAL.read_text(), "/dev/kmsg")
    feed(conn, "node1", "health", NOW - 20, real)
    view = clusterviews.nodes(conn, now=NOW)
    assert [n["node"] for n in view["nodes"]] == ["node2", "node1"]  # worst first
    bad, good = view["nodes"]
    h = bad["health"]
    assert (h["edac"]["ce_count"], h["edac"]["ue_count"]) == (3, 1)  # mc0 3 CE, mc1 1 UE
    assert h["kernel_errors"]["counts"]["mce"] >= 1
    assert h["temperature"]["hottest"]["sensor"] == "Core 8"
    assert h["temperature"]["hottest"]["temp_celsius"] == 97.0
    assert h["temperature"]["hottest"]["max_celsius"] == 84.0
    # the NVMe's bogus 65261.85 °C "max" is no limit
    nvme = [s for s in h["temperature"]["over"] if s["chip"] == "nvme"]
    assert nvme == []
    assert bad["severity"] == 5 and bad["problems"][:3] == ["ue", "mce", "gpu-lost"]
    assert {"xid", "hot", "throttled", "service-down", "disk-errors", "ce"} <= set(bad["problems"])
    assert "slurmd" in bad["problem_details"]["service-down"]
    assert good["problems"] == [] and good["health"]["kernel_errors"]["counts"] == {}


def test_temperatures_absent_in_a_vm_are_unknown_not_zero(conn, tmp_path):
    slurm_nodes(conn)
    agents(conn, node1=("up", NOW - 5))
    empty = tmp_path / "sys-without-hwmon"
    empty.mkdir()
    feed(conn, "node1", "health", NOW - 20, health.parse_hwmon(str(empty)))
    n = by_node(clusterviews.nodes(conn, now=NOW))["node1"]
    assert n["health"]["temperature"] is None and n["health"]["edac"] is None
    assert "hot" not in n["problems"]


def test_down_drained_and_silent_nodes_come_before_hardware_errors(conn):
    slurm_nodes(conn, node1="drained")
    agents(conn, node1=("up", NOW - 5), node2=("down", NOW - 900))
    feed(conn, "node1", "health", NOW - 20, [])
    feed(conn, "node2", "health", NOW - 20, [])
    feed(conn, "node3", "health", NOW - 20, handmade_health())
    agents(conn, node3=("up", NOW - 5))  # an agent on a node Slurm does not list
    view = clusterviews.nodes(conn, now=NOW)
    order = [(n["node"], n["problems"][0], n["severity"]) for n in view["nodes"]]
    assert order == [("node1", "drained", 6), ("node2", "agent-silent", 6), ("node3", "ue", 5)]
    assert "bad DIMM" in view["nodes"][0]["problem_details"]["drained"]
    assert "900" in view["nodes"][1]["problem_details"]["agent-silent"]


def test_kernel_errors_count_once_across_readings_and_only_within_the_window(conn):
    slurm_nodes(conn)
    errors = health.parse_kernel_errors(KERNEL_HANDMADE.read_text())
    mce = [e for e in errors if e["category"] == "mce"]
    feed(conn, "node1", "health", NOW - 30 * 3600, mce[:1])  # a day and more ago
    feed(conn, "node1", "health", NOW - 2 * HISTORY, mce)
    feed(conn, "node1", "health", NOW - HISTORY, mce[1:])  # the same lines again
    n = by_node(clusterviews.nodes(conn, now=NOW, hours=24))["node1"]
    assert n["health"]["kernel_errors"]["counts"] == {"mce": len(mce)}
    n = by_node(clusterviews.nodes(conn, now=NOW, hours=0.2))["node1"]  # the newest reading
    assert n["health"]["kernel_errors"]["counts"] == {"mce": len(mce) - 1}


def test_every_problem_word_has_a_severity_and_the_order_is_the_documented_one():
    assert nodehealth.severity([]) == 0
    assert nodehealth.severity(["ce", "down"]) == 6
    tiers = [nodehealth.PROBLEMS[w][0] for w in ("down", "ue", "xid", "hot", "service-down", "ce")]
    assert tiers == sorted(tiers, reverse=True) and len(set(tiers)) == len(tiers)
    doc = (ROOT / "docs" / "api.md").read_text()
    for word in nodehealth.PROBLEMS:
        assert f"`{word}`" in doc, word


# -- NFS rates ----------------------------------------------------------------------------------
def bump(text: str, seconds: int, ops: int, read: int, rtt_ms: int, retrans: int) -> str:
    """A second capture made from a real one: the mount SECONDS older, and its READ line and
    read byte counters grown as SECONDS of reading would grow them (OPS reads, READ bytes,
    RTT_MS summed round trip, RETRANS transmissions more than operations)."""

    def age(m: re.Match) -> str:
        return f"{m[1]}{int(m[2]) + seconds}"

    def bytes_line(m: re.Match) -> str:
        values = m[2].split()
        values[0] = str(int(values[0]) + read)  # normal read bytes
        values[4] = str(int(values[4]) + read)  # read from the server
        return m[1] + " ".join(values)

    def read_line(m: re.Match) -> str:
        v = [int(x) for x in m[2].split()]
        v[0] += ops
        v[1] += ops + retrans
        v[4] += read
        v[6] += rtt_ms
        v[7] += rtt_ms
        return m[1] + " ".join(map(str, v))

    text = re.sub(r"^(\s*age:\s+)(\d+)$", age, text, flags=re.M)
    text = re.sub(r"^(\s*bytes:\s+)(.*)$", bytes_line, text, flags=re.M)
    return re.sub(r"^(\s*READ: )(.*)$", read_line, text, flags=re.M)


def test_nfs_rates_between_two_captures_of_mountstats(conn):
    path = shared("procfs", "prometheus_node_exporter", "proc_10_mountstats")
    first = path.read_text()
    second = bump(first, seconds=600, ops=1200, read=600 << 20, rtt_ms=3600, retrans=6)
    feed(conn, "node1", "nfs", NOW - 1200, nfs.parse_mountstats(first, str(path)))
    feed(conn, "node1", "nfs", NOW - 600, nfs.parse_mountstats(second, "bumped"))
    view = nfsrates.nfs(conn, now=NOW, hours=1)
    mounts = {(m["mount_point"], m["fstype"]): m for m in view["mounts"]}
    assert set(mounts) == {
        ("/mnt/nfs/test", "nfs4"),
        ("/mnt/nfs/test-dupe", "nfs4"),
        ("/mnt/nfs/test-dupe", "nfs"),
    }
    r = mounts[("/mnt/nfs/test", "nfs4")]["latest"]
    assert r["seconds"] == 600 and r["reset"] is False
    assert r["read_ops_per_s"] == 2.0 and r["ops_per_s"] == 2.0
    assert r["read_bytes_per_s"] == 1 << 20 and r["server_read_bytes_per_s"] == 1 << 20
    assert r["write_bytes_per_s"] == 0
    assert r["read_rtt_ms"] == 3.0 and r["rtt_ms"] == 3.0  # 3600 ms over 1200 reads
    assert r["retrans"] == 6 and r["retrans_per_s"] == 0.01
    assert mounts[("/mnt/nfs/test", "nfs4")]["server"] == "192.168.1.1"


def test_nfs_rates_across_a_remount_and_an_irregular_interval(conn):
    path = shared("procfs", "prometheus_node_exporter", "proc_10_mountstats")
    first = path.read_text()
    later = bump(first, seconds=900, ops=900, read=900 << 10, rtt_ms=900, retrans=0)
    # After a remount the counters start again: the first capture with its mount 300 s old.
    remounted = re.sub(r"^(\s*age:\s+)\d+$", r"\g<1>300", first, flags=re.M)
    t = [NOW - 3000, NOW - 2100, NOW - 600]  # 900 s, then 1500 s: a missed reading between
    for when, text in zip(t, (first, later, remounted), strict=True):
        feed(conn, "node1", "nfs", when, nfs.parse_mountstats(text))
    view = nfsrates.nfs(conn, now=NOW, hours=1, node="node1")
    m = next(m for m in view["mounts"] if m["mount_point"] == "/mnt/nfs/test")
    steady, reset = m["intervals"]
    assert steady["seconds"] == 900 and steady["read_ops_per_s"] == 1.0 and not steady["reset"]
    assert steady["read_bytes_per_s"] == 1024
    # The counters went down: no negative rate, but the new mount's counters over its age.
    assert reset["reset"] is True and reset["seconds"] == 1500
    assert reset["read_ops_per_s"] == round(1298 / 300, 3)
    assert all(v is None or v >= 0 for k, v in reset.items() if k.endswith("_per_s"))
    assert m["latest"] == reset
    assert nfsrates.nfs(conn, now=NOW, hours=1, node="node2")["mounts"] == []


def test_a_reset_without_the_mounts_age_has_no_rate_rather_than_a_wrong_one():
    a = {"age_seconds": None, "read_ops": 500, "read_bytes": 10}
    b = {"age_seconds": None, "read_ops": 20, "read_bytes": 4}
    r = nfsrates.rates(a, b, 0.0, 600.0)
    assert r["reset"] is True and r["read_ops_per_s"] is None and r["read_bytes_per_s"] is None
    # a mount younger than the interval is a remount even if its counters grew past the old
    a, b = {"age_seconds": 5000, "read_ops": 10}, {"age_seconds": 100, "read_ops": 400}
    assert nfsrates.rates(a, b, 0.0, 600.0)["read_ops_per_s"] == 4.0


def test_one_nfs_reading_gives_no_rate_yet(conn):
    path = shared("procfs", "prometheus_node_exporter", "proc_10_mountstats")
    feed(conn, "node1", "nfs", NOW - 60, nfs.parse_mountstats(path.read_text()))
    view = nfsrates.nfs(conn, now=NOW)
    assert view["mounts"] and all(m["latest"] is None for m in view["mounts"])


# -- quotas -------------------------------------------------------------------------------------
def quota_readings(conn) -> None:
    """node1's repquota (user and group quotas of both filesystems) and node2's `quota` of
    alice and bob: the same quotas, seen twice, kept once (the newest)."""
    feed(
        conn,
        "node1",
        "disk",
        NOW - 600,
        disk.parse_repquota((QUOTA / "repquota-a-u-g.txt").read_text()),
    )
    q = disk.parse_quota((QUOTA / "quota-v-w-p-u-alice-bob.txt").read_text())
    feed(conn, "node2", "disk", NOW - 300, q)


def test_quotas_from_captured_repquota_and_quota_closest_to_the_limit_first(conn):
    quota_readings(conn)
    rows = clusterviews.quotas(conn)["quotas"]
    keys = [(q["kind"], q["name"], q["filesystem"]) for q in rows]
    assert len(keys) == len(set(keys))
    fractions = [q["fraction"] for q in rows if q["fraction"] is not None]
    assert fractions == sorted(fractions, reverse=True)
    # bob on /dev/loop1 holds 2049 KiB of a 1000 KiB soft limit (the capture's setup.sh)
    bob = next(q for q in rows if q["name"] == "bob" and q["filesystem"] == "/dev/loop1")
    assert bob["kind"] == "user" and bob["used_bytes"] == 2049 * 1024 and bob["over_soft"]
    assert bob["space_fraction"] == round(2049 / 1000, 4) and bob["node"] == "node2"
    assert all(q["fraction"] is None for q in rows if q["name"] == "root")
    assert {q["name"] for q in clusterviews.quotas(conn, "alice")["quotas"]} == {"alice"}


def test_a_user_sees_their_own_quotas_and_their_groups_only(conn):
    quota_readings(conn)
    view = clusterviews.quotas(conn)
    alice = policy.quotas_view(ALICE, view)["quotas"]
    assert alice and {(q["kind"], q["name"]) for q in alice} <= {
        ("user", "alice"),
        ("group", "alice"),
    }
    assert "bob" not in str(alice)
    assert policy.quotas_view(ROOT_CALLER, view) == view
    assert policy.quotas_view(Caller(4242, None), view)["quotas"] == []
    # by uid where the tool gave one: a name alone is not enough
    assert not policy.own_quota(ALICE, {"kind": "user", "name": "alice", "id": 9999})
    assert policy.listing_user(ALICE, "bob") == ("alice", False)


# -- scratch: the collector's real walk over a tree of alice's and bob's files ------------------
@pytest.fixture
def scratch_tree(tmp_path):
    if os.geteuid() != 0:
        required("chown to alice and bob needs root (./test.sh runs as root)")
    root = tmp_path / "scratch"
    (root / "job_4242").mkdir(parents=True)
    files = {"big.dat": (2001, 5000, 0), "old.dat": (2002, 10, 60), "new.dat": (2002, 10, 0)}
    for name, (uid, size, days) in files.items():
        path = root / name
        path.write_bytes(b"x" * size)
        os.chown(path, uid, uid)
        os.utime(path, (NOW - days * 86400, NOW - days * 86400))
    os.chown(root / "job_4242", 2002, 2002)
    records = scratch.report(scratch.scan(str(root)), NOW, 1000, 30.0, {2001}, 100)
    records += scratch.leftover_job_dirs(str(root), [])
    return root, records


NAMES = {2001: "alice", 2002: "bob"}.get


def test_scratch_shows_large_stale_and_orphaned_per_user(conn, scratch_tree):
    root, records = scratch_tree
    feed(conn, "node1", "scratch", NOW - 60, records)
    v = clusterviews.scratch(conn, names=NAMES)
    assert [
        (f["node"], f["files"], f["large_files"], f["stale_files"]) for f in v["filesystems"]
    ] == [("node1", 3, 1, 1)]
    owners = {o["user"]: o for o in v["owners"]}
    assert owners["bob"]["orphaned"] is True and owners["alice"]["orphaned"] is False
    assert owners["bob"]["stale_bytes"] == 10 and owners["alice"]["bytes"] == 5000
    assert v["owners"][0]["user"] == "bob"  # no job there and stale data: first
    assert {Path(f["path"]).name for f in v["files"]} == {"big.dat", "old.dat", "new.dat"}
    assert [(d["job_id"], d["user"]) for d in v["leftover_dirs"]] == [("4242", "bob")]
    mine = policy.scratch_view(ALICE, v)
    assert [o["user"] for o in mine["owners"]] == ["alice"] and mine["leftover_dirs"] == []
    assert {Path(f["path"]).name for f in mine["files"]} == {"big.dat"}
    assert mine["filesystems"] == v["filesystems"]  # totals that name nobody
    assert clusterviews.scratch(conn, "bob", names=NAMES)["owners"][0]["user"] == "bob"


# -- fair share and partitions ------------------------------------------------------------------
def test_fairshare_as_sshare_shows_it_and_under_private_data_only_ones_own(conn):
    records = sshare.records((SLURM / "sshare-a-l-P.txt").read_text())
    feed(conn, "head", "fairshare", NOW - 60, records)
    v = clusterviews.fairshare(conn, now=NOW)
    assert len(v["associations"]) == len(records) and v["age_seconds"] == 60
    assert policy.fairshare_view(ALICE, frozenset(), v) == v
    assert policy.fairshare_view(ALICE, frozenset({"jobs"}), v) == v
    for flag in ("usage", "users", "accounts"):
        mine = policy.fairshare_view(ALICE, frozenset({flag}), v)["associations"]
        assert {(r["account"], r["user"]) for r in mine} == {
            ("physics", None),
            ("physics", "alice"),
            ("research", None),
            ("research", "alice"),
        }
    assert policy.fairshare_view(ROOT_CALLER, frozenset({"users"}), v) == v


@pytest.mark.parametrize(
    "kind, path",
    [("text", "sinfo-nomade.txt"), ("json", "sinfo.json")],
)
def test_partitions_from_captured_sinfo(conn, kind, path):
    text = (SLURM / path).read_text()
    records = sinfo.records(text) if kind == "text" else sinfo.records_json(text)
    feed(conn, "head", "partitions", NOW - 60, records)
    v = clusterviews.partitions(conn, now=NOW)
    parts = {p["partition"]: p for p in v["partitions"]}
    assert set(parts) == {"debug", "long"}
    assert parts["debug"]["nodes"] == ["node1", "node2"] and parts["debug"]["cpus"] == 16
    assert parts["debug"]["states"] == {"mixed": 1, "idle": 1} or kind == "json"
    if kind == "text":  # 22.05's sinfo --json names neither the default nor the limit
        assert parts["debug"]["default"] is True and parts["debug"]["time_limit_seconds"] == 3600


def test_a_partition_with_a_down_node_comes_first(conn):
    path = shared("slurm", "rivosinc_prometheus-slurm-exporter", "sinfo_json_21.08.5.json")
    feed(conn, "head", "partitions", NOW - 60, sinfo.records_json(path.read_text()))
    v = clusterviews.partitions(conn, now=NOW)
    assert v["partitions"][0]["unavailable_nodes"] >= 1
    assert all(p["unavailable_nodes"] == 0 for p in v["partitions"][1:])


def test_partitions_are_hidden_where_private_data_hides_them():
    view = {"partitions": [{"partition": "debug", "nodes": ["node1"]}]}
    policy.partitions_allowed(ALICE, frozenset({"jobs"}))
    with pytest.raises(Forbidden, match="PrivateData=partitions"):
        policy.partitions_allowed(ALICE, frozenset({"partitions"}))
    policy.partitions_allowed(ROOT_CALLER, frozenset({"partitions"}))
    assert policy.partitions_view(ALICE, frozenset({"nodes"}), view)["partitions"][0]["nodes"] == []
    assert policy.partitions_view(ROOT_CALLER, frozenset({"nodes"}), view) == view


def test_a_user_gets_the_kernel_error_counts_not_the_lines(conn):
    slurm_nodes(conn)
    feed(conn, "node1", "health", NOW - 20, handmade_health())
    view = clusterviews.nodes(conn, now=NOW)
    shown = by_node(policy.nodes_view(ALICE, view))["node1"]["health"]["kernel_errors"]
    assert shown["recent"] == [] and shown["counts"]["mce"] >= 1
    assert "python" not in str(policy.nodes_view(ALICE, view))  # a process name of a job
    assert by_node(policy.nodes_view(ROOT_CALLER, view))["node1"]["health"]["kernel_errors"][
        "recent"
    ]


def test_one_kind_of_record_is_picked_from_the_history_and_the_latest_reading(conn):
    for i in reversed(range(10)):  # oldest first, as they arrive
        feed(conn, "node1", "health", NOW - i * HISTORY, health.parse_hwmon(str(HWMON)))
    feed(conn, "node1", "health", NOW + 1, health.parse_hwmon(str(HWMON)))  # latest, not kept
    assert store.reading_records_between(conn, "health", "kernel_error", NOW - 86400) == []
    found = store.reading_records_between(conn, "health", "temperature", NOW - 86400)
    sensors = len(health.parse_hwmon(str(HWMON)))
    assert len(found) == 11 * sensors and found[-1][1] == NOW + 1
    assert {r["record"] for _, _, r in found} == {"temperature"}
    newest = store.reading_records_between(
        conn, "health", "temperature", NOW - 86400, limit=sensors
    )
    assert {t for _, t, _ in newest} == {NOW + 1}


def test_kernel_errors_between_kept_readings_are_not_lost(conn):
    # The health collector reports each logged line once and runs every 300 s, while one
    # reading per HISTORY seconds is kept: the reading with the error is neither kept as
    # history (the one before it is too recent) nor the newest once the next one arrives.
    slurm_nodes(conn)
    agents(conn, node1=("up", NOW - 5))
    errors = health.parse_kernel_errors(KERNEL_HANDMADE.read_text(), "dmesg")
    assert errors
    quiet: list[dict] = []
    for t, records in ((NOW - 900, quiet), (NOW - 600, errors), (NOW - 300, quiet), (NOW, quiet)):
        feed(conn, "node1", "health", t, records)
    n = by_node(clusterviews.nodes(conn, now=NOW))["node1"]
    assert n["health"]["kernel_errors"]["counts"].get("mce", 0) >= 1, n["health"]
