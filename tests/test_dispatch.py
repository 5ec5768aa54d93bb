"""Alert dispatch against real receivers on loopback: an SMTP server (aiosmtpd, plain and with
STARTTLS and login) and HTTP servers standing in for Slack and a webhook, reached through the
code that runs in production (aggregator/alerts/dispatch.py)."""

from __future__ import annotations

import dataclasses
import datetime
import email
import email.policy
import json
import logging
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import ROOT, required

from aggregator.alerts.dispatch import Alert, Dispatcher, read_secrets, redact
from nomade_common import config
from nomade_common.errors import ConfigError

try:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult
except ImportError:  # the dev extra installs it
    Controller = None

SLACK_SECRET = "T0NOMADE/B0NOMADE/slacksecret4242"
HOOK_SECRET = "hooksecret-77-path"
TOKEN = "bearer-token-1234"
PASSWORD = "smtp-pass-9876"


def alert(state="firing", **kw) -> Alert:
    fields = dict(
        id=7,
        rule="job_memory_to_oom",
        severity="warning",
        subject="job 1234",
        user="alice",
        state=state,
        summary="job 1234 (train) will reach its memory limit in 3 min",
        detail="memory 3.1 GiB of 4 GiB, growing 12 MiB/s\nprojected OOM 17:03",
        time=1_765_000_000.0,
        url="http://127.0.0.1:27011/api/v1/jobs/1234",
    )
    fields.update(kw)
    return Alert(**fields)


def wait_for(check, what: str, seconds: float = 30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"not within {seconds} s: {what}")


# -- receivers ------------------------------------------------------------------------------------


class Receiver:
    """An HTTP server on 127.0.0.1:0 that records each POST (path, headers, JSON body) and
    answers from PLAN (status codes, then 200), or holds each request while HOLD is clear."""

    def __init__(self, plan=(), hold: bool = False, echo: bool = False) -> None:
        self.posts: list[dict] = []
        self.plan, self.echo = list(plan), echo
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.entered = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.entered.set()
                outer.release.wait(60)
                outer.posts.append(
                    {"path": self.path, "headers": dict(self.headers), "body": json.loads(body)}
                )
                code = outer.plan.pop(0) if outer.plan else 200
                answer = (f"error at {self.path}" if outer.echo else "ok").encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


class Mailbox:
    """aiosmtpd's handler: every message received, as (envelope sender, recipients, message)."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], email.message.EmailMessage]] = []
        self.raw: list[bytes] = []

    async def handle_DATA(self, server, session, envelope):
        self.raw.append(envelope.original_content)
        msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), msg))
        return "250 OK"

    def to(self, address: str):
        return [m for _, rcpt, m in self.messages if address in rcpt]


def smtp_server(mailbox: Mailbox, **kw):
    if Controller is None:
        required("aiosmtpd is not installed (pip install aiosmtpd; the dev extra has it)")

    class OnAnyPort(Controller):
        def _trigger_server(self):  # port 0: learn the port the system gave
            self.port = self.server.sockets[0].getsockname()[1]
            super()._trigger_server()

    controller = OnAnyPort(mailbox, hostname="127.0.0.1", port=0, **kw)
    controller.start()
    return controller


@pytest.fixture
def receivers():
    made: list = []
    yield made
    for thing in made:
        thing.close() if isinstance(thing, Receiver) else thing.stop()


@pytest.fixture
def dispatchers():
    made: list[Dispatcher] = []
    yield made
    for d in made:
        d.stop(timeout=2)


def secrets_file(tmp_path, mode=0o600, **values) -> str:
    path = tmp_path / "alerts-secrets.toml"
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    path.chmod(mode)
    return str(path)


def settings(tmp_path, text: str) -> config.Config:
    return config.parse(f"[general]\ncluster_name = 'hpc1'\n[alerts]\n{text}", "n.toml")


def start(dispatchers, cfg, **kw) -> Dispatcher:
    d = Dispatcher(cfg, first_backoff=0.01, **kw).start()
    dispatchers.append(d)
    return d


def sent(d: Dispatcher, channel: str, n: int) -> bool:
    record = d.status()["channels"][channel]
    return record["sent"] + record["failed"] >= n


# -- delivery -------------------------------------------------------------------------------------


def test_each_channel_receives_the_alert_once_and_then_its_resolve(
    tmp_path, receivers, dispatchers
):
    mailbox = Mailbox()
    receivers.append(smtp := smtp_server(mailbox))
    receivers.append(slack := Receiver())
    receivers.append(hook := Receiver())
    path = secrets_file(
        tmp_path,
        slack_webhook=slack.url(f"services/{SLACK_SECRET}"),
        webhook_url=hook.url(HOOK_SECRET),
        webhook_token=TOKEN,
    )
    cfg = settings(
        tmp_path,
        f"email = true\nemail_to = ['admin@example.org', 'ops@example.org']\n"
        f"email_from = 'nomade@hpc1.example.org'\nsmtp_host = '127.0.0.1'\n"
        f"smtp_port = {smtp.port}\nslack = true\nwebhook = true\nsecrets_file = '{path}'\n"
        "notify_job_users = true\nuser_mail_domain = 'example.org'\n",
    )
    d = start(dispatchers, cfg)
    d.send(alert("firing"))
    d.send(alert("resolved"))
    d.send(alert("firing", id=8, user=None, subject="node2", summary="node2 silent"))
    for channel, n in (("email", 3), ("slack", 3), ("webhook", 3), ("user_mail", 2)):
        wait_for(lambda c=channel, n=n: sent(d, c, n), f"{channel} has {n} alerts")

    # email: each alert once to both admins; the job's user gets the job's two, not node2's
    admins = mailbox.to("admin@example.org")
    assert [m["X-NOMADE-Alert"] for m in admins] == ["7 firing", "7 resolved", "8 firing"]
    assert mailbox.to("ops@example.org") == admins
    first, resolved = admins[0], admins[1]
    assert first["Subject"] == (
        "[NØMADE hpc1] FIRING warning: job 1234 (train) will reach its memory limit in 3 min"
    )
    assert first["From"] == "nomade@hpc1.example.org"
    assert resolved["Subject"].startswith("[NØMADE hpc1] RESOLVED warning: job 1234")
    assert resolved["In-Reply-To"] == first["Message-ID"]  # threads under the firing mail
    assert "projected OOM 17:03" in first.get_content()
    users = mailbox.to("alice@example.org")
    assert [m["X-NOMADE-Alert"] for m in users] == ["7 firing", "7 resolved"]
    assert len(mailbox.messages) == 5

    # Slack: one post per alert, to the webhook's path, as text
    assert [p["path"] for p in slack.posts] == [f"/services/{SLACK_SECRET}"] * 3
    texts = [p["body"]["text"] for p in slack.posts]
    assert "FIRING warning" in texts[0] and "RESOLVED warning" in texts[1]
    assert "job 1234 (train) will reach its memory limit" in texts[0]

    # webhook: the alert itself as JSON, with the token
    bodies = [p["body"] for p in hook.posts]
    assert bodies[0] == {"version": 1, "cluster": "hpc1", **dataclasses.asdict(alert())}
    assert [(b["id"], b["state"]) for b in bodies] == [
        (7, "firing"),
        (7, "resolved"),
        (8, "firing"),
    ]
    assert {p["headers"]["Authorization"] for p in hook.posts} == {f"Bearer {TOKEN}"}

    status = d.status()["channels"]
    assert {name: (s["sent"], s["failed"], s["failing"]) for name, s in status.items()} == {
        "email": (3, 0, False),
        "user_mail": (2, 0, False),
        "slack": (3, 0, False),
        "webhook": (3, 0, False),
    }
    assert status["webhook"]["target"] == f"http://127.0.0.1:{hook.port}/…"


def self_signed(tmp_path):
    """A certificate for 127.0.0.1 and its key, made here (files: cert, key)."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        required("the cryptography package is not installed (the dev extra has it)")
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "smtp.crt", tmp_path / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


def starttls_server(tmp_path, mailbox, logins):
    import ssl

    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    def authenticator(server, session, envelope, mechanism, auth_data):
        logins.append((auth_data.login.decode(), auth_data.password.decode()))
        ok = (auth_data.login, auth_data.password) == (b"nomade", PASSWORD.encode())
        return AuthResult(success=ok, handled=False)

    if Controller is None:
        required("aiosmtpd is not installed (pip install aiosmtpd; the dev extra has it)")
    server = smtp_server(
        mailbox,
        tls_context=context,
        require_starttls=True,
        auth_require_tls=True,
        authenticator=authenticator,
        auth_required=True,
    )
    return server, cert


def test_mail_over_starttls_with_login(tmp_path, receivers, dispatchers):
    mailbox, logins = Mailbox(), []
    server, cert = starttls_server(tmp_path, mailbox, logins)
    receivers.append(server)
    path = secrets_file(tmp_path, smtp_password=PASSWORD)
    cfg = settings(
        tmp_path,
        f"email = true\nemail_to = ['admin@example.org']\nsmtp_host = '127.0.0.1'\n"
        f"smtp_port = {server.port}\nsmtp_starttls = true\nsmtp_user = 'nomade'\n"
        f"smtp_ca = '{cert}'\nsecrets_file = '{path}'\n",
    )
    d = start(dispatchers, cfg)
    d.send(alert())
    wait_for(lambda: sent(d, "email", 1), "the mail is sent")
    assert d.status()["channels"]["email"]["sent"] == 1
    assert logins == [("nomade", PASSWORD)]
    assert [m["X-NOMADE-Alert"] for m in mailbox.to("admin@example.org")] == ["7 firing"]


def test_a_refused_login_is_recorded_without_the_password(tmp_path, receivers, dispatchers, caplog):
    caplog.set_level(logging.DEBUG)
    mailbox, logins = Mailbox(), []
    server, cert = starttls_server(tmp_path, mailbox, logins)
    receivers.append(server)
    path = secrets_file(tmp_path, smtp_password="not-" + PASSWORD)
    cfg = settings(
        tmp_path,
        f"email = true\nemail_to = ['admin@example.org']\nsmtp_host = '127.0.0.1'\n"
        f"smtp_port = {server.port}\nsmtp_starttls = true\nsmtp_user = 'nomade'\n"
        f"smtp_ca = '{cert}'\nsecrets_file = '{path}'\n",
    )
    d = start(dispatchers, cfg)
    d.send(alert())
    wait_for(lambda: sent(d, "email", 1), "the mail is given up")
    record = d.status()["channels"]["email"]
    assert (record["sent"], record["failed"], record["attempts_failed"]) == (0, 1, 1)
    assert record["failing"] and record["last_error"] == "SMTP login refused 535"
    assert mailbox.messages == []
    assert "not-" + PASSWORD not in caplog.text + json.dumps(d.status())


def test_mail_without_a_trusted_certificate_is_not_sent(tmp_path, receivers, dispatchers):
    mailbox = Mailbox()
    server, _ = starttls_server(tmp_path, mailbox, [])
    receivers.append(server)
    path = secrets_file(tmp_path, smtp_password=PASSWORD)
    cfg = settings(  # no smtp_ca: the system's trust store does not know this certificate
        tmp_path,
        f"email = true\nemail_to = ['admin@example.org']\nsmtp_host = '127.0.0.1'\n"
        f"smtp_port = {server.port}\nsmtp_starttls = true\nsmtp_user = 'nomade'\n"
        f"secrets_file = '{path}'\n",
    )
    d = start(dispatchers, cfg)
    d.send(alert())
    wait_for(lambda: sent(d, "email", 1), "the mail is given up")
    record = d.status()["channels"]["email"]
    assert record["failed"] == 1 and record["last_error"].startswith("certificate not trusted")
    assert mailbox.messages == []


# -- escaping -------------------------------------------------------------------------------------

HOSTILE = (
    "job x\r\nBcc: victim@evil.example\r\n"
    "<!channel> <!here> @channel <@U123> <http://evil|click> & \x1b[31m"
)


def test_user_controlled_text_reaches_each_receiver_neutralised(tmp_path, receivers, dispatchers):
    mailbox = Mailbox()
    receivers.append(smtp := smtp_server(mailbox))
    receivers.append(slack := Receiver())
    receivers.append(hook := Receiver())
    path = secrets_file(tmp_path, slack_webhook=slack.url("s"), webhook_url=hook.url("w"))
    cfg = settings(
        tmp_path,
        f"email = true\nemail_to = ['admin@example.org']\nsmtp_host = '127.0.0.1'\n"
        f"smtp_port = {smtp.port}\nslack = true\nwebhook = true\nsecrets_file = '{path}'\n",
    )
    d = start(dispatchers, cfg)
    hostile = alert(summary=f"{HOSTILE} ran out of memory", detail=HOSTILE, subject=HOSTILE)
    d.send(hostile)
    for channel in ("email", "slack", "webhook"):
        wait_for(lambda c=channel: sent(d, c, 1), f"{channel} has the alert")

    # mail: one message, one recipient, the name's CR LF did not make a header
    assert [rcpt for _, rcpt, _ in mailbox.messages] == [["admin@example.org"]]
    (raw,) = mailbox.raw
    headers = raw.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert not any(line.lower().startswith(b"bcc:") for line in headers)
    msg = mailbox.messages[0][2]
    assert msg["Bcc"] is None and "\n" not in msg["Subject"] and "\r" not in msg["Subject"]
    assert "job x Bcc: victim@evil.example" in msg["Subject"]
    assert "\x1b" not in msg.get_content()

    # Slack: no mention, no link, & < > escaped as Slack asks
    text = slack.posts[0]["body"]["text"]
    for live in ("<!channel>", "<!here>", "<@U123>", "<http://evil|click>", "@channel", "\x1b"):
        assert live not in text, live
    assert "&lt;!channel&gt;" in text and "&lt;@\u2060U123&gt;" in text and " &amp; " in text
    assert "&lt;http://evil|click&gt;" in text
    assert "\r" not in text

    # webhook: plain JSON, the text as it was
    assert hook.posts[0]["body"]["summary"] == f"{HOSTILE} ran out of memory"
    assert hook.posts[0]["body"]["detail"] == HOSTILE


def test_a_user_name_that_is_no_mail_address_is_not_mailed(tmp_path, receivers, dispatchers):
    mailbox = Mailbox()
    receivers.append(smtp := smtp_server(mailbox))
    cfg = settings(
        tmp_path,
        f"notify_job_users = true\nuser_mail_domain = 'example.org'\nsmtp_host = '127.0.0.1'\n"
        f"smtp_port = {smtp.port}\n",
    )
    d = start(dispatchers, cfg)
    d.send(alert(user="bob@evil.example, carol"))
    d.send(alert(user="bob"))
    wait_for(lambda: sent(d, "user_mail", 2), "both alerts are done")
    assert [rcpt for _, rcpt, _ in mailbox.messages] == [["bob@example.org"]]
    record = d.status()["channels"]["user_mail"]
    assert (record["sent"], record["failed"]) == (1, 1)
    assert "has no mail address" in record["last_error"]


# -- retries, failures, the queue -----------------------------------------------------------------


def test_a_receiver_that_fails_twice_gets_the_alert_on_the_third_try(
    tmp_path, receivers, dispatchers
):
    receivers.append(hook := Receiver(plan=[500, 500]))
    path = secrets_file(tmp_path, webhook_url=hook.url("w"))
    cfg = settings(tmp_path, f"webhook = true\nsecrets_file = '{path}'\nretry_attempts = 3\n")
    d = start(dispatchers, cfg)
    d.send(alert())
    wait_for(lambda: sent(d, "webhook", 1), "the alert is done")
    assert [p["body"]["id"] for p in hook.posts] == [7, 7, 7]
    record = d.status()["channels"]["webhook"]
    assert (record["sent"], record["failed"], record["attempts_failed"]) == (1, 0, 2)
    assert record["failing"] is False and record["last_error"].startswith("HTTP 500")


def test_retries_stop_at_retry_attempts_and_a_4xx_is_not_retried(tmp_path, receivers, dispatchers):
    receivers.append(slack := Receiver(plan=[503] * 10))
    receivers.append(hook := Receiver(plan=[404] * 10))
    path = secrets_file(tmp_path, slack_webhook=slack.url("s"), webhook_url=hook.url("w"))
    cfg = settings(
        tmp_path, f"slack = true\nwebhook = true\nsecrets_file = '{path}'\nretry_attempts = 4\n"
    )
    d = start(dispatchers, cfg)
    d.send(alert())
    wait_for(lambda: sent(d, "slack", 1) and sent(d, "webhook", 1), "both give up")
    assert (len(slack.posts), len(hook.posts)) == (4, 1)
    status = d.status()["channels"]
    assert (status["slack"]["failed"], status["slack"]["attempts_failed"]) == (1, 4)
    assert status["webhook"]["last_error"].startswith("HTTP 404")


def test_a_receiver_that_never_answers_blocks_neither_send_nor_other_channels(
    tmp_path, receivers, dispatchers
):
    mailbox = Mailbox()
    receivers.append(smtp := smtp_server(mailbox))
    receivers.append(hook := Receiver(hold=True))
    path = secrets_file(tmp_path, webhook_url=hook.url("w"))
    cfg = settings(
        tmp_path,
        f"email = true\nemail_to = ['admin@example.org']\nsmtp_host = '127.0.0.1'\n"
        f"smtp_port = {smtp.port}\nwebhook = true\nsecrets_file = '{path}'\n"
        "retry_attempts = 1\ntimeout_seconds = 0.5\n",
    )
    d = start(dispatchers, cfg)
    for i in range(3):
        d.send(alert(id=i))  # returns although the webhook holds the first one
    wait_for(lambda: sent(d, "email", 3), "the mail channel sends all three")
    assert [m["X-NOMADE-Alert"] for m in mailbox.to("admin@example.org")] == [
        "0 firing",
        "1 firing",
        "2 firing",
    ]
    wait_for(lambda: d.status()["channels"]["webhook"]["failed"] >= 1, "the webhook times out")
    record = d.status()["channels"]["webhook"]
    assert record["failing"] and record["last_error"] == "timed out" and record["sent"] == 0


def test_a_full_queue_drops_its_oldest_alert_and_counts_it(tmp_path, receivers, dispatchers):
    receivers.append(hook := Receiver(hold=True))
    path = secrets_file(tmp_path, webhook_url=hook.url("w"))
    cfg = settings(tmp_path, f"webhook = true\nsecrets_file = '{path}'\nqueue_size = 2\n")
    d = start(dispatchers, cfg)
    d.send(alert(id=1))
    assert hook.entered.wait(30), "the first alert reaches the receiver"
    for i in (2, 3, 4):  # 1 is in flight; 2 and 3 fill the queue; 4 pushes 2 out
        d.send(alert(id=i))
    record = d.status()["channels"]["webhook"]
    assert (record["dropped"], record["queued"]) == (1, 2)
    hook.release.set()
    wait_for(lambda: sent(d, "webhook", 3), "the rest is sent")
    assert [p["body"]["id"] for p in hook.posts] == [1, 3, 4]


# -- secrets --------------------------------------------------------------------------------------


def test_secrets_never_reach_logs_errors_or_status(tmp_path, receivers, dispatchers, caplog):
    caplog.set_level(logging.DEBUG)
    receivers.append(slack := Receiver(plan=[500] * 5, echo=True))  # echoes the secret path
    path = secrets_file(
        tmp_path,
        slack_webhook=slack.url(f"services/{SLACK_SECRET}"),
        webhook_url=f"http://nomade:{PASSWORD}@127.0.0.1:1/{HOOK_SECRET}",  # nothing listens
        webhook_token=TOKEN,
    )
    cfg = settings(
        tmp_path,
        f"slack = true\nwebhook = true\nsecrets_file = '{path}'\nretry_attempts = 2\n",
    )
    d = start(dispatchers, cfg)
    d.send(alert())
    wait_for(lambda: sent(d, "slack", 1) and sent(d, "webhook", 1), "both give up")
    status = d.status()
    shown = caplog.text + json.dumps(status) + repr(read_secrets(path))
    for secret in (SLACK_SECRET, "slacksecret4242", HOOK_SECRET, TOKEN, PASSWORD):
        assert secret not in shown, secret
    assert status["channels"]["slack"]["last_error"] == "HTTP 500 error at …"
    assert f"http://127.0.0.1:{slack.port}/…" in caplog.text  # where, without the path
    assert status["channels"]["webhook"]["target"] == "http://127.0.0.1:1/…"


def test_redact_keeps_scheme_and_host_only():
    assert redact("https://hooks.slack.com/services/T/B/X") == "https://hooks.slack.com/…"
    assert redact("https://u:pw@[::1]:8443/p?q=1") == "https://[::1]:8443/…"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_a_secrets_file_others_may_read_is_refused_in_one_line(tmp_path, mode):
    path = secrets_file(tmp_path, mode=mode, smtp_password=PASSWORD)
    with pytest.raises(ConfigError) as err:
        read_secrets(path, ["smtp_password"])
    message = str(err.value)
    assert message == (
        f"{path}: holds secrets, so must be readable by its owner only "
        f"(mode {mode:04o}: chmod 600 {path})"
    )
    assert PASSWORD not in message


def test_a_secrets_file_owned_by_someone_else_is_refused(tmp_path):
    if os.geteuid() != 0:
        required("only root can give a file to another user (./test.sh runs as root)")
    path = secrets_file(tmp_path, smtp_password=PASSWORD)
    os.chown(path, 12345, 12345)
    with pytest.raises(ConfigError, match="must be owned by root or by the aggregator's user"):
        read_secrets(path)


@pytest.mark.parametrize(
    "content, key, why",
    [
        ('smtp_pasword = "x"\n', "smtp_pasword", "unknown key (known: smtp_password, "),
        ("slack_webhook = 3\n", "slack_webhook", "expected a string, got int"),
        ('webhook_url = "ftp://h/x"\n', "webhook_url", "expected an http:// or https:// URL"),
        ('webhook_url = "https://h/sec ret"\n', "webhook_url", "expected an http:// or https://"),
        ("", "slack_webhook", "missing: alerts.slack is true"),
    ],
)
def test_a_bad_secrets_file_names_the_key_never_the_value(tmp_path, content, key, why):
    path = tmp_path / "s.toml"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError) as err:
        read_secrets(str(path), ["slack_webhook"])
    assert str(err.value).startswith(f"{path} [{key}]: {why}")
    assert "sec ret" not in str(err.value) and "ftp://h" not in str(err.value)


def test_the_dispatcher_reads_the_secrets_only_when_a_channel_needs_them(tmp_path):
    missing = tmp_path / "absent.toml"
    cfg = settings(tmp_path, f"secrets_file = '{missing}'\n")
    assert Dispatcher(cfg).status() == {"enabled": True, "channels": {}}
    cfg = settings(tmp_path, f"slack = true\nsecrets_file = '{missing}'\n")
    with pytest.raises(ConfigError) as err:
        Dispatcher(cfg)
    assert str(err.value).startswith(f"{missing}: cannot read (FileNotFoundError)")


def test_alerts_disabled_sends_nothing(tmp_path):
    d = Dispatcher(settings(tmp_path, "enabled = false\nslack = true\n")).start()
    d.send(alert())
    assert d.status() == {"enabled": False, "channels": {}}
    d.stop()


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, key, why",
    [
        ("email = true\n", "alerts.email_to", "must name at least one address"),
        ("email_to = ['root']\n", "alerts.email_to", "item 1: expected mail addresses"),
        (
            'email_to = ["a@b.org\\r\\nBcc: c@d.org"]\n',
            "alerts.email_to",
            "item 1: expected mail addresses",
        ),
        ("email_from = 'x@y z'\n", "alerts.email_from", "must be a mail address"),
        ("notify_job_users = true\n", "alerts.user_mail_domain", "must be set when"),
        ("user_mail_domain = '@x.org'\n", "alerts.user_mail_domain", "must be a mail domain"),
        (
            "smtp_host = 'smtp.example.org'\nsmtp_user = 'u'\n",
            "alerts.smtp_user",
            "needs alerts.smtp_starttls = true",
        ),
        ("smtp_host = 'a b'\n", "alerts.smtp_host", "must be a host name or address"),
        ("secrets_file = 'alerts.toml'\n", "alerts.secrets_file", "must be an absolute path"),
        ("retry_attempts = 0\n", "alerts.retry_attempts", "must be between 1 and 20"),
        ("slack = 'yes'\n", "alerts.slack", "expected bool, got str"),
    ],
)
def test_a_bad_alerts_setting_names_its_key(text, key, why):
    with pytest.raises(ConfigError) as err:
        config.parse(f"[alerts]\n{text}", "n.toml")
    assert str(err.value).startswith(f"n.toml [{key}]: {why}")


def test_every_alerts_setting_and_secret_is_documented_and_in_the_example_config():
    docs = (ROOT / "docs" / "configuration.md").read_text()
    example = (ROOT / "slurm-conf" / "nomade.toml").read_text()
    alerts_md = (ROOT / "docs" / "alerts.md").read_text()
    assert "[alerts]" in docs and "[alerts]" in example
    for f in dataclasses.fields(config.Alerts):
        assert f"`{f.name}`" in docs, f.name
        shown = (f"\n{f.name} = ", f"\n# {f.name} = ", f"\n# [[alerts.{f.name}]]")
        assert any(line in example for line in shown), f.name
    from aggregator.alerts.dispatch import SECRET_KEYS

    for key in SECRET_KEYS:
        assert f"`{key}`" in alerts_md, key
    assert config.load(str(ROOT / "slurm-conf" / "nomade.toml")).alerts == config.Alerts()
