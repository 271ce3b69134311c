"""JSONPaths over a run's state document, and ``ResultPath``.

Rules:

- Every path starts at ``$``, the state document. The run context is readable at ``$._context`` and never
  writable.
- A *reference path* names one place: ``$``, then ``.name``, ``['name']`` or ``[index]`` steps. ``ResultPath``
  and Choice ``...Path`` operands must be reference paths; everywhere else any JSONPath (wildcards, slices,
  filters, descendants) is allowed and selects a list of values.
- Paths are parsed by python-jsonpath; reference paths are also walked directly, which is what nearly every
  flow uses and is cheaper.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Union

import jsonpath

from .errors import FlowError, ResultPathError

#: The read-only run context is visible to paths and expressions at ``$._context``.
CONTEXT_KEY = "_context"

Step = Union[str, int]

_NAME = r"[^.\[\]\s'\"$@]+"
_STEP = re.compile(rf"\.({_NAME})|\[\s*'((?:[^'\\]|\\.)*)'\s*\]|\[\s*\"((?:[^\"\\]|\\.)*)\"\s*\]|\[\s*(-?\d+)\s*\]")


class PathNotFound(LookupError):
    """A reference path selects nothing in a document (internal; callers turn it into a FlowError)."""


@functools.lru_cache(maxsize=4096)
def reference_steps(path: str) -> tuple[Step, ...] | None:
    """The steps of a reference path (``$.a['b'][0]`` gives ``("a", "b", 0)``), or None if it is not one."""
    if not path.startswith("$"):
        return None
    steps: list[Step] = []
    pos = 1
    while pos < len(path):
        match = _STEP.match(path, pos)
        if match is None:
            return None
        name, single, double, index = match.groups()
        if index is not None:
            steps.append(int(index))
        else:
            text = name if name is not None else single if single is not None else double
            steps.append(re.sub(r"\\(.)", r"\1", text) if name is None else text)
        pos = match.end()
    return tuple(steps)


@functools.lru_cache(maxsize=4096)
def _compiled(path: str) -> Any:
    return jsonpath.compile(path)


def check(path: Any) -> str | None:
    """None when ``path`` is a JSONPath starting at ``$``, else what is wrong with it."""
    if not isinstance(path, str):
        return "must be a JSONPath string"
    if path.startswith("$$"):
        return f'"{path}" is not a valid JSONPath: the run context is at $._context'
    if not path.startswith("$"):
        return f'"{path}" is not a valid JSONPath: it must start with "$"'
    if reference_steps(path) is not None:
        return None
    try:
        _compiled(path)
    except jsonpath.JSONPathError as exc:
        reason = str(exc).splitlines()[0].strip()
        return f'"{path}" is not a valid JSONPath: {reason}'
    return None


def check_reference(path: Any) -> str | None:
    """None when ``path`` is a reference path (``$``, ``$.a.b``, ``$.a[0]``), else what is wrong with it."""
    problem = check(path)
    if problem is not None:
        return problem
    if reference_steps(path) is None:
        return f'"{path}" must be a reference path to one place (like $.a.b or $.a[0]): no wildcards or filters'
    return None


def is_definite(path: str) -> bool:
    """True when ``path`` selects at most one value (a reference path)."""
    return reference_steps(path) is not None


def _with_context(document: Any, context: dict[str, Any] | None, path: str) -> Any:
    # The context is virtual: only a path that names it sees it (``$`` alone is the document without it).
    if context is None or not isinstance(document, dict) or CONTEXT_KEY not in path:
        return document
    return {**document, CONTEXT_KEY: context}


def _walk(steps: tuple[Step, ...], data: Any) -> Any:
    for step in steps:
        if isinstance(step, int):
            if not isinstance(data, list) or not -len(data) <= step < len(data):
                raise PathNotFound(step)
            data = data[step]
        else:
            if not isinstance(data, dict) or step not in data:
                raise PathNotFound(step)
            data = data[step]
    return data


def lookup(path: str, document: Any, *, context: dict[str, Any] | None = None) -> Any:
    """The value at ``path``: one value for a reference path, the list of matches for any other path.

    Raises :class:`PathNotFound` when a reference path selects nothing.
    """
    data = _with_context(document, context, path)
    steps = reference_steps(path)
    if steps is not None:
        return _walk(steps, data)
    return _compiled(path).findall(data)


def is_present(path: str, document: Any, *, context: dict[str, Any] | None = None) -> bool:
    """True when ``path`` selects at least one value."""
    try:
        found = lookup(path, document, context=context)
    except PathNotFound:
        return False
    return bool(found) if not is_definite(path) else True


def find(path: str, document: dict[str, Any], *, context: dict[str, Any] | None = None) -> list[Any]:
    """Every value ``path`` selects in ``document`` (with ``context`` at ``$._context``); [] when none."""
    if is_definite(path):
        try:
            return [lookup(path, document, context=context)]
        except PathNotFound:
            return []
    return list(lookup(path, document, context=context))


def apply_result_path(document: dict[str, Any], result_path: str | None, result: Any) -> dict[str, Any]:
    """A new document with ``result`` stored at ``result_path``: ``$`` replaces the document, ``$.a.b`` sets
    ``a.b`` creating objects on the way, None discards the result. The input document is not changed.

    Raises :class:`ResultPathError` when the path runs through a value that is not an object, when an index
    is out of range, when ``$`` would replace the document with something that is not an object, and when the
    path points into ``$._context``.
    """
    if result_path is None:
        return dict(document)
    steps = reference_steps(result_path)
    if steps is None:
        raise ResultPathError(f'ResultPath "{result_path}" is not a reference path')
    if not steps:
        if not isinstance(result, dict):
            raise ResultPathError(f"ResultPath $ needs an object to become the state document, not {json_type(result)}")
        return dict(result)
    if steps[0] == CONTEXT_KEY:
        raise ResultPathError(f'ResultPath "{result_path}": $._context is read-only')
    root: dict[str, Any] = dict(document)
    parent: Any = root
    for position, step in enumerate(steps):
        last = position == len(steps) - 1
        if isinstance(step, int):
            if not isinstance(parent, list) or not -len(parent) <= step < len(parent):
                raise ResultPathError(f'ResultPath "{result_path}": index {step} is not in a list of the document')
            child = result if last else parent[step]
        else:
            if not isinstance(parent, dict):
                raise ResultPathError(f'ResultPath "{result_path}": "{step}" is inside {json_type(parent)}, not an object')
            child = result if last else parent.get(step, {})
        if not last:
            child = list(child) if isinstance(child, list) else dict(child) if isinstance(child, dict) else child
        parent[step] = child
        parent = child
    return root


def json_type(value: Any) -> str:
    """The JSON name of a value's type, for messages ("a string", "null"...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def not_found(path: str, where: str) -> FlowError:
    """The run-time error for a path that selects nothing (used by Choice, Wait and InputPath)."""
    return FlowError(f'{where}: "{path}" selects nothing in the state document')
