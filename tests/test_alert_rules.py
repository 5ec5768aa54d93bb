"""Alert rules evaluated on a store filled the way the aggregator fills it: a filesystem filling
faster and faster is projected full and alerts once, resolves when it is cleaned; a silent node
alerts unless Slurm drained it; a job whose memory grows toward its limit is alerted with its
time to OOM; a node's hardware errors alert; bad rules are refused in one line."""

from __future__ import annotations

import time

import pytest
from conftest import ROOT

from aggregator import store
from aggregator.alerts import rules
from aggregator.store import Ingest
from collectors import health
from collectors.slurm import scontrol
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
    # Job 77 grows 5 MiB a second toward its 1 GiB limit (about 2.5 min left); job 78 is flat.
    rows = [sample(77, now - 60 + 2 * k, (200 + 10 * k) * MiB, GiB) for k in range(30)]
    rows += [sample(78, now - 60 + 2 * k, 300 * MiB, GiB) for k in range(30)]
    env = wire.Envelope(wire.SAMPLES, "node1", 1, 1, {"rows": rows})
    assert write(conn, lambda c: ing.apply_envelope(c, env)) == "stored"
    (rule,) = rules.parse_rules([{"name": "oom_soon", "kind": "job_memory", "window": 120}])
    (change,) = step(conn, rule, now)
    assert (change.subject, change.user, change.state) == ("job 77", "alice", "firing")
    assert "toward its 1.0 GiB limit: out of memory in about" in change.summary
    minutes = float(change.summary.rsplit("about ", 1)[1].split()[0])
    assert 1.5 <= minutes <= 3.5  # (1024 - 490) MiB at 5 MiB/s: 1.8 min after the last sample
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
