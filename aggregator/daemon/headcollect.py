"""The head-node collectors as nomade-aggregator runs them: the registry's head side
(collectors/registry.py), with one step of the aggregator's own.

`job_history` reads sacct rows (jobs and their steps); here they become `jobs` rows for the store
(aggregator/jobs/importer.py's conversion: outcome, requests, usage), which is interpretation and so
the aggregator's.  Every other head collector runs as the registry has it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from aggregator.jobs import importer
from collectors.registry import HEAD, Collector, Reader, scheduled
from nomade_common.config import Config


def _as_jobs(read: Reader) -> Reader:
    def read_jobs(cfg: Config, state: dict[str, Any]) -> list[dict[str, Any]]:
        jobs, _summary = importer.convert_all(read(cfg, state))
        return jobs

    return read_jobs


def _bind(c: Collector) -> Collector:
    return replace(c, read=_as_jobs(c.read)) if c.name == "job_history" and c.read else c


HEAD_COLLECTORS: list[Collector] = [_bind(c) for c in scheduled(HEAD)]
