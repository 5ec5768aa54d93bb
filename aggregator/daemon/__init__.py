"""nomade-aggregator, the daemon: `Aggregator` (daemon/main.py) wires its parts, each a module of
its own here: agents (ZeroMQ), reports (the hooks' reports), starts (scoring at a job's start and
the verdicts), housekeeping, retrain and head (the head-node collectors).  The HTTP API is
aggregator/daemon/api.py."""

from aggregator.daemon.main import Aggregator

__all__ = ["Aggregator"]
