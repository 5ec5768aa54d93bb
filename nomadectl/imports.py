"""`nomadectl import sacct`: bootstrap the job history from a site's accounting (docs/import.md)."""

from __future__ import annotations

import click

from aggregator.jobs import importer
from nomade_common.errors import ParseError

from . import base
from .base import main


@main.group("import")
def import_group() -> None:
    """Bootstrap the job history from a site's accounting (see docs/import.md)."""


@import_group.command("sacct")
@click.argument("files", nargs=-1, metavar="[FILE]...")
@click.option("--fields", default=None, help="columns of a file without header (default: NØMADE's)")
@click.option("--delimiter", default=None, help="default: guessed ('|', '☃', '^|^', ...)")
@click.option("--start", type=click.DateTime(), default=None, help="run the local sacct from then")
@click.option("--end", type=click.DateTime(), default=None, help="with --start (default: now)")
@click.pass_context
def import_sacct(ctx, files, fields, delimiter, start, end) -> None:
    """Import finished jobs from sacct output (FILEs: --parsable2 text or --json, '-' or *.gz)
    or from the local sacct; one line per input, exit 2 if any input was rejected."""
    cfg = base.config(ctx)
    if bool(files) == (start is not None) or (end and not start):
        raise click.UsageError("give FILE... or --start (with an optional --end), not both")
    db, cluster = cfg.database, cfg.general.cluster_name
    total, rejected = importer.Summary(), 0
    try:
        if files:
            cols = fields.split(",") if fields else None
            stdin = click.get_text_stream("stdin")
            results = importer.import_files(files, db, cluster, cols, delimiter, stdin)
        else:
            summary = importer.import_range(cfg.aggregator.sacct, db, cluster, start, end)
            results = iter([(importer.range_source(start, end), summary)])
        for source, result in results:
            if isinstance(result, ParseError):
                rejected += 1
                click.echo(importer.error_line(result), err=True)
            else:
                total.add(result)
                click.echo(result.line(source))
    except ParseError as exc:  # the local sacct's output
        rejected += 1
        click.echo(importer.error_line(exc), err=True)
    except (OSError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    if total.imported:
        click.echo("\n".join(total.outcome_lines()))
    ctx.exit(2 if rejected else 0)
