"""End-to-end fixtures: `aptk serve` (gunicorn) as a subprocess, tokens from `aptk token`. See support.py."""

from __future__ import annotations

import dataclasses
import time
import uuid

import pytest

from toolkit.auth import load_dev_key, mint_dev_token

from .support import HELLO_SCOPE, Api, Server


@pytest.fixture
def start_server(tmp_path_factory):
    """start_server(workers=3, env={...}, tokens={name: token_command kwargs}, args=[more aptk serve options]) -> a running Server on a new
    data dir, its tokens in ``server.minted``; all are stopped at teardown.

    server.start() again (after it stopped) serves the same data dir on a new port.
    """
    servers: list[Server] = []

    def start(*, workers: int = 3, env: dict[str, str] | None = None, tokens=None, args=()) -> Server:
        base = tmp_path_factory.mktemp("aptk")
        server = Server(base / "data", base, workers=workers, env=env, args=args)
        servers.append(server)
        return server.start(tokens)

    yield start
    for server in servers:
        server.stop()


IDS = {name: str(uuid.uuid4()) for name in ("alice", "bob", "carol", "group")}


@pytest.fixture(scope="session")
def shared_server(tmp_path_factory):
    """One 3-worker server for every test that needs no server of its own; each test uses fresh request_ids."""
    base = tmp_path_factory.mktemp("aptk-shared")
    server = Server(base / "data", base, workers=3)
    try:
        server.start(
            tokens={
                "alice": {"identity": IDS["alice"]},
                "bob": {"identity": IDS["bob"]},
                "carol": {"identity": IDS["carol"], "groups": [IDS["group"]]},
                "alice_without_scope": {"identity": IDS["alice"], "scopes": ["urn:aptk:scope:other"]},
            }
        )
        yield server
    finally:
        server.stop()


@dataclasses.dataclass(frozen=True)
class Person:
    id: str
    token: str

    @property
    def urn(self) -> str:
        return f"urn:globus:auth:identity:{self.id}"


@dataclasses.dataclass(frozen=True)
class People:
    alice: Person
    """Creates most actions."""
    bob: Person
    """Another identity, in no group."""
    carol: Person
    """Member of ``group`` (her token says so)."""
    group: str
    alice_without_scope: str
    """A valid token of alice's that lacks the hello scope."""
    alice_expired: str
    """A token of alice's, signed by the server's key, that expired an hour ago."""

    @property
    def group_urn(self) -> str:
        return f"urn:globus:groups:id:{self.group}"


@pytest.fixture(scope="session")
def people(shared_server: Server) -> People:
    tokens = shared_server.minted
    # `aptk token --expires` cannot mint a token that is already expired (and the dev verifier allows 30 s of
    # clock skew), so sign one that expired long ago with the server's own key.
    expired = mint_dev_token(
        load_dev_key(shared_server.data_dir), IDS["alice"], scopes=[HELLO_SCOPE], now=time.time() - 7200,
        expires_in=60,
    )
    return People(
        alice=Person(IDS["alice"], tokens["alice"]),
        bob=Person(IDS["bob"], tokens["bob"]),
        carol=Person(IDS["carol"], tokens["carol"]),
        group=IDS["group"],
        alice_without_scope=tokens["alice_without_scope"],
        alice_expired=expired,
    )


@pytest.fixture
def alice(shared_server: Server, people: People) -> Api:
    return Api(shared_server.hello, people.alice.token)


@pytest.fixture
def bob(shared_server: Server, people: People) -> Api:
    return Api(shared_server.hello, people.bob.token)


@pytest.fixture
def carol(shared_server: Server, people: People) -> Api:
    return Api(shared_server.hello, people.carol.token)
