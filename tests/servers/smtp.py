"""A real SMTP server on loopback (aiosmtpd), keeping the messages it receives.

``SMTPServer(auth={"user": "pw"}, tls="starttls" | "smtps" | None, reply=None)``: ``reply`` is an SMTP reply
(``"451 4.3.0 try later"``) answered to DATA instead of accepting, for testing failures; ``delay`` seconds pass
before DATA is answered (a message is kept before that wait). ``.url`` is the
``APTK_SMTP_URL`` reaching it; ``.messages`` the :class:`email.message.EmailMessage` received, with
``.envelopes`` the (mail_from, rcpt_tos) of each.
"""

from __future__ import annotations

import datetime
import email
import email.policy
import ipaddress
import ssl
import tempfile
import warnings
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def throwaway_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 / localhost: (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


class _Handler:
    def __init__(self, server: "SMTPServer") -> None:
        self.server = server

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:
        import asyncio

        if self.server.replies:
            await asyncio.sleep(self.server.delay)
            return self.server.replies.pop(0)
        # Taken (and kept) before the answer: a client that is gone by then has still sent the mail.
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        self.server.messages.append(message)
        self.server.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        await asyncio.sleep(self.server.delay)
        return "250 2.0.0 OK"


class SMTPServer:
    def __init__(self, *, auth: dict[str, str] | None = None, tls: str | None = None,
                 replies: list[str] | None = None, delay: float = 0.0, port: int | None = None) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.replies = list(replies or [])
        self.delay = delay
        self.sessions = 0
        self._dir = tempfile.TemporaryDirectory()
        self.cert_file = self.key_file = None
        kwargs: dict[str, Any] = {}
        context = None
        if tls:
            self.cert_file, self.key_file = throwaway_certificate(Path(self._dir.name))
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.cert_file, self.key_file)
        if tls == "starttls":
            kwargs.update(tls_context=context, require_starttls=True)
        elif tls == "smtps":
            kwargs.update(ssl_context=context)
        if auth is not None:
            def check(_server: Any, _session: Any, _envelope: Any, mechanism: str, data: Any) -> AuthResult:
                ok = isinstance(data, LoginPassword) and auth.get(data.login.decode()) == data.password.decode()
                return AuthResult(success=ok, handled=False)
            kwargs.update(authenticator=check, auth_required=True, auth_require_tls=tls == "starttls")
        self.scheme = {"starttls": "smtp+starttls", "smtps": "smtps"}.get(tls or "", "smtp")
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = port or probe.getsockname()[1]
        self.controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port, **kwargs)
        with warnings.catch_warnings():  # AUTH without STARTTLS: on loopback, or inside SMTPS
            warnings.simplefilter("ignore")
            self.controller.start()

    def url(self, user: str | None = None, password: str | None = None) -> str:
        who = f"{user}:{password}@" if user else ""
        return f"{self.scheme}://{who}127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.controller.stop()
        self._dir.cleanup()
