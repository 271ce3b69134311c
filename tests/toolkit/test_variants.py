"""ActionProvider.variants: one provider serving many, each at <prefix>/<key>/ with its own description, input
schema, visibility and actions, looked up again by the stored name when an action is taken up after a crash."""

import uuid

import pytest

from toolkit import Action, ActionProvider, Status, get_toolkit
from toolkit.client import ClientError
from toolkit.errors import ConfigurationError
from toolkit.testing import TestClient, close_app, provider_app

ALICE = "11111111-1111-4111-8111-111111111111"
BOB = "22222222-2222-4222-8222-222222222222"


class Family:
    """A provider whose variants are kept in a dict a test may change, as a database would be."""

    def __init__(self, **options):
        self.provider = ActionProvider(title="Family", input_schema={"type": "object"}, **options)
        self.known = {
            "greet": {"title": "Greeter", "input_schema": {"type": "object", "required": ["name"],
                                                           "properties": {"name": {"type": "string"}}}},
            "alice-only": {"title": "Private", "visible_to": [f"urn:globus:auth:identity:{ALICE}"],
                           "runnable_by": [f"urn:globus:auth:identity:{ALICE}"]},
        }
        self.lookups = []
        self.provider.run(lambda body, ctx: {"family": True, "attempt": ctx.attempt})

        @self.provider.variants
        def resolve(key, ctx):
            self.lookups.append(key)
            options = self.known.get(key)
            if options is None:
                return None
            variant = self.provider.variant(key, **options)
            if key == "greet":
                variant.run(lambda body, ctx: {"greeting": f"Hello, {body['name']}", "attempt": ctx.attempt})
            return variant


@pytest.fixture
def family():
    return Family()


@pytest.fixture
def site(family, tmp_path):
    app, authority = provider_app(family.provider, tmp_path, prefix="/fam")
    yield app, authority
    close_app(app)


def client(site, key, identity=ALICE):
    app, authority = site
    return TestClient(app, f"/fam/{key}", authority.token(identity, scopes=["urn:aptk:scope:family"]), authority)


def test_each_variant_describes_itself_and_validates_its_own_input(site):
    greet = client(site, "greet")
    description = greet.introspect()
    assert (description["title"], description["input_schema"]["required"]) == ("Greeter", ["name"])
    with pytest.raises(ClientError) as caught:
        greet.run({})
    assert caught.value.status == 400 and caught.value.description == "body: 'name' is a required property"
    final = greet.run({"name": "Ada"}, wait=True)
    assert (final["status"], final["details"]) == ("SUCCEEDED", {"greeting": "Hello, Ada", "attempt": 1})
    assert greet.session.get(greet.url + "/openapi.json").json()["servers"][0]["url"].endswith("/fam/greet")


def test_an_unknown_key_is_a_json_404_on_every_route(site):
    app, _ = site
    web = app.test_client()
    for method, path in [("GET", "/fam/nope/"), ("POST", "/fam/nope/run"), ("GET", "/fam/nope/actions"),
                         ("GET", f"/fam/nope/{uuid.uuid4().hex}/status"), ("GET", "/fam/no%20pe/")]:
        answer = web.open(path, method=method, headers={"Authorization": "Bearer x"})
        assert answer.status_code == 404, path
        assert answer.json["code"] in ("ProviderNotFound", "NotFound"), path
    assert web.get("/fam/nope/").json == {"code": "ProviderNotFound", "description": "Nothing is served at 'nope' here."}


def test_visibility_and_runnable_by_are_the_variants(site):
    bob = client(site, "alice-only", BOB)
    for call in (bob.introspect, lambda: bob.run({})):
        with pytest.raises(ClientError) as caught:
            call()
        assert caught.value.status == 403
    assert client(site, "alice-only").run({}, wait=True)["details"] == {"family": True, "attempt": 1}


def test_actions_belong_to_one_variant(site):
    greet, other = client(site, "greet"), client(site, "alice-only")
    action = greet.run({"name": "Ada"}, request_id="same")["action_id"]
    with pytest.raises(ClientError) as caught:
        other.status(action)
    assert caught.value.status == 404
    assert [a["action_id"] for a in greet.actions_page()["actions"]] == [action]
    assert other.actions_page()["actions"] == []
    # request_id idempotency is per variant: the same request_id elsewhere is another action
    elsewhere = other.run({}, request_id="same")["action_id"]
    assert elsewhere != action
    assert greet.run({"name": "Ada"}, request_id="same")["action_id"] == action
    stored = get_toolkit(site[0]).runtime.store.get(action)
    assert stored.provider == "family/greet"


def test_an_action_of_a_dead_process_is_run_again_by_its_variant(tmp_path):
    family = Family(recovery="rerun")
    app, authority = provider_app(family.provider, tmp_path, prefix="/fam")
    try:
        runtime = get_toolkit(app).runtime
        runtime.start()
        orphans = {}
        for key, body in (("greet", {"name": "Bo"}), ("gone", {})):
            action = Action(
                action_id=uuid.uuid4().hex, provider=f"family/{key}", request_id="r", request_hash="h",
                creator_id=f"urn:globus:auth:identity:{ALICE}", status=Status.ACTIVE, body=body, start_time=1.0, attempts=1,
                runner="gone:1:dead", heartbeat=1.0, principals=[f"urn:globus:auth:identity:{ALICE}"],
            )
            runtime.store.create(action, log=(1.0, "ActionStarted", "Action started"), now=2.0)
            orphans[key] = action.action_id
        # "gone" was never known: the variant was removed while its action was running
        runtime.sweep()
        greet = client((app, authority), "greet")
        final = greet.wait(orphans["greet"], timeout=5)
        assert (final["status"], final["details"]) == ("SUCCEEDED", {"greeting": "Hello, Bo", "attempt": 2})
        lost = runtime.store.get(orphans["gone"])
        assert (lost.status, lost.details["code"]) == (Status.FAILED, "ProviderGone")
    finally:
        close_app(app)


def test_variant_keys_and_options_are_checked():
    family = Family().provider
    with pytest.raises(ConfigurationError, match="variant key 'a/b'"):
        family.variant("a/b")
    with pytest.raises(ConfigurationError, match="a variant cannot set name"):
        family.variant("a", name="other")
    assert family.variant("a", title="A").name == "family/a"


def test_a_local_call_checks_a_body_against_the_variants_schema(site):
    from toolkit.calls import Calls, RunRefused

    calls = Calls.for_app(site[0])
    calls.target("http://localhost/fam/greet", origin="http://localhost").check_body({"name": "Ada"})
    with pytest.raises(RunRefused) as refused:
        calls.target("http://localhost/fam/greet", origin="http://localhost").check_body({"name": 3})
    assert refused.value.description == "body.name: 3 is not of type 'string'"
    with pytest.raises(RunRefused) as unknown:
        calls.target("http://localhost/fam/nobody", origin="http://localhost").check_body({})
    assert unknown.value.status == 404
