"""Every parser case folder: tests/cases/<name>/ (STYLE.md rule 6).

A folder holds
  kind            the `nomadectl parse` kind (collectors/registry.py)
  input           the captured output, or instead
  source          where it is: `shared:<path>` in ../shared/fixtures (skipped where absent) or a
                  path relative to the repository root (tests/fixtures/...)
  args.json       optional keyword arguments for the parser (e.g. a headerless capture's fields)
  expected.jsonl  the records, one JSON object a line, compared as sorted lines

Supporting a new version or shape means adding a folder, not test code.  Regenerate the
expected files with NOMADE_REGEN_CASES=1 and review the diff.  Times are read in UTC.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import ROOT, shared

from collectors import registry

CASES = ROOT / "tests" / "cases"


def _cases() -> list[Path]:
    return sorted(p for p in CASES.iterdir() if (p / "kind").is_file()) if CASES.is_dir() else []


def _input(case: Path) -> Path:
    if (case / "source").is_file():
        ref = (case / "source").read_text().strip()
        if ref.startswith("shared:"):
            return shared(*ref.removeprefix("shared:").split("/"))
        return ROOT / ref
    return case / "input"


def _lines(records: list[dict]) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True, default=str) for r in records)


@pytest.mark.parametrize("case", _cases(), ids=lambda p: p.name)
def test_case(case: Path, utc) -> None:
    kind = (case / "kind").read_text().strip()
    path = _input(case)
    if not path.exists():
        pytest.fail(f"{case.name}: input {path} is missing")
    kwargs = json.loads((case / "args.json").read_text()) if (case / "args.json").is_file() else {}
    fn = registry.parser(kind)
    if kind in registry.DIRECTORY_KINDS:
        records = fn(str(path), **kwargs)
    else:
        records = fn(path.read_text(encoding="utf-8", errors="replace"), str(path), **kwargs)
    got = _lines(records)
    expected_file = case / "expected.jsonl"
    if os.environ.get("NOMADE_REGEN_CASES") == "1":
        expected_file.write_text("".join(line + "\n" for line in got))
    assert expected_file.is_file(), f"{case.name}: no expected.jsonl (NOMADE_REGEN_CASES=1)"
    expected = sorted(
        json.dumps(json.loads(line), sort_keys=True, default=str)
        for line in expected_file.read_text().splitlines()
        if line.strip()
    )
    assert got == expected
