"""`aptk check`: green against our own provider, and each known defect of a reference-style provider found."""

from __future__ import annotations

import json
import threading
import xml.etree.ElementTree as ElementTree

import pytest
from click.testing import CliRunner
from werkzeug.serving import make_server

from providers.hello import provider as hello
from toolkit.cli import main
from toolkit.conformance import Checker, example_body, violating_body
from toolkit.testing import close_app, provider_app

from .reference_style import SCHEMA, create_app


def serve(app):
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


@pytest.fixture
def ours(tmp_path):
    """Our hello provider on loopback: its URL, a token, and another identity's token."""
    app, authority = provider_app(hello, tmp_path)
    server = serve(app)
    scopes = [hello.globus_auth_scope]
    try:
        yield (f"http://127.0.0.1:{server.server_port}/provider", authority.token(scopes=scopes),
               authority.token(scopes=scopes))
    finally:
        server.shutdown()
        close_app(app)


@pytest.fixture
def reference():
    server = serve(create_app())
    try:
        yield f"http://127.0.0.1:{server.server_port}/ref"
    finally:
        server.shutdown()


def outcomes(results):
    return {r.name: r.outcome for r in results}


def test_our_provider_passes_every_check(ours):
    url, token, other = ours
    results = Checker(url, token, other_token=other).run()
    assert {r.name: (r.outcome, r.message) for r in results if r.outcome != "passed"} == {}
    assert len(results) == 19


def test_without_a_second_identity_its_check_is_skipped_with_a_note(ours):
    url, token, _ = ours
    (result,) = [r for r in Checker(url, token).run() if r.name == "auth.other_identity"]
    assert result.outcome == "skipped" and "--other-token" in result.message


def test_each_defect_of_a_reference_style_provider_is_reported(reference):
    results = Checker(reference, "alice-token", other_token="bob-token").run()
    found = {r.name: r for r in results}
    failed = {name for name, r in found.items() if r.outcome == "failed"}
    assert failed == {"description", "description.types", "input.schema_violation", "run", "status",
                      "auth.other_identity", "release"}
    assert "null where a field should be omitted: subtitle" in found["description"].message
    assert found["description.types"].message == 'types is ["ACTION"], where the API says ["Action"]'
    assert "HTTP 422 where 400 is meant" in found["input.schema_violation"].message
    assert "null where a field should be omitted: display_status, label" in found["run"].message
    assert "401 where 403 (or 404) is meant" in found["auth.other_identity"].message
    # The /actions routes are only recommended: warnings, not failures.
    assert found["status.actions_route"].outcome == "warning"
    assert found["release.actions_route"].outcome == "warning"
    assert found["run.idempotent_repeat"].outcome == "passed"
    assert found["run.request_id_conflict"].outcome == "passed"
    assert found["errors.json"].outcome == "passed"


def test_cli_text_report_and_exit_codes(ours, reference):
    url, token, other = ours
    good = CliRunner().invoke(main, ["check", url, "--token", token, "--other-token", other])
    assert good.exit_code == 0, good.output
    assert "19 passed, 0 failed, 0 warning, 0 skipped" in good.output
    bad = CliRunner().invoke(main, ["check", reference, "--token", "alice-token", "--other-token", "bob-token"])
    assert bad.exit_code == 1
    assert "FAIL  description.types" in bad.output and "WARN  status.actions_route" in bad.output
    assert "does not conform: description, description.types" in bad.output


def test_cli_json_report(reference):
    result = CliRunner().invoke(main, ["check", reference, "--format", "json"], env={"APTK_TOKEN": "alice-token"})
    report = json.loads(result.stdout)
    assert report["conformant"] is False
    assert report["summary"]["skipped"] == 1  # no second identity
    assert {c["name"] for c in report["checks"] if c["outcome"] == "failed"} >= {"description.types"}


def test_cli_junit_report(reference):
    result = CliRunner().invoke(main, ["check", reference, "--format", "junit", "--token", "alice-token",
                                       "--other-token", "bob-token"])
    suite = ElementTree.fromstring(result.stdout).find("testsuite")
    assert suite.get("tests") == "19" and suite.get("failures") == "7"
    failing = {case.get("name") for case in suite if case.find("failure") is not None}
    assert "auth.other_identity" in failing


def test_a_given_body_is_used(ours):
    url, token, _ = ours
    checker = Checker(url, token, body={"echo_string": "from --body"})
    checker.run()
    assert checker.request["body"] == {"echo_string": "from --body"}


def test_generated_bodies_are_valid_and_violations_are_not():
    import jsonschema

    body = example_body(SCHEMA)
    jsonschema.validate(body, SCHEMA)
    assert set(body) == {"echo_string"}
    other = example_body(SCHEMA, unlike=body)
    assert other != body
    bad = violating_body(SCHEMA, body)
    assert not jsonschema.Draft202012Validator(SCHEMA).is_valid(bad)


def test_the_optional_switches_of_a_schema_stay_off():
    body = example_body(hello.input_schema)
    assert set(body) == {"echo_string"}
