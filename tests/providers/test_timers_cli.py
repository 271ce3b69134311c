"""`aptk timer` against a real HTTP server on loopback (timers, hello and transfer in one app)."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from click.testing import CliRunner
from werkzeug.serving import make_server

from providers.hello import provider as hello
from providers.timers import provider as timers
from providers.timers import table
from providers.timers.cli import interval_value
from providers.timers.scheduler import Scheduler
from providers.transfer import provider as transfer
from toolkit import get_toolkit
from toolkit.cli import main
from toolkit.client import ActionProviderClient
from toolkit.server import create_app
from toolkit.testing import TokenAuthority

USER = "11111111-1111-4111-8111-111111111111"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    authority = TokenAuthority()
    app = create_app({"APTK_DATA_DIR": str(tmp_path_factory.mktemp("timers-cli")), "APTK_TIMERS_SCHEDULER": "false"},
                     providers=[("/timers", timers), ("/hello", hello), ("/transfer", transfer)],
                     verifier=authority.verifier)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    token = authority.token(USER, scopes=[timers.globus_auth_scope])
    try:
        yield f"http://127.0.0.1:{server.server_port}", token, app, authority
    finally:
        server.shutdown()
        thread.join(10)
        get_toolkit(app).runtime.stop()


def timer(served, *args: str, token: str | None = None) -> Any:
    url, served_token = served[0], served[1]
    env = {"APTK_TOKEN": token or served_token, "APTK_TIMERS_URL": f"{url}/timers"}
    return CliRunner().invoke(main, ["timer", *args], env=env)


@pytest.fixture
def both_scopes(served):
    """A token for the timers and for hello, the target: what cancelling a target's run as oneself takes."""
    return served[3].token(USER, scopes=[timers.globus_auth_scope, hello.globus_auth_scope])


def running_timer(served, token: str, *options: str) -> tuple[str, str]:
    """A timer of a long hello run, its first tick fired: (the timer's id, the running hello action's id)."""
    made = timer(served, "create", f"{served[0]}/hello", "--body", '{"echo_string": "hi", "sleep_time": 3600}',
                 "--interval", "1h", *options, token=token)
    assert made.exit_code == 0, made.output
    timer_id = json.loads(made.output)["action_id"]
    assert Scheduler(get_toolkit(served[2]).runtime).run_due() >= 1
    shown = json.loads(timer(served, "show", timer_id, token=token).output)
    run = shown["details"]["last_runs"][0]
    assert run["status"] == "ACTIVE"
    return timer_id, run["action_id"]


def hello_status(served, token: str, action_id: str) -> dict[str, Any]:
    return ActionProviderClient(f"{served[0]}/hello", token).status(action_id)


def test_cancel_leaves_the_running_run_alone_by_default(served, both_scopes):
    timer_id, run_id = running_timer(served, both_scopes)
    result = timer(served, "cancel", timer_id, token=both_scopes)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["status"] == "FAILED"
    assert hello_status(served, both_scopes, run_id)["status"] == "ACTIVE"


def test_cancel_with_cancel_running_cancels_the_running_run_at_the_target(served, both_scopes):
    timer_id, run_id = running_timer(served, both_scopes)
    result = timer(served, "cancel", timer_id, "--cancel-running", token=both_scopes)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["status"] == "FAILED"
    assert printed["details"]["last_runs"][0]["status"] == "FAILED"
    assert f"run {run_id} (tick 0) at {served[0]}/hello/run: FAILED" in result.stderr
    cancelled = hello_status(served, both_scopes, run_id)
    assert (cancelled["status"], cancelled["details"]["code"]) == ("FAILED", "ActionCancelled")


def test_create_with_cancel_running_makes_a_timer_that_cancels_its_run_when_cancelled(served, both_scopes):
    timer_id, run_id = running_timer(served, both_scopes, "--cancel-running")
    result = timer(served, "cancel", timer_id, token=both_scopes)
    assert result.exit_code == 0, result.output
    assert hello_status(served, both_scopes, run_id)["status"] == "FAILED"


def test_resume_of_a_timer_that_is_not_paused_shows_it(served):
    made = json.loads(timer(served, "create", f"{served[0]}/hello", "--body", '{"echo_string": "hi"}',
                            "--interval", "1h", "--start", "2030-01-01T00:00:00Z").output)
    resumed = timer(served, "resume", made["action_id"], "--jmespath", "status")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.output) == "ACTIVE"


def test_create_makes_a_timer_of_the_target_with_every_option(served):
    url = served[0]
    result = timer(served, "create", f"{url}/hello", "--body", '{"echo_string": "hi"}', "--interval", "1h",
                   "--start", "2030-01-01T00:00:00Z", "--stop-after-runs", "3", "--stop-after-date", "2030-02-01",
                   "--name", "nightly")
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["status"] == "ACTIVE"
    assert status["details"] == {
        "name": "nightly", "callback_url": f"{url}/hello/run", "interval": "PT1H", "start": "2030-01-01T00:00:00Z",
        "next_run": "2030-01-01T00:00:00Z", "runs": 0, "skipped": 0, "failed": 0, "last_runs": [],
        "stop_after": {"n_runs": 3, "date": "2030-02-01T00:00:00Z"},
    }
    shown = json.loads(timer(served, "show", status["action_id"]).output)
    assert shown["action_id"] == status["action_id"]
    listed = timer(served, "list", "--jmespath", "[].details.name")
    assert "nightly" in json.loads(listed.output)
    cancelled = json.loads(timer(served, "cancel", status["action_id"]).output)
    assert (cancelled["status"], cancelled["details"]["code"]) == ("FAILED", "ActionCancelled")


def test_transfer_builds_a_transfer_body_for_the_servers_transfer_provider(served):
    url = served[0]
    result = timer(served, "transfer", "src:/instrument/out/", "dst:/archive/", "--interval", "P1D",
                   "--sync-level", "mtime", "--format", "json")
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["details"]["callback_url"] == f"{url}/transfer/run"
    assert status["details"]["name"] == "transfer src:/instrument/out/ -> dst:/archive/"
    assert status["details"]["interval"] == "P1D"
    body = get_body(served, status["action_id"])
    assert body["callback_body"] == {
        "source_endpoint_id": "src", "destination_endpoint_id": "dst", "sync_level": "mtime",
        "transfer_items": [{"source_path": "/instrument/out/", "destination_path": "/archive/", "recursive": True}],
    }


def get_body(served, action_id: str) -> dict[str, Any]:
    row = table.get(get_toolkit(served[2]).runtime.store.engine, action_id)
    assert row is not None
    return {"callback_body": row.callback_body}


def test_flow_targets_the_servers_flow_and_the_server_says_when_it_serves_none(served):
    url = served[0]
    result = timer(served, "flow", "f0a1", "--input", '{"path": "/incoming"}', "--interval", "2h")
    assert result.exit_code != 0
    assert f"{url}/flows/f0a1" in result.output
    assert "is not served by this deployment" in result.output


def test_a_wrong_location_or_interval_is_a_usage_error(served):
    assert "give COLLECTION:/path" in timer(served, "transfer", "src", "dst:/x", "--interval", "1h").output
    bad = timer(served, "create", "http://x/hello", "--body", "{}", "--interval", "soon")
    assert bad.exit_code == 2 and "--interval" in bad.output


def test_intervals_in_the_short_forms():
    assert [interval_value(v) for v in ("90", "30s", "15m", "1h", "2d", "1w", "pt1h")] == [
        90, 30, 900, 3600, 172800, 604800, "PT1H"]
