"""The bundled notification provider: email a flow can send, input as for the Globus notification provider::

    {"destination": "someone@example.org", "subject": "Your data arrived",
     "body_template": "Hello $name, run ${run} finished.", "body_variables": {"name": "Ada", "run": 42},
     "body_mimetype": "text/plain", "notification_method": "email"}

``$name`` / ``${name}`` are replaced as :class:`string.Template` does; a variable the template names but
``body_variables`` lacks is a 400 at ``/run``. In ``text/html`` bodies every value is HTML-escaped, except the
variables listed in ``raw_variables``. The mail goes to the deployment's server (``APTK_SMTP_URL``) or, when the
caller brings one in ``send_credentials``, to that; the credentials are never shown in status, logs or errors.

Transient failures (4xx replies, connection refused, timeouts) are retried with backoff until the action's
deadline; permanent ones (5xx, refused recipients or sender, failed authentication) end FAILED with a code naming
the cause. SUCCEEDED details carry the Message-ID and the recipients the server accepted.
"""

from __future__ import annotations

from typing import Any

from toolkit import ActionProvider, BadActionRequest, HookContext, RunContext
from toolkit.settings import register_settings

from . import mail
from .mail import SETTINGS

__all__ = ["provider"]

register_settings(*SETTINGS)

_ADDRESS = {"type": "string", "minLength": 1, "maxLength": 320}

INPUT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["destination", "body_template"],
    "properties": {
        "destination": {
            "description": "One address, or a list of at most 100.",
            "oneOf": [_ADDRESS, {"type": "array", "minItems": 1, "maxItems": mail.MAX_RECIPIENTS, "items": _ADDRESS}],
        },
        "subject": {"type": "string", "maxLength": 998},
        "body_template": {"type": "string", "description": "$name / ${name} are replaced from body_variables."},
        "body_variables": {"type": "object", "description": "Values for the template's variables."},
        "raw_variables": {"type": "array", "items": {"type": "string", "maxLength": 128}, "maxItems": 100,
                          "description": "Variables inserted into a text/html body without HTML escaping."},
        "body_mimetype": {"type": "string", "enum": ["text/plain", "text/html"], "default": "text/plain"},
        "sender": {"type": "string", "maxLength": 998,
                   "description": "From address (or 'Name <address>'); by default the deployment's sender."},
        "notification_method": {"type": "string", "enum": ["email"], "default": "email"},
        "notification_priority": {"type": "string", "maxLength": 32,
                                  "description": "Accepted for compatibility; 'high' marks the mail urgent."},
        "send_credentials": {
            "type": "array", "maxItems": 1,
            "description": "A mail server of the caller's own; never stored in status or logs.",
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
                            "password": {"type": "string", "maxLength": 1024},
                        },
                    },
                },
            },
        },
    },
}

provider = ActionProvider(
    name="notify",
    title="Notifications",
    subtitle="Send an email from a flow",
    description=(
        "Sends an email built from a template and variables, through the deployment's mail server or one the "
        "caller names. Input as for the Globus notification action provider."
    ),
    keywords=["notify", "email", "smtp", "globus"],
    input_schema=INPUT_SCHEMA,
    synchronous=False,
    recovery="fail",
)


@provider.check
def check_request(body: dict[str, Any], ctx: HookContext) -> None:
    mail.prepare(body, ctx.config)


@provider.run
def notify(body: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    try:
        prepared = mail.prepare(body, ctx.config)
    except BadActionRequest as exc:  # the settings changed since /run
        from toolkit import ActionFailed

        raise ActionFailed("BadRequest", exc.description) from None
    return mail.deliver(prepared, ctx)
