"""Moved to aggregator/daemon/ (the daemon's parts, wired by daemon/main.py); this name stays for
`nomade-aggregator` (aggregator/cli.py) and the tests that import it."""

from .daemon import Aggregator

__all__ = ["Aggregator"]
