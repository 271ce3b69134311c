"""Types of the callbacks a provider author registers.

Each kind has a ``TypeVar`` bound to its signature, so that the decorators (``@provider.run``, ``.check``,
``.cancel``, ``.resume``, ``.finish``) return the decorated function with its own type.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

if TYPE_CHECKING:
    from .documents import Action
    from .lifecycle import BackgroundContext, HookContext, RunContext

RunCallback = Callable[[Any, "RunContext"], Optional[dict]]
"""``fn(body, ctx)``: returns the details of a SUCCEEDED action, or raises ActionFailed / ActionInactive."""

CheckCallback = Callable[[Any, "HookContext"], object]
"""``fn(body, ctx)``: called at /run before the action is stored; raise an ApiError to refuse."""

CancelCallback = Callable[["Action", "HookContext"], object]
"""``fn(action, ctx)``: called after an action was cancelled (to release outside resources)."""

ResumeCallback = Callable[["Action", "HookContext"], object]
"""``fn(action, ctx)``: called before an INACTIVE action runs again; raise an ApiError to refuse."""

FinishCallback = Callable[["Action", "HookContext"], Optional[dict]]
"""``fn(action, ctx)``: called as an action ends, however it ends; may return its final details."""

BackgroundCallback = Callable[["BackgroundContext"], object]
"""``fn(ctx)``: runs in a thread of every serving process until ``ctx.stopping`` is set."""

RunCallbackT = TypeVar("RunCallbackT", bound=RunCallback)
CheckCallbackT = TypeVar("CheckCallbackT", bound=CheckCallback)
CancelCallbackT = TypeVar("CancelCallbackT", bound=CancelCallback)
ResumeCallbackT = TypeVar("ResumeCallbackT", bound=ResumeCallback)
FinishCallbackT = TypeVar("FinishCallbackT", bound=FinishCallback)
BackgroundCallbackT = TypeVar("BackgroundCallbackT", bound=BackgroundCallback)

Clock = Callable[[], float]
"""Returns the current time as UTC epoch seconds (``time.time``)."""
