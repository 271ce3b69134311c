"""The factory that turns an :class:`~toolkit.provider.ActionProvider` into a Flask blueprint.

Both route styles of the Action Provider API are served (``/run``, ``/{id}/status``, ... and ``/actions``,
``/actions/{id}``, ...). Every error leaves as ``{"code", "description"}`` JSON from one handler.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
import re
from typing import TYPE_CHECKING, Any, Callable

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed as WrongMethod

from .auth import DevTokenVerifier, Identity, bearer_token
from .authorization import require_visible
from .calls import internal_caller
from .documents import (
    ActionStatusSchema,
    LogEntrySchema,
    ProviderDescriptionSchema,
    Status,
    dump_status,
)
from . import logs, metrics
from .errors import ApiError, BadActionRequest, ForbiddenRequest, InsufficientScope, ProviderNotFound
from .errors import RequestTooLarge, UnauthorizedRequest
from .errors import (
    DATABASE_RETRY_SECONDS,
    STORAGE_FULL_RETRY_SECONDS,
    ServiceUnavailable,
    database_unavailable,
    framework_error,
    storage_full,
)
from .extension import ToolkitState, find_toolkit, get_toolkit
from .settings import setting
from .store import ROLES

if TYPE_CHECKING:
    from .provider import ActionProvider

logger = logging.getLogger("toolkit.blueprint")

_status_schema = ActionStatusSchema()
_log_entry_schema = LogEntrySchema()
_description_schema = ProviderDescriptionSchema()
MAX_LOG_LIMIT = 100
DEFAULT_ACTIONS_LIMIT = 50
MAX_ACTIONS_LIMIT = 200
"""``GET /actions`` pages: their size when the caller names none, and the largest a caller may ask for."""


API_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
"""On every answer of the toolkit's routes, errors included: nothing is cached, nothing is sniffed."""


def api_headers(response: Response) -> Response:
    for name, value in API_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def auth_failure_reason(error: ApiError) -> str | None:
    """The ``reason`` label of ``aptk_auth_failures_total`` for an error, if it is a refusal of credentials."""
    if isinstance(error, UnauthorizedRequest):
        if error.error is None:
            return "missing_token"
        return "expired_token" if "expired" in error.description else "invalid_token"
    if isinstance(error, InsufficientScope):
        return "insufficient_scope"
    if isinstance(error, ForbiddenRequest):
        return "forbidden"
    return None


def error_response(error: ApiError) -> Response:
    if error.status in (401, 403):
        state = find_toolkit(current_app)
        reason = auth_failure_reason(error)
        if reason is not None and state is not None and state.runtime.metrics:
            metrics.auth_failed(reason)
    response = jsonify(error.to_dict())
    response.status_code = error.status
    response.headers.update(error.headers())
    return response


def handle_http_exception(exc: HTTPException) -> Response | HTTPException:
    """Werkzeug's own errors (unknown route, wrong method, body too large) as wire JSON.

    Registered on the app, since routing errors never reach a blueprint; other paths of the app keep
    Flask's default pages.
    """
    state = find_toolkit(current_app)
    prefixes = state.prefixes if state is not None else ()
    if request.blueprint is None and not any(_under(request.path, p) for p in prefixes):
        return exc
    error_class = framework_error(exc.code or 500)
    code = error_class.code if error_class is not None else exc.name.replace(" ", "")
    response = jsonify({"code": code, "description": exc.description or exc.name})
    response.status_code = exc.code or 500
    if isinstance(exc, WrongMethod) and exc.valid_methods:
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return api_headers(response)


def _under(path: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/")
    return path == prefix or path.startswith(prefix + "/")


_storage_full_logged = [0.0]


def handle_unexpected(exc: Exception) -> Response | HTTPException:
    if isinstance(exc, HTTPException):
        return handle_http_exception(exc)
    if storage_full(exc):
        # The transaction was rolled back: nothing half-written. One line a minute, not a traceback per request.
        now = time.monotonic()
        if now - _storage_full_logged[0] > 60 or not _storage_full_logged[0]:
            _storage_full_logged[0] = now
            logger.error("the database's storage is full (%s); answering 503 until there is room",
                         type(exc).__name__)
        return error_response(ServiceUnavailable(
            "The provider's storage is full; nothing was changed. Try again later.",
            retry_after=STORAGE_FULL_RETRY_SECONDS,
        ))
    if database_unavailable(exc):
        # The transaction was rolled back (or never began); the pool reconnects (pre-ping) on a later request.
        logger.error("the database is unavailable serving %s %s: %s", request.method, request.path,
                     str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return error_response(ServiceUnavailable(
            "The provider's database is unavailable; try again shortly.",
            retry_after=DATABASE_RETRY_SECONDS,
        ))
    logger.exception("unexpected error serving %s %s", request.method, request.path)
    response = jsonify({"code": "InternalServerError", "description": "The server failed unexpectedly."})
    response.status_code = 500
    return response


def _read_body() -> bytes:
    """The request body, refused (413) past ``request.max_content_length``, whether it has a Content-Length or
    is streamed (chunked) by a server that ends the stream (``wsgi.input_terminated``)."""
    limit = request.max_content_length
    if limit is None:
        return request.get_data(cache=False)
    too_large = RequestTooLarge(f"The request body is larger than this provider accepts ({limit} bytes).")
    if request.content_length is not None:
        if request.content_length > limit:
            raise too_large
        return request.get_data(cache=False)
    if "wsgi.input_terminated" not in request.environ:
        return request.get_data(cache=False)  # Werkzeug reads nothing of an unbounded stream
    # Werkzeug's stream stops quietly at the limit; read one byte past it to tell a body that is too large.
    stream, chunks, size = request.environ["wsgi.input"], [], 0
    while size <= limit:
        chunk = stream.read(min(64 * 1024, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise too_large
    return b"".join(chunks)


def read_json_body(what: str = "an ActionRequest") -> Any:
    """The request's body as JSON, refused as the API's routes refuse it: 413 past the body size limit, 400 for
    no body (``what`` says what to send), invalid JSON, NaN or infinite numbers, lone surrogates, deep nesting.

    For routes a provider adds beside the API (:meth:`~toolkit.ActionProvider.add_blueprint`).
    """
    raw = _read_body()
    if not raw.strip():
        raise BadActionRequest(f"The request has no body; send {what} as JSON.")

    def reject_constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"{text} is too large a number")
        return value

    try:
        document = json.loads(raw, parse_constant=reject_constant, parse_float=finite)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadActionRequest(f"The request body is not valid JSON: {exc}.") from None
    except RecursionError:
        raise BadActionRequest("The request body is nested too deeply.") from None
    try:
        # Lone surrogates can be neither stored nor sent back.
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadActionRequest("The request body holds invalid Unicode (a lone surrogate).") from None
    except (RecursionError, ValueError):
        raise BadActionRequest("The request body is nested too deeply.") from None
    return document


def _choices(name: str, allowed: dict[str, Any], default: list[Any]) -> list[Any]:
    """Comma-separated, case-insensitive values of query parameter ``name``; ``default`` when absent."""
    raw_values = request.args.getlist(name)
    if not raw_values:
        return default
    chosen = []
    for value in (v for raw in raw_values for v in raw.split(",")):
        if value.lower() not in allowed:
            raise BadActionRequest(f"{name}: {value!r} is not one of {', '.join(allowed)}.")
        chosen.append(allowed[value.lower()])
    return chosen


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadActionRequest(f"{name}: {raw!r} is not an integer.") from None
    if not low <= value <= high:
        raise BadActionRequest(f"{name}: must be between {low} and {high}.")
    return value


_ACTION_ID = re.compile(r"[0-9a-f]{32}")
ACTIONS_MARKER = re.compile(r"-?0x[01]\.[0-9a-f]{1,13}p[+-][0-9]{1,3}:[0-9a-f]{32}")
"""A ``GET /actions`` marker: where the page ended, as the exact start_time (``float.hex``) and action_id."""


def _actions_marker(marker: str | None) -> tuple[float, str] | None:
    """The (start_time, action_id) a ``GET /actions`` marker stands for; 400 if no page could have sent it."""
    if marker is None:
        return None
    if not ACTIONS_MARKER.fullmatch(marker):
        raise BadActionRequest(f"marker: {marker[:80]!r} is not a marker this provider returned.")
    start, _, action_id = marker.partition(":")
    return float.fromhex(start), action_id


def make_blueprint(provider: "ActionProvider", *, url_prefix: str | None = None, name: str | None = None) -> Blueprint:
    bp = Blueprint(name or provider.name, __name__, url_prefix=url_prefix)

    # A provider with variants serves each at <prefix>/<key>/: the key is the first segment of every API route.
    variant_segment = "/<aptk_variant>" if provider.variant_resolver is not None else ""

    @bp.record
    def _register(state) -> None:
        toolkit_state = get_toolkit(state.app)
        toolkit_state.runtime.register(provider)
        prefixes = toolkit_state.prefixes
        if not prefixes:
            state.app.register_error_handler(HTTPException, handle_http_exception)
        prefixes.append(state.url_prefix or "/")

    def toolkit() -> ToolkitState:
        return get_toolkit(current_app)

    def served(key: str | None) -> "ActionProvider":
        """The provider a request is for: this one, or its variant at ``key`` (404 if there is none)."""
        if key is None:
            return provider
        variant = toolkit().runtime.variant(provider, key)
        if variant is None:
            raise ProviderNotFound(f"Nothing is served at {key[:128]!r} here.")
        return variant

    def authenticate(provider: "ActionProvider") -> Identity:
        """The caller; 401 (RFC 6750) without a valid token, 403 ``insufficient_scope`` without the scope."""
        caller = internal_caller(request.environ)
        if caller is not None:
            # An in-process call (toolkit.calls) acting for someone this deployment already authenticated: the
            # principals decide, as for a token, and the provider's scope is granted as a dependent token's is.
            return caller
        verifier = toolkit().verifier
        identity = verifier.verify(bearer_token(request.headers.get("Authorization")))
        scope = provider.globus_auth_scope
        if scope not in identity.scopes:
            how = "--identity <uuid> --data-dir <the server's>" if isinstance(verifier, DevTokenVerifier) else (
                "--client-id <id> --issuer <url>"
            )
            raise InsufficientScope(
                scope,
                f"The token does not carry this provider's scope {scope!r}; "
                f"get a token with it, e.g. `aptk token --scope {scope} {how}`.",
            )
        return identity

    def status_response(action, code: int = 200) -> Response:
        response = jsonify(dump_status(action))
        response.status_code = code
        return response

    bp.register_error_handler(ApiError, error_response)
    bp.register_error_handler(Exception, handle_unexpected)

    @bp.before_request
    def _start() -> None:
        state = toolkit()
        # The toolkit's limit holds on its routes whatever the app's MAX_CONTENT_LENGTH (the smaller one wins).
        app_limit = current_app.config.get("MAX_CONTENT_LENGTH")
        request.max_content_length = min(state.max_body_bytes, app_limit or state.max_body_bytes)
        state.runtime.start()

    bp.after_request(api_headers)

    def route(
        rules: list[tuple[str, str]], query: tuple[str, ...] = ()
    ) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
        """Serve ``view`` at ``rules``; a query parameter not in ``query`` is a 400 (a typo must not pass).

        ``view`` gets the provider the request is for (this one or a variant) first.
        """

        def decorate(view: Callable[..., Response]) -> Callable[..., Response]:
            @functools.wraps(view)
            def checked(**kwargs: Any) -> Response:
                unknown = sorted(set(request.args) - set(query))
                if unknown:
                    accepted = f"; this route takes {', '.join(query)}" if query else ""
                    raise BadActionRequest(f"Unknown query parameter {unknown[0]!r}{accepted}.")
                action_id = kwargs.get("action_id")
                # Log lines of this request name its action (an id of the right shape only: it is the caller's).
                with logs.action_context(action_id if action_id and _ACTION_ID.fullmatch(action_id) else None):
                    return view(served(kwargs.pop("aptk_variant", None)), **kwargs)

            checked.aptk_operation = view.__name__  # type: ignore[attr-defined]  # toolkit.calls finds routes by it
            checked.aptk_provider = served  # type: ignore[attr-defined]  # and the provider (variant key -> provider)
            for rule, method in rules:
                bp.add_url_rule(variant_segment + rule, view.__name__, checked, methods=[method], strict_slashes=False)
            return checked

        return decorate

    @route([("/", "GET")])
    def introspect(provider: "ActionProvider") -> Response:
        if set(provider.visible_to) != {"public"}:
            require_visible(provider, authenticate(provider))
        contact = setting(current_app.config, "APTK_ADMIN_CONTACT")
        return jsonify(_description_schema.dump(describe(provider, contact)))

    @route([("/openapi.json", "GET")])
    def openapi(provider: "ActionProvider") -> Response:
        from .openapi import openapi_document

        if set(provider.visible_to) != {"public"}:
            require_visible(provider, authenticate(provider))
        base = request.script_root + (bp.url_prefix or "")
        if provider.variant_key is not None:
            base += f"/{provider.variant_key}"
        return jsonify(openapi_document(provider, base))

    @route([("/run", "POST"), ("/actions", "POST")])
    def run(provider: "ActionProvider") -> Response:
        identity = authenticate(provider)
        action, created = toolkit().runtime.run(provider, identity, read_json_body())
        return status_response(action, 202 if created else 200)

    @route([("/actions", "GET")], query=("status", "roles", "limit", "marker"))
    def enumerate_actions(provider: "ActionProvider") -> Response:
        identity = authenticate(provider)
        statuses = _choices("status", {s.value.lower(): s for s in Status}, list(Status))
        roles = _choices("roles", {r: r for r in ROLES}, ["creator_id"])
        limit = _int_arg("limit", DEFAULT_ACTIONS_LIMIT, 1, MAX_ACTIONS_LIMIT)
        after = _actions_marker(request.args.get("marker"))
        actions, more = toolkit().runtime.enumerate(provider, identity, statuses, roles, after=after, limit=limit)
        page: dict[str, Any] = {
            "actions": [dump_status(a) for a in actions],
            "limit": limit,
            "has_next_page": more,
        }
        if more:
            last = actions[-1]
            page["marker"] = f"{float(last.start_time or 0.0).hex()}:{last.action_id}"
        return jsonify(page)

    @route([("/<action_id>/status", "GET"), ("/actions/<action_id>", "GET")])
    def status(provider: "ActionProvider", action_id: str) -> Response:
        return status_response(toolkit().runtime.status(provider, authenticate(provider), action_id))

    @route([("/<action_id>/cancel", "POST"), ("/actions/<action_id>/cancel", "POST")])
    def cancel(provider: "ActionProvider", action_id: str) -> Response:
        return status_response(toolkit().runtime.cancel(provider, authenticate(provider), action_id))

    @route([("/<action_id>/release", "POST"), ("/actions/<action_id>", "DELETE")])
    def release(provider: "ActionProvider", action_id: str) -> Response:
        return status_response(toolkit().runtime.release(provider, authenticate(provider), action_id))

    @route([("/<action_id>/resume", "POST"), ("/actions/<action_id>/resume", "POST")])
    def resume(provider: "ActionProvider", action_id: str) -> Response:
        return status_response(toolkit().runtime.resume(provider, authenticate(provider), action_id))

    @route([("/<action_id>/log", "GET"), ("/actions/<action_id>/log", "GET")], query=("limit", "marker"))
    def log(provider: "ActionProvider", action_id: str) -> Response:
        identity = authenticate(provider)
        limit = _int_arg("limit", 10, 1, MAX_LOG_LIMIT)
        marker = request.args.get("marker", "0")
        if not (marker.isascii() and marker.isdigit()) or len(marker) > 18:
            raise BadActionRequest(f"marker: {marker!r} is not a marker this provider returned.")
        entries, more = toolkit().runtime.log(provider, identity, action_id, int(marker), limit)
        page: dict[str, Any] = {
            "entries": [_log_entry_schema.dump(e) for e in entries],
            "limit": limit,
            "has_next_page": more,
        }
        if more:
            page["marker"] = str(entries[-1].entry_id)
        return jsonify(page)

    for extra in provider.extra_blueprints:
        bp.register_blueprint(extra)
    return bp


DEFAULT_ADMIN_CONTACT = "the operator of this deployment (APTK_ADMIN_CONTACT is not set)"


def describe(provider: "ActionProvider", default_contact: str | None = None) -> dict[str, Any]:
    """The provider description document (``GET /``).

    ``admin_contact`` is required by the API: the provider's own, else the deployment's ``default_contact``
    (``APTK_ADMIN_CONTACT``), else a text saying that nobody set one.
    """
    return {
        "types": ["Action"],
        "api_version": "1.0",
        "title": provider.title,
        "subtitle": provider.subtitle,
        "description": provider.description,
        "keywords": provider.keywords,
        "globus_auth_scope": provider.globus_auth_scope,
        "admin_contact": provider.admin_contact or default_contact or DEFAULT_ADMIN_CONTACT,
        "synchronous": provider.synchronous,
        "log_supported": provider.log_supported,
        "visible_to": provider.visible_to,
        "runnable_by": provider.runnable_by,
        "administered_by": provider.administered_by,
        "maximum_deadline": provider.maximum_deadline,
        "input_schema": provider.input_schema,
    }
