"""Samples per second that the real aggregator stores from several simulated node agents.

The aggregator under test is `aggregator.daemon.Aggregator`, started in this process on a
temporary database and free loopback ports.  Each simulated agent is its own process (spawned)
and plays node "simnode-K" running --jobs jobs: before timing starts it packs one SAMPLES
envelope per cycle (one row per job, realistic values in every SAMPLE_FIELDS column, some None,
t advancing by 10 s per cycle) and announces its jobs with one acknowledged JOB_EVENT each, which
also proves its connection.  Then it streams its envelopes over a ZeroMQ DEALER, keeping
--window unacknowledged envelopes in flight (default: nodeagent.agent.WINDOW, what a real agent
keeps), and counts a sample only when the ACK of its envelope (sent by the aggregator after the
COMMIT) arrives.

    rate = acknowledged samples / (last ACK received - first envelope sent), over all agents

`value` is that rate with CurveZMQ on (security.curve = "on", every simulated node enrolled with
a key of its own, as the agents run by default) and the default durability
(aggregator.store_synchronous = "full": the WAL synced at every COMMIT, so that nothing
acknowledged is lost at a power loss); `plain_value` the same run again without CURVE
(security.curve = "off"), and `normal_value` again with CURVE and store_synchronous = "normal"
(synced at checkpoints only), each on a fresh database, in the same process.

The aggregator's compactor runs as configured by default (landed envelopes compacted after 60 s,
or sooner past 2,000 waiting): `compacted_during_run` is what it moved into chunks while the
agents sent, and the backlog (samples waiting for it, read twice a second) is printed for the
run's second half and its end: flat when compaction keeps up with ingest.

Baseline, in the same run: the naive way to store the same rows, one INSERT and one COMMIT per
sample, one row per sample with a unique index (the layout of schema versions 1 to 8), WAL
synced at every COMMIT.  At the end the aggregator's database must hold exactly the
acknowledged samples, landed or in chunks.  The last line of stdout is one JSON object.

    python bench/ingest.py [--quick] [--agents 4] [--jobs 64] [--cycles N] [--window 256]
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import queue
import resource
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aggregator.daemon import Aggregator  # noqa: E402
from aggregator.store import connect, open_store, sample_backlog, sample_sizes  # noqa: E402
from nodeagent.agent import WINDOW  # noqa: E402
from nomade_common import wire  # noqa: E402
from nomade_common.config import Aggregator as AggregatorSettings  # noqa: E402
from nomade_common.config import Config, General, Security  # noqa: E402

INTERVAL = 10.0  # seconds between an agent's sampling cycles (the agent's default)
# Two days ago: a full run's 10,000 cycles of 10 s (28 hours) stay within the aggregator's
# sample-time window (sample_max_age_days behind, sample_future_seconds ahead of its clock).
T0 = float(int(time.time()) - 2 * 86400)
GiB = 1 << 30


# -- the simulated node ------------------------------------------------------------------------
def sample_row(job_id: int, j: int, cycle: int) -> list[Any]:
    """One sample of job J (index on its node) at CYCLE, in SAMPLE_FIELDS order."""
    elapsed = (cycle + 1) * INTERVAL
    cpus = 1 + j % 8
    cpu = elapsed * cpus * (0.35 + (j % 7) * 0.09)
    mem = (1 + j % 5) * GiB + (cycle * 4096 * (j + 1)) % (256 << 20)
    rss = mem * 7 // 10
    proc_read = 4096 * (cycle + 1) * (j + 3)
    proc_write = 8192 * (cycle + 1) * (j % 11 + 1)
    v2 = j % 4 != 0  # some jobs on a controller set without io accounting
    return [
        job_id,
        T0 + cycle * INTERVAL + j * 0.0013,
        cpu,
        cpu * 0.92,
        cpu * 0.08,
        mem,
        mem + (64 << 20),
        rss,
        mem - rss,
        0 if v2 else None,  # swap accounting off: None, never 0
        None if j % 6 == 0 else (2 + j % 5) * GiB,  # unlimited: None
        proc_read + 512 * cycle if v2 else None,
        proc_write + 1024 * cycle if v2 else None,
        proc_read,
        proc_write,
        proc_read * 3 + 117 * cycle,
        proc_write * 2 + 63 * cycle,
        40 * (cycle + 1) * (j % 13 + 1),
        25 * (cycle + 1) * (j % 9 + 1),
        1 + j % 4,
    ]


def job_ids(k: int, jobs: int) -> list[int]:
    return [1_000_000 + k * 10_000 + j for j in range(jobs)]


def pack_envelopes(node: str, epoch: int, ids: list[int], cycles: int) -> list[bytes]:
    """SAMPLES envelopes with seq 1..CYCLES (seqs after the JOB_EVENTs' are cycles + ...)."""
    first = len(ids) + 1
    return [
        wire.Envelope(
            wire.SAMPLES,
            node,
            epoch,
            first + c,
            {"rows": [sample_row(job_id, j, c) for j, job_id in enumerate(ids)]},
        ).pack()
        for c in range(cycles)
    ]


def stream(
    sock: Any, envelopes: list[bytes], first_seq: int, window: int, epoch: int, deadline: float
) -> tuple[set[int], int]:
    """Send ENVELOPES (seqs FIRST_SEQ...) keeping WINDOW in flight; return (acked seqs, nacks)."""
    import zmq

    acked: set[int] = set()
    nacks, sent, n = 0, 0, len(envelopes)
    while len(acked) + nacks < n:
        while sent < n and sent - len(acked) - nacks < window:
            sock.send(envelopes[sent])
            sent += 1
        if time.monotonic() > deadline:
            break
        if not sock.poll(100, zmq.POLLIN):
            continue
        while True:
            try:
                env = wire.unpack(sock.recv(zmq.NOBLOCK))
            except zmq.Again:
                break
            if env.epoch != epoch or not first_seq <= env.seq < first_seq + n:
                continue
            if env.type == wire.ACK:
                acked.add(env.seq)
            elif env.type == wire.NACK:
                nacks += 1
    return acked, nacks


def agent_main(
    k: int,
    endpoint: str,
    jobs: int,
    cycles: int,
    window: int,
    timeout: float,
    ready: Any,
    go: Any,
    results: Any,
    curve: tuple[bytes, bytes, bytes] | None,
) -> None:
    import zmq

    node, epoch = f"simnode-{k}", time.time_ns() // 1_000_000 + k
    ids = job_ids(k, jobs)
    envelopes = pack_envelopes(node, epoch, ids, cycles)
    starts = [
        wire.Envelope(
            wire.JOB_EVENT, node, epoch, i + 1, {"event": "start", "job_id": job_id, "t": T0 - 60.0}
        ).pack()
        for i, job_id in enumerate(ids)
    ]
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if curve is not None:  # (server public, own public, own secret), as nomade-agent has them
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = curve
    sock.connect(endpoint)
    hello = {"host": node, "agent_version": "bench", "interval_seconds": INTERVAL, "started": T0}
    sock.send(wire.Envelope(wire.HELLO, node, epoch, 0, hello).pack())
    acked, nacks = stream(sock, starts, 1, window, epoch, time.monotonic() + timeout)
    ready.put((k, len(acked), nacks, sum(map(len, envelopes))))
    go.wait()
    t_first = time.monotonic()
    acked, nacks = stream(sock, envelopes, jobs + 1, window, epoch, t_first + timeout)
    t_last = time.monotonic()
    sock.close(0)
    results.put(
        {
            "agent": k,
            "acked": len(acked),
            "samples": len(acked) * jobs,
            "nacks": nacks,
            "first_send": t_first,
            "last_ack": t_last,
        }
    )


# -- the aggregator and the baseline -------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def naive_baseline(path: str, n: int, jobs: int) -> float:
    """Samples/s when every sample is its own INSERT and COMMIT, one row per sample (the
    layout of the store's schema versions 1 to 8, with its unique index)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    columns = ", ".join(
        f"{f} {'REAL' if f.endswith('_seconds') else 'INTEGER'}" for f in wire.SAMPLE_FIELDS[2:]
    )
    conn.execute(
        f"CREATE TABLE samples (job_uid INTEGER NOT NULL, node TEXT NOT NULL, t REAL NOT NULL,"
        f" {columns})"
    )
    conn.execute("CREATE UNIQUE INDEX samples_key ON samples (job_uid, node, t)")
    ids = job_ids(0, jobs)
    uids = list(range(1, jobs + 1))
    cycles = -(-n // jobs)
    rows = [
        (uids[j], "simnode-0", *sample_row(ids[j], j, c)[1:])
        for c in range(cycles)
        for j in range(jobs)
    ][:n]
    sql = (
        f"INSERT INTO samples (job_uid, node, {', '.join(wire.SAMPLE_FIELDS[1:])})"
        f" VALUES ({', '.join('?' * (len(wire.SAMPLE_FIELDS) + 1))})"
    )
    start = time.perf_counter()
    for row in rows:
        conn.execute("BEGIN")
        conn.execute(sql, row)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    stored = conn.execute("SELECT count(*) FROM samples").fetchone()[0]
    conn.close()
    if stored != n:
        raise SystemExit(f"error: the naive baseline stored {stored} samples, expected {n}")
    return n / elapsed


def make_config(tmp: str, curve: str, synchronous: str = "full") -> Config:
    cfg = Config(
        general=General(cluster_name="bench", data_dir=tmp, log_level="WARNING"),
        aggregator=AggregatorSettings(
            listen=f"tcp://127.0.0.1:{free_port()}",
            http_listen=f"127.0.0.1:{free_port()}",
            database=str(Path(tmp) / f"nomade-{curve}-{synchronous}.db"),
            store_synchronous=synchronous,
        ),
        security=Security(curve=curve, keys_dir=str(Path(tmp) / "keys")),
        path="<bench>",
    )
    # Sample ingest only: the head-node collectors (squeue ... sacct) all run once when the
    # aggregator starts, then once a minute or less; in a run this short their start-up burst
    # would be measured as ingest (bench/agent_overhead.py measures collectors).
    for name in (
        "queue",
        "partitions",
        "node_state",
        "fairshare",
        "scheduler",
        "licenses",
        "job_history",
    ):
        getattr(cfg.collectors, name).enabled = False
    return cfg


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def wait_for(q: Any, timeout: float, what: str) -> Any:
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        raise SystemExit(f"error: a simulated agent has not {what} after {timeout:.0f} s") from None


def enrol(cfg: Config, agents: int) -> list[tuple[bytes, bytes, bytes] | None]:
    """With CURVE: the server pair and one enrolled pair per simulated node (as `nomadectl init`,
    `nomade-agent --make-key` and `nomadectl keys add` make them); their keys to connect with."""
    if cfg.security.curve == "off":
        return [None] * agents
    from aggregator.admin import keyscmd
    from nomade_common import keys

    keyscmd.ensure_server_pair(cfg.security)
    server = keys.load(cfg.security.server_public(), secret=False)[0].encode()
    pairs = [zmq_pair() for _ in range(agents)]
    conn = open_store(cfg.database)
    lines = [(k, f"simnode-{k}", pub.decode()) for k, (pub, _) in enumerate(pairs)]
    keyscmd.add(conn, lines, "bench")
    conn.close()
    return [(server, pub, sec) for pub, sec in pairs]


def zmq_pair() -> tuple[bytes, bytes]:
    import zmq

    return zmq.curve_keypair()


def run_agents(cfg: Config, args: argparse.Namespace, timeout: float) -> dict[str, Any]:
    """Start the aggregator and the agents; return what was measured."""
    curve = enrol(cfg, args.agents)
    agg = Aggregator(cfg)
    agg.start()
    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(
            target=agent_main,
            args=(
                k,
                cfg.aggregator.listen,
                args.jobs,
                args.cycles,
                args.window,
                timeout,
                ready,
                go,
                results,
                curve[k],
            ),
            daemon=True,
        )
        for k in range(args.agents)
    ]
    try:
        for p in procs:
            p.start()
        size = 0
        for _ in procs:
            k, acked, nacks, nbytes = wait_for(ready, timeout, "got ready")
            if acked != args.jobs or nacks:
                raise SystemExit(f"error: simnode-{k}: {acked} of {args.jobs} job starts acked")
            size += nbytes
        commits, cpu = agg.writer.commits, cpu_seconds()
        compacted = agg.compactor.compacted
        watching = threading.Event()
        backlog: list[tuple[float, int]] = []  # (time, samples waiting for compaction)
        watcher = threading.Thread(target=watch, args=(cfg.database, backlog, watching))
        watcher.start()
        go.set()
        try:
            done = [wait_for(results, timeout + 30, "finished") for _ in procs]
        finally:
            watching.set()
            watcher.join()
        cpu, commits = cpu_seconds() - cpu, agg.writer.commits - commits
        compacted = agg.compactor.compacted - compacted
        for p in procs:
            p.join(10)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        agg.stop()
    wall = max(r["last_ack"] for r in done) - min(r["first_send"] for r in done)
    samples = sum(r["samples"] for r in done)
    half = [b for t, b in backlog if t >= backlog[0][0] + (backlog[-1][0] - backlog[0][0]) / 2]
    return {
        "wall": wall,
        "samples": samples,
        "compacted": compacted,
        "backlog_end": backlog[-1][1] if backlog else 0,
        "backlog_max": max((b for _, b in backlog), default=0),
        "backlog_second_half": (min(half), max(half)) if half else (0, 0),
        "acked": sum(r["acked"] for r in done),
        "nacks": sum(r["nacks"] for r in done),
        "commits": commits,
        "cpu": cpu,
        "bytes": size,
    }


def watch(database: str, out: list[tuple[float, int]], stop: threading.Event) -> None:
    """The samples waiting for compaction, twice a second until STOP."""
    conn = connect(database, readonly=True)
    try:
        while not stop.wait(0.5):
            out.append((time.monotonic(), sample_backlog(conn)["samples"]))
    finally:
        conn.close()


def stored_counts(path: str) -> tuple[int, int]:
    """(samples stored, landed or in chunks; SAMPLES envelopes received)."""
    conn = connect(path, readonly=True)
    try:
        samples = sample_sizes(conn)["raw_samples"] + sample_backlog(conn)["samples"]
        received = conn.execute(
            "SELECT count(*) FROM received WHERE type = ?", (wire.SAMPLES,)
        ).fetchone()[0]
    finally:
        conn.close()
    return samples, received


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="finish in well under 30 s")
    parser.add_argument("--agents", type=int, default=4, help="simulated agent processes")
    parser.add_argument("--jobs", type=int, default=64, help="running jobs per simulated node")
    parser.add_argument("--cycles", type=int, help="envelopes per agent (default: by --quick)")
    parser.add_argument(
        "--window",
        type=int,
        default=WINDOW,
        help="envelopes in flight per agent (default: the agent's own window)",
    )
    parser.add_argument("--baseline-samples", type=int, help="samples for the naive baseline")
    args = parser.parse_args()
    if args.cycles is None:
        args.cycles = 2000 if args.quick else 10_000
    if args.baseline_samples is None:
        args.baseline_samples = 20_000 if args.quick else 50_000
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    timeout = 60.0 if args.quick else 300.0

    with tempfile.TemporaryDirectory(prefix="nomade-bench-ingest-") as tmp:
        baseline = naive_baseline(str(Path(tmp) / "naive.db"), args.baseline_samples, args.jobs)
        cfg = make_config(tmp, "on")
        m = run_agents(cfg, args, timeout)
        stored, received = stored_counts(cfg.database)
        plain_cfg = make_config(tmp, "off")  # the same, unencrypted and unauthenticated
        plain = run_agents(plain_cfg, args, timeout)
        plain_stored, _ = stored_counts(plain_cfg.database)
        normal_cfg = make_config(tmp, "on", "normal")  # the WAL synced at checkpoints only
        normal = run_agents(normal_cfg, args, timeout)
        normal_stored, _ = stored_counts(normal_cfg.database)

    expected = args.agents * args.jobs * args.cycles
    rate = m["samples"] / m["wall"]
    print(
        f"agents {args.agents} x jobs {args.jobs} x cycles {args.cycles}, window {args.window},"
        f" {m['bytes'] / m['acked'] / 1024:.1f} KiB per envelope"
    )
    print(
        f"naive       {baseline:10.0f} samples/s (one INSERT + COMMIT per sample, "
        f"{args.baseline_samples} samples)"
    )
    plain_rate = plain["samples"] / plain["wall"]
    print(
        f"aggregator  {rate:10.0f} samples/s with CURVE"
        f" ({m['samples']} acknowledged in {m['wall']:.2f} s,"
        f" {m['commits']} commits, {m['acked'] / max(m['commits'], 1):.1f} envelopes/commit)"
    )
    print(f"plain       {plain_rate:10.0f} samples/s without CURVE (security.curve = off)")
    normal_rate = normal["samples"] / normal["wall"]
    print(
        f"normal      {normal_rate:10.0f} samples/s with CURVE and store_synchronous = normal"
        " (the WAL synced at checkpoints only; the default, full, syncs every COMMIT)"
    )
    print(
        f"aggregator process CPU {m['cpu']:.2f} s ({m['cpu'] / m['wall'] * 100:.0f}% of one core)"
    )
    print(
        f"compaction  {m['compacted']} samples compacted during the run; waiting for it:"
        f" {m['backlog_max']} at most, {m['backlog_second_half'][0]} to"
        f" {m['backlog_second_half'][1]} in the run's second half, {m['backlog_end']} at its end"
    )
    print(f"ratio       {rate / baseline:10.2f}x")
    problems = []
    if m["nacks"]:
        problems.append(f"{m['nacks']} envelopes were rejected")
    if m["samples"] != expected:
        problems.append(f"{m['samples']} samples acknowledged, {expected} sent")
    if plain["samples"] != expected or plain_stored != expected or plain["nacks"]:
        problems.append(
            f"without CURVE: {plain['samples']} samples acknowledged and"
            f" {plain_stored} stored, {expected} sent"
        )
    if normal["samples"] != expected or normal_stored != expected or normal["nacks"]:
        problems.append(
            f"store_synchronous = normal: {normal['samples']} samples acknowledged and"
            f" {normal_stored} stored, {expected} sent"
        )
    if stored != m["samples"] or received != m["acked"]:
        problems.append(
            f"the database holds {stored} samples from {received} envelopes, but"
            f" {m['samples']} samples in {m['acked']} envelopes were acknowledged"
        )
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    result = {
        "bench": "ingest",
        "value": round(rate),
        "plain_value": round(plain_rate),
        "normal_value": round(normal_rate),
        "unit": "samples/s",
        "baseline": round(baseline),
        "ratio": round(rate / baseline, 2),
        "goal": ">= 500000 samples/s",
        "agents": args.agents,
        "jobs_per_agent": args.jobs,
        "samples": m["samples"],
        "compacted_during_run": m["compacted"],
        "backlog_end_samples": m["backlog_end"],
        "backlog_max_samples": m["backlog_max"],
    }
    print(json.dumps(result))
    if problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
