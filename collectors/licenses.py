"""Software licence servers: FlexLM/FlexNet ``lmutil lmstat -a [-i]`` and RLM
``rlmutil rlmstat -a``.

Both parsers are pure and return records with a ``record`` field (docs/parsers-gpu-licenses.md):

* ``server``: one licence server or vendor/ISV daemon, up or down;
* ``feature``: one licensed feature/product: issued, in use, expiry as printed;
* ``checkout``: one user's checkout (or queued request) of a feature.

Dates and times stay as the tools print them (they carry no year or time zone).  Lines the
parsers do not know are skipped, so a newer lmutil or rlmutil does not break them; text that
holds none of the lines they know raises ParseError.  ``read_lmstat``/``read_rlmstat`` run the
tools with a timeout.
"""

from __future__ import annotations

import logging
import re
import subprocess
from typing import Any

from nomade_common.config import Config
from nomade_common.errors import ParseError

log = logging.getLogger(__name__)

SERVER_FIELDS = ("kind", "name", "host", "port", "up", "version", "master", "message")
FEATURE_FIELDS = (
    "vendor",
    "feature",
    "version",
    "issued",
    "in_use",
    "reserved",
    "expiry",
    "license_type",
    "message",
)
CHECKOUT_FIELDS = (
    "vendor",
    "feature",
    "version",
    "user",
    "host",
    "display",
    "server",
    "handle",
    "start",
    "count",
    "state",
)


def _record(record: str, names: tuple[str, ...], **values: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"record": record}
    out.update((name, values.get(name)) for name in names)
    return out


# ---------------------------------------------------------------------------------------------
# FlexLM lmstat

_LM_STATUS = re.compile(r"^License server status:\s*(\S+)")
_LM_UP = re.compile(
    r"^\s*(\S+): license server (UP|DOWN)\b(?:\s*\((MASTER)\))?(?:\s*(v\S+))?(.*)$", re.I
)
_LM_VENDOR_BLOCK = re.compile(r"^Vendor daemon status \(on (\S+?)\):")
_LM_VENDOR = re.compile(r"^\s*(\S+):\s+(.*)$")
# Counts and ports are read with _integer (ASCII digits only, None past 20 of them).  The
# patterns are written so that a failing match does not backtrack over a run of spaces or a
# long token: each piece can end in one place only (a feature name holds no ':', a checkout's
# user, host and display no '(', its server no '/'), so a hostile line costs time linear in
# its length.
_LM_USERS = re.compile(r"^Users of ([^\s:]+):\s*\((.*)\)\s*$")
_LM_TOTALS = re.compile(
    r"Total of ([0-9]+) licenses? issued;\s*Total of ([0-9]+) licenses? in use", re.I
)
_LM_FEATURE = re.compile(r'^\s*"([^"]+)" v(\S+?), vendor: ([^,\s]+)(?:, expiry: (\S+))?')
_LM_CHECKOUT = re.compile(
    r"^\s+([^\s(][^(]*?) \(v([^)]*)\) \(([^\s/]+)/([0-9]+) \s*([^\s)][^)]*)\)(.*)$"
)
_LM_START = re.compile(r"^,\s*start (.+?)(?:,\s*([0-9]+) licenses?)?$")  # REST stripped
_LM_QUEUED = re.compile(r"queued for ([0-9]+) licenses?")
_LM_DOWN = re.compile(r"(lmgrd is not running|Cannot connect to license server|Cannot find)", re.I)


def _integer(raw: str | None) -> int | None:
    """RAW as an int where it is 1 to 20 ASCII digits (no count or port has more), else None."""
    if raw is not None and 0 < len(raw) <= 20 and raw.isascii() and raw.isdigit():
        return int(raw)
    return None


def _host_port(name: str, host: str) -> int | None:
    """The port of ``host`` in a ``port@host[,port@host...]`` list."""
    for part in name.split(","):
        port, _, at = part.partition("@")
        if at.lower() == host.lower() and _integer(port) is not None:
            return int(port)
    return None


class _LmState:
    def __init__(self) -> None:
        self.out: list[dict[str, Any]] = []
        self.server: str | None = None
        self.server_seen = False
        self.vendor_block = False
        self.feature: dict[str, Any] | None = None
        self.features: dict[str, dict[str, Any]] = {}
        self.table: list[str] | None = None
        self.vendor_host: str | None = None
        self.known = False


def _lm_server_line(s: _LmState, line: str) -> bool:
    if match := _LM_STATUS.match(line):
        s.server, s.server_seen, s.vendor_block, s.feature = match.group(1), False, False, None
        return True
    if (match := _LM_UP.match(line)) and s.server:
        host, state, master, version, rest = match.groups()
        s.out.append(
            _record(
                "server",
                SERVER_FIELDS,
                kind="lmgrd",
                name=s.server,
                host=host,
                port=_host_port(s.server, host),
                up=state.upper() == "UP",
                version=version,
                master=master is not None if state.upper() == "UP" else None,
                message=rest.strip() or None,
            )
        )
        s.server_seen = True
        return True
    if s.server and not s.server_seen and _LM_DOWN.search(line):
        host = s.server.split(",")[0].partition("@")[2] or None
        s.out.append(
            _record(
                "server",
                SERVER_FIELDS,
                kind="lmgrd",
                name=s.server,
                host=host,
                port=_host_port(s.server, host or ""),
                up=False,
                message=line.strip(),
            )
        )
        s.server_seen = True
        return True
    return False


def _lm_vendor_line(s: _LmState, line: str) -> bool:
    if match := _LM_VENDOR_BLOCK.match(line):
        s.vendor_block, s.vendor_host = True, match.group(1)
        return True
    if not s.vendor_block:
        return False
    match = _LM_VENDOR.match(line)
    if match is None or line.startswith("Feature usage info"):
        s.vendor_block = False
        return False
    name, rest = match.groups()
    up = rest.startswith("UP")
    version = rest.split()[1] if up and len(rest.split()) > 1 else None
    s.out.append(
        _record(
            "server",
            SERVER_FIELDS,
            kind="vendor",
            name=name,
            host=s.vendor_host,
            port=None,
            up=up,
            version=version,
            message=None if up else rest.strip(),
        )
    )
    return True


def _lm_feature_line(s: _LmState, line: str) -> bool:
    if match := _LM_USERS.match(line):
        s.vendor_block = False
        name, inner = match.groups()
        totals = _LM_TOTALS.search(inner)
        s.feature = _record(
            "feature",
            FEATURE_FIELDS,
            feature=name,
            issued=_integer(totals.group(1)) if totals else None,
            in_use=_integer(totals.group(2)) if totals else None,
            message=None if totals else inner.strip(),
        )
        s.features.setdefault(name, s.feature)
        s.out.append(s.feature)
        return True
    if (match := _LM_FEATURE.match(line)) and s.feature is not None:
        _name, version, vendor, expiry = match.groups()
        if s.feature["version"] is None:
            s.feature.update(version=version, vendor=vendor, expiry=expiry)
        return True
    stripped = line.strip()
    if s.feature is not None and stripped.endswith("license") and " " not in stripped[:-8]:
        s.feature["license_type"] = s.feature["license_type"] or stripped[:-8].strip()
        return True
    if stripped.startswith(("nodelocked license", "uncounted")) and s.feature is not None:
        s.feature["license_type"] = s.feature["license_type"] or stripped
        return True
    return False


def _lm_checkout_line(s: _LmState, line: str, number: int, source: str) -> bool:
    if s.feature is None or not (match := _LM_CHECKOUT.match(line)):
        return False
    who, version, server, port, handle, rest = match.groups()
    parts = who.split()
    if len(parts) < 2:
        raise ParseError(source, number, f"checkout line without user and host: {line.strip()!r}")
    user, host, display = (
        (" ".join(parts[:-2]), parts[-2], parts[-1]) if len(parts) >= 3 else (*parts, None)
    )
    start = count = None
    state = "in_use"
    if started := _LM_START.match(rest.rstrip()):
        start, count = started.group(1), _integer(started.group(2) or "1")
    elif queued := _LM_QUEUED.search(rest):
        state, count = "queued", _integer(queued.group(1))
    s.out.append(
        _record(
            "checkout",
            CHECKOUT_FIELDS,
            vendor=s.feature["vendor"],
            feature=s.feature["feature"],
            version=version,
            user=user,
            host=host,
            display=display,
            server=f"{port}@{server}",
            handle=handle.split()[0],
            start=start,
            count=count,
            state=state,
        )
    )
    return True


def _lm_table_line(s: _LmState, line: str) -> bool:
    """``lmstat -i``: a 'Feature Version #licenses Expires Vendor' table (any column order)."""
    tokens = line.split()
    if tokens[:1] == ["Feature"] and "Expires" in tokens:
        s.table = [t.lower().lstrip("#") for t in tokens]
        s.feature = None
        return True
    if s.table is None:
        return False
    if set(line.strip()) <= {"_", " "}:
        return True
    if len(tokens) != len(s.table):
        s.table = None
        return False
    row = dict(zip(s.table, tokens, strict=True))
    name = row.get("feature", "")
    known = s.features.get(name)
    if known is None:
        known = _record("feature", FEATURE_FIELDS, feature=name)
        s.features[name] = known
        s.out.append(known)
    issued = row.get("licenses")
    known.update(
        version=known["version"] or row.get("version"),
        vendor=known["vendor"] or row.get("vendor"),
        expiry=row.get("expires") or known["expiry"],
        issued=known["issued"] if known["issued"] is not None else _count(issued),
    )
    return True


def _count(raw: str | None) -> int | None:
    return _integer(raw)


def parse_lmstat(text: str, source: str = "lmstat -a") -> list[dict[str, Any]]:
    """``lmutil lmstat -a`` (and ``-i`` tables): servers, vendor daemons, features, checkouts."""
    s = _LmState()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if (
            _lm_server_line(s, line)
            or _lm_vendor_line(s, line)
            or _lm_feature_line(s, line)
            or _lm_checkout_line(s, line, number, source)
            or _lm_table_line(s, line)
        ):
            s.known = True
    if not s.known:
        raise ParseError(source, 1 if text.strip() else None, "no lmstat output in this text")
    return s.out


# ---------------------------------------------------------------------------------------------
# RLM rlmstat

_RLM_STATUS = re.compile(r"^rlm status on (\S+) \(port ([0-9]+)\)")
_RLM_VERSION = re.compile(r"^(\S+) software version (v\S+)")
_RLM_ERROR = re.compile(r"Error connecting to \"?(\w+)\"? server", re.I)
_RLM_ISV_ROW = re.compile(r"^(\S+)\s+([0-9]+)\s+(Yes|No)\s+(\d+)$", re.I)
_RLM_POOL = re.compile(r"^(\S+) license pool status on (\S+) \(port (\d+)\)")
_RLM_USAGE = re.compile(r"^(\S+) license usage status on (\S+) \(port (\d+)\)")
_RLM_PRODUCT = re.compile(r"^(\S+) v(\S+)$")
_RLM_HANDLE = re.compile(
    r"^(\S+) v(\S+?): ([^\s@]+)@(\S+) ([0-9]+)/(\d+) at (.*?\S)\s+\(handle: (\w+)\)(.*)$"
)


def _pairs(line: str) -> dict[str, str]:
    """'count: 20, # reservations: 0, inuse: 2, exp: 31-dec-2024' as a dict."""
    out = {}
    for part in line.split(","):
        key, sep, value = part.partition(":")
        if sep:
            out[key.strip().lstrip("#").strip()] = value.strip()
    return out


class _RlmState:
    def __init__(self) -> None:
        self.out: list[dict[str, Any]] = []
        self.servers: dict[str, dict[str, Any]] = {}
        self.section: str | None = None
        self.isv: str | None = None
        self.host: str | None = None
        self.product: dict[str, Any] | None = None
        self.isv_server: str | None = None
        self.known = False

    def server(self, **values: Any) -> None:
        record = _record("server", SERVER_FIELDS, **values)
        self.servers[values["name"]] = record
        self.out.append(record)


def _rlm_line(s: _RlmState, line: str, number: int, source: str) -> bool:
    if match := _RLM_STATUS.match(line):
        s.host = match.group(1)
        s.server(kind="rlm", name="rlm", host=s.host, port=_integer(match.group(2)), up=True)
        return True
    if match := _RLM_ERROR.search(line):
        s.server(kind="rlm", name=match.group(1), host=s.host, up=False, message=line.strip())
        return True
    if (match := _RLM_VERSION.match(line)) and match.group(1) in s.servers:
        s.servers[match.group(1)]["version"] = match.group(2)
        return True
    if line.split()[:4] == ["Name", "Port", "Running", "Restarts"]:
        s.section = "isv"
        return True
    if s.section == "isv" and (match := _RLM_ISV_ROW.match(line)):
        name, port, running, restarts = match.groups()
        up = running.lower() == "yes"
        message = None if restarts == "0" else f"{restarts} restarts"
        s.server(kind="isv", name=name, host=s.host, port=_integer(port), up=up, message=message)
        return True
    return _rlm_pool_line(s, line, number, source)


def _rlm_pool_line(s: _RlmState, line: str, number: int, source: str) -> bool:
    for pattern, section in ((_RLM_POOL, "pool"), (_RLM_USAGE, "usage")):
        if match := pattern.match(line):
            s.section, s.isv, s.product = section, match.group(1), None
            s.isv_server = f"{match.group(3)}@{match.group(2)}"
            return True
    if s.section == "pool" and (match := _RLM_PRODUCT.match(line)):
        s.product = _record("feature", FEATURE_FIELDS, vendor=s.isv, feature=match.group(1))
        s.product["version"] = match.group(2)
        s.out.append(s.product)
        return True
    if s.section == "pool" and s.product is not None and ":" in line:
        pairs = _pairs(line)
        for field, key in (("issued", "count"), ("in_use", "inuse"), ("reserved", "reservations")):
            if key in pairs:
                value = _integer(pairs[key])
                if value is None:
                    raise ParseError(source, number, f"{key}: {pairs[key][:40]!r} is not a count")
                s.product[field] = value
        if "exp" in pairs:
            s.product["expiry"] = pairs["exp"]
        return bool(pairs)
    if s.section == "usage" and (match := _RLM_HANDLE.match(line)):
        feature, version, user, host, count, _res, at, handle, _rest = match.groups()
        s.out.append(
            _record(
                "checkout",
                CHECKOUT_FIELDS,
                vendor=s.isv,
                feature=feature,
                version=version,
                user=user,
                host=host,
                server=s.isv_server,
                handle=handle,
                start=at,
                count=_integer(count),
                state="in_use",
            )
        )
        return True
    return False


def parse_rlmstat(text: str, source: str = "rlmstat -a") -> list[dict[str, Any]]:
    """``rlmutil rlmstat -a``: the rlm server, ISV servers, license pools and checkouts."""
    s = _RlmState()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line and _rlm_line(s, line, number, source):
            s.known = True
    if not s.known:
        raise ParseError(source, 1 if text.strip() else None, "no rlmstat output in this text")
    return s.out


# ---------------------------------------------------------------------------------------------
# Readers


def _run(argv: list[str], timeout: float) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        log.debug("licenses: %s is not installed", argv[0])
        return None
    # lmstat exits non-zero when a server is down but still prints its status: keep stdout.
    return done.stdout


def read_lmstat(server: str, lmutil: str = "lmutil", timeout: float = 30.0) -> str | None:
    """Stdout of ``lmutil lmstat -a -c <port@host>``; None where lmutil is not installed."""
    return _run([lmutil, "lmstat", "-a", "-c", server], timeout)


def read_rlmstat(server: str, rlmutil: str = "rlmutil", timeout: float = 30.0) -> str | None:
    """Stdout of ``rlmutil rlmstat -a -c <port@host>``; None where rlmutil is not installed."""
    return _run([rlmutil, "rlmstat", "-a", "-c", server], timeout)


# -- the collector (collectors/registry.py) -----------------------------------------------------
def collect(cfg: Config, state: dict[str, Any]) -> list[dict[str, Any]]:
    """Every configured server's features; a server that does not answer is a server record
    with `up: False` (what an admin is alerted on), not a failure of the collector."""
    lc, out = cfg.collectors.licenses, []
    kinds = (
        (lc.flexlm_servers, read_lmstat, parse_lmstat, lc.lmutil, "lmstat", "lmgrd"),
        (lc.rlm_servers, read_rlmstat, parse_rlmstat, lc.rlmutil, "rlmstat", "rlm"),
    )
    for servers, read, parse, tool, command, kind in kinds:
        for server in servers:
            text = read(server, tool)
            source = f"{tool} {command} -a -c {server}"
            out += parse(text, source) if text else [_down(server, kind)]
    return out


def _down(server: str, kind: str) -> dict[str, Any]:
    return {
        "record": "server",
        "name": server,
        "kind": kind,
        "host": None,
        "port": None,
        "master": None,
        "version": None,
        "up": False,
        "message": "did not answer",
    }


def absent(cfg: Config) -> str | None:
    lc = cfg.collectors.licenses
    return None if lc.flexlm_servers or lc.rlm_servers else "no license server configured"
