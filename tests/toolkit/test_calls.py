"""toolkit.calls: another provider called as a given identity, in-process through this app's routes or over HTTP.

Local calls run against real apps (hello and a small provider of this module); remote calls against `aptk serve`
(gunicorn) on loopback secured by a real OAuth server (oidc-provider), with client-credentials tokens from it.
Only Globus Auth's dependent-token grant is stood in for (a hosted service).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

import toolkit.calls as calls_module
from providers.hello import provider as hello
from tests.e2e.support import Server, free_port
from tests.oidc.fixture import CALLER, HELLO_SCOPE, JWT_RESOURCE, OTHER_CALLER
from toolkit import ActionInactive, ActionProvider, ConfigurationError, RunContext, get_toolkit
from toolkit.auth import Identity
from toolkit.calls import Calls, CredentialsMissing, RunRefused, Transient, load_call_clients
from toolkit.documents import Status
from toolkit.server import create_app
from toolkit.testing import TokenAuthority, close_app

PUBLIC = "https://aptk.example"
GROUP = str(uuid.uuid4())

gate = ActionProvider(
    name="gate",
    title="Gate",
    description="Only members of one group may run it; pauses until resumed, then echoes.",
    input_schema={"type": "object", "properties": {"say": {"type": "string"}}, "required": ["say"],
                  "additionalProperties": False},
    runnable_by=[f"urn:globus:groups:id:{GROUP}"],
)


@gate.run
def _gate(body: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    if not ctx.resumed:
        raise ActionInactive("Waiting", "Resume to pass the gate.")
    return {"said": body["say"]}


def person(*groups: str) -> Identity:
    return Identity.build(str(uuid.uuid4()), groups=groups)


@pytest.fixture
def app(tmp_path):
    authority = TokenAuthority()
    app = create_app({"APTK_DATA_DIR": str(tmp_path), "APTK_PUBLIC_URL": f"http://other.example, {PUBLIC}:443"},
                     providers=[("/hello", hello), ("/team/b/gate", gate)], verifier=authority.verifier)
    app.authority = authority
    yield app
    close_app(app)


# --- targets ----------------------------------------------------------------------------------------------------

def test_a_target_is_local_only_for_this_deployments_origin_and_routes(app):
    calls = Calls.for_app(app)
    run_url = calls.target(f"{PUBLIC}/hello/run")
    assert run_url.url == f"{PUBLIC}/hello" and run_url.local
    assert calls.target("HTTPS://APTK.example:443/team/b/gate/").local
    assert calls.target("http://other.example/hello").local
    assert not calls.target("https://elsewhere.example/hello").local  # another origin
    assert not calls.target(f"{PUBLIC}:8443/hello").local  # another port
    assert not calls.target(f"{PUBLIC}/nothing").local  # no provider there
    assert not calls.target(f"{PUBLIC}/team/b").local
    # The origin of the request that asked for the call counts as this deployment's.
    assert calls.target("http://127.0.0.1:8123/hello", origin="http://127.0.0.1:8123").local
    assert not calls.target("http://127.0.0.1:8123/hello").local
    with pytest.raises(RunRefused) as refused:
        calls.target("ftp://aptk.example/hello")
    assert refused.value.status == 400


def test_a_bad_public_url_stops_the_app(tmp_path):
    with pytest.raises(ConfigurationError, match="APTK_PUBLIC_URL"):
        create_app({"APTK_DATA_DIR": str(tmp_path), "APTK_PUBLIC_URL": "aptk.example"}, providers=[("/hello", hello)])


# --- local calls ------------------------------------------------------------------------------------------------

def test_local_run_wait_status_release(app):
    target = Calls.for_app(app).target(f"{PUBLIC}/hello")
    me = person()
    started = target.run(me, {"echo_string": "hi", "sleep_time": 0.2}, request_id="one", label="local call",
                         release_after=60)
    assert started["status"] == "ACTIVE" and started["creator_id"] == me.id
    assert started["label"] == "local call" and started["release_after"] == "PT1M"
    done = target.wait(me, started["action_id"], timeout=30)
    assert done["status"] == "SUCCEEDED" and done["details"] == {"hello": "hi"}
    assert target.status(me, started["action_id"]) == done
    assert target.introspect(me)["globus_auth_scope"] == hello.globus_auth_scope
    # The same request_id and body find the same action; another body is a conflict.
    assert target.run(me, {"echo_string": "hi", "sleep_time": 0.2}, request_id="one", label="local call",
                      release_after=60)["action_id"] == started["action_id"]
    with pytest.raises(RunRefused) as conflict:
        target.run(me, {"echo_string": "other"}, request_id="one")
    assert conflict.value.status == 409 and conflict.value.code == "ActionConflict"
    assert target.release(me, started["action_id"])["status"] == "SUCCEEDED"
    with pytest.raises(RunRefused) as gone:
        target.status(me, started["action_id"])
    assert gone.value.status == 404


def test_local_bad_body_is_refused_and_creates_nothing(app):
    target = Calls.for_app(app).target(f"{PUBLIC}/hello")
    me = person()
    with pytest.raises(RunRefused) as refused:
        target.run(me, {"echo_string": 5}, request_id="bad")
    assert refused.value.status == 400 and refused.value.code == "BadActionRequest"
    assert "echo_string" in refused.value.description
    runtime = get_toolkit(app).runtime
    assert runtime.store.find_request("hello", me.id, "bad") is None


def test_local_cancel_and_resume(app):
    target = Calls.for_app(app).target(f"{PUBLIC}/hello")
    me = person()
    running = target.run(me, {"echo_string": "hi", "sleep_time": 3600}, request_id="long")
    cancelled = target.cancel(me, running["action_id"])
    assert cancelled["status"] == "FAILED" and cancelled["details"]["code"] == "ActionCancelled"
    paused = target.run(me, {"echo_string": "later", "require_resume": True}, request_id="pause")
    paused = target.wait(me, paused["action_id"], timeout=30)
    assert paused["status"] == "INACTIVE" and paused["details"]["code"] == "ResumeRequired"
    assert target.resume(me, paused["action_id"])["status"] in ("ACTIVE", "SUCCEEDED")
    assert target.wait(me, paused["action_id"], timeout=30)["details"] == {"hello": "later"}


def test_wait_is_woken_by_the_change_not_by_polling(app, monkeypatch):
    # With the store-polling fallback pushed past the test's end, only the notification can end the wait.
    monkeypatch.setattr(calls_module, "LOCAL_POLL_FIRST_SECONDS", 600.0)
    monkeypatch.setattr(calls_module, "LOCAL_POLL_MAX_SECONDS", 600.0)
    target = Calls.for_app(app).target(f"{PUBLIC}/hello")
    me = person()
    started = target.run(me, {"echo_string": "hi", "sleep_time": 0.2}, request_id="soon")
    began = time.monotonic()
    assert target.wait(me, started["action_id"], timeout=30)["status"] == "SUCCEEDED"
    assert time.monotonic() - began < 5
    # A cancel from another thread wakes a wait on a long action as well.
    long = target.run(me, {"echo_string": "hi", "sleep_time": 3600}, request_id="long")
    threading.Timer(0.2, target.cancel, (me, long["action_id"])).start()
    began = time.monotonic()
    assert target.wait(me, long["action_id"], timeout=30)["status"] == "FAILED"
    assert time.monotonic() - began < 5


def test_wait_sees_a_change_made_by_another_process(app):
    target = Calls.for_app(app).target(f"{PUBLIC}/hello")
    me = person()
    started = target.run(me, {"echo_string": "hi", "sleep_time": 3600}, request_id="elsewhere")
    runtime = get_toolkit(app).runtime
    # Written to the store directly, as another process would: nobody in this process is told.
    threading.Timer(0.3, runtime.store.update, (started["action_id"],),
                    {"where": {"status": Status.ACTIVE}, "status": Status.FAILED, "completion_time": time.time(),
                     "details": {"code": "Elsewhere", "description": "ended by another process"}}).start()
    began = time.monotonic()
    assert target.wait(me, started["action_id"], timeout=30)["details"]["code"] == "Elsewhere"
    assert time.monotonic() - began < 10


def test_wait_gives_the_latest_status_at_its_timeout(app):
    target = Calls.for_app(app).target(f"{PUBLIC}/hello")
    me = person()
    started = target.run(me, {"echo_string": "hi", "sleep_time": 3600}, request_id="slow")
    assert target.wait(me, started["action_id"], timeout=0.3)["status"] == "ACTIVE"
    target.cancel(me, started["action_id"])


def test_local_calls_are_bound_by_the_identitys_principals(app):
    hello_target = Calls.for_app(app).target(f"{PUBLIC}/hello")
    me, stranger, watcher = person(), person(), person()
    action = hello_target.run(me, {"echo_string": "mine", "sleep_time": 3600}, request_id="p",
                              monitor_by=[watcher.id])
    for call in (hello_target.status, hello_target.cancel, hello_target.release):
        with pytest.raises(RunRefused) as refused:
            call(stranger, action["action_id"])
        assert refused.value.status == 403
    assert hello_target.status(watcher, action["action_id"])["status"] == "ACTIVE"
    with pytest.raises(RunRefused) as refused:
        hello_target.cancel(watcher, action["action_id"])  # may watch, not manage
    assert refused.value.status == 403
    hello_target.cancel(me, action["action_id"])
    # runnable_by holds too: only members of the group run the gate.
    gate_target = Calls.for_app(app).target(f"{PUBLIC}/team/b/gate/run")
    with pytest.raises(RunRefused) as refused:
        gate_target.run(me, {"say": "open"}, request_id="g")
    assert refused.value.status == 403 and "runnable_by" in refused.value.description
    member = person(GROUP)
    paused = gate_target.wait(member, gate_target.run(member, {"say": "open"}, request_id="g")["action_id"], 30)
    assert paused["status"] == "INACTIVE"
    gate_target.resume(member, paused["action_id"])
    assert gate_target.wait(member, paused["action_id"], 30)["details"] == {"said": "open"}


def test_calls_from_a_run_callback_act_as_its_caller(tmp_path):
    relay = ActionProvider(name="relay", title="Relay", description="Runs hello as its own caller.",
                           input_schema={"type": "object", "properties": {"say": {"type": "string"}}})

    @relay.run
    def _relay(body: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
        target = Calls.from_context(ctx).target(f"{PUBLIC}/hello")
        started = target.run(ctx.identity, {"echo_string": body["say"]}, request_id=f"{ctx.action_id}-1")
        done = target.wait(ctx.identity, started["action_id"], timeout=30)
        return {"child": done["action_id"], "creator": done["creator_id"], "details": done["details"]}

    authority = TokenAuthority()
    app = create_app({"APTK_DATA_DIR": str(tmp_path), "APTK_PUBLIC_URL": PUBLIC},
                     providers=[("/hello", hello), ("/relay", relay)], verifier=authority.verifier)
    try:
        from toolkit.testing import TestClient

        me = str(uuid.uuid4())
        client = TestClient(app, "/relay", authority.token(me, scopes=[relay.globus_auth_scope]))
        status = client.run({"say": "through"}, wait=True)
        assert status["status"] == "SUCCEEDED", status
        assert status["details"]["details"] == {"hello": "through"}
        assert status["details"]["creator"] == f"urn:globus:auth:identity:{me}"
    finally:
        close_app(app)


def test_the_internal_caller_cannot_be_set_in_a_test_client_request(app):
    # Even a WSGI client that names the key as a header only makes it an HTTP_* string.
    answer = app.test_client().get("/hello/actions", headers={calls_module.INTERNAL_CALLER: "urn:x",
                                                              "Aptk-Internal-Caller": "urn:x"})
    assert answer.status_code == 401


# --- over real HTTP ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def remote(tmp_path_factory, oidc_server):
    """`aptk serve` on loopback, accepting the OAuth server's JWTs."""
    base = tmp_path_factory.mktemp("calls-remote")
    server = Server(base / "data", base, workers=2, env={
        "APTK_AUTH": "jwt", "APTK_AUTH_ISSUER": oidc_server.issuer, "APTK_AUTH_AUDIENCE": JWT_RESOURCE})
    try:
        yield server.start()
    finally:
        server.stop()


class Unavailable(BaseHTTPRequestHandler):
    """Answers every request 503 with Retry-After, as a provider under maintenance would."""

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        body = json.dumps({"code": "ServiceUnavailable", "description": "down for maintenance"}).encode()
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Retry-After", "7")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def unavailable():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def clients_file(tmp_path, entries) -> str:
    path = tmp_path / "call-clients.json"
    path.write_text(json.dumps(entries))
    return str(path)


def client_entry(oidc_server, url: str, client: str = CALLER, **more: Any) -> dict[str, Any]:
    return {"url": url, "issuer": oidc_server.issuer, "client_id": oidc_server.client_id(client),
            "client_secret": "${CALLS_TEST_SECRET}", "scope": HELLO_SCOPE, "resource": JWT_RESOURCE, **more}


def test_remote_calls_with_client_credentials(tmp_path, remote, oidc_server, unavailable, monkeypatch):
    monkeypatch.setenv("CALLS_TEST_SECRET", oidc_server.client_secret(CALLER))
    dead = f"http://127.0.0.1:{free_port()}"
    path = clients_file(tmp_path, [client_entry(oidc_server, remote.url + "/"),
                                   client_entry(oidc_server, unavailable + "/"),
                                   client_entry(oidc_server, dead + "/")])
    app = create_app({"APTK_DATA_DIR": str(tmp_path / "data"), "APTK_CALL_CLIENTS": path,
                      "APTK_CALL_POLL_MAX_SECONDS": 1}, providers=[("/hello", hello)])
    try:
        calls = Calls.for_app(app)
        target = calls.target(remote.hello + "/run")
        assert not target.local and target.url == remote.hello
        nobody = person()  # remote calls act as the configured client, whoever asks
        assert target.introspect(nobody)["title"] == "Hello"
        started = target.run(nobody, {"echo_string": "far", "sleep_time": 0.3}, request_id="r1",
                             monitor_by=[nobody.id])
        # The provider saw the client's identity (sub = its client id) and the whole request.
        assert started["creator_id"].endswith(oidc_server.client_id(CALLER))
        assert started["monitor_by"] == [nobody.id]
        done = target.wait(nobody, started["action_id"], timeout=30)
        assert done["status"] == "SUCCEEDED" and done["details"] == {"hello": "far"}
        again = target.run(nobody, {"echo_string": "far", "sleep_time": 0.3}, request_id="r1",
                           monitor_by=[nobody.id])
        assert again["action_id"] == started["action_id"]
        long = target.run(nobody, {"echo_string": "x", "sleep_time": 3600}, request_id="r2")
        assert target.cancel(nobody, long["action_id"])["status"] == "FAILED"
        assert target.release(nobody, long["action_id"])["status"] == "FAILED"
        paused = target.run(nobody, {"echo_string": "y", "require_resume": True}, request_id="r3")
        assert target.wait(nobody, paused["action_id"], timeout=30)["status"] == "INACTIVE"
        target.resume(nobody, paused["action_id"])
        assert target.wait(nobody, paused["action_id"], timeout=30)["status"] == "SUCCEEDED"
        # One token served every call: it is cached until shortly before it expires.
        (cached,) = [c for c in calls.clients if c.url == remote.url + "/"]
        assert cached._token is not None and cached._renew_at > time.time() + 60

        # Errors: 400 is refused, 503 and no answer are transient, no client means no credentials.
        with pytest.raises(RunRefused) as refused:
            target.run(nobody, {"echo_string": 1}, request_id="r4")
        assert refused.value.status == 400 and refused.value.code == "BadActionRequest"
        with pytest.raises(RunRefused) as refused:
            target.status(nobody, uuid.uuid4().hex)
        assert refused.value.status == 404
        with pytest.raises(Transient) as transient:
            calls.target(unavailable + "/hello").run(nobody, {"echo_string": "x"}, request_id="r5")
        assert transient.value.retry_after == 7 and "down for maintenance" in str(transient.value)
        with pytest.raises(Transient, match="connection refused"):
            calls.target(dead + "/hello").status(nobody, uuid.uuid4().hex)
        with pytest.raises(CredentialsMissing) as missing:
            calls.target("http://127.0.0.2:9/hello").status(nobody, uuid.uuid4().hex)
        assert "APTK_CALL_CLIENTS" in str(missing.value)
        secret = oidc_server.client_secret(CALLER)
        for error in (refused.value, transient.value, missing.value):
            assert secret not in str(error) and cached._token not in str(error)
    finally:
        close_app(app)


def test_a_refused_client_secret_means_credentials_missing(tmp_path, remote, oidc_server, monkeypatch):
    monkeypatch.setenv("CALLS_TEST_SECRET", "not-the-secret")
    path = clients_file(tmp_path, [client_entry(oidc_server, remote.url + "/")])
    app = create_app({"APTK_DATA_DIR": str(tmp_path / "data"), "APTK_CALL_CLIENTS": path},
                     providers=[("/hello", hello)])
    try:
        with pytest.raises(CredentialsMissing) as missing:
            Calls.for_app(app).target(remote.hello).status(person(), uuid.uuid4().hex)
        assert "refused" in str(missing.value) and "not-the-secret" not in str(missing.value)
    finally:
        close_app(app)


class DependentTokens(TokenAuthority):
    """Globus Auth's dependent-token grant, stood in for: the caller's token buys an OAuth server's JWT."""

    def __init__(self, oidc_server) -> None:
        super().__init__()
        self.oidc_server = oidc_server
        self.asked: list[str] = []
        self.verifier.dependent_tokens = self.dependent_tokens  # type: ignore[method-assign]

    def dependent_tokens(self, token: str) -> dict[str, dict[str, Any]]:
        self.asked.append(token)
        return {
            "groups.api.globus.org": {"access_token": "not-for-hello", "scope": "urn:globus:groups"},
            "hello.example": {"access_token": self.oidc_server.token(OTHER_CALLER, JWT_RESOURCE),
                              "scope": f"openid {HELLO_SCOPE}"},
        }


def test_remote_calls_with_dependent_tokens(tmp_path, remote, oidc_server):
    globus = DependentTokens(oidc_server)
    app = create_app({"APTK_DATA_DIR": str(tmp_path), "APTK_AUTH": "globus"}, providers=[("/hello", hello)],
                     verifier=globus.verifier)
    try:
        target = Calls.for_app(app).target(remote.hello)
        caller = Identity.build(str(uuid.uuid4()), token="the-callers-token")
        status = target.run(caller, {"echo_string": "dependent"}, request_id="d1")
        # The token for the scope the provider describes was chosen: the provider saw that client.
        assert status["creator_id"].endswith(oidc_server.client_id(OTHER_CALLER))
        assert globus.asked == ["the-callers-token"]
        # After a crash the caller's token is not at hand.
        with pytest.raises(CredentialsMissing) as missing:
            target.status(Identity.build(str(uuid.uuid4())), status["action_id"])
        assert missing.value.scope == HELLO_SCOPE and missing.value.url == remote.hello
        with pytest.raises(CredentialsMissing, match="urn:aptk:scope:other"):
            Calls.for_app(app).target(remote.hello, scope="urn:aptk:scope:other").status(caller, status["action_id"])
    finally:
        close_app(app)


def test_the_internal_caller_cannot_be_forged_over_http(remote):
    # Header names that a WSGI server could turn into the environ key, and the key itself.
    for name in (calls_module.INTERNAL_CALLER, "Aptk-Internal-Caller", "aptk_internal_caller"):
        answer = requests.get(remote.hello + "/actions", headers={name: "urn:globus:auth:identity:x"}, timeout=10)
        assert answer.status_code == 401, (name, answer.text)


# --- APTK_CALL_CLIENTS ------------------------------------------------------------------------------------------

GOOD = {"url": "https://h.example/", "token_url": "https://auth.example/token", "client_id": "c",
        "client_secret": "${CALLS_TEST_SECRET}"}


@pytest.mark.parametrize("content, message", [
    ("[", "not valid JSON"),
    ('{"url": "x"}', "JSON list"),
    (json.dumps([GOOD, "x"]), "entry 1 must be a JSON object"),
    (json.dumps([{**GOOD, "client_secret": ""}]), "entry 0 (https://h.example/): 'client_secret'"),
    (json.dumps([{k: v for k, v in GOOD.items() if k != "client_id"}]), "'client_id' must be"),
    (json.dumps([{k: v for k, v in GOOD.items() if k != "token_url"}]), "give 'token_url' or 'issuer'"),
    (json.dumps([{**GOOD, "url": "h.example"}]), "'url' must be an http(s) URL"),
    (json.dumps([{**GOOD, "secret": "s3cr3t-value"}]), "unknown key 'secret'"),
    (json.dumps([{**GOOD, "scope": 5}]), "'scope' must be"),
    (json.dumps([{**GOOD, "client_secret": "${CALLS_UNSET_VARIABLE}"}]), "CALLS_UNSET_VARIABLE, which is not set"),
    (json.dumps([GOOD, GOOD]), "two entries have the url"),
])
def test_a_bad_clients_file_stops_the_app(tmp_path, monkeypatch, content, message):
    monkeypatch.setenv("CALLS_TEST_SECRET", "s3cr3t-value")
    path = tmp_path / "clients.json"
    path.write_text(content)
    with pytest.raises(ConfigurationError) as refused:
        create_app({"APTK_DATA_DIR": str(tmp_path), "APTK_CALL_CLIENTS": str(path)}, providers=[("/hello", hello)])
    assert message in str(refused.value) and "APTK_CALL_CLIENTS" in str(refused.value)
    assert "s3cr3t-value" not in str(refused.value)


def test_a_missing_clients_file_stops_the_app(tmp_path):
    with pytest.raises(ConfigurationError, match="cannot be read"):
        create_app({"APTK_DATA_DIR": str(tmp_path), "APTK_CALL_CLIENTS": str(tmp_path / "nope.json")},
                   providers=[("/hello", hello)])


def test_clients_file_secrets_come_from_the_environment_and_the_longest_prefix_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("CALLS_TEST_SECRET", "from-env")
    path = clients_file(tmp_path, [GOOD, {**GOOD, "url": "https://h.example/team", "client_id": "team",
                                          "scope": ["a", "b"]}])
    clients = load_call_clients({"APTK_CALL_CLIENTS": path})
    assert [c.client_id for c in clients] == ["team", "c"] and clients[0].scopes == ("a", "b")
    assert all(c.client_secret == "from-env" for c in clients)
    assert "from-env" not in repr(clients)
    calls_for = [c for c in clients if c.serves("https://h.example/team/hello")]
    assert calls_for[0].client_id == "team"
    assert not clients[0].serves("https://h.example/teamwork/hello")


def test_a_provider_under_a_dynamic_prefix_is_local(tmp_path):
    from flask import Blueprint, g

    flows = Blueprint("flows", __name__, url_prefix="/flows/<flow_id>")

    @flows.url_value_preprocessor
    def _flow_id(endpoint, values):
        g.flow_id = values.pop("flow_id", None) if values else None

    flows.register_blueprint(hello.blueprint(name="flow_hello"))
    app = create_app({"APTK_DATA_DIR": str(tmp_path), "APTK_PUBLIC_URL": PUBLIC}, providers=[("/hello", hello)],
                     verifier=TokenAuthority().verifier)
    app.register_blueprint(flows)
    try:
        target = Calls.for_app(app).target(f"{PUBLIC}/flows/{uuid.uuid4()}/")
        assert target.local
        me = person()
        status = target.wait(me, target.run(me, {"echo_string": "deep"}, request_id="f")["action_id"], 30)
        assert status["details"] == {"hello": "deep"}
        assert not Calls.for_app(app).target(f"{PUBLIC}/flows/").local
    finally:
        close_app(app)


def test_check_body_applies_a_local_providers_input_schema_and_names_the_field(app):
    calls = Calls.for_app(app)
    target = calls.target(f"{PUBLIC}/hello/run")
    target.check_body({"echo_string": "hi"})
    with pytest.raises(RunRefused) as refused:
        target.check_body({"echo_string": 5}, "body.callback_body")
    assert (refused.value.status, refused.value.code) == (400, "BadActionRequest")
    assert refused.value.description == "body.callback_body.echo_string: 5 is not of type 'string'"
    with pytest.raises(RunRefused, match="body: 'echo_string' is a required property"):
        target.check_body({})
    calls.target("https://elsewhere.example/hello").check_body({"anything": True})  # remote: its /run decides
