"""Alert dispatch: each alert, firing and resolved, to the channels [alerts] names.

Channels: email over SMTP (STARTTLS and login when configured), a Slack incoming webhook, a
generic JSON webhook, and mail to the job's own user for job-level alerts.  Each channel has its
own bounded queue and thread, so `Dispatcher.send` never blocks and a channel that fails or
hangs delays neither ingestion nor the other channels: an alert is tried `retry_attempts` times
with exponential backoff within `retry_max_seconds`, then given up, and every outcome is counted
in `status()`.  When a queue is full the oldest alert in it is dropped and counted.

What came from users (a job's name in a summary, a user name) is made fit for each channel here:
no control characters in mail headers, Slack's markup escaped and its mentions neutralised; the
webhook gets plain JSON.  The SMTP password and the webhook URLs are read from the secrets file
(mode 0600) and appear in no log line, error or status: a URL is shown as scheme://host/… only.

The channels are written here with smtplib and urllib rather than taken from apprise: apprise's
Slack plugin posts to a fixed hooks.slack.com address, so a test could not reach a loopback
receiver through the code that runs in production, and it would bring six packages for three
small clients.  docs/alerts.md describes channels, settings and secrets.
"""

from __future__ import annotations

import collections
import dataclasses
import http.client
import json
import logging
import os
import re
import smtplib
import socket
import ssl
import stat
import threading
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

from nomade_common.config import Alerts as AlertSettings
from nomade_common.config import Config, is_loopback
from nomade_common.errors import ConfigError
from nomade_common.text import for_terminal, printable

log = logging.getLogger("nomade.alerts")

STATES = ("firing", "resolved")


@dataclass(frozen=True)
class Alert:
    """One message about one alert: raised (`firing`) or cleared (`resolved`)."""

    id: int | str  # the alert's id in the store
    rule: str
    severity: str  # e.g. info, warning, critical
    subject: str  # what it is about: a node, a job id, a filesystem
    user: str | None  # the job's user for a job-level alert, else None
    state: str  # firing or resolved
    summary: str  # one line
    detail: str  # text, any number of lines
    time: float  # seconds since the epoch
    url: str | None = None  # where to read more

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"alert state must be one of {', '.join(STATES)}, got {self.state!r}")


# -- secrets --------------------------------------------------------------------------------------

SECRET_KEYS = ("smtp_password", "slack_webhook", "webhook_url", "webhook_token")
_URL_KEYS = ("slack_webhook", "webhook_url")


@dataclass(frozen=True)
class Secrets:
    """The secrets file's values; never shown (repr hides them)."""

    smtp_password: str = field(default="", repr=False)
    slack_webhook: str = field(default="", repr=False)
    webhook_url: str = field(default="", repr=False)
    webhook_token: str = field(default="", repr=False)

    def hidden(self) -> list[str]:
        """What may appear in no text: each value, and of the URLs their path, query and
        password, which a receiver's error answer may repeat."""
        found = [v for v in dataclasses.astuple(self) if v]
        for url in (self.slack_webhook, self.webhook_url):
            if url:
                parts = urllib.parse.urlsplit(url)
                found += [p for p in (parts.path, parts.query, parts.password) if p and len(p) > 1]
        return found


def needed_secrets(settings: AlertSettings) -> list[str]:
    """The secrets the channels that are on need."""
    if not settings.enabled:
        return []
    want = [
        (
            "smtp_password",
            bool(settings.smtp_user) and (settings.email or settings.notify_job_users),
        ),
        ("slack_webhook", settings.slack),
        ("webhook_url", settings.webhook),
    ]
    return [key for key, on in want if on]


def read_secrets(path: str, needed: Sequence[str] = ()) -> Secrets:
    """The secrets file at PATH, checked: a regular file owned by root or by this process's user
    and readable by its owner only, TOML with string values under SECRET_KEYS, URLs that are
    http(s) URLs, and every key of NEEDED present.  A problem is one ConfigError naming the file
    and the key, never a value."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY)
    except OSError as exc:
        why = (
            f"cannot read ({exc.__class__.__name__}); it holds the alerts' secrets (docs/alerts.md)"
        )
        raise ConfigError(path, None, why) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(path, None, "holds the alerts' secrets, so must be a regular file")
        if st.st_uid not in (0, os.geteuid()):
            why = (
                "holds secrets, so must be owned by root or by the aggregator's user, "
                f"not uid {st.st_uid}"
            )
            raise ConfigError(path, None, why)
        if st.st_mode & 0o077:
            mode = stat.S_IMODE(st.st_mode)
            why = (
                f"holds secrets, so must be readable by its owner only "
                f"(mode {mode:04o}: chmod 600 {path})"
            )
            raise ConfigError(path, None, why)
        data = f.read(1 << 16)
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(path, None, "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        where = re.search(r"line \d+", str(exc))  # never the text itself
        raise ConfigError(
            path, None, f"not valid TOML ({where[0] if where else 'unreadable'})"
        ) from None
    for key, value in raw.items():
        if key not in SECRET_KEYS:
            why = f"unknown key (known: {', '.join(SECRET_KEYS)})"
            raise ConfigError(path, printable(key, 40), why)
        if not isinstance(value, str):
            raise ConfigError(path, key, f"expected a string, got {type(value).__name__}")
        if key in _URL_KEYS and not _is_http_url(value):
            raise ConfigError(path, key, "expected an http:// or https:// URL with a host")
    for key in needed:
        if not raw.get(key):
            raise ConfigError(path, key, f"missing: {_NEEDED_BY[key]}")
    return Secrets(**raw)


_NEEDED_BY = {
    "smtp_password": "alerts.smtp_user is set, so the SMTP login needs its password",
    "slack_webhook": "alerts.slack is true, so Slack needs its incoming webhook's URL",
    "webhook_url": "alerts.webhook is true, so the webhook needs its URL",
}


def _is_http_url(text: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(text)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and _no_controls(text)
    except ValueError:
        return False


def _no_controls(text: str) -> bool:
    return printable(text, len(text) + 1) == text and " " not in text


def redact(url: str) -> str:
    """URL as scheme://host[:port]/… : what a log line, an error or the status may show."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<a URL>"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{port}/…"


_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def scrub(text: str, secrets: list[str]) -> str:
    """TEXT (an error from a library) with each secret and every URL's path taken out, on one
    line of at most 300 characters."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "…")
    text = _URL_IN_TEXT.sub(lambda m: redact(m[0]), text)
    return printable(text, 300)


# -- what each channel sends ---------------------------------------------------------------------


def _header(text: str, limit: int) -> str:
    """TEXT for a mail header: one line, no control characters (a job name with CR LF cannot
    add a header), runs of spaces made one."""
    return " ".join(printable(text, 4 * limit).split())[:limit]


def _body(text: str, limit: int) -> str:
    """TEXT for a body: newlines and tabs kept, other control characters dropped."""
    return for_terminal(text.replace("\r\n", "\n").replace("\r", "\n"))[:limit]


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def mail_subject(alert: Alert, cluster: str) -> str:
    state = alert.state.upper()
    return _header(f"[NØMADE {cluster}] {state} {alert.severity}: {alert.summary}", 200)


def mail_body(alert: Alert, cluster: str) -> str:
    lines = [
        f"NØMADE alert on cluster {_header(cluster, 100)}: {alert.state.upper()}",
        "",
        f"Summary:  {_header(alert.summary, 500)}",
        f"Severity: {_header(alert.severity, 40)}",
        f"Rule:     {_header(alert.rule, 200)}",
        f"Subject:  {_header(alert.subject, 200)}",
    ]
    if alert.user is not None:
        lines.append(f"User:     {_header(alert.user, 100)}")
    lines.append(f"Time:     {_when(alert.time)}")
    if alert.url:
        lines.append(f"More:     {_header(alert.url, 500)}")
    if alert.detail:
        lines += ["", _body(alert.detail, 20_000)]
    return "\n".join(lines) + "\n"


def mail_message(alert: Alert, cluster: str, sender: str, to: list[str]) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = mail_subject(alert, cluster)
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Date"] = formatdate(alert.time, usegmt=True)
    domain = sender.rpartition("@")[2] or "localhost"
    ident = re.sub(r"[^A-Za-z0-9.-]", "-", str(alert.id))[:64]
    msg["Message-ID"] = f"<nomade-alert-{ident}-{alert.state}@{domain}>"
    if alert.state == "resolved":  # threads under the firing message in mail readers
        msg["In-Reply-To"] = msg["References"] = f"<nomade-alert-{ident}-firing@{domain}>"
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies
    msg["X-NOMADE-Alert"] = f"{ident} {alert.state}"
    msg.set_content(mail_body(alert, cluster))
    return msg


_MENTION = re.compile(r"(?<![\w.])@(?=\w)")


def slack_escape(text: str) -> str:
    """TEXT for Slack's mrkdwn: &, < and > as Slack asks (so `<!channel>`, `<@U123>` and
    `<http://x|y>` show as typed and do nothing), and a word joiner after each `@` that starts
    a word, so `@channel`, `@here` and `@name` notify nobody."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MENTION.sub("@\u2060", text)


def slack_payload(alert: Alert, cluster: str) -> dict[str, Any]:
    icon = ":rotating_light:" if alert.state == "firing" else ":white_check_mark:"
    head = f"[NØMADE {cluster}] {alert.state.upper()} {alert.severity}"
    about = [alert.rule, alert.subject] + ([f"user {alert.user}"] if alert.user else [])
    lines = [
        f"{icon} *{slack_escape(_header(head, 200))}*: {slack_escape(_header(alert.summary, 500))}",
        slack_escape(_header(" · ".join(about), 300)),
    ]
    if alert.detail:
        lines.append(slack_escape(_body(alert.detail, 3000)))
    if alert.url and _is_http_url(alert.url) and not set(alert.url) & set("<>|"):
        lines.append(f"<{alert.url}|details>")
    elif alert.url:
        lines.append(slack_escape(_header(alert.url, 500)))
    return {"text": "\n".join(lines), "unfurl_links": False, "unfurl_media": False}


def webhook_payload(alert: Alert, cluster: str) -> dict[str, Any]:
    return {"version": 1, "cluster": cluster, **dataclasses.asdict(alert)}


# -- channels -------------------------------------------------------------------------------------


class Failure(Exception):
    """One attempt that failed: WHY (already free of secrets); PERMANENT: trying again would not
    help (a 4xx answer, a refused login)."""

    def __init__(self, why: str, permanent: bool = False) -> None:
        super().__init__(why)
        self.why, self.permanent = why, permanent


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102
        return None  # the alert is posted where the site said, or not at all


_OPENER = urllib.request.build_opener(_NoRedirect)


class HttpChannel:
    """A JSON POST: Slack's incoming webhook or the generic webhook."""

    def __init__(
        self,
        name: str,
        url: str,
        payload: Callable[[Alert], dict[str, Any]],
        timeout: float,
        token: str = "",
    ) -> None:
        self.name, self.target = name, redact(url)
        self._url, self._payload, self._timeout, self._token = url, payload, timeout, token

    def wants(self, alert: Alert) -> bool:
        return True

    def deliver(self, alert: Alert) -> None:
        body = json.dumps(self._payload(alert)).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "nomade-alerts"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(self._url, data=body, headers=headers, method="POST")
        try:
            with _OPENER.open(request, timeout=self._timeout) as answer:
                answer.read(1 << 16)
        except urllib.error.HTTPError as exc:
            said = printable(exc.read(200).decode("utf-8", "replace"), 100).strip()
            exc.close()
            code = exc.code
            permanent = 300 <= code < 500 and code not in (408, 425, 429)
            more = " (redirects are not followed)" if 300 <= code < 400 else f" {said}".rstrip()
            raise Failure(f"HTTP {code}{more}", permanent) from None
        except urllib.error.URLError as exc:
            raise Failure(_os_error(exc.reason)) from None
        except (OSError, http.client.HTTPException) as exc:
            raise Failure(_os_error(exc)) from None


def _os_error(exc: object) -> str:
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{exc.__class__.__name__}: {exc}" if isinstance(exc, Exception) else str(exc)


_USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")


class MailChannel:
    """Mail over SMTP: to the admins' addresses (`email`) or to a job's user (`user_mail`)."""

    def __init__(
        self, name: str, settings: AlertSettings, password: str, cluster: str, timeout: float
    ) -> None:
        s = settings
        self.name, self._s, self._password = name, s, password
        self._cluster, self._timeout = cluster, timeout
        self._sender = s.email_from or f"nomade@{socket.getfqdn()}"
        self.target = f"smtp://{s.smtp_host}:{s.smtp_port}"

    def wants(self, alert: Alert) -> bool:
        return self.name == "email" or alert.user is not None

    def recipients(self, alert: Alert) -> list[str]:
        if self.name == "email":
            return list(self._s.email_to)
        if alert.user is None or not _USER_NAME.fullmatch(alert.user):
            raise Failure(f"user {printable(str(alert.user), 64)!r} has no mail address", True)
        return [f"{alert.user}@{self._s.user_mail_domain}"]

    def deliver(self, alert: Alert) -> None:
        to = self.recipients(alert)
        msg = mail_message(alert, self._cluster, self._sender, to)
        s = self._s
        try:
            with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=self._timeout) as smtp:
                if s.smtp_starttls:
                    smtp.starttls(context=ssl.create_default_context(cafile=s.smtp_ca or None))
                if s.smtp_user:
                    smtp.login(s.smtp_user, self._password)
                refused = smtp.send_message(msg, from_addr=self._sender, to_addrs=to)
        except smtplib.SMTPNotSupportedError:
            raise Failure("the server offers no STARTTLS or no login", True) from None
        except smtplib.SMTPRecipientsRefused:
            raise Failure("the server refused every recipient", True) from None
        except smtplib.SMTPResponseException as exc:
            kind = "login refused" if exc.smtp_code in (530, 534, 535) else "answered"
            raise Failure(f"SMTP {kind} {exc.smtp_code}", exc.smtp_code >= 500) from None
        except ssl.SSLCertVerificationError as exc:
            raise Failure(f"certificate not trusted ({exc.verify_message})", True) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise Failure(_os_error(exc)) from None
        if refused:
            log.warning(
                "alert %s: the SMTP server refused %d of its recipients", alert.id, len(refused)
            )


# -- lanes: one queue, thread and record per channel -----------------------------------------------


class _Lane:
    def __init__(self, channel: Any, owner: Dispatcher) -> None:
        self.channel, self._owner = channel, owner
        self._queue: collections.deque[Alert] = collections.deque()
        self._cond = threading.Condition()
        self._thread = threading.Thread(
            target=self._run, name=f"nomade-alerts-{channel.name}", daemon=True
        )
        self.record: dict[str, Any] = {
            "target": channel.target,
            "sent": 0,
            "failed": 0,
            "attempts_failed": 0,
            "dropped": 0,
            "failing": False,
            "last_error": None,
            "last_error_at": None,
            "last_success_at": None,
        }

    def put(self, alert: Alert, first: bool = False) -> bool:
        """ALERT queued (FIRST: ahead of the others, an older alert handed over); False where
        the dispatcher is stopping, whose queue is no longer read."""
        with self._cond:
            if self._owner._stopping.is_set():
                return False
            if len(self._queue) >= self._owner.queue_size:
                gone = self._queue.popleft()
                self.record["dropped"] += 1
                if self.record["dropped"] % 100 == 1:
                    log.warning(
                        "alerts: %s's queue is full; alert %s dropped (%d so far)",
                        self.channel.name,
                        gone.id,
                        self.record["dropped"],
                    )
            if first:
                self._queue.appendleft(alert)
            else:
                self._queue.append(alert)
            self._cond.notify()
        return True

    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    def take_queued(self) -> list[Alert]:
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
            return left

    def carry_counts(self, before: _Lane) -> None:
        """The counts of BEFORE (the same channel, before a reload) carried on, and its last
        error and success where this lane has none of its own yet."""
        with before._cond:
            was = dict(before.record)
        with self._cond:
            for k in ("sent", "failed", "attempts_failed", "dropped"):
                self.record[k] += was[k]
            for k in ("last_error", "last_error_at", "last_success_at"):
                if self.record[k] is None:
                    self.record[k] = was[k]
            r = self.record
            r["failing"] = (r["last_error_at"] or 0) > (r["last_success_at"] or 0)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        stopping = self._owner._stopping
        while True:
            with self._cond:
                while not self._queue and not stopping.is_set():
                    self._cond.wait()
                if stopping.is_set():
                    return
                alert = self._queue.popleft()
            self._deliver(alert)

    def _deliver(self, alert: Alert) -> None:
        """ALERT through the channel: tried until it is taken, the attempts are spent, the next
        wait would pass retry_max_seconds, an answer says trying again cannot help, or the
        dispatcher stops."""
        owner, name = self._owner, self.channel.name
        began, wait = time.monotonic(), owner.first_backoff
        for attempt in range(1, owner.attempts + 1):
            try:
                self.channel.deliver(alert)
            except Failure as exc:
                why, permanent = scrub(exc.why, owner.secrets), exc.permanent
            except Exception as exc:  # a defect here must not end the lane
                why, permanent = scrub(f"{exc.__class__.__name__}: {exc}", owner.secrets), True
            else:
                self._note(alert, None)
                return
            self._attempt_failed(why)
            if owner._stopping.is_set() and owner._hand_over(name, alert, first=True):
                return  # a reload's new channel tries it (a 4xx from a revoked address too)
            last = permanent or attempt == owner.attempts
            if last or time.monotonic() - began + wait > owner.max_seconds:
                break
            log.info("alert %s via %s failed (%s); trying again in %gs", alert.id, name, why, wait)
            if owner._stopping.wait(wait):
                if owner._hand_over(name, alert, first=True):
                    return  # a reload's new channel tries it again, before what is newer
                break
            wait *= 2
        log.warning(
            "alert %s (%s, %s) not sent via %s to %s after %d attempts: %s",
            alert.id,
            alert.rule,
            alert.state,
            name,
            self.channel.target,
            attempt,
            why,
        )
        self._note(alert, why)

    def _attempt_failed(self, why: str) -> None:
        with self._cond:
            self.record["attempts_failed"] += 1
            self.record.update(failing=True, last_error=why, last_error_at=time.time())

    def _note(self, alert: Alert, why: str | None) -> None:
        with self._cond:
            if why is None:
                self.record["sent"] += 1
                self.record.update(failing=False, last_success_at=time.time())
            else:
                self.record["failed"] += 1
        if why is None:
            log.debug("alert %s (%s) sent via %s", alert.id, alert.state, self.channel.name)
        if self._owner.on_result is not None:
            try:
                self._owner.on_result(self.channel.name, alert, why)
            except Exception:
                log.exception("alerts: the result callback failed")

    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            return {**self.record, "queued": len(self._queue)}


class Dispatcher:
    """Sends alerts to the channels CFG's [alerts] turns on, each in its own thread.

    SECRETS: given, or read from alerts.secrets_file when a channel that is on needs one (a
    ConfigError names the file and the key).  ON_RESULT(channel, alert, error or None) is called
    from the channel's thread once per alert and channel, when it was sent or given up.
    FIRST_BACKOFF: the first retry's wait, doubled at each retry."""

    def __init__(
        self,
        cfg: Config,
        secrets: Secrets | None = None,
        on_result: Callable[[str, Alert, str | None], None] | None = None,
        first_backoff: float = 1.0,
    ) -> None:
        a = cfg.alerts
        if secrets is None:
            needed = needed_secrets(a)
            secrets = read_secrets(a.secrets_file, needed) if needed else Secrets()
        self.enabled = a.enabled
        # What the channels were built from: a reload that changes none of it keeps them.
        self.built_from = (dataclasses.replace(a, rules=[], evaluate_seconds=0.0), secrets)
        self.secrets = secrets.hidden()
        self.on_result = on_result
        self.queue_size, self.attempts, self.max_seconds = (
            a.queue_size,
            a.retry_attempts,
            a.retry_max_seconds,
        )
        self.first_backoff = first_backoff
        self._stopping = threading.Event()
        self._started = False
        self.successor: Dispatcher | None = None  # who takes over what is left (a reload's)
        self.lanes = [_Lane(ch, self) for ch in _channels(cfg, secrets)] if a.enabled else []

    def start(self) -> Dispatcher:
        if not self._started:
            self._started = True
            for lane in self.lanes:
                lane.start()
            if self.lanes:
                names = ", ".join(f"{ln.channel.name} ({ln.channel.target})" for ln in self.lanes)
                log.info("alerts are sent via %s", names)
        return self

    def send(self, alert: Alert) -> None:
        """Queue ALERT for every channel that takes it; never blocks, never raises for a
        channel's trouble."""
        for lane in self.lanes:
            if lane.channel.wants(alert) and not lane.put(alert):
                log.warning(
                    "alerts: alert %s not sent via %s: stopped", alert.id, lane.channel.name
                )

    def status(self) -> dict[str, Any]:
        """Per channel: its target (scheme://host/…), alerts sent, given up (failed) and
        dropped, failed attempts, whether the last attempt failed, its error and when, the last
        success, and what waits."""
        return {
            "enabled": self.enabled,
            "channels": {ln.channel.name: ln.snapshot() for ln in self.lanes},
        }

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the threads: each finishes the attempt it is in (bounded by
        alerts.timeout_seconds) and tries no more; what is still queued is logged as unsent."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        for lane in self.lanes:
            lane.wake()
        for lane in self.lanes:
            if self._started:
                lane.join(max(0.0, deadline - time.monotonic()))
            self._pass_on(lane, "at stop")

    def move_queued(self, successor: Dispatcher | None) -> None:
        """What waits here, to SUCCESSOR's channel of the same name (before SUCCESSOR is
        given anything newer, so that the order of an alert's firing and resolve holds); what
        no channel of SUCCESSOR takes is logged as unsent."""
        self.successor = successor
        for lane in self.lanes:
            self._pass_on(lane, "(the channel was taken out)")

    def _pass_on(self, lane: _Lane, why: str) -> None:
        """What waits in LANE to the successor's channel of its name; the rest logged as
        unsent, WHY."""
        left = lane.take_queued()
        handed = [a for a in left if self._hand_over(lane.channel.name, a)]
        if len(handed) < len(left):
            log.warning(
                "alerts: %d alert(s) not sent via %s %s",
                len(left) - len(handed),
                lane.channel.name,
                why,
            )

    def hand_over(self, successor: Dispatcher | None, timeout: float = 5.0) -> None:
        """Stop, as a reload replaces this dispatcher with SUCCESSOR: what is still queued goes
        to SUCCESSOR (move_queued, done first where the order matters), and so does an alert
        whose retries the stop cuts short; SUCCESSOR's channels carry on the counts of the
        channels of the same name here."""
        self.successor = successor
        self.stop(timeout)
        if successor is not None:
            mine = {ln.channel.name: ln for ln in self.lanes}
            for lane in successor.lanes:
                if lane.channel.name in mine:
                    lane.carry_counts(mine[lane.channel.name])

    def _hand_over(self, channel: str, alert: Alert, first: bool = False) -> bool:
        """ALERT to the newest running successor's lane of CHANNEL (a successor may itself
        have been replaced, or be stopping, meanwhile): whether one took it.  FIRST: ahead of
        what that lane holds (an alert that was in flight here is older than all of it)."""
        target = self.successor
        while target is not None:
            for lane in target.lanes:
                if lane.channel.name == channel and lane.channel.wants(alert):
                    if lane.put(alert, first):
                        return True
            target = target.successor
        return False


def _channels(cfg: Config, secrets: Secrets) -> list[Any]:
    a, cluster, timeout = cfg.alerts, cfg.general.cluster_name, cfg.alerts.timeout_seconds
    channels: list[Any] = []
    if a.email:
        channels.append(MailChannel("email", a, secrets.smtp_password, cluster, timeout))
    if a.notify_job_users:
        channels.append(MailChannel("user_mail", a, secrets.smtp_password, cluster, timeout))
    if a.slack:
        channels.append(
            HttpChannel(
                "slack", secrets.slack_webhook, lambda al: slack_payload(al, cluster), timeout
            )
        )
    if a.webhook:
        channels.append(
            HttpChannel(
                "webhook",
                secrets.webhook_url,
                lambda al: webhook_payload(al, cluster),
                timeout,
                secrets.webhook_token,
            )
        )
    for ch in channels:
        if ch.target.startswith("http://") and not _loopback_target(ch.target):
            log.warning("alerts: %s posts to %s without TLS", ch.name, ch.target)
    return channels


def _loopback_target(target: str) -> bool:
    host = urllib.parse.urlsplit(target).hostname or ""
    return is_loopback(host)
