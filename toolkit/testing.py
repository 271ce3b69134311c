"""Helpers for testing providers: token minting, and the real HTTP client wired straight to a WSGI app.

A provider's test can be three lines::

    def test_hello(tmp_path):
        client = provider_client(hello, tmp_path)
        assert client.run({"echo_string": "hi"}, wait=True)["details"] == {"hello": "hi"}
"""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any, Iterable

import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from .auth import DevTokenVerifier, mint_dev_token
from .client import COMPLETED, ActionProviderClient
from .provider import ActionProvider
from .server import create_app

__all__ = ["TokenAuthority", "WSGIAdapter", "TestClient", "provider_app", "provider_client"]


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

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        url = requests.utils.urlparse(request.url)
        body = request.body.encode() if isinstance(request.body, str) else request.body
        answer = self._client.open(
            url.path, method=request.method, query_string=url.query, headers=dict(request.headers), data=body
        )
        response = requests.Response()
        response.status_code = answer.status_code
        response.headers = CaseInsensitiveDict(answer.headers)
        response.raw = io.BytesIO(answer.get_data())
        response.url = request.url
        response.request = request
        response.reason = answer.status.partition(" ")[2]
        return response

    def close(self) -> None:
        pass


class TestClient(ActionProviderClient):
    """:class:`~toolkit.client.ActionProviderClient` over a WSGI app, with ``run(..., wait=True)``."""

    __test__ = False  # not a pytest test class

    def __init__(self, app: Flask, prefix: str, token: str, authority: TokenAuthority | None = None) -> None:
        session = requests.Session()
        session.mount("http://testserver", WSGIAdapter(app))
        super().__init__(f"http://testserver{prefix}", token, session=session)
        self.app = app
        self.authority = authority

    def run(self, body: dict[str, Any], *, wait: bool = False, timeout: float = 30, **kwargs: Any) -> dict[str, Any]:
        status = super().run(body, **kwargs)
        if wait and status["status"] not in COMPLETED:
            status = self.wait(status["action_id"], timeout=timeout, max_interval=0.2)
        return status

    def as_identity(self, identity: str | None = None, **token_options: Any) -> "TestClient":
        """Another client on the same app, for another caller (needs the authority)."""
        if self.authority is None:
            raise ValueError("this client has no TokenAuthority to mint tokens with")
        token_options.setdefault("scopes", [p.globus_auth_scope for p in self.app.extensions["aptk"].runtime.providers.values()])
        return TestClient(self.app, self.url.removeprefix("http://testserver"),
                          self.authority.token(identity, **token_options), self.authority)


def provider_app(
    provider: ActionProvider, data_dir: str | Path, *, prefix: str = "/provider", **toolkit_options: Any
) -> tuple[Flask, TokenAuthority]:
    """An app serving only ``provider`` with its state in ``data_dir``, and the authority its tokens come from."""
    authority = TokenAuthority()
    toolkit_options.setdefault("verifier", authority.verifier)
    app = create_app({"APTK_DATA_DIR": str(data_dir)}, providers=[(prefix, provider)], **toolkit_options)
    return app, authority


def provider_client(
    provider: ActionProvider, data_dir: str | Path, *, identity: str | None = None, **toolkit_options: Any
) -> TestClient:
    """A client calling ``provider`` (served in-process) as ``identity`` with a token carrying its scope."""
    app, authority = provider_app(provider, data_dir, **toolkit_options)
    token = authority.token(identity, scopes=[provider.globus_auth_scope])
    return TestClient(app, "/provider", token, authority)
