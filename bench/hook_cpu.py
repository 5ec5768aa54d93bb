"""CPU time and wall time of one call of each NØMADE hook, one call at a time, against /bin/true.

bench/prolog_latency.py measures the hooks as Slurm runs them, in job-array bursts where every
hook waits for CPU behind the others; there a hook's wall time grows with its CPU time many
times over.  This bench measures that CPU time itself: each installed hook (the wrapper as Slurm
starts it, with the environment captured from Slurm 22.05 in tests/fixtures/slurm/22.05/
hook-env/) runs --calls times in a row against a real aggregator on loopback, and so does
/bin/true; TaskProlog finds its verdict (the common case), and is measured once more without
one (ten 20 ms waits).  CPU is RUSAGE_CHILDREN (user + system of the hook and every process it
starts).  `value` is the largest mean CPU per call among the hooks, in ms; `baseline` is
/bin/true's.
No Slurm cluster is needed.  The last line of stdout is one JSON object.

    python bench/hook_cpu.py [--quick] [--calls 200]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from prolog_latency import BIN, bench_config, run  # noqa: E402

ENVS = ROOT / "tests" / "fixtures" / "slurm" / "22.05" / "hook-env"
HOOKS = {
    "prolog": "prolog-node1",
    "epilog": "epilog-node1",
    "taskprolog": "taskprolog-node1-batch",
    "prologslurmctld": "prologslurmctld",
    "epilogslurmctld": "epilogslurmctld",
}


def captured_env(name: str) -> dict[str, str]:
    pairs = (line.rstrip("\n").partition("=") for line in (ENVS / f"{name}.env").open())
    return {k: v for k, _, v in pairs if k}


def measure(
    path: str, env: dict[str, str], calls: int, first_job: int = 900_000
) -> tuple[float, float]:
    """(mean CPU ms, median wall ms) per call; job ids differ from call to call."""
    walls = []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    for i in range(calls):
        e = dict(env, SLURM_JOB_ID=str(first_job + i))
        start = time.perf_counter()
        subprocess.run([path], env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        walls.append((time.perf_counter() - start) * 1e3)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / calls * 1e3
    return cpu, statistics.median(walls)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="finish in well under 30 s")
    ap.add_argument("--calls", type=int, default=None)
    args = ap.parse_args()
    calls = args.calls or (50 if args.quick else 200)
    base = Path(tempfile.mkdtemp(prefix="nomade-bench-hookcpu-"))
    _zport, env = bench_config(base)
    node_dir = base / "spool" / "node1"
    (node_dir / "inbox").mkdir(parents=True)  # as the running agent has it, with the FIFO of
    (node_dir / "wait").mkdir()  # the user TaskProlog runs as (this bench's)
    os.mkfifo(node_dir / "wait" / str(os.getuid()), 0o600)
    (node_dir / "verdicts").mkdir()
    agg = None
    try:
        run(str(BIN / "nomadectl"), "init", env=env).check_returncode()
        run(str(BIN / "nomadectl"), "install-hooks", env=env).check_returncode()
        agg = subprocess.Popen(
            [str(BIN / "nomade-aggregator")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while run(str(BIN / "nomadectl"), "status", env=env).returncode != 0:
            if time.monotonic() > deadline:
                raise SystemExit("error: the aggregator did not start within 60 s")
            time.sleep(0.5)
        true_cpu, true_wall = measure("/bin/true", captured_env("prolog-node1"), calls)
        results = {}
        for job in range(900_000, 900_000 + calls):  # the common case: the verdict is there
            (node_dir / "verdicts" / f"{job}.json").write_text("{}")
        for hook, env_name in HOOKS.items():
            cpu, wall = measure(str(base / "hooks" / hook), captured_env(env_name), calls)
            results[hook] = {"cpu_ms": round(cpu, 2), "wall_p50_ms": round(wall, 2)}
            print(f"{hook:<17} CPU {cpu:6.2f} ms per call   wall p50 {wall:6.2f} ms")
        # A verdict that has not come: TaskProlog waits its 10 x 20 ms (not counted in `value`).
        cpu, wall = measure(
            str(base / "hooks" / "taskprolog"),
            captured_env(HOOKS["taskprolog"]),
            max(10, calls // 10),
            first_job=800_000,
        )
        waiting = {"cpu_ms": round(cpu, 2), "wall_p50_ms": round(wall, 2)}
        print(
            f"{'taskprolog, wait':<17} CPU {cpu:6.2f} ms per call   wall p50 {wall:6.2f} ms"
            " (no verdict: ten 20 ms waits)"
        )
    finally:
        if agg is not None:
            agg.terminate()
            agg.wait(10)
        shutil.rmtree(base, ignore_errors=True)
    print(f"{'/bin/true':<17} CPU {true_cpu:6.2f} ms per call   wall p50 {true_wall:6.2f} ms")
    worst = max(r["cpu_ms"] for r in results.values())
    print(
        json.dumps(
            {
                "bench": "hook_cpu",
                "value": worst,
                "unit": "ms CPU per call",
                "baseline": round(true_cpu, 2),
                "ratio": round(worst / true_cpu, 2),
                "goal": (
                    "as little as possible: in a burst wall time grows with it (prolog_latency)"
                ),
                "calls": calls,
                "per_hook": results,
                "taskprolog_no_verdict": waiting,
            }
        )
    )


if __name__ == "__main__":
    main()
