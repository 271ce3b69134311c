import os

import pytest

# Servers the tests start on loopback, one of each per session: OAuth2 (oidc-provider), SFTP, S3, PostgreSQL.
pytest_plugins = ["tests.oidc.fixture", "tests.servers.fixtures", "pytester"]


@pytest.fixture(autouse=True)
def _without_the_developers_settings(monkeypatch):
    """In-process tests see only the APTK_* settings they set themselves, never the developer's own."""
    for name in [name for name in os.environ if name.startswith("APTK_")]:
        monkeypatch.delenv(name)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


def no_nulls(document, path: str = "$") -> list[str]:
    """Every path in a JSON document whose value is null."""
    if document is None:
        return [path]
    if isinstance(document, dict):
        return [p for k, v in document.items() for p in no_nulls(v, f"{path}.{k}")]
    if isinstance(document, list):
        return [p for i, v in enumerate(document) for p in no_nulls(v, f"{path}[{i}]")]
    return []
