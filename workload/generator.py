"""Workload generator: a realistic mix of jobs from users with different habits, for the real
dev cluster (`run`, `export`) and offline (`synthesize`), drawn from the same distributions.

Every job's parameters derive from (seed, index) alone (`draw_job`), so a run can be stopped and
resumed and `synthesize` reproduces the very jobs the cluster ran.  Each job carries the failure
probability the generator gave it (p_fail and its parts p_oom, p_timeout, p_error), computed
analytically from the distributions its behaviour is drawn from: the ceiling any model can reach.

    python -m workload run --jobs 1600 --state /var/lib/nomade-workload
    python -m workload export --state /var/lib/nomade-workload --out data/workload-v1/

See docs/workload.md.
"""

from __future__ import annotations

import argparse
import gzip
import heapq
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_SEED = 20240604
VERSION = "workload-v1"
MAX_ACTIVE = 20  # jobs queued + running at most
MAX_ERRORS = 60  # consecutive failed Slurm calls (5 s apart) before a run gives up
TIME_COMPRESSION = 15.0  # real seconds per minute of "needed" time for jobs that fit their limit
MIN_RUN_S, MAX_RUN_S = 3.0, 20.0
MEM_MIN_MB, MEM_MAX_MB = 100, 1500
# What the job's cgroup holds besides the bytearray (sh, python, and srun on the first node).
OVERHEAD_MB = {1: 12.0, 2: 24.0}
ROUND_MEM = (
    100,
    128,
    150,
    200,
    250,
    256,
    300,
    400,
    500,
    512,
    600,
    700,
    750,
    800,
    900,
    1000,
    1024,
    1200,
    1500,
)
FAIL_CODES = (1, 1, 1, 2, 3, 127)


@dataclass(frozen=True)
class JobType:
    mem_mb: float  # median peak memory for size 1
    mem_sigma: float  # lognormal sigma of peak memory given size
    time_min: float  # median needed minutes for size 1
    time_sigma: float
    write_mb: float  # median MB written (heavy writers; others write a few MB)
    p_two_cpus: float
    p_two_nodes: float
    err_mult: float  # how error-prone the code path is
    tags: tuple[str, ...]


JOB_TYPES: dict[str, JobType] = {
    "align_bwa": JobType(
        450, 0.30, 0.45, 0.35, 70, 0.25, 0.0, 1.0, ("chr1", "chr7", "chrX", "s12")
    ),
    "train_resnet": JobType(600, 0.40, 0.60, 0.45, 35, 0.4, 0.05, 1.3, ("e10", "e50", "lr3")),
    "postproc_stats": JobType(220, 0.25, 0.22, 0.30, 25, 0.05, 0.0, 0.7, ("daily", "batch", "v2")),
    "sim_md": JobType(420, 0.25, 0.55, 0.40, 50, 0.3, 0.2, 1.0, ("run1", "run3", "npt")),
    "preprocess": JobType(300, 0.50, 0.30, 0.35, 60, 0.1, 0.0, 0.8, ("raw", "qc", "trim")),
}


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    account: str
    weight: float  # share of submissions
    types: dict[str, float]  # job type preferences
    size_mu: float  # log of the user's typical job size
    mem_factor: float  # request = expected peak * factor * lognormal(0, mem_noise)
    mem_noise: float
    time_factor: float  # limit = expected need * factor * lognormal(0, 0.3), whole minutes
    p_quick: float  # share of jobs submitted with --time=1 ("it's quick")
    p_error: float  # random failure of the code
    heavy_writer: bool = False
    habit: str = "behaves"
    need_scale: float = 1.0  # how much longer than the type's norm the user's jobs run
    mem_by_type: tuple[tuple[str, float], ...] = ()  # per-type multiplier on mem_factor


USERS: tuple[User, ...] = (
    User(
        "carol",
        2003,
        "research",
        0.14,
        {"train_resnet": 3, "preprocess": 3, "align_bwa": 2, "postproc_stats": 2},
        0.0,
        1.0,
        0.25,
        6.0,
        0.05,
        0.03,
        habit="under-requests memory",
        mem_by_type=(
            ("train_resnet", 0.85),
            ("preprocess", 0.95),
            ("align_bwa", 1.3),
            ("postproc_stats", 1.5),
        ),
    ),
    User(
        "dave",
        2004,
        "physics",
        0.14,
        {"sim_md": 4, "train_resnet": 2, "align_bwa": 1, "postproc_stats": 1},
        0.0,
        2.8,
        0.15,
        1.3,
        0.85,
        0.03,
        habit="under-requests time",
        need_scale=2.0,
    ),
    User(
        "erin",
        2005,
        "research",
        0.12,
        {"align_bwa": 3, "preprocess": 3, "sim_md": 1, "postproc_stats": 1},
        0.0,
        2.8,
        0.15,
        6.0,
        0.05,
        0.02,
        heavy_writer=True,
        habit="writes heavily to shared storage",
    ),
    User(
        "frank",
        2006,
        "physics",
        0.12,
        {"sim_md": 2, "postproc_stats": 2, "train_resnet": 1, "preprocess": 1},
        -0.1,
        2.8,
        0.15,
        6.0,
        0.05,
        0.30,
        habit="flaky code",
    ),
    User(
        "grace",
        2007,
        "research",
        0.18,
        {"align_bwa": 2, "postproc_stats": 2, "preprocess": 1, "train_resnet": 1},
        0.0,
        2.8,
        0.15,
        6.0,
        0.06,
        0.02,
    ),
    User(
        "heidi",
        2008,
        "physics",
        0.16,
        {"sim_md": 3, "postproc_stats": 1, "train_resnet": 1},
        0.1,
        3.0,
        0.15,
        7.0,
        0.05,
        0.015,
    ),
    User(
        "ivan",
        2009,
        "research",
        0.16,
        {"preprocess": 2, "align_bwa": 2, "postproc_stats": 2, "train_resnet": 1},
        -0.1,
        2.8,
        0.2,
        6.0,
        0.06,
        0.025,
    ),
)
USER_BY_NAME = {u.name: u for u in USERS}
SIZE_SIGMA = 0.35
TIME_SIZE_EXP = 0.8  # needed time grows with size ** 0.8
QUOTA_MB, QUOTA_SIGMA = 80.0, 0.35  # erin's remaining project quota per job (lognormal)
WRITE_SIGMA = 0.30
WRITE_MIN_MB, WRITE_MAX_MB = 20.0, 100.0
_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(48)
_GH_W = _GH_W / _GH_W.sum()


def _phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def _lognormal_above(threshold: float, median: float, sigma: float) -> float:
    """P(X > threshold) for X lognormal with this median and sigma."""
    if threshold <= 0:
        return 1.0
    return 1.0 - _phi((math.log(threshold) - math.log(median)) / sigma)


def _p_quota(write_median: float) -> float:
    """P(quota < written), written = clip(lognormal(write_median, WRITE_SIGMA), 20, 100)."""
    written = np.clip(write_median * np.exp(WRITE_SIGMA * _GH_X), WRITE_MIN_MB, WRITE_MAX_MB)
    z = (np.log(written) - math.log(QUOTA_MB)) / QUOTA_SIGMA
    cdf = 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))
    return float(np.dot(_GH_W, cdf))


def _round_mem(mb: float) -> int:
    mb = min(max(mb, MEM_MIN_MB), MEM_MAX_MB)
    return min(ROUND_MEM, key=lambda r: abs(math.log(r / mb)))


def _pick(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = sorted(weights)
    p = np.array([weights[n] for n in names], dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def draw_job(seed: int, index: int) -> dict[str, Any]:
    """Job INDEX of the workload SEED: its request, its real behaviour, and its odds of failing."""
    rng = np.random.default_rng([seed, index])
    user = USERS[int(rng.choice(len(USERS), p=_USER_P))]
    jtype_name = _pick(rng, user.types)
    jt = JOB_TYPES[jtype_name]
    size = math.exp(user.size_mu + SIZE_SIGMA * rng.standard_normal())
    # --- the request, from the user's habits (all a model may know at start) ---
    nodes = 2 if rng.random() < jt.p_two_nodes else 1
    cpus = 2 if rng.random() < jt.p_two_cpus else 1
    mem_median = jt.mem_mb * size
    factor = user.mem_factor * dict(user.mem_by_type).get(jtype_name, 1.0)
    mem_mb = _round_mem(mem_median * factor * math.exp(user.mem_noise * rng.standard_normal()))
    need_median = jt.time_min * user.need_scale * size**TIME_SIZE_EXP
    quick = rng.random() < user.p_quick
    guess = need_median * user.time_factor * math.exp(0.3 * rng.standard_normal())
    time_limit = 1 if quick else int(min(10, max(1, math.ceil(guess))))
    partition = "long" if time_limit > 5 or rng.random() < 0.1 else "debug"
    job_name = f"{jtype_name}_{jt.tags[int(rng.integers(len(jt.tags)))]}"
    # --- behaviour, drawn given the request and the latent size ---
    peak_mb = mem_median * math.exp(jt.mem_sigma * rng.standard_normal())
    need_min = need_median * math.exp(jt.time_sigma * rng.standard_normal())
    write_median = jt.write_mb * size if user.heavy_writer else 0.0
    if user.heavy_writer:
        write_mb = min(max(write_median * math.exp(WRITE_SIGMA * rng.standard_normal()), 20), 100)
        quota_mb = QUOTA_MB * math.exp(QUOTA_SIGMA * rng.standard_normal())
    else:
        write_mb, quota_mb = float(rng.uniform(1, 5)), math.inf
    p_rand = min(0.9, user.p_error * jt.err_mult)
    errs = rng.random() < p_rand
    err_at = float(rng.uniform(0.2, 1.0))
    err_code = int(FAIL_CODES[int(rng.integers(len(FAIL_CODES)))])
    run_s = min(max(need_min * TIME_COMPRESSION, MIN_RUN_S), MAX_RUN_S)
    cpu_frac = float(rng.uniform(0.05, 0.25))
    limit_eff = mem_mb - OVERHEAD_MB[nodes]
    # --- the analytic odds, over the behaviour draws above ---
    p_oom = _lognormal_above(limit_eff, mem_median, jt.mem_sigma)
    p_timeout = _lognormal_above(time_limit, need_median, jt.time_sigma)
    p_quota = _p_quota(write_median) if user.heavy_writer else 0.0
    p_error = 1 - (1 - p_quota) * (1 - p_rand)
    p_fail = 1 - (1 - p_error) * (1 - p_oom) * (1 - p_timeout)
    # --- the intended outcome, in the order the job meets its fates ---
    if write_mb > quota_mb:
        outcome, exit_code = "FAILED", 1
    elif peak_mb > limit_eff:
        outcome, exit_code = "OUT_OF_MEMORY", 0
    elif need_min > time_limit:
        outcome, exit_code = "TIMEOUT", 0
    elif errs:
        outcome, exit_code = "FAILED", err_code
    else:
        outcome, exit_code = "COMPLETED", 0
    return {
        "index": index,
        "seed": seed,
        "user": user.name,
        "uid": user.uid,
        "account": user.account,
        "partition": partition,
        "job_name": job_name,
        "job_type": jtype_name,
        "mem_mb": mem_mb,
        "cpus": cpus,
        "nodes": nodes,
        "time_limit_min": time_limit,
        "p_fail": p_fail,
        "p_oom": p_oom,
        "p_timeout": p_timeout,
        "p_error": p_error,
        "outcome": outcome,
        "exit_code": exit_code,
        "behaviour": {
            "peak_mb": round(peak_mb, 1),
            "need_min": round(need_min, 4),
            "run_s": round(run_s, 2),
            "cpu_frac": round(cpu_frac, 3),
            "write_mb": round(write_mb, 2),
            "quota_mb": None if math.isinf(quota_mb) else round(quota_mb, 2),
            "err_at": round(err_at, 3) if outcome == "FAILED" and errs else None,
            "err_code": err_code if errs else None,
        },
    }


_USER_P = np.array([u.weight for u in USERS]) / sum(u.weight for u in USERS)


# --------------------------------------------------------------------------------------------
# Offline: the same jobs through a simulated two-node queue.


def _duration(job: dict[str, Any]) -> float:
    """Seconds the job runs on the cluster, as the real run realises its behaviour."""
    b, outcome = job["behaviour"], job["outcome"]
    write_s = b["write_mb"] / 150.0
    if outcome == "FAILED" and b["quota_mb"] is not None and b["write_mb"] > b["quota_mb"]:
        return 1.0 + b["quota_mb"] / 150.0
    if outcome == "OUT_OF_MEMORY":
        return 1.5 + write_s
    if outcome == "TIMEOUT":
        return job["time_limit_min"] * 60.0 + 20.0  # the limit, then the kill and its grace
    if outcome == "FAILED":
        return 1.0 + write_s + b["err_at"] * b["run_s"]
    return 1.0 + write_s + b["run_s"]


def synthesize(n: int, seed: int = DEFAULT_SEED, start: float = 1_717_000_000.0) -> list[dict]:
    """N job records with the columns of NØMADE's jobs table (plus p_fail), no cluster needed.

    Submissions arrive as a Poisson stream (busier in bursts); a FIFO scheduler places jobs on
    two 8-CPU, 8000 MB nodes, so start times include realistic queueing.
    """
    jobs = [draw_job(seed, i) for i in range(n)]
    rng = np.random.default_rng([seed, 1 << 30])
    gaps = rng.exponential(1.6, n) * np.where(rng.random(n) < 0.2, 0.15, 1.0)
    submits = start + np.cumsum(gaps)
    starts = _schedule(jobs, submits)
    out = []
    for i, (job, submit, begin) in enumerate(zip(jobs, submits, starts, strict=True)):
        elapsed = _duration(job)
        b = job["behaviour"]
        limit_mb = job["mem_mb"] - OVERHEAD_MB[job["nodes"]]
        rss_mb = job["mem_mb"] if job["outcome"] == "OUT_OF_MEMORY" else min(b["peak_mb"], limit_mb)
        busy = min(elapsed, b["run_s"]) * b["cpu_frac"] * job["nodes"]
        out.append(
            {
                "job_id": 100_000 + i,
                "user": job["user"],
                "account": job["account"],
                "partition": job["partition"],
                "job_name": job["job_name"],
                "submit_time": float(submit),
                "start_time": float(begin),
                "end_time": float(begin + elapsed),
                "nodes_requested": job["nodes"],
                "cpus": job["cpus"] * job["nodes"],
                "mem_per_node_bytes": job["mem_mb"] << 20,
                "mem_per_cpu_bytes": None,
                "gpus": None,
                "time_limit_seconds": job["time_limit_min"] * 60,
                "outcome": job["outcome"],
                "exit_code": job["exit_code"],
                "elapsed_seconds": float(round(elapsed)),
                "total_cpu_seconds": round(busy + 0.3, 2),
                "max_rss_bytes": int((rss_mb + 12) * 1024 * 1024),
                "state": job["outcome"],
                "p_fail": job["p_fail"],
            }
        )
    return out


def _schedule(jobs: list[dict], submits: np.ndarray) -> list[float]:
    """Start times under strict FIFO on two nodes of 8 CPUs and 8000 MB."""
    free = [[8, 8000], [8, 8000]]
    running: list[tuple[float, int, list[int]]] = []  # (end, index, nodes used)
    starts = [0.0] * len(jobs)
    now = 0.0
    for i, job in enumerate(jobs):
        now = max(now, float(submits[i]))
        need_cpu, need_mem = job["cpus"], job["mem_mb"]
        while True:
            while running and running[0][0] <= now:
                _, k, used = heapq.heappop(running)
                for node in used:
                    free[node][0] += jobs[k]["cpus"]
                    free[node][1] += jobs[k]["mem_mb"]
            fits = [k for k in (0, 1) if free[k][0] >= need_cpu and free[k][1] >= need_mem]
            if len(fits) >= job["nodes"]:
                used = (
                    fits[: job["nodes"]]
                    if job["nodes"] == 2
                    else [max(fits, key=lambda k: free[k][0])]
                )
                break
            now = running[0][0]
        for node in used:
            free[node][0] -= need_cpu
            free[node][1] -= need_mem
        starts[i] = now + 0.5
        heapq.heappush(running, (starts[i] + _duration(job), i, used))
    return starts


# --------------------------------------------------------------------------------------------
# The real run.

JOB_SCRIPT = (
    r'''"""NØMADE workload job: write, allocate, compute, and fail as told'''
    r''' (workload/generator.py)."""
import os, sys, time
write_mb, quota_mb, peak_mb, run_s, cpu_frac, err_at, err_code, hang = map(float, sys.argv[1:9])
scratch = sys.argv[9]
rank = int(os.environ.get("SLURM_PROCID", "0"))
t0 = time.time()
if rank == 0 and write_mb > 0:
    path = os.path.join(scratch, "job-%s.dat" % os.environ.get("SLURM_JOB_ID", os.getpid()))
    over = quota_mb >= 0 and write_mb > quota_mb
    chunks = int(quota_mb if over else round(write_mb))
    block = os.urandom(1 << 20)
    try:
        with open(path, "wb") as f:
            for k in range(chunks):
                f.write(block)
                if k % 8 == 7:
                    f.flush(); os.fsync(f.fileno())
            f.flush(); os.fsync(f.fileno())
    finally:
        os.unlink(path)
    if over:
        print("write %s: Disk quota exceeded" % path, file=sys.stderr)
        sys.exit(1)
buf = bytearray(int(peak_mb * 1048576))
buf[::4096] = b"\1" * len(range(0, len(buf), 4096))
if hang:
    time.sleep(7200)
start = time.time()
stop = start + (err_at * run_s if err_at >= 0 else run_s)
while time.time() < stop:
    busy = time.time() + 0.2 * cpu_frac
    while time.time() < busy:
        pass
    time.sleep(max(0.0, min(0.2 * (1 - cpu_frac), stop - time.time())))
del buf
if err_at >= 0:
    print("error: step failed (simulated), exit %d" % err_code, file=sys.stderr)
    sys.exit(int(err_code))
'''
)


def job_command(job: dict[str, Any], state: Path) -> str:
    """The batch script's command line (one task per node for two-node jobs, via srun)."""
    b = job["behaviour"]
    hang = job["outcome"] == "TIMEOUT"
    err_at = b["err_at"] if b["err_at"] is not None else -1
    args = [
        b["write_mb"],
        b["quota_mb"] if b["quota_mb"] is not None else -1,
        b["peak_mb"],
        b["run_s"],
        b["cpu_frac"],
        err_at,
        b["err_code"] or 0,
        int(hang),
    ]
    scratch = state / "scratch" / job["user"]
    cmd = f"/usr/bin/python3 {state / 'bin' / 'wljob.py'} {' '.join(map(str, args))} {scratch}"
    return f"/usr/bin/srun {cmd}" if job["nodes"] > 1 else cmd


def sbatch_argv(job: dict[str, Any], state: Path) -> list[str]:
    return [
        "sbatch",
        "--parsable",
        f"--uid={job['uid']}",
        f"--gid={job['uid']}",
        f"--account={job['account']}",
        f"--partition={job['partition']}",
        f"--job-name={job['job_name']}",
        f"--mem={job['mem_mb']}",
        f"--cpus-per-task={job['cpus']}",
        f"--nodes={job['nodes']}",
        "--ntasks-per-node=1",
        f"--time={job['time_limit_min']}",
        f"--chdir={state / 'work'}",
        f"--output={state / 'out' / '%j.out'}",
        f"--comment={_tag(job)}",
        "--export=NONE",
        f"--wrap={job_command(job, state)}",
    ]


def _tag(job: dict[str, Any]) -> str:
    return f"{VERSION}:{job['seed']}:{job['index']}"


def _run(argv: list[str], timeout: float = 60) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({out.returncode}): {out.stderr.strip()}")
    return out.stdout


def slurm_submit(state: Path) -> Callable[[dict[str, Any]], int]:
    def submit(job: dict[str, Any]) -> int:
        return int(_run(sbatch_argv(job, state)).strip().split(";")[0])

    return submit


def slurm_active() -> int:
    users = ",".join(u.name for u in USERS)
    return len(_run(["squeue", "-h", "-o", "%i", "-u", users]).split())


def slurm_find(job: dict[str, Any]) -> int | None:
    """The id of a job submitted with this job's tag, if the cluster knows one (for resume)."""
    out = _run(["squeue", "-h", "-o", "%i|%k", "-u", job["user"]])
    for line in out.splitlines():
        jid, _, comment = line.partition("|")
        if comment.strip() == _tag(job):
            return int(jid)
    return None


def setup_state(state: Path) -> None:
    """State dir layout: bin/ (the job script, world-readable), work/ out/ scratch/ (1777)."""
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o755)
    for name in ("work", "out", "scratch"):
        (state / name).mkdir(exist_ok=True)
        os.chmod(state / name, 0o1777)
    for u in USERS:
        d = state / "scratch" / u.name
        d.mkdir(exist_ok=True)
        os.chmod(d, 0o1777)
    (state / "bin").mkdir(exist_ok=True)
    os.chmod(state / "bin", 0o755)
    script = state / "bin" / "wljob.py"
    if not script.exists() or script.read_text() != JOB_SCRIPT:
        tmp = script.with_suffix(".tmp")
        tmp.write_text(JOB_SCRIPT)
        os.chmod(tmp, 0o644)
        tmp.replace(script)


def ensure_users() -> None:
    """Unix users and Slurm associations for the simulated users (idempotent)."""
    for u in USERS:
        if subprocess.run(["getent", "passwd", u.name], capture_output=True).returncode != 0:
            if subprocess.run(["getent", "group", str(u.uid)], capture_output=True).returncode:
                _run(["groupadd", "-g", str(u.uid), u.name])
            _run(["useradd", "-m", "-u", str(u.uid), "-g", str(u.uid), "-s", "/bin/bash", u.name])
        have = _run(["sacctmgr", "-n", "-P", "list", "assoc", f"user={u.name}", "format=account"])
        if u.account not in have.split():
            _run(["sacctmgr", "-i", "add", "user", u.name, f"account={u.account}"])


def load_state(state: Path) -> dict[str, Any]:
    path = state / "state.json"
    if path.exists():
        return json.loads(path.read_text())
    return {"version": VERSION, "seed": None, "next": 0, "pending": None, "jobs": []}


def save_state(state: Path, st: dict[str, Any]) -> None:
    tmp = state / "state.json.tmp"
    with open(tmp, "w") as f:
        json.dump(st, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(state / "state.json")


def run(
    n: int,
    state: Path,
    seed: int = DEFAULT_SEED,
    submit: Callable[[dict[str, Any]], int] | None = None,
    active: Callable[[], int] | None = None,
    find: Callable[[dict[str, Any]], int | None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
    max_active: int = MAX_ACTIVE,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Submit jobs state['next'] .. N-1, saving the state after each; returns the state.

    A job whose submission was interrupted (state['pending']) is looked up by its tag before
    it is submitted again.  STOP_AFTER submissions end this call early (for tests).
    """
    state.mkdir(parents=True, exist_ok=True)
    st = load_state(state)
    if st["seed"] is None:
        st["seed"] = seed
    st["target"] = n
    if st["seed"] != seed:
        raise SystemExit(f"{state} holds a run with seed {st['seed']}, not {seed}")
    submit = submit or slurm_submit(state)
    active = active or slurm_active
    find = find or slurm_find
    done = errors = 0
    while st["next"] < n and (stop_after is None or done < stop_after):
        job = draw_job(seed, st["next"])
        try:
            job_id = _submit_one(job, st, state, submit, active, find, sleep, max_active)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            errors += 1  # a busy slurmctld: wait, then look the pending job up before retrying
            if errors > MAX_ERRORS:
                raise
            print(f"job {job['index']}: {exc}; retrying", file=sys.stderr)
            sleep(5.0)
            continue
        errors = 0
        st["jobs"].append({"index": job["index"], "job_id": job_id, "submit_time": clock()})
        st["next"], st["pending"] = job["index"] + 1, None
        save_state(state, st)
        done += 1
    return st


def _submit_one(job, st, state, submit, active, find, sleep, max_active) -> int:
    job_id = find(job) if st["pending"] == job["index"] else None
    while job_id is None and active() >= max_active:
        sleep(1.0)
    if job_id is None:
        sleep(float(np.random.default_rng([st["seed"], job["index"], 7]).exponential(0.3)))
        st["pending"] = job["index"]
        save_state(state, st)
        job_id = submit(job)
    return job_id


# --------------------------------------------------------------------------------------------
# Export.


def export(state: Path, out: Path, chunk: int = 200) -> dict[str, int]:
    """Write sacct.txt.gz (real sacct, header, jobs and steps) and generator.jsonl.gz."""
    from collectors.slurm.sacct import RECONCILE_FIELDS

    st = load_state(state)
    out.mkdir(parents=True, exist_ok=True)
    ids = [j["job_id"] for j in st["jobs"]]
    parts = []
    for k in range(0, len(ids), chunk):
        argv = ["sacct", "--parsable2", "-D", "--allusers", "-o", ",".join(RECONCILE_FIELDS)]
        argv += ["-j", ",".join(map(str, ids[k : k + chunk]))]
        text = _run(argv + ([] if k == 0 else ["--noheader"]), timeout=300)
        parts.append(text if text.endswith("\n") or not text else text + "\n")
    with gzip.open(out / "sacct.txt.gz", "wt", encoding="utf-8") as f:
        f.write("".join(parts))
    with gzip.open(out / "generator.jsonl.gz", "wt", encoding="utf-8") as f:
        for rec in st["jobs"]:
            job = draw_job(st["seed"], rec["index"])
            row = {k: job[k] for k in _EXPORT_KEYS}
            row.update(job_id=rec["job_id"], submit_time=rec["submit_time"])
            row["intended_outcome"] = job["outcome"]
            f.write(json.dumps(row, sort_keys=True) + "\n")
    counts = write_readme(out, state)
    return {"jobs": len(ids), "ended": sum(counts["all"].values())}


def ended_outcomes(out: Path) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
    """The exported generator rows, and final_from_sacct of each ended job by job id."""
    from aggregator.jobs.fields import final_from_sacct
    from collectors.slurm.sacct import parse

    with gzip.open(out / "sacct.txt.gz", "rt", encoding="utf-8") as f:
        rows = parse(f.read(), source=str(out / "sacct.txt.gz"))
    with gzip.open(out / "generator.jsonl.gz", "rt", encoding="utf-8") as f:
        gen = [json.loads(line) for line in f]
    by_id: dict[int, list[dict[str, str]]] = {}
    for row in rows:
        by_id.setdefault(int(row["JobIDRaw"].split(".")[0]), []).append(row)
    real = {}
    for g in gen:
        final = final_from_sacct(by_id.get(g["job_id"], []), None)
        if final is not None:
            real[g["job_id"]] = final
    return gen, real


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (ties share their rank): P(score of a failure > a success)."""
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]
    pos = int(y.sum())
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * (len(y) - pos)))


def write_readme(out: Path, state: Path) -> dict[str, dict[str, int]]:
    """README.md of an exported dataset: how it was made and its counts per outcome and user."""
    gen, finals = ended_outcomes(out)
    real = {job_id: final["outcome"] for job_id, final in finals.items()}
    last_end = max((f["end_time"] or 0 for f in finals.values()), default=0)
    target = load_state(state).get("target", len(gen))
    counts: dict[str, dict[str, int]] = {"all": {}}
    for g in gen:
        if g["job_id"] in real:
            for key in (g["user"], "all"):
                per = counts.setdefault(key, {})
                per[real[g["job_id"]]] = per.get(real[g["job_id"]], 0) + 1
    outcomes = [
        o
        for o in (
            "COMPLETED",
            "FAILED",
            "OUT_OF_MEMORY",
            "TIMEOUT",
            "CANCELLED",
            "NODE_FAIL",
            "PREEMPTED",
            "OTHER",
        )
        if counts["all"].get(o)
    ]
    ended = [g for g in gen if g["job_id"] in real]
    y = np.array([real[g["job_id"]] not in ("COMPLETED", "CANCELLED") for g in ended])
    p = np.array([g["p_fail"] for g in ended])
    agree = sum(real[g["job_id"]] == g["intended_outcome"] for g in ended)
    submits = [g["submit_time"] for g in gen]
    version = _run(["sacct", "--version"]).strip()
    lines = [
        f"# {out.name or VERSION}: real jobs from the workload generator",
        "",
        "Recorded on the dev cluster (docs/dev-cluster.md) with",
        "",
        "```sh",
        f"python -m workload run --jobs {target} --state {state}",
        f"python -m workload export --state {state} --out {out}/",
        "```",
        "",
        f"- seed {gen[0]['seed'] if gen else DEFAULT_SEED}; {version}; submitted "
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(min(submits)))} to "
        f"{time.strftime('%H:%M UTC', time.gmtime(max(submits)))}; the last job ended "
        f"{(last_end - min(submits)) / 60:.0f} minutes after the first was submitted"
        if gen
        else "- nothing submitted",
        f"- {len(gen)} jobs submitted, {len(ended)} ended; the real outcome is the intended one "
        f"for {agree} of them",
        f"- failure rate {y.mean():.1%}; mean p_fail {p.mean():.3f}; AUC of p_fail on the real "
        f"outcomes {auc(y, p):.3f}"
        if len(ended) and 0 < y.sum() < len(y)
        else "- no outcomes",
        "",
        "`sacct.txt.gz` is `sacct --parsable2 -D` (header, jobs and steps, fields RECONCILE_FIELDS "
        "of collectors/slurm/sacct.py); `generator.jsonl.gz` has one line per job (see "
        "docs/workload.md).",
        "",
        "| User | Habit | Ended | " + " | ".join(outcomes) + " |",
        "|---|---|---|" + "---|" * len(outcomes),
    ]
    for key in [u.name for u in USERS if u.name in counts] + ["all"]:
        habit = USER_BY_NAME[key].habit if key in USER_BY_NAME else ""
        per = counts[key]
        cells = " | ".join(str(per.get(o, 0)) for o in outcomes)
        lines.append(f"| {key} | {habit} | {sum(per.values())} | {cells} |")
    (out / "README.md").write_text("\n".join(lines) + "\n")
    return counts


_EXPORT_KEYS = (
    "index",
    "seed",
    "user",
    "account",
    "partition",
    "job_name",
    "job_type",
    "mem_mb",
    "cpus",
    "nodes",
    "time_limit_min",
    "p_fail",
    "p_oom",
    "p_timeout",
    "p_error",
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m workload", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="submit the workload to the cluster (resumable)")
    r.add_argument("--jobs", type=int, required=True)
    r.add_argument("--state", type=Path, required=True)
    r.add_argument("--seed", type=int, default=DEFAULT_SEED)
    r.add_argument("--max-active", type=int, default=MAX_ACTIVE)
    e = sub.add_parser("export", help="write sacct.txt.gz and generator.jsonl.gz")
    e.add_argument("--state", type=Path, required=True)
    e.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.cmd == "run":
        ensure_users()
        setup_state(args.state)
        st = run(args.jobs, args.state, args.seed, max_active=args.max_active)
        print(f"submitted {len(st['jobs'])} jobs; next index {st['next']}", file=sys.stderr)
    else:
        print(json.dumps(export(args.state, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
