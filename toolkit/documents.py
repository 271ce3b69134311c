"""The wire documents of the Action Provider API.

The marshmallow schemas here are the single source of truth: they validate what comes in, serialize what goes
out, and generate the OpenAPI document (see :mod:`toolkit.openapi`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import functools
import re
import urllib.parse
from typing import Any, Mapping

import isodate
from marshmallow import RAISE, Schema, ValidationError, fields, post_dump, validate

UTC = dt.timezone.utc

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_UUID_ANY_CASE = re.compile(_UUID, re.IGNORECASE)


def is_uuid(value: object) -> bool:
    """True for a UUID in its usual form (8-4-4-4-12 hex digits, any case)."""
    return isinstance(value, str) and _UUID_ANY_CASE.fullmatch(value) is not None


# What a principal is (README, "Who is who"). Every verifier names callers only in these forms, and every field
# that names principals (monitor_by, manage_by, runnable_by, visible_to, administered_by) accepts exactly these:
#   urn:globus:auth:identity:<uuid>   a subject (the token's ``sub``, else its ``client_id``) that is a UUID
#   urn:globus:groups:id:<uuid>       a group whose id is a UUID
#   urn:aptk:subject:<name>           a subject that is not a UUID (e.g. a client id such as ``flows-client``)
#   urn:aptk:group:<name>             a group whose name is not a UUID (e.g. ``/lab/members`` from a groups claim)
# UUIDs are lower-case; a <name> keeps its case (subjects are case-sensitive) and percent-encodes (%XX, UTF-8)
# every character other than letters, digits and -._~!$&'()*+;=:@/ (a comma or a space, say).
IDENTITY_PREFIX = "urn:globus:auth:identity:"
GROUP_PREFIX = "urn:globus:groups:id:"
SUBJECT_PREFIX = "urn:aptk:subject:"
NAMED_GROUP_PREFIX = "urn:aptk:group:"
MAX_PRINCIPAL_LENGTH = 256
_NAME_SAFE = "-._~!$&'()*+;=:@/"  # RFC 3986 pchar less "," (lists of principals are comma-separated)
# A percent-escape sequence that decodes to one UTF-8 character (RFC 3629, section 4: no overlong forms, no
# surrogates), so that the OpenAPI pattern promises no name the server would refuse.
_T = "%[89AB][0-9A-F]"
_UTF8 = (
    f"%[0-7][0-9A-F]|%(?:C[2-9A-F]|D[0-9A-F]){_T}|%E0%[AB][0-9A-F]{_T}|%E[1-9A-CEF]{_T}{_T}|%ED%[89][0-9A-F]{_T}"
    f"|%F0%[9AB][0-9A-F]{_T}{_T}|%F[1-3]{_T}{_T}{_T}|%F4%8[0-9A-F]{_T}{_T}"
)
_NAME = rf"(?:[A-Za-z0-9\-._~!$&'()*+;=:@/]|{_UTF8})+"
_NAME_RE = re.compile(_NAME)
#: The canonical form of a principal URN (what :func:`normalize_principal` returns).
PRINCIPAL_URN = re.compile(
    rf"urn:globus:(?:auth:identity|groups:id):{_UUID}|urn:aptk:(?:subject|group):{_NAME}"
)
_PRINCIPAL_PATTERN = f"^(?:{PRINCIPAL_URN.pattern})$"  # for JSON Schema (ECMA 262: `$` is the very end)
PUBLIC = "public"
ALL_AUTHENTICATED_USERS = "all_authenticated_users"

_KINDS = {  # prefix -> (kind, the UUID form of the same kind)
    IDENTITY_PREFIX: ("identity", IDENTITY_PREFIX),
    SUBJECT_PREFIX: ("identity", IDENTITY_PREFIX),
    GROUP_PREFIX: ("group", GROUP_PREFIX),
    NAMED_GROUP_PREFIX: ("group", GROUP_PREFIX),
}
_PRINCIPAL_FORMS = (
    "urn:globus:auth:identity:<uuid>, urn:globus:groups:id:<uuid>, urn:aptk:subject:<name> or urn:aptk:group:<name>"
)


def _shown(value: str, limit: int = 80) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def principal_kind(urn: str) -> str:
    """``"identity"`` or ``"group"`` for a principal URN in canonical form."""
    for prefix, (kind, _) in _KINDS.items():
        if urn.startswith(prefix):
            return kind
    raise ValueError(f"{_shown(urn)} is not a principal URN")


def normalize_principal(value: str, kind: str | None = None, *, uuid_kind: str | None = None) -> str:
    """``value`` (a principal URN as a person may write it) in the canonical form verifiers produce.

    The URN prefix and UUIDs are lower-cased, percent-escapes upper-cased, characters that need no escape
    unescaped; ``urn:aptk:subject:<uuid>`` becomes ``urn:globus:auth:identity:<uuid>`` (and likewise for groups).
    Anything else raises :class:`ValueError` saying precisely what is wrong: a trailing newline, a stray space,
    a UUID with a typo, an unknown prefix.

    With ``kind`` (``"identity"`` or ``"group"``) the principal must be of that kind, and a bare UUID is one
    (``urn:globus:auth:identity:<uuid>``, ``urn:globus:groups:id:<uuid>``); ``uuid_kind`` accepts a bare UUID as
    a principal of that kind without restricting the kind of a URN. This is the one place where a principal as
    written (a request, a provider's settings, a collection's owners, a stored access rule) becomes the form
    callers are named in.
    """
    uuid_kind = uuid_kind or kind
    if uuid_kind is not None and isinstance(value, str):
        if _UUID_ANY_CASE.fullmatch(value):
            urn = (IDENTITY_PREFIX if uuid_kind == "identity" else GROUP_PREFIX) + value.lower()
        elif value[:4].lower() != "urn:":
            raise ValueError(f"{_shown(value)} is not a principal URN ({_PRINCIPAL_FORMS}) nor a {uuid_kind} UUID")
        else:
            urn = _canonical_urn(value)
    else:
        urn = _canonical_urn(value)
    if kind is not None and principal_kind(urn) != kind:
        uuid_prefix, name_prefix = (
            (IDENTITY_PREFIX, SUBJECT_PREFIX) if kind == "identity" else (GROUP_PREFIX, NAMED_GROUP_PREFIX)
        )
        raise ValueError(f"{_shown(value)} is not a {kind} (expected {uuid_prefix}<uuid> or, for a caller without "
                         f"a UUID, {name_prefix}<name>)")
    return urn


def _canonical_urn(value: str) -> str:
    if not isinstance(value, str):
        raise ValueError("is not a string")
    if len(value) > MAX_PRINCIPAL_LENGTH:
        raise ValueError(f"is longer than {MAX_PRINCIPAL_LENGTH} characters")
    lower = value.lower()
    for prefix, (kind, uuid_prefix) in _KINDS.items():
        if not lower.startswith(prefix):
            continue
        rest = value[len(prefix):]
        if prefix == uuid_prefix:
            if not _UUID_ANY_CASE.fullmatch(rest):
                raise ValueError(f"{_shown(value)}: a {prefix}<uuid> needs a UUID (8-4-4-4-12 hex digits) after "
                                 f"the prefix and nothing else; got {_shown(rest)}")
            return prefix + rest.lower()
        if not rest:
            raise ValueError(f"{_shown(value)}: {prefix}<name> needs a name after the prefix")
        if "%" in re.sub(r"%[0-9A-Fa-f]{2}", "", rest):
            raise ValueError(f"{_shown(value)}: a '%' must start an escape of two hex digits (%25 is '%' itself)")
        bad = sorted({c for c in re.sub(r"%[0-9A-Fa-f]{2}", "", rest) if not _NAME_RE.fullmatch(c)})
        if bad:
            raise ValueError(
                f"{_shown(value)}: percent-encode {', '.join(repr(c) for c in bad)} in a {prefix}<name> "
                f"(only letters, digits and {_NAME_SAFE} stand for themselves; e.g. %20 is a space, %2C a comma)"
            )
        try:
            name = urllib.parse.unquote(rest, errors="strict")
        except UnicodeDecodeError:
            raise ValueError(f"{_shown(value)}: the percent-escapes are not UTF-8") from None
        return principal_for(name, kind)
    raise ValueError(f"{_shown(value)} is not a principal URN ({_PRINCIPAL_FORMS})")


def principal_for(name: str, kind: str) -> str:
    """The principal URN for an identity or group ``name`` as an authorization server gives it (a ``sub``, a
    ``client_id``, an entry of a groups claim): the UUID form for a UUID, else the ``urn:aptk:...:<name>`` form.
    A value that is already a principal URN must be of the same kind."""
    name_prefix = SUBJECT_PREFIX if kind == "identity" else NAMED_GROUP_PREFIX
    if not isinstance(name, str) or not name:
        raise ValueError(f"an empty {kind} name")
    if _UUID_ANY_CASE.fullmatch(name) or any(name.lower().startswith(prefix) for prefix in _KINDS):
        return normalize_principal(name, kind)
    urn = name_prefix + urllib.parse.quote(name, safe=_NAME_SAFE)
    if len(urn) > MAX_PRINCIPAL_LENGTH:
        raise ValueError(
            f"the {kind} name {_shown(name)} is too long for a principal ({MAX_PRINCIPAL_LENGTH} characters)"
        )
    return urn


class Status(str, enum.Enum):
    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


def identity_urn(identity_id: str) -> str:
    """The principal of an identity: its UUID, its name or its URN (see :func:`principal_for`)."""
    return principal_for(identity_id, "identity")


def group_urn(group_id: str) -> str:
    """The principal of a group: its UUID, its name or its URN (see :func:`principal_for`)."""
    return principal_for(group_id, "group")


SHOWN_LIMIT = 100
"""How much of an offending value an error description repeats."""


def shown(value: Any, limit: int = SHOWN_LIMIT) -> str:
    """``repr(value)`` for an error description, cut to ``limit`` characters with its full length said: a 400 must
    not send a 5 MiB value back."""
    text = repr(value)
    if len(text) <= limit:
        return text
    length = len(value) if isinstance(value, (str, bytes, list, dict)) else len(text)
    unit = "items" if isinstance(value, (list, dict)) else "characters"
    return f"{text[:limit]}... ({length} {unit})"


_NUMBER = "[0-9]{1,8}"  # at most 99,999,999 of a unit: within what a duration can hold, however combined
_SECONDS = rf"{_NUMBER}(?:\.[0-9]{{1,6}})?S"
_TIME = rf"T(?:{_NUMBER}H(?:{_NUMBER}M)?(?:{_SECONDS})?|{_NUMBER}M(?:{_SECONDS})?|{_SECONDS})"
DURATION_PATTERN = rf"^P(?:{_NUMBER}W|{_NUMBER}D(?:{_TIME})?|{_TIME})$"
"""The ISO 8601 durations an action's ``release_after`` is given in, as its OpenAPI schema says: weeks, or days,
hours, minutes and seconds (years and months have no fixed length)."""


def parse_duration(text: str) -> dt.timedelta:
    """Parse an ISO 8601 duration (``P30D``, ``PT1H30M``); years and months are not allowed."""
    try:
        value = isodate.parse_duration(text)
    except (isodate.ISO8601Error, ValueError, TypeError, OverflowError) as exc:
        raise ValueError(f"{shown(text)} is not an ISO 8601 duration such as 'P30D' or 'PT1H'") from exc
    if not isinstance(value, dt.timedelta):
        raise ValueError(f"{shown(text)}: use days, hours, minutes or seconds, not years or months")
    if value < dt.timedelta(0):
        raise ValueError(f"{shown(text)} is negative")
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
    """A principal URN, normalised (:func:`normalize_principal`); what cannot be normalised is a precise 400."""

    def __init__(self, **kwargs):
        kwargs.setdefault("metadata", {"pattern": _PRINCIPAL_PATTERN, "maxLength": MAX_PRINCIPAL_LENGTH})
        super().__init__(**kwargs)

    default_error_messages = {"principal": "{reason}."}

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            return normalize_principal(text)
        except ValueError as exc:
            raise self.make_error("principal", reason=str(exc)) from None


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
    release_after = Duration(metadata={"type": "string", "format": "duration", "pattern": DURATION_PATTERN})


_action_request_schema = ActionRequestSchema()


def load_action_request(document: dict[str, Any]) -> dict[str, Any]:
    """``ActionRequestSchema().load(document)``; a request of just a fine ``request_id`` and a ``body`` object
    (most runs) is taken as it is, since the schema would give back exactly that. ValidationError as the schema's.
    """
    if len(document) == 2:
        request_id, body = document.get("request_id"), document.get("body")
        if (isinstance(request_id, str) and 0 < len(request_id) <= 256 and "\x00" not in request_id
                and type(body) is dict and all(type(k) is str for k in body)):
            return {"request_id": request_id, "body": dict(body)}
    return _action_request_schema.load(document)


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


def dump_status(action: "Action") -> dict[str, Any]:
    """``ActionStatusSchema().dump(action)``, without marshmallow's per-field machinery.

    A status is the answer to almost every request; the schema stays the definition (and the OpenAPI source),
    and the tests hold this function to giving exactly what the schema's dump gives.
    """
    document: dict[str, Any] = {
        "action_id": action.action_id,
        "status": action.status.value,
        "creator_id": action.creator_id,
        "details": dict(action.details),
    }
    if action.label is not None:
        document["label"] = action.label
    if action.monitor_by is not None:
        document["monitor_by"] = list(action.monitor_by)
    if action.manage_by is not None:
        document["manage_by"] = list(action.manage_by)
    if action.start_time is not None:
        document["start_time"] = format_time(action.start_time)
    if action.completion_time is not None:
        document["completion_time"] = format_time(action.completion_time)
    if action.release_after is not None:
        document["release_after"] = _duration_text(action.release_after)
    if action.display_status is not None:
        document["display_status"] = action.display_status
    return document


@functools.lru_cache(maxsize=256)
def _duration_text(seconds: float) -> str:
    return format_duration(seconds)


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
