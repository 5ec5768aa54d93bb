"""Node health, partitions and fair share on the real dev cluster: the agents' health readings
and the aggregator's sinfo and sshare travel to the store, and `nomadectl nodes` shows the
health columns as root; alice reads the same views through the authenticated API."""

from __future__ import annotations

import json
import os

import pytest
from clusterlib import api_as, running_pipeline, wait_for
from conftest import SITE_PYTHON, required

pytestmark = pytest.mark.cluster

FAST = "".join(
    f"[collectors.{name}]\ninterval_seconds = 2.0\n"
    for name in ("health", "node_state", "partitions", "fairshare")
)


@pytest.fixture(scope="module")
def pipeline(slurm_cluster):
    with running_pipeline(FAST) as p:
        wait_for(
            "health readings from both nodes and Slurm's node, partition and fair-share readings",
            lambda: (
                len(
                    p.query(
                        "SELECT DISTINCT node, collector FROM readings_latest WHERE collector IN"
                        " ('health', 'node_state', 'partitions', 'fairshare')"
                    )
                )
                >= 5
            ),
            60,
        )
        yield p


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


def test_alice_reads_the_node_health_through_the_api(pipeline):
    status, view = as_alice(pipeline, "/api/v1/nodes")
    assert status == 200, view
    nodes = {n["node"]: n for n in view["nodes"]}
    assert nodes["node1"]["health"]["services"] and nodes["node2"]["health"] is not None
    assert all(n["health"]["kernel_errors"]["recent"] == [] for n in nodes.values() if n["health"])
    status, fair = as_alice(pipeline, "/api/v1/fairshare")
    assert status == 200 and any(r["user"] == "alice" for r in fair["associations"])
    assert as_alice(pipeline, "/api/v1/quotas") == (200, {"quotas": []})  # none configured
