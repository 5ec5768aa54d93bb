"""PrologSlurmctld and EpilogSlurmctld through the reports directory (the spool transport): the
hooks, installed by `nomadectl install-hooks` and run as SlurmUser with the environment captured
on the dev cluster, leave one file per report; the real aggregator, started in this process on
loopback ports, stores them.  The hook never waits for the aggregator, and a report left while the
aggregator is down is stored when it comes back.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from pathlib import Path

import pytest
from clusterlib import free_port, wait_for
from test_hooks import Site, closed_port_url, fake_scontrol, slurm_env, world  # noqa: F401

from aggregator import daemon as server
from nomade_common import config, keys
from nomade_common.reportdir import INCOMPLETE_GRACE_SECONDS, ReportDir

pytestmark = pytest.mark.usefixtures("world")


def spool_site(root: Path) -> Site:
    """Hooks whose aggregator_url is on loopback: the default transport chooses the spool."""
    return Site(root, aggregator_url=closed_port_url(), controller_transport="auto")


def start_aggregator(root: Path, site: Site | None = None) -> server.Aggregator:
    """The real aggregator, with the site's state_dir (hence its reports directory)."""
    state = site.state if site else root / "state"
    scontrol = fake_scontrol(root, "exit 1")  # the job is gone: its request stays the env's
    if not (root / "keys" / "server.key").exists():
        keys.make_pair(str(root / "keys"), "server")
    cfg = config.parse(
        f'[general]\ncluster_name = "nomadedev"\ndata_dir = "{root}/data"\n'
        f'[aggregator]\nlisten = "tcp://127.0.0.1:{free_port()}"\n'
        f'http_listen = "127.0.0.1:{free_port()}"\nscontrol = "{scontrol}"\n'
        f'squeue = "{root}/no-squeue"\n'
        f'[hooks]\nstate_dir = "{state}"\n'
        f'[security]\nkeys_dir = "{root}/keys"\n'
    )
    (root / "data").mkdir(exist_ok=True)
    agg = server.Aggregator(cfg)
    agg.start()
    return agg


def wait_until(check, what: str):
    return wait_for(what, check, 20.0, every=0.05)


def stored_job(agg: server.Aggregator, job_id: int):
    conn = sqlite3.connect(agg.cfg.database)
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        kinds = [
            r[0]
            for r in conn.execute(
                "SELECT e.kind FROM events e JOIN jobs j ON j.uid = e.job_uid WHERE j.job_id = ?"
                " ORDER BY e.rowid",
                (job_id,),
            )
        ]
    except sqlite3.OperationalError:
        return None, []  # the store's tables are being created
    finally:
        conn.close()
    return row, kinds


def reports(site: Site) -> list[Path]:
    return sorted((site.state / "reports").glob("*.json"))


def test_the_hook_leaves_one_line_and_posts_nothing(world):  # noqa: F811
    site = spool_site(world)
    conf = json.loads((site.prefix / "hooks.json").read_text())
    assert conf["controller_spool"] == str(site.state / "reports")
    env = slurm_env("prologslurmctld")
    proc, _ = site.run("prologslurmctld", env, user="slurm")
    assert proc.returncode == 0
    (path,) = reports(site)
    text = path.read_text()
    assert text.endswith("\n") and text.count("\n") == 1
    body = json.loads(text)
    assert body["kind"] == "prologslurmctld"
    assert body["env"] == {k: v for k, v in env.items() if k.startswith("SLURM")}
    assert path.name.endswith(f"-{env['SLURM_JOB_ID']}-prologslurmctld.json")
    # The aggregator's port is closed, yet no failure is counted or logged: nothing was tried.
    assert site.log("prologslurmctld") == [] and site.breaker() == {}


def test_reports_left_while_the_aggregator_is_down_are_stored_when_it_starts(world):  # noqa: F811
    site = spool_site(world)
    start_env = slurm_env("prologslurmctld", SLURM_JOB_NAME='a "quoted"\tname')
    job_id = int(start_env["SLURM_JOB_ID"])
    end_env = slurm_env(
        "epilogslurmctld", SLURM_JOB_ID=str(job_id), SLURM_JOB_NAME=start_env["SLURM_JOB_NAME"]
    )
    for kind, env in (("prologslurmctld", start_env), ("epilogslurmctld", end_env)):
        proc, _ = site.run(kind, env, user="slurm")
        assert proc.returncode == 0
    assert len(reports(site)) == 2  # kept: no aggregator is running
    agg = start_aggregator(world, site)
    try:
        wait_until(lambda: not reports(site), "reports taken")
        row, kinds = wait_until(lambda: (r := stored_job(agg, job_id))[0] and r, "job stored")
        assert row["user"] == start_env["SLURM_JOB_USER"]
        assert row["job_name"] == 'a "quoted"\tname'
        assert row["end_time"] is not None and row["reconcile"] == "pending"
        assert kinds == ["job_start", "job_end"]
        # The hooks reported long before it was read: no queue snapshot from another moment.
        assert row["queue_json"] in (None, "null")
    finally:
        agg.stop()


def test_a_running_aggregator_stores_a_start_moments_after_the_hook(world):  # noqa: F811
    site = spool_site(world)
    agg = start_aggregator(world, site)
    try:
        env = slurm_env("prologslurmctld", SLURM_JOB_ID="424243")
        proc, _ = site.run("prologslurmctld", env, user="slurm")
        assert proc.returncode == 0
        row, kinds = wait_until(lambda: (r := stored_job(agg, 424243))[0] and r, "job stored")
        assert kinds == ["job_start"] and row["user"] == env["SLURM_JOB_USER"]
        wait_until(lambda: not reports(site), "report removed")
    finally:
        agg.stop()


def test_over_http_the_real_aggregator_stores_a_start_and_an_end(world):  # noqa: F811
    """The transport for an aggregator on another host."""
    agg = start_aggregator(world)
    try:
        site = Site(
            world,
            aggregator_url=f"http://{agg.cfg.aggregator.http_listen}",
            controller_transport="http",
        )
        for kind, stored in (
            ("prologslurmctld", ["job_start"]),
            ("epilogslurmctld", ["job_start", "job_end"]),
        ):
            proc, _ = site.run(kind, slurm_env(kind, SLURM_JOB_ID="424244"), user="slurm")
            assert proc.returncode == 0
            wait_until(
                lambda stored=stored: stored_job(agg, 424244)[1] == stored, f"{stored[-1]} stored"
            )
        row, kinds = wait_until(
            lambda: (r := stored_job(agg, 424244))[1] == ["job_start", "job_end"] and r,
            "start and end stored",
        )
        assert row["end_time"] is not None
        assert site.log("prologslurmctld") == [] and not (site.state / "reports").exists()
    finally:
        agg.stop()


def test_bad_reports_are_set_aside_with_one_line_and_the_good_one_is_stored(world, caplog):  # noqa: F811
    site = spool_site(world)
    spool = site.state / "reports"
    (spool / "1-1-prologslurmctld.json").write_text("not json\n")
    (spool / "2-2-prologslurmctld.json").write_text('{"kind": "somethingelse", "env": {}}\n')
    (spool / "3-3-prologslurmctld.json").write_text('{"kind": "prologslurmctld", "env": {}}\n')
    (spool / "3-4-epilogslurmctld.json").write_text(
        '{"kind": "epilogslurmctld", "env": ["not", "an", "object"]}\n'
    )
    half = spool / "4-4-prologslurmctld.json"
    half.write_text('{"kind": "prologslurmctld", "env": {"SLURM_JOB_ID": "4"')
    young = spool / "6-6-prologslurmctld.json"
    young.write_text('{"kind": "prologslurmctld"')
    past = time.time() - INCOMPLETE_GRACE_SECONDS - 1
    os.utime(half, (past, past))
    slurm_user_reports_start(site, 5)
    with caplog.at_level(logging.WARNING):
        agg = start_aggregator(world, site)
        try:
            wait_until(lambda: stored_job(agg, 5)[0], "good report stored")
            bad = wait_until(
                lambda: (
                    len(list((spool / "bad").glob("*.json"))) == 5
                    and sorted(p.name for p in (spool / "bad").glob("*.json"))
                ),
                "bad set aside",
            )
        finally:
            agg.stop()
    assert [n.split("-")[0] for n in bad] == ["1", "2", "3", "3", "4"]
    assert young.exists()  # still being written: left for a later look
    lines = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(lines) == 5 and all(str(spool) in line for line in lines)
    assert any("no job id" in line for line in lines)
    assert any("expected kind" in line for line in lines)
    assert any("no end of line" in line for line in lines)


def test_an_unwritable_reports_directory_falls_back_to_http(world):  # noqa: F811
    from test_hooks import Aggregator as HttpAggregator

    http = HttpAggregator("ok")
    try:
        site = Site(world, aggregator_url=http.url, controller_transport="spool")
        site.settings(controller_spool=str(world / "no-such-dir"))
        proc, _ = site.run("prologslurmctld", slurm_env("prologslurmctld"), user="slurm")
        assert proc.returncode == 0
        assert [p for p, _ in http.requests] == ["/api/v1/hooks/job-start"]
        (line,) = site.log("prologslurmctld")
        assert "cannot write" in line and "no-such-dir" in line and "sent over HTTP" in line
    finally:
        http.close()


def slurm_user_reports_start(site: Site, job_id: int) -> None:
    """PrologSlurmctld of JOB_ID, run as the SlurmUser, leaves its report (the spool site)."""
    proc, _ = site.run(
        "prologslurmctld", slurm_env("prologslurmctld", SLURM_JOB_ID=str(job_id)), user="slurm"
    )
    assert proc.returncode == 0


def test_report_dir_gives_oldest_first_and_skips_those_in_hand(tmp_path):
    d = ReportDir(tmp_path)
    for name in ("20-1-a.json", "10-2-b.json", "30-3-c.json"):
        (tmp_path / name).write_text(json.dumps({"n": name}) + "\n")
    assert [p.name for p, _ in d.ready()] == ["10-2-b.json", "20-1-a.json", "30-3-c.json"]
    assert [p.name for p, _ in d.ready(skip={"20-1-a.json"})] == ["10-2-b.json", "30-3-c.json"]
    assert list(ReportDir(tmp_path / "absent").ready()) == []


def test_a_report_written_by_a_user_is_never_believed(world, caplog):  # noqa: F811
    """Only root and the SlurmUser write job starts: a user's file, a link planted in place of a
    report, or a FIFO meant to block the reader are set aside, and the SlurmUser's own report is
    stored beside them."""
    site = spool_site(world)
    spool = site.state / "reports"
    forged = spool / "1-777-prologslurmctld.json"
    forged.write_text(
        json.dumps(
            {"kind": "prologslurmctld", "env": {"SLURM_JOB_ID": "777", "SLURM_JOB_USER": "alice"}}
        )
        + "\n"
    )
    os.chown(forged, 2001, 2001)  # as if alice had written it
    target = world / "elsewhere.json"
    target.write_text(
        json.dumps({"kind": "prologslurmctld", "env": {"SLURM_JOB_ID": "778"}}) + "\n"
    )
    (spool / "2-778-prologslurmctld.json").symlink_to(target)
    os.mkfifo(spool / "3-779-prologslurmctld.json")
    slurm_user_reports_start(site, 780)
    with caplog.at_level(logging.WARNING):
        agg = start_aggregator(world, site)
        try:
            wait_until(lambda: stored_job(agg, 780)[0], "the SlurmUser's report stored")
            wait_until(lambda: len(list((spool / "bad").iterdir())) == 3, "untrusted set aside")
            assert all(stored_job(agg, j)[0] is None for j in (777, 778, 779))
        finally:
            agg.stop()
    lines = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert any("owned by uid 2001" in line for line in lines)
    assert sum("not a regular file" in line or "Too many levels" in line for line in lines) == 2


def test_a_reports_directory_others_may_write_to_is_not_read(world, caplog):  # noqa: F811
    site = spool_site(world)
    spool = site.state / "reports"
    spool.chmod(0o777)
    slurm_user_reports_start(site, 781)
    with caplog.at_level(logging.ERROR):
        agg = start_aggregator(world, site)
        try:
            wait_until(
                lambda: any("may be written by others" in r.getMessage() for r in caplog.records),
                "the refusal logged",
            )
            assert stored_job(agg, 781)[0] is None and len(reports(site)) == 1
            spool.chmod(0o700)  # as install-hooks makes it: now it is read
            wait_until(lambda: stored_job(agg, 781)[0], "the report stored")
        finally:
            agg.stop()
