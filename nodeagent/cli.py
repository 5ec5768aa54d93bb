"""`nomade-agent`: the per-node daemon, in the foreground for a service manager."""

from __future__ import annotations

import json
import os
import signal
import sys

import click

from nomade_common import config as cfgmod
from nomade_common.errors import ConfigError


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
@click.option(
    "--make-key",
    is_flag=True,
    help="make this node's CURVE key pair in security.keys_dir if it has none, print "
    "`NODE PUBLIC_KEY` (what `nomadectl keys add` takes) and exit",
)
@click.option("--force", is_flag=True, help="with --make-key: replace an existing pair")
def main(config_path, node, once, log_level, ledger, make_key, force) -> None:
    """Run the NØMADE node agent until SIGTERM or SIGINT."""
    os.umask(0o077)  # whatever it makes is its own (outbox, verdicts): modes are widened by name
    cfg = cfgmod.load_for_daemon("nomade-agent", config_path, log_level)
    if make_key:
        _make_key(cfg, node or cfg.agent.node_name(), force)
        return
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

    if cfg.security.curve != "off":
        _check_keys(cfg, node or cfg.agent.node_name())
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


def _make_key(cfg: cfgmod.Config, node: str, force: bool) -> None:
    from . import curvekeys

    os.umask(0o022)  # the public half is for everyone (0644); the secret one is made 0600
    try:
        click.echo(curvekeys.make(cfg.security, node, force))
    except (ConfigError, OSError) as exc:
        click.echo(f"nomade-agent: cannot make the key: {exc}", err=True)
        sys.exit(2)


def _check_keys(cfg: cfgmod.Config, node: str) -> None:
    """Both CURVE keys present and usable, or one line naming the file, and exit 2."""
    from . import curvekeys

    try:
        curvekeys.load(cfg.security, node)
    except ConfigError as exc:
        click.echo(f"nomade-agent: {exc}", err=True)
        sys.exit(2)
