"""`nomade-aggregator`: the head-node daemon, in the foreground for a service manager."""

from __future__ import annotations

import os
import signal
import sys
import threading

import click

from nomade_common import config as cfgmod

SWITCH_INTERVAL_SECONDS = 0.0005


@click.command()
@cfgmod.daemon_options
def main(config_path: str | None, log_level: str | None) -> None:
    """Run the NØMADE aggregator until SIGTERM or SIGINT."""
    os.umask(0o077)  # the database, its WAL and shm, logs: readable by the service user alone
    cfg = cfgmod.load_for_daemon("nomade-aggregator", config_path, log_level)
    # The writer holds the GIL through long batches; a hook waiting for its HTTP answer would
    # wait up to 5 ms (Python's default) at each of the handful of hand-overs its request needs.
    # bench/prolog_latency.py --transport http: PrologSlurmctld added p50 80 -> 60 ms under load.
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    from .server import Aggregator  # imported late: config errors show before heavy imports

    try:
        agg = Aggregator(cfg)
        agg.start()
    except Exception as exc:  # a port in use, an unwritable database: one line, exit 1
        click.echo(f"nomade-aggregator: cannot start: {exc}", err=True)
        sys.exit(1)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    agg.stop()
