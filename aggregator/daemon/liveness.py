"""Node liveness as a pure state machine: tick(nodes, now) -> (nodes, events)."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class NodeLife:
    node: str
    last_seen: float
    state: str = "up"  # up | down


def tick(
    nodes: list[NodeLife], now: float, down_after: float
) -> tuple[list[NodeLife], list[tuple[str, str]]]:
    """Mark nodes silent for longer than DOWN_AFTER as down, and heard-from ones as up again.

    Returns the new states and the events (node, "node_down" | "node_up") of the transitions.
    """
    out, events = [], []
    for n in nodes:
        silent = now - n.last_seen > down_after
        if silent and n.state != "down":
            n = replace(n, state="down")
            events.append((n.node, "node_down"))
        elif not silent and n.state == "down":
            n = replace(n, state="up")
            events.append((n.node, "node_up"))
        out.append(n)
    return out, events
