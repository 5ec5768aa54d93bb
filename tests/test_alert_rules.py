"""Alert rules evaluated on a store filled the way the aggregator fills it: a filesystem filling
faster and faster is projected full and alerts once, resolves when it is cleaned; a silent node
alerts unless Slurm drained it; a job whose memory grows toward its limit is alerted with its
time to OOM; a node's hardware errors alert; bad rules are refused in one line."""

from __future__ import annotations

import re
import time

import pytest
from conftest import ROOT, shared

from aggregator import store
from aggregator.alerts import rules
from aggregator.store import Ingest
from collectors import gpu, health, licenses, nfs
from collectors.runner import Reading, Status
from collectors.slurm import scontrol, squeue, sshare
from nomade_common import wire

GiB = 1 << 30
MiB = 1 << 20
SLURM = ROOT / "tests" / "fixtures" / "slurm" / "22.05"
KERNEL_LOG = ROOT / "tests" / "cases" / "node-kernel-errors-handmade" / "input"


@pytest.fixture
def conn(tmp_path):
    c = store.open_store(str(tmp_path / "r.db"))
    yield c
    c.close()


def write(conn, fn):
    conn.execute("BEGIN")
    out = fn(conn)
    conn.execute("COMMIT")
    return out


def step(conn, rule, now):
    """One evaluation, as the aggregator makes it: read, then apply in a transaction."""
    findings = rules.evaluate(conn, rule, now)
    return write(conn, lambda c: rules.apply(c, rule, findings, now))


def filesystem(path, used, size=1000 * GiB):
    return {"record": "filesystem", "path": path, "size_bytes": size, "used_bytes": int(used)}


def test_a_filesystem_filling_ever_faster_alerts_once_and_resolves_when_cleaned(conn):
    (rule,) = rules.parse_rules(
        [{"name": "fs_full", "kind": "time_to_limit", "collector": "disk",
          "record": "filesystem", "key": "used_bytes", "limit_key": "size_bytes",
          "within": 3 * 86400, "window": 2 * 86400, "cooldown": 3600}]
    )  # fmt: skip
    now = time.time()
    # /scratch: 500 GB, filling faster and faster (full in about 2 days at its acceleration,
    # in over 4 at its average rate); /home: flat at 600 GB.
    for h in range(48):
        t = now - (47 - h) * 3600
        used = 500 * GiB + 0.05 * GiB * h**2
        records = [filesystem("/scratch", used), filesystem("/home", 600 * GiB + h % 2)]
        write(conn, lambda c, t=t, r=records: store.store_reading(c, "n1", "disk", t, 0.1, r, 3000))
    (change,) = step(conn, rule, now)
    assert (change.subject, change.state) == ("/scratch", "firing")
    assert "at its acceleration" in change.summary and "accelerating" in change.summary
    assert step(conn, rule, now + 60) == []  # still full soon: the same alert, nothing new
    (alert,) = store.find_alerts(conn, unresolved=True)
    assert alert["last_t"] == now + 60
    # Cleaned: usage drops to 100 GB and stays.
    for k in range(1, 5):
        t = now + k * 3600
        write(conn, lambda c, t=t: store.store_reading(
            c, "n1", "disk", t, 0.1, [filesystem("/scratch", 100 * GiB)], 3000))  # fmt: skip
    later = now + 5 * 3600
    clean = rules.parse_rules(
        [{"name": "fs_full", "kind": "time_to_limit", "collector": "disk",
          "record": "filesystem", "key": "used_bytes", "limit_key": "size_bytes",
          "within": 3 * 86400, "window": 4 * 3600, "cooldown": 3600}]
    )[0]  # fmt: skip
    (resolved,) = step(conn, clean, later)
    assert (resolved.subject, resolved.state, resolved.alert_id) == (
        "/scratch",
        "resolved",
        change.alert_id,
    )


def agents(conn, **seen):
    def put(c):
        for node, last in seen.items():
            c.execute(
                "INSERT INTO nodes (node, first_seen, last_seen, state) VALUES (?, 1, ?, 'up')",
                (node, last),
            )

    write(conn, put)


def test_a_silent_node_alerts_unless_slurm_drained_it(conn):
    now = time.time()
    agents(conn, node1=now - 900, node2=now - 900, node3=now - 5)
    records = scontrol.node_records((SLURM / "scontrol-show-node-o.txt").read_text())
    for r in records:  # the real capture's node2, drained for a DIMM swap
        if r["node"] == "node2":
            r["state"] = "IDLE+DRAIN"
    write(conn, lambda c: store.store_reading(c, "head", "node_state", now, 0.1, records, 600))
    (rule,) = rules.parse_rules([{"name": "silent", "kind": "node_silent", "window": 300}])
    changes = step(conn, rule, now)
    assert [(c.subject, c.state) for c in changes] == [("node1", "firing")]
    assert "not been heard for 15.0 min" in changes[0].summary
    agents_back = write(
        conn, lambda c: c.execute("UPDATE nodes SET last_seen = ? WHERE node = 'node1'", (now,))
    )
    del agents_back
    assert [(c.subject, c.state) for c in step(conn, rule, now + 1)] == [("node1", "resolved")]


def test_hardware_errors_in_a_nodes_kernel_log_alert(conn):
    now = time.time()
    agents(conn, node1=now)
    errors = health.parse_kernel_errors(KERNEL_LOG.read_text(), "dmesg")
    write(conn, lambda c: store.store_reading(c, "node1", "health", now - 10, 0.1, errors, 600))
    (rule,) = rules.parse_rules(
        [{"name": "hw", "kind": "node_problem", "problems": ["mce"], "window": 86400}]
    )
    (change,) = step(conn, rule, now)
    assert change.subject == "node1" and "mce" in change.summary


def sample(job_id, t, mem, limit):
    r = [None] * len(wire.SAMPLE_FIELDS)
    r[0], r[1] = job_id, t
    r[wire.SAMPLE_FIELDS.index("mem_current_bytes")] = mem
    r[wire.SAMPLE_FIELDS.index("mem_limit_bytes")] = limit
    return r


def test_a_job_growing_toward_its_memory_limit_alerts_with_its_time_to_oom(conn):
    ing, now = Ingest("c"), time.time()
    for job_id, user in ((77, "alice"), (78, "bob")):
        job = {"job_id": job_id, "submit_time": now - 120, "start_time": now - 100, "user": user}
        write(conn, lambda c, job=job: ing.job_start(c, job, None, now - 100))
    # Job 77, past half its 1 GiB limit, grows 5 MiB a second toward it (about a minute left);
    # job 78 is flat.
    rows = [sample(77, now - 60 + 2 * k, (400 + 10 * k) * MiB, GiB) for k in range(30)]
    rows += [sample(78, now - 60 + 2 * k, 300 * MiB, GiB) for k in range(30)]
    env = wire.Envelope(wire.SAMPLES, "node1", 1, 1, {"rows": rows})
    assert write(conn, lambda c: ing.apply_envelope(c, env)) == "stored"
    (rule,) = rules.parse_rules([{"name": "oom_soon", "kind": "job_memory", "window": 120}])
    (change,) = step(conn, rule, now)
    assert (change.subject, change.user, change.state) == ("job 77", "alice", "firing")
    assert "toward its 1.0 GiB limit: out of memory in about" in change.summary
    minutes = float(change.summary.rsplit("about ", 1)[1].split()[0])
    assert 0.8 <= minutes <= 1.6  # (1024 - 690) MiB at 5 MiB/s: 1.1 min after the last sample
    (alert,) = store.find_alerts(conn, user="alice")
    assert alert["rule"] == "oom_soon"
    assert store.find_alerts(conn, user="bob") == []


@pytest.mark.parametrize(
    ("rule", "said"),
    [
        ({"name": "x", "kind": "nope"}, "kind must be one of"),
        ({"name": "x y", "kind": "node_silent"}, "name must be letters"),
        ({"name": "x", "kind": "node_silent", "window": "5m"}, "window must be a number"),
        ({"name": "x", "kind": "node_silent", "window": 0}, "window must be more than 0"),
        ({"name": "x", "kind": "node_silent", "severity": "panic"}, "severity must be one of"),
        ({"name": "x", "kind": "node_silent", "code": "os.system('x')"}, "unknown key 'code'"),
        ({"name": "x", "kind": "time_to_limit", "collector": "disk"}, "record is required"),
        (
            {"name": "x", "kind": "time_to_limit", "collector": "disk", "record": "filesystem",
             "key": "used_bytes", "within": 60},
            "give limit_key or limit",
        ),
        ({"name": "x", "kind": "job_memory", "within": True}, "within must be a number"),
        (
            {"name": "x", "kind": "threshold", "collector": "disk", "record": "filesystem",
             "key": "used_bytes", "op": "=>", "value": 1},
            "op must be one of >, >=, <, <=",
        ),
        ({"name": "x", "kind": "rate", "collector": "disk"}, "record is required"),
        ({"name": "x", "kind": "license_expiry"}, "within is required"),
        ({"name": "x", "kind": "gpu_idle", "share": 2}, "share must be between 0 and 1"),
        ({"name": "x", "kind": "gpu_idle", "min_readings": 2.5}, "must be a whole number"),
        ("node_silent", "expected a table"),
    ],
)  # fmt: skip
def test_a_rule_that_is_not_right_is_refused_in_one_line(rule, said):
    with pytest.raises(ValueError) as exc:
        rules.parse_rules([rule])
    assert said in str(exc.value) and "\n" not in str(exc.value)
    assert str(exc.value).startswith("alerts.rules[0]")


def test_two_rules_of_one_name_are_refused():
    with pytest.raises(ValueError, match="another rule has this name"):
        rules.parse_rules([{"name": "a", "kind": "node_silent"}] * 2)


# -- threshold, rate, acceleration ---------------------------------------------------------------
HWMON = ROOT / "tests" / "fixtures" / "sys" / "hwmon-handmade-2socket-intel-nvme"


def test_a_temperature_over_its_threshold_alerts_and_one_under_does_not(conn):
    now = time.time()
    temps = health.parse_hwmon(str(HWMON))  # the capture's hottest core: 97 °C
    write(conn, lambda c: store.store_reading(c, "node1", "health", now - 30, 0.1, temps, 600))
    hot, chip, cool = rules.parse_rules(
        [{"name": "hot", "kind": "threshold", "collector": "health", "record": "temperature",
          "key": "temp_celsius", "op": ">=", "value": 95},
         {"name": "chip", "kind": "threshold", "collector": "health", "record": "temperature",
          "key": "temp_celsius", "subject_key": "chip", "op": ">", "value": 40},
         {"name": "cool", "kind": "threshold", "collector": "health", "record": "temperature",
          "key": "temp_celsius", "op": ">", "value": 100}]
    )  # fmt: skip
    (change,) = step(conn, hot, now)
    assert change.subject == "node1"
    assert change.summary == "node1 temp_celsius 97 (threshold >= 95)"
    assert sorted(c.summary for c in step(conn, chip, now)) == [
        "node1: coretemp temp_celsius 97 (threshold > 40)",
        "node1: nvme temp_celsius 44.85 (threshold > 40)",
    ]  # acpitz (27.8 °C) and k10temp (35.1 °C) are under it
    assert step(conn, cool, now) == []
    # Slurm drains node1: its node alert resolves.
    records = scontrol.node_records((SLURM / "scontrol-show-node-o.txt").read_text())
    drained = [dict(r, state="IDLE+DRAIN") if r["node"] == "node1" else r for r in records]
    write(conn, lambda c: store.store_reading(c, "head", "node_state", now, 0.1, drained, 600))
    assert [(c.subject, c.state) for c in step(conn, hot, now + 1)] == [("node1", "resolved")]


def fill(conn, now, used_at):
    for h in range(48):
        t = now - (47 - h) * 3600
        records = [filesystem("/scratch", used_at(h)), filesystem("/home", 600 * GiB + h % 2)]
        write(conn, lambda c, t=t, r=records: store.store_reading(c, "n1", "disk", t, 0.1, r, 3000))


def test_a_filesystem_filling_faster_than_the_rate_alerts(conn):
    now = time.time()
    fill(conn, now, lambda h: 100 * GiB + 2 * GiB * h)  # 2 GiB/h: steady, not accelerating
    fast, accel = rules.parse_rules(
        [{"name": "fast", "kind": "rate", "collector": "disk", "record": "filesystem",
          "key": "used_bytes", "value": GiB / 3600, "window": 2 * 86400},
         {"name": "accel", "kind": "acceleration", "collector": "disk", "record": "filesystem",
          "key": "used_bytes", "window": 2 * 86400}]
    )  # fmt: skip
    (change,) = step(conn, fast, now)
    assert change.subject == "/scratch" and "used_bytes grows" in change.summary
    assert 1.9 * GiB <= float(change.summary.split("(")[1].split("/h")[0]) <= 2.1 * GiB
    assert step(conn, accel, now) == []  # linear growth is never called accelerating


def test_a_filesystem_filling_ever_faster_alerts_as_accelerating_and_resolves(conn):
    now = time.time()
    fill(conn, now, lambda h: 500 * GiB + 0.05 * GiB * h**2)
    (accel,) = rules.parse_rules(
        [{"name": "accel", "kind": "acceleration", "collector": "disk", "record": "filesystem",
          "key": "used_bytes", "window": 2 * 86400}]
    )  # fmt: skip
    (change,) = step(conn, accel, now)
    assert (change.subject, change.state) == ("/scratch", "firing")
    assert "used_bytes is accelerating" in change.summary
    for k in range(1, 5):  # cleaned: flat at 100 GiB
        t = now + k * 3600
        write(conn, lambda c, t=t: store.store_reading(
            c, "n1", "disk", t, 0.1, [filesystem("/scratch", 100 * GiB)], 3000))  # fmt: skip
    (short,) = rules.parse_rules(
        [{"name": "accel", "kind": "acceleration", "collector": "disk", "record": "filesystem",
          "key": "used_bytes", "window": 4 * 3600}]
    )  # fmt: skip
    assert [(c.subject, c.state) for c in step(conn, short, now + 5 * 3600)] == [
        ("/scratch", "resolved")
    ]


# -- collectors failing ---------------------------------------------------------------------------
def heartbeat(conn, ing, node, seq, **collectors):
    env = wire.Envelope(wire.HEARTBEAT, node, 1, seq, {"collectors": collectors})
    return write(conn, lambda c: ing.apply_envelope(c, env))


def test_a_collector_failing_for_longer_than_the_window_alerts_and_resolves_when_it_runs(conn):
    ing, now = Ingest("c"), time.time()
    gpu_status, disk_status = Status(60.0), Status(60.0)
    gpu_status.count(Reading("gpu", now - 1200, 0.1, []))
    disk_status.count(Reading("disk", now - 1200, 0.1, []))
    for k in range(1, 20):  # gpu fails from 19 min ago on; disk failed once, a minute ago
        gpu_status.count(Reading("gpu", now - 1200 + 60 * k, 5.0, [], "nvidia-smi not found"))
        disk_status.count(
            Reading("disk", now - 1200 + 60 * k, 0.1, [], "df timed out" if k == 19 else None)
        )
    heartbeat(conn, ing, "node1", 1, gpu=gpu_status.as_list(), disk=disk_status.as_list())
    (rule,) = rules.parse_rules([{"name": "broken", "kind": "collector_failing", "window": 600}])
    (change,) = step(conn, rule, now)
    assert change.subject == "node1: gpu"
    assert change.summary == (
        "node1: gpu collector failing since its last success 20.0 min ago: nvidia-smi not found"
    )
    gpu_status.count(Reading("gpu", now + 10, 0.1, []))
    heartbeat(conn, ing, "node1", 2, gpu=gpu_status.as_list(), disk=disk_status.as_list())
    assert [(c.subject, c.state) for c in step(conn, rule, now + 20)] == [
        ("node1: gpu", "resolved")
    ]


# -- licenses -------------------------------------------------------------------------------------
LMSTAT = ROOT / "tests" / "cases" / "lic-lmstat-handmade" / "input"


def licenses_at(conn, t):
    records = licenses.parse_lmstat(LMSTAT.read_text())
    write(conn, lambda c: store.store_reading(c, "head", "licenses", t, 0.2, records, 600))


def test_a_license_server_down_alerts_and_resolves_when_it_is_back(conn):
    now = time.time()
    licenses_at(conn, now - 30)
    (rule,) = rules.parse_rules([{"name": "lic", "kind": "license_down", "window": 600}])
    changes = step(conn, rule, now)
    # The capture: lic2's lmgrd does not answer; lic3 is up but its INTEL daemon is down.
    assert sorted(c.subject for c in changes) == ["license 1055@lic2", "license INTEL"]
    (lic2,) = [c for c in changes if c.subject == "license 1055@lic2"]
    assert lic2.summary.startswith("license lmgrd 1055@lic2 is down: ")
    assert "license 27000@lic1" not in {c.subject for c in changes}
    up = [
        dict(r, up=True) if r.get("record") == "server" else r
        for r in licenses.parse_lmstat(LMSTAT.read_text())
    ]
    write(conn, lambda c: store.store_reading(c, "head", "licenses", now + 30, 0.2, up, 600))
    assert sorted((c.subject, c.state) for c in step(conn, rule, now + 60)) == [
        ("license 1055@lic2", "resolved"),
        ("license INTEL", "resolved"),
    ]


def test_a_license_expiring_within_the_days_given_alerts(conn):
    now = time.mktime((2024, 12, 20, 12, 0, 0, 0, 0, -1))  # 11.5 days before 31-dec-2024 ends
    licenses_at(conn, now - 30)
    month, week = rules.parse_rules(
        [{"name": "month", "kind": "license_expiry", "within": 30 * 86400},
         {"name": "week", "kind": "license_expiry", "within": 7 * 86400}]
    )  # fmt: skip
    changes = step(conn, month, now)
    assert sorted(c.subject for c in changes) == [
        "license MLM MATLAB",
        "license MLM Parallel_Computing_Toolbox",
    ]  # CCompL is permanent
    (matlab,) = [c for c in changes if c.subject == "license MLM MATLAB"]
    assert matlab.summary == (
        "license MLM MATLAB expires in 11.5 d (31-dec-2024; 50 issued, 3 in use)"
    )
    assert step(conn, week, now) == []


# -- jobs -----------------------------------------------------------------------------------------
def test_a_job_pending_longer_than_given_alerts_its_user(conn):
    records = squeue.records((SLURM / "squeue-nomade.txt").read_text())
    # The reading is taken 2 days after alice's array was submitted (the others: earlier).
    t = 1795514523.0 + 2 * 86400
    write(conn, lambda c: store.store_reading(c, "head", "queue", t, 0.1, records, 600))
    long_wait, longer = rules.parse_rules(
        [{"name": "waits", "kind": "job_pending", "within": 86400},
         {"name": "waits3", "kind": "job_pending", "within": 3 * 86400}]
    )  # fmt: skip
    changes = step(conn, long_wait, t + 5)
    assert len(changes) == 6  # every pending job of the capture; the running one not
    (alice,) = [c for c in changes if c.user == "alice"]
    assert alice.subject == "job 2908_[29-50]"
    assert alice.summary == "job 2908_[29-50] of alice pending in debug for 2.0 d (Resources)"
    assert store.find_alerts(conn, user="alice")[0]["rule"] == "waits"
    assert step(conn, longer, t + 5) == []


def cpu_sample(job_id, t, cpu):
    r = [None] * len(wire.SAMPLE_FIELDS)
    r[0], r[1] = job_id, t
    r[wire.SAMPLE_FIELDS.index("cpu_usage_seconds")] = cpu
    return r


def test_a_running_job_without_cpu_progress_alerts_as_stuck(conn):
    ing, now = Ingest("c"), time.time()
    for job_id, user in ((81, "alice"), (82, "bob")):
        job = {"job_id": job_id, "submit_time": now - 700, "start_time": now - 650, "user": user}
        write(conn, lambda c, job=job: ing.job_start(c, job, None, now - 650))
    # Job 81 sits at 12.5 CPU seconds for ten minutes; job 82 uses a core all along.
    rows = [cpu_sample(81, now - 600 + 10 * k, 12.5) for k in range(60)]
    rows += [cpu_sample(82, now - 600 + 10 * k, 10.0 * k) for k in range(60)]
    env = wire.Envelope(wire.SAMPLES, "node1", 1, 1, {"rows": rows})
    assert write(conn, lambda c: ing.apply_envelope(c, env)) == "stored"
    (rule,) = rules.parse_rules([{"name": "stuck", "kind": "job_stuck", "window": 600}])
    (change,) = step(conn, rule, now)
    assert (change.subject, change.user) == ("job 81", "alice")
    assert "used 0 s of CPU in 10.0 min: no progress" in change.summary
    (alert,) = store.find_alerts(conn, user="alice")
    assert alert["job_uid"] is not None
    assert store.find_alerts(conn, user="bob") == []


GPU = ROOT / "tests" / "fixtures" / "gpu" / "h200-580.159.04"
CGROUP = "4:memory:/slurm_node1/uid_2001/job_{job}/step_batch/task_0\n"


def gpu_records(tmp_path, job, util):
    """The captured nvidia-smi -q -x report, its process (pid 460) in JOB's cgroup."""
    (tmp_path / "proc" / "460").mkdir(parents=True, exist_ok=True)
    (tmp_path / "proc" / "460" / "cgroup").write_text(CGROUP.format(job=job))
    records = gpu.attach_jobs(
        gpu.parse_xml((GPU / "q-x.xml").read_text(), "q-x.xml"), str(tmp_path / "proc")
    )
    return [dict(r, util_gpu_percent=util) if r["record"] == "gpu" else r for r in records]


def test_a_job_whose_gpus_sit_idle_alerts_its_user(conn, tmp_path):
    ing, now = Ingest("c"), time.time()
    for job_id, user in ((91, "alice"), (92, "bob")):
        job = {"job_id": job_id, "submit_time": now - 700, "start_time": now - 650, "user": user}
        write(conn, lambda c, job=job: ing.job_start(c, job, None, now - 650))
    rows = [cpu_sample(j, now - 300 + 10 * k, 5.0 * k) for j in (91, 92) for k in range(30)]
    env = wire.Envelope(wire.SAMPLES, "gpu1", 1, 1, {"rows": rows})
    assert write(conn, lambda c: ing.apply_envelope(c, env)) == "stored"
    # Job 91's GPU idles in every reading; job 92's (the same capture, on gpu2) is busy.
    seq = 2
    for k in range(6):
        t = now - 300 + 50 * k
        for node, job, util in (("gpu1", 91, 0.0), ("gpu2", 92, 100.0)):
            records = gpu_records(tmp_path / f"{job}-{k}", job, util)
            payload = {"collector": "gpu", "t": t, "records": records}
            env = wire.Envelope(wire.READINGS, node, 1, seq, payload)
            assert write(conn, lambda c, env=env: ing.apply_envelope(c, env)) == "stored"
            seq += 1
    (rule,) = rules.parse_rules([{"name": "idle", "kind": "gpu_idle", "window": 600}])
    (change,) = step(conn, rule, now)
    assert (change.subject, change.user) == ("job 91", "alice")
    assert change.summary == "job 91: 1 GPU(s) idle in 100% or more of their readings (gpu1 GPU 0)"
    (strict,) = rules.parse_rules(
        [{"name": "idle2", "kind": "gpu_idle", "window": 600, "min_readings": 7}]
    )
    assert step(conn, strict, now) == []  # six readings are not enough for it


def test_a_node_local_filesystem_is_a_series_per_node(conn):
    # /tmp on n1 fills fast; /tmp on n2 is steady.  Merged, the two would blur into one series.
    now = time.time()
    for h in range(24):
        t = now - (23 - h) * 3600
        fast = [filesystem("/tmp", 50 * GiB + 20 * GiB * h, 600 * GiB)]
        steady = [filesystem("/tmp", 100 * GiB, 600 * GiB)]
        write(conn, lambda c, t=t, r=fast: store.store_reading(c, "n1", "disk", t, 0.1, r, 3000))
        write(conn, lambda c, t=t, r=steady: store.store_reading(c, "n2", "disk", t, 0.1, r, 3000))
    (rule,) = rules.parse_rules(
        [{"name": "tmp_full", "kind": "time_to_limit", "collector": "disk",
          "record": "filesystem", "key": "used_bytes", "limit_key": "size_bytes",
          "within": 86400, "window": 86400, "per_node": True}]
    )  # fmt: skip
    assert [(c.subject, c.state) for c in step(conn, rule, now)] == [("n1:/tmp", "firing")]


def test_a_start_up_ramp_that_levels_off_is_no_time_to_oom(conn):
    # Job 90 allocates 240 MiB of its 600 MiB at start and then holds it (grace's ordinary job
    # in the demo); job 91 ramps to 450 MiB and levels off.  Neither is heading for its limit.
    ing, now = Ingest("c"), time.time()
    for job_id in (90, 91):
        job = {"job_id": job_id, "submit_time": now - 120, "start_time": now - 100, "user": "grace"}
        write(conn, lambda c, job=job: ing.job_start(c, job, None, now - 100))
    rows = []
    for k in range(20):
        t = now - 40 + 2 * k
        rows.append(sample(90, t, min(240, 60 * (k + 1)) * MiB, 600 * MiB))
        rows.append(sample(91, t, min(450, 100 * (k + 1)) * MiB, 600 * MiB))
    env = wire.Envelope(wire.SAMPLES, "node1", 1, 1, {"rows": rows})
    assert write(conn, lambda c: ing.apply_envelope(c, env)) == "stored"
    (rule,) = rules.parse_rules([{"name": "oom_soon", "kind": "job_memory", "window": 60}])
    assert step(conn, rule, now) == []


def test_trend_rules_are_evaluated_once_a_minute_and_the_others_each_cycle():
    trend, silent, own = rules.parse_rules(
        [{"name": "t", "kind": "rate", "collector": "disk", "record": "filesystem",
          "key": "used_bytes", "value": 1},
         {"name": "s", "kind": "node_silent"},
         {"name": "o", "kind": "node_silent", "every": 30}]
    )  # fmt: skip
    assert (trend.every, silent.every, own.every) == (rules.TREND_EVERY, None, 30)
    with pytest.raises(ValueError, match="every must be between"):
        rules.parse_rules([{"name": "x", "kind": "node_silent", "every": 0}])


# -- zombie jobs, NFS storms, fair share ----------------------------------------------------------
def procs_sample(job_id, t, nprocs):
    r = [None] * len(wire.SAMPLE_FIELDS)
    r[0], r[1] = job_id, t
    r[wire.SAMPLE_FIELDS.index("nprocs")] = nprocs
    return r


def test_a_job_slurm_ended_whose_node_still_has_its_processes_alerts_as_a_zombie(conn):
    ing, now = Ingest("c"), time.time()
    for job_id, user in ((95, "alice"), (96, "bob"), (97, "carol")):
        job = {"job_id": job_id, "submit_time": now - 2000, "start_time": now - 1900, "user": user}
        write(conn, lambda c, job=job: ing.job_start(c, job, None, now - 1900))
    # Slurm ends all three 15 minutes ago; job 95's cgroup keeps 3 processes (a process in D
    # state), job 96's emptied right away, job 97 is still within its grace.
    for job_id, ended in ((95, now - 900), (96, now - 900), (97, now - 120)):
        write(conn, lambda c, j=job_id, e=ended: ing.job_end(c, {"job_id": j, "end_time": e}, 0, e))
    rows = [procs_sample(95, now - 1800 + 30 * k, 3) for k in range(60)]
    rows += [procs_sample(96, now - 1800 + 30 * k, 2 if k < 30 else 0) for k in range(60)]
    rows += [procs_sample(97, now - 1800 + 30 * k, 1) for k in range(60)]
    env = wire.Envelope(wire.SAMPLES, "node1", 1, 1, {"rows": rows})
    assert write(conn, lambda c: ing.apply_envelope(c, env)) == "stored"
    (rule,) = rules.parse_rules([{"name": "zombie", "kind": "job_zombie"}])
    assert rule.window == 300
    (change,) = step(conn, rule, now)
    assert (change.subject, change.user, change.state) == ("job 95", "alice", "firing")
    assert change.summary == (
        "job 95 ended 15.0 min ago but node1 still has 3 process(es) in its cgroup"
    )
    (alert,) = store.find_alerts(conn, user="alice")
    assert alert["job_uid"] is not None
    assert store.find_alerts(conn, user="bob") == [] == store.find_alerts(conn, user="carol")
    # The processes go: the node stops sampling the cgroup, and the alert resolves.
    later = now + 600
    assert [(c.subject, c.state) for c in step(conn, rule, later)] == [("job 95", "resolved")]


MOUNTSTATS = ("procfs", "prometheus_node_exporter", "proc_10_mountstats")


def read_more(text: str, seconds: int, ops: int, read: int) -> str:
    """A second capture made from a real one: each mount SECONDS older, OPS more READ
    operations and READ more bytes read (by applications and from the server)."""

    def age(m: re.Match) -> str:
        return f"{m[1]}{int(m[2]) + seconds}"

    def bytes_line(m: re.Match) -> str:
        v = m[2].split()
        v[0], v[4] = str(int(v[0]) + read), str(int(v[4]) + read)
        return m[1] + " ".join(v)

    def read_line(m: re.Match) -> str:
        v = [int(x) for x in m[2].split()]
        v[0], v[1] = v[0] + ops, v[1] + ops
        return m[1] + " ".join(map(str, v))

    text = re.sub(r"^(\s*age:\s+)(\d+)$", age, text, flags=re.M)
    text = re.sub(r"^(\s*bytes:\s+)(.*)$", bytes_line, text, flags=re.M)
    return re.sub(r"^(\s*READ: )(.*)$", read_line, text, flags=re.M)


def test_an_nfs_mount_hammered_above_its_rates_alerts_unless_the_node_is_drained(conn):
    path = shared(*MOUNTSTATS)
    now, first = time.time(), path.read_text()
    # node1's mounts read 3000 operations and 3000 MiB in ten minutes (5/s, 5 MiB/s); node2's
    # read 60 operations and 60 MiB (0.1/s, 0.1 MiB/s).
    for node, scale in (("node1", 50), ("node2", 1)):
        second = read_more(first, 600, 60 * scale, (60 * scale) << 20)
        for t, text in ((now - 700, first), (now - 100, second)):
            records = nfs.parse_mountstats(text, str(path))
            write(conn, lambda c, n=node, t=t, r=records: store.store_reading(
                c, n, "nfs", t, 0.1, r, 600))  # fmt: skip
    ops, size = rules.parse_rules(
        [{"name": "ops", "kind": "nfs_storm", "ops_per_second": 2},
         {"name": "bytes", "kind": "nfs_storm", "bytes_per_second": 4 * MiB}]
    )  # fmt: skip
    changes = step(conn, ops, now)
    assert [c.subject for c in changes] == ["node1:/mnt/nfs/test", "node1:/mnt/nfs/test-dupe"]
    assert changes[0].summary == ("node1:/mnt/nfs/test: NFS storm: 5 operations/s (threshold 2)")
    (dupe,) = [c for c in step(conn, size, now) if c.subject == "node1:/mnt/nfs/test"]
    assert dupe.summary == "node1:/mnt/nfs/test: NFS storm: 5.0 MiB/s (threshold 4.0 MiB/s)"
    # Slurm drains node1: its alerts resolve.
    records = scontrol.node_records((SLURM / "scontrol-show-node-o.txt").read_text())
    drained = [dict(r, state="IDLE+DRAIN") if r["node"] == "node1" else r for r in records]
    write(conn, lambda c: store.store_reading(c, "head", "node_state", now, 0.1, drained, 600))
    assert {(c.subject, c.state) for c in step(conn, ops, now + 1)} == {
        ("node1:/mnt/nfs/test", "resolved"),
        ("node1:/mnt/nfs/test-dupe", "resolved"),
    }


def test_an_nfs_storm_rule_without_a_rate_is_refused():
    with pytest.raises(ValueError, match="give ops_per_second or bytes_per_second") as exc:
        rules.parse_rules([{"name": "x", "kind": "nfs_storm"}])
    assert "\n" not in str(exc.value)


def test_an_account_short_of_its_fair_share_with_jobs_pending_alerts(conn):
    sshare_records = sshare.records((SLURM / "sshare-a-l-P.txt").read_text())
    queue = squeue.records((SLURM / "squeue-nomade.txt").read_text())
    now = time.time()
    write(conn, lambda c: store.store_reading(c, "head", "fairshare", now - 60, 0.1,
                                              sshare_records, 600))  # fmt: skip
    write(conn, lambda c: store.store_reading(c, "head", "queue", now - 30, 0.1, queue, 600))
    (rule,) = rules.parse_rules([{"name": "share", "kind": "fairshare_imbalance"}])
    # The capture: every user's factor is 0; root and research have jobs pending, physics none.
    changes = step(conn, rule, now)
    assert [(c.subject, c.state) for c in changes] == [
        ("account research", "firing"),
        ("account root", "firing"),
    ]
    assert changes[0].summary == (
        "account research has 1 job(s) pending with a fair-share factor of 0 (threshold 0.1)"
    )
    # research's usage decays: one of its users is back at 0.5, so the account is not starved.
    recovered = [
        dict(r, fairshare=0.5) if (r["account"], r["user"]) == ("research", "carol") else r
        for r in sshare_records
    ]
    write(conn, lambda c: store.store_reading(c, "head", "fairshare", now, 0.1, recovered, 600))
    assert [(c.subject, c.state) for c in step(conn, rule, now + 1)] == [
        ("account research", "resolved")
    ]


# -- what a hostile node sends ------------------------------------------------------------------
def test_a_memory_limit_of_zero_from_a_node_does_not_stop_the_rule_for_other_jobs(conn):
    ing, now = Ingest("c"), time.time()
    for job_id in (77, 78):
        job = {"job_id": job_id, "submit_time": now - 120, "start_time": now - 100, "user": "alice"}
        write(conn, lambda c, job=job: ing.job_start(c, job, None, now - 100))
    rows = [sample(77, now - 20 + 2 * k, 1000 * MiB, GiB) for k in range(5)]  # 98% of 1 GiB
    rows += [sample(78, now - 20 + 2 * k, 10 * MiB, 0) for k in range(5)]  # a "limit" of 0
    env = wire.Envelope(wire.SAMPLES, "node9", 1, 1, {"rows": rows})
    assert write(conn, lambda c: ing.apply_envelope(c, env)) == "stored"
    (rule,) = rules.parse_rules([{"name": "oom_soon", "kind": "job_memory", "window": 60}])
    assert [c.subject for c in step(conn, rule, now)] == ["job 77"]


def fs_rule(**kw):
    return rules.parse_rules(
        [{"name": "fs_full", "kind": "time_to_limit", "collector": "disk", "record": "filesystem",
          "key": "used_bytes", "limit_key": "size_bytes", "within": 3 * 86400, "window": 86400,
          **kw}]
    )[0]  # fmt: skip


def test_a_flood_of_records_keeps_open_alerts_instead_of_a_false_all_clear(conn, monkeypatch):
    now = time.time()
    for h in range(12):
        t = now - (11 - h) * 3600
        r = [filesystem("/scratch", 500 * GiB + 0.5 * GiB * h**2)]
        write(conn, lambda c, t=t, r=r: store.store_reading(c, "n1", "disk", t, 0.1, r, 3000))
    rule = fs_rule()
    assert [c.state for c in step(conn, rule, now)] == ["firing"]
    monkeypatch.setattr(rules, "MAX_RECORDS", 20)  # a node's 110,000 junk records, in small
    junk = [filesystem(f"/junk{i}", 1) for i in range(30)]
    write(conn, lambda c: store.store_reading(c, "n9", "disk", now + 1, 0.1, junk, 3000))
    with pytest.raises(rules.RuleError, match="not evaluated, its open alerts kept"):
        rules.evaluate(conn, rule, now + 2)
    (alert,) = store.find_alerts(conn, unresolved=True)
    assert alert["subject"] == "/scratch"


def test_one_rule_raises_a_bounded_number_of_alerts_with_clean_text(conn, monkeypatch):
    monkeypatch.setattr(rules, "MAX_FINDINGS", 5)
    rule = fs_rule()
    findings = [rules.Finding(f"/p{i}\nforged", f"/p{i}\n9 resolved forged row") for i in range(9)]
    changes = write(conn, lambda c: rules.apply(c, rule, findings, time.time()))
    subjects = [c.subject for c in changes]
    assert len(changes) == 5 and subjects[-1] == "(more)"
    assert "5 more subjects not shown" in changes[-1].summary
    assert all("\n" not in c.subject and "\n" not in c.summary for c in changes)


def test_a_jobs_resolve_goes_to_its_user_too(conn):
    rule = rules.parse_rules([{"name": "oom_soon", "kind": "job_memory"}])[0]
    now = time.time()
    found = [rules.Finding("job 5", "job 5 nears its limit", job_uid=1, user="alice")]
    write(conn, lambda c: rules.apply(c, rule, found, now))
    (resolved,) = write(conn, lambda c: rules.apply(c, rule, [], now + 1))
    assert (resolved.state, resolved.user) == ("resolved", "alice")
