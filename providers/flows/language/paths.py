"""JSONPaths over a run's state document, and ``ResultPath``."""

from __future__ import annotations

from typing import Any

#: The read-only run context is visible to paths and expressions at ``$._context``.
CONTEXT_KEY = "_context"


def check(path: str) -> str | None:
    """None when ``path`` is a JSONPath starting at ``$``, else what is wrong with it."""
    raise NotImplementedError


def check_reference(path: str) -> str | None:
    """None when ``path`` is a reference path (``$``, ``$.a.b``, ``$.a[0]``) usable as ResultPath."""
    raise NotImplementedError


def find(path: str, document: dict[str, Any], *, context: dict[str, Any] | None = None) -> list[Any]:
    """Every value ``path`` selects in ``document`` (with ``context`` at ``$._context``); [] when none."""
    raise NotImplementedError


def apply_result_path(document: dict[str, Any], result_path: str | None, result: Any) -> dict[str, Any]:
    """A new document with ``result`` stored at ``result_path``: ``$`` replaces the document, ``$.a.b`` sets
    ``a.b`` creating objects on the way, None discards the result. The input document is not changed.

    Raises :class:`ResultPathError` when the path runs through a value that is not an object.
    """
    raise NotImplementedError
