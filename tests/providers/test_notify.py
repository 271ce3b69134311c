"""The notification provider against a real SMTP server (aiosmtpd) on loopback: what arrives, and what is refused."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("aiosmtpd")

from providers.notify import provider as notify_provider  # noqa: E402
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
        return TestClient(app, "/notify", authority.token(USER, scopes=[notify_provider.globus_auth_scope]),
                          authority)

    yield make
    for app in apps:
        app.extensions["aptk"].runtime.stop()


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
    client = make_client(APTK_SMTP_CA_FILE=str(server.cert_file))  # no deployment server at all
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
    deadline = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=4)).isoformat()
    status = client.run({"destination": "ada@example.org", "subject": "s", "body_template": "x"},
                        deadline=deadline, wait=True)
    assert status["status"] == "FAILED", status
    assert status["details"]["code"] == "ConnectionRefused" and status["details"]["attempts"] >= 2
