"""NØMADE's head-node Slurm hooks, standard library only, run by the shell wrappers beside it as
`timeout -s KILL 1 /usr/bin/python3 -I nomade_hook.py KIND` (KIND: prologslurmctld,
epilogslurmctld).  The node hooks (prolog, epilog, taskprolog) are plain shell: node_hook.sh.

The rules every hook keeps: it exits 0 whatever happens, it gives up well within its hard time
limit, and it never does the agent's or the aggregator's work itself.
- prologslurmctld / epilogslurmctld (SlurmUser, head node): tell the aggregator that the job
  starts or ends (one local HTTP request; the aggregator reads `scontrol show job -o` for what
  the environment lacks, after the hook has returned).  After
  `breaker_failures` failures in a row the aggregator is skipped for `breaker_seconds`.
"""

import http.client
import json
import os
import sys
import time


def process_start():
    """When this process started, on the monotonic clock: the hard limit counts from there, so
    the interpreter's own start and imports (slow on a busy node) are not left out."""
    try:
        with open("/proc/self/stat", "rb") as f:
            ticks = int(f.read().rsplit(b")", 1)[1].split()[19])  # field 22, starttime
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.monotonic() - max(0.0, age)
    except (OSError, ValueError, IndexError, AttributeError):
        return time.monotonic()


HERE = os.path.dirname(os.path.abspath(__file__))
STARTED = process_start()
DEFAULTS = {
    "timeout_seconds": 1.0,
    "aggregator_url": "http://127.0.0.1:27011",
    "spool_dir": "/var/spool/nomade",
    "state_dir": "/var/spool/nomade/hooks",
    "task_notice": False,
    "breaker_failures": 3,
    "breaker_seconds": 60.0,
}


def load_conf():
    conf = dict(DEFAULTS)
    try:
        with open(os.path.join(HERE, "hooks.json"), encoding="utf-8") as f:
            conf.update(json.load(f))
    except (OSError, ValueError):
        pass  # defaults are safe; the failure shows in `nomadectl syscheck`
    return conf


def remaining(conf, reserve=0.1):
    """Seconds left before this hook must have returned (keeping RESERVE for the wrapper)."""
    return conf["timeout_seconds"] - reserve - (time.monotonic() - STARTED)


def write_atomically(path, data, mode=0o644):
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(data)
    os.replace(tmp, path)


def note_failure(conf, kind, error):
    """Append one line to the hooks' log in the state directory (capped at 1 MB)."""
    try:
        os.makedirs(conf["state_dir"], exist_ok=True)
        log = os.path.join(conf["state_dir"], f"hooks-{kind}.log")
        if os.path.exists(log) and os.path.getsize(log) > 1 << 20:
            os.replace(log, log + ".1")
        with open(log, "a", encoding="utf-8") as f:
            f.write(
                "{} {} job={} {}\n".format(
                    time.strftime("%Y-%m-%dT%H:%M:%S"), kind, os.environ.get("SLURM_JOB_ID"), error
                )
            )
    except OSError:
        pass


# -- head-node hooks: tell the aggregator, behind a circuit breaker ------------------------------
def breaker_path(conf):
    return os.path.join(conf["state_dir"], "breaker.json")


def breaker_read(conf):
    try:
        with open(breaker_path(conf), encoding="utf-8") as f:
            state = json.load(f)
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def breaker_write(conf, state):
    try:
        os.makedirs(conf["state_dir"], exist_ok=True)
        write_atomically(breaker_path(conf), json.dumps(state))
    except OSError:
        pass


def slurm_env():
    return {k: v for k, v in os.environ.items() if k.startswith(("SLURM", "SLURMD_"))}


def post(conf, path, body):
    # Keep 30% of the limit for what follows the wait (recording the failure, exiting): on a busy
    # head node a thinner reserve gets the hook killed before it records the failure, and then
    # the breaker never opens.
    budget = remaining(conf, reserve=max(0.1, 0.3 * conf["timeout_seconds"]))
    if budget <= 0.05:
        raise TimeoutError("no time left to reach the aggregator")
    # http.client rather than urllib.request: half the import time, and no TLS module to load.
    host, _, port = conf["aggregator_url"].split("://", 1)[-1].rstrip("/").partition(":")
    conn = http.client.HTTPConnection(host, int(port or 80), timeout=budget)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        answer = json.loads(resp.read(1 << 20))
    finally:
        conn.close()
    if not isinstance(answer, dict) or not answer.get("ok"):
        raise ValueError("unexpected answer from the aggregator")
    return answer


def controller_report(conf, event):
    state = breaker_read(conf)
    now = time.time()
    if state.get("open_until", 0) > now:
        state["skipped_total"] = state.get("skipped_total", 0) + 1
        breaker_write(conf, state)
        return
    # The aggregator asks `scontrol show job` itself, after this hook has returned: inside
    # PrologSlurmctld that RPC waits on slurmctld's own locks and delays the job's start.
    body = {"env": slurm_env(), "t": now}
    try:
        post(conf, "/api/v1/hooks/job-" + event, body)
    except Exception as exc:  # any failure of the aggregator counts the same
        state["failures_in_row"] = state.get("failures_in_row", 0) + 1
        state["failures_total"] = state.get("failures_total", 0) + 1
        state["last_error"] = f"{type(exc).__name__}: {exc}"
        if state["failures_in_row"] >= conf["breaker_failures"]:
            state["open_until"] = now + conf["breaker_seconds"]
            state["failures_in_row"] = 0
        breaker_write(conf, state)
        note_failure(
            conf, "prologslurmctld" if event == "start" else "epilogslurmctld", state["last_error"]
        )
        return
    if state.get("failures_in_row") or state.get("open_until"):
        state.update(failures_in_row=0, open_until=0)
        breaker_write(conf, state)


def main(argv):
    kind = argv[1] if len(argv) > 1 else ""
    conf = load_conf()
    try:
        if kind == "prologslurmctld":
            controller_report(conf, "start")
        elif kind == "epilogslurmctld":
            controller_report(conf, "end")
        else:
            note_failure(conf, "unknown", f"unknown hook kind {kind!r}")
    except Exception as exc:  # a hook never fails a job
        note_failure(conf, kind or "unknown", f"{type(exc).__name__}: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
