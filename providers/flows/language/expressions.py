"""``"key.="`` expressions, evaluated safely with simpleeval (no ``eval``).

The language is a Python expression subset: literals, arithmetic, ``+`` on strings and lists, ``%`` and
f-strings for formatting, comparisons, ``and``/``or``/``not``, ``x if c else y``, indexing and slicing, list and
dict comprehensions, and method calls on values (``path.rstrip('/')``, ``'/'.join(parts)``), except ``format``.

Names are the top-level keys of the state document (and ``_context``); ``a.b`` on an object reads its key
``b``. A JSONPath between backticks, as in ```$.source.path``` , is replaced by the value it selects.
Functions: :data:`EXPRESSION_FUNCTIONS`, which are Globus's ``pathsplit``, ``is_present`` and ``getattr`` (a
value of the state document by dotted name, with a default) plus a few pure builtins.
"""

from __future__ import annotations

import ast
import functools
import re
from typing import Any, Callable

import simpleeval

from .errors import FlowError
from .paths import CONTEXT_KEY, PathNotFound, check as check_path, lookup

_BACKTICK = re.compile(r"`([^`]*)`")
_PLACEHOLDER = "__jsonpath_{}"
_STATE_FUNCTIONS = ("is_present", "getattr")


def pathsplit(path: str) -> list[str]:
    """``"/a/b/c"`` gives ``["/a/b", "c"]``; the Globus Transfer root ``/~/`` is never split."""
    if not isinstance(path, str):
        raise TypeError("pathsplit() takes a string")
    if path.startswith("/~/"):
        head, tail = "/~/", path[3:]
        if "/" in tail.rstrip("/"):
            rest, last = tail.rstrip("/").rsplit("/", 1)
            return ["/~/" + rest, last]
        return [head, tail.rstrip("/")]
    stripped = path.rstrip("/") or path
    if "/" not in stripped:
        return ["", stripped]
    head, last = stripped.rsplit("/", 1)
    return [head or "/", last]


#: Functions an expression may call besides ``is_present(name)`` and ``getattr(name, default=None)``, which
#: read the state document by dotted name.
EXPRESSION_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "pathsplit": pathsplit,
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "len": len,
    "abs": abs,
    "min": min,
    "max": max,
    "round": round,
    "sum": sum,
    "sorted": sorted,
    "any": any,
    "all": all,
}

_ALLOWED_NODES = tuple(
    t for t in simpleeval.EvalWithCompoundTypes().nodes if t not in (ast.Assign, ast.AugAssign, ast.Import, ast.Expr)
)
_HELPER_NODES = (ast.expr_context, ast.operator, ast.unaryop, ast.cmpop, ast.boolop, ast.comprehension, ast.keyword)


def _substitute(expression: str) -> tuple[str, list[str]]:
    """The expression with each backtick JSONPath replaced by a placeholder name, and those paths in order."""
    paths: list[str] = []

    def replace(match: re.Match[str]) -> str:
        paths.append(match.group(1).strip())
        return _PLACEHOLDER.format(len(paths) - 1)

    return _BACKTICK.sub(replace, expression), paths


@functools.lru_cache(maxsize=2048)
def _parse(expression: str) -> tuple[str, tuple[str, ...], ast.Expression]:
    source, paths = _substitute(expression)
    return source, tuple(paths), ast.parse(source.strip(), mode="eval")


def check(expression: Any) -> str | None:
    """None when ``expression`` parses and uses only allowed syntax and functions, else what is wrong."""
    if not isinstance(expression, str):
        return "must be an expression string"
    return _check(expression)


@functools.lru_cache(maxsize=2048)
def _check(expression: str) -> str | None:
    if not expression.strip():
        return "is an empty expression"
    try:
        _source, paths, tree = _parse(expression)
    except SyntaxError as exc:
        return f'"{expression}" is not a valid expression: {exc.msg}'
    for path in paths:
        problem = check_path(path)
        if problem is not None:
            return f'"{expression}": {problem}'
    evaluator_operators = simpleeval.EvalWithCompoundTypes().operators
    for node in ast.walk(tree.body):
        if isinstance(node, _HELPER_NODES):
            if isinstance(node, (ast.operator, ast.unaryop, ast.cmpop)) and type(node) not in evaluator_operators:
                return f'"{expression}" uses the operator {type(node).__name__}, which expressions do not allow'
            continue
        if not isinstance(node, _ALLOWED_NODES):
            return f'"{expression}" uses {type(node).__name__}, which expressions do not allow'
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            return f'"{expression}" reads ".{node.attr}": names starting with "_" are not allowed after a dot'
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id not in EXPRESSION_FUNCTIONS and func.id not in _STATE_FUNCTIONS:
                known = ", ".join(sorted([*EXPRESSION_FUNCTIONS, *_STATE_FUNCTIONS]))
                return f'"{expression}" calls {func.id}(), which is not a function expressions have ({known})'
            if isinstance(func, ast.Attribute) and func.attr in simpleeval.DISALLOW_METHODS:
                return f'"{expression}" calls .{func.attr}(), which expressions do not allow'
    return None


def _dotted(name: Any, names: dict[str, Any]) -> Any:
    if not isinstance(name, str):
        raise TypeError("takes the name of a value of the state document, as a string")
    data: Any = names
    for part in name.split("."):
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.lstrip("-").isdigit() and -len(data) <= int(part) < len(data):
            data = data[int(part)]
        else:
            raise PathNotFound(name)
    return data


def evaluate(expression: str, document: dict[str, Any], *, context: dict[str, Any] | None = None) -> Any:
    """The value of ``expression`` with the document's top-level keys (and ``_context``) as names.

    Raises :class:`FlowError` (``States.Runtime``) when the expression is invalid, names a value the document
    does not have, or fails while evaluating; callers that evaluate Parameters re-raise it as a
    :class:`ResolveError`.
    """
    problem = check(expression)
    if problem is not None:
        raise FlowError(problem)
    source, paths, tree = _parse(expression)
    names: dict[str, Any] = dict(document) if isinstance(document, dict) else {}
    if context is not None:
        names[CONTEXT_KEY] = context
    for index, path in enumerate(paths):
        try:
            names[_PLACEHOLDER.format(index)] = lookup(path, document, context=context)
        except PathNotFound:
            raise FlowError(f'"{expression}": `{path}` selects nothing in the state document') from None

    def is_present(name: str) -> bool:
        try:
            _dotted(name, names)
        except PathNotFound:
            return False
        return True

    def getattr_(name: str, default: Any = None) -> Any:
        try:
            return _dotted(name, names)
        except PathNotFound:
            return default

    functions = {**EXPRESSION_FUNCTIONS, "is_present": is_present, "getattr": getattr_}
    evaluator = simpleeval.EvalWithCompoundTypes(names=names, functions=functions)
    try:
        return evaluator.eval(source.strip(), previously_parsed=tree.body)
    except simpleeval.NameNotDefined as exc:
        raise FlowError(f'"{expression}": {exc.name} is not in the state document') from None
    except simpleeval.AttributeDoesNotExist as exc:
        raise FlowError(f'"{expression}": there is no "{exc.attr}" in the value it is read from') from None
    except (simpleeval.InvalidExpression, PathNotFound) as exc:
        raise FlowError(f'"{expression}": {exc}') from None
    except Exception as exc:  # noqa: BLE001 - any failure of a user's expression is a run-time error of the flow
        raise FlowError(f'"{expression}" failed: {type(exc).__name__}: {exc}') from None
