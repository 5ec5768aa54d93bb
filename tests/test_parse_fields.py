"""`nomadectl parse` prints every field each parser reads (issue 16).

For the parsers that read a list of fields (sacct's RECONCILE_FIELDS, the squeue and sinfo
formats, scontrol's KEY=VALUE pairs, sstat's FIELDS, sshare's columns, sdiag's counters,
nvidia-smi's query fields, the columns of iostat, mpstat, vmstat and nfsiostat, the mountstats
per-op counters): every field the parser reads must map to a key of its records, and that key
must hold a value in at least one real captured input where the field has one.  The fields a
parser reads are caught as it reads them (the rows it gets are dicts that note each key asked
for), so a parser that starts reading a new field without printing it fails here.

Inputs are the real captures of tests/cases (hand-made ones left out) and a few more in
tests/fixtures; those in ../shared/fixtures are used where that folder is present.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
from conftest import FIXTURES, ROOT, SHARED

from collectors import gpu, nfs, registry, sysstat
from collectors.slurm import sacct, scontrol, sdiag, sinfo, squeue, sshare, sstat
from collectors.slurm import slurmvalues as sv

CASES = ROOT / "tests" / "cases"
SLURM = FIXTURES / "slurm"


def _real_case(case: Path) -> bool:
    readme = case / "README"
    hand = "handmade" in case.name or (readme.is_file() and "HAND-MADE" in readme.read_text())
    return (case / "kind").is_file() and not hand


def captures(kind: str, extra: Iterable[Path] = ()) -> list[tuple[Path, dict]]:
    """The real captured inputs of KIND with the parser's keyword arguments for each: its case
    folders' (args.json) and EXTRA; shared ones where the shared fixtures are present."""
    out = []
    for case in sorted(p for p in CASES.iterdir() if _real_case(p)):
        if (case / "kind").read_text().strip() != kind:
            continue
        ref = (case / "source").read_text().strip() if (case / "source").is_file() else ""
        args = case / "args.json"
        kwargs = json.loads(args.read_text()) if args.is_file() else {}
        if ref.startswith("shared:"):
            if SHARED.is_dir():
                out.append((SHARED.joinpath(*ref.removeprefix("shared:").split("/")), kwargs))
        else:
            out.append((ROOT / ref if ref else case / "input", kwargs))
    return out + [(path, {}) for path in extra]


class Reads(dict):
    """A row that notes in LOG each key a parser asks it for."""

    def __init__(self, row: dict, log: set[str]) -> None:
        super().__init__(row)
        self.log = log

    def get(self, key, default=None):
        self.log.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.log.add(key)
        return super().__getitem__(key)

    def __contains__(self, key) -> bool:
        self.log.add(key)
        return super().__contains__(key)


# How the row producers a parser calls give their rows: each row is made a Reads.
def _rows(value, note):
    return [note(r) for r in value]


def _numbered(value, note):
    return [(n, note(r)) for n, r in value]


def _doc_list(value, note):
    doc, items = value
    return doc, [note(i) if isinstance(i, dict) else i for i in items]


def _one(value, note):
    return note(value)


SHAPES = {"rows": _rows, "numbered": _numbered, "doc_list": _doc_list, "one": _one}


@dataclass(frozen=True)
class Spec:
    """A parser that reads named fields: KEYS maps each field it may read to the record keys
    that carry it; LISTED is NØMADE's own field list for the command, all of which must be in
    KEYS; PATCH names the row producers it calls (module, attribute, shape); ABSENT the fields
    no capture (shared ones included) has a value for; INTERNAL keys a row holds that are the
    parser's bookkeeping."""

    kind: str
    keys: dict[str, tuple[str, ...]]
    patch: tuple[tuple[ModuleType, str, str], ...]
    listed: tuple[str, ...] = ()
    extra: tuple[Path, ...] = ()
    absent: frozenset[str] = frozenset()
    internal: frozenset[str] = frozenset()
    # A field read for part of its value only: when that part is in a raw value.
    part: tuple[tuple[str, str], ...] = ()


def _present(value) -> bool:
    """A raw value that should give a record a value ('0' and 'UNLIMITED' may give None)."""
    if isinstance(value, str):
        words = ("0", "00:00:00", "unlimited", "infinite", "none")
        return not sv.absent(value) and value.strip().lower() not in words
    return value is not None and value != 0 and value != {} and value != []


def _valued(value) -> bool:
    return value is not None and value != [] and value != {}


SACCT_KEYS: dict[str, tuple[str, ...]] = {
    "JobIDRaw": ("job_id",),
    "JobID": ("job_id", "array_job_id", "array_task_id", "het_job_id", "het_job_offset"),
    "JobName": ("job_name",),
    "User": ("user",),
    "UID": ("user_id",),
    "Account": ("account",),
    "Partition": ("partition",),
    "Submit": ("submit_time",),
    "Start": ("start_time",),
    "End": ("end_time",),
    "Elapsed": ("elapsed_seconds",),
    "State": ("state",),
    "ExitCode": ("exit_code", "signal"),
    "DerivedExitCode": ("derived_exit_code", "derived_signal"),
    "TotalCPU": ("total_cpu_seconds",),
    "MaxRSS": ("max_rss_bytes",),
    "ReqMem": ("mem_per_node_bytes", "mem_per_cpu_bytes"),
    "AllocCPUS": ("cpus",),
    "NCPUS": ("cpus",),
    "ReqCPUS": ("cpus",),
    "NNodes": ("nodes_requested",),
    "NodeList": ("node_list",),
    "Timelimit": ("time_limit_seconds",),
    "ReqTRES": ("req_tres", "gpus", "mem_per_node_bytes", "cpus"),
    "AllocTRES": ("gpus", "mem_per_node_bytes"),
    "WorkDir": ("work_dir",),
}
SQUEUE_KEYS: dict[str, tuple[str, ...]] = {
    "job_id": ("job_id", "array_job_id", "array_task"),
    "job_id_raw": ("job_id_raw",),
    "array_job_id": ("array_job_id",),
    "array_task": ("array_task",),
    "state": ("state",),
    "reason": ("reason", "reason_detail"),
    "nodelist_reason": ("nodelist", "reason", "reason_detail"),
    "partition": ("partition",),
    "user": ("user",),
    "account": ("account",),
    "qos": ("qos",),
    "cpus": ("cpus",),
    "node_count": ("node_count",),
    "min_memory": ("min_memory_bytes",),
    "time_limit": ("time_limit_seconds",),
    "elapsed": ("elapsed_seconds",),
    "submit_time": ("submit_time",),
    "start_time": ("start_time",),
    "end_time": ("end_time",),
    "dependency": ("dependency",),
    "tres_per_node": ("tres_per_node", "gpus"),
    "priority": ("priority",),
    "nodelist": ("nodelist",),
    "name": ("name",),
}
SQUEUE_JSON_KEYS: dict[str, tuple[str, ...]] = {
    "job_id": ("job_id", "job_id_raw"),
    "array_job_id": ("array_job_id",),
    "array_task_id": ("array_task",),
    "array_task_string": ("array_task",),
    "job_state": ("state",),
    "state_reason": ("reason",),
    "state_description": ("reason_detail", "reason"),
    "name": ("name",),
    "user_name": ("user",),
    "account": ("account",),
    "partition": ("partition",),
    "qos": ("qos",),
    "dependency": ("dependency",),
    "cpus": ("cpus",),
    "node_count": ("node_count",),
    "nodes": ("nodelist",),
    "tres_per_node": ("tres_per_node", "gpus"),
    "memory_per_node": ("min_memory_bytes",),
    "memory_per_cpu": ("min_memory_bytes",),
    "priority": ("priority",),
    "time_limit": ("time_limit_seconds",),
    "submit_time": ("submit_time",),
    "start_time": ("start_time", "elapsed_seconds"),
    "end_time": ("end_time", "elapsed_seconds"),
}
SINFO_KEYS: dict[str, tuple[str, ...]] = {
    "nodelist": ("node",),
    "partition": ("partition", "partition_default"),
    "avail": ("partition_available",),
    "timelimit": ("partition_time_limit_seconds",),
    "state": ("state", "state_flags"),
    "cpus": ("cpus",),
    "cpus_aiot": ("cpus_alloc", "cpus_idle", "cpus_other", "cpus"),
    "memory": ("memory_bytes",),
    "free_mem": ("memory_free_bytes",),
    "cpu_load": ("cpu_load",),
    "gres": ("gres", "gpus"),
    "features": ("features",),
    "reason": ("reason",),
    "user": ("reason_user",),
    "timestamp": ("reason_time",),
}
SINFO_JSON_KEYS: dict[str, tuple[str, ...]] = {
    "name": ("node",),
    "partitions": ("partition",),
    "state": ("state", "state_flags"),
    "state_flags": ("state_flags",),
    "cpus": ("cpus",),
    "alloc_cpus": ("cpus_alloc",),
    "idle_cpus": ("cpus_idle",),
    "cpu_load": ("cpu_load",),
    "real_memory": ("memory_bytes",),
    "alloc_memory": ("memory_alloc_bytes",),
    "free_memory": ("memory_free_bytes",),
    "gres": ("gres", "gpus"),
    "features": ("features",),
    "reason": ("reason",),
    "reason_set_by_user": ("reason_user",),
    "reason_changed_at": ("reason_time",),
}
SCONTROL_NODE_KEYS: dict[str, tuple[str, ...]] = {
    "NodeName": ("node",),
    "State": ("state", "state_flags"),
    "Partitions": ("partitions",),
    "CPUTot": ("cpus",),
    "CfgTRES": ("cpus", "memory_bytes", "gpus"),
    "CPUAlloc": ("cpus_alloc",),
    "CPUEfctv": ("cpus_effective",),
    "CPULoad": ("cpu_load",),
    "Sockets": ("sockets",),
    "CoresPerSocket": ("cores_per_socket",),
    "ThreadsPerCore": ("threads_per_core",),
    "RealMemory": ("memory_bytes",),
    "AllocMem": ("memory_alloc_bytes",),
    "FreeMem": ("memory_free_bytes",),
    "TmpDisk": ("tmp_disk_bytes",),
    "Gres": ("gres", "gpus"),
    "AllocTRES": ("gpus_alloc",),
    "AvailableFeatures": ("features",),
    "ActiveFeatures": ("active_features",),
    "Reason": ("reason", "reason_user", "reason_time"),
    "BootTime": ("boot_time",),
    "SlurmdStartTime": ("slurmd_start_time",),
    "LastBusyTime": ("last_busy_time",),
    "Version": ("version",),
    "Arch": ("arch",),
    "OS": ("os",),
    "Weight": ("weight",),
}
SCONTROL_JOB_KEYS: dict[str, tuple[str, ...]] = {
    "JobId": ("job_id", "job_id_raw"),
    "ArrayJobId": ("array_job_id",),
    "ArrayTaskId": ("array_task",),
    "HetJobId": ("het_job_id",),
    "HetJobOffset": ("het_job_offset",),
    "JobName": ("name",),
    "UserId": ("user", "uid"),
    "Account": ("account",),
    "Partition": ("partition",),
    "QOS": ("qos",),
    "JobState": ("state",),
    "Reason": ("reason", "reason_detail"),
    "Dependency": ("dependency",),
    "NumCPUs": ("cpus",),
    "NumNodes": ("node_count",),
    "NodeList": ("nodelist",),
    "TresPerNode": ("tres_per_node", "gres", "gpus"),
    "Gres": ("gres", "gpus"),
    "ReqTRES": ("gpus", "alloc_memory_bytes"),
    "TRES": ("gpus", "alloc_memory_bytes"),
    "AllocTRES": ("alloc_memory_bytes",),
    "MinMemoryNode": ("min_memory_bytes", "mem_per_node_bytes"),
    "MinMemoryCPU": ("min_memory_bytes", "mem_per_cpu_bytes"),
    "Priority": ("priority",),
    "TimeLimit": ("time_limit_seconds",),
    "RunTime": ("elapsed_seconds",),
    "SubmitTime": ("submit_time",),
    "StartTime": ("start_time",),
    "EndTime": ("end_time",),
    "EligibleTime": ("eligible_time",),
    "ExitCode": ("exit_code", "signal"),
    "NumTasks": ("tasks",),
    "Restarts": ("restarts",),
    "BatchHost": ("batch_host",),
    "WorkDir": ("work_dir",),
    "StdOut": ("stdout",),
    "StdErr": ("stderr",),
}
SSTAT_KEYS: dict[str, tuple[str, ...]] = {
    "JobID": ("job_id", "step"),
    "NTasks": ("ntasks",),
    "AveCPU": ("ave_cpu_seconds",),
    "MinCPU": ("min_cpu_seconds",),
    "AveRSS": ("ave_rss_bytes",),
    "MaxRSS": ("max_rss_bytes",),
    "MaxRSSNode": ("max_rss_node",),
    "MaxRSSTask": ("max_rss_task",),
    "AveVMSize": ("ave_vmsize_bytes",),
    "MaxVMSize": ("max_vmsize_bytes",),
    "MaxPages": ("max_pages",),
    "AveDiskRead": ("ave_disk_read_bytes",),
    "MaxDiskRead": ("max_disk_read_bytes",),
    "AveDiskWrite": ("ave_disk_write_bytes",),
    "MaxDiskWrite": ("max_disk_write_bytes",),
    "AveCPUFreq": ("ave_cpu_freq_hz",),
    "TRESUsageInAve": ("ave_disk_read_bytes",),
    "TRESUsageInMax": ("max_disk_read_bytes",),
    "TRESUsageInTot": ("total_cpu_seconds", "total_disk_read_bytes"),
    "TRESUsageOutAve": ("ave_disk_write_bytes",),
    "TRESUsageOutMax": ("max_disk_write_bytes",),
    "TRESUsageOutTot": ("total_disk_write_bytes",),
}

_SLURM_JSON = (
    *sorted(SLURM.glob("2*/sacct*.json")),
    *sorted(SLURM.glob("2*/slurmrestd-slurmdb*.json")),
)

SPECS = (
    Spec(
        "sacct",
        SACCT_KEYS,
        ((sacct, "parse", "rows"),),
        listed=tuple(sacct.RECONCILE_FIELDS),
        # The dev cluster's captures hold no GPU (its GPUs are in the JSON captures), no array
        # and no UID, NCPUS or ReqCPUS column.
        absent=frozenset({"UID", "NCPUS", "ReqCPUS"}),
        internal=frozenset({"step"}),
    ),
    Spec(
        "sacct-json",
        SACCT_KEYS,
        ((sacct, "_json_job", "one"), (sacct, "_json_step", "one")),
        listed=tuple(sacct.RECONCILE_FIELDS),
        extra=_SLURM_JSON,
        absent=frozenset({"UID", "NCPUS"}),  # --json has neither
        internal=frozenset({"step"}),
    ),
    Spec(
        "squeue",
        SQUEUE_KEYS,
        ((squeue, "_rows", "numbered"),),
        listed=tuple(squeue._LETTERS[c] for c in squeue._split_format(squeue.COLLECTOR_FORMAT)[0]),
        absent=frozenset({"tres_per_node"}),  # no GPU in the queues captured
    ),
    Spec(
        "squeue-json",
        SQUEUE_JSON_KEYS,
        ((squeue, "load_json", "doc_list"),),
        # no GPU in the queues captured; state_description is empty in all
        absent=frozenset({"tres_per_node", "state_description"}),
    ),
    Spec(
        "sinfo",
        SINFO_KEYS,
        ((sinfo, "_table", "numbered"),),
        listed=tuple(sinfo._HEADERS.values()),
        # no GPU, no node feature and no drained node in the partitions captured
        absent=frozenset({"gres", "features", "reason", "user", "timestamp"}),
    ),
    Spec(
        "sinfo-json",
        SINFO_JSON_KEYS,
        ((sinfo, "load_json", "doc_list"),),
        absent=frozenset({"gres", "features"}),
    ),
    Spec(
        "scontrol-node",
        SCONTROL_NODE_KEYS,
        ((scontrol, "blocks", "numbered"),),
        part=(("AllocTRES", "gres/gpu"),),  # CPUAlloc and AllocMem carry the rest
        # no GPU, feature, down node or TmpDisk in the nodes captured
        absent=frozenset(
            {"ActiveFeatures", "AllocTRES", "AvailableFeatures", "Gres", "Reason", "TmpDisk"}
        ),
    ),
    Spec(
        "scontrol-job",
        SCONTROL_JOB_KEYS,
        ((scontrol, "blocks", "numbered"),),
        extra=(SLURM / "22.05" / "scontrol-show-job-o-array-running.txt",),
        # 22.05 prints TRES= (not ReqTRES/AllocTRES); no het job, GPU or restart was captured
        absent=frozenset(
            {"AllocTRES", "ReqTRES", "HetJobId", "HetJobOffset", "TresPerNode", "Gres", "Restarts"}
        ),
    ),
    Spec(
        "sstat",
        SSTAT_KEYS,
        ((sstat, "parse", "rows"),),
        listed=tuple(sstat.FIELDS),
        internal=frozenset({"step"}),
    ),
)


def _run(spec: Spec, monkeypatch) -> tuple[set[str], list[tuple[Path, list[dict], list[dict]]]]:
    """Parse every capture of SPEC: the keys its parser asked for, and per capture the rows
    it was given and the records it printed."""
    log: set[str] = set()
    rows: list[dict] = []

    def note(row: dict) -> Reads:
        rows.append(row)
        return Reads(row, log)

    for module, name, shape in spec.patch:
        fn = getattr(module, name)

        def wrapped(*args, _fn=fn, _shape=SHAPES[shape], **kwargs):
            return _shape(_fn(*args, **kwargs), note)

        monkeypatch.setattr(module, name, wrapped)
    parse = registry.parser(spec.kind)
    out = []
    for path, kwargs in captures(spec.kind, spec.extra):
        rows.clear()
        text = path.read_text(encoding="utf-8", errors="replace")
        records = parse(text, str(path), **kwargs)
        assert records, f"{spec.kind}: {path} gave no record"
        out.append((path, [dict(r) for r in rows], records))
    return log, out


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind)
def test_every_field_read_is_printed_with_its_value(spec: Spec, monkeypatch, utc) -> None:
    missing = set(spec.listed) - set(spec.keys)
    assert not missing, f"{spec.kind}: NØMADE asks for {sorted(missing)}: which keys carry them?"
    log, parsed = _run(spec, monkeypatch)
    unknown = log - set(spec.keys) - spec.internal
    assert not unknown, (
        f"{spec.kind} reads {sorted(unknown)}: carry them in its records and name the keys here"
    )
    seen, valued = set(), set()
    for path, rows, records in parsed:
        for field, targets in spec.keys.items():
            lacking = {k for r in records for k in targets if k not in r}
            assert not lacking, f"{spec.kind}: {path.name}: records without {sorted(lacking)}"
            part = dict(spec.part).get(field, "")
            if any(_present(r.get(field)) and part in str(r[field]) for r in rows):
                seen.add(field)
                if any(_valued(r[k]) for r in records for k in targets):
                    valued.add(field)
    lost = seen - valued
    assert not lost, f"{spec.kind}: {sorted(lost)} have values in the input, None in the records"
    never = set(spec.keys) - seen
    if SHARED.is_dir():  # every capture was read: the list of absent fields is exact
        assert never == set(spec.absent), f"{spec.kind}: no capture has a value for {sorted(never)}"
    else:
        assert never >= set(spec.absent)


# ---------------------------------------------------------------------------------------------
# Parsers that read columns through a table (column -> record key): every key a table names is
# a key of the records, on every capture of the kind.

H200 = FIXTURES / "gpu" / "h200-580.159.04"
_DEVICE = {field for field, _ in sysstat._IOSTAT_DEVICE.values()}
_OPS = {f"{op.lower()}_{field}" for op in nfs.OPS for field in nfs._OP_FIELDS}
_NFSIOSTAT = {f"{op}_{f}" for op in ("read", "write") for f, _ in nfs._NFSIOSTAT_COLUMNS.values()}
# kind, the `record` of the records the table fills (None: all), the keys it names, extra input
TABLES: tuple[tuple[str, str | None, set[str], tuple[Path, ...]], ...] = (
    ("iostat", "device", _DEVICE, ()),
    ("iostat", "cpu", set(sysstat._IOSTAT_CPU.values()), ()),
    ("iostat-json", "device", _DEVICE, ()),
    ("iostat-json", "cpu", set(sysstat._IOSTAT_CPU.values()), ()),
    ("mpstat", "cpu", set(sysstat._MPSTAT.values()), ()),
    ("mpstat-json", "cpu", set(sysstat._MPSTAT.values()), ()),
    ("vmstat", "vm", {field for field, _ in sysstat._VMSTAT.values()}, ()),
    ("nfsiostat", "nfsiostat", _NFSIOSTAT, ()),
    ("mountstats", "nfs_mount", _OPS, ()),
    ("sshare", None, set(sshare._COLUMNS.values()), ()),
    ("sdiag", "stats", set(sdiag._STATS.values()), ()),
    ("nvidia-smi-csv", "gpu", {f for f, _ in gpu._CSV_GPU.values()}, (H200 / "query-gpu.csv",)),
)


@pytest.mark.parametrize(
    "kind, record, targets, extra", TABLES, ids=[f"{t[0]}-{t[1]}" for t in TABLES]
)
def test_every_column_a_table_reads_is_a_record_key(kind, record, targets, extra) -> None:
    parse = registry.parser(kind)
    paths = captures(kind, extra)
    if not paths and not SHARED.is_dir():
        pytest.skip(f"{kind}: its captures are in the shared fixtures, not present at {SHARED}")
    assert paths, f"{kind}: no captured input"
    for path, kwargs in paths:
        records = parse(path.read_text(encoding="utf-8", errors="replace"), str(path), **kwargs)
        for rec in records:
            if record is None or rec.get("record") == record:
                lacking = targets - set(rec)
                assert not lacking, f"{kind}: {path.name}: a record without {sorted(lacking)}"


@pytest.mark.parametrize(
    "fields, name",
    [
        (gpu.QUERY_GPU_FIELDS, "query-gpu.csv"),
        (gpu.QUERY_COMPUTE_APPS_FIELDS, "query-compute-apps.csv"),
    ],
)
def test_nomade_query_fields_are_printed_with_their_values(fields, name) -> None:
    """NØMADE's own nvidia-smi query fields, read from the real H200 capture (nvidia-smi 580
    names clocks_throttle_reasons clocks_event_reasons, and used_memory used_gpu_memory)."""
    records = registry.parser("nvidia-smi-csv")((H200 / name).read_text(), name)
    assert records
    for field in fields:
        table = gpu._CSV_PROCESS if name.startswith("query-compute") else gpu._CSV_GPU
        assert field in table, f"NØMADE asks nvidia-smi for {field} but reads no key from it"
        key = table[field][0]
        assert any(r.get(key) is not None for r in records), f"{field} ({key}) printed as None"


def test_accounted_apps_without_time_still_print_their_usage() -> None:
    text = "pid, gpu_utilization [%], max_memory_usage [MiB]\n460, 97 %, 1860 MiB\n"
    (record,) = registry.parser("nvidia-smi-csv")(text, "accounted")
    assert record["util_gpu_percent"] == 97.0 and record["max_memory_bytes"] == 1860 << 20


# ---------------------------------------------------------------------------------------------
# The same values the aggregator stores

SACCT_TEXT = (SLURM / "22.05" / "sacct-parsable2.txt",)
SACCT_SHARED = ("troycomi_reportseff/sacct_P_caret_delim_extracted.txt",)


@pytest.mark.parametrize("kind", ["sacct", "sacct-json"])
def test_sacct_records_give_what_the_aggregator_stores(kind, utc) -> None:
    """Each finished job of a capture: the request and identity the importer stores for it
    (aggregator/jobs/importer.py `convert`) are the values `nomadectl parse` prints."""
    from aggregator.jobs import importer

    compared = 0
    for path, kwargs in captures(kind, SACCT_TEXT if kind == "sacct" else _SLURM_JSON):
        text = path.read_text(encoding="utf-8", errors="replace")
        records = registry.parser(kind)(text, str(path), **kwargs)
        jobs = {r["job_id"]: r for r in records if r["step"] is None}
        runs, _ = importer.runs(importer.read_history(text, str(path))[0])
        for job, steps in runs:
            stored = importer.convert(job, steps)
            if stored is None:
                continue
            record = jobs[job.get("JobIDRaw") or job["JobID"]]
            # The job's MaxRSS is the largest of its steps' in the store and its own line's
            # here; its state says who cancelled it there; --json's CPU time keeps the
            # microseconds that the importer's text form (TotalCPU) cuts to milliseconds.
            shared_keys = set(stored) & set(record) - {"max_rss_bytes", "state"}
            if kind == "sacct-json":
                shared_keys.discard("total_cpu_seconds")
            stored["job_id"] = str(stored["job_id"])
            assert {k: record[k] for k in shared_keys} == {k: stored[k] for k in shared_keys}
            compared += 1
    assert compared


# ---------------------------------------------------------------------------------------------
# Every key printed is documented

PARSER_DOCS = "".join(p.read_text() for p in sorted((ROOT / "docs").glob("parsers-*.md")))


@pytest.mark.parametrize("kind", sorted(registry.KINDS))
def test_every_record_key_is_documented(kind, utc) -> None:
    fn = registry.parser(kind)
    keys: set[str] = set()
    for path, kwargs in captures(kind):
        if kind in registry.DIRECTORY_KINDS:
            records = fn(str(path), **kwargs)
        else:
            records = fn(path.read_text(encoding="utf-8", errors="replace"), str(path), **kwargs)
        keys |= {key for record in records for key in record}
    if not keys and not SHARED.is_dir():
        pytest.skip(f"{kind}: its captures are in the shared fixtures, not present at {SHARED}")
    per_op = keys & _OPS if kind == "mountstats" else set()  # documented as `<op>_FIELD`
    for field in nfs._OP_FIELDS:
        assert f"`<op>_{field}`" in PARSER_DOCS or not per_op, f"<op>_{field} is not documented"
    undocumented = sorted(k for k in keys - per_op if f"`{k}`" not in PARSER_DOCS)
    assert not undocumented, f"{kind}: docs/parsers-*.md do not name {undocumented}"
