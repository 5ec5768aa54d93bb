"""NØMADE's store: the one door to the data.  Only this package speaks SQL; everything else calls
these functions with plain Python values (dicts, lists, numbers, bytes) and gets plain values back.

The interface a backend provides (docs/architecture.md#the-store); the SQLite backend,
aggregator/store/sqlite/, is the embedded default, and a PostgreSQL backend is one more package
beside it providing the same names.  Functions take a connection (`connect`, `open_store`) as
their first argument; those that write run inside the writer's transaction (`Writer.call`,
`Writer.submit` of a `WorkItem`), never on their own.

- Lifecycle: `connect`, `open_store` (made private to its owner, migrated), `migrate`,
  `schema_version`, `SCHEMA_VERSION`, `MIGRATIONS`, `backup`, `StoreError` (what a failed read
  raises), `StoreFailing`, `store_failed`, `transaction`.
- The one writer: `Writer` (its thread, batches, retries, health), `WorkItem`, `MAX_BATCH_BYTES`.
- Write side: `Ingest` (agents' envelopes, hook reports, jobs, refusals; `Answer`, `Rejected`),
  `store_reading`, `store_collector_status`, `update_job`, `save_features`,
  `set_node_states`, `prune_readings`, `event`, `bump`, `audit`.
- Samples' upkeep (aggregator/store/sqlite/samples.py): `compact` (landed envelopes into
  chunks; `plan_compaction` on a read snapshot, then `apply_compaction` in the writer),
  `compaction_due`, `migrate_v1` (the old one-row-per-sample table into chunks),
  `legacy_left`, `reduce_old` (the raw retention: summaries and reduced curves),
  `sample_backlog`, `sample_sizes`, `all_samples`, `CHUNK_SECONDS`; `snapshot` (reads as of one
  moment).
- Read side, for nomadectl, the API and the daemon: `find_job`, `find_jobs`, `count_jobs`,
  `job_node_summaries`, `job_samples`, `job_gpus`, `job_verdict`, `job_advice`, `running_jobs`,
  `running_job_cpu`, `sampled_running_jobs`, `running_job_memory`, `array_outcomes`,
  `agent_nodes`, `nodes_on_plain`, `node_lives`, `received_since`, `counters`, `last_event`,
  `latest_readings`, `reading_records_between`, `collector_statuses`, `newest_records_json`,
  `ended_job_count`, `verdict_outcomes`, `admin_log`, `find_run`, `reconcile_due`,
  `event_job_counts`, `schema_version_at`, `ended_job_processes`
  (aggregator/store/sqlite/alertreads.py).
- History, for features, scoring and training: `ended_jobs`, `start_history`, `recent_vectors`,
  `job_vector`.
- Model registry: `register_model`, `list_models`, `active_model`, `activate_model`,
  `rollback_model`, `last_model_created`.
- Alerts (aggregator/store/sqlite/alerts.py): `raise_alert`, `resolve_alert`, `retire_rules`,
  `open_subjects`, `open_alert_rules`, `open_alert_users`, `ack_alert`, `add_silence`,
  `silenced`, `silences`, `find_alerts`.
- Node keys: `enrol_key`, `revoke_key`, `agent_key`, `agent_keys`, `key_listing`,
  `curve_seen_nodes`, `note_agent_link`.
"""

# ruff: noqa: F401  (the names below are the interface, re-exported)
from aggregator.store.sqlite.alertreads import ended_job_processes
from aggregator.store.sqlite.alerts import (
    ack_alert,
    add_silence,
    find_alerts,
    open_alert_rules,
    open_alert_users,
    open_subjects,
    raise_alert,
    resolve_alert,
    retire_rules,
    silenced,
    silences,
)
from aggregator.store.sqlite.core import (
    JOB_TIME,
    MAX_BATCH_BYTES,
    MIGRATIONS,
    SCHEMA_VERSION,
    SYNCHRONOUS,
    StoreFailing,
    WorkItem,
    Writer,
    _private_database,
    admin_log,
    audit,
    backup,
    bump,
    connect,
    event,
    migrate,
    open_store,
    schema_version,
    store_failed,
    whoami,
)
from aggregator.store.sqlite.daemon import (
    ended_job_count,
    job_vector,
    last_model_created,
    newest_records_json,
    node_lives,
    prune_readings,
    set_node_states,
)
from aggregator.store.sqlite.gpus import job_gpus
from aggregator.store.sqlite.history import (
    StoreError,
    ended_jobs,
    recent_vectors,
    save_features,
    start_history,
)
from aggregator.store.sqlite.ingest import (
    NODE_COLLECTOR_NAMES,
    REUSED_AFTER_SECONDS,
    Answer,
    Ingest,
    Rejected,
    store_collector_status,
    store_reading,
)
from aggregator.store.sqlite.jobs import find_run, reconcile_due, update_job
from aggregator.store.sqlite.keys import (
    agent_key,
    agent_keys,
    curve_seen_nodes,
    enrol_key,
    key_listing,
    note_agent_link,
    revoke_key,
    transaction,
)
from aggregator.store.sqlite.probe import event_job_counts, schema_version_at
from aggregator.store.sqlite.readingviews import reading_records_between
from aggregator.store.sqlite.registry import (
    activate_model,
    active_model,
    list_models,
    register_model,
    rollback_model,
)
from aggregator.store.sqlite.reports import verdict_outcomes
from aggregator.store.sqlite.samples import (
    CHUNK_SECONDS,
    Plan,
    all_samples,
    apply_compaction,
    compact,
    compaction_due,
    legacy_left,
    migrate_v1,
    plan_compaction,
    reduce_old,
    sample_backlog,
    sample_sizes,
    snapshot,
)
from aggregator.store.sqlite.views import (
    agent_nodes,
    array_outcomes,
    collector_statuses,
    count_jobs,
    counters,
    find_job,
    find_jobs,
    job_advice,
    job_node_summaries,
    job_samples,
    job_verdict,
    last_event,
    latest_readings,
    nodes_on_plain,
    received_since,
    running_job_cpu,
    running_job_memory,
    running_jobs,
    sampled_running_jobs,
)

__all__ = [name for name in dir() if not name.startswith("__") and name not in ("aggregator",)]
