"""What `nomadectl job` and `nomadectl jobs` show about how a job used what it asked for: CPU
and memory efficiency, bytes on local disks versus network filesystems, and the GPUs its
processes ran on, from real captured nvidia-smi outputs sent through the agents' ingest path."""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import ROOT

import nomadectl as ctl
from aggregator import store
from aggregator.store import Ingest
from aggregator.store.sqlite import gpus
from aggregator.views import query
from collectors import gpu
from nomade_common import wire

GPU = ROOT / "tests" / "fixtures" / "gpu" / "h200-580.159.04"
SHARED_GPU = ROOT.parent / "shared" / "fixtures" / "gpu"
MiB = 1 << 20
# A Slurm job's cgroup as /proc/<pid>/cgroup names it on a cgroup v1 node (the dev cluster's
# layout), written for the captured process's pid: the agent reads job ids from exactly this.
CGROUP = "4:memory:/slurm_node1/uid_2001/job_{job}/step_batch/task_0\n"


def proc_root(tmp_path: Path, pids: dict[int, int]) -> str:
    """A /proc with a cgroup file per pid, naming its job."""
    root = tmp_path / "proc"
    for pid, job in pids.items():
        (root / str(pid)).mkdir(parents=True, exist_ok=True)
        (root / str(pid) / "cgroup").write_text(CGROUP.format(job=job))
    return str(root)


def start(c, ing, job_id, t, **request):
    job = {"job_id": job_id, "submit_time": t - 5, "user": "alice", "user_id": 2001, **request}
    return ing.job_start(c, job, None, t)


def send(db, ing, node, seq, collector, t, records):
    env = wire.Envelope(
        wire.READINGS, node, 1, seq, {"collector": collector, "t": t, "records": records}
    )
    return db.call(lambda c: ing.apply_envelope(c, env))


def xml_records(tmp_path, job):
    records = gpu.parse_xml((GPU / "q-x.xml").read_text(), "q-x.xml")
    return gpu.attach_jobs(records, proc_root(tmp_path, {460: job}))


def csv_records(tmp_path, job):
    records = gpu.parse_csv((GPU / "query-gpu.csv").read_text(), "query-gpu.csv")
    apps = gpu.parse_csv((GPU / "query-compute-apps.csv").read_text(), "apps.csv")
    return gpu.attach_jobs(records + apps, proc_root(tmp_path, {460: job}))


@pytest.mark.parametrize("shape", [xml_records, csv_records], ids=["xml", "csv"])
def test_a_jobs_gpu_is_shown_with_its_utilisation_memory_and_power(db, tmp_path, shape):
    ing, now = Ingest("c"), time.time()
    db.call(lambda c: start(c, ing, 42, now - 100, gpus=1))
    db.call(lambda c: start(c, ing, 43, now - 100))  # a job on the node without GPU processes
    records = shape(tmp_path, 42)
    for seq, t in enumerate((now - 60, now - 30), 1):
        assert send(db, ing, "gpu1", seq, "gpu", t, records) == "stored"
    # The agent resends the second reading after a reconnect: it is not counted twice.
    assert send(db, ing, "gpu1", 3, "gpu", now - 30, records) == "stored"
    view = db.call(lambda c: query.job(c, 42))
    (g,) = view["gpus_used"]
    assert g["node"] == "gpu1" and g["name"] == "NVIDIA H200" and g["readings"] == 2
    assert g["util_mean_percent"] == 100.0 and g["idle_share"] == 0.0
    assert g["job_memory_max_bytes"] == 1860 * MiB  # the job's own process, as captured
    assert g["memory_total_bytes"] > 140_000 * MiB
    assert 500 <= g["power_mean_w"] <= 700 and g["temperature_max_c"] == 58.0
    assert db.call(lambda c: query.job(c, 43))["gpus_used"] == []
    text = ctl.jobs.render_job(json.loads(json.dumps(view)))
    assert "NVIDIA H200" in text and "100%/100%" in text and "1.8 GiB" in text


def test_a_gpu_sitting_idle_shows_as_idle(db, tmp_path):
    ing, now = Ingest("c"), time.time()
    db.call(lambda c: start(c, ing, 7, now - 100, gpus=1))
    busy = xml_records(tmp_path, 7)
    idle = [dict(r, util_gpu_percent=0.0) if r["record"] == "gpu" else r for r in busy]
    for seq, (t, records) in enumerate(((now - 90, busy), (now - 60, idle), (now - 30, idle)), 1):
        send(db, ing, "gpu1", seq, "gpu", t, records)
    (g,) = db.call(lambda c: query.job(c, 7))["gpus_used"]
    assert g["idle_share"] == pytest.approx(2 / 3, abs=0.001) and g["util_max_percent"] == 100


def test_every_captured_gpu_report_with_processes_attributes_them_to_their_job(db, tmp_path):
    if not SHARED_GPU.is_dir():
        pytest.skip(f"{SHARED_GPU}: the shared captures are not on this machine")
    files = sorted(SHARED_GPU.glob("*/*.xml"))
    assert files, f"{SHARED_GPU}: no nvidia-smi -q -x captures"  # present: a missing one fails
    ing, now, tried = Ingest("c"), time.time(), 0
    for seq, path in enumerate(files, 1):
        records = gpu.parse_xml(path.read_text(errors="replace"), path.name)
        pids = {r["pid"] for r in records if r["record"] == "process" and r["pid"] is not None}
        if not pids:
            continue
        tried += 1
        job = 1000 + seq
        db.call(lambda c, job=job: start(c, ing, job, now - 100))
        gpu.attach_jobs(records, proc_root(tmp_path / str(seq), dict.fromkeys(pids, job)))
        assert send(db, ing, f"n{seq}", 1, "gpu", now - 10, records) == "stored", path
        want = {
            r["gpu_uuid"] or r["gpu_index"]
            for r in records
            if r["record"] == "process" and r["pid"] is not None
        }
        got = db.call(lambda c, job=job: query.job(c, job))["gpus_used"]
        assert len(got) == len(want), path
    assert tried >= 3


@pytest.mark.parametrize(
    "hostile",
    [
        {"record": "process", "job_id": "42", "gpu_index": 0},
        {"record": "process", "job_id": 2**70, "gpu_index": 0},
        {"record": "process", "job_id": 42, "gpu_index": -1},
        {"record": "process", "job_id": 42, "gpu_uuid": ["x"]},
        {"record": "gpu", "index": 0, "util_gpu_percent": float("nan")},
        {"record": "gpu", "index": 0, "util_gpu_percent": 1e9, "memory_used_bytes": 2**80},
        "not a record",
        None,
    ],
)
def test_hostile_gpu_records_store_nothing_false_and_never_fail_the_envelope(db, hostile):
    ing, now = Ingest("c"), time.time()
    db.call(lambda c: start(c, ing, 42, now - 100))
    records = [
        {"record": "gpu", "index": 0, "util_gpu_percent": 50.0},
        {"record": "process", "job_id": 42, "gpu_index": 0},
        hostile,
    ]
    if isinstance(hostile, dict) and hostile.get("record") == "gpu":
        records = [hostile, records[1]]
    assert send(db, ing, "n1", 1, "gpu", now - 10, records) == "stored"
    for g in db.call(lambda c: query.job(c, 42))["gpus_used"]:
        assert g["util_mean_percent"] in (None, 50.0) and g["memory_used_max_bytes"] is None
        json.dumps(g, allow_nan=False)


def row(**kw):
    base = dict.fromkeys(query.JOB_COLUMNS)
    base.update(
        elapsed_seconds=None, start_time=None, end_time=None, cpus=None, nodes_requested=None
    )
    return {**base, **kw}


def test_efficiency_is_cpu_time_over_core_time_and_peak_over_request():
    job = row(elapsed_seconds=100.0, cpus=4, mem_per_node_bytes=400 * MiB)
    e = query.efficiency(job, 100.0, 100 * MiB)
    assert e["cpu_percent"] == 25.0 and e["core_seconds"] == 400.0 and e["mem_percent"] == 25.0
    # --mem-per-cpu: the request per node is the CPUs on a node times it.
    per_cpu = row(elapsed_seconds=10.0, cpus=8, nodes_requested=2, mem_per_cpu_bytes=100 * MiB)
    assert query.efficiency(per_cpu, None, 200 * MiB)["mem_percent"] == 50.0
    # Unknown is unknown: no request, not started, no CPU figure.
    assert query.efficiency(row(cpus=1), 5.0, MiB) == {
        "cpu_percent": None,
        "cpu_seconds": 5.0,
        "core_seconds": None,
        "mem_percent": None,
        "mem_peak_bytes": MiB,
        "mem_request_per_node_bytes": None,
    }
    # A running job's elapsed time runs to now.
    running = row(start_time=1000.0, cpus=2)
    assert query.efficiency(running, 50.0, None, now=1050.0)["cpu_percent"] == 50.0


def test_local_and_network_bytes_split_by_what_the_cgroup_was_charged():
    readings = {
        "proc_read_bytes": {"peak": 10 * MiB},
        "cgroup_read_bytes": {"peak": 4 * MiB},
        "proc_write_bytes": {"peak": 3 * MiB},
    }
    assert query.io_split(readings) == {
        "local_read_bytes": 4 * MiB,
        "network_read_bytes": 6 * MiB,
        "local_write_bytes": None,  # no cgroup io figure: the split is unknown, not all network
        "network_write_bytes": None,
    }


def ended(c, ing, job_id, t, cpus, mem, cpu_s, rss, elapsed=100.0, user="alice"):
    ing.job_start(
        c,
        {"job_id": job_id, "submit_time": t, "user": user, "cpus": cpus,
         "mem_per_node_bytes": mem, "nodes_requested": 1},
        None,
        t + 1,
    )  # fmt: skip
    c.execute(
        "UPDATE jobs SET end_time = ?, elapsed_seconds = ?, total_cpu_seconds = ?,"
        " max_rss_bytes = ?, outcome = 'COMPLETED' WHERE job_id = ?",
        (t + 1 + elapsed, elapsed, cpu_s, rss, job_id),
    )


def test_least_efficient_jobs_come_first_and_agree_with_the_job_view(db):
    ing, t0 = Ingest("c"), time.time() - 10_000
    rng = random.Random(16)
    jobs = {}
    for i in range(40):
        cpus, mem = rng.choice((1, 2, 4)), rng.choice((100, 400, 1000)) * MiB
        cpu_s = rng.choice((None, rng.uniform(0, 100 * cpus)))
        rss = rng.choice((None, rng.randint(1, mem)))
        jobs[100 + i] = (cpus, mem, cpu_s, rss)
        db.call(lambda c, i=i, j=jobs[100 + i]: ended(c, ing, 100 + i, t0 + i, *j))
    listed = db.call(lambda c: query.jobs(c, limit=1000, efficiency_below=30))
    worst = [
        min(
            v
            for v in (j["efficiency"]["cpu_percent"], j["efficiency"]["mem_percent"])
            if v is not None
        )
        for j in listed
    ]
    assert worst == sorted(worst) and all(w < 30 for w in worst)
    # Every job with an efficiency under 30% is listed, and only those.
    expect = set()
    for job_id, (cpus, mem, cpu_s, rss) in jobs.items():
        effs = [cpu_s / (100 * cpus) if cpu_s is not None else None, rss / mem if rss else None]
        if any(e is not None and e < 0.3 for e in effs):
            expect.add(job_id)
    assert {j["job_id"] for j in listed} == expect
    for j in listed[:5]:  # the list's figures are the job view's
        assert (
            db.call(lambda c, j=j: query.job(c, j["job_id"]))["efficiency"]["cpu_percent"]
            == (j["efficiency"]["cpu_percent"])
        )


def test_nomadectl_jobs_shows_efficiency_columns_and_lists_the_least_efficient(tmp_path):
    conn = store.open_store(str(tmp_path / "nomade.db"))
    ing, t0 = Ingest("c"), time.time() - 1000
    ended(conn, ing, 1, t0, 1, 400 * MiB, 95.0, 380 * MiB)  # uses what it asked for
    ended(conn, ing, 2, t0 + 1, 4, 1000 * MiB, 10.0, 100 * MiB)  # asks for far too much
    ended(conn, ing, 3, t0 + 2, 2, 400 * MiB, 150.0, 100 * MiB)  # memory only
    conn.commit()
    config = tmp_path / "nomade.toml"
    config.write_text(f'[general]\ndata_dir = "{tmp_path}"\n')
    run = CliRunner()
    every = run.invoke(ctl.main, ["--config", str(config), "jobs"])
    assert every.exit_code == 0, every.output
    header, *lines = every.output.splitlines()
    assert "CPU EFF" in header and "MEM EFF" in header
    assert [ln.split()[0] for ln in lines] == ["3", "2", "1"]
    assert "95%" in lines[2] and "95%" in lines[2].split("COMPLETED")[1]
    least = run.invoke(ctl.main, ["--config", str(config), "jobs", "--least-efficient"])
    assert [ln.split()[0] for ln in least.output.splitlines()[1:]] == ["2", "3"]
    some = run.invoke(
        ctl.main, ["--config", str(config), "jobs", "--least-efficient", "--below", "20"]
    )
    assert [ln.split()[0] for ln in some.output.splitlines()[1:]] == ["2"]
    alone = run.invoke(ctl.main, ["--config", str(config), "jobs", "--below", "20"])
    assert alone.exit_code == 2 and "--below goes with --least-efficient" in alone.output
    assert math.isclose(
        json.loads(run.invoke(ctl.main, ["--config", str(config), "job", "2", "--json"]).output)[
            "efficiency"
        ]["cpu_percent"],
        2.5,
    )


def test_a_node_outside_the_jobs_node_list_cannot_add_gpus_to_it(db, tmp_path):
    ing, now = Ingest("c"), time.time()
    db.call(lambda c: start(c, ing, 42, now - 100, node_list="gpu[1-2]"))
    records = xml_records(tmp_path, 42)
    assert send(db, ing, "gpu9", 1, "gpu", now - 20, records) == "stored"  # not the job's node
    assert db.call(lambda c: query.job(c, 42))["gpus_used"] == []
    assert send(db, ing, "gpu2", 1, "gpu", now - 10, records) == "stored"
    assert [g["node"] for g in db.call(lambda c: query.job(c, 42))["gpus_used"]] == ["gpu2"]


def test_a_node_naming_endless_gpus_for_a_job_is_bounded(db):
    ing, now = Ingest("c"), time.time()
    db.call(lambda c: start(c, ing, 42, now - 100))
    for seq in range(1, 4):  # each reading names 200 new GPUs
        records = []
        for i in range(200):
            uuid = f"GPU-{seq}-{i}"
            records += [
                {"record": "gpu", "index": i, "uuid": uuid, "util_gpu_percent": 1.0},
                {"record": "process", "gpu_uuid": uuid, "job_id": 42},
            ]
        assert send(db, ing, "n1", seq, "gpu", now - 10 + seq, records) == "stored"
    assert len(db.call(lambda c: query.job(c, 42))["gpus_used"]) == gpus.MAX_GPUS_PER_JOB_NODE


def test_curves_are_drawn_from_zero_to_what_the_job_asked_for():
    # A job pinned at 4 of its 4 cores draws a full, flat line; at 2 of 4 a flat half line.
    full = ctl.jobs.spark([3.98, 4.0, 3.99, 4.0, 3.97], 4)
    half = ctl.jobs.spark([2.0, 2.0, 2.0], 4)
    assert len(set(full)) == 1 and len(set(half)) == 1 and half < full
    series = [
        {"node": "n1", "t": float(t), "cpu_seconds": 2.0 * t, "mem_bytes": 100 * MiB}
        for t in range(5)
    ]
    (cpu, mem) = ctl.jobs.curve_lines(series, 4, 400 * MiB)[1:]
    assert "up to 2.00 cores of 4" in cpu and "100.0 MiB of 400.0 MiB" in mem
    assert set(cpu.split("CPU ")[1].split()[0]) == {ctl.jobs.BARS[4]}  # half of the bars


def test_a_warned_job_shows_no_empty_advice_heading():
    line = "NØMADE: memory: --mem=400M would fit"
    view = {
        **row(job_id=1, user="alice", cpus=1, outcome=None, reconcile="pending", state=None),
        "failed": False,
        "mem_peak_bytes": None,
        "nodes": [],
        "series": [],
        "verdict": {"p_fail": 0.9, "warned": True, "model_version": "v1", "lines": [line]},
        "advice": {"mem": {"text": line}, "time": None},
    }
    text = ctl.jobs.render_job(view)
    assert "advised at start:" in text and "no --time advice" in text
    view["advice"]["time"] = {"text": line}
    assert "advised at start:" not in ctl.jobs.render_job(view)


def test_the_agents_gpu_read_over_a_fixture_root_reaches_the_jobs_view(db, tmp_path):
    # The agent's own read (collectors/gpu.py:read), as on a node: nvidia-smi (here a script
    # printing NØMADE's H200 capture) and /proc (a tree naming pid 460's job); then the
    # NVML path through the fake pynvml of the conformance tests (its pid 5762 is job 31337).
    from test_gpu_conformance import fake_pynvml

    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\ncat {GPU / 'q-x.xml'}\n")
    smi.chmod(0o755)
    root = proc_root(tmp_path, {460: 42, 5762: 31337})
    ing, now = Ingest("c"), time.time()
    for job in (42, 31337):
        db.call(lambda c, job=job: start(c, ing, job, now - 100))
    by_smi = gpu.read(root, str(smi), 10.0, use_nvml=False)
    by_nvml = gpu.read(root, str(smi), 10.0, nvml=fake_pynvml())
    assert send(db, ing, "gpu1", 1, "gpu", now - 20, by_smi) == "stored"
    assert send(db, ing, "gpu2", 1, "gpu", now - 10, by_nvml) == "stored"
    (h200,) = db.call(lambda c: query.job(c, 42))["gpus_used"]
    assert (h200["node"], h200["name"], h200["job_memory_max_bytes"]) == (
        "gpu1",
        "NVIDIA H200",
        1860 * MiB,
    )
    (t4,) = db.call(lambda c: query.job(c, 31337))["gpus_used"]
    assert t4["node"] == "gpu2" and t4["job_memory_max_bytes"] == 1005 * MiB
    assert "T4" in t4["name"]


def sample(job_id, t, cpu, mem):
    r = [None] * len(wire.SAMPLE_FIELDS)
    r[0], r[1] = job_id, t
    r[wire.SAMPLE_FIELDS.index("cpu_usage_seconds")] = cpu
    r[wire.SAMPLE_FIELDS.index("mem_current_bytes")] = mem
    r[wire.SAMPLE_FIELDS.index("mem_peak_bytes")] = mem
    return r


def test_the_list_and_the_job_view_agree_whether_sacct_answered_or_not(db):
    # Jobs with samples, on one or two nodes, asking by --mem or --mem-per-cpu; sacct answers
    # for some (with a TotalCPU short of what was sampled, or a MaxRSS of 0), never for others.
    ing, now, rng = Ingest("c"), time.time(), random.Random(160)
    seq = 0
    for job_id in range(200, 230):
        nodes = rng.choice((1, 2))
        request = rng.choice(({"mem_per_node_bytes": 400 * MiB}, {"mem_per_cpu_bytes": 100 * MiB}))
        job = {"job_id": job_id, "submit_time": now - 600, "user": "alice", "cpus": 4,
               "nodes_requested": nodes, **request}  # fmt: skip
        db.call(lambda c, job=job: ing.job_start(c, job, None, now - 500))
        for n in range(nodes):
            rows = [
                sample(
                    job_id, now - 500 + 10 * k, 3.0 * k * rng.random(), rng.randint(1, 300) * MiB
                )
                for k in range(6)
            ]
            seq += 1
            env = wire.Envelope(wire.SAMPLES, f"n{n}", 1, seq, {"rows": rows})
            assert db.call(lambda c, env=env: ing.apply_envelope(c, env)) == "stored"
        end = {"job_id": job_id, "submit_time": now - 600, "end_time": now - 400}
        uid = db.call(lambda c, end=end: ing.job_end(c, end, 1.0, now - 400))
        answered = {
            "elapsed_seconds": 100.0,
            "total_cpu_seconds": rng.choice((0.0, 5.0)),
            "max_rss_bytes": rng.choice((0, 10 * MiB)),
        }
        final = rng.choice((None, answered))
        db.call(lambda c, uid=uid, final=final: ing.reconciled(c, uid, final, 9, 9, 1.0, now))
    listed = {j["job_id"]: j for j in db.call(lambda c: query.jobs(c, limit=1000))}
    least = db.call(lambda c: query.jobs(c, limit=1000, efficiency_below=1000))
    assert len(listed) == len(least) == 30  # every ended job has an efficiency to rank by
    for job_id, j in listed.items():
        view = db.call(lambda c, job_id=job_id: query.job(c, job_id))
        for key in ("cpu_percent", "mem_percent", "core_seconds", "mem_request_per_node_bytes"):
            assert view["efficiency"][key] == j["efficiency"][key], (job_id, key)
