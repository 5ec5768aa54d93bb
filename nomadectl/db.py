"""`nomadectl db`: what the store holds (`status`), a consistent backup while the aggregator keeps
writing, compaction and retention on demand."""

from __future__ import annotations

import os
import sys
import time

import click

from aggregator import store

from . import base, fmt
from .base import main


@main.group("db")
def db_group() -> None:
    """The store itself: its sizes, a consistent backup while the aggregator runs, compaction
    and retention on demand."""


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


@db_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="the figures as JSON")
@click.pass_context
def db_status(ctx: click.Context, as_json: bool) -> None:
    """What the store holds and how it keeps it: sizes, samples raw and reduced, the oldest raw
    sample, retention, what waits for compaction, and how far an old layout has been moved."""
    cfg = base.config(ctx.find_root())
    database = base.existing(cfg)
    conn = base.reader(cfg)
    try:
        with store.snapshot(conn):  # one moment: a compaction meanwhile counts nothing twice
            figures = store.sample_sizes(conn)
            figures["backlog"] = store.sample_backlog(conn)
            figures["old_layout_left"] = store.legacy_left(conn)
            figures["schema_version"] = store.schema_version(conn)
    except store.StoreError as exc:
        raise click.ClickException(f"db status: {database}: {exc}") from None
    a = cfg.aggregator
    figures["file_bytes"] = _size(database)
    figures["wal_bytes"] = _size(database + "-wal")
    figures["settings"] = {
        "samples_raw_retention_days": a.samples_raw_retention_days,
        "samples_compact_after_seconds": a.samples_compact_after_seconds,
        "samples_compact_backlog": a.samples_compact_backlog,
        "readings_retention_days": a.readings_retention_days,
    }
    base.emit(figures, as_json, lambda f: "\n".join(fmt_status(database, f)))


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def fmt_status(database: str, f: dict) -> list[str]:
    s, b = f["settings"], f["backlog"]
    oldest = fmt.when(f["raw_oldest"]) if f["raw_oldest"] else "none"
    lines = [
        f"Store {database}: {f['file_bytes'] / 1e6:.1f} MB (WAL {f['wal_bytes'] / 1e6:.1f} MB),"
        f" schema version {f['schema_version']}",
        f"Samples: {f['raw_samples']:,} raw of {f['raw_jobs']:,} jobs in"
        f" {f['sample_chunks']['rows'] - f['reduced_series']:,} chunks, oldest {oldest}"
        f" (kept {s['samples_raw_retention_days']:g} days after a job's last sample);"
        f" {f['reduced_samples']:,} in the reduced curves of {f['reduced_series']:,} job-nodes",
        f"Waiting for compaction: {b['envelopes']:,} envelopes, {b['samples']:,} samples"
        + (f", oldest {time.time() - b['oldest']:.0f} s ago" if b["oldest"] else "")
        + f" (compacted after {s['samples_compact_after_seconds']:g} s, or sooner past"
        f" {s['samples_compact_backlog']:,} envelopes)",
    ]
    if f["old_layout_left"] is not None:
        lines.append(
            f"Old layout: {f['old_layout_left']:,} samples still to move into chunks"
            " (the aggregator moves them; `nomadectl db compact` does it now)"
        )
    lines.append(f"Readings: kept {s['readings_retention_days']:g} days")
    lines.append(f"{'TABLE':<18} {'ROWS':>12} {'MB':>9}")
    for table in ("sample_log", "sample_chunks", "sample_summaries", "samples_v1", "readings"):
        if table in f:
            size = f[table]["bytes"]
            mb = f"{size / 1e6:9.2f}" if size is not None else f"{'?':>9}"
            lines.append(f"{table:<18} {f[table]['rows']:>12,} {mb}")
    return lines


@db_group.command("compact")
@click.pass_context
def db_compact(ctx: click.Context) -> None:
    """Compact every landed sample into chunks now, and move what an older NØMADE stored one
    row per sample; in short transactions, beside a running aggregator or without it."""
    cfg = base.config(ctx.find_root())
    conn = base.writer(cfg)
    tty = sys.stderr.isatty()
    moved = migrated = 0
    try:
        while True:
            with store.transaction(conn):
                n = store.compact(conn, time.time() + 1, 50_000)
            moved += n
            if not n:
                break
        total = store.legacy_left(conn)
        while store.legacy_left(conn) is not None:
            with store.transaction(conn):
                n, left = store.migrate_v1(conn, 50_000)
            migrated += n
            if total and left is not None and tty:
                click.echo(
                    f"\rold layout: {100 * (total - left) // total}% moved", err=True, nl=False
                )
        if tty and total:
            click.echo("", err=True)
    except store.StoreError as exc:
        raise click.ClickException(f"db compact: {exc} (what was done before is kept)") from None
    click.echo(f"compacted {moved:,} landed samples; moved {migrated:,} samples of the old layout")


@db_group.command("prune")
@click.option(
    "--days",
    type=click.FloatRange(0.0, 3650),
    help="reduce the raw samples of jobs whose last sample is older than this"
    " (default: aggregator.samples_raw_retention_days)",
)
@click.pass_context
def db_prune(ctx: click.Context, days: float | None) -> None:
    """Apply the retention now: raw samples past it become a summary and a reduced curve per
    job and node; readings past readings_retention_days are removed."""
    cfg = base.config(ctx.find_root())
    conn = base.writer(cfg)
    a = cfg.aggregator
    cutoff = time.time() - (a.samples_raw_retention_days if days is None else days) * 86400
    reduced = 0
    try:
        while True:
            with store.transaction(conn):
                n = store.reduce_old(conn, cutoff, 200)
            reduced += n
            if n < 200:
                break
        with store.transaction(conn):
            store.prune_readings(conn, time.time() - a.readings_retention_days * 86400)
    except store.StoreError as exc:
        raise click.ClickException(f"db prune: {exc} (what was done before is kept)") from None
    click.echo(
        f"reduced the raw samples of {reduced:,} job-nodes older than {fmt.when(cutoff)}"
        " to summaries and reduced curves; readings older than"
        f" {a.readings_retention_days:g} days removed"
    )
