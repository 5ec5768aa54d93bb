"""The layering contracts hold over NØMADE's own tree, and the checker does catch a breach: a
planted forbidden import (or SQL outside the store) in a copy of a module is reported."""

from __future__ import annotations

import shutil

import layering
from conftest import ROOT


def test_the_tree_keeps_every_contract():
    assert layering.violations(ROOT) == []


def test_only_the_store_speaks_sql():
    assert layering.sql_outside_store(ROOT) == []


def _tree(tmp_path, files: dict[str, str]):
    """A small tree of the product's packages holding FILES (path -> text)."""
    for path, text in files.items():
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        for parent in target.relative_to(tmp_path).parents:
            if str(parent) != ".":
                (tmp_path / parent / "__init__.py").touch()
        target.write_text(text)
    return tmp_path


def test_a_forbidden_import_is_reported_with_its_file_line_and_contract(tmp_path):
    root = _tree(
        tmp_path,
        {
            "nodeagent/agent.py": "import zmq\n\ndef f():\n    from aggregator import store\n",
            "models/features.py": "import numpy\nfrom aggregator import scoring\n",
            "aggregator/daemon.py": "import sqlite3\n",
            "aggregator/store/sqlite/core.py": "import sqlite3\n",  # the store's own: allowed
            "nodeagent/outbox.py": "import sqlite3\n",  # the agent's outbox: allowed
            "collectors/gpu.py": "from nodeagent.collectors import gpu\n",
        },
    )
    assert layering.violations(root) == [
        "aggregator/daemon.py:1 imports sqlite3 (only the store speaks SQL)",
        "collectors/gpu.py:1 imports nodeagent.collectors"
        " (the collectors serve both sides and belong to neither)",
        "collectors/gpu.py:1 imports nodeagent.collectors.gpu"
        " (the collectors serve both sides and belong to neither)",
        "models/features.py:2 imports aggregator (models is a pure ML library)",
        "models/features.py:2 imports aggregator.scoring (models is a pure ML library)",
        "nodeagent/agent.py:4 imports aggregator"
        " (the node agent is thin: no aggregator, no models)",
        "nodeagent/agent.py:4 imports aggregator.store"
        " (the node agent is thin: no aggregator, no models)",
    ]


def test_relative_imports_are_resolved_against_the_files_package(tmp_path):
    root = _tree(
        tmp_path,
        {
            "models/train.py": "from aggregator import registry\n",
            "models/ok.py": "from . import features\nfrom .graph import K\n",
            "nodeagent/collect/read.py": "from .. import agent\nfrom ..outbox import Outbox\n",
            "aggregator/daemon/agents.py": "from .. import store\n",
        },
    )
    imported = {m for _, m in layering.imports(root, root / "nodeagent/collect/read.py")}
    assert {
        "nodeagent",
        "nodeagent.agent",
        "nodeagent.outbox",
        "nodeagent.outbox.Outbox",
    } <= imported
    assert {m for _, m in layering.imports(root, root / "aggregator/daemon/agents.py")} == {
        "aggregator",
        "aggregator.store",
    }
    assert layering.violations(root) == [
        "models/train.py:1 imports aggregator (models is a pure ML library)",
        "models/train.py:1 imports aggregator.registry (models is a pure ML library)",
    ]


def test_sql_built_outside_the_store_is_reported(tmp_path):
    root = _tree(
        tmp_path,
        {
            "aggregator/views.py": 'Q = "SELECT user FROM jobs WHERE job_id = ?"\n'
            'def f(t):\n    return f"DELETE FROM {t} WHERE 1"\n'
            'HELP = "Select a job"\n',
            "aggregator/store/sqlite/views.py": 'Q = "SELECT user FROM jobs"\n',
        },
    )
    assert [v.split(" SQL")[0] for v in layering.sql_outside_store(root)] == [
        "aggregator/views.py:1",
        "aggregator/views.py:3",
    ]


def test_the_checker_fails_on_a_breach_planted_in_a_copy_of_the_real_tree(tmp_path):
    copy = tmp_path / "tree"
    for package in layering.PACKAGES:
        if (ROOT / package).is_dir():
            shutil.copytree(
                ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__")
            )
    agent = copy / "nodeagent" / "agent.py"
    agent.write_text(agent.read_text() + "\n\ndef _leak():\n    import numpy\n")
    found = layering.violations(copy)
    assert (
        len(found) == 1
        and found[0].startswith("nodeagent/agent.py:")
        and "imports numpy" in found[0]
    )
