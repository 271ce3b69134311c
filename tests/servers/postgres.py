"""A throwaway PostgreSQL cluster on loopback (initdb + pg_ctl from the machine's PostgreSQL)."""

from __future__ import annotations

import dataclasses
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for version in sorted(Path("/usr/lib/postgresql").glob("*"), reverse=True):
        candidate = version / "bin" / name
        if candidate.exists():
            return str(candidate)
    raise RuntimeError(f"PostgreSQL's {name} is not installed (Debian: apt-get install postgresql)")


@dataclasses.dataclass
class PostgresServer:
    directory: Path
    port: int
    user: str
    _run_as: list[str]

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/postgres"

    def create_database(self, name: str) -> str:
        """A new empty database on this cluster; its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{name}"

    def restart(self, down_for: float = 0.0) -> None:
        """Stop the server at once (``-m immediate``: connections are cut), wait ``down_for`` seconds, start it
        again on the same port with the same data."""
        db = str(self.directory / "db")
        subprocess.run([*self._run_as, _binary("pg_ctl"), "-D", db, "-m", "immediate", "stop"],
                       capture_output=True, timeout=30)
        time.sleep(down_for)
        subprocess.run(
            [*self._run_as, _binary("pg_ctl"), "-D", db, "-l", str(self.directory / "log"), "-w", "-o",
             f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
            check=True, capture_output=True, timeout=60,
        )

    def stop(self) -> None:
        subprocess.run([*self._run_as, _binary("pg_ctl"), "-D", str(self.directory / "db"), "-m", "fast", "stop"],
                       capture_output=True, timeout=30)
        shutil.rmtree(self.directory, ignore_errors=True)


def start_postgres() -> PostgresServer:
    directory = Path(tempfile.mkdtemp(prefix="aptk-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        account = pwd.getpwnam("postgres")
        os.chown(directory, account.pw_uid, account.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    subprocess.run([*run_as, _binary("initdb"), "-D", str(directory / "db"), "-A", "trust", "-U", "aptk",
                    "--no-sync"], check=True, capture_output=True, timeout=120)
    subprocess.run(
        [*run_as, _binary("pg_ctl"), "-D", str(directory / "db"), "-l", str(directory / "log"), "-w", "-o",
         f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
        check=True, capture_output=True, timeout=60,
    )
    server = PostgresServer(directory, port, "aptk", run_as)
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server
        except OSError:
            if time.monotonic() > deadline:
                server.stop()
                raise
            time.sleep(0.1)
