"""Choice states: the rule that matches a state document.

Comparisons follow the States Language: a value of the wrong type never matches (a number is not
``StringEquals`` anything, a boolean is not a number), a ``Variable`` or ``...Path`` operand that selects
nothing is a ``States.Runtime`` error (test it first with ``IsPresent``), and ``StringMatches`` takes ``*`` as
any run of characters, ``\\*`` and ``\\\\`` as a literal star and backslash.
"""

from __future__ import annotations

import functools
import operator
import re
from typing import Any, Callable

from . import timestamps
from .errors import NoChoiceMatched
from .paths import PathNotFound, lookup, not_found
from .states import ChoiceRule, ChoiceState

_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "Equals": operator.eq,
    "LessThan": operator.lt,
    "GreaterThan": operator.gt,
    "LessThanEquals": operator.le,
    "GreaterThanEquals": operator.ge,
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_string(value: Any) -> Any:
    return value if isinstance(value, str) else None


def _as_number(value: Any) -> Any:
    return value if _is_number(value) else None


def _as_boolean(value: Any) -> Any:
    return value if isinstance(value, bool) else None


#: Comparison families: the operator prefix and how both sides are read (None: the wrong type).
_FAMILIES: dict[str, Callable[[Any], Any]] = {
    "String": _as_string,
    "Numeric": _as_number,
    "Timestamp": timestamps.parse,
}

#: Every comparison operator (besides And/Or/Not), mapped to the type its operand must have.
COMPARISONS: dict[str, str] = {}
for _family in _FAMILIES:
    for _relation in _ORDER:
        COMPARISONS[f"{_family}{_relation}"] = _family
        COMPARISONS[f"{_family}{_relation}Path"] = "Path"
COMPARISONS.update(
    {
        "BooleanEquals": "Boolean",
        "BooleanEqualsPath": "Path",
        "StringMatches": "String",
        "IsNull": "Boolean",
        "IsPresent": "Boolean",
        "IsNumeric": "Boolean",
        "IsString": "Boolean",
        "IsBoolean": "Boolean",
        "IsTimestamp": "Boolean",
    }
)
BOOLEAN_OPERATORS = ("And", "Or", "Not")


@functools.lru_cache(maxsize=1024)
def _wildcard(pattern: str) -> re.Pattern[str]:
    parts: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            parts.append(re.escape(pattern[index + 1]))
            index += 2
            continue
        parts.append(".*" if char == "*" else re.escape(char))
        index += 1
    return re.compile("".join(parts), re.DOTALL)


_TYPE_TESTS: dict[str, Callable[[Any], bool]] = {
    "IsNull": lambda value: value is None,
    "IsNumeric": _is_number,
    "IsString": lambda value: isinstance(value, str),
    "IsBoolean": lambda value: isinstance(value, bool),
    "IsTimestamp": lambda value: timestamps.parse(value) is not None,
}


def _value(path: str, document: Any, context: dict[str, Any] | None, where: str) -> Any:
    try:
        return lookup(path, document, context=context)
    except PathNotFound:
        raise not_found(path, where) from None


def matches(rule: ChoiceRule, document: Any, *, context: dict[str, Any] | None = None) -> bool:
    """Whether ``rule`` holds for ``document``."""
    op = rule.operator
    if op == "And":
        return all(matches(sub, document, context=context) for sub in rule.rules)
    if op == "Or":
        return any(matches(sub, document, context=context) for sub in rule.rules)
    if op == "Not":
        return not matches(rule.rules[0], document, context=context)
    variable = rule.variable or "$"
    if op == "IsPresent":
        try:
            lookup(variable, document, context=context)
            present = True
        except PathNotFound:
            present = False
        return present is rule.operand
    value = _value(variable, document, context, f"Variable {variable}")
    if op in _TYPE_TESTS:
        return _TYPE_TESTS[op](value) is rule.operand
    operand = rule.operand
    if op.endswith("Path"):
        operand = _value(operand, document, context, f"{op} {operand}")
        op = op[: -len("Path")]
    if op == "BooleanEquals":
        return isinstance(value, bool) and isinstance(operand, bool) and value is operand
    if op == "StringMatches":
        return isinstance(value, str) and _wildcard(operand).fullmatch(value) is not None
    for family, read in _FAMILIES.items():
        if op.startswith(family):
            left, right = read(value), read(operand)
            if left is None or right is None:
                return False
            return _ORDER[op[len(family):]](left, right)
    raise AssertionError(f"unknown comparison {rule.operator}")  # validate() admits no other operator


def choose(state: ChoiceState, document: dict[str, Any], *, context: dict[str, Any] | None = None) -> str:
    """The ``Next`` of the first rule that matches ``document``, else the state's ``Default``.

    Raises :class:`NoChoiceMatched` (``States.NoChoiceMatched``) when nothing matches and there is no Default,
    and ``States.Runtime`` when a rule's path selects nothing.
    """
    for rule in state.choices:
        if matches(rule, document, context=context):
            assert rule.next is not None
            return rule.next
    if state.default is None:
        raise NoChoiceMatched(f"States.{state.name}: no choice rule matched and there is no Default")
    return state.default
