"""A real SSH/SFTP server on loopback, run by asyncssh in a background thread.

The server listens on ``127.0.0.1`` on a port the kernel picks, with a host
key made at start, and serves one directory (by default chrooted: the client
sees it as ``/``; with ``chroot=False`` the client sees the whole local
filesystem under real paths, like a plain OpenSSH login). One user may log
in, with a password or with a client key that is also made at start. Shell,
exec, port forwarding and SCP are refused: only the ``sftp`` subsystem is
served.

asyncssh's chroot differs from OpenSSH's ``ChrootDirectory`` for symbolic
links that point outside the chroot: ``stat``/``open`` follow them (the data
outside is readable), while ``realpath`` (paramiko ``normalize``) and
``readlink`` on them fail with "No such file" (FileNotFoundError).

Use::

    with SFTPServer(root_dir) as server:
        info = server.info
        fs = info.filesystem()          # fsspec "sftp" (paramiko)
        fs.pipe_file("/a.txt", b"hi")
        assert (info.root / "a.txt").read_bytes() == b"hi"
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hmac
import os
import posixpath
import tempfile
import threading
from pathlib import Path
from typing import Any

import asyncssh

HOST = "127.0.0.1"
USERNAME = "aptk"
PASSWORD = "aptk-test-password"

#: paramiko ``SSHClient.connect`` options that keep a test client from using
#: whatever the machine it runs on has: no keys from ``~/.ssh``, no ssh-agent.
#: (fsspec's SFTPFileSystem never loads ``known_hosts`` and accepts unknown
#: host keys by default, with ``paramiko.AutoAddPolicy``.)
ISOLATED_CLIENT_OPTIONS: dict[str, Any] = {
    "look_for_keys": False,
    "allow_agent": False,
    "timeout": 10,
    "banner_timeout": 10,
    "auth_timeout": 10,
}


@dataclasses.dataclass(frozen=True)
class SFTPServerInfo:
    """How to reach a running :class:`SFTPServer`."""

    host: str
    port: int
    username: str
    password: str
    #: Private key (OpenSSH format, unencrypted) accepted for ``username``.
    client_key_path: Path
    #: The served tree on the local disk.
    root: Path
    #: The served tree as the server names it: ``/`` when chrooted, else
    #: ``str(root)`` (the server then shows the whole local filesystem).
    remote_root: str
    #: The server's host key, one ``known_hosts`` line (``[host]:port type b64``).
    known_hosts_line: str

    @property
    def url(self) -> str:
        """URL of the served tree."""
        return f"sftp://{self.host}:{self.port}{self.remote_path('')}"

    def remote_path(self, rel: str = "") -> str:
        """Server path of ``rel`` (relative to the served tree)."""
        return posixpath.join(self.remote_root, rel.lstrip("/")) if rel else self.remote_root

    def storage_options(self, *, auth: str = "password") -> dict[str, Any]:
        """fsspec ``storage_options`` for the ``sftp`` protocol.

        ``auth`` is ``"password"`` or ``"key"``. Host and port come from the
        URL (see :meth:`config`); pass them yourself to ``filesystem()``.
        """
        options: dict[str, Any] = {"username": self.username}
        if auth == "password":
            options["password"] = self.password
        elif auth == "key":
            options["key_filename"] = str(self.client_key_path)
        else:
            raise ValueError(f"auth must be 'password' or 'key', not {auth!r}")
        options.update(ISOLATED_CLIENT_OPTIONS)
        return options

    def config(self, rel: str = "", *, auth: str = "password") -> dict[str, Any]:
        """The form a config file would hold: ``{"url", "storage_options"}``,
        for ``rel`` (relative to the served tree)."""
        return {
            "url": f"sftp://{self.host}:{self.port}{self.remote_path(rel)}",
            "storage_options": self.storage_options(auth=auth),
        }

    def filesystem(self, *, auth: str = "password", **overrides: Any):
        """A new fsspec ``SFTPFileSystem`` connected to this server.

        ``skip_instance_cache=True``: fsspec caches filesystem instances by
        their arguments, and a cached paramiko connection may be one that a
        test (or the server's shutdown) already closed.
        """
        import fsspec

        options = self.storage_options(auth=auth)
        options.update(overrides)
        return fsspec.filesystem(
            "sftp", host=self.host, port=self.port, skip_instance_cache=True, **options
        )

    def local_path(self, remote_path: str) -> Path:
        """Where a server path (``/a/b``) inside the served tree is on the local disk."""
        rel = posixpath.relpath(posixpath.normpath(remote_path), self.remote_root)
        if rel == ".":
            return self.root
        if rel == ".." or rel.startswith("../"):
            raise ValueError(f"{remote_path!r} is not inside the served tree {self.remote_root!r}")
        return self.root / rel


class _SSHServer(asyncssh.SSHServer):
    """Authenticates the one user, by password or by the client key."""

    def __init__(self, owner: SFTPServer) -> None:
        self._owner = owner
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._owner._connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._owner._connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        return True  # authentication is always required

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return hmac.compare_digest(username, self._owner.username) and hmac.compare_digest(
            password, self._owner.password
        )

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return (
            hmac.compare_digest(username, self._owner.username)
            and key.public_data == self._owner._client_public_key.public_data
        )


class _ChrootedSFTPServer(asyncssh.SFTPServer):
    """asyncssh's SFTPServer, with the chroot mapping of asyncssh >= 2.24.

    asyncssh < 2.24 mapped a path beginning with ``//`` (which fsspec's
    ``makedirs`` sends: ``//a``, ``//a/b``) to the same path *outside* the
    chroot. Map every path the fixed way, whatever asyncssh is installed.
    """

    def map_path(self, path: bytes) -> bytes:
        chroot = getattr(self, "_chroot", None)
        if not chroot:
            return super().map_path(path)
        normpath = posixpath.normpath(posixpath.join(b"/", path))
        return posixpath.join(chroot, normpath.lstrip(b"/"))


class SFTPServer:
    """An asyncssh SFTP server with its own event loop in a daemon thread."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        key_dir: str | os.PathLike[str] | None = None,
        username: str = USERNAME,
        password: str = PASSWORD,
        host: str = HOST,
        port: int = 0,
        chroot: bool = True,
    ) -> None:
        self.root = Path(root).resolve()
        self.chroot = chroot
        self.root.mkdir(parents=True, exist_ok=True)
        self._own_key_dir = key_dir is None
        self.key_dir = Path(key_dir if key_dir is not None else tempfile.mkdtemp(prefix="aptk-sftp-keys-"))
        self.username = username
        self.password = password
        self.host = host
        self._requested_port = port
        self._connections: set[asyncssh.SSHServerConnection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._error: BaseException | None = None
        self.info: SFTPServerInfo | None = None

        # Keys: ed25519, fast to make; paramiko reads OpenSSH-format ed25519.
        self._host_key = asyncssh.generate_private_key("ssh-ed25519")
        client_key = asyncssh.generate_private_key("ssh-ed25519", comment="aptk-test-client")
        self._client_public_key = client_key.convert_to_public()
        self.key_dir.mkdir(parents=True, exist_ok=True)
        self.client_key_path = self.key_dir / "id_ed25519"
        client_key.write_private_key(str(self.client_key_path))
        os.chmod(self.client_key_path, 0o600)
        self._client_public_key.write_public_key(str(self.client_key_path) + ".pub")

    # -- lifecycle -------------------------------------------------------

    def start(self, timeout: float = 10.0) -> SFTPServerInfo:
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="aptk-sftp-server", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError("SFTP server did not start in time")
        if self._error is not None:
            raise RuntimeError("SFTP server failed to start") from self._error
        assert self._acceptor is not None
        port = self._acceptor.get_port()
        host_public = self._host_key.export_public_key("openssh").decode().strip()
        host_public = " ".join(host_public.split()[:2])  # drop the comment
        self.info = SFTPServerInfo(
            host=self.host,
            port=port,
            username=self.username,
            password=self.password,
            client_key_path=self.client_key_path,
            root=self.root,
            remote_root="/" if self.chroot else self.root.as_posix(),
            known_hosts_line=f"[{self.host}]:{port} {host_public}",
        )
        return self.info

    def stop(self, timeout: float = 10.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError("SFTP server thread did not stop in time")
        self._loop = self._thread = None
        if self._own_key_dir:
            for path in self.key_dir.iterdir():
                path.unlink()
            self.key_dir.rmdir()

    def __enter__(self) -> SFTPServerInfo:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- the server thread -----------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            try:
                self._acceptor = loop.run_until_complete(self._listen())
            except BaseException as exc:  # reported by start()
                self._error = exc
                return
            finally:
                ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _listen(self) -> asyncssh.SSHAcceptor:
        return await asyncssh.create_server(
            functools.partial(_SSHServer, self),
            self.host,
            self._requested_port,
            server_host_keys=[self._host_key],
            sftp_factory=(
                functools.partial(_ChrootedSFTPServer, chroot=str(self.root))
                if self.chroot
                else asyncssh.SFTPServer
            ),
            allow_scp=False,
            agent_forwarding=False,
            x11_forwarding=False,
            # Keep handshakes cheap: no GSSAPI probing, no DNS lookup of peers.
            gss_host=None,
            reuse_address=True,
        )

    async def _shutdown(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
        for conn in list(self._connections):
            conn.close()
        waits = [conn.wait_closed() for conn in list(self._connections)]
        if self._acceptor is not None:
            waits.append(self._acceptor.wait_closed())
        if waits:
            await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), 5)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
