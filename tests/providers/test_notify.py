"""The notification provider against a real SMTP server (aiosmtpd) on loopback: what arrives, and what is refused."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import time
from pathlib import Path

import pytest

pytest.importorskip("aiosmtpd")

from providers.notify import provider as notify_provider  # noqa: E402
from toolkit import ActionFailed  # noqa: E402
from toolkit.client import ClientError  # noqa: E402
from toolkit.server import create_app  # noqa: E402
from toolkit.testing import TestClient, TokenAuthority  # noqa: E402

USER = "22222222-2222-4222-8222-222222222222"
SECRET = "s3cret-Pa55word"


@pytest.fixture
def servers(smtp_servers):
    return smtp_servers


@pytest.fixture
def make_client(tmp_path):
    apps = []

    def make(**settings) -> TestClient:
        authority = TokenAuthority()
        config = {"APTK_DATA_DIR": str(tmp_path / f"data{len(apps)}"), "APTK_NOTIFY_SENDER": "flows@example.org",
                  **settings}
        app = create_app(config, providers=[("/notify", notify_provider)], verifier=authority.verifier)
        apps.append(app)
        client = TestClient(app, "/notify", authority.token(USER, scopes=[notify_provider.globus_auth_scope]),
                            authority)
        client.data_dir = Path(config["APTK_DATA_DIR"])
        return client

    yield make
    for app in apps:
        app.extensions["aptk"].runtime.stop()


def lf(part) -> str:
    """A received part's text, with the wire's CRLF line ends as LF."""
    return part.get_content().replace("\r\n", "\n")


def refused(client, body):
    with pytest.raises(ClientError) as caught:
        client.run(body)
    assert caught.value.status == 400, caught.value
    return caught.value.description


def test_plain_mail_arrives_with_substituted_variables(servers, make_client):
    server = servers()
    client = make_client(APTK_SMTP_URL=server.url())
    status = client.run({"destination": ["ada@example.org", "Bob B <bob@example.net>"], "subject": "Run done",
                         "body_template": "Hello $name, run ${run} finished; cost $$5.",
                         "body_variables": {"name": "Ada", "run": 42}}, wait=True)
    assert status["status"] == "SUCCEEDED", status
    details = status["details"]
    assert details["accepted"] == ["ada@example.org", "bob@example.net"]
    (message,) = server.messages
    assert server.envelopes == [("flows@example.org", ["ada@example.org", "bob@example.net"])]
    assert message["Subject"] == "Run done" and message["From"] == "flows@example.org"
    assert message["To"] == "ada@example.org, Bob B <bob@example.net>"
    assert message["Message-ID"] == details["message_id"] and details["message_id"].endswith("@example.org>")
    assert message.get_content_type() == "text/plain"
    assert message.get_content().replace("\r\n", "\n") == "Hello Ada, run 42 finished; cost $5.\n"


def test_html_body_escapes_variables_unless_raw_and_has_a_text_alternative(servers, make_client):
    server = servers()
    client = make_client(APTK_SMTP_URL=server.url())
    status = client.run({"destination": "ada@example.org", "subject": "Report", "body_mimetype": "text/html",
                         "body_template": "<p>Dear $name,</p><p>$link</p>",
                         "body_variables": {"name": "<script>alert(1)</script>&Co",
                                            "link": '<a href="https://example.org/r">report</a>'},
                         "raw_variables": ["link"]}, wait=True)
    assert status["status"] == "SUCCEEDED", status
    (message,) = server.messages
    assert message.get_content_type() == "multipart/alternative"
    text, markup = message.get_payload()
    assert (text.get_content_type(), markup.get_content_type()) == ("text/plain", "text/html")
    html = markup.get_content()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&amp;Co" in html and "<script>" not in html
    assert '<a href="https://example.org/r">report</a>' in html
    assert "Dear <script>alert(1)</script>&Co" in text.get_content() and "report" in text.get_content()


@pytest.mark.parametrize("body, expected", [
    ({"body_template": "Hi $name and $other", "body_variables": {"name": "x"}}, "body_template: names the variable $other"),
    ({"body_template": "costs $5"}, "body_template: Invalid placeholder"),
    ({"subject": "Hi\r\nBcc: victim@example.com"}, "subject: must not contain '\\r'"),
    ({"subject": "Hi\nBcc: victim@example.com"}, "subject: must not contain '\\n'"),
    ({"subject": "Hi\x00"}, "subject: must not contain '\\x00'"),
    ({"destination": "ada@example.org\r\nBcc: victim@example.com"}, "destination: must not contain"),
    ({"destination": ["ok@example.org", "not an address"]}, "destination[1]: "),
    ({"destination": "a@b@example.org"}, "destination: "),
    ({"destination": "ada@localhost"}, "destination: 'ada@localhost' is not a valid email address"),
    ({"sender": "Flows <flows@example.org>\nBcc: x@example.com"}, "sender: must not contain"),
    ({"sender": "ceo@bank.example"}, "sender: this server sends only from example.org, not bank.example"),
    ({"destination": [f"u{i}@example.org" for i in range(101)]}, "destination"),
])
def test_bad_requests_are_400s_and_nothing_is_sent(servers, make_client, body, expected):
    server = servers()
    client = make_client(APTK_SMTP_URL=server.url())
    request = {"destination": "ada@example.org", "subject": "s", "body_template": "Hi", **body}
    assert expected in refused(client, request)
    assert server.messages == []


def test_body_size_limit_and_sender_allow_list_settings(servers, make_client):
    server = servers()
    client = make_client(APTK_SMTP_URL=server.url(), APTK_NOTIFY_MAX_BODY_BYTES="100",
                         APTK_NOTIFY_SENDER_DOMAINS="example.org, lab.example.net")
    base = {"destination": "ada@example.org", "subject": "s"}
    assert "over this server's 100" in refused(client, {**base, "body_template": "$x",
                                                         "body_variables": {"x": "y" * 101}})
    assert "sends only from example.org, lab.example.net" in refused(
        client, {**base, "body_template": "x", "sender": "me@other.example"})
    status = client.run({**base, "body_template": "y" * 100, "sender": "Lab <bot@lab.example.net>"}, wait=True)
    assert status["status"] == "SUCCEEDED", status
    assert server.envelopes[0][0] == "bot@lab.example.net"


def test_no_mail_server_configured_is_a_400(make_client):
    client = make_client()
    assert "APTK_SMTP_URL" in refused(client, {"destination": "ada@example.org", "body_template": "x"})


@pytest.mark.parametrize("tls", [None, "starttls", "smtps"])
def test_deployment_server_with_auth_and_tls(servers, make_client, tls):
    server = servers(auth={"aptk": SECRET}, tls=tls)
    client = make_client(APTK_SMTP_URL=server.url("aptk", SECRET), APTK_SMTP_CA_FILE=str(server.cert_file or ""))
    status = client.run({"destination": "ada@example.org", "subject": "tls", "body_template": "x"}, wait=True)
    assert status["status"] == "SUCCEEDED", status
    assert len(server.messages) == 1
    # Credentials from the environment instead of the URL; a wrong password is a precise permanent failure.
    client = make_client(APTK_SMTP_URL=server.url(), APTK_SMTP_USERNAME="aptk", APTK_SMTP_PASSWORD="wrong-" + SECRET,
                         APTK_SMTP_CA_FILE=str(server.cert_file or ""))
    status = client.run({"destination": "ada@example.org", "subject": "tls", "body_template": "x"}, wait=True)
    assert status["status"] == "FAILED" and status["details"]["code"] == "AuthenticationFailed", status
    assert SECRET not in json.dumps(status)


def test_caller_credentials_are_used_and_never_shown(servers, make_client):
    server = servers(auth={"caller": SECRET}, tls="starttls")
    # No deployment server at all; the caller's is on loopback, which this deployment allows.
    client = make_client(APTK_SMTP_CA_FILE=str(server.cert_file), APTK_NOTIFY_SMTP_ALLOW_LOOPBACK="1")
    body = {"destination": "ada@example.org", "subject": "own server", "body_template": "x",
            "sender": "me@anywhere.example",
            "send_credentials": [{"credential_type": "smtp", "credential_method": "email",
                                  "credential_value": {"hostname": "127.0.0.1", "port": server.port,
                                                       "username": "caller", "password": SECRET}}]}
    status = client.run(body, wait=True)
    assert status["status"] == "SUCCEEDED", status
    assert server.envelopes == [("me@anywhere.example", ["ada@example.org"])]
    shown = [status, client.status(status["action_id"]), client.log(status["action_id"])]
    assert SECRET not in json.dumps(shown)
    wrong = {**body, "send_credentials": [{"credential_value": {"hostname": "127.0.0.1", "port": server.port,
                                                                "username": "caller", "password": "x" + SECRET}}]}
    failed = client.run(wrong, wait=True)
    assert failed["details"]["code"] == "AuthenticationFailed" and SECRET not in json.dumps(failed)


def test_permanent_refusal_fails_with_the_reply(servers, make_client):
    server = servers(replies=["554 5.7.1 Message rejected as spam"])
    client = make_client(APTK_SMTP_URL=server.url())
    status = client.run({"destination": "ada@example.org", "subject": "s", "body_template": "x"}, wait=True)
    assert status["status"] == "FAILED", status
    assert status["details"]["code"] == "MessageRefused"
    assert "554 5.7.1 Message rejected as spam" in status["details"]["description"]
    assert server.messages == []


def test_transient_refusal_is_retried_until_accepted(servers, make_client):
    server = servers(replies=["451 4.3.0 Try again later"])
    client = make_client(APTK_SMTP_URL=server.url())
    status = client.run({"destination": "ada@example.org", "subject": "s", "body_template": "x"}, wait=True)
    assert status["status"] == "SUCCEEDED", status
    assert status["details"]["attempts"] == 2 and len(server.messages) == 1


def test_server_down_is_retried_until_the_deadline(make_client):
    import datetime
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = make_client(APTK_SMTP_URL=f"smtp://127.0.0.1:{port}")
    # Attempts at 0 and 1 s; the next would come after the deadline: it gives up at 1 s, well before it.
    deadline = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=3)).isoformat()
    status = client.run({"destination": "ada@example.org", "subject": "s", "body_template": "x"},
                        deadline=deadline, wait=True)
    assert status["status"] == "FAILED", status
    assert status["details"]["code"] == "ConnectionRefused" and status["details"]["attempts"] >= 2


# --- what a flow sees: the answer to /run, and the message as received -------------------------------------------

def test_a_quick_server_is_answered_succeeded_by_run_itself_a_slow_one_active(servers, make_client):
    server = servers()
    client = make_client(APTK_SMTP_URL=server.url())
    status = client.run({"destination": "ada@example.org", "subject": "quick", "body_template": "x"})
    assert status["status"] == "SUCCEEDED", status  # no polling: /run answered it
    assert status["details"]["attempts"] == 1 and len(server.messages) == 1
    slow = servers(delay=notify_provider.answer_within + 1)
    client = make_client(APTK_SMTP_URL=slow.url())
    started = time.monotonic()
    status = client.run({"destination": "ada@example.org", "subject": "slow", "body_template": "x"})
    assert status["status"] == "ACTIVE", status
    assert notify_provider.answer_within <= time.monotonic() - started < notify_provider.answer_within + 1
    assert client.wait(status["action_id"], timeout=10)["status"] == "SUCCEEDED"


def test_message_as_received_headers_structure_and_recipients(servers, make_client):
    server = servers()
    client = make_client(APTK_SMTP_URL=server.url())
    status = client.run({"destination": ["ada@example.org", "Grace H <grace@example.net>", "alan@example.com"],
                         "subject": "Résumé of run 7", "body_mimetype": "text/html", "notification_priority": "high",
                         "body_template": "<h1>Run $run</h1><p>By $who</p>",
                         "body_variables": {"run": 7, "who": "O'Brien & <Sons>"}}, wait=True)
    assert status["status"] == "SUCCEEDED", status
    (message,) = server.messages
    assert server.envelopes == [("flows@example.org", ["ada@example.org", "grace@example.net", "alan@example.com"])]
    assert message["Subject"] == "Résumé of run 7" and message["Importance"] == "high"
    assert message["To"] == "ada@example.org, Grace H <grace@example.net>, alan@example.com"
    assert message["Message-ID"] == f"<{status['action_id']}.notify@example.org>"  # the same on every attempt
    assert message["Date"] and "Bcc" not in message
    assert message.get_content_type() == "multipart/alternative"
    text, markup = message.get_payload()
    assert lf(markup) == "<h1>Run 7</h1><p>By O&#x27;Brien &amp; &lt;Sons&gt;</p>\n"
    assert lf(text) == "Run 7\nBy O'Brien & <Sons>\n"


# --- credentials: never stored -------------------------------------------------------------------------------------

def stored_bytes(data_dir: Path) -> bytes:
    """Every byte the toolkit wrote to its data directory: the database, its WAL and anything else."""
    return b"".join(p.read_bytes() for p in sorted(data_dir.rglob("*")) if p.is_file())


def test_caller_password_is_never_written_to_the_database(servers, make_client):
    server = servers(auth={"caller-user-7f3": SECRET})
    client = make_client(APTK_NOTIFY_SMTP_ALLOW_LOOPBACK="1")
    credentials = [{"credential_type": "smtp", "credential_method": "email",
                    "credential_value": {"hostname": "127.0.0.1", "port": server.port,
                                         "username": "caller-user-7f3", "password": SECRET}}]
    body = {"destination": "ada@example.org", "subject": "s", "body_template": "x", "sender": "me@own.example",
            "send_credentials": credentials}
    status = client.run(body, request_id="with-password", wait=True)
    assert status["status"] == "SUCCEEDED", status  # the password did reach the mail server
    assert len(server.messages) == 1
    with sqlite3.connect(client.data_dir / "aptk.db") as db:
        (stored,) = [json.loads(row[0]) for row in db.execute("SELECT body FROM aptk_actions")]
    value = stored["send_credentials"][0]["credential_value"]
    assert "password" not in value and value["username"] == "caller-user-7f3" and value["password_held"]
    written = stored_bytes(client.data_dir)
    assert b"caller-user-7f3" in written  # the right files were read
    assert SECRET.encode() not in written
    # The same request again (a retry, password and all) finds its action; nothing new is sent.
    again = client.run(body, request_id="with-password")
    assert again["action_id"] == status["action_id"] and len(server.messages) == 1


@pytest.mark.parametrize("password, expected", [
    ("p" * 1025, "password: at most 1024 characters"),
    (987654321, "password: must be a string"),
])
def test_bad_credentials_are_refused_without_echoing_them(servers, make_client, password, expected):
    client = make_client()
    body = {"destination": "ada@example.org", "body_template": "x", "sender": "me@own.example",
            "send_credentials": [{"credential_value": {"hostname": "127.0.0.1", "password": password}}]}
    description = refused(client, body)
    assert expected in description and str(password)[:8] not in description
    two = {**body, "send_credentials": [{"credential_value": {"hostname": "h.example", "password": SECRET}}] * 2}
    description = refused(client, two)
    assert "at most one mail server" in description and SECRET not in description


# --- a caller's own mail server: never into the host's network unless allowed --------------------------------------

def own_server(hostname, port=None, **value):
    return {"destination": "ada@example.org", "subject": "s", "body_template": "x", "sender": "me@own.example",
            "send_credentials": [{"credential_type": "smtp", "credential_value": {
                "hostname": hostname, **({"port": port} if port else {}), **value}}]}


@pytest.mark.parametrize("hostname, expected", [
    ("127.0.0.1", "127.0.0.1 is a loopback address; this server sends no mail there"),
    ("::1", "::1 is a loopback address"),
    ("[::1]", "::1 is a loopback address"),
    ("169.254.169.254", "169.254.169.254 is a link-local address; this server sends no mail into private networks"),
    ("::ffff:169.254.169.254", "169.254.169.254 is a link-local address"),
    ("10.1.2.3", "10.1.2.3 is a private or reserved address"),
    ("192.168.0.1", "is a private or reserved address"),
    ("0.0.0.0", "is a private or reserved address"),
])
def test_caller_smtp_servers_in_private_networks_are_refused(servers, make_client, hostname, expected):
    server = servers()
    client = make_client(APTK_SMTP_URL=server.url())  # the deployment's own server on loopback stays trusted
    description = refused(client, own_server(hostname, 25, username="u", password=SECRET))
    assert description.startswith("send_credentials[0].credential_value.hostname: ") and expected in description
    assert SECRET not in description
    assert client.run(MAIL, wait=True)["status"] == "SUCCEEDED" and len(server.messages) == 1


def test_caller_smtp_server_named_on_loopback_is_refused_when_sending(servers, make_client):
    server = servers()
    strict = make_client()
    status = strict.run(own_server("localhost", server.port), wait=True)
    assert status["status"] == "FAILED" and status["details"]["code"] == "AddressRefused", status
    assert "localhost resolves to a refused address" in status["details"]["description"]
    assert "loopback" in status["details"]["description"]
    assert server.messages == []
    # Another network allowed is not loopback; the literal address is still a 400.
    other = make_client(APTK_NOTIFY_SMTP_ALLOW_NETWORKS="10.0.0.0/8")
    assert "loopback" in refused(other, own_server("127.0.0.1", server.port))
    # The webhook settings say nothing about mail servers.
    webhooks = make_client(APTK_NOTIFY_WEBHOOK_ALLOW_LOOPBACK="1", APTK_NOTIFY_WEBHOOK_ALLOW_NETWORKS="127.0.0.0/8")
    assert "loopback" in refused(webhooks, own_server("127.0.0.1", server.port))


@pytest.mark.parametrize("settings", [{"APTK_NOTIFY_SMTP_ALLOW_LOOPBACK": "true"},
                                      {"APTK_NOTIFY_SMTP_ALLOW_NETWORKS": "127.0.0.0/8, ::1/128"}])
def test_caller_smtp_server_on_loopback_when_allowed(servers, make_client, settings):
    server = servers()
    client = make_client(**settings)
    assert client.run(own_server("127.0.0.1", server.port), wait=True)["status"] == "SUCCEEDED"
    assert client.run(own_server("localhost", server.port), wait=True)["status"] == "SUCCEEDED"
    assert len(server.messages) == 2


_AUDIT: list[tuple[str, object]] | None = None


def _audit(event: str, args: tuple) -> None:
    if _AUDIT is not None and event in ("socket.getaddrinfo", "socket.connect"):
        _AUDIT.append((event, args[0] if event == "socket.getaddrinfo" else args[1]))


def test_caller_smtp_connection_goes_to_the_checked_address_with_starttls_to_the_name(servers, make_client):
    """The name is resolved once, checked, and the connection opened to the address that was checked (a second
    lookup could answer differently); STARTTLS still checks the certificate against the name."""
    import sys

    global _AUDIT
    server = servers(tls="starttls")
    client = make_client(APTK_NOTIFY_SMTP_ALLOW_LOOPBACK="1", APTK_SMTP_CA_FILE=str(server.cert_file))
    if not getattr(sys, "_aptk_notify_audit", False):
        sys.addaudithook(_audit)
        sys._aptk_notify_audit = True
    _AUDIT = []
    try:
        status = client.run(own_server("localhost", server.port), wait=True)
    finally:
        seen, _AUDIT = _AUDIT, None
    assert status["status"] == "SUCCEEDED", status
    lookups = [host for event, host in seen if event == "socket.getaddrinfo"]
    connects = [address for event, address in seen if event == "socket.connect"
                and isinstance(address, tuple) and address[1] == server.port]
    assert lookups.count("localhost") == 1, seen
    assert connects and all(address[0] in ("127.0.0.1", "::1") for address in connects), seen
    # STARTTLS took place with the certificate checked (a CA that did not sign it fails the same send).
    other = make_client(APTK_NOTIFY_SMTP_ALLOW_LOOPBACK="1", APTK_SMTP_CA_FILE=str(servers(tls="starttls").cert_file))
    failed = other.run(own_server("localhost", server.port), wait=True)
    assert failed["status"] == "FAILED" and failed["details"]["code"] == "TLSError", failed


def test_caller_smtps_connection_is_pinned_and_verifies_the_name(servers, tmp_path):
    """SMTPS (a caller's server on port 465) over the same pinned connection, straight through send_once."""
    from providers.notify import mail

    server = servers(tls="smtps")
    config = {"APTK_NOTIFY_SMTP_ALLOW_LOOPBACK": "1", "APTK_SMTP_CA_FILE": str(server.cert_file)}
    prepared = mail.prepare(own_server("localhost", 465), config)
    prepared.server.port = server.port  # the same server as on 465, found where the test could bind it
    assert prepared.server.security == "tls" and prepared.server.policy is not None
    result = mail.send_once(prepared)
    assert result["accepted"] == ["ada@example.org"] and len(server.messages) == 1
    strict = mail.prepare(own_server("localhost", 465), {"APTK_SMTP_CA_FILE": str(server.cert_file)})
    strict.server.port = server.port
    with pytest.raises(ActionFailed) as caught:
        mail.send_once(strict)
    assert caught.value.code == "AddressRefused" and len(server.messages) == 1


# --- named Jinja templates -----------------------------------------------------------------------------------------

def test_shipped_template_html_layout_with_text_alternative_escapes_every_variable(servers, make_client):
    server = servers()
    client = make_client(APTK_SMTP_URL=server.url())
    variables = {"greeting": "Dear <b>Ada</b>", "message": "Results & <script>alert(1)</script>",
                 "link": "https://example.org/r?a=1&b=2", "link_text": "Open the report"}
    status = client.run({"destination": "ada@example.org", "subject": "Run <42> done", "template": "message",
                         "body_variables": variables}, wait=True)
    assert status["status"] == "SUCCEEDED", status
    (message,) = server.messages
    text, markup = message.get_payload()
    html = lf(markup)
    assert "<title>Run &lt;42&gt; done</title>" in html
    assert "<p>Dear &lt;b&gt;Ada&lt;/b&gt;</p>" in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>" not in html and "<b>" not in html
    assert 'href="https://example.org/r?a=1&amp;b=2"' in html
    plain = lf(text)
    assert plain.startswith("Run <42> done\n") and "Dear <b>Ada</b>" in plain
    assert "Open the report: https://example.org/r?a=1&b=2" in plain and "Sent by an automated flow." in plain
    # A raw variable must be asked for by name; a javascript: link is no link.
    status = client.run({"destination": "ada@example.org", "subject": "s", "template": "message",
                         "body_variables": {**variables, "link": "javascript:alert(1)"},
                         "raw_variables": ["greeting"]}, wait=True)
    html = server.messages[1].get_payload()[1].get_content()
    assert "<p>Dear <b>Ada</b></p>" in html and "javascript:" not in html and "<script>" not in html


def test_deployment_templates_override_the_shipped_ones(servers, make_client, tmp_path):
    own = tmp_path / "own-templates"
    own.mkdir()
    (own / "message.html").write_text("<p>Ours: {{ message }}</p>")
    (own / "alert.txt").write_text("ALERT {{ level }}: {{ message }}\n")
    (own / "peek.txt").write_text("{{ message.__class__.__mro__ }}\n")
    (own / "broken.html").write_text("{% if %}")
    server = servers()
    client = make_client(APTK_SMTP_URL=server.url(), APTK_NOTIFY_TEMPLATES_DIR=str(own))
    base = {"destination": "ada@example.org", "subject": "s"}
    status = client.run({**base, "template": "message", "body_variables": {"message": "<i>hi</i>"}}, wait=True)
    assert status["status"] == "SUCCEEDED", status
    text, markup = server.messages[0].get_payload()
    assert lf(markup) == "<p>Ours: &lt;i&gt;hi&lt;/i&gt;</p>\n"
    assert "<i>hi</i>" in text.get_content()  # the shipped text template is still there
    status = client.run({**base, "template": "alert", "body_variables": {"level": 3, "message": "<disk>"}},
                        wait=True)
    assert status["status"] == "SUCCEEDED", status
    assert server.messages[1].get_content_type() == "text/plain"
    assert lf(server.messages[1]) == "ALERT 3: <disk>\n"
    assert "template: alert needs a value body_variables does not give ('level' is undefined)" in refused(
        client, {**base, "template": "alert", "body_variables": {"message": "m"}})
    assert "this server has no template named 'nosuch'" in refused(client, {**base, "template": "nosuch"})
    assert "refused an unsafe operation" in refused(client, {**base, "template": "peek",
                                                             "body_variables": {"message": "m"}})
    assert "template broken is broken" in refused(client, {**base, "template": "broken"}).replace(".html", "")
    assert "either body_template or template" in refused(client, {**base, "template": "alert",
                                                                   "body_template": "x"})
    assert len(server.messages) == 2


# --- webhooks ---------------------------------------------------------------------------------------------------

HOOK_SECRET = "hook-secret-5d1"


@pytest.fixture
def receivers():
    from tests.servers.webhook import WebhookReceiver

    started = []

    def start(**kw):
        receiver = WebhookReceiver(HOOK_SECRET, **kw)
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


def hook(url, **extra):
    return {"notification_method": "webhook", "destination": url, "subject": "Run 9 <done>",
            "body_template": "Run $run finished", "body_variables": {"run": 9}, **extra}


def test_webhook_posts_a_signed_json_document(receivers, make_client):
    receiver = receivers()
    client = make_client(APTK_NOTIFY_WEBHOOK_SECRET=HOOK_SECRET, APTK_NOTIFY_WEBHOOK_ALLOW_LOOPBACK="true")
    status = client.run(hook(receiver.url(path="/hook?team=7")), wait=True)
    assert status["status"] == "SUCCEEDED", status
    assert status["details"]["status_code"] == 200
    (got,) = receiver.requests
    assert got.signature_ok and got.path == "/hook?team=7"
    expected = "sha256=" + hmac.new(HOOK_SECRET.encode(), got.headers["X-Aptk-Timestamp"].encode() + b"." + got.body,
                                    hashlib.sha256).hexdigest()
    assert got.headers["X-Aptk-Signature"] == expected
    assert abs(int(got.headers["X-Aptk-Timestamp"]) - time.time()) < 30
    assert got.headers["X-Aptk-Delivery"] == status["action_id"]
    assert got.headers["Content-Type"] == "application/json"
    assert json.loads(got.body) == {"action_id": status["action_id"], "subject": "Run 9 <done>",
                                    "text": "Run 9 finished", "variables": {"run": 9}}


def test_webhook_over_https_to_a_name_is_sent_to_the_checked_address(receivers, make_client):
    receiver = receivers(tls=True)
    client = make_client(APTK_NOTIFY_WEBHOOK_SECRET=HOOK_SECRET, APTK_NOTIFY_WEBHOOK_CA_FILE=str(receiver.cert_file),
                         APTK_NOTIFY_WEBHOOK_ALLOW_NETWORKS="127.0.0.0/8, ::1/128")
    status = client.run(hook(receiver.url(host="localhost")), wait=True)
    assert status["status"] == "SUCCEEDED", status
    assert receiver.requests[0].signature_ok and receiver.requests[0].headers["Host"] == f"localhost:{receiver.port}"


@pytest.mark.parametrize("url, expected", [
    ("https://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
    ("https://[::ffff:169.254.169.254]/", "169.254.169.254 is a link-local address"),
    ("https://10.1.2.3/hook", "10.1.2.3 is a private or reserved address"),
    ("https://192.168.0.1/hook", "is a private or reserved address"),
    ("https://0.0.0.0/hook", "is a private or reserved address"),
    ("https://127.0.0.1/hook", "127.0.0.1 is a loopback address"),
    ("https://[::1]/hook", "::1 is a loopback address"),
    ("http://127.0.0.1:9/hook", "a webhook is an https:// URL"),
    ("http://example.org/hook", "a webhook is an https:// URL"),
    ("ftp://example.org/hook", "a webhook is an https:// URL"),
    ("https://user:pw@example.org/hook", "must not carry credentials"),
])
def test_webhook_urls_into_private_networks_are_refused(make_client, url, expected):
    client = make_client(APTK_NOTIFY_WEBHOOK_SECRET=HOOK_SECRET)
    assert expected in refused(client, hook(url))


def test_webhook_loopback_and_http_need_the_setting(receivers, make_client):
    receiver = receivers()
    strict = make_client(APTK_NOTIFY_WEBHOOK_SECRET=HOOK_SECRET)
    # A name that resolves to loopback passes /run and is refused when its address is checked.
    status = strict.run(hook(f"https://localhost:{receiver.port}/hook"), wait=True)
    assert status["status"] == "FAILED" and status["details"]["code"] == "AddressRefused", status
    assert "loopback" in status["details"]["description"]
    assert "sends no webhooks" in refused(make_client(), hook(receiver.url()))  # no secret: no webhooks at all
    lenient = make_client(APTK_NOTIFY_WEBHOOK_SECRET=HOOK_SECRET, APTK_NOTIFY_WEBHOOK_ALLOW_LOOPBACK="1")
    assert "http:// is allowed only to a loopback address" in refused(lenient, hook("http://192.0.2.1/hook"))
    assert receiver.requests == []
    assert lenient.run(hook(receiver.url()), wait=True)["status"] == "SUCCEEDED"


def test_webhook_redirects_are_not_followed_and_failures_retried(receivers, make_client):
    receiver = receivers(replies=[(302, {"Location": "http://169.254.169.254/latest/meta-data/"})])
    client = make_client(APTK_NOTIFY_WEBHOOK_SECRET=HOOK_SECRET, APTK_NOTIFY_WEBHOOK_ALLOW_LOOPBACK="yes")
    status = client.run(hook(receiver.url()), wait=True)
    assert status["status"] == "FAILED" and status["details"]["code"] == "Redirected", status
    assert len(receiver.requests) == 1
    receiver.replies = [(503, {}), (429, {})]
    status = client.run(hook(receiver.url()), wait=True)
    assert status["status"] == "SUCCEEDED" and status["details"]["attempts"] == 3, status
    assert [r.headers["X-Aptk-Delivery"] for r in receiver.requests[1:]] == [status["action_id"]] * 3
    receiver.replies = [(404, {})]
    status = client.run(hook(receiver.url()), wait=True)
    assert status["status"] == "FAILED" and status["details"]["code"] == "WebhookRefused", status
    assert "404" in status["details"]["description"]
    assert HOOK_SECRET not in json.dumps(status)


# --- input documents from Globus's public examples run unchanged -------------------------------------------------

# globus-automate-client, examples/action_bodies/notification_email.json (its send_credentials are for SES)
GLOBUS_EXAMPLE = {
    "notification_method": "email", "notification_priority": "high",
    "body_template": "<html><body><h1>Hello $Name</h1></body></html>", "body_mimetype": "text/html",
    "body_variables": {"Name": "Dude"}, "destination": "uriel@globus.org", "sender": "uriel@globus.org",
    "subject": "Testing From Automate CLI",
    "send_credentials": [{"credential_method": "email", "credential_type": "ses",
                          "credential_value": {"aws_access_key_id": "SECRET", "aws_secret_access_key": "SECRET",
                                               "region_name": "us-east-1"}}],
}


def test_globus_example_documents(servers, make_client):
    server = servers(auth={"mdf": SECRET})
    client = make_client(APTK_SMTP_URL=server.url("mdf", SECRET), APTK_NOTIFY_SENDER_DOMAINS="globus.org",
                         APTK_NOTIFY_SMTP_ALLOW_LOOPBACK="1")
    # SES credentials are not an SMTP server: a precise 400 that shows no secret.
    description = refused(client, GLOBUS_EXAMPLE)
    assert "credential_type: 'ses' is not one of ['smtp']" in description and "SECRET" not in description
    # Without them, the same document goes through the deployment's server.
    example = {k: v for k, v in GLOBUS_EXAMPLE.items() if k != "send_credentials"}
    status = client.run(example, wait=True)
    assert status["status"] == "SUCCEEDED", status
    message = server.messages[0]
    assert message["Importance"] == "high" and message["Subject"] == "Testing From Automate CLI"
    assert "<h1>Hello Dude</h1>" in message.get_payload()[1].get_content()
    # A flow's notify step as published flows write it (method "any", __Private_Parameters, own SMTP server).
    step = {"body_mimetype": "text/html", "sender": "materialsdatafacility@uchicago.edu",
            "destination": "curator@illinois.edu", "subject": "Materials Data Facility Curation Request",
            "body_template": "Please either Approve or Deny the request here: $landing_page_url",
            "body_variables": {"landing_page_url": "https://actions.globus.org/weboption/landing_page/abc"},
            "notification_method": "any", "notification_priority": "high",
            "send_credentials": [{"credential_method": "email", "credential_type": "smtp",
                                  "credential_value": {"hostname": "127.0.0.1", "port": server.port,
                                                       "username": "mdf", "password": SECRET}}],
            "__Private_Parameters": ["send_credentials"]}
    status = client.run(step, wait=True)
    assert status["status"] == "SUCCEEDED", status
    assert server.envelopes[1] == ("materialsdatafacility@uchicago.edu", ["curator@illinois.edu"])
    assert ("https://actions.globus.org/weboption/landing_page/abc"
            in server.messages[1].get_payload()[1].get_content())


def test_webhook_timeout_setting(receivers, make_client):
    import datetime

    receiver = receivers(delay=3)
    client = make_client(APTK_NOTIFY_WEBHOOK_SECRET=HOOK_SECRET, APTK_NOTIFY_WEBHOOK_ALLOW_LOOPBACK="1",
                         APTK_NOTIFY_WEBHOOK_TIMEOUT="0.5")
    # Attempts at 0 and 1.5 s, each timing out after 0.5 s; it gives up at 2 s, 2 s before the deadline.
    deadline = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=4)).isoformat()
    started = time.monotonic()
    status = client.run(hook(receiver.url()), deadline=deadline, wait=True)
    assert status["status"] == "FAILED" and status["details"]["code"] == "Timeout", status
    assert time.monotonic() - started < 3.9 and len(receiver.requests) >= 2


def test_smtp_timeout_setting(servers, make_client):
    import datetime

    server = servers(replies=["451 4.3.0 Try again later"] * 20, delay=3)  # every answer to DATA comes late
    client = make_client(APTK_SMTP_URL=server.url(), APTK_SMTP_TIMEOUT="0.5")
    # Attempts at 0 and 1.5 s, each timing out after 0.5 s; it gives up at 2 s, 2 s before the deadline.
    deadline = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=4)).isoformat()
    started = time.monotonic()
    status = client.run({"destination": "ada@example.org", "subject": "s", "body_template": "x"},
                        deadline=deadline, wait=True)
    # Under the default 30 s the first answer (a 451 after 3 s) would come; with 0.5 s every attempt times out
    # waiting for it, which smtplib reports as the connection closing.
    assert status["status"] == "FAILED" and status["details"]["code"] == "Disconnected", status
    assert "timed out" in status["details"]["description"]
    assert status["details"]["attempts"] >= 2 and time.monotonic() - started < 3.9 and not server.messages


def test_rate_limit_window_and_refused_actions_do_not_count(servers, make_client):
    server = servers()
    client = make_client(APTK_SMTP_URL=server.url(), APTK_NOTIFY_RATE_LIMIT="1", APTK_NOTIFY_RATE_WINDOW="3")
    first = client.run(MAIL, wait=True)
    assert first["status"] == "SUCCEEDED", first
    time.sleep(1)  # had the refused second counted, it would still be in the window below
    second = client.run(MAIL, wait=True)
    assert second["status"] == "FAILED" and second["details"]["code"] == "RateLimited", second
    assert second["details"]["limit"] == 1 and second["details"]["window_seconds"] == 3
    other = client.as_identity("33333333-3333-4333-8333-333333333333", scopes=[notify_provider.globus_auth_scope])
    assert other.run(MAIL, wait=True)["status"] == "SUCCEEDED"  # a count of its own
    time.sleep(max(0.0, 3.2 - (time.time() - iso_seconds(first["start_time"]))))
    # The first is out of the window; the refused second never counted.
    assert client.run(MAIL, wait=True)["status"] == "SUCCEEDED"
    assert len(server.messages) == 3
    unlimited = make_client(APTK_SMTP_URL=server.url(), APTK_NOTIFY_RATE_LIMIT="0")
    assert all(unlimited.run(MAIL, wait=True)["status"] == "SUCCEEDED" for _ in range(3))


MAIL = {"destination": "ada@example.org", "subject": "s", "body_template": "x"}


def iso_seconds(text: str) -> float:
    import datetime

    return datetime.datetime.fromisoformat(text).timestamp()


# --- settings: a wrong one stops start-up, naming it ----------------------------------------------------------------

@pytest.mark.parametrize("name, value, expected", [
    ("APTK_SMTP_TIMEOUT", "soon", "must be a number"),
    ("APTK_SMTP_TIMEOUT", "0", "must be positive"),
    ("APTK_NOTIFY_WEBHOOK_TIMEOUT", "-1", "must be positive"),
    ("APTK_NOTIFY_MAX_BODY_BYTES", "lots", "must be a number"),
    ("APTK_NOTIFY_MAX_BODY_BYTES", "1.5", "must be a whole number"),
    ("APTK_NOTIFY_RATE_LIMIT", "ten", "must be a number"),
    ("APTK_NOTIFY_RATE_LIMIT", "-1", "must be at least 0"),
    ("APTK_NOTIFY_RATE_WINDOW", "0", "must be positive"),
    ("APTK_NOTIFY_RATE_WINDOW", "nan", "must be a number"),
    ("APTK_NOTIFY_WEBHOOK_ALLOW_LOOPBACK", "maybe", "must be true or false"),
    ("APTK_NOTIFY_SMTP_ALLOW_LOOPBACK", "sure", "must be true or false"),
    ("APTK_NOTIFY_WEBHOOK_ALLOW_NETWORKS", "10.0.0.0/33", "comma-separated list of networks"),
    ("APTK_NOTIFY_SMTP_ALLOW_NETWORKS", "intranet", "comma-separated list of networks"),
    ("APTK_SMTP_URL", "http://mail.example.org", "not smtp://"),
])
@pytest.mark.parametrize("where", ["app.config", "environment"])
def test_a_wrong_setting_stops_start_up_naming_it(tmp_path, monkeypatch, name, value, expected, where):
    from toolkit import ConfigurationError

    config = {"APTK_DATA_DIR": str(tmp_path)}
    if where == "environment":
        monkeypatch.setenv(name, value)
    else:
        config[name] = value
    with pytest.raises(ConfigurationError) as caught:
        create_app(config, providers=[("/notify", notify_provider)], verifier=TokenAuthority().verifier)
    assert name in str(caught.value) and expected in str(caught.value)


def test_a_setting_made_wrong_after_start_up_is_a_configuration_error_not_a_crash(servers, make_client):
    server = servers()
    client = make_client(APTK_SMTP_URL=server.url())
    client.app.config["APTK_NOTIFY_MAX_BODY_BYTES"] = "lots"
    with pytest.raises(ClientError) as caught:
        client.run(MAIL)
    assert (caught.value.status, caught.value.code) == (500, "ConfigurationError")
    assert "APTK_NOTIFY_MAX_BODY_BYTES must be a number" in caught.value.description
    assert server.messages == []
