"""Log lines as JSON (``APTK_LOG_FORMAT=json``), each line about an action carrying its ``action_id``.

The toolkit sets the action a thread works for (:func:`action_context`) while it serves a request naming an
action (``/{id}/status``, ``/{id}/cancel``, ...) and while a callback (synchronous ones too), a deadline or a
recovery works on one; :class:`ActionFilter` copies it onto every record, and :class:`JsonFormatter` writes one JSON
object a line: ``time``, ``level``, ``logger``, ``message``, ``action_id`` (when there is one) and
``exception`` (a traceback, when there is one).

Tokens are never written: the toolkit does not log credentials, and as a second line of defence the formatter
masks what looks like one (``Bearer ...``, a JWT) in the message and the traceback.

``aptk serve`` installs both for the toolkit's, the providers' and gunicorn's loggers. An app served otherwise
can use them in its own logging configuration (see :func:`logging_config`).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import json
import logging
import re
import sys
from typing import Any, Iterator

from .errors import ConfigurationError

FORMATS = ("text", "json")
_current_action: contextvars.ContextVar[str | None] = contextvars.ContextVar("aptk_action_id", default=None)

# Bearer credentials and JWTs (three base64url segments, the first a JSON header: "ey...").
_SECRET = re.compile(r"(?i)(bearer\s+)[^\s,;\"']+|\bey[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")


def current_action() -> str | None:
    """The id of the action this thread works for now, if any."""
    return _current_action.get()


@contextlib.contextmanager
def action_context(action_id: str | None) -> Iterator[None]:
    """Within the block, log lines of this thread carry ``action_id``."""
    token = _current_action.set(action_id)
    try:
        yield
    finally:
        _current_action.reset(token)


def redact(text: str) -> str:
    """``text`` with bearer credentials and JWTs masked."""
    return _SECRET.sub(lambda m: (m.group(1) or "") + "[redacted]", text)


class ActionFilter(logging.Filter):
    """Sets ``record.action_id`` to the action the logging thread works for (None if none)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "action_id", None) is None:
            record.action_id = _current_action.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, action_id, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        action_id = getattr(record, "action_id", None) or _current_action.get()
        if action_id:
            entry["action_id"] = action_id
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = redact(record.exc_text)
        return json.dumps(entry, ensure_ascii=False, default=str)


def check_format(value: Any) -> str:
    """``APTK_LOG_FORMAT``'s value, or a ConfigurationError naming the setting."""
    word = str(value or "text").strip().lower()
    if word not in FORMATS:
        raise ConfigurationError(f"APTK_LOG_FORMAT must be one of {', '.join(FORMATS)}, not {value!r}")
    return word


def logging_config(level: str = "INFO") -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` dictionary: JSON lines on stderr (gunicorn's access log on stdout)."""

    def handler(stream: str) -> dict[str, Any]:
        return {"class": "logging.StreamHandler", "stream": stream, "formatter": "aptk_json",
                "filters": ["aptk_action"]}

    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"aptk_action": {"()": ActionFilter}},
        "formatters": {"aptk_json": {"()": JsonFormatter}},
        "handlers": {"aptk_stderr": handler("ext://sys.stderr"), "aptk_stdout": handler("ext://sys.stdout")},
        "root": {"level": level, "handlers": ["aptk_stderr"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["aptk_stderr"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["aptk_stdout"], "propagate": False},
        },
    }


def start_up_line(message: str) -> None:
    """What ``aptk serve`` says on stderr before the server starts, as a JSON line (logger ``aptk``)."""
    record = logging.LogRecord("aptk", logging.INFO, __file__, 0, message, None, None)
    print(JsonFormatter().format(record), file=sys.stderr, flush=True)
