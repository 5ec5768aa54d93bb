"""CurveZMQ key files for NØMADE's agents and aggregator.

A key pair is two small TOML files in `security.keys_dir`:

    NAME.key         public_key = "<Z85>"                      (mode 0644: safe to hand out)
    NAME.key_secret  public_key = "<Z85>"  secret_key = "<Z85>" (mode 0600: never leaves its host)

NAME is `server` for the aggregator and the Slurm node name for an agent.  A node's key pair is
made on the node (`nomade-agent --make-key`), so its secret half never travels; the line that
command prints, `NODE PUBLIC_KEY`, is what `nomadectl keys add` takes, one node or a whole
cluster's collected lines at once.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import zmq
from zmq.utils import z85

from .errors import ConfigError

Z85_KEY = re.compile(r"^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")
NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def valid_key(text: str) -> bool:
    """Whether TEXT is a Z85-encoded 32-byte CURVE public key."""
    if not Z85_KEY.match(text):
        return False
    try:
        return len(z85.decode(text.encode())) == 32
    except (ValueError, KeyError):
        return False


def make_pair(keys_dir: str, name: str, *, owner: int | None = None) -> str:
    """Write a new pair NAME.key / NAME.key_secret (replacing any), owned by OWNER where given
    (the aggregator's service user); return the public key."""
    public, secret = (k.decode() for k in zmq.curve_keypair())
    d = Path(keys_dir)
    if not d.is_dir():
        d.mkdir(parents=True)
        d.chmod(0o755)  # public halves are handed out from here; secret files are 0600
    header = f"# NØMADE CURVE key {name!r}"
    _write(
        d / f"{name}.key_secret",
        f"{header}: secret, keep on this host only\n"
        f'public_key = "{public}"\nsecret_key = "{secret}"\n',
        0o600,
        owner,
    )
    _write(d / f"{name}.key", f'{header}: public\npublic_key = "{public}"\n', 0o644, owner)
    return public


def _write(path: Path, text: str, mode: int, owner: int | None) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    os.fchmod(fd, mode)  # the mode meant, whatever the caller's umask (the agent's is 077)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    if owner is not None:
        os.chown(tmp, owner, -1)
    os.replace(tmp, path)


class Unsafe(ConfigError):
    """A key file, or its directory, that someone other than its owner could have written (or,
    for a secret key, read): refused, as ssh refuses such a private key.  A user who could
    replace the server's public key on a node could put a fake aggregator's in its place."""


def _check_safe(path: Path, st: os.stat_result, secret: bool) -> None:
    trusted = {0, os.geteuid()}
    d = os.stat(path.parent)
    if d.st_uid not in trusted or d.st_mode & 0o022:
        raise Unsafe(
            str(path.parent),
            None,
            f"the keys directory may be written by others "
            f"(owner uid {d.st_uid}, mode {d.st_mode & 0o7777:o}): chmod 755 and chown "
            f"root it",
        )
    if st.st_uid not in trusted:
        raise Unsafe(str(path), None, f"owned by uid {st.st_uid}: chown it to the daemon's user")
    loose = st.st_mode & (0o077 if secret else 0o022)
    if loose:
        want = "600" if secret else "644"
        raise Unsafe(
            str(path),
            None,
            f"mode {st.st_mode & 0o777:o} lets others "
            f"{'read or ' if secret else ''}change it: chmod {want} {path}",
        )


def load(path: str, *, secret: bool) -> tuple[str, str | None]:
    """(public, secret) from a key file; ConfigError naming the file when it is unusable, and
    Unsafe when others could have written it (or read a secret one)."""
    p = Path(path)
    try:
        st = p.stat()
        _check_safe(p, st, secret)
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(path, None, "no such key file") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(path, None, f"cannot read the key ({type(exc).__name__})") from None
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read the key ({exc.strerror or exc})") from None
    public, sec = data.get("public_key"), data.get("secret_key")
    if not isinstance(public, str) or not valid_key(public):
        raise ConfigError(path, "public_key", "expected a 40-character Z85 CURVE key")
    if secret and (not isinstance(sec, str) or not valid_key(sec)):
        raise ConfigError(path, "secret_key", "expected a 40-character Z85 CURVE key")
    return public, sec if secret else None


def load_or_hint(path: str, *, secret: bool, hint: str) -> tuple[str, str | None]:
    """`load`, where a missing or unreadable key says HINT, the command that makes it (an
    unsafe one says how to make it safe instead)."""
    try:
        return load(path, secret=secret)
    except Unsafe:
        raise
    except ConfigError as exc:
        raise ConfigError(path, exc.key, f"{exc.reason} ({hint})") from None


def stamp(path: str) -> tuple[int, int, int] | None:
    """What tells that a key file changed: (inode, mtime, size), None where it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def parse_enrolment(text: str, source: str = "-") -> list[tuple[str, str]]:
    """(node, public key) pairs from lines `NODE PUBLIC_KEY`, as `nomade-agent --make-key`
    prints them; a prefix added by a parallel shell (`node12: `, pdsh and clush) is skipped.
    Blank lines and `#` comments are skipped; anything else raises ValueError naming the line."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) == 3 and words[0].endswith(":"):
            if words[0][:-1] != words[1]:  # a node may speak only for itself
                raise ValueError(
                    f"{source}:{n}: {words[0][:-1]} printed a key for "
                    f"{words[1][:40]!r}: a node enrols only itself"
                )
            words = words[1:]
        if len(words) != 2 or not NODE_NAME.match(words[0]) or not valid_key(words[1]):
            raise ValueError(
                f"{source}:{n}: expected 'NODE PUBLIC_KEY' (a Slurm node name and "
                f"a 40-character Z85 key), got {line[:80]!r}"
            )
        out.append((words[0], words[1]))
    return out
