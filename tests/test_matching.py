"""Matching: every criterion, JMESPath conditions, explain, and the index against brute force."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import jmespath
import pytest

from router.conditions import Condition, ConditionProblem, compile_condition, condition_warnings
from router.events import normalise, parse_body
from router.matching import Matcher
from router.rules import Location, Match, Rule

SAMPLES = Path(__file__).parent / "samples"

PROFILE_CREATE: dict[str, Any] = {
    "id": "3f2b8c1e",
    "tableType": "PROFILE_TABLE",
    "tableId": "16",
    "fields": ["emailAddress", "firstName"],
    "eventType": "DATA",
    "triggerType": None,
    "operation": "CREATE",
    "data": {"profileId": 1204, "emailAddress": "marie@example.be", "optIn": "false"},
}
TRIGGER: dict[str, Any] = {
    "id": "b3d8f1a6",
    "tableType": None,
    "tableId": None,
    "fields": [],
    "eventType": None,
    "triggerType": None,
    "operation": None,
    "data": {"etl.id": "480213", "etl.executionStatus": "WITH_ERROR"},
    "_links": {"webhook": {"href": "/webhooks/v4/entity/MyEntity/webhookSubscription/58"}},
}


def make_rule(name: str = "r", *, enabled: bool = True, **criteria: Any) -> Rule:
    """A rule from SPEC-style criteria: strings or lists, `condition` as JMESPath source."""
    sets: dict[str, Any] = {}
    for key, value in criteria.items():
        if key == "condition":
            sets[key] = compile_condition(value)
        else:
            values = value if isinstance(value, list) else [value]
            sets[key] = frozenset(str(v) if key == "table_id" else v for v in values)
    return Rule(
        name=name,
        description="",
        enabled=enabled,
        match=Match(**sets),
        actions=(),
        location=Location("rules/test.toml", 1),
    )


def with_(record: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**record, **changes}


def records_of(sample: str) -> list[dict[str, Any]]:
    (path,) = SAMPLES.glob(f"{sample}-*.json")
    return normalise(parse_body(path.read_bytes()))


CASES: list[tuple[str, dict[str, Any], dict[str, Any], bool]] = [
    ("no criteria match everything", {}, PROFILE_CREATE, True),
    ("no criteria match triggers", {}, TRIGGER, True),
    ("tableType equal", {"table_type": "PROFILE_TABLE"}, PROFILE_CREATE, True),
    ("tableType differs", {"table_type": "CUSTOM_TABLE"}, PROFILE_CREATE, False),
    ("tableType is case-sensitive", {"table_type": "profile_table"}, PROFILE_CREATE, False),
    ("tableType list", {"table_type": ["CUSTOM_TABLE", "PROFILE_TABLE"]}, PROFILE_CREATE, True),
    ("tableType null never matches", {"table_type": "PROFILE_TABLE"}, TRIGGER, False),
    ("tableId text", {"table_id": "16"}, PROFILE_CREATE, True),
    ("tableId number in rule", {"table_id": 16}, PROFILE_CREATE, True),
    ("tableId number in record", {"table_id": "16"}, with_(PROFILE_CREATE, tableId=16), True),
    ("tableId differs", {"table_id": "17"}, PROFILE_CREATE, False),
    ("tableId no numeric coercion", {"table_id": "016"}, with_(PROFILE_CREATE, tableId=16), False),
    ("tableId list", {"table_id": [5, "16"]}, PROFILE_CREATE, True),
    ("tableId bool is no id", {"table_id": "True"}, with_(PROFILE_CREATE, tableId=True), False),
    ("tableId null", {"table_id": "16"}, TRIGGER, False),
    ("operation equal", {"operation": "CREATE"}, PROFILE_CREATE, True),
    ("operation list", {"operation": ["CREATE", "UPDATE"]}, PROFILE_CREATE, True),
    ("operation differs", {"operation": ["UPDATE", "DELETE"]}, PROFILE_CREATE, False),
    ("eventType equal", {"event_type": "DATA"}, PROFILE_CREATE, True),
    ("eventType differs", {"event_type": "TRIGGER"}, PROFILE_CREATE, False),
    ("fields overlap", {"fields": ["emailAddress"]}, PROFILE_CREATE, True),
    ("fields any of", {"fields": ["lastName", "firstName"]}, PROFILE_CREATE, True),
    ("fields disjoint", {"fields": ["lastName"]}, PROFILE_CREATE, False),
    ("fields empty record", {"fields": ["emailAddress"]}, TRIGGER, False),
    ("fields null record", {"fields": ["x"]}, with_(PROFILE_CREATE, fields=None), False),
    (
        "all criteria hold",
        {
            "table_type": "PROFILE_TABLE",
            "table_id": "16",
            "operation": ["CREATE", "UPDATE"],
            "event_type": "DATA",
            "fields": ["emailAddress"],
            "condition": "data.profileId > `1000`",
        },
        PROFILE_CREATE,
        True,
    ),
    (
        "one criterion fails",
        {"table_type": "PROFILE_TABLE", "table_id": "16", "operation": "DELETE"},
        PROFILE_CREATE,
        False,
    ),
    ("condition true", {"condition": "data.profileId == `1204`"}, PROFILE_CREATE, True),
    ("condition false", {"condition": "data.profileId == `1`"}, PROFILE_CREATE, False),
    ("condition no coercion", {"condition": "data.profileId == '1204'"}, PROFILE_CREATE, False),
    ("condition null is falsy", {"condition": "data.missing"}, PROFILE_CREATE, False),
    ("condition empty string falsy", {"condition": "''"}, PROFILE_CREATE, False),
    ("condition empty list falsy", {"condition": "`[]`"}, PROFILE_CREATE, False),
    ("condition empty object falsy", {"condition": "`{}`"}, PROFILE_CREATE, False),
    ("condition false literal", {"condition": "`false`"}, PROFILE_CREATE, False),
    # JMESPath truthiness, not Python's: 0 and the *string* "false" (ACTITO sends those) hold.
    ("condition zero is truthy", {"condition": "`0`"}, PROFILE_CREATE, True),
    ("condition string false truthy", {"condition": "data.optIn"}, PROFILE_CREATE, True),
    ("condition compare string", {"condition": "data.optIn == 'false'"}, PROFILE_CREATE, True),
    ("condition non-empty list", {"condition": "fields"}, PROFILE_CREATE, True),
    ("condition on envelope keys", {"condition": "_links.webhook.href"}, TRIGGER, True),
    (
        "condition dotted key",
        {"condition": "data.\"etl.executionStatus\" == 'WITH_ERROR'"},
        TRIGGER,
        True,
    ),
    (
        "condition dotted key differs",
        {"condition": "data.\"etl.executionStatus\" == 'SUCCESS'"},
        TRIGGER,
        False,
    ),
    (
        "condition from SPEC holds",
        {"condition": "data.emailAddress != `null` && !ends_with(data.emailAddress, '@x.com')"},
        PROFILE_CREATE,
        True,
    ),
    (
        "condition type error does not match",
        {"condition": "ends_with(data.missing, '@x.com')"},
        PROFILE_CREATE,
        False,
    ),
    ("disabled never matches", {"enabled": False}, PROFILE_CREATE, False),
]


@pytest.mark.parametrize(
    ("criteria", "record", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_criteria(criteria: dict[str, Any], record: dict[str, Any], expected: bool) -> None:
    rule = make_rule(**criteria)
    matcher = Matcher([rule])
    assert matcher.match(record) == ([rule] if expected else [])
    ((explained, reason),) = matcher.explain(record)
    assert explained is rule
    assert (reason is None) is expected


@pytest.mark.parametrize(
    ("criteria", "record", "reason"),
    [
        (
            {"operation": ["UPDATE", "CREATE"]},
            with_(PROFILE_CREATE, operation="DELETE"),
            'operation: wanted "CREATE" or "UPDATE", saw "DELETE"',
        ),
        ({"table_id": "16"}, with_(PROFILE_CREATE, tableId="17"), 'tableId: wanted "16", saw "17"'),
        ({"table_id": "16"}, with_(PROFILE_CREATE, tableId=17), 'tableId: wanted "16", saw 17'),
        ({"table_type": "PROFILE_TABLE"}, TRIGGER, 'tableType: wanted "PROFILE_TABLE", saw null'),
        ({"event_type": "TRIGGER"}, PROFILE_CREATE, 'eventType: wanted "TRIGGER", saw "DATA"'),
        ({"fields": ["emailAddress"]}, TRIGGER, 'fields: wanted any of ["emailAddress"], saw []'),
        (
            {"fields": ["b", "a"]},
            PROFILE_CREATE,
            'fields: wanted any of ["a", "b"], saw ["emailAddress", "firstName"]',
        ),
        (
            {"condition": "data.x == `1`"},
            PROFILE_CREATE,
            "condition: data.x == `1` gave false",
        ),
        ({"condition": "data.x"}, PROFILE_CREATE, "condition: data.x gave null"),
        (
            {"condition": "data.profileId ==\n  `1`"},
            PROFILE_CREATE,
            "condition: data.profileId == `1` gave false",
        ),
        (
            {"condition": "ends_with(data.x, 'a')"},
            PROFILE_CREATE,
            "condition: ends_with(data.x, 'a') failed: ends_with() was given null where it "
            "needs string",
        ),
        ({"enabled": False, "operation": "DELETE"}, PROFILE_CREATE, "rule is disabled"),
        # The first failed criterion in the order tableType, tableId, operation, eventType, ...
        (
            {"operation": "DELETE", "table_id": "9", "fields": ["x"]},
            PROFILE_CREATE,
            'tableId: wanted "9", saw "16"',
        ),
        (
            {"condition": "`false`", "fields": ["x"], "event_type": "DATA"},
            PROFILE_CREATE,
            'fields: wanted any of ["x"], saw ["emailAddress", "firstName"]',
        ),
    ],
)
def test_explain_reasons(criteria: dict[str, Any], record: dict[str, Any], reason: str) -> None:
    rule = make_rule(**criteria)
    assert Matcher([rule]).explain(record) == [(rule, reason)]


def test_explain_shortens_long_values() -> None:
    record = with_(PROFILE_CREATE, data={"text": "x" * 500})
    ((_, reason),) = Matcher([make_rule(condition="data.text == 'y'")]).explain(record)
    assert reason == "condition: data.text == 'y' gave false"
    ((_, reason),) = Matcher([make_rule(condition="data")]).explain(with_(record, data={}))
    assert reason == "condition: data gave {}"
    ((_, reason),) = Matcher([make_rule(operation="X")]).explain(with_(record, operation="Y" * 500))
    assert reason is not None and len(reason) < 140 and reason.endswith("…")


def test_results_and_explain_keep_rule_set_order() -> None:
    rules = [
        make_rule("a-wildcard"),
        make_rule("b-exact", table_type="PROFILE_TABLE", table_id="16", operation="CREATE"),
        make_rule("c-other", operation="DELETE"),
        make_rule("d-off", enabled=False),
        make_rule("e-fields", fields=["emailAddress"]),
        make_rule("f-table", table_id=16),
    ]
    matcher = Matcher(rules)
    assert [r.name for r in matcher.match(PROFILE_CREATE)] == [
        "a-wildcard",
        "b-exact",
        "e-fields",
        "f-table",
    ]
    assert [(r.name, why) for r, why in matcher.explain(PROFILE_CREATE)] == [
        ("a-wildcard", None),
        ("b-exact", None),
        ("c-other", 'operation: wanted "DELETE", saw "CREATE"'),
        ("d-off", "rule is disabled"),
        ("e-fields", None),
        ("f-table", None),
    ]


def test_bulk_records_each_match_like_one_by_one() -> None:
    bulk = records_of("02")
    assert len(bulk) > 1
    rule = make_rule(table_type="PROFILE_TABLE", operation="CREATE", fields=["emailAddress"])
    english = make_rule("english", condition="data.motherLanguage == 'EN'")
    matcher = Matcher([rule, english])
    assert [[r.name for r in matcher.match(record)] for record in bulk] == [
        ["r", "english"] if record["data"].get("motherLanguage") == "EN" else ["r"]
        for record in bulk
    ]
    assert [r.name for r in matcher.match(records_of("01")[0])] == ["r"]


def test_legacy_record_matches_operation_rules() -> None:
    (record,) = records_of("13")
    assert (record["eventType"], record["operation"], record["fields"]) == ("DATA", "CREATE", [])
    rules = [
        make_rule("create", table_type="CUSTOM_TABLE", operation="CREATE", event_type="DATA"),
        make_rule("legacy-eventType-is-no-operation", event_type="CREATE"),
        make_rule("not-synchronized", condition="data.synchronized == 'false'"),
        make_rule("bool-false", condition="data.synchronized == `false`"),
        make_rule("any-field", fields=["offerReference"]),
    ]
    assert [r.name for r in Matcher(rules).match(record)] == ["create", "not-synchronized"]


def test_trigger_records_with_dotted_keys() -> None:
    records = records_of("17")
    rules = [
        make_rule("etl-error", condition="data.\"etl.executionStatus\" == 'WITH_ERROR'"),
        make_rule("data-only", event_type="DATA"),
        make_rule("table", table_type=["PROFILE_TABLE", "CUSTOM_TABLE"]),
        make_rule("etl", condition="contains(keys(data), 'etl.id')"),
    ]
    matcher = Matcher(rules)
    assert [[r.name for r in matcher.match(record)] for record in records] == [
        ["etl"],
        ["etl-error", "etl"],
    ]
    (custom,) = records_of("20")
    assert [r.name for r in matcher.match(custom)] == []


def test_delete_and_top_level_array_samples() -> None:
    (delete,) = records_of("14")
    pair = records_of("15")
    rule = make_rule(operation=["CREATE", "UPDATE"], fields=["emailAddress"])
    matcher = Matcher([rule])
    assert matcher.match(delete) == []
    assert [matcher.match(record) for record in pair] == [[rule], [rule]]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("data.x ==", "column 10: the expression is incomplete"),
        ("data.x == `1", "column 11: Unclosed ` delimiter"),
        ("data.'x'", "column 6: unexpected 'x'"),
        ("data ~ x", "column 6: Unknown token ~"),
        ("  ", "the condition is empty; write a JMESPath expression"),
        ("no_such(data)", "unknown JMESPath function no_such()"),
        ("ends_with(data.x)", "ends_with() takes 2 argument(s), given 1"),
        ("length(data, data)", "length() takes 1 argument(s), given 2"),
    ],
)
def test_condition_problems(source: str, message: str) -> None:
    with pytest.raises(ConditionProblem) as caught:
        compile_condition(source)
    assert caught.value.message == message


def test_condition_value_and_identity() -> None:
    condition = compile_condition("data.profileId")
    assert condition.value(PROFILE_CREATE) == 1204
    assert condition.holds(PROFILE_CREATE)
    assert condition == compile_condition("data.profileId")
    assert hash(condition) == hash(compile_condition("data.profileId"))
    assert condition != compile_condition("data.profileId ")
    assert isinstance(condition, Condition)
    assert condition.source == "data.profileId"
    with pytest.raises(ConditionProblem):
        compile_condition("abs(data.emailAddress)").value(PROFILE_CREATE)
    assert compile_condition("not_null(data.a, data.profileId)").holds(PROFILE_CREATE)


@pytest.mark.parametrize(
    ("source", "warnings"),
    [
        ("data.x == `null`", []),
        (
            "data.x == null",
            ["'null' here is a field name; write `null` with backticks for the literal"],
        ),
        (
            "data.a == true || data.b != false || null",
            [
                "'true' here is a field name; write `true` with backticks for the literal",
                "'false' here is a field name; write `false` with backticks for the literal",
                "'null' here is a field name; write `null` with backticks for the literal",
            ],
        ),
        (
            "null == data.x && data.y == null",
            ["'null' here is a field name; write `null` with backticks for the literal"],
        ),
        ('data."null" == `1`', []),  # quoted: a field name on purpose
        ("data.true", []),  # after a dot: a field name on purpose
        ("nullable == `1`", []),
        ("data.x == ", []),  # a syntax error is compile_condition's to report
    ],
)
def test_condition_warnings(source: str, warnings: list[str]) -> None:
    assert condition_warnings(source) == warnings


# --- the index against a brute-force matcher -------------------------------------------------

TABLE_TYPES = ["PROFILE_TABLE", "CUSTOM_TABLE", "OTHER"]
TABLE_IDS = ["1", "2", "16"]
OPERATIONS = ["CREATE", "UPDATE", "DELETE"]
EVENT_TYPES = ["DATA", "TRIGGER"]
FIELDS = ["a", "b", "c"]
CONDITIONS = ["data.n > `1`", "data.s == 'x'", "data.n", "`true`", "data.missing"]


def brute_force(rules: list[Rule], record: dict[str, Any]) -> list[Rule]:
    """SPEC §3 read literally, one rule at a time, with no index and no shared code."""

    def text(value: Any) -> Any:
        return str(value) if type(value) is int else value

    def truthy(value: Any) -> bool:
        return value not in (None, "", [], {}) and value is not False

    matched = []
    for rule in rules:
        m = rule.match
        if not rule.enabled:
            continue
        if m.table_type is not None and record["tableType"] not in m.table_type:
            continue
        if m.table_id is not None and text(record["tableId"]) not in m.table_id:
            continue
        if m.operation is not None and record["operation"] not in m.operation:
            continue
        if m.event_type is not None and record["eventType"] not in m.event_type:
            continue
        if m.fields is not None and not set(record["fields"]) & m.fields:
            continue
        if m.condition is not None and not truthy(jmespath.search(m.condition.source, record)):
            continue
        matched.append(rule)
    return matched


def random_criterion(rng: random.Random, pool: list[str]) -> list[str] | None:
    if rng.random() < 0.4:
        return None
    return rng.sample(pool, rng.choice([1, 1, 1, 2]))


def random_rule(rng: random.Random, index: int) -> Rule:
    criteria: dict[str, Any] = {}
    for key, pool in (
        ("table_type", TABLE_TYPES),
        ("table_id", TABLE_IDS),
        ("operation", OPERATIONS),
        ("event_type", EVENT_TYPES),
        ("fields", FIELDS),
    ):
        chosen = random_criterion(rng, pool)
        if chosen is not None:
            criteria[key] = chosen
    if rng.random() < 0.3:
        criteria["condition"] = rng.choice(CONDITIONS)
    return make_rule(f"rule-{index}", enabled=rng.random() > 0.1, **criteria)


def random_record(rng: random.Random) -> dict[str, Any]:
    table_id: Any = rng.choice([*TABLE_IDS, None, 16, 2, "99"])
    return {
        "tableType": rng.choice([*TABLE_TYPES, None]),
        "tableId": table_id,
        "operation": rng.choice([*OPERATIONS, None]),
        "eventType": rng.choice([*EVENT_TYPES, None]),
        "fields": rng.sample(FIELDS, rng.randrange(len(FIELDS) + 1)),
        "data": {"n": rng.randrange(3), "s": rng.choice(["x", "y", ""])},
    }


@pytest.mark.parametrize("seed", range(20))
def test_index_agrees_with_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    rules = [random_rule(rng, index) for index in range(rng.randrange(1, 60))]
    matcher = Matcher(rules)
    for _ in range(200):
        record = random_record(rng)
        expected = brute_force(rules, record)
        assert matcher.match(record) == expected, record
        explained = [rule for rule, why in matcher.explain(record) if why is None]
        assert explained == expected, record


def test_index_cache_stays_bounded_and_correct() -> None:
    rule = make_rule(table_id=["5", "7"], operation="CREATE")
    matcher = Matcher([rule, make_rule("any")])
    for number in range(10_000):
        record = with_(PROFILE_CREATE, tableId=number)
        expected = ["r", "any"] if number in (5, 7) else ["any"]
        assert [r.name for r in matcher.match(record)] == expected
    assert len(matcher._cache) <= 4096


def test_unhashable_or_odd_values_never_match_or_crash() -> None:
    rule = make_rule(table_type="PROFILE_TABLE", table_id="16", fields=["a"])
    odd = with_(PROFILE_CREATE, tableType=["PROFILE_TABLE"], tableId=16.0, fields=[{"a": 1}, "a"])
    matcher = Matcher([rule, make_rule("open", fields=["a"])])
    assert [r.name for r in matcher.match(odd)] == ["open"]
    assert matcher.match({}) == []
    assert [r.name for r in Matcher([make_rule("all")]).match({})] == ["all"]
