"""Errors shared by NØMADE's agent and aggregator."""

from __future__ import annotations


class ParseError(ValueError):
    """Input that a parser cannot read: names the source, the line (1-based, or None) and why.

    Parsers raise only this; the outer shell turns it into one line for the user.
    """

    def __init__(self, source: str, line: int | None, reason: str) -> None:
        self.source, self.line, self.reason = source, line, reason
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {reason}")


class ConfigError(ValueError):
    """A configuration problem: names the file and the key."""

    def __init__(self, path: str, key: str | None, reason: str) -> None:
        self.path, self.key, self.reason = path, key, reason
        where = f"{path} [{key}]" if key else path
        super().__init__(f"{where}: {reason}")
