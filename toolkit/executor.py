"""Where run callbacks execute, off the request thread.

The embedded default, :class:`ThreadExecutor`, is a thread pool inside the server process that schedules fairly:
work waits in one queue per (provider, caller), the queues take turns (providers in rotation, and the callers of
each provider in rotation), and no caller runs more than ``max_running_per_identity`` callbacks at once in one
process. So one caller starting many long actions cannot keep everyone else's actions from starting.

Durability does not depend on the executor: an action waiting in its queue is heartbeated like a running one, and
an action whose process died is found by its stale heartbeat and run again or failed (see
:mod:`toolkit.lifecycle`).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from typing import Callable, Protocol

logger = logging.getLogger("toolkit.executor")


class Executor(Protocol):
    def submit(self, fn: Callable[[], None], *, identity: str = "", provider: str = "") -> None:
        """Run ``fn`` some time soon; ``identity`` (the action's creator) and ``provider`` are for fairness."""

    def shutdown(self, wait: bool = False) -> None: ...


def default_max_running_per_identity(max_workers: int) -> int:
    """Half the threads (at least one): a lone caller gets plenty, and a second caller always finds room."""
    return max(1, max_workers // 2)


class _Pool:
    """One generation of worker threads and queues (a new one after a fork or a shutdown)."""

    def __init__(self, max_workers: int, per_identity: int) -> None:
        self.max_workers = max_workers
        self.per_identity = per_identity
        self.cond = threading.Condition()
        self.threads: list[threading.Thread] = []
        self.idle = 0  # threads waiting for work that no submit has woken yet
        self.closed = False
        # provider -> identity -> waiting callables; the rings say whose turn is next.
        self.queues: dict[str, dict[str, collections.deque[Callable[[], None]]]] = {}
        self.providers: collections.deque[str] = collections.deque()
        self.identities: dict[str, collections.deque[str]] = {}
        self.running: collections.Counter[str] = collections.Counter()

    def submit(self, fn: Callable[[], None], identity: str, provider: str) -> None:
        with self.cond:
            by_identity = self.queues.get(provider)
            if by_identity is None:
                by_identity = self.queues[provider] = {}
                self.providers.append(provider)
                self.identities[provider] = collections.deque()
            queue = by_identity.get(identity)
            if queue is None:
                queue = by_identity[identity] = collections.deque()
                self.identities[provider].append(identity)
            queue.append(fn)
            if self.idle:
                self.idle -= 1
                self.cond.notify()
            elif len(self.threads) < self.max_workers:
                thread = threading.Thread(target=self._work, name=f"aptk-action-{len(self.threads)}", daemon=True)
                self.threads.append(thread)
                thread.start()

    def _next(self) -> tuple[str, Callable[[], None]] | None:
        """The next callable whose caller is below the limit, taking turns; None if none may start now."""
        for _ in range(len(self.providers)):
            provider = self.providers[0]
            self.providers.rotate(-1)
            ring = self.identities[provider]
            for _ in range(len(ring)):
                identity = ring[0]
                ring.rotate(-1)
                if self.running[identity] >= self.per_identity:
                    continue
                queue = self.queues[provider][identity]
                fn = queue.popleft()
                if not queue:
                    del self.queues[provider][identity]
                    ring.remove(identity)
                    if not ring:
                        del self.queues[provider], self.identities[provider]
                        self.providers.remove(provider)
                self.running[identity] += 1
                return identity, fn
        return None

    def _work(self) -> None:
        while True:
            with self.cond:
                while True:
                    if self.closed:
                        return
                    picked = self._next()
                    if picked is not None:
                        break
                    self.idle += 1
                    self.cond.wait()
            identity, fn = picked
            try:
                fn()
            except Exception:  # pragma: no cover - the lifecycle catches what callbacks raise
                logger.exception("an executor task failed")
            finally:
                with self.cond:
                    self.running[identity] -= 1
                    if self.running[identity] <= 0:
                        del self.running[identity]
                # This thread now looks for the next turn itself (a task of this caller may start now).

    def waiting(self) -> int:
        with self.cond:
            return sum(len(q) for by_identity in self.queues.values() for q in by_identity.values())

    def close(self) -> list[threading.Thread]:
        with self.cond:
            self.closed = True
            self.queues.clear()
            self.providers.clear()
            self.identities.clear()
            self.cond.notify_all()
            return list(self.threads)


class ThreadExecutor:
    """A fair thread pool, created in the process that first submits work (so it survives a fork).

    ``max_running_per_identity`` caps the callbacks one caller runs at once in this process (default: half of
    ``max_workers``); the caller's further work waits its turn, as does everyone's when every thread is busy.
    """

    def __init__(self, max_workers: int = 8, max_running_per_identity: int | None = None) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        if max_running_per_identity is None:
            max_running_per_identity = default_max_running_per_identity(max_workers)
        if max_running_per_identity < 1:
            raise ValueError("max_running_per_identity must be at least 1")
        self.max_workers = max_workers
        self.max_running_per_identity = max_running_per_identity
        self._pool: _Pool | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], None], *, identity: str = "", provider: str = "") -> None:
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                self._pool = _Pool(self.max_workers, self.max_running_per_identity)
                self._pid = os.getpid()
            pool = self._pool
        pool.submit(fn, identity, provider)

    def waiting(self) -> int:
        """How many callables wait for their turn (in this process)."""
        pool = self._pool
        return pool.waiting() if pool is not None and self._pid == os.getpid() else 0

    def shutdown(self, wait: bool = False) -> None:
        """Drop what waits; running callables finish (the lifecycle tells their callbacks to stop)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            threads = pool.close()
            if wait:
                for thread in threads:
                    if thread is not threading.current_thread():
                        thread.join()
