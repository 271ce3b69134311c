"""The client commands' output habits (--format, --jmespath), introspect, list, the run options and log --all,
against hello served on loopback."""

from __future__ import annotations

import datetime
import json
import threading
import uuid

import pytest
from click.testing import CliRunner
from werkzeug.serving import make_server

from providers.hello import provider as hello
from toolkit.cli import main
from toolkit.formatting import render
from toolkit.testing import close_app, provider_app


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    app, authority = provider_app(hello, tmp_path_factory.mktemp("aptk"))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/provider", authority
    finally:
        server.shutdown()
        close_app(app)


@pytest.fixture
def cli(served):
    """cli(*args) -> Result: `aptk` as a fresh identity of its own (APTK_TOKEN), the URL filled in."""
    url, authority = served
    token = authority.token(str(uuid.uuid4()), scopes=[hello.globus_auth_scope])

    def invoke(command: str, *args: str):
        return CliRunner().invoke(main, [command, url, *args], env={"APTK_TOKEN": token})

    return invoke


def finished(cli, *args: str) -> dict:
    result = cli("run", "--wait", "--body", '{"echo_string": "hi"}', *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_unix_format_prints_paths_and_values(cli):
    action = finished(cli)
    result = cli("status", action["action_id"], "--format", "unix")
    lines = result.stdout.splitlines()
    assert f"action_id\t{action['action_id']}" in lines
    assert "status\tSUCCEEDED" in lines and "details.hello\thi" in lines
    assert "monitor_by\t" in lines  # an empty list: an empty value


def test_text_format_aligns_fields(cli):
    action = finished(cli)
    result = cli("status", action["action_id"], "--format", "text")
    assert "status:          SUCCEEDED" in result.stdout
    assert 'details:         {"hello": "hi"}' in result.stdout


def test_jmespath_selects(cli):
    action = finished(cli)
    assert cli("status", action["action_id"], "--jmespath", "status").stdout == '"SUCCEEDED"\n'
    unix = cli("status", action["action_id"], "--jmespath", "[status, details.hello]", "--format", "unix")
    assert unix.stdout == "SUCCEEDED\thi\n"


def test_a_bad_jmespath_is_a_usage_error(cli):
    action = finished(cli)
    result = cli("status", action["action_id"], "--jmespath", "status[")
    assert result.exit_code == 2 and "not a valid JMESPath expression" in result.output


def test_introspect_needs_no_token_for_a_public_provider(served):
    url, _ = served
    result = CliRunner().invoke(main, ["introspect", url, "--jmespath", "title", "--format", "unix"],
                                env={"APTK_TOKEN": ""})
    assert result.exit_code == 0, result.output
    assert result.stdout == "Hello\n"


def test_run_options_reach_the_action(cli):
    other = f"urn:globus:auth:identity:{uuid.uuid4()}"
    deadline = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)).isoformat()
    args = ("--body", '{"echo_string": "x"}', "--label", "nightly", "--monitor-by", other, "--manage-by", other,
            "--deadline", deadline, "--release-after", "P2D", "--request-id", "req-1")
    first = json.loads(cli("run", *args).stdout)
    assert first["label"] == "nightly" and first["monitor_by"] == [other] and first["manage_by"] == [other]
    assert first["release_after"] == "P2D"
    again = cli("run", *args)
    assert json.loads(again.stdout)["action_id"] == first["action_id"]  # same request_id and body: same action


def test_log_all_fetches_every_page(cli):
    action = finished(cli)
    first = json.loads(cli("log", action["action_id"], "--limit", "1").stdout)
    assert len(first["entries"]) == 1 and first["has_next_page"] is True
    every = json.loads(cli("log", action["action_id"], "--limit", "1", "--all").stdout)
    assert [e["code"] for e in every["entries"]] == ["ActionStarted", "ActionSucceeded"]


def test_list_filters_pages_and_formats(cli):
    ids = [finished(cli)["action_id"] for _ in range(3)]
    lines = cli("list", "--status", "succeeded", "--page-size", "1").stdout.splitlines()
    assert [json.loads(line)["action_id"] for line in lines] == ids
    assert json.loads(cli("list", "--max", "2", "--jmespath", "[].action_id").stdout) == ids[:2]
    assert cli("list", "--status", "ACTIVE", "--format", "json").stdout == "[]\n"
    assert cli("list", "--jmespath", "[].status", "--format", "unix").stdout == "SUCCEEDED\tSUCCEEDED\tSUCCEEDED\n"


@pytest.mark.parametrize("document, expected", [
    ({"a": {"b": [1, 2]}, "c": None, "d": True}, "a.b\t1\t2\nc\tnull\nd\ttrue"),
    ([{"x": 1}, {"x": 2}], "0.x\t1\n1.x\t2"),
    ("plain", "plain"),
])
def test_unix_rendering(document, expected):
    assert render(document, "unix") == expected


@pytest.mark.parametrize("status, expected", [
    ({"status": "ACTIVE", "display_status": "sleeping", "details": {}}, "aptk: a1 ACTIVE (sleeping), 3 s"),
    ({"status": "ACTIVE", "details": {"files": 10, "files_transferred": 4, "bytes_transferred": 12_345_678}},
     "aptk: a1 ACTIVE, 4/10 files, 12.3 MB, 3 s"),
    ({"status": "ACTIVE", "details": {"files_transferred": 2, "bytes_transferred": 512}},
     "aptk: a1 ACTIVE, 2 files, 512 B, 3 s"),
])
def test_the_progress_line_shows_a_transfers_files_and_bytes(status, expected):
    from toolkit.cli import progress_line

    assert progress_line("a1", status, 3.2) == expected
