"""The daemon's periodic work, once a second in its thread ("housekeeping"): the model reloaded
when a new one is active, retraining on schedule, the cluster's node count, old readings pruned,
node liveness, and the reconciler's tick (ended jobs completed from sacct).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from aggregator.daemon import liveness
from aggregator.daemon.retrain import Retraining
from aggregator.jobs.reconcile import Reconciler
from aggregator.predict.scoring import Scorer
from aggregator.store import (
    WorkItem,
    Writer,
    event,
    newest_records_json,
    node_lives,
    prune_readings,
    set_node_states,
)
from nomade_common.config import Config

log = logging.getLogger("nomade.aggregator")


class Housekeeping:
    """READER() is a read connection of the calling thread's own."""

    def __init__(
        self,
        cfg: Config,
        writer: Writer,
        reader: Callable[[], Any],
        scorer: Scorer,
        retraining: Retraining,
        reconciler: Reconciler,
        stop: threading.Event,
    ) -> None:
        self.cfg = cfg
        self.writer = writer
        self.reader = reader
        self.scorer = scorer
        self.retraining = retraining
        self.reconciler = reconciler
        self._stop = stop
        self.cluster_nodes = 0  # nodes in Slurm's newest node_state reading (0: not known yet)

    def loop(self) -> None:
        ticks = 0
        while not self._stop.wait(1.0):
            try:
                if ticks % 5 == 0:
                    self.scorer.reload()
                if ticks % 60 == 0:
                    self.retraining.maybe()
                    self._count_cluster_nodes()
                if ticks % 3600 == 0:
                    self._prune_readings()
                ticks += 1
                self._liveness()
                if self.writer.failing_since is None:  # else its writes would only queue up
                    self.reconciler.run_once()
            except Exception:
                log.exception("housekeeping failed; continuing")

    def node_limit(self) -> int:
        """The most nodes a job's node list may name: aggregator.max_job_nodes, or the number
        of nodes Slurm reported (the node_state collector) when that is smaller."""
        cap = self.cfg.aggregator.max_job_nodes
        return min(cap, self.cluster_nodes) if self.cluster_nodes else cap

    def _count_cluster_nodes(self) -> None:
        records = newest_records_json(self.reader(), "node_state")
        try:
            self.cluster_nodes = len(json.loads(records)) if records is not None else 0
        except ValueError:
            self.cluster_nodes = 0

    def _prune_readings(self) -> None:
        cutoff = time.time() - self.cfg.aggregator.readings_retention_days * 86400
        self.writer.submit(WorkItem(lambda c: prune_readings(c, cutoff)))

    def _liveness(self) -> None:
        rows = node_lives(self.reader())
        nodes = [liveness.NodeLife(r[0], r[1], r[2]) for r in rows]
        new, events = liveness.tick(nodes, time.time(), self.cfg.aggregator.node_down_seconds)
        if not events:
            return

        def apply(c):
            set_node_states(c, [(n.node, n.state) for n in new])
            for node, kind in events:
                event(c, kind, node=node)

        self.writer.submit(WorkItem(apply))
        for node, kind in events:
            log.warning("%s: %s", node, kind.replace("_", " "))
