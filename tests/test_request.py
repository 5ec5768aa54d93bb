"""The request parser of `nomadectl check` against what Slurm stores for the same script."""

from __future__ import annotations

import subprocess

import pytest

from aggregator.admin import request
from aggregator.jobs import fields as jobs
from collectors.slurm import scontrol

MiB = 1 << 20


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("30", 1800),
        ("5:30", 360),
        ("1:02:03", 3780),
        ("2-0", 172800),
        ("1-2", 93600),
        ("1-2:30", 95400),
        ("1-02:30:15", 95460),
    ],
)
def test_every_slurm_time_format(text, seconds):
    assert request.time_option(text) == seconds


def test_command_line_options_override_sbatch_lines_and_parsing_stops_at_the_first_command():
    script = "#!/bin/bash\n#SBATCH --mem=2G -c 2\n#SBATCH -t 10\necho hi\n#SBATCH --mem=9G\n"
    opts = request.options(script, ["-t", "1:00:00"])
    assert opts == {"--mem": "2G", "--cpus-per-task": "2", "--time": "1:00:00"}


SCRIPTS = {
    "mem": "#!/bin/bash\n#SBATCH --mem=300M\n#SBATCH -t 5\nsleep 1\n",
    "mem_per_cpu": (
        "#!/bin/bash\n#SBATCH --mem-per-cpu=200 -c 2 -n 2 -N 1\n#SBATCH --time=1-0\n"
        "#SBATCH -p long\nsleep 1\n"
    ),
    "defaults": "#!/bin/bash\nsleep 1\n",
    "nodes": (
        "#!/bin/bash\n#SBATCH -N 2 --ntasks-per-node=2 --mem=1G --time=0:45\n"
        "#SBATCH -p long\nsleep 1\n"
    ),
    "days_hours": "#!/bin/bash\n#SBATCH -t 0-00:30:00 -c3 --mem=1500\nsleep 1\n",
}


@pytest.mark.cluster
@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_the_parser_reads_a_script_as_slurm_does(slurm_cluster, tmp_path, name):
    path = tmp_path / "job.sh"
    path.write_text(SCRIPTS[name])
    out = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--hold",
            "--uid=alice",
            "--gid=alice",
            "-D",
            "/tmp",
            "-o",
            "/dev/null",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip().split(";")[0]
    try:
        shown = subprocess.run(
            ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30
        )
        slurm = jobs.request_from_scontrol(scontrol.parse(shown.stdout)[0])
    finally:
        subprocess.run(["scancel", job_id], timeout=30)
    ours = request.request(request.options(SCRIPTS[name]), request.cluster_defaults())
    keys = (
        "partition",
        "nodes_requested",
        "cpus",
        "mem_per_node_bytes",
        "mem_per_cpu_bytes",
        "gpus",
        "time_limit_seconds",
    )
    assert {k: ours[k] for k in keys} == {k: slurm[k] for k in keys}
