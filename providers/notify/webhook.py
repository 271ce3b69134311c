"""Webhooks: POST a signed JSON document to an ``https`` URL, never into the host's own network.

The receiver's name is resolved once per attempt; every address it resolves to must be public (or inside
``APTK_NOTIFY_WEBHOOK_ALLOW_NETWORKS``, or loopback with ``APTK_NOTIFY_WEBHOOK_ALLOW_LOOPBACK``), and the
connection goes to the address that was checked (see :mod:`.addresses`). Redirects are not followed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import http.client
import json
import socket
import ssl
import time
import urllib.parse
from typing import Any, Callable, Mapping

from toolkit import ActionFailed, BadActionRequest
from toolkit.settings import number

from . import addresses
from .addresses import Address, Transient
from .mail import _no_control, _setting

SIGNATURE_HEADER = "X-Aptk-Signature"
TIMESTAMP_HEADER = "X-Aptk-Timestamp"
DELIVERY_HEADER = "X-Aptk-Delivery"
MAX_URL = 2048
DEFAULT_TIMEOUT = 10.0


@dataclasses.dataclass
class Target:
    url: str
    scheme: str
    host: str
    port: int
    path: str
    secret: bytes = dataclasses.field(repr=False)
    timeout: float
    ca_file: str | None
    policy: addresses.Policy


def policy(config: Mapping[str, Any]) -> addresses.Policy:
    return addresses.policy(config, "webhooks", "APTK_NOTIFY_WEBHOOK_ALLOW_LOOPBACK",
                            "APTK_NOTIFY_WEBHOOK_ALLOW_NETWORKS")


def timeout(config: Mapping[str, Any]) -> float:
    return number(config, "APTK_NOTIFY_WEBHOOK_TIMEOUT", DEFAULT_TIMEOUT, positive=True)


def target(url: str, config: Mapping[str, Any]) -> Target:
    """Check a webhook URL (a 400 naming what is wrong); addresses of names are checked when sending."""
    secret = _setting(config, "APTK_NOTIFY_WEBHOOK_SECRET")
    if secret is None:
        raise BadActionRequest("notification_method: this server sends no webhooks (no APTK_NOTIFY_WEBHOOK_SECRET).")
    _no_control("destination", url)
    if len(url) > MAX_URL:
        raise BadActionRequest(f"destination: a webhook URL has at most {MAX_URL} characters.")
    parts = urllib.parse.urlsplit(url)
    allowed = policy(config)
    loopback = allowed.loopback
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise BadActionRequest("destination: a webhook is an https:// URL.")
    if parts.username is not None or parts.password is not None:
        raise BadActionRequest("destination: a webhook URL must not carry credentials.")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise BadActionRequest("destination: the URL's port is not a number from 1 to 65535.") from None
    host = parts.hostname
    literal = addresses.literal(host)
    if parts.scheme == "http":
        if not loopback:
            raise BadActionRequest("destination: a webhook is an https:// URL (http only to loopback, where this "
                                   "server allows it).")
        if host != "localhost" and (literal is None or not literal.is_loopback):
            raise BadActionRequest("destination: http:// is allowed only to a loopback address; use https://.")
    if literal is not None:
        addresses.check(literal, allowed, "destination")
    path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    return Target(url, parts.scheme, host, port, path, secret.encode(), timeout(config),
                  _setting(config, "APTK_NOTIFY_WEBHOOK_CA_FILE"), allowed)


def resolve(target: Target) -> list[Address]:
    """The addresses to connect to: every address the name has must be allowed (checked once, then used)."""
    try:
        return addresses.resolve(target.host, target.port, target.policy, "destination")
    except Transient as exc:
        raise Transient(exc.code, f"The webhook's host {exc.description}") from None


class _Pinned(http.client.HTTPSConnection):
    """HTTP(S) to the checked addresses only (the first that answers), with the URL's name for Host, SNI and
    certificate checks."""

    def __init__(self, target: Target, checked: list[Address]) -> None:
        self._tls_context = ssl.create_default_context(cafile=target.ca_file)
        super().__init__(target.host, target.port, timeout=target.timeout, context=self._tls_context)
        self._addresses = checked
        self._tls = target.scheme == "https"

    def connect(self) -> None:
        sock = addresses.connect(self._addresses, self.port, self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = self._tls_context.wrap_socket(sock, server_hostname=self.host) if self._tls else sock


def document(body: Mapping[str, Any], text: str, markup: str | None, action_id: str) -> dict[str, Any]:
    out: dict[str, Any] = {"action_id": action_id, "subject": body.get("subject", ""), "text": text}
    if markup is not None:
        out["html"] = markup
    out["variables"] = body.get("body_variables") or {}
    if body.get("notification_priority"):
        out["priority"] = body["notification_priority"]
    return out


def sign(secret: bytes, timestamp: str, payload: bytes) -> str:
    """``sha256=`` and the hex HMAC-SHA256 of ``timestamp.payload``, with the webhook secret as key."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + payload, hashlib.sha256).hexdigest()


def send_once(target: Target, doc: Mapping[str, Any], delivery: str,
              before_send: Callable[[], None] = lambda: None) -> dict[str, Any]:
    checked = resolve(target)
    payload = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    timestamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "User-Agent": "aptk-notify",
               SIGNATURE_HEADER: sign(target.secret, timestamp, payload), TIMESTAMP_HEADER: timestamp,
               DELIVERY_HEADER: delivery}
    connection = _Pinned(target, checked)
    where = f"{target.host}:{target.port}"
    try:
        before_send()
        connection.request("POST", target.path, body=payload, headers=headers)
        response = connection.getresponse()
        response.read(64 * 1024)
        status = response.status
    except ConnectionRefusedError:
        raise Transient("ConnectionRefused", f"The webhook receiver {where} refused the connection.") from None
    except (socket.timeout, TimeoutError):
        raise Transient("Timeout", f"The webhook receiver {where} did not answer in time.") from None
    except ssl.SSLError as exc:
        raise ActionFailed("TLSError", f"TLS with {where} failed: {exc.reason}.") from None
    except (OSError, http.client.HTTPException) as exc:
        raise Transient("ConnectionFailed", f"The connection to {where} failed: {exc}.") from None
    finally:
        connection.close()
    if 200 <= status < 300:
        return {"status_code": status, "delivery": delivery}
    if 300 <= status < 400:
        raise ActionFailed("Redirected", f"The webhook receiver answered {status} (a redirect); redirects are not "
                                         "followed.", status_code=status)
    if status in (408, 425, 429) or status >= 500:
        raise Transient("ReceiverUnavailable", f"The webhook receiver answered {status}.")
    raise ActionFailed("WebhookRefused", f"The webhook receiver answered {status}.", status_code=status)
