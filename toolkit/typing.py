"""Types of the callbacks a provider author registers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    from .auth import Identity
    from .documents import Action
    from .lifecycle import RunContext

RunCallback = Callable[[Any, "RunContext"], Optional[dict]]
"""``fn(body, ctx)``: returns the details of a SUCCEEDED action, or raises ActionFailed / ActionInactive."""

CheckCallback = Callable[[Any, "Identity"], None]
"""``fn(body, identity)``: called at /run before the action is stored; raise an ApiError to refuse."""

CancelCallback = Callable[["Action", "Identity"], None]
"""``fn(action, identity)``: called after an action was cancelled (to release outside resources)."""

ResumeCallback = Callable[["Action", "Identity"], None]
"""``fn(action, identity)``: called before an INACTIVE action runs again; raise an ApiError to refuse."""

Clock = Callable[[], float]
"""Returns the current time as UTC epoch seconds (``time.time``)."""
