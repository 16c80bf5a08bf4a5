"""router.rulefiles.dryrun: dry runs and rule tests on rule sets built by the real loader."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from router.events import normalise
from router.matching import RuleSet
from router.rulefiles.dryrun import dry_run, run_tests
from router.rulefiles.loader import load, load_rules
from router.rulefiles.ruletests import RuleTest
from router.template_limits import RenderLimits

NOW = datetime(2025, 3, 14, 9, 26, 53, tzinfo=UTC)

RULES = """\
[[rule]]
name = "crm"
[rule.match]
operation = "CREATE"

[[rule.action]]
type = "http"
url = "https://crm.example.com/c/{{ data.id }}?d={{ delivery_id }}"
headers = { Authorization = "Bearer {{ secrets.TOKEN }}", "Content-Type" = "application/json" }
body = '{ "id" : {{ data.id | tojson }},  "at": {{ now | tojson }} }'

[[rule.action]]
type = "email"
to = ["ops@example.com", "{{ data.owner | default('team') }}@example.com"]
subject = "New {{ data.id }}"
html = "<b>{{ data.id }}</b>"

[[rule]]
name = "asleep"
enabled = false
[[rule.action]]
type = "log"
message = "never"

[[rule]]
name = "missing-key"
[rule.match]
operation = "DELETE"
[[rule.action]]
type = "log"
message = "{{ data.nothing_here }}"

[[rule]]
name = "audit"
[[rule.action]]
type = "log"
level = "debug"
message = "{{ rule.name }} {{ record.operation }}"
"""


def event(operation: str, *items: dict[str, Any]) -> dict[str, Any]:
    data: Any = items[0] if len(items) == 1 else list(items)
    return {"id": "e-1", "tableType": "PROFILE_TABLE", "operation": operation, "data": data}


@pytest.fixture
def ruleset(tmp_path: Path) -> RuleSet:
    (tmp_path / "rules.toml").write_text(RULES, encoding="utf-8")
    return load_rules(tmp_path)


def test_dry_run_renders_every_action_of_every_matching_rule(ruleset: RuleSet) -> None:
    records = normalise(event("CREATE", {"id": 7}, {"id": 8, "owner": "ann"}))
    document = dry_run(ruleset, records, explain=False, now=NOW)
    first, second = document["records"]
    assert (first["index"], first["event_id"], first["matched"]) == (0, "e-1", ["crm", "audit"])
    assert "not_matched" not in first
    http, email, log = first["actions"]
    assert http == {
        "rule": "crm",
        "action": 0,
        "type": "http",
        "method": "POST",
        "url": "https://crm.example.com/c/7?d=dry-run",
        "headers": {"Authorization": "Bearer <secret TOKEN>", "Content-Type": "application/json"},
        "body": '{ "id" : 7,  "at": "2025-03-14T09:26:53Z" }',
    }
    assert email == {
        "rule": "crm",
        "action": 1,
        "type": "email",
        "to": ["ops@example.com", "team@example.com"],
        "subject": "New 7",
        "text": None,
        "html": "<b>7</b>",
    }
    assert log == {
        "rule": "audit",
        "action": 0,
        "type": "log",
        "level": "debug",
        "message": "audit CREATE",
    }
    assert second["index"] == 1
    assert second["actions"][1]["to"] == ["ops@example.com", "ann@example.com"]


def test_dry_run_explains_each_rule_that_did_not_match_in_rule_set_order(
    ruleset: RuleSet,
) -> None:
    document = dry_run(ruleset, normalise(event("UPDATE", {"id": 7})), explain=True, now=NOW)
    (record,) = document["records"]
    assert record["matched"] == ["audit"]
    assert [(m["rule"], m["reason"]) for m in record["not_matched"]] == [
        ("crm", 'operation: wanted "CREATE", saw "UPDATE"'),
        ("asleep", "rule is disabled"),
        ("missing-key", 'operation: wanted "DELETE", saw "UPDATE"'),
    ]
    assert record["not_matched"][0]["explain"] == {
        "key": "operation",
        "wanted": ["CREATE"],
        "saw": "UPDATE",
    }
    assert record["not_matched"][1]["explain"] == {"key": "enabled", "enabled": False}


def test_a_render_error_is_reported_with_the_action_not_raised(ruleset: RuleSet) -> None:
    document = dry_run(ruleset, normalise(event("DELETE", {"id": 7})), explain=False, now=NOW)
    broken, audit = document["records"][0]["actions"]
    assert set(broken) == {"rule", "action", "type", "error"}
    assert broken["rule"] == "missing-key" and "nothing_here" in broken["error"]
    assert audit["message"] == "audit DELETE"


def write_test(tmp_path: Path, text: str, rules: str = RULES) -> tuple[RuleSet, list[RuleTest]]:
    (tmp_path / "tests").mkdir(parents=True)
    (tmp_path / "rules.toml").write_text(rules, encoding="utf-8")
    (tmp_path / "tests" / "t.toml").write_text(text, encoding="utf-8")
    loaded = load(tmp_path)
    assert loaded.ruleset is not None, loaded.diagnostics
    return loaded.ruleset, list(loaded.tests)


CREATE_7 = '[test.event]\noperation = "CREATE"\ndata = { id = 7 }\n'


@pytest.mark.parametrize(
    ("expectation", "failure"),
    [
        ('expect = ["crm", "audit"]', None),
        ('expect = ["audit", "crm"]', None),  # a set: order does not matter
        ('expect = ["crm"]', ("expect", ["crm"], ["crm", "audit"])),
        ('expect = ["crm", "audit", "asleep"]', ("expect", ["crm", "asleep", "audit"], None)),
        (
            'expect = ["crm", "audit"]\n[[test.action]]\nrule = "crm"\n'
            'body_json = { at = "2025-03-14T09:26:53Z", id = 7 }',
            None,
        ),
        (
            'expect = ["crm", "audit"]\n[[test.action]]\nrule = "crm"\nbody_json = { id = 8 }',
            ("body_json", {"id": 8}, {"id": 7, "at": "2025-03-14T09:26:53Z"}),
        ),
        (
            'expect = ["crm", "audit"]\n[[test.action]]\nrule = "crm"\n'
            'headers = { authorization = "Bearer <secret TOKEN>" }',
            None,  # header names compare case-insensitively; unlisted headers are not checked
        ),
        (
            'expect = ["crm", "audit"]\n[[test.action]]\nrule = "crm"\n'
            'headers = { Authorization = "Bearer real" }',
            (
                "headers",
                {"Authorization": "Bearer real"},
                {"Authorization": "Bearer <secret TOKEN>"},
            ),
        ),
        (
            'expect = ["crm", "audit"]\n[[test.action]]\nrule = "crm"\naction = 1\n'
            'to = ["ops@example.com", "team@example.com"]\nsubject = "New 7"',
            None,
        ),
        (
            'expect = ["crm", "audit"]\n[[test.action]]\nrule = "crm"\naction = 1\nsubject = "Old"',
            ("subject", "Old", "New 7"),
        ),
        (
            'expect = ["crm", "audit"]\n[[test.action]]\nrule = "audit"\nlevel = "info"',
            ("level", "info", "debug"),
        ),
        (
            'expect = ["crm", "audit"]\n[[test.action]]\nrule = "missing-key"\nmessage = "x"',
            (None, None, None),  # the rule does not match the record
        ),
    ],
)
def test_rule_tests_compare_matches_and_rendered_values(
    tmp_path: Path, expectation: str, failure: tuple[str | None, Any, Any] | None
) -> None:
    ruleset = write_test(tmp_path, f'[[test]]\nname = "t"\n{expectation}\n{CREATE_7}')
    (outcome,) = run_tests(*ruleset, now=NOW)
    assert outcome.test.name == "t"
    if failure is None:
        assert outcome.passed, outcome.failures
        return
    assert not outcome.passed
    (found,) = outcome.failures
    key, expected, actual = failure
    assert found.key == key
    if key == "expect":
        assert found.expected == expected
        if actual is not None:
            assert found.actual == actual
    elif key is not None:
        assert (found.expected, found.actual) == (expected, actual)
    else:
        assert "does not match" in found.message


def test_expect_per_record_checks_each_record_of_a_bulk_event(tmp_path: Path) -> None:
    ruleset = write_test(
        tmp_path,
        '[[test]]\nexpect_per_record = [["crm", "audit"], ["audit"]]\n'
        '[test.event]\noperation = "CREATE"\ndata = [{ id = 1 }, { id = 2 }]\n',
    )
    (outcome,) = run_tests(*ruleset, now=NOW)
    (failure,) = outcome.failures
    assert (failure.record, failure.expected, failure.actual) == (1, ["audit"], ["crm", "audit"])
    assert failure.location == outcome.test.location
    assert outcome.as_dict()["failures"][0]["record"] == 1


@pytest.mark.parametrize(
    ("expectation", "failures"),
    [
        ('match = ["crm"]', []),
        ('no_match = ["missing-key", "asleep"]', []),
        ('match = ["crm"]\nno_match = ["missing-key"]', []),
        (
            'match = ["crm", "missing-key"]',
            [
                ("match", "rule 'missing-key' must match this record but does not", 0),
                ("match", "rule 'missing-key' must match this record but does not", 1),
            ],
        ),
        (
            'no_match = ["audit", "crm"]',
            [
                ("no_match", "rules 'crm', 'audit' must not match this record but do", 0),
                ("no_match", "rules 'crm', 'audit' must not match this record but do", 1),
            ],
        ),
        ('match_per_record = [["crm"], ["crm", "audit"]]', []),
        (
            'match = ["audit"]\nno_match_per_record = [[], ["crm"]]',
            [("no_match", "rule 'crm' must not match this record but does", 1)],
        ),
    ],
)
def test_scoped_expectations_name_only_the_rules_a_test_cares_about(
    tmp_path: Path, expectation: str, failures: list[tuple[str, str, int]]
) -> None:
    ruleset = write_test(
        tmp_path,
        f"[[test]]\n{expectation}\n"
        '[test.event]\noperation = "CREATE"\ndata = [{ id = 1 }, { id = 2 }]\n',
    )
    (outcome,) = run_tests(*ruleset, now=NOW)
    found = [(f.key, f.message, f.record) for f in outcome.failures]
    assert found == failures
    for failure in outcome.failures:
        assert failure.actual == ["crm", "audit"]  # what matched, in rule-set order


def test_a_rule_added_later_breaks_no_scoped_test(tmp_path: Path) -> None:
    text = '[[test]]\nmatch = ["crm"]\nno_match = ["missing-key"]\n' + CREATE_7
    extra = '\n[[rule]]\nname = "new"\n[[rule.action]]\ntype = "log"\nmessage = "x"\n'
    (outcome,) = run_tests(*write_test(tmp_path, text, rules=RULES + extra), now=NOW)
    assert outcome.passed
    exact = '[[test]]\nexpect = ["crm", "audit"]\n' + CREATE_7
    (outcome,) = run_tests(*write_test(tmp_path / "b", exact, rules=RULES + extra), now=NOW)
    assert [f.key for f in outcome.failures] == ["expect"]  # expect keeps its exact meaning


def test_a_render_error_fails_the_test(tmp_path: Path) -> None:
    ruleset = write_test(
        tmp_path,
        '[[test]]\nexpect = ["missing-key", "audit"]\n[[test.action]]\nrule = "missing-key"\n'
        'message = "x"\n[test.event]\noperation = "DELETE"\ndata = { id = 1 }\n',
    )
    (outcome,) = run_tests(*ruleset, now=NOW)
    (failure,) = outcome.failures
    assert "cannot be rendered" in failure.message and "nothing_here" in failure.message
    assert failure.location.line == 3  # the [[test.action]] table


def test_body_json_on_a_body_that_is_not_json(tmp_path: Path) -> None:
    plain = '[[rule]]\nname = "plain"\n[[rule.action]]\ntype = "http"\nurl = "https://x.example"\n'
    ruleset = write_test(
        tmp_path,
        '[[test]]\nexpect = ["plain"]\n[[test.action]]\nrule = "plain"\nbody_json = {}\n'
        "[test.event]\ndata = { id = 1 }\n",
        rules=plain + "body = 'id={{ data.id }}'\n",
    )
    (outcome,) = run_tests(*ruleset, now=NOW)
    (failure,) = outcome.failures
    assert failure.message.startswith("the rendered body is not JSON")
    assert failure.actual == "id=1"


def test_without_a_body_the_data_is_sent_as_json(tmp_path: Path) -> None:
    plain = '[[rule]]\nname = "plain"\n[[rule.action]]\ntype = "http"\nurl = "https://x.example"\n'
    ruleset = write_test(
        tmp_path,
        '[[test]]\nexpect = ["plain"]\n[[test.action]]\nrule = "plain"\n'
        'body_json = { id = 1, name = "Zoë" }\n[test.event]\ndata = { id = 1, name = "Zoë" }\n',
        rules=plain,
    )
    (outcome,) = run_tests(*ruleset, now=NOW)
    assert outcome.passed, outcome.failures


# A billion empty iterations over the record's list: never done within any time limit.
SPIN = (
    "{% for a in data.many %}{% for b in data.many %}{% for c in data.many %}"
    "{% endfor %}{% endfor %}{% endfor %}"
)
RUNAWAY = f"""\
[[rule]]
name = "runaway"
[[rule.action]]
type = "log"
message = "{SPIN}"
[[rule.action]]
type = "log"
message = "{{{{ 'x' * 2000 }}}}"
"""


def test_a_template_over_a_limit_is_reported_with_its_action(tmp_path: Path) -> None:
    (tmp_path / "rules.toml").write_text(RUNAWAY, encoding="utf-8")
    limits = RenderLimits(timeout=0.2, max_bytes=1024)
    started = time.monotonic()
    records = normalise(event("CREATE", {"many": list(range(1000))}))
    document = dry_run(load_rules(tmp_path), records, explain=False, limits=limits)
    assert time.monotonic() - started < 2
    spin, large = document["records"][0]["actions"]
    assert spin["error"] == (
        "template for message: rendering took longer than 0.2 s (ROUTER_TEMPLATE_TIMEOUT); "
        "simplify the template or raise the limit"
    )
    assert large["error"] == (
        "template for message: repeating a text would exceed the limit of 1024 characters "
        "(ROUTER_TEMPLATE_MAX_BYTES); make it smaller or raise the limit"
    )


def test_a_rule_test_fails_on_a_template_over_a_limit(tmp_path: Path) -> None:
    ruleset = write_test(
        tmp_path,
        '[[test]]\nexpect = ["runaway"]\n[[test.action]]\nrule = "runaway"\nmessage = "x"\n'
        "[test.event]\ndata = { many = [" + ", ".join(["1"] * 1000) + "] }\n",
        rules=RUNAWAY,
    )
    (outcome,) = run_tests(*ruleset, limits=RenderLimits(timeout=0.2))
    (failure,) = outcome.failures
    assert failure.message.startswith(
        "the action cannot be rendered: template for message: rendering took longer than 0.2 s"
    )
