"""Analyses over plain series that the aggregator's views and rules share: pure functions, no
I/O and no clock (`trends.py`: rates, acceleration, trend classes, projections to a limit)."""
