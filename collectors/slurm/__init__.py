"""Slurm's commands, read on the head node: one module per command, its parsers and its read.

`--json` is used where the installed Slurm answers it (asked once per command: `json_works`);
squeue is read as text: its `-o` format carries every field NØMADE keeps, and Slurm 22.05's
`squeue --json` ignores `-t` and dumps finished jobs too, which on a busy cluster is many times
the output.
"""

from __future__ import annotations

from typing import Any

from collectors.runner import CollectorError, run_tool

SLURM_TIMEOUT = 60.0


def json_works(state: dict[str, Any], argv: list[str]) -> bool:
    """Whether ARGV + --json answers on this Slurm (asked once; a failure means text)."""
    if "json" not in state:
        try:
            run_tool([*argv, "--json"], SLURM_TIMEOUT)
            state["json"] = True
        except CollectorError:
            state["json"] = False
    return bool(state["json"])
