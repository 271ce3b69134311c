"""The toolkit's pytest plugin (installed with the toolkit, loaded by pytest on its own): the fixtures
``aptk_client``, ``aptk_other_identity`` and ``aptk_clock``.

::

    def test_hello(aptk_client):
        assert aptk_client(hello).run({"echo_string": "hi"}, wait=True)["details"] == {"hello": "hi"}

``aptk_client(provider, identity=None, config=None, **toolkit_options)`` serves ``provider`` in-process with its
state under the test's ``tmp_path`` and returns a :class:`toolkit.testing.TestClient`; every app it made is
stopped (threads joined, database connections closed) when the test ends.

``aptk_other_identity`` is a second caller's identity (a UUID): ``client.as_identity(aptk_other_identity)`` calls
the same app as that person. ``aptk_clock`` is a :class:`toolkit.testing.ManualClock`: ``aptk_client(provider,
clock=aptk_clock)`` and ``aptk_clock.advance(3600)`` move the provider's time an hour on, for deadlines and expiry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator

import uuid

import pytest

if TYPE_CHECKING:
    from .provider import ActionProvider
    from .testing import ManualClock, TestClient


@pytest.fixture
def aptk_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., "TestClient"]]:
    """A factory of test clients, each on its own app and data directory; all are closed after the test."""
    from .testing import provider_client

    clients: list[TestClient] = []

    def make(provider: "ActionProvider", **options: Any) -> "TestClient":
        client = provider_client(provider, tmp_path_factory.mktemp("aptk"), **options)
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for client in clients:
            client.close()


@pytest.fixture
def aptk_other_identity() -> str:
    """A second identity (a UUID), for tests of what another caller may and may not do."""
    return str(uuid.uuid4())


@pytest.fixture
def aptk_clock() -> "ManualClock":
    """A clock standing at the current time until the test moves it (``aptk_clock.advance(seconds)``)."""
    from .testing import ManualClock

    return ManualClock()
