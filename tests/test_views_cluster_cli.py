"""The cluster-side views through `nomadectl` as root (CliRunner, the store read directly) and
through the aggregator's authenticated API as the real users alice and bob (runuser, their own
MUNGE credentials): a user sees their own quotas and scratch files and not another user's
lines.  The readings are real captures through the real parsers and store.store_reading."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from clusterlib import api_as, free_port, needs_real_users
from conftest import FIXTURES, ROOT, SITE_NOMADECTL, required

import nomadectl as ctl
from aggregator import daemon as server
from aggregator import store
from aggregator.views.policy import Caller
from collectors import disk, gpu, health, scratch
from collectors.slurm import scontrol, sinfo, sshare
from nomade_common import config, keys

QUOTA = FIXTURES / "quota" / "quota-tools-4.06"
SLURM = FIXTURES / "slurm" / "22.05"
KERNEL_HANDMADE = ROOT / "tests" / "cases" / "node-kernel-errors-handmade" / "input"


def readings(scratch_root: Path | None, now: float) -> list[tuple[str, str, float, list]]:
    """(node, collector, time, records) of a small cluster: Slurm's nodes, partitions and fair
    share (22.05 captures); node1 with the hand-made hwmon, EDAC and kernel-log trees and the
    captured H200; node2 with the quotas (repquota) and, where given, a scratch scan."""
    node1 = (
        health.parse_hwmon(str(FIXTURES / "sys" / "hwmon-handmade-2socket-intel-nvme"))
        + health.parse_edac(str(FIXTURES / "sys" / "edac-handmade-skx-2socket"))
        + health.parse_kernel_errors(KERNEL_HANDMADE.read_text())
    )
    out = [
        (
            "head",
            "node_state",
            now - 30,
            scontrol.node_records((SLURM / "scontrol-show-node-o.txt").read_text()),
        ),
        ("head", "partitions", now - 30, sinfo.records((SLURM / "sinfo-nomade.txt").read_text())),
        ("head", "fairshare", now - 30, sshare.records((SLURM / "sshare-a-l-P.txt").read_text())),
        ("node1", "health", now - 120, node1),
        (
            "node1",
            "gpu",
            now - 20,
            gpu.parse_xml((FIXTURES / "gpu/h200-580.159.04/q-x.xml").read_text()),
        ),
        ("node2", "health", now - 20, health.parse_hwmon(str(ROOT / "no-hwmon-here"))),
        (
            "node2",
            "disk",
            now - 20,
            disk.parse_repquota((QUOTA / "repquota-a-u-g.txt").read_text()),
        ),
    ]
    if scratch_root is not None:
        uids = {2001}  # alice runs a job on node2; bob does not
        scan = scratch.report(scratch.scan(str(scratch_root)), now, 1000, 30.0, uids, 100)
        out.append(("node2", "scratch", now - 20, scan))
    return out


def store_all(conn, rows) -> None:
    for node, collector, t, records in rows:
        store.store_reading(conn, node, collector, t, 0.1, records, 600.0)


@pytest.fixture
def scratch_root(tmp_path):
    """A scratch directory with a large file of alice's and a stale one of bob's (root chowns
    them; elsewhere the files are the caller's and only the totals are checked)."""
    root = tmp_path / "scratch"
    root.mkdir()
    (root / "alice-big.dat").write_bytes(b"a" * 4000)
    (root / "bob-old.dat").write_bytes(b"b" * 10)
    os.utime(root / "bob-old.dat", (1, 1))
    if os.geteuid() == 0:
        os.chown(root / "alice-big.dat", 2001, 2001)
        os.chown(root / "bob-old.dat", 2002, 2002)
    return root


# -- as root, through the CLI -------------------------------------------------------------------
@pytest.fixture
def site(tmp_path, scratch_root):
    cfg = tmp_path / "n.toml"
    cfg.write_text(
        f'[general]\ndata_dir = "{tmp_path}/data"\n[security]\nkeys_dir = "{tmp_path}/keys"\n'
    )
    run = CliRunner()
    assert run.invoke(ctl.main, ["--config", str(cfg), "init"]).exit_code == 0
    conn = store.connect(str(tmp_path / "data" / "nomade.db"))
    conn.execute("BEGIN")
    store_all(conn, readings(scratch_root, time.time()))
    conn.execute(
        "INSERT INTO nodes (node, first_seen, last_seen, state) VALUES"
        " ('node1', 1, ?, 'up'), ('node2', 1, ?, 'up')",
        (time.time(), time.time()),
    )
    conn.execute("COMMIT")
    conn.close()

    def nomadectl(*args: str):
        result = run.invoke(ctl.main, ["--config", str(cfg), *args])
        assert result.exit_code == 0, result.output
        return result.output

    return nomadectl


def test_nodes_show_health_columns_and_the_worst_node_first(site):
    text = site("nodes")
    lines = text.splitlines()
    assert lines[1].lstrip().startswith("node1")  # uncorrected errors, Xid, heat: first
    assert "Temp: 97°C/84" in lines[1] and "ECC: CE 3 UE 1" in lines[1]
    assert "GPU: 1× 100% 58°C 548 W" in lines[1]
    assert "!! ue" in text and "EDAC: 1 uncorrected memory errors" in text
    node2 = next(ln for ln in lines if ln.lstrip().startswith("node2"))
    assert "Temp: no sensors" in node2 and "ECC: no EDAC" in node2 and "GPU: none" in node2
    view = json.loads(site("nodes", "--json"))
    assert [n["node"] for n in view["nodes"]] == ["node1", "node2"]
    assert view["nodes"][0]["severity"] == 5 and view["nodes"][1]["problems"] == []
    assert view["nodes"][0]["health"]["kernel_errors"]["recent"]  # root sees the lines


def test_a_node_cannot_forge_lines_in_nomadectl_nodes(tmp_path):
    cfg = tmp_path / "n.toml"
    cfg.write_text(
        f'[general]\ndata_dir = "{tmp_path}/data"\n[security]\nkeys_dir = "{tmp_path}/keys"\n'
    )
    run = CliRunner()
    assert run.invoke(ctl.main, ["--config", str(cfg), "init"]).exit_code == 0
    forged = "slurmd\n  node7           IDLE         CPU: 0/64     Mem: 0%     agent: up"
    conn = store.connect(str(tmp_path / "data" / "nomade.db"))
    conn.execute("BEGIN")
    service = {"record": "service", "name": forged, "running": False}
    gpu = {"record": "gpu", "index": 0, "name": "H200\n  node8  IDLE", "uuid": "GPU-1"}
    gpu["throttle_reasons"] = ["hw_slowdown\n  node9  IDLE"]
    store.store_reading(conn, "node1", "health", time.time() - 10, 0.1, [service], 600.0)
    store.store_reading(conn, "node1", "gpu", time.time() - 10, 0.1, [gpu], 600.0)
    conn.execute(
        "INSERT INTO nodes (node, first_seen, last_seen, state) VALUES ('node1', 1, ?, 'up')",
        (time.time(),),
    )
    conn.execute("COMMIT")
    conn.close()
    result = run.invoke(ctl.main, ["--config", str(cfg), "nodes"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [ln.split()[0] for ln in lines[1:] if not ln.startswith("    ")] == ["node1"]
    assert "slurmd   node7" in result.output  # shown, on node1's own lines
    view = json.loads(run.invoke(ctl.main, ["--config", str(cfg), "nodes", "--json"]).output)
    gpu_shown = view["nodes"][0]["gpus"]["devices"][0]
    assert "\n" not in gpu_shown["name"] and "\n" not in gpu_shown["throttle_reasons"][0]


def test_a_user_sees_their_groups_quotas_through_the_api(tmp_path):
    """alice, in the groups alice and physics, sees her user quota and both groups' quotas,
    not bob's nor the group chem's."""
    from test_views_hostile import answer

    db = str(tmp_path / "q.db")
    store.open_store(db).close()
    conn = store.connect(db)
    conn.execute("BEGIN")
    quota = {"record": "quota", "filesystem": "/dev/sda1", "used_bytes": 10}
    records = [
        {**quota, "kind": "user", "name": "alice", "id": 2001},
        {**quota, "kind": "user", "name": "bob", "id": 2002},
        {**quota, "kind": "group", "name": "alice", "id": 2001},
        {**quota, "kind": "group", "name": "physics", "id": 3000},
        {**quota, "kind": "group", "name": "chem", "id": 3001},
    ]
    store.store_reading(conn, "node1", "disk", time.time() - 10, 0.1, records, 600.0)
    conn.execute("COMMIT")
    conn.close()
    alice = Caller(2001, "alice", groups=frozenset({"alice", "physics"}))
    status, body = answer(db, "quotas", alice)
    assert status == 200
    assert {(q["kind"], q["name"]) for q in body["quotas"]} == {
        ("user", "alice"),
        ("group", "alice"),
        ("group", "physics"),
    }
    status, body = answer(db, "quotas", Caller(0, "root", admin=True), b"user=alice")
    assert {(q["kind"], q["name"]) for q in body["quotas"]} == {("user", "alice")}


def test_nodes_problems_shows_only_nodes_with_something_wrong(site):
    shown = json.loads(site("nodes", "--problems", "--json"))
    assert [n["node"] for n in shown["nodes"]] == ["node1"]
    assert "node2" not in site("nodes", "--problems")
    # kernel errors of the last 36 s: none (node1's reading is 2 minutes old); EDAC's counts
    # and the heat, which are the newest reading's, stay
    recent = json.loads(site("nodes", "--problems", "--hours", "0.01", "--json"))["nodes"]
    assert recent[0]["problems"] == ["ue", "hot", "ce"]
    out = CliRunner().invoke(ctl.main, ["nodes", "--hours", "0"])
    assert out.exit_code == 2 and "--hours" in out.output


def test_quotas_scratch_fairshare_and_partitions_as_root(site):
    q = json.loads(site("quotas", "--json"))["quotas"]
    assert {r["name"] for r in q} == {"root", "alice", "bob"}
    assert q[0]["fraction"] == max(r["fraction"] or 0 for r in q)
    text = site("quotas", "--user", "bob")
    assert "bob" in text and "alice" not in text and "OVER SOFT" in text
    s = json.loads(site("scratch", "--json"))
    assert s["filesystems"][0]["files"] == 2 and s["filesystems"][0]["stale_files"] == 1
    assert "scanned" in site("scratch")
    f = site("fairshare")
    assert "physics" in f and "alice" in f and "RAWSHARES" in f
    p = site("partitions")
    assert "debug*" in p and "2/14/16" in p
    assert "no NFS readings" in site("nfs")


# -- as alice and bob, through the API ----------------------------------------------------------
def _needs_users() -> None:
    needs_real_users()
    for user in ("alice", "bob"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            required(f"user {user} does not exist (slurm-conf/cluster-up.sh makes it)")


HEAD_COLLECTORS = ("queue", "partitions", "node_state", "fairshare", "scheduler", "job_history")


@contextlib.contextmanager
def aggregator(root: Path, private_data: str, scratch_dir: Path):
    """A real aggregator on loopback over a store with the readings above; its own head
    collectors off, so that the real Slurm does not replace the captures."""
    keys.make_pair(str(root / "keys"), "server")
    (root / "data").mkdir(mode=0o700, exist_ok=True)
    port = free_port()
    off = "".join(f"[collectors.{c}]\nenabled = false\n" for c in HEAD_COLLECTORS)
    path = root / f"aggregator-{port}.toml"
    path.write_text(
        f'[general]\ndata_dir = "{root}/data"\n'
        f'[aggregator]\nlisten = "tcp://127.0.0.1:{free_port()}"\n'
        f'http_listen = "127.0.0.1:{port}"\nscontrol = "/bin/false"\n'
        f'[hooks]\nstate_dir = "{root}/state"\n'
        f'[security]\nkeys_dir = "{root}/keys"\nprivate_data = "{private_data}"\n{off}'
    )
    agg = server.Aggregator(config.load(str(path)))
    agg.start()
    try:
        now = time.time()
        agg.writer.call(lambda c: store_all(c, readings(scratch_dir, now)))
        yield f"http://127.0.0.1:{port}"
    finally:
        agg.stop()


def as_user(user: str, url: str, target: str) -> tuple[int, object]:
    """(status, answer) of a GET signed with USER's own credential (the installed client)."""
    return api_as(user, url, "GET", target)


@pytest.fixture
def api_root(tmp_path_factory):
    _needs_users()
    root = tmp_path_factory.mktemp("api")
    root.chmod(0o755)
    scratch_dir = root / "scratch"
    scratch_dir.mkdir()
    for name, uid, size, mtime in (("a.dat", 2001, 4000, None), ("b.dat", 2002, 10, 1)):
        (scratch_dir / name).write_bytes(b"x" * size)
        os.chown(scratch_dir / name, uid, uid)
        if mtime:
            os.utime(scratch_dir / name, (mtime, mtime))
    return root, scratch_dir


def test_a_user_sees_only_their_own_quotas_and_scratch_through_the_api(api_root):
    root, scratch_dir = api_root
    with aggregator(root, "none", scratch_dir) as url:
        status, mine = as_user("alice", url, "/api/v1/quotas")
        assert status == 200 and mine["quotas"]
        assert {(q["kind"], q["name"]) for q in mine["quotas"]} == {
            ("user", "alice"),  # on two filesystems
            ("group", "alice"),  # alice is in the group alice: `quota` shows her its quota
        }
        assert "bob" not in json.dumps(mine)
        assert as_user("alice", url, "/api/v1/quotas?user=bob") == (200, {"quotas": []})
        status, bobs = as_user("bob", url, "/api/v1/quotas")
        assert status == 200 and "alice" not in json.dumps(bobs) and bobs["quotas"]
        status, everyone = as_user("root", url, "/api/v1/quotas")
        assert {q["name"] for q in everyone["quotas"]} == {"root", "alice", "bob"}

        status, s = as_user("alice", url, "/api/v1/scratch")
        assert status == 200 and [o["user"] for o in s["owners"]] == ["alice"]
        assert [Path(f["path"]).name for f in s["files"]] == ["a.dat"]
        assert s["filesystems"][0]["files"] == 2  # the totals, which name nobody
        status, s = as_user("bob", url, "/api/v1/scratch")
        assert [o["user"] for o in s["owners"]] == ["bob"] and "a.dat" not in json.dumps(s)

        status, nodes = as_user("alice", url, "/api/v1/nodes")
        assert status == 200 and nodes["nodes"][0]["problems"][0] == "ue"
        assert all(n["health"]["kernel_errors"]["recent"] == [] for n in nodes["nodes"])
        status, fair = as_user("alice", url, "/api/v1/fairshare")
        assert status == 200 and "bob" in json.dumps(fair)  # no PrivateData: as sshare shows
        assert as_user("alice", url, "/api/v1/partitions")[0] == 200
        assert as_user("alice", url, "/api/v1/nfs")[1]["mounts"] == []
        status, answer = as_user("alice", url, "/api/v1/nfs?hours=nan")
        assert status == 400 and "hours" in str(answer)


def test_private_data_hides_fairshare_lines_partitions_and_nodes_from_users(api_root):
    root, scratch_dir = api_root
    with aggregator(root, "users,partitions,nodes", scratch_dir) as url:
        status, fair = as_user("alice", url, "/api/v1/fairshare")
        assert status == 200 and {r["user"] for r in fair["associations"]} == {"alice", None}
        assert "bob" not in json.dumps(fair)
        status, answer = as_user("alice", url, "/api/v1/partitions")
        assert status == 403 and "PrivateData=partitions" in str(answer)
        assert as_user("alice", url, "/api/v1/nfs")[0] == 403
        assert as_user("alice", url, "/api/v1/nodes")[0] == 403
        assert as_user("root", url, "/api/v1/partitions")[0] == 200
        status, fair = as_user("root", url, "/api/v1/fairshare")
        assert "bob" in json.dumps(fair)


def test_a_users_nomadectl_shows_their_own_quotas(api_root):
    root, scratch_dir = api_root
    probe = subprocess.run(
        ["runuser", "-u", "alice", "--", SITE_NOMADECTL, "quotas", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    if probe.returncode != 0:
        required(f"{SITE_NOMADECTL} predates nomadectl quotas (slurm-conf/install-nomade.sh)")
    with aggregator(root, "none", scratch_dir) as url, tempfile.TemporaryDirectory() as mine:
        # pytest's own temporary folders are root's alone (0700): the users' configuration
        # lies where they can read it.
        Path(mine).chmod(0o755)
        client = Path(mine) / "client.toml"
        client.write_text(f'[hooks]\naggregator_url = "{url}"\n')
        client.chmod(0o644)
        for user, other in (("alice", "bob"), ("bob", "alice")):
            out = subprocess.run(
                ["runuser", "-u", user, "--", SITE_NOMADECTL, "--config", str(client), "quotas"],
                capture_output=True,
                text=True,
                timeout=60,
                cwd="/",
            )
            assert out.returncode == 0, out.stderr
            assert user in out.stdout and other not in out.stdout
