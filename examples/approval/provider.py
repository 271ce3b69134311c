"""An approval that waits for a person: the action goes INACTIVE with a ``resolution_url`` where one of the
approvers named in the request approves or rejects it; approval ends it SUCCEEDED, rejection FAILED.

``/run`` takes what is to be approved and who may decide::

    {"subject": "Publish dataset 42", "details": "3.2 TB, embargo ends today",
     "approvers": ["urn:globus:groups:id:<uuid>", "urn:globus:auth:identity:<uuid>"]}

The decision page (``<prefix>/<action_id>/decision``) shows the request to whoever holds its link (an action id
cannot be guessed) and takes a decision only from an approver: the approver signs the decision with their access
token for this provider (``Authorization: Bearer`` for programs; a token field on the page for people), and any of
their principals (a group, say) may be the one named. The first decision wins; no thread waits in the meantime.
"""

from __future__ import annotations

import datetime
import html
import re
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, Response, current_app, has_request_context, request, url_for
from sqlalchemy.exc import IntegrityError

from toolkit import (
    ActionFailed,
    ActionInactive,
    ActionProvider,
    ApiError,
    BadActionRequest,
    HookContext,
    Identity,
    RunContext,
    get_toolkit,
)
from toolkit.auth import bearer_token
from toolkit.documents import Status, normalize_principal
from toolkit.store import create_tables

provider = ActionProvider(
    name="approval",
    title="Approval",
    subtitle="Waits for a person to approve or reject a request",
    description=(
        "Goes INACTIVE with a resolution_url where one of the approvers approves (the action SUCCEEDS) or rejects "
        "(it FAILS) the request."
    ),
    keywords=["approval", "person", "example"],
    input_schema={
        "type": "object",
        "required": ["subject", "approvers"],
        "additionalProperties": False,
        "properties": {
            "subject": {"type": "string", "minLength": 1, "maxLength": 200, "description": "What is to be approved."},
            "details": {"type": "string", "maxLength": 4000, "description": "What the approver should know."},
            "approvers": {
                "type": "array", "minItems": 1, "maxItems": 50, "items": {"type": "string"},
                "description": "Principals (identities, groups) who may decide.",
            },
        },
    },
    synchronous=True,  # the callback only opens or closes the request: it runs inside /run and the decision's request
)

metadata = sa.MetaData()
decisions = sa.Table(
    "approval_decisions", metadata,
    sa.Column("action_id", sa.String(32), primary_key=True),
    sa.Column("approved", sa.Boolean, nullable=False),
    sa.Column("approver", sa.String(512), nullable=False),
    sa.Column("comment", sa.String(2000), nullable=False),
    sa.Column("decided_at", sa.Float, nullable=False),
)
ACTION_ID = re.compile(r"[0-9a-f]{32}")


def approvers(body: dict[str, Any]) -> list[str]:
    return [normalize_principal(p) for p in body["approvers"]]


@provider.check
def check_request(body: dict[str, Any], ctx: HookContext) -> None:
    for index, principal in enumerate(body["approvers"]):
        try:
            normalize_principal(principal)
        except ValueError as exc:
            raise BadActionRequest(f"body.approvers[{index}]: {exc}") from None


@provider.run
def open_request(body: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    create_tables(ctx.store.engine, metadata)
    with ctx.store.engine.connect() as conn:
        row = conn.execute(sa.select(decisions).where(decisions.c.action_id == ctx.action_id)).first()
    if row is None:  # first run, or a resume by the requester before anyone decided: keep waiting
        url = decision_url(ctx)
        raise ActionInactive("ApprovalRequired", f"Waiting for an approver to approve or reject it at {url}",
                             resolution_url=url, decision_url=url)
    outcome = {"approver": row.approver, "comment": row.comment, "decided_at": _iso(row.decided_at)}
    if not row.approved:
        raise ActionFailed("Rejected", f"Rejected by {row.approver}" + (f": {row.comment}" if row.comment else ""),
                           **outcome)
    return {"decision": "approved", **outcome}


def decision_url(ctx: RunContext) -> str:
    if has_request_context() and request.blueprints:
        return url_for(f"{request.blueprints[-1]}.approval_pages.decision", action_id=ctx.action_id, _external=True)
    return str(ctx.details.get("decision_url", ""))


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat(timespec="seconds")


# --- the decision page --------------------------------------------------------------------------------------------

pages = Blueprint("approval_pages", __name__)
provider.add_blueprint(pages)

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><main><h1>{title}</h1>{body}</main></body></html>"""


def _page(title: str, body: str, status: int = 200) -> Response:
    response = Response(PAGE.format(title=html.escape(title), body=body), status=status, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = "default-src 'none'; form-action 'self'"
    response.headers["X-Frame-Options"] = "DENY"
    return response


def _as_creator(action: Any) -> Identity:
    """The provider acts on its own actions for their creator: it reads them, and resumes them once decided."""
    return Identity(id=action.creator_id, principals=frozenset({action.creator_id}), scopes=frozenset())


def _find(action_id: str) -> Any:
    if not ACTION_ID.fullmatch(action_id):
        return None
    runtime = get_toolkit(current_app).runtime
    stored = runtime.store.get(action_id)
    if stored is None or stored.provider != provider.name:
        return None
    try:
        return runtime.status(provider, _as_creator(stored), action_id)  # applies the deadline
    except ApiError:
        return None


def _request_html(action: Any) -> str:
    body = action.body
    parts = [f"<p><strong>{html.escape(body['subject'])}</strong></p>"]
    if body.get("details"):
        parts.append(f"<p>{html.escape(body['details'])}</p>")
    parts.append(f"<p>Requested by {html.escape(action.creator_id)}.</p>")
    return "".join(parts)


@pages.get("/<action_id>/decision")
def decision(action_id: str) -> Response:
    action = _find(action_id)
    if action is None:
        return _page("No such request", "<p>This approval request does not exist (it may have been released).</p>",
                     404)
    if action.status is not Status.INACTIVE:
        return _closed(action)
    form = (
        '<form method="post">'
        '<p><label>Your access token for this provider<br><input type="password" name="token" required '
        'autocomplete="off"></label></p>'
        '<p><label>Comment<br><textarea name="comment" maxlength="2000"></textarea></label></p>'
        '<p><button name="decision" value="approve">Approve</button> '
        '<button name="decision" value="reject">Reject</button></p></form>'
    )
    return _page(f"Approve: {action.body['subject']}", _request_html(action) + form)


def _closed(action: Any) -> Response:
    if action.status is Status.SUCCEEDED:
        text = f"Approved by {action.details.get('approver', 'an approver')}."
    elif action.details.get("code") == "Rejected":
        text = f"Rejected by {action.details.get('approver', 'an approver')}."
    elif action.status is Status.FAILED:
        text = f"Closed without a decision ({action.details.get('code', 'failed')})."
    else:
        text = "This request is not waiting for a decision."
    return _page(f"Approve: {action.body['subject']}", _request_html(action) + f"<p>{html.escape(text)}</p>", 409)


def _approver(action: Any) -> Identity | Response:
    """The identity deciding, or the page refusing it: 401 without a valid token, 403 for anyone else."""
    state = get_toolkit(current_app)
    header = request.headers.get("Authorization")
    token = request.form.get("token", "").strip()
    try:
        identity = state.verifier.verify(token if token and not header else bearer_token(header))
    except ApiError as exc:
        if exc.status >= 500:
            return _page("Try again later", f"<p>{html.escape(exc.description)}</p>", exc.status)
        return _page("Sign in to decide", "<p>A valid access token for this provider is needed to decide.</p>", 401)
    if provider.globus_auth_scope not in identity.scopes:
        return _page("Not allowed", f"<p>The token lacks this provider's scope {html.escape(provider.globus_auth_scope)}."
                     "</p>", 403)
    allowed = set(approvers(action.body)) & identity.principals
    if not allowed:
        return _page("Not allowed", "<p>You are not one of the approvers of this request.</p>", 403)
    return identity


@pages.post("/<action_id>/decision")
def decide(action_id: str) -> Response:
    action = _find(action_id)
    if action is None:
        return _page("No such request", "<p>This approval request does not exist (it may have been released).</p>",
                     404)
    who = _approver(action)
    if isinstance(who, Response):
        return who
    choice = request.form.get("decision")
    if choice not in ("approve", "reject"):
        return _page("Choose", "<p>Say approve or reject (the form's field <code>decision</code>).</p>", 400)
    comment = request.form.get("comment", "").strip()
    if len(comment) > 2000:
        return _page("Too long", "<p>The comment is longer than 2000 characters.</p>", 400)
    if action.status is not Status.INACTIVE:
        return _closed(action)
    state = get_toolkit(current_app)
    engine = state.runtime.store.engine
    create_tables(engine, metadata)
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(decisions).values(action_id=action_id, approved=choice == "approve",
                                                     approver=who.id, comment=comment,
                                                     decided_at=state.runtime.clock()))
    except IntegrityError:
        return _closed(_find(action_id) or action)  # someone decided first
    try:
        action = state.runtime.resume(provider, _as_creator(action), action_id)  # the callback runs here
    except ApiError as exc:
        if exc.status != 409:
            raise
        action = _find(action_id) or action
    if action.status in (Status.SUCCEEDED, Status.FAILED):
        with engine.begin() as conn:  # the decision is in the action's details now
            conn.execute(sa.delete(decisions).where(decisions.c.action_id == action_id))
    verdict = "approved" if choice == "approve" else "rejected"
    return _page("Thank you", f"<p>You {verdict} “{html.escape(action.body['subject'])}”.</p>")
