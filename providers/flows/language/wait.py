"""Wait states: when the run may continue."""

from __future__ import annotations

from typing import Any

from .states import WaitState


def wait_until(state: WaitState, document: dict[str, Any], now: float, *, context: dict[str, Any] | None = None) -> float:
    """The epoch time (seconds) at which a run that entered ``state`` at ``now`` continues.

    ``SecondsPath``/``TimestampPath`` that match nothing or hold the wrong type raise ``States.Runtime``.
    """
    raise NotImplementedError
