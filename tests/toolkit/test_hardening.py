"""Edge cases: hostile input, odd callbacks and tokens, expiry and shutdown never leave a 500 or a stuck action."""

import datetime as dt
import threading
import time
import uuid

import pytest
from flask import Flask

from tests.conftest import no_nulls
from toolkit import ActionCancelled, ActionFailed, ActionProvider, Identity, Toolkit, UnauthorizedRequest, get_toolkit
from toolkit.testing import TokenAuthority, provider_client


def provider_running(fn, **options) -> ActionProvider:
    options.setdefault("title", "Odd")
    provider = ActionProvider(input_schema={"type": "object"}, **options)
    provider.run(fn)
    return provider


def raw(client):
    return client.app.test_client(), {"Authorization": client.session.headers["Authorization"]}


@pytest.mark.parametrize(
    "callback, code",
    [
        (lambda body, ctx: (_ for _ in ()).throw(ActionFailed("X", "y", when=dt.datetime.now())), "X"),
        (lambda body, ctx: {"x": float("nan")}, "ActionError"),
        (lambda body, ctx: (_ for _ in ()).throw(ActionCancelled("self")), "ActionCancelled"),
        (lambda body, ctx: ["not", "a", "dict"], "ActionError"),
    ],
)
def test_odd_callback_outcomes_end_failed_not_stuck(tmp_path, callback, code):
    client = provider_client(provider_running(callback), tmp_path)
    status = client.run({}, wait=True, timeout=5)
    assert (status["status"], status["details"]["code"]) == ("FAILED", code)


def test_an_action_without_deadline_ends_at_the_providers_maximum_deadline(tmp_path, clock):
    gate = threading.Event()
    client = provider_client(provider_running(lambda b, ctx: ctx.sleep(3600), maximum_deadline="PT1H"),
                             tmp_path, clock=clock)
    action = client.run({})["action_id"]
    clock.advance(3601)
    status = client.status(action)
    assert (status["status"], status["details"]["code"]) == ("FAILED", "DeadlineExceeded")
    gate.set()


@pytest.mark.parametrize(
    "claims",
    [
        {"identity_id": "urn:globus:groups:id:6a3b4d5e-0000-4000-8000-000000000001"},
        {"identity_id": str(uuid.uuid4()), "groups": ["urn:globus:auth:identity:6a3b4d5e-0000-4000-8000-000000000001"]},
        {"identity_id": str(uuid.uuid4()), "linked_identities": ["urn:globus:groups:id:x"]},
    ],
)
def test_a_claim_cannot_name_a_principal_of_another_kind(claims):
    with pytest.raises(UnauthorizedRequest):
        Identity.build(claims.pop("identity_id"), **claims)


def test_identity_urns_from_a_claim_are_kept():
    who = "urn:globus:auth:identity:6a3b4d5e-0000-4000-8000-000000000001"
    assert Identity.build(who).id == who


@pytest.fixture
def client(tmp_path):
    return provider_client(provider_running(lambda b, ctx: {"ok": True}, synchronous=True), tmp_path)


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"[" * 100000, "nested"),
        (b'{"request_id": "a", "body": {"x": 1e400}}', "too large"),
        (b'{"request_id": "\\ud800", "body": {}}', "Unicode"),
        (b'{"request_id": "a\\u0000", "body": {}}', "NUL"),
        (b'{"request_id": "a", "body": {}, "release_after": "P9999999999D"}', "release_after"),
    ],
)
def test_hostile_bodies_are_400(client, data, fragment):
    http, auth = raw(client)
    response = http.post("/provider/run", data=data, headers={**auth, "Content-Type": "application/json"})
    assert response.status_code == 400, response.json
    assert fragment in response.json["description"]


def test_odd_markers_and_ids_are_400_or_404(client):
    http, auth = raw(client)
    action = client.run({})["action_id"]
    assert http.get(f"/provider/{action}/log?marker=\u00b2", headers=auth).status_code == 400
    assert http.get("/provider/%00/status", headers=auth).status_code == 404
    assert http.get(f"/provider/{'a' * 5000}/status", headers=auth).status_code == 404


def test_a_token_header_with_non_ascii_gives_a_clean_401(client):
    import base64
    import json

    header = base64.urlsafe_b64encode(json.dumps({"alg": "\u20ac", "typ": "at+jwt"}).encode()).rstrip(b"=")
    token = f"{header.decode()}.e30.c2ln"
    response = client.app.test_client().get("/provider/actions", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    response.headers["WWW-Authenticate"].encode("ascii")


def test_an_expired_request_id_can_be_used_again(client, clock, tmp_path):
    client = provider_client(provider_running(lambda b, ctx: {"ok": True}, synchronous=True), tmp_path / "c",
                             clock=clock)
    first = client.run({}, request_id="again", release_after="PT1S")
    clock.advance(2)
    second = client.run({}, request_id="again", release_after="PT1S")
    assert second["action_id"] != first["action_id"]
    assert second["status"] == "SUCCEEDED"


@pytest.mark.parametrize("duration", ["P99999999W", "P99999999DT99999999H99999999M99999999.999999S", "PT0.5S",
                                      "P1Y", "P1M", "P1Y2M3D"])
def test_release_after_the_openapi_schema_allows_is_accepted_and_years_or_months_are_not(client, duration):
    """A client generating requests from the published schema never meets a 400 for release_after (nor a 500,
    however large each unit); durations with years or months fail the schema and the run alike."""
    import re

    from toolkit.client import ClientError

    schema = client.app.test_client().get("/provider/openapi.json").get_json()
    pattern = schema["components"]["schemas"]["ActionRequest"]["properties"]["release_after"]["pattern"]
    allowed = re.fullmatch(pattern, duration) is not None
    assert allowed is ("Y" not in duration and "M" not in duration.split("T")[0])
    try:
        status = client.run({}, request_id=duration, release_after=duration)
    except ClientError as exc:
        assert not allowed and exc.status == 400 and "release_after" in exc.description
    else:
        assert allowed and status["status"] == "SUCCEEDED"


def test_release_after_zero_still_answers_the_run(client):
    status = client.run({}, release_after="PT0S")
    assert status["status"] == "SUCCEEDED"


def test_the_creator_may_act_through_a_linked_identity(tmp_path):
    class Linked:
        """Two tokens of one person signed in with two linked identities."""

        def __init__(self):
            self.authority = TokenAuthority()
            self.a, self.b = str(uuid.uuid4()), str(uuid.uuid4())

        def verify(self, token):
            identity = self.authority.verifier.verify(token)
            return Identity.build(identity.id, linked_identities=[self.a, self.b], scopes=identity.scopes)

    provider = provider_running(lambda b, ctx: {}, synchronous=True)
    linked = Linked()
    client = provider_client(provider, tmp_path, verifier=linked)
    client.authority = linked.authority
    as_a = client.as_identity(linked.a)
    as_b = client.as_identity(linked.b)
    action = as_a.run({})["action_id"]
    assert as_b.release(action)["action_id"] == action


def test_one_toolkit_instance_sets_up_independent_apps(tmp_path):
    toolkit = Toolkit()
    first, second = Flask("a"), Flask("b")
    first.config["APTK_DATA_DIR"], second.config["APTK_DATA_DIR"] = str(tmp_path / "a"), str(tmp_path / "b")
    toolkit.init_app(first)
    toolkit.init_app(second)
    assert get_toolkit(first).runtime is not get_toolkit(second).runtime
    assert get_toolkit(first).data_dir != get_toolkit(second).data_dir


def test_a_graceful_stop_lets_short_callbacks_finish(tmp_path):
    provider = provider_running(lambda b, ctx: ctx.sleep(0.5) or {"done": True})
    client = provider_client(provider, tmp_path)
    action = client.run({})["action_id"]
    time.sleep(0.1)
    runtime = get_toolkit(client.app).runtime
    runtime.stop(grace=5)
    status = runtime.store.get(action)
    assert (status.status.value, status.details) == ("SUCCEEDED", {"done": True})


def test_empty_display_status_is_left_out(tmp_path):
    seen = threading.Event()

    def run(body, ctx):
        ctx.progress(display_status="")
        seen.set()
        ctx.sleep(5)

    client = provider_client(provider_running(run), tmp_path)
    action = client.run({})["action_id"]
    assert seen.wait(5)
    status = client.status(action)
    assert "display_status" not in status and no_nulls(status) == []
    client.cancel(action)


# --- request size, answer headers, a full disk, long values in 400s -------------------------------------------


def author_app(tmp_path, **config):
    """An author's own Flask app with the toolkit set up by ``Toolkit(app)``, served by Werkzeug on loopback."""
    from werkzeug.serving import make_server

    authority = TokenAuthority()
    provider = provider_running(lambda b, ctx: {"ok": True}, synchronous=True)
    app = Flask("authors_own")
    app.config.update({"APTK_DATA_DIR": str(tmp_path), **config})
    Toolkit(app, verifier=authority.verifier)
    app.register_blueprint(provider.blueprint(url_prefix="/mine"))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    token = authority.token(scopes=[provider.globus_auth_scope])
    return app, server, f"http://127.0.0.1:{server.server_port}/mine", {"Authorization": f"Bearer {token}"}


def padded_run(size: int) -> bytes:
    document = f'{{"request_id": "{uuid.uuid4()}", "body": {{}}}}'.encode()
    return document + b" " * (size - len(document))


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_toolkit_app_of_an_author_refuses_a_body_over_the_limit(tmp_path, chunked):
    import requests

    limit = 32 * 1024
    app, server, url, auth = author_app(tmp_path, APTK_MAX_BODY_BYTES=limit)
    send = (lambda data: iter([data[:1000], data[1000:]])) if chunked else (lambda data: data)
    try:
        over = requests.post(url + "/run", data=send(padded_run(limit + 1)), headers=auth, timeout=10)
        at = requests.post(url + "/run", data=send(padded_run(limit)), headers=auth, timeout=10)
    finally:
        server.shutdown()
        get_toolkit(app).runtime.stop()

    assert app.config["MAX_CONTENT_LENGTH"] == limit
    assert over.status_code == 413, over.text
    assert over.json()["code"] == "RequestTooLarge"
    assert at.status_code in (200, 202), at.text


def test_the_default_limit_applies_to_an_authors_app_and_an_own_smaller_one_is_kept(tmp_path):
    app = Flask("a")
    app.config["APTK_DATA_DIR"] = str(tmp_path / "a")
    Toolkit(app)
    own = Flask("b")
    own.config.update(APTK_DATA_DIR=str(tmp_path / "b"), MAX_CONTENT_LENGTH=1000)
    Toolkit(own)
    assert app.config["MAX_CONTENT_LENGTH"] == 10 * 1024 * 1024
    assert own.config["MAX_CONTENT_LENGTH"] == 1000


def test_every_answer_of_the_api_says_no_store_and_nosniff(client):
    http, auth = raw(client)
    action = client.run({})["action_id"]
    answers = [
        http.get("/provider/", headers=auth),
        http.post("/provider/run", json={"request_id": str(uuid.uuid4()), "body": {}}, headers=auth),
        http.get(f"/provider/{action}/status", headers=auth),
        http.get("/provider/actions", headers=auth),
        http.get(f"/provider/{action}/status"),  # 401
        http.get("/provider/nothing-here/status", headers=auth),  # 404 from the provider
        http.get("/provider/no/such/route", headers=auth),  # 404 from routing
        http.delete("/provider/run", headers=auth),  # 405
        http.post("/provider/run", data=b"{", headers=auth),  # 400
    ]
    assert [a.status_code for a in answers] == [200, 202, 200, 200, 401, 404, 404, 405, 400]
    for answer in answers:
        assert answer.headers["Cache-Control"] == "no-store", answer.request.path
        assert answer.headers["X-Content-Type-Options"] == "nosniff"


def test_a_full_disk_is_a_503_with_retry_after_and_nothing_half_written(tmp_path, caplog):
    import sqlalchemy as sa

    from toolkit.store import SQLStore

    store = SQLStore(f"sqlite:///{tmp_path / 'full.db'}")
    room = {"pages": 0}  # 0: no limit

    @sa.event.listens_for(store.engine, "checkout")
    def _limit(dbapi_connection, record, proxy):
        pages = room["pages"] or 1_000_000_000
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages}")

    provider = provider_running(lambda b, ctx: {"ok": True}, synchronous=True)
    client = provider_client(provider, tmp_path, store=store)
    http, auth = raw(client)
    client.run({})
    with store.engine.connect() as conn:
        room["pages"] = conn.exec_driver_sql("PRAGMA page_count").scalar() + 2
    store.engine.dispose()

    request_id = str(uuid.uuid4())
    big = {"request_id": request_id, "body": {"x": "y" * 200_000}}
    answers = [http.post("/provider/run", json=big, headers=auth) for _ in range(3)]

    for answer in answers:
        assert answer.status_code == 503, answer.json
        assert answer.json["code"] == "ServiceUnavailable"
        assert "storage is full" in answer.json["description"]
        assert answer.headers["Retry-After"] == "60"
    assert "Traceback" not in caplog.text
    assert len([r for r in caplog.records if "storage is full" in r.getMessage()]) <= 1
    room["pages"] = 0
    store.engine.dispose()
    again = http.post("/provider/run", json=big, headers=auth)
    assert again.status_code in (200, 202), again.json
    assert again.json["details"] == {"ok": True}  # created now: nothing of the refused attempts was kept
    client.close()


@pytest.mark.parametrize(
    "field, value",
    [("name", "n" * (5 * 1024 * 1024)), ("release_after", "P" + "9" * (5 * 1024 * 1024))],
)
def test_a_400_does_not_send_a_huge_value_back(tmp_path, field, value):
    provider = ActionProvider(title="Named", input_schema={
        "type": "object", "properties": {"name": {"type": "string", "maxLength": 10}}})
    provider.run(lambda body, ctx: {})
    with provider_client(provider, tmp_path) as client:
        http, auth = raw(client)
        document = {"request_id": str(uuid.uuid4()), "body": {}}
        if field == "name":
            document["body"]["name"] = value
        else:
            document[field] = value
        answer = http.post("/provider/run", json=document, headers=auth)

    assert answer.status_code == 400
    description = answer.json["description"]
    assert len(answer.data) < 1000, description[:300]
    assert f"({len(value)} characters)" in description
    assert value[:50] in description


def test_toolkit_app_creates_its_data_directory_and_database_private(tmp_path):
    import stat

    data = tmp_path / "new" / "data"
    with provider_client(provider_running(lambda b, ctx: {"ok": True}, synchronous=True), data) as client:
        client.run({})
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [data, *data.iterdir()]}
    assert modes.pop("data") == 0o700
    assert "aptk.db" in modes and "aptk.db-wal" in modes, modes
    assert set(modes.values()) == {0o600}, modes


def test_what_counts_as_a_full_disk():
    import errno

    import psycopg
    import sqlalchemy as sa

    from toolkit.errors import storage_full

    postgres = sa.exc.OperationalError("INSERT ...", {}, psycopg.errors.DiskFull("could not extend file"))
    assert storage_full(postgres)  # SQLSTATE 53100, as SQLAlchemy hands it over
    assert storage_full(OSError(errno.ENOSPC, "No space left on device"))
    assert not storage_full(sa.exc.OperationalError("SELECT 1", {}, psycopg.errors.AdminShutdown("terminating")))
    assert not storage_full(ValueError("database is locked"))
