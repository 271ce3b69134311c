"""`aptk serve` with installed providers: a distribution installed next to the toolkit is served with the
bundled ones, --provider selects, --app serves an app of one's own, and a broken provider stops start-up."""

from __future__ import annotations

import os
import uuid

import pytest
import requests

from tests.distributions import make_distribution, provider_source

from .support import REQUEST_TIMEOUT
from .test_cli import aptk, one_error_line, serve


@pytest.fixture
def shout_site(tmp_path):
    """A directory holding an installed distribution `shout-provider` (provider `shout`), for PYTHONPATH."""
    return make_distribution(tmp_path / "site", "shout-provider", {"shout_provider": provider_source("shout")},
                             {"shout": "shout_provider:provider"})


def pythonpath(*dirs) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([*map(str, dirs), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def run_and_wait(url: str, token: str, body: str) -> str:
    result = aptk("run", url, "--wait", "--body", body, env={"APTK_TOKEN": token})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_an_installed_provider_is_served_next_to_the_bundled_ones(start_server, shout_site):
    identity = str(uuid.uuid4())
    server = start_server(workers=1, env=pythonpath(shout_site), tokens={"me": {"identity": identity}})
    index = requests.get(server.url + "/", timeout=REQUEST_TIMEOUT).json()
    names = [p["name"] for p in index["providers"]]
    assert "shout" in names and "hello" in names and "transfer" in names
    # The default token carries every installed provider's scope, the new one's too.
    assert '"shouted": "HI"' in run_and_wait(f"{server.url}/shout", server.minted["me"], '{"word": "hi"}')
    assert '"hello": "hi"' in run_and_wait(server.hello, server.minted["me"], '{"echo_string": "hi"}')


def test_provider_option_serves_only_the_named_ones(start_server, shout_site):
    server = start_server(workers=1, env=pythonpath(shout_site), args=["--provider", "shout", "--provider", "hello"])
    index = requests.get(server.url + "/", timeout=REQUEST_TIMEOUT).json()
    assert [p["name"] for p in index["providers"]] == ["shout", "hello"]
    assert requests.get(f"{server.url}/transfer/", timeout=REQUEST_TIMEOUT).status_code == 404


def test_app_option_serves_an_app_of_ones_own(start_server, tmp_path):
    (tmp_path / "own_app.py").write_text(
        "from toolkit.server import create_app\n"
        + provider_source("mine", "Mine")
        + "\napp = create_app(providers=[('/mine', provider)])\n"
        + "@app.get('/healthz')\ndef healthz():\n    return {'ok': True}\n"
    )
    identity = str(uuid.uuid4())
    server = start_server(workers=1, env=pythonpath(tmp_path), args=["--app", "own_app:app"],
                          tokens={"me": {"identity": identity, "scopes": ["urn:aptk:scope:mine"]}})
    # The app's own /healthz is served, not the toolkit's (which would answer {"status": "ok", ...}).
    assert requests.get(server.url + "/healthz", timeout=REQUEST_TIMEOUT).json() == {"ok": True}
    assert '"shouted": "OK"' in run_and_wait(f"{server.url}/mine", server.minted["me"], '{"word": "ok"}')
    # Its state lives in the data directory given to aptk serve.
    assert (server.data_dir / "aptk.db").exists()


@pytest.mark.parametrize("source, problem", [
    ("import not_installed_anywhere\n", "No module named 'not_installed_anywhere'"),
    ("from toolkit import ActionProvider\nprovider = ActionProvider(title='B', input_schema={'type': 7})\n",
     "input_schema is not a valid JSON Schema"),
])
def test_a_broken_provider_stops_serve_naming_it(tmp_path, source, problem):
    site = make_distribution(tmp_path / "site", "broken-dist", {"broken_mod": source}, {"broken": "broken_mod:provider"})
    result = serve(tmp_path, env=pythonpath(site))
    line = one_error_line(result)
    assert "'broken-dist'" in line and problem in line


def test_a_prefix_claimed_twice_stops_serve(tmp_path):
    a = make_distribution(tmp_path / "a", "hello-again", {"hello_again": provider_source("hello")},
                          {"hello": "hello_again:provider"})
    result = serve(tmp_path, env=pythonpath(a))
    line = one_error_line(result)
    assert "prefix /hello is claimed twice" in line and "'hello-again'" in line and "'action-provider-toolkit'" in line


def test_an_unknown_provider_name_stops_serve(tmp_path):
    line = one_error_line(serve(tmp_path, "--provider", "nope"))
    assert "no installed provider called 'nope'" in line


def test_an_app_that_cannot_be_loaded_stops_serve(tmp_path):
    line = one_error_line(serve(tmp_path, "--app", "no_such_module_x:app"))
    assert "--app 'no_such_module_x:app' cannot be loaded" in line
