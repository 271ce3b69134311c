"""Checking a whole definition at once, collecting every problem.

Every message starts with where the problem is, written as the keys that lead to it
(``States.Copy.Parameters.items[0].path.$``), then says what is wrong. Nothing stops at the first problem:
a definition with five mistakes gets five messages.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any
from urllib.parse import urlsplit

from jsonschema.validators import validator_for

from . import expressions, paths, timestamps
from .choice import BOOLEAN_OPERATORS, COMPARISONS
from .errors import STATES_ALL, DefinitionError
from .parameters import PRIVATE_PARAMETERS_KEY, natural_name
from .states import (
    DEFAULT_RESULT_PATH,
    DEFAULT_RUN_AS,
    DEFAULT_WAIT_TIME,
    STATE_TYPES,
    ActionState,
    Catcher,
    ChoiceRule,
    ChoiceState,
    Definition,
    ExpressionEvalState,
    FailState,
    PassState,
    State,
    SucceedState,
    WaitState,
)

_TOP_FIELDS = ("StartAt", "States", "Comment")
_TRANSITION = ("Next", "End")
#: The fields each state type may have (besides Type and Comment).
FIELDS: dict[str, tuple[str, ...]] = {
    "Action": ("ActionUrl", "ActionScope", "Parameters", "InputPath", "ResultPath", "WaitTime",
               "ExceptionOnActionFailure", "RunAs", "Catch", *_TRANSITION),
    "ExpressionEval": ("Parameters", "ResultPath", *_TRANSITION),
    "Pass": ("Parameters", "Result", "InputPath", "ResultPath", *_TRANSITION),
    "Choice": ("Choices", "Default"),
    "Wait": ("Seconds", "SecondsPath", "Timestamp", "TimestampPath", *_TRANSITION),
    "Fail": ("Error", "Cause", "ErrorPath", "CausePath"),
    "Succeed": (),
}
_CATCH_FIELDS = ("ErrorEquals", "Next", "ResultPath")
_WAIT_FIELDS = ("Seconds", "SecondsPath", "Timestamp", "TimestampPath")


def _quote(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class _Checker:
    """Collects the problems of one definition while building its states."""

    def __init__(self, state_names: set[str]) -> None:
        self.errors: list[str] = []
        self.state_names = state_names

    def add(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")

    # -- single fields ---------------------------------------------------------------------------------------

    def target(self, where: str, value: Any) -> str | None:
        """A transition target: a string naming a state."""
        if not isinstance(value, str):
            self.add(where, "must be the name of a state (a string)")
            return None
        if value not in self.state_names:
            self.add(where, f'"{value}" is not a state')
            return None
        return value

    def string(self, where: str, value: Any, *, required: bool = False) -> str | None:
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value:
            self.add(where, "must be a non-empty string")
            return None
        return value

    def path(self, where: str, value: Any) -> str | None:
        problem = paths.check(value)
        if problem is not None:
            self.add(where, problem)
            return None
        return str(value)

    def result_path(self, where: str, source: dict[str, Any], key: str = "ResultPath") -> str | None:
        """A ResultPath: a reference path, or null to discard the result; ``$`` when absent."""
        if key not in source:
            return DEFAULT_RESULT_PATH
        value = source[key]
        if value is None:
            return None
        problem = paths.check_reference(value)
        if problem is not None:
            self.add(where, problem)
            return DEFAULT_RESULT_PATH
        steps = paths.reference_steps(value)
        if steps and steps[0] == paths.CONTEXT_KEY:
            self.add(where, f'"{value}" writes into $._context, which is read-only')
        return str(value)

    def parameters(self, where: str, template: Any) -> None:
        """Check every ``.$`` path and ``.=`` expression of a Parameters template, and its private lists."""
        if isinstance(template, list):
            for index, item in enumerate(template):
                self.parameters(f"{where}[{index}]", item)
            return
        if not isinstance(template, dict):
            return
        names = {natural_name(key) for key in template if key != PRIVATE_PARAMETERS_KEY}
        seen: dict[str, str] = {}
        for key, value in template.items():
            here = f"{where}.{key}"
            if key != PRIVATE_PARAMETERS_KEY:
                name = natural_name(key)
                if name in seen:
                    self.add(here, f'gives "{name}" again (also given by "{seen[name]}")')
                seen.setdefault(name, key)
            if key == PRIVATE_PARAMETERS_KEY:
                if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
                    self.add(here, "must be a list of parameter names")
                    continue
                for name in value:
                    if name not in names:
                        self.add(here, f'"{name}" is not a parameter of this object')
            elif key.endswith(".$"):
                self.path(here, value)
            elif key.endswith(".="):
                problem = expressions.check(value)
                if problem is not None:
                    self.add(here, problem)
            else:
                self.parameters(here, value)

    def unknown_fields(self, where: str, source: dict[str, Any], allowed: tuple[str, ...], what: str = "unknown field") -> None:
        for key in source:
            if key not in allowed:
                if key == "OutputPath":
                    self.add(f"{where}.OutputPath", "is not supported by flows; use ResultPath")
                else:
                    self.add(f"{where}.{key}", what)

    # -- transitions -----------------------------------------------------------------------------------------

    def transition(self, where: str, source: dict[str, Any]) -> tuple[str | None, bool]:
        has_next, end = "Next" in source, source.get("End")
        if "End" in source and end is not True:
            self.add(f"{where}.End", "must be true (or left out)")
        if has_next and end is True:
            self.add(where, 'has both "Next" and "End"; a state either goes on or ends the run')
            return None, True
        if has_next:
            return self.target(f"{where}.Next", source["Next"]), False
        if end is True:
            return None, True
        self.add(where, 'needs "Next" (the state that follows) or "End": true')
        return None, False

    def no_transition(self, where: str, source: dict[str, Any], kind: str) -> None:
        for key in _TRANSITION:
            if key in source:
                self.add(f"{where}.{key}", f"a {kind} state has no {key}")

    # -- states ----------------------------------------------------------------------------------------------

    def state(self, name: str, source: Any) -> State | None:
        where = f"States.{name}"
        if not isinstance(source, dict):
            self.add(where, "must be an object")
            return None
        kind = source.get("Type")
        if kind is None:
            self.add(f"{where}.Type", "required")
            return None
        if not isinstance(kind, str) or kind not in STATE_TYPES:
            self.add(f"{where}.Type", f"{_quote(kind)} is not a state type ({', '.join(STATE_TYPES)})")
            return None
        # Next/End on a state that has neither get their own message (no_transition).
        self.unknown_fields(where, source, ("Type", "Comment", *FIELDS[kind], *_TRANSITION), "is not a field of this state")
        comment = source.get("Comment")
        if comment is not None and not isinstance(comment, str):
            self.add(f"{where}.Comment", "must be a string")
            comment = None
        build = getattr(self, f"_{kind.lower()}")
        state: State | None = build(where, name, source, comment)
        return state

    def _action(self, where: str, name: str, source: dict[str, Any], comment: str | None) -> State:
        url = source.get("ActionUrl")
        if url is None:
            self.add(f"{where}.ActionUrl", "required")
        elif not isinstance(url, str) or not _is_http_url(url):
            self.add(f"{where}.ActionUrl", f"{_quote(url)} is not an http(s) URL")
        scope = self.string(f"{where}.ActionScope", source.get("ActionScope"))
        template = source.get("Parameters")
        input_path = None
        if "Parameters" in source and "InputPath" in source:
            self.add(where, 'has both "Parameters" and "InputPath"; give one')
        if "Parameters" in source:
            if not isinstance(template, dict):
                self.add(f"{where}.Parameters", "must be an object")
                template = None
            else:
                self.parameters(f"{where}.Parameters", template)
        elif "InputPath" in source:
            input_path = self.path(f"{where}.InputPath", source["InputPath"])
        else:
            self.add(where, 'needs "Parameters" (the body of the action) or "InputPath"')
        wait_time: Any = source.get("WaitTime", DEFAULT_WAIT_TIME)
        if not _is_number(wait_time) or wait_time <= 0:
            self.add(f"{where}.WaitTime", f"{_quote(wait_time)} is not a number of seconds greater than 0")
            wait_time = DEFAULT_WAIT_TIME
        failure = source.get("ExceptionOnActionFailure", True)
        if not isinstance(failure, bool):
            self.add(f"{where}.ExceptionOnActionFailure", "must be true or false")
            failure = True
        run_as = self.string(f"{where}.RunAs", source.get("RunAs")) or DEFAULT_RUN_AS
        catchers = self.catch(f"{where}.Catch", source.get("Catch", []))
        next_, end = self.transition(where, source)
        return ActionState(
            name=name, comment=comment, next=next_, end=end, action_url=str(url), action_scope=scope,
            parameters=template, input_path=input_path, result_path=self.result_path(f"{where}.ResultPath", source),
            wait_time=wait_time, exception_on_action_failure=failure, run_as=run_as, catch=catchers,
            private_parameters=_top_private(template),
        )

    def catch(self, where: str, source: Any) -> tuple[Catcher, ...]:
        if not isinstance(source, list):
            self.add(where, "must be a list of catchers")
            return ()
        catchers: list[Catcher] = []
        for index, item in enumerate(source):
            here = f"{where}[{index}]"
            if not isinstance(item, dict):
                self.add(here, "must be an object with ErrorEquals and Next")
                continue
            self.unknown_fields(here, item, _CATCH_FIELDS)
            names = item.get("ErrorEquals")
            if names is None:
                self.add(f"{here}.ErrorEquals", "required")
                names = []
            elif not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
                self.add(f"{here}.ErrorEquals", "must be a non-empty list of error names")
                names = []
            elif STATES_ALL in names and (len(names) > 1 or index != len(source) - 1):
                self.add(f"{here}.ErrorEquals", f'"{STATES_ALL}" must be alone, in the last catcher')
            next_ = self.target(f"{here}.Next", item["Next"]) if "Next" in item else None
            if "Next" not in item:
                self.add(f"{here}.Next", "required")
            result_path = self.result_path(f"{here}.ResultPath", item)
            if next_ is not None:
                catchers.append(Catcher(error_equals=tuple(names), next=next_, result_path=result_path))
        return tuple(catchers)

    def _expressioneval(self, where: str, name: str, source: dict[str, Any], comment: str | None) -> State:
        template = source.get("Parameters")
        if "Parameters" not in source:
            self.add(f"{where}.Parameters", "required")
            template = {}
        elif not isinstance(template, dict):
            self.add(f"{where}.Parameters", "must be an object")
            template = {}
        else:
            self.parameters(f"{where}.Parameters", template)
        next_, end = self.transition(where, source)
        return ExpressionEvalState(
            name=name, comment=comment, next=next_, end=end, parameters=template,
            result_path=self.result_path(f"{where}.ResultPath", source), private_parameters=_top_private(template),
        )

    def _pass(self, where: str, name: str, source: dict[str, Any], comment: str | None) -> State:
        template = source.get("Parameters")
        if "Parameters" in source:
            if "Result" in source:
                self.add(where, 'has both "Parameters" and "Result"; give one')
            if not isinstance(template, dict):
                self.add(f"{where}.Parameters", "must be an object")
                template = None
            else:
                self.parameters(f"{where}.Parameters", template)
        input_path = self.path(f"{where}.InputPath", source["InputPath"]) if "InputPath" in source else None
        next_, end = self.transition(where, source)
        return PassState(
            name=name, comment=comment, next=next_, end=end, parameters=template, result=source.get("Result"),
            has_result="Result" in source, input_path=input_path,
            result_path=self.result_path(f"{where}.ResultPath", source), private_parameters=_top_private(template),
        )

    def _choice(self, where: str, name: str, source: dict[str, Any], comment: str | None) -> State:
        self.no_transition(where, source, "Choice")
        choices = source.get("Choices")
        rules: list[ChoiceRule] = []
        if choices is None:
            self.add(f"{where}.Choices", "required")
        elif not isinstance(choices, list) or not choices:
            self.add(f"{where}.Choices", "must be a non-empty list of choice rules")
        else:
            for index, item in enumerate(choices):
                rule = self.rule(f"{where}.Choices[{index}]", item, top=True)
                if rule is not None:
                    rules.append(rule)
        default = self.target(f"{where}.Default", source["Default"]) if "Default" in source else None
        return ChoiceState(name=name, comment=comment, choices=tuple(rules), default=default)

    def rule(self, where: str, source: Any, *, top: bool) -> ChoiceRule | None:
        if not isinstance(source, dict):
            self.add(where, "must be a choice rule object")
            return None
        operators = [key for key in source if key in COMPARISONS or key in BOOLEAN_OPERATORS]
        for key in source:
            if key not in COMPARISONS and key not in BOOLEAN_OPERATORS and key not in ("Variable", "Next", "Comment"):
                self.add(f"{where}.{key}", "is not a comparison operator or a field of a choice rule")
        next_: str | None = None
        if top:
            if "Next" not in source:
                self.add(f"{where}.Next", "required")
            else:
                next_ = self.target(f"{where}.Next", source["Next"])
        elif "Next" in source:
            self.add(f"{where}.Next", "only top-level choice rules have Next")
        if len(operators) != 1:
            found = f"has {len(operators)}: {', '.join(operators)}" if operators else "has none"
            self.add(where, f"needs exactly one comparison operator (or And, Or, Not), {found}")
            return None
        op = operators[0]
        value = source[op]
        if op in BOOLEAN_OPERATORS:
            if "Variable" in source:
                self.add(f"{where}.Variable", f"an {op} rule has no Variable; its rules do")
            subs = [value] if op == "Not" else value
            if op == "Not" and not isinstance(value, dict):
                self.add(f"{where}.Not", "must be one choice rule (an object)")
                return None
            if op != "Not" and (not isinstance(value, list) or not value):
                self.add(f"{where}.{op}", "must be a non-empty list of choice rules")
                return None
            built = [self.rule(f"{where}.{op}" + ("" if op == "Not" else f"[{i}]"), sub, top=False)
                     for i, sub in enumerate(subs)]
            if any(sub is None for sub in built):
                return None
            return ChoiceRule(operator=op, rules=tuple(sub for sub in built if sub is not None), next=next_)
        variable = None
        if "Variable" not in source:
            self.add(f"{where}.Variable", "required")
        else:
            variable = self.path(f"{where}.Variable", source["Variable"])
        expected = COMPARISONS[op]
        here = f"{where}.{op}"
        if expected == "Path":
            problem = paths.check_reference(value)
            if problem is not None:
                self.add(here, problem)
        elif expected == "String" and not isinstance(value, str):
            self.add(here, "must be a string")
        elif expected == "Numeric" and not _is_number(value):
            self.add(here, "must be a number")
        elif expected == "Boolean" and not isinstance(value, bool):
            self.add(here, "must be true or false")
        elif expected == "Timestamp" and timestamps.parse(value) is None:
            self.add(here, f"{_quote(value)} is not an RFC 3339 timestamp (like 2026-01-31T12:00:00Z)")
        return ChoiceRule(operator=op, variable=variable, operand=value, next=next_)

    def _wait(self, where: str, name: str, source: dict[str, Any], comment: str | None) -> State:
        given = [key for key in _WAIT_FIELDS if key in source]
        seconds = seconds_path = timestamp = timestamp_path = None
        if len(given) != 1:
            found = f"has {', '.join(given)}" if given else "has none"
            self.add(where, f"needs exactly one of Seconds, SecondsPath, Timestamp, TimestampPath; {found}")
        if "Seconds" in source:
            seconds = source["Seconds"]
            if not _is_number(seconds) or seconds < 0:
                self.add(f"{where}.Seconds", f"{_quote(seconds)} is not a number of seconds >= 0")
                seconds = 0
        if "Timestamp" in source:
            timestamp = source["Timestamp"]
            if timestamps.parse(timestamp) is None:
                self.add(f"{where}.Timestamp", f"{_quote(timestamp)} is not an RFC 3339 timestamp (like 2026-01-31T12:00:00Z)")
        if "SecondsPath" in source:
            seconds_path = self.path(f"{where}.SecondsPath", source["SecondsPath"])
        if "TimestampPath" in source:
            timestamp_path = self.path(f"{where}.TimestampPath", source["TimestampPath"])
        next_, end = self.transition(where, source)
        return WaitState(name=name, comment=comment, next=next_, end=end, seconds=seconds, seconds_path=seconds_path,
                         timestamp=timestamp, timestamp_path=timestamp_path)

    def _fail(self, where: str, name: str, source: dict[str, Any], comment: str | None) -> State:
        self.no_transition(where, source, "Fail")
        values: dict[str, Any] = {}
        for key in ("Error", "Cause"):
            if key in source and f"{key}Path" in source:
                self.add(where, f'has both "{key}" and "{key}Path"; give one')
            values[key] = self.string(f"{where}.{key}", source.get(key))
            values[f"{key}Path"] = self.path(f"{where}.{key}Path", source[f"{key}Path"]) if f"{key}Path" in source else None
        return FailState(name=name, comment=comment, error=values["Error"], cause=values["Cause"],
                         error_path=values["ErrorPath"], cause_path=values["CausePath"])

    def _succeed(self, where: str, name: str, source: dict[str, Any], comment: str | None) -> State:
        self.no_transition(where, source, "Succeed")
        return SucceedState(name=name, comment=comment)


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not any(c.isspace() for c in url)


def _top_private(template: Any) -> frozenset[str]:
    if not isinstance(template, dict):
        return frozenset()
    names = template.get(PRIVATE_PARAMETERS_KEY)
    return frozenset(n for n in names if isinstance(n, str)) if isinstance(names, list) else frozenset()


def successors(state: State) -> list[str]:
    """The states a run may go to from ``state`` (Next, Choice rules and Default, Catch)."""
    out = [state.next] if state.next else []
    if isinstance(state, ChoiceState):
        out += [rule.next for rule in state.choices if rule.next]
        out += [state.default] if state.default else []
    if isinstance(state, ActionState):
        out += [catcher.next for catcher in state.catch]
    return out


def _schema_errors(schema: Any) -> list[str]:
    if not isinstance(schema, dict):
        return ["input_schema: must be a JSON Schema object"]
    meta = validator_for(schema)
    checker = meta(meta.META_SCHEMA)
    errors = []
    for error in sorted(checker.iter_errors(schema), key=lambda e: list(e.absolute_path)):
        at = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        errors.append(f"input_schema{at}: {error.message}")
    return errors


def validate(definition: Any, *, input_schema: dict[str, Any] | None = None) -> Definition:
    """The parsed :class:`Definition`, or :class:`DefinitionError` listing every problem found.

    ``input_schema``, when given, must be a valid JSON Schema (its problems are listed too).
    """
    schema_errors = _schema_errors(input_schema) if input_schema is not None else []
    if not isinstance(definition, dict):
        raise DefinitionError(["definition: must be a JSON object with StartAt and States", *schema_errors])
    raw_states = definition.get("States")
    names = set(raw_states) if isinstance(raw_states, dict) else set()
    check = _Checker(names)
    check.unknown_fields("definition", definition, _TOP_FIELDS)
    comment = definition.get("Comment")
    if comment is not None and not isinstance(comment, str):
        check.add("Comment", "must be a string")
    start_at = definition.get("StartAt")
    if "StartAt" not in definition:
        check.add("StartAt", "required")
    elif not isinstance(start_at, str):
        check.add("StartAt", "must be the name of a state (a string)")
    elif isinstance(raw_states, dict) and raw_states and start_at not in names:
        check.add("StartAt", f'"{start_at}" is not a state')
    states: dict[str, State] = {}
    if "States" not in definition:
        check.add("States", "required")
    elif not isinstance(raw_states, dict) or not raw_states:
        check.add("States", "must be an object with at least one state")
    else:
        for name, source in raw_states.items():
            built = check.state(name, source)
            if built is not None:
                states[name] = built
        if isinstance(start_at, str) and start_at in states:
            seen = {start_at}
            queue = deque([start_at])
            while queue:
                for following in successors(states[queue.popleft()]):
                    if following not in seen and following in states:
                        seen.add(following)
                        queue.append(following)
            for name in raw_states:
                if name not in seen and name in states:
                    check.add(f"States.{name}", f'is unreachable: no path from StartAt "{start_at}" leads to it')
    errors = check.errors + schema_errors
    if errors:
        raise DefinitionError(errors)
    assert isinstance(start_at, str)
    return Definition(start_at=start_at, states=states, comment=comment, source=definition)
