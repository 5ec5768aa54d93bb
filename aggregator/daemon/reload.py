"""The configuration read again on SIGHUP, in its thread ("reload"): the file (and the
environment's NOMADE_SECTION__KEY overrides) is loaded and checked as at start.  A valid one is
applied to the running configuration in place, so every part that reads `cfg` sees it at once and
the parts that keep a copy are told (`Aggregator.reconfigure`); what the aggregator reads only
at its start keeps its running value until a restart, named in one log line.  The alert rules
and channels are replaced whole (daemon/alerting.py).  An invalid one changes nothing (a wrong
rule or an unreadable alerts secrets file included): one line says why.  Either way the store
records an event.

Nothing stops meanwhile: the agents' socket, the writer and the API go on, so no sample or
report waits on a reload or is dropped by it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import os
import threading
import time
from typing import Any

from aggregator.daemon.headcollect import HEAD_COLLECTORS
from aggregator.store import WorkItem, event
from nomade_common import config
from nomade_common.errors import ConfigError

log = logging.getLogger("nomade.aggregator")

_HEAD = {c.name for c in HEAD_COLLECTORS}

# What the aggregator reads only at its start: sockets, the store and its connections, keys and
# credentials checks, the reports directory, which head collectors run.
RESTART = [
    "general.cluster_name",
    "general.data_dir",
    "aggregator.listen",
    "aggregator.http_listen",
    "aggregator.database",
    "aggregator.scontrol",
    "aggregator.store_synchronous",
    "aggregator.store_busy_timeout_seconds",
    "aggregator.max_message_bytes",
    "security.curve",
    "security.keys_dir",
    "security.plain_listen",
    "security.slurm_user",
    "security.credential_max_age_seconds",
    "security.tls_cert",
    "security.tls_key",
    "security.munge_socket",
    "hooks.state_dir",
    *(f"collectors.{name}.enabled" for name in sorted(_HEAD)),
]
# What the aggregator does not read at all: nomade-agent's settings (read at its start) and the
# hooks' (written into them by `nomadectl install-hooks`), and what only clients use.
ELSEWHERE = [
    "agent.*",
    "hooks.prefix",
    "hooks.aggregator_url",
    "hooks.task_notice",
    "hooks.breaker_*",
    "hooks.controller_transport",
    "security.tls_ca",
    *(
        f"collectors.{f.name}.*"
        for f in dataclasses.fields(config.Collectors)
        if f.name not in _HEAD
    ),
]

# Read by both: the aggregator applies it at once (how long it waits to commit a hook's report),
# and the hooks' own limit keeps its value until `nomadectl install-hooks` writes it into them.
HOOKS_TOO = ["hooks.timeout_seconds"]


def matches(key: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


class Reloader:
    """Reloads when WANTED is set (by the SIGHUP handler); LOG_LEVEL is --log-level's, which
    stays over general.log_level."""

    def __init__(
        self,
        agg: Any,
        wanted: threading.Event,
        stop: threading.Event,
        log_level: str | None = None,
    ) -> None:
        self.agg, self.wanted, self._stop, self.log_level = agg, wanted, stop, log_level
        self.loaded = time.time()  # the running configuration's
        self.reloads = 0
        self.refused: str | None = None  # why the last reload kept the running configuration

    def loop(self) -> None:
        while not self._stop.is_set():
            if self.wanted.wait(1.0):
                self.wanted.clear()
                try:
                    self.reload()
                except Exception:
                    log.exception("configuration reload failed; the running one is kept")

    def runtime(self) -> dict[str, Any]:
        return {
            "path": self.agg.cfg.path,
            "loaded": self.loaded,
            "reloads": self.reloads,
            "reload_refused": self.refused,
        }

    def reload(self) -> bool:
        """Read, check and apply the configuration; whether it was applied."""
        cfg = self.agg.cfg
        path = None if cfg.path == config.Config().path else cfg.path
        try:
            new = config.load(path, os.environ)
        except ConfigError as exc:
            return self._refuse(exc)
        try:  # the rules and channels checked before anything is applied
            alerting = self.agg.alerting.prepare(new)
        except ConfigError as exc:
            return self._refuse(exc)
        changed = config.changed_settings(cfg, new)
        later = [k for k in changed if matches(k, RESTART)]
        theirs = [k for k in changed if matches(k, ELSEWHERE)]
        applied = [k for k in changed if k not in later and k not in theirs]
        for key in applied + theirs:
            section, _, name = key.rpartition(".")
            setattr(config.setting(cfg, section), name, config.setting(new, key))
        cfg.notices = new.notices
        self.agg.reconfigure()
        alerts_now = self.agg.alerting.install(alerting)
        if self.log_level is None:
            logging.getLogger().setLevel(cfg.general.log_level.upper())
        self.loaded, self.reloads, self.refused = time.time(), self.reloads + 1, None
        for notice in new.notices:
            log.warning("%s", notice)
        log.info(
            "configuration reloaded from %s: %s",
            cfg.path,
            f"applied {', '.join(applied)}" if applied else "no change the aggregator uses",
        )
        if alerts_now:
            log.info("alerts: now %s", alerts_now)
        if later:
            log.warning(
                "configuration: %s changed but take effect only when nomade-aggregator "
                "restarts; the running values are kept",
                ", ".join(later),
            )
        if theirs:
            log.info(
                "configuration: %s are read by nomade-agent at its start and by the hooks "
                "through nomadectl install-hooks, not by the aggregator",
                ", ".join(theirs),
            )
        hooks = [k for k in applied if matches(k, HOOKS_TOO)]
        if hooks:
            log.warning(
                "configuration: %s applied here; the hooks keep their own until "
                "nomadectl install-hooks writes it into them",
                ", ".join(hooks),
            )
        detail = {"path": cfg.path, "applied": applied, "at_restart": later, "elsewhere": theirs}
        self._event("config_reloaded", json.dumps(detail, sort_keys=True))
        return True

    def _refuse(self, exc: ConfigError) -> bool:
        self.refused = str(exc)
        log.error("configuration not reloaded, the running one is kept: %s", exc)
        self._event("config_reload_refused", str(exc))
        return False

    def _event(self, kind: str, detail: str) -> None:
        self.agg.writer.submit(WorkItem(lambda c: event(c, kind, detail=detail)))
