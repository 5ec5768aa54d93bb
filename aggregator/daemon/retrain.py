"""Scheduled retraining (models.retrain_interval_hours): `nomadectl train --activate if-better` in
a process of its own, so that torch stays out of the aggregator; its output goes to
<data_dir>/retrain.log and the new model is activated only if it is not worse.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aggregator.store import ended_job_count, last_model_created
from nomade_common.config import Config

log = logging.getLogger("nomade.aggregator")
MIN_ENDED_JOBS = 1000  # jobs with a known outcome below which no model is trained


class Retraining:
    """READER() is a read connection of the calling thread's own."""

    def __init__(self, cfg: Config, reader: Callable[[], Any]) -> None:
        self.cfg = cfg
        self.reader = reader
        self._retraining: subprocess.Popen | None = None

    def maybe(self) -> None:
        """Retrain on schedule (models.retrain_interval_hours), in a separate process (torch stays
        out of the aggregator); the new model is activated only if it is not worse."""
        hours = self.cfg.models.retrain_interval_hours
        if hours <= 0 or (self._retraining is not None and self._retraining.poll() is None):
            return
        last = last_model_created(self.reader())
        if last is not None and time.time() - last < hours * 3600:
            return
        ended = ended_job_count(self.reader())
        # Below this, the most recent 20% (the part that decides activation) cannot hold the 200
        # jobs the activation rule asks for (models.evaluate.too_little): a model trained now
        # could never be activated, and one would be registered every interval.
        if ended < MIN_ENDED_JOBS:
            return
        ctl = Path(sys.executable).parent / "nomadectl"
        log_path = Path(self.cfg.general.data_dir) / "retrain.log"
        log.info("retraining on schedule (every %.1f h); log %s", hours, log_path)
        with open(log_path, "ab") as out:
            self._retraining = subprocess.Popen(
                [str(ctl), "--config", self.cfg.path, "train", "--activate", "if-better"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
