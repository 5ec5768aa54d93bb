"""Pure parser of `sshare -a -l -P` (fair-share tree, '|' separated, with its header).

One record per association: account rows have no user; the depth in the tree is the number of
spaces sshare puts before the account name (docs/parsers-slurm.md).  `collect` is the `fairshare`
collector's read.
"""

from __future__ import annotations

import math
from typing import Any

from collectors.runner import run_tool
from nomade_common.config import Config
from nomade_common.errors import ParseError

from . import SLURM_TIMEOUT
from . import slurmvalues as sv

_COLUMNS = {
    "Account": "account",
    "User": "user",
    "Cluster": "cluster",
    "Partition": "partition",
    "RawShares": "raw_shares",
    "NormShares": "norm_shares",
    "RawUsage": "raw_usage",
    "NormUsage": "norm_usage",
    "EffectvUsage": "effective_usage",
    "FairShare": "fairshare",
    "LevelFS": "level_fs",
    "GrpTRESMins": "grp_tres_minutes",
    "TRESRunMins": "tres_run_minutes",
}
FIELDS = ("account", "user", "depth", "cluster", "partition", *list(_COLUMNS.values())[4:])


def _float(value: str) -> float | None:
    if sv.absent(value):
        return None
    f = float(value)
    return f if math.isfinite(f) else None  # LevelFS is 'inf' for an association with no usage


def _minutes(value: str) -> dict[str, int] | None:
    items = {k: int(v) for k, v in sv.tres(value).items() if v.isdigit()}
    return items or None


def _convert(key: str, value: str):
    if key in ("raw_shares", "raw_usage"):
        return int(value) if value.strip().isdigit() else None  # RawShares can be 'parent'
    if key in ("norm_shares", "norm_usage", "effective_usage", "fairshare", "level_fs"):
        return _float(value)
    if key in ("grp_tres_minutes", "tres_run_minutes"):
        return _minutes(value)
    return sv.string(value)


def records(text: str, source: str = "sshare") -> list[dict]:
    """`sshare -a -l -P` (or any sshare -P with its header)."""
    lines = [(n, ln) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    if not lines:
        return []
    number, head = lines[0]
    cols = [c.strip() for c in head.split("|")]
    if "Account" not in cols or "|" not in head:
        raise ParseError(source, number, "no 'Account|User|...' header: use sshare -P")
    out = []
    for number, line in lines[1:]:
        vals = line.split("|")
        if len(vals) != len(cols):
            raise ParseError(source, number, f"expected {len(cols)} fields, got {len(vals)}")
        rec = dict.fromkeys(FIELDS)
        try:
            for col, val in zip(cols, vals, strict=True):
                if col in _COLUMNS:
                    rec[_COLUMNS[col]] = _convert(_COLUMNS[col], val)
        except ValueError as exc:
            raise ParseError(source, number, f"{exc}") from None
        account = vals[cols.index("Account")]
        rec["depth"] = len(account) - len(account.lstrip(" "))
        if not rec["account"]:
            raise ParseError(source, number, "empty Account")
        out.append(rec)
    return out


# -- the collector (collectors/registry.py) -----------------------------------------------------
def collect(cfg: Config, state: dict[str, Any]) -> list[dict[str, Any]]:
    return records(run_tool(["sshare", "-a", "-l", "-P"], SLURM_TIMEOUT), "sshare -a -l -P")
