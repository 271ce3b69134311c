"""The toolkit's pytest plugin (installed with the toolkit, loaded by pytest on its own): the ``aptk_client``
fixture.

::

    def test_hello(aptk_client):
        assert aptk_client(hello).run({"echo_string": "hi"}, wait=True)["details"] == {"hello": "hi"}

``aptk_client(provider, identity=None, config=None, **toolkit_options)`` serves ``provider`` in-process with its
state under the test's ``tmp_path`` and returns a :class:`toolkit.testing.TestClient`; every app it made is
stopped (threads joined, database connections closed) when the test ends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator

import pytest

if TYPE_CHECKING:
    from .provider import ActionProvider
    from .testing import TestClient


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
