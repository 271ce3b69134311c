"""``"key.="`` expressions: the Globus functions, Python-like operators, and nothing unsafe."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from providers.flows.language import EXPRESSION_FUNCTIONS, RUNTIME, FlowError, evaluate
from providers.flows.language.expressions import check, pathsplit

FUNCTIONS = "(abs, all, any, bool, float, getattr, int, is_present, len, max, min, pathsplit, round, sorted, str, sum)"
DOC = {
    "foo": "bar",
    "list_val": [1, 2, 3],
    "object_val": {"sub_val1": "embedded", "sub_val2": "also_embedded"},
    "source": {"path": "/data/in/"},
    "ls": {"DATA": [{"name": "f1"}, {"name": "f2"}, {"name": "f3"}]},
    "state": {"i": 1, "batches": []},
    "step": 2,
    "n": None,
}


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("foo + ' ' + object_val.sub_val1", "bar embedded"),
        ("object_val['sub_val2']", "also_embedded"),
        ("list_val + [4]", [1, 2, 3, 4]),
        ("list_val[0] * 10 - 1", 9),
        ("list_val[-1]", 3),
        ("len(list_val) // 2", 1),
        ("step ** 3 % 5", 3),
        ("7 / 2", 3.5),
        ("'x' if step > 1 else 'y'", "x"),
        ("n is None and not foo == 'baz'", True),
        ("'ar' in foo", True),
        ("f'{foo}-{step}'", "bar-2"),
        ("'%s/%d' % (foo, step)", "bar/2"),
        ("'/'.join(['a', 'b'])", "a/b"),
        ("source.path.rstrip('/') + '/' + ls.DATA[0].name", "/data/in/f1"),
        ("[{'path': source.path + item.name} for item in ls.DATA if item.name != 'f2']",
         [{"path": "/data/in/f1"}, {"path": "/data/in/f3"}]),
        ("state.batches + [[f.name for f in ls.DATA[state.i:state.i+step]]]", [["f2", "f3"]]),
        ("{k: len(v) for k, v in object_val.items()}", {"sub_val1": 8, "sub_val2": 13}),
        ("[`$.source.path`]", ["/data/in/"]),
        ("`$.ls.DATA[*].name`", ["f1", "f2", "f3"]),
        ("pathsplit('/foo/bar/blech')", ["/foo/bar", "blech"]),
        ("pathsplit(source.path)", ["/data", "in"]),
        ("is_present('foo')", True),
        ("is_present('object_val.sub_val1')", True),
        ("is_present('x')", False),
        ("is_present('list_val.1')", True),
        ("x if is_present('x') else 10", 10),
        ("getattr('x', 10)", 10),
        ("getattr('missing_property')", None),
        ("getattr('object_val.sub_val2')", "also_embedded"),
        ("str(step) + str(int('3')) + str(float(1))", "231.0"),
        ("max(list_val) + min(list_val) + sum(list_val) + abs(-1)", 11),
        ("sorted([3, 1, 2]) == [1, 2, 3] and any([0, 1]) and all([1]) and bool(1)", True),
        ("round(2.567, 1)", 2.6),
    ],
)
def test_expressions_compute_values_from_the_state_document(expression: str, expected: Any) -> None:
    assert check(expression) is None
    assert evaluate(expression, DOC) == expected


def test_the_run_context_is_a_name_in_expressions() -> None:
    assert evaluate("_context.run_id + ':' + foo", DOC, context={"run_id": "r1"}) == "r1:bar"
    assert evaluate("getattr('_context.run_id')", DOC, context={"run_id": "r1"}) == "r1"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/foo/bar/blech", ["/foo/bar", "blech"]),
        ("/foo/bar/", ["/foo", "bar"]),
        ("/foo", ["/", "foo"]),
        ("foo", ["", "foo"]),
        ("/~/path", ["/~/", "path"]),
        ("/~/a/b", ["/~/a", "b"]),
        ("/~/", ["/~/", ""]),
    ],
)
def test_pathsplit_splits_the_last_element_off_and_keeps_the_transfer_root(path: str, expected: list[str]) -> None:
    assert pathsplit(path) == expected


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("foo +", '"foo +" is not a valid expression: invalid syntax'),
        ("__import__('os')", f"calls __import__(), which is not a function expressions have {FUNCTIONS}"),
        ("eval('1')", f"calls eval(), which is not a function expressions have {FUNCTIONS}"),
        ("getattr(foo, '__class__')", None),  # Globus's getattr reads the document by dotted name, not attributes
        ("foo.__class__", 'reads ".__class__": names starting with "_" are not allowed after a dot'),
        ("list_val.__len__()", 'reads ".__len__": names starting with "_" are not allowed after a dot'),
        ("'{}'.format(foo)", "calls .format(), which expressions do not allow"),
        ("'{x}'.format_map({})", "calls .format_map(), which expressions do not allow"),
        ("(lambda: 1)()", "uses Lambda, which expressions do not allow"),
        ("(x := 1)", "uses NamedExpr, which expressions do not allow"),
        ("a @ b", "uses the operator MatMult, which expressions do not allow"),
        ("[`$$.x`]", '"[`$$.x`]": "$$.x" is not a valid JSONPath: the run context is at $._context'),
        ("", "is an empty expression"),
        (5, "must be an expression string"),
    ],
)
def test_unsafe_or_malformed_expressions_are_refused_before_they_run(expression: Any, problem: str | None) -> None:
    found = check(expression)
    if problem is None:
        assert found is None
        assert evaluate(expression, DOC) == "__class__"  # the default: the document has no value named "bar"
        return
    assert found is not None and found.endswith(problem)
    with pytest.raises(FlowError) as caught:
        evaluate(expression, DOC)
    assert caught.value.error == RUNTIME
    assert caught.value.cause == found


@pytest.mark.parametrize(
    ("expression", "cause"),
    [
        ("nope", '"nope": nope is not in the state document'),
        ("foo + 1", '"foo + 1" failed: TypeError: can only concatenate str (not "int") to str'),
        ("list_val[10]", '"list_val[10]" failed: IndexError: list index out of range'),
        ("object_val.nope", '"object_val.nope": there is no "nope" in the value it is read from'),
        ("foo.nope", '"foo.nope": there is no "nope" in the value it is read from'),
        ("pathsplit(1)", '"pathsplit(1)" failed: TypeError: pathsplit() takes a string'),
        ("is_present(1)", '"is_present(1)" failed: TypeError: takes the name of a value of the state document, as a string'),
        ("'x' * 10**9", '"\'x\' * 10**9": Sorry, I will not evaluate something that long.'),
    ],
)
def test_a_failing_expression_is_a_runtime_error_that_says_why(expression: str, cause: str) -> None:
    with pytest.raises(FlowError) as caught:
        evaluate(expression, DOC)
    assert caught.value.error == RUNTIME
    assert caught.value.cause == cause


def test_expressions_have_no_random_functions() -> None:
    # A run replayed after a crash must compute the same values.
    assert not {"rand", "randint"} & set(EXPRESSION_FUNCTIONS)
    assert check("rand()") is not None


@settings(deadline=None)
@given(a=st.integers(-10**6, 10**6), b=st.integers(-10**6, 10**6))
def test_arithmetic_matches_python(a: int, b: int) -> None:
    document = {"a": a, "b": b}
    assert evaluate("a + b * 2 - (a - b)", document) == a + b * 2 - (a - b)
    assert evaluate("[a, b][a > b]", document) == [a, b][a > b]


@settings(deadline=None)
@given(text=st.text(max_size=20))
def test_string_values_come_through_unchanged(text: str) -> None:
    assert evaluate("s + ''", {"s": text}) == text
    assert evaluate("`$.s`", {"s": text}) == text


@pytest.mark.parametrize(
    ("expression", "cause"),
    [
        ("[1] * 10**9", '"[1] * 10**9": Sorry, I will not evaluate something that long.'),
        ("2 ** 10 ** 10", '"2 ** 10 ** 10": Sorry! I don\'t want to evaluate 2 ** 10000000000'),
        ("[i for i in list_val * 30 for j in list_val * 30 for k in list_val * 30]",
         '"[i for i in list_val * 30 for j in list_val * 30 for k in list_val * 30]": Comprehension generates too many elements'),
        ("'a' * 99999 + 'a' * 99999",
         '"\'a\' * 99999 + \'a\' * 99999": Sorry, adding those two together would make something too long.'),
    ],
)
def test_an_expression_cannot_exhaust_memory_or_time(expression: str, cause: str) -> None:
    with pytest.raises(FlowError) as caught:
        evaluate(expression, DOC)
    assert (caught.value.error, caught.value.cause) == (RUNTIME, cause)
