"""The circuit breaker holds when a job array starts many head-node hooks at the same moment."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
from pathlib import Path

from conftest import ROOT


def test_a_burst_against_a_hung_aggregator_opens_the_breaker_and_the_next_burst_skips_it(tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(256)  # accepts connections and never answers: a hung aggregator
    accepted: list[socket.socket] = []
    threading.Thread(
        target=lambda: [accepted.append(server.accept()[0]) for _ in iter(int, 1)], daemon=True
    ).start()
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    shutil.copy(ROOT / "hooks" / "controller_hook.sh", hooks)
    state = tmp_path / "state"
    (hooks / "hooks.json").write_text(
        json.dumps(
            {
                "timeout_seconds": 1.0,
                "aggregator_url": f"http://127.0.0.1:{server.getsockname()[1]}",
                "state_dir": str(state),
                "breaker_failures": 3,
                "breaker_seconds": 60,
            }
        )
    )

    def burst(n: int = 16) -> None:
        procs = [
            subprocess.Popen(
                [
                    "timeout",
                    "-s",
                    "KILL",
                    "1",
                    "bash",
                    str(hooks / "controller_hook.sh"),
                    "prologslurmctld",
                ],
                env={"SLURM_JOB_ID": str(i)},
            )
            for i in range(n)
        ]
        assert [p.wait() for p in procs] == [0] * n

    burst()  # all sixteen fail together: each must count, or the breaker never opens
    assert (state / "open_until").exists()
    reached = len(accepted)
    burst()
    assert len(accepted) == reached, "hooks reached the aggregator while the breaker was open"
    assert json.loads((state / "breaker.json").read_text())["skipped_total"] >= 1
    server.close()
    for c in accepted:
        c.close()
    assert Path(state / "hooks-prologslurmctld.log").read_text().count("TimeoutError") >= 3
