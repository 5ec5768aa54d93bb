"""CurveZMQ between agents and the aggregator, with real sockets on loopback: only enrolled node
keys are heard, each only for its own node; a revoked node is cut off at once; an impostor
aggregator gets nothing; rotation, rollout and "off" behave as docs/security.md says; and
enrolment is a root-only, one-transaction, line-numbered affair."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import zmq
from click.testing import CliRunner
from clusterlib import free_port, wait_for
from conftest import SITE_NOMADECTL, required

import nomadectl as ctl
from aggregator import daemon as server
from nodeagent import curvekeys
from nodeagent.agent import Agent
from nomade_common import config, keys, wire

BIN = Path(sys.executable).parent


class Site:
    """A head node (aggregator, its keys_dir) and nodes with keys_dirs of their own, as a
    cluster has them: each node's secret stays in its directory; server.key is copied there."""

    def __init__(self, root: Path, curve: str = "on") -> None:
        self.root, self.curve = root, curve
        self.port, self.plain_port = free_port(), free_port()
        self.config = root / "nomade.toml"
        plain = (
            f'plain_listen = "tcp://127.0.0.1:{self.plain_port}"\n' if curve == "rollout" else ""
        )
        self.config.write_text(
            f'[general]\ndata_dir = "{root}/data"\n'
            f'[aggregator]\nlisten = "tcp://127.0.0.1:{self.port}"\n'
            f'http_listen = "127.0.0.1:{free_port()}"\nsqueue = "{root}/none"\n'
            f'[security]\ncurve = "{curve}"\nkeys_dir = "{root}/keys"\n{plain}'
            "[collectors.job_history]\nenabled = false\n"
        )
        self.cfg = config.load(str(self.config))
        self.agg: server.Aggregator | None = None
        self.agents: list[Agent] = []

    def ctl(self, *args: str, input: str | None = None, ok: bool = True) -> str:
        result = CliRunner().invoke(ctl.main, ["--config", str(self.config), *args], input=input)
        assert (result.exit_code == 0) == ok, result.output
        return result.output

    def start(self) -> server.Aggregator:
        self.ctl("init")
        self.agg = server.Aggregator(self.cfg)
        self.agg.start()
        return self.agg

    def node_cfg(
        self, node: str, curve: str | None = None, port: int | None = None
    ) -> config.Config:
        d = self.root / "nodes" / node
        node_side = "on" if self.curve == "rollout" else self.curve  # a moved node: CURVE
        d.mkdir(parents=True, exist_ok=True)
        text = (
            f'[agent]\naggregator = "tcp://127.0.0.1:{port or self.port}"\n'
            f'spool_dir = "{d}/spool"\ncgroup_root = "{d}/cg"\nproc_root = "{d}/proc"\n'
            f'resend_seconds = 0.5\n[security]\ncurve = "{curve or node_side}"\n'
            f'keys_dir = "{d}/keys"\n'
        )
        return config.parse(text, str(d / "nomade.toml"))

    def make_node(self, node: str, enrol: bool = True, **kw) -> tuple[config.Config, str]:
        """NODE's keys made on the node, server.key copied to it, the line enrolled."""
        cfg = self.node_cfg(node, **kw)
        line = curvekeys.make(cfg.security, node)
        self.copy_server_key(cfg)
        if enrol:
            self.ctl("keys", "add", *line.split())
        return cfg, line

    def copy_server_key(self, cfg: config.Config) -> None:
        shutil.copy(self.cfg.security.server_public(), cfg.security.server_public())

    def agent(self, cfg: config.Config, node: str) -> Agent:
        a = Agent(cfg, node)
        a.connect()
        self.agents.append(a)
        return a

    def stored(self, node: str) -> int:
        conn = sqlite3.connect(f"file:{self.cfg.database}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute("SELECT count(*) FROM received WHERE node = ?", (node,)).fetchone()[
                0
            ]
        finally:
            conn.close()

    def status(self) -> dict:
        return json.loads(self.ctl("status", "--json"))

    def close(self) -> None:
        for a in self.agents:
            a.close()
        if self.agg is not None:
            self.agg.stop()


def job_event(agent: Agent, job: int) -> None:
    agent.enqueue(wire.JOB_EVENT, {"event": "start", "job_id": job, "t": time.time()})


def run_for(seconds: float, *agents: Agent, until=None) -> bool:
    """Drive AGENTS' transport (send, receive, watch server.key) for SECONDS or until UNTIL()."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for a in agents:
            a.pump(time.monotonic())
            if a.sock.poll(20, zmq.POLLIN):
                a.receive()
            a.watch_server_key()
        if until is not None and until():
            return True
    return False


@pytest.fixture
def site():
    made: list[Site] = []

    def make(curve: str = "on") -> Site:
        root = Path(tempfile.mkdtemp(prefix="nomade-curve-"))
        made.append(Site(root, curve))
        return made[-1]

    yield make
    for s in made:
        s.close()
        shutil.rmtree(s.root, ignore_errors=True)


def test_an_enrolled_agent_is_stored_and_acknowledged(site):
    s = site()
    s.start()
    cfg, _ = s.make_node("node1")
    a = s.agent(cfg, "node1")
    job_event(a, 11)
    assert run_for(10, a, until=lambda: a.outbox.depth() == 0), "not acknowledged"
    assert s.stored("node1") == 1
    keys = json.loads(s.ctl("keys", "list", "--json"))
    assert [k["node"] for k in keys] == ["node1"] and keys[0]["revoked"] is None


def test_an_unknown_key_gets_nothing_stored_and_is_counted_in_status(site):
    s = site()
    s.start()
    cfg, _ = s.make_node("node1", enrol=False)
    a = s.agent(cfg, "node1")
    job_event(a, 12)
    run_for(3, a)
    assert a.outbox.depth() == 1 and s.stored("node1") == 0
    refused = wait_for("the refusal to be counted", lambda: s.status()["agents_refused"], 10)
    assert refused["by_reason"].get("unknown_key", 0) >= 1 and refused["last_peer"] == "127.0.0.1"
    assert "agents refused:" in s.ctl("status") and "unknown key" in s.ctl("status")
    # Enrolled now: the agent gets in on its next try, by itself.
    s.ctl("keys", "add", "node1", curvekeys.make(cfg.security, "node1").split()[1])
    assert run_for(15, a, until=lambda: a.outbox.depth() == 0), "not delivered once enrolled"


def test_node1s_key_cannot_send_as_node2_nor_take_node2s_verdicts(site):
    s = site()
    agg = s.start()
    cfg1, _ = s.make_node("node1")
    cfg2, _ = s.make_node("node2")
    real2 = s.agent(cfg2, "node2")
    real2.hello()
    job_event(real2, 20)
    assert run_for(10, real2, until=lambda: real2.outbox.depth() == 0)
    stolen = Path(cfg1.security.node_secret("node2"))  # node1's own key, under node2's name
    shutil.copy2(cfg1.security.node_secret("node1"), stolen)
    impostor = s.agent(cfg1, "node2")
    job_event(impostor, 21)
    impostor.hello()
    run_for(3, impostor)
    assert impostor.outbox.depth() == 1 and s.stored("node2") == 1
    agg._push_verdict({"job_id": 20, "node_list": "node2", "user_id": 0}, None)
    run_for(2, impostor, real2)
    assert (real2.verdicts / "20.json").exists()
    assert not (impostor.verdicts / "20.json").exists()
    refused = wait_for("the mismatch to be counted", lambda: s.status()["agents_refused"], 10)
    assert refused["by_reason"].get("node_mismatch", 0) >= 1


def test_a_revoked_node_is_cut_off_while_another_keeps_delivering(site):
    s = site()
    s.start()
    agents = {n: s.agent(s.make_node(n)[0], n) for n in ("node1", "node2")}
    job = iter(range(100, 10_000))

    def stream(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for a in agents.values():
                job_event(a, next(job))
            run_for(0.2, *agents.values())

    stream(2)
    wait_for(
        "both nodes delivering",
        lambda: stream(0.5) or s.stored("node1") and s.stored("node2"),
        15,
        0,
    )
    s.ctl("keys", "revoke", "node1")
    stream(3)  # the aggregator drops every connection within a second; node2 reconnects
    cut, other = s.stored("node1"), s.stored("node2")
    stream(3)
    assert s.stored("node1") == cut, "a revoked node's connection still delivers"
    assert s.stored("node2") > other, "the other node stopped delivering"
    assert agents["node1"].outbox.depth() > 0
    listed = {k["node"]: k for k in json.loads(s.ctl("keys", "list", "--json"))}
    assert listed["node1"]["revoked_by"] == "root" and listed["node2"]["revoked"] is None


def test_an_impostor_aggregator_gets_nothing_and_its_verdicts_never_arrive(site):
    s = site()
    s.start()
    cfg, _ = s.make_node("node1")
    port = free_port()
    fake_ctx = zmq.Context()
    fake = fake_ctx.socket(zmq.ROUTER)
    _public, secret = zmq.curve_keypair()  # not the server's key
    fake.curve_server, fake.curve_secretkey, fake.linger = True, secret, 0
    fake.bind(f"tcp://127.0.0.1:{port}")
    cfg.agent.aggregator = f"tcp://127.0.0.1:{port}"
    a = s.agent(cfg, "node1")
    job_event(a, 30)
    a.hello()
    run_for(3, a)
    assert not fake.poll(500), "the impostor received an envelope"
    assert a.outbox.depth() == 1
    with pytest.raises(zmq.ZMQError):  # no peer to send a verdict to: never connected
        fake.setsockopt(zmq.ROUTER_MANDATORY, 1)
        fake.send_multipart(
            [b"\x00any", wire.Envelope(wire.VERDICT, "node1", 0, 0, {"job_id": 30}).pack()]
        )
    run_for(1, a)
    assert list(a.verdicts.glob("*.json")) == []
    fake.close(0)
    fake_ctx.term()


def delivering(s: Site, node: str, job: int) -> tuple[config.Config, Agent]:
    """NODE enrolled, its agent connected and its first job event delivered."""
    cfg, _ = s.make_node(node)
    a = s.agent(cfg, node)
    job_event(a, job)
    assert run_for(10, a, until=lambda: a.outbox.depth() == 0)
    return cfg, a


def test_after_rotation_the_agent_delivers_once_it_has_the_new_server_key(site):
    s = site()
    s.start()
    cfg, a = delivering(s, "node1", 40)
    out = s.ctl("keys", "rotate-server")
    assert "copy" in out and Path(s.cfg.security.server_public() + ".previous").exists()
    time.sleep(2)  # the aggregator takes the new key and drops every connection
    job_event(a, 41)
    run_for(3, a)
    assert a.outbox.depth() == 1, "delivered to a server key the agent does not know"
    s.copy_server_key(cfg)  # the site distributes the new server.key
    assert run_for(15, a, until=lambda: a.outbox.depth() == 0), "not delivered after rotation"
    assert s.stored("node1") == 2


def test_rollout_hears_both_and_refuses_plain_from_a_node_seen_over_curve(site):
    s = site("rollout")
    s.start()
    cfg1, _ = s.make_node("node1")
    curve_agent = s.agent(cfg1, "node1")
    # node2 is enrolled (the rollout's first step) but not moved yet: plain, to plain_listen.
    plain_agent = s.agent(s.make_node("node2", curve="off", port=s.plain_port)[0], "node2")
    for i, a in enumerate((curve_agent, plain_agent)):
        job_event(a, 50 + i)
    assert run_for(
        10,
        curve_agent,
        plain_agent,
        until=lambda: curve_agent.outbox.depth() == plain_agent.outbox.depth() == 0,
    )
    assert s.stored("node1") == 1 and s.stored("node2") == 1
    assert wait_for("node2 on plain", lambda: s.status()["agents_on_plain"] == ["node2"], 10)
    assert "agents still on plain ZeroMQ" in s.ctl("status")
    spoof = s.agent(s.node_cfg("node1-spoof", curve="off", port=s.plain_port), "node1")
    job_event(spoof, 52)
    run_for(3, spoof)
    assert spoof.outbox.depth() == 1 and s.stored("node1") == 1
    refused = wait_for("plain refusal", lambda: s.status()["agents_refused"], 10)
    assert refused["by_reason"].get("plain_after_curve", 0) >= 1
    stranger = s.agent(s.node_cfg("nodeQ", curve="off", port=s.plain_port), "nodeQ")
    job_event(stranger, 53)
    run_for(3, stranger)  # a name never enrolled: refused, and never listed as a node on plain
    assert stranger.outbox.depth() == 1
    wait_for(
        "the stranger refused",
        lambda: s.status()["agents_refused"]["by_reason"].get("plain_not_enrolled"),
        10,
    )
    assert s.status()["agents_on_plain"] == ["node2"]


def test_off_warns_at_the_start_of_both_daemons(site, caplog):
    s = site("off")
    with caplog.at_level(logging.WARNING):
        s.start()
        a = s.agent(s.node_cfg("node1"), "node1")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum('security.curve = "off"' in w and "any node name" in w for w in warnings) == 2
    job_event(a, 60)
    assert run_for(10, a, until=lambda: a.outbox.depth() == 0)


def test_a_missing_key_stops_either_daemon_with_one_line_naming_file_and_command(site):
    s = site()
    proc = subprocess.run(
        [str(BIN / "nomade-aggregator"), "--config", str(s.config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert s.cfg.security.server_secret() in lines[0] and "nomadectl init" in lines[0]
    s.ctl("init")
    node_toml = s.root / "node1.toml"
    node_toml.write_text(s.config.read_text())
    proc = subprocess.run(
        [str(BIN / "nomade-agent"), "--config", str(node_toml), "--node", "node1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "node1.key_secret" in lines[0] and "nomade-agent --make-key --node node1" in lines[0]
    make = [str(BIN / "nomade-agent"), "--config", str(node_toml), "--make-key", "--node", "node1"]
    first = subprocess.run(make, capture_output=True, text=True, timeout=30, check=True).stdout
    again = subprocess.run(make, capture_output=True, text=True, timeout=30, check=True).stdout
    node, key = first.split()
    assert node == "node1" and first == again and len(key) == 40
    assert os.stat(s.cfg.security.node_secret("node1")).st_mode & 0o777 == 0o600


def test_a_thousand_nodes_enrol_in_one_command_and_a_bad_line_is_named(site):
    s = site()
    s.ctl("init")
    lines = [f"node{i}: node{i} {zmq.curve_keypair()[0].decode()}" for i in range(1000)]
    out = s.ctl("keys", "add", "--file", "-", input="\n".join(lines) + "\n")
    assert out.startswith("1000 enrolled")
    assert len(json.loads(s.ctl("keys", "list", "--json"))) == 1000
    conn = sqlite3.connect(s.cfg.database)
    log = conn.execute("SELECT uid, user, action FROM admin_log").fetchall()
    assert log == [(0, "root", "keys add")]
    bad = ["# collected with pdsh", f"new1 {zmq.curve_keypair()[0].decode()}", "new2 not-a-key"]
    out = s.ctl("keys", "add", "--file", "-", input="\n".join(bad) + "\n", ok=False)
    assert "-:3:" in out and "Traceback" not in out
    again = s.ctl("keys", "add", "node5", zmq.curve_keypair()[0].decode(), ok=False)
    assert "--replace" in again
    assert conn.execute("SELECT count(*) FROM agent_keys").fetchone()[0] == 1000
    conn.close()


def test_key_commands_are_for_root_only():
    nomadectl = Path(SITE_NOMADECTL)
    if not nomadectl.exists() or subprocess.run(["id", "alice"], capture_output=True).returncode:
        required("needs /usr/local/bin/nomadectl (slurm-conf/install-nomade.sh) and user alice")
    for args in (["keys", "list"], ["keys", "revoke", "node1"], ["keys", "rotate-server"]):
        proc = subprocess.run(
            ["runuser", "-u", "alice", "--", str(nomadectl), *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr
        assert "only root may manage agent keys" in lines[0]


def test_a_node_given_a_new_key_delivers_once_enrolled_again_without_a_restart(site):
    s = site()
    s.start()
    cfg, a = delivering(s, "node1", 70)
    s.ctl("keys", "revoke", "node1")  # a reinstalled node: its old key revoked ...
    line = curvekeys.make(cfg.security, "node1", force=True)  # ... a new pair made on it
    time.sleep(1.5)
    job_event(a, 71)
    run_for(2, a)
    assert a.outbox.depth() == 1, "delivered before the new key was enrolled"
    s.ctl("keys", "add", *line.split())  # ... and enrolled: the running agent gets in
    assert run_for(15, a, until=lambda: a.outbox.depth() == 0), "not delivered after re-enrolment"


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda c: os.chmod(c.security.server_public(), 0o666), "chmod 644"),
        (lambda c: os.chmod(c.security.node_secret("node1"), 0o644), "chmod 600"),
        (lambda c: os.chmod(c.security.keys_dir, 0o777), "keys directory may be written"),
        (lambda c: os.chown(c.security.server_public(), 2002, -1), "owned by uid 2002"),
    ],
)
def test_a_key_file_others_could_change_stops_the_agent_with_what_to_do(site, change, expected):
    """A user who could replace server.key on a node could make it trust a fake aggregator."""
    s = site()
    s.ctl("init")
    cfg, _ = s.make_node("node1", enrol=False)
    change(cfg)
    with pytest.raises(keys.Unsafe) as err:
        curvekeys.load(cfg.security, "node1")
    assert expected in str(err.value) and "--make-key" not in str(err.value)


def test_a_node_cannot_enrol_a_key_for_another_node(site):
    s = site()
    s.ctl("init")
    key = zmq.curve_keypair()[0].decode()
    out = s.ctl("keys", "add", "--file", "-", input=f"node17: node99 {key}\n", ok=False)
    assert "node17" in out and "enrols only itself" in out
    assert json.loads(s.ctl("keys", "list", "--json")) == []
