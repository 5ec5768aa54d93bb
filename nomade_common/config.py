"""NØMADE's configuration: one TOML file parsed into dataclasses and validated at start-up.

Every setting has a default, so an empty file is a valid configuration for a single-host
installation.  An unknown key, a wrong type or a bad value stops start-up with one line that names
the file and the key (ConfigError); nothing is silently ignored or guessed.

The daemons and nomadectl (never the hooks: a job's user sets their environment) also take
`NOMADE_SECTION__KEY` environment variables, which override the file (`load(..., env=...)`).
The sections and keys of NØMADE's design documents that are not NØMADE's own are read through
one table, DESIGN_KEYS: moved to the NØMADE key they mean, with a notice, or refused with a line
that names the replacement.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import ipaddress
import math
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

DEFAULT_PATH = "/etc/nomade/nomade.toml"


@dataclass
class General:
    cluster_name: str = "cluster"
    data_dir: str = "/var/lib/nomade"
    log_level: str = "INFO"


@dataclass
class Agent:
    node: str = ""  # empty: $SLURMD_NODENAME, else the short host name
    aggregator: str = "tcp://127.0.0.1:27010"
    interval_seconds: float = 10.0
    heartbeat_seconds: float = 5.0
    spool_dir: str = "/var/spool/nomade"
    outbox_max_envelopes: int = 100_000
    resend_seconds: float = 5.0
    cgroup_root: str = "/sys/fs/cgroup"
    proc_root: str = "/proc"

    def node_name(self) -> str:
        return self.node or os.environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]


@dataclass
class Aggregator:
    listen: str = "tcp://127.0.0.1:27010"
    http_listen: str = "127.0.0.1:27011"
    database: str = ""  # empty: <data_dir>/nomade.db
    sacct: str = "sacct"
    squeue: str = "squeue"
    scontrol: str = "scontrol"
    reconcile_delay_seconds: float = 2.0
    reconcile_attempts: int = 6
    node_down_seconds: float = 60.0
    queue_snapshot_max_age_seconds: float = 5.0
    batch_max_seconds: float = 0.05
    readings_history_seconds: float = 600.0  # one collector reading per node kept this often
    readings_retention_days: float = 14.0
    # Samples (docs/operations.md, "Storage"): landed envelopes are compacted into chunks once
    # this old, or sooner when more than samples_compact_backlog envelopes wait; raw chunks
    # are kept this many days after a job's last sample, then reduced to a summary and a
    # curve of at most 200 points per node, kept as long as the job's record.
    samples_compact_after_seconds: float = 60.0
    samples_compact_backlog: int = 2000
    samples_raw_retention_days: float = 14.0
    # The store (docs/operations.md, "Durability"): SQLite's synchronous setting, "normal" or
    # "full"; how long a write waits for a lock another process holds before the batch is
    # retried; how long the store may stay unusable before the aggregator exits so that its
    # service manager restarts it.
    store_synchronous: str = "full"
    store_busy_timeout_seconds: float = 5.0
    store_failing_exit_seconds: float = 600.0
    # Bounds on what senders may ask of the aggregator.
    max_message_bytes: int = 8 << 20  # one agent envelope on the ZeroMQ socket
    max_job_nodes: int = 100_000  # a job's node list naming more nodes is refused unexpanded
    sample_future_seconds: float = 300.0  # samples stamped further ahead of this clock: refused
    sample_max_age_days: float = 30.0  # samples older than this: refused


@dataclass
class Hooks:
    prefix: str = "/opt/nomade/hooks"
    timeout_seconds: float = 1.0
    aggregator_url: str = "http://127.0.0.1:27011"
    state_dir: str = "/var/spool/nomade/hooks"
    task_notice: bool = False
    breaker_failures: int = 3
    breaker_seconds: float = 60.0
    # How PrologSlurmctld and EpilogSlurmctld reach the aggregator: "spool" leaves each report
    # as a file in <state_dir>/reports, which the aggregator (on the same host) takes within
    # 20 ms; "http" posts it; "auto" is spool when aggregator_url names a loopback address.
    controller_transport: str = "auto"

    @property
    def reports_dir(self) -> str:
        """Where the head-node hooks leave their reports for the aggregator (spool transport)."""
        return str(Path(self.state_dir) / "reports")

    def controller_spool(self) -> bool:
        """Whether the head-node hooks report through reports_dir rather than over HTTP."""
        if self.controller_transport != "auto":
            return self.controller_transport == "spool"
        netloc = self.aggregator_url.partition("://")[2].split("/")[0]
        host = netloc[1:].partition("]")[0] if netloc.startswith("[") else netloc.partition(":")[0]
        return is_loopback(host)


def is_loopback(host: str) -> bool:
    """Whether HOST (a name or an address) is this host's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Security:
    """Who may reach the aggregator (docs/security.md).  Secure is the default."""

    # CurveZMQ between agents and aggregator: "on" (only enrolled node keys, and agents talk only
    # to the configured server key), "rollout" (CURVE on aggregator.listen and, for agents not
    # moved yet, plain ZeroMQ on plain_listen), or "off" (no authentication; warns at every start).
    curve: str = "on"
    keys_dir: str = "/etc/nomade/keys"  # server.key (public), server.key_secret, <node>.key_secret
    plain_listen: str = ""  # rollout only: the address the not-yet-moved agents use
    # HTTP: every endpoint but /api/v1/health needs a MUNGE credential; hook reports must come
    # from root or slurm_user; a user is answered for the credential's uid; root and these users
    # and groups see everything.
    slurm_user: str = "slurm"
    admin_users: list = field(default_factory=list)
    admin_groups: list = field(default_factory=list)
    credential_max_age_seconds: float = 60.0  # besides munged's own TTL and replay cache
    # What users may not see beyond their own jobs: "auto" reads Slurm's PrivateData; or a
    # comma-separated list of its flags (jobs, nodes, partitions, usage, users, accounts).
    private_data: str = "auto"
    # HTTP that leaves loopback needs TLS: certificate and key for the aggregator; clients verify
    # it against tls_ca (default: the system's trust store).
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    munge_socket: str = ""  # empty: libmunge's default (/run/munge/munge.socket.2)

    def server_public(self) -> str:
        return str(Path(self.keys_dir) / "server.key")

    def server_secret(self) -> str:
        return str(Path(self.keys_dir) / "server.key_secret")

    def node_secret(self, node: str) -> str:
        return str(Path(self.keys_dir) / f"{node}.key_secret")

    def slurm_uid(self) -> int | None:
        """The uid of slurm_user here (None where there is no such user)."""
        import pwd

        try:
            return pwd.getpwnam(self.slurm_user).pw_uid
        except KeyError:
            return None


@dataclass
class Models:
    warn_threshold: float = 0.5  # a job whose failure probability reaches this gets a warning
    retrain_interval_hours: float = 0.0  # 0: retrain only by hand (nomadectl train)
    cost_missed_failure: float = 5.0
    cost_false_alarm: float = 1.0
    # Right-sizing advice (--mem, --time) printed into a starting job's output: "always" (every
    # job whose request is far from what its user's similar jobs needed), "risky" (only jobs
    # that get a failure warning), "never".  `nomadectl check` always gives it.
    advice: str = "risky"


@dataclass
class Alerts:
    """How alerts leave the aggregator (docs/alerts.md).  Channels are off until named here; the
    SMTP password and the webhook URLs are secrets and live in secrets_file (0600), never here."""

    enabled: bool = True  # false: no alert is sent on any channel
    email: bool = False
    email_to: list = field(default_factory=list)
    email_from: str = ""  # empty: nomade@<this host's fully qualified name>
    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_starttls: bool = False
    smtp_user: str = ""  # empty: no login; else smtp_password in secrets_file
    smtp_ca: str = ""  # the CA of the SMTP server's certificate; empty: the system's trust store
    slack: bool = False  # slack_webhook in secrets_file
    webhook: bool = False  # webhook_url (and webhook_token) in secrets_file
    secrets_file: str = "/etc/nomade/alerts-secrets.toml"
    notify_job_users: bool = False  # job-level alerts also mailed to <user>@<user_mail_domain>
    user_mail_domain: str = ""
    retry_attempts: int = 5
    retry_max_seconds: float = 300.0
    timeout_seconds: float = 10.0  # one attempt: connect, send, answer
    queue_size: int = 1000
    evaluate_seconds: float = 1.0  # how often the rules are evaluated
    # [[alerts.rules]]: one table per rule (docs/alerts.md, "Rules"), checked by the aggregator
    # at its start and on SIGHUP (aggregator/alerts/rules.py); none: nothing is evaluated.
    rules: list = field(default_factory=list)


# -- collectors ----------------------------------------------------------------------------------
# Each collector is a table of its own, [collectors.NAME], with `enabled` and `interval_seconds`
# and the settings only it has.  Node collectors run in nomade-agent, head collectors in
# nomade-aggregator (collectors/registry.py lists them).


@dataclass
class Every:
    enabled: bool = True
    interval_seconds: float = 60.0


def _every(seconds: float, enabled: bool = True):
    return field(default_factory=lambda: Every(enabled, seconds))


@dataclass
class GpuCollector:
    enabled: bool = True
    interval_seconds: float = 30.0
    nvidia_smi: str = "nvidia-smi"  # the fallback where the nvidia-ml-py package is missing


@dataclass
class DiskCollector:
    enabled: bool = True
    interval_seconds: float = 300.0
    filesystems: list = field(default_factory=lambda: ["/"])
    probe_timeout_seconds: float = 5.0  # a hung (NFS) mount is reported, never waited for
    quota_filesystems: list = field(default_factory=list)  # repquota -u/-g on these (root)
    lustre_filesystems: list = field(default_factory=list)  # lfs quota on these


@dataclass
class HealthCollector:
    enabled: bool = True
    interval_seconds: float = 300.0
    services: list = field(default_factory=lambda: ["slurmd", "munged"])
    kernel_log: bool = True  # hardware errors from dmesg (root)


@dataclass
class ScratchCollector:
    enabled: bool = False  # walks directories: off unless a site asks for it
    interval_seconds: float = 3600.0
    paths: list = field(default_factory=list)
    large_bytes: int = 10 << 30
    stale_days: float = 30.0
    max_entries: int = 200_000
    max_seconds: float = 20.0


@dataclass
class LicenseCollector:
    enabled: bool = True  # skipped where no server is configured
    interval_seconds: float = 300.0
    flexlm_servers: list = field(default_factory=list)  # "port@host"
    rlm_servers: list = field(default_factory=list)
    lmutil: str = "lmutil"
    rlmutil: str = "rlmutil"


@dataclass
class SacctCollector:
    enabled: bool = True
    interval_seconds: float = 300.0
    overlap_seconds: float = 600.0  # each run reads jobs ended since the last run, less this


@dataclass
class Collectors:
    # node (nomade-agent)
    iostat: Every = _every(60.0)
    mpstat: Every = _every(60.0)
    vmstat: Every = _every(60.0)
    pressure: Every = _every(30.0)
    gpu: GpuCollector = field(default_factory=GpuCollector)
    nfs: Every = _every(60.0)
    disk: DiskCollector = field(default_factory=DiskCollector)
    health: HealthCollector = field(default_factory=HealthCollector)
    scratch: ScratchCollector = field(default_factory=ScratchCollector)
    # head node (nomade-aggregator)
    queue: Every = _every(60.0)
    partitions: Every = _every(60.0)
    node_state: Every = _every(60.0)
    fairshare: Every = _every(300.0)
    scheduler: Every = _every(300.0)
    licenses: LicenseCollector = field(default_factory=LicenseCollector)
    job_history: SacctCollector = field(default_factory=SacctCollector)


@dataclass
class Config:
    general: General = field(default_factory=General)
    agent: Agent = field(default_factory=Agent)
    aggregator: Aggregator = field(default_factory=Aggregator)
    hooks: Hooks = field(default_factory=Hooks)
    models: Models = field(default_factory=Models)
    security: Security = field(default_factory=Security)
    collectors: Collectors = field(default_factory=Collectors)
    alerts: Alerts = field(default_factory=Alerts)
    path: str = "<defaults>"
    # What the daemon logs once logging is set up: design keys read as NØMADE's own.
    notices: list = field(default_factory=list)

    @property
    def database(self) -> str:
        return self.aggregator.database or str(Path(self.general.data_dir) / "nomade.db")


_SECTIONS = {
    "general": General,
    "agent": Agent,
    "aggregator": Aggregator,
    "hooks": Hooks,
    "models": Models,
    "security": Security,
    "collectors": Collectors,
    "alerts": Alerts,
}
_LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR"}


# Settings that are lists of tables ([[alerts.rules]]): their tables' own keys are checked by
# the part that reads them.
TABLE_LISTS = frozenset({"alerts.rules"})


def _section(path: str, name: str, cls: type, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(path, name, "expected a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(
                path, f"{name}.{key}", f"unknown setting (known: {', '.join(fields)})"
            )
        default = getattr(cls(), key)
        if dataclasses.is_dataclass(default):  # a sub-table, e.g. [collectors.disk]
            values[key] = _section(path, f"{name}.{key}", type(default), value)
            continue
        want = type(default)
        if f"{name}.{key}" in TABLE_LISTS:
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise ConfigError(path, f"{name}.{key}", f"expected [[{name}.{key}]] tables")
            values[key] = value
            continue
        if want is list and isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise ConfigError(path, f"{name}.{key}", "expected a list of strings")
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:  # beyond any float
                why = f"must be finite, got {_shown(value)}"
                raise ConfigError(path, f"{name}.{key}", why) from None
        if type(value) is not want:
            raise ConfigError(
                path, f"{name}.{key}", f"expected {want.__name__}, got {type(value).__name__}"
            )
        values[key] = value
    return cls(**values)


# The range of every number in the configuration, inclusive: (key, low, high), a `*` matching
# any collector.  Floats must also be finite.  tests/test_config.py checks that every int and
# float setting has a row here, and that a value outside it names its key.
_RANGES = [
    ("agent.interval_seconds", 1, 3600),
    ("agent.heartbeat_seconds", 0.5, 600),
    ("agent.outbox_max_envelopes", 10, 100_000_000),
    ("agent.resend_seconds", 0.1, 3600),
    ("aggregator.reconcile_delay_seconds", 0.1, 3600),
    ("aggregator.reconcile_attempts", 1, 20),  # retry i waits delay * 2**i
    ("aggregator.node_down_seconds", 5, 86400),
    ("aggregator.queue_snapshot_max_age_seconds", 0, 3600),
    ("aggregator.batch_max_seconds", 0, 10),
    ("aggregator.readings_history_seconds", 1, 86400),
    ("alerts.evaluate_seconds", 0.1, 3600),
    ("aggregator.readings_retention_days", 0.01, 3650),
    ("aggregator.samples_compact_after_seconds", 1, 3600),
    ("aggregator.samples_compact_backlog", 10, 1_000_000),
    ("aggregator.samples_raw_retention_days", 0.01, 3650),
    ("aggregator.store_busy_timeout_seconds", 0.1, 600),
    ("aggregator.store_failing_exit_seconds", 10, 86400),
    ("aggregator.max_message_bytes", 8 << 20, 1 << 30),  # agents split at 4 MiB (wire.py)
    ("aggregator.max_job_nodes", 1, 10_000_000),
    ("aggregator.sample_future_seconds", 1, 86400),
    ("aggregator.sample_max_age_days", 0.01, 3650),
    ("hooks.timeout_seconds", 0.1, 30),
    ("hooks.breaker_failures", 1, 1000),
    ("hooks.breaker_seconds", 1, 86400),  # the hooks read it as whole seconds
    ("models.warn_threshold", 0.001, 0.999),
    ("models.retrain_interval_hours", 0, 8760),  # 0: only by hand
    ("models.cost_missed_failure", 0.001, 1_000_000),
    ("models.cost_false_alarm", 0.001, 1_000_000),
    ("security.credential_max_age_seconds", 1, 3600),
    ("collectors.*.interval_seconds", 1, 86400),
    ("collectors.disk.probe_timeout_seconds", 0.1, 300),
    ("collectors.scratch.large_bytes", 1, 1 << 50),
    ("collectors.scratch.stale_days", 0.01, 36500),
    ("collectors.scratch.max_entries", 1, 1_000_000_000),
    ("collectors.scratch.max_seconds", 0.1, 3600),
    ("collectors.job_history.overlap_seconds", 0, 86400),
    ("alerts.smtp_port", 1, 65535),
    ("alerts.retry_attempts", 1, 20),  # retry i waits 2**i seconds, within retry_max_seconds
    ("alerts.retry_max_seconds", 0, 86400),
    ("alerts.timeout_seconds", 0.1, 600),
    ("alerts.queue_size", 1, 1_000_000),
]


def number_settings(cfg: Config) -> dict[str, int | float]:
    """Every int and float setting of CFG by its dotted key, e.g.
    collectors.disk.interval_seconds."""

    def walk(obj: Any, prefix: str):
        for f in dataclasses.fields(obj):
            value, key = getattr(obj, f.name), f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value):
                yield from walk(value, f"{key}.")
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                yield key, value

    return {k: v for name in _SECTIONS for k, v in walk(getattr(cfg, name), f"{name}.")}


def range_of(key: str) -> tuple[float, float] | None:
    """The (low, high) that KEY must lie within (None: a setting missing from _RANGES)."""
    return next(((lo, hi) for pat, lo, hi in _RANGES if fnmatch.fnmatchcase(key, pat)), None)


def _shown(value: Any) -> str:
    """VALUE for a message: -1 rather than -1.0, and at most 40 characters."""
    text = repr(value)
    text = text[:-2] if isinstance(value, float) and text.endswith(".0") else text
    return text if len(text) <= 40 else text[:37] + "..."


def _address_problem(address: str, zmq: bool) -> str | None:
    """Why ADDRESS is not tcp://HOST:PORT or ipc://PATH (ZMQ), or HOST:PORT; None if it is.

    HOST is not empty (an IPv6 address in brackets), PORT is 1 to 65535: these are addresses
    that others connect to, so port 0 (any free port) and ZeroMQ's `*` are refused."""
    if zmq:
        scheme, sep, address = address.partition("://")
        if not sep or scheme not in ("tcp", "ipc"):
            return "expected a ZeroMQ address like tcp://HOST:PORT or ipc://PATH"
        if scheme == "ipc":
            return None if address else "expected ipc://PATH"
        address = address.rpartition(";")[2]  # ZeroMQ's tcp://SOURCE;HOST:PORT
    host, _, port = address.rpartition(":")
    bare = host[1:-1] if host[:1] == "[" and host[-1:] == "]" else host
    if not bare or "[" in bare or "]" in bare or (":" in bare and bare == host):
        return "expected HOST:PORT (an IPv6 address as [ADDRESS]:PORT)"
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        return "the port must be between 1 and 65535"
    return None


def _validate(cfg: Config) -> None:
    for key, value in number_settings(cfg).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(cfg.path, key, f"must be finite, got {value!r}")
        low, high = range_of(key) or (value, value)
        if not low <= value <= high:
            bounds = f"between {_shown(low)} and {_shown(high)}"
            raise ConfigError(cfg.path, key, f"must be {bounds}, got {_shown(value)}")
    checks = [
        (
            "general.log_level",
            cfg.general.log_level.upper() in _LOG_LEVELS,
            "one of DEBUG, INFO, WARNING, ERROR",
        ),
        (
            "hooks.controller_transport",
            cfg.hooks.controller_transport in ("auto", "spool", "http"),
            "one of auto, spool, http",
        ),
        (
            "aggregator.store_synchronous",
            cfg.aggregator.store_synchronous in ("normal", "full"),
            "one of normal, full",
        ),
        (
            "models.advice",
            cfg.models.advice in ("always", "risky", "never"),
            "one of always, risky, never",
        ),
        (
            "security.curve",
            cfg.security.curve in ("on", "rollout", "off"),
            "one of on, rollout, off",
        ),
        (
            "security.plain_listen",
            cfg.security.curve != "rollout"
            or (
                cfg.security.plain_listen.startswith("tcp://")
                and cfg.security.plain_listen != cfg.aggregator.listen
            ),
            "a tcp:// address other than aggregator.listen when curve is rollout",
        ),
        (
            "security.tls_key",
            bool(cfg.security.tls_cert) == bool(cfg.security.tls_key),
            "set together with security.tls_cert",
        ),
    ]
    for key, ok, expected in checks:
        if not ok:
            raise ConfigError(cfg.path, key, f"must be {expected}")
    _validate_alerts(cfg)
    addresses = [
        ("agent.aggregator", cfg.agent.aggregator, True),
        ("aggregator.listen", cfg.aggregator.listen, True),
        ("aggregator.http_listen", cfg.aggregator.http_listen, False),
    ]
    if cfg.security.plain_listen:  # empty: none (required in rollout, checked above)
        addresses.append(("security.plain_listen", cfg.security.plain_listen, True))
    for key, address, zmq in addresses:
        problem = _address_problem(address, zmq)
        if problem:
            raise ConfigError(cfg.path, key, f"{problem}, got {_shown(address)}")


_MAIL_ADDRESS = re.compile(r"[^\s@<>()\[\],;:\\\"]+@[A-Za-z0-9.-]+")
_MAIL_HOST = re.compile(r"[A-Za-z0-9._:-]+")  # a name, an IPv4 or a bare IPv6 address
_MAIL_DOMAIN = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")


def _validate_alerts(cfg: Config) -> None:
    """[alerts]: addresses that are addresses, and what a channel that is on needs."""
    a, path = cfg.alerts, cfg.path
    for i, address in enumerate(a.email_to):
        if not _MAIL_ADDRESS.fullmatch(address):
            why = f"expected mail addresses like admin@example.org, got {_shown(address)}"
            raise ConfigError(path, "alerts.email_to", f"item {i + 1}: {why}")
    problems = [
        (
            "alerts.email_from",
            a.email_from and not _MAIL_ADDRESS.fullmatch(a.email_from),
            f"must be a mail address like nomade@example.org, got {_shown(a.email_from)}",
        ),
        (
            "alerts.email_to",
            a.email and not a.email_to,
            "must name at least one address when alerts.email is true",
        ),
        (
            "alerts.user_mail_domain",
            a.user_mail_domain and not _MAIL_DOMAIN.fullmatch(a.user_mail_domain),
            f"must be a mail domain like example.org, got {_shown(a.user_mail_domain)}",
        ),
        (
            "alerts.user_mail_domain",
            a.notify_job_users and not a.user_mail_domain,
            "must be set when alerts.notify_job_users is true (users are mailed at USER@DOMAIN)",
        ),
        (
            "alerts.smtp_host",
            not _MAIL_HOST.fullmatch(a.smtp_host),
            f"must be a host name or address, got {_shown(a.smtp_host)}",
        ),
        (
            "alerts.smtp_user",
            a.smtp_user and not a.smtp_starttls and not is_loopback(a.smtp_host),
            "needs alerts.smtp_starttls = true: the password is not sent in the clear",
        ),
        (
            "alerts.secrets_file",
            not a.secrets_file or not a.secrets_file.startswith("/"),
            f"must be an absolute path, got {_shown(a.secrets_file)}",
        ),
    ]
    for key, bad, why in problems:
        if bad:
            raise ConfigError(path, key, why)


# -- the design documents' sections and keys ----------------------------------------------------
# NØMADE's design shows sections and keys that are not NØMADE's own.  Each is read through one
# row here: Moved to the NØMADE key (or keys) it means, with a notice naming them; Kept where it
# asks for what NØMADE always does (any other value is refused with WHY); Refused with a line
# that names the replacement or what will bring it.  A row may name a whole table (`alerts`) and
# then covers every key under it.  Rows are read only for what NØMADE does not know itself: when
# a section becomes NØMADE's own (issue 17's [alerts]), its row is removed, and
# tests/test_config_design_keys.py fails until it is.  docs/configuration.md lists every row.


@dataclass(frozen=True)
class Moved:
    to: tuple[str, ...]
    convert: Callable[[Any], Any] | None = None  # applied to a number
    how: str = ""  # the conversion, in words


@dataclass(frozen=True)
class Kept:
    value: Any
    why: str


@dataclass(frozen=True)
class Refused:
    why: str


_SLURM = ("queue", "partitions")  # the design's slurm collector: squeue and sinfo
_BY_PROCESS = (
    "not a NØMADE setting: the agent measures each job's I/O per process, whatever the path"
)

_A_RULE = "a threshold is an alert rule in NØMADE: an [[alerts.rules]] table (docs/alerts.md)"

DESIGN_KEYS: dict[str, Moved | Kept | Refused] = {
    "monitor.sample_interval": Moved(("agent.interval_seconds",)),
    "monitor.nfs_paths": Refused(_BY_PROCESS),
    "monitor.local_paths": Refused(_BY_PROCESS),
    "monitor.port": Refused(
        "set the port in aggregator.listen and agent.aggregator (tcp://HOST:PORT)"
    ),
    "alerts.email_enabled": Moved(("alerts.email",)),
    "alerts.slack_enabled": Moved(("alerts.slack",)),
    "alerts.slack_webhook": Refused(
        "a secret: write slack_webhook in the file alerts.secrets_file names (mode 0600), "
        "never in nomade.toml"
    ),
    "alerts.disk_warning_percent": Refused(_A_RULE),
    "alerts.disk_critical_percent": Refused(_A_RULE),
    "alerts.queue_stuck_days": Refused(_A_RULE),
    "alerts.gpu_temp_warning": Refused(_A_RULE),
    "alerts.derivatives": Refused(
        "trends take their window per query: nomadectl disk --hours, /api/v1/trend?hours=; "
        "alerts on a rate or an acceleration are rules (docs/alerts.md)"
    ),
    "prediction.enabled": Kept(True, "jobs are scored whenever a model is active"),
    "prediction.health_threshold": Moved(
        ("models.warn_threshold",), lambda health: 1 - health, "1 - health_threshold"
    ),
    "prediction.high_risk_threshold": Moved(("models.warn_threshold",)),
    "prediction.similarity_threshold": Refused(
        "not a NØMADE setting: each job's similar jobs are its nearest neighbours, no threshold"
    ),
    "prediction.retrain_interval_days": Moved(
        ("models.retrain_interval_hours",), lambda days: days * 24, "days x 24"
    ),
    "dashboard": Refused(
        "NØMADE has no dashboard yet; its JSON API listens on aggregator.http_listen"
    ),
    "collectors.slurm.enabled": Moved(tuple(f"collectors.{name}.enabled" for name in _SLURM)),
    "collectors.slurm.partitions": Refused(
        "not available: the Slurm collectors read every partition"
    ),
    "collectors.job_metrics.enabled": Moved(("collectors.job_history.enabled",)),
    "collectors.job_metrics.lookback_hours": Refused(
        "collectors.job_history reads sacct from its last run, less overlap_seconds; older jobs: "
        "nomadectl import sacct --start DATE"
    ),
    "collectors.job_metrics.min_runtime_seconds": Refused(
        "not available: NØMADE keeps every finished job"
    ),
    "collectors.iostat.devices": Refused("not available yet: iostat reports every device"),
    "collectors.mpstat.store_per_core": Kept(True, "NØMADE always keeps the per-core readings"),
    "collectors.mpstat.store_summary": Kept(True, "NØMADE always keeps the summary"),
    "collectors.node_state.nodes": Refused("not available: node_state reads every node Slurm has"),
}


def _lookup(parts: tuple[str, ...]) -> Any:
    """The default at PARTS (a table's dataclass or a setting's value), or KeyError; a path
    that runs past a setting (into a value that is not a table) is KeyError too."""
    if not parts or parts[0] not in _SECTIONS:
        raise KeyError(parts)
    obj: Any = _SECTIONS[parts[0]]()
    for name in parts[1:]:
        if not dataclasses.is_dataclass(obj) or name not in {
            f.name for f in dataclasses.fields(obj)
        }:
            raise KeyError(parts)
        obj = getattr(obj, name)
    return obj


def _is_nomade(parts: tuple[str, ...]) -> bool:
    """Whether PARTS is one of NØMADE's own sections or settings, or lies inside a setting's
    value (whose check then says what is wrong with it)."""
    for n in range(1, len(parts) + 1):
        try:
            found = _lookup(parts[:n])
        except KeyError:
            return False
        if not dataclasses.is_dataclass(found):
            return True
    return True


def _known(parts: tuple[str, ...]) -> bool:
    try:
        _lookup(parts)
    except KeyError:
        return False
    return True


def design_row(key: str) -> tuple[str, Moved | Kept | Refused] | None:
    """The DESIGN_KEYS row that covers KEY (itself, or the nearest table above it)."""
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in DESIGN_KEYS:
            return name, DESIGN_KEYS[name]
    return None


def _design_table(key: str) -> str | None:
    """The design's table that KEY lies in, where DESIGN_KEYS has rows under it."""
    parts = key.split(".")
    for n in range(len(parts) - 1, 0, -1):
        table = ".".join(parts[:n])
        if any(k.startswith(f"{table}.") for k in DESIGN_KEYS) and not _known(tuple(parts[:n])):
            return table
    return None


def setting_keys() -> list[str]:
    """Every setting by its dotted key, e.g. collectors.disk.filesystems."""

    def walk(obj: Any, prefix: str):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                yield from walk(value, f"{prefix}{f.name}.")
            else:
                yield f"{prefix}{f.name}"

    return [k for name, cls in _SECTIONS.items() for k in walk(cls(), f"{name}.")]


def setting(cfg: Config, key: str) -> Any:
    """The value of the setting KEY (dotted) in CFG."""
    obj: Any = cfg
    for name in key.split("."):
        obj = getattr(obj, name)
    return obj


def changed_settings(old: Config, new: Config) -> list[str]:
    """The settings whose values differ between OLD and NEW, by their dotted keys."""
    return [k for k in setting_keys() if setting(old, k) != setting(new, k)]


ENV_PREFIX = "NOMADE_"


def env_name(key: str) -> str:
    """The environment variable that overrides the setting KEY."""
    return ENV_PREFIX + key.upper().replace(".", "__")


class _Raw:
    """The settings as read (nested dicts, as tomllib gives them), with where each value that
    is not the file's own came from: a design key or an environment variable."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.tree: dict[str, Any] = {}
        self.origins: dict[str, tuple[str, str, str]] = {}  # key -> (source, its key, how)
        self.notices: list[str] = []

    def has(self, parts: tuple[str, ...]) -> bool:
        node: Any = self.tree
        for name in parts:
            if not isinstance(node, dict) or name not in node:
                return False
            node = node[name]
        return True

    def put(self, parts: tuple[str, ...], value: Any) -> None:
        node = self.tree
        for name in parts[:-1]:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):  # e.g. `collectors = 1`: the section check says so
                return
        node[parts[-1]] = value

    def design(self, source: str, key: str, value: Any, taken: set[str]) -> None:
        """KEY (not NØMADE's) from SOURCE (the file, or a variable) through DESIGN_KEYS; TAKEN:
        the NØMADE keys SOURCE sets itself, which a design key may not set again."""
        found = design_row(key)
        if found is None:
            table = _design_table(key)
            if table is not None:
                known = ", ".join(k[len(table) + 1 :] for k in DESIGN_KEYS if k.startswith(table))
                raise ConfigError(source, key, f"unknown in the design's [{table}] ({known})")
            self.put(tuple(key.split(".")), value)  # NØMADE's own check names it as unknown
            return
        name, row = found
        if isinstance(row, Refused):
            raise ConfigError(source, name, row.why)
        if isinstance(row, Kept):
            if value != row.value:
                raise ConfigError(source, key, f"{row.why}; only {_toml(row.value)} is accepted")
            self.notices.append(f"{source} [{key}]: a design key; {row.why}, nothing to set")
            return
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if row.convert is not None and number:
            value = row.convert(value)
            value = int(value) if isinstance(value, float) and value.is_integer() else value
        for target in row.to:
            if target in taken:
                raise ConfigError(source, key, f"is read as {target}, which is also set: keep one")
            taken.add(target)
            self.put(tuple(target.split(".")), value)
            self.origins[target] = (source, key, row.how)
        how = f" ({row.how})" if row.how else ""
        shown = _toml(value) if isinstance(value, bool) else _shown(value)
        self.notices.append(
            f"{source} [{key}]: a design key, read as {', '.join(row.to)} = {shown}{how}"
        )

    def read_file(self, raw: dict[str, Any]) -> None:
        """The file's own keys first, then its design keys (which must not repeat them)."""
        leaves = list(_leaves(raw))
        theirs = [(p, v) for p, v in leaves if not _is_nomade(p)]
        for parts, value in leaves:
            if _is_nomade(parts):
                self.put(parts, value)
        taken = {".".join(p) for p, _ in leaves if _is_nomade(p)}
        refused: dict[tuple[str | None, str], ConfigError] = {}
        for parts, value in theirs:
            try:
                self.design(self.path, ".".join(parts), value, taken)
            except ConfigError as exc:  # all of them in one line, not one per restart
                refused.setdefault((exc.key, exc.reason), exc)
        if len(refused) == 1:
            raise next(iter(refused.values()))
        if refused:
            each = "; ".join(f"[{e.key}] {e.reason}" for e in refused.values())
            raise ConfigError(self.path, None, f"{len(refused)} design keys not taken: {each}")

    def read_env(self, env: Mapping[str, str]) -> None:
        """NOMADE_SECTION__KEY variables over the file; a variable under NOMADE_ with `__` in
        its name that names no setting stops the load, like an unknown key in the file."""
        taken: set[str] = set()
        variables = sorted(v for v in env if v.startswith(ENV_PREFIX) and "__" in v)
        ours = [v for v in variables if _is_nomade(_env_parts(v))]
        for var in ours + [v for v in variables if v not in ours]:
            parts, source = _env_parts(var), f"${var}"
            key = ".".join(parts)
            if not _is_nomade(parts):
                if design_row(key) is None:
                    raise ConfigError(source, None, _no_such(var, key))
                self.design(source, key, _env_value(env[var], None), taken)
                continue
            try:
                default = _lookup(parts)
            except KeyError:
                raise ConfigError(source, None, _no_such(var, key)) from None
            if dataclasses.is_dataclass(default):
                example = env_name(f"{key}.{dataclasses.fields(default)[0].name}")
                why = f"names the table [{key}], not a setting (e.g. {example})"
                raise ConfigError(source, None, why)
            taken.add(key)
            self.put(parts, _env_value(env[var], default))
            self.origins[key] = (source, key, "")

    def as_config(self) -> Config:
        """The dataclasses, checked; an error about a value that came from a design key or a
        variable names that, not the key it was read as."""
        cfg = Config(path=self.path, notices=self.notices)
        try:
            for name, value in self.tree.items():
                if name not in _SECTIONS:
                    known = ", ".join(_SECTIONS)
                    raise ConfigError(self.path, name, f"unknown section (known: {known})")
                setattr(cfg, name, _section(self.path, name, _SECTIONS[name], value))
            _validate(cfg)
        except ConfigError as exc:
            if exc.key not in self.origins:
                raise
            source, key, how = self.origins[exc.key]
            reason = exc.reason
            if key != exc.key:
                reason = f"read as {exc.key}{f' ({how})' if how else ''}: {reason}"
            raise ConfigError(source, key, reason) from None
        return cfg


def _leaves(table: dict[str, Any], prefix: tuple[str, ...] = ()):
    """(path, value) of every value in TABLE; an empty table is a value of its own."""
    for name, value in table.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, (*prefix, name))
        else:
            yield (*prefix, name), value


def _env_parts(var: str) -> tuple[str, ...]:
    return tuple(var[len(ENV_PREFIX) :].lower().split("__"))


def _env_value(text: str, default: Any) -> Any:
    """TEXT as a TOML value where it is one (a number, a boolean, an array, a quoted string),
    else the text itself.  A setting that is a string takes any bare text as it is: a cluster
    named 2024 or inf stays a name."""
    try:
        parsed = tomllib.loads(f"value = {text}")
    except (tomllib.TOMLDecodeError, ValueError, RecursionError):  # an integer past 4300 digits
        return text
    if set(parsed) != {"value"}:  # more than one value (a newline in the text)
        return text
    value = parsed["value"]
    if isinstance(default, str) and not isinstance(value, str):
        return text
    return value


def _no_such(var: str, key: str) -> str:
    """Why VAR is refused: it names no setting; the nearest one's variable, if any is near."""
    names = [env_name(k) for k in setting_keys()]
    near = difflib.get_close_matches(var.upper(), names, n=1, cutoff=0.8)
    hint = f"did you mean {near[0]}?" if near else "docs/configuration.md lists the settings"
    return f"no setting {key} by that name ({hint})"


def _toml(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value)


def parse(text: str, path: str = "<string>", env: Mapping[str, str] | None = None) -> Config:
    """TEXT (the file at PATH) as a checked Config; ENV's NOMADE_SECTION__KEY variables, when
    given, override it."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"not valid TOML ({exc})") from None
    except ValueError as exc:  # an integer of more digits than Python converts
        raise ConfigError(
            path, None, f"not valid TOML ({' '.join(str(exc).split())[:80]})"
        ) from None
    except RecursionError:
        raise ConfigError(path, None, "not valid TOML (nested too deep)") from None
    settings = _Raw(path)
    settings.read_file(raw)
    if env is not None:
        settings.read_env(env)
    return settings.as_config()


def load(path: str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load the configuration: PATH, else $NOMADE_CONFIG, else /etc/nomade/nomade.toml.

    A missing file at the default location means defaults; a missing file that was named
    explicitly is an error.  ENV (the daemons' and nomadectl's os.environ; never given where
    a job's user sets the environment) overrides the file with its NOMADE_SECTION__KEY
    variables.
    """
    explicit = path or os.environ.get("NOMADE_CONFIG")
    target = explicit or DEFAULT_PATH
    try:
        text = Path(target).read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise ConfigError(target, None, "file not found") from None
        return parse("", Config().path, env)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(target, None, f"cannot read ({exc.__class__.__name__})") from None
    return parse(text, target, env)


def load_for_daemon(program: str, path: str | None, log_level: str | None) -> Config:
    """A daemon's start: load the configuration (with the environment's overrides) or exit 2
    with one line; set up logging; log how the design keys in it were read."""
    import logging
    import sys

    try:
        cfg = load(path, os.environ)
    except ConfigError as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(
        level=(log_level or cfg.general.log_level).upper(),
        format=f"%(asctime)s {program} %(levelname)s %(message)s",
    )
    for notice in cfg.notices:
        logging.getLogger("nomade.config").warning("%s", notice)
    return cfg


def daemon_options(fn):
    """The options both daemons share: --config and --log-level (click is imported lazily so
    that the hooks' and parsers' users of this module need not have it)."""
    import click

    fn = click.option("--log-level", default=None, help="override general.log_level")(fn)
    return click.option(
        "--config",
        "config_path",
        default=None,
        help="nomade.toml (default: $NOMADE_CONFIG or /etc/nomade/nomade.toml)",
    )(fn)
