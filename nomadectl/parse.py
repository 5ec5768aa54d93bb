"""`nomadectl parse KIND FILE`: what NØMADE reads from one captured output, as JSON lines."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import click

from nomade_common.errors import ParseError

from .base import main


@main.command()
@click.argument("kind")
@click.argument("path", type=click.Path(allow_dash=True))
def parse(kind: str, path: str) -> None:
    """Print what NØMADE reads from one captured output, as JSON lines
    (`nomadectl parse KIND FILE`)."""
    from collectors import registry as parsekinds
    from nomade_common import jsonin

    try:
        fn = parsekinds.parser(kind)
    except KeyError as exc:
        raise click.ClickException(exc.args[0]) from None
    source = "-" if path == "-" else path
    try:
        if kind in parsekinds.DIRECTORY_KINDS:
            if not Path(path).is_dir():
                click.echo(
                    f"nomadectl parse {kind}: {path}: expected a directory (a copy of the tree)",
                    err=True,
                )
                sys.exit(2)
            records = fn(path)
        else:
            stream = (
                io.TextIOWrapper(click.get_binary_stream("stdin"), "utf-8", "replace")
                if path == "-"
                else open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
            )
            with stream:
                text = stream.read()
            limit = jsonin.TOOL_OUTPUT_DEPTH
            if kind.endswith("-json") and jsonin.deeper_than(text, limit):
                raise ParseError(source, None, f"JSON nested deeper than {limit} levels")
            records = fn(text, source)
    except ParseError as exc:
        click.echo(f"nomadectl parse {kind}: {exc}", err=True)
        sys.exit(2)
    except RecursionError:  # a parser that recurses (XML, nested output) met deeper input
        click.echo(f"nomadectl parse {kind}: {source}: nested too deep to read", err=True)
        sys.exit(2)
    except OSError as exc:
        click.echo(f"nomadectl parse {kind}: {path}: cannot read ({exc.strerror or exc})", err=True)
        sys.exit(2)
    for record in records:
        click.echo(json.dumps(record, sort_keys=True, default=str))
