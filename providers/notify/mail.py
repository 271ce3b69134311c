"""Building and sending the notification email: settings, validation, rendering, SMTP with retries."""

from __future__ import annotations

import dataclasses
import html
import html.parser
import json
import smtplib
import socket
import ssl
import string
import urllib.parse
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, getaddresses, make_msgid
from typing import Any, Callable, Mapping

from toolkit import ActionFailed, BadActionRequest, RunContext
from toolkit.settings import number, setting

from . import addresses
from .addresses import Address as IPAddress
from .addresses import Transient

SETTINGS = (
    "APTK_SMTP_URL", "APTK_SMTP_USERNAME", "APTK_SMTP_PASSWORD", "APTK_SMTP_CA_FILE", "APTK_SMTP_TIMEOUT",
    "APTK_NOTIFY_SENDER", "APTK_NOTIFY_SENDER_DOMAINS", "APTK_NOTIFY_MAX_BODY_BYTES",
    "APTK_NOTIFY_TEMPLATES_DIR", "APTK_NOTIFY_RATE_LIMIT", "APTK_NOTIFY_RATE_WINDOW",
    "APTK_NOTIFY_WEBHOOK_SECRET", "APTK_NOTIFY_WEBHOOK_TIMEOUT", "APTK_NOTIFY_WEBHOOK_CA_FILE",
    "APTK_NOTIFY_WEBHOOK_ALLOW_LOOPBACK", "APTK_NOTIFY_WEBHOOK_ALLOW_NETWORKS",
    "APTK_NOTIFY_SMTP_ALLOW_LOOPBACK", "APTK_NOTIFY_SMTP_ALLOW_NETWORKS",
)
MAX_RECIPIENTS = 100
DEFAULT_MAX_BODY = 256 * 1024
DEFAULT_TIMEOUT = 30.0
HOSTNAME_FIELD = "send_credentials[0].credential_value.hostname"
SCHEMES = {"smtp": "plain", "smtps": "tls", "smtp+starttls": "starttls"}
_FORBIDDEN = ("\r", "\n", "\0")


@dataclasses.dataclass
class Server:
    host: str
    port: int
    security: str  # plain | tls | starttls | opportunistic
    username: str | None
    password: str | None = dataclasses.field(repr=False)
    ca_file: str | None
    timeout: float
    policy: addresses.Policy | None = None
    """Where a caller's server may be (None: the deployment's own, trusted)."""


@dataclasses.dataclass
class Prepared:
    message: EmailMessage
    sender: str
    recipients: list[str]
    server: Server


def _setting(config: Mapping[str, Any], name: str) -> str | None:
    """A setting from the app's configuration, else from the environment (same name); None when unset or empty."""
    value = setting(config, name)
    return None if value is None else str(value)


def _no_control(field: str, value: str) -> None:
    for char in _FORBIDDEN:
        if char in value:
            raise BadActionRequest(f"{field}: must not contain {char!r} (header injection refused).")


def _address(field: str, value: str) -> Address:
    """One mailbox, 'addr@example.org' or 'Name <addr@example.org>', syntax-checked."""
    _no_control(field, value)
    if len(value) > 320:
        raise BadActionRequest(f"{field}: an email address has at most 320 characters, not {len(value)}.")
    parsed = getaddresses([value], strict=True) if _strict_getaddresses() else getaddresses([value])
    if len(parsed) != 1 or not parsed[0][1]:
        raise BadActionRequest(f"{field}: {value!r} is not one email address.")
    name, addr = parsed[0]
    try:
        address = Address(display_name=name, addr_spec=addr)
    except (ValueError, IndexError) as exc:
        raise BadActionRequest(f"{field}: {value!r} is not a valid email address ({exc}).") from None
    if not address.username or "." not in address.domain or address.domain.startswith(".") or " " in addr:
        raise BadActionRequest(f"{field}: {value!r} is not a valid email address (user@domain.tld).")
    return address


def _strict_getaddresses() -> bool:
    import inspect

    return "strict" in inspect.signature(getaddresses).parameters


def server_from_url(url: str, config: Mapping[str, Any]) -> Server:
    """The deployment's server from ``APTK_SMTP_URL``; credentials in the URL or in APTK_SMTP_USERNAME/PASSWORD."""
    parts = urllib.parse.urlsplit(url)
    security = SCHEMES.get(parts.scheme)
    if security is None or not parts.hostname:
        raise BadActionRequest(
            "APTK_SMTP_URL: this server's mail setting is not smtp://, smtps:// or smtp+starttls://host[:port]."
        )
    try:
        port = parts.port or (465 if security == "tls" else 587 if security == "starttls" else 25)
    except ValueError:
        raise BadActionRequest("APTK_SMTP_URL: this server's mail setting has an invalid port.") from None
    username = urllib.parse.unquote(parts.username) if parts.username else _setting(config, "APTK_SMTP_USERNAME")
    password = urllib.parse.unquote(parts.password) if parts.password else _setting(config, "APTK_SMTP_PASSWORD")
    return Server(parts.hostname, port, security, username, password, _setting(config, "APTK_SMTP_CA_FILE"),
                  _timeout(config))


def _timeout(config: Mapping[str, Any]) -> float:
    return number(config, "APTK_SMTP_TIMEOUT", DEFAULT_TIMEOUT, positive=True)


def max_body(config: Mapping[str, Any]) -> int:
    return number(config, "APTK_NOTIFY_MAX_BODY_BYTES", DEFAULT_MAX_BODY, kind=int, positive=True)


def caller_policy(config: Mapping[str, Any]) -> addresses.Policy:
    """Where a caller's own mail server may be: public addresses, unless the deployment allows more."""
    return addresses.policy(config, "mail", "APTK_NOTIFY_SMTP_ALLOW_LOOPBACK", "APTK_NOTIFY_SMTP_ALLOW_NETWORKS")


def _caller_server(credentials: list[dict[str, Any]], config: Mapping[str, Any]) -> Server:
    value = credentials[0]["credential_value"]
    host = value["hostname"]
    _no_control(HOSTNAME_FIELD, host)
    allowed = caller_policy(config)
    literal = addresses.literal(host.strip("[]"))
    if literal is not None:  # a name's addresses are checked when sending
        addresses.check(literal, allowed, HOSTNAME_FIELD)
        host = str(literal)
    port = int(value.get("port") or 587)
    return Server(host, port, "tls" if port == 465 else "opportunistic", value.get("username") or None,
                  value.get("password") or None, _setting(config, "APTK_SMTP_CA_FILE"), _timeout(config),
                  allowed)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value) if isinstance(value, (dict, list, bool)) or value is None else str(value)


def render(template: str, variables: Mapping[str, Any], mimetype: str, raw: set[str]) -> str:
    values = {name: _text(value) for name, value in variables.items()}
    if mimetype == "text/html":
        values = {name: value if name in raw else html.escape(value) for name, value in values.items()}
    try:
        return string.Template(template).substitute(values)
    except KeyError as exc:
        raise BadActionRequest(
            f"body_template: names the variable ${exc.args[0]}, which body_variables does not give."
        ) from None
    except ValueError as exc:
        raise BadActionRequest(f"body_template: {exc} (write $$ for a literal $).") from None


class _TextOf(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in ("br", "p", "div", "li", "tr", "h1", "h2", "h3"):
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def text_alternative(markup: str) -> str:
    parser = _TextOf()
    parser.feed(markup)
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.parts).splitlines()]
    return "\n".join(line for line in lines if line).strip() + "\n"


def render_body(body: Mapping[str, Any], config: Mapping[str, Any]) -> tuple[str, str | None]:
    """The body as (text, html or None): from ``body_template`` ($-variables) or a named ``template`` (Jinja)."""
    variables = body.get("body_variables") or {}
    raw = set(body.get("raw_variables") or [])
    name = body.get("template")
    if name is not None:
        from . import templates

        text, markup = templates.render(name, variables, raw, body.get("subject", ""), config)
    else:
        mimetype = body.get("body_mimetype", "text/plain")
        content = render(body["body_template"], variables, mimetype, raw)
        text, markup = (None, content) if mimetype == "text/html" else (content, None)
    if text is None:
        text = text_alternative(markup or "")
    limit = max_body(config)
    size = len(text.encode("utf-8")) + (len(markup.encode("utf-8")) if markup is not None else 0)
    if size > limit:
        field = "template" if name is not None else "body_template"
        raise BadActionRequest(f"{field}: the rendered body is {size} bytes, over this server's {limit}.")
    return text, markup


def prepare(body: Mapping[str, Any], config: Mapping[str, Any], message_id: str | None = None) -> Prepared:
    """The message and where it goes; a 400 (BadActionRequest) naming the field for anything wrong.

    ``message_id`` (the local part) makes the Message-ID stable, so that every attempt for one action sends the
    same message; by default a fresh one.
    """
    destination = body["destination"]
    destinations = [destination] if isinstance(destination, str) else list(destination)
    if len(destinations) > MAX_RECIPIENTS:
        raise BadActionRequest(f"destination: at most {MAX_RECIPIENTS} recipients per action.")
    recipients = [_address(f"destination[{i}]" if not isinstance(destination, str) else "destination", d)
                  for i, d in enumerate(destinations)]
    subject = body.get("subject", "")
    _no_control("subject", subject)

    credentials = body.get("send_credentials") or []
    if credentials:
        server = _caller_server(credentials, config)
    else:
        url = _setting(config, "APTK_SMTP_URL")
        if url is None:
            raise BadActionRequest(
                "send_credentials: this server has no mail server of its own (APTK_SMTP_URL); name one."
            )
        server = server_from_url(url, config)

    default_sender = _setting(config, "APTK_NOTIFY_SENDER")
    sender_text = body.get("sender") or default_sender
    if not sender_text:
        raise BadActionRequest("sender: is required (this server has no default sender, APTK_NOTIFY_SENDER).")
    sender = _address("sender", sender_text)
    if not credentials:  # the deployment's server: only the domains it allows
        domains = _setting(config, "APTK_NOTIFY_SENDER_DOMAINS")
        allowed = ({d.strip().lower() for d in domains.split(",") if d.strip()} if domains
                   else {_address("APTK_NOTIFY_SENDER", default_sender).domain.lower()} if default_sender else None)
        if allowed is not None and sender.domain.lower() not in allowed:
            raise BadActionRequest(
                f"sender: this server sends only from {', '.join(sorted(allowed))}, not {sender.domain}."
            )

    text, markup = render_body(body, config)
    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = sender
    message["To"] = recipients
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = f"<{message_id}@{sender.domain}>" if message_id else make_msgid(domain=sender.domain)
    if str(body.get("notification_priority", "")).lower() == "high":
        message["Importance"] = "high"
    message.set_content(text)
    if markup is not None:
        message.add_alternative(markup, subtype="html")
    return Prepared(message, sender.addr_spec, [r.addr_spec for r in recipients], server)


class _PinnedSMTP(smtplib.SMTP):
    """SMTP to checked addresses only; the server's name still goes to STARTTLS's certificate check."""

    def __init__(self, checked: list[IPAddress], host: str, port: int, **options: Any) -> None:
        self._checked = checked
        super().__init__(host, port, **options)

    def _get_socket(self, host: str, port: int, timeout: float | None) -> socket.socket:
        return addresses.connect(self._checked, port, timeout)


class _PinnedSMTPS(smtplib.SMTP_SSL):
    """SMTPS to checked addresses only, TLS checking the certificate against the server's name."""

    def __init__(self, checked: list[IPAddress], host: str, port: int, **options: Any) -> None:
        self._checked = checked
        super().__init__(host, port, **options)

    def _get_socket(self, host: str, port: int, timeout: float | None) -> socket.socket:
        return self.context.wrap_socket(addresses.connect(self._checked, port, timeout), server_hostname=self._host)  # type: ignore[attr-defined]


def _connect(server: Server) -> smtplib.SMTP:
    """A connection to ``server``; a caller's server only at an address its policy allows, checked now."""
    if server.policy is None:
        if server.security == "tls":
            return smtplib.SMTP_SSL(server.host, server.port, timeout=server.timeout, context=_context(server))
        return smtplib.SMTP(server.host, server.port, timeout=server.timeout)
    try:
        checked = addresses.resolve(server.host, server.port, server.policy, HOSTNAME_FIELD)
    except Transient as exc:
        raise Transient(exc.code, f"The mail server {exc.description}") from None
    if server.security == "tls":
        return _PinnedSMTPS(checked, server.host, server.port, timeout=server.timeout, context=_context(server))
    return _PinnedSMTP(checked, server.host, server.port, timeout=server.timeout)


def _context(server: Server) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=server.ca_file)


def _reply(exc: smtplib.SMTPResponseException) -> str:
    error = exc.smtp_error
    return f"{exc.smtp_code} {error.decode(errors='replace') if isinstance(error, bytes) else error}"


def _envelope(client: smtplib.SMTP, prepared: Prepared) -> tuple[bytes, dict[str, tuple[int, bytes]]]:
    """MAIL FROM and RCPT TO; the message as it will go after DATA, and the recipients refused."""
    international = not all(a.isascii() for a in (prepared.sender, *prepared.recipients))
    policy = SMTP_POLICY.clone(utf8=True) if international else SMTP_POLICY
    payload = prepared.message.as_bytes(policy=policy)
    options: list[str] = []
    if international:
        if not client.has_extn("smtputf8"):
            raise ActionFailed("SMTPUTF8Unsupported",
                               "The mail server cannot take non-ASCII addresses (no SMTPUTF8).")
        options += ["SMTPUTF8", "BODY=8BITMIME"]
    if client.does_esmtp and client.has_extn("size"):
        options.append(f"SIZE={len(payload)}")
    code, answer = client.mail(prepared.sender, options)
    if code != 250:
        raise smtplib.SMTPSenderRefused(code, answer, prepared.sender)
    refused: dict[str, tuple[int, bytes]] = {}
    for recipient in prepared.recipients:
        code, answer = client.rcpt(recipient)
        if code not in (250, 251):
            refused[recipient] = (code, answer)
    if len(refused) == len(prepared.recipients):
        raise smtplib.SMTPRecipientsRefused(refused)
    return payload, refused


def send_once(prepared: Prepared, before_data: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """One attempt over one connection. ``before_data`` runs once the server took the envelope, right before
    the message itself goes (after this point a crash leaves it unknown whether the server took the mail)."""
    server = prepared.server
    try:
        client = _connect(server)
    except ConnectionRefusedError:
        raise Transient("ConnectionRefused", f"The mail server {server.host}:{server.port} refused the connection.") from None
    except (socket.timeout, TimeoutError):
        raise Transient("Timeout", f"The mail server {server.host}:{server.port} did not answer in time.") from None
    except ssl.SSLError as exc:
        raise ActionFailed("TLSError", f"TLS with {server.host}:{server.port} failed: {exc.reason}.") from None
    except smtplib.SMTPResponseException as exc:  # the greeting: 421 or 554
        if 400 <= exc.smtp_code < 500:
            raise Transient("TemporaryFailure", f"The mail server answered {_reply(exc)}.") from None
        raise ActionFailed("ConnectionRejected", f"The mail server answered {_reply(exc)}.") from None
    except OSError as exc:
        raise Transient("ConnectionFailed", f"Could not reach {server.host}:{server.port}: {exc.strerror or exc}.") from None
    try:
        with client:
            client.ehlo()
            if server.security == "starttls" or (server.security == "opportunistic" and client.has_extn("starttls")):
                client.starttls(context=_context(server))
                client.ehlo()
            if server.username:
                client.login(server.username, server.password or "")
            payload, refused = _envelope(client, prepared)
            before_data()
            code, answer = client.data(payload)
            if code != 250:
                raise smtplib.SMTPDataError(code, answer)
    except smtplib.SMTPAuthenticationError as exc:
        raise ActionFailed("AuthenticationFailed",
                           f"The mail server refused the login ({exc.smtp_code}).") from None
    except smtplib.SMTPNotSupportedError:
        raise ActionFailed("AuthenticationUnsupported", "The mail server offers no login (AUTH).") from None
    except smtplib.SMTPRecipientsRefused as exc:
        codes = {code for code, _ in exc.recipients.values()}
        if all(400 <= c < 500 for c in codes):
            raise Transient("RecipientsDeferred", f"The mail server deferred every recipient ({sorted(codes)}).") from None
        raise ActionFailed("RecipientsRefused", "The mail server refused every recipient.",
                           refused={a: f"{c} {m.decode(errors='replace')}"
                                    for a, (c, m) in exc.recipients.items()}) from None
    except smtplib.SMTPResponseException as exc:
        if 400 <= exc.smtp_code < 500:
            raise Transient("TemporaryFailure", f"The mail server answered {_reply(exc)}.") from None
        refusal = "SenderRefused" if isinstance(exc, smtplib.SMTPSenderRefused) else "MessageRefused"
        raise ActionFailed(refusal, f"The mail server answered {_reply(exc)}.") from None
    except ssl.SSLError as exc:
        raise ActionFailed("TLSError", f"TLS with {server.host}:{server.port} failed: {exc.reason}.") from None
    except (socket.timeout, TimeoutError):
        raise Transient("Timeout", f"The mail server {server.host}:{server.port} stopped answering.") from None
    except (smtplib.SMTPServerDisconnected, OSError) as exc:
        raise Transient("Disconnected", f"The connection to {server.host}:{server.port} broke: {exc}.") from None
    accepted = [r for r in prepared.recipients if r not in refused]
    return {"message_id": prepared.message["Message-ID"], "accepted": accepted,
            "refused": {a: f"{c} {m.decode(errors='replace')}" for a, (c, m) in refused.items()}}


def deliver(attempt_once: Callable[[], dict[str, Any]], ctx: RunContext, what: str) -> dict[str, Any]:
    """Call ``attempt_once`` until it succeeds, retrying :class:`Transient` failures with backoff (1 s doubling
    to 60 s) until the action's deadline."""
    attempt = 0
    while True:
        ctx.check()
        try:
            result = attempt_once()
        except Transient as exc:
            attempt += 1
            wait = min(60.0, 2.0 ** (attempt - 1))
            if ctx.deadline is not None and ctx.clock() + wait >= ctx.deadline:
                raise ActionFailed(exc.code, f"{exc.description} Gave up at the deadline after {attempt} "
                                             "attempts.", attempts=attempt) from None
            ctx.log(f"Attempt {attempt}: {exc.description} Retrying in {wait:.0f} s.")
            ctx.progress(details={"code": exc.code, "description": exc.description, "attempts": attempt},
                         display_status="retrying")
            ctx.sleep(wait)
            continue
        ctx.log(f"{what} (attempt {attempt + 1}).")
        return {**result, "attempts": attempt + 1}
