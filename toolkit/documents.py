"""The wire documents of the Action Provider API.

The marshmallow schemas here are the single source of truth: they validate what comes in, serialize what goes
out, and generate the OpenAPI document (see :mod:`toolkit.openapi`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import re
from typing import Any, Mapping

import isodate
from marshmallow import RAISE, Schema, ValidationError, fields, post_dump, validate

UTC = dt.timezone.utc

_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
PRINCIPAL_URN = re.compile(rf"^urn:globus:(auth:identity|groups:id):{_UUID}$")
PUBLIC = "public"
ALL_AUTHENTICATED_USERS = "all_authenticated_users"


class Status(str, enum.Enum):
    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


def identity_urn(identity_id: str) -> str:
    return f"urn:globus:auth:identity:{identity_id}"


def group_urn(group_id: str) -> str:
    return f"urn:globus:groups:id:{group_id}"


def parse_duration(text: str) -> dt.timedelta:
    """Parse an ISO 8601 duration (``P30D``, ``PT1H30M``); years and months are not allowed."""
    try:
        value = isodate.parse_duration(text)
    except (isodate.ISO8601Error, ValueError, TypeError, OverflowError) as exc:
        raise ValueError(f"{text!r} is not an ISO 8601 duration such as 'P30D' or 'PT1H'") from exc
    if not isinstance(value, dt.timedelta):
        raise ValueError(f"{text!r}: use days, hours, minutes or seconds, not years or months")
    if value < dt.timedelta(0):
        raise ValueError(f"{text!r} is negative")
    return value


def format_duration(seconds: float) -> str:
    return isodate.duration_isoformat(dt.timedelta(seconds=seconds))


def format_time(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, UTC).isoformat()


class Duration(fields.Field):
    """An ISO 8601 duration on the wire; seconds (float) in Python."""

    default_error_messages = {"invalid": "Not an ISO 8601 duration: {reason}."}

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str):
            raise self.make_error("invalid", reason="expected a string such as 'P30D'")
        try:
            return parse_duration(value).total_seconds()
        except ValueError as exc:
            raise self.make_error("invalid", reason=str(exc)) from exc

    def _serialize(self, value, attr, obj, **kwargs):
        return None if value is None else format_duration(value)


class EpochTime(fields.Field):
    """A date-time on the wire; UTC epoch seconds (float) in Python."""

    def _serialize(self, value, attr, obj, **kwargs):
        return None if value is None else format_time(value)


class Principal(fields.String):
    def __init__(self, **kwargs):
        kwargs.setdefault("metadata", {"pattern": PRINCIPAL_URN.pattern})
        super().__init__(**kwargs)

    default_error_messages = {
        "principal": "{input!r} is not a principal URN (urn:globus:auth:identity:<uuid> or "
        "urn:globus:groups:id:<uuid>)."
    }

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        if not PRINCIPAL_URN.match(text):
            raise self.make_error("principal", input=text)
        return text


class _OmitNone(Schema):
    """Never emit ``null``: a field without a value is left out."""

    @post_dump
    def _omit_none(self, data, **kwargs):
        return {key: value for key, value in data.items() if value is not None}


# PostgreSQL text columns cannot hold NUL.
_NO_NUL = validate.Regexp(r"^[^\x00]*$", error="must not contain NUL characters")


class ActionRequestSchema(Schema):
    class Meta:
        unknown = RAISE

    request_id = fields.String(required=True, validate=[validate.Length(1, 256), _NO_NUL])
    body = fields.Dict(keys=fields.String(), required=True)
    label = fields.String(validate=[validate.Length(1, 64), _NO_NUL])
    monitor_by = fields.List(Principal(), validate=validate.Length(max=100))
    manage_by = fields.List(Principal(), validate=validate.Length(max=100))
    deadline = fields.AwareDateTime(default_timezone=UTC)
    release_after = Duration(metadata={"type": "string", "format": "duration"})


class ActionStatusSchema(_OmitNone):
    action_id = fields.String(required=True)
    status = fields.Enum(Status, by_value=True, required=True)
    creator_id = fields.String(required=True)
    details = fields.Dict(required=True)
    label = fields.String(validate=validate.Length(1, 64))
    monitor_by = fields.List(fields.String())
    manage_by = fields.List(fields.String())
    start_time = EpochTime(metadata={"type": "string", "format": "date-time"})
    completion_time = EpochTime(metadata={"type": "string", "format": "date-time"})
    release_after = Duration(metadata={"type": "string", "format": "duration"})
    display_status = fields.String(validate=validate.Length(1, 64))


class ProviderDescriptionSchema(_OmitNone):
    types = fields.List(fields.String(), required=True)
    api_version = fields.String(required=True)
    title = fields.String(required=True)
    subtitle = fields.String()
    description = fields.String()
    keywords = fields.List(fields.String())
    globus_auth_scope = fields.String(required=True)
    admin_contact = fields.String(required=True)
    synchronous = fields.Boolean(required=True)
    log_supported = fields.Boolean(required=True)
    visible_to = fields.List(fields.String(), required=True)
    runnable_by = fields.List(fields.String(), required=True)
    administered_by = fields.List(fields.String(), required=True)
    maximum_deadline = fields.String()
    input_schema = fields.Dict(required=True)


class LogEntrySchema(_OmitNone):
    time = EpochTime(required=True, metadata={"type": "string", "format": "date-time"})
    code = fields.String(required=True)
    description = fields.String(required=True)
    details = fields.Dict()


class LogPageSchema(_OmitNone):
    entries = fields.List(fields.Nested(LogEntrySchema), required=True)
    limit = fields.Integer(required=True)
    has_next_page = fields.Boolean(required=True)
    marker = fields.String()


class ErrorSchema(Schema):
    code = fields.String(required=True)
    description = fields.String(required=True)


@dataclasses.dataclass
class Action:
    """One action as stored; :class:`ActionStatusSchema` turns it into the wire ActionStatus."""

    action_id: str
    provider: str
    request_id: str
    request_hash: str
    creator_id: str
    status: Status
    body: dict[str, Any]
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    label: str | None = None
    monitor_by: list[str] = dataclasses.field(default_factory=list)
    manage_by: list[str] = dataclasses.field(default_factory=list)
    start_time: float | None = None
    completion_time: float | None = None
    release_after: float = 30 * 86400.0
    display_status: str | None = None
    deadline: float | None = None
    attempts: int = 0
    runner: str | None = None
    heartbeat: float | None = None
    principals: list[str] = dataclasses.field(default_factory=list)

    @property
    def expires_at(self) -> float | None:
        if self.completion_time is None:
            return None
        return self.completion_time + self.release_after


def flatten_messages(messages: Any, prefix: str = "") -> list[str]:
    """Turn marshmallow's nested error messages into ``field.path: message`` lines."""
    if isinstance(messages, Mapping):
        lines = []
        for key, value in messages.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if key == "_schema":
                name = prefix or "request"
            lines.extend(flatten_messages(value, name))
        return lines
    if isinstance(messages, (list, tuple)):
        if all(isinstance(m, str) for m in messages):
            return [f"{prefix}: {m}" if prefix else m for m in messages]
        lines = []
        for item in messages:
            lines.extend(flatten_messages(item, prefix))
        return lines
    return [f"{prefix}: {messages}" if prefix else str(messages)]


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    text = "; ".join(flatten_messages(exc.messages, prefix))
    return text.replace("Unknown field.", "unknown field, not allowed here.")
