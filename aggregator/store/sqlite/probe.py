"""Read-only looks at a database file by its path (`nomadectl syscheck`): opened with SQLite's
defaults, not the store's settings, so that a file that is damaged, foreign or locked is only
read.  A file that cannot be read raises StoreError."""

from __future__ import annotations

import sqlite3

from aggregator.store.sqlite.core import schema_version


def _open(path: str) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def schema_version_at(path: str) -> int:
    """The schema version of the database at PATH (0: none of NØMADE's)."""
    conn = _open(path)
    try:
        return schema_version(conn)
    finally:
        conn.close()


def event_job_counts(path: str, kinds: tuple[str, ...], since: float) -> list[int]:
    """Per event kind of KINDS, how many jobs have one since SINCE, in the database at PATH."""
    conn = _open(path)
    try:
        return [
            conn.execute(
                "SELECT count(DISTINCT job_uid) FROM events WHERE kind = ? AND t >= ?", (k, since)
            ).fetchone()[0]
            for k in kinds
        ]
    finally:
        conn.close()
