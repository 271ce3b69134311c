"""Exceptions raised by the toolkit and by provider callbacks.

The tree::

    ToolkitError
    ├── ApiError                  an HTTP error with a stable wire ``code``; renders itself as JSON
    │   ├── BadActionRequest      400
    │   ├── UnauthorizedRequest   401 (carries ``WWW-Authenticate: Bearer``)
    │   ├── ForbiddenRequest      403
    │   │   └── InsufficientScope 403 for a token without the provider's scope (``WWW-Authenticate: Bearer``)
    │   ├── ActionNotFound        404
    │   ├── ActionConflict        409
    │   ├── RequestTooLarge       413
    │   └── ServiceUnavailable    503 (carries ``Retry-After``; also for a full disk, see storage_full)
    ├── ActionOutcome             raised by a run callback to end or pause the action
    │   ├── ActionFailed          -> FAILED with details {code, description}
    │   └── ActionInactive        -> INACTIVE until resumed
    ├── ActionCancelled           raised inside a callback whose action was cancelled, released or timed out
    └── ConfigurationError        a setup mistake; also a ValueError
"""

from __future__ import annotations

from typing import Any, ClassVar


class ToolkitError(Exception):
    """Root of every exception the toolkit raises on purpose."""


class ApiError(ToolkitError):
    """An error answered over HTTP as ``{"code": ..., "description": ...}``."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "InternalServerError"
    default_description: ClassVar[str] = "The server could not complete the request."
    summary: ClassVar[str] = "The server could not complete the request"
    """What the status means on this API, for the OpenAPI document's responses."""

    max_description: ClassVar[int] = 2000
    """A longer description is cut (values in it are cut shorter still, see :func:`toolkit.documents.shown`)."""

    def __init__(self, description: str | None = None, *, code: str | None = None) -> None:
        description = description or self.default_description
        if len(description) > self.max_description:
            description = f"{description[:self.max_description]}... ({len(description)} characters)"
        self.description = description
        if code is not None:
            self.code = code  # type: ignore[misc]
        super().__init__(self.description)

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "description": self.description}

    def headers(self) -> dict[str, str]:
        return {}


class BadActionRequest(ApiError):
    status = 400
    code = "BadActionRequest"
    default_description = "The request is malformed or invalid."
    summary = "Malformed or invalid request"


class UnauthorizedRequest(ApiError):
    status = 401
    code = "UnauthorizedRequest"
    summary = "Missing, invalid or expired token, or a token without this provider's scope"
    default_description = "A valid bearer token is required."

    def __init__(self, description: str | None = None, *, error: str | None = "invalid_token") -> None:
        super().__init__(description)
        self.error = error

    def headers(self) -> dict[str, str]:
        # RFC 6750 section 3: no error code (nor description) for a request that carried no bearer token.
        if self.error is None:
            return {"WWW-Authenticate": "Bearer"}
        description = _header_safe(self.description)
        return {"WWW-Authenticate": f'Bearer error="{self.error}", error_description="{description}"'}


def _header_safe(text: str) -> str:
    """Header values must be printable ASCII, whatever a token's header contained; no quote may end a value."""
    return "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in text)


class ForbiddenRequest(ApiError):
    status = 403
    code = "ForbiddenRequest"
    summary = "Authenticated, but not allowed"
    default_description = "You are not allowed to do this."


class InsufficientScope(ForbiddenRequest):
    """A valid token without the scope the provider needs (RFC 6750 section 3.1: 403 ``insufficient_scope``)."""

    def __init__(self, scope: str, description: str | None = None) -> None:
        super().__init__(description or f"The token does not carry the scope {scope!r}.")
        self.scope = scope

    def headers(self) -> dict[str, str]:
        return {
            "WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{_header_safe(self.scope)}", '
            f'error_description="{_header_safe(self.description)}"'
        }


class ActionNotFound(ApiError):
    status = 404
    code = "ActionNotFound"
    default_description = "No such action."
    summary = "Unknown or released action"


class ProviderNotFound(ApiError):
    """No variant of a provider at this key (see :meth:`toolkit.ActionProvider.variants`)."""

    status = 404
    code = "ProviderNotFound"
    default_description = "No such provider."
    summary = "Unknown provider"


class RouteNotFound(ApiError):
    """No route at this path under a provider's prefix (the web framework's own 404)."""

    status = 404
    code = "NotFound"
    default_description = "No such path."
    summary = "No such path"


class MethodNotAllowed(ApiError):
    """A route that does not take this method (the web framework's own 405)."""

    status = 405
    code = "MethodNotAllowed"
    default_description = "The method is not allowed for this path."
    summary = "The method is not allowed for this path"


class ActionConflict(ApiError):
    status = 409
    code = "ActionConflict"
    default_description = "The request conflicts with the state of the action."
    summary = "Conflict with the action's state or an earlier request"


class RequestTooLarge(ApiError):
    status = 413
    code = "RequestTooLarge"
    default_description = "The request body is too large."
    summary = "The request body is larger than the provider accepts"


class ServiceUnavailable(ApiError):
    status = 503
    code = "ServiceUnavailable"
    default_description = "A service this provider depends on is unavailable; try again later."
    summary = "A service the provider depends on (its database) is unavailable; retry after Retry-After seconds"

    def __init__(self, description: str | None = None, *, code: str | None = None, retry_after: int = 5) -> None:
        super().__init__(description, code=code)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


# The classes that answer the web framework's own errors (malformed request, unknown path, wrong method, body
# too large) under a provider's prefix: their code on the wire is the class's.
_FRAMEWORK_ERRORS: dict[int, type[ApiError]] = {
    cls.status: cls for cls in (BadActionRequest, RouteNotFound, MethodNotAllowed, RequestTooLarge)
}


def framework_error(status: int) -> type[ApiError] | None:
    """The error class whose code answers the web framework's own error of this HTTP status, if any."""
    return _FRAMEWORK_ERRORS.get(status)


STORAGE_FULL_RETRY_SECONDS = 60


def storage_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the database's storage is full: SQLite's SQLITE_FULL ("database
    or disk is full"), PostgreSQL's disk_full (SQLSTATE 53100), or ENOSPC / EDQUOT from the operating system."""
    import errno

    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if getattr(current, "sqlite_errorcode", None) == 13 or "database or disk is full" in str(current):
            return True  # SQLITE_FULL
        if getattr(current, "sqlstate", None) == "53100" or getattr(current, "pgcode", None) == "53100":
            return True  # PostgreSQL disk_full (psycopg 3: sqlstate; psycopg2: pgcode)
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        todo += [getattr(current, "orig", None), current.__cause__, current.__context__]
    return False


class ActionOutcome(ToolkitError):
    """Raised by a run callback to end the run in a state other than SUCCEEDED."""

    def __init__(self, code: str, description: str, **details: Any) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.extra = details

    def details(self) -> dict[str, Any]:
        return {**self.extra, "code": self.code, "description": self.description}


class ActionFailed(ActionOutcome):
    """End the action FAILED; ``details`` will carry ``code``, ``description`` and any keyword given."""


class ActionInactive(ActionOutcome):
    """Pause the action (INACTIVE) until someone calls ``/resume``; the callback then runs again."""

    def __init__(
        self,
        code: str,
        description: str,
        *,
        required_scope: str | None = None,
        resolution_url: str | None = None,
        **details: Any,
    ) -> None:
        if required_scope is not None:
            details["required_scope"] = required_scope
        if resolution_url is not None:
            details["resolution_url"] = resolution_url
        super().__init__(code, description, **details)


class ActionCancelled(ToolkitError):
    """The action ended (cancelled, released, past its deadline) while its callback still ran."""


class ConfigurationError(ToolkitError, ValueError):
    """A provider or server is set up wrongly; the message says how to fix it."""


DATABASE_RETRY_SECONDS = 2


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached now (connection refused or lost, server restarting):
    a request it ends changed nothing and may be retried."""
    try:
        import sqlalchemy.exc as sa_exc
    except ImportError:  # pragma: no cover - SQLAlchemy is a dependency
        return False
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, (sa_exc.OperationalError, sa_exc.InterfaceError)):
            return True
        # A driver's own error (PEP 249 names them alike), raised where the store talks to the driver directly.
        if type(current).__name__ in ("OperationalError", "InterfaceError") and isinstance(current, Exception):
            return True
        todo += [getattr(current, "orig", None), current.__cause__, current.__context__]
    return False
