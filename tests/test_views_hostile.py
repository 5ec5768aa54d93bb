"""A node's readings are stored as it sent them, so the views read every value with care: a
reading whose values are of any other JSON type, out of range or missing must not take
`nomadectl nodes`, `nfs`, `quotas` and `scratch` (and their API routes) from every user.

Seeded random readings: each value of each record of the collectors these views read (health,
gpu, nfs, disk quotas and filesystems, scratch) kept, removed or replaced by a hostile value."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import pytest
from click.testing import CliRunner
from starlette.requests import Request

import nomadectl as ctl
from aggregator import store
from aggregator.daemon import api
from aggregator.views import clusterviews, nfsrates
from aggregator.views.policy import Caller

ALICE = Caller(2001, "alice", groups=frozenset({"alice", "physics"}))
ROOT = Caller(0, "root", admin=True)
SEEDS = range(30)
HOSTILE: list[Any] = [
    None,
    "",
    "12",
    "slurmd\n  node7           IDLE",
    "x" * 20_000,
    [],
    ["a", 1],
    [["nested"]],
    {},
    {"a": 1},
    True,
    False,
    0,
    -5,
    2**70,
    -(2**70),
    1e308,
    -0.5,
]


def good(now: float) -> list[tuple[str, str, float, list[dict[str, Any]]]]:
    """(node, collector, time, records) as the collectors send them."""
    health = [
        {"record": "temperature", "chip": "coretemp", "sensor": "Package id 0"}
        | {"temp_celsius": 90.0, "max_celsius": 84.0, "crit_celsius": 100.0},
        {"record": "edac", "mc": "mc0", "mc_name": "Skylake", "ce_count": 3, "ue_count": 1},
        {"record": "kernel_error", "category": "gpu_xid", "device": "0000:3b:00.0"}
        | {"message": "NVRM: Xid (PCI:0000:3b:00): 79, pid=1", "uptime_seconds": 12.5},
        {"record": "kernel_error", "category": "mce", "device": None}
        | {"message": "mce: [Hardware Error]", "uptime_seconds": 13.0},
        {"record": "service", "name": "slurmd", "running": False},
    ]
    gpu = [
        {"record": "gpu", "index": 0, "name": "NVIDIA H200", "uuid": "GPU-1"}
        | {"bus_id": "00000000:3B:00.0", "util_gpu_percent": 80, "memory_used_bytes": 10}
        | {"memory_total_bytes": 100, "temperature_gpu_c": 60, "power_draw_w": 300.5}
        | {"power_limit_w": 700, "ecc_volatile_corrected": 0, "ecc_volatile_uncorrected": 2}
        | {"throttle_reasons": ["sw_thermal_slowdown", "hw_slowdown"]},
    ]

    def nfs(n: int) -> list[dict[str, Any]]:
        return [
            {"record": "nfs_mount", "device": "srv:/home", "server": "srv", "export": "/home"}
            | {"mount_point": "/home/bob", "fstype": "nfs4", "nfs_version": "4.2"}
            | {"protocol": "tcp", "age_seconds": 5000 + n, "read_bytes": 1000 * n}
            | {"read_ops": 10 * n, "read_retrans": n, "read_rtt_ms": 5 * n, "getattr_ops": n}
        ]

    disk = [
        {"record": "quota", "kind": "user", "name": "alice", "id": 2001}
        | {"filesystem": "/dev/sda1", "mountpoint": "/home", "used_bytes": 90}
        | {"soft_limit_bytes": 100, "hard_limit_bytes": 120, "files_used": 5}
        | {"files_soft": 10, "files_hard": 20, "block_grace_seconds": 3600}
        | {"files_grace_seconds": None, "over_soft": False},
        {"record": "quota", "kind": "group", "name": "physics", "id": 3000}
        | {"filesystem": "/dev/sda1", "used_bytes": 10, "soft_limit_bytes": 100},
        {"record": "filesystem", "path": "/scratch", "size_bytes": 100, "used_bytes": 50}
        | {"avail_bytes": 50, "used_fraction": 0.5, "responsive": True, "error": None},
    ]
    scratch = [
        {"record": "scratch_summary", "root": "/scratch", "entries": 3, "files": 2}
        | {"dirs": 1, "bytes": 4010, "large_files": 1, "stale_files": 1}
        | {"orphaned_files": 1, "truncated": False, "truncated_by": None},
        {"record": "scratch_owner", "root": "/scratch", "uid": 2001, "files": 1}
        | {"bytes": 4000, "large_files": 1, "stale_files": 0, "stale_bytes": 0}
        | {"orphaned": False},
        {"record": "scratch_file", "root": "/scratch", "path": "/scratch/a.dat", "uid": 2001}
        | {"size_bytes": 4000, "mtime_epoch": now - 10, "large": True, "stale": False},
        {"record": "leftover_job_dir", "root": "/scratch", "path": "/scratch/job_7"}
        | {"job_id": "7", "uid": 2001, "mtime_epoch": now - 100},
    ]
    return [
        ("node1", "health", now - 30, health),
        ("node1", "gpu", now - 30, gpu),
        ("node1", "nfs", now - 1230, nfs(1)),
        ("node1", "nfs", now - 630, nfs(2)),
        ("node1", "nfs", now - 30, nfs(3)),
        ("node1", "disk", now - 30, disk),
        ("node1", "scratch", now - 30, scratch),
    ]


def spoiled(rng: random.Random, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """RECORDS with each value kept, removed or replaced by a hostile one (`record` kept)."""
    out = []
    for r in records:
        bad = {"record": r["record"]}
        for key, value in r.items():
            if key == "record":
                continue
            roll = rng.random()
            if roll < 0.4:
                bad[key] = value
            elif roll < 0.9:
                bad[key] = rng.choice(HOSTILE)
        out.append(bad)
    return out


@pytest.fixture
def site(tmp_path):
    cfg = tmp_path / "n.toml"
    cfg.write_text(
        f'[general]\ndata_dir = "{tmp_path}/data"\n[security]\nkeys_dir = "{tmp_path}/keys"\n'
    )
    assert CliRunner().invoke(ctl.main, ["--config", str(cfg), "init"]).exit_code == 0
    return cfg, str(tmp_path / "data" / "nomade.db")


def store_readings(db: str, now: float, rng: random.Random | None = None) -> None:
    """The readings of `good`, spoiled by RNG where given, and node1's agent."""
    conn = store.connect(db)
    conn.execute("BEGIN")
    for node, collector, t, records in good(now):
        records = spoiled(rng, records) if rng else records
        store.store_reading(conn, node, collector, t, 0.1, records, 600.0)
    conn.execute(
        "INSERT INTO nodes (node, first_seen, last_seen, state) VALUES ('node1', 1, ?, 'up')",
        (now,),
    )
    conn.execute("COMMIT")
    conn.close()


class Agg:
    def __init__(self, db: str) -> None:
        self.db = db

    def reader(self) -> Any:
        return store.connect(self.db)


class Access:
    def __init__(self, private: frozenset[str] = frozenset()) -> None:
        self.flags = private

    def private(self) -> frozenset[str]:
        return self.flags


def answer(
    db: str, route: str, caller: Caller, query: bytes = b"", private: frozenset[str] = frozenset()
) -> tuple[int, Any]:
    """The API's answer to CALLER on ROUTE (the route's own handler, as the server wraps it),
    under Slurm's PrivateData flags PRIVATE."""
    handler = api._answer(getattr(api.Api(Agg(db), Access(private), api.RefusalLog()), route))
    scope = {"type": "http", "method": "GET", "path": f"/api/v1/{route}", "headers": []}
    scope |= {"query_string": query, api.CALLER_KEY: caller}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    response = asyncio.run(handler(Request(scope, receive)))
    return response.status_code, json.loads(response.body)


def test_the_good_readings_show_what_the_views_are_for(site):
    """The unspoiled readings do reach the views (so the spoiled ones are read, not skipped)."""
    cfg, db = site
    now = time.time()
    store_readings(db, now)
    conn = store.connect(db)
    node = clusterviews.nodes(conn, now)["nodes"][0]
    assert node["problems"][:3] == ["ue", "gpu-ecc", "mce"]
    assert nfsrates.nfs(conn, now)["mounts"][0]["latest"]["read_ops_per_s"] == pytest.approx(
        10 / 600, abs=1e-3
    )
    assert [q["name"] for q in clusterviews.quotas(conn)["quotas"]] == ["alice", "physics"]
    assert clusterviews.scratch(conn)["owners"][0]["uid"] == 2001
    conn.close()


@pytest.mark.parametrize("seed", SEEDS)
def test_no_value_a_node_sends_breaks_the_views(site, seed):
    cfg, db = site
    now = time.time()
    store_readings(db, now, random.Random(seed))
    conn = store.connect(db)
    views = [
        clusterviews.nodes(conn, now),
        nfsrates.nfs(conn, now),
        clusterviews.quotas(conn),
        clusterviews.quotas(conn, "alice"),
        clusterviews.scratch(conn),
        clusterviews.scratch(conn, "alice"),
        clusterviews.overview(conn, now),
    ]
    conn.close()
    for v in views:
        json.dumps(v, allow_nan=False)  # what the API sends: JSON, no NaN
    for row in views[0]["nodes"]:
        for s in (row["health"] or {}).get("services", []):
            assert "\n" not in s["name"]

    run = CliRunner()
    for command in ("nodes", "nfs", "quotas", "scratch"):
        result = run.invoke(ctl.main, ["--config", str(cfg), command])
        assert result.exception is None, (command, result.output)
        assert result.exit_code == 0, (command, result.output)
        assert not any(line.lstrip().startswith("node7") for line in result.output.splitlines())

    for caller in (ALICE, ROOT):
        for route in ("nodes", "nfs", "quotas", "scratch"):
            status, body = answer(db, route, caller)
            assert status == 200, (route, caller.name, body)


def test_an_answer_json_cannot_carry_is_one_line_500(monkeypatch):
    """A view that returns what JSON cannot carry (NaN) gets the one-line error, not a bare
    500 from the server."""
    handler = api._answer(lambda request, caller, body: {"temp": float("nan")})
    scope = {"type": "http", "method": "GET", "path": "/api/v1/nodes", "headers": []}
    scope |= {"query_string": b"", api.CALLER_KEY: ROOT}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    response = asyncio.run(handler(Request(scope, receive)))
    assert response.status_code == 500
    error = json.loads(response.body)["error"]
    assert "JSON" in error and "\n" not in error


def test_records_that_are_not_objects_are_skipped_by_every_view(site):
    # A node may send any JSON value as a record: a string, a number, a list, null.
    cfg, db = site
    now = time.time()
    store_readings(db, now)
    conn = store.connect(db)
    conn.execute("BEGIN")
    for collector in ("health", "nfs", "gpu", "disk", "scratch"):
        others = ["x", 5, None, [1, "y"], True]
        latest = store.latest_readings(conn, collector)["node1"][1]
        store.store_reading(conn, "node1", collector, now + 1, 0.1, others + latest, 0.0)
    conn.execute("COMMIT")
    assert clusterviews.nodes(conn, now + 2)["nodes"][0]["problems"][:3] == ["ue", "gpu-ecc", "mce"]
    assert nfsrates.nfs(conn, now + 2)["mounts"]
    conn.close()
    admin = Caller(0, "root", admin=True)
    for route in ("nodes", "nfs", "quotas", "scratch"):
        assert answer(db, route, admin)[0] == 200, route
    for command in ("nodes", "nfs", "quotas", "scratch"):
        result = CliRunner().invoke(ctl.main, ["--config", str(cfg), command])
        assert result.exit_code == 0, (command, result.output)
