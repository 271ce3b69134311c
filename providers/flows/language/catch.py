"""Catch and Fail: which catcher handles a run-time error, and what a Fail state reports."""

from __future__ import annotations

from typing import Any

from .errors import RUNTIME, STATES_ALL
from .paths import PathNotFound, lookup
from .states import ActionState, Catcher, FailState, State


def catcher_for(state: State, error_name: str) -> Catcher | None:
    """The first catcher of ``state`` whose ``ErrorEquals`` names ``error_name`` (or ``States.ALL``), else None.

    Only Action states have catchers. ``States.ALL`` matches every name except ``States.Runtime``.
    """
    if not isinstance(state, ActionState):
        return None
    for catcher in state.catch:
        if error_name in catcher.error_equals or (STATES_ALL in catcher.error_equals and error_name != RUNTIME):
            return catcher
    return None


def fail_output(state: FailState, document: dict[str, Any], *, context: dict[str, Any] | None = None) -> dict[str, str]:
    """``{"Error": ..., "Cause": ...}`` of a Fail state; a key without a value (or whose path selects nothing or
    a non-string) is left out."""
    out: dict[str, str] = {}
    for key, constant, path in (("Error", state.error, state.error_path), ("Cause", state.cause, state.cause_path)):
        value: Any = constant
        if path is not None:
            try:
                value = lookup(path, document, context=context)
            except PathNotFound:
                value = None
        if isinstance(value, str):
            out[key] = value
    return out
