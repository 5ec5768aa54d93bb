"""NØMADE's store: SQLite in WAL mode, one writer thread, readers on their own connections.

All writes go through `Writer`: callers submit small functions that receive the write connection;
the writer thread runs everything that is waiting in one `BEGIN IMMEDIATE … COMMIT` and only then
calls each item's `on_commit`, so an acknowledgement never precedes durability.  The schema comes
from ordered, named migrations recorded in `schema_migrations`.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nomade_common.wire import SAMPLE_FIELDS

log = logging.getLogger("nomade.store")

_SAMPLE_COLUMNS = ",\n  ".join(
    f"{name} {'REAL' if name == 't' or name.endswith('_seconds') else 'INTEGER'}"
    for name in SAMPLE_FIELDS[2:]
)

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_foundation",
        f"""
CREATE TABLE nodes (
  node TEXT PRIMARY KEY,
  host TEXT,
  agent_version TEXT,
  interval_seconds REAL,
  first_seen REAL NOT NULL,
  last_seen REAL NOT NULL,
  last_heartbeat REAL,
  state TEXT NOT NULL DEFAULT 'up',
  running_jobs INTEGER,
  outbox_depth INTEGER,
  outbox_dropped INTEGER
);
CREATE TABLE jobs (
  uid INTEGER PRIMARY KEY,
  cluster TEXT NOT NULL,
  job_id INTEGER NOT NULL,
  submit_time REAL,
  array_job_id INTEGER, array_task_id INTEGER, het_job_id INTEGER, het_job_offset INTEGER,
  user TEXT, user_id INTEGER, account TEXT, partition TEXT, job_name TEXT, work_dir TEXT,
  nodes_requested INTEGER, node_list TEXT, cpus INTEGER,
  mem_per_node_bytes INTEGER, mem_per_cpu_bytes INTEGER, gpus INTEGER, gres TEXT,
  time_limit_seconds INTEGER,
  start_time REAL, end_time REAL,
  state TEXT, outcome TEXT, cancelled_by TEXT, exit_code INTEGER, signal INTEGER,
  elapsed_seconds REAL, total_cpu_seconds REAL, max_rss_bytes INTEGER,
  reconcile TEXT NOT NULL DEFAULT 'pending',
  reconcile_attempts INTEGER NOT NULL DEFAULT 0,
  reconcile_after REAL,
  request_json TEXT, queue_json TEXT,
  created REAL NOT NULL, updated REAL NOT NULL,
  UNIQUE (cluster, job_id, submit_time)
);
CREATE INDEX jobs_by_id ON jobs (job_id);
CREATE INDEX jobs_by_user ON jobs (user, submit_time);
CREATE INDEX jobs_by_end ON jobs (end_time);
CREATE INDEX jobs_to_reconcile ON jobs (reconcile, reconcile_after);
CREATE TABLE samples (
  job_uid INTEGER NOT NULL REFERENCES jobs (uid),
  node TEXT NOT NULL,
  t REAL NOT NULL,
  {_SAMPLE_COLUMNS}
);
CREATE UNIQUE INDEX samples_key ON samples (job_uid, node, t);
CREATE TABLE received (
  node TEXT NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
  type TEXT NOT NULL, rows INTEGER NOT NULL, t REAL NOT NULL,
  PRIMARY KEY (node, epoch, seq)
) WITHOUT ROWID;
CREATE TABLE events (
  id INTEGER PRIMARY KEY,
  t REAL NOT NULL,
  kind TEXT NOT NULL,
  node TEXT,
  job_uid INTEGER,
  detail TEXT
);
CREATE INDEX events_by_t ON events (t);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
""",
    ),
]

MIGRATIONS.append(
    (
        "0002_models_and_verdicts",
        """
CREATE TABLE models (
  id INTEGER PRIMARY KEY,
  version TEXT NOT NULL UNIQUE,
  created REAL NOT NULL,
  path TEXT NOT NULL,
  sha256 TEXT NOT NULL,
  feature_version INTEGER NOT NULL,
  train_first_submit REAL, train_last_submit REAL, train_jobs INTEGER,
  metrics_json TEXT,
  active INTEGER NOT NULL DEFAULT 0,
  activated REAL
);
CREATE TABLE job_features (
  job_uid INTEGER PRIMARY KEY REFERENCES jobs (uid),
  feature_version INTEGER NOT NULL,
  vector BLOB NOT NULL
);
CREATE TABLE verdicts (
  job_uid INTEGER PRIMARY KEY REFERENCES jobs (uid),
  model_version TEXT NOT NULL,
  t REAL NOT NULL,
  p_fail REAL NOT NULL,
  health REAL,
  probs_json TEXT,
  risk TEXT,
  warned INTEGER NOT NULL DEFAULT 0,
  reasons_json TEXT,
  message TEXT
);
CREATE INDEX jobs_by_account ON jobs (account, end_time);
CREATE INDEX jobs_by_user_end ON jobs (user, end_time);
CREATE INDEX jobs_by_start ON jobs (start_time);
CREATE INDEX jobs_by_user_start ON jobs (user, start_time);
""",
    )
)

MIGRATIONS.append(
    (
        "0003_collectors",
        """
CREATE TABLE readings_latest (
  node TEXT NOT NULL,
  collector TEXT NOT NULL,
  t REAL NOT NULL,
  seconds REAL,
  records_json TEXT NOT NULL,
  PRIMARY KEY (node, collector)
) WITHOUT ROWID;
CREATE TABLE readings (
  id INTEGER PRIMARY KEY,
  node TEXT NOT NULL,
  collector TEXT NOT NULL,
  t REAL NOT NULL,
  records_json TEXT NOT NULL
);
CREATE INDEX readings_by_collector ON readings (collector, node, t);
CREATE INDEX readings_by_t ON readings (t);
CREATE TABLE collector_status (
  node TEXT NOT NULL,
  collector TEXT NOT NULL,
  role TEXT NOT NULL,
  interval_seconds REAL,
  runs INTEGER NOT NULL DEFAULT 0,
  failures INTEGER NOT NULL DEFAULT 0,
  last_t REAL, last_ok_t REAL, last_error TEXT, last_seconds REAL, skipped TEXT,
  updated REAL NOT NULL,
  PRIMARY KEY (node, collector)
) WITHOUT ROWID;
""",
    )
)

# Jobs are listed newest first by when they were submitted (started, or first seen, when that is
# all NØMADE knows), not in the order their rows were made: history imported later (the sacct
# collector, `nomadectl import sacct`) makes newer rows for older jobs.
JOB_TIME = "coalesce(submit_time, start_time, created)"
MIGRATIONS.append(
    (
        "0004_jobs_by_time",
        f"""
CREATE INDEX jobs_by_time ON jobs ({JOB_TIME});
CREATE INDEX jobs_by_user_time ON jobs (user, {JOB_TIME});
""",
    )
)

# Who may send: the nodes' CURVE keys (`nomadectl keys`), when each node was last seen over CURVE
# and over plain ZeroMQ (security.curve = "rollout"), and what administrators did, by uid.
MIGRATIONS.append(
    (
        "0005_security",
        """
CREATE TABLE agent_keys (
  node TEXT PRIMARY KEY,
  public_key TEXT NOT NULL UNIQUE,
  added REAL NOT NULL,
  added_by TEXT NOT NULL,
  revoked REAL,
  revoked_by TEXT
);
CREATE TABLE agent_links (
  node TEXT PRIMARY KEY,
  curve_seen REAL,
  plain_seen REAL
) WITHOUT ROWID;
CREATE TABLE admin_log (
  id INTEGER PRIMARY KEY,
  t REAL NOT NULL,
  uid INTEGER NOT NULL,
  user TEXT,
  action TEXT NOT NULL,
  detail TEXT
);
CREATE INDEX admin_log_by_t ON admin_log (t);
""",
    )
)

# Events by kind, so that `status` finds the newest refused agent without reading every job's.
MIGRATIONS.append(("0006_events_by_kind", "CREATE INDEX events_by_kind ON events (kind, t);"))

# Per node: samples left out for a time too far from the aggregator's clock (and why), and the
# envelopes its agent dropped because the aggregator refused them (NACK; from its heartbeat).
MIGRATIONS.append(
    (
        "0007_refusals_by_node",
        """
ALTER TABLE nodes ADD COLUMN samples_refused INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN samples_refused_why TEXT;
ALTER TABLE nodes ADD COLUMN agent_nacked INTEGER;
""",
    )
)

# Right-sizing advice given to a starting job (models/rightsize.py): the suggested memory per
# node and time, everything said about them, and the lines printed into the job's output.
MIGRATIONS.append(
    (
        "0008_advice",
        """
CREATE TABLE advice (
  job_uid INTEGER PRIMARY KEY REFERENCES jobs (uid),
  t REAL NOT NULL,
  mem_bytes REAL,
  time_seconds REAL,
  printed INTEGER NOT NULL DEFAULT 0,
  advice_json TEXT NOT NULL
);
""",
    )
)

# Samples as a time-series store keeps them (aggregator/store/sqlite/samples.py): landed
# envelopes, chunks per job, node and four hours, and what is kept after the raw retention.  The
# one-row-per-sample table of versions 1 to 8 is renamed; the compactor moves its rows into
# chunks in the background and drops it once empty (`nomadectl db` shows how far it is).
MIGRATIONS.append(
    (
        "0009_sample_chunks",
        """
CREATE TABLE sample_log (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  node TEXT NOT NULL,
  t REAL NOT NULL,
  n INTEGER NOT NULL,
  uids TEXT NOT NULL,
  rows BLOB NOT NULL
);
CREATE TABLE sample_chunks (
  id INTEGER PRIMARY KEY,
  job_uid INTEGER NOT NULL,
  node TEXT NOT NULL,
  t0 REAL NOT NULL,
  step REAL NOT NULL,
  n INTEGER NOT NULL,
  first_t REAL NOT NULL,
  last_t REAL NOT NULL,
  data BLOB NOT NULL
);
CREATE INDEX sample_chunks_key ON sample_chunks (job_uid, node, t0);
CREATE INDEX sample_chunks_by_last ON sample_chunks (last_t);
CREATE TABLE sample_summaries (
  job_uid INTEGER NOT NULL,
  node TEXT NOT NULL,
  samples INTEGER NOT NULL,
  first_t REAL NOT NULL,
  last_t REAL NOT NULL,
  stats_json TEXT NOT NULL,
  PRIMARY KEY (job_uid, node)
) WITHOUT ROWID;
ALTER TABLE samples RENAME TO samples_v1;
""",
    )
)

# Each job's GPUs as the node agents' GPU readings saw them, folded in as each reading arrives
# (aggregator/store/sqlite/gpus.py): per job, node and GPU, running sums and maxima, so that a
# job's GPU view needs no reading history (kept once per readings_history_seconds only).
MIGRATIONS.append(
    (
        "0010_job_gpus",
        """
CREATE TABLE job_gpus (
  job_uid INTEGER NOT NULL,
  node TEXT NOT NULL,
  gpu TEXT NOT NULL,
  gpu_index INTEGER,
  name TEXT,
  memory_total_bytes INTEGER,
  readings INTEGER NOT NULL,
  first_t REAL NOT NULL,
  last_t REAL NOT NULL,
  util_sum REAL NOT NULL DEFAULT 0, util_n INTEGER NOT NULL DEFAULT 0, util_max REAL,
  idle_n INTEGER NOT NULL DEFAULT 0,
  memory_used_max_bytes INTEGER,
  job_memory_max_bytes INTEGER,
  power_sum REAL NOT NULL DEFAULT 0, power_n INTEGER NOT NULL DEFAULT 0, power_max REAL,
  temperature_max_c REAL,
  PRIMARY KEY (job_uid, node, gpu)
) WITHOUT ROWID;
""",
    )
)

# Alerts (aggregator/store/sqlite/alerts.py): each one raised by a rule about a subject (a node, a
# filesystem, a job), open until its condition clears; at most one open per rule and subject.
# Silences hold back alerts of a rule, a subject or both until a time (maintenance windows).
MIGRATIONS.append(
    (
        "0011_alerts",
        """
CREATE TABLE alerts (
  id INTEGER PRIMARY KEY,
  rule TEXT NOT NULL,
  subject TEXT NOT NULL,
  severity TEXT NOT NULL,
  job_uid INTEGER,
  user TEXT,
  state TEXT NOT NULL,
  summary TEXT NOT NULL,
  detail TEXT,
  first_t REAL NOT NULL,
  last_t REAL NOT NULL,
  resolved_t REAL,
  acked_by TEXT,
  acked_t REAL
);
CREATE UNIQUE INDEX alerts_open ON alerts (rule, subject) WHERE state = 'firing';
CREATE INDEX alerts_by_time ON alerts (first_t);
CREATE INDEX alerts_by_user ON alerts (user, first_t);
CREATE TABLE alert_silences (
  id INTEGER PRIMARY KEY,
  rule TEXT,
  subject TEXT,
  start_t REAL NOT NULL,
  until_t REAL NOT NULL,
  created_by TEXT NOT NULL,
  reason TEXT,
  created REAL NOT NULL
);
CREATE INDEX alert_silences_until ON alert_silences (until_t);
""",
    )
)

# The cooldown's look-up of a rule and subject's last resolve (raise_alert) over the whole
# history: indexed, so a rule with many subjects does not scan every alert for each.
MIGRATIONS.append(
    (
        "0012_alerts_by_rule_subject",
        "CREATE INDEX alerts_by_rule_subject ON alerts (rule, subject, resolved_t);",
    )
)

SCHEMA_VERSION = len(MIGRATIONS)


def connect(
    path: str, *, readonly: bool = False, busy_timeout: float = 10.0, synchronous: str = "full"
) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {SYNCHRONOUS[synchronous]}")
        conn.execute("PRAGMA foreign_keys = OFF")
    return conn


# store_synchronous -> SQLite's setting.  In WAL mode, "normal" syncs the WAL only at
# checkpoints: a crash of the process loses nothing committed, a power loss may undo the last
# transactions committed before it.  "full" syncs the WAL at every COMMIT, so an acknowledged
# envelope survives a power loss too (docs/operations.md, "Durability").
SYNCHRONOUS = {"normal": "NORMAL", "full": "FULL"}


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Apply the migrations this database lacks, each in its own transaction; return their names."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations"
        " (name TEXT PRIMARY KEY, applied REAL NOT NULL)"
    )
    done = {r[0] for r in conn.execute("SELECT name FROM schema_migrations")}
    applied = []
    for name, sql in MIGRATIONS:
        if name in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in sql.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (name, time.time()))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(name)
    return applied


def schema_version(conn: sqlite3.Connection) -> int:
    try:
        return conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def open_store(path: str) -> sqlite3.Connection:
    """The database at PATH, migrated.  It holds every user's jobs, work directories and job
    names, so only its owner (the aggregator's user) may read it: a new data directory is made
    0700 and a new database 0600 before SQLite opens it (SQLite gives the -wal and -shm files
    the database's own mode); an existing one that others could read is tightened, with a
    warning."""
    _private_database(Path(path))
    conn = connect(path)
    migrate(conn)
    return conn


def _private_database(db: Path) -> None:
    if not db.parent.is_dir():
        db.parent.mkdir(parents=True, mode=0o700)
        db.parent.chmod(0o700)  # whatever the umask
    if not db.exists():
        os.close(os.open(db, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            path.chmod(mode & 0o700)
            log.warning(
                "store: %s was readable by others (mode %o): now %o", path, mode, mode & 0o700
            )


@dataclass
class WorkItem:
    """APPLY(conn) runs in the writer's transaction, perhaps more than once: a batch the store
    could not write is rolled back and applied again, so APPLY changes nothing outside the
    connection (or undoes it through Writer.on_rollback).  ON_COMMIT(result) follows the COMMIT;
    ON_ERROR(exc) follows the COMMIT of the others when APPLY itself refused (its input), never
    because the store failed.  URGENT items (a hook report a job's start waits on) go first and
    end the batch they join."""

    apply: Callable[[sqlite3.Connection], Any]
    on_commit: Callable[[Any], None] | None = None
    on_error: Callable[[BaseException], None] | None = None
    urgent: bool = False
    # APPLY leaves nothing half-written by itself (Ingest.take has its own SAVEPOINT) and raises
    # only the store's failures: the writer runs it without a SAVEPOINT of its own.
    atomic: bool = False
    size: int = 0  # bytes of input it holds: a batch gathers at most max_batch_bytes of them


class StoreFailing(Exception):
    """The store could not take a batch (locked past the busy timeout, disk full, I/O error)."""


# What a failed write says about the store rather than the item: these roll the whole batch
# back for a retry.  Everything else an item raises (its own input: a constraint, a value SQLite
# cannot bind, a Rejected envelope) refuses that item alone.
_ITEM_ERRORS = (
    sqlite3.IntegrityError,
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    sqlite3.DataError,
)
RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS = 0.05, 2.0
MAX_BATCH_BYTES = 64 << 20  # input bytes gathered into one transaction (its memory and its WAL)


def store_failed(exc: BaseException) -> bool:
    return isinstance(exc, (sqlite3.Error, OSError)) and not isinstance(exc, _ITEM_ERRORS)


class Writer(threading.Thread):
    """The one thread that writes.  Batches whatever is queued into one transaction.

    A batch the store cannot take is rolled back, nothing in it is acknowledged, and it is
    applied again with backoff (RETRY_FIRST_SECONDS doubling to RETRY_MAX_SECONDS) until the
    store takes it: `health()` says since when it has been failing and why.  Past
    FAILING_EXIT_SECONDS of failure the writer gives up and sets `fatal`, so that the process
    exits and its service manager restarts it (what was not acknowledged is sent again)."""

    def __init__(
        self,
        path: str,
        *,
        max_batch: int = 5000,
        max_wait: float = 0.05,
        checkpoint_seconds: float = 1.0,
        wal_limit_bytes: int = 256 << 20,
        busy_timeout: float = 5.0,
        synchronous: str = "full",
        failing_exit_seconds: float = 600.0,
    ) -> None:
        super().__init__(name="nomade-writer", daemon=True)
        self.path, self.busy_timeout, self.synchronous = path, busy_timeout, synchronous
        self.checkpoint_seconds, self.wal_limit_bytes = checkpoint_seconds, wal_limit_bytes
        self.conn: sqlite3.Connection | None = self._open(migrate_first=True)
        self._wal_too_big = False
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name="nomade-checkpoint", daemon=True
        )
        self.q: queue.Queue[WorkItem | None] = queue.Queue()
        self._urgent: collections.deque[WorkItem] = collections.deque()
        self.max_batch, self.max_wait = max_batch, max_wait
        self.max_batch_bytes = MAX_BATCH_BYTES
        self.queued_bytes = 0  # of the items waiting or in the batch being written
        self._bytes_lock = threading.Lock()  # submitted by one thread, written by another
        self.commits = 0
        self.failing_exit_seconds = failing_exit_seconds
        self.failing_since: float | None = None  # time.time() of the first failure in a row
        self.failing_reason = ""
        self.failed_batches = 0  # since start: attempts the store refused
        self.on_rollback: list[Callable[[], None]] = []  # forget what rolled-back items cached
        self.fatal = threading.Event()
        self._stop_requested = threading.Event()
        self._stopped = threading.Event()

    def _open(self, *, migrate_first: bool = False) -> sqlite3.Connection:
        conn = open_store(self.path) if migrate_first else connect(self.path)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        conn.execute(f"PRAGMA synchronous = {SYNCHRONOUS[self.synchronous]}")
        # Each item runs in a SAVEPOINT; keep its statement journal in memory rather than in a
        # temporary file once it passes 64 KiB (bounded by one item's pages; 1.5x throughput).
        conn.execute("PRAGMA temp_store = MEMORY")
        conn.execute("PRAGMA cache_size = -65536")
        # Checkpoints (copying the WAL into the database) run in their own thread and
        # connection, beside the writer rather than inside its COMMITs; the writer checkpoints
        # itself only when the WAL outgrows wal_limit_bytes, which happens when writes never
        # pause long enough for a background checkpoint to catch up.
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute(f"PRAGMA journal_size_limit = {int(self.wal_limit_bytes)}")
        return conn

    def start(self) -> None:
        super().start()
        self._checkpointer.start()

    def _checkpoint_loop(self) -> None:
        conn = connect(self.path)
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        logged = 0.0
        try:
            while not self._stopped.wait(self.checkpoint_seconds):
                if self._wal_too_big or self.failing_since is not None:
                    continue  # the writer's turn, or a store that is failing anyway
                try:
                    _busy, frames, _done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:
                    if time.monotonic() - logged > 60:
                        log.warning("store: checkpoint of %s failed: %s", self.path, exc)
                        logged = time.monotonic()
                    continue
                self._wal_too_big = frames * page > self.wal_limit_bytes
        finally:
            conn.close()

    def submit(self, item: WorkItem) -> None:
        if item.size:
            with self._bytes_lock:
                self.queued_bytes += item.size
        if item.urgent:
            self._urgent.append(item)
            self.q.put(_WAKE)  # wakes a writer waiting for work; ignored when it finds none
        else:
            self.q.put(item)

    def backlog(self) -> int:
        return self.q.qsize() + len(self._urgent)

    def health(self) -> dict[str, Any]:
        """The store as the writer finds it: {"ok": True} or since when and why it fails."""
        if self.fatal.is_set():
            return {
                "ok": False,
                "failing_since": self.failing_since,
                "reason": self.failing_reason,
                "failed_batches": self.failed_batches,
                "gave_up": True,
            }
        if self.failing_since is None:
            return {"ok": True, "failed_batches": self.failed_batches, "backlog": self.backlog()}
        return {
            "ok": False,
            "failing_since": self.failing_since,
            "reason": self.failing_reason,
            "failed_batches": self.failed_batches,
            "backlog": self.backlog(),
        }

    def call(self, fn: Callable[[sqlite3.Connection], Any], timeout: float = 10.0) -> Any:
        """Run FN in the writer and wait for its committed result (for low-rate callers)."""
        done = threading.Event()
        box: dict[str, Any] = {}

        def ok(result: Any) -> None:
            box["result"] = result
            done.set()

        def err(exc: BaseException) -> None:
            box["error"] = exc
            done.set()

        self.submit(WorkItem(fn, ok, err))
        if not done.wait(timeout):
            why = f" (store failing: {self.failing_reason})" if self.failing_since else ""
            raise TimeoutError(f"the store's writer did not answer in time{why}")
        if "error" in box:
            raise box["error"]
        return box["result"]

    def stop(self) -> None:
        self._stop_requested.set()
        self.q.put(None)
        self._stopped.wait(10)

    def run(self) -> None:
        try:
            while True:
                batch, stop = self._gather()
                if batch and not self._write(batch):
                    return  # stopped, or given up: nothing in BATCH was acknowledged
                if stop:
                    return
        finally:
            if self.conn is not None:
                self.conn.close()
            self._stopped.set()

    def _next(self, timeout: float | None) -> Any:
        """The next item, urgent ones first: a WorkItem, None (stop), or _EMPTY when nothing
        came within TIMEOUT seconds (None: wait as long as it takes)."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._urgent:
                return self._urgent.popleft()
            left = None if end is None else end - time.monotonic()
            try:
                item = (
                    self.q.get_nowait()
                    if left is not None and left <= 0
                    else self.q.get(timeout=left)
                )
            except queue.Empty:
                return _EMPTY
            if item is not _WAKE:
                return item

    def _gather(self) -> tuple[list[WorkItem], bool]:
        """One batch: what is queued within max_wait of the first item, up to max_batch (an
        urgent item ends it); and whether a stop request came."""
        batch: list[WorkItem] = []
        deadline, size = None, 0
        while len(batch) < self.max_batch and size < self.max_batch_bytes:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            item = self._next(timeout)
            if item is _EMPTY:
                break
            if item is None:
                return batch, True
            assert isinstance(item, WorkItem)
            batch.append(item)
            size += item.size
            if deadline is None:
                deadline = time.monotonic() + self.max_wait
            if item.urgent:
                break
        return batch, False

    def _write(self, batch: list[WorkItem]) -> bool:
        """Apply and COMMIT BATCH, retrying while the store fails; then its callbacks.  False
        when the writer stopped or gave up before the batch was written."""
        delay = RETRY_FIRST_SECONDS
        while True:
            try:
                results = self._apply(batch)
                break
            except Exception as exc:  # an item's own refusals stay inside _apply: the store's
                self._rolled_back(exc)
            if time.time() - (self.failing_since or time.time()) > self.failing_exit_seconds:
                log.error(
                    "store: %s unusable for %.0f s (%s): giving up, so that the service "
                    "manager restarts the aggregator; nothing unstored was acknowledged",
                    self.path,
                    time.time() - (self.failing_since or 0),
                    self.failing_reason,
                )
                self.fatal.set()
                return False
            if self._stop_requested.wait(delay):
                return False
            delay = min(delay * 2, RETRY_MAX_SECONDS)
        if self.failing_since is not None:
            what = (
                f"{self.path} could not be written for {time.time() - self.failing_since:.1f} s"
                f" ({self.failing_reason})"
            )
            log.warning("store: writable again; %s", what)
            self.failing_since, self.failing_reason = None, ""
            self.submit(WorkItem(lambda c: event(c, "store_failed", detail=what)))
        done = sum(item.size for item in batch)
        if done:
            with self._bytes_lock:
                self.queued_bytes -= done
        for item, result, exc in results:
            callback = item.on_error if exc is not None else item.on_commit
            if callback is not None:
                try:
                    callback(exc if exc is not None else result)
                except Exception:
                    log.exception("store: commit callback failed")
        return True

    def _apply(self, batch: list[WorkItem]) -> list[tuple[WorkItem, Any, BaseException | None]]:
        if self.conn is None:
            self.conn = self._open()
        conn = self.conn
        results: list[tuple[WorkItem, Any, BaseException | None]] = []
        conn.execute("BEGIN IMMEDIATE")
        for item in batch:
            if item.atomic:  # no SAVEPOINT: it leaves nothing half-written by itself
                try:
                    results.append((item, item.apply(conn), None))
                except Exception as exc:
                    if store_failed(exc):
                        raise
                    log.exception("store: an atomic item failed on its own")
                    results.append((item, None, exc))
                continue
            conn.execute("SAVEPOINT item")
            try:
                results.append((item, item.apply(conn), None))
                conn.execute("RELEASE item")
            except Exception as exc:  # one bad item must not lose the others
                if store_failed(exc):
                    raise
                conn.execute("ROLLBACK TO item")
                conn.execute("RELEASE item")
                log.warning("store: write refused: %s", exc)
                results.append((item, None, exc))
        conn.execute("COMMIT")
        self.commits += 1
        if self._wal_too_big:  # until a checkpoint here copies it all: then the WAL restarts
            busy, frames, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self._wal_too_big = bool(busy) or done < frames
        return results

    def _rolled_back(self, exc: BaseException) -> None:
        """The batch failed: undo it (SQLite may have done so already), note why."""
        try:
            if self.conn is not None and self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        except sqlite3.Error:
            try:
                self.conn.close()  # type: ignore[union-attr]
            except sqlite3.Error:
                pass
            self.conn = None  # opened again at the next try
        for forget in self.on_rollback:
            forget()
        self.failed_batches += 1
        reason = str(exc) or type(exc).__name__
        if self.failing_since is None:
            self.failing_since = time.time()
            log.error(
                "store: %s cannot be written (%s): retrying; nothing is acknowledged until it is",
                self.path,
                reason,
            )
        self.failing_reason = reason


_WAKE, _EMPTY = object(), object()


def backup(database: str, target: str, *, force: bool = False) -> dict[str, Any]:
    """A consistent copy of DATABASE at TARGET while the aggregator keeps writing: SQLite's
    online backup, in one step (one read snapshot, so the copy is the store as of one COMMIT),
    into a new file readable by its owner alone, checked, then renamed into place.  OSError or
    sqlite3.Error say what failed; an existing TARGET is kept unless FORCE."""
    dest = Path(target)
    if dest.exists() and not force:
        raise FileExistsError(f"{dest} exists (--force replaces it)")
    partial = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    t0 = time.monotonic()
    try:
        src = connect(database, readonly=True)
        out = sqlite3.connect(partial)
        try:
            src.backup(out)  # pages=-1: all of it under one read snapshot
            check = out.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"the copy fails its check: {check}")
            version = schema_version(out)
            out.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
        finally:
            out.close()
            src.close()
        os.replace(partial, dest)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return {
        "file": str(dest),
        "bytes": dest.stat().st_size,
        "schema_version": version,
        "seconds": round(time.monotonic() - t0, 2),
    }


def bump(conn: sqlite3.Connection, name: str, by: int = 1) -> None:
    conn.execute(
        "INSERT INTO counters VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = value + ?",
        (name, by, by),
    )


def event(
    conn: sqlite3.Connection,
    kind: str,
    *,
    node: str | None = None,
    job_uid: int | None = None,
    detail: str | None = None,
    t: float | None = None,
) -> None:
    conn.execute(
        "INSERT INTO events (t, kind, node, job_uid, detail) VALUES (?, ?, ?, ?, ?)",
        (t if t is not None else time.time(), kind, node, job_uid, detail),
    )


def whoami() -> tuple[int, str]:
    """This process's uid and its user name (the uid itself where it has no name)."""
    import pwd

    uid = os.getuid()
    try:
        return uid, pwd.getpwuid(uid).pw_name
    except KeyError:
        return uid, str(uid)


def audit(
    conn: sqlite3.Connection, action: str, detail: str = "", by: tuple[int, str] | None = None
) -> None:
    """Record an administrator's action (key enrolment, model activation, ...) with the uid that
    made it (BY: an API caller's uid and name; else this process's), in the caller's
    transaction."""
    uid, user = by if by is not None else whoami()
    conn.execute(
        "INSERT INTO admin_log (t, uid, user, action, detail) VALUES (?, ?, ?, ?, ?)",
        (time.time(), uid, user, action, detail),
    )


def admin_log(conn: sqlite3.Connection, limit: int = 50) -> list[dict[str, Any]]:
    """The newest LIMIT administrators' actions, newest first."""
    rows = conn.execute(
        "SELECT t, uid, user, action, detail FROM admin_log ORDER BY t DESC, id DESC LIMIT ?",
        (limit,),
    )
    return [dict(r) for r in rows]
