"""CPU cost of the node agent, sampler and every collector, as a share of one core.

The sampler: one cycle over 64 jobs against the bare cost of reading the same files.  The
collectors: bench/collectors_overhead.py (every node collector, stand-ins replaying real captures
for what this machine lacks, child processes counted), against the same tools run bare.  `value`
is the whole agent at its default intervals in percent of one core.

Builds, in a temporary directory, a v1 cgroup tree of 64 Slurm jobs for node1 copied from the
real capture in tests/fixtures/cgroup/v1-slurm-22.05-node1-live, and a fake /proc with a few
processes per job made from that capture's /proc/<pid>/{io,stat}.  Then, in the same run:

* agent: JobSampler.sample() over all jobs (steady state, after a warm-up cycle);
* floor: os.open/os.read/os.close of every file the agent reads in a cycle, nothing else.

CPU time is resource.getrusage(RUSAGE_SELF) + RUSAGE_CHILDREN, summed over batches of cycles
(getrusage can be tick-grained) with the two interleaved; the medians per cycle are reported.
The agent's RSS is ru_maxrss of a fresh interpreter that imports nodeagent.sampler and runs
cycles over the same tree.  The last line of stdout is one JSON object.

    python bench/agent_overhead.py [--quick] [--jobs 64] [--procs 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from collectors_overhead import collectors_share, cpu, report  # noqa: E402

from nodeagent.sampler import JobSampler  # noqa: E402
from nomade_common import config  # noqa: E402

LIVE = REPO / "tests" / "fixtures" / "cgroup" / "v1-slurm-22.05-node1-live"
LIVE_JOB = "slurm_node1/uid_2001/job_3"
UIDS = (2001, 2002, 2003, 2004)


def build_tree(root: Path, jobs: int, procs: int) -> None:
    io_text = (LIVE / "proc" / "6975" / "io").read_text()
    stat_fields = (LIVE / "proc" / "6976" / "stat").read_text().rpartition(")")[2].split()
    pid = 10000
    for job in range(1, jobs + 1):
        uid = UIDS[job % len(UIDS)]
        pids = list(range(pid, pid + procs))
        pid += procs
        for controller in ("memory", "cpuacct"):
            dest = root / "cg" / controller / "slurm_node1" / f"uid_{uid}" / f"job_{job}"
            shutil.copytree(LIVE / controller / LIVE_JOB, dest)
            for path in dest.rglob("cgroup.procs"):
                path.write_text("")
            task = dest / "step_batch" / "task_0"
            (task / "cgroup.procs").write_text("".join(f"{p}\n" for p in pids[1:]))
            (dest / "step_batch" / "cgroup.procs").write_text(f"{pids[0]}\n")
        for p in pids:
            fields = list(stat_fields)
            fields[1], fields[19] = str(pids[0] if p != pids[0] else 1), str(p)
            d = root / "proc" / str(p)
            d.mkdir(parents=True)
            (d / "io").write_text(io_text)
            (d / "stat").write_text(f"{p} (python3) " + " ".join(fields) + "\n")


def files_read(root: Path, sampler: JobSampler) -> list[str]:
    """Every file the agent reads in one steady-state cycle."""
    layout = sampler._layout
    assert layout is not None
    out = []
    for job in sampler._jobs.values():
        out += job.files
        for controller, name in layout.files:
            path = f"{job.dirs.get(controller)}/{name}"
            if os.path.exists(path):
                out.append(path)
        for (pid, _start), _ in job.procs.items():
            out += [f"{root}/proc/{pid}/io", f"{root}/proc/{pid}/stat"]
    return out


def floor_cycle(paths: list[str]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        os.read(fd, 65536)
        os.close(fd)


def per_cycle(run, cycles: int) -> float:
    start = cpu()
    for _ in range(cycles):
        run()
    return (cpu() - start) / cycles


RSS_SCRIPT = """
import resource, sys
sys.path.insert(0, sys.argv[1])
from nodeagent.sampler import JobSampler
s = JobSampler("node1", sys.argv[2] + "/cg", sys.argv[2] + "/proc")
for _ in range(int(sys.argv[3])):
    rows = s.sample()
assert len(rows) == int(sys.argv[4]), len(rows)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="finish in well under 30 s")
    parser.add_argument("--jobs", type=int, default=64)
    parser.add_argument("--procs", type=int, default=4, help="processes per job")
    args = parser.parse_args()
    batches, cycles = (15, 10) if args.quick else (60, 20)

    with tempfile.TemporaryDirectory(prefix="nomade-bench-") as tmp:
        root = Path(tmp)
        build_tree(root, args.jobs, args.procs)
        sampler = JobSampler("node1", str(root / "cg"), str(root / "proc"))
        for _ in range(3):  # warm-up: discovery, walks, first sight of every process
            rows = sampler.sample()
        assert len(rows) == args.jobs and all(r["nprocs"] == args.procs for r in rows)
        paths = files_read(root, sampler)

        agent, floor = [], []
        for _ in range(batches):
            agent.append(per_cycle(sampler.sample, cycles))
            floor.append(per_cycle(lambda: floor_cycle(paths), cycles))
        problems = sampler.problems()
        assert not problems, problems

        rss_cycles = 20 if args.quick else 100
        out = subprocess.run(
            [sys.executable, "-c", RSS_SCRIPT, str(REPO), tmp, str(rss_cycles), str(args.jobs)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        rss_mb = int(out.split()[-1]) / 1024

    coll = collectors_share(args.quick)
    agent_ms, floor_ms = statistics.median(agent) * 1e3, statistics.median(floor) * 1e3
    interval = config.Agent().interval_seconds
    sampler_pct, floor_pct = agent_ms / 1e3 / interval * 100, floor_ms / 1e3 / interval * 100
    total_pct, base_pct = sampler_pct + coll["percent"], floor_pct + coll["bare_percent"]
    print(f"jobs {args.jobs}, processes per job {args.procs}, files read per cycle {len(paths)}")
    print(f"agent cycle  {agent_ms:.3f} ms CPU (median of {batches} batches of {cycles})")
    print(f"floor cycle  {floor_ms:.3f} ms CPU (open/read/close of the same files)")
    print(f"agent RSS    {rss_mb:.1f} MB (fresh interpreter, {rss_cycles} cycles)")
    report(coll)
    print(
        f"whole agent at default intervals: sampler {sampler_pct:.4f}%"
        f" + collectors {coll['percent']:.4f}%"
        f" = {total_pct:.4f}% of one core (bare reads and tools: {base_pct:.4f}%)"
    )
    result = {
        "bench": "agent_overhead",
        "value": round(total_pct, 4),
        "unit": "% of one core",
        "baseline": round(base_pct, 4),
        "ratio": round(total_pct / base_pct, 3),
        "goal": (
            "value <= 0.5 (% of one core, every collector on, default intervals);"
            " sampler ratio <= 2.0; rss <= 30 MB"
        ),
        "sampler_cycle_ms": round(agent_ms, 3),
        "sampler_floor_ms": round(floor_ms, 3),
        "sampler_ratio": round(agent_ms / floor_ms, 3),
        "collectors_percent": round(coll["percent"], 4),
        "collectors": [row[0] for row in coll["rows"]],
        "collectors_not_covered": sorted(coll["skipped"]),
        "rss_mb": round(rss_mb, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
