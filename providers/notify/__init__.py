"""The bundled notification provider: email (or a signed webhook) a flow can send, input as for the Globus
notification provider::

    {"destination": "someone@example.org", "subject": "Your data arrived",
     "body_template": "Hello $name, run ${run} finished.", "body_variables": {"name": "Ada", "run": 42},
     "body_mimetype": "text/plain", "notification_method": "email"}

``$name`` / ``${name}`` are replaced as :class:`string.Template` does; a variable the template names but
``body_variables`` lacks is a 400 at ``/run``. In ``text/html`` bodies every value is HTML-escaped, except the
variables listed in ``raw_variables``. Instead of ``body_template`` a request may name a Jinja ``template`` the
deployment ships (see :mod:`.templates`). The mail goes to the deployment's server (``APTK_SMTP_URL``) or, when
the caller brings one in ``send_credentials``, to that; the caller's password is never stored (it is held in
the memory of the process that took the request) nor shown in status, logs or errors. With
``"notification_method": "webhook"`` the destination is an https URL that gets a JSON document signed with
HMAC-SHA256 (see :mod:`.webhook`).

Transient failures (4xx replies, connection refused, timeouts, 5xx from a webhook) are retried with backoff
until the action's deadline; permanent ones end FAILED with a code naming the cause. Each identity may send
``APTK_NOTIFY_RATE_LIMIT`` notifications per ``APTK_NOTIFY_RATE_WINDOW`` seconds; more end FAILED
(``RateLimited``).
"""

from __future__ import annotations

from typing import Any, Mapping

from toolkit import ActionFailed, ActionProvider, ApiError, BadActionRequest, ConfigurationError, HookContext, RunContext
from toolkit.settings import register_settings, setting

from . import guard, mail, webhook
from .mail import SETTINGS

__all__ = ["provider"]

register_settings(*SETTINGS)

_ADDRESS = {"type": "string", "format": "email", "minLength": 1, "maxLength": 320}
MAX_PASSWORD = 1024
ANSWER_WITHIN = 3.0
"""Seconds ``/run`` waits for the first attempt: a mail server that accepts by then gets SUCCEEDED at once."""

INPUT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["destination"],
    # body_template, unless the request names a template (giving both is refused by the check hook).
    "if": {"required": ["template"]}, "else": {"required": ["body_template"]},
    "properties": {
        "destination": {
            "description": "One email address, or a list of at most 100; for a webhook, its https URL.",
            "type": ["string", "array"],
            "minLength": 1, "maxLength": webhook.MAX_URL,
            "minItems": 1, "maxItems": mail.MAX_RECIPIENTS, "items": _ADDRESS,
        },
        "subject": {"type": "string", "maxLength": 998},
        "body_template": {"type": "string", "description": "$name / ${name} are replaced from body_variables."},
        "template": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
                     "description": "A Jinja template of this server's (instead of body_template), e.g. 'message'."},
        "body_variables": {"type": "object", "description": "Values for the template's variables."},
        "raw_variables": {"type": "array", "items": {"type": "string", "maxLength": 128}, "maxItems": 100,
                          "description": "Variables inserted into an HTML body without HTML escaping."},
        "body_mimetype": {"type": "string", "enum": ["text/plain", "text/html"], "default": "text/plain"},
        "sender": {"type": "string", "maxLength": 998,
                   "description": "From address (or 'Name <address>'); by default the deployment's sender."},
        "notification_method": {"type": "string", "enum": ["email", "any", "webhook"], "default": "email",
                                "description": "'any' is email."},
        "notification_priority": {"type": "string", "maxLength": 32,
                                  "description": "Accepted for compatibility; 'high' marks the mail urgent."},
        "send_credentials": {
            "type": "array",
            "description": "At most one mail server of the caller's own; its password is never stored or shown.",
            "items": {
                "type": "object",
                "required": ["credential_value"],
                "properties": {
                    "credential_type": {"type": "string", "enum": ["smtp"]},
                    "credential_method": {"type": "string", "enum": ["email"]},
                    "credential_value": {
                        "type": "object",
                        "required": ["hostname"],
                        "additionalProperties": False,
                        "properties": {
                            "hostname": {"type": "string", "minLength": 1, "maxLength": 253},
                            "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                            "username": {"type": "string", "maxLength": 256},
                            # No type or length here: a schema error would echo the value.
                            "password": {"description": f"A string of at most {MAX_PASSWORD} characters."},
                        },
                    },
                },
            },
        },
        "__Private_Parameters": {"type": "array", "items": {"type": "string"},
                                 "description": "Globus Flows' list of private parameters; ignored."},
    },
}

def check_settings(config: Mapping[str, Any]) -> None:
    """Read every setting of the provider's that can be wrong: a ConfigurationError naming the first that is."""
    mail.max_body(config)
    mail._timeout(config)
    mail.caller_policy(config)
    webhook.timeout(config)
    webhook.policy(config)
    guard.limits(config)
    url = setting(config, "APTK_SMTP_URL")
    if url:
        try:
            mail.server_from_url(str(url), config)
        except BadActionRequest as exc:
            raise ConfigurationError(exc.description) from None


class _NotifyProvider(ActionProvider):
    def blueprint(self, url_prefix: str | None = None, *, name: str | None = None) -> Any:
        """The provider's routes; mounting them on an app checks its settings, so that a wrong one stops
        start-up with its name rather than failing requests."""
        bp = super().blueprint(url_prefix, name=name)
        bp.record_once(lambda state: check_settings(state.app.config))
        return bp


def _misconfigured(exc: ConfigurationError) -> ApiError:
    return ApiError(f"The server is misconfigured: {exc}", code="ConfigurationError")


provider = _NotifyProvider(
    name="notify",
    title="Notifications",
    subtitle="Send an email or a webhook from a flow",
    description=(
        "Sends an email built from a template and variables, through the deployment's mail server or one the "
        "caller names, or POSTs a signed JSON document to a webhook. Input as for the Globus notification "
        "action provider."
    ),
    keywords=["notify", "email", "smtp", "webhook", "globus"],
    input_schema=INPUT_SCHEMA,
    synchronous=False,
    recovery="rerun",
    max_attempts=3,
    answer_within=ANSWER_WITHIN,
)

HELD = "password_held"
"""Where the stored body keeps the handle of a caller's password held in memory (see :mod:`.guard`)."""


def _method(body: dict[str, Any]) -> str:
    return "webhook" if body.get("notification_method") == "webhook" else "email"


def _check_source(body: dict[str, Any]) -> None:
    if ("template" in body) == ("body_template" in body):
        raise BadActionRequest("body_template: give either body_template or template (a template of this "
                               "server's), not both or neither.")


def _check_credentials(body: dict[str, Any]) -> None:
    credentials = body.get("send_credentials") or []
    if len(credentials) > 1:
        raise BadActionRequest("send_credentials: at most one mail server.")
    for item in credentials:
        password = item["credential_value"].get("password")
        if password is not None and not isinstance(password, str):
            raise BadActionRequest("send_credentials[0].credential_value.password: must be a string.")
        if isinstance(password, str) and len(password) > MAX_PASSWORD:
            raise BadActionRequest(f"send_credentials[0].credential_value.password: at most {MAX_PASSWORD} "
                                   "characters.")


def _webhook_target(body: dict[str, Any], config: Any) -> webhook.Target:
    if not isinstance(body["destination"], str):
        raise BadActionRequest("destination: a webhook goes to one URL, not a list.")
    if body.get("send_credentials"):
        raise BadActionRequest("send_credentials: webhooks take no mail server.")
    return webhook.target(body["destination"], config)


@provider.check
def check_request(body: dict[str, Any], ctx: HookContext) -> None:
    """Everything a request can get wrong is a 400 here; then the caller's password leaves the body.

    ``body`` is what the toolkit stores: its ``send_credentials`` is replaced by a copy whose password is a
    handle to this process's memory (the request document itself is left alone).
    """
    try:
        _checked(body, ctx)
    except ConfigurationError as exc:  # the settings changed since start-up
        raise _misconfigured(exc) from None


def _checked(body: dict[str, Any], ctx: HookContext) -> None:
    _check_source(body)
    if _method(body) == "webhook":
        _webhook_target(body, ctx.config)
        mail.render_body(body, ctx.config)
        return
    _check_credentials(body)
    mail.prepare(body, ctx.config)
    credentials = body.get("send_credentials")
    if credentials and isinstance(credentials[0]["credential_value"].get("password"), str):
        value = {k: v for k, v in credentials[0]["credential_value"].items() if k != "password"}
        value[HELD] = guard.hold(credentials[0]["credential_value"]["password"])
        body["send_credentials"] = [{**credentials[0], "credential_value": value}]


def _with_password(body: dict[str, Any]) -> dict[str, Any]:
    credentials = body.get("send_credentials")
    if not credentials or HELD not in credentials[0]["credential_value"]:
        return body
    value = dict(credentials[0]["credential_value"])
    password = guard.take(value.pop(HELD))
    if password is None:
        raise ActionFailed("CredentialsUnavailable",
                           "The mail password of send_credentials is kept only in the memory of the process that "
                           "took the request, and that process stopped before sending; run a new action with "
                           "send_credentials to send this mail.")
    value["password"] = password
    return {**body, "send_credentials": [{**credentials[0], "credential_value": value}]}


@provider.run
def notify(body: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    method = _method(body)
    if method == "email" and ctx.details.get("phase") == "sending":
        raise ActionFailed("DeliveryUncertain",
                           "The process sending this mail stopped after handing the message to the mail server and "
                           "before recording its answer; the mail may have been delivered, so it is not sent again.",
                           message_id=ctx.details.get("message_id"))
    body = _with_password(body)
    try:
        guard.admit(ctx)
        if method == "webhook":
            target = _webhook_target(body, ctx.config)
            text, markup = mail.render_body(body, ctx.config)
            document = webhook.document(body, text, markup, ctx.action_id)
            return mail.deliver(lambda: webhook.send_once(target, document, ctx.action_id), ctx,
                                f"Delivered to the webhook {target.host}")
        prepared = mail.prepare(body, ctx.config, message_id=f"{ctx.action_id}.notify")
    except BadActionRequest as exc:  # the settings changed since /run
        raise ActionFailed("BadRequest", exc.description) from None
    except ConfigurationError as exc:
        raise ActionFailed("ConfigurationError", f"The server is misconfigured: {exc}") from None
    message_id = prepared.message["Message-ID"]

    def sending() -> None:
        ctx.progress(details={"phase": "sending", "message_id": message_id})

    return mail.deliver(lambda: mail.send_once(prepared, sending), ctx,
                        f"Accepted by the mail server as {message_id}")
