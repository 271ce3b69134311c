"""Pages for people: start a flow from a form generated from its input schema, and follow a run state by state.

``GET /flows/<flow_id>/start`` shows the form (the forms provider's fields and templates), ``POST`` starts a run
as the signed-in person and sends them to ``/flows/<flow_id>/runs/<action_id>``, which lists the run's states
(``details.states``, as the engine reports them) and reloads itself while the run goes on. Signing in
(``/flows/<flow_id>/sign-in``) takes an access token for this server once, checks it as the API would, and keeps
the person's identity in a signed cookie (the forms provider's signer); the token itself is not kept. The pages
run no scripts and carry the forms pages' Content-Security-Policy.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import time
import uuid
from typing import Any

from flask import Blueprint, Response, current_app, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from providers.forms import fields
from providers.forms.pages import PAGE_HEADERS, TEMPLATES
from providers.forms.signing import Signer
from toolkit import ApiError, Identity, get_toolkit
from toolkit.authorization import allowed
from toolkit.documents import Status

from . import deployments

pages = Blueprint("flows_pages", __name__, template_folder=str(TEMPLATES))

SESSION_COOKIE = "aptk_flows_session"
SESSION_SECONDS = 8 * 3600
REFRESH_SECONDS = 2


@pages.after_request
def _page_headers(response: Response) -> Response:
    for name, value in PAGE_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


@pages.errorhandler(Exception)
def _failure(exc: Exception) -> Response | tuple[str, int]:
    if isinstance(exc, HTTPException) and exc.code is not None and exc.code < 500:
        return _message(exc.name, exc.description or exc.name, exc.code)
    if isinstance(exc, ApiError) and exc.status < 500:
        return _message("This could not be done", exc.description, exc.status)
    if isinstance(exc, ApiError):
        return _message("Try again later", exc.description, exc.status)
    current_app.logger.exception("flows page %s %s failed", request.method, request.path)
    return _message("Something went wrong", "The page could not be shown. Try again later.", 500)


def _message(heading: str, text: str, status: int, **extra: Any) -> tuple[str, int]:
    return render_template("forms/message.html", heading=heading, text=text, **extra), status


@pages.get("/assets/flows.css")
def stylesheet() -> Response:
    response = Response((TEMPLATES / "forms" / "forms.css").read_text(), mimetype="text/css")
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


def _runtime() -> Any:
    return get_toolkit(current_app).runtime


def _signer() -> Signer:
    return Signer.for_config(current_app.config)


def _who() -> dict[str, Any] | None:
    return _signer().read_session(request.cookies.get(SESSION_COOKIE))


def _identity(who: dict[str, Any]) -> Identity:
    principals = [p for p in who.get("p") or () if isinstance(p, str)]
    return Identity(id=principals[0], principals=frozenset(principals), scopes=frozenset())


def _variant(flow_id: str) -> Any:
    """The flow's provider, or None if there is no such flow."""
    from . import provider

    if not deployments.FLOW_ID.fullmatch(flow_id):
        return None
    return _runtime().variant(provider, flow_id)


def _no_flow() -> tuple[str, int]:
    return _message("No such flow", "There is no flow at this address; it may have been removed.", 404)


def _cookie_path() -> str:
    return url_for(".stylesheet").rsplit("/assets/", 1)[0] + "/"


def _sign_in_page(variant: Any, flow_id: str, error: str | None = None, status: int = 401) -> tuple[str, int]:
    return render_template("flows/sign_in.html", title=variant.title, scope=variant.globus_auth_scope, error=error,
                           action_url=url_for(".sign_in", flow_id=flow_id)), status


def _start_page(variant: Any, flow_id: str, who: dict[str, Any], *, form: Any = None,
                errors: dict[str, str] | None = None, status: int = 200) -> tuple[str, int]:
    fields_ = _fields(variant.input_schema)
    return render_template(
        "flows/start.html", title=variant.title, description=variant.description, fields=fields_,
        values=fields.shown_values(fields_, form), errors=errors or {}, field_id=fields.field_id,
        csrf=_signer().csrf(who, f"flow:{flow_id}"), who=who.get("n") or who["p"][0],
        request_id=(form.get("request_id") if form is not None else None) or uuid.uuid4().hex,
        action_url=url_for(".start", flow_id=flow_id),
    ), status


def _fields(schema: dict[str, Any]) -> list[fields.Field]:
    """The form of an input schema; none for a flow that takes no input fields."""
    if not schema.get("properties"):
        return []
    return fields.build(schema)


def _may_start(variant: Any, who: dict[str, Any]) -> tuple[str, int] | None:
    identity = _identity(who)
    if not allowed(identity, variant.visible_to):
        return _no_flow()
    if not allowed(identity, variant.runnable_by):
        return _message("You may not start this flow", f"You are signed in as {who.get('n') or identity.id}, who is "
                        "not among the people this flow may be started by.", 403, title=variant.title)
    return None


@pages.get("/<flow_id>/start")
def start(flow_id: str) -> Any:
    variant = _variant(flow_id)
    if variant is None:
        return _no_flow()
    who = _who()
    if who is None:
        return _sign_in_page(variant, flow_id)
    refused = _may_start(variant, who)
    if refused is not None:
        return refused
    try:
        return _start_page(variant, flow_id, who)
    except fields.FormSchemaError as exc:
        return _message("This flow cannot be started from a form",
                        f"Its input schema cannot be shown as a form ({exc}); start it through the API.", 409,
                        title=variant.title)


@pages.post("/<flow_id>/start")
def start_run(flow_id: str) -> Any:
    variant = _variant(flow_id)
    if variant is None:
        return _no_flow()
    who = _who()
    if who is None:
        return _sign_in_page(variant, flow_id)
    if not _signer().check_csrf(request.form.get("csrf_token"), who, f"flow:{flow_id}"):
        return _message("The flow was not started",
                        "The page's security token is missing or has expired. Reload the page and try again.", 400,
                        title=variant.title)
    refused = _may_start(variant, who)
    if refused is not None:
        return refused
    try:
        fields_ = _fields(variant.input_schema)
    except fields.FormSchemaError as exc:
        return _message("This flow cannot be started from a form", str(exc), 409, title=variant.title)
    body, errors = fields.read(fields_, request.form)
    for name, message in fields.validate(variant.input_schema, fields_, body).items():
        errors.setdefault(name, message)
    if errors:
        return _start_page(variant, flow_id, who, form=request.form, errors=errors, status=400)
    # The same page posted twice is one run; changed answers posted from the same page are another run.
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    request_id = f"{(request.form.get('request_id') or uuid.uuid4().hex)[:64]}-{digest}"
    action, _created = _runtime().run(variant, _identity(who), {"request_id": request_id, "body": body})
    return redirect(url_for(".run_page", flow_id=flow_id, action_id=action.action_id), 303)


@pages.post("/<flow_id>/sign-in")
def sign_in(flow_id: str) -> Any:
    variant = _variant(flow_id)
    if variant is None:
        return _no_flow()
    token = (request.form.get("token") or "").strip()
    try:
        identity = get_toolkit(current_app).verifier.verify(token)
    except ApiError:
        return _sign_in_page(variant, flow_id, "This token was not accepted: it is not valid or has expired.")
    if variant.globus_auth_scope not in identity.scopes:
        return _sign_in_page(variant, flow_id, f"This token does not carry the scope {variant.globus_auth_scope}.")
    principals = [identity.id, *sorted(identity.principals - {identity.id})]
    expires = time.time() + SESSION_SECONDS
    if identity.expires_at is not None:
        expires = min(expires, identity.expires_at)
    session = _signer().session(principals, identity.username or identity.id, expires)
    response = redirect(url_for(".start", flow_id=flow_id), 303)
    response.set_cookie(SESSION_COOKIE, session, max_age=int(max(1, expires - time.time())), path=_cookie_path(),
                        httponly=True, samesite="Lax", secure=request.is_secure)
    return response


def _time(epoch: Any) -> str:
    if not isinstance(epoch, (int, float)):
        return ""
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


@pages.get("/<flow_id>/runs/<action_id>")
def run_page(flow_id: str, action_id: str) -> Any:
    variant = _variant(flow_id)
    if variant is None:
        return _no_flow()
    who = _who()
    if who is None:
        return _sign_in_page(variant, flow_id)
    try:
        action = _runtime().status(variant, _identity(who), action_id)
    except ApiError as exc:
        if exc.status in (403, 404):
            return _message("No such run", "There is no run of this flow at this address that you may see.", 404,
                            title=variant.title)
        raise
    details = action.details if isinstance(action.details, dict) else {}
    states = []
    for entry in details.get("states") or ():
        if isinstance(entry, dict):
            states.append({**entry, "started_text": _time(entry.get("started")),
                           "ended_text": _time(entry.get("ended"))})
    output = details.get("output")
    return render_template(
        "flows/run.html", title=variant.title, status=action.status.value, display_status=action.display_status,
        action_id=action.action_id,
        started=datetime.datetime.fromtimestamp(action.start_time, datetime.timezone.utc).isoformat()
        if action.start_time else None,
        code=details.get("code") if action.status is not Status.SUCCEEDED else None,
        description=details.get("description"), resolution_url=details.get("resolution_url"),
        states=states, output=None if output is None else json.dumps(output, indent=2, ensure_ascii=False),
        refresh=REFRESH_SECONDS if action.status is Status.ACTIVE else None,
        start_url=url_for(".start", flow_id=flow_id),
    )
