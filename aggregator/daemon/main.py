"""The aggregator daemon, wired: it builds its parts, starts them and stops them, and holds none of
their work.  Agents' streams over ZeroMQ (daemon/agents.py), the head-node hooks' reports from
the reports directory or HTTP (daemon/reports.py, aggregator/daemon/api.py), jobs at their start
(daemon/starts.py), periodic work (daemon/housekeeping.py, daemon/retrain.py) and the head-node
collectors (daemon/head.py) all store through the one writer.  SIGHUP reloads the configuration
(daemon/reload.py).

What the HTTP API and the tests use of the daemon is here as a thin facade: `reader`, `writer`,
`runtime`, `check`, `receive_report`, `report_fields`, `hook_job_start`, `hook_job_end`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from aggregator.daemon import alerting, api
from aggregator.daemon.agents import Agents
from aggregator.daemon.alerting import Alerting
from aggregator.daemon.compaction import Compactor
from aggregator.daemon.head import HeadCollectors
from aggregator.daemon.housekeeping import Housekeeping
from aggregator.daemon.queue import QueueSnapshots
from aggregator.daemon.reload import Reloader
from aggregator.daemon.reports import Later, Reports, Settle
from aggregator.daemon.retrain import Retraining
from aggregator.daemon.starts import Starts
from aggregator.jobs.reconcile import Reconciler
from aggregator.predict.scoring import Scorer
from aggregator.store import Ingest, Writer, connect
from nomade_common.config import Config

log = logging.getLogger("nomade.aggregator")


class Aggregator:
    """RELOAD_WANTED: set (by the SIGHUP handler) to reload the configuration; LOG_LEVEL:
    --log-level's, which a reload leaves as it is."""

    def __init__(
        self,
        cfg: Config,
        reload_wanted: threading.Event | None = None,
        log_level: str | None = None,
    ) -> None:
        self.cfg = cfg
        a = cfg.aggregator
        self.writer = Writer(
            cfg.database,
            max_wait=a.batch_max_seconds,
            busy_timeout=a.store_busy_timeout_seconds,
            synchronous=a.store_synchronous,
            failing_exit_seconds=a.store_failing_exit_seconds,
        )
        self.ingest = Ingest(
            cfg.general.cluster_name,
            a.reconcile_delay_seconds,
            a.readings_history_seconds,
            a.sample_future_seconds,
            a.sample_max_age_days * 86400,
        )
        self.writer.on_rollback.append(self.ingest.rolled_back)
        self._readers = threading.local()
        self.queue = QueueSnapshots(a.squeue, a.queue_snapshot_max_age_seconds)
        self.reconciler = Reconciler(connect(cfg.database), self.writer, self.ingest, a)
        self._stop = threading.Event()
        self.agents = Agents(cfg, self.writer, self.ingest, self._stop)
        self.started = time.time()
        self.scorer = Scorer(cfg.database, cfg.models.warn_threshold, cfg.models.advice)
        self.retraining = Retraining(cfg, self.reader)
        self.housekeeping = Housekeeping(
            cfg, self.writer, self.reader, self.scorer, self.retraining, self.reconciler, self._stop
        )
        self.starts = Starts(
            cfg,
            self.writer,
            self.ingest,
            self.reader,
            self.queue,
            self.scorer,
            self.agents,
            self.housekeeping.node_limit,
        )
        self.reports = Reports(
            cfg, self.writer, self.ingest, self.starts, self.housekeeping.node_limit, self._stop
        )
        self.reconciler.on_final = self.starts.job_ended
        self.http: api.HttpServer | None = None
        self.head = HeadCollectors(cfg, self.writer, self.ingest, self._stop)
        self.compactor = Compactor(cfg, self.writer, self.reader, self._stop)
        # Rules and channels are checked here: a wrong rule or an unreadable secrets file stops
        # start-up with one line (ConfigError), before anything listens.
        _, dispatcher = alerting.checked(cfg)
        self.alerting = Alerting(cfg, self.writer, self.reader, self._stop, dispatcher)
        self.reloader = Reloader(self, reload_wanted or threading.Event(), self._stop, log_level)

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self.http = api.HttpServer(self)  # a port in use or no TLS off loopback fails here
            socks = self.agents.bind()  # bind first: a port in use or a missing key fails start-up
        except BaseException:
            if self.http is not None:
                self.http.sock.close()
            self.agents.close()
            raise
        self.writer.start()
        self.agents.start(socks)
        threading.Thread(target=self.housekeeping.loop, name="housekeeping", daemon=True).start()
        threading.Thread(target=self.head.loop, name="collectors", daemon=True).start()
        threading.Thread(target=self.reports.loop, name="reports", daemon=True).start()
        threading.Thread(target=self.compactor.loop, name="compactor", daemon=True).start()
        threading.Thread(target=self.reloader.loop, name="reload", daemon=True).start()
        threading.Thread(target=self.alerting.loop, name="alerting", daemon=True).start()
        self.http.start()
        log.info(
            "aggregator listening on %s (agents) and %s://%s (hooks, API); store %s",
            self.cfg.aggregator.listen,
            self.http.scheme,
            self.cfg.aggregator.http_listen,
            self.cfg.database,
        )
        why = api.munged_answers(self.cfg.security.munge_socket)
        if why:
            log.warning("HTTP callers get 503 until munged answers: %s", why)

    def stop(self) -> None:
        self._stop.set()
        self.alerting.close()
        self.starts.shutdown()
        if self.http is not None:
            self.http.stop()
        self.writer.stop()
        self.agents.close_wake_pipe()
        self.agents.close()

    def reconfigure(self) -> None:
        """After a reload has changed self.cfg in place (daemon/reload.py): the parts that keep
        a copy of a setting take its new value."""
        a, m = self.cfg.aggregator, self.cfg.models
        self.writer.max_wait = a.batch_max_seconds
        self.writer.failing_exit_seconds = a.store_failing_exit_seconds
        self.ingest.reconcile_delay = a.reconcile_delay_seconds
        self.ingest.readings_history_seconds = a.readings_history_seconds
        self.ingest.sample_future_seconds = a.sample_future_seconds
        self.ingest.sample_max_age_seconds = a.sample_max_age_days * 86400
        self.queue.squeue, self.queue.max_age = a.squeue, a.queue_snapshot_max_age_seconds
        self.scorer.threshold, self.scorer.advice_mode = m.warn_threshold, m.advice
        self.head.reconfigure()
        self.compactor.reconfigured()

    # -- what the HTTP API and the tests use ----------------------------------------------------
    def runtime(self) -> dict[str, Any]:
        """What only the running aggregator knows: whether its store takes writes (since when
        it fails, and why), what waits for the writer, messages deferred meanwhile, what the
        compactor moved since start and how far an old layout's move is, and its configuration
        (file, when loaded, reloads, why the last reload was refused)."""
        return {
            "answering": True,
            "store": self.writer.health(),
            "compaction": {
                "compacted_samples": self.compactor.compacted,
                "old_layout": self.compactor.migration,
            },
            "deferred_messages": self.agents.deferred,
            "started": self.started,
            "cluster_nodes": self.cluster_nodes,
            "config": self.reloader.runtime(),
            "alerts": self.alerting.runtime(),
        }

    def reader(self) -> Any:
        """A read connection of this thread's own (SQLite connections are not shared)."""
        conn = getattr(self._readers, "conn", None)
        if conn is None:
            conn = self._readers.conn = connect(self.cfg.database)
        return conn

    @property
    def cluster_nodes(self) -> int:
        """Nodes in Slurm's newest node_state reading (0: not known yet)."""
        return self.housekeeping.cluster_nodes

    @cluster_nodes.setter
    def cluster_nodes(self, count: int) -> None:
        self.housekeeping.cluster_nodes = count

    def node_limit(self) -> int:
        return self.housekeeping.node_limit()

    def check(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.starts.check(body)

    def receive_report(self, kind: str, body: dict[str, Any]) -> tuple[Any, Any]:
        return self.reports.receive_report(kind, body)

    def report_fields(self, body: dict[str, Any]) -> tuple[dict[str, Any], float | None]:
        return self.reports.report_fields(body)

    def hook_job_start(
        self, body: dict[str, Any], settle: Settle | None = None, later: Later | None = None
    ) -> dict[str, Any]:
        return self.reports.hook_job_start(body, settle, later)

    def hook_job_end(
        self, body: dict[str, Any], settle: Settle | None = None, later: Later | None = None
    ) -> dict[str, Any]:
        return self.reports.hook_job_end(body, settle, later)

    def _job_started(
        self, fields: dict[str, Any], text: Any, t: float | None, settle: Settle | None = None
    ) -> None:
        self.starts.job_started(fields, text, t, settle)

    def _push_verdict(
        self,
        fields: dict[str, Any],
        verdict: dict[str, Any] | None,
        advice: dict[str, Any] | None = None,
    ) -> None:
        self.starts.push_verdict(fields, verdict, advice)
