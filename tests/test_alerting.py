"""Alerts through the real pipeline: a real nomade-aggregator with a rule and a webhook channel,
a node that streams samples over ZeroMQ and then falls silent.  The webhook receiver (an HTTP
server on loopback, standing in for a site's) gets the alert once, and the resolve once the
node is heard again; `nomadectl alerts` shows it; a wrong rule stops start-up in one line."""

from __future__ import annotations

import subprocess

from clusterlib import wait_for
from test_dispatch import Receiver, secrets_file
from test_store_outages import BIN, running, sender


def rules_config(secrets: str) -> str:
    return f"""
[alerts]
webhook = true
secrets_file = "{secrets}"
evaluate_seconds = 0.2
[[alerts.rules]]
name = "node_silent"
kind = "node_silent"
severity = "critical"
window = 2
"""


def test_a_node_falling_silent_reaches_the_webhook_once_and_so_does_its_return(tmp_path):
    hook = Receiver()
    try:
        secrets = secrets_file(tmp_path, webhook_url=hook.url("nomade"))
        with running(tmp_path, aggregator=rules_config(secrets)) as d:
            node = sender(d, "n7", jobs=1)
            seqs = node.add(3)
            wait_for("n7's samples to be answered", lambda: node.answered(seqs), 30, 0.05)
            node.stop()
            wait_for("the alert at the webhook", lambda: hook.posts, 30, 0.05)
            again = sender(d, "n7", jobs=1)
            seqs = again.add(2)
            wait_for("n7 heard again", lambda: again.answered(seqs), 30, 0.05)
            wait_for("the resolve at the webhook", lambda: len(hook.posts) >= 2, 30, 0.05)
            states = [
                (p["body"]["rule"], p["body"]["subject"], p["body"]["state"]) for p in hook.posts
            ]
            assert states == [("node_silent", "n7", "firing"), ("node_silent", "n7", "resolved")]
            assert "has not been heard" in hook.posts[0]["body"]["summary"]
            listed = d.query("SELECT rule, subject, state FROM alerts")
            assert [tuple(r) for r in listed] == [("node_silent", "n7", "resolved")]
    finally:
        hook.close()


def test_a_wrong_rule_stops_start_up_in_one_line(tmp_path):
    config = tmp_path / "n.toml"
    config.write_text(
        f'[general]\ndata_dir = "{tmp_path}"\n[[alerts.rules]]\nname = "x"\nkind = "sometimes"\n'
    )
    out = subprocess.run(
        [str(BIN / "nomade-aggregator"), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    (line,) = out.stderr.strip().splitlines()
    assert "alerts.rules[0]: kind must be one of node_silent" in line


def test_a_rule_is_evaluated_at_its_own_schedule(tmp_path):
    import threading
    import time

    from aggregator import store
    from aggregator.daemon.alerting import Alerting
    from nomade_common import config

    cfg = config.parse(
        f'[general]\ndata_dir = "{tmp_path}"\n[[alerts.rules]]\nname = "silent"\n'
        'kind = "node_silent"\nwindow = 30\nevery = 60\n',
        "n.toml",
    )
    store.open_store(cfg.database).close()
    writer = store.Writer(cfg.database)
    writer.start()
    try:
        alerting = Alerting(cfg, writer, lambda: store.connect(cfg.database), threading.Event())
        now = time.time()
        writer.call(lambda c: c.execute(
            "INSERT INTO nodes (node, first_seen, last_seen, state) VALUES ('n1', 1, ?, 'up')",
            (now - 120,)))  # fmt: skip
        assert [c.state for c in alerting.cycle(now)] == ["firing"]
        writer.call(lambda c: c.execute("UPDATE nodes SET last_seen = ?", (now + 60,)))
        assert alerting.cycle(now + 10) == []  # heard again, but the rule is not due yet
        assert [c.state for c in alerting.cycle(now + 61)] == ["resolved"]
    finally:
        writer.stop()
