"""Deploy-time validation of flow definitions: every problem found at once, each message exact."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from providers.flows.language import (
    ActionState,
    Catcher,
    ChoiceRule,
    ChoiceState,
    DefinitionError,
    ExpressionEvalState,
    FailState,
    PassState,
    SucceedState,
    WaitState,
    successors,
    validate,
)

DEFINITIONS = Path(__file__).parent / "definitions"
URL = "https://actions.example.org/hello"


def action(**fields: Any) -> dict[str, Any]:
    """A valid Action state that ends the run, with ``fields`` added or replaced (None removes a field)."""
    state = {"Type": "Action", "ActionUrl": URL, "Parameters": {"echo_string": "hi"}, "End": True}
    state.update(fields)
    return {key: value for key, value in state.items() if value is not None}


def flow(*states: tuple[str, Any], start: str | None = None) -> dict[str, Any]:
    return {"StartAt": start or states[0][0], "States": dict(states)}


def errors_of(definition: Any, **kwargs: Any) -> list[str]:
    with pytest.raises(DefinitionError) as caught:
        validate(definition, **kwargs)
    assert isinstance(caught.value, ValueError)
    assert str(caught.value) == "; ".join(caught.value.errors)
    return caught.value.errors


INVALID: list[tuple[str, Any, list[str]]] = [
    ("not an object", ["StartAt"], ["definition: must be a JSON object with StartAt and States"]),
    ("no StartAt, no States", {}, ["StartAt: required", "States: required"]),
    ("StartAt not a string", {"StartAt": 3, "States": {"A": action()}}, ["StartAt: must be the name of a state (a string)"]),
    ("StartAt names no state", flow(("A", action()), start="B"), ['StartAt: "B" is not a state']),
    ("States empty", {"StartAt": "A", "States": {}}, ["States: must be an object with at least one state"]),
    ("unknown top-level field", {**flow(("A", action())), "Version": "1.0"}, ["definition.Version: unknown field"]),
    ("Comment not a string", {**flow(("A", action())), "Comment": 1}, ["Comment: must be a string"]),
    ("state not an object", flow(("A", [])), ["States.A: must be an object"]),
    ("Type missing", flow(("A", {"End": True})), ["States.A.Type: required"]),
    ("unknown Type", flow(("A", {"Type": "Task", "End": True})),
     ['States.A.Type: "Task" is not a state type (Action, ExpressionEval, Pass, Choice, Wait, Fail, Succeed)']),
    ("unknown state field", flow(("A", action(Retry=[]))), ["States.A.Retry: is not a field of this state"]),
    ("OutputPath", flow(("A", action(OutputPath="$.x"))), ["States.A.OutputPath: is not supported by flows; use ResultPath"]),
    ("neither Next nor End", flow(("A", action(End=None))), ['States.A: needs "Next" (the state that follows) or "End": true']),
    ("both Next and End", flow(("A", action(Next="A"))),
     ['States.A: has both "Next" and "End"; a state either goes on or ends the run']),
    ("End false", flow(("A", action(End=False))),
     ["States.A.End: must be true (or left out)", 'States.A: needs "Next" (the state that follows) or "End": true']),
    ("Next to a missing state", flow(("Copy", action(End=None, Next="Shar")), ("Share", action())),
     ['States.Copy.Next: "Shar" is not a state', 'States.Share: is unreachable: no path from StartAt "Copy" leads to it']),
    ("Next not a string", flow(("A", action(End=None, Next=["B"]))), ["States.A.Next: must be the name of a state (a string)"]),
    ("unreachable states", flow(("A", action()), ("B", action(End=None, Next="C")), ("C", action())),
     ['States.B: is unreachable: no path from StartAt "A" leads to it',
      'States.C: is unreachable: no path from StartAt "A" leads to it']),
    ("ActionUrl missing", flow(("A", action(ActionUrl=None))), ["States.A.ActionUrl: required"]),
    ("ActionUrl ftp", flow(("A", action(ActionUrl="ftp://h/x"))), ['States.A.ActionUrl: "ftp://h/x" is not an http(s) URL']),
    ("ActionUrl relative", flow(("A", action(ActionUrl="/hello"))), ['States.A.ActionUrl: "/hello" is not an http(s) URL']),
    ("ActionUrl no host", flow(("A", action(ActionUrl="https:///x"))),
     ['States.A.ActionUrl: "https:///x" is not an http(s) URL']),
    ("ActionUrl not a string", flow(("A", action(ActionUrl=5))), ["States.A.ActionUrl: 5 is not an http(s) URL"]),
    ("ActionScope empty", flow(("A", action(ActionScope=""))), ["States.A.ActionScope: must be a non-empty string"]),
    ("Parameters and InputPath", flow(("A", action(InputPath="$.x"))),
     ['States.A: has both "Parameters" and "InputPath"; give one']),
    ("neither Parameters nor InputPath", flow(("A", action(Parameters=None))),
     ['States.A: needs "Parameters" (the body of the action) or "InputPath"']),
    ("Parameters not an object", flow(("A", action(Parameters=[1]))), ["States.A.Parameters: must be an object"]),
    ("malformed JSONPath in .$", flow(("A", action(Parameters={"x.$": "$.a["}))),
     ['States.A.Parameters.x.$: "$.a[" is not a valid JSONPath: unexpected end of query']),
    ("JSONPath without $", flow(("A", action(Parameters={"x.$": "a.b"}))),
     ['States.A.Parameters.x.$: "a.b" is not a valid JSONPath: it must start with "$"']),
    ("$$ context path", flow(("A", action(Parameters={"x.$": "$$.Execution.Id"}))),
     ['States.A.Parameters.x.$: "$$.Execution.Id" is not a valid JSONPath: the run context is at $._context']),
    (".$ not a string", flow(("A", action(Parameters={"x.$": 3}))), ["States.A.Parameters.x.$: must be a JSONPath string"]),
    ("nested malformed JSONPath", flow(("A", action(Parameters={"items": [{"p": {"q.$": "$.."}}]}))),
     ['States.A.Parameters.items[0].p.q.$: "$.." is not a valid JSONPath: expected a shorthand selector']),
    ("malformed expression", flow(("A", action(Parameters={"x.=": "a +"}))),
     ['States.A.Parameters.x.=: "a +" is not a valid expression: invalid syntax']),
    ("expression calling an unknown function", flow(("A", action(Parameters={"x.=": "open('f')"}))),
     ['States.A.Parameters.x.=: "open(\'f\')" calls open(), which is not a function expressions have (abs, all, any, '
      "bool, float, getattr, int, is_present, len, max, min, pathsplit, round, sorted, str, sum)"]),
    ("expression reading a dunder", flow(("A", action(Parameters={"x.=": "a.__class__"}))),
     ['States.A.Parameters.x.=: "a.__class__" reads ".__class__": names starting with "_" are not allowed after a dot']),
    ("expression with lambda", flow(("A", action(Parameters={"x.=": "(lambda: 1)()"}))),
     ['States.A.Parameters.x.=: "(lambda: 1)()" uses Lambda, which expressions do not allow']),
    ("empty expression", flow(("A", action(Parameters={"x.=": " "}))), ["States.A.Parameters.x.=: is an empty expression"]),
    ("bad backtick path in expression", flow(("A", action(Parameters={"x.=": "[`a.b`]"}))),
     ['States.A.Parameters.x.=: "[`a.b`]": "a.b" is not a valid JSONPath: it must start with "$"']),
    ("a parameter given twice", flow(("A", action(Parameters={"x": 1, "x.$": "$.x", "y.=": "1", "y.$": "$.y"}))),
     ['States.A.Parameters.x.$: gives "x" again (also given by "x")',
      'States.A.Parameters.y.$: gives "y" again (also given by "y.=")']),
    ("__Private_Parameters not a list", flow(("A", action(Parameters={"pw": "x", "__Private_Parameters": "pw"}))),
     ["States.A.Parameters.__Private_Parameters: must be a list of parameter names"]),
    ("__Private_Parameters names nothing", flow(("A", action(Parameters={"pw": "x", "__Private_Parameters": ["pwd"]}))),
     ['States.A.Parameters.__Private_Parameters: "pwd" is not a parameter of this object']),
    ("malformed InputPath", flow(("A", action(Parameters=None, InputPath="$.a b"))),
     ["States.A.InputPath: \"$.a b\" is not a valid JSONPath: unexpected token 'b'"]),
    ("ResultPath with wildcard", flow(("A", action(ResultPath="$.a[*]"))),
     ['States.A.ResultPath: "$.a[*]" must be a reference path to one place (like $.a.b or $.a[0]): no wildcards or filters']),
    ("ResultPath into the context", flow(("A", action(ResultPath="$._context.x"))),
     ['States.A.ResultPath: "$._context.x" writes into $._context, which is read-only']),
    ("WaitTime zero", flow(("A", action(WaitTime=0))), ["States.A.WaitTime: 0 is not a number of seconds greater than 0"]),
    ("WaitTime string", flow(("A", action(WaitTime="60"))),
     ['States.A.WaitTime: "60" is not a number of seconds greater than 0']),
    ("WaitTime infinite", flow(("A", action(WaitTime=float("inf")))),
     ["States.A.WaitTime: inf is not a number of seconds greater than 0"]),
    ("Wait Seconds not a number", flow(("A", {"Type": "Wait", "Seconds": float("nan"), "End": True})),
     ["States.A.Seconds: nan is not a number of seconds >= 0"]),
    ("WaitTime boolean", flow(("A", action(WaitTime=True))),
     ["States.A.WaitTime: True is not a number of seconds greater than 0"]),
    ("ExceptionOnActionFailure not boolean", flow(("A", action(ExceptionOnActionFailure="yes"))),
     ["States.A.ExceptionOnActionFailure: must be true or false"]),
    ("RunAs empty", flow(("A", action(RunAs=""))), ["States.A.RunAs: must be a non-empty string"]),
    ("Catch not a list", flow(("A", action(Catch={}))), ["States.A.Catch: must be a list of catchers"]),
    ("Catch entry not an object", flow(("A", action(Catch=["x"]))),
     ["States.A.Catch[0]: must be an object with ErrorEquals and Next"]),
    ("Catch without ErrorEquals and Next", flow(("A", action(Catch=[{}]))),
     ["States.A.Catch[0].ErrorEquals: required", "States.A.Catch[0].Next: required"]),
    ("Catch ErrorEquals not strings", flow(("A", action(Catch=[{"ErrorEquals": [1], "Next": "A"}]))),
     ["States.A.Catch[0].ErrorEquals: must be a non-empty list of error names"]),
    ("Catch ErrorEquals empty", flow(("A", action(Catch=[{"ErrorEquals": [], "Next": "A"}]))),
     ["States.A.Catch[0].ErrorEquals: must be a non-empty list of error names"]),
    ("Catch Next missing state", flow(("A", action(Catch=[{"ErrorEquals": ["States.ALL"], "Next": "Nope"}]))),
     ['States.A.Catch[0].Next: "Nope" is not a state']),
    ("Catch unknown field", flow(("A", action(Catch=[{"ErrorEquals": ["X"], "Next": "A", "Retry": 1}]))),
     ["States.A.Catch[0].Retry: unknown field"]),
    ("Catch ResultPath malformed", flow(("A", action(Catch=[{"ErrorEquals": ["X"], "Next": "A", "ResultPath": "$.["}]))),
     ['States.A.Catch[0].ResultPath: "$.[" is not a valid JSONPath: expected a shorthand selector']),
    ("States.ALL not last", flow(("A", action(Catch=[{"ErrorEquals": ["States.ALL"], "Next": "A"},
                                                     {"ErrorEquals": ["X"], "Next": "A"}]))),
     ['States.A.Catch[0].ErrorEquals: "States.ALL" must be alone, in the last catcher']),
    ("States.ALL not alone", flow(("A", action(Catch=[{"ErrorEquals": ["X", "States.ALL"], "Next": "A"}]))),
     ['States.A.Catch[0].ErrorEquals: "States.ALL" must be alone, in the last catcher']),
    ("ExpressionEval without Parameters", flow(("A", {"Type": "ExpressionEval", "End": True})),
     ["States.A.Parameters: required"]),
    ("ExpressionEval with InputPath", flow(("A", {"Type": "ExpressionEval", "Parameters": {}, "InputPath": "$", "End": True})),
     ["States.A.InputPath: is not a field of this state"]),
    ("Pass with Result and Parameters", flow(("A", {"Type": "Pass", "Result": 1, "Parameters": {}, "End": True})),
     ['States.A: has both "Parameters" and "Result"; give one']),
    ("Choice without Choices", flow(("A", {"Type": "Choice", "Default": "A"})), ["States.A.Choices: required"]),
    ("Choice with empty Choices", flow(("A", {"Type": "Choice", "Choices": [], "Default": "A"})),
     ["States.A.Choices: must be a non-empty list of choice rules"]),
    ("Choice with Next",
     flow(("A", {"Type": "Choice", "Choices": [{"Variable": "$.x", "IsPresent": True, "Next": "B"}], "Next": "B"}),
                              ("B", {"Type": "Succeed"})),
     ["States.A.Next: a Choice state has no Next"]),
    ("Choice rule without operator",
     flow(("A", {"Type": "Choice", "Choices": [{"Variable": "$.x", "Next": "A"}], "Default": "A"})),
     ["States.A.Choices[0]: needs exactly one comparison operator (or And, Or, Not), has none"]),
    ("Choice rule with two operators",
     flow(("A", {"Type": "Choice", "Choices": [{"Variable": "$.x", "StringEquals": "a", "NumericEquals": 1, "Next": "A"}]})),
     ["States.A.Choices[0]: needs exactly one comparison operator (or And, Or, Not), has 2: StringEquals, NumericEquals"]),
    ("Choice rule unknown operator",
     flow(("A", {"Type": "Choice", "Choices": [{"Variable": "$.x", "StringContains": "a", "Next": "A"}]})),
     ["States.A.Choices[0].StringContains: is not a comparison operator or a field of a choice rule",
      "States.A.Choices[0]: needs exactly one comparison operator (or And, Or, Not), has none"]),
    ("Choice rule without Variable", flow(("A", {"Type": "Choice", "Choices": [{"StringEquals": "a", "Next": "A"}]})),
     ["States.A.Choices[0].Variable: required"]),
    ("Choice rule without Next",
     flow(("A", {"Type": "Choice", "Choices": [{"Variable": "$.x", "IsNull": True}], "Default": "A"})),
     ["States.A.Choices[0].Next: required"]),
    ("Choice rule Next missing state",
     flow(("A", {"Type": "Choice", "Choices": [{"Variable": "$.x", "IsNull": True, "Next": "Z"}],
                                                  "Default": "A"})),
     ['States.A.Choices[0].Next: "Z" is not a state']),
    ("Choice Default missing state", flow(("A", {"Type": "Choice", "Choices": [{"Variable": "$.x", "IsNull": True, "Next": "A"}],
                                                "Default": "Z"})),
     ['States.A.Default: "Z" is not a state']),
    ("Choice malformed Variable", flow(("A", {"Type": "Choice", "Choices": [{"Variable": "x", "IsNull": True, "Next": "A"}]})),
     ['States.A.Choices[0].Variable: "x" is not a valid JSONPath: it must start with "$"']),
    ("Choice operand types", flow(("A", {"Type": "Choice", "Choices": [
        {"Variable": "$.x", "StringEquals": 1, "Next": "A"},
        {"Variable": "$.x", "NumericLessThan": "1", "Next": "A"},
        {"Variable": "$.x", "BooleanEquals": "true", "Next": "A"},
        {"Variable": "$.x", "TimestampEquals": "2026-01-01", "Next": "A"},
        {"Variable": "$.x", "IsPresent": 1, "Next": "A"},
        {"Variable": "$.x", "StringEqualsPath": "$.y[*]", "Next": "A"},
        {"Variable": "$.x", "NumericEquals": True, "Next": "A"},
    ]})),
     ["States.A.Choices[0].StringEquals: must be a string",
      "States.A.Choices[1].NumericLessThan: must be a number",
      "States.A.Choices[2].BooleanEquals: must be true or false",
      'States.A.Choices[3].TimestampEquals: "2026-01-01" is not an RFC 3339 timestamp (like 2026-01-31T12:00:00Z)',
      "States.A.Choices[4].IsPresent: must be true or false",
      'States.A.Choices[5].StringEqualsPath: "$.y[*]" must be a reference path to one place (like $.a.b or $.a[0]): '
      "no wildcards or filters",
      "States.A.Choices[6].NumericEquals: must be a number"]),
    ("Choice And not a list", flow(("A", {"Type": "Choice", "Choices": [{"And": {}, "Next": "A"}]})),
     ["States.A.Choices[0].And: must be a non-empty list of choice rules"]),
    ("Choice Not not an object", flow(("A", {"Type": "Choice", "Choices": [{"Not": [], "Next": "A"}]})),
     ["States.A.Choices[0].Not: must be one choice rule (an object)"]),
    ("Choice nested rule with Next and no Variable", flow(("A", {"Type": "Choice", "Choices": [
        {"Or": [{"Variable": "$.x", "IsNull": True}, {"Not": {"IsNull": True, "Next": "A"}}], "Next": "A"}]})),
     ["States.A.Choices[0].Or[1].Not.Next: only top-level choice rules have Next",
      "States.A.Choices[0].Or[1].Not.Variable: required"]),
    ("Choice And with Variable", flow(("A", {"Type": "Choice", "Choices": [
        {"Variable": "$.x", "And": [{"Variable": "$.x", "IsNull": True}], "Next": "A"}]})),
     ["States.A.Choices[0].Variable: an And rule has no Variable; its rules do"]),
    ("Wait with none", flow(("A", {"Type": "Wait", "End": True})),
     ["States.A: needs exactly one of Seconds, SecondsPath, Timestamp, TimestampPath; has none"]),
    ("Wait with two", flow(("A", {"Type": "Wait", "Seconds": 1, "TimestampPath": "$.t", "End": True})),
     ["States.A: needs exactly one of Seconds, SecondsPath, Timestamp, TimestampPath; has Seconds, TimestampPath"]),
    ("Wait negative Seconds", flow(("A", {"Type": "Wait", "Seconds": -1, "End": True})),
     ["States.A.Seconds: -1 is not a number of seconds >= 0"]),
    ("Wait bad Timestamp", flow(("A", {"Type": "Wait", "Timestamp": "tomorrow", "End": True})),
     ['States.A.Timestamp: "tomorrow" is not an RFC 3339 timestamp (like 2026-01-31T12:00:00Z)']),
    ("Wait malformed SecondsPath", flow(("A", {"Type": "Wait", "SecondsPath": "$.[", "End": True})),
     ['States.A.SecondsPath: "$.[" is not a valid JSONPath: expected a shorthand selector']),
    ("Wait malformed TimestampPath", flow(("A", {"Type": "Wait", "TimestampPath": 7, "End": True})),
     ["States.A.TimestampPath: must be a JSONPath string"]),
    ("Fail with End", flow(("A", {"Type": "Fail", "Error": "E", "End": True})), ["States.A.End: a Fail state has no End"]),
    ("Fail Error not a string", flow(("A", {"Type": "Fail", "Error": 1, "Cause": ""})),
     ["States.A.Error: must be a non-empty string", "States.A.Cause: must be a non-empty string"]),
    ("Fail Error and ErrorPath", flow(("A", {"Type": "Fail", "Error": "E", "ErrorPath": "$.e"})),
     ['States.A: has both "Error" and "ErrorPath"; give one']),
    ("Succeed with Next", flow(("A", {"Type": "Succeed", "Next": "A"})), ["States.A.Next: a Succeed state has no Next"]),
    ("every problem at once",
     {"StartAt": "Copy", "States": {"Copy": action(ActionUrl="ftp://x", End=None, Next="Shar"), "Share": {"Type": "Task"}}},
     ['States.Copy.ActionUrl: "ftp://x" is not an http(s) URL', 'States.Copy.Next: "Shar" is not a state',
      'States.Share.Type: "Task" is not a state type (Action, ExpressionEval, Pass, Choice, Wait, Fail, Succeed)']),
]


@pytest.mark.parametrize(("definition", "expected"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_invalid_definitions_are_refused_with_every_problem_named(definition: Any, expected: list[str]) -> None:
    assert errors_of(definition) == expected


def test_validation_does_not_change_the_definition() -> None:
    definition = flow(("A", action(Catch=[{"ErrorEquals": ["States.ALL"], "Next": "B"}])), ("B", {"Type": "Succeed"}))
    before = copy.deepcopy(definition)
    validate(definition)
    assert definition == before


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "object", "properties": {"x": {"type": "string"}}}, None),
        ("object", ["input_schema: must be a JSON Schema object"]),
        ({"type": "objekt"}, ["input_schema.type: 'objekt' is not valid under any of the given schemas"]),
        ({"type": "object", "required": "x"}, ["input_schema.required: 'x' is not of type 'array'"]),
    ],
)
def test_the_input_schema_must_be_a_valid_json_schema(schema: Any, expected: list[str] | None) -> None:
    definition = flow(("A", action()))
    if expected is None:
        assert validate(definition, input_schema=schema).start_at == "A"
    else:
        assert errors_of(definition, input_schema=schema) == expected


def test_input_schema_problems_are_listed_after_the_definitions() -> None:
    assert errors_of(flow(("A", action(WaitTime=-1))), input_schema={"type": 5}) == [
        "States.A.WaitTime: -1 is not a number of seconds greater than 0",
        "input_schema.type: 5 is not valid under any of the given schemas",
    ]


def test_an_action_state_takes_the_globus_defaults() -> None:
    state = validate(flow(("A", action()))).states["A"]
    assert state == ActionState(
        name="A", end=True, action_url=URL, parameters={"echo_string": "hi"}, result_path="$", wait_time=300,
        exception_on_action_failure=True, run_as="User", catch=(), action_scope=None, input_path=None,
    )


def test_an_action_state_is_parsed_field_by_field() -> None:
    definition = flow(
        ("A", action(
            End=None, Next="B", Comment="copy", ActionScope="urn:scope", ResultPath="$.out", WaitTime=3600.5,
            ExceptionOnActionFailure=False, RunAs="Flow",
            Parameters={"pw": "s", "key.$": "$.k", "__Private_Parameters": ["pw", "key"]},
            Catch=[{"ErrorEquals": ["ActionFailedException", "ActionTimeout"], "Next": "B", "ResultPath": "$.err"},
                   {"ErrorEquals": ["States.ALL"], "Next": "B", "ResultPath": None}],
        )),
        ("B", {"Type": "Succeed"}),
    )
    state = validate(definition).states["A"]
    assert isinstance(state, ActionState)
    assert (state.next, state.end, state.comment, state.action_scope) == ("B", False, "copy", "urn:scope")
    assert (state.result_path, state.wait_time) == ("$.out", 3600.5)
    assert (state.exception_on_action_failure, state.run_as) == (False, "Flow")
    assert state.private_parameters == frozenset({"pw", "key"})
    assert state.catch == (
        Catcher(error_equals=("ActionFailedException", "ActionTimeout"), next="B", result_path="$.err"),
        Catcher(error_equals=("States.ALL",), next="B", result_path=None),
    )


def test_every_state_type_is_parsed() -> None:
    definition = {
        "Comment": "all types",
        "StartAt": "Eval",
        "States": {
            "Eval": {"Type": "ExpressionEval", "Parameters": {"n.=": "1 + 1"}, "ResultPath": "$.calc", "Next": "Pass"},
            "Pass": {"Type": "Pass", "InputPath": "$.calc", "ResultPath": None, "Next": "Set"},
            "Set": {"Type": "Pass", "Result": {"k": 1}, "Next": "Wait"},
            "Wait": {"Type": "Wait", "SecondsPath": "$.calc.n", "Next": "Choose"},
            "Choose": {"Type": "Choice", "Default": "Done", "Choices": [
                {"Not": {"Variable": "$.calc.n", "NumericEquals": 2}, "Next": "Fail"}]},
            "Fail": {"Type": "Fail", "Error": "Odd", "CausePath": "$.why"},
            "Done": {"Type": "Succeed", "Comment": "ok"},
        },
    }
    parsed = validate(definition)
    assert (parsed.start_at, parsed.comment, parsed.source) == ("Eval", "all types", definition)
    assert parsed.states == {
        "Eval": ExpressionEvalState(name="Eval", next="Pass", parameters={"n.=": "1 + 1"}, result_path="$.calc"),
        "Pass": PassState(name="Pass", next="Set", input_path="$.calc", result_path=None),
        "Set": PassState(name="Set", next="Wait", result={"k": 1}, has_result=True),
        "Wait": WaitState(name="Wait", next="Choose", seconds_path="$.calc.n"),
        "Choose": ChoiceState(name="Choose", default="Done", choices=(
            ChoiceRule(operator="Not", next="Fail",
                       rules=(ChoiceRule(operator="NumericEquals", variable="$.calc.n", operand=2),)),)),
        "Fail": FailState(name="Fail", error="Odd", cause_path="$.why"),
        "Done": SucceedState(name="Done", comment="ok"),
    }
    assert [parsed.state(name).terminal for name in parsed.states] == [False, False, False, False, False, True, True]


def test_catch_targets_and_choice_branches_make_states_reachable() -> None:
    definition = flow(
        ("A", action(End=None, Next="C", Catch=[{"ErrorEquals": ["ActionTimeout"], "Next": "Caught"}])),
        ("C", {"Type": "Choice", "Choices": [{"Variable": "$.x", "IsPresent": True, "Next": "Yes"}], "Default": "No"}),
        ("Caught", {"Type": "Fail"}),
        ("Yes", {"Type": "Succeed"}),
        ("No", {"Type": "Succeed"}),
    )
    assert list(validate(definition).states) == ["A", "C", "Caught", "Yes", "No"]


def test_a_state_may_loop_back() -> None:
    definition = flow(
        ("Count", {"Type": "ExpressionEval", "Parameters": {"n.=": "n + 1"}, "ResultPath": "$", "Next": "Check"}),
        ("Check", {"Type": "Choice", "Choices": [{"Variable": "$.n", "NumericLessThan": 3, "Next": "Count"}], "Default": "End"}),
        ("End", {"Type": "Pass", "End": True}),
    )
    assert validate(definition).states["Check"].type == "Choice"


def _public_definitions() -> list[Path]:
    return sorted(DEFINITIONS.glob("*.definition.json"))


def test_the_public_definitions_are_all_here() -> None:
    assert len(_public_definitions()) == 24


@pytest.mark.parametrize("path", _public_definitions(), ids=lambda p: p.name.removesuffix(".definition.json"))
def test_public_globus_definitions_validate_unchanged(path: Path) -> None:
    definition = json.loads(path.read_text())
    schema_path = path.with_name(path.name.replace(".definition.", ".schema."))
    schema = json.loads(schema_path.read_text()) if schema_path.exists() else None
    parsed = validate(definition, input_schema=schema)
    assert parsed.start_at == definition["StartAt"]
    assert list(parsed.states) == list(definition["States"])
    for name, state in parsed.states.items():
        assert state.type == definition["States"][name]["Type"]
        if isinstance(state, ActionState):
            assert state.action_url == definition["States"][name]["ActionUrl"]


_FIELDS = ["Type", "Next", "End", "ActionUrl", "Parameters", "InputPath", "ResultPath", "WaitTime", "Catch", "Choices",
           "Default", "Seconds", "SecondsPath", "Timestamp", "TimestampPath", "Error", "Cause", "Result", "RunAs",
           "ExceptionOnActionFailure", "Variable", "And", "Not", "StringEquals", "IsPresent", "ErrorEquals", "x.$", "x.="]
_TYPES = ["Action", "ExpressionEval", "Pass", "Choice", "Wait", "Fail", "Succeed", "Task"]
_names = st.sampled_from(["A", "B", "C"])
_scalars = (st.none() | st.booleans() | st.integers(-5, 5) | st.floats() | _names | st.sampled_from(_TYPES)
            | st.sampled_from(["$", "$.a", "$.a[", "$$.x", "a +", "https://h/x", "ftp://x", "2026-01-01T00:00:00Z",
                               "States.ALL"]))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.sampled_from(_FIELDS), inner, max_size=5), max_leaves=12)
_states = st.dictionaries(st.sampled_from(_FIELDS), _values, max_size=8)


@settings(deadline=None, max_examples=150)
@given(start=_scalars, states=st.dictionaries(_names, _states | _values, max_size=3))
def test_any_json_is_either_a_definition_or_a_definition_error(start: Any, states: Any) -> None:
    try:
        parsed = validate({"StartAt": start, "States": states})
    except DefinitionError as error:
        assert error.errors and all(isinstance(message, str) and ": " in message for message in error.errors)
    else:
        assert parsed.start_at in parsed.states


def test_a_definition_lists_its_actions_roles_and_transitions() -> None:
    definition = validate(flow(
        ("A", action(End=None, Next="B", RunAs="Admin", Catch=[{"ErrorEquals": ["States.ALL"], "Next": "F"}])),
        ("B", action(End=None, Next="C", RunAs="Flow")),
        ("C", {"Type": "Choice", "Choices": [{"Variable": "$.x", "IsNull": True, "Next": "A"}], "Default": "D"}),
        ("D", action(RunAs="Curator")),
        ("F", {"Type": "Fail"}),
    ))
    assert [state.name for state in definition.action_states] == ["A", "B", "D"]
    assert definition.run_as_roles == frozenset({"Admin", "Curator"})
    assert [successors(definition.states[name]) for name in "ABCDF"] == [["B", "F"], ["C"], ["A", "D"], [], []]


def test_every_public_name_of_the_language_resolves() -> None:
    import providers.flows.language as language

    assert sorted(language.__all__) == sorted(set(language.__all__))
    for name in language.__all__:
        assert getattr(language, name) is not None
