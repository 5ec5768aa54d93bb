"""`nomade-agent`: the per-node daemon, in the foreground for a service manager."""

from __future__ import annotations

import json
import signal
import sys

import click

from nomade_common import config as cfgmod


@click.command()
@cfgmod.daemon_options
@click.option(
    "--node",
    default=None,
    help="Slurm node name (default: agent.node, $SLURMD_NODENAME, host name)",
)
@click.option("--once", is_flag=True, help="sample once, print the samples as JSON lines and exit")
@click.option(
    "--ledger", default=None, hidden=True, help="append every sample's (job, t) to FILE (tests)"
)
def main(config_path, node, once, log_level, ledger) -> None:
    """Run the NØMADE node agent until SIGTERM or SIGINT."""
    cfg = cfgmod.load_for_daemon("nomade-agent", config_path, log_level)
    if once:
        from .sampler import JobSampler

        sampler = JobSampler(
            node or cfg.agent.node_name(), cfg.agent.cgroup_root, cfg.agent.proc_root
        )
        for row in sampler.sample():
            click.echo(json.dumps(row, sort_keys=True))
        for problem in sampler.problems():
            click.echo(f"nomade-agent: {problem}", err=True)
        return
    from .agent import Agent

    try:
        agent = Agent(cfg, node, ledger)
    except OSError as exc:
        click.echo(f"nomade-agent: cannot start: {exc}", err=True)
        sys.exit(1)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    try:
        agent.run()
    finally:
        agent.close()
