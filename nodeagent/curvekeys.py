"""The agent's side of CurveZMQ: its own key pair and the aggregator's public key.

With `security.curve` "on" or "rollout" the agent connects with CURVE whatever the address: it
proves its node with `<keys_dir>/<node>.key_secret` (made here by `nomade-agent --make-key`, and
enrolled on the head node with `nomadectl keys add`) and talks only to the server whose public key
is `<keys_dir>/server.key`, so an impostor aggregator gets nothing and can send no verdict.  The
agent looks at server.key every heartbeat: a new one (`nomadectl keys rotate-server`, copied to
the nodes) makes it reconnect with it, and so does a new pair of its own (`nomade-agent
--make-key --force`, enrolled again); its outbox keeps everything meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nomade_common import keys
from nomade_common.config import Security
from nomade_common.errors import ConfigError


@dataclass(frozen=True)
class ClientKeys:
    server: bytes  # the aggregator's public key (Z85)
    public: bytes
    secret: bytes
    stamps: tuple[Stamp, Stamp]  # server.key's and the node's key file's, when they were read


Stamp = tuple[int, int, int] | None  # a file's (inode, mtime, size)


def stamps(sec: Security, node: str) -> tuple[Stamp, Stamp]:
    """What tells that server.key or NODE's own key file changed."""
    return keys.stamp(sec.server_public()), keys.stamp(sec.node_secret(node))


def load(sec: Security, node: str) -> ClientKeys:
    """NODE's pair and the server's public key; ConfigError naming the file and the command
    that makes it."""
    before = stamps(sec, node)
    server, _ = keys.load_or_hint(
        sec.server_public(),
        secret=False,
        hint="copy it from the aggregator's keys_dir, where `nomadectl init` makes it",
    )
    public, secret = keys.load_or_hint(
        sec.node_secret(node),
        secret=True,
        hint=(
            f"make it with `nomade-agent --make-key --node {node}`, then enrol the line it prints "
            "with `nomadectl keys add`"
        ),
    )
    assert secret is not None
    return ClientKeys(server.encode(), public.encode(), secret.encode(), before)


def make(sec: Security, node: str, force: bool = False) -> str:
    """NODE's enrolment line `NODE PUBLIC_KEY`, making the pair first if there is none (or
    FORCE); an existing pair is kept, so running it twice prints the same line."""
    if not keys.NODE_NAME.match(node):
        raise ConfigError(sec.keys_dir, None, f"{node!r} is not a Slurm node name")
    path = sec.node_secret(node)
    if Path(path).exists() and not force:
        public, _ = keys.load(path, secret=True)
    else:
        public = keys.make_pair(sec.keys_dir, node)
    return f"{node} {public}"
