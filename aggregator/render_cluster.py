"""Human-readable views of the collectors' readings, for `nomadectl status|queue|nodes|licenses|
collect`; `--json` prints the underlying dicts instead."""

from __future__ import annotations

import json
import time
from typing import Any

from nomade_common.collect import Reading
from nomade_common.text import printable

from .render import agent_sections, seconds, size, store_line, when


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}%"


def bar(fraction: float | None, width: int = 20) -> str:
    if fraction is None:
        return "[" + "?" * width + "]"
    full = max(0, min(width, round(fraction * width)))
    return "[" + "█" * full + "░" * (width - full) + "]"


def filesystems(rows: list[dict[str, Any]]) -> list[str]:
    out = ["Filesystems:"]
    for fs in rows:
        if fs.get("responsive") is False:
            out.append(f"  {fs['path']:<20} NOT RESPONDING (seen from {fs['node']})")
            continue
        out.append(f"  {fs['path']:<20} {bar(fs.get('used_fraction'))} {_pct((fs.get('used_fraction') or 0) * 100)}"
                   f" ({size(fs.get('used_bytes'))}/{size(fs.get('size_bytes'))})")  # fmt: skip
    return out if rows else ["Filesystems: (no disk readings yet)"]


def queue_lines(parts: list[dict[str, Any]]) -> list[str]:
    out = ["Queue:"]
    for p in parts:
        wait = f"  longest wait {seconds(p['longest_wait_seconds'])}" if p["longest_wait_seconds"] else ""
        out.append(f"  {p['partition']:<15} Running: {p['running']:>4}  Pending: {p['pending']:>4}{wait}")
    return out if parts else ["Queue: (no squeue reading yet, or the queue is empty)"]


def node_metrics(metrics: dict[str, dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for node, m in sorted(metrics.items()):
        out.append(f"{node}:")
        io = m.get("io")
        if io and io.get("cpu"):
            c = io["cpu"]
            out.append(f"  CPU iowait: {_pct(c.get('iowait_percent'))}   user/sys: {_pct(c.get('user_percent'))}"
                       f" / {_pct(c.get('system_percent'))}")  # fmt: skip
        for d in (io or {}).get("devices", [])[:8]:
            await_ms = d.get("await_ms") if d.get("await_ms") is not None else d.get("w_await_ms")
            out.append(f"  {d['device']:<12} util: {_pct(d.get('util_percent'))}  write: {size(d.get('write_bytes_per_s'))}/s"
                       f"  latency: {'-' if await_ms is None else f'{await_ms:.1f} ms'}")  # fmt: skip
        cpu = m.get("cpu")
        if cpu and cpu.get("cores"):
            out.append(f"  Cores: {cpu['cores']}  avg busy {_pct(cpu.get('busy_mean_percent'))}  range"
                       f" {_pct(cpu.get('busy_min_percent'))} - {_pct(cpu.get('busy_max_percent'))}"
                       f"  imbalance {cpu.get('imbalance')} (std/avg)  saturated {cpu.get('saturated_cores')} (>95%)")  # fmt: skip
        mem = m.get("memory")
        if mem:
            out.append(f"  Memory free: {size(mem.get('mem_free_bytes'))}  cache: {size(mem.get('mem_cache_bytes'))}"
                       f"  swap used: {size(mem.get('swap_used_bytes'))}  swap in/out: {mem.get('swap_in_bytes_per_s', '-')}"
                       f"/{mem.get('swap_out_bytes_per_s', '-')} B/s  blocked: {mem.get('blocked_procs', '-')}"
                       f"  PSI memory: {_pct(mem.get('pressure_some_avg60_percent'))}")  # fmt: skip
    return (["Node I/O, CPU and memory:"] + ["  " + line for line in out]) if out else []


def node_lines(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for n in rows:
        if n.get("state") is None:
            out.append(f"  {n['node']:<15} (not in Slurm)  agent {n.get('agent') or '-'}")
            continue
        cpus = f"{n.get('cpus_alloc') or 0}/{n.get('cpus') or '-'}"
        frac = n.get("memory_alloc_fraction")
        agent = n.get("agent") or "no agent"
        out.append(f"  {n['node']:<15} {n['state'].upper():<12} CPU: {cpus:<8} Mem: {_pct(None if frac is None else frac * 100):<7}"
                   f" Load: {n.get('cpu_load') if n.get('cpu_load') is not None else '-':<6} agent: {agent}")  # fmt: skip
        if n.get("reason"):
            out.append(f"    └─ Reason: {n['reason']}" + (f" ({n['reason_user']}, {when(n['reason_time'])})"
                                                          if n.get("reason_user") else ""))  # fmt: skip
    return out


def license_lines(lic: dict[str, Any]) -> list[str]:
    out = []
    for s in lic["servers"]:
        out.append(f"  server {s['name']:<20} {'up' if s['up'] else 'DOWN'}" + (f"  {s['message']}" if s.get("message") else ""))
    for f in lic["features"]:
        users = ", ".join(f"{u} {n}" for u, n in sorted(f["users"].items()))
        out.append(f"  {f['feature']:<20} {f['in_use'] if f['in_use'] is not None else '-':>4}/{f['issued'] if f['issued'] is not None else '-':<5}"
                   f" in use  expires {f['expiry'] or '-'}" + (f"  ({users})" if users else ""))  # fmt: skip
    return out


def collection_lines(rows: list[dict[str, Any]]) -> list[str]:
    out = ["Collection:"]
    for c in rows:
        if c["runs"] == 0 and c["skipped"]:
            out.append(f"  {c['collector']:<13} skipped: {c['skipped']}")
            continue
        rate = "-" if c["success_rate"] is None else f"{c['success_rate'] * 100:.0f}%"
        line = f"  {c['collector']:<13} {c['runs']:>6} runs  {rate:>4} success  on {c['nodes']} {'host' if c['nodes'] == 1 else 'hosts'}"
        if c["skipped_on"]:
            line += f" (skipped on {c['skipped_on']}: {c['skipped']})"
        out.append(line)
        if c["last_error"]:
            out.append(f"    └─ last error: {c['last_error']}")
    return out if rows else ["Collection: (no collector has reported yet)"]


def status_sections(st: dict[str, Any]) -> list[str]:
    queue = queue_lines(st["queue"])
    if st.get("queue_time") and st["queue"]:
        queue[0] = f"Queue (squeue at {when(st['queue_time'])}):"
    out = [*filesystems(st["filesystems"]), "", *queue, ""]
    metrics = node_metrics(st["node_metrics"])
    if metrics:
        out += [*metrics, ""]
    if st["slurm_nodes"]:
        out += ["Slurm nodes:", *node_lines(st["slurm_nodes"]), ""]
    if st["licenses"]["servers"] or st["licenses"]["features"]:
        out += ["Licenses:", *license_lines(st["licenses"]), ""]
    return [*out, *collection_lines(st["collection"])]


def status(st: dict[str, Any]) -> str:
    """`nomadectl status`: the collectors' views, then the agents, running jobs and ingest."""
    return "\n".join(["═══ NØMADE Status ═══", "", *store_line(st.get("aggregator")),
                      *status_sections(st), "", *agent_sections(st), *agent_security(st)])  # fmt: skip


def _terminal(text: str) -> str:
    """A node name or peer from a refused message (the sender's) for the terminal."""
    return printable(text, 160, "?")


def agent_security(st: dict[str, Any]) -> list[str]:
    """Refused agents (by reason, and the last one) and, in rollout, the nodes still on plain."""
    out = []
    refused = st.get("agents_refused") or {}
    if refused.get("total"):
        reasons = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(refused["by_reason"].items(),
                                                                          key=lambda kv: -kv[1]))  # fmt: skip
        last = ""
        if refused.get("last_time") is not None:
            clock = time.strftime("%H:%M:%S", time.localtime(refused["last_time"]))
            last = f"; last {clock} from {_terminal(refused.get('last_peer') or '?')}"
        out.append(f"  agents refused: {refused['total']} ({reasons}{last})")
    plain = st.get("agents_on_plain") or []
    if plain:
        names = ", ".join(_terminal(n) for n in plain[:10]) + (", ..." if len(plain) > 10 else "")
        out.append(f"  agents still on plain ZeroMQ (not moved to CURVE): {len(plain)} ({names})")
    return out


def queue(q: dict[str, Any]) -> str:
    age = f" ({seconds(q['age_seconds'])} ago)" if q.get("age_seconds") is not None else ""
    out = [f"Queue as squeue showed it at {when(q['time'])}{age}", *queue_lines(q["partitions"])]
    if q["pending_reasons"]:
        out += ["", "Why jobs wait:"]
        for r in q["pending_reasons"]:
            out.append(f"  {r['jobs']:>5} × {r['reason']}: {r['reason_text'] or '-'}"
                       + (f"; {r['unblock']}" if r["unblock"] else ""))  # fmt: skip
    if q["pending"]:
        out += ["", f"  {'JOBID':<14}{'USER':<10}{'PARTITION':<11}{'WAITING':<12}REASON"]
        for j in q["pending"][:50]:
            out.append(f"  {str(j['job_id']):<14}{j['user'] or '-':<10}{j['partition']:<11}"
                       f"{seconds(j['wait_seconds']):<12}{j['reason'] or '-'}")  # fmt: skip
    if q.get("stuck"):
        out += ["", "Running but making no CPU progress (last 30 min):"]
        for j in q["stuck"]:
            out.append(f"  {j['job_id']:<10} {j['user'] or '-':<10} {j['node_list'] or '-':<16}"
                       f" {j['cpu_seconds_in_window']} CPU s, running since {when(j['start_time'])}")  # fmt: skip
    failing = [a for a in q.get("arrays", []) if a["failed"]]
    if failing:
        out += ["", "Job arrays with failed tasks (last 7 days):"]
        for a in failing[:20]:
            out.append(f"  {a['array_job_id']:<10} {a['user'] or '-':<10} {a['failed']} of {a['tasks']} tasks failed"
                       f" ({', '.join(a['outcomes'])}), {a['completed']} completed, {a['unfinished']} unfinished")  # fmt: skip
    return "\n".join(out)


def nodes(v: dict[str, Any]) -> str:
    return "\n".join([f"Nodes at {when(v['time'])}", *node_lines(v["nodes"])])


def licenses(lic: dict[str, Any]) -> str:
    lines = license_lines(lic)
    return "\n".join([f"Licenses at {when(lic['time'])}", *lines]) if lines else "no license readings (configure [collectors.licenses])"


def collect(readings: list[Reading], skipped: dict[str, str], as_json: bool) -> str:
    if as_json:
        lines = [json.dumps({"collector": r.collector, **rec}, sort_keys=True, default=str)
                 for r in readings for rec in r.records]  # fmt: skip
        lines += [json.dumps({"collector": r.collector, "error": r.error}) for r in readings if not r.ok]
        lines += [json.dumps({"collector": k, "skipped": v}) for k, v in skipped.items()]
        return "\n".join(lines)
    out = []
    for r in readings:
        if r.ok:
            kinds: dict[str, int] = {}
            for rec in r.records:
                kinds[str(rec.get("record", "record"))] = kinds.get(str(rec.get("record", "record")), 0) + 1
            what = ", ".join(f"{n} {k if k != 'record' else 'records'}" for k, n in sorted(kinds.items())) or "no records"
            out.append(f"OK {r.collector:<13} {what} in {r.seconds:.2f} s")
        else:
            out.append(f"!! {r.collector:<13} {r.error}")
    out += [f"○  {k:<13} skipped: {v}" for k, v in skipped.items()]
    return "\n".join(out)
