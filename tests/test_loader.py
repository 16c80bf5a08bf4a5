"""Loader: rule files -> RuleSet, every problem a diagnostic at the right file, line and key."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest

from router.actions.email import EmailAction
from router.actions.http import HttpAction
from router.actions.log import LogAction
from router.actions.registry import parse_action
from router.actions.registry import render as render_action
from router.retry import RetryOverride
from router.rulefiles import RuleSetInvalid
from router.rulefiles.diagnostics import Diagnostic
from router.rulefiles.loader import load, load_rules
from router.rulefiles.positions import positions
from router.sandbox import PlaceholderSecrets
from router.templating import build_context

LOG_ACTION = '[[rule.action]]\ntype = "log"\nmessage = "hi"\n'
EVENT = {"tableType": "PROFILE_TABLE", "operation": "CREATE", "data": {"profileId": 7}}
BULK = {**EVENT, "data": [{"profileId": 1}, {"profileId": 2}]}


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


@pytest.fixture
def rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty `rules` directory; the working directory is its parent, so diagnostics show
    `rules/<file>` as a user who typed `router check rules` sees them."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rules").mkdir()
    return tmp_path / "rules"


Expected = tuple[str, int, str | None, str | None, str]  # file, line, rule, key, message part

# One case per kind of mistake: the files, and every diagnostic expected (nothing more).
CASES: list[tuple[str, dict[str, str], list[Expected]]] = [
    (
        "toml syntax",
        {"a.toml": '[[rule]]\nname = "x"\ntype = \n'},
        [("rules/a.toml", 3, None, None, "invalid TOML at column 8: invalid value")],
    ),
    (
        "unknown top-level table",
        {"a.toml": '[[rules]]\nname = "x"\n'},
        [("rules/a.toml", 1, None, "rules", "unknown key; did you mean 'rule'?")],
    ),
    (
        "rule key outside a rule",
        {"a.toml": f'name = "r"\n[[rule]]\nname = "r"\n{LOG_ACTION}'},
        [("rules/a.toml", 1, None, "name", "is outside any rule; put it under a [[rule]] table")],
    ),
    (
        "unknown rule key",
        {"a.toml": f'[[rule]]\nname = "r"\ndescripton = "d"\n{LOG_ACTION}'},
        [("rules/a.toml", 3, "r", "descripton", "did you mean 'description'?")],
    ),
    (
        "unknown match key",
        {"a.toml": f'[[rule]]\nname = "r"\n[rule.match]\ntabletype = "X"\n{LOG_ACTION}'},
        [("rules/a.toml", 4, "r", "match.tabletype", "did you mean 'tableType'?")],
    ),
    (
        "key of another action type",
        {
            "a.toml": '[[rule]]\nname = "r"\n[[rule.action]]\ntype = "http"\nurl = "u"\n'
            'message = "m"\n'
        },
        [("rules/a.toml", 6, "r", "action[0].message", "only log actions have message")],
    ),
    (
        "unknown retry key",
        {"a.toml": f'[[rule]]\nname = "r"\n{LOG_ACTION}[rule.action.retry]\nmax_atempts = 3\n'},
        [("rules/a.toml", 7, "r", "action[0].retry.max_atempts", "did you mean 'max_attempts'?")],
    ),
    (
        "wrong type",
        {"a.toml": f'[[rule]]\nname = "r"\n[rule.match]\noperation = 5\n{LOG_ACTION}'},
        [
            (
                "rules/a.toml",
                4,
                "r",
                "match.operation",
                "must be a string or a list of strings, not an integer",
            )
        ],
    ),
    (
        "wrong type of a list item, on its own line",
        {"a.toml": f'[[rule]]\nname = "r"\n[rule.match]\nfields = [\n "a",\n 2,\n]\n{LOG_ACTION}'},
        [("rules/a.toml", 6, "r", "match.fields[1]", "must be a string, not an integer")],
    ),
    (
        "missing rule name",
        {"a.toml": f'\n[[rule]]\ndescription = "d"\n{LOG_ACTION}'},
        [("rules/a.toml", 2, None, "rule[0].name", "is missing; give the rule a unique name")],
    ),
    (
        "missing action",
        {"a.toml": '[[rule]]\nname = "r"\n'},
        [("rules/a.toml", 1, "r", "action", "is missing; add a [[rule.action]] table")],
    ),
    (
        "action as a single table",
        {"a.toml": '[[rule]]\nname = "r"\n[rule.action]\ntype = "log"\nmessage = "m"\n'},
        [("rules/a.toml", 3, "r", "action", "must hold at least one action")],
    ),
    (
        "missing http url",
        {"a.toml": '[[rule]]\nname = "r"\n\n[[rule.action]]\ntype = "http"\n'},
        [("rules/a.toml", 4, "r", "action[0].url", "is missing; give the URL to call")],
    ),
    (
        "missing email keys",
        {"a.toml": '[[rule]]\nname = "r"\n[[rule.action]]\ntype = "email"\n'},
        [
            ("rules/a.toml", 3, "r", "action[0].to", "is missing; give at least one recipient"),
            ("rules/a.toml", 3, "r", "action[0].subject", "is missing; give the subject"),
            ("rules/a.toml", 3, "r", "action[0].text", "needs text, html or both"),
        ],
    ),
    (
        "missing log message in an inline action",
        {"a.toml": '[[rule]]\nname = "r"\naction = [\n  { type = "log" },\n]\n'},
        [("rules/a.toml", 4, "r", "action[0].message", "is missing")],
    ),
    (
        "unknown action type",
        {"a.toml": '[[rule]]\nname = "r"\n[[rule.action]]\ntype = "htp"\n'},
        [("rules/a.toml", 4, "r", "action[0].type", "'htp' is not a known action type; did")],
    ),
    (
        "unknown operation, in a dotted key",
        {"a.toml": f'[[rule]]\nname = "r"\nmatch.operation = "CREAT"\n{LOG_ACTION}'},
        [
            (
                "rules/a.toml",
                3,
                "r",
                "match.operation",
                "not a known operation; did you mean 'CREATE'",
            )
        ],
    ),
    (
        "table type in the wrong case",
        {
            "a.toml": '[[rule]]\nname = "r"\nmatch = { tableType = ["profile_table"] }\n'
            + LOG_ACTION
        },
        [("rules/a.toml", 3, "r", "match.tableType[0]", "did you mean 'PROFILE_TABLE'?")],
    ),
    (
        "unknown event type",
        {"a.toml": f'[[rule]]\nname = "r"\n[rule.match]\neventType = "TRIGER"\n{LOG_ACTION}'},
        [
            (
                "rules/a.toml",
                4,
                "r",
                "match.eventType",
                "not a known event type; did you mean 'TRIGGER'",
            )
        ],
    ),
    (
        "empty list in match",
        {"a.toml": f'[[rule]]\nname = "r"\n[rule.match]\ntableId = []\n{LOG_ACTION}'},
        [("rules/a.toml", 4, "r", "match.tableId", "remove the key to accept any value")],
    ),
    (
        "unknown http method and log level",
        {
            "a.toml": '[[rule]]\nname = "r"\n[[rule.action]]\ntype = "http"\nurl = "u"\n'
            'method = "FETCH"\n[[rule.action]]\ntype = "log"\nmessage = "m"\nlevel = "warn"\n'
        },
        [
            ("rules/a.toml", 6, "r", "action[0].method", "'FETCH' is not a known HTTP method"),
            ("rules/a.toml", 10, "r", "action[1].level", "did you mean 'warning'?"),
        ],
    ),
    (
        "numbers out of range",
        {
            "a.toml": '[[rule]]\nname = "r"\n[[rule.action]]\ntype = "http"\nurl = "u"\n'
            "timeout = 500\nretry = { max_attempts = 0, max_age = true }\n"
        },
        [
            (
                "rules/a.toml",
                6,
                "r",
                "action[0].timeout",
                "500 is out of range; use a number from 0.1 to 300",
            ),
            (
                "rules/a.toml",
                7,
                "r",
                "action[0].retry.max_attempts",
                "0 is out of range; use an integer from 1",
            ),
            ("rules/a.toml", 7, "r", "action[0].retry.max_age", "must be a number, not a boolean"),
        ],
    ),
    (
        "jmespath syntax error",
        {"a.toml": f'[[rule]]\nname = "r"\n[rule.match]\ncondition = "data.a =="\n{LOG_ACTION}'},
        [("rules/a.toml", 4, "r", "match.condition", "JMESPath: column")],
    ),
    (
        "bare null in a condition is a warning",
        {
            "a.toml": '[[rule]]\nname = "r"\n[rule.match]\ncondition = "data.a != null"\n'
            + LOG_ACTION
        },
        [("rules/a.toml", 4, "r", "match.condition", "warning: 'null' here is a field name")],
    ),
    (
        "jinja syntax error on line 3 of a multi-line body",
        {
            "a.toml": '[[rule]]\nname = "r"\n[[rule.action]]\ntype = "http"\nurl = "u"\n'
            'body = """\n{\n  "a": 1,\n  "b": {{ data.b }\n}"""\n'
        },
        [("rules/a.toml", 9, "r", "action[0].body", "template: unexpected '}'")],
    ),
    (
        "template name outside the context",
        {
            "a.toml": '[[rule]]\nname = "r"\n[[rule.action]]\ntype = "log"\n'
            'message = "{{ profileId }}"\n'
        },
        [("rules/a.toml", 5, "r", "action[0].message", "name 'profileId' is not available")],
    ),
    (
        "unknown filter in a header",
        {
            "a.toml": '[[rule]]\nname = "r"\n[[rule.action]]\ntype = "http"\nurl = "u"\n'
            'headers = { X-Id = "{{ data.id | upperr }}" }\n'
        },
        [
            (
                "rules/a.toml",
                6,
                "r",
                "action[0].headers.X-Id",
                "unknown filter 'upperr'; did you mean 'upper'",
            )
        ],
    ),
    (
        "invalid header name",
        {
            "a.toml": '[[rule]]\nname = "r"\n[[rule.action]]\ntype = "http"\nurl = "u"\n'
            '[rule.action.headers]\n"X Id" = "v"\n'
        },
        [("rules/a.toml", 7, "r", "action[0].headers.X Id", "is not a valid HTTP header name")],
    ),
    (
        "duplicate names across files",
        {
            "a.toml": f'[[rule]]\nname = "r"\n{LOG_ACTION}',
            "b.toml": f'# second\n[[rule]]\nname = "r"\n{LOG_ACTION}',
        },
        [("rules/b.toml", 3, "r", "name", "rule name 'r' is already used at rules/a.toml:1")],
    ),
    (
        "rule in a tests file",
        {"a.toml": f'[[rule]]\nname = "r"\n{LOG_ACTION}', "tests/t.toml": '[[rule]]\nname = "s"\n'},
        [("rules/tests/t.toml", 1, None, "rule", "rules are not read from tests/")],
    ),
    (
        "test expects an unknown rule",
        {
            "a.toml": f'[[rule]]\nname = "crm"\n{LOG_ACTION}'
            '[[test]]\nevent = { data = {} }\nexpect = ["crn"]\n'
        },
        [
            (
                "rules/a.toml",
                8,
                None,
                "test[0].expect[0]",
                "no rule is named 'crn'; did you mean 'crm'?",
            )
        ],
    ),
    (
        "mode misspelt",
        {"a.toml": f'[[rule]]\nname = "r"\nmode = "shadw"\n{LOG_ACTION}'},
        [("rules/a.toml", 3, "r", "mode", "'shadw' is not a known mode; did you mean 'shadow'?")],
    ),
    (
        "test without expectation",
        {"a.toml": f'[[rule]]\nname = "r"\n{LOG_ACTION}\n[[test]]\nevent = {{ data = {{}} }}\n'},
        [("rules/a.toml", 7, None, "test[0].match", "is missing; say which rules must match")],
    ),
    (
        "test with both kinds of expectation",
        {
            "a.toml": f'[[rule]]\nname = "r"\n{LOG_ACTION}[[test]]\nevent = {{ data = {{}} }}\n'
            'expect = ["r"]\nmatch = ["r"]\n'
        },
        [
            (
                "rules/a.toml",
                9,
                None,
                "test[0].match",
                "expect already names every rule that matches; remove match",
            )
        ],
    ),
    (
        "a rule that must match and must not",
        {
            "a.toml": f'[[rule]]\nname = "r"\n{LOG_ACTION}[[test]]\n'
            'event = { data = [{ a = 1 }, { a = 2 }] }\nmatch = ["r"]\n'
            'no_match_per_record = [[], ["r"]]\n'
        },
        [("rules/a.toml", 9, None, "test[0].no_match_per_record", "r cannot both match")],
    ),
    (
        "match_per_record of the wrong length, and an unknown rule in no_match",
        {
            "a.toml": f'[[rule]]\nname = "r"\n{LOG_ACTION}[[test]]\n'
            'event = { data = [{ a = 1 }, { a = 2 }] }\nmatch_per_record = [["r"]]\n'
            'no_match = ["q"]\n'
        },
        [
            ("rules/a.toml", 8, None, "test[0].match_per_record", "has 1 list(s) but the event"),
            ("rules/a.toml", 9, None, "test[0].no_match[0]", "no rule is named 'q'"),
        ],
    ),
    (
        "test event file missing",
        {
            "tests/t.toml": '[[test]]\nevent = "nope.json"\nexpect = []\n',
            "a.toml": f'[[rule]]\nname = "r"\n{LOG_ACTION}',
        },
        [("rules/tests/t.toml", 2, None, "test[0].event", "cannot read 'nope.json'")],
    ),
    (
        "test event that is no event",
        {"a.toml": f'[[rule]]\nname = "r"\n{LOG_ACTION}[test]\n'},
        [("rules/a.toml", 6, None, "test", "must be an array of tables: write [[test]]")],
    ),
    (
        "test event without data",
        {
            "a.toml": f'[[rule]]\nname = "r"\n{LOG_ACTION}'
            "[[test]]\nexpect = []\n[test.event]\nid = 1\n"
        },
        [("rules/a.toml", 8, None, "test[0].event", "not an ACTITO event: data is missing")],
    ),
    (
        "test action checks too much",
        {
            "a.toml": f'[[rule]]\nname = "r"\n{LOG_ACTION}[[test]]\nevent = {{ data = {{}} }}\n'
            'expect = ["r"]\n[[test.action]]\nrule = "r"\naction = 1\n[[test.action]]\nrule = "r"\n'
            'url = "u"\nrecord = 1\n'
        },
        [
            ("rules/a.toml", 11, None, "test[0].action[0].action", "rule 'r' has 1 action(s)"),
            ("rules/a.toml", 14, None, "test[0].action[1].url", "a log action has no url"),
            ("rules/a.toml", 15, None, "test[0].action[1].record", "the event has 1 record(s)"),
        ],
    ),
    (
        "expect_per_record of the wrong length",
        {
            "a.toml": f'[[rule]]\nname = "r"\n{LOG_ACTION}[[test]]\n'
            'event = { data = [{ a = 1 }, { a = 2 }] }\nexpect_per_record = [["r"]]\n'
        },
        [
            (
                "rules/a.toml",
                8,
                None,
                "test[0].expect_per_record",
                "has 1 list(s) but the event has 2",
            )
        ],
    ),
]


def check(found: list[Diagnostic], expected: list[Expected]) -> None:
    where = [(d.file, d.line, d.rule, d.key) for d in found]
    assert where == [e[:4] for e in expected], "\n".join(map(str, found))
    for diagnostic, (*_, part) in zip(found, expected, strict=True):
        assert part in str(diagnostic)


@pytest.mark.parametrize(("files", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_mistake_is_located(
    rules: Path, files: dict[str, str], expected: list[Expected]
) -> None:
    write(rules, files)
    result = load("rules")
    check(result.diagnostics, expected)
    errors = any(d.severity == "error" for d in result.diagnostics)
    assert (result.ruleset is None) == errors


def test_diagnostic_line_format(rules: Path) -> None:
    write(rules, {"crm.toml": f'[[rule]]\nname = "crm"\n[rule.match]\noperation = 5\n{LOG_ACTION}'})
    [diagnostic] = load("rules").diagnostics
    expected = "rules/crm.toml:4: rule 'crm': match.operation: must be a string or a list"
    assert str(diagnostic).startswith(expected)


def test_all_errors_of_all_files_at_once(rules: Path) -> None:
    write(
        rules,
        {
            "a.toml": '[[rule]]\nname = "a"\n[[rule.action]]\ntype = "http"\n',
            "b.toml": "[[rule]\n",
            "c.toml": f'[[rule]]\nname = "c"\nenabled = "yes"\n{LOG_ACTION}\n[[rule]]\nname = 3\n',
        },
    )
    result = load("rules")
    assert result.ruleset is None
    assert [str(d).split(": ")[0:2] for d in result.diagnostics] == [
        ["rules/a.toml:3", "rule 'a'"],
        ["rules/b.toml:1", "invalid TOML at column 7"],
        ["rules/c.toml:3", "rule 'c'"],
        ["rules/c.toml:8", "rule[1].action"],
        ["rules/c.toml:9", "rule[1].name"],
    ]
    with pytest.raises(RuleSetInvalid) as raised:
        load_rules("rules")
    assert raised.value.diagnostics == result.diagnostics


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: root.rmdir(), "the rules directory does not exist"),
        (lambda root: None, "no rule files"),
        (
            lambda root: write(root, {"tests/t.toml": "", ".hidden.toml": "", "x.txt": ""}),
            "no rule files",
        ),
    ],
    ids=["missing", "empty", "only tests and others"],
)
def test_directory_without_rules(rules: Path, setup: Any, message: str) -> None:
    setup(rules)
    result = load("rules")
    assert result.ruleset is None
    assert [(d.file, d.message) for d in result.diagnostics if message in d.message] == [
        ("rules", result.diagnostics[0].message)
    ]


VALID = {
    "20-chat.toml": """\
        [[rule]]
        name = "chat"
        match = { operation = ["CREATE", "UPDATE"], tableId = [16, "17"] }
        [[rule.action]]
        type = "http"
        method = "put"
        url = "https://chat.example.com/{{ secrets.CHAT_PATH }}"
        headers = { Authorization = "Bearer {{ secrets.CHAT_TOKEN }}" }
        body = '{"id": {{ data.profileId | tojson }}}'
        timeout = 3
        retry = { max_attempts = 4, max_age = 60 }
        """,
    "10-crm.toml": """\
        [[rule]]
        name = "crm"
        description = "to the CRM"
        [rule.match]
        tableType = "PROFILE_TABLE"
        fields = "emailAddress"
        condition = "data.profileId > `5`"
        [[rule.action]]
        type = "email"
        to = "ops@example.com"
        subject = "Profile {{ data.profileId }}"
        text = "hello {{ secrets.AUDIT }}"
        [[rule.action]]
        type = "log"
        level = "WARNING"
        message = "{{ rule.name }}"

        [[rule]]
        name = "off"
        enabled = false
        [[rule.action]]
        type = "email"
        to = "x@example.com"
        subject = "{{ secrets.LATER }}"
        text = "t"
        """,
    "tests/crm.toml": """\
        [[test]]
        event = "../events/bulk.json"
        expect_per_record = [["crm", "chat"], ["chat"]]

        [[test]]
        name = "inline"
        expect = ["crm", "chat"]
        [test.event]
        tableType = "PROFILE_TABLE"
        tableId = 16
        operation = "CREATE"
        fields = ["emailAddress"]
        data = { profileId = 7 }
        [[test.action]]
        rule = "chat"
        method = "put"
        headers = { Authorization = "Bearer <secret CHAT_TOKEN>" }
        body_json = { id = 7 }
        [[test.action]]
        rule = "crm"
        record = 0
        to = "ops@example.com"
        [[test.action]]
        rule = "crm"
        action = 1
        level = "WARNING"
        """,
}
BULK_EVENT = {
    "tableType": "PROFILE_TABLE",
    "tableId": "16",
    "operation": "UPDATE",
    "fields": ["emailAddress"],
    "data": [{"profileId": 9}, {"profileId": 1}],
}


def valid_set(rules: Path) -> None:
    write(rules, VALID)
    (rules / "events").mkdir()
    (rules / "events" / "bulk.json").write_text(json.dumps(BULK_EVENT))


def test_valid_set_in_name_order_with_version_and_secrets(rules: Path) -> None:
    valid_set(rules)
    result = load("rules", secrets={"CHAT_PATH", "CHAT_TOKEN"})
    assert result.ruleset is not None, result.diagnostics
    ruleset = result.ruleset
    assert [(r.name, str(r.location), r.enabled) for r in ruleset.rules] == [
        ("crm", "rules/10-crm.toml:1", True),
        ("off", "rules/10-crm.toml:18", False),
        ("chat", "rules/20-chat.toml:1", True),
    ]
    # Only the enabled rules' unset secrets are reported; every referenced one is listed.
    assert [str(d) for d in result.diagnostics] == [
        "rules/10-crm.toml:12: rule 'crm': action[0].text: warning: secrets.AUDIT is not set; "
        "set the environment variable ROUTER_SECRET_AUDIT"
    ]
    assert ruleset.secrets == {"CHAT_PATH", "CHAT_TOKEN", "AUDIT", "LATER"}
    crm, _, chat = ruleset.rules
    assert crm.match.table_type == frozenset({"PROFILE_TABLE"})
    assert crm.match.fields == frozenset({"emailAddress"})
    assert crm.match.condition is not None and crm.match.table_id is None
    assert chat.match.table_id == frozenset({"16", "17"})
    assert chat.match.operation == frozenset({"CREATE", "UPDATE"})
    http = chat.actions[0]
    assert isinstance(http, HttpAction)
    assert (http.method, http.timeout, http.retry) == ("PUT", 3.0, RetryOverride(4, 60.0))
    assert [name for name, _ in http.headers] == ["Authorization"]
    email, log = crm.actions
    assert isinstance(email, EmailAction) and [t.source for t in email.to] == ["ops@example.com"]
    assert isinstance(log, LogAction) and log.level == "warning"
    assert len(ruleset.version) == 12
    assert [
        rule.name
        for rule in ruleset.matcher.match({**EVENT, "tableId": 16, "fields": ["emailAddress"]})
    ] == ["crm", "chat"]


def test_version_follows_content(rules: Path) -> None:
    valid_set(rules)
    first = load_rules("rules").version
    assert load_rules("rules").version == first
    (rules / "20-chat.toml").write_text((rules / "20-chat.toml").read_text() + "\n")
    assert load_rules("rules").version != first


def test_unset_secret_policies(rules: Path) -> None:
    valid_set(rules)
    assert load("rules").diagnostics == []  # secrets=None: not checked
    assert load("rules", secrets=(), unset_secrets="ignore").diagnostics == []
    result = load("rules", secrets={"AUDIT"}, unset_secrets="error")
    assert result.ruleset is None
    assert [(d.line, d.key, d.severity) for d in result.diagnostics] == [
        (7, "action[0].url", "error"),
        (8, "action[0].headers.Authorization", "error"),
    ]


def test_rule_tests_are_parsed(rules: Path) -> None:
    valid_set(rules)
    from_file, inline = load("rules").tests
    assert from_file.name == "test 1 of rules/tests/crm.toml"
    assert str(from_file.location) == "rules/tests/crm.toml:1"
    assert from_file.event == BULK_EVENT
    assert from_file.expect is None
    assert from_file.expect_per_record == (frozenset({"crm", "chat"}), frozenset({"chat"}))
    assert (inline.name, inline.expect, inline.expect_per_record) == (
        "inline",
        frozenset({"crm", "chat"}),
        None,
    )
    assert inline.event["data"] == {"profileId": 7}
    assert [
        (a.rule, a.action, a.record, dict(a.values), a.location.line) for a in inline.actions
    ] == [
        (
            "chat",
            0,
            0,
            {
                "method": "PUT",
                "headers": {"Authorization": "Bearer <secret CHAT_TOKEN>"},
                "body_json": {"id": 7},
            },
            14,
        ),
        ("crm", 0, 0, {"to": ["ops@example.com"]}, 19),
        ("crm", 1, 0, {"level": "warning"}, 23),
    ]


def test_configmap_mount_is_read_once(tmp_path: Path) -> None:
    # Kubernetes mounts a ConfigMap as `..<timestamp>/` files, a `..data` link to that folder
    # and one `name -> ..data/name` link per key.
    mount = tmp_path / "rules"
    stamp = mount / "..2024_01_01_00_00_00.1"
    stamp.mkdir(parents=True)
    write(stamp, {name: text for name, text in VALID.items() if "/" not in name})
    (mount / "..data").symlink_to(stamp.name)
    for name in ("10-crm.toml", "20-chat.toml"):
        (mount / name).symlink_to(f"..data/{name}")
    result = load(str(mount))
    assert result.ruleset is not None, result.diagnostics
    assert [rule.name for rule in result.ruleset.rules] == ["crm", "off", "chat"]
    plain = tmp_path / "plain"
    write(plain, {name: text for name, text in VALID.items() if "/" not in name})
    assert load_rules(plain).version == result.ruleset.version


def test_parse_action_rebuilds_every_action(rules: Path) -> None:
    valid_set(rules)
    ruleset = load_rules("rules")
    context = build_context(
        {**EVENT, "data": {"profileId": 7}}, rule="r", delivery_id="d", secrets=PlaceholderSecrets()
    )
    actions = [action for rule in ruleset.rules for action in rule.actions]
    assert {action.type for action in actions} == {"http", "email", "log"}
    for action in actions:
        stored = json.loads(json.dumps(action.spec))  # what a delivery job keeps
        rebuilt = parse_action(stored)
        assert rebuilt == action
        assert render_action(rebuilt, context) == render_action(action, context)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "sms"}, "type: 'sms' is not a known action type"),
        ({"type": "http"}, "url: is missing"),
        ({"type": "log", "message": "{{ nope }}"}, "message: template: name 'nope'"),
    ],
)
def test_parse_action_refuses_invalid_specs(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace("'", "'")):
        parse_action(spec)


@pytest.mark.parametrize(
    ("source", "path", "line"),
    [
        ('[[rule]]\nname = "a"\n[[rule]]\nname = "b"\n', ("rule", 1, "name"), 4),
        (
            "[[rule]]\n[[rule.action]]\n[[rule.action]]\nurl = 1\n",
            ("rule", 0, "action", 1, "url"),
            4,
        ),
        (
            "[[rule]]\n[[rule.action]]\n[rule.action.retry]\nmax_age = 1\n",
            ("rule", 0, "action", 0, "retry", "max_age"),
            4,
        ),
        ('[[rule]]\n"quoted.key".x = 1\n', ("rule", 0, "quoted.key", "x"), 2),
        (
            "[[test]]\n[test.event]\ndata = [\n{ a = 1 },\n{ b = 2 }]\n",
            ("test", 0, "event", "data", 1, "b"),
            5,
        ),
        (
            '[[rule]]\nname = "a"\n',
            ("rule", 0, "match", "operation"),
            1,
        ),  # missing: the table's line
    ],
)
def test_positions(source: str, path: tuple[str | int, ...], line: int) -> None:
    assert positions(source).line(path) == line


def test_template_line_of_multiline_strings() -> None:
    found = positions('a = """\none\ntwo"""\nb = """one\ntwo"""\nc = "x"\n')
    assert [found.template_line(("a",), n) for n in (1, 2, 9)] == [2, 3, 3]
    assert [found.template_line(("b",), n) for n in (1, 2)] == [4, 5]
    assert found.template_line(("c",), 3) == 6


def test_relative_event_path_from_another_working_directory(
    rules: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    valid_set(rules)
    monkeypatch.chdir(rules.parent.parent)
    result = load(os.path.join(rules.parent.name, "rules"))
    assert result.ruleset is not None, [str(d) for d in result.diagnostics]


def test_unreadable_rule_file_does_not_cascade(rules: Path) -> None:
    # While a rule file does not parse, its rules are unknown: tests naming them are not blamed.
    write(
        rules,
        {
            "a.toml": '[[rule]]\nname = "a"\nname = "b"\n',
            "tests/t.toml": '[[test]]\nevent = { data = {} }\nexpect = ["a"]\n',
        },
    )
    [diagnostic] = load("rules/").diagnostics
    assert (diagnostic.file, diagnostic.line) == ("rules/a.toml", 3)
    assert "invalid TOML" in diagnostic.message


def test_expect_per_record_may_expect_no_rule(rules: Path) -> None:
    write(
        rules,
        {
            "a.toml": f'[[rule]]\nname = "r"\n{LOG_ACTION}[[test]]\n'
            'event = [{ data = {} }, { data = {} }]\nexpect_per_record = [[], ["r"]]\n'
        },
    )
    [test] = load("rules").tests
    assert test.expect_per_record == (frozenset(), frozenset({"r"}))
    assert test.expect is None


def test_a_log_message_cannot_show_secrets(rules: Path) -> None:
    write(
        rules,
        {
            "a.toml": """\
            [[rule]]
            name = "leaky"
            [[rule.action]]
            type = "log"
            message = "token {{ secrets.TOKEN }}"
            """
        },
    )
    result = load("rules", secrets={"TOKEN"})
    assert result.ruleset is None
    assert [str(d) for d in result.diagnostics] == [
        "rules/a.toml:5: rule 'leaky': action[0].message: "
        "a log message cannot show secrets (secrets.TOKEN)"
    ]
