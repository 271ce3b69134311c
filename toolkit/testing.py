"""Helpers for testing providers: token minting, and the real HTTP client wired straight to a WSGI app.

A provider's test can be three lines::

    def test_hello(tmp_path):
        with provider_client(hello, tmp_path) as client:
            assert client.run({"echo_string": "hi"}, wait=True)["details"] == {"hello": "hi"}

Leaving the ``with`` block (or :meth:`TestClient.close`) stops the app's threads. With the pytest plugin the
toolkit installs, the ``aptk_client`` fixture does the same at the end of the test::

    def test_hello(aptk_client):
        assert aptk_client(hello).run({"echo_string": "hi"}, wait=True)["details"] == {"hello": "hi"}
"""

from __future__ import annotations

import io
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping

import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from .auth import DevTokenVerifier, mint_dev_token
from .client import COMPLETED, ActionProviderClient
from .extension import find_toolkit, get_toolkit
from .provider import ActionProvider
from .server import create_app

__all__ = ["ManualClock", "TokenAuthority", "WSGIAdapter", "TestClient", "close_app", "provider_app", "provider_client"]


class ManualClock:
    """A clock that stands still until told to move: pass it as ``clock=`` to see deadlines and expiry happen
    without waiting. Thread-safe; the time is seconds since the epoch, as ``time.time()``."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock ``seconds`` forward (never back); the new time."""
        if seconds < 0:
            raise ValueError("a clock only moves forward")
        with self._lock:
            self._now += seconds
            return self._now


class TokenAuthority:
    """Mints dev tokens and verifies them: a stand-in authorization server for tests."""

    def __init__(self) -> None:
        self._key = Ed25519PrivateKey.generate()
        self.verifier = DevTokenVerifier(self._key.public_key())

    def token(
        self,
        identity: str | None = None,
        *,
        groups: Iterable[str] = (),
        scopes: Iterable[str] = (),
        expires_in: float = 3600,
        now: float | None = None,
    ) -> str:
        return mint_dev_token(
            self._key, identity or str(uuid.uuid4()), groups=groups, scopes=scopes, expires_in=expires_in, now=now
        )


class WSGIAdapter(BaseAdapter):
    """A requests transport that calls a WSGI app in-process instead of opening a socket."""

    def __init__(self, app: Flask) -> None:
        super().__init__()
        self._client = app.test_client()

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float | None, float | None] | None = None,
        verify: bool | str = True,
        cert: str | tuple[str, str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Answer ``request`` from the app; the socket options (timeouts, TLS, proxies) have nothing to act on."""
        target = request.url
        if target is None:
            raise ValueError("the request has no URL (it was not prepared)")
        url = requests.utils.urlparse(target)
        body = request.body.encode() if isinstance(request.body, str) else request.body
        # The request's own scheme and host, so that URLs the app builds (url_for) name what the client called.
        answer = self._client.open(
            url.path, base_url=f"{url.scheme}://{url.netloc}", method=request.method, query_string=url.query,
            headers=dict(request.headers), data=body,
        )
        response = requests.Response()
        response.status_code = answer.status_code
        response.headers = CaseInsensitiveDict(answer.headers)
        response.raw = io.BytesIO(answer.get_data())
        response.url = target
        response.request = request
        response.reason = answer.status.partition(" ")[2]
        return response

    def close(self) -> None:
        pass


class TestClient(ActionProviderClient):
    """:class:`~toolkit.client.ActionProviderClient` over a WSGI app, with ``run(..., wait=True)``.

    A context manager: leaving it closes the client and, if the client was made with ``owns_app=True`` (as
    :func:`provider_client` makes it), stops the app's threads (:func:`close_app`).
    """

    __test__ = False  # not a pytest test class

    def __init__(self, app: Flask, prefix: str, token: str, authority: TokenAuthority | None = None, *,
                 owns_app: bool = False) -> None:
        session = requests.Session()
        # Nothing in the environment applies to an app called in-process (proxies, .netrc, CA bundles); looking
        # them up on every request cost about a quarter of an in-process status call, in the app's own process.
        session.trust_env = False
        session.mount("http://testserver", WSGIAdapter(app))
        super().__init__(f"http://testserver{prefix}", token, session=session)
        self.app = app
        self.authority = authority
        self.owns_app = owns_app

    def close(self) -> None:
        """Close the session; stop the app's executor and maintenance threads if this client owns the app."""
        self.session.close()
        if self.owns_app:
            self.owns_app = False
            close_app(self.app)

    def __enter__(self) -> "TestClient":
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()

    def run(self, body: dict[str, Any], *, wait: bool = False, timeout: float = 30, **kwargs: Any) -> dict[str, Any]:
        status = super().run(body, **kwargs)
        if wait and status["status"] not in COMPLETED:
            status = self.wait(status["action_id"], timeout=timeout, max_interval=0.2)
        return status

    def as_identity(self, identity: str | None = None, **token_options: Any) -> "TestClient":
        """Another client on the same app, for another caller (needs the authority)."""
        if self.authority is None:
            raise ValueError("this client has no TokenAuthority to mint tokens with")
        token_options.setdefault("scopes", [p.globus_auth_scope for p in get_toolkit(self.app).runtime.providers.values()])
        return TestClient(self.app, self.url.removeprefix("http://testserver"),
                          self.authority.token(identity, **token_options), self.authority)


def provider_app(
    provider: ActionProvider,
    data_dir: str | Path,
    *,
    prefix: str = "/provider",
    config: Mapping[str, Any] | None = None,
    **toolkit_options: Any,
) -> tuple[Flask, TokenAuthority]:
    """An app serving only ``provider`` with its state in ``data_dir``, and the authority its tokens come from.

    ``config`` holds app settings (``APTK_*`` names, as ``app.config``); ``toolkit_options`` go to
    :class:`~toolkit.Toolkit`. Stop the app's threads with :func:`close_app` when done.
    """
    authority = TokenAuthority()
    toolkit_options.setdefault("verifier", authority.verifier)
    settings = {"APTK_DATA_DIR": str(data_dir), **(config or {})}
    app = create_app(settings, providers=[(prefix, provider)], **toolkit_options)
    return app, authority


def provider_client(
    provider: ActionProvider,
    data_dir: str | Path,
    *,
    identity: str | None = None,
    config: Mapping[str, Any] | None = None,
    **toolkit_options: Any,
) -> TestClient:
    """A client calling ``provider`` (served in-process) as ``identity`` with a token carrying its scope.

    ``config`` holds app settings (e.g. ``{"APTK_EXECUTOR_THREADS": 2}``). Use it as a context manager (or call
    ``close()``) so that the app's threads stop.
    """
    app, authority = provider_app(provider, data_dir, config=config, **toolkit_options)
    token = authority.token(identity, scopes=[provider.globus_auth_scope])
    return TestClient(app, "/provider", token, authority, owns_app=True)


def close_app(app: Flask, *, grace: float = 0.0, timeout: float = 10.0) -> None:
    """Stop an app's background work and wait (up to ``timeout`` seconds) until its threads have ended.

    Running callbacks get ``grace`` seconds, are then told to stop (as at a server's shutdown), and the store's
    connections are closed. Safe to call twice.
    """
    state = find_toolkit(app)
    if state is None:
        return
    runtime = state.runtime
    # The executor's threads are taken before the runtime stops (which lets go of its pool).
    threads = _executor_threads(runtime.executor)
    maintenance = getattr(runtime, "_thread", None)
    runtime.stop(grace)
    give_up = time.monotonic() + timeout
    for thread in [*threads, maintenance]:
        if isinstance(thread, threading.Thread) and thread is not threading.current_thread():
            thread.join(max(0.0, give_up - time.monotonic()))
    dispose = getattr(runtime.store, "dispose", None)
    if dispose is not None:
        dispose()


def _executor_threads(executor: Any) -> list[threading.Thread]:
    pool = getattr(executor, "_pool", None)
    threads = getattr(pool, "threads", None) or getattr(pool, "_threads", None) or ()
    return [t for t in threads if isinstance(t, threading.Thread)]
