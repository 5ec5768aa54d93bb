"""Pure parser of `scontrol show job -o` and `scontrol show node -o` (one record per line)."""

from __future__ import annotations

import re

from nomade_common.errors import ParseError

# A key starts a token: letters, digits, '/', ':' and '_' before '='.  Values may contain spaces
# (WorkDir, Command, Reason), so a token ends only where the next key begins.
_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/.]*)=")


def parse_record(line: str) -> dict[str, str]:
    keys = list(_KEY.finditer(line))
    out: dict[str, str] = {}
    for i, m in enumerate(keys):
        end = keys[i + 1].start() if i + 1 < len(keys) else len(line)
        out[m.group(1)] = line[m.end() : end].strip()
    return out


def parse(text: str, source: str = "scontrol") -> list[dict[str, str]]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if "=" not in line:
            raise ParseError(source, number, "expected KEY=VALUE pairs (scontrol show -o output)")
        records.append(parse_record(line.strip()))
    return records
