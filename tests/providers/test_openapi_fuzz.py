"""Every bundled provider, fuzzed with schemathesis against the OpenAPI document it serves.

All of schemathesis's checks run: no 5xx, documented status codes and content types, responses matching
their schemas, valid input accepted, invalid input rejected with a 4xx, auth not ignored, 405 with Allow.
"""

import json
import tempfile
import urllib.parse
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from schemathesis.specs.openapi.checks import positive_data_acceptance

from providers import bundled
from tests.servers.smtp import SMTPServer
from toolkit import get_toolkit
from toolkit.server import create_app
from toolkit.testing import TokenAuthority

# A provider with variants (flows) is fuzzed through one of them: a flow deployed from APTK_FLOWS_DIR.
FLOW_SCHEMA = {"type": "object", "required": ["name"], "additionalProperties": False,
               "properties": {"name": {"type": "string", "maxLength": 50}, "times": {"type": "integer"}}}
FLOWS_DIR = Path(tempfile.mkdtemp(prefix="aptk-fuzz-flows-"))
(FLOWS_DIR / "fuzzed.json").write_text(json.dumps({
    "title": "Fuzzed", "input_schema": FLOW_SCHEMA, "visible_to": ["public"], "runnable_by": ["all_authenticated_users"],
    "definition": {"StartAt": "Echo", "States": {"Echo": {"Type": "Pass", "Parameters": {"name.$": "$.name"},
                                                          "ResultPath": "$.echo", "End": True}}}}))
PROVIDERS = [(f"{prefix}/fuzzed" if p.variant_resolver else prefix, p) for prefix, p in bundled()]
authority = TokenAuthority()
TOKEN = authority.token(scopes=[p.globus_auth_scope for _, p in PROVIDERS])
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make_app(tmp_path_factory):
    return create_app(
        {"APTK_DATA_DIR": str(tmp_path_factory.mktemp("fuzz")), "APTK_FLOWS_DIR": str(FLOWS_DIR)},
        verifier=authority.verifier,
    )


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    app = make_app(tmp_path_factory)
    yield app
    get_toolkit(app).runtime.stop()  # wake callbacks the fuzzer left sleeping


@pytest.mark.parametrize("prefix", [prefix for prefix, _ in PROVIDERS])
def test_openapi_document_is_valid_openapi_3_1(app, prefix):
    document = app.test_client().get(f"{prefix}/openapi.json").json
    validate(document, cls=OpenAPIV31SpecValidator)
    body = document["components"]["schemas"]["ActionBody"]
    provider = dict(PROVIDERS)[prefix]
    schema = FLOW_SCHEMA if provider.variant_resolver else provider.input_schema
    assert body == {k: v for k, v in schema.items() if k != "$schema"}


@schemathesis.check
def valid_request_accepted(ctx, response, case):
    """positive_data_acceptance, except where a schema cannot say everything: deadlines ("in the future,
    within P30D"), and providers whose ``check`` hook refuses requests the schema allows (unknown collections,
    say)."""
    if case.meta is None or not case.meta.generation.mode.is_positive or response.status_code != 400:
        return None
    description = response.json()["description"]
    path = urllib.parse.urlsplit(response.request.url).path
    provider = next(p for prefix, p in PROVIDERS if path.startswith(prefix + "/"))
    if description.startswith("deadline:") or provider.check_callback is not None:
        return None
    raise AssertionError(f"A schema-valid request was rejected: {description}")


# Schemathesis loads each document at collection time, so the fuzzed app is built at import. The notify
# provider sends what the fuzzer gets past its checks to a real SMTP server on loopback.
MAIL_SERVER = SMTPServer()
FUZZED_APP = create_app({"APTK_DATA_DIR": tempfile.mkdtemp(prefix="aptk-fuzz-"), "APTK_SMTP_URL": MAIL_SERVER.url(),
                         "APTK_NOTIFY_SENDER": "fuzz@example.org", "APTK_NOTIFY_WEBHOOK_SECRET": "fuzz-secret",
                         "APTK_FLOWS_DIR": str(FLOWS_DIR)},
                        verifier=authority.verifier)


@pytest.fixture(scope="module", autouse=True)
def stop_fuzzed_app():
    yield
    get_toolkit(FUZZED_APP).runtime.stop()  # wake callbacks the fuzzer left sleeping
    MAIL_SERVER.stop()


def fuzz_test(prefix):
    schema = schemathesis.openapi.from_wsgi(f"{prefix}/openapi.json", FUZZED_APP)

    @schema.parametrize()
    @settings(max_examples=30, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def test(case):
        case.call_and_validate(headers=AUTH, excluded_checks=[positive_data_acceptance])

    return test


for _prefix, _provider in PROVIDERS:
    globals()[f"test_fuzz_{_provider.name}"] = fuzz_test(_prefix)


def test_status_document_of_a_real_action_matches_the_schema(app):
    """Random ids never exist, so fuzzing sees only 404s there; check the 200 documents explicitly."""
    schema = schemathesis.openapi.from_wsgi("/hello/openapi.json", app)
    client = app.test_client()
    created = client.post("/hello/run", json={"request_id": "doc", "body": {"echo_string": "x"}}, headers=AUTH)
    action_id = created.json["action_id"]
    for path, method in [("/{action_id}/status", "GET"), ("/actions/{action_id}", "GET"), ("/{action_id}/log", "GET")]:
        case = schema[path][method].Case(path_parameters={"action_id": action_id})
        assert case.call_and_validate(headers=AUTH).status_code == 200


def test_fuzzing_reached_the_mail_server():
    """Runs after the fuzz tests (file order): some generated requests were valid and their mail arrived."""
    assert MAIL_SERVER.messages, "no fuzzed notify request got through to the mail server"
