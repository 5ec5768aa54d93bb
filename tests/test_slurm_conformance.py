"""The Slurm parsers against every capture in ../shared/fixtures/slurm/ meant for them, and
NØMADE's own 22.05 captures.  Expected values were read from the files by hand (grep, jq), not
copied from the parsers' output.  Not meant for these parsers (see docs/parsers-slurm.md):
the exporter's own `--format` JSON-lines templates (*_fallback_jsonl.txt), sacctmgr, licenses,
and slurmrestd's partitions and reservations responses.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import FIXTURES, shared

from collectors import registry
from collectors.slurm import sacct, scontrol, sdiag, sinfo, squeue, sshare, sstat
from nomade_common.errors import ParseError

OWN = FIXTURES / "slurm" / "22.05"
RIVOS = ("slurm", "rivosinc_prometheus-slurm-exporter")
TELEGRAF = ("slurm", "influxdata_telegraf")
HABROK = ("slurm", "rug-cit-hpc_hb-jobinfo")
PEREGRINE = ("slurm", "rug-cit-hpc_slurm-jobinfo")


pytestmark = pytest.mark.usefixtures("utc")  # conftest: text times are local


def read(*parts: str) -> str:
    return shared(*parts).read_text()


def by(records: list[dict], key: str) -> dict:
    return {r[key]: r for r in records}


# --- every file of the shared folder has a verdict -----------------------------------------

MEANT = {
    "rivosinc_prometheus-slurm-exporter/squeue_json_21.08.5.json": "squeue-json",
    "rivosinc_prometheus-slurm-exporter/sinfo_json_21.08.5.json": "sinfo-json",
    "rivosinc_prometheus-slurm-exporter/sdiag_json_23.02.4.json": "sdiag",
    "rivosinc_prometheus-slurm-exporter/sdiag_json_24.05.json": "sdiag",
    "influxdata_telegraf/slurmrestd_v0.0.38_jobs.json": "squeue-json",
    "influxdata_telegraf/slurmrestd_v0.0.38_nodes.json": "sinfo-json",
    "influxdata_telegraf/slurmrestd_v0.0.38_diag.json": "sdiag",
    "rug-cit-hpc_hb-jobinfo/scontrol_show_nodes_oneline.txt": "scontrol-node",
    "rug-cit-hpc_slurm-jobinfo/scontrol_show_nodes_oneline.txt": "scontrol-node",
}
NOT_MEANT = {
    "rivosinc_prometheus-slurm-exporter/sinfo_fallback_jsonl.txt",  # exporter's own template
    "rivosinc_prometheus-slurm-exporter/squeue_fallback_jsonl.txt",  # idem, with broken lines
    "rivosinc_prometheus-slurm-exporter/sacctmgr_assoc.txt",  # sacctmgr: no kind here
    "rivosinc_prometheus-slurm-exporter/license_json.json",  # licences: the lic- kinds
    "influxdata_telegraf/slurmrestd_v0.0.38_partitions.json",  # partitions: no kind
    "influxdata_telegraf/slurmrestd_v0.0.38_reservations.json",  # reservations: no kind
}
# Read with a keyword argument (headerless captures, fields from their README) or by another
# kind's test (sacct).
OTHER = {
    "rug-cit-hpc_hb-jobinfo/sstat_parsable.txt",
    "rug-cit-hpc_slurm-jobinfo/sstat_parsable.txt",
    "rug-cit-hpc_hb-jobinfo/squeue_deps_reason.txt",
    "rug-cit-hpc_slurm-jobinfo/squeue_deps_reason.txt",
}


def test_every_shared_slurm_file_has_a_verdict():
    root = shared("slurm")
    files = {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(("sacct_", "README"))
    }
    assert files == set(MEANT) | NOT_MEANT | OTHER


@pytest.mark.parametrize("name", sorted(MEANT))
def test_meant_files_parse(name):
    records = registry.parser(MEANT[name])(read("slurm", *name.split("/")), name)
    assert records


@pytest.mark.parametrize(
    "name,kind",
    [
        ("rivosinc_prometheus-slurm-exporter/squeue_fallback_jsonl.txt", "squeue"),
        ("rivosinc_prometheus-slurm-exporter/sinfo_fallback_jsonl.txt", "sinfo"),
    ],
)
def test_exporter_templates_are_refused_not_misread(name, kind):
    with pytest.raises(ParseError) as err:
        registry.parser(kind)(read("slurm", *name.split("/")), name)
    assert err.value.source == name and err.value.line == 1


# --- squeue ----------------------------------------------------------------------------------


def test_squeue_json_21_08_and_a_newer_job_in_the_same_file():
    # job 2 of this file is in the data_parser shape ({"set","infinite","number"}) of 23.x
    jobs = by(squeue.records_json(read(*RIVOS, "squeue_json_21.08.5.json")), "job_id_raw")
    assert set(jobs) == {"26515966", "58948420"}
    run = jobs["26515966"]
    assert (run["state"], run["partition"], run["nodelist"], run["cpus"]) == (
        "RUNNING",
        "hw-l",
        "cs75",
        1,
    )
    assert run["time_limit_seconds"] == 30240 * 60 and run["start_time"] == 1684114921
    assert run["min_memory_bytes"] == 64000 << 20  # memory_per_cpu 64000 (MB)
    pend = jobs["58948420"]
    assert pend["job_id"] == "58948420_[1-10]" and pend["array_task"] == "1-10"
    assert (pend["state"], pend["reason"]) == ("PENDING", "Dependency")
    assert pend["dependency"] == "afterok:58948419(unfulfilled)"
    assert pend["time_limit_seconds"] == 1439 * 60 and pend["priority"] == 1368
    assert pend["min_memory_bytes"] == 131072 << 20 and pend["start_time"] is None
    assert "depends on" in pend["reason_text"]


def test_squeue_json_slurmrestd_v0_0_38():
    jobs = by(squeue.records_json(read(*TELEGRAF, "slurmrestd_v0.0.38_jobs.json")), "job_id")
    assert {k: v["state"] for k, v in jobs.items()} == {
        "20464": "RUNNING",
        "20468": "RUNNING",
        "23772": "COMPLETED",
    }
    assert jobs["20464"]["cpus"] == 2 and jobs["20464"]["user"] == "atl001"
    assert jobs["20464"]["time_limit_seconds"] == 3600 * 60
    assert jobs["20464"]["account"] is None  # "" in the response
    assert jobs["23772"]["elapsed_seconds"] == 1723463525 - 1723457333


def test_squeue_custom_format_habrok():
    recs = squeue.records(read(*HABROK, "squeue_deps_reason.txt"), "hb", format="%i|%E;%R;%C")
    assert len(recs) == 10
    reasons = [r["reason"] for r in recs]
    assert reasons.count("Dependency") == 3 and reasons.count("Priority") == 3
    assert reasons.count(None) == 3  # running: %R is the node list
    down = by(recs, "job_id")["8326038"]
    assert down["reason"] == "Resources"  # Slurm's state_desc for WAIT_RESOURCES
    assert down["reason_detail"].startswith("Nodes required for job are DOWN, DRAINED")
    arr = by(recs, "job_id")["8322514_33"]
    assert (arr["array_job_id"], arr["array_task"], arr["nodelist"], arr["cpus"]) == (
        "8322514",
        "33",
        "gelifes3",
        8,
    )


def test_squeue_custom_format_peregrine():
    recs = squeue.records(read(*PEREGRINE, "squeue_deps_reason.txt"), "pg", format="%i|%E;%R")
    assert [(r["job_id"], r["reason"]) for r in recs] == [
        ("21085523", "Priority"),
        ("21012476", "Priority"),
        ("18120717", "JobHeldUser"),
    ]
    assert recs[2]["unblock"].startswith("release it: scontrol release")


def test_squeue_own_22_05_text_layouts_agree():
    nomade = by(squeue.records((OWN / "squeue-nomade.txt").read_text()), "job_id")
    default = by(squeue.records((OWN / "squeue.txt").read_text()), "job_id")
    long = by(squeue.records((OWN / "squeue-l.txt").read_text()), "job_id")
    assert set(nomade) == set(default) == set(long)
    assert nomade["2495"]["reason"] == "JobHeldUser" and nomade["2500"]["reason"] == "JobHeldAdmin"
    assert nomade["2498"]["reason"] == "PartitionTimeLimit"
    assert nomade["2497"]["dependency"] == "afterok:2495(unfulfilled)"
    assert nomade["2496"]["reason"] == "BeginTime"
    for job in nomade:
        for key in ("state", "reason", "partition", "user"):
            assert default[job][key] == nomade[job][key] == long[job][key]


def test_squeue_text_and_json_give_the_same_keys_and_values():
    path = OWN / "squeue.json"
    # captured the same second; 22.05 --json also holds the finished jobs the text leaves out
    text = by(squeue.records((OWN / "squeue-nomade-with-json.txt").read_text()), "job_id")
    js = by(squeue.records_json(path.read_text()), "job_id")
    assert len(text) == 5 and len(js) == 56
    assert {r["state"] for r in js.values()} == {
        "PENDING",
        "COMPLETED",
        "OUT_OF_MEMORY",
        "CANCELLED",
        "FAILED",
        "TIMEOUT",
    }
    for job, rec in text.items():
        assert set(js[job]) == set(rec)
        diff = {k for k in rec if rec[k] != js[job][k]}
        assert diff <= {"elapsed_seconds"}, (job, diff)  # --json has no clock for running jobs


def test_squeue_json_data_parser_shape_hand_made():
    """HAND-MADE (no real squeue --json of 23.02+ was available): the documented shape."""
    n = lambda x: {"set": True, "infinite": False, "number": x}  # noqa: E731
    doc = {
        "jobs": [
            {
                "job_id": 7,
                "job_state": ["PENDING"],
                "state_reason": "QOSMaxCpuPerUserLimit",
                "state_description": "",
                "array_job_id": n(0),
                "array_task_id": {"set": False},
                "time_limit": {"set": False, "infinite": True, "number": 0},
                "cpus": n(4),
                "node_count": n(1),
                "priority": n(10),
                "submit_time": n(1700000000),
                "start_time": n(0),
                "end_time": n(0),
                "user_name": "u",
                "partition": "p",
                "memory_per_cpu": n(1000),
                "memory_per_node": {"set": False},
                "nodes": "",
            }
        ]
    }
    (rec,) = squeue.records_json(json.dumps(doc), "x")
    assert (rec["job_id"], rec["state"], rec["cpus"], rec["time_limit_seconds"]) == (
        "7",
        "PENDING",
        4,
        None,
    )
    assert rec["submit_time"] == 1700000000 and rec["start_time"] is None
    assert rec["min_memory_bytes"] == 1000 << 20
    assert "per user" in rec["reason_text"]


# --- sinfo -----------------------------------------------------------------------------------


def test_sinfo_json_21_08():
    recs = by(sinfo.records_json(read(*RIVOS, "sinfo_json_21.08.5.json")), "node")
    assert len(recs) == 4
    cs2 = recs["cs2.example.company.com"]
    assert (cs2["state"], cs2["cpus"], cs2["cpus_alloc"], cs2["partition"]) == (
        "mixed",
        64,
        4,
        "hw",
    )
    assert cs2["memory_bytes"] == 500000 << 20 and cs2["cpu_load"] == 0.01  # cpu_load 1
    assert recs["cs5.example.company.com"]["state"] == "down"


def test_sinfo_json_slurmrestd_nodes_drained():
    recs = by(sinfo.records_json(read(*TELEGRAF, "slurmrestd_v0.0.38_nodes.json")), "node")
    assert len(recs) == 3
    n145 = recs["naboo145"]  # state idle, state_flags [DRAIN]
    assert (n145["state"], n145["state_flags"], n145["reason"]) == (
        "drained",
        ["DRAIN"],
        "Kill task failed",
    )
    assert n145["reason_user"] == "root" and n145["cpu_load"] == 0.27
    assert recs["naboo147"]["state"] == "allocated"


def test_sinfo_own_22_05_text_and_json():
    default = sinfo.records((OWN / "sinfo.txt").read_text())
    assert {(r["node"], r["partition"]) for r in default} == {
        ("node1", "debug"),
        ("node2", "debug"),
        ("node1", "long"),
        ("node2", "long"),
    }
    nomade = {
        (r["node"], r["partition"]): r
        for r in sinfo.records((OWN / "sinfo-nomade.txt").read_text())
    }
    js = {
        (r["node"], r["partition"]): r for r in sinfo.records_json((OWN / "sinfo.json").read_text())
    }
    assert set(nomade) == set(js)
    for key, rec in nomade.items():
        assert set(rec) == set(js[key])
        assert (rec["cpus"], rec["memory_bytes"]) == (8, 8000 << 20)
        for field in ("state", "cpus", "memory_bytes", "memory_free_bytes", "cpu_load"):
            assert rec[field] == js[key][field], (key, field)
    assert nomade[("node1", "debug")]["partition_default"] is True
    assert nomade[("node1", "long")]["partition_time_limit_seconds"] is None  # infinite


# --- scontrol --------------------------------------------------------------------------------


def test_scontrol_nodes_habrok_and_peregrine():
    hb = by(scontrol.node_records(read(*HABROK, "scontrol_show_nodes_oneline.txt")), "node")
    assert len(hb) == 183
    a100 = hb["a100gpu1"]  # CfgTRES=cpu=64,mem=514404M,billing=64,gres/gpu=4,gres/gpu:a100=4
    assert (a100["cpus"], a100["memory_bytes"], a100["gpus"]) == (64, 514404 << 20, 4)
    assert sum(1 for r in hb.values() if r["gpus"]) == 40
    assert hb["v100gpu33"]["gpus"] == 1 and hb["node78"]["cpus"] == 128
    pg = by(scontrol.node_records(read(*PEREGRINE, "scontrol_show_nodes_oneline.txt")), "node")
    assert len(pg) == 313
    assert (pg["mycluster1-node11"]["cpus"], pg["mycluster1-node11"]["memory_bytes"]) == (
        28,
        128500 << 20,
    )
    assert pg["mycluster2-node275"]["cpus"] == 12


def test_scontrol_own_22_05_both_forms():
    multi = scontrol.node_records((OWN / "scontrol-show-node.txt").read_text())
    one = scontrol.node_records((OWN / "scontrol-show-node-o.txt").read_text())
    assert multi == one and [r["node"] for r in multi] == ["node1", "node2"]
    assert multi[0]["partitions"] == ["debug", "long"] and multi[0]["cpus"] == 8
    assert multi[0]["memory_bytes"] == 8000 << 20 and multi[0]["version"] == "22.05.8"
    path = OWN / "scontrol-show-job.txt"
    if path.exists():
        assert scontrol.job_records(path.read_text()) == scontrol.job_records(
            (OWN / "scontrol-show-job-o.txt").read_text()
        )
    (pending,) = scontrol.job_records((OWN / "scontrol-show-job-o-pending.txt").read_text())
    assert (pending["job_id"], pending["state"], pending["reason"]) == (
        "18",
        "PENDING",
        "BeginTime",
    )
    assert (pending["user"], pending["uid"]) == ("alice", 2001)


def test_scontrol_multiline_reason_and_description():
    text = (
        "NodeName=n1 Arch=x86_64 CoresPerSocket=4 \n"
        "   CPUAlloc=0 CPUTot=8 CPULoad=0.01\n"
        "   State=IDLE+DRAIN ThreadsPerCore=1 TmpDisk=0 Weight=1\n"
        "   Reason=Kill task failed [root@2024-08-07T10:00:00]\n"
        "\n"
        "NodeName=n2 CPUTot=8 State=DOWN*+DRAIN Reason=Not responding [slurm@2024-08-07T11:00:00]\n"
    )
    n1, n2 = scontrol.node_records(text, "hand-made")
    assert (n1["state"], n1["reason"], n1["reason_user"]) == ("drained", "Kill task failed", "root")
    assert n2["state"] == "drained" and "NOT_RESPONDING" in n2["state_flags"]
    job = (
        "JobId=5 JobName=x UserId=u(1) JobState=PENDING"
        " Reason=Nodes_required_for_job_are_DOWN,_DRAINED_or_reserved_for_jobs_in_higher_"
        "priority_partitions Dependency=(null)"
    )
    (rec,) = scontrol.job_records(job, "hand-made")
    assert rec["reason"] == "Resources" and rec["reason_detail"].startswith("Nodes required")


# --- sstat, sshare, sdiag, sacct-json ------------------------------------------------------

HB_FIELDS = (
    "JobID,NTasks,MaxRSS,MaxVMSize,TRESUsageInMax,TRESUsageInTot,TRESUsageOutTot,"
    "MaxDiskRead,MaxDiskWrite,MaxRSSNode,MaxRSSTask,MaxVMSizeNode,MaxVMSizeTask,"
    "MaxDiskReadNode,MaxDiskReadTask,MaxDiskWriteNode,MaxDiskWriteTask"
).split(",")
PG_FIELDS = (
    "JobID,NTasks,MaxRSS,MaxDiskWrite,MaxDiskRead,MaxRSSNode,MaxDiskWriteNode,MaxDiskReadNode"
)


def test_sstat_habrok_headerless_with_the_readme_fields():
    recs = sstat.records(read(*HABROK, "sstat_parsable.txt"), "hb", fields=HB_FIELDS)
    assert len(recs) == 230
    row = [r for r in recs if (r["job_id"], r["step"]) == ("8322516", "batch")][0]
    assert row["max_rss_bytes"] == 134928 * 1024 and row["max_vmsize_bytes"] == 249708 * 1024
    assert row["max_disk_read_bytes"] == 22925442 and row["max_disk_write_bytes"] == 139723602
    assert row["total_cpu_seconds"] == 10 * 3600 + 34 * 60 + 35  # cpu=10:34:35
    extern = [r for r in recs if r["step"] == "extern"][0]
    assert extern["max_disk_write_bytes"] == 1  # MaxDiskWrite prints '1.00M', TRES says 1


def test_sstat_peregrine_headerless():
    recs = sstat.records(read(*PEREGRINE, "sstat_parsable.txt"), "pg", fields=PG_FIELDS.split(","))
    assert len(recs) == 17
    step = [r for r in recs if (r["job_id"], r["step"]) == ("21085537", "1")][0]
    assert (step["ntasks"], step["max_rss_bytes"], step["max_rss_node"]) == (
        80,
        114660 * 1024,
        "mycluster2-node141",
    )
    assert step["max_disk_write_bytes"] == 7576070285 and step["max_disk_read_bytes"] == 578015227


def test_sstat_own_22_05_three_forms_agree():
    a = sstat.records((OWN / "sstat-parsable2-nomade.txt").read_text())
    b = sstat.records((OWN / "sstat-parsable-noheader-nomade.txt").read_text())
    assert a == b and [r["step"] for r in a] == ["extern", "batch", "0"]
    full = by(sstat.records((OWN / "sstat-parsable2.txt").read_text()), "step")
    assert full["0"]["ntasks"] == 2 and full["0"]["max_rss_node"] == "node1"


def test_sshare_own_22_05():
    recs = sshare.records((OWN / "sshare-a-l-P.txt").read_text())
    assert len(recs) == 14
    users = [(r["account"], r["user"]) for r in recs if r["user"]]
    assert ("physics", "alice") in users and ("research", "alice") in users
    assert recs[0]["account"] == "root" and recs[0]["depth"] == 0
    assert [r for r in recs if r["user"] == "carol"][0]["depth"] == 2


def test_sdiag_json_and_text():
    cases = [
        ((*RIVOS, "sdiag_json_23.02.4.json"), 3, 5824, 3, 2),
        ((*RIVOS, "sdiag_json_24.05.json"), 2, 1, 11, 1),
        ((*TELEGRAF, "slurmrestd_v0.0.38_diag.json"), 3, 287, 16, 7),
    ]
    for parts, threads, submitted, types, users in cases:
        recs = sdiag.records(read(*parts), parts[-1])
        stats = recs[0]
        assert (stats["server_thread_count"], stats["jobs_submitted"]) == (threads, submitted)
        assert sum(r["record"] == "rpc_type" for r in recs) == types
        assert sum(r["record"] == "rpc_user" for r in recs) == users
    v24 = sdiag.records(read(*RIVOS, "sdiag_json_24.05.json"))[0]
    assert v24["sample_time"] == 1739832148 and v24["schedule_cycle_max_seconds"] == 0.001666
    own = sdiag.records((OWN / "sdiag.txt").read_text())
    assert own[0]["server_thread_count"] == 3 and own[0]["bf_active"] is False
    assert {r["user"] for r in own if r["record"] == "rpc_user"} >= {"root", "slurm", "alice"}


def test_sdiag_json_is_unsupported_on_22_05_and_refused():
    with pytest.raises(ParseError):
        sdiag.records((OWN / "sdiag-json-unsupported.txt").read_text(), "x")


def test_sacct_json_22_05_matches_the_text_capture():
    text = by(sacct.records((OWN / "sacct-parsable2.txt").read_text()), "job_id")
    js = by(sacct.records_json((OWN / "sacct.json").read_text()), "job_id")
    assert set(js) == set(text)
    assert js["16.0"]["max_rss_bytes"] == 208624 * 1024  # MaxRSS 208624K
    assert abs(js["16"]["total_cpu_seconds"] - 148.377) < 0.001  # TotalCPU 02:28.377
    assert js["17"]["exit_code"] is None  # 22.05 JSON says SUCCESS 0 for FAILED 3:0
    assert js["19"]["state"] == "OUT_OF_MEMORY" and js["19"]["signal"] == 125
    assert js["13"]["time_limit_seconds"] == 60


# --- errors and the CLI ----------------------------------------------------------------------

BAD = [
    ("squeue", "JOBID|STATE\n1|RUNNING\n2|PENDING|x\n", 3),
    ("sinfo", "NODELIST|STATE\nnode1|idle|x\n", 2),
    ("scontrol-node", "NodeName=n1 CPUTot=8\ngarbage line\n", 2),
    ("sstat", "JobID|NTasks\n1.0|1|2\n", 2),
    ("sshare", "Account|User\nroot\n", 2),
    ("sdiag", "Server thread count:  3\nJobs submitted: many\n", 2),
    ("squeue-json", '{"jobs": [\n{"job_id": 1,}\n]}', 2),
    ("sacct-json", "{\n  nope", 2),
]


@pytest.mark.parametrize("kind,text,line", BAD, ids=[b[0] for b in BAD])
def test_malformed_input_names_source_and_line(kind, text, line):
    with pytest.raises(ParseError) as err:
        registry.parser(kind)(text, "bad.txt")
    assert (err.value.source, err.value.line) == ("bad.txt", line)
    assert str(err.value).startswith(f"bad.txt:{line}: ")


def test_nomadectl_parse_squeue(tmp_path: Path):
    from nomadectl import main

    result = CliRunner().invoke(main, ["parse", "squeue", str(OWN / "squeue-nomade.txt")])
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in result.output.splitlines()]
    assert {r["job_id"] for r in lines} >= {"2495", "2496", "2497", "2498", "2500"}
    bad = tmp_path / "bad.txt"
    bad.write_text("JOBID|STATE\n1|RUNNING|extra\n")
    result = CliRunner().invoke(main, ["parse", "squeue", str(bad)])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0
    assert f"{bad}:2:" in result.output
