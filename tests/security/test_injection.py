"""Event data cannot steer an action: no extra e-mail recipient or header, no other URL.

Event data is whatever the sender pushes; rule authors are trusted. Each attack goes through a
real `router serve` to a real SMTP server (aiosmtpd) or HTTP sink, and the test asserts what
arrived there (envelope recipients, headers, the exact request target) or, when the action is
refused, that the delivery is dead with a reason that names the key and not the value, that
nothing arrived, and that `router test` shows the same error. Load-time checks (`router
check`) and rule-test keys are tested at the end.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from router.actions.email import EmailAction
from router.actions.http import HttpAction
from router.rulefiles.dryrun import run_tests
from router.rulefiles.loader import load
from router.urls import AUTHORITY_PROBLEM
from tests.e2e.harness import RouterProcess, poll
from tests.sinks import HttpRequest, HttpSink, SmtpMessage, SmtpSink

ATTACKER = "attacker@evil.example"
POLL_EVERY = 0.2  # seconds between `router deliveries list` runs (each is a process)
ENVELOPE: dict[str, Any] = {
    "tableType": "PROFILE_TABLE",
    "tableId": "16",
    "fields": ["emailAddress"],
    "eventType": "DATA",
    "triggerType": None,
    "operation": "CREATE",
}

# One rule per case, chosen by data.case; {base} is the HTTP sink.
RULES = """
[[rule]]
name = "mail-subject"
match = { condition = "data.case == 'mail-subject'" }
[[rule.action]]
type = "email"
to = "ops@example.com"
subject = "{{ data.v }}"
text = "event {{ record.id }}"

[[rule]]
name = "mail-to"
match = { condition = "data.case == 'mail-to'" }
[[rule.action]]
type = "email"
to = "{{ data.v }}"
subject = "s"
text = "event {{ record.id }}"

[[rule]]
name = "mail-lists"
match = { condition = "data.case == 'mail-lists'" }
[[rule.action]]
type = "email"
address_lists = true
to = "{{ data.to }}"
cc = ["{{ data.cc }}"]
bcc = "{{ data.bcc }}"
subject = "s"
text = "event {{ record.id }}"

[[rule]]
name = "url-path"
match = { condition = "data.case == 'url-path'" }
[[rule.action]]
type = "http"
url = "{base}/contacts/{{ data.v }}"
headers = { X-Event = "{{ record.id }}" }

[[rule]]
name = "url-query"
match = { condition = "data.case == 'url-query'" }
[[rule.action]]
type = "http"
url = "{base}/search?q={{ data.v }}&fixed=1"
headers = { X-Event = "{{ record.id }}" }

[[rule]]
name = "url-trusted"
match = { condition = "data.case == 'url-trusted'" }
[[rule.action]]
type = "http"
url = "{base}/files/{{ data.v | trusted }}"
headers = { X-Event = "{{ record.id }}" }

[[rule]]
name = "url-secret-base"
match = { condition = "data.case == 'url-secret-base'" }
[[rule.action]]
type = "http"
url = "{{ secrets.BASE }}/v1/{{ data.v }}"
headers = { X-Event = "{{ record.id }}" }

[[rule]]
name = "url-after-secret"
match = { condition = "data.case == 'url-after-secret'" }
[[rule.action]]
type = "http"
url = "{{ secrets.BASE }}{{ data.v }}"
headers = { X-Event = "{{ record.id }}" }

[[rule]]
name = "header"
match = { condition = "data.case == 'header'" }
[[rule.action]]
type = "http"
url = "{base}/named"
headers = { X-Event = "{{ record.id }}", X-Name = "{{ data.v }}" }
"""


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


@pytest.fixture(scope="module")
def sink() -> Iterator[HttpSink]:
    with HttpSink() as running:
        yield running


@pytest.fixture(scope="module")
def router(
    tmp_path_factory: pytest.TempPathFactory, smtp: SmtpSink, sink: HttpSink
) -> Iterator[RouterProcess]:
    workdir = tmp_path_factory.mktemp("injection")
    rules = workdir / "rules"
    rules.mkdir()
    (rules / "cases.toml").write_text(RULES.replace("{base}", sink.url("").rstrip("/")))
    env = {
        "ROUTER_SMTP_HOST": smtp.host,
        "ROUTER_SMTP_PORT": str(smtp.port),
        "ROUTER_EMAIL_FROM": "router@example.com",
        "ROUTER_SECRET_BASE": sink.url("").rstrip("/"),
    }
    process = RouterProcess(workdir, rules, env=env).start()
    yield process
    process.stop()


def push(router: RouterProcess, case: str, **data: Any) -> str:
    """Push one event for `case`; its id."""
    event_id = str(uuid.uuid4())
    event = {**ENVELOPE, "id": event_id, "data": {"case": case, **data}}
    assert router.push(event).status_code == 202
    return event_id


def mail_of(smtp: SmtpSink, event_id: str) -> SmtpMessage:
    (message,) = poll(lambda: [m for m in smtp.messages if event_id.encode() in m.content])
    return message


def request_of(sink: HttpSink, event_id: str) -> HttpRequest:
    (request,) = poll(lambda: [r for r in sink.requests if r.headers.get("X-Event") == event_id])
    return request


def refused(router: RouterProcess, event_id: str, reason: str) -> None:
    """The event's one delivery is dead because `reason`, and `router test` says the same."""

    def dead() -> list[dict[str, Any]]:
        listed = router.cli("deliveries", "list", "--status", "dead", "--format", "json")
        assert listed.returncode == 0, listed.stderr
        return [job for job in json.loads(listed.stdout) if job["event_id"] == event_id]

    (job,) = poll(dead, every=POLL_EVERY)
    assert job["last_error"] == f"cannot render: {reason}"
    shown = router.cli("deliveries", "show", job["id"], "--format", "json")
    record = json.loads(shown.stdout)["record"]
    event = router.workdir / f"{event_id}.json"
    event.write_text(json.dumps({**ENVELOPE, "id": event_id, "data": record["data"]}))
    tested = router.cli("test", str(router.workdir / "rules"), str(event), "--format", "json")
    (action,) = json.loads(tested.stdout)["records"][0]["actions"]
    assert action["error"] == reason


# --- e-mail -------------------------------------------------------------------------------

ENCODED_WORD = (
    "template for subject: the value contains an encoded word (=?...?=), which is refused; "
    "non-ASCII text needs no encoding"
)


@pytest.mark.parametrize(
    ("subject", "reason"),
    [
        (f"=?utf-8?q?a=0D=0ABcc:_{ATTACKER}?=", ENCODED_WORD),
        ("=?utf-8?q?a=0D=0A=0D=0Ainjected_body_text?=", ENCODED_WORD),
        ("=?UTF-8?B?YQ0KQmNjOiBhdHRhY2tlckBldmlsLmV4YW1wbGU=?=", ENCODED_WORD),
        (f"hi\r\nBcc: {ATTACKER}", "template for subject: the value contains a line break"),
        (f"hi\u2028Bcc: {ATTACKER}", "template for subject: the value contains a line break"),
        ("hi\x00there", "template for subject: the value contains a control character"),
    ],
)
def test_subject_cannot_add_headers_or_body(
    router: RouterProcess, smtp: SmtpSink, subject: str, reason: str
) -> None:
    event_id = push(router, "mail-subject", v=subject)
    refused(router, event_id, reason)
    assert not [m for m in smtp.messages if event_id.encode() in m.content]
    assert not [m for m in smtp.messages if ATTACKER in m.rcpt_tos]


def test_a_non_ascii_subject_is_encoded_by_the_router(
    router: RouterProcess, smtp: SmtpSink
) -> None:
    subject = "Zoë: 50% off =? yes, \t“quoted”"
    message = mail_of(smtp, push(router, "mail-subject", v=subject))
    assert message.rcpt_tos == ("ops@example.com",)
    assert message.message["Subject"] == subject
    assert b"Bcc" not in message.content


@pytest.mark.parametrize(
    ("to", "reason"),
    [
        (
            f"victim@example.com, {ATTACKER}",
            "template for to[0]: it holds 2 addresses separated by commas; "
            "set address_lists = true on the action to send to a list",
        ),
        (
            f'"a@b.c" <{ATTACKER}>',
            "template for to[0]: the display name contains @, <, >, a quote or a backslash; "
            "an address is given once, in <...>",
        ),
        (
            f"victim@example.com\r\nBcc: {ATTACKER}",
            "template for to[0]: the value contains a line break",
        ),
        (
            f"=?utf-8?q?victim=40example.com?= <{ATTACKER}>",
            "template for to[0]: the value contains an encoded word (=?...?=), which is "
            "refused; non-ASCII text needs no encoding",
        ),
        (
            f"victim@example.com;{ATTACKER}",
            "template for to[0]: it is not a plain e-mail address; "
            "write local@domain, or Name <local@domain>",
        ),
    ],
)
def test_a_recipient_is_one_plain_address(
    router: RouterProcess, smtp: SmtpSink, to: str, reason: str
) -> None:
    event_id = push(router, "mail-to", v=to)
    refused(router, event_id, reason)
    assert not [m for m in smtp.messages if event_id.encode() in m.content]
    assert not [m for m in smtp.messages if ATTACKER in m.rcpt_tos]


def test_a_display_name_is_sent_for_one_address(router: RouterProcess, smtp: SmtpSink) -> None:
    message = mail_of(smtp, push(router, "mail-to", v="Marie Dupont <marie@example.be>"))
    assert message.mail_from == "router@example.com"
    assert message.rcpt_tos == ("marie@example.be",)
    (address,) = message.message["To"].addresses
    assert (address.display_name, address.addr_spec) == ("Marie Dupont", "marie@example.be")


def test_address_lists_send_to_each_address_and_bcc_stays_hidden(
    router: RouterProcess, smtp: SmtpSink
) -> None:
    event_id = push(
        router,
        "mail-lists",
        to="a@example.com, B <b@example.com>",
        cc="c@example.com",
        bcc="hidden@example.com",
    )
    message = mail_of(smtp, event_id)
    assert message.rcpt_tos == (
        "a@example.com",
        "b@example.com",
        "c@example.com",
        "hidden@example.com",
    )
    parsed = message.message
    assert [a.addr_spec for a in parsed["To"].addresses] == ["a@example.com", "b@example.com"]
    assert [a.addr_spec for a in parsed["Cc"].addresses] == ["c@example.com"]
    assert "Bcc" not in parsed
    assert b"hidden@example.com" not in message.content


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (
            {"to": f'a@example.com, "x@y.z" <{ATTACKER}>', "cc": "", "bcc": ""},
            "template for to[0]: the display name contains @, <, >, a quote or a backslash; "
            "an address is given once, in <...>",
        ),
        (
            {"to": "a@example.com", "cc": f"c@example.com\nBcc: {ATTACKER}", "bcc": ""},
            "template for cc[0]: the value contains a line break",
        ),
        (
            {"to": "a@example.com", "cc": "", "bcc": f"{ATTACKER}>, a@example.com"},
            "template for bcc[0]: it is not a plain e-mail address; "
            "write local@domain, or Name <local@domain>",
        ),
    ],
)
def test_each_address_of_a_list_is_still_checked_as_one(
    router: RouterProcess, smtp: SmtpSink, data: dict[str, str], reason: str
) -> None:
    event_id = push(router, "mail-lists", **data)
    refused(router, event_id, reason)
    assert not [m for m in smtp.messages if event_id.encode() in m.content]
    assert not [m for m in smtp.messages if ATTACKER in m.rcpt_tos]


# --- http ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "target"),
    [
        ("../../admin", "/contacts/..%2F..%2Fadmin"),
        ("%2e%2e/%2e%2e/admin", "/contacts/%252e%252e%2F%252e%252e%2Fadmin"),
        ("1?admin=true#", "/contacts/1%3Fadmin%3Dtrue%23"),
        ("..;/admin", "/contacts/..%3B%2Fadmin"),
        ("a\r\nHost: evil.example", "/contacts/a%0D%0AHost%3A%20evil.example"),
    ],
)
def test_a_path_value_stays_in_its_segment(
    router: RouterProcess, sink: HttpSink, value: str, target: str
) -> None:
    request = request_of(sink, push(router, "url-path", v=value))
    assert request.target == target
    assert request.query == ""
    assert request.path != "/admin"


def test_a_dot_segment_is_refused(router: RouterProcess, sink: HttpSink) -> None:
    event_id = push(router, "url-path", v="..")
    reason = (
        "template for url: a path segment is . or .. (perhaps percent-encoded), which is refused"
    )
    refused(router, event_id, reason)
    assert not [r for r in sink.requests if r.headers.get("X-Event") == event_id]


def test_a_query_value_stays_one_value(router: RouterProcess, sink: HttpSink) -> None:
    request = request_of(sink, push(router, "url-query", v="x&admin=true+1#f"))
    assert request.target == "/search?q=x%26admin%3Dtrue%2B1%23f&fixed=1"
    query = urlsplit(request.target).query
    assert parse_qs(query) == {"q": ["x&admin=true+1#f"], "fixed": ["1"]}


def test_a_trusted_value_is_inserted_as_written(router: RouterProcess, sink: HttpSink) -> None:
    request = request_of(sink, push(router, "url-trusted", v="reports/2025/q1.csv?v=2"))
    assert request.target == "/files/reports/2025/q1.csv?v=2"


def test_a_base_url_in_a_secret_is_trusted(router: RouterProcess, sink: HttpSink) -> None:
    request = request_of(sink, push(router, "url-secret-base", v="a/b"))
    assert request.target == "/v1/a%2Fb"


@pytest.mark.parametrize("value", [f"@{ATTACKER.split('@')[1]}/", ".evil.example/", ":1/x"])
def test_a_value_cannot_become_the_host_or_port(
    router: RouterProcess, sink: HttpSink, value: str
) -> None:
    event_id = push(router, "url-after-secret", v=value)
    refused(router, event_id, f"template for url: {AUTHORITY_PROBLEM}")
    assert not [r for r in sink.requests if r.headers.get("X-Event") == event_id]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("x\r\nX-Injected: 1", "the value contains a line break"),
        ("x\nX-Injected: 1", "the value contains a line break"),
        ("x\x00y", "the value contains a control character"),
    ],
)
def test_a_header_value_is_one_line(
    router: RouterProcess, sink: HttpSink, value: str, problem: str
) -> None:
    event_id = push(router, "header", v=value)
    refused(router, event_id, f"template for headers.X-Name: {problem}")
    assert not [r for r in sink.requests if r.headers.get("X-Event") == event_id]
    assert not [r for r in sink.requests if "X-Injected" in r.headers]


# --- router check and rule tests --------------------------------------------------------

EMAIL_ACTION = '[[rule.action]]\ntype = "email"\nsubject = "s"\ntext = "t"\n'


@pytest.mark.parametrize(
    ("action", "line", "key", "message"),
    [
        (
            'type = "http"\nurl = "https://{{ data.host }}/x"',
            7,
            "action[0].url",
            f"template: {AUTHORITY_PROBLEM}",
        ),
        (
            'type = "http"\nurl = """\nhttps://x.example/\n{{ data.v | urlencode }}"""',
            9,
            "action[0].url",
            "template: values are percent-encoded by the router; remove the urlencode filter",
        ),
        (
            'type = "http"\nurl = "https://x.example/"\nheaders = { X-A = "a\\u0007b" }',
            8,
            "action[0].headers.X-A",
            "the value contains a control character",
        ),
        ('type = "http"\nurl = "https://x.example/"\ncc = "a@x.be"', 8, "action[0].cc",
         "unknown key: only email actions have cc"),
        (f'{EMAIL_ACTION}to = "a@x.be"\ncc = 5', 11, "action[0].cc",
         "must be a string or a list of strings, not an integer"),
        (f'{EMAIL_ACTION}to = "a@x.be"\nbcc = ["b@x.be", true]', 11, "action[0].bcc[1]",
         "must be a string, not a boolean"),
        (f'{EMAIL_ACTION}to = "a@x.be"\naddress_lists = "yes"', 11, "action[0].address_lists",
         "must be true or false, not a string"),
        (f'{EMAIL_ACTION}to = "a@x.be, b@x.be"', 10, "action[0].to",
         "it holds 2 addresses separated by commas; set address_lists = true on the action "
         "to send to a list"),
        (f'{EMAIL_ACTION}to = ["a@x.be", "Ops <b@x.be"]', 10, "action[0].to[1]",
         "it is not a plain e-mail address"),
        (f'{EMAIL_ACTION}to = "a@x.be"\ncc = [\n  "c@x.be",\n  \'"a@x.be" <e@evil.example>\',\n]',
         13, "action[0].cc[1]", "the display name contains @"),
        ('type = "email"\nto = "a@x.be"\ntext = "t"\nsubject = "=?utf-8?q?x?="', 9,
         "action[0].subject", "the value contains an encoded word"),
    ],
)  # fmt: skip
def test_router_check_locates_each_mistake(
    tmp_path: Path, action: str, line: int, key: str, message: str
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    header = '[[rule]]\nname = "r"\n\n\n[[rule.action]]\n'
    if action.startswith("[[rule.action]]"):
        header = '[[rule]]\nname = "r"\n\n\n\n'
    (rules / "a.toml").write_text(header + action + "\n")
    result = load(rules)
    assert result.ruleset is None
    (diagnostic,) = result.diagnostics
    assert (diagnostic.line, diagnostic.key) == (line, key), str(diagnostic)
    assert str(diagnostic).startswith(f"{rules}/a.toml:{line}: rule 'r': {key}: {message}")


def test_router_check_accepts_lists_when_allowed_and_new_keys(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a.toml").write_text(
        '[[rule]]\nname = "r"\n'
        f'{EMAIL_ACTION}to = "a@x.be, B <b@x.be>"\ncc = "{{{{ data.cc }}}}"\n'
        'bcc = ["audit@x.be"]\naddress_lists = true\n'
        '[[rule.action]]\ntype = "http"\nurl = "https://x.example/{{ data.p | trusted }}"\n'
    )
    result = load(rules)
    assert result.diagnostics == []
    assert result.ruleset is not None
    email, http = result.ruleset.rules[0].actions
    assert isinstance(email, EmailAction) and email.address_lists
    assert isinstance(http, HttpAction)
    assert [t.source for t in email.cc] == ["{{ data.cc }}"]
    assert [t.source for t in email.bcc] == ["audit@x.be"]


RULE_TESTED = """
[[rule]]
name = "r"
[[rule.action]]
type = "email"
to = "ops@x.be"
cc = ["{{ data.cc }}"]
bcc = "audit@x.be"
subject = "s"
text = "t"

[[test]]
event = { id = "e1", tableType = "PROFILE_TABLE", operation = "CREATE", data = { cc = "c@x.be" } }
expect = ["r"]
[[test.action]]
rule = "r"
cc = %s
bcc = %s
"""


@pytest.mark.parametrize(
    ("cc", "bcc", "passed"),
    [
        ('["c@x.be"]', '"audit@x.be"', True),
        ('"c@x.be"', '["audit@x.be"]', True),
        ('["other@x.be"]', '"audit@x.be"', False),
        ('["c@x.be"]', "[]", False),
    ],
)
def test_rule_tests_compare_cc_and_bcc_like_to(
    tmp_path: Path, cc: str, bcc: str, passed: bool
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a.toml").write_text(RULE_TESTED % (cc, bcc))
    result = load(rules)
    assert result.ruleset is not None, "\n".join(map(str, result.diagnostics))
    (outcome,) = run_tests(result.ruleset, result.tests)
    assert outcome.passed == passed, outcome.failures


def test_rule_tests_refuse_cc_of_a_wrong_type(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a.toml").write_text(RULE_TESTED % ("5", '"audit@x.be"'))
    result = load(rules)
    (diagnostic,) = result.diagnostics
    assert str(diagnostic) == (
        f"{rules}/a.toml:17: test[0].action[0].cc: "
        "must be a string or a list of strings, not an integer"
    )
