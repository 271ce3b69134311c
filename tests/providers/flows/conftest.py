"""An app serving the flows provider, and callers of its API."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import requests

from providers.flows import provider as flows_provider
from toolkit.server import create_app
from toolkit.testing import TestClient, TokenAuthority, WSGIAdapter, close_app

OWNER = "11111111-1111-4111-8111-111111111111"
ADMIN = "22222222-2222-4222-8222-222222222222"
OTHER = "33333333-3333-4333-8333-333333333333"
GROUP = "44444444-4444-4444-8444-444444444444"
SCOPE = flows_provider.globus_auth_scope

PASS_SUCCEED = {
    "StartAt": "Greet",
    "States": {
        "Greet": {"Type": "Pass", "Parameters": {"greeting.$": "$.name"}, "ResultPath": "$.said", "Next": "Done"},
        "Done": {"Type": "Succeed"},
    },
}
NAME_SCHEMA = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}},
               "additionalProperties": False}


def urn(identity: str) -> str:
    return f"urn:globus:auth:identity:{identity}"


@dataclasses.dataclass
class Site:
    app: Any
    authority: TokenAuthority
    data_dir: Path

    def session(self, identity: str = OWNER, *, groups=(), scopes=(SCOPE,)) -> "Api":
        token = self.authority.token(identity, groups=groups, scopes=scopes)
        return Api(self.app, token)

    def flow(self, flow_id: str, identity: str = OWNER, **token: Any) -> TestClient:
        token.setdefault("scopes", [SCOPE])
        return TestClient(self.app, f"/flows/{flow_id}", self.authority.token(identity, **token), self.authority)


class Api:
    """Calls of the flows API (``/flows``) as one caller, over the app in-process."""

    def __init__(self, app: Any, token: str) -> None:
        self.http = requests.Session()
        self.http.mount("http://testserver", WSGIAdapter(app))
        self.http.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str = "", **kwargs: Any) -> requests.Response:
        return self.http.request(method, f"http://testserver/flows{path}", **kwargs)

    def deploy(self, document: dict[str, Any], expect: int = 201) -> dict[str, Any]:
        answer = self.call("POST", json=document)
        assert answer.status_code == expect, answer.text
        return answer.json()


def make_site(tmp_path: Path, *, authority: TokenAuthority | None = None, data: str = "data",
              toolkit_options: dict[str, Any] | None = None, **config: Any) -> Site:
    authority = authority or TokenAuthority()
    data_dir = tmp_path / data
    data_dir.mkdir(exist_ok=True)
    app = create_app({"APTK_DATA_DIR": str(data_dir), **config}, providers=[("/flows", flows_provider)],
                     verifier=authority.verifier, **(toolkit_options or {}))
    return Site(app, authority, data_dir)


@pytest.fixture
def site(tmp_path):
    made = make_site(tmp_path)
    yield made
    close_app(made.app)


def deployment(**overrides: Any) -> dict[str, Any]:
    document: dict[str, Any] = {"title": "Greeter", "definition": PASS_SUCCEED, "input_schema": NAME_SCHEMA,
                                "runnable_by": ["all_authenticated_users"], "visible_to": ["public"]}
    document.update(overrides)
    return document
