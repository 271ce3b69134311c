"""The flow engine with the bundled providers in-process: every child a real action of a real provider."""

from __future__ import annotations

import dataclasses
import datetime
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from providers.acl import provider as acl_provider
from providers.flows import engine_store
from providers.flows.deployments import DeployedFlow
from providers.flows.engine import cancel_children, child_request_id, execute, resume_children
from providers.flows.language import validate
from providers.hello import provider as hello_provider
from providers.notify import provider as notify_provider
from providers.transfer import provider as transfer_provider
from tests.e2e.support import free_port
from tests.providers.conftest import OWNER, USER, local_collection, make_tree, wait_for
from toolkit import ActionProvider, get_toolkit
from toolkit.server import create_app
from toolkit.testing import TestClient, TokenAuthority, close_app

ORIGIN = "http://testserver"
HELLO = f"{ORIGIN}/hello"


def flow_provider(flow: DeployedFlow) -> ActionProvider:
    """A deployed flow served as a provider, as the flows provider serves it."""
    provider = ActionProvider(name=f"flow_{flow.id}", title=flow.title, input_schema=flow.input_schema,
                              recovery="rerun", max_attempts=10)

    @provider.run
    def run(body: dict[str, Any], ctx: Any) -> dict[str, Any]:
        # As the flows provider does: the address of the request that started the run (the in-process test
        # client's requests all go to ORIGIN), none for a run taken up after its process stopped.
        return execute(flow, body, ctx, origin=ORIGIN if ctx.origin else None)

    @provider.cancel
    def cancel(action: Any, ctx: Any) -> None:
        cancel_children(action, ctx)

    @provider.resume
    def resume(action: Any, ctx: Any) -> None:
        resume_children(action, ctx)

    return provider


def deployed(flow_id: str, definition: dict[str, Any], schema: dict[str, Any] | None = None) -> DeployedFlow:
    return DeployedFlow(id=flow_id, title=f"Flow {flow_id}", definition=validate(definition),
                        input_schema=schema or {"type": "object"}, owner=OWNER, source=definition)


class Site:
    """An app serving hello, transfer, acl, notify and some flows, on a data directory of its own."""

    def __init__(self, base: Path, flows: dict[str, dict[str, Any]], **config: Any) -> None:
        self.base = base
        self.flows = {fid: deployed(fid, d) for fid, d in flows.items()}
        collections = [local_collection("src", base / "src"), local_collection("dst", base / "dst"),
                       local_collection("shared", base / "shared", shared=True)]
        self.roots = {c["name"]: Path(c["url"][len("file://"):]) for c in collections}
        file = base / "collections.json"
        file.write_text(json.dumps(collections))
        self.config = {"APTK_DATA_DIR": str(base / "data"), "APTK_COLLECTIONS_FILE": str(file),
                       "APTK_PUBLIC_URL": ORIGIN, "APTK_NOTIFY_SENDER": "flows@example.org", **config}
        self.authority = TokenAuthority()
        self.app: Any = None
        self.start()

    def start(self) -> None:
        providers = [("/hello", hello_provider), ("/transfer", transfer_provider), ("/acl", acl_provider),
                     ("/notify", notify_provider)]
        providers += [(f"/flows/{fid}", flow_provider(flow)) for fid, flow in self.flows.items()]
        self.app = create_app(self.config, providers=providers, verifier=self.authority.verifier)
        self.scopes = [p.globus_auth_scope for p in get_toolkit(self.app).runtime.providers.values()]

    def stop(self) -> None:
        close_app(self.app)

    def client(self, prefix: str, identity: str = OWNER) -> TestClient:
        return TestClient(self.app, prefix, self.authority.token(identity, scopes=self.scopes), self.authority)

    def flow(self, flow_id: str, identity: str = OWNER) -> TestClient:
        return self.client(f"/flows/{flow_id}", identity)

    def children(self, prefix: str = "/hello", identity: str = OWNER) -> list[dict[str, Any]]:
        return list(self.client(prefix, identity).actions(status=("ACTIVE", "INACTIVE", "SUCCEEDED", "FAILED")))


@pytest.fixture
def make_site(tmp_path):
    sites: list[Site] = []

    def make(flows: dict[str, dict[str, Any]], **config: Any) -> Site:
        site = Site(tmp_path / f"site{len(sites)}", flows, **config)
        sites.append(site)
        return site

    yield make
    for site in sites:
        site.stop()


def run(client: TestClient, body: dict[str, Any], timeout: float = 30, **kw: Any) -> dict[str, Any]:
    return client.run(body, wait=True, timeout=timeout, **kw)


def log(client: TestClient, action_id: str) -> list[dict[str, Any]]:
    return list(client.log(action_id, limit=100)["entries"])


def hello_state(next_state: str | None = None, **extra: Any) -> dict[str, Any]:
    state = {"Type": "Action", "ActionUrl": HELLO, "Parameters": {"echo_string.$": "$.name"},
             "ResultPath": "$.Hello", **extra}
    if "Next" not in extra and "End" not in extra:
        state.update({"Next": next_state} if next_state else {"End": True})
    return state


# --- basics --------------------------------------------------------------------------------------------------


def test_pass_then_succeed_gives_the_document_as_globus_flows_reports_it(make_site):
    site = make_site({"p": {"StartAt": "Set", "States": {
        "Set": {"Type": "Pass", "Parameters": {"greeting.$": "$.name"}, "ResultPath": "$.set", "Next": "Done"},
        "Done": {"Type": "Succeed"}}}})
    status = run(site.flow("p"), {"name": "Ada"})
    assert status["status"] == "SUCCEEDED", status
    details = status["details"]
    assert details["code"] == "FlowSucceeded"
    assert details["output"] == {"name": "Ada", "set": {"greeting": "Ada"}}
    assert [(s["name"], s["type"], s["status"]) for s in details["states"]] == [
        ("Set", "Pass", "SUCCEEDED"), ("Done", "Succeed", "SUCCEEDED")]
    assert all(s["ended"] >= s["started"] for s in details["states"])
    descriptions = [e["description"] for e in log(site.flow("p"), status["action_id"])]
    assert [d for d in descriptions if d.startswith(("Set ", "Done "))] == [
        "Set entered", "Set left", "Done entered", "Done left"]


def test_action_state_calls_hello_in_process_as_the_runs_creator_with_a_derived_request_id(make_site):
    site = make_site({"h": {"StartAt": "Hi", "States": {"Hi": hello_state()}}})
    status = run(site.flow("h"), {"name": "Ada"})
    assert status["status"] == "SUCCEEDED", status
    (child,) = site.children()
    assert child["creator_id"] == f"urn:globus:auth:identity:{OWNER}"
    hello = status["details"]["output"]["Hello"]
    assert hello["status"] == "SUCCEEDED" and hello["details"] == {"hello": "Ada"}
    assert hello["action_id"] == child["action_id"] == status["details"]["states"][0]["child_action_id"]
    entries = log(site.flow("h"), status["action_id"])
    left = next(e for e in entries if e["description"] == "Hi left")
    assert left["details"]["child_action_id"] == child["action_id"]
    # the child's request_id is derived from (run, state, visit): asking again finds the same action
    again = site.client("/hello").run({"echo_string": "Ada"}, label="Flow h: Hi",
                                      request_id=child_request_id(status["action_id"], "Hi", 1))
    assert again["action_id"] == child["action_id"]


def test_fail_state_ends_the_run_failed_with_its_error_and_cause(make_site):
    site = make_site({"f": {"StartAt": "No", "States": {
        "No": {"Type": "Fail", "Error": "NotToday", "Cause": "The input said no."}}}})
    status = run(site.flow("f"), {})
    assert status["status"] == "FAILED"
    assert status["details"]["code"] == "NotToday"
    assert status["details"]["description"] == "The input said no."
    assert status["details"]["states"][0]["status"] == "FAILED"


def test_choice_and_expression_eval_route_the_run(make_site):
    site = make_site({"c": {"StartAt": "Calc", "States": {
        "Calc": {"Type": "ExpressionEval", "Parameters": {"double.=": "n * 2"}, "ResultPath": "$.calc",
                 "Next": "Big?"},
        "Big?": {"Type": "Choice", "Choices": [{"Variable": "$.calc.double", "NumericGreaterThan": 10,
                                                "Next": "Big"}], "Default": "Small"},
        "Big": {"Type": "Pass", "Result": "big", "ResultPath": "$.size", "End": True},
        "Small": {"Type": "Pass", "Result": "small", "ResultPath": "$.size", "End": True}}}})
    assert run(site.flow("c"), {"n": 7})["details"]["output"] == {"n": 7, "calc": {"double": 14}, "size": "big"}
    assert run(site.flow("c"), {"n": 2})["details"]["output"]["size"] == "small"


def test_wait_state_waits_and_stores_when_it_ends(make_site):
    site = make_site({"w": {"StartAt": "Nap", "States": {"Nap": {"Type": "Wait", "Seconds": 1, "End": True}}}})
    started = time.monotonic()
    status = run(site.flow("w"), {})
    assert status["status"] == "SUCCEEDED" and time.monotonic() - started >= 1.0
    record = engine_store.load(get_toolkit(site.app).runtime.store.engine, status["action_id"])
    assert record is not None and record.position is None and record.outcome == {"status": "SUCCEEDED"}


# --- the bundled providers chained ---------------------------------------------------------------------------

CHAIN = {
    "Comment": "hello, copy a folder into a shared collection, share it if the copy succeeded, and tell someone",
    "StartAt": "Hello",
    "States": {
        "Hello": hello_state("Copy"),
        "Copy": {"Type": "Action", "ActionUrl": f"{ORIGIN}/transfer",
                 "Parameters": {"source_endpoint_id": "src", "destination_endpoint_id": "shared",
                                "transfer_items": [{"source_path": "/run1/", "destination_path": "/run1/",
                                                    "recursive": True}]},
                 "ResultPath": "$.Transfer", "WaitTime": 60, "Next": "Copied?"},
        "Copied?": {"Type": "Choice", "Choices": [{"Variable": "$.Transfer.status", "StringEquals": "SUCCEEDED",
                                                   "Next": "Share"}], "Default": "CopyFailed"},
        "CopyFailed": {"Type": "Fail", "Error": "CopyFailed", "Cause": "The transfer did not succeed."},
        "Share": {"Type": "Action", "ActionUrl": f"{ORIGIN}/acl",
                  "Parameters": {"operation": "CREATE", "endpoint_id": "shared", "path": "/run1/",
                                 "principal_type": "identity", "principal.$": "$.reader", "permissions": "r"},
                  "ResultPath": "$.Share", "Next": "Tell"},
        "Tell": {"Type": "Action", "ActionUrl": f"{ORIGIN}/notify",
                 "Parameters": {"destination.$": "$.email", "subject": "Your data is shared",
                                "body_template": "$greeting: $files files are in /run1/.",
                                "body_variables": {"greeting.$": "$.Hello.details.hello",
                                                   "files.$": "$.Transfer.details.files"}},
                 "ResultPath": "$.Tell", "End": True},
    },
}


def test_hello_transfer_choice_share_notify(make_site, smtp_servers):
    mail = smtp_servers()
    site = make_site({"chain": CHAIN}, APTK_SMTP_URL=mail.url())
    make_tree(site.roots["src"], {"run1/a.txt": b"alpha", "run1/sub/b.txt": b"beta"})
    status = run(site.flow("chain"), {"name": "Ada", "reader": USER, "email": "ada@example.org"}, timeout=60)
    assert status["status"] == "SUCCEEDED", status
    output = status["details"]["output"]
    assert (site.roots["shared"] / "run1/sub/b.txt").read_bytes() == b"beta"
    assert output["Transfer"]["status"] == "SUCCEEDED" and output["Share"]["status"] == "SUCCEEDED"
    # the rule the flow made lets USER read the shared folder
    copy = site.client("/transfer", USER).run(
        {"source_endpoint_id": "shared", "destination_endpoint_id": "dst",
         "transfer_items": [{"source_path": "/run1/a.txt", "destination_path": "/a.txt"}]}, wait=True)
    assert copy["status"] == "SUCCEEDED", copy
    (message,) = mail.messages
    assert message["To"] == "ada@example.org"
    assert message.get_content().strip() == "Ada: 2 files are in /run1/."
    states = status["details"]["states"]
    assert [s["name"] for s in states] == ["Hello", "Copy", "Copied?", "Share", "Tell"]
    for prefix in ("/hello", "/transfer", "/acl", "/notify"):
        assert len(site.children(prefix)) == 1, prefix  # exactly one child per Action state


# --- errors --------------------------------------------------------------------------------------------------


def test_failing_action_is_caught_by_catch_with_its_result_path(make_site):
    site = make_site({"c": {"StartAt": "Hi", "States": {
        "Hi": hello_state("Unreached", Parameters={"echo_string": "x", "fail": True},
                          Catch=[{"ErrorEquals": ["ActionFailedException"], "ResultPath": "$.Error",
                                  "Next": "Recover"}]),
        "Unreached": {"Type": "Fail", "Error": "Unreached"},
        "Recover": {"Type": "Pass", "Result": "recovered", "ResultPath": "$.after", "End": True}}}})
    status = run(site.flow("c"), {"name": "Ada"})
    assert status["status"] == "SUCCEEDED", status
    output = status["details"]["output"]
    assert output["after"] == "recovered"
    assert output["Error"]["Error"] == "ActionFailedException"
    assert json.loads(output["Error"]["Cause"])["details"]["code"] == "HelloFailed"
    assert [(s["name"], s["status"]) for s in status["details"]["states"]] == [
        ("Hi", "FAILED"), ("Recover", "SUCCEEDED")]


def test_uncaught_action_failure_fails_the_run_with_action_failed_exception(make_site):
    site = make_site({"c": {"StartAt": "Hi", "States": {
        "Hi": hello_state(Parameters={"echo_string": "x", "fail": True})}}})
    status = run(site.flow("c"), {})
    assert status["status"] == "FAILED"
    assert status["details"]["code"] == "ActionFailedException"
    assert "HelloFailed" in status["details"]["description"]


def test_without_exception_on_action_failure_the_failed_status_is_the_result(make_site):
    site = make_site({"c": {"StartAt": "Hi", "States": {
        "Hi": hello_state(Parameters={"echo_string": "x", "fail": True}, ExceptionOnActionFailure=False)}}})
    status = run(site.flow("c"), {})
    assert status["status"] == "SUCCEEDED", status
    assert status["details"]["output"]["Hello"]["status"] == "FAILED"


def test_a_refused_run_is_action_unable_to_run_and_states_all_catches_it(make_site):
    site = make_site({
        "bad": {"StartAt": "Hi", "States": {"Hi": hello_state(Parameters={"no_such_field": 1})}},
        "caught": {"StartAt": "Hi", "States": {
            "Hi": hello_state(Parameters={"no_such_field": 1},
                              Catch=[{"ErrorEquals": ["States.ALL"], "ResultPath": "$.err", "Next": "Ok"}]),
            "Ok": {"Type": "Succeed"}}},
    })
    status = run(site.flow("bad"), {})
    assert status["status"] == "FAILED"
    assert status["details"]["code"] == "ActionUnableToRun"
    assert "BadActionRequest" in status["details"]["description"]
    assert site.children() == []  # nothing was started
    caught = run(site.flow("caught"), {})
    assert caught["status"] == "SUCCEEDED" and caught["details"]["output"]["err"]["Error"] == "ActionUnableToRun"


def test_wait_time_expiry_is_action_timeout_and_cancels_the_child(make_site):
    site = make_site({"t": {"StartAt": "Slow", "States": {
        "Slow": hello_state(Parameters={"echo_string": "x", "sleep_time": 60}, WaitTime=1)}}})
    started = time.monotonic()
    status = run(site.flow("t"), {})
    assert time.monotonic() - started < 15
    assert status["status"] == "FAILED"
    assert status["details"]["code"] == "ActionTimeout"
    (child,) = site.children()
    assert child["status"] == "FAILED" and child["details"]["code"] == "ActionCancelled"


# --- composition, cancel, pause ------------------------------------------------------------------------------


def test_nested_flow_is_called_like_any_provider(make_site):
    site = make_site({
        "inner": {"StartAt": "Hi", "States": {"Hi": hello_state()}},
        "outer": {"StartAt": "Inner", "States": {"Inner": {
            "Type": "Action", "ActionUrl": f"{ORIGIN}/flows/inner/", "Parameters": {"name.$": "$.who"},
            "ResultPath": "$.inner", "End": True}}},
    })
    status = run(site.flow("outer"), {"who": "Grace"})
    assert status["status"] == "SUCCEEDED", status
    inner = status["details"]["output"]["inner"]
    assert inner["status"] == "SUCCEEDED"
    assert inner["details"]["output"]["Hello"]["details"] == {"hello": "Grace"}
    (run_of_inner,) = site.children("/flows/inner")
    assert run_of_inner["action_id"] == inner["action_id"]


def test_cancel_of_a_run_cancels_its_running_child(make_site):
    site = make_site({"s": {"StartAt": "Slow", "States": {
        "Slow": hello_state(Parameters={"echo_string": "x", "sleep_time": 60})}}})
    client = site.flow("s")
    started = client.run({})
    child_id = wait_for(lambda: (client.status(started["action_id"])["details"].get("states") or [{}])[0]
                        .get("child_action_id"))
    client.cancel(started["action_id"])
    hello = site.client("/hello")
    child = wait_for(lambda: (s := hello.status(child_id))["status"] == "FAILED" and s)
    assert child["details"]["code"] == "ActionCancelled"
    assert client.status(started["action_id"])["details"]["code"] == "ActionCancelled"


def test_a_run_past_its_deadline_cancels_its_running_child(make_site):
    site = make_site({"s": {"StartAt": "Slow", "States": {
        "Slow": hello_state(Parameters={"echo_string": "x", "sleep_time": 60})}}})
    client = site.flow("s")
    deadline = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=2)
    started = client.run({}, deadline=deadline.isoformat())
    child_id = wait_for(lambda: (client.status(started["action_id"])["details"].get("states") or [{}])[0]
                        .get("child_action_id"))
    ended = client.wait(started["action_id"], timeout=30, max_interval=0.2)
    assert ended["details"]["code"] == "DeadlineExceeded"
    hello = site.client("/hello")
    child = wait_for(lambda: (s := hello.status(child_id))["status"] == "FAILED" and s, timeout=20)
    assert child["details"]["code"] == "ActionCancelled"


def test_inactive_child_pauses_the_run_and_resume_resumes_the_child_then_the_run(make_site):
    site = make_site({"r": {"StartAt": "Ask", "States": {
        "Ask": hello_state("After", Parameters={"echo_string": "x", "require_resume": True}),
        "After": {"Type": "Pass", "Result": 1, "ResultPath": "$.after", "End": True}}}})
    client = site.flow("r")
    started = client.run({})
    paused = wait_for(lambda: (s := client.status(started["action_id"]))["status"] == "INACTIVE" and s)
    assert paused["details"]["code"] == "ResumeRequired"
    assert None not in paused["details"].values()
    assert [(e["name"], e["status"]) for e in paused["details"]["states"]] == [("Ask", "INACTIVE")]
    assert "waits for a call to /resume" in paused["details"]["description"]
    (child,) = site.children()
    assert child["status"] == "INACTIVE"
    client.resume(started["action_id"])
    done = client.wait(started["action_id"], timeout=30, max_interval=0.2)
    assert done["status"] == "SUCCEEDED", done
    assert done["details"]["output"]["after"] == 1
    assert [(e["name"], e["status"]) for e in done["details"]["states"]] == [("Ask", "SUCCEEDED"),
                                                                             ("After", "SUCCEEDED")]
    (child,) = site.children()  # the same child, resumed: not a second one
    assert child["status"] == "SUCCEEDED"


def test_private_parameters_reach_the_action_but_not_the_runs_status_or_log(make_site, smtp_servers):
    mail = smtp_servers()
    secret = "hunter2-ZX81"
    site = make_site({"p": {"StartAt": "Tell", "States": {"Tell": {
        "Type": "Action", "ActionUrl": f"{ORIGIN}/notify", "ResultPath": "$.Tell", "End": True,
        "Parameters": {"destination": "ada@example.org", "body_template": "code $code",
                       "body_variables": {"code.$": "$._private_code"},
                       "__Private_Parameters": ["body_variables"]}}}}}, APTK_SMTP_URL=mail.url())
    client = site.flow("p")
    status = run(client, {"_private_code": secret})
    assert status["status"] == "SUCCEEDED", status
    assert secret in mail.messages[0].get_content()
    assert secret not in json.dumps(client.status(status["action_id"]))
    assert secret not in json.dumps(log(client, status["action_id"]))


# --- durability ----------------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request) -> dict[str, str]:
    """App settings for each database the engine's table must work on."""
    if request.param == "sqlite":
        return {}
    server = request.getfixturevalue("postgres_server")
    return {"APTK_DATABASE_URL": server.create_database(f"aptk_{uuid.uuid4().hex[:12]}")}


def test_a_run_taken_up_after_its_process_stopped_waits_on_the_same_child(make_site, database):
    site = make_site({"d": {"StartAt": "Slow", "States": {
        "Slow": hello_state("Then", Parameters={"echo_string": "x", "sleep_time": 3}),
        "Then": hello_state(Parameters={"echo_string": "y"})}}}, **database)
    client = site.flow("d")
    started = client.run({})
    wait_for(lambda: (client.status(started["action_id"])["details"].get("states") or [{}])[0]
             .get("child_action_id"))
    site.stop()  # the process's runs are handed over: the next process takes them up
    site.start()
    done = site.flow("d").wait(started["action_id"], timeout=30, max_interval=0.2)
    assert done["status"] == "SUCCEEDED", done
    children = site.children()
    assert sorted(c["details"].get("hello") for c in children) == ["x", "y"]  # one child per state


# --- remote providers ----------------------------------------------------------------------------------------


def test_a_remote_provider_without_credentials_pauses_the_run_asking_for_them(make_site):
    site = make_site({"r": {"StartAt": "Far", "States": {
        "Far": hello_state(ActionUrl=f"http://127.0.0.1:{free_port()}/hello")}}})
    client = site.flow("r")
    started = client.run({"name": "x"})
    paused = client.wait(started["action_id"], timeout=30, max_interval=0.2, until=("INACTIVE", "SUCCEEDED", "FAILED"))
    assert paused["status"] == "INACTIVE"
    assert paused["details"]["code"] == "CredentialsRequired"
    assert "APTK_CALL_CLIENTS" in paused["details"]["description"]


def test_a_remote_provider_that_is_down_is_retried_until_it_answers(make_site, oidc_server, tmp_path):
    from werkzeug.serving import make_server

    from tests.oidc.fixture import CALLER, HELLO_SCOPE, JWT_RESOURCE

    port = free_port()
    remote_app = create_app({"APTK_DATA_DIR": str(tmp_path / "remote"), "APTK_AUTH": "jwt",
                             "APTK_AUTH_ISSUER": oidc_server.issuer, "APTK_AUTH_AUDIENCE": JWT_RESOURCE},
                            providers=[("/hello", hello_provider)])
    clients = tmp_path / "clients.json"
    clients.write_text(json.dumps([{"url": f"http://127.0.0.1:{port}/", "issuer": oidc_server.issuer,
                                    "client_id": oidc_server.client_id(CALLER),
                                    "client_secret": oidc_server.client_secret(CALLER), "scope": HELLO_SCOPE,
                                    "resource": JWT_RESOURCE}]))
    site = make_site({"r": {"StartAt": "Far", "States": {
        "Far": hello_state(ActionUrl=f"http://127.0.0.1:{port}/hello")}}},
        APTK_CALL_CLIENTS=str(clients), APTK_CALL_POLL_MAX_SECONDS=1)
    client = site.flow("r")
    started = client.run({"name": "far away"})
    time.sleep(1.5)  # nobody listens yet: connection refused, retried
    assert client.status(started["action_id"])["status"] == "ACTIVE"
    server = make_server("127.0.0.1", port, remote_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        done = client.wait(started["action_id"], timeout=60, max_interval=0.2)
    finally:
        server.shutdown()
        close_app(remote_app)
    assert done["status"] == "SUCCEEDED", done
    far = done["details"]["output"]["Hello"]
    assert far["details"] == {"hello": "far away"}
    assert far["creator_id"] == f"urn:globus:auth:identity:{oidc_server.client_id(CALLER)}"


def test_a_run_taken_up_under_a_changed_definition_finishes_on_the_one_it_started_with(make_site):
    site = make_site({"d": {"StartAt": "Slow", "States": {
        "Slow": hello_state("Then", Parameters={"echo_string": "x", "sleep_time": 2}),
        "Then": hello_state(Parameters={"echo_string": "y"})}}})
    client = site.flow("d")
    started = client.run({})
    wait_for(lambda: (client.status(started["action_id"])["details"].get("states") or [{}])[0]
             .get("child_action_id"))
    site.stop()
    # "Then" is gone and "Slow" goes elsewhere: the run started before goes on as it began
    site.flows["d"] = dataclasses.replace(deployed("d", {"StartAt": "Slow", "States": {
        "Slow": hello_state("Other", Parameters={"echo_string": "z"}),
        "Other": {"Type": "Pass", "Result": 1, "ResultPath": "$.other", "End": True}}}), version=2)
    site.start()
    done = site.flow("d").wait(started["action_id"], timeout=30, max_interval=0.2)
    assert done["status"] == "SUCCEEDED", done
    assert [s["name"] for s in done["details"]["states"]] == ["Slow", "Then"]
    assert done["details"]["flow_version"] == 1
    assert sorted(c["details"].get("hello") for c in site.children()) == ["x", "y"]
    later = run(site.flow("d"), {})
    assert [s["name"] for s in later["details"]["states"]] == ["Slow", "Other"]
    assert (later["details"]["output"]["other"], later["details"]["flow_version"]) == (1, 2)


def test_a_run_stored_without_its_definition_and_taken_up_without_its_state_fails_saying_so(make_site):
    """Runs stored before definitions were kept with them walk the flow's current definition."""
    site = make_site({"d": {"StartAt": "Slow", "States": {
        "Slow": hello_state(Parameters={"echo_string": "x", "sleep_time": 60})}}})
    client = site.flow("d")
    started = client.run({})
    child_id = wait_for(lambda: (client.status(started["action_id"])["details"].get("states") or [{}])[0]
                        .get("child_action_id"))
    site.stop()
    engine = get_toolkit(site.app).runtime.store.engine
    with engine.begin() as conn:
        conn.execute(engine_store.definitions_table.delete())
    site.flows["d"] = deployed("d", {"StartAt": "Other", "States": {"Other": {"Type": "Succeed"}}})
    site.start()
    done = site.flow("d").wait(started["action_id"], timeout=30, max_interval=0.2)
    assert done["status"] == "FAILED"
    assert done["details"]["code"] == "States.Runtime"
    assert "'Slow', which it no longer has" in done["details"]["description"]
    child = wait_for(lambda: (s := site.client("/hello").status(child_id))["status"] == "FAILED" and s)
    assert child["details"]["code"] == "ActionCancelled"  # the child of the state that is gone is not left running


def test_a_run_taken_up_after_a_crash_calls_in_process_what_it_called_in_process_before(make_site):
    """Without APTK_PUBLIC_URL, the address the run was started at says what is in-process; a run taken up after
    its process stopped has no request to ask, and keeps the address it was started at."""
    site = make_site({"d": {"StartAt": "Slow", "States": {
        "Slow": hello_state("Then", Parameters={"echo_string": "x", "sleep_time": 3}),
        "Then": hello_state(Parameters={"echo_string": "y"})}}}, APTK_PUBLIC_URL="")
    client = site.flow("d")
    started = client.run({})
    wait_for(lambda: (client.status(started["action_id"])["details"].get("states") or [{}])[0]
             .get("child_action_id"))
    site.stop()
    site.start()
    done = site.flow("d").wait(started["action_id"], timeout=30, max_interval=0.2,
                               until=("SUCCEEDED", "FAILED", "INACTIVE"))
    assert done["status"] == "SUCCEEDED", done
    assert sorted(c["details"].get("hello") for c in site.children()) == ["x", "y"]


# --- cost ------------------------------------------------------------------------------------------------------


def test_a_state_costs_one_write_its_log_entries_committed_with_its_record(make_site, monkeypatch):
    from toolkit.store import SQLStore

    def passes(count: int) -> dict[str, Any]:
        states = {f"P{i}": {"Type": "Pass", "Result": i, "ResultPath": "$.n", "Next": f"P{i + 1}"}
                  for i in range(count)}
        states[f"P{count - 1}"] = {"Type": "Pass", "Result": count - 1, "ResultPath": "$.n", "End": True}
        return {"StartAt": "P0", "States": states}

    site = make_site({"short": passes(5), "long": passes(15)})
    writes = {"count": 0}
    transact = SQLStore._transact

    def counted(self, work, **options):
        writes["count"] += 1
        return transact(self, work, **options)

    monkeypatch.setattr(SQLStore, "_transact", counted)
    made = {}
    for flow_id in ("short", "long"):
        writes["count"] = 0
        done = run(site.flow(flow_id), {})
        assert done["status"] == "SUCCEEDED"
        made[flow_id] = writes["count"]
        entries = [e["description"] for e in log(site.flow(flow_id), done["action_id"])]
        assert [e for e in entries if e.startswith("P1 ")] == ["P1 entered", "P1 left"]  # every entry is kept
    assert (made["long"] - made["short"]) / 10 == 1
