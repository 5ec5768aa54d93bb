"""The alerts' state in the store, as an admin and a user meet it: one open alert per rule and
subject however often its rule finds the condition, resolved when it clears, no new one within
the cooldown, none under a silence, acknowledged by name, and a user's view of their own."""

from __future__ import annotations

import sqlite3

import pytest

from aggregator import store
from aggregator.store.sqlite.alerts import COOLING, ONGOING, RAISED, SILENCED

T = 1_800_000_000.0


@pytest.fixture
def conn(tmp_path):
    c = store.open_store(str(tmp_path / "a.db"))
    yield c
    c.close()


def fire(conn, rule="fs_fill", subject="/scratch", now=T, **kw):
    return store.raise_alert(conn, rule, subject, "warning", f"{subject} fills", now, **kw)


def test_a_condition_found_again_and_again_is_one_open_alert(conn):
    first, state = fire(conn)
    assert state == RAISED
    for k in range(1, 5):
        assert fire(conn, now=T + 60 * k) == (first, ONGOING)
    (alert,) = store.find_alerts(conn, unresolved=True)
    assert (alert["id"], alert["first_t"], alert["last_t"]) == (first, T, T + 240)
    other, state = fire(conn, subject="/home")  # another subject: its own alert
    assert state == RAISED and other != first
    # Two open alerts of one rule and subject cannot exist, whoever writes them.
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO alerts (rule, subject, severity, state, summary, first_t, last_t)"
            " VALUES ('fs_fill', '/scratch', 'warning', 'firing', 'again', 1, 1)"
        )


def test_it_resolves_when_the_condition_clears_and_cooldown_holds_back_a_flap(conn):
    first, _ = fire(conn)
    assert store.open_subjects(conn, "fs_fill") == {"/scratch"}
    assert store.resolve_alert(conn, "fs_fill", "/scratch", T + 100) == first
    assert store.resolve_alert(conn, "fs_fill", "/scratch", T + 101) is None  # nothing open
    assert store.open_subjects(conn, "fs_fill") == set()
    assert fire(conn, now=T + 200, cooldown=600) == (None, COOLING)
    again, state = fire(conn, now=T + 701, cooldown=600)
    assert state == RAISED and again != first
    (old,) = [a for a in store.find_alerts(conn) if a["id"] == first]
    assert (old["state"], old["resolved_t"]) == ("resolved", T + 100)


@pytest.mark.parametrize(
    ("rule", "subject", "held"),
    [
        ("fs_fill", None, {("fs_fill", "/scratch"), ("fs_fill", "/home")}),
        (None, "/scratch", {("fs_fill", "/scratch"), ("node_silent", "/scratch")}),
        ("fs_fill", "/scratch", {("fs_fill", "/scratch")}),
    ],
)
def test_a_silence_holds_back_its_rule_or_subject_during_its_window_only(conn, rule, subject, held):
    store.add_silence(conn, rule, subject, T + 100, T + 200, "root", "disk swap", T)
    cases = [(r, s) for r in ("fs_fill", "node_silent") for s in ("/scratch", "/home")]
    for r, s in cases:
        assert fire(conn, r, s, now=T + 50)[1] == RAISED  # before the window
        store.resolve_alert(conn, r, s, T + 60)
    got = {(r, s) for r, s in cases if fire(conn, r, s, now=T + 150)[1] == SILENCED}
    assert got == held
    for r, s in cases:  # after the window, anything may fire again
        store.resolve_alert(conn, r, s, T + 160)
        assert fire(conn, r, s, now=T + 250)[1] == RAISED
    assert store.silences(conn, T + 150) and store.silences(conn, T + 250) == []


def test_a_silence_of_a_node_holds_back_what_the_rules_name_after_it(conn):
    """Maintenance on node7: its own alerts, its local filesystems' and NFS mounts'
    ("node7:/tmp") and its collectors' ("node7: gpu") are held back; node70's are not."""
    store.add_silence(conn, None, "node7", T, T + 100, "root", "DIMM swap", T)
    subjects = ["node7", "node7:/tmp", "node7: gpu", "node70", "node70:/tmp", "xnode7:/tmp"]
    got = {s: fire(conn, "r", s, now=T + 50)[1] for s in subjects}
    assert got == {
        "node7": SILENCED,
        "node7:/tmp": SILENCED,
        "node7: gpu": SILENCED,
        "node70": RAISED,
        "node70:/tmp": RAISED,
        "xnode7:/tmp": RAISED,
    }


def test_a_silence_names_something_and_ends_after_it_starts(conn):
    with pytest.raises(ValueError, match="names a rule, a subject or both"):
        store.add_silence(conn, None, None, T, T + 10, "root", None, T)
    with pytest.raises(ValueError, match="ends after it starts"):
        store.add_silence(conn, "r", None, T, T, "root", None, T)


def test_acknowledged_by_name_and_a_user_sees_alerts_about_their_own_jobs(conn):
    mine, _ = store.raise_alert(
        conn, "job_mem", "job 7", "critical", "job 7 nears its limit", T, job_uid=1, user="alice"
    )
    store.raise_alert(conn, "job_mem", "job 8", "critical", "job 8", T + 1, job_uid=2, user="bob")
    fire(conn, now=T + 2)
    assert store.ack_alert(conn, mine, "root", T + 5)
    assert not store.ack_alert(conn, 999, "root", T + 5)
    alice = store.find_alerts(conn, user="alice")
    assert [(a["id"], a["acked_by"]) for a in alice] == [(mine, "root")]
    assert len(store.find_alerts(conn)) == 3  # an admin's view
    assert [a["subject"] for a in store.find_alerts(conn, since=T + 1)] == ["/scratch", "job 8"]


def test_long_user_strings_are_bounded(conn):
    alert, _ = store.raise_alert(conn, "r", "s", "warning", "x" * 100_000, T, detail="y" * 10**6)
    (row,) = store.find_alerts(conn)
    assert len(row["summary"]) == 2000 and len(row["detail"]) == 2000 and row["id"] == alert


def test_nomadectl_alerts_lists_acknowledges_and_silences(tmp_path):
    from click.testing import CliRunner

    import nomadectl as ctl

    conn = store.open_store(str(tmp_path / "nomade.db"))
    now = __import__("time").time()
    first, _ = store.raise_alert(
        conn, "fs_fill", "/scratch", "warning", "/scratch full in 3 d", now
    )
    store.raise_alert(conn, "node_silent", "node7", "critical", "node7 silent for 5 min", now + 1)
    store.resolve_alert(conn, "node_silent", "node7", now + 2)
    conn.commit()
    config = tmp_path / "nomade.toml"
    config.write_text(f'[general]\ndata_dir = "{tmp_path}"\n')

    def run(*args):
        return CliRunner().invoke(ctl.main, ["--config", str(config), "alerts", *args])

    listed = run()
    assert listed.exit_code == 0, listed.output
    assert listed.output.splitlines()[1].split()[:5] == ["2", "resolved", "critical",
                                                        "node_silent", "node7"]  # fmt: skip
    only_open = run("--unresolved", "--json")
    assert [a["id"] for a in __import__("json").loads(only_open.output)] == [first]
    acked = run("ack", str(first))
    assert acked.exit_code == 0 and "acknowledged by root" in acked.output
    assert "acked" in run("--unresolved").output
    assert run("ack", "99").output.strip() == "Error: no alert 99 (nomadectl alerts lists them)"
    quiet = run("silence", "--subject", "node7", "--for", "4h", "--reason", "DIMM swap")
    assert quiet.exit_code == 0 and "every rule about node7" in quiet.output, quiet.output
    assert "DIMM swap" in run("silences").output
    conn2 = store.connect(str(tmp_path / "nomade.db"))
    assert store.raise_alert(conn2, "node_silent", "node7", "critical", "again", now + 60)[1] == (
        SILENCED
    )
    for bad, said in (
        (("silence", "--for", "1h", "--reason", "x"), "name a --rule, a --subject or both"),
        (("silence", "--rule", "r", "--reason", "x"), "give --for or --until"),
        (("silence", "--rule", "r", "--for", "2 weeks", "--reason", "x"), "expected a duration"),
    ):
        result = run(*bad)
        assert result.exit_code == 2 and said in result.output, result.output
    audit = CliRunner().invoke(ctl.main, ["--config", str(config), "audit"])
    assert "alert ack" in audit.output and "alert silence" in audit.output


def test_through_the_api_a_user_sees_the_alerts_about_their_own_jobs_only(tmp_path):
    from test_views_hostile import answer

    from aggregator.views.policy import Caller

    db = str(tmp_path / "a.db")
    conn = store.open_store(db)
    store.raise_alert(conn, "job_mem", "job 7", "critical", "job 7", T, job_uid=1, user="alice")
    store.raise_alert(conn, "job_mem", "job 8", "critical", "job 8", T, job_uid=2, user="bob")
    store.raise_alert(conn, "fs_fill", "/scratch", "warning", "/scratch fills", T)
    conn.commit()
    conn.close()
    alice = Caller(2001, "alice")
    status, seen = answer(db, "alerts", alice)
    assert status == 200 and [a["subject"] for a in seen] == ["job 7"]
    status, seen = answer(db, "alerts", Caller(0, "root", admin=True), b"unresolved=1")
    assert status == 200 and len(seen) == 3
    assert answer(db, "alerts", Caller(4242, None)) == (200, [])  # a uid without a name
    status, said = answer(db, "alerts", alice, b"since=yesterday")
    assert status == 400 and "since must be Unix seconds" in str(said)


def test_nomadectl_alerts_test_shows_what_a_rule_would_raise_and_writes_nothing(tmp_path):
    import json

    from click.testing import CliRunner

    import nomadectl as ctl

    db = str(tmp_path / "nomade.db")
    conn = store.open_store(db)
    now = __import__("time").time()
    for node, last_seen in (("node7", now - 900), ("node8", now - 5)):
        conn.execute(
            "INSERT INTO nodes (node, first_seen, last_seen, state) VALUES (?, 1, ?, 'up')",
            (node, last_seen),
        )
    conn.commit()
    conn.close()
    config = tmp_path / "nomade.toml"
    config.write_text(
        f'[general]\ndata_dir = "{tmp_path}"\n'
        '[[alerts.rules]]\nname = "silent"\nkind = "node_silent"\nwindow = 300\n'
        '[[alerts.rules]]\nname = "mem"\nkind = "job_memory"\n'
    )

    def run(*args):
        return CliRunner().invoke(ctl.main, ["--config", str(config), "alerts", "test", *args])

    shown = run("silent")
    assert shown.exit_code == 0, shown.output
    assert "would raise 1" in shown.output and "node7: its agent has not been heard" in (
        shown.output
    )
    assert "node8" not in shown.output
    (finding,) = json.loads(run("silent", "--json").output)["findings"]
    assert finding["subject"] == "node7" and finding["user"] is None
    earlier = run("silent", "--at", __import__("datetime").datetime.fromtimestamp(now - 1800)
                  .isoformat(), "--json")  # fmt: skip
    assert json.loads(earlier.output)["findings"] == []  # half an hour ago node7 was heard
    assert "would raise nothing" in run("mem").output
    conn = store.connect(db, readonly=True)
    assert store.find_alerts(conn) == []  # nothing written
    conn.close()
    unknown = run("nosuch")
    assert unknown.exit_code == 1
    assert unknown.output.strip().splitlines() == [
        "Error: no rule 'nosuch' in [[alerts.rules]] (configured: silent, mem)"
    ]
    bad_date = run("silent", "--at", "yesterday")
    assert bad_date.exit_code == 2 and "expected a date" in bad_date.output
