"""Providers bundled with the toolkit, built on its public API only."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from toolkit import ActionProvider


def bundled() -> list[tuple[str, "ActionProvider"]]:
    """Every bundled provider with the URL prefix ``aptk serve`` mounts it at."""
    from .acl import provider as acl
    from .flows import provider as flows
    from .forms import provider as forms
    from .hello import provider as hello
    from .notify import provider as notify
    from .timers import provider as timers
    from .transfer import provider as transfer

    return [("/hello", hello), ("/transfer", transfer), ("/acl", acl), ("/notify", notify), ("/forms", forms),
            ("/timers", timers), ("/flows", flows)]
