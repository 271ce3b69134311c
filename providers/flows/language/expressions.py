"""``"key.="`` expressions, evaluated safely with simpleeval (no ``eval``)."""

from __future__ import annotations

from typing import Any, Callable

#: Functions an expression may call, beyond the operators.
EXPRESSION_FUNCTIONS: dict[str, Callable[..., Any]] = {}


def check(expression: str) -> str | None:
    """None when ``expression`` parses and uses only allowed names and syntax, else what is wrong."""
    raise NotImplementedError


def evaluate(expression: str, document: dict[str, Any], *, context: dict[str, Any] | None = None) -> Any:
    """The value of ``expression`` with the document's top-level keys (and ``_context``) as names."""
    raise NotImplementedError
