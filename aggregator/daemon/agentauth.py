"""Who may send to the aggregator's agent socket: CurveZMQ with enrolled node keys.

NØMADE's own ZAP handler (ZAP 1.0, RFC 27) answers libzmq's handshake questions from a cache of
the keys in the store's `agent_keys` table, refreshed about every second: an enrolled key that is
not revoked is accepted with User-Id = its node, so every message on that connection carries the
node name it may use.  A refused handshake is answered "300" (temporary): the peer is dropped
without an ERROR, so an agent enrolled a moment later, or given the new server key, gets in on
its next try.  Refusals are counted by reason through the writer (counters `agents_refused_*`,
and one `agent_refused` event a second at most, naming the last peer), for `nomadectl status`.

When a key is revoked or the server key file changes (`nomadectl keys rotate-server`), `rebind`
is set: the ZeroMQ loop closes its socket and binds a new one, so every connection is dropped and
must handshake again; agents reconnect and resend what is unacknowledged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from typing import Any

import zmq
from zmq.utils import z85

from aggregator.store import (
    WorkItem,
    Writer,
    agent_keys,
    bump,
    connect,
    curve_seen_nodes,
    event,
    note_agent_link,
)
from nomade_common import keys
from nomade_common.config import Config
from nomade_common.errors import ConfigError

log = logging.getLogger("nomade.agentauth")
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"nomade"
REFRESH_SECONDS = 1.0
UNKNOWN_REFRESH_SECONDS = 0.25
HANDSHAKE_MS = 5000  # a refused peer is silently left; this closes its connection
LINK_WRITE_SECONDS = 60.0  # how often a node's "seen over CURVE / plain" time is written
INSECURE_WARNING = (
    'security.curve = "off": any process that reaches %s can send data under any node name '
    "and receive its jobs' verdicts; enrol the nodes' keys (nomadectl keys) and set curve = "
    '"on" (docs/security.md)'
)


def load_server_secret(cfg: Config) -> tuple[bytes, bytes]:
    """The aggregator's CURVE pair (public, secret) as Z85 bytes; ConfigError naming the file
    and the command that makes it."""
    public, secret = keys.load_or_hint(
        cfg.security.server_secret(), secret=True, hint="nomadectl init makes it"
    )
    assert secret is not None
    return public.encode(), secret.encode()


class Refusals:
    """Refused handshakes and messages, counted in memory and written once a second."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._last: tuple[float, str, str] | None = None

    def add(self, reason: str, peer: str) -> None:
        with self._lock:
            self._counts[reason] = self._counts.get(reason, 0) + 1
            self._last = (time.time(), peer, reason)

    def work(self) -> WorkItem | None:
        """What happened since the last call, as one writer item (None when nothing)."""
        with self._lock:
            counts, last = self._counts, self._last
            self._counts, self._last = {}, None
        if not counts or last is None:
            return None

        def apply(c: Any) -> None:
            for reason, n in counts.items():
                bump(c, f"agents_refused_{reason}", n)
            event(c, "agent_refused", detail=f"{last[1]}: {last[2].replace('_', ' ')}", t=last[0])

        return WorkItem(apply)


class AgentAuth(threading.Thread):
    """The ZAP handler thread, the enrolled-key cache and the per-message checks."""

    def __init__(self, cfg: Config, ctx: zmq.Context, writer: Writer) -> None:
        super().__init__(name="zap", daemon=True)
        self.cfg, self.ctx, self.writer = cfg, ctx, writer
        self.public, self.secret = load_server_secret(cfg)
        self._key_stamp = keys.stamp(cfg.security.server_secret())
        self.refusals = Refusals()
        self.rebind = threading.Event()
        self._halt = threading.Event()
        self._nodes: dict[bytes, str] = {}  # raw 32-byte key -> node (enrolled, not revoked)
        self._revoked: set[bytes] = set()
        self._active: set[str] = set()
        self.curve_nodes: set[str] = set()  # nodes seen over CURVE: refused on plain (rollout)
        self._written: dict[tuple[str, str], float] = {}  # (node, column) -> when written
        self._refreshed = 0.0
        self._zap = ctx.socket(zmq.REP)
        self._zap.setsockopt(zmq.LINGER, 0)
        self._zap.bind(ZAP_ENDPOINT)
        self.refresh()

    # -- the key cache --------------------------------------------------------------------
    def refresh(self) -> None:
        """Reload the enrolled keys and the nodes seen over CURVE; a key that was accepted and
        is no longer (revoked, replaced) or a changed server key file asks for a rebind."""
        self._refreshed = time.monotonic()
        conn = connect(self.cfg.database, readonly=True)
        try:
            rows = agent_keys(conn)
            seen = curve_seen_nodes(conn)
        finally:
            conn.close()
        enrolled = [(z85.decode(r["public_key"].encode()), r) for r in rows]
        nodes = {key: r["node"] for key, r in enrolled if r["revoked"] is None}
        revoked = {key for key, r in enrolled if r["revoked"] is not None}
        dropped = [k for k, node in self._nodes.items() if nodes.get(k) != node]
        self._nodes, self._revoked, self._active = nodes, revoked, set(nodes.values())
        self.curve_nodes.update(seen)
        if dropped:
            log.warning(
                "%d agent key(s) revoked or replaced: dropping every agent connection", len(dropped)
            )
            self.rebind.set()
        self._check_server_key()

    def _check_server_key(self) -> None:
        stamp = keys.stamp(self.cfg.security.server_secret())
        if stamp == self._key_stamp or stamp is None:
            return
        try:
            public, secret = load_server_secret(self.cfg)
        except ConfigError as exc:  # half-written or wrong mode: keep the old key meanwhile
            log.warning("new server key not usable yet: %s", exc)
            return
        self._key_stamp = stamp
        if secret != self.secret:
            self.public, self.secret = public, secret
            log.warning("server key changed (%s): dropping every agent connection", public.decode())
            self.rebind.set()

    def active(self, node: str) -> bool:
        return node in self._active

    # -- ZAP ------------------------------------------------------------------------------
    def answer(self, frames: list[bytes]) -> list[bytes]:
        """One ZAP reply: [version, request id, status, text, user id, metadata]."""
        if len(frames) < 6 or frames[0] != b"1.0":
            return [
                b"1.0",
                frames[1] if len(frames) > 1 else b"",
                b"500",
                b"bad ZAP request",
                b"",
                b"",
            ]
        request_id, domain, address, mechanism = frames[1], frames[2], frames[3], frames[5]
        peer = address.decode(errors="replace") or "?"
        if (
            mechanism != b"CURVE"
            or domain != ZAP_DOMAIN
            or len(frames) != 7
            or len(frames[6]) != 32
        ):
            self.refusals.add("wrong_mechanism", peer)
            return [b"1.0", request_id, b"300", b"CURVE only", b"", b""]
        key = frames[6]
        node = self._nodes.get(key)
        if node is None and time.monotonic() - self._refreshed > UNKNOWN_REFRESH_SECONDS:
            self._tick()  # enrolled a moment ago? (at most a few reads a second under a flood)
            node = self._nodes.get(key)
        if node is None:
            self.refusals.add("revoked_key" if key in self._revoked else "unknown_key", peer)
            return [b"1.0", request_id, b"300", b"key not enrolled", b"", b""]
        return [b"1.0", request_id, b"200", b"OK", node.encode(), b""]

    def run(self) -> None:
        next_refresh = time.monotonic() + REFRESH_SECONDS
        try:
            while not self._halt.is_set():
                if self._zap.poll(200):
                    self._zap.send_multipart(self.answer(self._zap.recv_multipart()))
                if time.monotonic() >= next_refresh:
                    next_refresh = time.monotonic() + REFRESH_SECONDS
                    self._tick()
        finally:
            self._zap.close(0)

    def _tick(self) -> None:
        try:
            self.refresh()
        except Exception as exc:  # a locked or moved database: keep the last keys
            log.warning("agent keys not refreshed: %s", exc)
        work = self.refusals.work()
        if work is not None:
            self.writer.submit(work)

    def stop(self) -> None:
        self._halt.set()

    def close(self) -> None:
        """Close the ZAP socket of a handler that never ran (the thread closes its own)."""
        self._zap.close(0)

    # -- per message (in the writer thread) -----------------------------------------------
    def admit(self, c: Any, node: str, user_id: str | None, peer: str) -> bool:
        """Whether an envelope naming NODE may be stored: over CURVE its key must be NODE's and
        still enrolled (USER_ID from the handshake); over plain (rollout, USER_ID None) NODE
        must be enrolled (the rollout's first step) and never have been seen over CURVE."""
        if user_id is None:
            if node in self.curve_nodes:
                self.refusals.add("plain_after_curve", f"{peer} as {node[:64]}")
                return False
            if not self.active(node):
                self.refusals.add("plain_not_enrolled", f"{peer} as {node[:64]}")
                return False
            self._seen(c, node, "plain_seen")
            return True
        if node != user_id:
            self.refusals.add("node_mismatch", f"{peer} ({user_id}) as {node[:64]}")
            return False
        if not self.active(node):
            self.refusals.add("revoked_key", f"{peer} ({node})")
            return False
        self.curve_nodes.add(node)
        self._seen(c, node, "curve_seen")
        return True

    def rolled_back(self) -> None:
        """The writer rolled a batch back: the agent_links rows noted as written may not be."""
        self._written.clear()

    def _seen(self, c: Any, node: str, column: str) -> None:
        now = time.time()
        if now - self._written.get((node, column), 0.0) < LINK_WRITE_SECONDS:
            return
        self._written[(node, column)] = now
        note_agent_link(c, node, column, now)


class HandshakeWatch:
    """Handshakes libzmq refuses before any ZAP question (a peer without CURVE, or one using
    another server key), read from the socket's monitor and counted with the peer's address."""

    EVENTS = (
        zmq.EVENT_ACCEPTED
        | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        | zmq.EVENT_DISCONNECTED
        | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    )

    def __init__(self, sock: zmq.Socket, refusals: Refusals) -> None:
        self.sock, self.refusals = sock, refusals
        self.monitor = sock.get_monitor_socket(self.EVENTS)
        self._peers: dict[int, str] = {}
        self._failed: str | None = None

    def read(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        while self.monitor.poll(0):
            m = recv_monitor_message(self.monitor)
            if m["event"] == zmq.EVENT_ACCEPTED:
                self._peers[m["value"]] = _peer_of(m["value"])
            elif m["event"] == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                self._failed = _REASONS.get(m["value"], "bad_handshake")
            elif m["event"] == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL and self._failed is None:
                self._failed = "bad_handshake"
            elif m["event"] == zmq.EVENT_DISCONNECTED:
                peer = self._peers.pop(m["value"], "?")
                if self._failed is not None:
                    self.refusals.add(self._failed, peer)
                    self._failed = None

    def close(self) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self.sock.disable_monitor()
        self.monitor.close(0)


_REASONS: dict[int, str] = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "wrong_mechanism",
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "wrong_server_key",
}


def _peer_of(fd: int) -> str:
    try:
        with socket.socket(fileno=os.dup(fd)) as s:
            host = s.getpeername()
    except OSError:
        return "?"
    return str(host[0]) if isinstance(host, tuple) else str(host)
