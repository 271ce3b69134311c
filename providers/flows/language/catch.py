"""Catch and Fail: which catcher handles a run-time error, and what a Fail state reports."""

from __future__ import annotations

from typing import Any

from .states import Catcher, FailState, State


def catcher_for(state: State, error_name: str) -> Catcher | None:
    """The first catcher of ``state`` whose ``ErrorEquals`` names ``error_name`` (or ``States.ALL``), else None.

    Only Action states have catchers. ``States.ALL`` matches every name except ``States.Runtime``.
    """
    raise NotImplementedError


def fail_output(state: FailState, document: dict[str, Any]) -> dict[str, str]:
    """``{"Error": ..., "Cause": ...}`` of a Fail state (keys without a value are left out)."""
    raise NotImplementedError



