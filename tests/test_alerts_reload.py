"""A SIGHUP brings new alert rules, channels and secrets into a running nomade-aggregator: an
admin adds a rule and a webhook and the next silent node reaches it; a rotated webhook address
is used from the reload on; a rule taken out resolves its open alerts, and the receiver hears
it; a wrong rule or an unreadable secrets file keeps everything as it ran, in one line.  The
aggregator is the real one in this process (test_sighup.started), its receivers real HTTP
servers on loopback (test_dispatch.Receiver); and a dispatcher replaced while an alert is in its
retries hands it to its successor, so a reload loses no alert."""

from __future__ import annotations

import logging
import time

import pytest
from clusterlib import wait_for
from test_dispatch import Receiver, secrets_file, settings
from test_sighup import REFUSED_LINE, edit, events, started

from aggregator.alerts.dispatch import Alert, Dispatcher

SILENT_RULE = """
[[alerts.rules]]
name = "{name}"
kind = "node_silent"
severity = "critical"
window = 30
"""


def add_rule(path, name: str) -> None:
    path.write_text(path.read_text() + SILENT_RULE.format(name=name))


def webhook_on(tmp_path, d, url: str) -> None:
    """The aggregator's file D.config given a webhook to URL (in a secrets file of its own),
    its rules evaluated every 0.2 s."""
    secrets = secrets_file(tmp_path, webhook_url=url)
    edit(d.config, "alerts", webhook="true", secrets_file=f'"{secrets}"', evaluate_seconds="0.2")


def silent_node(agg, node: str) -> None:
    """NODE known to the aggregator, last heard two minutes ago."""
    agg.writer.call(
        lambda c: c.execute(
            "INSERT INTO nodes (node, first_seen, last_seen, state) VALUES (?, 1, ?, 'up')",
            (node, time.time() - 120),
        )
    )


def posted(hook: Receiver) -> list[tuple[str, str, str]]:
    return [(p["body"]["rule"], p["body"]["subject"], p["body"]["state"]) for p in hook.posts]


def test_a_rule_and_a_webhook_added_by_a_reload_alert_without_a_restart(tmp_path, caplog):
    hook = Receiver()
    agg, d = started(tmp_path)
    try:
        silent_node(agg, "n3")
        time.sleep(1.5)  # the alerting loop runs: no rule, nothing raised
        assert d.query("SELECT count(*) FROM alerts")[0][0] == 0
        webhook_on(tmp_path, d, hook.url("hooks/nomade"))
        add_rule(d.config, "silent")
        with caplog.at_level(logging.INFO):
            assert agg.reloader.reload()
        assert "alerts: now 1 rule(s); channels webhook" in caplog.text
        wait_for("the new rule's alert at the webhook", lambda: hook.posts, 30, 0.05)
        assert posted(hook) == [("silent", "n3", "firing")]
        assert hook.posts[0]["path"] == "/hooks/nomade"
        assert agg.runtime()["alerts"]["channels"]["channels"]["webhook"]["sent"] == 1
        assert "take effect only when" not in caplog.text  # nothing waits for a restart
    finally:
        agg.stop()
        hook.close()


def test_a_rotated_webhook_address_is_used_from_the_reload_on(tmp_path):
    """Only the secrets file changed (no setting did): the reload reads it again, the next
    alert goes to the new address, and the channel's counts go on."""
    old, new = Receiver(), Receiver()
    agg, d = started(tmp_path)
    try:
        webhook_on(tmp_path, d, old.url("old"))
        add_rule(d.config, "silent")
        assert agg.reloader.reload()
        silent_node(agg, "n1")
        wait_for("n1's alert at the old address", lambda: old.posts, 30, 0.05)
        secrets_file(tmp_path, webhook_url=new.url("new"))  # the same file, rewritten
        assert agg.reloader.reload()
        silent_node(agg, "n2")
        wait_for("n2's alert at the new address", lambda: new.posts, 30, 0.05)
        assert posted(old) == [("silent", "n1", "firing")]
        assert posted(new) == [("silent", "n2", "firing")]
        webhook = agg.runtime()["alerts"]["channels"]["channels"]["webhook"]
        assert webhook["sent"] == 2 and webhook["target"].endswith(f":{new.port}/…")
    finally:
        agg.stop()
        old.close()
        new.close()


def test_a_rule_taken_out_resolves_its_open_alerts_and_says_so(tmp_path):
    hook = Receiver()
    agg, d = started(tmp_path)
    try:
        webhook_on(tmp_path, d, hook.url("h"))
        before = d.config.read_text()
        add_rule(d.config, "silent")
        add_rule(d.config, "silent_too")
        assert agg.reloader.reload()
        silent_node(agg, "n5")
        wait_for("both rules' alerts", lambda: len(hook.posts) >= 2, 30, 0.05)
        d.config.write_text(before)
        add_rule(d.config, "silent_too")
        assert agg.reloader.reload()
        wait_for("the resolve of the rule taken out", lambda: len(hook.posts) >= 3, 30, 0.05)
        time.sleep(0.5)  # a few more evaluations: silent_too's alert stays open
        assert sorted(posted(hook)) == [
            ("silent", "n5", "firing"),
            ("silent", "n5", "resolved"),
            ("silent_too", "n5", "firing"),
        ]
        resolve = next(p["body"] for p in hook.posts if p["body"]["state"] == "resolved")
        assert resolve["summary"] == "n5: rule silent is no longer configured"
        states = d.query("SELECT rule, state FROM alerts ORDER BY rule")
        assert [tuple(r) for r in states] == [("silent", "resolved"), ("silent_too", "firing")]
    finally:
        agg.stop()
        hook.close()


def test_the_last_rule_taken_out_still_sends_its_resolves(tmp_path):
    """With no rule left, the channels stay: the resolve of the rule taken out reaches the
    receiver that got its firing."""
    hook = Receiver()
    agg, d = started(tmp_path)
    try:
        webhook_on(tmp_path, d, hook.url("h"))
        before = d.config.read_text()
        add_rule(d.config, "silent")
        assert agg.reloader.reload()
        silent_node(agg, "n4")
        wait_for("the firing", lambda: hook.posts, 30, 0.05)
        d.config.write_text(before)
        assert agg.reloader.reload()
        wait_for("the resolve", lambda: len(hook.posts) >= 2, 30, 0.05)
        assert posted(hook) == [("silent", "n4", "firing"), ("silent", "n4", "resolved")]
        assert agg.runtime()["alerts"]["channels"]["channels"]["webhook"]["sent"] == 2
    finally:
        agg.stop()
        hook.close()


@pytest.fixture
def swapping(tmp_path):
    """An Alerting (its loop not running) on a store, its webhook to OLD's address, and a swap
    to NEW's address as a reload does it: (alerting, swap(new_url, first_backoff))."""
    import threading

    from aggregator import store
    from aggregator.daemon.alerting import Alerting
    from nomade_common import config

    text = (
        f'[general]\ndata_dir = "{tmp_path}"\n[alerts]\nwebhook = true\ntimeout_seconds = 2\n'
        f'secrets_file = "{tmp_path}/alerts-secrets.toml"\n'
    )
    cfg = config.parse(text, str(tmp_path / "n.toml"))
    store.open_store(cfg.database).close()
    writer = store.Writer(cfg.database)
    writer.start()
    alerting = Alerting(cfg, writer, lambda: store.connect(cfg.database), threading.Event())
    alerting._looping = True
    threads = []

    def start_with(url: str, first_backoff: float = 1.0) -> None:
        secrets_file(tmp_path, webhook_url=url)
        alerting.dispatcher = Dispatcher(cfg, first_backoff=first_backoff).start()

    def swap_to(url: str) -> threading.Thread:
        """The reload's install, in a thread (it waits for the old dispatcher's attempt)."""
        old = alerting.dispatcher
        secrets_file(tmp_path, webhook_url=url)
        t = threading.Thread(target=alerting.install, args=(alerting.prepare(cfg),))
        t.start()
        threads.append(t)
        wait_for("the new dispatcher in place", lambda: alerting.dispatcher is not old, 30, 0.02)
        return t

    try:
        yield alerting, start_with, swap_to
    finally:
        for t in threads:
            t.join(30)
        alerting.close()
        writer.stop()


def change(alerting, alert_id: int, state: str) -> None:
    alerting._send(alert_id, "silent", "critical", f"n{alert_id}", None, state, 0.0, state)


def seen(hook: Receiver) -> list[tuple[int, str]]:
    return [(p["body"]["id"], p["body"]["state"]) for p in hook.posts]


@pytest.mark.parametrize("old_address", ["hangs", "fails"])
def test_alerts_in_flight_and_queued_at_a_reload_reach_the_new_address_in_order(
    swapping, old_address
):
    """The admin points the webhook elsewhere while the old address hangs (the firing in flight
    until the attempt's timeout) or fails (the firing waiting for its retry), its resolve
    queued behind it: the new address gets both before what is raised after the reload, so a
    resolve never arrives before its firing."""
    alerting, start_with, swap_to = swapping
    if old_address == "hangs":
        old = Receiver(hold=True)
        start_with(old.url("old"))
        under_way = old.entered.is_set
    else:
        old = Receiver(plan=[500] * 20)
        start_with(old.url("old"), first_backoff=30.0)
        under_way = lambda: bool(old.posts)  # noqa: E731
    new = Receiver()
    try:
        change(alerting, 1, "firing")
        wait_for("the first attempt under way", under_way, 30, 0.02)
        change(alerting, 1, "resolved")
        swap = swap_to(new.url("new"))
        change(alerting, 2, "firing")
        swap.join(30)
        wait_for("three alerts at the new address", lambda: len(new.posts) >= 3, 30, 0.02)
        assert seen(new) == [(1, "firing"), (1, "resolved"), (2, "firing")]
    finally:
        old.close()
        new.close()


def test_an_alert_cut_short_after_two_reloads_reaches_the_newest_channel(tmp_path):
    """Dispatcher A's attempt hangs while A is replaced by B and B by C; when it fails, the
    alert goes to C, the one still running, not to B's stopped queue."""
    held, b_hook, c_hook = Receiver(plan=[500], hold=True), Receiver(), Receiver()
    text = "webhook = true\nretry_attempts = 5\nsecrets_file = '{}'\n"

    def dispatcher(hook, path):
        cfg = settings(tmp_path, text.format(secrets_file(tmp_path, webhook_url=hook.url(path))))
        return Dispatcher(cfg, first_backoff=0.05).start()

    a = dispatcher(held, "a")
    b = c = None
    try:
        a.send(Alert(1, "silent", "critical", "n1", None, "firing", "n1 is silent", "", 0.0))
        wait_for("A's attempt under way", held.entered.is_set, 30, 0.02)
        b = dispatcher(b_hook, "b")
        a.hand_over(b, timeout=0.1)  # A's attempt is still held
        c = dispatcher(c_hook, "c")
        b.hand_over(c, timeout=1)
        held.release.set()  # A's attempt now fails (500): the alert goes on to C
        wait_for("the alert at C", lambda: c_hook.posts, 30, 0.02)
        assert [p["body"]["summary"] for p in c_hook.posts] == ["n1 is silent"]
        assert b_hook.posts == [] and b.status()["channels"]["webhook"]["queued"] == 0
    finally:
        for d in (a, b, c):
            if d is not None:
                d.stop(1)
        held.close()
        b_hook.close()
        c_hook.close()


def test_a_wrong_rule_or_an_unreadable_secrets_file_keeps_what_runs(tmp_path, caplog):
    hook = Receiver()
    agg, d = started(tmp_path)
    try:
        webhook_on(tmp_path, d, hook.url("h"))
        add_rule(d.config, "silent")
        assert agg.reloader.reload()
        good = d.config.read_text()
        d.config.write_text(good + '[[alerts.rules]]\nname = "x"\nkind = "sometimes"\n')
        with caplog.at_level(logging.INFO):
            assert not agg.reloader.reload()
        (line,) = [r.getMessage() for r in caplog.records if REFUSED_LINE in r.getMessage()]
        assert "alerts.rules[1]: kind must be one of node_silent" in line
        d.config.write_text(good)
        (tmp_path / "alerts-secrets.toml").chmod(0o644)  # readable by others: refused
        caplog.clear()
        with caplog.at_level(logging.INFO):
            assert not agg.reloader.reload()
        (line,) = [r.getMessage() for r in caplog.records if REFUSED_LINE in r.getMessage()]
        assert "alerts-secrets.toml" in line
        wait_for("both refusals recorded", lambda: len(events(d, "config_reload_refused")) == 2, 10)
        # What ran before both refusals still runs: the rule and its channel.
        silent_node(agg, "n9")
        wait_for("n9's alert", lambda: hook.posts, 30, 0.05)
        assert posted(hook) == [("silent", "n9", "firing")]
        assert agg.runtime()["alerts"]["rules"] == 1
    finally:
        agg.stop()
        hook.close()


def test_an_alert_in_its_retries_when_the_dispatcher_is_replaced_goes_out_through_the_new_one(
    tmp_path,
):
    failing, working = Receiver(plan=[500] * 20), Receiver()
    text = "webhook = true\nretry_attempts = 20\nretry_max_seconds = 600\nsecrets_file = '{}'\n"
    old = Dispatcher(
        settings(tmp_path, text.format(secrets_file(tmp_path, webhook_url=failing.url("a")))),
        first_backoff=0.05,
    ).start()
    new = None
    try:
        alert = Alert(1, "silent", "critical", "n1", None, "firing", "n1 is silent", "", 0.0)
        old.send(alert)
        wait_for("a failed attempt", lambda: failing.posts, 30, 0.02)
        new = Dispatcher(
            settings(tmp_path, text.format(secrets_file(tmp_path, webhook_url=working.url("b")))),
            first_backoff=0.05,
        ).start()
        old.hand_over(new)
        wait_for("the alert through the new dispatcher", lambda: working.posts, 30, 0.02)
        assert [p["body"]["summary"] for p in working.posts] == ["n1 is silent"]
        counts = new.status()["channels"]["webhook"]
        assert counts["sent"] == 1 and counts["failed"] == 0 and counts["attempts_failed"] >= 1
    finally:
        old.stop(1)
        if new is not None:
            new.stop(1)
        failing.close()
        working.close()


def test_alerts_whose_commit_waits_on_a_locked_store_are_sent_when_it_commits(tmp_path):
    """The store is locked (a backup holding it, a full disk) as a rule finds a silent node:
    the evaluation gives up waiting, evaluates nothing more meanwhile, and the firing goes out
    once the store takes the write, once."""
    import sqlite3
    import threading

    from aggregator import store
    from aggregator.daemon.alerting import Alerting
    from nomade_common import config

    hook = Receiver()
    secrets_file(tmp_path, webhook_url=hook.url("h"))
    text = (
        f'[general]\ndata_dir = "{tmp_path}"\n[alerts]\nwebhook = true\n'
        f'secrets_file = "{tmp_path}/alerts-secrets.toml"\n' + SILENT_RULE.format(name="silent")
    )
    cfg = config.parse(text, str(tmp_path / "n.toml"))
    store.open_store(cfg.database).close()
    writer = store.Writer(cfg.database, busy_timeout=0.2)
    writer.start()
    alerting = Alerting(
        cfg, writer, lambda: store.connect(cfg.database), threading.Event(), Dispatcher(cfg)
    )
    alerting.dispatcher.start()
    alerting.write_wait = 0.5
    lock = sqlite3.connect(cfg.database, isolation_level=None)
    try:
        now = time.time()
        writer.call(lambda c: c.execute(
            "INSERT INTO nodes (node, first_seen, last_seen, state) VALUES ('n1', 1, ?, 'up')",
            (now - 120,)))  # fmt: skip
        lock.execute("BEGIN EXCLUSIVE")
        with pytest.raises(TimeoutError, match="they are sent when it does"):
            alerting.cycle(now)
        assert alerting._pending and hook.posts == []
        lock.execute("ROLLBACK")
        wait_for("the firing, once the store took it", lambda: hook.posts, 30, 0.05)
        assert not alerting._pending
        assert alerting.cycle(now + 1) == []  # the alert is open: nothing new to send
        time.sleep(0.3)
        assert posted(hook) == [("silent", "n1", "firing")]
    finally:
        lock.close()
        alerting.close()
        writer.stop()
        hook.close()
