"""Who may see what through the HTTP API: pure functions over a Caller and plain values, so the
whole policy is tested without sockets (tests/test_policy.py).

- Hook reports come from root or SlurmUser only.
- A user is answered for the uid of their MUNGE credential, whatever the request names: their own
  jobs, their own `check`; a job of another user is "no such job" (404, as Slurm answers
  `scontrol show job` under PrivateData=jobs), so that its existence is not disclosed either.
- Admins (uid 0, `security.admin_users`, members of `security.admin_groups`) see everything.
- What Slurm hides from users (its PrivateData flags) NØMADE hides too, from non-admins.
- The agents' side (counters, refused agents and their addresses, nodes still on plain ZeroMQ)
  is for admins.
- Quotas and scratch: a user sees their own (and their groups' quotas), never another user's
  lines; fair share as sshare shows it under PrivateData; partitions, like nodes, hidden where
  Slurm's PrivateData hides them; NFS rates per mount (which may be a user's home) hidden
  under PrivateData nodes, jobs, users or usage.
- A user has at most USER_REQUESTS requests in progress at once (HTTP 429 beyond), so that one
  user cannot take the server's concurrency from the others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

PRIVATE_FLAGS = frozenset(
    {"jobs", "nodes", "partitions", "usage", "users", "accounts", "events", "reservations", "cloud"}
)
PER_USER_FLAGS = frozenset({"usage", "users", "accounts"})
USER_REQUESTS = 8  # requests in progress at once per uid, for all but admins and SlurmUser
QUEUE_COUNTS = ("by_state", "by_partition_state", "cpus_by_state", "taken")  # name nobody


class Forbidden(Exception):
    """The caller may not do this (HTTP 403); the message is one line for the caller."""


@dataclass(frozen=True)
class Caller:
    uid: int
    name: str | None  # None: a uid without a name on the head node (sees only what is public)
    admin: bool = False
    groups: frozenset[str] = field(default_factory=frozenset)


def is_admin(
    uid: int,
    name: str | None,
    groups: frozenset[str],
    admin_users: list[str],
    admin_groups: list[str],
) -> bool:
    return (
        uid == 0 or (name is not None and name in admin_users) or bool(groups & set(admin_groups))
    )


def may_report(caller: Caller, slurm_uid: int | None) -> bool:
    """Hook reports (job starts and ends) only from root or SlurmUser."""
    return caller.uid == 0 or (slurm_uid is not None and caller.uid == slurm_uid)


def requests_cap(caller: Caller, slurm_uid: int | None) -> int | None:
    """How many requests CALLER may have in progress at once; None: no cap (admins, and the
    hook reports a job array's starts bring in dozens at once)."""
    return None if caller.admin or may_report(caller, slurm_uid) else USER_REQUESTS


def parse_private_data(text: str) -> frozenset[str]:
    """Flags from a `security.private_data` list or a `PrivateData = ...` value ("none", "jobs,
    nodes"); unknown words are kept (a newer Slurm's flag hides nothing here)."""
    words = {w.strip().lower() for w in re.split(r"[,\s]+", text) if w.strip()}
    return frozenset(words - {"none", "(null)"})


def private_data_from_config(text: str) -> frozenset[str] | None:
    """The PrivateData flags in `scontrol show config` output; None when the line is missing."""
    m = re.search(r"^PrivateData\s*=\s*(.*)$", text, re.MULTILINE)
    return None if m is None else parse_private_data(m.group(1))


def check_user(caller: Caller, named: str | None) -> str:
    """The user a `check` scores as: the caller's own, or another only for an admin."""
    if named and named != caller.name:
        if not caller.admin:
            raise Forbidden("only root and NØMADE's admins may score a job as another user")
        return named
    if caller.name is None:
        raise Forbidden(f"uid {caller.uid} has no user name on the head node")
    return caller.name


def owns(caller: Caller, job: dict[str, Any]) -> bool:
    if job.get("user_id") is not None:
        return int(job["user_id"]) == caller.uid
    return caller.name is not None and job.get("user") == caller.name


def job_visible(caller: Caller, job: dict[str, Any] | None) -> bool:
    return job is not None and (caller.admin or owns(caller, job))


def job_view(caller: Caller, private: frozenset[str], job: dict[str, Any]) -> dict[str, Any]:
    """A job of the caller's own: its queue_at_start (squeue's counts when it started) keeps,
    under PrivateData jobs, usage, users or accounts, only counts that name nobody and the
    caller's own per-user counts; what it may hold besides is dropped (unchecked, so hidden)."""
    snap = job.get("queue_at_start")
    if caller.admin or not isinstance(snap, dict) or not private & (PER_USER_FLAGS | {"jobs"}):
        return job
    users = snap.get("by_user_state")
    mine = {
        k: n
        for k, n in (users.items() if isinstance(users, dict) else ())
        if caller.name is not None and str(k).rpartition(":")[0] == caller.name
    }
    kept = {k: snap[k] for k in QUEUE_COUNTS if k in snap}
    return {**job, "queue_at_start": {**kept, "by_user_state": mine}}


def jobs_user(caller: Caller, named: str | None) -> tuple[str | None, bool]:
    """(the user to list, whether to list anything): a user lists only their own jobs."""
    if caller.admin:
        return named or None, True
    if caller.name is None or (named and named != caller.name):
        return caller.name, False
    return caller.name, True


def nodes_allowed(caller: Caller, private: frozenset[str]) -> None:
    if "nodes" in private and not caller.admin:
        raise Forbidden("Slurm's PrivateData=nodes: node details are for administrators")


NFS_PRIVATE = ("nodes", "jobs", "users", "usage")


def nfs_allowed(caller: Caller, private: frozenset[str]) -> None:
    """NFS rates per node and mount: a mount point may name a user (an automounted
    /home/bob), and its rates show what they do; under PrivateData nodes, jobs, users or usage
    they are for administrators."""
    hidden = [f for f in NFS_PRIVATE if f in private]
    if hidden and not caller.admin:
        raise Forbidden(
            f"Slurm's PrivateData={hidden[0]}: NFS rates per node and mount are for administrators"
        )


def models_view(caller: Caller, models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The model registry names no user or job: everyone sees which model scores their jobs and
    how well it did; the files' place on the head node is for administrators."""
    return models if caller.admin else [{k: v for k, v in m.items() if k != "path"} for m in models]


def alert_admin(caller: Caller, what: str) -> str:
    """The name an administrator's alert action is recorded under; Forbidden for anyone else."""
    if not caller.admin or caller.name is None:
        raise Forbidden(f"{what} is for administrators (security.admin_users, admin_groups)")
    return caller.name


def collectors_allowed(caller: Caller) -> None:
    if not caller.admin:
        raise Forbidden("the collectors' health is for administrators")


def _mine(caller: Caller, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r.get("user") is not None and r.get("user") == caller.name]


def _anonymous(caller: Caller, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with other users' names (and accounts) blanked."""
    keep = ("user", "account")
    return [
        r if r.get("user") == caller.name else {**r, **{k: None for k in keep if k in r}}
        for r in rows
    ]


def _job_rows(
    caller: Caller, private: frozenset[str], rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    if "jobs" in private:
        return _mine(caller, rows)
    if private & PER_USER_FLAGS:
        return _anonymous(caller, rows)
    return rows


def licenses_view(caller: Caller, private: frozenset[str], view: dict[str, Any]) -> dict[str, Any]:
    """Who holds a license is a per-user figure: under usage/users/accounts only one's own."""
    if caller.admin or not private & PER_USER_FLAGS:
        return view
    feats = [
        {**f, "users": {u: n for u, n in (f.get("users") or {}).items() if u == caller.name}}
        for f in view.get("features", [])
    ]
    return {**view, "features": feats}


def queue_view(caller: Caller, private: frozenset[str], view: dict[str, Any]) -> dict[str, Any]:
    """Per-job lists (pending, stuck, arrays) as PrivateData allows; per-partition counts stay."""
    if caller.admin:
        return view
    return {
        **view,
        **{
            k: _job_rows(caller, private, view[k])
            for k in ("pending", "stuck", "arrays")
            if k in view
        },
    }


def status_view(caller: Caller, private: frozenset[str], view: dict[str, Any]) -> dict[str, Any]:
    """Status as a user may see it: the same keys, with the collectors' health and the agents'
    side (counters, refused agents and their peers, nodes still on plain) emptied."""
    if caller.admin:
        return view
    out = {
        **view,
        "running_jobs": _job_rows(caller, private, view.get("running_jobs", [])),
        "collection": [],
        "licenses": licenses_view(caller, private, view.get("licenses", {})),
    }
    for key, empty in (("counters", {}), ("agents_refused", {}), ("agents_on_plain", [])):
        if key in out:
            out[key] = empty
    if "nodes" in private:
        out.update(nodes=[], slurm_nodes=[], node_metrics={})
    return out


# -- what the nodes read: health, quotas, scratch; Slurm's fair share and partitions ----------
def nodes_view(caller: Caller, view: dict[str, Any]) -> dict[str, Any]:
    """The nodes with their health (nodes_allowed first).  The kernel log's lines may name other
    users' processes: a user gets their counts per category, not the lines."""
    if caller.admin:
        return view
    rows = []
    for n in view.get("nodes", []):
        h = n.get("health")
        if isinstance(h, dict) and isinstance(h.get("kernel_errors"), dict):
            n = {**n, "health": {**h, "kernel_errors": {**h["kernel_errors"], "recent": []}}}
        rows.append(n)
    return {**view, "nodes": rows}


def own_quota(caller: Caller, q: dict[str, Any]) -> bool:
    """A user quota of the caller's own (by uid, else by name), or a group quota of one of the
    caller's groups: what `quota` shows a user."""
    if q.get("kind") == "user":
        if type(q.get("id")) is int:
            return q["id"] == caller.uid
        return caller.name is not None and q.get("name") == caller.name
    return q.get("kind") == "group" and q.get("name") in caller.groups


def quotas_view(caller: Caller, view: dict[str, Any]) -> dict[str, Any]:
    """Admins see every quota; a user their own and their groups' (project quotas name no user:
    administrators only)."""
    if caller.admin:
        return view
    return {**view, "quotas": [q for q in view.get("quotas", []) if own_quota(caller, q)]}


def listing_user(caller: Caller, named: str | None) -> tuple[str | None, bool]:
    """(the user to list, whether to list anything) for a view of per-user rows: as for jobs,
    a user lists only their own; naming another gives nothing."""
    return jobs_user(caller, named)


SCRATCH_PER_USER = ("owners", "files", "leftover_dirs")


def scratch_view(caller: Caller, view: dict[str, Any]) -> dict[str, Any]:
    """A user sees their own files, totals and left-over job directories (by uid), and each
    scan's totals, which name nobody; other users' paths and sizes are not shown."""
    if caller.admin:
        return view
    mine = {
        k: [r for r in view.get(k, []) if r.get("uid") is not None and r["uid"] == caller.uid]
        for k in SCRATCH_PER_USER
    }
    return {**view, **mine}


def fairshare_view(caller: Caller, private: frozenset[str], view: dict[str, Any]) -> dict[str, Any]:
    """The fair-share tree as sshare shows it; under PrivateData usage, users or accounts, a
    user sees only their own lines and the lines of the accounts they are in."""
    if caller.admin or not private & PER_USER_FLAGS:
        return view
    rows = view.get("associations", [])
    accounts = {r.get("account") for r in rows if r.get("user") and r["user"] == caller.name}
    kept = [
        r
        for r in rows
        if (r.get("user") and r["user"] == caller.name)
        or (not r.get("user") and r.get("account") in accounts)
    ]
    return {**view, "associations": kept}


def partitions_allowed(caller: Caller, private: frozenset[str]) -> None:
    """Under PrivateData=partitions Slurm shows a user only the partitions they may use;
    NØMADE keeps no partition access lists (AllowAccounts, AllowGroups), so it shows them to
    administrators only."""
    if "partitions" in private and not caller.admin:
        raise Forbidden("Slurm's PrivateData=partitions: partition details are for administrators")


def partitions_view(
    caller: Caller, private: frozenset[str], view: dict[str, Any]
) -> dict[str, Any]:
    """Per-partition counts for everyone; under PrivateData=nodes, without the nodes' names."""
    if caller.admin or "nodes" not in private:
        return view
    return {**view, "partitions": [{**p, "nodes": []} for p in view.get("partitions", [])]}


# -- trends of the readings history (docs/trends.md) -------------------------------------------
def disk_trend_allowed(caller: Caller, private: frozenset[str], node: str | None) -> None:
    """A filesystem's usage is shown to every user (status shows it); one node's series of it is
    a node detail, for administrators under PrivateData=nodes, as /nodes is."""
    if node is not None:
        nodes_allowed(caller, private)


def disk_trend_view(
    caller: Caller, private: frozenset[str], view: dict[str, Any]
) -> dict[str, Any]:
    """Under PrivateData=nodes a user does not see which nodes read the filesystem."""
    if caller.admin or "nodes" not in private:
        return view
    return {**view, "nodes": []}


# The records whose latest values /nodes (and status's node metrics) show users: their trends
# are node details, under PrivateData=nodes for administrators.  NFS mounts as /nfs decides.
# Any other record (quotas, scratch files, a job's processes, the queue) is for administrators:
# it may name users and jobs.
TREND_NODE_RECORDS = frozenset(
    {
        ("disk", "filesystem"),
        ("health", "temperature"),
        ("health", "edac"),
        ("gpu", "gpu"),
        ("iostat", "cpu"),
        ("iostat", "device"),
        ("mpstat", "cpu"),
        ("mpstat", "summary"),
        ("vmstat", "vm"),
        ("pressure", "pressure"),
    }
)


def trend_allowed(caller: Caller, private: frozenset[str], collector: str, record: str) -> None:
    """Who may see the trend of a field of COLLECTOR's RECORD records, per node."""
    if caller.admin:
        return
    if (collector, record) == ("nfs", "nfs_mount"):
        nfs_allowed(caller, private)
    elif (collector, record) in TREND_NODE_RECORDS:
        nodes_allowed(caller, private)
    else:
        raise Forbidden(f"trends of {collector} {record} records are for administrators")
