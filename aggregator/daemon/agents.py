"""The agents' side of the daemon: the ZeroMQ ROUTER sockets (aggregator.listen, CURVE unless
security.curve is "off", and in rollout the plain security.plain_listen), the loop that takes the
agents' envelopes to the writer, and what goes back to them: ACK, NACK or REFUSED once the COMMIT
is done, and the verdicts of starting jobs (`push`).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import zmq

from aggregator.daemon.agentauth import INSECURE_WARNING, AgentAuth, HandshakeWatch
from aggregator.store import Ingest, WorkItem, Writer
from nomade_common import wire
from nomade_common.config import Config

log = logging.getLogger("nomade.aggregator")
FAILING_BACKLOG = 20_000  # items queued for a failing store past which agents' messages wait
MAX_BACKLOG = 200_000  # items queued, store failing or not
MAX_BACKLOG_BYTES = 512 << 20  # agents' message bytes queued
Peer = tuple[int, bytes]  # (index of the agent socket, ZeroMQ routing id)
BIND_RETRY_SECONDS = 5.0  # a rebound port the old socket has not quite released yet


class Agents:
    """The agent sockets and their thread ("zmq").  `bind` before `start`: a port in use or a
    missing key fails start-up, not a thread."""

    def __init__(self, cfg: Config, writer: Writer, ingest: Ingest, stop: threading.Event) -> None:
        self.cfg = cfg
        self.writer = writer
        self.ingest = ingest
        self._stop = stop
        # Replies wait here as ((socket index, routing id), data): index 0 is aggregator.listen
        # (CURVE unless security.curve is "off"), 1 the plain rollout socket.
        self._acks: collections.deque[tuple[Peer, bytes]] = collections.deque()
        self._zctx = zmq.Context()  # its own: the ZAP handler answers for these sockets alone
        self.auth: AgentAuth | None = None
        self._socks: list[zmq.Socket] = []
        self._watch: HandshakeWatch | None = None
        # The writer thread wakes the ZeroMQ loop through this pipe when it queues replies, so an
        # acknowledgement leaves as soon as its COMMIT is done, not at the loop's next timeout.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._zmq_thread: threading.Thread | None = None
        self._idents: dict[str, Peer] = {}  # node -> where its agent is (admitted messages only)
        self.deferred = 0  # agents' messages not taken while the store failed (sent again)

    def _receive(self, peer: Peer, frames: list[Any]) -> None:
        """One message from an agent, handed to the writer as it came.  The writer decodes it,
        so this thread only moves bytes and sends acknowledgements and verdicts without waiting
        behind a backlog of decoding; and the thousand-odd objects of a samples envelope are
        made, bound and freed by one thread (4 to 9% more samples/s in bench/ingest.py).

        Every envelope whose key can be read is answered: ACK after its COMMIT, NACK with the
        reason when it can never be stored, REFUSED when its sender's key is not enrolled for
        the node it names (over CURVE the frame carries that node, User-Id).  A store that is
        failing answers nothing until it is written, and, while its backlog is long, takes no
        more: the agents keep what is unanswered and send it again."""
        ident = peer[1]
        if len(frames) != 1:
            why = f"expected one frame, got {len(frames)}"
            self.writer.submit(
                WorkItem(lambda c: self.ingest.note_bad(c, ident.hex(), why, time.time()))
            )
            return
        frame = frames[0]
        data = frame.bytes if isinstance(frame, zmq.Frame) else frame
        # Bounded work in waiting: past these, messages are not taken (nor answered) and the
        # agents send them again; their outboxes, not this process's memory, hold the backlog.
        backlog = self.writer.backlog()
        if (
            backlog > MAX_BACKLOG
            or self.writer.queued_bytes > MAX_BACKLOG_BYTES
            or (self.writer.failing_since is not None and backlog > FAILING_BACKLOG)
        ):
            self.deferred += 1
            return
        auth = self.auth if peer[0] == 0 or self.cfg.security.curve == "rollout" else None
        admit = None
        if auth is not None:
            user_id = frame.get("User-Id") if peer[0] == 0 else None
            address = _address(frame)

            def admit(c: Any, env: wire.Envelope) -> bool:
                return auth.admit(c, env.node, user_id, address)

        def apply(c: Any) -> Any:
            answer = self.ingest.take(c, data, admit=admit, peer=ident.hex())
            if answer.env is not None and answer.kind in ("ack", "live"):
                self._idents[answer.env.node] = peer
            return answer

        self.writer.submit(
            WorkItem(apply, lambda answer: self._answer(peer, answer), atomic=True, size=len(data))
        )

    def _answer(self, peer: Peer, answer: Any) -> None:
        """After the COMMIT: the reply ANSWER calls for (a heartbeat's is none)."""
        if answer.key is None or answer.kind in ("live", "drop"):
            return
        node, epoch, seq = answer.key
        if answer.kind == "ack":
            reply = wire.ack(node, epoch, seq)
        elif answer.kind == "refused":
            reply = wire.refused(node, epoch, seq, answer.reason)
        else:
            reply = wire.nack(node, epoch, seq, answer.reason)
        self._acks.append((peer, reply))
        self._wake()

    def push(self, nodes: Iterable[str], message: Callable[[str], bytes]) -> None:
        """MESSAGE(node) to the agent of each of NODES that has been heard here (the others get
        nothing), sent by the ZeroMQ loop, which this wakes."""
        for node in nodes:
            ident = self._idents.get(node)
            if ident is not None:
                self._acks.append((ident, message(node)))
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full: the loop has been woken already

    def bind(self) -> list[zmq.Socket]:
        """The agent sockets: aggregator.listen (CURVE unless security.curve is "off") and, in
        rollout, the plain security.plain_listen."""
        sec = self.cfg.security
        if sec.curve == "off":
            log.warning(INSECURE_WARNING, self.cfg.aggregator.listen)
            return [self._socket(self.cfg.aggregator.listen, curve=False)]
        if self.auth is None:
            self.auth = AgentAuth(self.cfg, self._zctx, self.writer)  # the server key, or fails
            self.writer.on_rollback.append(self.auth.rolled_back)
        socks = [self._socket(self.cfg.aggregator.listen, curve=True)]
        if sec.curve == "rollout":
            socks.append(self._socket(sec.plain_listen, curve=False))
        return socks

    def _socket(self, address: str, *, curve: bool) -> zmq.Socket:
        sock = self._zctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        # A larger message closes its connection before it is read into memory.
        sock.setsockopt(zmq.MAXMSGSIZE, self.cfg.aggregator.max_message_bytes)
        if curve and self.auth is not None:
            sock.setsockopt(zmq.CURVE_SERVER, 1)
            sock.setsockopt(zmq.CURVE_SECRETKEY, self.auth.secret)
            sock.setsockopt(zmq.ZAP_DOMAIN, b"nomade")
            sock.setsockopt(zmq.HANDSHAKE_IVL, 5000)  # a refused peer is left, then closed
            if self._watch is not None:
                self._watch.close()
            self._watch = HandshakeWatch(sock, self.auth.refusals)
        deadline = time.monotonic() + BIND_RETRY_SECONDS
        while True:
            try:
                sock.bind(address)
                return sock
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                    sock.close(0)
                    raise
                time.sleep(0.05)

    def _rebind(self, poller: zmq.Poller) -> None:
        """Drop every CURVE connection (a key was revoked, the server key changed): a new
        socket, so that each agent must pass the handshake again with the current keys."""
        assert self.auth is not None
        self.auth.rebind.clear()
        old = self._socks[0]
        poller.unregister(old)
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        old.close(0)
        self._acks = collections.deque(a for a in self._acks if a[0][0] != 0)
        self._socks[0] = self._socket(self.cfg.aggregator.listen, curve=True)
        poller.register(self._socks[0], zmq.POLLIN)

    def start(self, socks: list[zmq.Socket]) -> None:
        """The ZeroMQ loop on SOCKS (from `bind`) in its thread, and the ZAP handler's."""
        self._zmq_thread = threading.Thread(
            target=self._zmq_loop, args=(socks,), name="zmq", daemon=True
        )
        self._zmq_thread.start()
        if self.auth is not None:
            self.auth.start()

    def _zmq_loop(self, socks: list[zmq.Socket]) -> None:
        self._socks = socks
        poller = zmq.Poller()
        for sock in socks:
            poller.register(sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(5 if self._acks or self.writer.q.qsize() else 100))
                if self._wake_r in events:
                    try:
                        os.read(self._wake_r, 65536)
                    except BlockingIOError:
                        pass
                for i, sock in enumerate(self._socks):
                    if sock in events:
                        self._drain(i, sock)
                self._send_replies()
                if self.auth is not None and self._watch is not None:
                    self._watch.read()
                if self.auth is not None and self.auth.rebind.is_set():
                    self._rebind(poller)
        finally:
            if self._watch is not None:
                self._watch.close()
            for sock in self._socks:
                sock.close(0)
            if self.auth is not None:
                self.auth.stop()

    def _drain(self, index: int, sock: zmq.Socket) -> None:
        copy = self.auth is None  # else frames with metadata: User-Id (CURVE), Peer-Address
        for _ in range(1000):
            try:
                ident, *frames = sock.recv_multipart(zmq.NOBLOCK, copy=copy)
            except zmq.Again:
                return
            self._receive((index, ident.bytes if isinstance(ident, zmq.Frame) else ident), frames)

    def _send_replies(self) -> None:
        while self._acks:
            (index, ident), data = self._acks.popleft()
            try:
                self._socks[index].send_multipart([ident, data], zmq.NOBLOCK)
            except (zmq.ZMQError, IndexError):
                pass  # the agent is gone; it resends and we acknowledge again

    def close(self) -> None:
        """Close the ZeroMQ context once no thread uses it: a context left to the garbage
        collector would wait in its destructor for sockets nobody closes."""
        threads = [t for t in (self._zmq_thread, self.auth) if t is not None and t.ident]
        if self.auth is not None:
            self.auth.stop()
        for t in threads:
            t.join(2.0)
        if not any(t.is_alive() for t in threads):
            if self.auth is not None and not self.auth.ident:
                self.auth.close()  # made, never started: its ZAP socket is still open
            self._zctx.destroy(linger=0)

    def close_wake_pipe(self) -> None:
        """Close the pipe once neither the writer nor the ZeroMQ loop can touch it again."""
        users = [t for t in (self.writer, self._zmq_thread) if t is not None and t.ident]
        for t in users:
            t.join(1.0)
        if self._wake_w >= 0 and not any(t.is_alive() for t in users):
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1


def _address(frame: Any) -> str:
    """The peer's IP address, where the frame carries it."""
    try:
        return str(frame.get("Peer-Address")) if isinstance(frame, zmq.Frame) else "?"
    except zmq.ZMQError:
        return "?"
