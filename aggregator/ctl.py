"""`nomadectl`: the administrator's command line.  Each command is a thin shell over a module."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import sys
import time
from pathlib import Path

import click

from nomade_common import config as cfgmod
from nomade_common.errors import ConfigError, ParseError
from nomade_common.text import TerminalText

from . import (
    clusterviews,
    daemons,
    hooksetup,
    importer,
    query,
    render,
    render_cluster,
    store,
    syscheck,
)


def _cfg(ctx: click.Context) -> cfgmod.Config:
    try:
        return cfgmod.load(ctx.obj["config"])
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _reader(cfg: cfgmod.Config) -> sqlite3.Connection:
    if not Path(cfg.database).exists():
        raise click.ClickException(f"{cfg.database}: no database yet (run nomadectl init)")
    try:
        return store.connect(cfg.database, readonly=True)
    except sqlite3.Error as exc:
        raise click.ClickException(f"{cfg.database}: cannot open ({exc})") from None


def _from_store() -> bool:
    """Root reads the store itself (so root's nomadectl on the head node works with the
    aggregator or munged down); everyone else asks the aggregator's API, as themselves."""
    return os.geteuid() == 0


def _api(cfg: cfgmod.Config, path: str, params: dict | None = None, *, none_if_404: bool = False):
    """A signed GET of the aggregator's API; a refusal or no answer is one line."""
    from .apiclient import ApiError, get

    try:
        return get(cfg, path, params)
    except ApiError as exc:
        if exc.status == 404 and none_if_404:
            return None
        raise click.ClickException(str(exc)) from None


def _view(ctx: click.Context, path: str, local):
    """A read view: LOCAL(connection) from the store as root, else the API's PATH."""
    cfg = _cfg(ctx)
    return local(_reader(cfg)) if _from_store() else _api(cfg, path)


def _emit(obj, as_json: bool, human) -> None:
    click.echo(json.dumps(obj, indent=1, sort_keys=True, default=str) if as_json else human(obj))


def _since(text: str | None) -> float | None:
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


@main.command()
@click.pass_context
def init(ctx: click.Context) -> None:
    """Create the data directory, the database (applies pending migrations) and the
    aggregator's key pair in security.keys_dir (made with CURVE off too: turning CURVE on in a
    running cluster starts by copying server.key to the nodes)."""
    cfg = _cfg(ctx)
    conn = store.open_store(cfg.database)
    click.echo(f"database {cfg.database}: schema version {store.schema_version(conn)}")
    conn.close()
    from . import keyscmd

    try:
        owner = keyscmd.service_owner(cfg.database)
        path, made = keyscmd.ensure_server_pair(cfg.security, owner)
    except OSError as exc:
        raise click.ClickException(
            f"cannot make the server key in {cfg.security.keys_dir}: {exc}"
        ) from None
    click.echo(f"server key {path}{' (new)' if made else ''}: copy it to every node's "
               f"{cfg.security.keys_dir}")  # fmt: skip


@main.command()
@click.option("--nodes", default=None, help="agents to start, by Slurm node name (comma-separated)")
@click.option("--only", type=click.Choice(["all", "aggregator", "agents"]), default="all")
@click.pass_context
def start(ctx: click.Context, nodes: str | None, only: str) -> None:
    """Start the aggregator and agents in the background (where there is no systemd)."""
    cfg = _cfg(ctx)
    names = nodes.split(",") if nodes else [cfg.agent.node_name()]
    try:
        started = daemons.start(cfg, names, only)
    except (RuntimeError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("\n".join(f"started {s}" for s in started) or "already running")


@main.command()
@click.option("--only", type=click.Choice(["all", "aggregator", "agents"]), default="all")
@click.pass_context
def stop(ctx: click.Context, only: str) -> None:
    """Stop what `nomadectl start` started."""
    stopped = daemons.stop(_cfg(ctx), only)
    click.echo("\n".join(f"stopped {s}" for s in stopped) or "nothing was running")


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Filesystems, queue, I/O, CPU, memory, nodes, licenses, agents, running jobs, ingest and
    each collector's runs and success rate."""
    cfg = _cfg(ctx)
    view = _view(ctx, "/api/v1/status", lambda c: {**query.status(c), **clusterviews.overview(c)})
    if "aggregator" not in view:  # read from the store: the running daemon says how it fares
        from . import apiclient

        try:
            view["aggregator"] = apiclient.call(
                cfg.hooks.aggregator_url, "GET", "/api/v1/aggregator", ca=cfg.security.tls_ca,
                munge_socket=cfg.security.munge_socket, timeout=3.0)  # fmt: skip
        except apiclient.ApiError as exc:
            view["aggregator"] = {"answering": False, "why": str(exc)}
    _emit(view, as_json, render_cluster.status)


@main.command("queue")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def queue_cmd(ctx: click.Context, as_json: bool) -> None:
    """Running and pending jobs per partition, and why each pending job waits."""
    _emit(_view(ctx, "/api/v1/queue", clusterviews.queue), as_json, render_cluster.queue)


@main.command("nodes")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def nodes_cmd(ctx: click.Context, as_json: bool) -> None:
    """Each node: Slurm state, allocation, load, drain reason, and its agent."""
    _emit(_view(ctx, "/api/v1/nodes", clusterviews.nodes), as_json, render_cluster.nodes)


@main.command("licenses")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def licenses_cmd(ctx: click.Context, as_json: bool) -> None:
    """License servers and features: issued, in use, by whom, expiry."""
    _emit(_view(ctx, "/api/v1/licenses", clusterviews.licenses), as_json, render_cluster.licenses)


@main.command("collect")
@click.option("--once", is_flag=True, required=True, help="one cycle (the daemons run them on schedule)")
@click.option("-C", "only", default=None, help="collectors to run, comma-separated (default: all enabled)")
@click.option("--json", "as_json", is_flag=True, help="JSON lines: one per record")
@click.pass_context
def collect(ctx: click.Context, once: bool, only: str | None, as_json: bool) -> None:
    """Run every collector once on this host and print what it read."""
    from .collectcmd import collect_once

    try:
        readings, skipped = collect_once(_cfg(ctx), only.split(",") if only else None)
    except KeyError as exc:
        raise click.UsageError(exc.args[0]) from None
    click.echo(render_cluster.collect(readings, skipped, as_json))
    if any(not r.ok for r in readings):
        sys.exit(1)


@main.command()
@click.option("--user", default=None)
@click.option("--state", default=None, help="outcome or Slurm state, e.g. FAILED, OUT_OF_MEMORY")
@click.option("--since", default=None, help="30m, 2h, 3d or a date")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def jobs(ctx, user, state, since, limit, as_json) -> None:
    """Recent jobs, newest first (a user sees only their own; root and admins see all)."""
    cfg, after = _cfg(ctx), _since(since)
    if _from_store():
        rows = query.jobs(_reader(cfg), user, state, after, limit)
    else:
        params = {"user": user, "state": state, "since": after, "limit": limit}
        rows = _api(cfg, "/api/v1/jobs", params)
    _emit(rows, as_json, render.jobs)


@main.command()
@click.argument("job_id", type=click.IntRange(0, 2**63 - 1))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def job(ctx: click.Context, job_id: int, as_json: bool) -> None:
    """One job: request, outcome, per-node CPU, memory and I/O, and a compact time series."""
    cfg = _cfg(ctx)
    if _from_store():
        found = query.job(_reader(cfg), job_id)
    else:
        found = _api(cfg, f"/api/v1/jobs/{job_id}", none_if_404=True)
    if found is None:
        mine = "" if _from_store() else " (or it is another user's)"
        raise click.ClickException(f"job {job_id} is not in the database{mine}")
    _emit(found, as_json, render.job)


@main.command("syscheck")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def syscheck_cmd(ctx: click.Context, as_json: bool) -> None:
    """What this host has for NØMADE, with the reason when something is missing."""
    checks = syscheck.run(_cfg(ctx))
    _emit([c.__dict__ for c in checks], as_json, lambda _: render.syscheck(checks))
    if any(c.status == "fail" for c in checks):
        sys.exit(1)


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
        lines = hooksetup.install(_cfg(ctx), prefix, include, slurm_user)
    except OSError as exc:
        raise click.ClickException(f"cannot install hooks: {exc}") from None
    click.echo("\n".join(lines))
    if include:
        click.echo(f"# written to {include}; apply with: scontrol reconfigure", err=True)
    if unset_before:
        click.echo("# slurmctld has no PrologSlurmctld configured now: if it started without one, "
                   "restart slurmctld once after `scontrol reconfigure` (Slurm decides at its start "
                   "whether to run PrologSlurmctld and EpilogSlurmctld at all; running jobs survive "
                   "a restart; docs/hooks.md)", err=True)  # fmt: skip


@main.command("uninstall-hooks")
@click.option("--prefix", default=None)
@click.option("--no-reconfigure", is_flag=True,
              help="do not run scontrol reconfigure (then remove NØMADE's lines from slurm.conf and reconfigure first)")  # fmt: skip
@click.pass_context
def uninstall_hooks(ctx, prefix, no_reconfigure) -> None:
    """Remove the hooks that install-hooks wrote: restore the include file, let Slurm reread
    its configuration, then delete the files (a hook Slurm still names must not vanish)."""
    removed = hooksetup.uninstall(
        _cfg(ctx), prefix, None if no_reconfigure else hooksetup.slurm_reconfigure
    )
    click.echo("\n".join(f"removed {r}" for r in removed) or "no NØMADE hooks installed there")


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
    cfg = _cfg(ctx)
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


def _existing(cfg: cfgmod.Config) -> str:
    """The store's path, once `nomadectl init` has made it."""
    if not Path(cfg.database).exists():
        raise click.ClickException(f"{cfg.database}: no database yet (run nomadectl init)")
    return cfg.database


def _writer_conn(cfg: cfgmod.Config) -> sqlite3.Connection:
    if not Path(cfg.database).exists():
        raise click.ClickException(f"{cfg.database}: no database yet (run nomadectl init)")
    return store.open_store(cfg.database)


@main.command()
@click.option("--epochs", default=25, show_default=True, help="GNN training epochs")
@click.option(
    "--activate",
    type=click.Choice(["if-better", "always", "never"]),
    default="if-better",
    show_default=True,
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def train(ctx: click.Context, epochs: int, activate: str, as_json: bool) -> None:
    """Train the job-outcome models on the stored finished jobs (needs torch): register the
    model, and activate it when it meets the activation rule and is not worse than the active
    one on the most recent jobs (docs/models.md)."""
    import contextlib
    import importlib.util

    # Checked before any work: a package found missing at export would waste the training.
    missing = [m for m in ("torch", "onnx", "skl2onnx") if importlib.util.find_spec(m) is None]
    if missing:
        raise click.ClickException(
            f"nomadectl train: needs {', '.join(missing)}, not installed here"
            " (pip install 'nomade[train]'; torch==2.13.0)"
        )
    cfg = _cfg(ctx)
    from . import training

    # TerminalText always says "no terminal" (so click draws no bar through it): ask its stream.
    raw = getattr(sys.stderr, "stream", sys.stderr)
    tty = raw is not None and raw.isatty()
    bar = click.progressbar(length=100, label="training", file=raw) if tty else None
    with bar if bar is not None else contextlib.nullcontext():
        done, t0 = [0], time.monotonic()

        def progress(stage: str, fraction: float) -> None:
            if bar is None:  # cron, systemd, a pipe: one line per stage, as it happens
                click.echo(f"training: {stage} ({time.monotonic() - t0:.0f} s)", err=True)
                return
            step = int(fraction * 100) - done[0]
            if step > 0:
                bar.update(step)
                done[0] += step

        try:
            result = training.run(_existing(cfg), cfg.general.data_dir, epochs=epochs, activate=activate,
                                  progress=progress)  # fmt: skip
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    _emit(result, as_json, render.trained)


@main.group()
def model() -> None:
    """The model registry: list, activate, roll back, report."""


@model.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def model_list(ctx: click.Context, as_json: bool) -> None:
    """Every trained model: version, training window, recent AUC, which one is active."""
    from . import registry

    _emit(_view(ctx.parent, "/api/v1/models", registry.models), as_json, render.models)


@model.command("activate")
@click.argument("version")
@click.pass_context
def model_activate(ctx: click.Context, version: str) -> None:
    """Make VERSION the model that scores new jobs."""
    from . import registry

    conn = _writer_conn(_cfg(ctx.parent))
    try:
        registry.activate(conn, version)
    except KeyError as exc:
        raise click.ClickException(exc.args[0]) from None
    click.echo(f"active model: {version} (the aggregator loads it within a few seconds)")


@model.command("rollback")
@click.pass_context
def model_rollback(ctx: click.Context) -> None:
    """Go back to the model that was active before the current one."""
    from . import registry

    try:
        version = registry.rollback(_writer_conn(_cfg(ctx.parent)))
    except KeyError as exc:
        raise click.ClickException(exc.args[0]) from None
    click.echo(f"active model: {version}")


@model.command("report")
@click.option(
    "--out",
    "out_dir",
    default="nomade-report",
    show_default=True,
    help="directory for report.md and plots",
)
@click.option("--epochs", default=25, show_default=True)
@click.pass_context
def model_report(ctx: click.Context, out_dir: str, epochs: int) -> None:
    """Evaluate on a chronological split against baselines; write Markdown with plots."""
    cfg = _cfg(ctx.parent)
    from models import evaluate, report

    conn = _reader(cfg)
    verdicts = [dict(r) for r in conn.execute(
        "SELECT j.job_id, v.p_fail, v.warned, j.outcome FROM verdicts v JOIN jobs j ON j.uid = v.job_uid"
        " WHERE j.outcome IS NOT NULL")]  # fmt: skip
    result = evaluate.evaluate(store.ended_jobs(conn), cost_missed_failure=cfg.models.cost_missed_failure,
                               cost_false_alarm=cfg.models.cost_false_alarm, epochs=epochs)  # fmt: skip
    path = report.write_report(result, out_dir, verdicts=verdicts)
    click.echo(f"report written to {path}")


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("script", type=click.File("r"))
@click.argument("sbatch_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--user", default=None, help="score as this user (root only)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def check(ctx: click.Context, script, sbatch_args, user: str | None, as_json: bool) -> None:
    """Score a job script before submitting it: `nomadectl check job.sh [sbatch options]`."""
    import getpass

    from . import request

    cfg = _cfg(ctx)
    try:
        req = request.request(
            request.options(script.read(), list(sbatch_args)), request.cluster_defaults()
        )
    except ValueError as exc:
        raise click.ClickException(f"{script.name}: {exc}") from None
    if user and os.geteuid() != 0:
        raise click.ClickException("only root may score a job as another user")
    req["user"] = user or getpass.getuser()
    from .apiclient import ApiError

    try:
        answer = request.ask_aggregator(cfg.hooks.aggregator_url, req, ca=cfg.security.tls_ca,
                                        munge_socket=cfg.security.munge_socket)  # fmt: skip
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None
    _emit(answer, as_json, render.check)


@main.command()
@click.argument("kind")
@click.argument("path", type=click.Path(allow_dash=True))
def parse(kind: str, path: str) -> None:
    """Print what NØMADE reads from one captured output, as JSON lines (`nomadectl parse KIND FILE`)."""
    from nomade_common import jsonin, parsekinds

    try:
        fn = parsekinds.parser(kind)
    except KeyError as exc:
        raise click.ClickException(exc.args[0]) from None
    source = "-" if path == "-" else path
    try:
        if kind in parsekinds.DIRECTORY_KINDS:
            if not Path(path).is_dir():
                click.echo(f"nomadectl parse {kind}: {path}: expected a directory (a copy of the tree)", err=True)
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
    cfg = _cfg(ctx.find_root())
    if not Path(cfg.database).exists():
        raise click.ClickException(f"{cfg.database}: no database yet (run nomadectl init)")
    try:
        done = store.backup(cfg.database, file, force=force)
    except (OSError, sqlite3.Error) as exc:
        raise click.ClickException(f"db backup: {exc}") from None
    click.echo(f"{cfg.database} -> {done['file']}: {done['bytes'] / 1e6:.1f} MB, schema version "
               f"{done['schema_version']}, checked, in {done['seconds']} s")  # fmt: skip


@main.command("audit")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def audit_cmd(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Administrators' actions (keys, model activation) with the uid that made them (root)."""
    if os.geteuid() != 0:
        raise click.ClickException("nomadectl audit: only root reads the administrators' log")
    rows = store.admin_log(_reader(_cfg(ctx)), limit)
    _emit(rows, as_json, render.admin_log)


@main.group("keys")
def keys_group() -> None:
    """Which nodes' agents may send to the aggregator: their CurveZMQ keys (root only)."""


def _keys(ctx: click.Context, command: str):
    """(keyscmd, config, write connection) for a key command run by root."""
    from . import keyscmd

    try:
        keyscmd.require_root(command)
    except keyscmd.KeysError as exc:
        raise click.ClickException(str(exc)) from None
    cfg = _cfg(ctx.find_root())
    return keyscmd, cfg, _writer_conn(cfg)


# A Z85 key may begin with '-': taken as the KEY argument, not as an unknown option.
@keys_group.command("add", context_settings={"ignore_unknown_options": True})
@click.argument("node", required=False)
@click.argument("key", required=False)
@click.option("--file", "path", type=click.Path(allow_dash=True),
              help="lines `NODE PUBLIC_KEY` as nomade-agent --make-key prints them ('-': stdin)")  # fmt: skip
@click.option("--replace", is_flag=True, help="change the key of a node enrolled with another")
@click.pass_context
def keys_add(ctx, node, key, path, replace) -> None:
    """Enrol NODE's KEY, or every line of --file in one transaction."""
    if (path is None) == (node is None) or (node is not None and key is None):
        raise click.UsageError("give NODE KEY, or --file FILE (or - for stdin)")
    keyscmd, _cfg_, conn = _keys(ctx, "keys add")
    try:
        text = f"{node} {key}\n" if path is None else click.open_file(path, encoding="utf-8").read()
        source = "arguments" if path is None else path
        counts = keyscmd.add(conn, keyscmd.parse(text, source), source, replace)
    except (keyscmd.KeysError, OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{counts['add']} enrolled, {counts['replace']} replaced, {counts['keep']} already enrolled"
               " (the aggregator accepts them within a second)")  # fmt: skip


@keys_group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def keys_list(ctx, as_json) -> None:
    """Enrolled nodes: key, added when and by whom, last seen over CURVE, revoked."""
    keyscmd, _cfg_, conn = _keys(ctx, "keys list")
    _emit(keyscmd.listing(conn), as_json, keyscmd.table)


@keys_group.command("revoke")
@click.argument("node")
@click.pass_context
def keys_revoke(ctx, node) -> None:
    """Revoke NODE's key: its connections are dropped within a second."""
    keyscmd, _cfg_, conn = _keys(ctx, "keys revoke")
    try:
        keyscmd.revoke(conn, node)
    except keyscmd.KeysError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{node}: key revoked; the aggregator drops its connection within a second")


@keys_group.command("rotate-server")
@click.pass_context
def keys_rotate_server(ctx) -> None:
    """A new aggregator key pair (the old one kept as server.key.previous)."""
    keyscmd, cfg, conn = _keys(ctx, "keys rotate-server")
    try:
        public = keyscmd.rotate_server(conn, cfg.security, keyscmd.service_owner(cfg.database))
    except OSError as exc:
        raise click.ClickException(f"cannot make the new server key: {exc}") from None
    sec = cfg.security
    click.echo(f"new server key {public}; the old one is {sec.server_public()}.previous\n"
               f"copy {sec.server_public()} to the same path on every node: each agent "
               "reconnects with it by itself and keeps its data until then; the aggregator uses "
               "the new key within a second")  # fmt: skip


if __name__ == "__main__":  # python -m aggregator.ctl, as the nomadectl script does
    main(prog_name="nomadectl")
