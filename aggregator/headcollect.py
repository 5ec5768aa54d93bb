"""The head-node collectors, run by nomade-aggregator (nomade_common/collect.py's scheduler).

Slurm's view of the cluster (queue, partitions, nodes, fair share, scheduler health), license
servers, and finished jobs from sacct, read incrementally by end time.  Each is a thin read over a
pure parser in aggregator/parsers/ or nodeagent/collectors/licenses.py.  `--json` is used where the
installed Slurm answers it (asked once per command); squeue is read as text: its `-o` format
carries every field NØMADE keeps, and Slurm 22.05's `squeue --json` ignores `-t` and dumps
finished jobs too, which on a busy cluster is many times the output.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from nodeagent.collectors import licenses
from nomade_common.collect import Collector, CollectorError, missing_tool, run_tool
from nomade_common.config import Config

from . import importer
from .parsers import scontrol, sdiag, sinfo, squeue, sshare

SLURM_TIMEOUT = 60.0
ACTIVE_STATES = "PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING,REQUEUED,RESIZING"


def _json_works(state: dict[str, Any], argv: list[str]) -> bool:
    """Whether ARGV + --json answers on this Slurm (asked once; a failure means text)."""
    if "json" not in state:
        try:
            run_tool([*argv, "--json"], SLURM_TIMEOUT)
            state["json"] = True
        except CollectorError:
            state["json"] = False
    return bool(state["json"])


def read_queue(cfg: Config, state: dict[str, Any]) -> list[dict[str, Any]]:
    argv = [cfg.aggregator.squeue, "-a", "-t", ACTIVE_STATES, "-o", squeue.COLLECTOR_FORMAT]
    return squeue.records(run_tool(argv, SLURM_TIMEOUT), "squeue")


def read_partitions(cfg: Config, state: dict[str, Any]) -> list[dict[str, Any]]:
    if _json_works(state, ["sinfo"]):
        return sinfo.records_json(run_tool(["sinfo", "--json"], SLURM_TIMEOUT), "sinfo --json")
    argv = ["sinfo", "-N", "-o", sinfo.COLLECTOR_FORMAT]
    return sinfo.records(run_tool(argv, SLURM_TIMEOUT), "sinfo -N -o")


def read_node_state(cfg: Config, state: dict[str, Any]) -> list[dict[str, Any]]:
    argv = [cfg.aggregator.scontrol, "show", "node", "-o"]
    return scontrol.node_records(run_tool(argv, SLURM_TIMEOUT), "scontrol show node -o")


def read_fairshare(cfg: Config, state: dict[str, Any]) -> list[dict[str, Any]]:
    return sshare.records(run_tool(["sshare", "-a", "-l", "-P"], SLURM_TIMEOUT), "sshare -a -l -P")


def read_scheduler(cfg: Config, state: dict[str, Any]) -> list[dict[str, Any]]:
    if _json_works(state, ["sdiag"]):
        return sdiag.records(run_tool(["sdiag", "--json"], SLURM_TIMEOUT), "sdiag --json")
    return sdiag.records(run_tool(["sdiag"], SLURM_TIMEOUT), "sdiag")


def read_licenses(cfg: Config, state: dict[str, Any]) -> list[dict[str, Any]]:
    """Every configured server's features; a server that does not answer is a server record
    with `up: False` (what an admin is alerted on), not a failure of the collector."""
    lc, out = cfg.collectors.licenses, []
    kinds = ((lc.flexlm_servers, licenses.read_lmstat, licenses.parse_lmstat, lc.lmutil, "lmstat", "lmgrd"),
             (lc.rlm_servers, licenses.read_rlmstat, licenses.parse_rlmstat, lc.rlmutil, "rlmstat", "rlm"))  # fmt: skip
    for servers, read, parse, tool, command, kind in kinds:
        for server in servers:
            text = read(server, tool)
            out += parse(text, f"{tool} {command} -a -c {server}") if text else [_down(server, kind)]
    return out


def _down(server: str, kind: str) -> dict[str, Any]:
    return {"record": "server", "name": server, "kind": kind, "host": None, "port": None,
            "master": None, "version": None, "up": False, "message": "did not answer"}  # fmt: skip


def absent_licenses(cfg: Config) -> str | None:
    lc = cfg.collectors.licenses
    return None if lc.flexlm_servers or lc.rlm_servers else "no license server configured"


def read_job_history(cfg: Config, state: dict[str, Any]) -> list[dict[str, Any]]:
    """Jobs that ended since the last run (less an overlap for late accounting records), as
    `jobs` rows for the store: never days of history each time."""
    now = time.time()
    since = state.get("since", now - 86400.0) - cfg.collectors.job_history.overlap_seconds
    start = datetime.fromtimestamp(since).replace(microsecond=0).isoformat()
    end = datetime.fromtimestamp(now).replace(microsecond=0).isoformat()
    argv = [*importer.sacct_argv(cfg.aggregator.sacct, start, end), "-s",
            "CA,CD,DL,F,NF,OOM,PR,TO,BF"]  # fmt: skip
    rows = importer.parse(run_tool(argv, 600.0), f"sacct -S {start} -E {end}")
    jobs, _summary = importer.convert_all(rows)
    state["since"] = now
    return jobs


HEAD_COLLECTORS: list[Collector] = [
    Collector("queue", read_queue, missing_tool("squeue", "no Slurm commands on this host"),
              "squeue: queue depth, pending reasons in words, wait times per partition"),
    Collector("partitions", read_partitions, missing_tool("sinfo", "no Slurm commands here"),
              "sinfo: partition and node states"),
    Collector("node_state", read_node_state, missing_tool("scontrol", "no Slurm commands here"),
              "scontrol show node: allocation, load, memory, drain reasons"),
    Collector("fairshare", read_fairshare, missing_tool("sshare", "no Slurm commands here"),
              "sshare: fair-share tree"),
    Collector("scheduler", read_scheduler, missing_tool("sdiag", "no Slurm commands here"),
              "sdiag: scheduler cycles, backfill, RPC load"),
    Collector("licenses", read_licenses, absent_licenses,
              "lmstat/rlmstat: features, in use, checkouts, expiry, server down"),
    Collector("job_history", read_job_history, missing_tool("sacct", "no accounting here"),
              "sacct: finished jobs, incrementally by end time"),
]
