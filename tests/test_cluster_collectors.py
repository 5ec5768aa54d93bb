"""The collectors on the real dev cluster: node readings travel agent -> ZeroMQ -> aggregator ->
SQLite, head-node readings come from the real Slurm, and `nomadectl` shows both."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from clusterlib import running_pipeline, sbatch, wait_for
from conftest import ROOT

pytestmark = pytest.mark.cluster

FAST = "".join(
    f"[collectors.{name}]\ninterval_seconds = 2.0\n"
    for name in (
        "iostat",
        "mpstat",
        "vmstat",
        "pressure",
        "queue",
        "partitions",
        "node_state",
        "fairshare",
        "scheduler",
        "health",
    )
)
FAST += (
    '[collectors.disk]\ninterval_seconds = 2.0\nfilesystems = ["/", "/var/lib/nomade-cluster"]\n'
)


LMSTAT = ROOT / "tests" / "cases" / "lic-lmstat-handmade" / "input"


@pytest.fixture(scope="module")
def pipeline(slurm_cluster, tmp_path_factory):
    # No FlexLM server can run here: a stand-in lmutil replays an lmstat -a report.
    lmutil = tmp_path_factory.mktemp("lic") / "lmutil"
    lmutil.write_text(f"#!/bin/sh\nexec cat {LMSTAT}\n")
    lmutil.chmod(0o755)
    lic = (
        f'[collectors.licenses]\ninterval_seconds = 2.0\nflexlm_servers = ["27000@lic1"]\n'
        f'lmutil = "{lmutil}"\n'
    )
    with running_pipeline(FAST + lic) as p:
        yield p


def latest(p, collector: str) -> dict[str, list[dict]]:
    rows = p.query("SELECT node, records_json FROM readings_latest WHERE collector = ?", collector)
    return {node: json.loads(text) for node, text in rows}


def test_every_node_collector_reading_reaches_the_store_from_both_nodes(pipeline):
    p = pipeline
    for collector in ("iostat", "mpstat", "vmstat"):
        wait_for(
            f"{collector} readings from node1 and node2",
            lambda c=collector: {"node1", "node2"} <= set(latest(p, c)),
            60,
        )
    for node, records in latest(p, "mpstat").items():
        summary = [r for r in records if r["record"] == "summary"]
        assert summary and summary[0]["cores"] == os.cpu_count(), (
            node
        )  # the host's CPUs, as mpstat saw
    for node, records in latest(p, "vmstat").items():
        assert records[0]["mem_free_bytes"] > 0, node
    devices = [r for r in latest(p, "iostat")["node1"] if r["record"] == "device"]
    assert devices, "iostat -x lists this host's block devices"


def test_pending_jobs_show_in_the_queue_with_their_reason_in_words(pipeline):
    p = pipeline
    held = sbatch(p, "held", "--hold", "-t", "1", script="true")
    later = sbatch(p, "later", "--begin=now+3600", "-t", "1", script="true")
    try:

        def pending():
            q = json.loads(p.ctl("queue", "--json"))
            by = {int(str(j["job_id"])): j for j in q["pending"]}
            return (held in by and later in by) and (q, by)

        q, by = wait_for("both jobs pending in nomadectl queue", pending, 30)
        assert by[held]["reason"] == "JobHeldUser" and by[held]["reason_text"]
        assert by[later]["reason"] == "BeginTime" and by[later]["unblock"]
        debug = {x["partition"]: x for x in q["partitions"]}["debug"]
        assert debug["pending"] >= 2
        assert "JobHeldUser" in p.ctl("queue")
    finally:
        subprocess.run(["scancel", str(held), str(later)], check=False)


def test_nodes_status_and_collection_health_are_shown(pipeline):
    p = pipeline
    wait_for("Slurm node states", lambda: latest(p, "node_state"), 30)
    nodes = {n["node"]: n for n in json.loads(p.ctl("nodes", "--json"))["nodes"]}
    assert {"node1", "node2"} <= set(nodes)
    assert (
        nodes["node1"]["agent"] == "up" and nodes["node1"]["cpus"] == 8
    )  # config_overrides CPUs=8
    wait_for(
        "collector status in the heartbeats",
        lambda: (
            p.query("SELECT count(*) FROM collector_status WHERE role = 'node' AND runs > 0")[0][0]
            >= 6
        ),
        30,
    )
    status = json.loads(p.ctl("status", "--json"))
    coll = {c["collector"]: c for c in status["collection"]}
    assert coll["iostat"]["runs"] >= 2 and coll["iostat"]["success_rate"] == 1.0
    assert coll["queue"]["role"] == "head" and coll["queue"]["failures"] == 0
    assert coll["gpu"]["skipped"].startswith("no NVIDIA GPU")
    text = p.ctl("status")
    headers = [line for line in text.splitlines() if line and not line.startswith(" ")]
    for section in ("Queue", "Slurm nodes:", "Collection:", "Agents:"):
        assert any(h.startswith(section) for h in headers), (section, headers)


def test_the_json_api_serves_the_same_views(pipeline):
    """Read as root, with root's MUNGE credential (root sees everything); without one, nothing."""
    import urllib.error
    import urllib.request

    from aggregator.admin import apiclient

    p = pipeline
    wait_for("Slurm node states", lambda: latest(p, "node_state"), 30)
    url = f"http://127.0.0.1:{p.http_port}"

    def get(path: str):
        return apiclient.call(url, "GET", f"/api/v1/{path}")

    assert {n["node"] for n in get("nodes")["nodes"]} >= {"node1", "node2"}
    wait_for(
        "head and node collectors' status",
        lambda: {"queue", "iostat"} <= {c["collector"] for c in get("collectors")},
        30,
    )
    assert "collection" in get("status")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{url}/api/v1/nodes", timeout=10)
    assert refused.value.code == 401


def test_license_features_and_checkouts_show_from_the_configured_server(pipeline):
    p = pipeline
    wait_for("a license reading", lambda: latest(p, "licenses"), 30)
    lic = json.loads(p.ctl("licenses", "--json"))
    matlab = {f["feature"]: f for f in lic["features"]}["MATLAB"]
    assert (matlab["issued"], matlab["in_use"]) == (
        50,
        3,
    )  # "Total of 50 licenses issued;  Total of 3"
    assert matlab["users"].get("alice", 0) >= 1
    assert any(s["up"] for s in lic["servers"])
    assert "MATLAB" in p.ctl("status")


def test_filesystem_usage_and_the_nodes_daemons_are_read_on_every_node(pipeline):
    p = pipeline
    wait_for(
        "disk and health readings from both nodes",
        lambda: {"node1", "node2"} <= set(latest(p, "disk")) & set(latest(p, "health")),
        30,
    )
    st = os.statvfs("/")
    for node, records in latest(p, "disk").items():
        root = {r["path"]: r for r in records}["/"]
        assert root["responsive"] and root["size_bytes"] == st.f_blocks * st.f_frsize, node
    for node, records in latest(p, "health").items():
        services = {r["name"]: r for r in records if r["record"] == "service"}
        assert services["slurmd"]["running"] and services["munged"]["running"], node
    fs = {f["path"]: f for f in json.loads(p.ctl("status", "--json"))["filesystems"]}
    assert set(fs) == {"/", "/var/lib/nomade-cluster"}
    assert "Filesystems:" in p.ctl("status") and "/var/lib/nomade-cluster" in p.ctl("status")
