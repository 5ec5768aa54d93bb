"""NØMADE's store: the one door to the data.  Only this package speaks SQL.

(The interface a backend provides is written out here once the store's modules are in place;
the SQLite backend, aggregator/store/sqlite/, is the embedded default.)
"""

from .sqlite.core import *  # noqa: F403
from .sqlite.core import (  # noqa: F401  (names the rest of NØMADE uses)
    JOB_TIME, MAX_BATCH_BYTES, MIGRATIONS, SCHEMA_VERSION, SYNCHRONOUS, StoreFailing, WorkItem,
    Writer, _private_database, admin_log, audit, backup, bump, connect, event, migrate,
    open_store, schema_version, store_failed, whoami,
)  # fmt: skip
from .sqlite.history import (  # noqa: E402, F401
    StoreError, ended_jobs, recent_vectors, save_features, start_history,
)
