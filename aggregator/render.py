"""Human-readable views for `nomadectl`; `--json` prints the underlying dicts instead."""

from __future__ import annotations

import time
from typing import Any

from .syscheck import Check

MARK = {"ok": "OK", "skip": "○ ", "fail": "!!"}


def size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def seconds(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    return (
        f"{s // 86400}-{s % 86400 // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"
        if s >= 86400
        else f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"
    )


def store_line(agg: dict[str, Any] | None) -> list[str]:
    """The running aggregator and its store, first in `nomadectl status`: a store that takes no
    writes must not go unnoticed."""
    if agg is None:
        return []
    if not agg.get("answering"):
        return [f"Aggregator: NOT ANSWERING ({agg.get('why', '?')})", ""]
    store = agg.get("store") or {}
    if store.get("ok"):
        line = f"Store: taking writes ({store.get('backlog', 0)} waiting"
        failed = store.get("failed_batches")
        return [line + (f"; {failed} failed writes since start, retried)" if failed else ")"), ""]
    since = store.get("failing_since")
    for_ = f" for {seconds(time.time() - since)}" if since else ""
    return [f"Store: FAILING since {when(since)}{for_} ({store.get('reason', '?')}); "
            f"{store.get('failed_batches', 0)} failed writes, {store.get('backlog', 0)} waiting, "
            f"nothing of it acknowledged" + ("; gave up, restarting" if store.get("gave_up") else ""), ""]


def agent_sections(st: dict[str, Any]) -> list[str]:
    """`nomadectl status`'s agents, running jobs and ingest (render_cluster.status puts the
    collectors' views before them)."""
    out = ["Agents:"]
    for n in st["nodes"] or [{"node": "(no agent has reported yet)"}]:
        if "state" not in n:
            out.append(f"  {n['node']}")
            continue
        out.append(f"  {n['node']:<14} {n['state'].upper():<5} last heard {n['seconds_since_seen']:>6.1f} s ago"
                   f"  jobs: {n['running_jobs'] if n['running_jobs'] is not None else '-'}"
                   f"  outbox: {n['outbox_depth'] if n['outbox_depth'] is not None else '-'}")  # fmt: skip
        if n.get("agent_nacked"):
            out.append(f"    {n['agent_nacked']} envelopes refused by the aggregator and dropped by the agent")
        if n.get("samples_refused"):
            out.append(f"    {n['samples_refused']} samples refused: {n.get('samples_refused_why') or '?'}"
                       " (is the node's clock right?)")  # fmt: skip
    out += ["", f"Running jobs: {len(st['running_jobs'])}"]
    for j in st["running_jobs"][:20]:
        out.append(
            f"  {j['job_id']:<8} {j['user'] or '-':<10} {j['partition'] or '-':<8} {j['node_list'] or '-'}"
        )
    ing = st["ingest"]
    out += ["", "Ingest:", f"  {ing['samples_per_second']} samples/s over the last minute"
            f" ({ing['envelopes_last_minute']} envelopes)", f"  jobs stored: {st['jobs_total']}"
            f", unreconciled: {st['unreconciled_jobs']}"]  # fmt: skip
    rejected = st["counters"].get("messages_rejected")
    if rejected:
        out.append(f"  rejected messages: {rejected}")
    return out


def jobs(rows: list[dict[str, Any]]) -> str:
    out = [
        f"{'JOBID':<9}{'USER':<10}{'PARTITION':<11}{'OUTCOME':<15}{'EXIT':<6}{'ELAPSED':<12}SUBMITTED"
    ]
    for j in rows:
        outcome = j["outcome"] or (
            "RUNNING" if j["start_time"] and not j["end_time"] else j["state"] or "-"
        )
        out.append(f"{j['job_id']:<9}{j['user'] or '-':<10}{j['partition'] or '-':<11}{outcome:<15}"
                   f"{'-' if j['exit_code'] is None else j['exit_code']:<6}{seconds(j['elapsed_seconds']):<12}"
                   f"{when(j['submit_time'])}")  # fmt: skip
    return "\n".join(out)


def job(j: dict[str, Any]) -> str:
    mem = (
        j["mem_per_node_bytes"]
        and f"{size(j['mem_per_node_bytes'])}/node"
        or (j["mem_per_cpu_bytes"] and f"{size(j['mem_per_cpu_bytes'])}/CPU")
        or "-"
    )
    out = [
        f"Job {j['job_id']}  {j['job_name'] or ''}",
        f"  user {j['user'] or '-'}  account {j['account'] or '-'}  partition {j['partition'] or '-'}",
        f"  request: {j['nodes_requested'] or '-'} node(s), {j['cpus'] or '-'} CPUs, memory {mem},"
        f" GPUs {j['gpus'] if j['gpus'] is not None else '-'}, time limit {seconds(j['time_limit_seconds'])}",
        f"  submitted {when(j['submit_time'])}  started {when(j['start_time'])}  ended {when(j['end_time'])}",
        f"  outcome {j['outcome'] or '(not finished or not reconciled)'}"
        + (f" by {j['cancelled_by']}" if j["cancelled_by"] else "")
        + f"  exit {j['exit_code'] if j['exit_code'] is not None else '-'}"
        + (f" signal {j['signal']}" if j["signal"] else "")
        + f"  elapsed {seconds(j['elapsed_seconds'])}  sacct: {j['reconcile']}",
        f"  memory peak {size(j['mem_peak_bytes'])} (cgroup samples and sacct MaxRSS)",
        "",
        f"  {'NODE':<10}{'SAMPLES':>8}{'CPU s':>10}{'MEM PEAK':>12}{'READ':>12}{'WRITTEN':>12}",
    ]
    v = j.get("verdict")
    if v is not None:
        out[-2:-2] = [f"  verdict at start: p_fail {v['p_fail']:.2f}, {'warned' if v['warned'] else 'not warned'}"
                      f" (model {v['model_version']})", *(f"    {ln}" for ln in v["lines"] if v["warned"])]  # fmt: skip
    if j.get("advice"):
        printed = v["lines"] if v is not None and v["warned"] else []
        out[-2:-2] = ["  advised at start:", *("    " + ln for ln in advice_lines(j["advice"], printed))]
    for n in j["nodes"]:
        cpu = "-" if n["cpu_seconds"] is None else f"{n['cpu_seconds']:.1f}"
        out.append(f"  {n['node']:<10}{n['samples']:>8}{cpu:>10}{size(n['mem_peak_bytes']):>12}"
                   f"{size(n['read_bytes']):>12}{size(n['write_bytes']):>12}")  # fmt: skip
    if j["series"]:
        out += ["", f"  {'TIME':<10}{'NODE':<10}{'CPU s':>9}{'MEMORY':>12}{'WRITTEN':>12}"]
        for p in j["series"]:
            cpu = "-" if p["cpu_seconds"] is None else f"{p['cpu_seconds']:.1f}"
            out.append(f"  {time.strftime('%H:%M:%S', time.localtime(p['t'])):<10}{p['node']:<10}{cpu:>9}"
                       f"{size(p['mem_bytes']):>12}{size(p['write_bytes']):>12}")  # fmt: skip
    return "\n".join(out)


def syscheck(checks: list[Check]) -> str:
    out, section = ["NØMADE System Check", "═" * 40], None
    for c in checks:
        if c.section != section:
            out.append(f"{c.section}:")
            section = c.section
        out.append(f"  {MARK[c.status]} {c.name}: {c.detail}")
    failed = sum(c.status == "fail" for c in checks)
    out += ["─" * 40, "OK All checks passed!" if not failed else f"!! {failed} check(s) failed"]
    return "\n".join(out)


def _auc(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def trained(r: dict[str, Any]) -> str:
    out = [f"model {r['version']}: trained on {r['train_jobs']} jobs, weights {r['weights']}"]
    aucs = r.get("member_validation_auc")
    if aucs:
        excluded = set(r.get("excluded_members") or ())
        out.append("  validation AUC of each member: " + ", ".join(
            f"{m} {_auc(a)}" + (" (weight 0: no better than chance)" if m in excluded else "")
            for m, a in aucs.items()))  # fmt: skip
    n, failures = r["recent_jobs"], r.get("recent_failures")
    of = "" if failures is None else f" ({failures} failures, {n - failures} successes)"
    out.append(f"  failure AUC on the {n} most recent jobs{of}: {_auc(r.get('recent_auc'))}")
    if "active_recent_auc" in r:
        old = _auc(r["active_recent_auc"])
        out.append(f"  active model {r['active_version']} on the same jobs: {old}")
    line = r.get("activation") or ("activated" if r["activated"] else "not activated")
    out.append(f"  {line}")
    return "\n".join(out)


def models(rows: list[dict[str, Any]]) -> str:
    """The registry, newest first; `*` marks the active model, RULE whether it met the
    activation rule when it was trained (`-`: trained before the rule was recorded)."""
    out = [
        f"{'':2}{'VERSION':<26}{'CREATED':<21}{'JOBS':>7}  {'RECENT AUC':>10}  {'RULE':<8}TRAINED ON"
    ]
    for m in rows:
        met = m["metrics"].get("activation_rule_met")
        rule = "-" if met is None else "met" if met else "not met"
        out.append(f"{'* ' if m['active'] else '  '}{m['version']:<26}{when(m['created']):<21}{m['train_jobs'] or 0:>7}"
                   f"  {_auc(m['metrics'].get('recent_auc')):>10}  {rule:<8}"
                   f"{when(m['train_first_submit'])} .. {when(m['train_last_submit'])}")  # fmt: skip
    return "\n".join(out) if rows else "no models yet (nomadectl train)"


def check(answer: dict[str, Any]) -> str:
    v = answer.get("verdict")
    if v is None:
        out = ["NØMADE: no model is active yet, so this job cannot be scored (nomadectl train)."]
    elif v["warned"]:
        out = [ln for ln in v["lines"] if not ln.startswith("NØMADE: Details:")]
    else:
        out = [f"NØMADE: low risk ({v['p_fail']:.2f}) that this job fails (model {v['model_version']})."]
    return "\n".join(out + advice_lines(answer.get("advice"), out))


def advice_lines(advice: dict[str, Any] | None, shown: list[str] = ()) -> list[str]:
    """Right-sizing advice, each resource once: its text, or why there is none."""
    if not advice:
        return []
    out = []
    for resource, what in (("mem", "--mem"), ("time", "--time")):
        a = advice.get(resource)
        if a is None:
            out.append(f"NØMADE: no {what} advice: too few of your jobs like this one ran to the end.")
        elif a["text"] not in shown:
            out.append(a["text"])
    return out


def admin_log(rows: list[dict[str, Any]]) -> str:
    """`nomadectl audit`: who did what, newest first."""
    if not rows:
        return "no administrators' actions recorded"
    out = [f"{'WHEN':<20}{'WHO':<14}{'ACTION':<22}DETAIL"]
    for r in rows:
        who = f"{r['user']} ({r['uid']})"
        out.append(f"{when(r['t']):<20}{who:<14}{r['action']:<22}{r['detail'] or ''}")
    return "\n".join(out)
