"""Text from outside (a job name, a node name a sender chose, a request path) made fit for a
terminal or a log line: no control characters, which could carry escape sequences, and no
bidirectional overrides, which reorder what a reader sees."""

from __future__ import annotations

import re

_NOT_PRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def printable(text: str, limit: int, fill: str = " ") -> str:
    """TEXT on one line, each control character replaced by FILL, cut at LIMIT characters."""
    return _NOT_PRINTABLE.sub(fill, text)[:limit]
