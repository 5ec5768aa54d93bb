"""`nomadectl import sacct` takes every form of history a site has: `sacct --json` of Slurm 21.08
to 25.x (and slurmrestd's /slurmdb jobs, the same records), text with comment lines and several
header blocks, several files at once; and it says, per file, what it stored and what it skipped.

Expected values were read from the fixtures by hand (their PROVENANCE.md says where they are from),
not copied from the importer's output.
"""

from __future__ import annotations

import gzip
import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import FIXTURES

import nomadectl as ctl
from aggregator.jobs import importer
from collectors.slurm import sacct
from collectors.slurm import slurmvalues as sv

SLURM = FIXTURES / "slurm"
TEXT = SLURM / "22.05" / "sacct-parsable2.txt"
JSON = SLURM / "22.05" / "sacct.json"
MiB = 1 << 20


pytestmark = pytest.mark.usefixtures("utc")  # conftest: the 22.05 captures' text times are local


def jobs(db: Path) -> dict[int, dict]:
    if not db.exists():
        return {}
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    rows = {r["job_id"]: dict(r) for r in conn.execute("SELECT * FROM jobs")}
    conn.close()
    return rows


def run(tmp_path: Path, path: Path, name: str = "n.db") -> tuple[importer.Summary, dict]:
    db = tmp_path / name
    summary = importer.import_text(path.read_text(), str(path), str(db), "c")
    return summary, jobs(db)


def finished(times: tuple[int, int, int], limit: int, **columns) -> dict:
    """Expected `jobs` columns: submit, start and end time, the time limit, and more."""
    submit, start, end = times
    return dict(
        submit_time=submit, start_time=start, end_time=end, time_limit_seconds=limit, **columns
    )


PER_CPU_512 = dict(mem_per_cpu_bytes=512 * MiB, mem_per_node_bytes=None, max_rss_bytes=None)
COMPLETED = dict(outcome="COMPLETED", exit_code=0, signal=0)
FAILED_1 = dict(outcome="FAILED", exit_code=1, signal=0)

# fixture -> ({job_id: expected jobs columns}, skipped reasons)
VERSIONS = {
    "21.08/sacct-json-sarc.json": ({}, {"REQUEUED": 1}),
    "22.05/sacct.json": (
        {
            16: finished(
                (1795509464, 1795509465, 1795509616),
                600,
                user="alice",
                **COMPLETED,
                mem_per_node_bytes=1024 * MiB,
                max_rss_bytes=208624 * 1024,
                elapsed_seconds=151,
            ),
            # 22.05's JSON loses the exit status 3 of this job: unknown, not 0
            17: finished(
                (1795509464, 1795509465, 1795509466),
                300,
                user="bob",
                outcome="FAILED",
                exit_code=None,
                signal=None,
                mem_per_node_bytes=500 * MiB,
            ),
            19: finished(
                (1795509475, 1795509476, 1795509477),
                300,
                user="alice",
                outcome="OUT_OF_MEMORY",
                exit_code=0,
                signal=125,
                mem_per_node_bytes=100 * MiB,
                # Its batch step ended before Slurm measured it (MaxRSS 0) and its extern
                # step's 112K is Slurm's placeholder process: the peak is unknown, not 112 KB.
                max_rss_bytes=None,
            ),
        },
        {},
    ),
    "23.02/sacct-json-sarc.json": ({}, {"RUNNING": 1}),
    "23.02/slurmrestd-slurmdb-v0.0.39-job-completed.json": (
        {
            307: finished(
                (1727332584, 1727358173, 1727358533),
                3600,
                user="dshaw",
                **COMPLETED,
                mem_per_node_bytes=0,
                mem_per_cpu_bytes=None,
                max_rss_bytes=None,
                cpus=128,
                nodes_requested=64,
                node_list="cn[001-050,052-065]",
            ),
        },
        {},
    ),
    "23.11/slurmrestd-slurmdb-v0.0.40-job-completed.json": (
        {
            509: finished(
                (1746621138, 1746621139, 1746621140),
                60,
                user="tmcgrath",
                **COMPLETED,
                account="admin",
                partition="standard",
                cpus=1,
                **PER_CPU_512,
            ),
        },
        {},
    ),
    "23.11/slurmrestd-slurmdb-v0.0.40-job-failed.json": (
        {
            510: finished(
                (1746621139, 1746621142, 1746621143), 60, user="bparks", **FAILED_1, **PER_CPU_512
            )
        },
        {},
    ),
    "24.05/slurmrestd-slurmdb-v0.0.41-job-timeout.json": (
        {
            13366: finished(
                (1780141362, 1780141363, 1780141432),
                60,
                user="madams",
                outcome="TIMEOUT",
                exit_code=0,
                signal=0,
                elapsed_seconds=69,
                **PER_CPU_512,
            ),
        },
        {},
    ),
    "24.11/slurmrestd-slurmdb-v0.0.42-job-failed.json": (
        {
            9746: finished(
                (1780300450, 1780300451, 1780300452),
                60,
                user="mwilliams",
                **FAILED_1,
                node_list="cn3",
                **PER_CPU_512,
            )
        },
        {},
    ),
    "25.05/slurmrestd-slurmdb-v0.0.43-job-completed.json": (
        {
            15008: finished(
                (1780301270, 1780301270, 1780301271),
                60,
                user="jli",
                **COMPLETED,
                work_dir="/home/jli",
                **PER_CPU_512,
            )
        },
        {},
    ),
}


@pytest.mark.parametrize("name", sorted(VERSIONS))
def test_sacct_json_of_every_version_gives_its_jobs(tmp_path, name):
    expected, skipped = VERSIONS[name]
    summary, rows = run(tmp_path, SLURM / name)
    assert dict(summary.skipped) == skipped
    assert summary.imported == len(rows) and set(expected) <= set(rows)
    for job_id, columns in expected.items():
        got = {k: rows[job_id][k] for k in columns}
        assert got == columns, f"{name} job {job_id}"
        assert rows[job_id]["reconcile"] == "done"


def test_unfinished_json_jobs_still_read_right():
    """21.08 and 23.02 (SARC) hold one unfinished job each: the rows sacct would print."""
    (old,) = sacct.parse_json((SLURM / "21.08" / "sacct-json-sarc.json").read_text())
    assert (old["JobIDRaw"], old["User"], old["State"]) == ("55978384", "purah", "REQUEUED")
    assert sv.timestamp(old["Submit"]) == 1673275023 and sv.duration(old["Timelimit"]) == 86400
    assert sv.memory(old["ReqMem"], "M") == (40960 * MiB, "node")  # 21.08: required.memory
    assert sv.gpus_from_tres(sv.tres(old["AllocTRES"])) == 1
    (mila,) = sacct.parse_json((SLURM / "23.02" / "sacct-json-sarc.json").read_text())
    assert (mila["State"], mila["End"], mila["NodeList"]) == ("RUNNING", "", "mila02")
    assert sv.memory(mila["ReqMem"], "M") == (32768 * MiB, "node")  # memory_per_node
    assert sv.gpus_from_tres(sv.tres(mila["ReqTRES"])) == 2


def test_json_variants_no_fixture_shows(tmp_path):
    """Shapes the captures lack, made by editing a real record: who cancelled (a user name in
    --json, a uid in text), 21.08/22.05's per-CPU flag in required.memory (bit 63, read signed
    or not), an unlimited time limit."""
    doc = json.loads((SLURM / "22.05" / "sacct.json").read_text())
    job = next(j for j in doc["jobs"] if j["job_id"] == 15)
    job["kill_request_user"] = "alice"
    (row, *_) = sacct.parse_json(json.dumps({"jobs": [job]}))
    assert row["State"] == "CANCELLED by alice"
    for flagged in (-(2**63) + 512, 2**63 + 512):
        job["required"]["memory"] = flagged
        (row, *_) = sacct.parse_json(json.dumps({"jobs": [job]}))
        assert sv.memory(row["ReqMem"], "M") == (512 * MiB, "cpu")
    later = json.loads(
        (SLURM / "24.05" / "slurmrestd-slurmdb-v0.0.41-job-timeout.json").read_text()
    )
    later["jobs"][0]["time"]["limit"] = {"set": True, "infinite": True, "number": 0}
    (row, *_) = sacct.parse_json(json.dumps(later))
    assert row["Timelimit"] == "UNLIMITED" and sv.duration(row["Timelimit"]) is None
    path = tmp_path / "cancelled.json"
    path.write_text(json.dumps({"jobs": [job]}))
    _, rows = run(tmp_path, path)
    assert (rows[15]["outcome"], rows[15]["cancelled_by"]) == ("CANCELLED", "alice")
    assert (rows[15]["mem_per_cpu_bytes"], rows[15]["mem_per_node_bytes"]) == (512 * MiB, None)


def test_text_and_json_of_the_same_22_05_jobs_store_the_same_rows(tmp_path):
    text_summary, text = run(tmp_path, TEXT, "text.db")
    json_summary, js = run(tmp_path, JSON, "json.db")
    assert set(text) == set(js) == {12, 13, 14, 15, 16, 17, 19}
    assert json_summary.outcomes == text_summary.outcomes
    ignored = {"uid", "created", "updated"}
    differ = {(j, k) for j in text for k in text[j] if k not in ignored and text[j][k] != js[j][k]}
    # What 22.05's JSON does not carry (see sacct._json_exit): the exit status of jobs 14 and 17
    # (unknown there), SIGTERM where the text says 0:0 (13, 15), who cancelled 15.
    assert differ == {
        (13, "signal"),
        (14, "exit_code"),
        (14, "signal"),
        (15, "signal"),
        (15, "state"),
        (15, "cancelled_by"),
        (17, "exit_code"),
        (17, "signal"),
    }
    assert (text[15]["state"], js[15]["state"]) == ("CANCELLED by 0", "CANCELLED")


# -- text: comments, blocks, missing users ---------------------------------------------------
def capture_lines() -> list[str]:
    return TEXT.read_text().splitlines()


def test_comment_lines_are_skipped_and_counted(tmp_path):
    lines = capture_lines()
    lines[0:0] = ["# sacct of cluster nomadedev, exported 2026-11-25", "  # by alice"]
    lines.insert(8, "#")
    summary = importer.import_text("\n".join(lines), "c.txt", str(tmp_path / "n.db"), "c")
    assert summary.imported == 7 and summary.comments == 3
    assert "; skipped 3 comment lines" in summary.line("c.txt")


def reordered(lines: list[str], delim: str) -> list[str]:
    """The same rows with the columns in reverse order and another delimiter."""
    return [delim.join(reversed(line.split("|"))) for line in lines]


def test_several_outputs_concatenated_are_read_block_by_block(tmp_path):
    header, *rows = capture_lines()
    first = [header, *rows[:12]]  # jobs 12, 13, 14 with their steps
    second = reordered([header, *rows[12:]], "^|^")  # 15, 16, 17, 19: own header and delimiter
    text = "\n".join([*first, "# next export", *second]) + "\n"
    summary = importer.import_text(text, "two.txt", str(tmp_path / "two.db"), "c")
    assert summary.imported == 7 and summary.comments == 1
    _, alone = run(tmp_path, TEXT, "alone.db")
    both = jobs(tmp_path / "two.db")
    ignored = {"uid", "created", "updated"}
    assert {j: {k: v for k, v in r.items() if k not in ignored} for j, r in both.items()} == {
        j: {k: v for k, v in r.items() if k not in ignored} for j, r in alone.items()
    }
    assert both[16]["max_rss_bytes"] == 208624 * 1024  # a step of the second block


def test_a_malformed_line_in_a_later_block_names_the_files_line(tmp_path):
    header, *rows = capture_lines()
    second = reordered([header, *rows[12:]], "^|^")
    second[3] = second[3].rsplit("^|^", 1)[0]
    text = "\n".join([header, *rows[:12], *second])
    with pytest.raises(importer.ParseError) as err:
        importer.import_text(text, "two.txt", str(tmp_path / "n.db"), "c")
    assert str(err.value) == "two.txt:17: expected 23 fields separated by '^|^', got 22"
    assert jobs(tmp_path / "n.db") == {}


def test_a_job_without_user_is_skipped_and_said(tmp_path):
    lines = [ln.replace("|bob|", "||") if ln.startswith("17|") else ln for ln in capture_lines()]
    summary = importer.import_text("\n".join(lines), "u.txt", str(tmp_path / "n.db"), "c")
    rows = jobs(tmp_path / "n.db")
    assert 17 not in rows and len(rows) == 6
    assert all(r["user"] for r in rows.values())  # nobody pooled under an empty user
    assert "; skipped 1 with no User (a job is never pooled under an empty user)" in summary.line(
        "u.txt"
    )


def test_a_file_without_user_column_says_so_once(tmp_path):
    lines = ["|".join(f for i, f in enumerate(ln.split("|")) if i != 3) for ln in capture_lines()]
    assert "User" not in lines[0].split("|")
    summary = importer.import_text("\n".join(lines), "nu.txt", str(tmp_path / "n.db"), "c")
    line = summary.line("nu.txt")
    assert summary.imported == 0 and jobs(tmp_path / "n.db") == {}
    assert line == (
        "nu.txt: imported 0 job runs (0 new, 0 updated, 0 unchanged);"
        " skipped 7 finished: the input has no User column (add User to sacct -o)"
    )


def test_jobs_without_a_memory_request_are_stored_and_counted(tmp_path):
    path = SLURM / "23.02" / "slurmrestd-slurmdb-v0.0.39-job-completed.json"
    summary, rows = run(tmp_path, path)
    assert rows[307]["outcome"] == "COMPLETED" and summary.no_memory == 1
    assert summary.line("x").endswith(
        "; 1 imported without a memory request (ReqMem empty or 0):"
        " --mem advice cannot learn from them"
    )
    assert run(tmp_path, TEXT, "t.db")[0].no_memory == 0


# -- the command: several files, one line each -------------------------------------------------
@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "nomade.toml"
    path.write_text(f'[general]\ncluster_name = "site"\ndata_dir = "{tmp_path}/data"\n')
    return path


def invoke(config: Path, *args: str, **kw):
    return CliRunner().invoke(ctl.main, ["--config", str(config), "import", "sacct", *args], **kw)


def stored(tmp_path: Path) -> dict:
    return jobs(tmp_path / "data" / "nomade.db")


def test_several_files_report_one_line_each_and_a_bad_one_stops_nothing(config, tmp_path):
    bad = tmp_path / "bad.txt"
    lines = capture_lines()
    lines[2] += "|extra"
    bad.write_text("\n".join(lines) + "\n")
    gz = tmp_path / "timeout.json.gz"
    gz.write_bytes(
        gzip.compress((SLURM / "24.05/slurmrestd-slurmdb-v0.0.41-job-timeout.json").read_bytes())
    )
    failed = SLURM / "24.11" / "slurmrestd-slurmdb-v0.0.42-job-failed.json"
    missing = tmp_path / "missing.txt"
    result = invoke(config, str(failed), str(bad), str(missing), str(gz))
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"{bad}:3: expected 23 fields separated by '|', got 24",
        f"{missing}: no such file",
    ]
    out = result.stdout.splitlines()
    assert out[:2] == [
        f"{failed}: imported 1 job runs (1 new, 0 updated, 0 unchanged)",
        f"{gz}: imported 1 job runs (1 new, 0 updated, 0 unchanged)",
    ]
    assert out[2:] == ["  FAILED         1", "  TIMEOUT        1"]
    assert set(stored(tmp_path)) == {9746, 13366}  # nothing of bad.txt


def test_json_on_standard_input(config, tmp_path):
    result = invoke(config, "-", input=JSON.read_text())
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "-: imported 7 job runs (7 new, 0 updated, 0 unchanged)"
    assert set(stored(tmp_path)) == {12, 13, 14, 15, 16, 17, 19}


HOSTILE = [
    ("list.json", '{"jobs": [1]}', "list.json: jobs[0]: expected a job object"),
    (
        "id.json",
        '{"jobs": [{"job_id": "12"}]}',
        "id.json: jobs[0]: expected an integer job_id, got '12'",
    ),
    ("nojobs.json", '{"nodes": []}', "nojobs.json: no 'jobs' list: not sacct --json output"),
    ("broken.json", '{\n  "jobs": [\n', "broken.json:3: not JSON: Expecting value"),
    (
        "squeue.json",
        (SLURM / "22.05" / "squeue.json").read_text(),
        "squeue.json: jobs[0]: a squeue or scontrol --json job, not sacct --json",
    ),
    (
        "noheader.txt",
        "12|COMPLETED\n",
        "noheader.txt:1: expected 22 fields separated by '|', got 2",
    ),
]


@pytest.mark.parametrize("name,text,line", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_input_that_is_not_sacct_output_is_one_line(config, tmp_path, name, text, line):
    path = tmp_path / name
    path.write_text(text)
    result = invoke(config, str(path))
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == f"{tmp_path}/{line}\n"


def test_truncated_gzip_is_one_line(config, tmp_path):
    path = tmp_path / "cut.txt.gz"
    path.write_bytes(gzip.compress(TEXT.read_bytes())[:-12])
    result = invoke(config, str(path))
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"{path}: expected a complete gzip file: ")


def test_odd_values_inside_records_are_absent_not_a_traceback(config, tmp_path):
    odd = tmp_path / "odd.json"
    odd.write_text(
        '{"jobs": [{"job_id": 5, "user": "eve", "state": {"current": ["COMPLETED"]},'
        ' "time": 5, "tres": "x", "required": [], "exit_code": "0:0", "array": 7,'
        ' "steps": [5, {"step": {"id": {"step_id": []}}, "state": 3,'
        ' "tres": {"requested": {"max": [{"type": "mem", "count": "x"}]}}}]}]}'
    )
    text = tmp_path / "gpu.txt"
    lines = capture_lines()
    lines[1] = lines[1].replace("mem=200M,node=1|/home", "mem=200M,node=1,gres/gpu=x|/home")
    lines[5] = lines[5].replace("|500M|", "|9999999999999999Tn|")  # no SQLite INTEGER holds it
    text.write_text("\n".join(lines) + "\n")
    result = invoke(config, str(odd), str(text))
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    assert out[0] == f"{odd}: imported 1 job runs (1 new, 0 updated, 0 unchanged)" + (
        "; 1 imported without a memory request (ReqMem empty or 0):"
        " --mem advice cannot learn from them"
    )
    assert out[1] == (
        f"{text}: imported 5 job runs (5 new, 0 updated, 0 unchanged);"
        " skipped 2 with a value sacct does not print (GPU count, size, time)"
    )
    eve = stored(tmp_path)[5]
    assert (eve["user"], eve["outcome"], eve["submit_time"], eve["exit_code"]) == (
        "eve",
        "COMPLETED",
        None,
        None,
    )
