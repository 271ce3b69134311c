"""Choice, Wait, Catch and Fail at run time."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from providers.flows.language import (
    ACTION_FAILED,
    ACTION_TIMEOUT,
    ACTION_UNABLE_TO_RUN,
    NO_CHOICE_MATCHED,
    PARAMETER_PATH_FAILURE,
    RUNTIME,
    STATES_ALL,
    Catcher,
    ChoiceState,
    FailState,
    FlowError,
    NoChoiceMatched,
    WaitState,
    catcher_for,
    choose,
    fail_output,
    validate,
    wait_until,
)

DOC = {
    "s": "transfer-42.tar", "n": 5, "f": 2.5, "t": True, "z": None, "list": [1], "obj": {},
    "ts": "2026-03-01T12:00:00Z", "ts_later": "2026-03-01T13:00:00+01:00", "ts_bad": "2026-03-01 12:00",
    "other": {"s": "transfer-42.tar", "n": 7, "t": True, "ts": "2026-03-02T00:00:00.5Z"},
    "status": "SUCCEEDED",
}


def choice_state(*rules: dict[str, Any], default: str | None = "Default") -> ChoiceState:
    states: dict[str, Any] = {
        "C": {"Type": "Choice", "Choices": [{**rule, "Next": "Yes"} for rule in rules]},
        "Yes": {"Type": "Succeed"},
        "Default": {"Type": "Succeed"},
    }
    if default:
        states["C"]["Default"] = default
    else:
        del states["Default"]
    state = validate({"StartAt": "C", "States": states}).states["C"]
    assert isinstance(state, ChoiceState)
    return state


def holds(rule: dict[str, Any], document: dict[str, Any] = DOC) -> bool:
    return choose(choice_state(rule), document) == "Yes"


COMPARISONS: list[tuple[dict[str, Any], bool]] = [
    ({"Variable": "$.s", "StringEquals": "transfer-42.tar"}, True),
    ({"Variable": "$.s", "StringEquals": "other"}, False),
    ({"Variable": "$.n", "StringEquals": "5"}, False),
    ({"Variable": "$.s", "StringLessThan": "u"}, True),
    ({"Variable": "$.s", "StringGreaterThan": "u"}, False),
    ({"Variable": "$.s", "StringLessThanEquals": "transfer-42.tar"}, True),
    ({"Variable": "$.s", "StringGreaterThanEquals": "transfer-42.tas"}, False),
    ({"Variable": "$.s", "StringEqualsPath": "$.other.s"}, True),
    ({"Variable": "$.s", "StringLessThanPath": "$.status"}, False),
    ({"Variable": "$.s", "StringGreaterThanPath": "$.status"}, True),
    ({"Variable": "$.s", "StringLessThanEqualsPath": "$.other.s"}, True),
    ({"Variable": "$.s", "StringGreaterThanEqualsPath": "$.n"}, False),
    ({"Variable": "$.s", "StringMatches": "transfer-*.tar"}, True),
    ({"Variable": "$.s", "StringMatches": "*.zip"}, False),
    ({"Variable": "$.s", "StringMatches": "*"}, True),
    ({"Variable": "$.s", "StringMatches": "transfer-42.tar*"}, True),
    ({"Variable": "$.s", "StringMatches": "transfer\\*"}, False),
    ({"Variable": "$.n", "StringMatches": "*"}, False),
    ({"Variable": "$.n", "NumericEquals": 5}, True),
    ({"Variable": "$.n", "NumericEquals": 5.0}, True),
    ({"Variable": "$.s", "NumericEquals": 5}, False),
    ({"Variable": "$.t", "NumericEquals": 1}, False),
    ({"Variable": "$.f", "NumericLessThan": 3}, True),
    ({"Variable": "$.f", "NumericGreaterThan": 3}, False),
    ({"Variable": "$.n", "NumericLessThanEquals": 5}, True),
    ({"Variable": "$.n", "NumericGreaterThanEquals": 6}, False),
    ({"Variable": "$.n", "NumericEqualsPath": "$.other.n"}, False),
    ({"Variable": "$.n", "NumericLessThanPath": "$.other.n"}, True),
    ({"Variable": "$.n", "NumericGreaterThanPath": "$.f"}, True),
    ({"Variable": "$.n", "NumericLessThanEqualsPath": "$.n"}, True),
    ({"Variable": "$.n", "NumericGreaterThanEqualsPath": "$.s"}, False),
    ({"Variable": "$.t", "BooleanEquals": True}, True),
    ({"Variable": "$.t", "BooleanEquals": False}, False),
    ({"Variable": "$.n", "BooleanEquals": True}, False),
    ({"Variable": "$.t", "BooleanEqualsPath": "$.other.t"}, True),
    ({"Variable": "$.ts", "TimestampEquals": "2026-03-01T13:00:00+01:00"}, True),
    ({"Variable": "$.ts", "TimestampLessThan": "2026-03-01T12:00:00.001Z"}, True),
    ({"Variable": "$.ts", "TimestampGreaterThan": "2026-03-01T12:00:00Z"}, False),
    ({"Variable": "$.ts", "TimestampLessThanEquals": "2026-03-01T12:00:00Z"}, True),
    ({"Variable": "$.ts", "TimestampGreaterThanEquals": "2026-03-01T11:59:59Z"}, True),
    ({"Variable": "$.ts_bad", "TimestampGreaterThanEquals": "2000-01-01T00:00:00Z"}, False),
    ({"Variable": "$.ts", "TimestampEqualsPath": "$.ts_later"}, True),
    ({"Variable": "$.ts", "TimestampLessThanPath": "$.other.ts"}, True),
    ({"Variable": "$.ts", "TimestampGreaterThanPath": "$.other.ts"}, False),
    ({"Variable": "$.ts", "TimestampLessThanEqualsPath": "$.ts_later"}, True),
    ({"Variable": "$.ts", "TimestampGreaterThanEqualsPath": "$.ts_bad"}, False),
    ({"Variable": "$.z", "IsNull": True}, True),
    ({"Variable": "$.n", "IsNull": True}, False),
    ({"Variable": "$.n", "IsNull": False}, True),
    ({"Variable": "$.n", "IsPresent": True}, True),
    ({"Variable": "$.missing", "IsPresent": True}, False),
    ({"Variable": "$.missing", "IsPresent": False}, True),
    ({"Variable": "$.z", "IsPresent": True}, True),
    ({"Variable": "$.f", "IsNumeric": True}, True),
    ({"Variable": "$.t", "IsNumeric": True}, False),
    ({"Variable": "$.s", "IsString": True}, True),
    ({"Variable": "$.list", "IsString": False}, True),
    ({"Variable": "$.t", "IsBoolean": True}, True),
    ({"Variable": "$.z", "IsBoolean": True}, False),
    ({"Variable": "$.ts", "IsTimestamp": True}, True),
    ({"Variable": "$.ts_bad", "IsTimestamp": True}, False),
    ({"Variable": "$.s", "IsTimestamp": False}, True),
    ({"And": [{"Variable": "$.n", "NumericGreaterThan": 1}, {"Variable": "$.t", "BooleanEquals": True}]}, True),
    ({"And": [{"Variable": "$.n", "NumericGreaterThan": 1}, {"Variable": "$.t", "BooleanEquals": False}]}, False),
    ({"Or": [{"Variable": "$.n", "NumericGreaterThan": 9}, {"Variable": "$.s", "StringMatches": "*.tar"}]}, True),
    ({"Or": [{"Variable": "$.n", "NumericGreaterThan": 9}, {"Variable": "$.z", "IsNull": False}]}, False),
    ({"Not": {"Variable": "$.status", "StringEquals": "FAILED"}}, True),
    ({"Not": {"Not": {"Variable": "$.status", "StringEquals": "FAILED"}}}, False),
    ({"And": [{"Variable": "$.missing", "IsPresent": False},
              {"Or": [{"Not": {"Variable": "$.n", "NumericEquals": 5}}, {"Variable": "$.f", "NumericEquals": 2.5}]}]}, True),
]


@pytest.mark.parametrize(("rule", "expected"), COMPARISONS, ids=[str(rule) for rule, _ in COMPARISONS])
def test_choice_rules_compare_like_the_states_language(rule: dict[str, Any], expected: bool) -> None:
    assert holds(rule) is expected


def test_every_comparison_operator_is_covered() -> None:
    from providers.flows.language.choice import BOOLEAN_OPERATORS, COMPARISONS as OPERATORS

    def operators(rule: dict[str, Any]) -> set[str]:
        found = {key for key in rule if key in OPERATORS or key in BOOLEAN_OPERATORS}
        for key in ("And", "Or"):
            for sub in rule.get(key, []):
                found |= operators(sub)
        if "Not" in rule:
            found |= operators(rule["Not"])
        return found

    covered = set().union(*(operators(rule) for rule, _ in COMPARISONS))
    assert covered == set(OPERATORS) | set(BOOLEAN_OPERATORS)
    assert len(OPERATORS) == 3 * 5 * 2 + 2 + 1 + 6  # String/Numeric/Timestamp x 5 x (value, Path), Boolean(Path), Matches, Is*


def test_the_first_matching_rule_wins_and_default_catches_the_rest() -> None:
    state = validate({"StartAt": "C", "States": {
        "C": {"Type": "Choice", "Default": "Other", "Choices": [
            {"Variable": "$.status", "StringEquals": "FAILED", "Next": "Failed"},
            {"Variable": "$.status", "StringEquals": "SUCCEEDED", "Next": "Share"},
            {"Variable": "$.status", "IsString": True, "Next": "Failed"},
        ]},
        "Failed": {"Type": "Fail"}, "Share": {"Type": "Succeed"}, "Other": {"Type": "Succeed"},
    }}).states["C"]
    assert isinstance(state, ChoiceState)
    assert choose(state, {"status": "SUCCEEDED"}) == "Share"
    assert choose(state, {"status": "FAILED"}) == "Failed"
    assert choose(state, {"status": "ACTIVE"}) == "Failed"
    assert choose(state, {"status": 3}) == "Other"


def test_no_match_without_default_is_no_choice_matched() -> None:
    state = choice_state({"Variable": "$.n", "NumericEquals": 0}, default=None)
    with pytest.raises(NoChoiceMatched) as caught:
        choose(state, DOC)
    assert caught.value.error == NO_CHOICE_MATCHED
    assert caught.value.cause == "States.C: no choice rule matched and there is no Default"


@pytest.mark.parametrize(
    ("rule", "cause"),
    [
        ({"Variable": "$.missing", "StringEquals": "x"}, 'Variable $.missing: "$.missing" selects nothing in the state document'),
        ({"Variable": "$.n", "NumericEqualsPath": "$.gone"},
         'NumericEqualsPath $.gone: "$.gone" selects nothing in the state document'),
        ({"Not": {"Variable": "$.a.b", "IsNull": True}}, 'Variable $.a.b: "$.a.b" selects nothing in the state document'),
    ],
)
def test_a_rule_whose_path_selects_nothing_is_a_runtime_error(rule: dict[str, Any], cause: str) -> None:
    with pytest.raises(FlowError) as caught:
        holds(rule)
    assert (caught.value.error, caught.value.cause) == (RUNTIME, cause)


def test_choice_rules_read_the_run_context() -> None:
    state = choice_state({"Variable": "$._context.user_id", "StringMatches": "urn:globus:auth:identity:*"})
    assert choose(state, {}, context={"user_id": "urn:globus:auth:identity:abc"}) == "Yes"
    assert choose(state, {"_context": {"user_id": "x"}}, context={"user_id": "nobody"}) == "Default"


@settings(deadline=None)
@given(text=st.text(alphabet="ab*\\.", max_size=8), pattern=st.text(alphabet="ab*.", max_size=6))
def test_string_matches_treats_star_as_any_run_of_characters(text: str, pattern: str) -> None:
    import fnmatch

    expected = fnmatch.fnmatchcase(text, pattern)  # pattern has no ?, [ or backslash: the same language
    assert holds({"Variable": "$.v", "StringMatches": pattern}, {"v": text}) is expected


def test_string_matches_escapes_star_and_backslash() -> None:
    assert holds({"Variable": "$.v", "StringMatches": "a\\*b"}, {"v": "a*b"})
    assert not holds({"Variable": "$.v", "StringMatches": "a\\*b"}, {"v": "axb"})
    assert holds({"Variable": "$.v", "StringMatches": "c:\\\\*"}, {"v": "c:\\dir"})


def wait_state(**fields: Any) -> WaitState:
    state = validate({"StartAt": "W", "States": {"W": {"Type": "Wait", "End": True, **fields}}}).states["W"]
    assert isinstance(state, WaitState)
    return state


NOW = 1_000_000.0
NOON = datetime(2026, 3, 1, 12, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize(
    ("fields", "document", "expected"),
    [
        ({"Seconds": 30}, {}, NOW + 30),
        ({"Seconds": 0}, {}, NOW),
        ({"Seconds": 1.5}, {}, NOW + 1.5),
        ({"SecondsPath": "$.wait.s"}, {"wait": {"s": 12}}, NOW + 12),
        ({"Timestamp": "2026-03-01T12:00:00Z"}, {}, NOON),
        ({"Timestamp": "2026-03-01T14:00:00.250+02:00"}, {}, NOON + 0.25),
        ({"TimestampPath": "$.at"}, {"at": "2026-03-01T12:00:00Z"}, NOON),
    ],
)
def test_wait_until_gives_the_time_the_run_continues(fields: dict[str, Any], document: dict[str, Any], expected: float) -> None:
    assert wait_until(wait_state(**fields), document, NOW) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("fields", "document", "cause"),
    [
        ({"SecondsPath": "$.s"}, {}, 'States.W.SecondsPath: "$.s" selects nothing in the state document'),
        ({"SecondsPath": "$.s"}, {"s": "10"}, 'States.W.SecondsPath: "$.s" holds a string, not a number of seconds >= 0'),
        ({"SecondsPath": "$.s"}, {"s": -1}, 'States.W.SecondsPath: "$.s" holds a number, not a number of seconds >= 0'),
        ({"SecondsPath": "$.s"}, {"s": True}, 'States.W.SecondsPath: "$.s" holds a boolean, not a number of seconds >= 0'),
        ({"TimestampPath": "$.t"}, {}, 'States.W.TimestampPath: "$.t" selects nothing in the state document'),
        ({"TimestampPath": "$.t"}, {"t": "noon"}, 'States.W.TimestampPath: "$.t" holds a string, not an RFC 3339 timestamp'),
        ({"TimestampPath": "$.t"}, {"t": 5}, 'States.W.TimestampPath: "$.t" holds a number, not an RFC 3339 timestamp'),
    ],
)
def test_a_wait_path_with_no_usable_value_is_a_runtime_error(
    fields: dict[str, Any], document: dict[str, Any], cause: str
) -> None:
    with pytest.raises(FlowError) as caught:
        wait_until(wait_state(**fields), document, NOW)
    assert (caught.value.error, caught.value.cause) == (RUNTIME, cause)


def test_catchers_match_by_error_name_in_order() -> None:
    definition = {"StartAt": "A", "States": {
        "A": {"Type": "Action", "ActionUrl": "https://h/a", "Parameters": {}, "Next": "Done", "Catch": [
            {"ErrorEquals": [ACTION_UNABLE_TO_RUN], "Next": "Refused"},
            {"ErrorEquals": [ACTION_FAILED, ACTION_TIMEOUT], "Next": "Failed", "ResultPath": "$.error"},
            {"ErrorEquals": [STATES_ALL], "Next": "Other", "ResultPath": None},
        ]},
        "Refused": {"Type": "Fail"}, "Failed": {"Type": "Fail"}, "Other": {"Type": "Fail"}, "Done": {"Type": "Succeed"},
    }}
    parsed = validate(definition)
    state = parsed.states["A"]
    assert catcher_for(state, "ActionUnableToRun") == Catcher(
        error_equals=("ActionUnableToRun",), next="Refused", result_path="$")
    assert catcher_for(state, "ActionTimeout") == Catcher(
        error_equals=("ActionFailedException", "ActionTimeout"), next="Failed", result_path="$.error")
    assert catcher_for(state, PARAMETER_PATH_FAILURE) == Catcher(error_equals=("States.ALL",), next="Other", result_path=None)
    assert catcher_for(state, "SomethingElse") is not None
    assert catcher_for(state, RUNTIME) is None  # as in the States Language, States.ALL does not catch States.Runtime
    assert catcher_for(parsed.states["Done"], ACTION_FAILED) is None


def test_a_state_without_catchers_catches_nothing() -> None:
    state = validate({"StartAt": "A", "States": {"A": {"Type": "Action", "ActionUrl": "https://h/", "Parameters": {},
                                                       "End": True}}}).states["A"]
    assert catcher_for(state, ACTION_FAILED) is None


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, {}),
        ({"Error": "TransferFailed", "Cause": "checksum mismatch"}, {"Error": "TransferFailed", "Cause": "checksum mismatch"}),
        ({"ErrorPath": "$.err.code", "CausePath": "$.err.text"}, {"Error": "E42", "Cause": "disk full"}),
        ({"ErrorPath": "$.nothing", "CausePath": "$.err.n"}, {}),
    ],
)
def test_a_fail_state_reports_its_error_and_cause(fields: dict[str, Any], expected: dict[str, str]) -> None:
    state = validate({"StartAt": "F", "States": {"F": {"Type": "Fail", **fields}}}).states["F"]
    assert isinstance(state, FailState)
    assert fail_output(state, {"err": {"code": "E42", "text": "disk full", "n": 3}}) == expected
