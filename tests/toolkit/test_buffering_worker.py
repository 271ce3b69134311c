"""The gunicorn worker: its quit signal never deadlocks on the thread pool's lock; a thread takes a kept-alive
connection's next request only when it has arrived whole."""

from __future__ import annotations

import concurrent.futures
import socket
import threading
import time
import types

import pytest
from gunicorn.http.unreader import SocketUnreader

from toolkit.worker import BufferingWorker


def _worker() -> BufferingWorker:
    worker = BufferingWorker.__new__(BufferingWorker)  # only what handle_quit reads
    worker.tpool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    worker.cfg = types.SimpleNamespace(worker_int=lambda w: None)
    worker.alive = True
    return worker


def _quit_in_a_thread(worker: BufferingWorker, hold_pool_lock: bool) -> list[BaseException]:
    """Run handle_quit as a signal arriving in a thread would (the pool's lock held, as inside submit(), or
    not); what it raised. Fails the test if it never returns."""
    raised: list[BaseException] = []

    def receive() -> None:
        try:
            if hold_pool_lock:
                with worker.tpool._shutdown_lock:  # type: ignore[attr-defined]
                    worker.handle_quit(3, None)
            else:
                worker.handle_quit(3, None)
        except BaseException as exc:  # SystemExit, as gunicorn's handler exits the worker
            raised.append(exc)

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "the quit signal deadlocked on the thread pool's lock"
    return raised


def test_a_quit_signal_inside_the_pools_submit_exits_instead_of_deadlocking():
    worker = _worker()
    [exc] = _quit_in_a_thread(worker, hold_pool_lock=True)
    assert isinstance(exc, SystemExit) and exc.code == 0
    assert worker.alive is False


def test_a_quit_signal_elsewhere_shuts_the_pool_down_and_exits():
    worker = _worker()
    [exc] = _quit_in_a_thread(worker, hold_pool_lock=False)
    assert isinstance(exc, SystemExit) and exc.code == 0
    assert worker.tpool._shutdown  # type: ignore[attr-defined]


# --- the next request on a kept-alive connection, taken by the thread that answered the last one ----------------


@pytest.fixture
def connection():
    """(worker, conn, client socket): a kept-alive connection as handle() leaves it, on a real socket pair."""
    server_side, client = socket.socketpair()
    worker = BufferingWorker.__new__(BufferingWorker)
    worker._limits = (30.0, 1000)  # body limit 1000 bytes
    worker.cfg = types.SimpleNamespace(limit_request_line=4094, limit_request_fields=100, limit_request_field_size=8190)
    conn = types.SimpleNamespace(sock=server_side, is_http2=False,
                                 parser=types.SimpleNamespace(unreader=SocketUnreader(server_side)))
    yield worker, conn, client
    server_side.close()
    client.close()


def test_a_whole_next_request_is_taken_at_once(connection):
    worker, conn, client = connection
    request = b"POST /run HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    client.sendall(request)
    assert worker._next_request(conn) is True
    assert conn.parser.unreader.take_buffered() == request  # for gunicorn's parser, whole and in order


def test_a_next_request_read_ahead_by_the_last_one_is_used_first(connection):
    worker, conn, client = connection
    conn.parser.unreader.unread(b"GET /a HTTP/1.1\r\nHo")
    client.sendall(b"st: x\r\n\r\n")
    assert worker._next_request(conn) is True
    assert conn.parser.unreader.take_buffered() == b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize("arrived", [b"", b"GET /a HTTP/1.1\r\nHost:", b"POST /run HTTP/1.1\r\nContent-Length: 9\r\n\r\nhal"],
                         ids=["nothing", "half a head", "half a body"])
def test_a_next_request_not_there_whole_is_left_to_the_event_loop_without_waiting(connection, arrived):
    worker, conn, client = connection
    client.sendall(arrived)
    conn.sock.setblocking(True)  # as gthread's thread has it: the read must not wait all the same
    started = time.monotonic()
    assert worker._next_request(conn) is False
    assert time.monotonic() - started < 1.0
    # What arrived is kept, in order, for the event loop (gthread's finish_request hands it back to it).
    assert conn.parser.unreader.take_buffered() == arrived


def test_a_body_over_the_limit_goes_to_the_parser_at_once_to_be_refused(connection):
    worker, conn, client = connection
    client.sendall(b"POST /run HTTP/1.1\r\nContent-Length: 5000\r\n\r\n{")
    assert worker._next_request(conn) is True


def test_a_request_starts_once_no_write_of_its_process_holds_the_sqlite_lock(monkeypatch):
    from gunicorn.workers.gthread import ThreadWorker

    from toolkit import store as store_module

    started: list[float] = []
    monkeypatch.setattr(ThreadWorker, "handle", lambda self, conn: started.append(time.monotonic()) or False)
    worker = BufferingWorker.__new__(BufferingWorker)
    worker.alive = True
    store_module._writer_gate.close()
    opened = threading.Timer(0.2, store_module._writer_gate.open)
    try:
        begun = time.monotonic()
        worker.handle(object())  # the lock is held well past the longest wait: the request goes ahead after it
        assert started and started[0] - begun < 1.0  # not the whole hold (forever here): a few milliseconds
        monkeypatch.setattr("toolkit.worker.wait_for_writer", lambda: store_module.wait_for_writer(5.0))
        begun = time.monotonic()
        opened.start()
        worker.handle(object())
        assert 0.15 < started[1] - begun < 2.0  # waited for the transaction to end
    finally:
        opened.cancel()
        store_module._writer_gate.open()


def test_a_thread_answers_whole_requests_waiting_in_a_row_up_to_the_limit(connection, monkeypatch):
    from gunicorn.workers.gthread import ThreadWorker

    from toolkit.worker import KEEP_SERVING

    worker, conn, client = connection
    answered: list[bytes] = []

    def answer(self, conn):  # as gthread's handle: parse one request off the connection, keep the connection
        data = conn.parser.unreader.take_buffered()
        head, _, rest = data.partition(b"\r\n\r\n")
        conn.parser.unreader.unread(rest)
        answered.append(head.split(b" ")[1])
        return True

    monkeypatch.setattr(ThreadWorker, "handle", answer)
    conn.parser.unreader.unread(b"GET /0 HTTP/1.1\r\nHost: x\r\n\r\n")  # the first, read by the event loop
    client.sendall(b"".join(f"GET /{n} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for n in range(1, 40)))
    worker.alive = True
    assert worker.handle(conn) is True
    assert answered == [f"/{n}".encode() for n in range(KEEP_SERVING)]  # in order, then back to the event loop
    assert conn.parser.unreader.take_buffered().startswith(f"GET /{KEEP_SERVING} ".encode())  # kept for it

    answered.clear()
    conn.parser.unreader.unread(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    worker.alive = False  # a stopping worker answers what it has begun, and no more in a row
    worker.handle(conn)
    assert answered == [b"/a"]
