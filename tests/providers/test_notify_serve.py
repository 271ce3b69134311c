"""The notify provider under the real `aptk serve` (gunicorn), against real SMTP servers on loopback.

* The per-identity rate limit, exceeded over HTTP, with two workers sharing one count.
* Crashes (SIGKILL of the whole server): a mail handed to the server before the crash is never sent again; one
  that was not is sent by the restarted server; a caller's password does not survive the crash (it was never
  written anywhere) and the action says so.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
import requests

from tests.e2e.support import Server, free_port

pytest.importorskip("aiosmtpd")

ADA = "7b1c2d3e-0000-4000-8000-000000000001"
BOB = "7b1c2d3e-0000-4000-8000-000000000002"
SCOPE = "urn:aptk:scope:notify"
SECRET = "crash-Pa55word-91"


class Served(Server):
    def __init__(self, data_dir: Path, env: dict[str, str], workers: int = 1) -> None:
        base = {"APTK_NOTIFY_SENDER": "flows@example.org", "APTK_LEASE_SECONDS": "2"}
        super().__init__(data_dir, data_dir.parent, workers=workers, env={**base, **env})

    def run(self, token: str, body: dict, request_id: str | None = None) -> dict:
        document = {"request_id": request_id or f"r-{time.monotonic_ns()}", "body": body}
        response = requests.post(f"{self.url}/notify/run", json=document, timeout=20,
                                 headers={"Authorization": f"Bearer {token}"})
        assert response.status_code in (200, 202), response.text
        return response.json()

    def status(self, token: str, action_id: str) -> dict:
        response = requests.get(f"{self.url}/notify/{action_id}/status", timeout=10,
                                headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        return response.json()

    def wait(self, token: str, action_id: str, until=lambda s: s["status"] in ("SUCCEEDED", "FAILED"),
             timeout: float = 30) -> dict:
        give_up = time.monotonic() + timeout
        while True:
            status = self.status(token, action_id)
            if until(status):
                return status
            assert time.monotonic() < give_up, f"still {status}"
            time.sleep(0.05)


@pytest.fixture
def served():
    started: list[Served] = []

    def make(data_dir: Path, workers: int = 1, **env: str) -> Served:
        server = Served(data_dir, env, workers)
        started.append(server)
        return server

    yield make
    for server in started:
        server.kill()


MAIL = {"destination": "ada@example.org", "subject": "s", "body_template": "x"}


@pytest.mark.slow
def test_rate_limit_per_identity_over_http(tmp_path, served, smtp_servers):
    mail = smtp_servers()
    server = served(tmp_path / "data", workers=2, APTK_SMTP_URL=mail.url(), APTK_NOTIFY_RATE_LIMIT="3",
                    APTK_NOTIFY_RATE_WINDOW="3600").start()
    tokens = server.tokens({"ada": server.token_command(ADA, scopes=[SCOPE]),
                            "bob": server.token_command(BOB, scopes=[SCOPE])})
    outcomes = []
    for i in range(5):
        action = server.run(tokens["ada"], {**MAIL, "subject": f"loop {i}"})
        outcomes.append(server.wait(tokens["ada"], action["action_id"]))
    assert [o["status"] for o in outcomes] == ["SUCCEEDED"] * 3 + ["FAILED"] * 2, outcomes
    assert {o["details"]["code"] for o in outcomes[3:]} == {"RateLimited"}
    assert "3 notifications in the last 3600 s" in outcomes[3]["details"]["description"]
    assert len(mail.messages) == 3
    other = server.run(tokens["bob"], MAIL)  # another identity has its own count
    assert server.wait(tokens["bob"], other["action_id"])["status"] == "SUCCEEDED"
    assert len(mail.messages) == 4


@pytest.mark.slow
def test_a_mail_handed_over_before_a_crash_is_not_sent_again(tmp_path, served, smtp_servers):
    mail = smtp_servers(delay=8)  # holds the answer to DATA: the crash falls between "sent" and "recorded"
    data = tmp_path / "data"
    server = served(data, APTK_SMTP_URL=mail.url()).start()
    token = server.token(ADA, scopes=[SCOPE])
    action = server.run(token, MAIL)["action_id"]
    sending = server.wait(token, action, until=lambda s: s["details"].get("phase") == "sending")
    assert sending["status"] == "ACTIVE"
    server.kill()
    give_up = time.monotonic() + 10
    while not mail.messages:  # the server did take the mail
        assert time.monotonic() < give_up
        time.sleep(0.05)
    restarted = served(data, APTK_SMTP_URL=mail.url()).start()
    final = restarted.wait(token, action)
    assert final["status"] == "FAILED" and final["details"]["code"] == "DeliveryUncertain", final
    assert final["details"]["message_id"] == f"<{action}.notify@example.org>"
    time.sleep(1)
    assert len(mail.messages) == 1


@pytest.mark.slow
def test_a_mail_not_yet_handed_over_is_sent_after_a_crash_and_a_password_is_not(tmp_path, served, smtp_servers):
    port = free_port()  # no mail server yet: attempts are refused and retried
    data = tmp_path / "data"
    server = served(data, APTK_SMTP_URL=f"smtp://127.0.0.1:{port}", APTK_NOTIFY_SMTP_ALLOW_LOOPBACK="1").start()
    token = server.token(ADA, scopes=[SCOPE])
    deployment = server.run(token, MAIL)["action_id"]
    own = {**MAIL, "sender": "me@own.example",
           "send_credentials": [{"credential_type": "smtp", "credential_value": {
               "hostname": "127.0.0.1", "port": port, "username": "me", "password": SECRET}}]}
    callers = server.run(token, own)["action_id"]
    for action in (deployment, callers):
        server.wait(token, action, until=lambda s: s["details"].get("code") == "ConnectionRefused")
    server.kill()
    with sqlite3.connect(data / "aptk.db") as db:
        assert SECRET not in " ".join(str(row) for row in db.execute("SELECT * FROM aptk_actions"))
    assert SECRET.encode() not in b"".join(p.read_bytes() for p in data.rglob("*") if p.is_file())

    mail = smtp_servers(port=port)
    restarted = served(data, APTK_SMTP_URL=f"smtp://127.0.0.1:{port}", APTK_NOTIFY_SMTP_ALLOW_LOOPBACK="1").start()
    sent = restarted.wait(token, deployment)
    assert sent["status"] == "SUCCEEDED", sent
    assert len(mail.messages) == 1 and mail.messages[0]["Message-ID"] == f"<{deployment}.notify@example.org>"
    lost = restarted.wait(token, callers)
    assert lost["status"] == "FAILED" and lost["details"]["code"] == "CredentialsUnavailable", lost
    assert len(mail.messages) == 1


@pytest.mark.slow
def test_a_webhook_cut_by_a_crash_is_sent_again_with_the_same_delivery_id(tmp_path, served):
    from tests.servers.webhook import WebhookReceiver

    receiver = WebhookReceiver("hook-secret", delay=30)  # the answer never comes before the crash
    try:
        data = tmp_path / "data"
        env = {"APTK_NOTIFY_WEBHOOK_SECRET": "hook-secret", "APTK_NOTIFY_WEBHOOK_ALLOW_LOOPBACK": "1",
               "APTK_NOTIFY_WEBHOOK_TIMEOUT": "60"}
        server = served(data, **env).start()
        token = server.token(ADA, scopes=[SCOPE])
        action = server.run(token, {"notification_method": "webhook", "destination": receiver.url(),
                                    "body_template": "x"})["action_id"]
        give_up = time.monotonic() + 10
        while not receiver.requests:
            assert time.monotonic() < give_up
            time.sleep(0.05)
        server.kill()
        receiver.delay = 0
        final = served(data, **env).start().wait(token, action)
        assert final["status"] == "SUCCEEDED", final
        assert [r.headers["X-Aptk-Delivery"] for r in receiver.requests] == [action, action]
        assert all(r.signature_ok for r in receiver.requests)
    finally:
        receiver.stop()
