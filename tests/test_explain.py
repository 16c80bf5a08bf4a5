"""router.explain: why a condition did not match, the failing part and the values it saw."""

from __future__ import annotations

from typing import Any

import jmespath
import pytest

from router.conditions import compile_condition
from router.explain import explain_condition, unparse, why_not
from router.rules import Location, Match, Rule

RECORD: dict[str, Any] = {
    "id": "e-1",
    "tableType": "PROFILE_TABLE",
    "operation": "UPDATE",
    "data": {"country": "FR", "Newsletter": False, "email": "a@test.example.com", "n": None},
}


def rule(condition: str) -> Rule:
    match = Match(condition=compile_condition(condition))
    return Rule("r", "", True, match, (), Location("r.toml", 1))


@pytest.mark.parametrize(
    ("condition", "reason", "lines"),
    [
        # A comparison: both operands' values (a literal is in the text already).
        (
            "data.country == 'BE'",
            "condition: data.country == 'BE' gave false",
            ['data.country is "FR"'],
        ),
        # A missing key says so; a key holding null is not missing.
        (
            "data.Newsletter == `false` && data.country == 'BE'",
            "condition: data.Newsletter == `false` && data.country == 'BE' gave false",
            ["data.country == 'BE' gave false: data.country is \"FR\""],
        ),
        (
            "data.city == 'Liège'",
            "condition: data.city == 'Liège' gave false",
            ["data.city is missing"],
        ),
        ("data.n", "condition: data.n gave null", ["data.n is null"]),
        # `a || b`: each side.
        (
            "data.Newsletter == `true` || data.Newsletter == 'true'",
            "condition: data.Newsletter == `true` || data.Newsletter == 'true' gave false",
            [
                "data.Newsletter == `true` gave false: data.Newsletter is false",
                "data.Newsletter == 'true' gave false: data.Newsletter is false",
            ],
        ),
        # `a && b`: the first side that is false, taken apart further when it is an `||`.
        (
            "data.country == 'FR' && (data.Newsletter == `true` || data.x == `1`)",
            "condition: data.country == 'FR' && (data.Newsletter == `true` || data.x == `1`) "
            "gave false",
            [
                "data.Newsletter == `true` || data.x == `1` gave false",
                "  data.Newsletter == `true` gave false: data.Newsletter is false",
                "  data.x == `1` gave false: data.x is missing",
            ],
        ),
        # A function: its arguments; under `!`, the arguments of what was true.
        (
            "!ends_with(data.email, '@test.example.com')",
            "condition: !ends_with(data.email, '@test.example.com') gave false",
            ['data.email is "a@test.example.com"'],
        ),
        (
            "contains(keys(data), 'etl.id')",
            "condition: contains(keys(data), 'etl.id') gave false",
            ['keys(data) is ["country", "Newsletter", "email", "n"]'],
        ),
        # An evaluation error: which function, and what it was given.
        (
            "ends_with(data.missing, 'x')",
            "condition: ends_with(data.missing, 'x') failed: ends_with() was given null where "
            "it needs string",
            ["data.missing is missing"],
        ),
        # A key with dots (trigger events) is quoted back as it must be written.
        (
            'data."etl.executionStatus" != `null`',
            'condition: data."etl.executionStatus" != `null` gave false',
            ['data."etl.executionStatus" is missing'],
        ),
        (
            "to_number(data.country) > `5`",
            "condition: to_number(data.country) > `5` gave null",
            ["to_number(data.country) is null"],
        ),
    ],
)
def test_a_condition_is_explained_down_to_the_values(
    condition: str, reason: str, lines: list[str]
) -> None:
    miss = why_not(rule(condition), RECORD)
    assert miss is not None
    assert (miss.key, miss.reason, list(miss.lines)) == ("condition", reason, lines)


def test_the_structured_explanation() -> None:
    miss = why_not(rule("data.country == 'BE' || data.city == 'X'"), RECORD)
    assert miss is not None
    assert miss.detail == {
        "key": "condition",
        "expression": "data.country == 'BE' || data.city == 'X'",
        "gave": False,
        "parts": [
            {
                "expression": "data.country == 'BE'",
                "gave": False,
                "values": [{"expression": "data.country", "value": "FR"}],
            },
            {
                "expression": "data.city == 'X'",
                "gave": False,
                "values": [{"expression": "data.city", "missing": True}],
            },
        ],
    }
    failed = why_not(rule("ends_with(data.n, 'x')"), RECORD)
    assert failed is not None
    assert failed.detail["error"] == "ends_with() was given null where it needs string"
    assert failed.detail["values"] == [{"expression": "data.n", "value": None}]


def test_match_keys_are_explained_as_data_too() -> None:
    off = Rule("r", "", True, Match(operation=frozenset({"CREATE"})), (), Location("r", 1))
    miss = why_not(off, RECORD)
    assert miss is not None
    assert miss.detail == {"key": "operation", "wanted": ["CREATE"], "saw": "UPDATE"}
    assert miss.lines == ()
    assert why_not(rule("data.country == 'FR'"), RECORD) is None


def test_hostile_values_are_shortened_in_the_reason_but_whole_in_the_detail() -> None:
    record = {**RECORD, "data": {"text": "x" * 500}}
    miss = why_not(rule("data.text == 'y'"), record)
    assert miss is not None
    (line,) = miss.lines
    assert len(line) < 100 and line.endswith("…")
    assert miss.detail["values"][0]["value"] == "x" * 500


@pytest.mark.parametrize(
    "expression",
    [
        "data.a == 'x' && data.b != `1` || !data.c",
        "(data.a || data.b) && data.c",
        "!(data.a == 'x')",
        "!(data.a)",
        "!data.a",
        "(a || b).c",
        "data.\"etl.id\" == 'it\\'s'",
        "a[0].b",
        "a[*].b",
        "a[?x == `1`].y",
        "a[] | [0]",
        "a[1:2]",
        "{x: a, y: b.c}",
        "[a, b]",
        "sort_by(a, &b)[-1]",
        "a.*.b",
        "length(@) >= `2`",
    ],
)
def test_unparse_reads_back_as_the_same_tree(expression: str) -> None:
    parsed = jmespath.compile(expression).parsed
    assert jmespath.compile(unparse(parsed)).parsed == parsed


def test_explain_never_changes_the_result_of_the_condition() -> None:
    for source in ("data.country == 'FR'", "data.x || data.country", "!data.Newsletter"):
        condition = compile_condition(source)
        part = explain_condition(condition, RECORD)
        assert part.gave == condition.value(RECORD)
