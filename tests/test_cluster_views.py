"""Node health, partitions and fair share on the real dev cluster: the agents' health readings
and the aggregator's sinfo and sshare travel to the store, and `nomadectl nodes` shows the
health columns as root; alice reads the same views through the authenticated API."""

from __future__ import annotations

import json
import os
import time

import pytest
from clusterlib import api_as, running_pipeline, wait_for
from conftest import ROOT, SITE_PYTHON, required

from aggregator import store
from collectors import health

pytestmark = pytest.mark.cluster

FAST = "".join(
    f"[collectors.{name}]\ninterval_seconds = 2.0\n"
    for name in ("health", "node_state", "partitions", "fairshare")
)


KERNEL_LOG = ROOT / "tests" / "cases" / "node-kernel-errors-handmade" / "input"


@pytest.fixture(scope="module")
def pipeline(slurm_cluster):
    # Every reading kept as history (the real nodes log no hardware errors: a test reading
    # that does is stored beside the agents' and must stay in the history).
    os.environ["NOMADE_AGGREGATOR__READINGS_HISTORY_SECONDS"] = "1"
    try:
        with running_pipeline(FAST) as p:
            wait_for(
                "health readings from both nodes and Slurm's node, partition and fair-share"
                " readings",
                lambda: (
                    len(
                        p.query(
                            "SELECT DISTINCT node, collector FROM readings_latest WHERE"
                            " collector IN ('health', 'node_state', 'partitions', 'fairshare')"
                        )
                    )
                    >= 5
                ),
                60,
            )
            yield p
    finally:
        del os.environ["NOMADE_AGGREGATOR__READINGS_HISTORY_SECONDS"]


def test_nodes_show_each_real_nodes_health(pipeline):
    view = json.loads(pipeline.ctl("nodes", "--json"))
    nodes = {n["node"]: n for n in view["nodes"]}
    assert {"node1", "node2"} <= set(nodes)
    for name in ("node1", "node2"):
        n = nodes[name]
        assert n["agent"] == "up" and n["health"] is not None
        assert {s["name"]: s["running"] for s in n["health"]["services"]} == {
            "slurmd": True,
            "munged": True,
        }
        assert not {"agent-silent", "no-agent", "no-health", "service-down"} & set(n["problems"])
        temp = n["health"]["temperature"]
        # The dev nodes are VMs: no hwmon sensors is "unknown", never 0 °C.
        assert temp is None or temp["hottest"]["temp_celsius"] > 0
    text = pipeline.ctl("nodes")
    for name in ("node1", "node2"):
        line = next(ln for ln in text.splitlines() if ln.lstrip().startswith(name))
        assert "Temp:" in line and "ECC:" in line and "GPU:" in line and "Svc: ok" in line
        temp = nodes[name]["health"]["temperature"]
        assert ("Temp: no sensors" in line) == (temp is None)


def test_partitions_and_fairshare_from_the_real_slurm(pipeline):
    parts = {
        p["partition"]: p for p in json.loads(pipeline.ctl("partitions", "--json"))["partitions"]
    }
    assert {"node1", "node2"} <= set(parts["debug"]["nodes"])
    rows = json.loads(pipeline.ctl("fairshare", "--json"))["associations"]
    assert {r["user"] for r in rows} >= {"alice", "bob"}
    assert "debug" in pipeline.ctl("partitions")


def as_alice(p, target: str) -> tuple[int, object]:
    if not os.path.exists(SITE_PYTHON):
        required(f"{SITE_PYTHON} is not installed (slurm-conf/install-nomade.sh)")
    return api_as("alice", f"http://127.0.0.1:{p.http_port}", "GET", target)


def logged_errors(p) -> None:
    """node1's kernel log shows hardware errors (the hand-made log's lines), stored as the
    aggregator stores an agent's health reading, until one is kept in the history."""
    errors = health.parse_kernel_errors(KERNEL_LOG.read_text(), "dmesg")
    conn = store.connect(str(p.db))

    def kept() -> bool:
        conn.execute("BEGIN IMMEDIATE")
        # The node's own newest reading (its services, ...) with the errors added.
        records = store.latest_readings(conn, "health")["node1"][1] + errors
        store.store_reading(conn, "node1", "health", time.time(), 0.1, records, 1.0)
        conn.execute("COMMIT")
        return p.query(
            "SELECT count(*) FROM readings WHERE collector = 'health' AND node = 'node1'"
            " AND instr(records_json, '\"kernel_error\"') > 0"
        )[0][0]

    wait_for("a health reading with kernel errors kept in the history", kept, 20, every=1.1)
    conn.close()


def test_alice_reads_the_node_health_through_the_api(pipeline):
    logged_errors(pipeline)
    root = {n["node"]: n for n in json.loads(pipeline.ctl("nodes", "--json"))["nodes"]}
    seen = root["node1"]["health"]["kernel_errors"]
    assert seen["counts"].get("mce") and seen["recent"], seen  # root: the lines themselves
    status, view = as_alice(pipeline, "/api/v1/nodes")
    assert status == 200, view
    nodes = {n["node"]: n for n in view["nodes"]}
    assert nodes["node1"]["health"]["services"] and nodes["node2"]["health"] is not None
    # alice: how many, never the lines (they can name other users' processes).
    assert nodes["node1"]["health"]["kernel_errors"]["counts"] == seen["counts"]
    assert all(n["health"]["kernel_errors"]["recent"] == [] for n in nodes.values() if n["health"])
    status, fair = as_alice(pipeline, "/api/v1/fairshare")
    assert status == 200 and any(r["user"] == "alice" for r in fair["associations"])
    assert as_alice(pipeline, "/api/v1/quotas") == (200, {"quotas": []})  # none configured
