"""How soon an alert reaches a site's receiver after the sample that raises it reaches the
aggregator, and what evaluating many rules costs.

Latency: a real nomade-aggregator (a process on a temporary database and free loopback ports,
CurveZMQ off, the head collectors off) with one `job_memory` rule and the generic webhook
channel pointed at an HTTP server on 127.0.0.1:0, at the default evaluation interval
(`[alerts] evaluate_seconds`, 1 s).  Each trial's job is started the way PrologSlurmctld starts
it on a head node (a report file in the reports directory, which the aggregator polls) and
sampled well below its memory limit over ZeroMQ, as a node agent does.  Then, after a random
pause (the trials fall anywhere in the evaluation cycle), one SAMPLES envelope whose newest
sample holds 99% of the job's limit is sent.  A trial's latency is the time from that send
(arrival, on loopback) until the receiver's handler has the alert's POST.

    value     median latency over the trials (5 with --quick, 20 without)
    baseline  median time from the same send until its ACK (the aggregator acknowledges after
              the COMMIT): what storing the sample alone takes, so the ratio is what alerting
              adds to it
    ratio     value / baseline

`from_received` is the same latency measured from the time the aggregator stamped on the
envelope in the store's `received` table.

Evaluation cost: a store (store.open_store) with 10,000 filesystem series (1,000 nodes x 10
volumes, 4 disk readings each over the last hour) and 1,000 `time_to_limit` rules, each
watching its own 10 volumes (volume group G is reported as record `volume-G`), so the rules
together cover every series once.  One cycle is every rule evaluated (rules.evaluate):
`evaluation_seconds_per_cycle` is the median of 3 cycles.  The aggregator evaluates each rule
at its own schedule (a trend rule once a minute, `rules.TREND_EVERY`; the others each
`evaluate_seconds`): `core_share` is a cycle's cost over that interval, and
`core_share_if_every_cycle` over `evaluate_seconds`; `goal_met` says whether the latency goal
is met and the evaluation fits in one core.
Where it does not, `profile_top` names where the time goes (cProfile of 100 of the rules).
--quick uses 100 rules over 1,000 series and one cycle.

    python bench/alert_latency.py [--quick]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aggregator import store  # noqa: E402
from aggregator.alerts import rules  # noqa: E402
from aggregator.daemon.headcollect import HEAD_COLLECTORS  # noqa: E402
from nomade_common import wire  # noqa: E402

BIN = Path(sys.executable).parent
EVALUATE_SECONDS = 1.0  # [alerts] evaluate_seconds by default
LIMIT = 4 << 30  # each job's memory limit
NODE = "simnode"
GiB = 1 << 30


# -- the receiver -----------------------------------------------------------------------------
class Receiver:
    """A site's webhook: an HTTP server on loopback recording when each alert's POST arrived."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}  # subject -> time.time() of its first firing POST
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                now = time.time()
                if body.get("state") == "firing":
                    with outer.lock:
                        outer.arrived.setdefault(body.get("subject"), now)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/nomade"

    def got(self, subject: str) -> float | None:
        with self.lock:
            return self.arrived.get(subject)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the aggregator ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp: Path, hook_url: str) -> tuple[Path, str, str]:
    """nomade.toml for the aggregator under test: (its path, ZeroMQ endpoint, HTTP URL)."""
    secrets = tmp / "alerts-secrets.toml"
    secrets.write_text(f"webhook_url = {json.dumps(hook_url)}\n")
    secrets.chmod(0o600)
    (tmp / "state" / "reports").mkdir(parents=True, mode=0o700)
    endpoint, http = f"tcp://127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    off = "".join(f"[collectors.{c.name}]\nenabled = false\n" for c in HEAD_COLLECTORS)
    config = tmp / "nomade.toml"
    config.write_text(f"""
[general]
cluster_name = "bench"
data_dir = "{tmp}/data"
[aggregator]
listen = "{endpoint}"
http_listen = "{http}"
sacct = "{tmp}/no-sacct"
squeue = "{tmp}/no-squeue"
scontrol = "{tmp}/no-scontrol"
[hooks]
aggregator_url = "http://{http}"
state_dir = "{tmp}/state"
controller_transport = "spool"
[security]
curve = "off"
keys_dir = "{tmp}/keys"
[alerts]
webhook = true
secrets_file = "{secrets}"
[[alerts.rules]]
name = "job_memory"
kind = "job_memory"
severity = "critical"
window = 300
fraction = 0.95
{off}""")
    return config, endpoint, f"http://{http}"


def answering(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/api/v1/health", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def wait(what: str, ready, seconds: float = 60.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = ready()
        if got:
            return got
        time.sleep(0.005)
    raise SystemExit(f"alert_latency: gave up waiting for {what}")


# -- the node -----------------------------------------------------------------------------------
def sample(job_id: int, t: float, mem: int) -> list:
    row = dict.fromkeys(wire.SAMPLE_FIELDS)
    row.update(
        job_id=job_id,
        t=t,
        cpu_usage_seconds=10.0,
        mem_current_bytes=mem,
        mem_peak_bytes=mem,
        mem_rss_bytes=mem,
        mem_limit_bytes=LIMIT,
    )
    return [row[f] for f in wire.SAMPLE_FIELDS]


class Node:
    """A node agent as the aggregator sees it: a DEALER sending SAMPLES envelopes."""

    def __init__(self, endpoint: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.epoch, self.seq = time.time_ns() // 1000, 0

    def send(self, rows: list[list]) -> tuple[int, float]:
        """Send ROWS as one envelope: (its seq, time.time() when sent)."""
        self.seq += 1
        data = wire.Envelope(wire.SAMPLES, NODE, self.epoch, self.seq, {"rows": rows}).pack()
        sent = time.time()
        self.sock.send(data)
        return self.seq, sent

    def answer(self, seq: int, timeout: float = 30.0) -> float:
        """time.time() when SEQ's ACK arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.sock.poll(100, zmq.POLLIN):
                continue
            env = wire.unpack(self.sock.recv())
            if env.epoch == self.epoch and env.seq == seq:
                if env.type != wire.ACK:
                    raise SystemExit(f"alert_latency: envelope {seq} refused: {env.payload}")
                return time.time()
        raise SystemExit(f"alert_latency: no answer to envelope {seq}")

    def close(self) -> None:
        self.sock.close(0)


def start_job(reports: Path, job_id: int) -> None:
    """PrologSlurmctld's report, left in the reports directory as the hook leaves it."""
    env = {
        "SLURM_JOB_ID": str(job_id),
        "SLURM_JOB_USER": "bench",
        "SLURM_JOB_UID": "4242",
        "SLURM_JOB_PARTITION": "debug",
        "SLURM_JOB_NODELIST": NODE,
    }
    body = {"env": env, "kind": "prologslurmctld", "t": time.time()}
    path = reports / f"{time.time_ns() // 1000}-{job_id}-prologslurmctld.json"
    path.write_text(json.dumps(body) + "\n")


def latency(trials: int) -> dict:
    """Run the aggregator and TRIALS trials: the latencies and ACK times, in seconds."""
    hook = Receiver()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        config, endpoint, url = write_config(tmp, hook.url())
        err = open(tmp / "aggregator.err", "wb")  # noqa: SIM115 (closed below)
        proc = subprocess.Popen(
            [str(BIN / "nomade-aggregator"), "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
        node = None
        try:
            wait("the aggregator to answer", lambda: answering(url) or proc.poll() is not None)
            if proc.poll() is not None:
                raise SystemExit("alert_latency: the aggregator exited:\n" + _tail(tmp))
            db = tmp / "data" / "nomade.db"
            jobs = [7_000_000 + k for k in range(trials)]
            for job_id in jobs:
                start_job(tmp / "state" / "reports", job_id)
            wait("the jobs' start reports to be stored", lambda: _started(db) >= trials)
            node = Node(endpoint)
            now = time.time()
            flat = [sample(j, now - 30 + 10 * i, LIMIT * 2 // 5) for j in jobs for i in range(3)]
            node.answer(node.send(flat)[0])
            rng = random.Random(17)
            time.sleep(2 * EVALUATE_SECONDS)  # an evaluation has seen the flat samples
            if hook.arrived:
                raise SystemExit(f"alert_latency: alerts before any trial: {hook.arrived}")
            out: dict[str, list[float]] = {"latency": [], "ack": [], "from_received": []}
            for job_id in jobs:
                time.sleep(rng.uniform(0, EVALUATE_SECONDS))
                t = time.time()
                rows = [sample(job_id, t - 1, LIMIT // 2), sample(job_id, t, LIMIT * 99 // 100)]
                seq, sent = node.send(rows)
                acked = node.answer(seq)
                arrived = wait(f"job {job_id}'s alert", lambda j=job_id: hook.got(f"job {j}"), 30)
                (received,) = _query(
                    db, "SELECT t FROM received WHERE node = ? AND epoch = ? AND seq = ?",
                    NODE, node.epoch, seq,
                )  # fmt: skip
                out["latency"].append(arrived - sent)
                out["ack"].append(acked - sent)
                out["from_received"].append(arrived - received[0])
            return out
        finally:
            if node is not None:
                node.close()
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            err.close()
            hook.close()


def _query(db: Path, sql: str, *args) -> list:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def _started(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        return _query(db, "SELECT count(*) FROM jobs WHERE start_time IS NOT NULL")[0][0]
    except sqlite3.OperationalError:
        return 0  # the schema is still being made


def _tail(tmp: Path) -> str:
    return (tmp / "aggregator.err").read_text(errors="replace")[-2000:]


# -- evaluation cost ----------------------------------------------------------------------------
def build(conn, nodes: int, volumes: int, now: float) -> None:
    """NODES nodes, each reporting VOLUMES volumes of its own; node N's volume V is in group
    (N * VOLUMES + V) % NODES (record `volume-G`), so each group holds VOLUMES series."""
    conn.execute("BEGIN")
    for n in range(nodes):
        node = f"n{n:05d}"
        for k in range(4):
            records = [
                {
                    "record": f"volume-{(n * volumes + v) % nodes:04d}",
                    "path": f"/{node}/vol{v}",
                    "size_bytes": 1000 * GiB,
                    "used_bytes": (100 + 50 * v + k * (v + 1) * (n % 3)) * GiB,
                }
                for v in range(volumes)
            ]
            store.store_reading(conn, node, "disk", now - 3600 + 900 * k, 0.1, records, 600)
    conn.execute("COMMIT")


def rule_set(count: int) -> list[rules.Rule]:
    return rules.parse_rules(
        [
            {
                "name": f"volume_full_{g:04d}",
                "kind": "time_to_limit",
                "collector": "disk",
                "record": f"volume-{g:04d}",
                "key": "used_bytes",
                "limit_key": "size_bytes",
                "within": 86400 * (1 + g % 7),
                "window": 7200,
            }
            for g in range(count)
        ]
    )


def cycle(conn, rule_list: list[rules.Rule], now: float) -> float:
    start = time.perf_counter()
    for rule in rule_list:
        rules.evaluate(conn, rule, now)
    return time.perf_counter() - start


def evaluation(count: int, runs: int) -> dict:
    """COUNT rules over COUNT * 10 series: seconds a cycle, and the profile's top entries
    (ncalls tottime percall cumtime percall where)."""
    now = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        conn = store.open_store(f"{tmp}/e.db")
        build(conn, count, 10, now)
        rule_list = rule_set(count)
        found = sum(len(rules.evaluate(conn, r, now)) for r in rule_list[:5])
        assert found, "the constructed series should raise findings"
        seconds = statistics.median(cycle(conn, rule_list, now) for _ in range(runs))
        profile = cProfile.Profile()
        profile.runcall(cycle, conn, rule_list[:100], now)
        conn.close()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(6)
    top = [
        " ".join(line.replace(f"{ROOT}/", "").split())
        for line in text.getvalue().splitlines()
        if line.strip() and line.strip()[0].isdigit() and "(" in line
    ]
    # Each rule is evaluated at its own schedule (`every`: trend rules once a minute): the
    # share of a core is what each rule costs over its interval, summed.
    every = min(r.every or EVALUATE_SECONDS for r in rule_list)
    return {
        "seconds": seconds,
        "every": max(every, EVALUATE_SECONDS),
        "rules": count,
        "series": count * 10,
        "profile_top": top[:6],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 trials, 100 rules: under 30 s")
    quick = ap.parse_args().quick
    measured = latency(5 if quick else 20)
    value = statistics.median(measured["latency"])
    baseline = statistics.median(measured["ack"])
    cost = evaluation(100 if quick else 1000, 1 if quick else 3)
    share = cost["seconds"] / cost["every"]  # at the rules' schedule
    every_cycle = cost["seconds"] / EVALUATE_SECONDS  # were each evaluated every cycle
    print(
        json.dumps(
            {
                "bench": "alert_latency",
                "value": round(value, 4),
                "unit": "seconds from a sample's arrival to the alert at a loopback webhook",
                "baseline": round(baseline, 4),
                "baseline_is": "seconds from the same send to its ACK (stored and committed)",
                "ratio": round(value / baseline, 2),
                "goal": "under 2 s at the default evaluation interval",
                "goal_met": value < 2.0 and share <= 1.0,
                "latency_goal_met": value < 2.0,
                "trials": len(measured["latency"]),
                "latency_max": round(max(measured["latency"]), 4),
                "from_received": round(statistics.median(measured["from_received"]), 4),
                "evaluate_seconds": EVALUATE_SECONDS,
                "rules": cost["rules"],
                "series": cost["series"],
                "evaluation_seconds_per_cycle": round(cost["seconds"], 4),
                "rules_every_seconds": cost["every"],
                "core_share": round(share, 3),
                "core_share_if_every_cycle": round(every_cycle, 3),
                "evaluation_fits_one_core": share <= 1.0,
                "profile_top": cost["profile_top"],
            }
        )
    )


if __name__ == "__main__":
    main()
