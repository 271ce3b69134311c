"""A real OAuth 2.0 / OpenID Connect authorization server for tests: ``node server.mjs`` (oidc-provider) on loopback.

Use the session fixtures ``oidc_server`` and ``other_oidc_server`` (an independent instance: another issuer, other
keys, same clients and resources); ``tests/conftest.py`` loads this module as a pytest plugin::

    pytest_plugins = ["tests.oidc.fixture"]

or start instances yourself with :func:`start_oidc_server` (a context manager too)::

    with start_oidc_server() as server:
        token = server.token("caller", resource=server.jwt_resource)

Every instance serves the client credentials grant with RFC 8707 resource indicators. A token requested for
:data:`JWT_RESOURCE` is an RFC 9068 JWT (RS256, ``typ: at+jwt``, signed by a key published at ``jwks_uri``) with
``iss``, ``sub`` (= the client id, a UUID), ``client_id``, ``aud`` (= the resource), ``scope``, ``groups`` (the
client's group UUIDs, left out when it has none), ``iat``, ``exp`` and ``jti``. A token for :data:`OPAQUE_RESOURCE`
is a random string; the ``resource-server`` client introspects it (RFC 7662) and gets ``active``, ``sub``,
``groups``, ``client_id``, ``aud``, ``scope``, ``iss``, ``iat``, ``exp`` and ``token_type`` (``sub`` is left out for a
client configured with ``omit_sub``). Every other client gets ``{"active": false}``. JWT access tokens are not stored, so they introspect as inactive.

A configuration may add browser sign-in clients (``grant_types: ["authorization_code"]``, with the server's own login
and consent pages: any login, any password) and public native clients (``"public": true``, no secret, PKCE, any
port on ``http://127.0.0.1/``, refresh tokens with ``"refresh_token"`` among the grant types and the
``offline_access`` scope); see ``server.mjs``. ``tests/e2e/test_login.py`` signs a person in through them.

Node.js (20 or newer) and npm must be installed: the first start runs ``npm ci`` in this directory (a few seconds;
later starts skip it while ``package.json`` and ``package-lock.json`` are unchanged). Without them the fixtures fail
with the reason; they never skip.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import quote

import pytest
import requests

HERE = Path(__file__).resolve().parent
SERVER_SCRIPT = HERE / "server.mjs"

#: Resource indicators (RFC 8707) the default configuration knows; they are also the tokens' ``aud``.
JWT_RESOURCE = "https://aptk.test/resources/jwt"
OPAQUE_RESOURCE = "https://aptk.test/resources/opaque"
#: Scopes both resources accept.
HELLO_SCOPE = "urn:aptk:scope:hello"
OTHER_SCOPE = "urn:aptk:scope:other"

#: Names of the default clients (their ids are UUIDs: see ``server.mjs`` or ``OIDCServer.clients``).
CALLER = "caller"  # groups: one UUID; may use both resources and scopes
OTHER_CALLER = "other-caller"  # groups: two other UUIDs
SHORT_LIVED = "short-lived"  # no groups; its access tokens live 2 seconds
RESOURCE_SERVER = "resource-server"  # cannot get tokens; the only client whose introspection calls see anything

_STAMP = ".aptk-install-stamp"
_install_lock = threading.Lock()


class OIDCServerError(RuntimeError):
    """The test authorization server could not be installed, started or used."""


@dataclasses.dataclass(frozen=True)
class OIDCClient:
    """A client registered at the test server."""

    name: str
    client_id: str
    client_secret: str = dataclasses.field(repr=False)
    groups: tuple[str, ...] = ()
    access_token_ttl: int | None = None
    introspect: bool = False
    resources: tuple[str, ...] = ()

    @property
    def auth(self) -> requests.auth.HTTPBasicAuth:
        """``client_secret_basic`` credentials (RFC 6749 section 2.3.1 form-encodes both parts)."""
        return requests.auth.HTTPBasicAuth(quote(self.client_id, safe=""), quote(self.client_secret, safe=""))


@dataclasses.dataclass
class OIDCServer:
    """A running instance of ``server.mjs``. Endpoints come from its discovery document."""

    issuer: str
    port: int
    discovery_url: str
    discovery: dict[str, Any] = dataclasses.field(repr=False)
    jwks_uri: str
    token_endpoint: str
    introspection_endpoint: str
    revocation_endpoint: str | None
    jwks: dict[str, Any] = dataclasses.field(repr=False)
    clients: dict[str, OIDCClient] = dataclasses.field(repr=False)
    resources: dict[str, dict[str, Any]] = dataclasses.field(repr=False)
    jwt_resource: str = JWT_RESOURCE
    opaque_resource: str = OPAQUE_RESOURCE
    process: subprocess.Popen | None = dataclasses.field(default=None, repr=False)
    workdir: Path | None = dataclasses.field(default=None, repr=False)

    # -- clients --------------------------------------------------------------------------------------------------

    def client(self, client: str | OIDCClient = CALLER) -> OIDCClient:
        """A client by name (``"caller"``) or by client id."""
        if isinstance(client, OIDCClient):
            return client
        if client in self.clients:
            return self.clients[client]
        for candidate in self.clients.values():
            if candidate.client_id == client:
                return candidate
        raise KeyError(f"no client {client!r}; known: {sorted(self.clients)}")

    def client_id(self, client: str = CALLER) -> str:
        return self.client(client).client_id

    def client_secret(self, client: str = CALLER) -> str:
        return self.client(client).client_secret

    @property
    def introspection_client(self) -> OIDCClient:
        """The resource server's own credentials for the introspection endpoint."""
        return self.client(RESOURCE_SERVER)

    # -- protocol -------------------------------------------------------------------------------------------------

    def token_response(
        self,
        client: str | OIDCClient = CALLER,
        resource: str | None = JWT_RESOURCE,
        scope: str | None = HELLO_SCOPE,
        **params: str,
    ) -> requests.Response:
        """The raw response of a client credentials grant (``resource``/``scope`` are left out when None)."""
        data = {"grant_type": "client_credentials", **params}
        if resource is not None:
            data["resource"] = resource
        if scope is not None:
            data["scope"] = scope
        return self._post(self.token_endpoint, data, self.client(client))

    def token(
        self,
        client: str | OIDCClient = CALLER,
        resource: str | None = JWT_RESOURCE,
        scope: str | None = HELLO_SCOPE,
    ) -> str:
        """An access token from the client credentials grant; raises :class:`OIDCServerError` on an error response."""
        response = self.token_response(client, resource, scope)
        if response.status_code != 200:
            raise OIDCServerError(f"token request failed: {response.status_code} {response.text}")
        return response.json()["access_token"]

    def introspect(self, token: str, client: str | OIDCClient = RESOURCE_SERVER) -> dict[str, Any]:
        """The RFC 7662 introspection response for ``token``, asked with ``client``'s credentials."""
        response = self._post(self.introspection_endpoint, {"token": token}, self.client(client))
        if response.status_code != 200:
            raise OIDCServerError(f"introspection failed: {response.status_code} {response.text}")
        return response.json()

    def revoke(self, token: str, client: str | OIDCClient = CALLER) -> None:
        """Revoke an opaque token (RFC 7009); only the client it was issued to may do so."""
        response = self._post(self.revocation_endpoint, {"token": token}, self.client(client))
        if response.status_code != 200:
            raise OIDCServerError(f"revocation failed: {response.status_code} {response.text}")

    @staticmethod
    def _post(url: str, data: Mapping[str, str], client: OIDCClient) -> requests.Response:
        with requests.Session() as session:
            session.trust_env = False  # never send loopback traffic through an HTTP(S)_PROXY from the environment
            return session.post(url, data=data, auth=client.auth, timeout=10)

    # -- lifetime -------------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        """What the server wrote to stderr so far."""
        if self.workdir is None:
            return ""
        with contextlib.suppress(OSError):
            return (self.workdir / "stderr.log").read_text(errors="replace")
        return ""

    def stop(self) -> None:
        """Stop the server (idempotent)."""
        process, self.process = self.process, None
        if process is not None:
            _stop_process(process)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> "OIDCServer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# -- installation ------------------------------------------------------------------------------------------------


def _executable(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise OIDCServerError(
            f"`{name}` is not on PATH. The OIDC test server needs Node.js 20+ and npm "
            f"(https://nodejs.org/); they are required to run the test suite."
        )
    return path


def ensure_node_modules(directory: Path = HERE) -> None:
    """Install the server's npm dependencies unless the installed ones match package.json and package-lock.json.

    Runs ``npm ci`` (``npm install`` when there is no lock file). Safe to call from several processes at once.
    """
    npm = _executable("npm")
    _executable("node")
    lock_file = directory / "package-lock.json"
    digest = hashlib.sha256(
        (directory / "package.json").read_bytes() + (lock_file.read_bytes() if lock_file.exists() else b"")
    ).hexdigest()
    stamp = directory / "node_modules" / _STAMP

    def installed() -> bool:
        with contextlib.suppress(OSError):
            return stamp.read_text().strip() == digest
        return False

    if installed():
        return
    with _install_lock, _interprocess_lock(directory):
        if installed():
            return
        command = [npm, "ci" if lock_file.exists() else "install", "--no-audit", "--no-fund", "--loglevel=error"]
        try:
            result = subprocess.run(command, cwd=directory, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise OIDCServerError(f"`{' '.join(command)}` in {directory} failed: {error}") from error
        if result.returncode != 0:
            raise OIDCServerError(
                f"`{' '.join(command)}` in {directory} exited with {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        stamp.write_text(digest + "\n")


@contextlib.contextmanager
def _interprocess_lock(directory: Path) -> Iterator[None]:
    """An exclusive lock (e.g. between pytest-xdist workers) kept outside the source tree."""
    name = hashlib.sha256(str(directory).encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"aptk-oidc-npm-{name}.lock"
    try:
        import fcntl
    except ImportError:  # Windows: no cross-process lock; concurrent first installs are unlikely there
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# -- starting and stopping ---------------------------------------------------------------------------------------


def start_oidc_server(config: Mapping[str, Any] | None = None, *, startup_timeout: float = 30.0) -> OIDCServer:
    """Start a fresh, independent server on a free loopback port and wait until its discovery document answers.

    ``config`` may replace the default ``"clients"`` and/or ``"resources"`` (same shapes as in ``server.mjs``).
    Each instance has its own issuer and a freshly generated signing key. Stop it with ``stop()`` or ``with``.
    """
    ensure_node_modules()
    node = _executable("node")
    workdir = Path(tempfile.mkdtemp(prefix="aptk-oidc-"))
    env = dict(os.environ)
    env.pop("OIDC_PORT", None)
    env.pop("OIDC_HOST", None)
    if config is not None:
        env["OIDC_CONFIG"] = json.dumps(dict(config))
    else:
        env.pop("OIDC_CONFIG", None)
    stdout_path, stderr_path = workdir / "stdout.log", workdir / "stderr.log"
    with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
        # Port 0: the server binds first and builds its issuer from the port it got, so there is no race.
        # stdin stays an open pipe; the server exits when it closes, even if this process dies without cleanup.
        process = subprocess.Popen(
            [node, str(SERVER_SCRIPT), "--port", "0", "--host", "127.0.0.1", "--exit-on-stdin-close"],
            cwd=HERE,
            env=env,
            stdin=subprocess.PIPE,
            stdout=stdout,
            stderr=stderr,
        )
    atexit.register(_stop_process, process)

    def give_up(reason: str) -> OIDCServerError:
        _stop_process(process)
        log = stderr_path.read_text(errors="replace") if stderr_path.exists() else ""
        shutil.rmtree(workdir, ignore_errors=True)
        return OIDCServerError(f"the OIDC test server did not start: {reason}\n--- server stderr ---\n{log}")

    deadline = time.monotonic() + startup_timeout
    ready = None
    while ready is None:
        text = stdout_path.read_text(errors="replace")
        if text.endswith("\n"):
            try:
                ready = json.loads(text.splitlines()[0])
            except ValueError as error:
                raise give_up(f"unreadable startup line {text!r}") from error
        elif process.poll() is not None:
            raise give_up(f"it exited with status {process.returncode}")
        elif time.monotonic() > deadline:
            raise give_up(f"no startup line within {startup_timeout} s")
        else:
            time.sleep(0.02)

    try:
        with requests.Session() as session:
            session.trust_env = False
            response = session.get(ready["discovery"], timeout=10)
            response.raise_for_status()
            discovery = response.json()
    except (requests.RequestException, ValueError) as error:
        raise give_up(f"discovery at {ready['discovery']} failed: {error}") from error
    if discovery.get("issuer") != ready["issuer"]:
        raise give_up(f"discovery names issuer {discovery.get('issuer')!r}, expected {ready['issuer']!r}")

    clients = {
        c["name"]: OIDCClient(
            name=c["name"],
            client_id=c["client_id"],
            client_secret=c.get("client_secret", ""),  # a public client has none
            groups=tuple(c.get("groups") or ()),
            access_token_ttl=c.get("access_token_ttl"),
            introspect=bool(c.get("introspect")),
            resources=tuple(c.get("resources") or ()),
        )
        for c in ready["clients"]
    }
    return OIDCServer(
        issuer=ready["issuer"],
        port=ready["port"],
        discovery_url=ready["discovery"],
        discovery=discovery,
        jwks_uri=discovery["jwks_uri"],
        token_endpoint=discovery["token_endpoint"],
        introspection_endpoint=discovery["introspection_endpoint"],
        revocation_endpoint=discovery.get("revocation_endpoint"),
        jwks=ready["jwks"],
        clients=clients,
        resources=ready["resources"],
        process=process,
        workdir=workdir,
    )


def _stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        with contextlib.suppress(OSError):
            process.stdin.close()  # the server exits on its own when stdin closes
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    elif process.stdin is not None:
        with contextlib.suppress(OSError):
            process.stdin.close()


# -- pytest fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def oidc_server() -> Iterator[OIDCServer]:
    """A running test authorization server, shared by the whole session."""
    server = start_oidc_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def other_oidc_server() -> Iterator[OIDCServer]:
    """A second, independent server: different issuer and keys, same client ids/secrets and resources."""
    server = start_oidc_server()
    try:
        yield server
    finally:
        server.stop()
