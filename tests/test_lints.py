"""router.rulefiles.lints (and the messages of conditions and templates they rely on): every lint
with its exact message, at its file:line and key, and the rules it must leave alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.rulefiles.loader import load

LOG = '[[rule.action]]\ntype = "log"\nmessage = "x"\n'


def diagnostics(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "r.toml").write_text(text, encoding="utf-8")
    return [str(d).removeprefix(f"{tmp_path}/") for d in load(tmp_path).diagnostics]


def rule(match: str, action: str = LOG) -> str:
    return f'[[rule]]\nname = "r"\n\n[rule.match]\n{match}\n\n{action}'


@pytest.mark.parametrize(
    ("match", "message"),
    [
        # The natural condition for "an import failed" matches every data event.
        (
            'condition = "data.\\"etl.executionStatus\\" != \'SUCCESS\'"',
            "r.toml:5: rule 'r': match.condition: warning: data.\"etl.executionStatus\" != "
            "'SUCCESS' is also true for every record without etl.executionStatus, such as every "
            'data event; write data."etl.executionStatus" != `null` && '
            "data.\"etl.executionStatus\" != 'SUCCESS'",
        ),
        # On a data field: ACTITO sends only the fields that changed.
        (
            'operation = "UPDATE"\ncondition = "!(data.Newsletter)"',
            "r.toml:6: rule 'r': match.condition: warning: !(data.Newsletter) is also true for "
            "every record without Newsletter (ACTITO sends only the fields that changed); write "
            'data.Newsletter != `null` && !(data.Newsletter), or add fields = ["Newsletter"]',
        ),
        # `!` binds tighter than `.` in JMESPath.
        (
            'condition = "!data.Newsletter"',
            "r.toml:5: rule 'r': match.condition: warning: !data.Newsletter reads as "
            "(!data).Newsletter, which is never true; write !(data.Newsletter)",
        ),
        # Words and double quotes are field names in JMESPath.
        (
            'condition = "data.status == SHIPPED"',
            "r.toml:5: rule 'r': match.condition: warning: SHIPPED here is a field name, and "
            "records have no such field; write 'SHIPPED' in single quotes for the text",
        ),
        (
            "condition = 'data.status == \"SHIPPED\"'",
            "r.toml:5: rule 'r': match.condition: warning: \"SHIPPED\" in double quotes is a "
            "field name, and records have no such field; write 'SHIPPED' in single quotes for "
            "the text",
        ),
        # Trigger keys have dots in their names.
        (
            "condition = \"data.etl.id == '480213'\"",
            "r.toml:5: rule 'r': match.condition: warning: trigger events name this key "
            '"etl.id", with a dot; write data."etl.id"',
        ),
        # Bare numbers are a syntax error: say how to write one.
        (
            'condition = "data.amount > 500"',
            "r.toml:5: rule 'r': match.condition: JMESPath: column 15: write the number 500 in "
            "backticks: `500`",
        ),
        (
            'condition = "data.amount >= 5.5"',
            "r.toml:5: rule 'r': match.condition: JMESPath: column 16: write the number 5.5 in "
            "backticks: `5.5`",
        ),
    ],
)
def test_condition_lints(tmp_path: Path, match: str, message: str) -> None:
    assert diagnostics(tmp_path, rule(match)) == [message]


@pytest.mark.parametrize(
    "match",
    [
        # The field is checked to be there first, or the kind of record is pinned.
        'condition = "data.\\"etl.executionStatus\\" != `null` && '
        'data.\\"etl.executionStatus\\" != \'SUCCESS\'"',
        'condition = "data.\\"etl.id\\" == \'480213\' && '
        'data.\\"etl.executionStatus\\" != \'SUCCESS\'"',
        "condition = \"ends_with(_links.webhook.href, '/58') && "
        'data.\\"etl.executionStatus\\" != \'SUCCESS\'"',
        'fields = ["Newsletter"]\ncondition = "!(data.Newsletter)"',
        # A comparison that is false when the field is missing, and the explicit null test.
        "condition = \"data.status == 'SHIPPED'\"",
        'condition = "data.amount > `5`"',
        'condition = "data.emailAddress == `null`"',
        "condition = \"!ends_with(data.emailAddress, '@test.example.com')\"",
        # The envelope's keys are the record's own: no word to quote.
        "condition = \"operation != 'DELETE' && tableId == '16'\"",
    ],
)
def test_conditions_that_are_meant_get_no_lint(tmp_path: Path, match: str) -> None:
    assert diagnostics(tmp_path, rule(match)) == []


def test_a_dotted_path_in_a_template(tmp_path: Path) -> None:
    action = (
        '[[rule.action]]\ntype = "log"\n'
        "message = \"ETL {{ data.etl.id }} {{ data['etl']['id'] }}\"\n"
    )
    assert diagnostics(tmp_path, rule('condition = "data.x"', action)) == [
        "r.toml:9: rule 'r': action[0].message: warning: trigger events name this key "
        '"etl.id", with a dot; write data["etl.id"]'
    ]


def test_a_template_reading_a_field_an_update_may_not_carry(tmp_path: Path) -> None:
    action = (
        '[[rule.action]]\ntype = "email"\nto = "ops@example.com"\n'
        'subject = "{{ data.firstName }} ({{ data.profileId }})"\n'
        "text = '''\n{{ data.lastName | default('') }} {{ data.motherLanguage | lower }}\n"
        "{% if data.city is defined %}{{ data.city }}{% endif %} {{ data.status }}\n'''\n"
    )
    found = diagnostics(
        tmp_path, rule('operation = "UPDATE"\ncondition = "data.status == \'X\'"', action)
    )
    assert found == [
        "r.toml:11: rule 'r': action[0].subject: warning: data.firstName may be missing: on "
        "UPDATE, ACTITO sends only the fields that changed; give a default: "
        '{{ data.firstName | default("") }}',
        "r.toml:12: rule 'r': action[0].text: warning: data.motherLanguage may be missing: on "
        "UPDATE, ACTITO sends only the fields that changed; give a default: "
        '{{ data.motherLanguage | default("") }}',
    ]
    # On CREATE the same templates are not warned about.
    assert diagnostics(tmp_path, rule('operation = "CREATE"', action)) == []


def test_record_keys_in_a_template_point_to_record(tmp_path: Path) -> None:
    action = '[[rule.action]]\ntype = "log"\nmessage = "event {{ id }}"\n'
    assert diagnostics(tmp_path, rule('condition = "data.x"', action)) == [
        "r.toml:9: rule 'r': action[0].message: template: name 'id' is not available in "
        "templates; use one of record, data, rule, secrets, now, delivery_id; the event's id is "
        "record.id"
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            'condition = "data."etl.executionStatus" == \'WITH_ERROR\'"',
            'r.toml:5: invalid TOML at column 20: a " inside the "…" value of condition ends '
            'it early; write each " inside it as \\"',
        ),
        (
            "condition = 'data.status == 'SHIPPED''",
            "r.toml:5: invalid TOML at column 30: a ' inside the '…' value of condition ends it "
            'early; put the value in "…" instead',
        ),
        # Other TOML mistakes keep the parser's own words.
        (
            'condition = "data.x',
            "r.toml:5: invalid TOML at column 20: illegal character '\\n'",
        ),
    ],
)
def test_toml_quoting_mistakes_are_explained_with_the_fix(
    tmp_path: Path, line: str, message: str
) -> None:
    assert diagnostics(tmp_path, rule(line)) == [message]


def test_the_example_rules_have_no_lint() -> None:
    rules = Path(__file__).parents[1] / "rules"
    found = [d for d in load(rules, secrets=None).diagnostics]
    assert found == []
