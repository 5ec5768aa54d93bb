"""`nomadectl db backup`: a consistent copy of the store while the aggregator keeps writing."""

from __future__ import annotations

import click

from aggregator import store

from . import base
from .base import main


@main.group("db")
def db_group() -> None:
    """The store itself: a consistent backup while the aggregator runs."""


@db_group.command("backup")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="replace FILE if it exists")
@click.pass_context
def db_backup(ctx: click.Context, file: str, force: bool) -> None:
    """Copy the store to FILE (mode 0600) as of one moment, while the aggregator keeps writing;
    the copy is checked before it is put in place.  Restore: stop the aggregator, put the copy
    in place of the database (and remove its -wal and -shm files), start it."""
    cfg = base.config(ctx.find_root())
    database = base.existing(cfg)
    try:
        done = store.backup(database, file, force=force)
    except (OSError, store.StoreError) as exc:
        raise click.ClickException(f"db backup: {exc}") from None
    click.echo(
        f"{database} -> {done['file']}: {done['bytes'] / 1e6:.1f} MB, schema version "
        f"{done['schema_version']}, checked, in {done['seconds']} s"
    )
