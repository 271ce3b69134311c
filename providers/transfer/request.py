"""The transfer provider's input: the Globus transfer action provider's document, in both of its forms.

Older form: ``source_endpoint_id``, ``destination_endpoint_id``, ``transfer_items``. Newer form (the Transfer API's
task document): ``source_endpoint``, ``destination_endpoint``, ``DATA`` of ``transfer_item``s. Both are normalized
into one :class:`TransferRequest`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from toolkit import BadActionRequest

from providers.collections import paths
from providers.collections.paths import PathOutsideCollection

from . import checksums

SYNC_LEVELS = {"exists": 0, "size": 1, "mtime": 2, "checksum": 3}
SYNC_NAMES = {v: k for k, v in SYNC_LEVELS.items()}

_ENDPOINT = {"type": "string", "minLength": 1, "maxLength": 128,
             "description": "The collection's UUID (or its configured name)."}
_ITEM = {
    "type": "object",
    "additionalProperties": False,
    "required": ["source_path", "destination_path"],
    "properties": {
        "DATA_TYPE": {"type": "string", "enum": ["transfer_item"]},
        "source_path": {"type": "string", "minLength": 1, "maxLength": 4096,
                        "description": "Path in the source collection, from its root ('/data/run1')."},
        "destination_path": {"type": "string", "minLength": 1, "maxLength": 4096,
                             "description": "Path in the destination collection; a trailing '/' on a file item "
                                            "means 'into this folder'."},
        "recursive": {"type": "boolean", "default": False, "description": "The source is a folder: copy it all."},
        "external_checksum": {"type": "string", "pattern": "^[0-9a-fA-F]{8,128}$",
                              "description": "The source file's expected checksum (hex, in the item's "
                                             "checksum_algorithm); a mismatch fails the item."},
        "checksum_algorithm": {"type": "string", "minLength": 1, "maxLength": 16,
                               "description": "The external_checksum's algorithm (default: the transfer's): MD5, "
                                              "ADLER32, SHA1, SHA256 or SHA512."},
    },
}
_ITEMS = {"type": "array", "minItems": 1, "maxItems": 10000, "items": _ITEM}
_FILTER = {
    "type": "object",
    "additionalProperties": False,
    "required": ["method", "name"],
    "properties": {
        "DATA_TYPE": {"type": "string", "enum": ["filter_rule"]},
        "method": {"type": "string", "enum": ["include", "exclude"]},
        "name": {"type": "string", "minLength": 1, "maxLength": 1024,
                 "description": "A shell pattern matched against file and folder names ('*.tmp')."},
        "type": {"type": "string", "enum": ["file", "dir"]},
    },
}
_IGNORED = "Accepted for compatibility with the Globus transfer action provider; has no effect here."

INPUT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "description": (
        "Give the source collection (source_endpoint_id or source_endpoint), the destination collection "
        "(destination_endpoint_id or destination_endpoint) and the items (transfer_items or DATA)."
    ),
    "properties": {
        "DATA_TYPE": {"type": "string", "enum": ["transfer"]},
        "source_endpoint_id": _ENDPOINT,
        "destination_endpoint_id": _ENDPOINT,
        "source_endpoint": _ENDPOINT,
        "destination_endpoint": _ENDPOINT,
        "transfer_items": _ITEMS,
        "DATA": _ITEMS,
        "label": {"type": "string", "maxLength": 128},
        "sync_level": {
            "description": "Copy only what differs: 0/exists (missing), 1/size (size differs), 2/mtime (source "
                           "newer), 3/checksum (contents differ). Absent: copy everything.",
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": 3},
                {"type": "string", "enum": list(SYNC_LEVELS)},
            ],
        },
        "verify_checksum": {"type": "boolean", "default": True,
                            "description": "Re-read each file written and compare checksums; recopy on a "
                                           "mismatch."},
        "checksum_algorithm": {"type": "string", "minLength": 1, "maxLength": 16,
                               "description": "The checksum for verify_checksum and sync_level checksum: MD5, "
                                              "ADLER32, SHA1, SHA256 (default) or SHA512."},
        "preserve_timestamp": {"type": "boolean", "default": False,
                               "description": "Give copies the source's modification time (not on S3)."},
        "skip_source_errors": {"type": "boolean", "default": False,
                               "description": "Skip source files that are missing or unreadable instead of failing."},
        "delete_destination_extra": {"type": "boolean", "default": False,
                                     "description": "For recursive items: delete what the destination folder "
                                                    "holds and the source folder does not."},
        "deadline": {"type": "string", "format": "date-time",
                     "description": "Stop and fail if not done by then (RFC 3339)."},
        "filter_rules": {"type": "array", "maxItems": 100, "items": _FILTER,
                         "description": "For recursive items: the first rule whose pattern matches a name decides "
                                        "whether it is copied (an excluded folder is not entered)."},
        "encrypt_data": {"type": "boolean", "description": _IGNORED},
        "fail_on_quota_errors": {"type": "boolean", "description": _IGNORED},
        "notify_on_succeeded": {"type": "boolean", "description": _IGNORED},
        "notify_on_failed": {"type": "boolean", "description": _IGNORED},
        "notify_on_inactive": {"type": "boolean", "description": _IGNORED},
        "store_base_path_info": {"type": "boolean", "description": _IGNORED},
        "source_local_user": {"type": "string", "description": _IGNORED},
        "destination_local_user": {"type": "string", "description": _IGNORED},
        "submission_id": {"type": "string", "description": _IGNORED},
    },
}


@dataclasses.dataclass(frozen=True)
class Item:
    index: int
    field: str  # "transfer_items" or "DATA"
    source_path: str
    destination_path: str
    recursive: bool
    src: str  # normalized, relative to the source root
    dst: str
    external_checksum: str | None = None
    checksum_algorithm: str = checksums.DEFAULT  # the external_checksum's

    @property
    def where(self) -> str:
        return f"{self.field}[{self.index}]"


@dataclasses.dataclass(frozen=True)
class FilterRule:
    method: str
    name: str
    type: str | None


@dataclasses.dataclass(frozen=True)
class TransferRequest:
    source_endpoint: str
    destination_endpoint: str
    items: tuple[Item, ...]
    label: str | None
    sync_level: int | None
    verify_checksum: bool
    preserve_timestamp: bool
    skip_source_errors: bool
    delete_destination_extra: bool
    deadline: float | None
    filter_rules: tuple[FilterRule, ...]
    checksum_algorithm: str = checksums.DEFAULT


def _endpoint(body: dict[str, Any], side: str) -> str:
    old, new = body.get(f"{side}_endpoint_id"), body.get(f"{side}_endpoint")
    if old is not None and new is not None and old != new:
        raise BadActionRequest(f"{side}_endpoint_id and {side}_endpoint name different collections; give one.")
    value = old if old is not None else new
    if value is None:
        raise BadActionRequest(f"{side}_endpoint_id: the {side} collection is required.")
    return value


def parse_deadline(text: str) -> float:
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadActionRequest(f"deadline: {text!r} is not an RFC 3339 date-time.") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.timestamp()


def _algorithm(value: Any, where: str, default: str) -> str:
    if value is None:
        return default
    name = checksums.canonical(str(value))
    if name is None:
        raise BadActionRequest(f"{where}: {value!r} is not a checksum algorithm here; use one of "
                               f"{', '.join(checksums.ALGORITHMS)}.")
    return name


def normalize_request(body: dict[str, Any]) -> TransferRequest:
    """The request in one form, or a 400 naming the offending field."""
    algorithm = _algorithm(body.get("checksum_algorithm"), "checksum_algorithm", checksums.DEFAULT)
    source = _endpoint(body, "source")
    destination = _endpoint(body, "destination")
    if "transfer_items" in body and "DATA" in body:
        raise BadActionRequest("Give the items as transfer_items or as DATA, not both.")
    field = "transfer_items" if "transfer_items" in body else "DATA"
    raw_items = body.get(field)
    if not raw_items:
        raise BadActionRequest("transfer_items: at least one item (source_path, destination_path) is required.")
    items = []
    for index, raw in enumerate(raw_items):
        where = f"{field}[{index}]"
        resolved = {}
        for key in ("source_path", "destination_path"):
            try:
                resolved[key] = paths.normalize(raw[key])
            except PathOutsideCollection as exc:
                raise BadActionRequest(f"{where}.{key}: {exc.path!r} {exc.reason}.") from None
        checksum = raw.get("external_checksum")
        if raw.get("checksum_algorithm") and not checksum:
            raise BadActionRequest(f"{where}.checksum_algorithm: given without external_checksum.")
        item_algorithm = _algorithm(raw.get("checksum_algorithm"), f"{where}.checksum_algorithm", algorithm)
        if checksum and len(checksum) != checksums.digest_length(item_algorithm):
            raise BadActionRequest(f"{where}.external_checksum: a {item_algorithm} checksum has "
                                   f"{checksums.digest_length(item_algorithm)} hex digits, not {len(checksum)}.")
        items.append(Item(index, field, raw["source_path"], raw["destination_path"], bool(raw.get("recursive")),
                          resolved["source_path"], resolved["destination_path"],
                          checksum.lower() if checksum else None, item_algorithm))
    level = body.get("sync_level")
    if isinstance(level, str):
        level = SYNC_LEVELS[level]
    deadline = body.get("deadline")
    return TransferRequest(
        source_endpoint=source,
        destination_endpoint=destination,
        items=tuple(items),
        label=body.get("label"),
        sync_level=level,
        verify_checksum=bool(body.get("verify_checksum", True)),
        preserve_timestamp=bool(body.get("preserve_timestamp", False)),
        skip_source_errors=bool(body.get("skip_source_errors", False)),
        delete_destination_extra=bool(body.get("delete_destination_extra", False)),
        deadline=parse_deadline(deadline) if deadline else None,
        filter_rules=tuple(FilterRule(r["method"], r["name"], r.get("type")) for r in body.get("filter_rules", [])),
        checksum_algorithm=algorithm,
    )
