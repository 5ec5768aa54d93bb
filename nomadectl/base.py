"""nomadectl's command group and what every command shares: the configuration, the store (root
reads it itself) or the aggregator's API (everyone else), and printing a view as text or JSON.

The command modules beside this one register their commands on `main`."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from aggregator import store
from nomade_common import config as cfgmod
from nomade_common.errors import ConfigError
from nomade_common.text import TerminalText

NO_DATABASE = "{}: no database yet (run nomadectl init)"


def config(ctx: click.Context) -> cfgmod.Config:
    """The configuration, with the environment's NOMADE_SECTION__KEY overrides."""
    try:
        return cfgmod.load(ctx.obj["config"], os.environ)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def existing(cfg: cfgmod.Config) -> str:
    """The store's path, once `nomadectl init` has made it."""
    if not Path(cfg.database).exists():
        raise click.ClickException(NO_DATABASE.format(cfg.database))
    return cfg.database


def reader(cfg: cfgmod.Config):
    """A read-only connection to the store."""
    existing(cfg)
    try:
        return store.connect(cfg.database, readonly=True)
    except store.StoreError as exc:
        raise click.ClickException(f"{cfg.database}: cannot open ({exc})") from None


def writer(cfg: cfgmod.Config):
    """A write connection to the store (migrated), for root's administrative commands."""
    return store.open_store(existing(cfg))


def from_store() -> bool:
    """Root reads the store itself (so root's nomadectl on the head node works with the
    aggregator or munged down); everyone else asks the aggregator's API, as themselves."""
    return os.geteuid() == 0


def api(cfg: cfgmod.Config, path: str, params: dict | None = None, *, none_if_404: bool = False):
    """A signed GET of the aggregator's API; a refusal or no answer is one line."""
    from aggregator.admin.apiclient import ApiError, get

    try:
        return get(cfg, path, params)
    except ApiError as exc:
        if exc.status == 404 and none_if_404:
            return None
        raise click.ClickException(str(exc)) from None


def api_post(cfg: cfgmod.Config, path: str, obj: dict):
    """A signed POST to the aggregator's API, as this user; a refusal or no answer is one
    line."""
    from aggregator.admin.apiclient import ApiError, post

    try:
        return post(cfg, path, obj)
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None


def view(ctx: click.Context, path: str, local):
    """A read view: LOCAL(connection) from the store as root, else the API's PATH."""
    cfg = config(ctx)
    return local(reader(cfg)) if from_store() else api(cfg, path)


def emit(obj, as_json: bool, human) -> None:
    click.echo(json.dumps(obj, indent=1, sort_keys=True, default=str) if as_json else human(obj))


def since(text: str | None) -> float | None:
    """'2h', '3d', '30m' or an ISO date."""
    if not text:
        return None
    units = {"m": 60, "h": 3600, "d": 86400}
    if text[-1] in units and text[:-1].isdigit():
        return time.time() - int(text[:-1]) * units[text[-1]]
    try:
        from datetime import datetime

        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise click.BadParameter(
            f"expected 30m, 2h, 3d or a date like 2026-11-24, got {text!r}"
        ) from None


class _Commands(click.Group):
    """nomadectl's commands, each failing in one line: a file only root (or the aggregator's
    user) may touch, or a package this host lacks, is named with what to do instead.

    Whatever a command prints reaches the terminal without control characters: a job name, a
    node name or a file's content is the user's, and an escape sequence in it would act on the
    administrator's terminal.  (JSON output keeps them, escaped as JSON escapes them.)"""

    def main(self, *args, **kwargs):
        out, err = sys.stdout, sys.stderr
        if out is not None and not isinstance(out, TerminalText):
            sys.stdout = TerminalText(out)
        if err is not None and not isinstance(err, TerminalText):
            sys.stderr = TerminalText(err)
        try:
            return super().main(*args, **kwargs)
        finally:
            sys.stdout, sys.stderr = out, err

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PermissionError as exc:
            raise click.ClickException(
                f"{exc.filename or 'a file'}: permission denied (run this as root on the head "
                "node; other users see their jobs with nomadectl jobs, job, check and status, "
                "which ask the aggregator)"
            ) from None
        except ModuleNotFoundError as exc:
            training = exc.name in ("torch", "onnx", "skl2onnx", "matplotlib")
            extra = "train" if training else "aggregator"
            raise click.ClickException(
                f"nomadectl {ctx.invoked_subcommand}: needs the Python package {exc.name!r}, not "
                f"installed here (pip install 'nomade[{extra}]'"
                f"{'; torch==2.13.0' if extra == 'train' else ''})"
            ) from None


@click.group(cls=_Commands)
@click.option(
    "--config",
    default=None,
    help="nomade.toml (default: $NOMADE_CONFIG or /etc/nomade/nomade.toml)",
)
@click.pass_context
def main(ctx: click.Context, config: str | None) -> None:
    """NØMADE: monitoring and job-outcome prediction for Slurm clusters."""
    ctx.obj = {"config": config}
