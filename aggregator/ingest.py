"""Moved to aggregator/store/sqlite/ingest.py (import these names from aggregator.store); this
re-export stays until aggregator/server.py and the last tests import them from there."""

from .store import (  # noqa: F401
    NODE_COLLECTOR_NAMES,
    REUSED_AFTER_SECONDS,
    Answer,
    Ingest,
    Rejected,
    insert_samples,
    store_collector_status,
    store_reading,
)  # fmt: skip
