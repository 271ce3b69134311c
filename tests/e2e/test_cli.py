"""The `aptk` command as a user runs it: against the real `aptk serve`, and at start-up with bad settings.

Exit codes (README, "3. Call it"): 0 SUCCEEDED, 1 FAILED, 2 usage, 3 INACTIVE, 4 timeout, 5 the provider
refused (or is no action provider), 6 no answer.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import threading
import time
import uuid

import pytest
from werkzeug.serving import make_server

from toolkit import ActionInactive, ActionProvider, get_toolkit
from toolkit.server import create_app
from toolkit.testing import TokenAuthority

from .support import APTK, Server, free_port

pytestmark = pytest.mark.slow


def aptk(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("APTK_")}
    return subprocess.run([APTK, *args], capture_output=True, text=True, timeout=timeout,
                          env={**clean, **(env or {})}, stdin=subprocess.DEVNULL)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The CLI's error: no traceback, one line starting with 'Error: ' (after click's usage lines, if any)."""
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    assert "<html" not in result.stderr.lower() and "<!doctype" not in result.stderr.lower()
    return errors[0]


@pytest.fixture(scope="module")
def hello(shared_server: Server, people):
    """Call hello as alice: hello.run(*args) -> CompletedProcess."""

    class Hello:
        url = shared_server.hello
        env = {"APTK_TOKEN": people.alice.token}

        def run(self, body: dict, *args: str, **kwargs) -> subprocess.CompletedProcess:
            return aptk("run", self.url, "--body", json.dumps(body), *args, env=self.env, **kwargs)

        def command(self, *args: str) -> subprocess.CompletedProcess:
            return aptk(*args, env=self.env)

    return Hello()


# --- waiting (run --wait, wait) ----------------------------------------------------------------------------

def test_run_wait_on_success_exits_0(hello):
    result = hello.run({"echo_string": "hi"}, "--wait")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["details"] == {"hello": "hi"}


def test_run_wait_on_a_failed_action_exits_1_with_its_reason(hello):
    result = hello.run({"echo_string": "hi", "fail": True}, "--wait")
    assert result.returncode == 1
    assert json.loads(result.stdout)["status"] == "FAILED"
    assert "FAILED: HelloFailed: Failed because the request asked for it" in one_error_line(result)


def test_run_wait_reports_inactive_at_once_with_exit_3(hello):
    started = time.monotonic()
    result = hello.run({"echo_string": "hi", "require_resume": True}, "--wait")
    assert time.monotonic() - started < 10
    assert result.returncode == 3, result.stderr
    status = json.loads(result.stdout)
    assert status["status"] == "INACTIVE"
    line = one_error_line(result)
    assert f"action {status['action_id']} is INACTIVE (ResumeRequired: This action waits for a call to /resume.)" \
        in line
    assert f"aptk resume {hello.url} {status['action_id']}" in line


def test_wait_on_an_inactive_action_exits_3_then_0_once_resumed(hello):
    action_id = json.loads(hello.run({"echo_string": "hi", "require_resume": True}).stdout)["action_id"]
    waited = hello.command("wait", hello.url, action_id)
    assert waited.returncode == 3
    assert hello.command("resume", hello.url, action_id).returncode == 0
    waited = hello.command("wait", hello.url, action_id)
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["details"] == {"hello": "hi"}


def test_timeout_exits_4_and_leaves_the_action_running(hello):
    started = time.monotonic()
    result = hello.run({"echo_string": "hi", "sleep_time": 60}, "--wait", "--timeout", "2s")
    elapsed = time.monotonic() - started
    assert result.returncode == 4, result.stderr
    assert 2 <= elapsed < 15
    status = json.loads(result.stdout)
    assert status["status"] == "ACTIVE"
    line = one_error_line(result)
    assert f"still ACTIVE after 2 s; it goes on (aptk wait {hello.url} {status['action_id']})" in line
    assert hello.command("status", hello.url, status["action_id"]).returncode == 0
    assert json.loads(hello.command("cancel", hello.url, status["action_id"]).stdout)["status"] == "FAILED"


@pytest.mark.parametrize("timeout", ["soon", "-3"])
def test_a_bad_timeout_is_a_usage_error(hello, timeout):
    result = hello.run({"echo_string": "hi"}, "--wait", "--timeout", timeout)
    assert result.returncode == 2
    assert "--timeout" in one_error_line(result)


def test_progress_is_shown_on_a_terminal(hello):
    """stderr on a terminal: status, display_status and elapsed seconds while waiting; stdout stays JSON."""
    controller, terminal = pty.openpty()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("APTK_")}
    process = subprocess.Popen(
        [APTK, "run", hello.url, "--wait", "--body", json.dumps({"echo_string": "hi", "sleep_time": 3})],
        stdout=subprocess.PIPE, stderr=terminal, stdin=subprocess.DEVNULL, env={**clean, **hello.env}, text=True)
    os.close(terminal)
    shown = b""
    try:
        while True:
            ready, _, _ = select.select([controller], [], [], 30)
            assert ready, "no progress within 30 s"
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal closed: the command is done
                break
            if not chunk:
                break
            shown += chunk
        out, _ = process.communicate(timeout=30)
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert json.loads(out)["details"] == {"hello": "hi"}
    text = shown.decode()
    assert "ACTIVE (sleeping)" in text
    assert " 1 s" in text or " 2 s" in text


def test_no_progress_when_stderr_is_not_a_terminal(hello):
    result = hello.run({"echo_string": "hi", "sleep_time": 1}, "--wait")
    assert result.returncode == 0
    assert result.stderr == ""


@pytest.fixture(scope="module")
def paused_with_a_resolution(tmp_path_factory):
    """A provider whose actions go INACTIVE with a resolution_url and a required_scope, on a real socket."""
    provider = ActionProvider(name="consent", title="Consent", input_schema={"type": "object"})

    @provider.run
    def _run(body, ctx):
        raise ActionInactive("ConsentRequired", "The caller must consent to the data scope.",
                             required_scope="urn:example:scope:data", resolution_url="https://auth.example/consent")

    authority = TokenAuthority()
    app = create_app({"APTK_DATA_DIR": str(tmp_path_factory.mktemp("consent"))}, providers=[("/consent", provider)],
                     verifier=authority.verifier)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/consent", authority.token(scopes=[provider.globus_auth_scope])
    finally:
        server.shutdown()
        thread.join(10)
        get_toolkit(app).runtime.stop()


def test_inactive_shows_its_resolution_url_and_required_scope(paused_with_a_resolution):
    url, token = paused_with_a_resolution
    result = aptk("run", url, "--wait", "--body", "{}", env={"APTK_TOKEN": token})
    assert result.returncode == 3, result.stderr
    line = one_error_line(result)
    assert "(ConsentRequired: The caller must consent to the data scope.)" in line
    assert "resolve it at https://auth.example/consent" in line
    assert "get a token with scope urn:example:scope:data" in line


# --- errors: one line, a non-zero exit ---------------------------------------------------------------------

def test_a_wrong_url_answering_an_html_404_is_one_line_exit_5(hello, shared_server):
    result = aptk("run", f"{shared_server.url}/no-such-provider", "--body", "{}", env=hello.env)
    assert result.returncode == 5
    line = one_error_line(result)
    assert "404" in line and "not an action provider's JSON" in line and "text/html" in line


def test_an_error_answer_of_the_provider_is_one_line_exit_5(hello):
    result = hello.command("status", hello.url, "no-such-action")
    assert result.returncode == 5
    assert "404 ActionNotFound" in one_error_line(result)
    result = hello.run({"unknown": 1})
    assert result.returncode == 5
    assert "400 " in one_error_line(result)


def test_connection_refused_is_one_line_exit_6(hello):
    url = f"http://127.0.0.1:{free_port()}/hello"
    for args in (["run", url, "--body", "{}"], ["status", url, "x"], ["wait", url, "x"]):
        result = aptk(*args, env=hello.env)
        assert result.returncode == 6, result.stderr
        assert one_error_line(result) == f"Error: could not connect to {url}: connection refused"


def test_a_url_that_is_no_url_is_one_line(hello):
    result = aptk("status", "localhost:5000/hello", "x", env=hello.env)
    assert result.returncode == 6
    assert "cannot request" in one_error_line(result)


def test_body_from_a_missing_file_is_a_usage_error(hello, tmp_path):
    result = aptk("run", hello.url, "--body", f"@{tmp_path}/missing.json", env=hello.env)
    assert result.returncode == 2
    assert f"cannot read {tmp_path}/missing.json: No such file or directory" in one_error_line(result)


def test_body_from_a_file_is_sent(hello, tmp_path):
    (tmp_path / "body.json").write_text(json.dumps({"echo_string": "from a file"}))
    result = aptk("run", hello.url, "--wait", "--body", f"@{tmp_path}/body.json", env=hello.env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["details"] == {"hello": "from a file"}


@pytest.mark.parametrize("body", ["{nope", "", "\xff"])
def test_a_body_that_is_not_json_is_a_usage_error(hello, body):
    result = aptk("run", hello.url, "--body", body, env=hello.env)
    assert result.returncode == 2
    assert "--body: not JSON" in one_error_line(result)


# --- aptk serve start-up -----------------------------------------------------------------------------------

def serve(tmp_path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`aptk serve` that must stop by itself: a server that started anyway is a failure (timeout)."""
    data = args[args.index("--data-dir") + 1] if "--data-dir" in args else str(tmp_path / "data")
    extra = [] if "--data-dir" in args else ["--data-dir", data]
    try:
        return aptk("serve", "--port", str(free_port()), "--workers", "1", *extra, *args, env=env, timeout=60)
    except subprocess.TimeoutExpired:  # pragma: no cover - the failure being tested for
        pytest.fail("aptk serve started instead of refusing its settings")


def test_a_misspelt_environment_setting_stops_serve(tmp_path):
    result = serve(tmp_path, env={"APTK_DATABSE_URL": f"sqlite:///{tmp_path}/elsewhere.db"})
    assert result.returncode == 1
    assert one_error_line(result) == (
        "Error: unknown setting APTK_DATABSE_URL in the environment: did you mean APTK_DATABASE_URL? "
        "(a provider declares its own settings with toolkit.settings.register_settings)")
    assert not (tmp_path / "data").exists()  # stopped before anything was created


@pytest.mark.parametrize("suffix, text", [
    (".json", '{"APTK_EXECUTER_THREADS": 4}'),
    pytest.param(".toml", "APTK_EXECUTER_THREADS = 4\n",
                 marks=pytest.mark.skipif(sys.version_info < (3, 11), reason="TOML needs Python 3.11")),
])
def test_a_misspelt_setting_in_a_config_file_stops_serve(tmp_path, suffix, text):
    config = tmp_path / f"aptk{suffix}"
    config.write_text(text)
    result = serve(tmp_path, "--config", str(config))
    assert result.returncode == 1
    assert (f"unknown setting APTK_EXECUTER_THREADS in {config}: did you mean APTK_EXECUTOR_THREADS?"
            in one_error_line(result))


def test_a_postgresql_url_without_its_driver_stops_serve_naming_the_extra(tmp_path):
    result = serve(tmp_path, env={"APTK_DATABASE_URL": "postgresql+pg8000://aptk:pw-5c1d@127.0.0.1/aptk"})
    assert result.returncode == 1
    line = one_error_line(result)
    assert "pip install 'action-provider-toolkit[postgres]'" in line
    assert "pw-5c1d" not in result.stderr


def test_an_unreachable_database_stops_serve(tmp_path):
    url = f"postgresql+psycopg://aptk:pw-77aa@127.0.0.1:{free_port()}/aptk"
    result = serve(tmp_path, env={"APTK_DATABASE_URL": url})
    assert result.returncode == 1
    line = one_error_line(result)
    assert line.startswith("Error: cannot open database at postgresql+psycopg://aptk:***@127.0.0.1:")
    assert "pw-77aa" not in result.stderr


def test_an_unusable_sqlite_path_stops_serve(tmp_path):
    (tmp_path / "a-file").write_text("")
    result = serve(tmp_path, env={"APTK_DATABASE_URL": f"sqlite:///{tmp_path}/a-file/aptk.db"})
    assert result.returncode == 1
    assert f"cannot open database at {tmp_path}/a-file/aptk.db" in one_error_line(result)


def test_a_data_dir_that_cannot_be_created_stops_serve(tmp_path):
    result = serve(tmp_path, "--data-dir", "/proc/aptk-x")
    assert result.returncode == 1
    assert "cannot create the data directory /proc/aptk-x" in one_error_line(result)


def test_a_config_file_that_is_no_table_is_a_usage_error(tmp_path):
    config = tmp_path / "aptk.json"
    config.write_text("[1, 2]")
    result = serve(tmp_path, "--config", str(config))
    assert result.returncode == 2
    assert "expected a table of APTK_* settings" in one_error_line(result)


def test_the_same_settings_spelt_right_serve(start_server):
    """The settings refused above, spelt right, are accepted by a real server."""
    server = start_server(workers=1, env={"APTK_EXECUTOR_THREADS": "4", "APTK_TOKEN": "x",
                                          "APTK_CLIENT_SECRET": "y"})
    identity = str(uuid.uuid4())
    token = server.token(identity)
    result = aptk("run", server.hello, "--wait", "--body", '{"echo_string": "ok"}', env={"APTK_TOKEN": token})
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("content", [b"\xff\xfe not text", b'{"APTK_AUTH": '])
def test_a_config_file_that_cannot_be_read_is_a_usage_error(tmp_path, content):
    config = tmp_path / "aptk.json"
    config.write_bytes(content)
    result = serve(tmp_path, "--config", str(config))
    assert result.returncode == 2
    assert f"{config}: " in one_error_line(result)
