"""`nomadectl`: the administrator's command line.  Each command is a thin shell over a module.

    base.py      the command group, its one-line errors and terminal filter, and what every
                 command shares (configuration, store reader and writer, the aggregator's API)
    fmt.py       the formatting the text views share: sizes, times, durations
    daemons.py   init, start, stop, status         cluster.py  queue, nodes, partitions, fairshare,
    jobs.py      jobs, job, check                               licenses, collect, syscheck
    imports.py   import sacct                      models.py   train, model list|activate|...
    keys.py      keys add|list|revoke|..., audit   db.py       db backup
    hooks.py     install-hooks, uninstall-hooks    parse.py    parse
    storage.py   quotas, scratch, nfs              alerts.py   alerts [ack|silence|silences]
    trends.py    disk

Each command module registers its commands on `main` and keeps the text views of its own output
beside them; `--json` prints the views themselves.
"""

from . import (  # noqa: F401
    alerts,
    cluster,
    daemons,
    db,
    hooks,
    imports,
    jobs,
    keys,
    models,
    parse,
    storage,
    trends,
)
from .base import main

__all__ = ["main"]
