"""The bundled user-forms provider: a flow pauses until a person answers a web form.

``/run`` takes a title, a description, and the form as a JSON Schema (or, as the Globus web-option provider does, a
list of ``options``), the principals who may answer and when the form closes::

    {"title": "Approve the share", "description": "Run 42 is in staging.",
     "schema": {"type": "object", "required": ["approve"], "properties": {"approve": {"type": "boolean"}}},
     "respondents": ["urn:globus:auth:identity:..."], "expires_in": 86400}

The action goes INACTIVE at once with the form's URL in ``details.form_url`` and ``details.resolution_url``; no
thread waits while a person takes days. A valid answer resumes it, and it SUCCEEDS with ``details.response``,
``details.respondent`` and ``details.answered_at``. Cancelling it, or reaching ``expires_in`` (the action's
deadline), closes the form. The pages are in :mod:`.pages`, the fields in :mod:`.fields`.
"""

from __future__ import annotations

import datetime
import logging
import string
from typing import Any

from flask import current_app, has_request_context, request, url_for

from toolkit import (
    ActionFailed,
    ActionInactive,
    ActionProvider,
    ApiError,
    BackgroundContext,
    BadActionRequest,
    HookContext,
    Identity,
    RunContext,
    get_toolkit,
)
from toolkit.documents import PUBLIC, Status, normalize_principal
from toolkit.settings import register_settings, setting

from . import answers, fields
from .content import render_description
from .pages import pages
from .settings import SETTINGS, sign_in_mode
from .signing import Signer

__all__ = ["provider"]

register_settings(*SETTINGS)
logger = logging.getLogger("providers.forms")

DEFAULT_EXPIRES_IN = 7 * 24 * 3600
MAX_EXPIRES_IN = 30 * 24 * 3600
MAX_OPTIONS = 20

_TEXT = {"type": "string", "maxLength": 2000}
_ADDRESS = {"type": "string", "minLength": 1, "maxLength": 320}

INPUT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["title"],
    "properties": {
        "title": {"type": "string", "minLength": 1, "maxLength": 200, "description": "The form's heading."},
        "description": {"type": "string", "maxLength": 20000, "description": "Shown above the form."},
        "description_format": {"type": "string", "enum": ["text/plain", "text/markdown"], "default": "text/plain",
                               "description": "text/markdown is rendered and sanitised (no HTML, no scripts)."},
        "schema": {"type": "object", "description": "A JSON Schema of the answer; the form is generated from it."},
        "options": {
            "type": "array", "minItems": 1, "maxItems": MAX_OPTIONS,
            "description": "Instead of a schema: choices, as for the Globus web-option provider.",
            "items": {
                "type": "object", "additionalProperties": False, "required": ["name"],
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 200},
                    "description": _TEXT,
                    "url_suffix": {"type": "string", "maxLength": 200},
                    "completed_message": _TEXT,
                },
            },
        },
        "respondents": {
            "type": "array", "maxItems": 100, "items": {"type": "string", "maxLength": 512},
            "description": "Identity and group URNs who may answer; empty: anyone holding the link.",
        },
        "expires_in": {"type": "integer", "minimum": 60, "maximum": MAX_EXPIRES_IN, "default": DEFAULT_EXPIRES_IN,
                       "description": "Seconds until the form closes (the action then ends FAILED)."},
        "allow_changes": {"type": "boolean", "default": False,
                          "description": "Respondents may save an answer and change it until they submit it."},
        "submit_label": {"type": "string", "minLength": 1, "maxLength": 60},
        "notify": {
            "type": "object", "additionalProperties": False, "required": ["destination"],
            "description": "Email the form's link through this deployment's notify provider when the form opens.",
            "properties": {
                "destination": {"oneOf": [_ADDRESS, {"type": "array", "minItems": 1, "maxItems": 100,
                                                     "items": _ADDRESS}]},
                "subject": {"type": "string", "maxLength": 998},
                "body_template": {"type": "string", "maxLength": 20000,
                                  "description": "$title, $form_url and $closes_at are replaced."},
                "sender": {"type": "string", "maxLength": 998},
            },
        },
    },
}

NOTIFY_SUBJECT = "Please answer: $title"
NOTIFY_TEMPLATE = (
    "You are asked to answer the form \"$title\".\n\n"
    "Open it here: $form_url\n\n"
    "The link is for you only; the form closes at $closes_at (UTC).\n"
)

provider = ActionProvider(
    name="forms",
    title="User forms",
    subtitle="Ask a person: a web form generated from a JSON Schema",
    description=(
        "Pauses a flow until a named person answers a web form. The action goes INACTIVE with the form's URL as "
        "resolution_url and SUCCEEDS with the answer in details.response."
    ),
    keywords=["forms", "human", "approval", "web option", "globus"],
    input_schema=INPUT_SCHEMA,
    synchronous=True,  # the callback only opens or closes the form: it runs inside /run and the answer's request
    recovery="rerun",
)
provider.add_blueprint(pages)


def form_fields(body: dict[str, Any]) -> list[fields.Field]:
    """The form's fields (a single choice for ``options``)."""
    return fields.build(answer_schema(body))


def answer_schema(body: dict[str, Any]) -> dict[str, Any]:
    if "options" in body:
        names = [o["name"] for o in body["options"]]
        return {"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "enum": names}}}
    return body["schema"]


@provider.check
def check_request(body: dict[str, Any], ctx: HookContext) -> None:
    if ("schema" in body) == ("options" in body):
        raise BadActionRequest("body: give exactly one of schema (a JSON Schema) and options (a list of choices).")
    if "schema" in body:
        import jsonschema

        schema = body["schema"]
        try:
            jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise BadActionRequest(f"body.schema: is not a valid JSON Schema: {exc.message[:300]}") from None
        try:
            fields.build(schema)
        except fields.FormSchemaError as exc:
            raise BadActionRequest(f"body.schema: {exc}") from None
    else:
        names = [o["name"] for o in body["options"]]
        if len(set(names)) != len(names):
            raise BadActionRequest("body.options: each option needs a name of its own.")
    for i, principal in enumerate(body.get("respondents", ())):
        try:
            normalize_principal(principal)
        except ValueError as exc:
            raise BadActionRequest(f"body.respondents[{i}]: {exc}") from None
    if "notify" in body:
        _check_notify(body, ctx.config)


def _check_notify(body: dict[str, Any], config: Any) -> None:
    """Refuse at /run what the email could not be: the notify provider checks the rest when it is sent."""
    if _notify_provider() is None:
        raise BadActionRequest("body.notify: this deployment serves no notify provider to send the email with.")
    if sign_in_mode(config) == "link" and len(body.get("respondents", ())) > 1:
        raise BadActionRequest("body.notify: each respondent has a personal link here; give at most one respondent "
                               "per form, or send the links from respondent_links yourself.")
    notify = body["notify"]
    for field in ("subject", "body_template"):
        try:
            string.Template(notify.get(field, "")).substitute(title="", form_url="", closes_at="")
        except KeyError as exc:
            raise BadActionRequest(f"body.notify.{field}: ${exc.args[0]} is not one of $title, $form_url, "
                                   "$closes_at (write $$ for a $).") from None
        except ValueError as exc:
            raise BadActionRequest(f"body.notify.{field}: {exc} (write $$ for a $).") from None


def _notify_provider() -> ActionProvider | None:
    """The notify provider served beside this one (the email goes out as one of its actions), if any.

    The toolkit hands hooks no handle on the other providers of the app, so this asks the app's runtime.
    """
    return get_toolkit(current_app).runtime.providers.get("notify")


def _send_link(body: dict[str, Any], ctx: RunContext, link: str, closes_at: float) -> str:
    """Start a notify action (as the form's creator) that emails ``link``; its action id."""
    notify = body["notify"]
    values = {"title": body["title"], "form_url": link, "closes_at": _iso(closes_at)[:16].replace("T", " ")}
    document = {
        "destination": notify["destination"],
        "subject": string.Template(notify.get("subject", NOTIFY_SUBJECT)).substitute(values),
        "body_template": string.Template(notify.get("body_template", NOTIFY_TEMPLATE)).substitute(values)
        .replace("$", "$$"),
    }
    if "sender" in notify:
        document["sender"] = notify["sender"]
    runtime = get_toolkit(current_app).runtime
    notify_provider = _notify_provider()
    if notify_provider is None:
        raise ActionFailed("NotifyUnavailable", "This deployment no longer serves the notify provider.")
    identity = ctx.identity or Identity.build(ctx.creator_id)
    try:
        action, _ = runtime.run(notify_provider, identity,
                                {"request_id": f"forms-{ctx.action_id}", "body": document})
    except ApiError as exc:
        raise ActionFailed("NotifyRefused", f"The email with the form's link was refused: {exc.description}") from None
    return action.action_id


def respondents(body: dict[str, Any]) -> list[str]:
    return [normalize_principal(p) for p in body.get("respondents", ())]


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def _form_url(ctx: RunContext) -> str:
    base = setting(ctx.config, "APTK_FORMS_URL")
    if base:
        return f"{base.rstrip('/')}/{ctx.action_id}/form"
    if "form_url" in ctx.details:
        return str(ctx.details["form_url"])
    if has_request_context() and request.blueprints:
        return url_for(f"{request.blueprints[-1]}.pages.form", action_id=ctx.action_id, _external=True)
    raise ActionFailed("NoFormURL", "The form's address is unknown; set APTK_FORMS_URL to the public URL of /forms.")


PURGE_INTERVAL = 300.0
"""Seconds between two sweeps deleting the answers of released and expired forms."""


@provider.background
def purge_answers(ctx: BackgroundContext) -> None:
    """Every :data:`PURGE_INTERVAL` seconds, delete the stored answers of forms whose action is gone."""
    def purge() -> None:
        gone = answers.purge_released(ctx.store.engine, stopping=ctx.stopping)
        if gone:
            logger.info("deleted the answers of %d released or expired forms", gone)

    ctx.every(PURGE_INTERVAL, purge, "purging the answers of released forms")


@provider.run
def open_form(body: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """Open the form (pause the action) or, once it has an answer, end the action with it."""
    engine = ctx.store.engine
    url = _form_url(ctx)
    if "closes_at" in ctx.details and ctx.deadline is not None:
        closes_at = ctx.deadline
    else:
        closes_at = min(ctx.clock() + body.get("expires_in", DEFAULT_EXPIRES_IN), ctx.deadline or float("inf"))
        # The form closes at the action's deadline: the toolkit then ends the action, and no answer is taken.
        ctx.store.update(ctx.action_id, where={"status": Status.ACTIVE, "attempts": ctx.attempt}, deadline=closes_at)
    answer = answers.get(engine, ctx.action_id)
    done: dict[str, Any] = {"form_url": url, "closes_at": _iso(closes_at)}
    if answer is not None:
        answered = {"response": answer.response, "respondent": answer.respondent,
                    "answered_at": _iso(answer.answered_at)}
        if answer.final:
            sent = {"notify_action_id": ctx.details["notify_action_id"]} if "notify_action_id" in ctx.details else {}
            return {"form_url": url, **answered, **sent}
        done.update(answered)
    details: dict[str, Any] = dict(done)
    resolution_url = url
    if sign_in_mode(ctx.config) == "link":
        signer = Signer.for_config(ctx.config)
        links = {p: f"{url}?t={signer.link(ctx.action_id, p, closes_at)}" for p in respondents(body) or [PUBLIC]}
        details["respondent_links"] = links
        if len(links) == 1:
            resolution_url = next(iter(links.values()))
    if "notify" in body:
        details["notify_action_id"] = ctx.details.get("notify_action_id") or _send_link(body, ctx, resolution_url,
                                                                                         closes_at)
    waiting = "an answer to be submitted" if answer is not None else "an answer"
    raise ActionInactive(
        "WaitingForResponse",
        f"Waiting for {waiting} to the form {body['title'][:80]!r} at {url}",
        resolution_url=resolution_url,
        **details,
    )


def describe(body: dict[str, Any]) -> str:
    """The description as safe HTML."""
    return render_description(body.get("description", ""), body.get("description_format", "text/plain"))
