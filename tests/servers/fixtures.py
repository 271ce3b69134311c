"""pytest fixtures: real SFTP and S3 servers on loopback.

Load once for the whole suite, in ``tests/conftest.py``::

    pytest_plugins = ["tests.servers.fixtures"]

(Importing the fixture functions into several test modules instead would
start one server per importing module.)

Session scope:

- ``sftp_server`` -> :class:`tests.servers.sftp.SFTPServerInfo` (chrooted)
- ``sftp_server_no_chroot`` -> the same, not chrooted (real paths)
- ``s3_server`` -> :class:`tests.servers.s3.S3ServerInfo`

Function scope: ``redis_server`` -> :class:`tests.servers.redis.RedisServer`.

Function scope: ``smtp_servers(auth=..., tls=..., replies=...)`` -> :class:`tests.servers.smtp.SMTPServer`.

Function scope, a fresh empty place per test, removed afterwards:

- ``sftp_location`` / ``sftp_location_no_chroot`` / ``s3_location`` ->
  :class:`Location`

Each gives ``.config()`` -- ``{"url": ..., "storage_options": {...}}``, the
form a config file would hold -- and ``.filesystem()``, a new fsspec
filesystem. The servers are threads of the pytest process; subprocesses (e.g.
gunicorn) reach them over loopback with the same URL and options.

When the server packages (``asyncssh``, ``moto``) or the client packages
(``paramiko``, ``s3fs``) are missing, the fixtures skip the tests using them.
"""

from __future__ import annotations

import dataclasses
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest


@dataclasses.dataclass(frozen=True)
class Location:
    """A place on a storage server, as a config file would name it."""

    #: fsspec URL, e.g. ``sftp://127.0.0.1:2222/t-1a2b`` or ``s3://bucket/t-1a2b``.
    url: str
    #: fsspec ``storage_options`` for ``url``.
    storage_options: dict[str, Any]
    #: The same place as a path for the filesystem's own methods
    #: (``/t-1a2b`` for sftp, ``bucket/t-1a2b`` for s3).
    path: str
    #: For sftp, where the place is on the local disk (``None`` for s3).
    local: Path | None
    _new_filesystem: Callable[[], Any] = dataclasses.field(repr=False, compare=False)

    def config(self) -> dict[str, Any]:
        return {"url": self.url, "storage_options": dict(self.storage_options)}

    def filesystem(self):
        """A new (uncached) fsspec filesystem for this server."""
        return self._new_filesystem()

    def join(self, *parts: str) -> str:
        """A filesystem path under :attr:`path`."""
        return "/".join([self.path.rstrip("/"), *(p.strip("/") for p in parts)])


def _unique() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def _start_sftp(tmp_path_factory, *, chroot: bool):
    pytest.importorskip("asyncssh", reason="the SFTP test server needs asyncssh")
    pytest.importorskip("paramiko", reason="fsspec's sftp client needs paramiko")
    from tests.servers.sftp import SFTPServer

    server = SFTPServer(
        tmp_path_factory.mktemp("sftp-root"),
        key_dir=tmp_path_factory.mktemp("sftp-keys"),
        chroot=chroot,
    )
    return server, server.start()


@pytest.fixture(scope="session")
def sftp_server(tmp_path_factory):
    """SFTP server chrooted to its tree: server paths start at ``/``."""
    server, info = _start_sftp(tmp_path_factory, chroot=True)
    try:
        yield info
    finally:
        server.stop()


@pytest.fixture(scope="session")
def sftp_server_no_chroot(tmp_path_factory):
    """SFTP server showing the real filesystem: its tree is at ``info.remote_root``
    (the tree's absolute local path), like a plain OpenSSH login."""
    server, info = _start_sftp(tmp_path_factory, chroot=False)
    try:
        yield info
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server():
    pytest.importorskip("moto", reason="the S3 test server needs moto[s3] and flask-cors")
    pytest.importorskip("s3fs", reason="fsspec's s3 client needs s3fs")
    from tests.servers.s3 import S3Server

    server = S3Server()
    info = server.start()
    try:
        yield info
    finally:
        server.stop()


def _sftp_location(info):
    name = _unique()
    local = info.root / name
    local.mkdir()
    config = info.config(name)
    try:
        yield Location(
            url=config["url"],
            storage_options=config["storage_options"],
            path=info.remote_path(name),
            local=local,
            _new_filesystem=info.filesystem,
        )
    finally:
        shutil.rmtree(local, ignore_errors=True)


@pytest.fixture
def sftp_location(sftp_server):
    yield from _sftp_location(sftp_server)


@pytest.fixture
def sftp_location_no_chroot(sftp_server_no_chroot):
    yield from _sftp_location(sftp_server_no_chroot)


@pytest.fixture
def s3_location(s3_server):
    name = _unique()
    config = s3_server.config(name)
    try:
        yield Location(
            url=config["url"],
            storage_options=config["storage_options"],
            path=f"{s3_server.bucket}/{name}",
            local=None,
            _new_filesystem=s3_server.filesystem,
        )
    finally:
        s3_server.delete_prefix(f"{name}/")


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL cluster for the session (the machine's PostgreSQL binaries, a temporary data directory)."""
    from .postgres import start_postgres

    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server():
    """A Redis of its own for one test (Debian's redis-server on loopback, nothing kept on disk); skipped where
    redis-server or the rq extra is missing."""
    pytest.importorskip("rq", reason="the queue executor needs the rq extra")
    from .redis import start_redis

    try:
        server = start_redis()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def smtp_servers():
    """``smtp_servers(auth=None, tls=None, replies=None)`` -> :class:`tests.servers.smtp.SMTPServer`, a real
    aiosmtpd server on loopback (AUTH, STARTTLS or SMTPS with a throwaway certificate, scripted 4xx/5xx replies to
    DATA), stopped after the test."""
    pytest.importorskip("aiosmtpd")
    import warnings

    from .smtp import SMTPServer

    started: list[SMTPServer] = []

    def start(**kw: Any) -> SMTPServer:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = SMTPServer(**kw)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
