"""`nomadectl install-hooks|uninstall-hooks`: the Slurm hooks put in place and taken away
(the work is aggregator/admin/hooksetup.py's)."""

from __future__ import annotations

import click

from aggregator.admin import hooksetup

from . import base
from .base import main


@main.command("install-hooks")
@click.option("--prefix", default=None, help="where to install (default: hooks.prefix)")
@click.option(
    "--include",
    default=None,
    help="also write the slurm.conf lines to this file (an Include of slurm.conf)",
)
@click.option(
    "--slurm-user",
    default="slurm",
    show_default=True,
    help="SlurmUser, owner of the hooks' state directory",
)
@click.pass_context
def install_hooks(ctx, prefix, include, slurm_user) -> None:
    """Install the Slurm hooks and print the slurm.conf lines that enable them."""
    unset_before = hooksetup.controller_hooks_unset()
    try:
        lines = hooksetup.install(base.config(ctx), prefix, include, slurm_user)
    except OSError as exc:
        raise click.ClickException(f"cannot install hooks: {exc}") from None
    click.echo("\n".join(lines))
    if include:
        click.echo(f"# written to {include}; apply with: scontrol reconfigure", err=True)
    if unset_before:
        click.echo(
            "# slurmctld has no PrologSlurmctld configured now: if it started without one, "
            "restart slurmctld once after `scontrol reconfigure` (Slurm decides at its start "
            "whether to run PrologSlurmctld and EpilogSlurmctld at all; running jobs survive "
            "a restart; docs/hooks.md)",
            err=True,
        )


@main.command("uninstall-hooks")
@click.option("--prefix", default=None)
@click.option(
    "--no-reconfigure",
    is_flag=True,
    help=(
        "do not run scontrol reconfigure (then remove NØMADE's lines from slurm.conf and"
        " reconfigure first)"
    ),
)
@click.pass_context
def uninstall_hooks(ctx, prefix, no_reconfigure) -> None:
    """Remove the hooks that install-hooks wrote: restore the include file, let Slurm reread
    its configuration, then delete the files (a hook Slurm still names must not vanish)."""
    removed = hooksetup.uninstall(
        base.config(ctx), prefix, None if no_reconfigure else hooksetup.slurm_reconfigure
    )
    click.echo("\n".join(f"removed {r}" for r in removed) or "no NØMADE hooks installed there")
