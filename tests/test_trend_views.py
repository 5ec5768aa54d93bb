"""`nomadectl disk`, GET /api/v1/disk and GET /api/v1/trend over a store filled through
store.store_reading with what the real disk parser (collectors/disk.py `usage_record`) makes of
the captured statvfs results in tests/fixtures/disk/statvfs.json.  The captures are of one
moment, so the free blocks are changed over constructed times (one reading every 10 minutes
for a day) to make usage grow the way each test needs; the parser computes used and available
bytes from them as it does on a node."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import ROOT as REPO
from test_views_hostile import answer

import nomadectl as ctl
from aggregator import store
from aggregator.views import trendviews
from aggregator.views.policy import Caller
from collectors import disk

STATVFS = json.loads((REPO / "tests" / "fixtures" / "disk" / "statvfs.json").read_text())
ALICE = Caller(2001, "alice", groups=frozenset({"alice"}))
ADMIN = Caller(0, "root", admin=True)
HOUR = 3600.0
STEPS = 145  # readings: one every 10 minutes over 24 hours
BLOCK = 4096  # the root filesystem's f_frsize in the capture


def usable(path: str) -> int:
    """What users may fill of PATH in the capture: used + available, in bytes."""
    st = STATVFS[path]
    return (st[2] - st[3] + st[4]) * st[1]


def reading(used_blocks: dict[str, int]) -> list[dict[str, Any]]:
    """The disk collector's filesystem records of the capture, with the used blocks of each path
    in USED_BLOCKS (the free and available blocks lowered by what was added)."""
    out = []
    for path, st in STATVFS.items():
        st = list(st)
        if path in used_blocks:
            grown = used_blocks[path] - (st[2] - st[3])
            st[3] -= grown
            st[4] -= grown
        out.append(disk.usage_record(path, st, True, 0.001))
    return out


# The root filesystem fills from rest, its used bytes a parabola in the hours τ since the first
# reading: used0 + C·τ², full 24 hours after the last reading (τ = 48).  At the last reading
# (τ = 24) it grows 48·C per hour, and on that line it would be full 36 hours later.
ROOT_USED0 = (STATVFS["/"][2] - STATVFS["/"][3]) * BLOCK
C = (usable("/") - ROOT_USED0) / 48**2
# /tmp/qfs/mnt (1 KiB blocks) grows on a line: 20 KiB an hour on node1.
MNT_USED0 = STATVFS["/tmp/qfs/mnt"][2] - STATVFS["/tmp/qfs/mnt"][3]


@pytest.fixture
def site(tmp_path):
    cfg = tmp_path / "n.toml"
    cfg.write_text(
        f'[general]\ndata_dir = "{tmp_path}/data"\n[security]\nkeys_dir = "{tmp_path}/keys"\n'
    )
    assert CliRunner().invoke(ctl.main, ["--config", str(cfg), "init"]).exit_code == 0
    db = str(tmp_path / "data" / "nomade.db")
    end = time.time() - 60.0  # the last reading, a minute ago
    conn = store.connect(db)
    conn.execute("BEGIN")
    for i in range(STEPS):
        tau = i / 6.0
        root = round((ROOT_USED0 + C * tau**2) / BLOCK)
        t = end - (24.0 - tau) * HOUR
        mnt = MNT_USED0 + round(20 * tau)
        store.store_reading(
            conn, "node1", "disk", t, 0.1, reading({"/": root, "/tmp/qfs/mnt": mnt}), 600.0
        )
        # node2 sees the same root filesystem (shared), read 30 s later; its other paths stay
        # as captured.
        store.store_reading(conn, "node2", "disk", t + 30, 0.1, reading({"/": root}), 600.0)
    conn.execute("COMMIT")
    conn.close()
    return cfg, db, end


def test_the_disk_view_gives_usage_fill_rate_acceleration_class_and_time_to_full(site):
    cfg, db, end = site
    now = end + 60.0
    v = trendviews.disk(store.connect(db), "/", hours=25, now=now)
    assert v["readings"] == 2 * STEPS and v["nodes"] == ["node1", "node2"]
    assert v["limit_bytes"] == usable("/")  # used + available: root's reserved blocks aside
    assert v["used_bytes"] == pytest.approx(ROOT_USED0 + C * 24**2, abs=BLOCK)
    assert v["class"] == "accelerating"
    assert v["fill_rate_bytes_per_hour"] == pytest.approx(48 * C, rel=1e-3)
    assert v["acceleration_bytes_per_hour2"] == pytest.approx(2 * C, rel=1e-3)
    quad, line = v["full"]["quadratic"], v["full"]["linear"]
    assert quad["at"] == pytest.approx(end + 30 + 24 * HOUR, abs=300)
    assert line["at"] == pytest.approx(end + 30 + 36 * HOUR, abs=300)
    assert quad["in_seconds"] == pytest.approx(quad["at"] - now)
    assert quad["band"] and quad["earliest_at"] <= quad["at"] <= quad["latest_at"]
    json.dumps(v, allow_nan=False)


def test_a_path_on_one_node_and_a_shorter_window(site):
    cfg, db, end = site
    conn = store.connect(db)
    v = trendviews.disk(conn, "/tmp/qfs/mnt/", hours=6, node="node1", now=end + 60)
    assert v["path"] == "/tmp/qfs/mnt" and v["nodes"] == ["node1"]
    assert v["readings"] == 36  # the readings of the 6 hours before now, every 10 minutes
    assert v["class"] == "growing"
    assert v["fill_rate_bytes_per_hour"] == pytest.approx(20 * 1024, rel=1e-3)
    left = usable("/tmp/qfs/mnt") - v["used_bytes"]
    assert v["full"]["linear"]["at"] == pytest.approx(end + left / (20 * 1024) * HOUR, rel=1e-3)
    # node2's /tmp/qfs/mnt is another filesystem of the same path, which does not grow.
    assert trendviews.disk(conn, "/tmp/qfs/mnt", node="node2", now=end + 60)["class"] == "stable"


def test_a_path_without_readings_says_which_paths_there_are(site):
    cfg, db, end = site
    v = trendviews.disk(store.connect(db), "/nope", now=end + 60)
    assert v["readings"] == 0 and v["class"] is None and v["full"] == {}
    assert "/" in v["known_paths"] and "/tmp/qfs/mnt" in v["known_paths"]
    out = CliRunner().invoke(ctl.main, ["--config", str(site[0]), "disk", "/nope"])
    assert out.exit_code == 0 and out.output.startswith("no readings of /nope in the last 24 h")


def test_nomadectl_disk(site):
    cfg, db, end = site
    run = CliRunner()
    out = run.invoke(ctl.main, ["--config", str(cfg), "disk", "/", "--hours", "25"])
    assert out.exit_code == 0, out.output
    assert "trend         accelerating" in out.output
    assert "full, quadratic  in 23:5" in out.output or "full, quadratic  in 1-00:00" in out.output
    assert "full, linear     in 1-11:5" in out.output or "full, linear     in 1-12:00" in out.output
    assert "read by 2 nodes" in out.output
    out = run.invoke(ctl.main, ["--config", str(cfg), "disk", "/", "--hours", "25", "--json"])
    assert out.exit_code == 0 and json.loads(out.output)["class"] == "accelerating"
    for bad, word in ((["relative/path"], "absolute"), (["/", "--hours", "0"], "--hours")):
        out = run.invoke(ctl.main, ["--config", str(cfg), "disk", *bad])
        assert out.exit_code == 2 and word in out.output and "Traceback" not in out.output


# -- the API, through the route's own handler ---------------------------------------------------
def test_the_disk_route_for_users_and_admins(site):
    cfg, db, end = site
    status, v = answer(db, "disk", ALICE, b"path=/&hours=25")
    assert status == 200 and v["class"] == "accelerating" and v["nodes"] == ["node1", "node2"]
    # Under PrivateData=nodes a user still sees the filesystem, not which nodes read it, nor one
    # node's series.
    nodes = frozenset({"nodes"})
    status, v = answer(db, "disk", ALICE, b"path=/&hours=25", nodes)
    assert status == 200 and v["class"] == "accelerating" and v["nodes"] == []
    status, v = answer(db, "disk", ALICE, b"path=/&node=node1", nodes)
    assert status == 403 and "PrivateData=nodes" in v["error"]
    assert answer(db, "disk", ADMIN, b"path=/&node=node1", nodes)[0] == 200


@pytest.mark.parametrize(
    "route,query,word",
    [
        ("disk", b"", "path"),
        ("disk", b"path=relative", "path"),
        ("disk", b"path=/&hours=abc", "hours"),
        ("disk", b"path=/&hours=0", "hours"),
        ("disk", b"path=/&hours=nan", "hours"),
        ("disk", b"path=/&node=" + b"n" * 300, "node"),
        ("trend", b"record=filesystem&key=used_bytes", "collector"),
        ("trend", b"collector=disk&record=file%20system&key=used_bytes", "record"),
        ("trend", b"collector=disk&record=filesystem&key=" + b"k" * 65, "key"),
        ("trend", b"collector=disk&record=filesystem&key=used_bytes&limit=nan", "limit"),
        ("trend", b"collector=disk&record=filesystem&key=used_bytes&hours=1e9", "hours"),
    ],
)
def test_bad_parameters_are_one_line_400_naming_them(site, route, query, word):
    status, v = answer(site[1], route, ADMIN, query)
    assert status == 400 and word in v["error"] and "\n" not in v["error"]


def test_the_trend_route_gives_one_series_per_node_and_record(site):
    cfg, db, end = site
    q = b"collector=disk&record=filesystem&key=used_bytes&hours=25"
    status, v = answer(db, "trend", ADMIN, q + b"&limit=" + str(usable("/")).encode())
    assert status == 200 and v["series_total"] == 2 * 5  # five paths on two nodes
    by = {(s["node"], s["labels"]["path"]): s for s in v["series"]}
    root = by[("node1", "/")]
    assert root["class"] == "accelerating" and root["fit"]["n"] == STEPS
    assert root["projection"]["quadratic"]["seconds"] == pytest.approx(24 * HOUR, abs=300)
    assert by[("node1", "/tmp/qfs/mnt")]["class"] == "growing"
    assert by[("node2", "/tmp/qfs/mnt")]["class"] == "stable"
    assert by[("node1", "/dev/shm")]["class"] == "stable"
    assert by[("node1", "/proc")]["fit"]["slope"] == 0.0
    status, v = answer(db, "trend", ADMIN, q + b"&node=node2")
    assert status == 200 and {s["node"] for s in v["series"]} == {"node2"}
    status, v = answer(db, "trend", ADMIN, b"collector=disk&record=filesystem&key=nothing")
    assert status == 200 and v["series"] == []


def test_who_may_see_which_trend(site):
    db = site[1]
    filesystem = b"collector=disk&record=filesystem&key=used_bytes"
    nfs = b"collector=nfs&record=nfs_mount&key=read_ops"
    quota = b"collector=disk&record=quota&key=used_bytes"
    assert answer(db, "trend", ALICE, filesystem)[0] == 200
    assert answer(db, "trend", ALICE, nfs)[0] == 200
    # Quotas name users: for administrators, whatever PrivateData says.
    status, v = answer(db, "trend", ALICE, quota)
    assert status == 403 and "administrators" in v["error"]
    assert answer(db, "trend", ADMIN, quota)[0] == 200
    for flag, query in (("nodes", filesystem), ("nodes", nfs), ("users", nfs)):
        status, v = answer(db, "trend", ALICE, query, frozenset({flag}))
        assert status == 403 and f"PrivateData={flag}" in v["error"], (flag, query)
        assert answer(db, "trend", ADMIN, query, frozenset({flag}))[0] == 200
