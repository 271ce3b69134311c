"""toolkit.testing: settings for the app under test, and nothing left running once a client is closed."""

import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from providers.hello import provider as hello
from toolkit import ConfigurationError, get_toolkit
from toolkit.testing import close_app, provider_app, provider_client

ROOT = Path(__file__).resolve().parents[2]


def wait_for_threads(count: int, timeout: float = 10) -> list[threading.Thread]:
    deadline = time.monotonic() + timeout
    while len(threading.enumerate()) > count and time.monotonic() < deadline:
        time.sleep(0.05)
    return threading.enumerate()


def test_twenty_clients_closed_leave_no_thread(tmp_path):
    before = threading.enumerate()
    for i in range(20):
        with provider_client(hello, tmp_path / str(i)) as client:
            assert client.run({"echo_string": "hi"}, wait=True, timeout=10)["status"] == "SUCCEEDED"
            # One still running when the client closes: its callback is told to stop.
            sleeping = client.run({"echo_string": "hi", "sleep_time": 3600})
            client.wait(sleeping["action_id"], until=["ACTIVE"], timeout=5)
    after = wait_for_threads(len(before), timeout=0.5)
    assert [t.name for t in after if t not in before] == []


def test_close_is_quick_and_can_be_called_twice(tmp_path):
    client = provider_client(hello, tmp_path)
    client.run({"echo_string": "hi", "sleep_time": 3600})
    started = time.monotonic()
    client.close()
    client.close()
    assert time.monotonic() - started < 5


def test_a_client_for_another_identity_leaves_the_app_running(tmp_path):
    with provider_client(hello, tmp_path) as client:
        with client.as_identity() as other:
            other.run({"echo_string": "bob"}, wait=True)
        assert client.run({"echo_string": "still served"}, wait=True)["details"] == {"hello": "still served"}


def test_provider_app_is_stopped_by_close_app(tmp_path):
    before = threading.enumerate()
    app, authority = provider_app(hello, tmp_path, config={"APTK_EXECUTOR_THREADS": 2})
    from toolkit.testing import TestClient

    client = TestClient(app, "/provider", authority.token(scopes=[hello.globus_auth_scope]))
    client.run({"echo_string": "hi"}, wait=True)
    close_app(app)
    close_app(app)
    assert [t.name for t in threading.enumerate() if t not in before] == []


def test_settings_reach_the_app(tmp_path):
    with provider_client(hello, tmp_path, config={"APTK_ADMIN_CONTACT": "ops@example.org",
                                                   "APTK_EXECUTOR_THREADS": 3}) as client:
        assert client.introspect()["admin_contact"] == "ops@example.org"
        assert client.app.config["APTK_EXECUTOR_THREADS"] == 3
        assert get_toolkit(client.app).runtime.executor.max_workers == 3


def test_a_misspelt_setting_is_refused(tmp_path):
    with pytest.raises(ConfigurationError, match="did you mean APTK_EXECUTOR_THREADS"):
        provider_client(hello, tmp_path, config={"APTK_EXECUTER_THREADS": 3})


def test_a_bad_setting_value_is_refused(tmp_path):
    with pytest.raises(ConfigurationError, match="APTK_EXECUTOR_THREADS must be positive"):
        provider_client(hello, tmp_path, config={"APTK_EXECUTOR_THREADS": 0})


def run_pytest(directory: Path, *files: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APTK_")}
    env["XDG_DATA_HOME"] = str(directory / "xdg")  # greeter.py's Toolkit(app) uses the default data dir
    # Its own basetemp: the run then leaves the shared temporary directories of other runs alone.
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"--basetemp={directory / 'basetemp'}", *files],
                          cwd=directory, capture_output=True, text=True, timeout=240, env=env)


def test_the_aptk_client_fixture_stops_everything_after_the_test(tmp_path):
    """The plugin is found by pytest on its own (entry point); the next test sees no thread of the first."""
    (tmp_path / "test_plugin.py").write_text(textwrap.dedent("""
        import threading
        from providers.hello import provider as hello

        def test_uses_the_fixture(aptk_client):
            client = aptk_client(hello, config={"APTK_ADMIN_CONTACT": "x@example.org"})
            assert client.run({"echo_string": "hi"}, wait=True)["details"] == {"hello": "hi"}
            client.run({"echo_string": "hi", "sleep_time": 3600})
            other = aptk_client(hello)
            assert other.introspect()["admin_contact"] != "x@example.org"
            assert any(t.name.startswith("aptk-") for t in threading.enumerate())

        def test_then_nothing_runs():
            assert [t.name for t in threading.enumerate() if t.name.startswith("aptk-")] == []
    """))
    result = run_pytest(tmp_path, "test_plugin.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_the_readme_test_example_passes(tmp_path):
    """Section "4. Test it" of the README, with the greeter of section 1, run by pytest as written."""
    readme = (ROOT / "README.md").read_text()
    greeter = re.search(r"```python\n(# greeter\.py\n.*?)```", readme, re.S).group(1)
    section = readme[readme.index("### 4. Test it"):]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    (tmp_path / "greeter.py").write_text(greeter)
    (tmp_path / "test_greeter.py").write_text(example + textwrap.dedent("""

        def test_nothing_left_running():
            import threading
            assert [t.name for t in threading.enumerate() if t.name.startswith("aptk-")] == []
    """))
    result = run_pytest(tmp_path, "test_greeter.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_the_in_process_client_ignores_the_environments_proxies_and_netrc(tmp_path, monkeypatch):
    """Nothing from the environment applies to an app called in-process: a .netrc entry for its host must not
    replace the client's bearer token, nor a proxy setting matter."""
    netrc = tmp_path / "netrc"
    netrc.write_text("machine testserver login someone password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    with provider_client(hello, tmp_path / "data") as client:
        assert client.session.trust_env is False
        assert client.run({"echo_string": "hi"}, wait=True, timeout=10)["status"] == "SUCCEEDED"
