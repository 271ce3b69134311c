"""gunicorn's logger for ``aptk serve``, with access lines that cost a fraction of gunicorn's own.

For every request gunicorn builds all the atoms an access-log format may name, including one per request header,
response header and WSGI environ variable (about fifty on an API request), escapes each, and formats the time
stamp again. The default format uses nine. :class:`AccessLogger` writes the default format's line directly, hands
gunicorn's formatting only the variables that any other ``access_log_format`` names, and formats the time stamp
once a second; the lines are the same.

Where the access log is gunicorn's own file or stream handler (``--access-logfile``), a line is written to its
stream directly, under the handler's lock, as the handler would write it: the logging module's record, filters
and formatter (a third of a line's cost) are skipped. Any other set-up (a log configuration, syslog, filters,
another formatter or handler) goes through :mod:`logging` as with gunicorn's logger.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import traceback
from typing import Any

from gunicorn.glogging import Logger, SafeAtoms

# What gunicorn's fixed atoms read from the environ ('u' reads Authorization for a Basic user name).
_BASE_VARIABLES = ("REMOTE_ADDR", "REQUEST_METHOD", "RAW_URI", "SERVER_PROTOCOL", "PATH_INFO", "QUERY_STRING",
                   "HTTP_REFERER", "HTTP_USER_AGENT", "HTTP_AUTHORIZATION")
DEFAULT_FORMAT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
"""gunicorn's default ``access_log_format``."""
_KEYS = re.compile(r"%\(([^)]*)\)")
_NAMED = re.compile(r"\{([^}]*)\}([ioe])")


class _Answer:
    """A response as gunicorn's atoms see it, with only the headers the format names."""

    __slots__ = ("status", "sent", "headers")

    def __init__(self, resp: Any, headers: list[tuple[str, str]]) -> None:
        self.status = resp.status
        self.sent = getattr(resp, "sent", None)
        self.headers = headers


class AccessLogger(Logger):
    """gunicorn's :class:`~gunicorn.glogging.Logger`; its access lines hold the same text, built from only what
    the format names (see the module's text)."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self._clock = threading.local()
        self._named_for: tuple[str, tuple[Any, ...]] | None = None

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        handler = self._plain_handler()
        if handler is None:
            super().access(resp, req, environ, request_time)
            return
        try:
            text = self.line(resp, req, environ, request_time)
            handler.acquire()
            try:
                handler.stream.write(text + handler.terminator)
                handler.stream.flush()
            finally:
                handler.release()
        except Exception:
            self.error(traceback.format_exc())

    def _plain_handler(self) -> logging.StreamHandler | None:  # type: ignore[type-arg]
        """The access log's handler, if it is gunicorn's own stream or file handler writing each message as it
        is, with nothing else that could see or change a record (otherwise None: logging does the work)."""
        if not self.access_log_enabled:
            return None
        log = self.access_log
        handlers = log.handlers
        if len(handlers) != 1 or log.filters or log.disabled or not log.isEnabledFor(logging.INFO):
            return None
        handler = handlers[0]
        formatter = handler.formatter
        if type(handler) not in (logging.StreamHandler, logging.FileHandler) or not getattr(handler, "_gunicorn", False) \
                or handler.filters or handler.level > logging.INFO or handler.stream is None \
                or type(formatter) is not logging.Formatter or formatter._fmt != "%(message)s" \
                or type(formatter._style) is not logging.PercentStyle:
            return None
        return handler

    def line(self, resp: Any, req: Any, environ: Any, request_time: Any) -> str:
        """The access line of a request, as gunicorn's logger formats it."""
        access_format = self.cfg.access_log_format
        if access_format != DEFAULT_FORMAT or self.atoms_wrapper_class is not SafeAtoms:
            return access_format % self.atoms_wrapper_class(self.atoms(resp, req, environ, request_time))
        # gunicorn's default format (the one `aptk serve` uses), written out: the same atoms, escaped the same way.
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        sent = getattr(resp, "sent", None)
        parts = (environ.get("REMOTE_ADDR", "-"), self._get_user(environ) or "-", self.now(),
                 f"{environ['REQUEST_METHOD']} {environ['RAW_URI']} {environ['SERVER_PROTOCOL']}", status,
                 sent is not None and str(sent) or "-", environ.get("HTTP_REFERER", "-"),
                 environ.get("HTTP_USER_AGENT", "-"))
        h, u, t, r, s, b, f, a = (p.replace('"', '\\"') if isinstance(p, str) else p for p in parts)
        return f'{h} - {u} {t} "{r}" {s} {b} "{f}" "{a}"'

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        keys, request_headers, response_headers, variables = self._named()
        wanted = {name: environ[name] for name in _BASE_VARIABLES if name in environ}
        for name in variables:
            if name in environ:
                wanted[name] = environ[name]
        inbound = [(k, v) for k, v in getattr(req, "headers", ()) if k.lower() in request_headers] \
            if request_headers else []
        outbound = [(k, v) for k, v in resp.headers if k.lower() in response_headers] if response_headers else []
        atoms = super().atoms(_Answer(resp, outbound), inbound, wanted, request_time)
        return {key: atoms[key] for key in keys if key in atoms}  # gunicorn escapes each one it gets

    def _named(self) -> tuple[tuple[str, ...], frozenset[str], frozenset[str], tuple[str, ...]]:
        """The atoms the access format names (``{...}`` ones in lowercase, as gunicorn looks them up), and the
        request headers, response headers and environ variables among them (headers in lowercase, as gunicorn
        matches them; variables as given, matched either way)."""
        access_format = self.cfg.access_log_format
        cached = self._named_for
        if cached is not None and cached[0] == access_format:
            return cached[1]
        keys = tuple({k.lower() if k.startswith("{") else k: None for k in _KEYS.findall(access_format)})
        found: dict[str, set[str]] = {"i": set(), "o": set(), "e": set()}
        for key in keys:
            match = _NAMED.fullmatch(key)
            if match:
                found[match[2]].add(match[1])
        variables = tuple(sorted({v.upper() for v in found["e"]} | found["e"]))
        named = (keys, frozenset(found["i"]), frozenset(found["o"]), variables)
        self._named_for = (access_format, named)
        return named

    def now(self) -> str:
        """The time stamp of an access line: formatted once a second (per thread)."""
        second = int(time.time())
        clock = self._clock
        if getattr(clock, "second", None) != second:
            clock.second, clock.text = second, super().now()
        return clock.text
