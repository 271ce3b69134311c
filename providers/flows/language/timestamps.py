"""Timestamps as the States Language writes them: RFC 3339, with an uppercase ``T`` and a zone."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import isodate

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def parse(value: Any) -> datetime | None:
    """The aware datetime ``value`` denotes, or None when it is not an RFC 3339 timestamp string."""
    if not isinstance(value, str) or not _RFC3339.match(value):
        return None
    try:
        parsed = isodate.parse_datetime(value)
    except (ValueError, isodate.ISO8601Error):
        return None
    return parsed if isinstance(parsed, datetime) else None
