"""JSON from outside (a request body, a hook report, a tool's --json output) read with a bound on
its nesting.

Python's json module parses nested arrays and objects by recursion: a document nested a few
thousand levels deep raises RecursionError, which no `except ValueError` catches, so a reader that
meets one dies with a traceback or retries the same input for ever.  `loads` measures the nesting
first, with a scan that skips strings (about 10 ms for a megabyte of `squeue --json`, 35 ms at
worst), and refuses a document nested deeper than its limit with one ValueError naming the limit.
"""

from __future__ import annotations

import json
import re
from typing import Any

# The scan drops every escape (`\"` does not end a string), then every string (a bracket inside
# one does not nest) and every run of other characters: the brackets are left, and the quote of
# a string left open, which the parser refuses anyway.
_ESCAPE = re.compile(r"\\.", re.DOTALL)
_NOT_NESTING = re.compile(r'"[^"]*"|[^\[\]{}"]+')
_OPENERS = str.maketrans({"{": "[", "}": "]", '"': None})


# What a tool's --json output may nest: Slurm's about 10 deep (a job's resources), sysstat's 5.
TOOL_OUTPUT_DEPTH = 64


class TooDeep(ValueError):
    """A JSON document nested deeper than its reader allows."""


def deeper_than(text: str, limit: int) -> bool:
    """Whether TEXT opens more than LIMIT arrays and objects inside one another at some point
    (the depth Python's parser would recurse to), whether or not TEXT is valid JSON."""
    brackets = _NOT_NESTING.sub("", _ESCAPE.sub("", text)).translate(_OPENERS)
    if brackets.count("[") <= limit:
        return False
    depth = 0
    for c in brackets:
        if c == "[":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def loads(data: str | bytes, limit: int) -> Any:
    """json.loads(DATA), refused with TooDeep (a ValueError) when DATA nests arrays and objects
    more than LIMIT deep, before any parsing; otherwise what json.loads raises (JSONDecodeError,
    a ValueError too)."""
    if isinstance(data, bytes):
        # A job's name or directory may hold bytes that are not UTF-8 (Slurm passes them on as
        # they are): each becomes U+FFFD rather than losing the whole report.
        data = data.decode(json.detect_encoding(data), "replace")
    if deeper_than(data, limit):
        raise TooDeep(f"JSON nested deeper than {limit} levels")
    try:
        return json.loads(data)
    except RecursionError:  # a limit above what this interpreter's recursion allows
        raise TooDeep(f"JSON nested deeper than {limit} levels") from None
