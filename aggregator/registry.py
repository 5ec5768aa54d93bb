"""Moved to aggregator/store/sqlite/registry.py (aggregator.store's *_model names); this
re-export under the old names stays until aggregator/ctl.py, aggregator/scoring.py and
models/pipeline.py call the store."""

from .store import activate_model as activate  # noqa: F401
from .store import active_model as active  # noqa: F401
from .store import list_models as models  # noqa: F401
from .store import register_model as register  # noqa: F401
from .store import rollback_model as rollback  # noqa: F401
