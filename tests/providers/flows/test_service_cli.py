"""`aptk flow`: lint offline, and deploy/list/show/update/delete against a real `aptk serve` whose flows also come
from APTK_FLOWS_DIR; a deployed flow run with `aptk run`."""

from __future__ import annotations

import json
import subprocess

import pytest
from click.testing import CliRunner

from toolkit.cli import main
from tests.e2e.support import APTK, Server

from .conftest import NAME_SCHEMA, OTHER, OWNER, PASS_SUCCEED, SCOPE

BROKEN = {"StartAt": "A", "States": {"A": {"Type": "Pass", "Next": "Nowhere"},
                                     "B": {"Type": "Action", "ActionUrl": "not a url", "End": True}}}


def test_lint_accepts_a_valid_deployment_and_a_bare_definition(tmp_path):
    deployment = tmp_path / "greeter.json"
    deployment.write_text(json.dumps({"title": "Greeter", "definition": PASS_SUCCEED, "input_schema": NAME_SCHEMA}))
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(PASS_SUCCEED))
    for path in (deployment, bare):
        result = CliRunner().invoke(main, ["flow", "lint", str(path)])
        assert (result.exit_code, result.output) == (0, f"{path}: valid\n")


def test_lint_exits_1_listing_every_error(tmp_path):
    from providers.flows.language import DefinitionError, validate

    with pytest.raises(DefinitionError) as caught:
        validate(BROKEN)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps({"title": "T", "definition": BROKEN, "input_schema": {"type": 3}}))
    result = CliRunner().invoke(main, ["flow", "lint", str(path)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0].startswith(f"{path}: input_schema.type: is not a valid JSON Schema")
    assert lines[1:-1] == [f"{path}: definition: {e}" for e in caught.value.errors]
    assert len(caught.value.errors) >= 3
    assert lines[-1] == f"Error: {path}: {len(caught.value.errors) + 1} errors"
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(BROKEN))
    result = CliRunner().invoke(main, ["flow", "lint", str(bare)])
    assert result.exit_code == 1 and result.output.splitlines()[:-1] == [f"{bare}: {e}" for e in caught.value.errors]
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{")
    result = CliRunner().invoke(main, ["flow", "lint", str(garbage)])
    assert result.exit_code == 1 and f"{garbage}: not JSON" in result.output


def aptk(*args: str, token: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env_token = {"APTK_TOKEN": token} if token else {}
    import os

    done = subprocess.run([APTK, *args], capture_output=True, text=True, timeout=60,
                          env={**{k: v for k, v in os.environ.items() if not k.startswith("APTK_")}, **env_token})
    if check:
        assert done.returncode == 0, done.stderr
    return done


@pytest.mark.slow
def test_flows_over_a_real_server_with_the_cli(tmp_path):
    flows_dir = tmp_path / "flows"
    flows_dir.mkdir()
    (flows_dir / "from-dir.json").write_text(json.dumps(
        {"title": "From the directory", "definition": PASS_SUCCEED, "input_schema": NAME_SCHEMA,
         "visible_to": ["public"], "runnable_by": ["all_authenticated_users"]}))
    server = Server(tmp_path / "data", tmp_path, workers=2, env={"APTK_FLOWS_DIR": str(flows_dir)})
    try:
        server.start({"owner": {"identity": OWNER, "scopes": [SCOPE]}, "other": {"identity": OTHER, "scopes": [SCOPE]}})
        owner, other = server.minted["owner"], server.minted["other"]
        api = f"{server.url}/flows"
        deployment = tmp_path / "greeter.json"
        deployment.write_text(json.dumps({"title": "Greeter", "definition": PASS_SUCCEED,
                                          "input_schema": NAME_SCHEMA, "runnable_by": [f"urn:globus:auth:identity:{OTHER}"],
                                          "visible_to": ["all_authenticated_users"]}))
        deployed = json.loads(aptk("flow", "deploy", api, str(deployment), "--id", "greeter", token=owner).stdout)
        assert deployed["url"] == f"{server.url}/flows/greeter/"
        listed = json.loads(aptk("flow", "list", api, "--limit", "1", token=other).stdout)
        assert [f["id"] for f in listed] == ["from-dir", "greeter"]  # two pages of one
        assert aptk("flow", "show", api, "greeter", "--jmespath", "title", "--format", "unix",
                    token=other).stdout.strip() == "Greeter"
        run = aptk("run", f"{api}/greeter", "--body", '{"name": "Ada"}', "--wait", token=other)
        assert json.loads(run.stdout)["details"]["output"]["said"] == {"greeting": "Ada"}
        bad = aptk("run", f"{api}/greeter", "--body", '{"name": 1}', token=other, check=False)
        assert bad.returncode == 5 and "body.name: 1 is not of type 'string'" in bad.stderr
        from_dir = aptk("run", f"{api}/from-dir", "--body", '{"name": "Bo"}', "--wait", token=other)
        assert json.loads(from_dir.stdout)["status"] == "SUCCEEDED"
        refused = aptk("flow", "delete", api, "greeter", token=other, check=False)
        assert refused.returncode == 5 and "Only the owner and administered_by" in refused.stderr
        update = tmp_path / "update.json"
        update.write_text(json.dumps({"title": "Greeter 2"}))
        assert json.loads(aptk("flow", "update", api, "greeter", str(update), token=owner).stdout)["version"] == 2
        assert json.loads(aptk("flow", "delete", api, "greeter", token=owner).stdout)["title"] == "Greeter 2"
        assert aptk("flow", "show", api, "greeter", token=owner, check=False).returncode == 5
    finally:
        server.stop()
    # a broken file stops start-up, naming the file
    (flows_dir / "zz-broken.json").write_text(json.dumps({"title": "x", "definition": BROKEN}))
    broken = Server(tmp_path / "data", tmp_path, workers=1, env={"APTK_FLOWS_DIR": str(flows_dir)})
    with pytest.raises(AssertionError) as caught:
        broken.start()
    broken.stop()
    assert "APTK_FLOWS_DIR file 'zz-broken.json': definition: States.A.Next" in str(caught.value)
