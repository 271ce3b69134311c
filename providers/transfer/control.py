"""When a transfer stops: cancellation, its deadline, another file's failure; and its bandwidth limit."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from toolkit import ActionFailed, RunContext

from .errors import Stopped

__all__ = ["Control", "Throttle"]


class Control:
    """The stop signal a transfer's threads share, and the checks that raise it.

    ``checkpoint`` is for copying threads (raises :class:`Stopped`); ``checkpoint_planning`` for the thread that
    runs the action before copying starts (raises what the action ends with: ``ActionCancelled`` or a
    ``DeadlineExceeded`` failure with the ``details`` the transfer has then)."""

    def __init__(self, ctx: RunContext, deadline: float | None, details: Callable[[str], dict[str, Any]]) -> None:
        self.ctx = ctx
        self.deadline = deadline
        self.details = details
        self.event = threading.Event()
        self.reason: str | None = None
        self._lock = threading.Lock()

    @property
    def stopped(self) -> bool:
        return self.event.is_set()

    def stop(self, reason: str | None = None) -> None:
        if reason is not None:
            with self._lock:
                if self.reason is None:
                    self.reason = reason
        self.event.set()

    def past_deadline(self) -> bool:
        return self.deadline is not None and self.ctx.clock() >= self.deadline

    def poll(self) -> None:
        """Notice a cancel or the deadline (the thread that waits for the copying threads)."""
        if self.ctx.cancelled:
            self.stop()
        if self.past_deadline():
            self.stop("deadline")

    def checkpoint(self) -> None:
        if self.event.is_set():
            raise Stopped()
        self.poll()
        if self.event.is_set():
            raise Stopped()

    def checkpoint_planning(self) -> None:
        self.ctx.check()
        if self.past_deadline():
            raise ActionFailed("DeadlineExceeded", "The transfer did not finish before its deadline.",
                               **self.details("FAILED"))


class Throttle:
    """Shared byte budget per second for all of a transfer's threads (APTK_TRANSFER_MAX_BYTES_PER_SECOND)."""

    def __init__(self, rate: float, stop: threading.Event) -> None:
        self.rate = rate
        self.stop = stop
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def consume(self, amount: int) -> None:
        if self.rate <= 0:
            return
        delay = self.reserve(amount) - time.monotonic()
        if delay > 0 and self.stop.wait(delay):
            raise Stopped()

    def reserve(self, amount: int) -> float:
        """Count ``amount`` bytes against the budget now; the ``time.monotonic()`` from which they may go (for a
        caller that cannot wait: it holds them until then)."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            self._next = max(self._next, time.monotonic()) + amount / self.rate
            return self._next - 0.05
