"""NØMADE's layering contracts, checked over the import graph of the source tree.

    violations(root) -> ["aggregator/daemon.py:15 imports sqlite3 (only the store speaks SQL)", ...]

Each contract names the modules it binds, the imports they may not make, and why
(docs/architecture.md).  Imports are read with `ast` from every .py file, at any depth (an import
inside a function counts as much as one at the top); `from . import x` is resolved against the
file's own package.  tests/test_layering.py runs the checker over the tree and over a planted
forbidden import, to see that it does fail.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

PACKAGES = (
    "aggregator",
    "nodeagent",
    "models",
    "nomade_common",
    "collectors",
    "workload",
    "nomadectl",
    "hooks",
)


@dataclass(frozen=True)
class Contract:
    name: str
    modules: tuple[str, ...]  # module patterns bound by it (fnmatch over dotted names)
    forbidden: tuple[str, ...]  # imported module patterns they may not import
    allowed: tuple[str, ...] = ()  # modules of MODULES exempt from it

    def binds(self, module: str) -> bool:
        return any(fnmatchcase(module, p) for p in self.modules) and not any(
            fnmatchcase(module, p) for p in self.allowed
        )

    def forbids(self, imported: str) -> bool:
        return any(imported == p or imported.startswith(p + ".") for p in self.forbidden)


CONTRACTS = (
    Contract(
        "only the store speaks SQL",
        ("*",),
        ("sqlite3",),
        allowed=("aggregator.store", "aggregator.store.*", "nodeagent.outbox"),
    ),
    Contract(
        "the node agent is thin: no aggregator, no models",
        ("nodeagent", "nodeagent.*"),
        ("aggregator", "models", "nomadectl", "numpy", "pandas", "torch"),
    ),
    Contract(
        "models is a pure ML library",
        ("models", "models.*"),
        ("aggregator", "nomadectl", "nodeagent", "workload"),
    ),
    Contract(
        "the collectors serve both sides and belong to neither",
        ("collectors", "collectors.*"),
        ("aggregator", "nodeagent", "models", "nomadectl"),
    ),
    Contract(
        "the common layer is common",
        ("nomade_common", "nomade_common.*"),
        ("aggregator", "nodeagent", "models", "nomadectl", "collectors"),
    ),
)


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(root: Path, path: Path) -> Iterator[tuple[int, str]]:
    """(line, imported module) of every import in PATH, relative ones resolved."""
    module = module_name(root, path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1] if node.level > 1 else base
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:  # `from aggregator import store`: the submodule too
                yield node.lineno, f"{target}.{alias.name}"


def sources(root: Path) -> Iterator[Path]:
    for package in PACKAGES:
        if (root / package).is_dir():
            yield from sorted((root / package).rglob("*.py"))


def violations(root: Path, contracts: tuple[Contract, ...] = CONTRACTS) -> list[str]:
    out = []
    for path in sources(root):
        module = module_name(root, path)
        for line, imported in imports(root, path):
            for c in contracts:
                if c.binds(module) and c.forbids(imported):
                    out.append(f"{path.relative_to(root)}:{line} imports {imported} ({c.name})")
    return sorted(set(out))


SQL_START = (
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "CREATE",
    "ALTER",
    "DROP",
    "PRAGMA",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT",
    "RELEASE",
    "WITH",
    "REPLACE",
    "VACUUM",
)
SQL_HOMES = ("aggregator.store", "aggregator.store.*", "nodeagent.outbox")


def sql_outside_store(root: Path) -> list[str]:
    """Every string that begins as an SQL statement in a module outside the store: a query
    built in the code that reads its answer is SQL spoken outside the one door."""
    out = []
    for path in sources(root):
        module = module_name(root, path)
        if any(fnmatchcase(module, p) for p in SQL_HOMES):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            parts = []
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                parts = [node.value]
            elif isinstance(node, ast.JoinedStr):
                parts = [v.value for v in node.values[:1] if isinstance(v, ast.Constant)]
            for text in parts:
                words = text.split(None, 1)
                if (
                    words
                    and words[0].upper() == words[0]
                    and words[0] in SQL_START
                    and len(words) > 1
                ):
                    out.append(
                        f"{path.relative_to(root)}:{node.lineno} SQL outside the store:"
                        f" {text.strip()[:60]!r}"
                    )
    return sorted(set(out))
