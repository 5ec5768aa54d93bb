"""The wire contract between NØMADE's node agents and its aggregator.

Every message is one msgpack-encoded envelope, a five-element array:

    (version, type, node, (epoch, seq), payload)

``node`` is the Slurm node name of the sender (``SLURMD_NODENAME``), not the host name, so two
agents can share a host.  ``epoch`` identifies one durable outbox of that agent (it is chosen
when the outbox is created and survives restarts) and ``seq`` increases by one per envelope within
it, so ``(node, epoch, seq)`` names an envelope uniquely forever: the aggregator stores each
envelope at most once and acknowledges it only after its COMMIT, which makes delivery
at-least-once and storage idempotent.

Both sides import this module; it imports nothing from either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgpack

VERSION = 1

# Agent -> aggregator.
HELLO = "hello"  # payload: {"host", "agent_version", "interval_seconds", "started"}
HEARTBEAT = (
    "heartbeat"  # payload: {"t", "jobs": [job_id, ...], "outbox_depth", "dropped", "collectors"}
)
SAMPLES = "samples"  # payload: {"rows": [SAMPLE_FIELDS values, ...]}
JOB_EVENT = "job_event"  # payload: {"event": "start"|"end", "job_id", "t", ...from the hook}
# One collector run that succeeded: {"collector", "t", "seconds", "records": [{...}, ...]}.  The
# records are the parser's, raw (docs/parsers-*.md); failures travel in the heartbeat's
# "collectors": {name: [interval_seconds, runs, failures, last_t, last_ok_t, last_error,
# last_seconds, skipped]}, a state in which the last value wins.
READINGS = "readings"
# Aggregator -> agent.
ACK = "ack"  # payload: {"epoch", "seq"}: stored and committed
NACK = "nack"  # payload: {"epoch", "seq", "reason"}: will never be stored (rejected)
# payload: {"epoch", "seq", "reason"}: not taken from this sender (its key is not enrolled for
# the node it names); the agent keeps the envelope and sends it again once an admin fixes that.
REFUSED = "refused"
VERDICT = "verdict"  # payload: {"job_id", "warned", "p_fail", "lines", "model_version"}

AGENT_TYPES = frozenset({HELLO, HEARTBEAT, SAMPLES, JOB_EVENT, READINGS})

# One sample is one row per (job, node, time).  Units are in the names; None means "not
# available on this node" and is never replaced by 0.
SAMPLE_FIELDS: tuple[str, ...] = (
    "job_id",  # int
    "t",  # float, Unix seconds when the sample was read
    "cpu_usage_seconds",  # cgroup total CPU time (user + system)
    "cpu_user_seconds",
    "cpu_system_seconds",
    "mem_current_bytes",  # memory.usage_in_bytes (v1) / memory.current (v2)
    "mem_peak_bytes",  # memory.max_usage_in_bytes (v1) / memory.peak (v2)
    "mem_rss_bytes",  # total_rss (v1) / anon (v2)
    "mem_cache_bytes",  # total_cache (v1) / file (v2)
    "mem_swap_bytes",  # total_swap (v1) / memory.swap.current (v2)
    "mem_limit_bytes",  # memory.limit_in_bytes (v1) / memory.max (v2); None when unlimited
    "cgroup_read_bytes",  # blkio (v1) / io.stat (v2); None where the controller is absent
    "cgroup_write_bytes",
    "proc_read_bytes",  # /proc/<pid>/io read_bytes, summed over the job's processes
    "proc_write_bytes",
    "proc_rchar",
    "proc_wchar",
    "proc_syscr",
    "proc_syscw",
    "nprocs",  # processes in the job's cgroup at sample time
)


class WireError(ValueError):
    """An envelope that cannot be understood.  KEY is its (node, epoch, seq) when those could
    be read, so that the receiver can answer it with a NACK; None when not even they could."""

    def __init__(self, message: str, key: tuple[str, int, int] | None = None) -> None:
        super().__init__(message)
        self.key = key


# Bounds of the envelope's head (the payload's are the aggregator's: store/sqlite/ingest.py).
# A node name is a Slurm node name: letters, digits, '.', '_', '-', at most MAX_NODE_NAME.
MAX_NODE_NAME = 128
MAX_KEY = (1 << 63) - 1  # epoch and seq are SQLite integers
# What an agent puts in one envelope: half the aggregator's default max_message_bytes (8 MiB).
MAX_PAYLOAD_BYTES = 4 << 20
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def valid_node(node: Any) -> bool:
    return (
        isinstance(node, str)
        and 0 < len(node) <= MAX_NODE_NAME
        and _NODE_NAME.fullmatch(node) is not None
    )


@dataclass(frozen=True, slots=True)
class Envelope:
    type: str
    node: str
    epoch: int
    seq: int
    payload: Any
    version: int = VERSION

    def pack(self) -> bytes:
        return msgpack.packb(
            [self.version, self.type, self.node, [self.epoch, self.seq], self.payload],
            use_bin_type=True,
        )


def unpack(data: bytes) -> Envelope:
    """Decode one envelope, or raise WireError saying what was wrong with it."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise WireError(f"not msgpack ({type(exc).__name__})") from None
    if not isinstance(obj, list) or len(obj) != 5:
        raise WireError("expected a 5-element envelope array")
    version, mtype, node, key, payload = obj
    if not valid_node(node):
        raise WireError(
            f"node must be a Slurm node name of at most {MAX_NODE_NAME} letters, "
            "digits, '.', '_' or '-'"
        )
    if not (
        isinstance(key, list)
        and len(key) == 2
        and all(type(k) is int and 0 <= k <= MAX_KEY for k in key)
    ):
        raise WireError(f"envelope key must be [epoch, seq], integers from 0 to {MAX_KEY}")
    if version != VERSION:
        shown = (
            version if type(version) is int and abs(version) < 1 << 32 else type(version).__name__
        )
        raise WireError(
            f"unsupported envelope version {shown} (this side speaks {VERSION})",
            (node, key[0], key[1]),
        )
    if not isinstance(mtype, str) or not mtype or len(mtype) > 32:
        raise WireError("envelope type must be a non-empty string", (node, key[0], key[1]))
    return Envelope(mtype, node, key[0], key[1], payload, version)


def ack(node: str, epoch: int, seq: int) -> bytes:
    return Envelope(ACK, node, epoch, seq, {"epoch": epoch, "seq": seq}).pack()


def nack(node: str, epoch: int, seq: int, reason: str) -> bytes:
    return Envelope(NACK, node, epoch, seq, {"epoch": epoch, "seq": seq, "reason": reason}).pack()


def refused(node: str, epoch: int, seq: int, reason: str) -> bytes:
    return Envelope(
        REFUSED, node, epoch, seq, {"epoch": epoch, "seq": seq, "reason": reason}
    ).pack()


def pack_payload(payload: Any) -> bytes:
    return msgpack.packb(payload, use_bin_type=True)


def pack_stored(mtype: str, node: str, epoch: int, seq: int, payload_bytes: bytes) -> bytes:
    """An envelope around a payload that was packed earlier (the agent's outbox keeps payloads
    packed), without decoding it again: msgpack values simply follow each other."""
    head = msgpack.packb([VERSION, mtype, node, [epoch, seq]], use_bin_type=True)
    return b"\x95" + head[1:] + payload_bytes
