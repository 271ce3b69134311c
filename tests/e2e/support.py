"""End-to-end helpers: the real `aptk serve` (gunicorn) as a subprocess, real tokens from `aptk token`.

Nothing here imports the server into the test process: every server is started the way a new user starts it,
on a free port, in its own process group, and is always torn down (SIGINT to the master, then SIGKILL of the
group). Server logs stay in the test's temporary directory (server-N.out: access log, server-N.err: the rest).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping

import requests

from tests.conftest import no_nulls as nulls

VENV_BIN = Path(sys.executable).parent
APTK = str(VENV_BIN / "aptk") if (VENV_BIN / "aptk").exists() else "aptk"
HELLO_SCOPE = "urn:aptk:scope:hello"
STARTUP_SECONDS = 30
REQUEST_TIMEOUT = 10


def free_port() -> int:
    """A port nobody listens on right now (bind port 0, read it back, let it go)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """One `aptk serve` process group on a data directory."""

    def __init__(self, data_dir: Path, log_dir: Path, *, workers: int = 3, env: dict[str, str] | None = None,
                 args: Iterable[str] = ()):
        self.data_dir = data_dir
        self.args = list(args)
        self.log_dir = log_dir
        self.workers = workers
        # The developer's own APTK_* settings must not leak into the server under test.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("APTK_")}
        self.env = {**inherited, **(env or {})}
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self.starts = 0
        self.stdout_path: Path | None = None
        self.stderr_path: Path | None = None
        self.minted: dict[str, str] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def hello(self) -> str:
        return f"{self.url}/hello"

    def start(self, tokens: Mapping[str, Mapping[str, Any]] | None = None, *, port: int | None = None) -> "Server":
        """Start `aptk serve` (on ``port``, default a free one) and wait until ``GET /`` answers.

        ``tokens`` (name -> keyword arguments of :meth:`token_command`) are minted with `aptk token` while the
        workers boot, as soon as the server has created its signing key; they end up in ``self.minted``.
        """
        assert self.process is None or self.process.poll() is not None, "already running"
        self.starts += 1
        self.port = port or free_port()
        self.stdout_path = self.log_dir / f"server-{self.starts}.out"
        self.stderr_path = self.log_dir / f"server-{self.starts}.err"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                [APTK, "serve", "--data-dir", str(self.data_dir), "--port", str(self.port),
                 "--workers", str(self.workers), *self.args],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )
        minting = {}
        if tokens:
            self._wait_for(lambda: (self.data_dir / "dev-signing-key.pem").exists(), "create its signing key")
            minting = self._spawn_tokens({name: self.token_command(**kw) for name, kw in tokens.items()})
        self._wait_for(self._answers, "answer GET /")
        self.minted = self._collect_tokens(minting)
        return self

    def _answers(self) -> bool:
        try:
            return requests.get(self.url + "/", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def _wait_for(self, condition, what: str) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not condition():
            if self.process.poll() is not None:
                raise AssertionError(f"aptk serve exited with {self.process.returncode}:\n{self.stderr()}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"aptk serve did not {what} within {STARTUP_SECONDS} s:\n{self.stderr()}")
            time.sleep(0.05)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path else ""

    def interrupt(self, *, group: bool = True, timeout: float = 15) -> int:
        """Send SIGINT (to the whole process group, as Ctrl-C in a terminal does) and wait; the exit code.

        Raises subprocess.TimeoutExpired if the server is still running after ``timeout`` seconds.
        """
        assert self.process is not None
        try:
            if group:
                os.killpg(self.process.pid, signal.SIGINT)
            else:
                self.process.send_signal(signal.SIGINT)
        except ProcessLookupError:
            pass
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL every process of the server's group (master and workers alike)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)
        self._wait_group_gone()

    def _wait_group_gone(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    def stop(self) -> None:
        """Always leaves nothing running: SIGINT to the master first, SIGKILL of the group if that did not do.

        (Only the master gets SIGINT: a SIGINT to the workers too can deadlock one of them; see
        test_ctrl_c_in_a_terminal_stops_every_process_within_five_seconds.)
        """
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                self.interrupt(group=False, timeout=10)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # stragglers (workers) of a master that is gone
        except ProcessLookupError:
            pass
        if self.process.poll() is None:
            self.process.wait(timeout=10)
        self._wait_group_gone()

    # --- tokens ------------------------------------------------------------------------------------------

    def token_command(self, identity: str, *, groups: Iterable[str] = (), scopes: Iterable[str] = (),
                      expires: str | None = None) -> list[str]:
        command = [APTK, "token", "--data-dir", str(self.data_dir), "--identity", identity]
        for group in groups:
            command += ["--group", group]
        for scope in scopes:
            command += ["--scope", scope]
        if expires is not None:
            command += ["--expires", expires]
        return command

    def _spawn_tokens(self, commands: Mapping[str, list[str]]) -> dict[str, tuple[list[str], subprocess.Popen]]:
        return {
            name: (cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env, text=True))
            for name, cmd in commands.items()
        }

    @staticmethod
    def _collect_tokens(running: Mapping[str, tuple[list[str], subprocess.Popen]]) -> dict[str, str]:
        tokens = {}
        for name, (cmd, proc) in running.items():
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, f"{cmd} failed: {err}"
            tokens[name] = out.strip()
            assert tokens[name].count(".") == 2, f"{cmd} printed no JWT: {out!r}"
        return tokens

    def tokens(self, commands: Mapping[str, list[str]]) -> dict[str, str]:
        """Run several `aptk token` commands at once; their tokens by name."""
        return self._collect_tokens(self._spawn_tokens(commands))

    def token(self, identity: str, **options: Any) -> str:
        return self.tokens({"t": self.token_command(identity, **options)})["t"]


class Api:
    """Raw HTTP to a provider, with a bearer token; checks that no JSON answer ever holds a null."""

    def __init__(self, base: str, token: str | None) -> None:
        self.base = base
        self.token = token

    def request(self, method: str, path: str, *, token: Any = ..., **kwargs: Any) -> requests.Response:
        """``token=None`` sends no Authorization header; by default this Api's token is sent."""
        headers = dict(kwargs.pop("headers", {}))
        token = self.token if token is ... else token
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        # A new connection for every call, so that calls spread over gunicorn's workers.
        headers.setdefault("Connection", "close")
        response = requests.request(method, self.base + path, headers=headers, timeout=REQUEST_TIMEOUT, **kwargs)
        if response.headers.get("Content-Type", "").startswith("application/json"):
            document = response.json()
            found = nulls(document)
            assert not found, f"{method} {path} answered {response.status_code} with null at {found}: {document}"
        return response

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def run(self, body: dict[str, Any], **fields: Any) -> requests.Response:
        document = {"request_id": fields.pop("request_id", str(uuid.uuid4())), "body": body, **fields}
        return self.post("/run", json=document)

    def wait_for(self, action_id: str, statuses: Iterable[str], timeout: float) -> dict[str, Any]:
        """Poll status until the action is in one of ``statuses``; the status document."""
        wanted = set(statuses)
        deadline = time.monotonic() + timeout
        document: dict[str, Any] = {}
        while time.monotonic() < deadline:
            response = self.get(f"/{action_id}/status")
            assert response.status_code == 200, response.text
            document = response.json()
            if document["status"] in wanted:
                return document
            time.sleep(0.1)
        raise AssertionError(f"action {action_id} not {sorted(wanted)} within {timeout} s: {json.dumps(document)}")


    def wait_until_sleeping(self, action_id: str, timeout: float = 5) -> dict[str, Any]:
        """Poll until hello's callback reports that it sleeps (display_status), i.e. it is running right now."""
        deadline = time.monotonic() + timeout
        while True:
            document = self.get(f"/{action_id}/status").json()
            if document.get("display_status") == "sleeping":
                return document
            assert time.monotonic() < deadline, f"action {action_id} never started sleeping: {document}"
            time.sleep(0.05)


# --- concurrent clients in separate processes ---------------------------------------------------------------

_start_together = None


def start_together(barrier) -> None:
    """Pool initializer: keep the barrier every client waits at before it sends its request."""
    global _start_together
    _start_together = barrier


def post_when_all_ready(args: tuple[str, str, dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    """Pool task: wait until every client is ready, then POST ``document`` to ``url``; (status, JSON answer)."""
    url, token, document = args
    _start_together.wait(timeout=30)
    response = requests.post(url, json=document, headers={"Authorization": f"Bearer {token}", "Connection": "close"},
                             timeout=REQUEST_TIMEOUT)
    return response.status_code, response.json()
