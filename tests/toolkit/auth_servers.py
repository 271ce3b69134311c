"""Small real HTTP servers on loopback standing in for an authorization server's endpoints in unit tests."""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs


class Recorder:
    """What the server answers (set by the test) and what it was asked."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Callable[[dict[str, Any]], tuple[int, Any]]] = {}
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.delay = 0.0

    def answer(self, method: str, path: str, fn: Callable[[dict[str, Any]], tuple[int, Any]]) -> None:
        self.routes[(method, path)] = fn

    def count(self, path: str) -> int:
        return sum(1 for _, p, _ in self.calls if p == path)


@contextmanager
def http_server(recorder: Recorder):
    """Serve ``recorder``'s routes at http://127.0.0.1:<port>; yields the base URL."""

    class Handler(BaseHTTPRequestHandler):
        def _handle(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode() if length else ""
            request = {"form": {k: v[0] for k, v in parse_qs(raw).items()}, "headers": dict(self.headers)}
            path = self.path.split("?")[0]
            recorder.calls.append((method, path, request))
            if recorder.delay:
                time.sleep(recorder.delay)
            fn = recorder.routes.get((method, path))
            status, body = fn(request) if fn else (404, {"error": "not_found"})
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def closed_port_url() -> str:
    """A loopback URL where nothing listens."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
