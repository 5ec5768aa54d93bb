"""Alerts through the real pipeline: a real nomade-aggregator with a rule and a webhook channel,
a node that streams samples over ZeroMQ and then falls silent.  The webhook receiver (an HTTP
server on loopback, standing in for a site's) gets the alert once, and the resolve once the
node is heard again; `nomadectl alerts` shows it; a wrong rule stops start-up in one line."""

from __future__ import annotations

import subprocess

from clusterlib import wait_for
from test_dispatch import Mailbox, Receiver, secrets_file, smtp_server
from test_store_outages import BIN, running, sender


def rules_config(secrets: str, smtp_port: int) -> str:
    return f"""
[alerts]
email = true
email_to = ["hpc-admins@example.org"]
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
slack = true
webhook = true
secrets_file = "{secrets}"
evaluate_seconds = 0.2
[[alerts.rules]]
name = "node_silent"
kind = "node_silent"
severity = "critical"
window = 2
"""


def test_a_node_falling_silent_reaches_every_channel_once_and_so_does_its_return(tmp_path):
    # Real receivers on loopback: aiosmtpd for mail, HTTP servers for Slack and a webhook.
    mailbox, hook, slack = Mailbox(), Receiver(), Receiver()
    smtp = smtp_server(mailbox)
    try:
        secrets = secrets_file(
            tmp_path, webhook_url=hook.url("nomade"), slack_webhook=slack.url("services/T1")
        )
        with running(tmp_path, aggregator=rules_config(secrets, smtp.port)) as d:
            node = sender(d, "n7", jobs=1)
            seqs = node.add(3)
            wait_for("n7's samples to be answered", lambda: node.answered(seqs), 30, 0.05)
            node.stop()
            wait_for("the alert on every channel",
                     lambda: hook.posts and slack.posts and mailbox.messages, 30, 0.05)  # fmt: skip
            again = sender(d, "n7", jobs=1)
            seqs = again.add(2)
            wait_for("n7 heard again", lambda: again.answered(seqs), 30, 0.05)
            wait_for(
                "the resolve on every channel",
                lambda: (
                    len(hook.posts) >= 2 and len(slack.posts) >= 2 and len(mailbox.messages) >= 2
                ),
                30,
                0.05,
            )
            states = [
                (p["body"]["rule"], p["body"]["subject"], p["body"]["state"]) for p in hook.posts
            ]
            assert states == [("node_silent", "n7", "firing"), ("node_silent", "n7", "resolved")]
            assert "has not been heard" in hook.posts[0]["body"]["summary"]
            texts = [p["body"]["text"] for p in slack.posts]
            assert len(texts) == 2 and "FIRING critical" in texts[0] and "RESOLVED" in texts[1]
            mails = mailbox.to("hpc-admins@example.org")
            assert [m["X-NOMADE-Alert"].split()[1] for m in mails] == ["firing", "resolved"]
            assert "n7" in mails[0]["Subject"]
            listed = d.query("SELECT rule, subject, state FROM alerts")
            assert [tuple(r) for r in listed] == [("node_silent", "n7", "resolved")]
    finally:
        smtp.stop()
        hook.close()
        slack.close()


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
