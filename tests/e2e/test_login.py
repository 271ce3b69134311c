"""`aptk login`, `whoami`, `logout`: a person signs in at a real authorization server (oidc-provider on loopback)
through its login and consent pages (the test plays the browser with scripted HTTP), then calls providers served
by gunicorn in JWT and in introspection mode as that person.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import time
from pathlib import Path
from urllib.parse import urljoin, urlsplit, urlunsplit

import pytest
import requests

from tests.oidc.fixture import JWT_RESOURCE, OPAQUE_RESOURCE, RESOURCE_SERVER, start_oidc_server

from .support import APTK, Api

HELLO = "urn:aptk:scope:hello"
OTHER = "urn:aptk:scope:other"
PERSON = "ada"
TTL = 4  # seconds an access token of the command-line clients lives
CLI_JWT = "aptk-cli"  # a public native client whose tokens are for the JWT-mode provider
CLI_OPAQUE = "aptk-cli-opaque"  # the same, for the introspection-mode provider


def native_client(client_id: str, resource: str) -> dict:
    return {"name": client_id, "client_id": client_id, "public": True, "access_token_ttl": TTL,
            "grant_types": ["authorization_code", "refresh_token"], "redirect_uris": ["http://127.0.0.1/"],
            "resources": [resource]}


@pytest.fixture(scope="module")
def oidc():
    server = start_oidc_server({"clients": [
        {"name": RESOURCE_SERVER, "client_id": "a4c8e2f6-9b1d-4f3a-8c5e-0b2d4f6a8c04",
         "client_secret": "resource-server-secret-2e6a8c4f", "introspect": True, "grant_types": []},
        native_client(CLI_JWT, JWT_RESOURCE),
        native_client(CLI_OPAQUE, OPAQUE_RESOURCE),
    ]})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def providers(oidc, tmp_path_factory):
    from .support import Server

    modes = {
        "jwt": {"APTK_AUTH": "jwt", "APTK_AUTH_ISSUER": oidc.issuer, "APTK_AUTH_AUDIENCE": JWT_RESOURCE,
                "APTK_AUTH_LEEWAY": "0"},
        "introspection": {"APTK_AUTH": "introspection", "APTK_AUTH_ISSUER": oidc.issuer,
                          "APTK_AUTH_AUDIENCE": OPAQUE_RESOURCE, "APTK_AUTH_CACHE_SECONDS": "0",
                          "APTK_AUTH_CLIENT_ID": oidc.client_id(RESOURCE_SERVER),
                          "APTK_AUTH_CLIENT_SECRET": oidc.client_secret(RESOURCE_SERVER)},
    }
    servers = {}
    try:
        for mode, env in modes.items():
            base = tmp_path_factory.mktemp(f"login-{mode}")
            servers[mode] = Server(base / "data", base, workers=1, env=env).start()
        yield {mode: server.hello for mode, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()


# --- the person and their browser -------------------------------------------------------------------------------


def browse(authorization_url: str, *, consent: bool = True, login: str = PERSON) -> str:
    """Sign in at the server's pages as ``login``, consent (or refuse); the address the browser is sent back to."""
    issuer = "{0.scheme}://{0.netloc}".format(urlsplit(authorization_url))
    browser = requests.Session()
    browser.trust_env = False
    url, method, form = authorization_url, "GET", None
    for _ in range(20):
        response = browser.request(method, url, data=form, allow_redirects=False, timeout=10)
        if response.is_redirect:
            url, method, form = urljoin(url, response.headers["Location"]), "GET", None
            if not url.startswith(issuer):
                return url
            continue
        assert response.status_code == 200, response.text
        action = urljoin(url, re.search(r'<form[^>]*action="([^"]+)"', response.text).group(1))
        hidden = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', response.text))
        if 'name="login"' in response.text:
            url, method, form = action, "POST", {**hidden, "login": login, "password": "any password"}
        elif consent:
            url, method, form = action, "POST", hidden
        else:
            uid = urlsplit(url).path.rstrip("/").split("/")[-1]
            url, method, form = f"{issuer}/interaction/{uid}/abort", "GET", None
    raise AssertionError("the sign-in pages never sent the browser back")


class Person:
    """One person's machine: a config directory, and a browser that `aptk login` opens through $BROWSER."""

    def __init__(self, home: Path, oidc) -> None:
        self.home = home
        self.oidc = oidc
        self.opened = home / "opened-url"
        browser = home / "browser"
        browser.write_text(f"#!/bin/sh\nprintf '%s' \"$1\" > {self.opened}.part && mv {self.opened}.part {self.opened}\n")
        browser.chmod(0o755)
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("APTK_", "XDG_", "DISPLAY"))}
        self.env = {**inherited, "XDG_CONFIG_HOME": str(home / "config"), "BROWSER": str(browser),
                    "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
        self.outputs: list[str] = []

    @property
    def sessions(self) -> Path:
        return self.home / "config" / "aptk" / "sessions"

    def stored(self) -> list[Path]:
        return sorted(self.sessions.glob("*.json")) if self.sessions.exists() else []

    def session(self) -> dict:
        (path,) = self.stored()
        return json.loads(path.read_text())

    def aptk(self, *args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
        done = subprocess.run([APTK, *args], capture_output=True, text=True, timeout=60, input=stdin,
                              env={**self.env, **(env or {})})
        self.outputs += [done.stdout, done.stderr]
        return done

    def login(self, client_id: str, *args: str, consent: bool = True, tamper=None) -> subprocess.CompletedProcess:
        """`aptk login` with the browser: opened through $BROWSER, the test signs in and follows the redirect."""
        self.opened.unlink(missing_ok=True)
        process = subprocess.Popen([APTK, "login", "--issuer", self.oidc.issuer, "--client-id", client_id, *args],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env)
        try:
            deadline = time.monotonic() + 30
            while not self.opened.exists():
                assert process.poll() is None, process.communicate()
                assert time.monotonic() < deadline, "the browser was never opened"
                time.sleep(0.05)
            back = browse(self.opened.read_text(), consent=consent)
            page = requests.get(tamper(back) if tamper else back, timeout=10,
                                proxies={"http": "", "https": ""})
            out, err = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
        self.outputs += [out, err]
        return subprocess.CompletedProcess(process.args, process.returncode, out, err + "\n" + page.text)

    def login_pasting(self, client_id: str, *args: str, tamper=None, display: bool = True
                      ) -> subprocess.CompletedProcess:
        """`aptk login --no-browser` (or, with ``display=False``, on a machine without a display or $BROWSER): the
        URL is read from the terminal, the address the browser ended on pasted."""
        flags = ["--no-browser"] if display else []
        env = self.env if display else {k: v for k, v in self.env.items() if k != "BROWSER"}
        process = subprocess.Popen(
            [APTK, "login", "--issuer", self.oidc.issuer, "--client-id", client_id, *flags, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            shown = ""
            while "\n  http" not in shown or not shown.rstrip(" ").endswith("\n"):
                line = process.stderr.readline()
                assert line, process.communicate()
                shown += line
            url = re.search(r"^  (http\S+)$", shown, re.M).group(1)
            back = browse(url)
            out, err = process.communicate((tamper(back) if tamper else back) + "\n", timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
        self.outputs += [out, shown + err]
        return subprocess.CompletedProcess(process.args, process.returncode, out, shown + err)

    def assert_no_secret_shown(self) -> None:
        secrets = []
        for path in self.stored():
            data = json.loads(path.read_text())
            secrets += [data.get("refresh_token"), data.get("id_token")]
            secrets += [t["access_token"] for t in data.get("tokens", [])]
        self.seen_secrets = getattr(self, "seen_secrets", set()) | {s for s in secrets if s}
        for secret in self.seen_secrets:
            assert not any(secret in output for output in self.outputs)


@pytest.fixture
def person(tmp_path, oidc):
    return Person(tmp_path, oidc)


def with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}"))


def with_state(url: str, state: str) -> str:
    return re.sub(r"state=[^&]+", f"state={state}", url)


# --- signing in, calling, refreshing, signing out ---------------------------------------------------------------


def test_login_then_run_as_the_person_in_jwt_mode_refresh_and_logout(person, providers, oidc):
    done = person.login(CLI_JWT, "--provider", providers["jwt"])
    assert done.returncode == 0, done.stderr
    assert f"logged in at {oidc.issuer} as Test user {PERSON}" in done.stderr
    assert "Signed in." in done.stderr  # what the browser showed

    (path,) = person.stored()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(person.sessions.stat().st_mode) == 0o700
    first = person.session()
    assert first["issuer"] == oidc.issuer and HELLO in first["scopes"] and first["refresh_token"]

    ran = person.aptk("run", providers["jwt"], "--body", '{"echo_string": "hi"}', "--wait")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["creator_id"] == f"urn:aptk:subject:{PERSON}"

    who = person.aptk("whoami")
    assert who.returncode == 0, who.stderr
    shown = json.loads(who.stdout)
    assert shown["sub"] == PERSON and shown["name"] == f"Test user {PERSON}" and shown["issuer"] == oidc.issuer
    assert shown["client_id"] == CLI_JWT and HELLO in shown["scopes"] and shown["refreshable"] is True
    assert any(t["scope"] == HELLO and t["expires_at"].endswith("Z") for t in shown["tokens"])
    assert shown["identity"] == {"sub": PERSON, "name": f"Test user {PERSON}"}  # no nonce, sid, at_hash...
    assert person.aptk("whoami", "--jmespath", "sub", "--format", "unix").stdout.strip() == PERSON

    time.sleep(TTL + 1)  # every access token has expired; a JWT-mode provider would refuse them
    expired_at = time.time()
    # Three commands at once all need a refresh: the refresh token (rotated at each use) is spent once, under the
    # lock; spending it twice would make the server revoke the whole session.
    at_once = [subprocess.Popen([APTK, "status", providers["jwt"], json.loads(ran.stdout)["action_id"]],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=person.env)
               for _ in range(3)]
    for process in at_once:
        out, err = process.communicate(timeout=60)
        person.outputs += [out, err]
        assert process.returncode == 0, err
    refreshed = person.session()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    hello = [t for t in refreshed["tokens"] if t["scope"] == HELLO]
    assert len(hello) == 1 and hello[0]["issued_at"] >= int(expired_at)  # refreshed after the old one expired
    assert hello[0]["access_token"] not in [t["access_token"] for t in first["tokens"]]
    assert refreshed["refresh_token"] != first["refresh_token"]  # rotated, and the new one kept

    person.assert_no_secret_shown()
    out = person.aptk("logout")
    assert out.returncode == 0, out.stderr
    assert "revoked" in out.stderr and person.stored() == []
    assert oidc.introspect(refreshed["refresh_token"])["active"] is False

    after = person.aptk("run", providers["jwt"], "--body", '{"echo_string": "hi"}')
    assert after.returncode == 7
    assert f"run: aptk login --issuer <issuer URL> --client-id <client id> --provider {providers['jwt']}" \
        in after.stderr
    person.assert_no_secret_shown()


def test_login_without_a_browser_then_run_in_introspection_mode_and_logout_revokes(person, providers, oidc):
    done = person.login_pasting(CLI_OPAQUE, "--provider", providers["introspection"])
    assert done.returncode == 0, done.stderr
    url = providers["introspection"]
    ran = person.aptk("run", url, "--body", '{"echo_string": "hi"}', "--wait")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["creator_id"] == f"urn:aptk:subject:{PERSON}"
    listed = person.aptk("list", url, "--jmespath", "[].creator_id", "--format", "unix")
    assert listed.returncode == 0 and PERSON in listed.stdout

    (token,) = [t["access_token"] for t in person.session()["tokens"] if t["scope"] == HELLO]
    assert Api(url, token).get("/actions").status_code == 200
    person.assert_no_secret_shown()
    assert person.aptk("logout").returncode == 0
    revoked = Api(url, token).get("/actions")
    assert revoked.status_code == 401 and "not active" in revoked.json()["description"]


def test_without_a_display_the_url_is_shown_and_the_answer_pasted(person, providers):
    done = person.login_pasting(CLI_JWT, "--provider", providers["jwt"], display=False)
    assert done.returncode == 0, done.stderr
    assert "Open this URL in a browser and sign in" in done.stderr and not person.opened.exists()
    assert person.aptk("run", providers["jwt"], "--body", '{"echo_string": "hi"}').returncode == 0


def test_check_runs_as_the_person_refreshing_on_the_way(person, providers):
    assert person.login(CLI_JWT, "--provider", providers["jwt"]).returncode == 0
    started = time.monotonic()
    # The checks' action takes longer than a token lives: later checks need a refreshed token.
    done = person.aptk("check", providers["jwt"], "--format", "json", "--wait", "30s",
                       "--body", json.dumps({"echo_string": "checked", "sleep_time": TTL + 2}))
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["conformant"] is True, [c for c in report["checks"]
                                                                  if c["outcome"] == "failed"]
    outcomes = {c["name"]: c["outcome"] for c in report["checks"]}
    assert outcomes["release"] == "passed"  # after the wait for the action, with a token refreshed meanwhile
    assert time.monotonic() - started > TTL + 2


def test_a_browser_that_never_comes_back_times_out(person, oidc):
    done = person.aptk("login", "--issuer", oidc.issuer, "--client-id", CLI_JWT, "--scope", HELLO,
                       "--timeout", "1")
    assert done.returncode == 7
    assert "no sign-in came back within 1 s; nothing was stored" in done.stderr
    assert person.opened.exists() and person.stored() == []


def test_python_api_acts_as_the_person_and_refreshes(person, providers, oidc):
    from toolkit.client import ActionProviderClient
    from toolkit.session import LoginRequired, SessionStore

    assert person.login(CLI_JWT, "--provider", providers["jwt"]).returncode == 0
    store = SessionStore(person.sessions)
    client = ActionProviderClient.from_session(providers["jwt"], store=store)
    action = client.run({"echo_string": "from python"})
    assert action["creator_id"] == f"urn:aptk:subject:{PERSON}"
    one, other = store.find(), store.find()  # as two processes hold it, both about to find the token expired
    time.sleep(TTL + 1)
    assert client.wait(action["action_id"], timeout=10)["status"] == "SUCCEEDED"  # refreshed on the way
    # Each refresh rotates the refresh token; a holder whose copy is stale reads the file again under the lock
    # and uses the new token instead of spending a used refresh token (which would end the session).
    assert one.access_token(HELLO) and other.access_token(HELLO)  # neither spent a used refresh token
    assert oidc.introspect(store.find().data["refresh_token"])["active"] is True
    with pytest.raises(LoginRequired) as missing:
        ActionProviderClient.from_session(providers["jwt"], store=store, scope=OTHER)
    assert missing.value.command == (f"aptk login --issuer {oidc.issuer} --client-id {CLI_JWT} --scope {OTHER}")


def test_a_provider_whose_scope_was_not_consented_to_names_the_login_to_run(person, providers, oidc):
    assert person.login(CLI_JWT, "--scope", OTHER).returncode == 0
    refused = person.aptk("run", providers["jwt"], "--body", '{"echo_string": "hi"}')
    assert refused.returncode == 7
    assert (f"no stored session has consent for scope {HELLO} (needed by {providers['jwt']}); run: aptk login "
            f"--issuer {oidc.issuer} --client-id {CLI_JWT} --provider {providers['jwt']}") in refused.stderr
    # Logging in again keeps the scopes consented to before.
    assert person.login(CLI_JWT, "--provider", providers["jwt"]).returncode == 0
    assert {HELLO, OTHER} <= set(person.session()["scopes"])
    assert oidc.introspect(person.session()["refresh_token"])["active"] is True
    assert person.aptk("run", providers["jwt"], "--body", '{"echo_string": "hi"}').returncode == 0


# --- what goes wrong ----------------------------------------------------------------------------------------------


def test_refused_consent_stores_nothing(person, providers):
    done = person.login(CLI_JWT, "--provider", providers["jwt"], consent=False)
    assert done.returncode == 7
    assert "refused the sign-in (access_denied" in done.stderr and "nothing was stored" in done.stderr
    assert person.stored() == []


def test_an_answer_with_another_state_stores_nothing(person, providers):
    done = person.login(CLI_JWT, "--provider", providers["jwt"], tamper=lambda url: with_state(url, "forged"))
    assert done.returncode == 7
    assert "does not belong to this sign-in (its state differs)" in done.stderr
    assert person.stored() == []
    pasted = person.login_pasting(CLI_JWT, "--provider", providers["jwt"],
                                  tamper=lambda url: with_state(url, "forged"))
    assert pasted.returncode == 7 and "its state differs" in pasted.stderr and person.stored() == []


def test_a_redirect_to_another_port_stores_nothing(person, providers):
    def elsewhere(url: str) -> str:
        return with_port(url, urlsplit(url).port + 1)

    done = person.login_pasting(CLI_JWT, "--provider", providers["jwt"], tamper=elsewhere)
    assert done.returncode == 7
    assert "came back to another address or port; nothing was stored" in done.stderr
    assert person.stored() == []
    person.assert_no_secret_shown()


def test_a_revoked_refresh_token_ends_the_session_with_the_login_to_run(person, providers, oidc):
    assert person.login(CLI_JWT, "--provider", providers["jwt"]).returncode == 0
    refresh_token = person.session()["refresh_token"]
    revoked = requests.post(oidc.revocation_endpoint, data={"token": refresh_token, "client_id": CLI_JWT},
                            timeout=10, proxies={"http": "", "https": ""})
    assert revoked.status_code == 200
    time.sleep(TTL + 1)
    done = person.aptk("run", providers["jwt"], "--body", '{"echo_string": "hi"}')
    assert done.returncode == 7
    assert f"the session at {oidc.issuer} has ended (the refresh was refused: invalid_grant" in done.stderr
    assert f"run: aptk login --issuer {oidc.issuer} --client-id {CLI_JWT} --scope {HELLO}" in done.stderr
    assert person.stored() == []
    assert refresh_token not in done.stderr


def test_an_expired_refresh_token_ends_the_session(tmp_path, providers):
    """Refresh tokens that live as long as access tokens: once both have expired, the next call says to log in
    again."""
    server = start_oidc_server({"clients": [{**native_client(CLI_JWT, JWT_RESOURCE), "refresh_token_ttl": TTL}]})
    try:
        person = Person(tmp_path, server)
        assert person.login(CLI_JWT, "--scope", HELLO).returncode == 0
        time.sleep(TTL + 1)
        done = person.aptk("run", providers["jwt"], "--body", '{"echo_string": "hi"}')
        assert done.returncode == 7
        assert f"the session at {server.issuer} has ended (the refresh was refused: invalid_grant" in done.stderr
        assert person.stored() == []
    finally:
        server.stop()
