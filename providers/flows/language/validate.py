"""Checking a whole definition at once, collecting every problem."""

from __future__ import annotations

from typing import Any

from .states import Definition


def validate(definition: Any, *, input_schema: dict[str, Any] | None = None) -> Definition:
    """The parsed :class:`Definition`, or :class:`DefinitionError` listing every problem found.

    ``input_schema``, when given, must be a valid JSON Schema.
    """
    raise NotImplementedError
