"""Slurm's parsers answer hostile or corrupt output with records or one ParseError, in time.

Slurm output carries user-controlled text (job names, comments, reasons), and a capture can be
cut or corrupted.  Each input below once let out another exception (TypeError, OverflowError,
int()'s 4300-digit ValueError, ...) or took seconds in a backtracking regex; they are called here
on the parser functions themselves, not through the registry's guard, so a leak shows.  The guard
(registry.parser) is tested last: it turns what a parser still lets out into a ParseError.
"""

from __future__ import annotations

import json
import random
import re

import pytest
from clusterlib import within

from collectors import registry
from collectors.slurm import sacct, scontrol, sdiag, sinfo, squeue, sstat
from collectors.slurm import slurmvalues as sv
from nomade_common.errors import ParseError

N = "9" * 400  # past float's range
D = "1" * 5000  # past int()'s 4300 digits
RPC_BY_TYPE = "Remote Procedure Call statistics by message type\n"


HANG_SECONDS = 30.0  # a hang detector: what it bounds takes milliseconds when linear


def answer(fn, text: str, **kwargs) -> list[dict] | ParseError:
    """FN's records (printable as `nomadectl parse` prints them) or its ParseError."""
    try:
        with within(HANG_SECONDS):
            records = fn(text, "capture.txt", **kwargs)
    except ParseError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("capture.txt")
        return exc
    json.dumps(records, sort_keys=True, default=str)
    return records


CORRUPT = [
    (sacct.records_json, '{"jobs": [null]}'),
    (sacct.records_json, '{"jobs": [{"time": 5}]}'),
    (sacct.records_json, '{"jobs": [{"steps": 5}]}'),
    (sacct.records_json, '{"jobs": [{"steps": [{"time": 5}]}]}'),
    (sacct.records_json, '{"jobs": [{"steps": [{"tres": 1}]}]}'),
    (sacct.records_json, '{"jobs": [{"steps": [{"step": 1, "tres": {"requested": 1}}]}]}'),
    (
        sacct.records_json,
        '{"jobs": [{"time": {"total": {"seconds": 0, "microseconds": ' + N + "}}}]}",
    ),
    (sacct.records_json, '{"jobs": [{"time": {"start": ' + N + "}}]}"),
    (sacct.records, "JobID|Elapsed\n1|" + N + "-00:00:00\n"),
    (sdiag.records, '{"statistics": {"rpcs_by_message_type": [1]}}'),
    (sdiag.records, '{"statistics": {"rpcs_by_user": 5}}'),
    (sdiag.records, '{"statistics": {"schedule_cycle_last": ' + N + "}}"),
    (sdiag.records, "Data since (" + D + ")\n"),
    (sdiag.records, RPC_BY_TYPE + "E (9) count:4 ave_time:3 total_time:" + D + "\n"),
    (sinfo.records_json, '{"nodes": [{"name": "n1", "partitions": 5}]}'),
    (sinfo.records_json, '{"nodes": [{"name": "n1", "state_flags": 1}]}'),
    (sinfo.records_json, '{"nodes": [{"name": "n1", "real_memory": NaN}]}'),
    (sinfo.records_json, '{"nodes": [{"name": "n1", "free_memory": 1e308}]}'),
    (sinfo.records_json, '{"nodes": [{"name": "n1", "free_memory": 1e400}]}'),
    (sinfo.records_json, '{"nodes": [{"name": "n1", "gres": 5}]}'),
    (sinfo.records_json, '{"nodes": [{"name": "n1", "gres": "gpu:' + D + '"}]}'),
    (sinfo.records, "PARTITION TIMELIMIT NODELIST\ndebug " + N + "-00:00:00 n1\n"),
    (squeue.records_json, '{"jobs": [{"job_id": 1, "state_description": true}]}'),
    (squeue.records_json, '{"jobs": [{"job_id": 1, "memory_per_cpu": 1e309}]}'),
    (squeue.records_json, '{"jobs": [{"job_id": 1, "memory_per_cpu": NaN}]}'),
    (squeue.records_json, '{"jobs": [{"job_id": 1, "tres_per_node": [3]}]}'),
    (squeue.records, "JOBID MIN_MEMORY TIME_LIMIT\n1 " + N + "M 1:00\n"),
    (squeue.records, "JOBID MIN_MEMORY TIME_LIMIT\n1 1M " + N + "-00:00:00\n"),
    (sstat.records, "JobID|MaxRSS\n1.0|" + N + "K\n"),
    (sstat.records, "JobID|AveCPU\n1.0|" + N + "-00:00:00\n"),
    (scontrol.node_records, "NodeName=n1 RealMemory=inf\n"),
    (scontrol.node_records, "NodeName=n1 RealMemory=" + N + "\n"),
    (scontrol.node_records, "NodeName=n1 CfgTRES=mem=" + N + "\n"),
    (scontrol.job_records, "JobId=1 TRES=mem=" + N + "M\n"),
    (scontrol.job_records, "JobId=1 TimeLimit=" + N + "-00:00:00 RunTime=" + D + "\n"),
]


@pytest.mark.parametrize(("fn", "text"), CORRUPT, ids=lambda v: getattr(v, "__qualname__", None))
def test_corrupt_slurm_output_gets_records_or_a_parse_error(fn, text):
    answer(fn, text)


def test_what_slurm_cannot_print_is_absent_or_refused_not_a_crash():
    (job,) = sacct.records_json('{"jobs": [{"job_id": 7, "time": {"start": ' + N + "}}]}")
    assert job["job_id"] == "7" and job["start_time"] is None
    (node,) = sinfo.records_json('{"nodes": [{"name": "n1", "free_memory": 1e400}]}')
    assert node["memory_free_bytes"] is None
    (node,) = scontrol.node_records("NodeName=n1 RealMemory=inf\n")
    assert node["memory_bytes"] is None
    with pytest.raises(ValueError, match="expected a memory size"):
        sv.memory(N + "K")
    with pytest.raises(ValueError, match="expected a duration"):
        sv.duration(N + "-00:00:00")
    assert sv.number(10**400) is None and sv.number(float("nan")) is None
    assert sv.number(2**63) == 2**63 and sv.epoch(1795514175) == 1795514175.0
    assert not sv.absent(5) and not sv.absent(["x"]) and sv.absent(None) and sv.absent(" N/A ")
    assert sv.gpus_from_gres(5) is None and sv.gpus_from_gres("gres/gpu:a100:4") == 4


def test_a_node_list_is_read_in_linear_time_as_before():
    assert sv.hostlist("node[1-3,7],gpu01") == ["node1", "node2", "node3", "node7", "gpu01"]
    assert sv.hostlist("c[008-010]") == ["c008", "c009", "c010"]
    assert sv.hostlist_size("n[1-99999999],gpu[01-04,09]") == 99_999_999 + 5
    with pytest.raises(ValueError, match="runs backwards"):
        sv.hostlist("n[9-1]")
    with pytest.raises(ValueError, match="more than 1000"):
        sv.hostlist("n[0-99999999]", 1000)
    # Ten times the inputs that took the regex 4.5 s, 6 s and minutes: hours for it, an instant
    # for a linear scan (the bound detects a hang; it does not time anything).
    with within(HANG_SECONDS):
        assert len(sv.hostlist("a" + "[a" * 200_000)) == 200_001
        assert sv.hostlist_size("a]" * 200_000 + "[x") == 200_001
        assert sv.hostlist_size("n" + "[n" * 2_000_000) == 2_000_001


def test_a_node_list_splits_where_the_regex_it_replaces_did():
    """Stray brackets and commas included: garbage in, the same garbage out."""
    regex = re.compile(r"([^,\[]+)\[([^\]]+)\]|([^,\[\]]+)")
    rng = random.Random(1)
    for _ in range(20000):
        text = "".join(rng.choice("n1,[]-") for _ in range(rng.randrange(14)))
        assert sv._hostlist_parts(text) == regex.findall(text), text


def test_sinfo_refuses_a_node_list_no_cluster_has():
    with pytest.raises(ParseError, match=r"names 1000000 nodes, more than sinfo.NODES_MAX"):
        sinfo.records("NODELIST PARTITION\nn[1-1000000] debug\n", "capture.txt")
    assert len(sinfo.records("NODELIST PARTITION\nn[1-2000] debug\n")) == 2000


def test_squeue_lines_split_in_linear_time_as_the_format_says():
    assert [r["dependency"] for r in squeue.records("1|afterok:2;n1\n", format="%i|%E;%R")] == [
        "afterok:2"
    ]
    with within(HANG_SECONDS):  # ten times what took the lazy regex 6.6 s and 3.2 s
        assert isinstance(
            answer(squeue.records, "1|" + "|" * 400_000, format="%i|%E;%R"), ParseError
        )
        line = "2495|2495|2495|N/A|PENDING|JobHeldUser|debug|root|root|normal|1|1|50M|10:00|"
        text = "|".join("1" * 23) + "\n" + line + "-1 " * 80_000 + "0:00|N/A|N/A|(null)|N/A|0\n"
        assert isinstance(answer(squeue.records, text), ParseError)
        header = "x " * 600_000 + "JOBID\n"  # another tool's output: a header of 600,000 columns
        assert isinstance(answer(squeue.records, header + "y\n" * 2000), ParseError)
    assert isinstance(answer(squeue.records, "1|x\n", format="no fields"), ParseError)


def test_squeue_splits_where_the_regex_it_replaces_did():
    rng = random.Random(2)
    for fmt in ("%i|%E;%R", "%i", "|%i|%j|", "%i%j", "%i||%j", "%.5i %j"):
        letters, literals = squeue._split_format(fmt)
        regex = "^" + re.escape(literals[0])
        for i, literal in enumerate(literals[1:]):
            regex += ("(.*)" if i == len(letters) - 1 else "(.*?)") + re.escape(literal)
        for _ in range(5000):
            line = "".join(rng.choice("1|; x") for _ in range(rng.randrange(12)))
            m = re.match(regex + "$", line)
            assert squeue._split_line(line, literals) == (list(m.groups()) if m else None)


def test_reasons_and_states_are_read_in_linear_time():
    (node,) = scontrol.node_records("NodeName=n1 Reason=Not responding [slurm@2026-11-24T08:25:42]")
    assert (node["reason"], node["reason_user"]) == ("Not responding", "slurm")
    with within(HANG_SECONDS):  # 1.4 s and 2.3 s at 20,000 with the quadratic regex
        for reason in ("[" * 500_000, "[@" * 500_000, "x" + " " * 500_000 + "x"):
            (node,) = scontrol.node_records(f"NodeName=n1 Reason={reason}\n")
            assert node["reason_user"] is None
        assert sv.node_state("idle" + "*" * 200_000) == ("idle", ["NOT_RESPONDING"])
        assert squeue.explain("(" * 200_000 + "Priority" + ")" * 200_000)["reason"] == "Priority"


# -- the guard at the registry's door -----------------------------------------------------------
def test_the_guard_turns_a_parser_bug_into_one_parse_error_line(monkeypatch):
    def records(text: str, source: str = "sdiag") -> list[dict]:
        """A parser with a bug not yet found."""
        return [{"n": int(text) / 0}]

    monkeypatch.setattr(sdiag, "records", records)
    fn = registry.parser("sdiag")
    assert fn.__name__ == "records" and fn.__doc__ == records.__doc__
    with pytest.raises(ParseError) as err:
        fn("1", "sdiag.txt")
    assert str(err.value) == (
        "sdiag.txt: not sdiag output as NØMADE reads it (ZeroDivisionError: division by zero)"
    )
    with pytest.raises(ParseError, match=r"^sdiag: .*ValueError: invalid literal"):
        fn("x")  # the parser's default source
    with pytest.raises(TypeError):
        fn("1", "sdiag.txt", format="%i")  # a wrong call is the caller's, not the input's


def test_the_guard_passes_records_parse_errors_and_directory_paths_through(tmp_path):
    assert registry.parser("sdiag").__wrapped__ is sdiag.records
    with pytest.raises(ParseError, match="no 'Server thread count'"):
        registry.parser("sdiag")("nothing\n", "x.txt")
    for kind in sorted(registry.DIRECTORY_KINDS):
        assert registry.parser(kind)(str(tmp_path)) == []
