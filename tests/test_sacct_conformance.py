"""Every sacct capture we have, imported through the real importer into a temporary store.

The expected numbers were read from the files by hand (grep/awk over the job lines, i.e. lines
whose JobID has no '.'); where a capture taught us something, the test says what.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path

import pytest
from conftest import FIXTURES, shared

from aggregator.jobs import importer
from aggregator.jobs.fields import final_from_sacct
from collectors.slurm import sacct

K, M, G = 1 << 10, 1 << 20, 1 << 30
OURS = FIXTURES / "slurm" / "22.05"
OUR_FIELDS = (
    "JobID,JobIDRaw,JobName,User,Account,Partition,Submit,Start,End,Elapsed,State,ExitCode,"
    "DerivedExitCode,TotalCPU,MaxRSS,ReqMem,AllocCPUS,NNodes,NodeList,Timelimit,ReqTRES,AllocTRES,"
    "WorkDir"
).split(",")  # sacct-parsable2-noheader.cmd
# README_commands.md next to each snowman capture (sacct --parsable --noheader --delimiter=☃).
HB_FIELDS = (
    "JobID,JobName,User,Partition,NodeList,NNodes,NCPUs,NTasks,State,Submit,Start,End,Timelimit,"
    "Elapsed,TotalCPU,CPUTime,UserCPU,SystemCPU,ReqMem,MaxRSS,MaxVMSize,ReqTRES,AllocTRES,"
    "TRESUsageInMax,TRESUsageInTot,TRESUsageOutTot,MaxDiskRead,MaxDiskWrite,MaxRSSNode,MaxRSSTask,"
    "MaxVMSizeNode,MaxVMSizeTask,MaxDiskReadNode,MaxDiskReadTask,MaxDiskWriteNode,"
    "MaxDiskWriteTask,Comment"
).split(",")
PEREGRINE_FIELDS = (
    "JobID,JobName,User,Partition,NodeList,NNodes,ncpus,NTasks,State,Submit,start,end,timelimit,"
    "elapsed,TotalCPU,UserCPU,SystemCPU,ReqMem,MaxRSS,TRESUsageInTot,TRESUsageOutTot,MaxDiskWrite,"
    "MaxDiskRead,MaxRSSNode,MaxDiskWriteNode,MaxDiskReadNode,Comment"
).split(",")  # lower-case names as the README gives them: the importer canonicalises them


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def load(path: Path, db: Path, fields=None, text: str | None = None):
    summary = importer.import_text(
        path.read_text() if text is None else text, str(path), str(db), "test", fields
    )
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    rows = {r["job_id"]: dict(r) for r in conn.execute("SELECT * FROM jobs")}
    count = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
    conn.close()
    return summary, rows, count


# -- NØMADE's own capture (Slurm 22.05) ------------------------------------------------------
@pytest.mark.parametrize(
    "name, fields", [("sacct-parsable2.txt", None), ("sacct-parsable2-noheader.txt", OUR_FIELDS)]
)
def test_our_2205_capture(tmp_path, name, fields):
    summary, rows, count = load(OURS / name, tmp_path / "n.db", fields)
    # 7 job lines (grep -vc '\.' minus the header), all finished.
    assert count == 7 and summary.imported == 7 and not summary.skipped
    assert {j: r["outcome"] for j, r in rows.items()} == {
        12: "COMPLETED",
        13: "TIMEOUT",
        14: "OUT_OF_MEMORY",
        15: "CANCELLED",
        16: "COMPLETED",
        17: "FAILED",
        19: "OUT_OF_MEMORY",
    }
    oom_in_step = rows[14]  # FAILED 1:0 on the job; only step 14.0 says OUT_OF_MEMORY
    assert (oom_in_step["state"], oom_in_step["exit_code"], oom_in_step["signal"]) == (
        "FAILED",
        1,
        0,
    )
    assert rows[15]["state"] == "CANCELLED by 0" and rows[15]["cancelled_by"] == "0"
    burn = rows[16]
    assert burn["max_rss_bytes"] == 208624 * K  # from step 16.0; the job line's MaxRSS is empty
    assert burn["elapsed_seconds"] == 151 and burn["total_cpu_seconds"] == pytest.approx(148.377)
    assert burn["mem_per_node_bytes"] == 1 * G and burn["mem_per_cpu_bytes"] is None
    assert (burn["user"], burn["account"], burn["partition"]) == ("alice", "research", "debug")
    assert (burn["cpus"], burn["nodes_requested"], burn["node_list"]) == (1, 1, "node1")
    assert burn["work_dir"] == "/home/alice/fx" and burn["job_name"] == "fx-burn"
    assert burn["submit_time"] == ts("2026-11-24T08:37:44")
    assert burn["end_time"] == ts("2026-11-24T08:40:16") and burn["reconcile"] == "done"
    assert rows[13]["time_limit_seconds"] == 60 and rows[13]["elapsed_seconds"] == 75
    assert (rows[17]["user"], rows[17]["exit_code"]) == ("bob", 3)


# -- NordicHPC/slurm2sql: Aalto Triton, --parsable2 with header, 51/50 fields (2019) -----------
@pytest.mark.parametrize("number", [1, 2])
def test_slurm2sql_triton(tmp_path, number):
    path = shared("slurm", "NordicHPC_slurm2sql", f"sacct_P_header_{number}.txt")
    summary, rows, count = load(path, tmp_path / "n.db")
    assert count == 2 and dict(summary.outcomes) == {"CANCELLED": 2}  # 2 job lines
    jupyter = rows[43974388]
    assert jupyter["state"] == "CANCELLED by 1300204" and jupyter["cancelled_by"] == "1300204"
    assert jupyter["max_rss_bytes"] == 231092 * K  # the batch step's; step 0 had 1156K
    assert jupyter["elapsed_seconds"] == 3 * 3600 + 33 * 60 + 25
    assert jupyter["mem_per_node_bytes"] == 2252800 * K  # ReqMem '2252800K', no n/c suffix
    assert rows[43977780]["end_time"] is None  # End 'Unknown' on the job line
    assert rows[43977780]["time_limit_seconds"] == 60


def test_slurm2sql_without_state_is_skipped(tmp_path):
    # A comma-separated header 'JobID,JobName,ReqTRES,Start' and no State: nothing to classify.
    path = shared("slurm", "NordicHPC_slurm2sql", "sacct_P_header_3.txt")
    summary, _, count = load(path, tmp_path / "n.db")
    assert count == 0 and dict(summary.skipped) == {"no State": 1}


# -- rug-cit-hpc/hb-jobinfo: Hábrók 2023-24, --parsable --noheader, '☃', 37 fields -------------
def test_habrok_snowman(tmp_path):
    path = shared("slurm", "rug-cit-hpc_hb-jobinfo", "sacct_snowman_delim.txt")
    summary, rows, count = load(path, tmp_path / "n.db", HB_FIELDS)
    # 242 lines, 100 job lines: 7 PENDING, 3 RUNNING (one an array task), 24 array tasks of
    # which 23 finished; without JobIDRaw their own job id is not in the file, so they are
    # skipped.  The 67 others: 47 COMPLETED, 8 CANCELLED by, 6 FAILED, 5 TIMEOUT, 1 NODE_FAIL.
    assert dict(summary.skipped) == {
        "PENDING": 7,
        "RUNNING": 3,
        "no JobIDRaw (array task or het component)": 23,
    }
    assert dict(summary.outcomes) == {
        "COMPLETED": 47,
        "CANCELLED": 8,
        "FAILED": 6,
        "TIMEOUT": 5,
        "NODE_FAIL": 1,
    }
    assert count == 67
    node_fail = rows[7336818]  # never started: NodeList 'None assigned', Start 'None'
    assert node_fail["outcome"] == "NODE_FAIL" and node_fail["node_list"] is None
    assert node_fail["start_time"] is None and node_fail["cpus"] == 20
    assert node_fail["mem_per_node_bytes"] == 320 * G  # ReqMem '320G' (21.08+: no suffix)
    assert node_fail["time_limit_seconds"] == 10 * 86400
    timeout = rows[6708912]  # 2 nodes, mem=200G in TRES: 100G per node; steps FAILED/CANCELLED
    assert timeout["outcome"] == "TIMEOUT" and timeout["mem_per_node_bytes"] == 100 * G
    assert timeout["max_rss_bytes"] == 79116 * K and timeout["cpus"] == 256
    gpu = rows[7971484]  # gres/gpu=4 over 2 nodes, COMPLETED although step .0 FAILED
    assert (gpu["outcome"], gpu["gpus"], gpu["nodes_requested"]) == ("COMPLETED", 4, 2)
    assert gpu["mem_per_node_bytes"] == 32 * G and gpu["node_list"] == "a100gpu[2,4]"
    assert rows[7939708]["gpus"] == 1 and rows[4034541]["cancelled_by"] == "10304007"
    assert rows[4034541]["submit_time"] == ts("2023-08-31T12:29:47")


def test_habrok_per_node_memory_comes_from_the_tres_of_the_nodes_it_got():
    # 2344446_26: `--nodes=1-2 --mem=4G` shows ReqTRES mem=4G,node=1, AllocTRES mem=8G,node=2
    # and NNodes 2; dividing ReqTRES's mem by NNodes used to give 2G.
    path = shared("slurm", "rug-cit-hpc_hb-jobinfo", "sacct_snowman_delim.txt")
    rows = sacct.parse(path.read_text(), str(path), fields=importer.canonical(HB_FIELDS))
    job = [r for r in rows if r["JobID"].startswith("2344446_26")]
    assert final_from_sacct(job, None)["mem_per_node_bytes"] == 4 * G
    assert importer.identity(job[0]) is None  # array task without JobIDRaw


# -- rug-cit-hpc/slurm-jobinfo: Peregrine 2021, --parsable --noheader, '☃', 27 fields ----------
def test_peregrine_snowman(tmp_path):
    # PROVENANCE.md says 24 fields; README_commands.md lists 27, and every line has 28 '☃'-
    # separated values (27 plus the trailing delimiter of --parsable).
    path = shared("slurm", "rug-cit-hpc_slurm-jobinfo", "sacct_snowman_delim.txt")
    summary, rows, count = load(path, tmp_path / "n.db", PEREGRINE_FIELDS)
    # 84 lines, 37 job lines: the 10 finished jobs appear twice with identical lines (the dump
    # was taken twice), 14 RUNNING (7 jobs twice), 3 PENDING; 20963999_982 is an array task.
    assert dict(summary.skipped) == {
        "RUNNING": 14,
        "PENDING": 3,
        "no JobIDRaw (array task or het component)": 2,
    }
    assert dict(summary.outcomes) == {"COMPLETED": 16, "FAILED": 2}
    assert dict(summary.stored) == {"new": 9, "unchanged": 9} and count == 9
    big = rows[20872560]
    assert big["max_rss_bytes"] == 12653376 * K  # step 0's; batch had 12756K
    assert big["elapsed_seconds"] == 86400 + 6 * 3600 + 51 * 60 + 32
    assert big["total_cpu_seconds"] == 7 * 86400 + 17 * 3600 + 10 * 60 + 15
    assert big["mem_per_node_bytes"] == 100 * G and big["cpus"] == 6  # ReqMem '100Gn'
    per_cpu = rows[20957017]  # ReqMem '512Mc' (before 21.08); MaxRSS batch '4M', step 0 '55168K'
    assert per_cpu["mem_per_cpu_bytes"] == 512 * M and per_cpu["mem_per_node_bytes"] is None
    assert per_cpu["max_rss_bytes"] == 55168 * K and per_cpu["time_limit_seconds"] == 3 * 86400
    assert rows[20940996]["outcome"] == "FAILED" and rows[20940996]["user"] == "user6"


# -- troycomi/reportseff: Princeton, '^|^', sections with their own field lists --------------
_BASE = "AdminComment,AllocCPUS,Elapsed,JobID,JobIDRaw,MaxRSS,NNodes,NTasks,ReqMem,State".split(",")
_NO_ELAPSED = [f for f in _BASE if f != "Elapsed"]
# reportseff asks for its --format fields sorted (case-sensitively); the sections differ in
# which fields they carry, recognisable by the number of values on a line.
REPORTSEFF_FIELDS = {
    9: _NO_ELAPSED,
    10: [*_NO_ELAPSED[:4], "MaxDiskReadNode", *_NO_ELAPSED[4:]],
    11: [*_BASE, "TotalCPU"],
    12: [*_BASE, "Timelimit", "TotalCPU"],
    13: [*_BASE, "TRESUsageOutAve", "Timelimit", "TotalCPU"],
}
# section -> (outcomes, skipped); from `grep -A1 '^###'` and the State column.
REPORTSEFF_EXPECTED = {
    "conftest.console_jobs.25569410_notime": ({"COMPLETED": 1}, {}),
    "conftest.console_jobs.24418435_notime": ({"COMPLETED": 1}, {}),
    "conftest.console_jobs.24418435": ({"COMPLETED": 1}, {}),
    "conftest.console_jobs.23000233": ({"CANCELLED": 1}, {}),
    "conftest.console_jobs.24221219": ({"COMPLETED": 1}, {}),
    "conftest.console_jobs.24221220": ({}, {"PENDING": 1}),
    "conftest.console_jobs.23000381": ({"FAILED": 1}, {}),
    "conftest.console_jobs.23000210": ({"FAILED": 1}, {}),
    "test_reportseff.test_issue_16.0": ({"COMPLETED": 1}, {}),
    "test_reportseff.test_energy_reporting.0": ({"COMPLETED": 4}, {}),
    "test_reportseff.test_filter_by_array_size.0": ({"COMPLETED": 4}, {}),
    "test_reportseff.test_issue_58.0": ({"TIMEOUT": 1}, {}),
    "test_reportseff.test_issue_73_maxrss.0": ({"COMPLETED": 1}, {}),
    "test_reportseff.test_issue_73_maxdiskreadnode.0": ({"COMPLETED": 1}, {}),
    "test_reportseff.test_issue_73_totals.0": ({"COMPLETED": 1}, {}),
    "test_reportseff.test_issue_84_empty_used_memory.0": ({"COMPLETED": 1}, {}),
    "test_reportseff.test_nonempty_used_memory.0": ({"COMPLETED": 1}, {}),
}


def reportseff_sections() -> dict[str, str]:
    path = shared("slurm", "troycomi_reportseff", "sacct_P_caret_delim_extracted.txt")
    out = {}
    for section in path.read_text().split("\n### ")[1:]:
        name, _, body = section.partition("\n")
        if body.strip() != "--delimiter=^|^":  # two sections hold only the command's option
            out[name] = body
    return out


def test_reportseff_has_the_sections_we_expect():
    assert set(reportseff_sections()) == set(REPORTSEFF_EXPECTED)


def converted(name: str) -> dict[int, dict]:
    """A reportseff section's finished runs as `jobs` rows, by the importer's pure conversion
    (importing stores none of them: the outputs have no User column)."""
    body = reportseff_sections()[name]
    width = body.splitlines()[0].count("^|^")  # a leading AdminComment and a trailing '^|^'
    rows, _ = importer.read_history(body, name, REPORTSEFF_FIELDS[width])
    found = (importer.convert(job, steps) for job, steps in importer.runs(rows)[0])
    return {r["job_id"]: r for r in found if r is not None}


@pytest.mark.parametrize("name", sorted(REPORTSEFF_EXPECTED))
def test_reportseff_section(tmp_path, name):
    body = reportseff_sections()[name]
    width = body.splitlines()[0].count("^|^")
    summary, rows, _ = load(tmp_path / name, tmp_path / "n.db", REPORTSEFF_FIELDS[width], body)
    outcomes, skipped = REPORTSEFF_EXPECTED[name]
    # Without a User column no job is pooled under an empty user: each finished one is skipped
    # and counted as such, the unfinished ones by their state.
    finished = sum(outcomes.values())
    assert dict(summary.outcomes) == {} and not rows
    assert dict(summary.skipped) == {
        **skipped,
        **({importer.NO_USER_COLUMN: finished} if finished else {}),
    }
    assert "the input has no User column" in summary.line(name) or not finished
    got = [r["outcome"] for r in converted(name).values()]
    assert {o: got.count(o) for o in set(got)} == outcomes


def test_reportseff_values(tmp_path):
    def one(name, db):
        return converted(name)

    arrays = one("test_reportseff.test_energy_reporting.0", "a.db")
    # JobID 37403870_4 has JobIDRaw 37403870 (the array job's own id), _1 has 37403937.
    assert {j: (r["array_job_id"], r["array_task_id"]) for j, r in arrays.items()} == {
        37403937: (37403870, 1),
        37403938: (37403870, 2),
        37403939: (37403870, 3),
        37403870: (37403870, 4),
    }
    assert arrays[37403937]["mem_per_node_bytes"] == 32000 * M
    assert arrays[37403937]["max_rss_bytes"] == 6300 * K
    cancelled = one("conftest.console_jobs.23000233", "c.db")[23000233]
    assert cancelled["cancelled_by"] == "129319" and cancelled["time_limit_seconds"] == 6 * 86400
    assert cancelled["mem_per_cpu_bytes"] == 4000 * M and cancelled["cpus"] == 16
    timeout = one("test_reportseff.test_issue_58.0", "t.db")[1234]
    assert timeout["max_rss_bytes"] == 19855760 * K and timeout["total_cpu_seconds"] == 3666
    many_steps = one("test_reportseff.test_issue_16.0", "s.db")[65638294]
    assert many_steps["max_rss_bytes"] == 8074500 * K  # the largest of 36 numbered steps
    # 'COMPLEteD' on a step, 'M' as MaxRSS unit: read as they are.
    assert one("test_reportseff.test_issue_73_totals.0", "x.db")[1234]["max_rss_bytes"] == (
        39538757 * K
    )
    assert one("test_reportseff.test_issue_84_empty_used_memory.0", "e.db")[12345678][
        "max_rss_bytes"
    ] == max(138120 * K, 2200 * M)
