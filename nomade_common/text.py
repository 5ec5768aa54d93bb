"""Text from outside (a job name, a node name a sender chose, a request path) made fit for a
terminal or a log line: no control characters, which could carry escape sequences, and no
bidirectional overrides, which reorder what a reader sees."""

from __future__ import annotations

import io
import re
from typing import TextIO

_BIDI = "\u200e\u200f\u2028-\u202e\u2066-\u2069"
_NOT_PRINTABLE = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI}]")
# The same, less newline and tab: what a whole command's output may not carry to a terminal.
_NOT_FOR_TERMINAL = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI}]")


def printable(text: str, limit: int, fill: str = " ") -> str:
    """TEXT on one line, each control character replaced by FILL, cut at LIMIT characters."""
    return _NOT_PRINTABLE.sub(fill, text)[:limit]


def for_terminal(text: str) -> str:
    """TEXT without the characters a terminal would act on: C0 controls but newline and tab,
    DEL, C1 controls and bidirectional overrides (what is left of an escape sequence shows)."""
    return _NOT_FOR_TERMINAL.sub("", text)


class TerminalText(io.TextIOBase):
    """A text stream that writes to STREAM what `for_terminal` leaves of each string.

    It says it is no terminal (isatty() is False), so that nothing (click's progress bar) drives
    the terminal through it with sequences it would drop; and it has no `buffer`, so that nobody
    (click, given bytes) writes around it."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self.stream.encoding

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return self.stream.errors

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self.stream.write(_NOT_FOR_TERMINAL.sub("", text))
        return len(text)

    def flush(self) -> None:
        if not self.closed and not getattr(self.stream, "closed", False):  # STREAM closed first
            self.stream.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.stream.fileno()


def size(n: float | None) -> str:
    """N bytes for people: "512 B", "1.5 GiB" ("-" for None); in nomadectl's tables and in
    the alerts' text alike."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
