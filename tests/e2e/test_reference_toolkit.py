"""`aptk check` against a provider built with the real reference toolkit (globus-action-provider-tools from the
package registry), served the way its documentation shows: each of its known defects is reported.

Slow: it makes a virtualenv and installs the package (a minute or so). Skipped, saying so, when the package
registry cannot be reached. Globus Auth, a hosted service, is stood in for on loopback (token introspection and
the dependent-token grant); everything else is the reference toolkit's own code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from .support import APTK, free_port

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
PROVIDER = HERE / "reference" / "echo_provider.py"
REQUIREMENT = "globus-action-provider-tools[flask]==0.21.*"
SCOPE = "https://auth.globus.org/scopes/00000000-0000-4000-8000-00000000ec40/action_all"
PEOPLE = {"alice-token-0001": str(uuid.uuid4()), "bob-token-00002": str(uuid.uuid4())}


class GlobusAuth(BaseHTTPRequestHandler):
    """Globus Auth's token introspection (with identity sets) and dependent-token grant, for two known tokens."""

    def do_POST(self) -> None:
        form = urllib.parse.parse_qs(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode())
        if self.path.rstrip("/") == "/v2/oauth2/token/introspect":
            token = form.get("token", [""])[0]
            identity = PEOPLE.get(token)
            now = int(time.time())
            answer: Any = {"active": False} if identity is None else {
                "active": True, "scope": SCOPE, "sub": identity, "identity_set": [identity],
                "username": f"{identity}@example.org", "client_id": str(uuid.uuid4()), "aud": ["echo"],
                "iss": "https://auth.globus.org", "token_type": "Bearer", "iat": now, "nbf": now, "exp": now + 3600,
            }
        elif self.path.rstrip("/") == "/v2/oauth2/token":
            answer = []  # no dependent tokens: the provider's scope depends on nothing (no groups either)
        else:
            self.send_error(404)
            return
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def registry_reachable() -> bool:
    probe = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "globus-action-provider-tools"],
                           capture_output=True, text=True, timeout=120)
    return probe.returncode == 0 and "globus-action-provider-tools" in probe.stdout


@pytest.fixture(scope="module")
def reference_python(tmp_path_factory) -> str:
    if not registry_reachable():
        pytest.skip("the package registry cannot be reached: globus-action-provider-tools cannot be installed")
    venv = tmp_path_factory.mktemp("reference") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    installed = subprocess.run([python, "-m", "pip", "install", "-q", REQUIREMENT], capture_output=True, text=True,
                               timeout=900)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return python


@pytest.fixture
def reference_provider(reference_python, tmp_path):
    auth = ThreadingHTTPServer(("127.0.0.1", 0), GlobusAuth)
    threading.Thread(target=auth.serve_forever, daemon=True).start()
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("APTK_", "GLOBUS_"))},
           "GLOBUS_SDK_SERVICE_URL_AUTH": f"http://127.0.0.1:{auth.server_address[1]}/",
           "GLOBUS_SDK_SERVICE_URL_GROUPS": f"http://127.0.0.1:{auth.server_address[1]}/groups/",
           "ECHO_CLIENT_ID": str(uuid.uuid4()), "ECHO_CLIENT_SECRET": "echo-secret"}
    log = open(tmp_path / "provider.log", "wb")
    process = subprocess.Popen([reference_python, str(PROVIDER), str(port)], env=env, stdout=log,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/echo"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "provider.log").read_text()
            try:
                if requests.get(url + "/", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, (tmp_path / "provider.log").read_text()
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)
        log.close()
        auth.shutdown()
        auth.server_close()


def test_aptk_check_reports_each_known_defect_of_the_reference_toolkit(reference_provider):
    (alice, bob) = PEOPLE
    result = subprocess.run([APTK, "check", reference_provider, "--token", alice, "--other-token", bob,
                             "--format", "json"], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0, result.stdout  # required checks fail
    report = json.loads(result.stdout)
    found = {check["name"]: check for check in report["checks"]}

    def failed(name: str, fragment: str) -> None:
        assert found[name]["outcome"] == "failed", found[name]
        assert fragment in found[name]["message"], found[name]

    failed("description.types", 'types is ["ACTION"], where the API says ["Action"]')
    failed("description", "null where a field should be omitted")
    failed("run", "null where a field should be omitted")
    failed("input.schema_violation", "HTTP 422 where 400 is meant")
    failed("auth.other_identity", "401 where 403 (or 404) is meant")
    failed("status", "null where a field should be omitted: display_status, label")
    # Its 401s carry no challenge (RFC 6750 asks for one).
    failed("auth.missing_token", "401 without a 'WWW-Authenticate: Bearer' header")
    # What it does right is not reported: a malformed request is a 400, an unknown action a 404, and a cancel of
    # a completed action a 409.
    for name in ("input.malformed_request", "status.unknown_action", "cancel"):
        assert found[name]["outcome"] == "passed", found[name]
