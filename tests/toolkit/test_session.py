"""The session store (toolkit.session) and the `aptk` commands that need a session, without a server.

Signing in against a real authorization server is in tests/e2e/test_login.py.
"""

from __future__ import annotations

import os
import stat

import pytest
from click.testing import CliRunner

from toolkit.cli import EXIT_SESSION, main
from toolkit.session import LoginRequired, Login, SessionError, SessionStore

ISSUER = "https://auth.example.org"
SCOPE = "urn:aptk:scope:hello"


def stored(store: SessionStore, *, expires_in: float, lifetime: float, refresh_token: str | None = None,
           issuer: str = ISSUER) -> None:
    now = store.clock()
    data = {"issuer": issuer, "client_id": "aptk-cli", "scopes": ["openid", SCOPE], "token_endpoint": "",
            "tokens": [{"access_token": "the-access-token", "scope": SCOPE, "issued_at": now + expires_in - lifetime,
                        "expires_at": now + expires_in}]}
    if refresh_token:
        data["refresh_token"] = refresh_token
    store.save(data)


def test_a_session_file_is_the_users_alone_whatever_the_umask(tmp_path, clock):
    store = SessionStore(tmp_path / "sessions", clock=clock)
    previous = os.umask(0)
    try:
        stored(store, expires_in=600, lifetime=600)
        first = store.path(ISSUER).stat()
        stored(store, expires_in=300, lifetime=600)
    finally:
        os.umask(previous)
    path = store.path(ISSUER)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    assert path.stat().st_ino != first.st_ino  # replaced whole (renamed over), never rewritten in place
    assert [p.name for p in store.directory.iterdir() if not p.name.endswith(".lock")] == [path.name]


def test_a_token_is_used_until_a_quarter_of_its_lifetime_is_left_then_refreshed(tmp_path, clock):
    store = SessionStore(tmp_path, clock=clock)
    stored(store, expires_in=11, lifetime=40)  # refreshed 10 s (a quarter of 40 s) before it expires
    assert store.find().access_token(SCOPE) == "the-access-token"
    clock.advance(1.5)
    with pytest.raises(LoginRequired) as due:
        store.find().access_token(SCOPE)  # due for refresh, and there is no refresh token
    assert "expired and there is no refresh token" in str(due.value)
    assert due.value.command == f"aptk login --issuer {ISSUER} --client-id aptk-cli --scope {SCOPE}"


def test_the_refresh_margin_is_at_most_a_minute(tmp_path, clock):
    store = SessionStore(tmp_path, clock=clock)
    stored(store, expires_in=61, lifetime=3600)
    assert store.find().access_token(SCOPE) == "the-access-token"
    clock.advance(2)
    with pytest.raises(LoginRequired):
        store.find().access_token(SCOPE)


def test_a_scope_without_consent_names_the_login_that_adds_it(tmp_path, clock):
    store = SessionStore(tmp_path, clock=clock)
    stored(store, expires_in=600, lifetime=600)
    with pytest.raises(LoginRequired) as missing:
        store.find().access_token("urn:aptk:scope:other")
    assert missing.value.command == (f"aptk login --issuer {ISSUER} --client-id aptk-cli --scope {SCOPE} "
                                     "--scope urn:aptk:scope:other")


def test_an_unreadable_session_file_says_what_to_do(tmp_path):
    store = SessionStore(tmp_path)
    store.path(ISSUER).write_text("{not json")
    with pytest.raises(SessionError) as broken:
        store.load(ISSUER)
    assert f"the stored session {store.path(ISSUER)} cannot be read" in str(broken.value)
    assert "delete it and log in again" in str(broken.value)


def test_an_answer_for_another_sign_in_is_refused_without_repeating_it(tmp_path):
    metadata = {"authorization_endpoint": f"{ISSUER}/authorize", "token_endpoint": f"{ISSUER}/token"}
    attempt = Login(ISSUER, "aptk-cli", [SCOPE], store=SessionStore(tmp_path), metadata=metadata)
    url = attempt.authorization_url(41234)
    assert "code_challenge_method=S256" in url and "prompt=consent" in url and attempt.verifier not in url
    good = f"http://127.0.0.1:41234/?code=secret-code&state={attempt.state}"
    assert attempt.check(good) == "Signed in."
    for answer, fragment in [
        ("http://127.0.0.1:41235/?code=secret-code&state=" + attempt.state, "another address or port"),
        ("http://localhost:41234/?code=secret-code&state=" + attempt.state, "another address or port"),
        ("http://127.0.0.1:41234/?code=secret-code&state=forged", "its state differs"),
        ("http://127.0.0.1:41234/?code=secret-code", "its state differs"),
        (f"http://127.0.0.1:41234/?state={attempt.state}&error=access_denied", "refused the sign-in (access_denied"),
        (f"http://127.0.0.1:41234/?state={attempt.state}", "carries no authorization code"),
        (f"http://127.0.0.1:41234/?code=c&state={attempt.state}&iss=https://evil.example", "another issuer"),
    ]:
        with pytest.raises(SessionError) as refused:
            attempt.check(answer)
        assert fragment in str(refused.value) and "secret-code" not in str(refused.value)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def config_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    return tmp_path / "aptk" / "sessions"


def test_commands_without_a_session_say_to_log_in(config_home):
    runner = CliRunner()
    for args in (["whoami"], ["logout"]):
        result = runner.invoke(main, args)
        assert result.exit_code == EXIT_SESSION, result.output
        assert "not logged in; run: aptk login --issuer <issuer URL> --client-id <client id>" in result.output
    login = runner.invoke(main, ["login"])
    assert login.exit_code == 2 and "give --issuer" in login.output


def test_several_sessions_need_an_issuer(config_home, clock):
    store = SessionStore(config_home, clock=clock)
    stored(store, expires_in=600, lifetime=600)
    stored(store, expires_in=600, lifetime=600, issuer="https://other.example.org")
    result = CliRunner().invoke(main, ["whoami"])
    assert result.exit_code == EXIT_SESSION
    assert "logged in at several issuers (https://auth.example.org, https://other.example.org); name one with " \
           "--issuer" in result.output


def test_logout_deletes_the_session_even_when_the_server_cannot_be_told(config_home, clock):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nobody listens there once the socket is closed
    store = SessionStore(config_home, clock=clock)
    stored(store, expires_in=600, lifetime=600, refresh_token="the-refresh-token")
    data = store.find().data
    store.save({**data, "revocation_endpoint": f"http://127.0.0.1:{port}/revoke"})
    result = CliRunner().invoke(main, ["logout"])
    assert result.exit_code == EXIT_SESSION
    assert f"logged out of {ISSUER} here, but could not reach http://127.0.0.1:{port}/revoke" in result.output
    assert store.sessions() == [] and "the-refresh-token" not in result.output


def test_the_page_the_browser_returns_to_escapes_what_the_answer_says(tmp_path):
    import threading
    import time

    import requests

    metadata = {"authorization_endpoint": f"{ISSUER}/authorize", "token_endpoint": f"{ISSUER}/token"}
    attempt = Login(ISSUER, "aptk-cli", [SCOPE], store=SessionStore(tmp_path), metadata=metadata)
    shown: list[str] = []
    outcome: dict[str, str] = {}

    def sign_in() -> None:
        try:
            attempt.run(open_browser=False, show=shown.append, timeout=10)
        except SessionError as exc:
            outcome["error"] = str(exc)

    thread = threading.Thread(target=sign_in)
    thread.start()
    while not shown:
        time.sleep(0.01)
    browser = requests.Session()
    browser.trust_env = False  # loopback, never through a proxy from the environment
    assert "Open this URL in a browser on this machine" in shown[0]
    assert browser.get(attempt.redirect_uri + "favicon.ico", timeout=5).status_code == 404  # keeps waiting
    page = browser.get(attempt.redirect_uri, timeout=5, params={
        "state": attempt.state, "error": "access_denied", "error_description": "<script>x()</script>\x1b[2J"})
    thread.join(10)
    assert page.status_code == 400
    assert "&lt;script&gt;x()&lt;/script&gt;" in page.text and "<script>" not in page.text
    assert outcome["error"].startswith(f"{ISSUER} refused the sign-in (access_denied: <script>x()</script>[2J)")
    assert list(tmp_path.iterdir()) == []
