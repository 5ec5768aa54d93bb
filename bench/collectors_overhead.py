"""CPU cost of every node collector at its default interval, as a share of one core.

Each node collector of collectors/registry.py is run, in this process, the way the agent's
collector thread runs it; CPU time is getrusage(RUSAGE_SELF) + getrusage(RUSAGE_CHILDREN), so
the tools it starts (iostat, mpstat, vmstat, nvidia-smi, ...) are counted.  Sources this machine
lacks are fed by stand-ins that replay real captures from ../shared/fixtures (a GPU through an
`nvidia-smi` script on PATH, NFS through a proc root whose self/mountstats is a capture, license
servers through an `lmutil`); a collector whose capture is absent is listed as not covered.

In the same run, the baseline: the same tools run bare by a shell loop (what any monitor that
reads them pays), so the ratio is what NØMADE's reading and parsing add.  The job sampler's own
cycle is bench/agent_overhead.py's.  Last line of stdout: one JSON object; `value` is the percent
of one core the node collectors take at their default intervals (goal <= 0.5).

    python bench/collectors_overhead.py [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from collectors.registry import NODE_COLLECTORS  # noqa: E402
from collectors.runner import run_one  # noqa: E402
from nomade_common import config  # noqa: E402

SHARED = Path(os.environ.get("NOMADE_SHARED_FIXTURES") or REPO.parent / "shared" / "fixtures")
GPU_XML = SHARED / "gpu" / "influxdata_telegraf" / "a100-sxm4-v12.xml"
MOUNTSTATS = SHARED / "procfs" / "prometheus_node_exporter" / "proc_10_mountstats"
LMSTAT = REPO / "tests" / "cases" / "lic-lmstat-handmade" / "input"


def cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def stand_ins(tmp: Path) -> tuple[Path, Path, list[str]]:
    """A bin directory of replaying tools and a proc root with captured NFS mounts."""
    bindir, proc, covered = tmp / "bin", tmp / "proc", []
    bindir.mkdir()
    (proc / "self").mkdir(parents=True)
    if GPU_XML.exists():
        (bindir / "nvidia-smi").write_text(f"#!/bin/sh\nexec cat {GPU_XML}\n")
        (bindir / "nvidia-smi").chmod(0o755)
        covered.append("gpu")
    if MOUNTSTATS.exists():
        text = MOUNTSTATS.read_text()
        (proc / "self" / "mountstats").write_text(text)
        mounts = [line.split() for line in text.splitlines() if line.startswith("device ")]
        (proc / "self" / "mountinfo").write_text(
            "".join(  # id parent dev root point opts - type src
                f"{i} 1 0:{i} / {m[4]} rw - {m[7]} {m[1]} rw\n"
                for i, m in enumerate(mounts, 30)
                if len(m) > 7
            )
        )
        covered.append("nfs")
    for name in ("pressure",):
        if Path("/proc", name).is_dir():
            shutil.copytree(f"/proc/{name}", proc / name)
    (bindir / "lmutil").write_text(f"#!/bin/sh\nexec cat {LMSTAT}\n")
    (bindir / "lmutil").chmod(0o755)
    return bindir, proc, covered


def bare_argv(name: str) -> list[str] | None:
    return {
        "iostat": ["iostat", "-x", "-y", "-k", "-o", "JSON", "1", "1"],
        "mpstat": ["mpstat", "-P", "ALL", "-o", "JSON", "1", "1"],
        "vmstat": ["vmstat", "-w", "1", "2"],
        "gpu": ["nvidia-smi", "-q", "-x"],
    }.get(name)


def measure(fn, runs: int) -> float:
    """Median CPU seconds of one call of FN over RUNS calls."""
    costs = []
    for _ in range(runs):
        start = cpu()
        fn()
        costs.append(cpu() - start)
    return statistics.median(costs)


def collectors_share(quick: bool) -> dict:
    """Every node collector's CPU per run and its share of one core at its default interval,
    beside the bare tools'; what could not be covered here, and why."""
    runs = 3 if quick else 15
    with tempfile.TemporaryDirectory(prefix="nomade-bench-") as tmp:
        bindir, proc, covered = stand_ins(Path(tmp))
        old_path = os.environ["PATH"]
        os.environ["PATH"] = f"{bindir}:{old_path}"
        try:
            cfg = config.parse("")
            cfg.agent.proc_root = str(proc)
            cfg.collectors.scratch = dataclasses.replace(
                cfg.collectors.scratch, enabled=True, paths=[tmp]
            )
            rows, total, bare_total, skipped = [], 0.0, 0.0, {}
            for c in NODE_COLLECTORS:
                every = getattr(cfg.collectors, c.name).interval_seconds
                why = c.absent(cfg)
                if why:
                    skipped[c.name] = why
                    continue
                state: dict = {}
                reading = run_one(c, cfg, state)  # warm-up: version probes, first imports
                assert reading.ok, (c.name, reading.error)
                ours = measure(lambda c=c, state=state: run_one(c, cfg, state), runs)
                argv = bare_argv(c.name)
                bare = (
                    measure(lambda argv=argv: subprocess.run(argv, capture_output=True), runs)
                    if argv
                    else 0.0
                )
                total, bare_total = total + 100 * ours / every, bare_total + 100 * bare / every
                rows.append((c.name, every, len(reading.records), ours, bare, 100 * ours / every))
        finally:
            os.environ["PATH"] = old_path
    return {
        "rows": rows,
        "percent": total,
        "bare_percent": bare_total,
        "skipped": skipped,
        "covered": covered,
    }


def report(r: dict) -> None:
    print(
        f"{'collector':<12}{'every':>8}{'records':>9}{'CPU/run':>11}{'bare tool':>11}{'% core':>9}"
    )
    for name, every, n, ours, bare, share in r["rows"]:
        print(
            f"{name:<12}{every:>7.0f}s{n:>9}{ours * 1e3:>9.1f}ms{bare * 1e3:>9.1f}ms{share:>9.4f}"
        )
    for name, why in r["skipped"].items():
        print(f"{name:<12} not covered: {why}")
    print(
        "stand-ins replaying real captures:"
        f" {', '.join(r['covered']) or 'none (no ../shared/fixtures)'}"
    )
    print(
        f"all node collectors at default intervals: {r['percent']:.4f}% of one core"
        f" (tools alone: {r['bare_percent']:.4f}%)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="finish in under 30 s")
    r = collectors_share(parser.parse_args().quick)
    report(r)
    total, bare = r["percent"], r["bare_percent"]
    print(
        json.dumps(
            {
                "bench": "collectors_overhead",
                "value": round(total, 4),
                "unit": "% of one core",
                "baseline": round(bare, 4),
                "ratio": round(total / bare, 3) if bare else None,
                "goal": "value <= 0.5",
                "collectors": [row[0] for row in r["rows"]],
                "not_covered": sorted(r["skipped"]),
            }
        )
    )


if __name__ == "__main__":
    main()
