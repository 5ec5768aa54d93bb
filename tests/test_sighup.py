"""SIGHUP reloads nomade-aggregator's configuration without stopping anything: a valid new file
changes what can change live (here the window of sample times it takes, which an agent notices
as its samples refused), names what waits for a restart and keeps it; an invalid file keeps the
running configuration, with one line that says why; samples streamed throughout are all stored,
each once.  The aggregator is the real one, as a process (test_store_outages.py's Daemon and
simulated agents over real ZeroMQ), or in this process where the test looks at its parts.
"""

from __future__ import annotations

import collections
import json
import logging
import re
import signal
import subprocess
import time

from clusterlib import free_port, wait_for
from test_store_outages import BIN, Daemon, Sender, munged_answers, running, sample_row, sender

from aggregator import daemon as server
from nomade_common import config, wire

RESTART_LINE = "take effect only when nomade-aggregator restarts"
REFUSED_LINE = "configuration not reloaded, the running one is kept"


class AheadSender(Sender):
    """A node whose clock runs AHEAD seconds fast: its samples are stamped in the future."""

    ahead = 120.0

    def add(self, n: int, bad: bool = False) -> list[int]:
        seqs = []
        with self.lock:
            for _ in range(n):
                seq, self.next_seq = self.next_seq, self.next_seq + 1
                t = time.time() + self.ahead
                self.rows[seq] = [sample_row(job, t, seq) for job in self.job_ids]
                data = wire.Envelope(
                    wire.SAMPLES, self.node, self.epoch, seq, {"rows": self.rows[seq]}
                ).pack()
                self._data[seq] = data
                self._new.append((seq, data))
                seqs.append(seq)
        return seqs


def edit(path, section: str, **settings: str) -> None:
    """Set SETTINGS (TOML literals) in [SECTION] of the file at PATH, replacing a line that
    sets the same key there or adding one."""
    text = path.read_text()
    head = f"[{section}]\n"
    if head not in text:
        text += head
    start = text.index(head) + len(head)
    end = text.find("\n[", start)
    end = len(text) if end < 0 else end + 1
    body = text[start:end]
    for name, literal in settings.items():
        line = f"{name} = {literal}\n"
        body, n = re.subn(rf"(?m)^{name} = .*\n", line, body)
        if not n:
            body = line + body
    path.write_text(text[:start] + body + text[end:])


def events(d, kind: str) -> list[str]:
    return [r[0] for r in d.query("SELECT detail FROM events WHERE kind = ? ORDER BY t", kind)]


def refused_ahead(d, node: str) -> int:
    rows = d.query("SELECT samples_refused FROM nodes WHERE node = ?", node)
    return rows[0][0] if rows else 0


def probe(d, ahead: AheadSender) -> int:
    """One envelope stamped 120 s ahead, answered; the samples its node had refused since."""
    before = refused_ahead(d, ahead.node)
    seqs = ahead.add(1)
    wait_for("the probe to be answered", lambda: ahead.answered(seqs), 30, 0.05)
    return refused_ahead(d, ahead.node) - before


def stored_once(d, s: Sender) -> None:
    """Every sample S sent is stored, each once (none dropped around a reload)."""
    have = collections.Counter(x for x in d.samples() if x[0] == s.node)
    want = s.expected_samples(s.good())
    assert have == want, (
        f"{sum((want - have).values())} samples missing, {sum((have - want).values())} extra"
    )


def test_sighup_applies_a_valid_file_keeps_an_invalid_one_and_drops_no_sample(tmp_path):
    with running(tmp_path) as d:
        stream = sender(d, "hup1", jobs=4)
        ahead = AheadSender(d.endpoint, "hup2", 2_000_000, 2)
        d.senders.append(ahead)
        ahead.start()
        stream.add(200)
        assert probe(d, ahead) == 0, "a sample 120 s ahead is taken by default (300 s)"

        # An invalid file: nothing of it is applied, one line says why.
        edit(d.config, "aggregator", sample_future_seconds="60", node_down_seconds="-1")
        stream.add(200)
        d.proc.send_signal(signal.SIGHUP)
        wait_for("the refused reload's event", lambda: events(d, "config_reload_refused"), 30)
        stream.add(200)
        refusals = [line for line in d.log().splitlines() if REFUSED_LINE in line]
        assert len(refusals) == 1, d.log()
        assert "[aggregator.node_down_seconds]: must be between 5 and 86400, got -1" in refusals[0]
        assert probe(d, ahead) == 0, "the invalid file's sample_future_seconds was applied"

        # A valid one: the live setting changes; a new address waits for a restart.
        old_url, new_port = d.url, free_port()
        edit(d.config, "aggregator", node_down_seconds="60", http_listen=f'"127.0.0.1:{new_port}"')
        d.proc.send_signal(signal.SIGHUP)
        stream.add(200)
        wait_for("the reload's event", lambda: events(d, "config_reloaded"), 30)
        stream.add(200)
        detail = json.loads(events(d, "config_reloaded")[0])
        assert "aggregator.sample_future_seconds" in detail["applied"]
        assert detail["at_restart"] == ["aggregator.http_listen"]
        later = [line for line in d.log().splitlines() if RESTART_LINE in line]
        assert len(later) == 1 and "aggregator.http_listen" in later[0], d.log()
        assert probe(d, ahead) == 2, "sample_future_seconds = 60 was not applied"
        assert d.health() == 200 and d.url == old_url  # still on the address it started with

        wait_for("every envelope to be answered", lambda: stream.answered(stream.rows), 60, 0.1)
        assert not stream.nacked
        assert d.proc.poll() is None
        assert d.stop() == 0, d.log()
        stored_once(d, stream)


def test_nomadectl_status_shows_the_reload_and_why_one_was_refused(tmp_path):
    munged_answers()
    with running(tmp_path) as d:
        ctl = tmp_path / "nomadectl.toml"  # nomadectl's own copy: the daemon's becomes invalid
        ctl.write_text(d.config.read_text())
        d.proc.send_signal(signal.SIGHUP)
        wait_for("the reload's event", lambda: events(d, "config_reloaded"), 30)
        first = status(ctl)["aggregator"]["config"]
        assert first["path"] == str(d.config) and first["reloads"] == 1
        assert first["reload_refused"] is None
        edit(d.config, "models", warn_threshold="2")
        d.proc.send_signal(signal.SIGHUP)
        wait_for("the refused reload's event", lambda: events(d, "config_reload_refused"), 30)
        second = status(ctl)["aggregator"]["config"]
        assert second["reloads"] == 1 and second["loaded"] == first["loaded"]
        assert (
            "[models.warn_threshold]: must be between 0.001 and 0.999" in second["reload_refused"]
        )


def status(path) -> dict:
    """`nomadectl status --json` (root: the store, and the running aggregator's own view)."""
    out = subprocess.run(
        [str(BIN / "nomadectl"), "--config", str(path), "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def started(root):
    """The aggregator in this process, as test_store_outages' Daemon configures it, with one
    head collector running (licenses: skipped here, no server is configured)."""
    d = Daemon(root, root / "data")
    edit(d.config, "collectors.licenses", enabled="true")
    agg = server.Aggregator(config.load(str(d.config)))
    agg.start()
    return agg, d


def test_a_reload_reaches_the_parts_that_keep_a_copy_and_keeps_what_needs_a_restart(
    tmp_path, caplog
):
    agg, d = started(tmp_path)
    level = logging.getLogger().level
    try:
        listen, http = agg.cfg.aggregator.listen, agg.cfg.aggregator.http_listen
        edit(d.config, "aggregator", samples_raw_retention_days="3", listen='"tcp://127.0.0.1:1"')
        edit(d.config, "models", warn_threshold="0.8", advice='"never"')
        edit(d.config, "prediction", retrain_interval_days="2")  # a design key
        edit(d.config, "collectors.licenses", interval_seconds="5")
        edit(d.config, "collectors.queue", enabled="true")
        edit(d.config, "general", log_level='"DEBUG"')
        with caplog.at_level(logging.INFO):
            assert agg.reloader.reload()
            assert logging.getLogger().level == logging.DEBUG
        assert (agg.scorer.threshold, agg.scorer.advice_mode) == (0.8, "never")
        assert agg.compactor.raw_days == 3
        assert agg.cfg.models.retrain_interval_hours == 48
        assert agg.head.collectors.status["licenses"].interval_seconds == 5
        # Kept until a restart: the sockets, and which head collectors run.
        assert (agg.cfg.aggregator.listen, agg.cfg.aggregator.http_listen) == (listen, http)
        assert agg.cfg.collectors.queue.enabled is False
        assert "queue" not in agg.head.collectors.status
        restart = [r.getMessage() for r in caplog.records if RESTART_LINE in r.getMessage()]
        assert len(restart) == 1
        assert "aggregator.listen" in restart[0] and "collectors.queue.enabled" in restart[0]
        assert "read as models.retrain_interval_hours = 48 (days x 24)" in caplog.text
        assert agg.runtime()["config"]["reloads"] == 1
    finally:
        agg.stop()
        logging.getLogger().setLevel(level)


def test_the_agents_own_settings_are_named_as_theirs(tmp_path, caplog):
    agg, d = started(tmp_path)
    try:
        edit(d.config, "agent", interval_seconds="3")
        with caplog.at_level(logging.INFO):
            assert agg.reloader.reload()
        said = [
            r.getMessage() for r in caplog.records if "agent.interval_seconds" in r.getMessage()
        ]
        assert len(said) == 1 and "read by nomade-agent" in said[0]
    finally:
        agg.stop()


def test_the_hooks_limit_is_applied_here_and_named_for_install_hooks(tmp_path, caplog):
    agg, d = started(tmp_path)
    try:
        edit(d.config, "hooks", timeout_seconds="1.5")
        with caplog.at_level(logging.INFO):
            assert agg.reloader.reload()
        assert agg.cfg.hooks.timeout_seconds == 1.5  # the report's commit wait: at once
        said = [r.getMessage() for r in caplog.records if "hooks.timeout_seconds" in r.getMessage()]
        assert any("nomadectl install-hooks" in m for m in said), said
    finally:
        agg.stop()


def test_what_waits_for_a_restart_and_what_is_not_the_aggregators_are_settings_and_disjoint():
    """Each pattern names settings that exist, and no setting is in both lists (a setting the
    aggregator reads only at start cannot also be one it does not read)."""
    from aggregator.daemon import reload

    keys = config.setting_keys()
    for pattern in reload.RESTART + reload.ELSEWHERE:
        assert any(reload.matches(k, [pattern]) for k in keys), pattern
    both = [
        k for k in keys if reload.matches(k, reload.RESTART) and reload.matches(k, reload.ELSEWHERE)
    ]
    assert both == []
