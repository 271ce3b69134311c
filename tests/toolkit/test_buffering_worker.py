"""The gunicorn worker's quit signal: it never deadlocks on the thread pool's lock."""

from __future__ import annotations

import concurrent.futures
import threading
import types

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
