"""Where run callbacks execute, off the request thread.

The embedded default, :class:`ThreadExecutor`, is a thread pool inside the server process. Durability does not
depend on the executor: an action whose process died is found by its stale heartbeat and run again or failed
(see :mod:`toolkit.lifecycle`).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Protocol


class Executor(Protocol):
    def submit(self, fn: Callable[[], None]) -> None: ...
    def shutdown(self, wait: bool = False) -> None: ...


class ThreadExecutor:
    """A thread pool, created in the process that first submits work (so it survives a fork)."""

    def __init__(self, max_workers: int = 8) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.max_workers = max_workers
        self._pool: ThreadPoolExecutor | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], None]) -> None:
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="aptk-action")
                self._pid = os.getpid()
            pool = self._pool
        pool.submit(fn)

    def shutdown(self, wait: bool = False) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=not wait)
