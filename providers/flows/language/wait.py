"""Wait states: when the run may continue."""

from __future__ import annotations

from typing import Any

from . import timestamps
from .errors import FlowError
from .paths import PathNotFound, json_type, lookup, not_found
from .states import WaitState


def wait_until(state: WaitState, document: dict[str, Any], now: float, *, context: dict[str, Any] | None = None) -> float:
    """The epoch time (seconds) at which a run that entered ``state`` at ``now`` continues.

    ``SecondsPath``/``TimestampPath`` that select nothing or hold the wrong type raise ``States.Runtime``.
    A timestamp in the past gives that past time (the run continues at once).
    """
    where = f"States.{state.name}"
    if state.seconds is not None:
        return now + state.seconds
    if state.timestamp is not None:
        parsed = timestamps.parse(state.timestamp)
        assert parsed is not None  # validate() checked it
        return parsed.timestamp()
    path = state.seconds_path if state.seconds_path is not None else state.timestamp_path
    assert path is not None  # validate() requires one of the four
    try:
        value = lookup(path, document, context=context)
    except PathNotFound:
        raise not_found(path, f"{where}.{'SecondsPath' if state.seconds_path else 'TimestampPath'}") from None
    if state.seconds_path is not None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise FlowError(f'{where}.SecondsPath: "{path}" holds {json_type(value)}, not a number of seconds >= 0')
        return now + value
    parsed = timestamps.parse(value)
    if parsed is None:
        raise FlowError(f'{where}.TimestampPath: "{path}" holds {json_type(value)}, not an RFC 3339 timestamp')
    return parsed.timestamp()
