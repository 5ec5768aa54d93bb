"""The evaluation report: `report.md` and its plots from the dict `evaluate.evaluate` returns.

    write_report(result, out_dir, verdicts=[...]) -> out_dir/report.md

Plots (matplotlib, Agg backend): roc.png, pr.png, calibration.png, confusion.png.  `verdicts`
are the stored warnings of live scoring (dicts with job_id, p_fail, warned, outcome); the
section "How the warnings did" counts their hits, misses and false alarms.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from . import ensemble, features, rightsize_eval
from .evaluate import CEILING, LABELS

PLOTS = ("roc.png", "pr.png", "calibration.png", "confusion.png")


def _f(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _when(t: float | None) -> str:
    return "n/a" if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


# -- sections ------------------------------------------------------------------------------------
def data_section(result: dict[str, Any]) -> list[str]:
    d, p = result["data"], result["protocol"]
    verb = ("would train", "would be fitted") if result["insufficient"] else ("train", "are fitted")
    lines = [
        "## Data",
        "",
        f"- Jobs with a known outcome: {d['jobs']} from {d['users']} users",
        f"- Span: {_when(d['first_submit'])} to {_when(d['last_end'])} ({d['span_days']:.2f} days)",
        f"- Failures (any outcome but COMPLETED and CANCELLED): {d['failures']}"
        f" ({_pct(d['failure_rate'])})",
        "",
        *_table(
            ["Outcome", "Jobs", "Share"],
            [[c, str(k), _pct(k / d["jobs"])] for c, k in d["outcomes"].items()],
        ),
        "",
        "## Protocol",
        "",
        f"Jobs in start order; the earliest {p['train_jobs']} {verb[0]},"
        f" the latest {p['test_jobs']}"
        f" (starting from {_when(p['split_start_time'])}) test, {p['test_failures']} of them"
        f" failures.  Members and learned baselines {verb[1]} on the first"
        f" {p['fit_jobs']} training jobs; ensemble weights, calibration and every alarm threshold"
        f" come from the last {p['validation_jobs']} (the validation slice).  Features see only"
        " what was known at each job's start.  The ensemble is scored through ONNX Runtime, as"
        f" the aggregator runs it.  GNN epochs: {p['epochs']}, seed {p['seed']}.",
        "",
    ]
    return lines


def failure_section(result: dict[str, Any]) -> list[str]:
    p = result["protocol"]
    rows = []
    for name, m in result["failure"].items():
        rows.append(
            [
                LABELS.get(name, name),
                _f(m["auc"]),
                _f(m["pr_auc"]),
                _f(m["brier"], 4),
                _f(m["threshold"]),
                _pct(m["type1"]),
                _pct(m["type2"]),
                _f(m["cost_per_job"]),
            ]
        )
    return [
        "## Failure prediction on the test part",
        "",
        "AUC: ROC area of the failure score; PR-AUC: average precision (a constant scores the"
        " failure rate); Brier: mean squared error of the score as a probability (lower is"
        " better).  At each score's threshold (chosen on the validation slice): type 1 = false"
        " alarms / jobs that did not fail, type 2 = misses / jobs that failed, cost per job ="
        f" ({p['cost_missed_failure']:g} x misses"
        f" + {p['cost_false_alarm']:g} x false alarms) / jobs.",
        "",
        *_table(
            ["Score", "AUC", "PR-AUC", "Brier", "Threshold", "Type 1", "Type 2", "Cost/job"], rows
        ),
        "",
    ]


def _interval(d: dict[str, float]) -> str:
    return f"{d['diff']:+.3f} (95% bootstrap interval {d['lo']:+.3f} to {d['hi']:+.3f})"


def _name(key: str) -> str:
    return f"*{LABELS.get(key, key)}*"


def _verdict(d: dict[str, float]) -> str:
    if d["lo"] > 0:
        return "better"
    if d["hi"] < 0:
        return "worse"
    return "indistinguishable"


def findings_section(result: dict[str, Any]) -> list[str]:
    """The honest paragraph: what beat what, by how much, and what did not."""
    m = result["failure"]
    ens = m["ensemble"]
    out = []
    simple, best = result.get("best_simple_baseline"), result.get("best_baseline")
    if simple:
        d = result["ensemble_vs_simple"]
        v = _verdict(d)
        head = f"The best simple baseline is {_name(simple)} (AUC {_f(m[simple]['auc'])})."
        if v == "better":
            out.append(f"{head} The ensemble (AUC {_f(ens['auc'])}) beats it by {_interval(d)}.")
        elif v == "worse":
            out.append(
                f"{head} **The ensemble does not beat it**: its AUC ({_f(ens['auc'])}) is"
                f" lower by {_interval(d)}."
            )
        else:
            out.append(
                f"{head} **The ensemble does not clearly beat it**: AUC {_f(ens['auc'])},"
                f" a difference of {_interval(d)}, within the noise of this test set."
            )
    if best and best != simple:
        d = result["ensemble_vs_best"]
        v = _verdict(d)
        what = {
            "better": "beats",
            "worse": "**is beaten by**",
            "indistinguishable": "**does not clearly beat**",
        }[v]
        out.append(
            f"Among the ensemble's own members, the strongest alone is"
            f" {_name(best)} (AUC {_f(m[best]['auc'])}); the ensemble {what} it:"
            f" {_interval(d)}."
        )
    g = result["graph_contribution"]
    v = _verdict(g)
    gtext = {
        "better": "improve",
        "worse": "worsen",
        "indistinguishable": "do not measurably change",
    }[v]
    out.append(
        f"The similarity-graph features {gtext} the gradient-boosted trees: AUC"
        f" {_f(m['member_gbt']['auc'])} with them, {_f(m['gbt_no_graph']['auc'])} without,"
        f" {_interval(g)}.  The GNN has weight {result['ensemble']['weights']['gnn']:g} in the"
        f" ensemble (GBT {result['ensemble']['weights']['gbt']:g},"
        f" LR {result['ensemble']['weights']['lr']:g})."
    )
    out += [t for t in [members_sentence(result["ensemble"])] if t]
    maj = m["majority"]
    cost_names = [n for n in m if n != CEILING]
    cheapest = min(cost_names, key=lambda n: m[n]["cost_per_job"])
    cost = (
        f"At its threshold the ensemble costs {_f(ens['cost_per_job'])} per job, against"
        f" {_f(maj['cost_per_job'])} for the constant rule (warn for all or for none) and"
        f" {_f(m[simple]['cost_per_job']) if simple else 'n/a'} for the best simple baseline"
    )
    if cheapest == "ensemble":
        out.append(f"{cost}; no baseline is cheaper at its own threshold.")
    else:
        out.append(
            f"{cost}; **{_name(cheapest)} is cheaper at its own threshold**"
            f" ({_f(m[cheapest]['cost_per_job'])} per job)."
        )
    if maj["brier"] > 0:
        skill = 1 - ens["brier"] / maj["brier"]
        out.append(
            f"As a probability, p_fail has Brier score {_f(ens['brier'], 4)}, a skill of"
            f" {_pct(skill)} over the constant failure rate ({_f(maj['brier'], 4)})."
        )
    if CEILING in m and simple:
        c, s, e = m[CEILING]["auc"], m[simple]["auc"], ens["auc"]
        gap = (
            f"; the ensemble closes {_pct((e - s) / (c - s))} of the gap between the best simple"
            " baseline and that ceiling"
            if c > s
            else ""
        )
        out.append(
            f"The generator's own failure probability, the best any model could do on"
            f" this data, reaches AUC {_f(c)}{gap}."
        )
    return ["## What beat what", "", " ".join(out), ""]


def members_sentence(ens: dict[str, Any]) -> str:
    """Each member's failure AUC on the validation slice, and which ones got weight 0."""
    aucs = ens.get("member_validation_auc")
    if not aucs:
        return ""
    names = {"gnn": "GNN", "gbt": "GBT", "lr": "LR"}
    listed = ", ".join(f"{names.get(k, k)} {_f(v)}" for k, v in aucs.items())
    text = f"On the validation slice the members' failure AUCs are {listed}."
    if ens.get("no_better_than_chance"):
        return (
            f"{text} **No member beats chance there: the model is no better than chance,"
            " and `nomadectl train` does not activate such a model unless told to"
            " (`--activate always`).**"
        )
    excluded = [names.get(k, k) for k in ens.get("excluded_members", [])]
    if excluded:
        return f"{text} **{' and '.join(excluded)} at or below 0.5: weight 0.**"
    return text


def _reliability_table(rows: list[dict[str, Any]]) -> list[str]:
    return _table(
        ["Predicted", "Jobs", "Mean predicted", "Observed failure rate"],
        [
            [
                f"{r['lo']:.1f} to {r['hi']:.1f}",
                str(r["jobs"]),
                _f(r["mean_predicted"]),
                _f(r["observed_rate"]),
            ]
            for r in rows
        ],
    )


def calibration_section(result: dict[str, Any]) -> list[str]:
    """Brier score and reliability before calibration (the weighted mixture's raw failure
    probability) and after (the Platt-calibrated p_fail users see), on the test part."""
    c = result.get("calibration")
    if not c:
        return []
    return [
        "## Calibration on the test part",
        "",
        "Before: the weighted mixture's failure probability, 1 - p(COMPLETED) - p(CANCELLED)."
        " After: p_fail, Platt-scaled on the validation slice and clipped to"
        f" [{ensemble.P_MIN:g}, {ensemble.P_MAX:g}], as users see it.  Brier score (lower is"
        f" better): {_f(c['brier_before'], 4)} before, {_f(c['brier_after'], 4)} after.  In"
        f" {c['bins']} equal-width bins of the predicted probability (empty bins left out), a"
        " calibrated score's observed failure rate matches its mean prediction.",
        "",
        "Before calibration:",
        "",
        *_reliability_table(c["reliability_before"]),
        "",
        "After calibration:",
        "",
        *_reliability_table(c["reliability_after"]),
        "",
    ]


def class_section(result: dict[str, Any]) -> list[str]:
    rows = [
        [c, str(v["support"]), _f(v["auc"]), _f(v["pr_auc"])]
        for c, v in result["per_class"].items()
    ]
    return [
        "## Per outcome class (ensemble, one against the rest)",
        "",
        "Classes present in the test part, with both members and non-members.",
        "",
        *_table(["Class", "Test jobs", "AUC", "PR-AUC"], rows),
        "",
    ]


def threshold_section(result: dict[str, Any]) -> list[str]:
    m, p = result["failure"]["ensemble"], result["protocol"]
    return [
        "## Alarm threshold",
        "",
        f"Warn when p_fail >= {_f(m['threshold'])}: the threshold with the lowest"
        f" {p['cost_missed_failure']:g} x missed failures + {p['cost_false_alarm']:g} x false"
        " alarms on the validation slice.  On the test part:",
        "",
        *_table(
            ["", "Failed", "Did not fail"],
            [
                ["Warned", f"{m['tp']} (hits)", f"{m['fp']} (false alarms)"],
                ["Not warned", f"{m['fn']} (misses)", f"{m['tn']}"],
            ],
        ),
        "",
        f"Type 1 error (false alarm rate) {_pct(m['type1'])}, type 2 error (miss rate)"
        f" {_pct(m['type2'])}, precision of a warning {_pct(m['precision'])}, cost"
        f" {m['cost']:g} ({_f(m['cost_per_job'])} per job).",
        "",
    ]


def confusion_section(result: dict[str, Any]) -> list[str]:
    cm = np.asarray(result["confusion"])
    keep = [i for i in range(len(features.CLASSES)) if cm[i].sum() or cm[:, i].sum()]
    rows = [[features.CLASSES[i], *(str(cm[i, j]) for j in keep)] for i in keep]
    return [
        "## Confusion matrix (most probable class)",
        "",
        "Rows: the outcome; columns: the ensemble's most probable class.",
        "",
        *_table(["True \\ predicted", *(features.CLASSES[j] for j in keep)], rows),
        "",
    ]


def verdict_counts(verdicts: list[dict[str, Any]]) -> dict[str, int]:
    counts = {"hits": 0, "misses": 0, "false_alarms": 0, "quiet": 0, "pending": 0}
    for v in verdicts:
        if not v.get("outcome"):
            counts["pending"] += 1
            continue
        failed = features.is_failure(v["outcome"])
        key = (
            ("hits" if failed else "false_alarms")
            if v["warned"]
            else ("misses" if failed else "quiet")
        )
        counts[key] += 1
    return counts


def warnings_section(verdicts: list[dict[str, Any]]) -> list[str]:
    lines = ["## How the warnings did", ""]
    if not verdicts:
        return [*lines, "No stored verdicts of live scoring yet.", ""]
    c = verdict_counts(verdicts)
    failed, warned = c["hits"] + c["misses"], c["hits"] + c["false_alarms"]
    return [
        *lines,
        f"{len(verdicts)} scored jobs ({c['pending']} not ended yet).",
        "",
        *_table(
            ["Hits", "Misses", "False alarms", "Quiet and fine"],
            [[str(c["hits"]), str(c["misses"]), str(c["false_alarms"]), str(c["quiet"])]],
        ),
        "",
        f"Miss rate {_pct(c['misses'] / failed if failed else None)}, share of warnings that"
        f" were false alarms {_pct(c['false_alarms'] / warned if warned else None)}.",
        "",
    ]


# -- plots ---------------------------------------------------------------------------------------
def _curves(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    a = result["arrays"]
    failed, scores = np.asarray(a["failed"], dtype=bool), a["scores"]
    for name, kind in (("roc.png", "roc"), ("pr.png", "pr")):
        fig, ax = plt.subplots(figsize=(6.5, 5.5))
        for key, s in scores.items():
            style = {"lw": 2.5, "color": "black"} if key == "ensemble" else {"lw": 1.1}
            if key == CEILING:
                style = {"lw": 1.2, "ls": "--", "color": "grey"}
            label = (
                f"{LABELS.get(key, key)}"
                f" ({_f(result['failure'][key]['auc' if kind == 'roc' else 'pr_auc'])})"
            )
            if kind == "roc":
                x, y, _ = roc_curve(failed, s)
            else:
                y, x, _ = precision_recall_curve(failed, s)
            ax.plot(x, y, label=label, **style)
        if kind == "roc":
            ax.plot([0, 1], [0, 1], color="lightgrey", lw=0.8)
            ax.set(xlabel="False alarm rate", ylabel="Failures caught", title="ROC, test part")
        else:
            ax.set(
                xlabel="Recall (failures caught)",
                ylabel="Precision",
                title="Precision-recall, test part",
            )
        ax.legend(fontsize=7, loc="lower right" if kind == "roc" else "upper right")
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)


def _calibration(result: dict[str, Any], out: Path, bins: int = 10) -> None:
    from matplotlib import pyplot as plt

    a = result["arrays"]
    failed = np.asarray(a["failed"], dtype=float)
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.plot([0, 1], [0, 1], color="lightgrey", lw=0.8)
    for key in ("ensemble", CEILING):
        if key not in a["scores"]:
            continue
        p = np.asarray(a["scores"][key])
        which = np.minimum((p * bins).astype(int), bins - 1)
        n = np.bincount(which, minlength=bins)
        ok = n > 0
        mean_p = np.bincount(which, p, bins)[ok] / n[ok]
        rate = np.bincount(which, failed, bins)[ok] / n[ok]
        ax.plot(
            mean_p, rate, "o-", label=LABELS[key], color="black" if key == "ensemble" else "grey"
        )
    before = (result.get("calibration") or {}).get("reliability_before")
    if before:
        ax.plot(
            [r["mean_predicted"] for r in before],
            [r["observed_rate"] for r in before],
            "s:",
            color="tab:orange",
            label="Ensemble before calibration",
        )
    ax.set(
        xlabel="Predicted p_fail (bin mean)",
        ylabel="Observed failure rate",
        title="Calibration, test part",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "calibration.png", dpi=110)
    plt.close(fig)


def _confusion_plot(result: dict[str, Any], out: Path) -> None:
    from matplotlib import pyplot as plt

    cm = np.asarray(result["confusion"])
    keep = [i for i in range(len(features.CLASSES)) if cm[i].sum() or cm[:, i].sum()]
    cm = cm[np.ix_(keep, keep)]
    names = [features.CLASSES[i] for i in keep]
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.imshow(cm / np.maximum(cm.sum(axis=1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
    for i in range(len(keep)):
        for j in range(len(keep)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=9)
    ax.set_xticks(range(len(keep)), names, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(keep)), names, fontsize=8)
    ax.set(xlabel="Most probable class", ylabel="Outcome", title="Confusion matrix, test part")
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=110)
    plt.close(fig)


def plots(result: dict[str, Any], out: Path) -> list[str]:
    _curves(result, out)
    _calibration(result, out)
    _confusion_plot(result, out)
    return list(PLOTS)


# -- the report ----------------------------------------------------------------------------------
# The sections of a report on enough data, in order: each turns the result into Markdown lines
# (none when its part of the result is absent).  A new section is one more function here.
SECTIONS: list[Callable[[dict[str, Any]], list[str]]] = [
    failure_section,
    findings_section,
    calibration_section,
    class_section,
    threshold_section,
    confusion_section,
]


def _jsonable(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "arrays"}


def write_report(
    result: dict[str, Any],
    out_dir: str | Path,
    verdicts: list[dict[str, Any]] | None = None,
    title: str = "NØMADE model evaluation",
) -> Path:
    """Write report.md (and its plots, and evaluation.json) into OUT_DIR; returns report.md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", "", *data_section(result)]
    if result["insufficient"]:
        lines += [
            "## Result: not enough data",
            "",
            f"No AUC is reported and nothing was trained: {result['reason']}.  A test part"
            " this small gives numbers too noisy to judge a model by.",
            "",
        ]
    else:
        names = plots(result, out)
        for section in SECTIONS:
            lines += section(result)
        lines += [
            "## Plots",
            "",
            *(f"![{n[:-4]}]({n})" for n in names),
            "",
            f"ONNX Runtime and the training frameworks agree on the test part's p_fail to"
            f" {result['ensemble']['onnx_vs_framework_max_abs_diff']:.1e}.",
            "",
        ]
    if result.get("rightsizing"):
        lines += rightsize_eval.section(result["rightsizing"])
    lines += warnings_section(verdicts or [])
    (out / "evaluation.json").write_text(json.dumps(_jsonable(result), indent=1, default=float))
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
