"""Wall time of each NØMADE hook as slurmd and slurmctld run it, on the real dev cluster.

Every hook (PrologSlurmctld, Prolog, TaskProlog, Epilog, EpilogSlurmctld) is wrapped in a tiny
timing shell script that records its start and end in nanoseconds; the wrapper calls either
NØMADE's installed hook or /bin/true (the empty hook).  The wrappers are switched in through
/etc/slurm/nomade-hooks.conf and `scontrol reconfigure`, and a job array of --jobs one-second
tasks runs in each of these modes, in the same run:

  empty        every hook is /bin/true (the baseline)
  nomade       NØMADE's hooks
  (both with the aggregator under ingest load: two simulated agents, separate processes,
  stream 10,000 samples/s over ZeroMQ, as a 1,500-node cluster with 64 jobs per node sampled
  every 10 s would; the two modes alternate in ROUNDS rounds of --jobs / ROUNDS jobs)
  unreachable  NØMADE's hooks with the aggregator stopped (connections refused)
  hung         NØMADE's hooks with the aggregator frozen (SIGSTOP: connections accepted, never
               answered), where the time limit and the circuit breaker must hold

--transport picks how PrologSlurmctld and EpilogSlurmctld reach the aggregator: the reports
directory (spool, what `auto` chooses for an aggregator on the same host, as here) or HTTP, where
each report is signed with a MUNGE credential carrying the body (one `munge` process per hook)
and the aggregator has munged decode it before answering.

Added time = a mode's percentile minus the empty hook's, per hook.  `value` is the largest added
p50 among the hooks in `nomade` mode, in ms.  Needs root and the dev cluster
(slurm-conf/cluster-up.sh); it restores the include file it found.

    python bench/prolog_latency.py [--quick] [--jobs 200] [--transport auto|spool|http]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nomade_common import wire  # noqa: E402

INCLUDE = Path("/etc/slurm/nomade-hooks.conf")
KINDS = {
    "PrologSlurmctld": "prologslurmctld",
    "Prolog": "prolog",
    "TaskProlog": "taskprolog",
    "Epilog": "epilog",
    "EpilogSlurmctld": "epilogslurmctld",
}
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=kw.pop("timeout", 120), **kw
    )


def bench_config(base: Path, transport: str = "auto") -> tuple[int, dict[str, str]]:
    """A nomade.toml under BASE on free loopback ports (data, spool, hooks and their state all
    under BASE); returns the agents' ZeroMQ port and an environment that points at it."""
    zport, hport = free_port(), free_port()
    cfg = base / "nomade.toml"
    cfg.write_text(
        f'[general]\ncluster_name = "nomadedev"\ndata_dir = "{base}/data"\n'
        f'[agent]\naggregator = "tcp://127.0.0.1:{zport}"\nspool_dir = "{base}/spool"\n'
        f'[aggregator]\nlisten = "tcp://127.0.0.1:{zport}"\nhttp_listen = "127.0.0.1:{hport}"\n'
        f'[hooks]\nprefix = "{base}/hooks"\naggregator_url = "http://127.0.0.1:{hport}"\n'
        f'state_dir = "{base}/hookstate"\ncontroller_transport = "{transport}"\n'
        f'[security]\nkeys_dir = "{base}/keys"\n'
    )
    return zport, {**os.environ, "NOMADE_CONFIG": str(cfg)}


def write_wrappers(base: Path, mode: str, target_dir: Path | None) -> list[str]:
    """Timing wrappers for MODE; TARGET_DIR None means the empty hook."""
    wdir = base / f"timed-{mode}"
    wdir.mkdir(mode=0o755)
    lines = []
    for key, kind in KINDS.items():
        target = "/bin/true" if target_dir is None else str(target_dir / kind)
        log = base / "timing" / f"{mode}-{kind}.log"
        log.touch(mode=0o666)
        log.chmod(0o666)
        (wdir / kind).write_text(
            "#!/bin/sh\n"
            "s=$(date +%s%N)\n"
            f"{target}\n"
            "e=$(date +%s%N)\n"
            f'echo "$s $e" >> {log}\n'
            "exit 0\n"
        )
        (wdir / kind).chmod(0o755)
        lines.append(f"{key}={wdir / kind}")
    return lines


def switch(lines: list[str]) -> None:
    INCLUDE.write_text("# NØMADE prolog latency benchmark (temporary)\n" + "\n".join(lines) + "\n")
    run("scontrol", "reconfigure", timeout=60).check_returncode()
    # A slurmctld started without PrologSlurmctld never runs one: the dev cluster restarts it.
    run(
        str(ROOT / "slurm-conf" / "cluster-up.sh"), "--hooks-changed", timeout=120
    ).check_returncode()
    time.sleep(1)


def run_jobs(base: Path, n: int, deadline: float = 900) -> None:
    out = run(
        "sbatch",
        "--parsable",
        "--uid=alice",
        "--gid=alice",
        "-D",
        str(base / "jobs"),
        "-o",
        "/dev/null",
        f"--array=1-{n}",
        "-t",
        "1",
        "--mem=50M",
        "--wrap",
        "true",
    )
    out.check_returncode()
    array = out.stdout.strip().split(";")[0]
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if not run("squeue", "-h", "-j", array).stdout.strip():
            return
        time.sleep(1)
    raise SystemExit(f"error: job array {array} did not finish in {deadline:.0f} s")


def durations(base: Path, mode: str) -> dict[str, list[float]]:
    out = {}
    for kind in KINDS.values():
        text = (base / "timing" / f"{mode}-{kind}.log").read_text()
        out[kind] = [
            (int(e) - int(s)) / 1e6
            for s, e in (ln.split() for ln in text.splitlines() if ln.strip())
        ]
    return out


ROUNDS = 2  # empty and nomade alternate, each run n / ROUNDS jobs at a time

LOAD_SAMPLES_PER_SECOND = (
    5_000  # per simulated agent process: two make a 1,500-node cluster's stream
)


def enrol(base: Path, env: dict[str, str], nodes: list[str]) -> dict[str, tuple[bytes, ...]]:
    """CURVE keys as a site makes them: `nomade-agent --make-key` for the real agents, pairs
    made here for the simulated ones, all enrolled with one `nomadectl keys add --file`; returns
    the simulated agents' (server public, public, secret)."""
    import zmq

    from nomade_common import keys

    make = [str(BIN / "nomade-agent"), "--make-key", "--node"]
    lines = [run(*make, n, env=env).stdout for n in ("node1", "node2")]
    pairs = {n: zmq.curve_keypair() for n in nodes}
    lines += [f"{n} {pub.decode()}\n" for n, (pub, _) in pairs.items()]
    (base / "enrol.txt").write_text("".join(lines))
    add = [str(BIN / "nomadectl"), "keys", "add", "--file", str(base / "enrol.txt")]
    run(*add, env=env).check_returncode()
    server = keys.load(str(base / "keys" / "server.key"), secret=False)[0].encode()
    return {n: (server, pub, sec) for n, (pub, sec) in pairs.items()}


def load_agent(port: int, node: str, stop_at: float, curve: tuple[bytes, ...]) -> None:
    """A simulated agent streaming 64-job SAMPLES envelopes at LOAD_SAMPLES_PER_SECOND (a
    1,500-node cluster with 64 jobs per node sampled every 10 s sends about 10,000 a second)."""
    import zmq

    sock = zmq.Context().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = curve
    sock.connect(f"tcp://127.0.0.1:{port}")
    width = len(wire.SAMPLE_FIELDS)
    seq, inflight, epoch = 0, 0, time.time_ns()
    started = time.time()
    while time.time() < stop_at:
        due = int((time.time() - started) * LOAD_SAMPLES_PER_SECOND / 64)
        while inflight < 32 and seq < due:
            seq += 1
            rows = [[9_000_000 + j, float(seq)] + [1] * (width - 2) for j in range(64)]
            sock.send(wire.Envelope(wire.SAMPLES, node, epoch, seq, {"rows": rows}).pack())
            inflight += 1
        if sock.poll(10):
            sock.recv()
            inflight -= 1


def summary(d: dict[str, list[float]], base: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    out = {}
    for kind, values in d.items():
        p50, p99 = np.percentile(values, 50), np.percentile(values, 99)
        b50, b99 = np.percentile(base[kind], 50), np.percentile(base[kind], 99)
        out[kind] = {
            "n": len(values),
            "p50_ms": round(p50, 1),
            "p99_ms": round(p99, 1),
            "added_p50_ms": round(p50 - b50, 1),
            "added_p99_ms": round(p99 - b99, 1),
            "max_ms": round(max(values), 1),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument(
        "--transport",
        choices=("auto", "spool", "http"),
        default="auto",
        help="how the head-node hooks reach the aggregator (auto: spool, as it is local)",
    )
    args = ap.parse_args()
    n = args.jobs or (20 if args.quick else 200)
    before = INCLUDE.read_text() if INCLUDE.exists() else None
    base = Path(tempfile.mkdtemp(prefix="nomade-bench-hooks-", dir="/tmp"))
    base.chmod(0o755)
    for sub in ("timing", "jobs"):
        (base / sub).mkdir()
        (base / sub).chmod(0o1777)
    zport, env = bench_config(base, args.transport)
    procs: list[subprocess.Popen] = []
    results: dict[str, dict] = {}
    try:
        run(str(BIN / "nomadectl"), "init", env=env).check_returncode()  # and the server key
        curve = enrol(base, env, [f"loadnode{i}" for i in range(2)])
        run(str(BIN / "nomadectl"), "install-hooks", env=env).check_returncode()
        agg = subprocess.Popen(
            [str(BIN / "nomade-aggregator")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(agg)
        for node in ("node1", "node2"):
            procs.append(
                subprocess.Popen(
                    [str(BIN / "nomade-agent"), "--node", node],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        time.sleep(2)
        modes = {
            m: write_wrappers(base, m, None if m == "empty" else base / "hooks")
            for m in ("empty", "nomade", "unreachable", "hung")
        }
        timings = {}
        stop_at = time.time() + 3600
        ctx = mp.get_context("spawn")
        loaders = [
            ctx.Process(
                target=load_agent,
                args=(zport, f"loadnode{i}", stop_at, curve[f"loadnode{i}"]),
                daemon=True,
            )
            for i in range(2)
        ]
        for p in loaders:
            p.start()
        # The same ingest load under both, in alternating rounds, so that the difference is
        # what NØMADE's hooks add and neither side gets a quieter stretch of the machine.
        for r in range(ROUNDS):
            share = n // ROUNDS + (r < n % ROUNDS)
            for mode in ("empty", "nomade"):
                switch(modes[mode])
                run_jobs(base, share)
        for p in loaders:
            p.terminate()
        timings["empty"] = durations(base, "empty")
        timings["nomade"] = durations(base, "nomade")
        agg.send_signal(signal.SIGSTOP)
        switch(modes["hung"])
        run_jobs(base, max(20, n // 4))
        timings["hung"] = durations(base, "hung")
        agg.send_signal(signal.SIGCONT)
        agg.kill()  # stopped for good: the hooks now find nothing listening
        agg.wait(10)
        switch(modes["unreachable"])
        run_jobs(base, max(20, n // 4))
        timings["unreachable"] = durations(base, "unreachable")
        for mode in ("nomade", "hung", "unreachable"):
            results[mode] = summary(timings[mode], timings["empty"])
        results["empty"] = {
            k: {
                "n": len(v),
                "p50_ms": round(float(np.percentile(v, 50)), 1),
                "p99_ms": round(float(np.percentile(v, 99)), 1),
            }
            for k, v in timings["empty"].items()
        }
    finally:
        if before is None:
            INCLUDE.unlink(missing_ok=True)
        else:
            INCLUDE.write_text(before)
        run("scontrol", "reconfigure", timeout=60)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.terminate()
        run(str(BIN / "nomadectl"), "uninstall-hooks", env=env)
    for mode in ("empty", "nomade", "hung", "unreachable"):
        for kind, r in results[mode].items():
            print(f"{mode:<12}{kind:<17}" + "  ".join(f"{k} {v}" for k, v in r.items()))
    added50 = max(r["added_p50_ms"] for r in results["nomade"].values())
    added99 = max(r["added_p99_ms"] for r in results["nomade"].values())
    worst_down = max(r["max_ms"] for m in ("hung", "unreachable") for r in results[m].values())
    base50 = max(r["p50_ms"] for r in results["empty"].values())
    print(
        json.dumps(
            {
                "bench": "prolog_latency",
                "value": added50,
                "unit": "ms",
                "baseline": base50,
                "ratio": round((base50 + added50) / base50, 2) if base50 else None,
                "goal": (
                    "added p50 <= 50 ms, added p99 <= 150 ms,"
                    " <= 1000 ms when the aggregator is unreachable"
                ),
                "added_p99_ms": added99,
                "transport": args.transport,
                "auth": "munge" if args.transport == "http" else None,
                "worst_ms_aggregator_down": worst_down,
                "jobs": n,
                "per_hook": results,
            }
        )
    )


if __name__ == "__main__":
    main()
