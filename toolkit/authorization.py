"""Principal checks: who may introspect, run, monitor and manage."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from .documents import PUBLIC, Action
from .errors import ForbiddenRequest

if TYPE_CHECKING:
    from .auth import Identity
    from .provider import ActionProvider


def allowed(identity: "Identity | None", principals: Iterable[str]) -> bool:
    """Whether ``identity`` (None: anonymous) is one of ``principals``."""
    wanted = set(principals)
    if PUBLIC in wanted:
        return True
    return identity is not None and not wanted.isdisjoint(identity.principals)


def require_visible(provider: "ActionProvider", identity: "Identity | None") -> None:
    if not allowed(identity, provider.visible_to):
        raise ForbiddenRequest("You are not in this provider's visible_to list.")


def require_runnable(provider: "ActionProvider", identity: "Identity") -> None:
    if not allowed(identity, provider.runnable_by):
        raise ForbiddenRequest("You are not in this provider's runnable_by list.")


def can_manage(provider: "ActionProvider", action: Action, identity: "Identity") -> bool:
    # The creator in any of their linked identities (Globus Auth identity sets).
    return action.creator_id in identity.principals or allowed(
        identity, [*action.manage_by, *provider.administered_by]
    )


def can_monitor(provider: "ActionProvider", action: Action, identity: "Identity") -> bool:
    return can_manage(provider, action, identity) or allowed(identity, action.monitor_by)


def require_monitor(provider: "ActionProvider", action: Action, identity: "Identity") -> None:
    if not can_monitor(provider, action, identity):
        raise ForbiddenRequest(f"You may not view action {action.action_id}: you are not in its monitor_by list.")


def require_manage(provider: "ActionProvider", action: Action, identity: "Identity") -> None:
    if not can_manage(provider, action, identity):
        raise ForbiddenRequest(f"You may not manage action {action.action_id}: you are not in its manage_by list.")
