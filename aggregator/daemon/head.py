"""The head-node collectors (aggregator/daemon/headcollect.py), run on their schedule in their
thread ("collectors"); each run's records and every collector's status are stored through the
writer.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

from aggregator.daemon.headcollect import HEAD_COLLECTORS
from aggregator.jobs import importer
from aggregator.store import Ingest, WorkItem, Writer, store_collector_status, store_reading
from collectors.runner import Reading, Scheduler
from nomade_common.config import Config

log = logging.getLogger("nomade.aggregator")


class HeadCollectors:
    def __init__(self, cfg: Config, writer: Writer, ingest: Ingest, stop: threading.Event) -> None:
        self.cfg = cfg
        self.writer = writer
        self.ingest = ingest
        self._stop = stop
        self.head = socket.gethostname().split(".")[0]
        self.collectors = Scheduler(cfg, HEAD_COLLECTORS, self._store_reading)

    def _store_reading(self, r: Reading) -> None:
        """A head collector's run: its records (finished jobs go to `jobs`), and the status of
        every collector, written through the writer like everything else."""
        status = self.collectors.snapshot()
        history = self.cfg.aggregator.readings_history_seconds

        def apply(c):
            if r.ok and r.collector == "job_history":
                counts = importer.store_jobs(c, self.ingest, r.records, time.time())
                store_reading(c, self.head, r.collector, r.t, r.seconds, [dict(counts)], history)
            elif r.ok:
                store_reading(c, self.head, r.collector, r.t, r.seconds, r.records, history)
            store_collector_status(c, self.head, "head", status, time.time())

        self.writer.submit(WorkItem(apply))

    def reconfigure(self) -> None:
        """After a reload: each running collector's interval as the configuration now has it,
        from its next run.  Which collectors run is decided at start (a restart changes it)."""
        for name, st in self.collectors.status.items():
            st.interval_seconds = getattr(self.cfg.collectors, name).interval_seconds

    def loop(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self.collectors.run_due()
            except Exception:
                log.exception("head-node collectors failed; continuing")
                wait = 5.0
            self._stop.wait(min(wait, 5.0))
