"""The flows API: deploy, list, show, update and delete flows (``/flows``, ``/flows/<flow_id>``), as Globus Flows
does, with the toolkit's tokens, errors and limits.

Who may do what: anyone with a valid token carrying the provider's scope deploys (and owns what they deploy); a
flow is shown to its ``visible_to``, ``runnable_by``, owner and ``administered_by``; only its owner and
``administered_by`` change or delete it. A flow the caller may not see is a 404, as an unknown one is.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, url_for

from toolkit import ActionConflict, ActionNotFound, ForbiddenRequest, Identity, get_toolkit
from toolkit.auth import bearer_token
from toolkit.authorization import allowed
from toolkit.blueprint import read_json_body
from toolkit.documents import Status
from toolkit.errors import BadActionRequest, InsufficientScope

from . import deployments
from .deployments import DeployedFlow

api = Blueprint("flows_api", __name__)

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def _provider() -> Any:
    from . import provider

    return provider


def _runtime() -> Any:
    return get_toolkit(current_app).runtime


def _engine() -> Any:
    return _runtime().store.engine


def authenticate() -> Identity:
    identity = get_toolkit(current_app).verifier.verify(bearer_token(request.headers.get("Authorization")))
    scope = _provider().globus_auth_scope
    if scope not in identity.scopes:
        raise InsufficientScope(scope, f"The token does not carry this provider's scope {scope!r}.")
    return identity


def _sync() -> None:
    from . import sync_directory

    runtime = _runtime()
    sync_directory(current_app.config, runtime.store, runtime.clock())


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def document(flow: DeployedFlow) -> dict[str, Any]:
    """What the API shows of a flow."""
    shown: dict[str, Any] = {"id": flow.id, "title": flow.title}
    for name in ("subtitle", "description"):
        if getattr(flow, name) is not None:
            shown[name] = getattr(flow, name)
    shown.update({
        "keywords": list(flow.keywords),
        "definition": flow.source,
        "input_schema": flow.input_schema,
        "owner": flow.owner,
        "visible_to": list(flow.visible_to),
        "runnable_by": list(flow.runnable_by),
        "administered_by": list(flow.administered_by),
        "created_at": _iso(flow.created),
        "updated_at": _iso(flow.updated),
        "version": flow.version,
        "flow_version": flow.version,
        "url": url_for(f"{request.blueprints[-1]}.introspect", aptk_variant=flow.id, _external=True),
        "globus_auth_scope": _provider().globus_auth_scope,
    })
    if flow.origin is not None:
        shown["deployed_from"] = flow.origin
    return shown


def may_see(flow: DeployedFlow, identity: Identity | None) -> bool:
    return allowed(identity, flow.viewers())


def may_administer(flow: DeployedFlow, identity: Identity) -> bool:
    return allowed(identity, flow.administrators())


def _visible(flow_id: str, identity: Identity) -> DeployedFlow:
    flow = deployments.get(_engine(), flow_id) if deployments.FLOW_ID.fullmatch(flow_id) else None
    if flow is None or not may_see(flow, identity):
        raise ActionNotFound(f"No flow {flow_id[:64]!r} (or you may not see it).", code="FlowNotFound")
    return flow


def _administered(flow_id: str, identity: Identity) -> DeployedFlow:
    flow = _visible(flow_id, identity)
    if flow.origin is not None:
        raise ActionConflict(f"Flow {flow.id!r} is deployed from the APTK_FLOWS_DIR file {flow.origin!r}; change "
                             "the file instead.")
    if not may_administer(flow, identity):
        raise ForbiddenRequest(f"Only the owner and administered_by of flow {flow.id!r} may change it.")
    return flow


def _json(status: int, value: Any) -> Response:
    response = jsonify(value)
    response.status_code = status
    return response


@api.route("/", methods=["POST"], strict_slashes=False)
def deploy() -> Response:
    identity = authenticate()
    body = read_json_body("a flow deployment")
    if not isinstance(body, dict):
        raise BadActionRequest("The request body must be a JSON object (a flow deployment).")
    flow_id = deployments.check_id(body["id"]) if "id" in body else str(uuid.uuid4())
    checked = deployments.parse({k: v for k, v in body.items() if k != "id"})
    _sync()
    flow = deployments.insert(_engine(), flow_id, checked, identity.id, _runtime().clock())
    response = _json(201, document(flow))
    response.headers["Location"] = document(flow)["url"]
    return response


@api.route("/", methods=["GET"], strict_slashes=False)
def list_flows() -> Response:
    identity = authenticate()
    unknown = sorted(set(request.args) - {"limit", "marker"})
    if unknown:
        raise BadActionRequest(f"Unknown query parameter {unknown[0]!r}; this route takes limit, marker.")
    raw_limit = request.args.get("limit", str(DEFAULT_LIMIT))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_LIMIT:
        raise BadActionRequest(f"limit: must be an integer between 1 and {MAX_LIMIT}.")
    limit = int(raw_limit)
    marker = request.args.get("marker")
    if marker is not None and not deployments.FLOW_ID.fullmatch(marker):
        raise BadActionRequest(f"marker: {marker[:80]!r} is not a marker this API returned.")
    _sync()
    shown: list[DeployedFlow] = []
    after = marker
    while len(shown) <= limit:
        batch = deployments.page(_engine(), after, 200)
        shown.extend(f for f in batch if may_see(f, identity))
        if len(batch) < 200:
            break
        after = batch[-1].id
    more = len(shown) > limit
    shown = shown[:limit]
    page: dict[str, Any] = {"flows": [document(f) for f in shown], "limit": limit, "has_next_page": more}
    if more:
        page["marker"] = shown[-1].id
    return _json(200, page)


@api.get("/<flow_id>")
def show(flow_id: str) -> Response:
    identity = authenticate()
    _sync()
    return _json(200, document(_visible(flow_id, identity)))


@api.put("/<flow_id>")
def update(flow_id: str) -> Response:
    identity = authenticate()
    body = read_json_body("a flow deployment")
    _sync()
    flow = _administered(flow_id, identity)
    if isinstance(body, dict) and "id" in body and body["id"] != flow.id:
        raise BadActionRequest(f"id: a flow's id cannot change (this is {flow.id!r}).")
    checked = deployments.parse({k: v for k, v in body.items() if k != "id"} if isinstance(body, dict) else body,
                                partial=flow)
    return _json(200, document(deployments.update(_engine(), flow, checked, _runtime().clock())))


@api.delete("/<flow_id>")
def delete(flow_id: str) -> Response:
    identity = authenticate()
    _sync()
    flow = _administered(flow_id, identity)
    runtime = _runtime()
    running = runtime.store.find(statuses={Status.ACTIVE, Status.INACTIVE}, providers=[f"flows/{flow.id}"], limit=1)
    if running:
        raise ActionConflict(f"Flow {flow.id!r} has runs that have not ended (action {running[0].action_id}); "
                             "cancel them first.")
    if not deployments.delete(_engine(), flow.id):
        raise ActionNotFound(f"No flow {flow_id!r}.", code="FlowNotFound")
    return _json(200, document(flow))
