"""`nomadectl import sacct`: conversions, idempotence, validation before writing, inputs."""

from __future__ import annotations

import gzip
import sqlite3
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import FIXTURES

import nomadectl as ctl
from aggregator.jobs import importer
from aggregator.store import Ingest, Writer

CAPTURE = FIXTURES / "slurm" / "22.05" / "sacct-parsable2.txt"

# `sacct -D` prints each run of a requeued job with its own steps; 50 is an array task, 51 a het
# component.  Fields: NØMADE's RECONCILE_FIELDS, without header.
REQUEUED = """\
50|40_7|a|alice|research|debug|2026-11-20T10:00:00|2026-11-20T10:00:05|2026-11-20T10:05:00|00:04:55|NODE_FAIL|0:0|0:0|00:01.000||1G|2|1|node1|01:00:00|billing=2,cpu=2,mem=1G,node=1|/home/alice
50.batch|40_7.batch|batch||research||2026-11-20T10:00:05|2026-11-20T10:00:05|2026-11-20T10:05:00|00:04:55|CANCELLED|0:15||00:01.000|900K||2|1|node1|||/home/alice
50|40_7|a|alice|research|debug|2026-11-20T10:06:00|2026-11-20T10:06:05|2026-11-20T10:16:05|00:10:00|COMPLETED|0:0|0:0|00:10.000||1G|2|1|node2|01:00:00|billing=2,cpu=2,mem=1G,node=1|/home/alice
50.batch|40_7.batch|batch||research||2026-11-20T10:06:05|2026-11-20T10:06:05|2026-11-20T10:16:05|00:10:00|COMPLETED|0:0||00:10.000|2000K||2|1|node2|||/home/alice
51|45+1|h|bob|physics|debug|2026-11-20T11:00:00|2026-11-20T11:00:01|2026-11-20T11:00:09|00:00:08|FAILED|0:9|0:0|00:00.100||500M|1|1|node1|00:10:00|cpu=1,mem=500M,node=1,gres/gpu=2|/home/bob
52|52|r|bob|physics|debug|2026-11-20T12:00:00|2026-11-20T12:00:01|Unknown|00:00:08|RUNNING|0:0|0:0|00:00:00||500M|1|1|node1|00:10:00|cpu=1,mem=500M,node=1|/home/bob
"""


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def dump(db: Path) -> list[tuple]:
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT * FROM jobs ORDER BY uid").fetchall()
    conn.close()
    return rows


def jobs(db: Path) -> list[dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    rows = [dict(r) for r in conn.execute("SELECT * FROM jobs ORDER BY uid")]
    conn.close()
    return rows


@pytest.mark.parametrize(
    "job_id, raw, expected",
    [
        ("12", "12", (12, None, None, None, None)),
        ("40_7", "50", (50, 40, 7, None, None)),
        ("40_[1-5%2]", "40", (40, 40, None, None, None)),
        ("45+1", "51", (51, None, None, 45, 1)),
        ("45+0", "", (45, None, None, 45, 0)),
        ("12", "", (12, None, None, None, None)),
    ],
)
def test_identity(job_id, raw, expected):
    ids = importer.identity({"JobID": job_id, "JobIDRaw": raw})
    assert tuple(ids.values()) == expected


@pytest.mark.parametrize("job_id", ["40_7", "45+1"])
def test_identity_unknown_without_jobidraw(job_id):
    assert importer.identity({"JobID": job_id}) is None


def test_canonical_field_names():
    assert importer.canonical(["jobid", "NCPUs", " start", "Custom"]) == [
        "JobID",
        "NCPUS",
        "Start",
        "Custom",
    ]


def test_requeued_runs_array_and_het_jobs(tmp_path):
    db = tmp_path / "n.db"
    summary = importer.import_text(REQUEUED, "requeued.txt", str(db), "c")
    assert dict(summary.outcomes) == {"NODE_FAIL": 1, "COMPLETED": 1, "FAILED": 1}
    assert dict(summary.skipped) == {"RUNNING": 1}
    rows = jobs(db)
    first, second, het = rows
    assert (first["job_id"], second["job_id"]) == (50, 50)  # two runs, one row each
    assert (first["submit_time"], second["submit_time"]) == (
        ts("2026-11-20T10:00:00"),
        ts("2026-11-20T10:06:00"),
    )
    assert (first["outcome"], second["outcome"]) == ("NODE_FAIL", "COMPLETED")
    assert (first["max_rss_bytes"], second["max_rss_bytes"]) == (900 * 1024, 2000 * 1024)
    assert (second["array_job_id"], second["array_task_id"]) == (40, 7)
    assert (second["node_list"], second["cpus"], second["mem_per_node_bytes"]) == (
        "node2",
        2,
        1 << 30,
    )
    assert (het["job_id"], het["het_job_id"], het["het_job_offset"]) == (51, 45, 1)
    assert (het["exit_code"], het["signal"], het["gpus"]) == (0, 9, 2)
    assert {r["reconcile"] for r in rows} == {"done"} and {r["cluster"] for r in rows} == {"c"}


def test_reimport_changes_nothing(tmp_path):
    db = tmp_path / "n.db"
    importer.import_text(CAPTURE.read_text(), "x", str(db), "c")
    before = dump(db)
    again = importer.import_text(CAPTURE.read_text(), "x", str(db), "c")
    assert dict(again.stored) == {"unchanged": 7}
    assert dump(db) == before  # not even `updated` moves


def test_import_completes_a_live_row_and_keeps_its_request(tmp_path):
    db = tmp_path / "n.db"
    writer, ingest = Writer(str(db)), Ingest("c")
    writer.start()
    start = {
        "job_id": 16,
        "submit_time": ts("2026-11-24T08:37:44"),
        "user": "alice",
        "job_name": "from-the-hook",
        "cpus": 4,
    }
    writer.call(lambda conn: ingest.job_start(conn, start, {}, 1.0))
    writer.stop()
    summary = importer.import_text(CAPTURE.read_text(), "x", str(db), "c")
    assert dict(summary.stored) == {"new": 6, "updated": 1}
    burn = next(r for r in jobs(db) if r["job_id"] == 16)
    assert (burn["job_name"], burn["cpus"]) == ("from-the-hook", 4)  # what the hook said stays
    assert (burn["outcome"], burn["reconcile"], burn["partition"]) == ("COMPLETED", "done", "debug")
    assert burn["request_json"] is not None


def test_batches_are_thousands_of_jobs_per_transaction(tmp_path, monkeypatch):
    line = (
        "{0}|{0}|j|u|a|p|2026-11-20T10:00:00|2026-11-20T10:00:01|2026-11-20T10:00:02|00:00:01"
        "|COMPLETED|0:0|0:0|00:00.1||1G|1|1|n1|00:10:00|cpu=1|/w\n"
    )
    text = "".join(line.format(i) for i in range(1, 4501))
    commits = []
    real = importer.store

    def counting(writer, ingest, rows):
        out = real(writer, ingest, rows)
        commits.append(writer.commits)
        return out

    monkeypatch.setattr(importer, "store", counting)
    summary = importer.import_text(text, "big", str(tmp_path / "n.db"), "c")
    assert summary.imported == 4500 and commits == [3]  # 2000 + 2000 + 500


# -- the command ---------------------------------------------------------------------------
@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "nomade.toml"
    path.write_text(
        f'[general]\ncluster_name = "site"\ndata_dir = "{tmp_path}/data"\n'
        f'[aggregator]\nsacct = "{tmp_path}/fake-sacct"\n'
    )
    return path


def invoke(config: Path, *args: str, **kw):
    return CliRunner().invoke(ctl.main, ["--config", str(config), "import", "sacct", *args], **kw)


def test_command_prints_a_summary(config, tmp_path):
    result = invoke(config, str(CAPTURE))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == (
        f"{CAPTURE}: imported 7 job runs (7 new, 0 updated, 0 unchanged)"
    )
    assert "OUT_OF_MEMORY  2" in result.output and "TIMEOUT        1" in result.output
    assert {r["cluster"] for r in jobs(tmp_path / "data" / "nomade.db")} == {"site"}


def test_malformed_line_stops_with_one_line_and_stores_nothing(config, tmp_path):
    lines = CAPTURE.read_text().splitlines()
    lines.insert(2, "")  # a blank line 3 still counts in the line number
    lines[5] = lines[5].rsplit("|", 1)[0]  # line 6 loses its last field
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join(lines) + "\n")
    result = invoke(config, str(bad))
    assert result.exit_code == 2
    assert result.stderr == f"{bad}:6: expected 23 fields separated by '|', got 22\n"
    db = tmp_path / "data" / "nomade.db"
    assert not db.exists() or dump(db) == []  # rows before line 6 were not stored either


def test_gzip_and_stdin(config, tmp_path):
    gz = tmp_path / "sacct.txt.gz"
    gz.write_bytes(gzip.compress(CAPTURE.read_bytes()))
    assert "imported 7 job runs (7 new" in invoke(config, str(gz)).output
    noheader = (FIXTURES / "slurm" / "22.05" / "sacct-parsable2-noheader.txt").read_text()
    fields = CAPTURE.read_text().splitlines()[0].replace("|", ",")
    result = invoke(config, "-", "--fields", fields, input=noheader)
    assert result.exit_code == 0, result.output
    assert "imported 7 job runs (0 new, 0 updated, 7 unchanged)" in result.output


def test_snowman_delimiter_and_a_trailing_one(config, tmp_path):
    text = CAPTURE.read_text().replace("|", "☃").replace("\n", "☃\n")
    path = tmp_path / "snow.txt"
    path.write_text(text)
    result = invoke(config, str(path))
    assert result.exit_code == 0 and "imported 7 job runs" in result.output


def test_start_end_runs_sacct_one_day_at_a_time(config, tmp_path):
    calls = tmp_path / "calls"
    fake = tmp_path / "fake-sacct"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\ncat {CAPTURE}\n')
    fake.chmod(0o755)
    result = invoke(config, "--start", "2026-11-22", "--end", "2026-11-24T12:00:00")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == (
        "sacct -S 2026-11-22T00:00:00 -E 2026-11-24T12:00:00:"
        " imported 21 job runs (7 new, 0 updated, 14 unchanged)"
    )
    fields = (
        "JobIDRaw,JobID,JobName,User,Account,Partition,Submit,Start,End,Elapsed,State,"
        "ExitCode,DerivedExitCode,TotalCPU,MaxRSS,ReqMem,AllocCPUS,NNodes,NodeList,"
        "Timelimit,ReqTRES,WorkDir"
    )
    assert calls.read_text().splitlines() == [
        f"--parsable2 -D -a -S {s} -E {e} -o {fields}"
        for s, e in [
            ("2026-11-22T00:00:00", "2026-11-23T00:00:00"),
            ("2026-11-23T00:00:00", "2026-11-24T00:00:00"),
            ("2026-11-24T00:00:00", "2026-11-24T12:00:00"),
        ]
    ]


def test_failing_sacct_is_one_line(config, tmp_path):
    fake = tmp_path / "fake-sacct"
    fake.write_text("#!/bin/sh\necho 'sacct: error: slurmdbd not responding' >&2\nexit 1\n")
    fake.chmod(0o755)
    result = invoke(config, "--start", "2026-11-22", "--end", "2026-11-23")
    assert result.exit_code == 1
    assert "exited 1: sacct: error: slurmdbd not responding" in result.stderr


@pytest.mark.parametrize("args", [[], ["x.txt", "--start", "2026-11-01"], ["--end", "2026-11-01"]])
def test_file_or_start(config, args):
    assert invoke(config, *args).exit_code == 2
