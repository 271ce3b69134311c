"""The wire contract of a provider's blueprint, in-process."""

import threading
import uuid

import pytest
from flask import Flask
from marshmallow import Schema, fields

from tests.conftest import no_nulls
from toolkit import ActionFailed, ActionProvider, ConfigurationError, Toolkit
from toolkit.client import ClientError
from toolkit.testing import TestClient, TokenAuthority, provider_client

GROUP = str(uuid.uuid4())


def make_provider(**options) -> ActionProvider:
    options.setdefault("title", "Echo")
    options.setdefault(
        "input_schema",
        {
            "type": "object",
            "required": ["text"],
            "additionalProperties": False,
            "properties": {"text": {"type": "string", "maxLength": 10}, "count": {"type": "integer", "minimum": 0}},
        },
    )
    provider = ActionProvider(**options)

    @provider.run
    def echo(body, ctx):
        if body["text"] == "fail":
            raise ActionFailed("Refused", "asked to fail", item="text")
        if body["text"] == "boom":
            raise RuntimeError("secret-value-in-exception")
        return {"echo": body["text"]}

    return provider


@pytest.fixture
def client(tmp_path):
    return provider_client(make_provider(synchronous=True), tmp_path)


def raw(client: TestClient):
    """A Flask test client and auth header for the same app, to send what the HTTP client would not."""
    return client.app.test_client(), {"Authorization": client.session.headers["Authorization"]}


def error_of(call, *args, **kwargs) -> ClientError:
    with pytest.raises(ClientError) as caught:
        call(*args, **kwargs)
    return caught.value


class TestIntrospection:
    def test_describes_the_provider_without_a_token(self, tmp_path):
        provider = make_provider(subtitle="Sub", keywords=["k"], admin_contact="a@example.org")
        app = provider_client(provider, tmp_path).app
        document = app.test_client().get("/provider/").json
        assert document["types"] == ["Action"]
        assert document["api_version"] == "1.0"
        assert document["title"] == "Echo"
        assert document["globus_auth_scope"] == "urn:aptk:scope:echo"
        assert document["input_schema"] == provider.input_schema
        assert document["visible_to"] == ["public"]
        assert document["runnable_by"] == ["all_authenticated_users"]
        assert document["synchronous"] is False
        assert document["maximum_deadline"] == "P30D"
        assert no_nulls(document) == []

    def test_admin_contact_is_always_sent(self, tmp_path):
        own = provider_client(make_provider(admin_contact="a@example.org"), tmp_path / "own").app
        assert own.test_client().get("/provider/").json["admin_contact"] == "a@example.org"
        app = provider_client(make_provider(), tmp_path / "default").app
        unset = app.test_client().get("/provider/").json["admin_contact"]
        assert "APTK_ADMIN_CONTACT" in unset
        app.config["APTK_ADMIN_CONTACT"] = "ops@example.org"
        assert app.test_client().get("/provider/").json["admin_contact"] == "ops@example.org"
        own.config["APTK_ADMIN_CONTACT"] = "ops@example.org"  # the provider's own contact wins
        assert own.test_client().get("/provider/").json["admin_contact"] == "a@example.org"
        spec = app.test_client().get("/provider/openapi.json").json
        assert "admin_contact" in spec["components"]["schemas"]["ProviderDescription"]["required"]

    def test_served_without_trailing_slash_too(self, client):
        assert client.app.test_client().get("/provider").status_code == 200

    def test_restricted_visibility_needs_a_token_and_membership(self, tmp_path):
        provider = make_provider(visible_to=[f"urn:globus:groups:id:{GROUP}"])
        client = provider_client(provider, tmp_path)
        http = client.app.test_client()
        assert http.get("/provider/").status_code == 401
        assert error_of(client.introspect).status == 403
        member = client.as_identity(groups=[GROUP])
        assert member.introspect()["title"] == "Echo"


class TestRun:
    def test_new_action_is_202_and_repeat_is_200_with_same_action(self, client):
        http, auth = raw(client)
        request = {"request_id": "r1", "body": {"text": "hi"}}
        first = http.post("/provider/run", json=request, headers=auth)
        again = http.post("/provider/run", json=request, headers=auth)
        assert (first.status_code, again.status_code) == (202, 200)
        assert first.json["action_id"] == again.json["action_id"]

    def test_same_request_id_with_another_body_is_409(self, client):
        client.run({"text": "hi"}, request_id="r1")
        error = error_of(client.run, {"text": "ho"}, request_id="r1")
        assert (error.status, error.code) == (409, "ActionConflict")

    def test_request_ids_are_per_caller(self, client):
        mine = client.run({"text": "hi"}, request_id="same")
        theirs = client.as_identity().run({"text": "hi"}, request_id="same")
        assert mine["action_id"] != theirs["action_id"]

    def test_synchronous_provider_finishes_inside_the_request(self, client):
        status = client.run({"text": "hi"})
        assert status["status"] == "SUCCEEDED"
        assert status["details"] == {"echo": "hi"}
        assert "completion_time" in status and "start_time" in status
        assert no_nulls(status) == []

    def test_failed_details_carry_code_and_description(self, client):
        status = client.run({"text": "fail"})
        assert status["status"] == "FAILED"
        assert status["details"] == {"code": "Refused", "description": "asked to fail", "item": "text"}

    def test_unexpected_callback_error_fails_without_leaking_it(self, client, caplog):
        status = client.run({"text": "boom"})
        assert status["status"] == "FAILED"
        assert status["details"]["code"] == "ActionError"
        assert "secret-value" not in str(status)
        assert "secret-value-in-exception" in caplog.text  # logged for the operator

    def test_optional_fields_are_echoed(self, client):
        who = f"urn:globus:auth:identity:{uuid.uuid4()}"
        status = client.run({"text": "hi"}, label="my label", monitor_by=[who], manage_by=[who], release_after="P1D")
        assert status["label"] == "my label"
        assert status["monitor_by"] == [who] and status["manage_by"] == [who]
        assert status["release_after"] == "P1D"

    @pytest.mark.parametrize(
        "request_document, field",
        [
            ({"request_id": "x", "body": {"text": 3}}, "body.text"),
            ({"request_id": "x", "body": {}}, "body"),
            ({"request_id": "x", "body": {"text": "a", "other": 1}}, "other"),
            ({"request_id": "x", "body": {"text": "a", "count": -1}}, "body.count"),
            ({"request_id": "x", "body": {"text": "a"}, "label": "x" * 65}, "label"),
            ({"request_id": "x", "body": {"text": "a"}, "label": ""}, "label"),
            ({"request_id": "x", "body": {"text": "a"}, "surprise": True}, "surprise"),
            ({"body": {"text": "a"}}, "request_id"),
            ({"request_id": "x"}, "body"),
            ({"request_id": "x", "body": []}, "body"),
            ({"request_id": "x", "body": {"text": "a"}, "monitor_by": ["bob"]}, "monitor_by"),
            ({"request_id": "x", "body": {"text": "a"}, "deadline": "tomorrow"}, "deadline"),
            ({"request_id": "x", "body": {"text": "a"}, "release_after": "soon"}, "release_after"),
            ({"request_id": "x", "body": {"text": "a"}, "release_after": "P1M"}, "release_after"),
            ({"request_id": "x", "body": {"text": "a"}, "label": None}, "label"),
            ({"request_id": 5, "body": {"text": "a"}}, "request_id"),
        ],
    )
    def test_invalid_request_is_400_naming_the_field(self, client, request_document, field):
        http, auth = raw(client)
        response = http.post("/provider/run", json=request_document, headers=auth)
        assert response.status_code == 400
        assert response.json["code"] == "BadActionRequest"
        assert field in response.json["description"]
        assert http.get("/provider/actions", headers=auth).json["actions"] == []  # nothing half-written

    @pytest.mark.parametrize("data", [b"", b"{", b"[1]", b'"text"', b"NaN", b"\xff\xfe"])
    def test_malformed_body_is_400(self, client, data):
        http, auth = raw(client)
        response = http.post("/provider/run", data=data, headers={**auth, "Content-Type": "application/json"})
        assert response.status_code == 400
        assert response.json["code"] == "BadActionRequest"

    def test_deadline_beyond_maximum_is_400(self, tmp_path):
        client = provider_client(make_provider(maximum_deadline="PT1H"), tmp_path)
        error = error_of(client.run, {"text": "a"}, deadline="2999-01-01T00:00:00Z")
        assert error.status == 400
        assert "maximum_deadline" in error.description

    def test_deadline_in_the_past_is_400(self, client):
        error = error_of(client.run, {"text": "a"}, deadline="2000-01-01T00:00:00Z")
        assert error.status == 400 and "deadline" in error.description

    def test_runnable_by_refuses_others_with_403(self, tmp_path):
        client = provider_client(make_provider(runnable_by=[f"urn:globus:groups:id:{GROUP}"]), tmp_path)
        assert error_of(client.run, {"text": "a"}).status == 403
        assert client.as_identity(groups=[GROUP]).run({"text": "a"})["status"] in ("ACTIVE", "SUCCEEDED")

    def test_marshmallow_input_schema_validates_and_loads(self, tmp_path):
        class Body(Schema):
            text = fields.String(required=True)
            times = fields.Integer(load_default=2)

        provider = ActionProvider(title="Repeat", input_schema=Body, synchronous=True)
        seen = []

        @provider.run
        def repeat(body, ctx):
            seen.append(body)
            return {"out": body["text"] * body["times"]}

        client = provider_client(provider, tmp_path)
        assert client.introspect()["input_schema"]["required"] == ["text"]
        assert client.run({"text": "ab"})["details"] == {"out": "abab"}
        error = error_of(client.run, {"times": "x"})
        assert error.status == 400
        assert "body.text" in error.description and "body.times" in error.description


class TestAuthentication:
    @pytest.mark.parametrize(
        "header, error",
        [
            (None, None),  # RFC 6750 section 3.1: no error code when no bearer token was tried
            ("Basic abc", None),
            ("Bearer", "invalid_request"),
            ("Bearer not.a.token", "invalid_token"),
        ],
    )
    def test_bad_or_missing_token_is_401_with_www_authenticate(self, client, header, error):
        http = client.app.test_client()
        response = http.get("/provider/actions", headers={"Authorization": header} if header else {})
        assert response.status_code == 401
        assert response.json["code"] == "UnauthorizedRequest"
        if error is None:
            assert response.headers["WWW-Authenticate"] == "Bearer"
        else:
            assert response.headers["WWW-Authenticate"].startswith(f'Bearer error="{error}"')

    def test_token_without_the_scope_is_403_insufficient_scope(self, client):
        other = client.authority.token(scopes=["urn:aptk:scope:other"])
        response = client.app.test_client().get("/provider/actions", headers={"Authorization": f"Bearer {other}"})
        assert response.status_code == 403
        assert response.headers["WWW-Authenticate"].startswith('Bearer error="insufficient_scope"')

    def test_expired_token_is_401(self, client):
        import time

        old = client.authority.token(scopes=["urn:aptk:scope:echo"], now=time.time() - 7200, expires_in=60)
        response = client.app.test_client().get("/provider/actions", headers={"Authorization": f"Bearer {old}"})
        assert response.status_code == 401
        assert "expired" in response.json["description"]

    def test_token_from_another_key_is_401(self, client):
        forged = TokenAuthority().token(scopes=["urn:aptk:scope:echo"])
        response = client.app.test_client().get("/provider/actions", headers={"Authorization": f"Bearer {forged}"})
        assert response.status_code == 401


class TestPermissions:
    def test_others_get_403_on_status_cancel_release_resume_log(self, client):
        action = client.run({"text": "hi"})["action_id"]
        stranger = client.as_identity()
        for call in (stranger.status, stranger.cancel, stranger.release, stranger.resume, stranger.log):
            assert error_of(call, action).status == 403

    def test_monitor_by_may_read_but_not_manage(self, client):
        watcher = str(uuid.uuid4())
        action = client.run({"text": "hi"}, monitor_by=[f"urn:globus:auth:identity:{watcher}"])["action_id"]
        as_watcher = client.as_identity(watcher)
        assert as_watcher.status(action)["action_id"] == action
        assert as_watcher.log(action)["entries"]
        assert error_of(as_watcher.release, action).status == 403

    def test_manage_by_group_may_release(self, client):
        action = client.run({"text": "hi"}, manage_by=[f"urn:globus:groups:id:{GROUP}"])["action_id"]
        assert client.as_identity(groups=[GROUP]).release(action)["action_id"] == action
        assert error_of(client.status, action).status == 404

    def test_administrators_may_manage_any_action(self, tmp_path):
        admin = str(uuid.uuid4())
        client = provider_client(
            make_provider(synchronous=True, administered_by=[f"urn:globus:auth:identity:{admin}"]), tmp_path
        )
        action = client.run({"text": "hi"})["action_id"]
        assert client.as_identity(admin).release(action)["status"] == "SUCCEEDED"


class TestActions:
    def test_release_then_404_on_both_styles(self, client):
        http, auth = raw(client)
        action = client.run({"text": "hi"})["action_id"]
        assert http.delete(f"/provider/actions/{action}", headers=auth).status_code == 200
        for path in (f"/provider/{action}/status", f"/provider/actions/{action}", f"/provider/{action}/log"):
            response = http.get(path, headers=auth)
            assert (response.status_code, response.json["code"]) == (404, "ActionNotFound")

    def test_cancel_of_completed_action_is_409(self, client):
        action = client.run({"text": "hi"})["action_id"]
        assert error_of(client.cancel, action).status == 409

    def test_unknown_action_is_404(self, client):
        assert error_of(client.status, "nope").status == 404

    def test_enumerate_filters_by_status_and_role(self, client):
        ok = client.run({"text": "hi"})["action_id"]
        failed = client.run({"text": "fail"})["action_id"]
        me = client.status(ok)["creator_id"]
        other = client.as_identity()
        theirs = other.run({"text": "hi"}, monitor_by=[me])["action_id"]
        assert [a["action_id"] for a in client.actions(status=["SUCCEEDED"])] == [ok]
        assert [a["action_id"] for a in client.actions(status=["failed"])] == [failed]
        assert {a["action_id"] for a in client.actions()} == {ok, failed}
        assert [a["action_id"] for a in client.actions(roles=["monitor_by"])] == [theirs]
        assert [a["action_id"] for a in other.actions()] == [theirs]

    def test_enumerate_rejects_unknown_filters(self, client):
        http, auth = raw(client)
        assert http.get("/provider/actions?status=DONE", headers=auth).status_code == 400
        assert http.get("/provider/actions?roles=owner", headers=auth).status_code == 400

    def test_log_is_paginated(self, tmp_path):
        provider = ActionProvider(title="Chatty", input_schema={"type": "object"}, synchronous=True)

        @provider.run
        def chatty(body, ctx):
            for i in range(5):
                ctx.log(f"line {i}", index=i)

        client = provider_client(provider, tmp_path)
        action = client.run({})["action_id"]
        seen, marker = [], None
        while True:
            page = client.log(action, limit=2, marker=marker)
            assert page["limit"] == 2 and len(page["entries"]) <= 2
            seen += page["entries"]
            if not page["has_next_page"]:
                assert "marker" not in page
                break
            marker = page["marker"]
        assert [e["code"] for e in seen] == ["ActionStarted"] + ["Log"] * 5 + ["ActionSucceeded"]
        assert seen[3]["description"] == "line 2" and seen[3]["details"] == {"index": 2}

    @pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=x", "marker=abc"])
    def test_log_rejects_bad_paging(self, client, query):
        http, auth = raw(client)
        action = client.run({"text": "hi"})["action_id"]
        assert http.get(f"/provider/{action}/log?{query}", headers=auth).status_code == 400

    def test_wrong_method_and_unknown_route_are_json(self, client):
        http, auth = raw(client)
        wrong = http.get("/provider/run", headers=auth)
        assert (wrong.status_code, wrong.json["code"]) == (405, "MethodNotAllowed")
        unknown = http.get("/provider/a/b/c", headers=auth)
        assert (unknown.status_code, unknown.json["code"]) == (404, "NotFound")

    def test_every_error_status_a_route_answers_is_documented_by_its_class(self, client):
        """The code on the wire and the OpenAPI document's response both come from the exception class."""
        from toolkit.errors import RequestTooLarge, ServiceUnavailable

        http, auth = raw(client)
        too_large = http.post("/provider/run", data=b"{" + b" " * (10 * 1024 * 1024 + 1) + b"}",
                              headers={**auth, "Content-Type": "application/json"})
        assert (too_large.status_code, too_large.json["code"]) == (RequestTooLarge.status, RequestTooLarge.code)
        spec = http.get("/provider/openapi.json").json
        run = spec["paths"]["/run"]["post"]["responses"]
        for error in (RequestTooLarge, ServiceUnavailable):
            assert run[str(error.status)]["description"] == error.summary
        for path, operations in spec["paths"].items():
            for method, operation in operations.items():
                if path != "/":  # every route but the description reads the store
                    assert "503" in operation["responses"], (method, path)
                if method in ("post", "delete"):
                    assert "413" in operation["responses"], (method, path)

    def test_concurrent_identical_runs_create_one_action(self, tmp_path):
        client = provider_client(make_provider(), tmp_path)
        http, auth = raw(client)
        request = {"request_id": "race", "body": {"text": "hi"}}
        results = []

        def fire():
            response = client.app.test_client().post("/provider/run", json=request, headers=auth)
            results.append((response.status_code, response.json["action_id"]))

        threads = [threading.Thread(target=fire) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(code for code, _ in results) == [200] * 15 + [202]
        assert len({action for _, action in results}) == 1


class TestSetup:
    def test_serving_without_a_run_callback_says_how_to_fix_it(self):
        provider = ActionProvider(title="Empty", input_schema={"type": "object"})
        with pytest.raises(ConfigurationError, match="@empty.run"):
            provider.blueprint()

    def test_invalid_json_schema_is_refused_at_declaration(self):
        with pytest.raises(ConfigurationError, match="not a valid JSON Schema"):
            ActionProvider(title="Bad", input_schema={"type": "no-such-type"})

    @pytest.mark.parametrize("field", ["runnable_by", "visible_to", "administered_by"])
    def test_principal_lists_are_checked_at_declaration(self, field):
        with pytest.raises(ConfigurationError, match=field):
            ActionProvider(title="Bad", input_schema={"type": "object"}, **{field: ["bob"]})

    def test_blueprint_can_join_an_existing_app_with_injected_parts(self, tmp_path):
        authority = TokenAuthority()
        app = Flask("mine")
        app.config["APTK_DATA_DIR"] = str(tmp_path)
        Toolkit(app, verifier=authority.verifier)
        app.register_blueprint(make_provider(synchronous=True).blueprint(url_prefix="/echo"))
        token = authority.token(scopes=["urn:aptk:scope:echo"])
        response = app.test_client().post(
            "/echo/actions", json={"request_id": "1", "body": {"text": "x"}}, headers={"Authorization": f"Bearer {token}"}
        )
        assert (response.status_code, response.json["details"]) == (202, {"echo": "x"})
        # The app's own routes keep Flask's default error pages.
        assert app.test_client().get("/elsewhere").mimetype == "text/html"


def test_check_hook_refuses_before_anything_is_stored(tmp_path):
    from toolkit import ForbiddenRequest

    provider = make_provider(synchronous=True)

    @provider.check
    def only_short(body, ctx):
        if body["text"] == "no":
            raise ForbiddenRequest(f"{ctx.identity.id} may not say no")

    client = provider_client(provider, tmp_path)
    error = error_of(client.run, {"text": "no"})
    assert (error.status, error.code) == (403, "ForbiddenRequest")
    assert "urn:globus:auth:identity:" in error.description
    assert list(client.actions()) == []
    assert client.run({"text": "yes"})["status"] == "SUCCEEDED"


class TestActionPages:
    """GET /actions comes in pages ({actions, limit, has_next_page, marker}), like /log."""

    def test_more_actions_than_the_largest_page_are_listed_once_each_in_start_order(self, client):
        from toolkit.blueprint import DEFAULT_ACTIONS_LIMIT, MAX_ACTIONS_LIMIT

        started = [client.run({"text": str(i)})["action_id"] for i in range(MAX_ACTIONS_LIMIT + 5)]
        http, auth = raw(client)
        first = http.get("/provider/actions", headers=auth).json
        assert (len(first["actions"]), first["limit"], first["has_next_page"]) == (
            DEFAULT_ACTIONS_LIMIT, DEFAULT_ACTIONS_LIMIT, True)
        assert [a["action_id"] for a in first["actions"]] == started[:DEFAULT_ACTIONS_LIMIT]

        biggest = http.get(f"/provider/actions?limit={MAX_ACTIONS_LIMIT}", headers=auth).json
        assert len(biggest["actions"]) == MAX_ACTIONS_LIMIT and biggest["has_next_page"]
        rest = http.get("/provider/actions", headers=auth,
                        query_string={"limit": MAX_ACTIONS_LIMIT, "marker": biggest["marker"]}).json
        assert (len(rest["actions"]), rest["has_next_page"]) == (5, False)
        assert "marker" not in rest
        assert [a["action_id"] for a in biggest["actions"] + rest["actions"]] == started

        assert [a["action_id"] for a in client.actions()] == started  # the client follows the pages
        assert [a["action_id"] for a in client.actions(page_size=7)] == started

    def test_actions_started_while_paging_neither_shift_nor_repeat_the_others(self, client):
        before = [client.run({"text": str(i)})["action_id"] for i in range(30)]
        http, auth = raw(client)
        seen, marker = [], None
        while True:
            query = {"limit": 4, **({"marker": marker} if marker else {})}
            page = http.get("/provider/actions", headers=auth, query_string=query).json
            seen += [a["action_id"] for a in page["actions"]]
            if len(seen) in (4, 12):  # others start and end between pages
                client.run({"text": "new"})
                client.release(before[len(seen) - 1])
            if not page["has_next_page"]:
                break
            marker = page["marker"]
        assert len(seen) == len(set(seen))
        assert seen[:30] == before[:30]
        assert len(seen) == 32  # the two started meanwhile come last

    @pytest.mark.parametrize("query", [
        "limit=0", "limit=201", "limit=ten", "marker=bogus", "marker=1.5:abc",
        "marker=0x1.8p+0:" + "g" * 32, "marker=inf:" + "a" * 32, "marker=" + "9" * 5000,
    ])
    def test_a_bad_limit_or_marker_is_400(self, client, query):
        http, auth = raw(client)
        response = http.get(f"/provider/actions?{query}", headers=auth)
        assert (response.status_code, response.json["code"]) == (400, "BadActionRequest")
        assert len(response.json["description"]) < 200

    def test_the_openapi_document_describes_the_page(self, client):
        spec = client.app.test_client().get("/provider/openapi.json").json
        listing = spec["paths"]["/actions"]["get"]
        assert {p["name"] for p in listing["parameters"]} == {"status", "roles", "limit", "marker"}
        assert listing["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/ActionPage")
        page = spec["components"]["schemas"]["ActionPage"]
        assert page["required"] == ["actions", "limit", "has_next_page"]

    def test_an_existing_database_gets_the_listing_index(self, tmp_path):
        import sqlalchemy as sa

        from toolkit.store import SQLStore

        store = SQLStore(f"sqlite:///{tmp_path / 'old.db'}")
        store.create_schema()
        with store.engine.begin() as conn:
            conn.exec_driver_sql("DROP INDEX aptk_actions_listing")
        store.create_schema()
        names = {i["name"] for i in sa.inspect(store.engine).get_indexes("aptk_actions")}
        assert "aptk_actions_listing" in names
