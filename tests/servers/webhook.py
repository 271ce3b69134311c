"""A real HTTP(S) webhook receiver on loopback that checks the notify provider's signature.

``WebhookReceiver(secret, tls=False, replies=None, delay=0)``: ``replies`` are (status, headers) answered in turn
before 200s, each after ``delay`` seconds. ``.requests`` holds what arrived: method, path, headers, body, and
whether the signature was right.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import http.server
import ssl
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .smtp import throwaway_certificate


@dataclasses.dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    signature_ok: bool


class WebhookReceiver:
    def __init__(self, secret: str, *, tls: bool = False, replies: list[tuple[int, dict[str, str]]] | None = None,
                 delay: float = 0.0):
        self.secret = secret.encode()
        self.requests: list[Received] = []
        self.replies = list(replies or [])
        self.delay = delay
        self._dir = tempfile.TemporaryDirectory()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                timestamp = self.headers.get("X-Aptk-Timestamp", "")
                expected = "sha256=" + hmac.new(receiver.secret, timestamp.encode() + b"." + body,
                                                hashlib.sha256).hexdigest()
                ok = hmac.compare_digest(expected, self.headers.get("X-Aptk-Signature", ""))
                receiver.requests.append(Received("POST", self.path, dict(self.headers), body, ok))
                time.sleep(receiver.delay)
                status, headers = receiver.replies.pop(0) if receiver.replies else (200 if ok else 401, {})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.cert_file: Path | None = None
        if tls:
            self.cert_file, key_file = throwaway_certificate(Path(self._dir.name))
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.cert_file, key_file)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, host: str = "127.0.0.1", path: str = "/hook") -> str:
        return f"{'https' if self.cert_file else 'http'}://{host}:{self.port}{path}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._dir.cleanup()
