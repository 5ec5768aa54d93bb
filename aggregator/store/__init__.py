"""NØMADE's store: the one door to the data.  Only this package speaks SQL.

(The interface a backend provides is written out here once the store's modules are in place;
the SQLite backend, aggregator/store/sqlite/, is the embedded default.)
"""

# The re-exports, by module, several names a line (isort would put one a line).
# isort: off
from .sqlite.core import *  # noqa: F403
from .sqlite.core import (  # noqa: F401  (names the rest of NØMADE uses)
    JOB_TIME, MAX_BATCH_BYTES, MIGRATIONS, SCHEMA_VERSION, SYNCHRONOUS, StoreFailing, WorkItem,
    Writer, _private_database, admin_log, audit, backup, bump, connect, event, migrate,
    open_store, schema_version, store_failed, whoami,
)  # fmt: skip
from .sqlite.history import (  # noqa: E402, F401
    StoreError, ended_jobs, recent_vectors, save_features, start_history,
)  # fmt: skip
from .sqlite.daemon import (  # noqa: E402, F401
    ended_job_count, job_vector, last_model_created, newest_records_json, node_lives,
    prune_readings, set_node_states,
)  # fmt: skip
from .sqlite.ingest import (  # noqa: E402, F401
    NODE_COLLECTOR_NAMES, REUSED_AFTER_SECONDS, Answer, Ingest, Rejected, insert_samples,
    store_collector_status, store_reading,
)  # fmt: skip
from .sqlite.jobs import find_run, reconcile_due, update_job  # noqa: E402, F401
from .sqlite.keys import (  # noqa: E402, F401
    agent_key, agent_keys, curve_seen_nodes, enrol_key, key_listing, note_agent_link, revoke_key,
    transaction,
)  # fmt: skip
from .sqlite.probe import event_job_counts, schema_version_at  # noqa: E402, F401
from .sqlite.registry import (  # noqa: E402, F401
    activate_model, active_model, list_models, register_model, rollback_model,
)  # fmt: skip
from .sqlite.views import (  # noqa: E402, F401
    agent_nodes, array_outcomes, collector_statuses, count_jobs, counters, find_job, find_jobs,
    job_advice, job_node_summaries, job_samples, job_verdict, last_event, latest_readings,
    nodes_on_plain, received_since, running_job_cpu, running_jobs,
)  # fmt: skip
from .sqlite.reports import verdict_outcomes  # noqa: E402, F401
