"""The gunicorn worker behind ``aptk serve``: whole requests are read in the event loop before a thread runs them.

gunicorn's ``gthread`` worker hands each connection to a thread as soon as its first byte arrives; the thread then
blocks reading the rest of the request. A client that trickles its header lines or its body holds that thread
for as long as it likes, so ``threads x workers`` slow clients (16 by default) stall the server.

:class:`BufferingWorker` keeps gthread's design (one poller, a thread pool, kept-alive connections back in the
poller) and moves the reading of each request into the poller: the socket is read without blocking until the
request line, the headers and the whole body (by ``Content-Length`` or chunked framing) are in memory, and only
then does a thread parse and run it. A slow connection costs a few kilobytes and no thread. Each request has
``APTK_REQUEST_READ_TIMEOUT`` seconds (default 30) from its first byte (or from the connection) to arrive in
full; after that the connection gets a 408 and is closed.

Memory stays bounded too: each connection may buffer :data:`SMALL_REQUEST` bytes on its own; bytes beyond that
come from a per-worker budget (four request-size limits). A connection that would overdraw it stops being read
until others finish, while its read deadline keeps running. A body declared larger than the request-size limit
is not read at all: the request goes to a thread at once and is answered 413.

TLS and HTTP/2 connections, which ``aptk serve`` never accepts itself (a reverse proxy terminates TLS), are left
to gthread's own handling.
"""

from __future__ import annotations

import selectors
import socket
import time
from functools import partial
from typing import Any

from gunicorn import http, util
from gunicorn.http2 import negotiation
from gunicorn.workers.base import Worker
from gunicorn.workers.gthread import ThreadWorker

from .server import DEFAULT_READ_TIMEOUT
from .store import wait_for_writer

DEFAULT_MAX_BODY = 10 * 1024 * 1024
SMALL_REQUEST = 64 * 1024
"""Bytes every connection may buffer without drawing on the worker's shared budget."""
READ_SIZE = 64 * 1024
KEEP_SERVING = 32
"""Requests a thread answers in a row on one kept-alive connection whose next request is already there, before
the connection goes back to the event loop."""
STOP_LINGER = 2.0
"""A stopping worker waits this long at most for requests still arriving."""
CLOSE_LINGER = 2.0
CLOSE_DRAIN = 64 * 1024
"""A closed connection is drained (so that the answer is not cut off by a reset) this long and this much at most,
by the event loop; gthread does it blocking, which a client that never closes could use to stall the loop."""

_TIMEOUT_BODY = b'{"code": "RequestTimeout", "description": "The request did not arrive in time."}'
REQUEST_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
    b"Content-Length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + _TIMEOUT_BODY
)


class RequestFraming:
    """Tells, from the bytes received so far, whether one whole HTTP/1.x request has arrived.

    It only finds the request's end; gunicorn's parser still validates everything. Anything it cannot make
    sense of counts as complete, so that the parser sees it at once and refuses it.
    """

    def __init__(self, max_body: int, max_head: int) -> None:
        self.max_body = max_body
        self.max_head = max_head
        self.buffer = bytearray()
        self.head_end: int | None = None
        self.expects_continue = False
        self._length: int | None = None  # body bytes expected after the head, when known
        self._chunked = False
        self._pos = 0  # chunked: where the next chunk-size line starts
        self._decoded = 0
        self.complete = False

    def feed(self, data: bytes) -> bool:
        self.buffer += data
        if not self.complete:
            self.complete = self._scan()
        return self.complete

    def _scan(self) -> bool:
        if self.head_end is None:
            start = 0
            while self.buffer.startswith(b"\r\n", start):  # empty lines before a request are allowed
                start += 2
            end = self.buffer.find(b"\r\n\r\n", start)
            if end < 0:
                return len(self.buffer) > self.max_head
            self.head_end = end + 4
            if not self._read_head(bytes(self.buffer[start:end])):
                return True
            self._pos = self.head_end
        if self._chunked:
            return self._scan_chunks()
        assert self._length is not None
        return len(self.buffer) - self.head_end >= self._length

    def _read_head(self, head: bytes) -> bool:
        """Note how the body is framed; False when the request is ready for the parser as it is."""
        lengths, codings = [], []
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                lengths.append(value.strip())
            elif name == b"transfer-encoding":
                codings += [c.strip().lower() for c in value.split(b",")]
            elif name == b"expect":
                self.expects_continue = value.strip().lower() == b"100-continue"
        if codings:
            self._chunked = codings[-1] == b"chunked"
            return self._chunked
        if not lengths:
            return False  # no body
        if len(set(lengths)) != 1 or not lengths[0].isdigit() or len(lengths[0]) > 18:
            return False  # the parser refuses it
        self._length = int(lengths[0])
        # A body over the limit is refused (413) without being read.
        return 0 < self._length <= self.max_body

    def _scan_chunks(self) -> bool:
        while True:
            line_end = self.buffer.find(b"\r\n", self._pos)
            if line_end < 0:
                return len(self.buffer) - self._pos > 4096
            size_text = bytes(self.buffer[self._pos:line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                return True
            if size_text.startswith((b"-", b"+", b"0x", b"0X")) or size < 0:
                return True
            if size == 0:
                # The last chunk, then trailer fields up to an empty line.
                trailers = line_end + 2
                if self.buffer.startswith(b"\r\n", trailers):
                    return True
                return self.buffer.find(b"\r\n\r\n", trailers) >= 0 or len(self.buffer) - trailers > self.max_head
            self._decoded += size
            if self._decoded > self.max_body:
                return True  # enough to refuse it (413)
            chunk_end = line_end + 2 + size + 2
            if len(self.buffer) < chunk_end:
                self._decoded -= size
                return False
            self._pos = chunk_end


class _Reading:
    __slots__ = ("framing", "deadline", "large", "paused", "registered")

    def __init__(self, framing: RequestFraming, deadline: float) -> None:
        self.framing = framing
        self.deadline = deadline
        self.large = 0  # bytes drawn from the worker's budget
        self.paused = False
        self.registered = False  # with the poller


class BufferingWorker(ThreadWorker):
    """gthread, with each request read in full by the poller (under a deadline) before a thread runs it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading: dict[Any, _Reading] = {}
        self._lingering: dict[Any, list[float]] = {}  # socket -> [deadline, bytes drained]
        self._limits: tuple[float, int] | None = None
        self._budget_used = 0

    # --- settings, from the app once it is loaded ------------------------------------------------------------

    def limits(self) -> tuple[float, int]:
        """(read timeout in seconds, request-body limit in bytes)."""
        if self._limits is None:
            timeout, max_body = DEFAULT_READ_TIMEOUT, DEFAULT_MAX_BODY
            config = getattr(self.wsgi, "config", None)
            if config is not None:
                from .settings import number

                timeout = number(config, "APTK_REQUEST_READ_TIMEOUT", DEFAULT_READ_TIMEOUT, positive=True)
                max_body = config.get("MAX_CONTENT_LENGTH") or number(
                    config, "APTK_MAX_BODY_BYTES", DEFAULT_MAX_BODY, kind=int, positive=True
                )
            self._limits = (timeout, max_body)
        return self._limits

    @property
    def budget(self) -> int:
        return 4 * self.limits()[1]

    def _max_head(self) -> int:
        cfg = self.cfg
        return cfg.limit_request_line + cfg.limit_request_fields * (cfg.limit_request_field_size + 2) + 4

    # --- signals ----------------------------------------------------------------------------------------------

    def handle_quit(self, sig: Any, frame: Any) -> None:
        """SIGQUIT (the master's quick stop, as after Ctrl-C): gthread shuts its thread pool down from inside the
        signal handler. When the signal lands while this thread is inside the pool's ``submit`` (which holds the
        pool's lock while it starts a thread), that shutdown waits forever for the lock this very thread holds,
        and the worker hangs until the master kills it. Here the pool is shut down only when its lock is free;
        otherwise the exit unwinds ``submit`` (releasing the lock) and the interpreter's own exit hook stops the
        pool's threads."""
        lock = getattr(self.tpool, "_shutdown_lock", None)
        if lock is None or lock.acquire(blocking=False):
            if lock is not None:
                lock.release()
            self.tpool.shutdown(wait=False)
        Worker.handle_quit(self, sig, frame)

    # --- gthread hooks -----------------------------------------------------------------------------------------

    def handle(self, conn: Any) -> Any:
        """Answer the request on ``conn``; then, while the client's next request is already there in full, answer
        that one too on this thread (up to :data:`KEEP_SERVING` in a row).

        A kept-alive client (a flow engine polling, a load balancer) often sends its next request as soon as it
        has read the answer. Handing the connection back to the event loop and then to a thread again costs two
        thread switches and the loop's bookkeeping per request, more than a status read itself. Only a request
        that has arrived whole is taken here, with one read that does not wait; anything less goes back to the
        event loop, which reads the rest under the request's deadline as for any other request.

        A request starts once no write transaction of this process holds the SQLite write lock, or after a few
        milliseconds (see :func:`toolkit.store.wait_for_writer`).
        """
        wait_for_writer()
        result = super().handle(conn)
        served = 1
        while result is True and served < KEEP_SERVING and self.alive and self._next_request(conn):
            wait_for_writer()
            result = super().handle(conn)
            served += 1
        return result

    def _next_request(self, conn: Any) -> bool:
        """True if a whole next request is in ``conn``'s parser, ready for :meth:`handle`; else what has arrived of
        it (maybe nothing) is left for the event loop (see ``finish_request``)."""
        if conn.parser is None or conn.is_http2:
            return False
        unreader = conn.parser.unreader
        framing = RequestFraming(self.limits()[1], self._max_head())
        complete = framing.feed(unreader.take_buffered())
        if not complete:
            try:  # (the thread's socket is in blocking mode, without a timeout: this read does not wait)
                data = conn.sock.recv(READ_SIZE, socket.MSG_DONTWAIT)
            except OSError:  # nothing yet; or a broken connection, which the event loop sees and closes
                data = None
            if data:
                complete = framing.feed(data)
        if framing.buffer:
            unreader.unread(bytes(framing.buffer))
        return complete

    def enqueue_req(self, conn: Any) -> None:
        if conn.is_http2 or self.cfg.is_ssl or negotiation.prior_knowledge_allowed(self.cfg, conn.client):
            super().enqueue_req(conn)
            return
        conn.close = partial(self._close, conn)
        timeout, max_body = self.limits()
        reading = _Reading(RequestFraming(max_body, self._max_head()), time.monotonic() + timeout)
        if not self.alive:
            reading.deadline = min(reading.deadline, time.monotonic() + STOP_LINGER)
        conn.sock.setblocking(False)
        self._reading[conn] = reading
        ahead = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        if ahead and self._take(conn, reading, ahead):
            return
        if reading.paused:
            return
        # A kept-alive connection comes here because the poller saw bytes arrive: read them now (without
        # blocking) instead of after another trip through the poller. A whole request is dispatched at once.
        if self._read(conn, reading) or reading.paused or conn not in self._reading:
            return
        self._listen(conn, reading)

    def _listen(self, conn: Any, reading: _Reading) -> None:
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))
        reading.registered = True

    def _read(self, conn: Any, reading: _Reading) -> bool:
        """Read what has arrived; True when the connection left the reading stage (dispatched or dropped)."""
        try:
            data = conn.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            self._drop(conn)
            return True
        if not data:
            self._drop(conn)  # the client went away
            return True
        return self._take(conn, reading, data)

    def _on_readable(self, conn: Any, _sock: Any) -> None:
        reading = self._reading.get(conn)
        if reading is None:  # pragma: no cover - already dispatched or closed
            return
        if not self._read(conn, reading) and reading.paused:
            self.poller.unregister(conn.sock)
            reading.registered = False

    def _take(self, conn: Any, reading: _Reading, data: bytes) -> bool:
        """Add ``data``; True when the connection left the reading stage (dispatched)."""
        framing = reading.framing
        had_head = framing.head_end is not None
        complete = framing.feed(data)
        over = len(framing.buffer) - SMALL_REQUEST
        if over > reading.large:
            self._budget_used += over - reading.large
            reading.large = over
        if complete:
            self._dispatch(conn, reading)
            return True
        if not had_head and framing.head_end is not None and framing.expects_continue:
            try:
                conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            except OSError:
                pass
        reading.paused = reading.large > 0 and self._budget_used + READ_SIZE > self.budget
        return False

    def _release(self, reading: _Reading) -> None:
        if reading.large:
            self._budget_used -= reading.large
            reading.large = 0
            for conn, other in self._reading.items():
                if other.paused and self._budget_used + READ_SIZE <= self.budget:
                    other.paused = False
                    if not other.registered:
                        self._listen(conn, other)

    def _leave(self, conn: Any) -> _Reading:
        reading = self._reading.pop(conn)
        if reading.registered:  # (unregistering a socket the poller does not know costs an exception and its text)
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass
            reading.registered = False
        reading.paused = True  # never read again
        self._release(reading)
        return reading

    def _dispatch(self, conn: Any, reading: _Reading) -> None:
        if conn in self._reading:
            self._leave(conn)
        if conn.parser is None:
            conn.initialized = True
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
        conn.parser.unreader.unread(reading.framing.buffer)
        reading.framing.buffer = bytearray()
        conn.data_ready = True
        conn.sock.setblocking(True)
        super().enqueue_req(conn)

    def _drop(self, conn: Any, answer: bytes = b"") -> None:
        self._leave(conn)
        if answer:
            try:
                conn.sock.send(answer)
            except OSError:
                pass
        self.nr_conns -= 1
        conn.close()

    def _close(self, conn: Any, graceful: bool = False) -> None:
        """Close ``conn``; gracefully (RFC 9112 section 9.6: FIN, then drain what the client still sends) without
        blocking the event loop."""
        sock = conn.sock
        if not graceful:
            util.close(sock)
            return
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
            self.poller.register(sock, selectors.EVENT_READ, self._on_lingering)
        except (OSError, ValueError, KeyError):
            util.close(sock)
            return
        self._lingering[sock] = [time.monotonic() + CLOSE_LINGER, 0]

    def _on_lingering(self, sock: Any) -> None:
        state = self._lingering.get(sock)
        if state is None:  # pragma: no cover
            return
        try:
            data = sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        state[1] += len(data)
        if not data or state[1] >= CLOSE_DRAIN:
            self._end_lingering(sock)

    def _end_lingering(self, sock: Any) -> None:
        self._lingering.pop(sock, None)
        try:
            self.poller.unregister(sock)
        except (KeyError, ValueError, OSError):
            pass
        util.close(sock)

    def murder_pending(self) -> None:
        super().murder_pending()
        now = time.monotonic()
        for sock in [s for s, (deadline, _) in self._lingering.items() if deadline <= now]:
            self._end_lingering(sock)
        if not self.alive:
            for reading in self._reading.values():
                reading.deadline = min(reading.deadline, now + STOP_LINGER)
        expired = [conn for conn, reading in self._reading.items() if reading.deadline <= now]
        for conn in expired:
            started = bool(self._reading[conn].framing.buffer)
            self._drop(conn, REQUEST_TIMEOUT_RESPONSE if started else b"")
