"""The OpenAPI 3.1 document each provider serves at ``<prefix>/openapi.json``.

Generated from the marshmallow schemas of :mod:`toolkit.documents` (via apispec), with the provider's own input
schema embedded as the ``body`` of the ActionRequest.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, Iterable, cast

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin, OpenAPIConverter
from marshmallow import Schema

from .documents import (
    ActionRequestSchema,
    ActionStatusSchema,
    ErrorSchema,
    LogPageSchema,
    ProviderDescriptionSchema,
    Status,
)
from .errors import (
    ActionConflict,
    ActionNotFound,
    ApiError,
    BadActionRequest,
    ForbiddenRequest,
    RequestTooLarge,
    ServiceUnavailable,
    UnauthorizedRequest,
)
from .store import ROLES

if TYPE_CHECKING:
    from .provider import ActionProvider

OPENAPI_VERSION = "3.1.0"
_BODY = "#/components/schemas/ActionBody"


def _plugin() -> MarshmallowPlugin:
    # A resolver answering None inlines nested schemas (apispec's documented use; its annotation says str).
    plugin = MarshmallowPlugin(schema_name_resolver=cast(Callable[[type[Schema]], str], lambda schema: None))
    APISpec("schemas", "1", OPENAPI_VERSION, plugins=[plugin])
    return plugin


def _converter() -> OpenAPIConverter:
    converter = _plugin().converter
    assert converter is not None  # set up by APISpec
    return converter


def marshmallow_to_json_schema(schema: Schema) -> dict[str, Any]:
    """The JSON Schema of a marshmallow schema (nested schemas inlined), as shown by introspection."""
    return _converter().schema2jsonschema(schema)


def _rebase_refs(node: Any, base: str) -> Any:
    """Point ``#/...`` references inside an embedded schema at where the schema now lives."""
    if isinstance(node, dict):
        return {
            k: (base + v[1:] if k == "$ref" and isinstance(v, str) and v.startswith("#/") else _rebase_refs(v, base))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rebase_refs(v, base) for v in node]
    return node


@lru_cache(maxsize=1)
def _document_schemas() -> dict[str, dict[str, Any]]:
    convert = _converter().schema2jsonschema
    return {
        "ActionStatus": convert(ActionStatusSchema()),
        "ProviderDescription": convert(ProviderDescriptionSchema()),
        "LogPage": convert(LogPageSchema()),
        "Error": convert(ErrorSchema()),
        "ActionRequest": convert(ActionRequestSchema()),
    }


def _words(words: Iterable[str]) -> str:
    """A pattern for a comma-separated list of ``words``, any case (ECMA regexes have no (?i))."""
    alternatives = "|".join("".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in w) for w in words)
    return f"^({alternatives})(,({alternatives}))*$"


def _json(ref: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}


def _errors(*errors: type[ApiError]) -> dict[str, Any]:
    """The error responses of an operation, each described by the exception class that answers it."""
    return {str(e.status): {"description": e.summary, "content": _json("Error")} for e in errors}


def openapi_document(provider: "ActionProvider", prefix: str) -> dict[str, Any]:
    from .blueprint import ACTIONS_MARKER, DEFAULT_ACTIONS_LIMIT, MAX_ACTIONS_LIMIT

    schemas = copy.deepcopy(_document_schemas())
    body = {k: v for k, v in provider.input_schema.items() if k != "$schema"}
    schemas["ActionBody"] = _rebase_refs(body, _BODY)
    schemas["ActionRequest"]["properties"]["body"] = {"$ref": _BODY}
    schemas["ActionPage"] = {
        "type": "object",
        "required": ["actions", "limit", "has_next_page"],
        "properties": {
            "actions": {"type": "array", "items": {"$ref": "#/components/schemas/ActionStatus"}},
            "limit": {"type": "integer", "minimum": 1, "maximum": MAX_ACTIONS_LIMIT},
            "has_next_page": {"type": "boolean"},
            "marker": {"type": "string", "pattern": f"^{ACTIONS_MARKER.pattern}$",
                       "description": "Send it back as ?marker= for the next page; present when has_next_page."},
        },
        "additionalProperties": False,
    }

    spec = APISpec(
        title=f"{provider.title} action provider",
        version="1.0",
        openapi_version=OPENAPI_VERSION,
        info={"description": provider.description or provider.title},
        servers=[{"url": prefix or "/"}],
    )
    for name, schema in schemas.items():
        spec.components.schema(name, schema)
    spec.components.security_scheme(
        "bearer", {"type": "http", "scheme": "bearer", "description": f"Scope: {provider.globus_auth_scope}"}
    )

    action_id = {"name": "action_id", "in": "path", "required": True, "schema": {"type": "string"}}
    status_ok = {"description": "The action's status", "content": _json("ActionStatus")}
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    public = [] if set(provider.visible_to) == {"public"} else secured

    def op(summary: str, responses: dict[str, Any], *, path_id: bool = True, security=secured,
           parameters=(), **extra) -> dict:
        operation = {"summary": summary, "responses": responses, "security": security, **extra}
        params = ([action_id] if path_id else []) + list(parameters)
        if params:
            operation["parameters"] = params
        return operation

    run = op(
        "Start an action",
        {
            "202": {"description": "A new action", "content": _json("ActionStatus")},
            "200": {"description": "The action of an earlier request with this request_id", "content": _json("ActionStatus")},
            **_errors(BadActionRequest, UnauthorizedRequest, ForbiddenRequest, ActionConflict, RequestTooLarge,
                      ServiceUnavailable),
        },
        path_id=False,
        requestBody={"required": True, "content": _json("ActionRequest")},
    )
    reading = (BadActionRequest, UnauthorizedRequest, ForbiddenRequest, ActionNotFound, ServiceUnavailable)
    changing = (*reading, ActionConflict, RequestTooLarge)
    status = op("An action's status", {"200": status_ok, **_errors(*reading)})
    cancel = op("Cancel an action", {"200": status_ok, **_errors(*changing)})
    release = op("Release a completed action", {"200": status_ok, **_errors(*changing)})
    resume = op("Resume an INACTIVE action", {"200": status_ok, **_errors(*changing)})
    log_params = [
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
        {"name": "marker", "in": "query", "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"}},
    ]
    log = op("An action's log", {"200": {"description": "A page of log entries", "content": _json("LogPage")},
                                 **_errors(*reading)}, parameters=log_params)
    enumerate_ = op(
        "The caller's actions",
        {"200": {"description": "A page of matching actions, oldest first", "content": _json("ActionPage")},
         **_errors(BadActionRequest, UnauthorizedRequest, ServiceUnavailable)},
        path_id=False,
        parameters=[
            {"name": "limit", "in": "query",
             "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ACTIONS_LIMIT},
             "description": f"Actions per page; default {DEFAULT_ACTIONS_LIMIT}."},
            {"name": "marker", "in": "query", "schema": {"type": "string", "pattern": f"^{ACTIONS_MARKER.pattern}$"},
             "description": "The marker of the previous page: the next page starts after it."},
            {"name": "status", "in": "query", "schema": {"type": "string", "pattern": _words([s.value for s in Status])},
             "description": "Comma-separated statuses (any case); default: all."},
            {"name": "roles", "in": "query", "schema": {"type": "string", "pattern": _words(ROLES)},
             "description": "Comma-separated roles (any case); default: creator_id."},
        ],
    )
    introspect = op(
        "Describe this provider",
        {"200": {"description": "The provider description", "content": _json("ProviderDescription")},
         **({} if public == [] else _errors(UnauthorizedRequest, ForbiddenRequest))},
        path_id=False,
        security=public,
    )

    paths = {
        "/": {"get": introspect},
        "/run": {"post": run},
        "/actions": {"post": run, "get": enumerate_},
        "/{action_id}/status": {"get": status},
        "/{action_id}/cancel": {"post": cancel},
        "/{action_id}/release": {"post": release},
        "/{action_id}/resume": {"post": resume},
        "/{action_id}/log": {"get": log},
        "/actions/{action_id}": {"get": status, "delete": release},
        "/actions/{action_id}/cancel": {"post": cancel},
        "/actions/{action_id}/resume": {"post": resume},
        "/actions/{action_id}/log": {"get": log},
    }
    for path, operations in paths.items():
        spec.path(path=path, operations=copy.deepcopy(operations))
    return spec.to_dict()

