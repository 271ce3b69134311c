"""Parameters, JSONPaths and ResultPath at run time, and what of them may be shown."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from providers.flows.language import (
    PARAMETER_PATH_FAILURE,
    RESULT_PATH_MATCH_FAILURE,
    RUNTIME,
    FlowError,
    ResolveError,
    ResultPathError,
    apply_result_path,
    find,
    private_view,
    public_definition,
    public_document,
    resolve,
    state_input,
    validate,
)

DOC = {
    "input": {"source": {"id": "c1", "path": "/data/run1/"}, "files": ["a", "b", "c"], "n": 2},
    "results": [{"status": "SUCCEEDED", "size": 1}, {"status": "FAILED", "size": 5}],
    "weird key": {"a.b": True},
    "_private_secret": "s3cret",
}
CONTEXT = {"run_id": "r-1", "user_id": "urn:globus:auth:identity:u1"}


def state(kind: str = "Action", **fields: Any) -> Any:
    base: dict[str, Any] = {"Type": kind, "End": True}
    if kind == "Action":
        base["ActionUrl"] = "https://h/hello"
    base.update(fields)
    return validate({"StartAt": "S", "States": {"S": base}}).states["S"]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("$", [DOC]),
        ("$.input.source.id", ["c1"]),
        ("$.input.files[1]", ["b"]),
        ("$.input.files[-1]", ["c"]),
        ("$['weird key']['a.b']", [True]),
        ('$["weird key"]', [{"a.b": True}]),
        ("$.input.files[*]", ["a", "b", "c"]),
        ("$.input.files[0:2]", ["a", "b"]),
        ("$.results[?@.status == 'FAILED'].size", [5]),
        ("$..size", [1, 5]),
        ("$.missing", []),
        ("$.input.files[7]", []),
        ("$.input.files.x", []),
        ("$._context.run_id", ["r-1"]),
    ],
)
def test_find_selects_values_like_jsonpath(path: str, expected: list[Any]) -> None:
    assert find(path, DOC, context=CONTEXT) == expected


def test_parameters_take_constants_paths_and_expressions_at_every_depth() -> None:
    template = {
        "constant": 10,
        "id.$": "$.input.source.id",
        "label.=": "input.source.id + '-' + str(input.n)",
        "nested": {"flag": True, "first.$": "$.input.files[0]", "items": [{"p.$": "$.input.source.path"}, "literal"]},
        "all.$": "$.input.files[*]",
        "run.$": "$._context.run_id",
        "who.=": "_context.user_id",
        "empty": {},
    }
    assert resolve(template, DOC, context=CONTEXT) == {
        "constant": 10,
        "id": "c1",
        "label": "c1-2",
        "nested": {"flag": True, "first": "a", "items": [{"p": "/data/run1/"}, "literal"]},
        "all": ["a", "b", "c"],
        "run": "r-1",
        "who": "urn:globus:auth:identity:u1",
        "empty": {},
    }


def test_resolving_copies_constants_and_leaves_the_document_alone() -> None:
    template = {"nested": {"list": [1, {"x": 2}]}}
    document = copy.deepcopy(DOC)
    out = resolve(template, document)
    out["nested"]["list"][1]["x"] = 99
    assert template == {"nested": {"list": [1, {"x": 2}]}}
    assert document == DOC


@pytest.mark.parametrize(
    ("template", "cause"),
    [
        ({"x.$": "$.nope"}, 'Parameters.x.$: "$.nope" selects nothing in the state document'),
        ({"a": {"b": [0, {"c.$": "$.input.files[9]"}]}},
         'Parameters.a.b[1].c.$: "$.input.files[9]" selects nothing in the state document'),
        ({"x.=": "nope + 1"}, 'Parameters.x.=: "nope + 1": nope is not in the state document'),
        ({"x.=": "input.n / 0"}, 'Parameters.x.=: "input.n / 0" failed: ZeroDivisionError: division by zero'),
        ({"x.=": "[`$.gone`]"}, 'Parameters.x.=: "[`$.gone`]": `$.gone` selects nothing in the state document'),
        ({"x.$": "$._context.run_id"}, 'Parameters.x.$: "$._context.run_id" selects nothing in the state document'),
    ],
)
def test_a_parameter_that_cannot_be_resolved_is_a_parameter_path_failure(template: dict[str, Any], cause: str) -> None:
    with pytest.raises(ResolveError) as caught:
        resolve(template, DOC)
    assert caught.value.error == PARAMETER_PATH_FAILURE == "States.ParameterPathFailure"
    assert caught.value.cause == cause
    assert caught.value.to_dict() == {"Error": "States.ParameterPathFailure", "Cause": cause}


def test_private_parameters_are_sent_but_never_shown() -> None:
    action = state(Parameters={
        "user": "flow",
        "password": "hunter2",
        "token.$": "$._private_secret",
        "digest.=": "'x' * 3",
        "server": {"url": "https://s", "key": "k1", "__Private_Parameters": ["key"]},
        "items": [{"secret": 1, "open": 2, "__Private_Parameters": ["secret"]}],
        "__Private_Parameters": ["password", "token", "digest"],
    })
    body = state_input(action, DOC)
    assert body == {
        "user": "flow", "password": "hunter2", "token": "s3cret", "digest": "xxx",
        "server": {"url": "https://s", "key": "k1"}, "items": [{"secret": 1, "open": 2}],
    }
    assert action.private_parameters == frozenset({"password", "token", "digest"})
    assert private_view(body, action) == {"user": "flow", "server": {"url": "https://s"}, "items": [{"open": 2}]}
    assert body["password"] == "hunter2"  # the view is a copy


def test_the_private_view_of_a_state_without_parameters_is_the_body_itself() -> None:
    action = state(InputPath="$.input")
    assert private_view({"x": 1}, action) == {"x": 1}


def test_a_definition_is_shown_without_its_private_parameters() -> None:
    definition: dict[str, Any] = {"StartAt": "S", "States": {"S": {
        "Type": "Action", "ActionUrl": "https://h/", "End": True, "Parameters": {
        "user": "u", "password": "p", "key.$": "$.k", "inner": {"x.=": "1", "y": 2, "__Private_Parameters": ["x"]},
        "__Private_Parameters": ["password", "key"]}}, "T": {"Type": "Succeed"}}}
    assert public_definition(definition)["States"] == {
        "S": {"Type": "Action", "ActionUrl": "https://h/", "End": True, "Parameters": {"user": "u", "inner": {"y": 2}}},
        "T": {"Type": "Succeed"},
    }
    assert definition["States"]["S"]["Parameters"]["password"] == "p"


def test_private_run_state_and_role_tokens_are_left_out_of_shown_documents() -> None:
    document = {"a": 1, "_private": {"pw": 1}, "_private_key": 2, "_tokens": {"Admin": "t"},
                "nested": [{"_private_x": 3, "ok": 4}], "_public": 5}
    assert public_document(document) == {"a": 1, "nested": [{"ok": 4}], "_public": 5}
    assert document["_private"] == {"pw": 1}


def test_state_input_follows_input_path_parameters_and_result() -> None:
    assert state_input(state(InputPath="$.input.source"), DOC) == {"id": "c1", "path": "/data/run1/"}
    assert state_input(state("Pass"), DOC) == DOC
    assert state_input(state("Pass", InputPath="$.input.n"), DOC) == 2
    assert state_input(state("Pass", Result={"fixed": [1]}), DOC) == {"fixed": [1]}
    assert state_input(state("Pass", Result=None), DOC) is None
    assert state_input(state("Pass", InputPath="$.input", Parameters={"n.$": "$.n"}), DOC) == {"n": 2}
    assert state_input(state("ExpressionEval", Parameters={"twice.=": "input.n * 2"}), DOC) == {"twice": 4}
    assert state_input(state("Action", Parameters={"r.$": "$._context.run_id"}), DOC, context=CONTEXT) == {"r": "r-1"}


def test_an_input_path_that_selects_nothing_is_a_runtime_error() -> None:
    with pytest.raises(FlowError) as caught:
        state_input(state(InputPath="$.nothing"), DOC)
    assert (caught.value.error, caught.value.cause) == (RUNTIME, 'InputPath: "$.nothing" selects nothing in the state document')


@pytest.mark.parametrize(
    ("result_path", "expected"),
    [
        ("$", {"new": 1}),
        (None, {"a": {"b": 1}, "l": [0, {"x": 1}]}),
        ("$.r", {"a": {"b": 1}, "l": [0, {"x": 1}], "r": {"new": 1}}),
        ("$.a.b", {"a": {"b": {"new": 1}}, "l": [0, {"x": 1}]}),
        ("$.a.c.d", {"a": {"b": 1, "c": {"d": {"new": 1}}}, "l": [0, {"x": 1}]}),
        ("$['a']['k k']", {"a": {"b": 1, "k k": {"new": 1}}, "l": [0, {"x": 1}]}),
        ("$.l[1].x", {"a": {"b": 1}, "l": [0, {"x": {"new": 1}}]}),
        ("$.l[0]", {"a": {"b": 1}, "l": [{"new": 1}, {"x": 1}]}),
    ],
)
def test_result_path_places_the_result(result_path: str | None, expected: dict[str, Any]) -> None:
    document = {"a": {"b": 1}, "l": [0, {"x": 1}]}
    before = copy.deepcopy(document)
    assert apply_result_path(document, result_path, {"new": 1}) == expected
    assert document == before


@pytest.mark.parametrize(
    ("result_path", "result", "cause"),
    [
        ("$.a.b.c", 1, 'ResultPath "$.a.b.c": "c" is inside a number, not an object'),
        ("$.l.x", 1, 'ResultPath "$.l.x": "x" is inside a list, not an object'),
        ("$.l[5]", 1, 'ResultPath "$.l[5]": index 5 is not in a list of the document'),
        ("$.a[0]", 1, 'ResultPath "$.a[0]": index 0 is not in a list of the document'),
        ("$", [1], "ResultPath $ needs an object to become the state document, not a list"),
        ("$", "x", "ResultPath $ needs an object to become the state document, not a string"),
        ("$._context.x", 1, 'ResultPath "$._context.x": $._context is read-only'),
        ("$.l[*]", 1, 'ResultPath "$.l[*]" is not a reference path'),
    ],
)
def test_a_result_path_that_cannot_be_applied_is_a_result_path_match_failure(result_path: str, result: Any, cause: str) -> None:
    with pytest.raises(ResultPathError) as caught:
        apply_result_path({"a": {"b": 1}, "l": [0]}, result_path, result)
    assert (caught.value.error, caught.value.cause) == (RESULT_PATH_MATCH_FAILURE, cause)


_keys = st.text(alphabet="abcxyz_", min_size=1, max_size=4).filter(lambda k: k != "_context")
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3), max_leaves=8)


@settings(deadline=None)
@given(document=st.dictionaries(_keys, _json, max_size=4), steps=st.lists(_keys, min_size=1, max_size=4), result=_json)
def test_a_stored_result_is_found_at_its_result_path_and_the_rest_is_kept(
    document: dict[str, Any], steps: list[str], result: Any
) -> None:
    path = "$" + "".join(f".{step}" for step in steps)
    before = copy.deepcopy(document)
    try:
        updated = apply_result_path(document, path, result)
    except ResultPathError:
        # Only when the path runs through something that is not an object.
        node: Any = document
        for step in steps[:-1]:
            if step not in node:
                raise AssertionError("refused a path that only needed new objects") from None
            node = node[step]
            if not isinstance(node, dict):
                return
        raise AssertionError("refused a path through objects only") from None
    assert find(path, updated) == [result]
    assert document == before
    for key in document:
        if key != steps[0]:
            assert updated[key] == document[key]
