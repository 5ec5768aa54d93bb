"""`nomadectl train` and `nomadectl model list|activate|rollback|report`: the job-outcome models
trained, registered, chosen and evaluated (the work is aggregator/predict/training.py's, the
registry aggregator/store's, the report models/'s).  With their text views."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from aggregator import store

from . import base
from .base import main
from .fmt import when


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
    cfg = base.config(ctx)
    from aggregator.predict import training

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
            result = training.run(
                base.existing(cfg),
                cfg.general.data_dir,
                epochs=epochs,
                activate=activate,
                progress=progress,
            )
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    base.emit(result, as_json, render_trained)


@main.group()
def model() -> None:
    """The model registry: list, activate, roll back, report."""


@model.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def model_list(ctx: click.Context, as_json: bool) -> None:
    """Every trained model: version, training window, recent AUC, which one is active."""
    from aggregator import store

    base.emit(
        base.view(ctx.find_root(), "/api/v1/models", store.list_models), as_json, render_models
    )


@model.command("activate")
@click.argument("version")
@click.pass_context
def model_activate(ctx: click.Context, version: str) -> None:
    """Make VERSION the model that scores new jobs."""
    from aggregator import store

    conn = base.writer(base.config(ctx.find_root()))
    try:
        store.activate_model(conn, version)
    except KeyError as exc:
        raise click.ClickException(exc.args[0]) from None
    click.echo(f"active model: {version} (the aggregator loads it within a few seconds)")


@model.command("rollback")
@click.pass_context
def model_rollback(ctx: click.Context) -> None:
    """Go back to the model that was active before the current one."""
    from aggregator import store

    try:
        version = store.rollback_model(base.writer(base.config(ctx.find_root())))
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
    cfg = base.config(ctx.find_root())
    from models import evaluate, report

    conn = base.reader(cfg)
    verdicts = store.verdict_outcomes(conn)
    result = evaluate.evaluate(
        store.ended_jobs(conn),
        cost_missed_failure=cfg.models.cost_missed_failure,
        cost_false_alarm=cfg.models.cost_false_alarm,
        epochs=epochs,
    )
    path = report.write_report(result, out_dir, verdicts=verdicts)
    click.echo(f"report written to {path}")


# --- the text views ----------------------------------------------------------------------------


def _auc(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def render_trained(r: dict[str, Any]) -> str:
    out = [f"model {r['version']}: trained on {r['train_jobs']} jobs, weights {r['weights']}"]
    aucs = r.get("member_validation_auc")
    if aucs:
        excluded = set(r.get("excluded_members") or ())
        out.append(
            "  validation AUC of each member: "
            + ", ".join(
                f"{m} {_auc(a)}" + (" (weight 0: no better than chance)" if m in excluded else "")
                for m, a in aucs.items()
            )
        )
    n, failures = r["recent_jobs"], r.get("recent_failures")
    of = "" if failures is None else f" ({failures} failures, {n - failures} successes)"
    out.append(f"  failure AUC on the {n} most recent jobs{of}: {_auc(r.get('recent_auc'))}")
    if "active_recent_auc" in r:
        old = _auc(r["active_recent_auc"])
        out.append(f"  active model {r['active_version']} on the same jobs: {old}")
    line = r.get("activation") or ("activated" if r["activated"] else "not activated")
    out.append(f"  {line}")
    return "\n".join(out)


def render_models(rows: list[dict[str, Any]]) -> str:
    """The registry, newest first; `*` marks the active model, RULE whether it met the
    activation rule when it was trained (`-`: trained before the rule was recorded)."""
    out = [
        f"{'':2}{'VERSION':<26}{'CREATED':<21}{'JOBS':>7}"
        f"  {'RECENT AUC':>10}  {'RULE':<8}TRAINED ON"
    ]
    for m in rows:
        met = m["metrics"].get("activation_rule_met")
        rule = "-" if met is None else "met" if met else "not met"
        out.append(
            f"{'* ' if m['active'] else '  '}{m['version']:<26}{when(m['created']):<21}"
            f"{m['train_jobs'] or 0:>7}"
            f"  {_auc(m['metrics'].get('recent_auc')):>10}  {rule:<8}"
            f"{when(m['train_first_submit'])} .. {when(m['train_last_submit'])}"
        )
    return "\n".join(out) if rows else "no models yet (nomadectl train)"
