"""The whole pipeline on the real dev cluster: hooks -> agents -> ZeroMQ -> aggregator -> SQLite
-> nomadectl, with jobs that end in every outcome class, and an aggregator killed 20 times while
they run.

One cluster per test run; every outcome job is submitted at the start (the TIMEOUT one needs
70-90 s); waits are polls with deadlines.
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import time

import pytest
from clusterlib import (
    GROW_PAST_LIMIT,
    HOLD_200MB,
    HOLD_200MB_WRITE_50MB,
    PY,
    MiB,
    Pipeline,
    py,
    running_pipeline,
    sbatch,
    wait_for,
)

from aggregator import store

pytestmark = pytest.mark.cluster


def stored_samples(p: Pipeline, node: str) -> list[tuple[int, float]]:
    """(job_id, t) of every sample stored from NODE, in every room of the store."""
    conn = store.connect(str(p.db), readonly=True)
    try:
        conn.execute("BEGIN")  # one snapshot, while the aggregator may be compacting
        job_id = dict(conn.execute("SELECT uid, job_id FROM jobs").fetchall())
        return [(job_id[s[0]], s[2]) for s in store.all_samples(conn) if s[1] == node]
    finally:
        conn.close()


@pytest.fixture(scope="module")
def pipeline(slurm_cluster):
    with running_pipeline() as p:
        yield p


@pytest.fixture(scope="module")
def jobs(pipeline):
    p = pipeline
    ids = {
        "completed": sbatch(
            p, "completed", "--mem=400M", "-t", "3", script=py(HOLD_200MB_WRITE_50MB)
        ),
        "failed": sbatch(
            p, "failed", "-t", "3", script=f"{PY} -c 'import time; time.sleep(6)'; exit 3"
        ),
        "timeout": sbatch(p, "timeout", "-t", "1", script="sleep 300"),
        "oom": sbatch(p, "oom", "--mem=150M", "-t", "3", script=py(GROW_PAST_LIMIT)),
        "cancelled": sbatch(p, "cancelled", "-t", "3", script="sleep 300"),
        "twonode": sbatch(
            p,
            "twonode",
            "-N",
            "2",
            "--ntasks-per-node=1",
            "--mem=400M",
            "-t",
            "3",
            script=f"srun {py(HOLD_200MB)}",
        ),
    }
    wanted = set(ids.values())

    def started():
        rows = p.query("SELECT job_id FROM jobs WHERE user = 'alice' AND start_time IS NOT NULL")
        return wanted <= {r[0] for r in rows}

    wait_for("every job's start report", started, 60)
    return ids


def all_done(p: Pipeline, ids: dict[str, int]) -> bool:
    rows = p.query(
        f"SELECT count(*) FROM jobs WHERE job_id IN ({','.join(map(str, ids.values()))})"
        " AND reconcile = 'done'"
    )
    return rows[0][0] == len(ids)


def test_killing_the_aggregator_20_times_and_restarting_agents_loses_and_duplicates_no_sample(
    pipeline, jobs
):
    p, rng = pipeline, random.Random(20)
    cancelled_at = time.monotonic() + 8  # the CANCELLED job runs at least 5 s first
    for kill in range(20):
        time.sleep(rng.uniform(0.2, 2.5))
        p.kill_aggregator()
        if kill == 5:
            p.stop_agent("node1")  # an agent restart, while the aggregator is away
            p.start_agent("node1")
        time.sleep(rng.uniform(0.0, 1.0))
        p.start_aggregator()
        if kill == 12:
            p.stop_agent("node2")
            p.start_agent("node2")
        if time.monotonic() > cancelled_at:
            subprocess.run(["scancel", str(jobs["cancelled"])], check=True)
            cancelled_at = float("inf")
    if cancelled_at != float("inf"):
        subprocess.run(["scancel", str(jobs["cancelled"])], check=True)
    wait_for(
        "every job to end and be reconciled with sacct", lambda: all_done(p, jobs), 240, every=1
    )
    wait_for(
        "both outboxes to drain",
        lambda: p.outbox_depth("node1") == p.outbox_depth("node2") == 0,
        60,
    )

    for node in ("node1", "node2"):
        ledger = [line.split() for line in (p.base / f"ledger-{node}.txt").read_text().splitlines()]
        produced = sorted((int(j), float(t)) for j, t in ledger)
        stored = sorted(stored_samples(p, node))
        assert produced, f"{node} produced no samples"
        assert len(set(produced)) == len(produced)
        assert stored == produced, f"{node}: {len(produced)} samples produced, {len(stored)} stored"
    # Every envelope from 1 to the last seq of each outbox epoch arrived exactly once.
    for node, epoch, lo, hi, n in p.query(
        "SELECT node, epoch, min(seq), max(seq), count(*) FROM received GROUP BY node, epoch"
    ):
        assert (lo, n) == (1, hi), f"{node} epoch {epoch}: seqs {lo}..{hi} but {n} envelopes"


def test_every_outcome_is_stored_with_samples_and_values_that_match_the_job(pipeline, jobs):
    p = pipeline
    wait_for("every job to be reconciled", lambda: all_done(p, jobs), 240, every=1)
    got = {name: p.job_json(job_id) for name, job_id in jobs.items()}
    want = {
        "completed": "COMPLETED",
        "failed": "FAILED",
        "timeout": "TIMEOUT",
        "oom": "OUT_OF_MEMORY",
        "cancelled": "CANCELLED",
        "twonode": "COMPLETED",
    }
    assert {name: j["outcome"] for name, j in got.items()} == want
    for name, j in got.items():
        assert j["job_id"] == jobs[name] and j["user"] == "alice"
        assert j["nodes"], f"{name}: no samples"
        assert all(n["samples"] >= 2 for n in j["nodes"]), f"{name}: {j['nodes']}"
    done = got["completed"]
    assert done["exit_code"] == 0
    assert done["mem_per_node_bytes"] == 400 * MiB and done["time_limit_seconds"] == 180
    assert done["mem_peak_bytes"] >= 200 * MiB
    assert done["nodes"][0]["write_bytes"] >= 50 * MiB
    # The sampled CPU time is the job's own accounting (sacct's TotalCPU, from the same cgroup),
    # less at most what it used after its last sample (1 s apart here; the job is one process).
    # On 2 shared cores a 7 s busy loop gets anywhere from 2.5 to 7 CPU seconds.
    total, sampled = done["total_cpu_seconds"], done["nodes"][0]["cpu_seconds"]
    assert total >= 1, f"sacct's TotalCPU {total} s for a 7 s busy loop"
    assert total - 1.5 <= sampled <= total + 0.5, f"sampled {sampled} s, sacct's TotalCPU {total} s"
    assert got["failed"]["exit_code"] == 3
    assert got["cancelled"]["cancelled_by"] == "0"  # scancel as root
    assert got["oom"]["mem_peak_bytes"] >= 100 * MiB
    two = got["twonode"]
    assert sorted(n["node"] for n in two["nodes"]) == ["node1", "node2"]
    assert all(n["mem_peak_bytes"] >= 200 * MiB for n in two["nodes"]), two["nodes"]
    # TaskProlog's notice, once, at the top of the job's own output.
    out = (p.base / "jobs" / f"completed-{jobs['completed']}.out").read_text()
    assert out.count("NØMADE:") == 1 and out.startswith("NØMADE:")


def test_status_shows_both_nodes_and_the_jobs_list_filters_by_outcome(pipeline, jobs):
    p = pipeline
    wait_for("every job to be reconciled", lambda: all_done(p, jobs), 240, every=1)
    status = json.loads(p.ctl("status", "--json"))
    assert {n["node"] for n in status["nodes"]} == {"node1", "node2"}
    assert all(n["state"] == "up" for n in status["nodes"])
    failed = json.loads(p.ctl("jobs", "--state", "OUT_OF_MEMORY", "--json"))
    assert jobs["oom"] in [j["job_id"] for j in failed]
    assert jobs["completed"] not in [j["job_id"] for j in failed]
    assert "OUT_OF_MEMORY" in p.ctl("jobs", "--user", "alice")


def test_senders_without_an_enrolled_key_are_refused_and_nothing_stored(pipeline, jobs):
    """Plain ZeroMQ, a CURVE client with a key nobody enrolled (both claiming to be node1, with
    well-formed envelopes) and a stray HTTP request: refused, counted, and not one row stored."""
    import zmq

    from nomade_common import wire

    p = pipeline
    forged = [
        wire.Envelope(
            wire.JOB_EVENT,
            "node1",
            1,
            seq,
            {"event": "start", "job_id": 999_000 + seq, "t": time.time()},
        ).pack()
        for seq in (1, 2)
    ]
    ctx = zmq.Context()
    try:
        _send_unauthenticated(ctx, p, forged)
    finally:
        ctx.destroy(linger=0)  # also when an assertion failed: a context left open blocks GC
    assert p.aggregator.poll() is None, "the aggregator died"
    assert p.query("SELECT count(*) FROM received WHERE node = 'node1' AND epoch = 1")[0][0] == 0
    assert p.query("SELECT count(*) FROM jobs WHERE job_id >= 999000")[0][0] == 0
    assert "agents refused:" in p.ctl("status")
    assert "Traceback" not in p.log()


def _send_unauthenticated(ctx, p, forged) -> None:
    import zmq

    from nomade_common import keys

    plain = ctx.socket(zmq.DEALER)
    stranger = ctx.socket(zmq.DEALER)
    server_key = keys.load(str(p.base / "keys" / "server.key"), secret=False)[0]
    stranger.curve_serverkey = server_key.encode()
    stranger.curve_publickey, stranger.curve_secretkey = zmq.curve_keypair()
    for sock, junk in ((plain, [b"\xc1not msgpack", forged[0]]), (stranger, [forged[1]])):
        sock.setsockopt(zmq.LINGER, 0)
        # A refused peer may never get a pipe to queue on: a send then waits for ever (once,
        # this test hung the suite).  What cannot even be queued is refused all the same.
        sock.setsockopt(zmq.SNDTIMEO, 5000)
        sock.connect(f"tcp://127.0.0.1:{p.zmq_port}")
        for data in junk:
            try:
                sock.send(data)
            except zmq.Again:
                break
    with socket.create_connection(("127.0.0.1", p.zmq_port)) as raw:  # not even ZeroMQ
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n")

    def refused():
        counts = json.loads(p.ctl("status", "--json"))["agents_refused"]["by_reason"]
        # The unknown key is refused by NØMADE's ZAP handler; the plain and the non-ZeroMQ peers
        # by libzmq before any ZAP question, read from its monitor, which does not always say
        # which of the two a refused handshake was.
        before_zap = counts.get("wrong_mechanism", 0) + counts.get("bad_handshake", 0)
        return before_zap >= 1 and counts.get("unknown_key", 0) >= 1

    wait_for("the refusals to be counted", refused, 20)
