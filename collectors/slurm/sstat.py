"""Pure parser of `sstat --parsable/--parsable2` output (with or without a header line).

One record per job step, units in the names (docs/parsers-slurm.md).  Without a header the
fields must be given; they default to the list NØMADE asks for (FIELDS, `sstat --format=...`).
"""

from __future__ import annotations

from nomade_common.errors import ParseError

from . import slurmvalues as sv
from .sacct import parse

# What NØMADE asks for: sstat -a -j JOB --parsable2 --noheader --format=<these>
FIELDS = (
    "JobID,NTasks,AveCPU,MinCPU,AveRSS,MaxRSS,MaxRSSNode,MaxRSSTask,AveVMSize,MaxVMSize,"
    "MaxPages,AveDiskRead,MaxDiskRead,AveDiskWrite,MaxDiskWrite,AveCPUFreq,TRESUsageInMax,"
    "TRESUsageInTot,TRESUsageOutMax,TRESUsageOutTot"
).split(",")

RECORD_FIELDS = (
    "job_id",
    "step",
    "ntasks",
    "ave_cpu_seconds",
    "min_cpu_seconds",
    "total_cpu_seconds",
    "ave_rss_bytes",
    "max_rss_bytes",
    "max_rss_node",
    "max_rss_task",
    "ave_vmsize_bytes",
    "max_vmsize_bytes",
    "max_pages",
    "ave_disk_read_bytes",
    "max_disk_read_bytes",
    "ave_disk_write_bytes",
    "max_disk_write_bytes",
    "total_disk_read_bytes",
    "total_disk_write_bytes",
    "ave_cpu_freq_hz",
)


def _kib(value: str | None) -> int | None:
    return sv.memory(value, "K")[0]  # sstat prints memory in KiB, '0' without a unit


def _bytes(value: str | None) -> int | None:
    return sv.memory(value, "")[0]  # disk in bytes, '1.00M' when large


def _hz(value: str | None) -> float | None:
    """AveCPUFreq is in kHz, scaled by 1000 with a suffix: '2.60M' is 2.6 GHz."""
    s = (value or "").strip()
    if sv.absent(s) or s == "0":
        return None
    scale = {"K": 1e3, "M": 1e6, "G": 1e9}.get(s[-1].upper(), 1.0)
    number = s[:-1] if s[-1].isalpha() else s
    return float(number) * scale * 1000


def _disk(row: dict[str, str], column: str, tres_max: str, tres_tot: str) -> int | None:
    """MaxDisk* from the TRES columns where sstat has them: MaxDiskWrite prints a write of 1
    byte as '1.00M' (seen on 20.11, 22.05 and 23.02 clusters) while TRESUsageOut* says 1."""
    one_task = sv.integer(row.get("NTasks")) == 1
    for col in (tres_max, tres_tot) if one_task else (tres_max,):
        value = sv.tres(row.get(col)).get("fs/disk")
        if value is not None:
            return _bytes(value)
    return _bytes(row.get(column))


def _record(row: dict[str, str]) -> dict:
    tin, tout = sv.tres(row.get("TRESUsageInTot")), sv.tres(row.get("TRESUsageOutTot"))
    job = row.get("JobID") or ""
    return {
        "job_id": job.partition(".")[0],
        "step": row["step"] or None,
        "ntasks": sv.integer(row.get("NTasks")),
        "ave_cpu_seconds": sv.duration(row.get("AveCPU")),
        "min_cpu_seconds": sv.duration(row.get("MinCPU")),
        "total_cpu_seconds": sv.duration(tin.get("cpu")),
        "ave_rss_bytes": _kib(row.get("AveRSS")),
        "max_rss_bytes": _kib(row.get("MaxRSS")),
        "max_rss_node": sv.string(row.get("MaxRSSNode")),
        "max_rss_task": sv.integer(row.get("MaxRSSTask")),
        "ave_vmsize_bytes": _kib(row.get("AveVMSize")),
        "max_vmsize_bytes": _kib(row.get("MaxVMSize")),
        "max_pages": sv.integer(row.get("MaxPages")),
        "ave_disk_read_bytes": _disk(row, "AveDiskRead", "TRESUsageInAve", "TRESUsageInTot"),
        "max_disk_read_bytes": _disk(row, "MaxDiskRead", "TRESUsageInMax", "TRESUsageInTot"),
        "ave_disk_write_bytes": _disk(row, "AveDiskWrite", "TRESUsageOutAve", "TRESUsageOutTot"),
        "max_disk_write_bytes": _disk(row, "MaxDiskWrite", "TRESUsageOutMax", "TRESUsageOutTot"),
        "total_disk_read_bytes": _bytes(tin.get("fs/disk")),
        "total_disk_write_bytes": _bytes(tout.get("fs/disk")),
        "ave_cpu_freq_hz": _hz(row.get("AveCPUFreq")),
    }


def records(text: str, source: str = "sstat", fields: list[str] | None = None) -> list[dict]:
    """`sstat --parsable[2]`: FIELDS (the -o list) is used only when there is no header."""
    out = []
    rows = parse(text, source, fields=list(fields or FIELDS))
    numbers = [n for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    numbers = numbers[len(numbers) - len(rows) :]
    for number, row in zip(numbers, rows, strict=True):
        try:
            out.append(_record(row))
        except ValueError as exc:
            raise ParseError(source, number, str(exc)) from None
    return out
