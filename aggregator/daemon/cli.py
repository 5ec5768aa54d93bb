"""`nomade-aggregator`: the head-node daemon, in the foreground for a service manager."""

from __future__ import annotations

import os
import signal
import sys
import threading

import click

from nomade_common import config as cfgmod

SWITCH_INTERVAL_SECONDS = 0.0005
STORE_FAILED_EXIT = 3  # the store stayed unusable (aggregator.store_failing_exit_seconds)


@click.command()
@cfgmod.daemon_options
def main(config_path: str | None, log_level: str | None) -> None:
    """Run the NØMADE aggregator until SIGTERM or SIGINT; SIGHUP reloads its configuration."""
    os.umask(0o077)  # the database, its WAL and shm, logs: readable by the service user alone
    cfg = cfgmod.load_for_daemon("nomade-aggregator", config_path, log_level)
    # The writer holds the GIL through long batches; a hook waiting for its HTTP answer would
    # wait up to 5 ms (Python's default) at each of the handful of hand-overs its request needs.
    # bench/prolog_latency.py --transport http: PrologSlurmctld added p50 80 -> 60 ms under load.
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    from aggregator.daemon import (
        Aggregator,  # imported late: config errors show before heavy imports
    )

    # SIGHUP reloads the configuration (daemon/reload.py); caught from here on, since its
    # default action would end the daemon.
    reload_wanted = threading.Event()
    signal.signal(signal.SIGHUP, lambda *_: reload_wanted.set())
    # SIGTERM and SIGINT are caught before start-up too: a service manager's stop that lands
    # while the aggregator starts (its munged check alone can take seconds) is a clean stop
    # once it has started, never a death half-way through.
    signalled = threading.Event()
    agg: Aggregator | None = None

    def on_signal(*_: object) -> None:
        signalled.set()
        if agg is not None:
            agg.writer.fatal.set()  # the one event the loop below waits on

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        agg = Aggregator(cfg, reload_wanted, log_level)
        agg.start()
    except Exception as exc:  # a port in use, an unwritable database: one line, exit 1
        click.echo(f"nomade-aggregator: cannot start: {exc}", err=True)
        sys.exit(1)
    if signalled.is_set():
        agg.writer.fatal.set()
    # Set by a signal, or by the writer when the store stayed unusable past
    # aggregator.store_failing_exit_seconds: then exit non-zero, so the unit restarts it.
    while not agg.writer.fatal.wait(1.0):
        pass  # a timed wait: the main thread runs signal handlers between waits
    agg.stop()
    if not signalled.is_set():
        click.echo("nomade-aggregator: the store stayed unusable; exiting for a restart", err=True)
        sys.exit(STORE_FAILED_EXIT)
