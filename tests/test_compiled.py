"""Compiled JMESPath against the jmespath library: the same result, or the same error, on
generated expressions and documents, on the example rules' conditions and the sample events."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import jmespath
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.conditions import compile_condition, truthy
from router.events import normalise, parse_body
from router.jmespath_compiled import compile_tree

REPO = Path(__file__).resolve().parents[1]
KEYS = ("a", "b", "c", "data", "x")
FUNCTIONS_1 = (
    "length", "abs", "to_string", "to_number", "type", "keys", "values", "not_null", "max",
    "min", "sort", "reverse", "sum", "avg", "floor", "ceil", "to_array",
)  # fmt: skip
FUNCTIONS_2 = ("contains", "starts_with", "ends_with", "join", "merge", "not_null")

# JSON documents over a few keys, so that expressions find what they ask for.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(-3, 3, allow_nan=False).map(lambda f: round(f, 1)),
    st.sampled_from(["", "a", "b", "ab", "FR", "0", "1", "true"]),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(KEYS), children, max_size=4),
    ),
    max_leaves=12,
)

literals = st.sampled_from(
    [
        "`null`", "`true`", "`false`", "`0`", "`1`", "`-1`", "`2.5`", '`"a"`', "'a'", "'FR'",
        "''", "`[]`", "`{}`", "`[1, 2]`", '`{"a": 1}`', "`\"1\"`",
    ]
)  # fmt: skip
names = st.sampled_from([*KEYS, '"a"', '"x y"'])


def _extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    pair = st.tuples(inner, inner)
    return st.one_of(
        st.tuples(inner, names).map(lambda t: f"{t[0]}.{t[1]}"),
        st.tuples(inner, st.sampled_from(["[0]", "[-1]", "[1]", "[1:3]", "[::-1]", "[:1]"])).map(
            "".join
        ),
        inner.map(lambda e: f"{e}[]"),
        inner.map(lambda e: f"{e}[*]"),
        inner.map(lambda e: f"{e}.*"),
        st.tuples(inner, inner).map(lambda t: f"{t[0]}[?{t[1]}]"),
        st.tuples(inner, names, inner).map(lambda t: f"{t[0]}[?{t[2]}].{t[1]}"),
        st.tuples(inner, names).map(lambda t: f"{t[0]}[*].{t[1]}"),
        pair.map(lambda t: f"{t[0]} | {t[1]}"),
        pair.map(lambda t: f"{t[0]} || {t[1]}"),
        pair.map(lambda t: f"{t[0]} && {t[1]}"),
        inner.map(lambda e: f"!{e}"),
        inner.map(lambda e: f"({e})"),
        st.tuples(inner, st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), inner).map(" ".join),
        st.tuples(st.sampled_from(FUNCTIONS_1), inner).map(lambda t: f"{t[0]}({t[1]})"),
        st.tuples(st.sampled_from(FUNCTIONS_2), pair).map(
            lambda t: f"{t[0]}({t[1][0]}, {t[1][1]})"
        ),
        st.tuples(st.sampled_from(["sort_by", "max_by", "min_by"]), inner, names).map(
            lambda t: f"{t[0]}({t[1]}, &{t[2]})"
        ),
        pair.map(lambda t: f"map(&{t[0]}, {t[1]})"),
        pair.map(lambda t: f"[{t[0]}, {t[1]}]"),
        pair.map(lambda t: f"{{a: {t[0]}, b: {t[1]}}}"),
    )


expressions = st.recursive(
    st.one_of(names, literals, st.just("@"), st.just("*"), st.just("[*]")),
    _extend,
    max_leaves=8,
)


def outcome(function: Any, *args: Any) -> tuple[str, str]:
    """What a call gave: its result (with types, so 1 and true differ) or its error."""
    try:
        return "value", repr(function(*args))
    except Exception as exc:
        return type(exc).__name__, str(exc)


@settings(
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(expression=expressions, document=documents)
def test_compiled_equals_the_library(expression: str, document: Any) -> None:
    try:
        parsed = jmespath.compile(expression)
    except jmespath.exceptions.JMESPathError:
        return  # not an expression: nothing to compare
    compiled = compile_tree(parsed.parsed)
    assert outcome(compiled, document) == outcome(jmespath.search, expression, document), expression


# Each shape the compiler treats on its own, and the corners of the library's rules.
CORNERS = [
    ("a == `1`", {"a": True}),
    ("a == `0`", {"a": False}),
    ("a != `1`", {"a": True}),
    ("`true` == a", {"a": 1}),
    ("a == b", {"a": 1, "b": 1.0}),
    ("a < b", {"a": "a", "b": "b"}),
    ("a < b", {"a": 1, "b": "b"}),  # a TypeError in the library too
    ("a < b", {"a": True, "b": 2}),
    ("!a", {"a": 0}),
    ("!a", {"a": []}),
    ("a || b", {"a": {}, "b": 0}),
    ("a && b", {"a": "", "b": 1}),
    ("a.b.c", {"a": {"b": "text"}}),
    ("a.b.c", {"a": [{"b": 1}]}),
    ("a[0]", {"a": "text"}),
    ("a[5]", {"a": [1]}),
    ("a[::-2]", {"a": [1, 2, 3, 4]}),
    ("a.*", {"a": [1, 2]}),
    ("a.*.b", {"a": {"x": {"b": 1}, "y": {"c": 2}}}),
    ("a[].b", {"a": [[{"b": 1}], {"b": 2}, 3]}),
    ("a[?b == `1`].c", {"a": [{"b": 1, "c": None}, {"b": 1, "c": 2}, "x"]}),
    ("ends_with(a, 'x')", {"a": None}),
    ("length(a)", {"a": 5}),
    ("sort_by(a, &b)", {"a": [{"b": 2}, {"b": 1}]}),
    ("sort_by(a, &b)", {"a": [{"b": 2}, {"b": "x"}]}),
    ("{x: a, y: b}", None),
    ("[a, b]", None),
    ("[a, b]", {"a": 1}),
    ("`[1, 2]`[0]", None),
    ("a | [0]", {"a": [7]}),
    ("data.\"etl.executionStatus\" == 'WITH_ERROR'", {"data": {"etl.executionStatus": 1}}),
]


@pytest.mark.parametrize(("expression", "document"), CORNERS)
def test_corners(expression: str, document: Any) -> None:
    compiled = compile_tree(jmespath.compile(expression).parsed)
    assert outcome(compiled, document) == outcome(jmespath.search, expression, document)


def test_unknown_node_types_are_interpreted() -> None:
    # A node type the compiler does not know (a later jmespath's) goes to the interpreter,
    # which names it as its own.
    compiled = compile_tree({"type": "newer_node", "children": []})
    with pytest.raises(NotImplementedError, match="newer_node"):
        compiled({})


def _example_conditions() -> list[str]:
    found = []
    for path in sorted((REPO / "rules").glob("*.toml")):
        for rule in tomllib.loads(path.read_text())["rule"]:
            if "condition" in rule.get("match", {}):
                found.append(rule["match"]["condition"])
    return found


def _sample_records() -> list[Any]:
    records: list[Any] = []
    for folder in (REPO / "rules" / "events", REPO / "tests" / "samples"):
        for path in sorted(folder.glob("*.json")):
            try:
                records.extend(normalise(parse_body(path.read_bytes())))
            except Exception:
                continue  # a sample of a push the router refuses
    return records


def test_example_conditions_on_the_samples() -> None:
    conditions = _example_conditions()
    records = _sample_records()
    assert conditions and len(records) > 20
    for source in conditions:
        condition = compile_condition(source)
        for record in records:
            expected = outcome(jmespath.search, source, record)
            assert outcome(condition.value, record) == expected, (source, record.get("id"))
            holds = expected[0] == "value" and truthy(jmespath.search(source, record))
            assert condition.holds(record) == holds, (source, record.get("id"))


def test_documents_are_json() -> None:
    # The generated documents are what a push can carry.
    @given(documents)
    @settings(max_examples=50)
    def check(document: Any) -> None:
        assert json.loads(json.dumps(document)) == document

    check()
