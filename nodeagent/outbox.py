"""The agent's durable outbox: every envelope waits on disk until the aggregator acknowledges it.

SQLite (standard library) in the node's spool directory.  `seq` is an AUTOINCREMENT key, so it
never repeats, even across restarts; `epoch` is fixed when the outbox file is created, so a new
outbox (a reinstalled node) can never collide with keys the aggregator has already stored.  The
outbox is bounded: when full, the oldest envelopes are dropped and counted.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path


class Outbox:
    def __init__(self, path: str, max_envelopes: int) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.executescript(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER);"
            "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " type TEXT NOT NULL, payload BLOB NOT NULL, created REAL NOT NULL);"
        )
        self.conn.execute(
            "INSERT OR IGNORE INTO meta VALUES ('epoch', ?)", (time.time_ns() // 1_000_000,)
        )
        self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('dropped', 0)")
        self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('nacked', 0)")
        self.epoch = self.conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0]
        self.max_envelopes = max_envelopes

    def put(self, mtype: str, payload: bytes) -> int:
        """Store one envelope's payload (msgpack bytes); return its seq."""
        self.conn.execute("BEGIN IMMEDIATE")
        seq = self.conn.execute(
            "INSERT INTO outbox (type, payload, created) VALUES (?, ?, ?)",
            (mtype, payload, time.time()),
        ).lastrowid
        excess = self.depth() - self.max_envelopes
        if excess > 0:
            self.conn.execute(
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)",
                (excess,),
            )
            self.conn.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (excess,))
        self.conn.execute("COMMIT")
        return seq

    def ack(self, seq: int, *, nacked: bool = False) -> None:
        """SEQ is done with: stored, or (NACKED) refused for good by the aggregator, counted."""
        if not nacked:
            self.conn.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            return
        self.conn.execute("BEGIN IMMEDIATE")
        if self.conn.execute("DELETE FROM outbox WHERE seq = ?", (seq,)).rowcount:
            self.conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'nacked'")
        self.conn.execute("COMMIT")

    def pending(self, after: int = 0, limit: int = 100) -> list[tuple[int, str, bytes]]:
        return self.conn.execute(
            "SELECT seq, type, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        ).fetchall()

    def depth(self) -> int:
        return self.conn.execute("SELECT count(*) FROM outbox").fetchone()[0]

    def dropped(self) -> int:
        return self.conn.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()[0]

    def nacked(self) -> int:
        """Envelopes the aggregator refused for good (NACK) and this outbox therefore dropped."""
        return self.conn.execute("SELECT value FROM meta WHERE key = 'nacked'").fetchone()[0]

    def close(self) -> None:
        self.conn.close()
