"""The web pages of the forms provider, served under its prefix beside the API.

``GET /<action_id>/form`` shows the form (or why it cannot be answered), ``POST`` takes an answer. Who is asking
comes from a cookie set by a respondent's signed link (``?t=...``, link mode) or by signing in at the deployment's
OpenID Connect provider (``/sign-in``). Every answer needs the CSRF token of the page it came from. Every page is
rendered with autoescaping and served with a strict Content-Security-Policy (no scripts at all, styles from this
server only).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from toolkit import Identity, get_toolkit
from toolkit.documents import PUBLIC, Status
from toolkit.errors import ApiError, ConfigurationError

from . import answers, fields
from .settings import sign_in_mode
from .signing import Signer
from .signin import OIDCClient, SignInError

if TYPE_CHECKING:
    from toolkit import Action

TEMPLATES = Path(__file__).resolve().parent.parent.parent / "toolkit" / "templates"
if not TEMPLATES.is_dir():  # installed: the templates are package data of toolkit
    import toolkit

    TEMPLATES = Path(toolkit.__file__).resolve().parent / "templates"

pages = Blueprint("pages", __name__, template_folder=str(TEMPLATES))

LINK_COOKIE = "aptk_form_link"
SESSION_COOKIE = "aptk_forms_session"
STATE_COOKIE = "aptk_forms_signin"
SESSION_SECONDS = 8 * 3600
ACTION_ID = re.compile(r"[0-9a-f]{32}|[0-9a-f-]{36}")

CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # a respondent's link must not leak to the sites a description links to
    "Cross-Origin-Opener-Policy": "same-origin",
}


@pages.after_request
def _page_headers(response: Response) -> Response:
    for name, value in PAGE_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


@pages.errorhandler(Exception)
def _failure(exc: Exception) -> Response | tuple[str, int]:
    if isinstance(exc, HTTPException) and exc.code is not None and exc.code < 500:
        return _message(exc.name, exc.description or exc.name, exc.code)  # a body too large, say
    if isinstance(exc, ApiError) and exc.status == 503:
        return _message("Try again later", exc.description, exc.status)
    current_app.logger.exception("forms page %s %s failed", request.method, request.path)
    return _message("Something went wrong", "The form could not be shown. Try again later.", 500)


def now() -> float:
    return get_toolkit(current_app).runtime.clock()


def _engine() -> Any:
    return get_toolkit(current_app).runtime.store.engine


def _provider():
    from . import provider

    return provider


def _signer() -> Signer:
    return Signer.for_config(current_app.config)


def _message(heading: str, text: str, status: int, **extra: Any) -> tuple[str, int]:
    return render_template("forms/message.html", heading=heading, text=text, **extra), status


def _name(who: dict[str, Any]) -> str:
    principal = (who.get("p") or [PUBLIC])[0]
    return str(who.get("n") or ("the holder of this form's link" if principal == PUBLIC else principal))


def _as_creator(action: "Action") -> Identity:
    """The provider acts on its own actions for their creator: it reads them and resumes them with an answer."""
    return Identity(id=action.creator_id, principals=frozenset({action.creator_id}), scopes=frozenset())


def _find(action_id: str) -> "Action | None":
    if not ACTION_ID.fullmatch(action_id):
        return None
    state = get_toolkit(current_app)
    stored = state.runtime.store.get(action_id)
    if stored is None or stored.provider != _provider().name:
        return None
    try:
        return state.runtime.status(_provider(), _as_creator(stored), action_id)  # applies the deadline
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise


def _form_path(action_id: str) -> str:
    return url_for(".form", action_id=action_id)


def _prefix_path() -> str:
    return url_for(".stylesheet").rsplit("/assets/", 1)[0] + "/"


def _who(action_id: str) -> dict[str, Any] | None:
    """The session of the person asking: a link's (for this form only) or a sign-in's."""
    signer = _signer()
    link = signer.read_session(request.cookies.get(LINK_COOKIE))
    if link is not None and link.get("a") == action_id:
        return link
    return signer.read_session(request.cookies.get(SESSION_COOKIE))


def _may_answer(who: dict[str, Any], action: "Action") -> bool:
    from . import respondents

    allowed = respondents(action.body)
    principals = set(who.get("p") or ())
    if not allowed:
        return True
    return bool(principals & set(allowed)) and PUBLIC not in principals


def _closed(action: "Action") -> tuple[str, int]:
    details = action.details
    if action.status is Status.SUCCEEDED:
        return _message("This form has been answered",
                        f"It was answered on {details.get('answered_at', 'an earlier date')}; it takes no more answers.",
                        409, title=action.body.get("title"))
    reason = {"ActionCancelled": "It was cancelled.", "DeadlineExceeded": "It expired."}.get(
        str(details.get("code")), "The request it belonged to has ended.")
    return _message("This form is closed", f"{reason} No answer can be given any more.", 410,
                    title=action.body.get("title"))


def _render_form(action: "Action", who: dict[str, Any], *, form: Any = None, errors: dict[str, str] | None = None,
                 saved: answers.Answer | None = None, status: int = 200) -> tuple[str, int]:
    from . import describe, form_fields

    body = action.body
    fields_ = form_fields(body)
    values = fields.shown_values(fields_, form, saved.response if saved else None)
    return render_template(
        "forms/form.html",
        title=body["title"],
        description=describe(body),
        fields=fields_,
        values=values,
        errors=errors or {},
        options=body.get("options"),
        chosen=(saved.response or {}).get("name") if saved and "options" in body else None,
        allow_changes=body.get("allow_changes", False),
        saved=saved,
        submit_label=body.get("submit_label") or "Submit",
        csrf=_signer().csrf(who, action.action_id),
        who=_name(who),
        closes_at=action.details.get("closes_at"),
        action_url=_form_path(action.action_id),
        field_id=fields.field_id,
    ), status


def _sign_in_page(action: "Action") -> tuple[str, int]:
    if sign_in_mode(current_app.config) == "oidc":
        return render_template("forms/sign_in.html", title=action.body["title"],
                               sign_in_url=url_for(".sign_in", action_id=action.action_id)), 401
    return _message("Open the link you were sent",
                    "This form is answered through a personal link. Open the link from your invitation.", 401,
                    title=action.body["title"])


@pages.get("/assets/forms.css")
def stylesheet() -> Response:
    response = Response((TEMPLATES / "forms" / "forms.css").read_text(), mimetype="text/css")
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


@pages.get("/<action_id>/form")
def form(action_id: str) -> Any:
    action = _find(action_id)
    if action is None:
        return _message("No such form", "There is no form at this address; it may have been removed.", 404)
    token = request.args.get("t")
    if token is not None:
        principal = _signer().read_link(token, action_id, now())
        if principal is None:
            return _message("This link is not valid", "The link is damaged, or the form it opened has expired.", 403)
        response = redirect(_form_path(action_id), 303)  # the link leaves the address bar and the history
        expires = time.time() + SESSION_SECONDS
        linked = _signer().session([principal], "" if principal == PUBLIC else principal, expires, action_id)
        response.set_cookie(LINK_COOKIE, linked, max_age=SESSION_SECONDS, path=_form_path(action_id),
                            httponly=True, samesite="Lax", secure=request.is_secure)
        return response
    if action.status not in (Status.INACTIVE, Status.ACTIVE):
        return _closed(action)
    who = _who(action_id)
    if who is None:
        return _sign_in_page(action)
    if not _may_answer(who, action):
        return _not_respondent(action, who)
    saved = answers.get(_engine(), action_id)
    return _render_form(action, who, saved=saved)


def _not_respondent(action: "Action", who: dict[str, Any]) -> tuple[str, int]:
    return _message("You are not asked to answer this form",
                    f"You are signed in as {_name(who)}, who is not one of the people "
                    "this form is addressed to.", 403, title=action.body["title"])


@pages.post("/<action_id>/form")
def submit(action_id: str) -> Any:
    from . import answer_schema, form_fields

    action = _find(action_id)
    if action is None:
        return _message("No such form", "There is no form at this address; it may have been removed.", 404)
    if action.status not in (Status.INACTIVE, Status.ACTIVE):
        return _closed(action)
    who = _who(action_id)
    if who is None:
        return _sign_in_page(action)
    if not _signer().check_csrf(request.form.get("csrf_token"), who, action_id):
        return _message("This answer was not accepted",
                        "The page's security token is missing or has expired. Reload the form and answer again.", 400)
    if not _may_answer(who, action):
        return _not_respondent(action, who)
    body = action.body
    fields_ = form_fields(body)
    if "options" in body:
        picked = request.form.get("option", "")
        names = [o["name"] for o in body["options"]]
        if not (picked.isdigit() and int(picked) < len(names)):
            return _render_form(action, who, form=request.form, errors={"": "Choose one of the options."}, status=400)
        chosen = body["options"][int(picked)]
        response: Any = {"name": chosen["name"]}
        if "url_suffix" in chosen:
            response["url_suffix"] = chosen["url_suffix"]
    else:
        response, errors = fields.read(fields_, request.form)
        for name, message in fields.validate(answer_schema(body), fields_, response).items():
            errors.setdefault(name, message)
        if errors:
            return _render_form(action, who, form=request.form, errors=errors, status=400)
    # A choice among options is always final; a form that allows changes is final once submitted.
    final = "options" in body or not body.get("allow_changes") or request.form.get("intent") == "submit"
    respondent = (who.get("p") or [PUBLIC])[0]
    answer = answers.Answer(action_id, respondent, response, now(), final)
    engine = _engine()
    stored = answers.replace(engine, answer) if body.get("allow_changes") else answers.record(engine, answer)
    if not stored:
        return _message("This form has already been answered",
                        "An answer was submitted before yours; this form takes one answer.", 409, title=body["title"])
    runtime = get_toolkit(current_app).runtime
    if action.status is Status.INACTIVE:
        try:
            action = runtime.resume(_provider(), _as_creator(action), action_id)
        except ApiError as exc:
            if exc.status != 409:
                raise
            action = _find(action_id) or action
    if not final:
        return _message("Your answer is saved",
                        "You can change it on the form until you submit it.", 200, title=body["title"],
                        back=_form_path(action_id))
    if action.status is not Status.SUCCEEDED:
        return _closed(action)
    thanks: str | None = None
    if "options" in body:
        thanks = next((o.get("completed_message") for o in body["options"] if o["name"] == response["name"]), None)
    return _message("Thank you", thanks or "Your answer has been recorded.", 200, title=body["title"])


# --- signing in at the deployment's OpenID Connect provider ---------------------------------------------------


def _oidc() -> OIDCClient:
    clients = current_app.extensions.setdefault("aptk_forms_oidc", {})
    client = clients.get("client")
    if client is None:
        client = clients["client"] = OIDCClient.from_config(current_app.config)
    return client


def _callback_url() -> str:
    return url_for(".sign_in_done", _external=True)


@pages.get("/<action_id>/sign-in")
def sign_in(action_id: str) -> Any:
    if sign_in_mode(current_app.config) != "oidc" or _find(action_id) is None:
        return _message("No such form", "There is no form at this address; it may have been removed.", 404)
    try:
        url, saved = _oidc().start(_callback_url())
    except SignInError as exc:
        return _message("Sign-in is not available", f"Sign-in failed: {exc}.", 503)
    except ConfigurationError as exc:
        current_app.logger.error("forms sign-in is not set up: %s", exc)
        return _message("Sign-in is not available", "Sign-in is not set up on this server; tell its operator.", 503)
    response = redirect(url, 303)
    state = _signer().state({**saved, "a": action_id})
    response.set_cookie(STATE_COOKIE, state, max_age=600, path=urlsplit(_callback_url()).path, httponly=True,
                        samesite="Lax", secure=request.is_secure)
    return response


@pages.get("/sign-in/done")
def sign_in_done() -> Any:
    saved = _signer().read_state(request.cookies.get(STATE_COOKIE))
    if saved is None:
        return _message("Sign-in failed", "The sign-in took too long or was started elsewhere. Open the form again.",
                        400)
    client = _oidc()
    try:
        claims = client.finish(_callback_url(), request.args, saved)
    except SignInError as exc:
        return _message("Sign-in failed", f"Sign-in failed: {exc}. Open the form again.", 400)
    groups = claims.get(client.groups_claim) or []
    identity = Identity.build(str(claims["sub"]), groups=[g for g in groups if isinstance(g, str)]
                              if isinstance(groups, list) else [])
    name = str(claims.get("name") or claims.get("email") or claims.get("preferred_username") or identity.id)
    principals = [identity.id, *sorted(identity.principals - {identity.id})]
    session = _signer().session(principals, name, time.time() + SESSION_SECONDS)
    response = redirect(_form_path(saved["a"]), 303)
    response.set_cookie(SESSION_COOKIE, session, max_age=SESSION_SECONDS, path=_prefix_path(), httponly=True,
                        samesite="Lax", secure=request.is_secure)
    response.delete_cookie(STATE_COOKIE, path=urlsplit(_callback_url()).path)
    return response
