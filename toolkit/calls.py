"""Calling another action provider as a given caller: in-process when this deployment serves it, else over HTTP.

::

    calls = Calls.from_context(ctx)                 # in a run callback or a hook
    target = calls.target("https://h/hello")        # a provider's base URL, or its /run URL
    status = target.run(ctx.identity, {"echo_string": "hi"}, request_id=f"{ctx.action_id}-1")
    status = target.wait(ctx.identity, status["action_id"], timeout=60)

A target is *local* when its URL's origin is one of ``APTK_PUBLIC_URL`` (or the ``origin`` given, the origin of
the request that asked for the call) and a route of this app serves it. A local call goes through the app's own
routes, with the identity attached to the request internally: no token, no HTTP round trip, and every check the
route makes (validation, ``runnable_by``, ``monitor_by``/``manage_by``, visibility) still applies, decided by the
identity's principals. The attachment is a WSGI environ key holding an object of a private class: nothing a
client sends over HTTP can set it (headers arrive as ``HTTP_*`` strings).

A remote call uses :class:`toolkit.client.ActionProviderClient` with a bearer token: with ``APTK_AUTH=globus``,
a dependent token of the caller's token for the target's scope; otherwise a client-credentials token of the
client configured for the URL in ``APTK_CALL_CLIENTS``.

Every failure is a :class:`CallError`: :class:`RunRefused` (a 4xx: permanent), :class:`Transient` (5xx, 429,
no answer: retry later) or :class:`CredentialsMissing` (no way to act as this identity there). No message holds
a token or a secret.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping
from urllib.parse import urlsplit

from .errors import ConfigurationError, ToolkitError
from .settings import number, setting

if TYPE_CHECKING:
    from flask import Flask

    from .auth import Identity
    from .client import ActionProviderClient
    from .lifecycle import Runtime

__all__ = [
    "CallClient",
    "CallError",
    "Calls",
    "CredentialsMissing",
    "INTERNAL_CALLER",
    "RunRefused",
    "Target",
    "Transient",
    "internal_caller",
    "load_call_clients",
]

logger = logging.getLogger("toolkit.calls")

INTERNAL_CALLER = "aptk.internal_caller"
"""The WSGI environ key an in-process call carries its identity in (never settable over HTTP)."""

WAIT_STATES = frozenset({"SUCCEEDED", "FAILED", "INACTIVE"})
"""The statuses :meth:`Target.wait` returns at: only someone's action changes an action in them."""
DEFAULT_POLL_MAX_SECONDS = 30.0
"""``APTK_CALL_POLL_MAX_SECONDS``: the longest pause between two status polls of a remote action."""
LOCAL_POLL_FIRST_SECONDS = 0.5
LOCAL_POLL_MAX_SECONDS = 5.0
"""The longest pause between two reads of a local action a wait makes in case another process changes it."""
REMOTE_TIMEOUT_SECONDS = 30.0
"""How long one HTTP call to a remote provider may take before it counts as :class:`Transient`."""
TOKEN_MARGIN_SECONDS = 60.0
"""A client-credentials token is fetched again this long (at most a tenth of its lifetime) before it expires."""


# --- errors -----------------------------------------------------------------------------------------------------

class CallError(ToolkitError):
    """A call to another provider did not give a status document."""


class RunRefused(CallError):
    """The provider answered with a 4xx: a bad body (400), forbidden (403), not found (404), conflict (409)...
    Permanent: the same call would be refused again."""

    def __init__(self, status: int, code: str, description: str) -> None:
        super().__init__(f"{status} {code}: {description}")
        self.status = status
        self.code = code
        self.description = description


class Transient(CallError):
    """No usable answer now (5xx, 503/429, connection refused, timeout); try again later, after ``retry_after``
    seconds when the provider said (else None)."""

    def __init__(self, description: str, retry_after: float | None = None) -> None:
        super().__init__(description)
        self.description = description
        self.retry_after = retry_after


class CredentialsMissing(CallError):
    """No way to act as this identity at ``url``: no token to get dependent tokens from (e.g. after a crash),
    no dependent token for ``scope``, no client configured in ``APTK_CALL_CLIENTS``, or a token the provider
    refused (401). A fresh token (a resume) or a configured client fixes it."""

    def __init__(self, url: str, scope: str | None, description: str) -> None:
        super().__init__(f"{url}: {description}")
        self.url = url
        self.scope = scope
        self.description = description


# --- the internal caller ----------------------------------------------------------------------------------------

class _Caller:
    """What :data:`INTERNAL_CALLER` holds; only this module makes one."""

    __slots__ = ("identity",)

    def __init__(self, identity: "Identity") -> None:
        self.identity = identity


def internal_caller(environ: Mapping[str, Any]) -> "Identity | None":
    """The identity an in-process call from this module attached to the request ``environ``, or None."""
    value = environ.get(INTERNAL_CALLER)
    return value.identity if type(value) is _Caller else None


# --- APTK_CALL_CLIENTS ------------------------------------------------------------------------------------------

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_CLIENT_KEYS = {"url", "token_url", "issuer", "client_id", "client_secret", "scope", "resource"}


@dataclass
class CallClient:
    """One entry of ``APTK_CALL_CLIENTS``: the OAuth client whose tokens call the providers under ``url``."""

    url: str
    client_id: str
    client_secret: str = field(repr=False)
    token_url: str | None = None
    issuer: str | None = None
    scopes: tuple[str, ...] = ()
    resource: str | None = None
    _token: str | None = field(default=None, repr=False)
    _renew_at: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def serves(self, url: str) -> bool:
        return (url.rstrip("/") + "/").startswith(self.url)

    def token(self, clock: Callable[[], float] = time.time) -> str:
        """A cached access token, fetched again shortly before it expires."""
        from .auth.client_credentials import AuthorizationServerUnreachable, TokenRequestError
        from .auth.client_credentials import client_credentials_token

        with self._lock:
            now = clock()
            if self._token is not None and now < self._renew_at:
                return self._token
            try:
                answer = client_credentials_token(
                    self.client_id, self.client_secret, issuer=self.issuer, token_url=self.token_url,
                    scopes=self.scopes, resource=self.resource, timeout=REMOTE_TIMEOUT_SECONDS,
                )
            except AuthorizationServerUnreachable as exc:
                raise Transient(f"no token for {self.url} (client {self.client_id}): {exc}") from None
            except TokenRequestError as exc:
                raise CredentialsMissing(self.url, " ".join(self.scopes) or None,
                                         f"no token for client {self.client_id}: {exc}") from None
            try:
                lifetime = float(answer.get("expires_in", 0))
            except (TypeError, ValueError):
                lifetime = 0.0
            self._token = answer["access_token"]
            self._renew_at = now + lifetime - min(TOKEN_MARGIN_SECONDS, lifetime / 10) if lifetime > 0 else now
            return self._token

    def forget(self) -> None:
        """Drop the cached token (the provider refused it)."""
        with self._lock:
            self._token = None


def load_call_clients(config: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> list[CallClient]:
    """The clients of the ``APTK_CALL_CLIENTS`` file (none when unset), most specific URL first.

    The file is a JSON list of objects with ``url`` (the prefix of the providers' URLs the client calls),
    ``token_url`` or ``issuer`` (whose metadata gives the token endpoint), ``client_id``, ``client_secret``, and
    optionally ``scope`` (a string of space-separated scopes, or a list) and ``resource`` (RFC 8707).
    ``${NAME}`` in ``client_id`` or ``client_secret`` is replaced with the environment variable ``NAME``.
    Anything wrong is a :class:`ConfigurationError` naming the entry (never a secret).
    """
    path = setting(config, "APTK_CALL_CLIENTS")
    if not path:
        return []
    environ = os.environ if environ is None else environ
    where = f"APTK_CALL_CLIENTS ({path})"
    try:
        with open(path, encoding="utf-8") as handle:
            entries = json.load(handle)
    except OSError as exc:
        raise ConfigurationError(f"{where} cannot be read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigurationError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(entries, list):
        raise ConfigurationError(f"{where} must hold a JSON list of clients, not a {type(entries).__name__}")
    clients: list[CallClient] = []
    for index, entry in enumerate(entries):
        clients.append(_call_client(entry, f"{where}, entry {index}", environ))
    seen: set[str] = set()
    for client in clients:
        if client.url in seen:
            raise ConfigurationError(f"{where}: two entries have the url {client.url!r}")
        seen.add(client.url)
    return sorted(clients, key=lambda c: len(c.url), reverse=True)


def _call_client(entry: Any, where: str, environ: Mapping[str, str]) -> CallClient:
    if not isinstance(entry, dict):
        raise ConfigurationError(f"{where} must be a JSON object, not {type(entry).__name__}")
    url = entry.get("url")
    if isinstance(url, str):
        where = f"{where} ({url})"
    unknown = sorted(set(entry) - _CLIENT_KEYS)
    if unknown:
        raise ConfigurationError(f"{where}: unknown key {unknown[0]!r}; the keys are {', '.join(sorted(_CLIENT_KEYS))}")
    if not isinstance(url, str) or not _http_url(url):
        raise ConfigurationError(f"{where}: 'url' must be an http(s) URL, the prefix of the providers it calls")
    for key in ("token_url", "issuer"):
        if key in entry and not (isinstance(entry[key], str) and _http_url(entry[key])):
            raise ConfigurationError(f"{where}: {key!r} must be an http(s) URL")
    if not entry.get("token_url") and not entry.get("issuer"):
        raise ConfigurationError(f"{where}: give 'token_url' or 'issuer' (where tokens come from)")
    values = {}
    for key in ("client_id", "client_secret"):
        value = entry.get(key)
        if not isinstance(value, str) or not value:
            raise ConfigurationError(f"{where}: {key!r} must be a non-empty string")
        values[key] = _expand(value, key, where, environ)
    scope = entry.get("scope", "")
    if isinstance(scope, str):
        scopes = tuple(scope.split())
    elif isinstance(scope, list) and all(isinstance(s, str) and s and " " not in s for s in scope):
        scopes = tuple(scope)
    else:
        raise ConfigurationError(f"{where}: 'scope' must be a string of space-separated scopes, or a list of them")
    resource = entry.get("resource")
    if resource is not None and not (isinstance(resource, str) and resource):
        raise ConfigurationError(f"{where}: 'resource' must be a non-empty string")
    return CallClient(
        url=_normal_url(url) + "/", client_id=values["client_id"], client_secret=values["client_secret"],
        token_url=entry.get("token_url") or None, issuer=entry.get("issuer") or None, scopes=scopes,
        resource=resource,
    )


def _expand(value: str, key: str, where: str, environ: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise ConfigurationError(f"{where}: {key!r} names the environment variable {name}, which is not set")
        return environ[name]

    expanded = _ENV_REFERENCE.sub(replace, value)
    if not expanded:
        raise ConfigurationError(f"{where}: {key!r} is empty once the environment variables are put in")
    return expanded


def _http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


# --- URLs -------------------------------------------------------------------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(scheme: str, host: str, port: int | None) -> str:
    scheme = scheme.lower()
    host = host.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{scheme}://{host}:{port}"


def _split(url: str) -> tuple[str, str]:
    """(origin, path without trailing slash) of an http(s) URL; ValueError otherwise."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http(s) URL")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r}: a provider's URL has no query or fragment")
    return _origin(parts.scheme, parts.hostname, parts.port), parts.path.rstrip("/")


def _normal_url(url: str) -> str:
    origin, path = _split(url)
    return origin + path


def _public_roots(values: Iterable[str]) -> list[tuple[str, str]]:
    """(origin, script root) of each deployment URL (``https://h`` or ``https://h/prefix``)."""
    roots = []
    for value in values:
        value = value.strip()
        if value:
            try:
                roots.append(_split(value))
            except ValueError as exc:
                raise ConfigurationError(f"APTK_PUBLIC_URL: {exc}") from None
    return roots


def _duration(value: Any) -> str:
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = int(value) if float(value).is_integer() else value
        return f"PT{seconds}S"
    return str(value)


def _timestamp(value: Any) -> str:
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return value.isoformat()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.datetime.fromtimestamp(value, datetime.timezone.utc).isoformat()
    return str(value)


# --- Calls and targets ------------------------------------------------------------------------------------------

class Calls:
    """Calls to other providers on behalf of this app (one per app: :meth:`for_app`)."""

    def __init__(self, app: "Flask", runtime: "Runtime") -> None:
        self.app = app
        self.runtime = runtime
        config = runtime.config
        self.public_roots = _public_roots(str(setting(config, "APTK_PUBLIC_URL", "") or "").split(","))
        self.poll_max_seconds = number(config, "APTK_CALL_POLL_MAX_SECONDS", DEFAULT_POLL_MAX_SECONDS, positive=True)
        self.clients = load_call_clients(config)
        self._scopes: dict[str, str] = {}

    @classmethod
    def for_app(cls, app: "Flask") -> "Calls":
        from .extension import get_toolkit

        calls = app.extensions.get("aptk.calls")
        if calls is None:
            calls = app.extensions.setdefault("aptk.calls", cls(app, get_toolkit(app).runtime))
        return calls

    @classmethod
    def from_context(cls, ctx: Any) -> "Calls":
        """The calls of the app a :class:`~toolkit.RunContext` or :class:`~toolkit.HookContext` belongs to."""
        runtime = getattr(ctx, "runtime", None) or getattr(ctx, "_runtime", None)
        app = getattr(runtime, "app", None)
        if app is None:
            raise ConfigurationError("this context belongs to no app set up with the toolkit")
        return cls.for_app(app)

    def target(self, url: str, origin: str | None = None, *, scope: str | None = None) -> "Target":
        """The provider at ``url`` (its base URL, or its ``/run`` URL). ``origin``: the origin (and script root)
        of the request the call is made for, which counts as this deployment's. ``scope``: the provider's
        scope, when its description cannot be read without a token (remote calls with dependent tokens)."""
        try:
            base_origin, path = _split(url)
        except ValueError as exc:
            raise RunRefused(400, "BadProviderURL", str(exc)) from None
        if path.endswith("/run"):
            path = path[: -len("/run")]
        roots = list(self.public_roots)
        if origin:
            try:
                roots.append(_split(origin))
            except ValueError as exc:
                raise RunRefused(400, "BadProviderURL", f"origin: {exc}") from None
        local = None
        for root_origin, script_root in roots:
            if root_origin == base_origin and (path == script_root or path.startswith(script_root + "/")):
                if self._serves(path[len(script_root):]):
                    local = (root_origin, script_root)
                    break
        return Target(self, base_origin + path, local, scope)

    def _serves(self, path: str) -> bool:
        """True if ``path + /run`` is the run route of a provider of this app."""
        return self._run_route(path) is not None

    def _run_route(self, path: str) -> tuple[Any, dict[str, Any]] | None:
        """The view of ``path + /run`` and its arguments, if it is the run route of a provider of this app."""
        from werkzeug.exceptions import HTTPException
        from werkzeug.routing import RequestRedirect

        adapter = self.app.url_map.bind("localhost")
        try:
            endpoint, arguments = adapter.match(path + "/run", method="POST")
        except (HTTPException, RequestRedirect):
            return None
        view: Any = self.app.view_functions.get(endpoint)
        return (view, dict(arguments)) if getattr(view, "aptk_operation", None) == "run" else None

    def _client_for(self, url: str) -> CallClient | None:
        return next((c for c in self.clients if c.serves(url)), None)


class Target:
    """One provider to call; see :meth:`Calls.target`."""

    def __init__(self, calls: Calls, url: str, local: tuple[str, str] | None, scope: str | None) -> None:
        self._calls = calls
        self.url = url
        """The provider's base URL, normalised, without a trailing slash."""
        self.local = local is not None
        """True when this app serves it: calls go through its routes in-process."""
        self._root = local
        self._scope = scope

    def __repr__(self) -> str:
        return f"Target({self.url!r}, local={self.local})"

    # --- the operations ---

    def check_body(self, body: Any, name: str = "body") -> None:
        """Refuse (``RunRefused`` 400, naming the field) a body this deployment's provider would refuse at ``/run``.

        Only the provider's input schema is applied, as its ``/run`` would; ``name`` is the body's name in the
        description. A remote target's schema is not checked (its ``/run`` decides).
        """
        if self._root is None:
            return
        from flask import has_app_context

        from .errors import ApiError

        route = self._calls._run_route(self.url[len(self._root[0]) + len(self._root[1]):])
        if route is None:
            raise RunRefused(404, "ProviderNotFound", f"{self.url} is no longer served here")
        view, arguments = route
        try:
            if has_app_context():
                provider = view.aptk_provider(arguments.get("aptk_variant"))
            else:
                with self._calls.app.app_context():
                    provider = view.aptk_provider(arguments.get("aptk_variant"))
            provider.validate_body(body, name)
        except ApiError as exc:
            raise RunRefused(exc.status, exc.code, exc.description) from None

    def introspect(self, identity: "Identity") -> dict[str, Any]:
        return self._call(identity, "GET", "", None, lambda c: c.introspect())

    def run(
        self, identity: "Identity", body: Any, *, request_id: str, label: str | None = None,
        monitor_by: Iterable[str] = (), manage_by: Iterable[str] = (), deadline: Any = None,
        release_after: Any = None,
    ) -> dict[str, Any]:
        """Start an action (the same ``request_id`` with the same arguments finds the same action); its status.

        ``deadline``: a datetime, epoch seconds or an ISO 8601 text; ``release_after``: seconds, a timedelta or
        an ISO 8601 duration.
        """
        document: dict[str, Any] = {"request_id": request_id, "body": body}
        if label is not None:
            document["label"] = label
        if monitor_by:
            document["monitor_by"] = list(monitor_by)
        if manage_by:
            document["manage_by"] = list(manage_by)
        if deadline is not None:
            document["deadline"] = _timestamp(deadline)
        if release_after is not None:
            document["release_after"] = _duration(release_after)
        return self._call(identity, "POST", "/run", document, lambda c: c._call("POST", "/run", json=document))

    def status(self, identity: "Identity", action_id: str) -> dict[str, Any]:
        return self._call(identity, "GET", f"/{action_id}/status", None, lambda c: c.status(action_id))

    def cancel(self, identity: "Identity", action_id: str) -> dict[str, Any]:
        return self._call(identity, "POST", f"/{action_id}/cancel", None, lambda c: c.cancel(action_id))

    def release(self, identity: "Identity", action_id: str) -> dict[str, Any]:
        return self._call(identity, "POST", f"/{action_id}/release", None, lambda c: c.release(action_id))

    def resume(self, identity: "Identity", action_id: str) -> dict[str, Any]:
        return self._call(identity, "POST", f"/{action_id}/resume", None, lambda c: c.resume(action_id))

    def wait(self, identity: "Identity", action_id: str, timeout: float) -> dict[str, Any]:
        """The latest status once the action is SUCCEEDED, FAILED or INACTIVE, or once ``timeout`` seconds passed.

        A local action wakes the wait at once when it changes in this process (and is read again every few
        seconds, in case another process changes it); a remote one is polled, the pause doubling from 1 s up to
        ``APTK_CALL_POLL_MAX_SECONDS``, never past ``timeout``.
        """
        end = time.monotonic() + max(0.0, timeout)
        if not self.local:
            interval = 1.0
            while True:
                document = self.status(identity, action_id)
                left = end - time.monotonic()
                if document.get("status") in WAIT_STATES or left <= 0:
                    return document
                time.sleep(min(interval, left))
                interval = min(interval * 2, self._calls.poll_max_seconds)
        interval = LOCAL_POLL_FIRST_SECONDS
        with self._calls.runtime.watch(action_id) as changed:
            while True:
                changed.clear()  # before reading: a change after the read still wakes the wait below
                document = self.status(identity, action_id)
                left = end - time.monotonic()
                if document.get("status") in WAIT_STATES or left <= 0:
                    return document
                if not changed.wait(min(interval, left)):
                    interval = min(interval * 2, LOCAL_POLL_MAX_SECONDS)

    # --- transport ---

    def _call(self, identity: "Identity", method: str, path: str, document: Any,
              remote: Callable[["ActionProviderClient"], Any]) -> dict[str, Any]:
        if self._root is not None:
            return self._local(identity, method, path, document)
        return self._remote(identity, remote)

    def _local(self, identity: "Identity", method: str, path: str, document: Any) -> dict[str, Any]:
        from werkzeug.test import EnvironBuilder, run_wsgi_app

        assert self._root is not None
        origin, script_root = self._root
        builder = EnvironBuilder(
            path=self.url[len(origin) + len(script_root):] + (path or "/"),
            base_url=origin + script_root + "/",
            method=method,
            json=document if document is not None else None,
        )
        try:
            environ = builder.get_environ()
        finally:
            builder.close()
        environ[INTERNAL_CALLER] = _Caller(identity)
        app_iter, status_line, headers = run_wsgi_app(self._calls.app, environ, buffered=True)
        try:
            raw = b"".join(app_iter)
        finally:
            close = getattr(app_iter, "close", None)
            if close is not None:
                close()
        status = int(status_line.split(" ", 1)[0])
        try:
            answer = json.loads(raw) if raw else None
        except ValueError:
            answer = None
        if status >= 400 or not isinstance(answer, dict):
            from .client import retry_after_seconds

            code = str(answer.get("code")) if isinstance(answer, dict) and "code" in answer else "NotAnActionProvider"
            description = str(answer.get("description", "")) if isinstance(answer, dict) else (
                f"{method} {self.url}{path} answered {status_line} without a status document")
            raise _error(self.url, status, code, description, retry_after_seconds(headers.get("Retry-After")))
        return answer

    def _remote(self, identity: "Identity", operation: Callable[["ActionProviderClient"], Any]) -> dict[str, Any]:
        from .client import ActionProviderClient, ClientError, ProviderUnreachable

        client_config = None if self._globus() else self._calls._client_for(self.url)
        for attempt in (1, 2):
            token = self._token(identity, client_config)
            client = ActionProviderClient(self.url, token, timeout=REMOTE_TIMEOUT_SECONDS)
            try:
                return operation(client)
            except ProviderUnreachable as exc:
                raise Transient(str(exc)) from None
            except ClientError as exc:
                if exc.status == 401 and client_config is not None and attempt == 1:
                    client_config.forget()  # revoked or expired early: one more try with a new token
                    continue
                raise _error(self.url, exc.status, exc.code, exc.description, exc.retry_after,
                             scope=self._scope) from None
            finally:
                client.session.close()
        raise AssertionError("unreachable")  # pragma: no cover

    def _globus(self) -> bool:
        return str(setting(self._calls.runtime.config, "APTK_AUTH", "dev")).lower() == "globus"

    def _token(self, identity: "Identity", client_config: CallClient | None) -> str:
        if not self._globus():
            if client_config is None:
                raise CredentialsMissing(self.url, self._scope,
                                         "no client is configured for this URL in APTK_CALL_CLIENTS")
            return client_config.token(self._calls.runtime.clock)
        if not identity.token:
            try:
                known: str | None = self._provider_scope()  # what a resume's token must carry
            except CallError:
                known = self._scope
            raise CredentialsMissing(self.url, known,
                                     "the caller's token is not at hand (a resume brings it again)")
        scope = self._provider_scope()
        from .errors import ServiceUnavailable, UnauthorizedRequest

        try:
            tokens = self._calls.runtime.verifier.dependent_tokens(identity.token)
        except UnauthorizedRequest as exc:
            raise CredentialsMissing(self.url, scope, exc.description) from None
        except ServiceUnavailable as exc:
            raise Transient(exc.description, getattr(exc, "retry_after", None)) from None
        for item in tokens.values():
            if scope in str(item.get("scope", "")).split() and item.get("access_token"):
                return str(item["access_token"])
        raise CredentialsMissing(
            self.url, scope, f"no dependent token carries the scope {scope}: this provider's scope must depend on it")

    def _provider_scope(self) -> str:
        """The target's scope: given, or from its description (read once, without a token)."""
        if self._scope:
            return self._scope
        known = self._calls._scopes.get(self.url)
        if known:
            return known
        from .client import ActionProviderClient, ClientError, ProviderUnreachable

        client = ActionProviderClient(self.url, timeout=REMOTE_TIMEOUT_SECONDS)
        try:
            description = client.introspect()
        except ProviderUnreachable as exc:
            raise Transient(str(exc)) from None
        except ClientError as exc:
            if exc.status in (401, 403):
                raise CredentialsMissing(self.url, None, "its description is not public: name its scope "
                                         "(calls.target(url, scope=...))") from None
            raise _error(self.url, exc.status, exc.code, exc.description, exc.retry_after) from None
        finally:
            client.session.close()
        scope = description.get("globus_auth_scope") if isinstance(description, dict) else None
        if not isinstance(scope, str) or not scope:
            raise RunRefused(502, "NotAnActionProvider", f"{self.url} names no globus_auth_scope")
        self._calls._scopes[self.url] = scope
        return scope


def _error(url: str, status: int, code: str, description: str, retry_after: float | None,
           scope: str | None = None) -> CallError:
    """The error for an answer with HTTP ``status``."""
    if status == 401:
        return CredentialsMissing(url, scope, f"the provider refused the credentials: {description}")
    if status == 429 or status >= 500:
        return Transient(f"{url} answered {status} {code}: {description}", retry_after)
    return RunRefused(status, code, description)
