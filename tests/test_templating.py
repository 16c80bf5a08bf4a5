"""Templates: compile-time checks, strict rendering, JSON safety, the sandbox and secrets."""

from __future__ import annotations

import json
import time
import tracemalloc
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from router import urls
from router.actions.email import EmailAction
from router.actions.http import HttpAction
from router.actions.log import LogAction
from router.actions.registry import render as render_action
from router.exceptions import MissingSecret, RenderError, TemplateLimitExceeded
from router.retry import RetryOverride
from router.sandbox import EnvSecrets, PlaceholderSecrets
from router.template_limits import RenderLimits
from router.templating import (
    CONTEXT_NAMES,
    TemplateProblem,
    build_context,
    compile_template,
    compile_url_template,
)

RECORD: dict[str, Any] = {
    "id": "3f2b8c1e",
    "tableType": "PROFILE_TABLE",
    "tableId": "16",
    "fields": ["emailAddress"],
    "eventType": "DATA",
    "triggerType": None,
    "operation": "CREATE",
    "_links": {"webhook": {"href": "/webhooks/v4/entity/MyEntity/webhookSubscription/58"}},
    "data": {
        "profileId": 1204,
        "emailAddress": "marie.dupont@example.be",
        "firstName": "Zoë",
        "etl.executionStatus": "WITH_ERROR",
        "nested": {"list": [1, "two", None, True], "quote": 'say "hi"'},
    },
}
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def context(secrets: Any = None, record: dict[str, Any] | None = None) -> dict[str, Any]:
    return build_context(
        RECORD if record is None else record,
        rule="crm-new-subscriber",
        delivery_id="job-1",
        secrets=PlaceholderSecrets() if secrets is None else secrets,
        now=NOW,
    )


def render(source: str, secrets: Any = None) -> str:
    return compile_template(source).render(context(secrets))


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ data.emailAddress }}", "marie.dupont@example.be"),
        ("{{ data['etl.executionStatus'] }}", "WITH_ERROR"),
        ('{{ data["etl.executionStatus"] }}', "WITH_ERROR"),
        ("{{ record.tableId }}/{{ record['operation'] }}", "16/CREATE"),
        ("{{ record._links.webhook.href }}", "/webhooks/v4/entity/MyEntity/webhookSubscription/58"),
        (
            "{{ rule.name }} {{ delivery_id }} {{ now }}",
            "crm-new-subscriber job-1 2026-01-02T03:04:05Z",
        ),
        ("{{ data.profileId + 1 }}", "1205"),
        ("{{ data.profileId * 2 }}-{{ 2 ** 3 }}-{{ '=' * 3 }}", "2408-8-==="),
        ("{{ data.firstName | upper }}", "ZOË"),
        ("{{ data.missing | default('none') }}", "none"),
        ("{% if data.missing is defined %}yes{% else %}no{% endif %}", "no"),
        ("{% for f in record.fields %}[{{ f }}]{% endfor %}", "[emailAddress]"),
        ("line\n", "line\n"),  # trailing newline kept
        ("<b>{{ data.nested.quote }}</b>", '<b>say "hi"</b>'),  # no autoescape
    ],
)
def test_renders(source: str, expected: str) -> None:
    assert render(source) == expected


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ data.nope }}", "template: 'dict object' has no attribute 'nope'"),
        ("{{ data.nested.nope }}", "template: 'dict object' has no attribute 'nope'"),
        ("{{ data['etl.nope'] }}", "template: 'dict object' has no attribute 'etl.nope'"),
        ("{{ data.nope | tojson }}", "template: 'dict object' has no attribute 'nope'"),
        ("{{ data.nope | upper }}", "template: 'dict object' has no attribute 'nope'"),
        ("{% if data.nope %}x{% endif %}", "template: 'dict object' has no attribute 'nope'"),
        ("{% for x in data.nope %}{% endfor %}", "template: 'dict object' has no attribute 'nope'"),
    ],
)
def test_undefined_is_an_error_never_empty(source: str, message: str) -> None:
    with pytest.raises(RenderError) as caught:
        render(source)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('say "hi" \\ </script>', '"say \\"hi\\" \\\\ </script>"'),
        ("Zoë 日本 €", '"Zoë 日本 €"'),
        (None, "null"),
        (True, "true"),
        (12.5, "12.5"),
        ({"a": [1, "x", None], "b": {"c": "'"}}, '{"a": [1, "x", null], "b": {"c": "\'"}}'),
        ("line\nbreak", '"line\\nbreak"'),
    ],
)
def test_tojson_emits_plain_valid_json(value: Any, expected: str) -> None:
    record = {**RECORD, "data": {"value": value}}
    source = '{"email": {{ data.value | tojson }}}'
    rendered = compile_template(source).render(context(record=record))
    assert rendered == '{"email": ' + expected + "}"
    assert json.loads(rendered) == {"email": value}


def test_tojson_of_the_whole_item_round_trips() -> None:
    assert json.loads(render("{{ data | tojson }}")) == RECORD["data"]


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ record.__class__ }}",
        "{{ data.__init__.__globals__ }}",
        "{{ data.emailAddress.__class__.__base__ }}",
        "{{ '{0.__class__}'.format(data) }}",
        "{{ data.items.__self__.__class__ }}",
        "{{ record.fields.append('x') }}",  # immutable sandbox: no mutating methods
        "{{ data.update({'a': 1}) }}",
        "{{ {}.fromkeys(record.fields) }}",  # class methods of built-in types
        "{{ data.emailAddress.encode() }}",  # methods outside the short list for text
        "{{ data.profileId.to_bytes(8, 'big') }}",
    ],
)
def test_sandbox_refuses_escapes(source: str) -> None:
    with pytest.raises(RenderError) as caught:
        render(source)
    assert "unsafe" in str(caught.value)
    assert RECORD["fields"] == ["emailAddress"]


@pytest.mark.parametrize(
    ("source", "refused_name"),
    [
        ("{{ cycler.__init__.__globals__ }}", "cycler"),
        ("{{ joiner.__init__.__globals__.os }}", "joiner"),
        ("{{ lipsum.__globals__ }}", "lipsum"),
        ("{{ namespace }}", "namespace"),
        ("{{ range(10) }}", "range"),
        ("{{ config }}", "config"),
        ("{{ os.environ }}", "os"),
        ("{{ environ }}", "environ"),
        ("{{ self.__init__.__globals__ }}", "self"),
    ],
)
def test_jinja_globals_and_other_names_are_not_reachable(source: str, refused_name: str) -> None:
    with pytest.raises(TemplateProblem, match=f"name '{refused_name}' is not available"):
        compile_template(source)


def test_environment_is_unreachable_from_templates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_SECRET_LEAK", "env-value-1")
    monkeypatch.setenv("LEAK", "env-value-2")
    secrets = EnvSecrets({"TOKEN": "t0ken"})
    attempts = [
        "{{ secrets.LEAK }}",
        "{{ secrets['ROUTER_SECRET_LEAK'] }}",
        "{{ secrets.ROUTER_SECRET_LEAK }}",
        "{{ record.LEAK }}",
        "{{ data.LEAK }}",
        "{{ rule.LEAK }}",
        "{{ secrets.TOKEN.__class__ }}",
        "{{ secrets.keys }}",
        "{{ secrets.items() }}",
        "{{ secrets.get('LEAK') }}",
        "{{ secrets._values }}",
        "{{ secrets.__dict__ }}",
    ]
    for source in attempts:
        with pytest.raises(RenderError) as caught:
            render(source, secrets)
        assert "env-value" not in str(caught.value)
        assert "t0ken" not in str(caught.value)


@pytest.mark.parametrize(
    "source",
    [
        "{{ secrets }}",
        "{{ secrets | tojson }}",
        "{% for name in secrets %}{{ name }}{% endfor %}",
        "{% set s = secrets %}{{ s.TOKEN }}",
        "{{ secrets[data.emailAddress] }}",
        # Names that Jinja folds into one constant before any check sees them.
        '{{ secrets["TO" ~ "K"] }}',
        '{{ secrets["TO" "K"] }}',
        '{{ secrets[("TOK")] }}',
        "{{ secrets['TOK' | upper] }}",
        "{% set secrets = data %}{{ secrets.emailAddress }}",
        "{% for secrets in [data] %}{{ secrets.x }}{% endfor %}",
    ],
)
def test_secrets_can_only_be_read_by_literal_name(source: str) -> None:
    with pytest.raises(TemplateProblem) as caught:
        compile_template(source)
    assert "secrets.NAME" in caught.value.message


def test_a_key_named_secrets_is_not_the_secrets() -> None:
    template = compile_template("{{ data.secrets }}{{ data['secrets'] }}")
    assert template.secrets == frozenset()
    record = {**RECORD, "data": {"secrets": "s"}}
    assert template.render(context(record=record)) == "ss"


def test_secrets_via_env_secrets() -> None:
    template = compile_template("Bearer {{ secrets.CRM_TOKEN }} {{ secrets['OTHER'] }}")
    assert template.secrets == frozenset({"CRM_TOKEN", "OTHER"})
    assert template.names == frozenset({"secrets"})
    secrets = EnvSecrets({"CRM_TOKEN": "abc", "OTHER": "def"})
    assert template.render(context(secrets)) == "Bearer abc def"
    assert "abc" not in repr(secrets)


def test_missing_secret_names_the_variable_not_a_value() -> None:
    template = compile_template("{{ secrets.CRM_TOKEN }}")
    with pytest.raises(RenderError) as caught:
        template.render(context(EnvSecrets({"OTHER": "s3cr3t"})), where="headers.Authorization")
    assert str(caught.value) == (
        "template for headers.Authorization: secret CRM_TOKEN is not set (ROUTER_SECRET_CRM_TOKEN)"
    )


@pytest.mark.parametrize(
    "source",
    [
        "{{ data[secrets.KEY] }}",
        "{{ data[secrets.KEY | upper] }}",
        "{{ data[secrets.KEY[1:]] }}",
        "{{ data[secrets.KEY | reverse | join] }}",
        "{{ data[secrets.KEY ~ 'x'] }}",
    ],
)
def test_render_errors_of_templates_that_read_secrets_hold_no_detail(source: str) -> None:
    value = "s3cr3t-Value\twith  spaces"
    template = compile_template(source)
    with pytest.raises(RenderError) as caught:
        template.render(context(EnvSecrets({"KEY": value})))
    message = str(caught.value)
    assert "details withheld" in message
    for fragment in ("s3cr3t", "S3CR3T", "3tr3cs", "eulaV", "spaces"):
        assert fragment.lower() not in message.lower()


def test_a_missing_secret_is_named_not_valued() -> None:
    template = compile_template("Bearer {{ secrets.OTHER }}")
    with pytest.raises(MissingSecret, match="secret OTHER is not set"):
        template.render(context(EnvSecrets({"KEY": "s3cr3t"})))


def test_placeholder_secrets_never_give_a_value() -> None:
    assert render("{{ secrets.CRM_TOKEN }}|{{ secrets['X'] }}") == "<secret CRM_TOKEN>|<secret X>"
    assert render("{{ secrets.keys }}") == "<secret keys>"


def test_a_plain_mapping_of_secrets_is_wrapped() -> None:
    ctx = build_context(RECORD, rule="r", delivery_id="d", secrets={"A": "1"})
    assert isinstance(ctx["secrets"], EnvSecrets)
    assert compile_template("{{ secrets.A }}").render(ctx) == "1"
    with pytest.raises(RenderError):
        compile_template("{{ secrets.items() }}").render(ctx)


@pytest.mark.parametrize(
    ("source", "lineno", "message"),
    [
        (
            "{{ foo }}",
            1,
            "name 'foo' is not available in templates; use one of record, data, rule, secrets, "
            "now, delivery_id; the event's fields are under data, e.g. data.foo",
        ),
        (
            "ok\n{{ dta.x }}",
            2,
            "name 'dta' is not available in templates; use one of record, data, rule, secrets, "
            "now, delivery_id; did you mean 'data'?",
        ),
        (
            "{{ range(3) }}",
            1,
            "name 'range' is not available in templates; use one of record, data, rule, secrets, "
            "now, delivery_id; Jinja's globals such as range are removed here",
        ),
        ("a\nb\n{{ data.x | upperr }}", 3, "unknown filter 'upperr'; did you mean 'upper'?"),
        ("{% if data %}{{ data | nosuchfilter }}{% endif %}", 1, "unknown filter 'nosuchfilter'"),
        ("{% if data is nottest %}{% endif %}", 1, "unknown test 'nottest'; did you mean 'test'?"),
        ("x\n{{ data.x ", 2, "unexpected end of template, expected 'end of print statement'."),
        ("{% if data %}", 1, "Unexpected end of template. Jinja was looking for"),
        ("{% include 'other' %}", 1, "include, import and extends are not available in templates"),
        ("{% extends 'base' %}", 1, "include, import and extends are not available in templates"),
        ("{{ data | attr('x') }}", 1, "unknown filter 'attr'"),
        ("{{ [1] | batch(2) }}", 1, "unknown filter 'batch'"),
        ("{{ data | pprint }}", 1, "unknown filter 'pprint'"),
        ("{% macro m() %}x{% endmacro %}", 1, "macro and call tags are not available in templates"),
        (
            "{% call data.x() %}y{% endcall %}",
            1,
            "macro and call tags are not available in templates",
        ),
        ("a\n{% block b %}{% endblock %}", 2, "block tags are not available in templates"),
        (
            "{% for x in record.fields recursive %}{{ loop(x) }}{% endfor %}",
            1,
            "recursive loops are not available in templates",
        ),
        (
            "{% autoescape true %}{{ data }}{% endautoescape %}",
            1,
            "autoescape tags are not available in templates",
        ),
        ("{{ " + "(" * 300 + "1" + ")" * 300 + " }}", 1, "the template nests too deeply"),
        ("{{ " + "9" * 5000 + " }}", 1, "a number in the template has too many digits"),
    ],
)
def test_compile_problems(source: str, lineno: int, message: str) -> None:
    with pytest.raises(TemplateProblem) as caught:
        compile_template(source)
    assert caught.value.message.startswith(message)
    assert "\n" not in caught.value.message
    assert caught.value.lineno == lineno


def test_names_and_locals() -> None:
    template = compile_template(
        "{% set who = data.emailAddress %}{% for f in record.fields %}{{ loop.index }}{{ f }}"
        "{% endfor %}{{ who }} {{ now }}"
    )
    assert template.names == frozenset({"data", "record", "now"})
    assert template.names <= CONTEXT_NAMES
    assert template.secrets == frozenset()


def test_build_context() -> None:
    secrets = PlaceholderSecrets()
    ctx = build_context(
        RECORD, rule="r1", delivery_id="d1", secrets=secrets, now=NOW, enrichments={}
    )
    assert ctx == {
        "record": RECORD,
        "data": RECORD["data"],
        "rule": {"name": "r1"},
        "secrets": secrets,
        "now": "2026-01-02T03:04:05Z",
        "delivery_id": "d1",
    }
    brussels = timezone(timedelta(hours=1))
    later = build_context(
        RECORD,
        rule="r",
        delivery_id="d",
        secrets=secrets,
        now=datetime(2026, 1, 2, 4, 4, 5, 9, tzinfo=brussels),
    )
    assert later["now"] == "2026-01-02T03:04:05Z"
    current = build_context(RECORD, rule="r", delivery_id="d", secrets=secrets)["now"]
    parsed = datetime.strptime(current, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - parsed) < timedelta(minutes=1)


def http(body: str | None, **headers: str) -> HttpAction:
    return HttpAction(
        spec={},
        method="PUT",
        url=compile_template("https://crm.example.com/contacts/{{ data.profileId }}"),
        headers=tuple((name, compile_template(value)) for name, value in headers.items()),
        body=None if body is None else compile_template(body),
        timeout=10.0,
        retry=RetryOverride(),
    )


def test_render_http_action() -> None:
    action = http(
        '{"email": {{ data.emailAddress | tojson }}, "source": "actito"}',
        Authorization="Bearer {{ secrets.CRM_TOKEN }}",
        **{"X-Rule": "{{ rule.name }}"},
    )
    assert render_action(action, context()) == {
        "type": "http",
        "method": "PUT",
        "url": "https://crm.example.com/contacts/1204",
        "headers": {"Authorization": "Bearer <secret CRM_TOKEN>", "X-Rule": "crm-new-subscriber"},
        "body": '{"email": "marie.dupont@example.be", "source": "actito"}',
    }


def test_http_default_body_is_the_item_as_json() -> None:
    rendered = render_action(http(None), context())
    assert json.loads(rendered["body"]) == RECORD["data"]
    assert "Zoë" in rendered["body"]


def test_http_render_error_names_the_key() -> None:
    with pytest.raises(RenderError) as caught:
        render_action(http("{{ data.nope }}"), context())
    assert str(caught.value) == "template for body: 'dict object' has no attribute 'nope'"
    with pytest.raises(RenderError) as caught:
        render_action(http(None, Authorization="{{ secrets.X }}"), context(EnvSecrets({})))
    assert str(caught.value) == (
        "template for headers.Authorization: secret X is not set (ROUTER_SECRET_X)"
    )


def test_header_values_cannot_carry_line_breaks() -> None:
    record = {**RECORD, "data": {**RECORD["data"], "firstName": "a\r\nX-Injected: 1"}}
    with pytest.raises(RenderError) as caught:
        render_action(http(None, **{"X-Name": "{{ data.firstName }}"}), context(record=record))
    assert str(caught.value) == "template for headers.X-Name: the value contains a line break"


def test_render_email_action() -> None:
    action = EmailAction(
        spec={},
        to=(compile_template("ops@example.com"), compile_template("{{ data.emailAddress }}")),
        subject=compile_template("New subscriber {{ data.emailAddress }}"),
        text=compile_template("Profile {{ data.profileId }} subscribed.\n"),
        html=None,
        retry=RetryOverride(),
    )
    assert render_action(action, context()) == {
        "type": "email",
        "to": ["ops@example.com", "marie.dupont@example.be"],
        "subject": "New subscriber marie.dupont@example.be",
        "text": "Profile 1204 subscribed.\n",
        "html": None,
    }
    with_html = EmailAction(
        spec={},
        to=(compile_template("ops@example.com"),),
        subject=compile_template("s"),
        text=None,
        html=compile_template("<p>{{ data.firstName }}</p>"),
        retry=RetryOverride(),
    )
    rendered = render_action(with_html, context())
    assert (rendered["text"], rendered["html"]) == (None, "<p>Zoë</p>")


def test_render_log_action() -> None:
    action = LogAction(
        spec={},
        level="warning",
        message=compile_template("{{ rule.name }} matched {{ data.profileId }}"),
        retry=RetryOverride(),
    )
    assert render_action(action, context()) == {
        "type": "log",
        "level": "warning",
        "message": "crm-new-subscriber matched 1204",
    }


# --- what render_action checks: url, headers, e-mail -------------------------------------

ATTACKER = "attacker@evil.example"


def email(*to: str, address_lists: bool = False, **templates: Any) -> EmailAction:
    compiled = {
        key: tuple(compile_template(source) for source in value)
        for key, value in templates.items()
        if key in ("cc", "bcc")
    }
    return EmailAction(
        spec={},
        to=tuple(compile_template(source) for source in to),
        subject=compile_template(templates.get("subject", "s")),
        text=compile_template("t"),
        html=None,
        retry=RetryOverride(),
        address_lists=address_lists,
        **compiled,
    )


def with_data(**data: Any) -> dict[str, Any]:
    return {**RECORD, "data": {**RECORD["data"], **data}}


def url_action(url: str) -> HttpAction:
    return HttpAction(
        spec={},
        method="POST",
        url=compile_url_template(url),
        headers=(),
        body=None,
        timeout=10.0,
        retry=RetryOverride(),
    )


def test_render_action_encodes_url_values() -> None:
    action = url_action("https://crm.example.com/contacts/{{ data.v }}?q={{ data.v }}")
    rendered = render_action(action, context(record=with_data(v="../admin?x=1#")))
    assert rendered["url"] == (
        "https://crm.example.com/contacts/..%2Fadmin%3Fx%3D1%23?q=..%2Fadmin%3Fx%3D1%23"
    )


@pytest.mark.parametrize(
    ("url", "value", "message"),
    [
        (
            "https://x.example/{{ data.v }}",
            "..",
            "a path segment is . or .. (perhaps percent-encoded), which is refused",
        ),
        ("{{ secrets.BASE }}{{ data.v }}", "evil.example", urls.AUTHORITY_PROBLEM),
    ],
)
def test_render_action_refuses_a_url_without_repeating_the_value(
    url: str, value: str, message: str
) -> None:
    for secrets in (None, EnvSecrets({"BASE": "https://x.example"})):  # dry run and delivery
        with pytest.raises(RenderError) as caught:
            render_action(url_action(url), context(secrets, record=with_data(v=value)))
        assert str(caught.value) == f"template for url: {message}"


def test_header_values_cannot_carry_control_characters() -> None:
    record = with_data(firstName="a\x00b")
    with pytest.raises(RenderError) as caught:
        render_action(http(None, **{"X-Name": "{{ data.firstName }}"}), context(record=record))
    assert str(caught.value) == (
        "template for headers.X-Name: the value contains a control character"
    )
    tab = render_action(http(None, **{"X-Name": "a\t{{ rule.name }}"}), context())
    assert tab["headers"]["X-Name"] == "a\tcrm-new-subscriber"


def test_render_email_with_cc_bcc_and_address_lists() -> None:
    action = email(
        "{{ data.to }}",
        cc=["{{ data.cc }}", "{{ data.none }}"],
        bcc=["audit@example.com"],
        address_lists=True,
    )
    record = with_data(to="a@example.com, B <b@example.com>", cc="c@example.com", none="")
    assert render_action(action, context(record=record)) == {
        "type": "email",
        "to": ["a@example.com", "B <b@example.com>"],
        "cc": ["c@example.com"],
        "bcc": ["audit@example.com"],
        "subject": "s",
        "text": "t",
        "html": None,
    }


@pytest.mark.parametrize(
    ("action", "data", "message"),
    [
        (
            email("{{ data.v }}"),
            f"victim@example.com, {ATTACKER}",
            "template for to[0]: it holds 2 addresses separated by commas; "
            "set address_lists = true on the action to send to a list",
        ),
        (
            email("ops@example.com", cc=["{{ data.v }}"]),
            f'"a@b.c" <{ATTACKER}>',
            "template for cc[0]: the display name contains @, <, >, a quote or a backslash; "
            "an address is given once, in <...>",
        ),
        (
            email("ops@example.com", bcc=["x@example.com", "{{ data.v }}"], address_lists=True),
            f"ok@example.com, {ATTACKER}>",
            "template for bcc[1]: it is not a plain e-mail address; "
            "write local@domain, or Name <local@domain>",
        ),
        (
            email("ops@example.com", subject="{{ data.v }}"),
            f"=?utf-8?q?a=0D=0ABcc:_{ATTACKER}?=",
            "template for subject: the value contains an encoded word (=?...?=), which is "
            "refused; non-ASCII text needs no encoding",
        ),
        (
            email("ops@example.com", subject="New {{ data.v }}"),
            f"x\r\nBcc: {ATTACKER}",
            "template for subject: the value contains a line break",
        ),
        (
            email("{{ data.v }}"),
            "  ",
            "template for to: no recipient address; every entry rendered empty",
        ),
    ],
)
def test_render_email_refuses_with_the_key_not_the_value(
    action: EmailAction, data: str, message: str
) -> None:
    with pytest.raises(RenderError) as caught:
        render_action(action, context(EnvSecrets({}), record=with_data(v=data)))
    assert str(caught.value) == message
    with pytest.raises(RenderError) as dry:
        render_action(action, context(record=with_data(v=data)))
    assert str(dry.value) == message


def test_a_dry_run_keeps_secret_recipients_unchecked() -> None:
    action = email("{{ secrets.OPS }}", cc=["{{ secrets.TEAM }}@example.com"])
    rendered = render_action(action, context())
    assert (rendered["to"], rendered["cc"]) == (["<secret OPS>"], ["<secret TEAM>@example.com"])
    delivered = render_action(action, context(EnvSecrets({"OPS": "ops@x.be", "TEAM": "t"})))
    assert (delivered["to"], delivered["cc"]) == (["ops@x.be"], ["t@example.com"])
    with pytest.raises(RenderError, match=r"^template for to\[0\]: it holds 2 addresses"):
        render_action(action, context(EnvSecrets({"OPS": "a@x.be, b@x.be", "TEAM": "t"})))


# ---------------------------------------------------------------- limits

SPIN = "{% set s = 'x' * 100000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ '-' * 3 }}{{ [1, 2] * 2 }}{{ (1, 2) + (3,) }}", "---[1, 2, 1, 2](1, 2, 3)"),
        ("{{ '%5s|%-3d|%.2f' % ('ab', 7, 1.5) }}{{ '%(a)s' % {'a': 'x'} }}", "   ab|7  |1.50x"),
        ("{{ '{:>5}|{!r}'.format('ab', 'c') }}", "   ab|'c'"),
        ("{{ '{a}-{b}'.format_map({'a': 1, 'b': 2}) }}", "1-2"),
        ("{{ 'ab' | center(6) }}|{{ 'x\ny' | indent(2, first=true) }}", "  ab  |  x\n  y"),
        ("{{ record.fields | join(', ') }}|{{ ', '.join(['a', 'b']) }}", "emailAddress|a, b"),
        ("{{ data.emailAddress | replace('@', ' at ') }}", "marie.dupont at example.be"),
        ("{{ data.emailAddress.replace('.', '_', 1) }}", "marie_dupont@example.be"),
        ("{{ 'a b c' | wordwrap(3) }}|{{ '%s-%s' | format('a', 'b') }}", "a b\nc|a-b"),
        ("{% for k, v in {'b': 1, 'a': 2} | dictsort %}{{ k }}={{ v }};{% endfor %}", "a=2;b=1;"),
        (
            "{% set x %}{{ data.profileId }}!{% endset %}{{ x }}"
            "{% filter upper %}ab{% endfilter %}",
            "1204!AB",
        ),
        (
            "{% for f in ['a', 'b'] %}{{ loop.index }}/{{ loop.length }}"
            "{% if loop.last %}.{% endif %}{% else %}none{% endfor %}",
            "1/22/2.",
        ),
        ("{% for f in [] %}x{% else %}none{% endfor %}", "none"),
        ("{{ data.nested.list | select('string') | list }}", "['two']"),
        (
            "{{ [3, 1, 2] | sort | join }}|{{ [1, 2] | sum }}|{{ data.get('profileId') }}",
            "123|3|1204",
        ),
        ("{{ 9 ** 3 }} {{ 2 ** 100 }}", "729 1267650600228229401496703205376"),
        ("{{ 'ab'.upper().center(4, '*') }}|{{ '7'.zfill(3) }}", "*AB*|007"),
        ("{{ data.emailAddress.split('@') | last }}", "example.be"),
        ("{{ {'a': [1, 2]} | tojson }}|{{ data.firstName ~ '!' }}", '{"a": [1, 2]}|Zoë!'),
        (
            "{{ record.fields | map('upper') | join }}|{{ data.keys() | list | length }}",
            "EMAILADDRESS|5",
        ),
    ],
)
def test_everyday_templates_pass_the_checks(source: str, expected: str) -> None:
    assert render(source) == expected


def test_a_rendered_value_is_limited_in_utf8_bytes() -> None:
    small = RenderLimits(max_bytes=1024)
    with small.applied():
        assert render("{{ 'x' * 1024 }}") == "x" * 1024
        assert render("{{ 'é' * 512 }}") == "é" * 512  # 1024 bytes
    for source in ("{{ 'x' * 1000 }}{{ 'x' * 25 }}", "{{ 'é' * 513 }}"):
        with small.applied(), pytest.raises(TemplateLimitExceeded) as caught:
            render(source)
        assert str(caught.value) == (
            "template: the rendered value exceeds the limit of 1024 bytes "
            "(ROUTER_TEMPLATE_MAX_BYTES); make it smaller or raise the limit"
        )


def test_the_templates_of_one_action_share_one_deadline() -> None:
    timeout = "template: rendering took longer than 0.2 s (ROUTER_TEMPLATE_TIMEOUT); simplify "
    limits = RenderLimits(timeout=0.2)
    with limits.applied():
        with pytest.raises(TemplateLimitExceeded, match=r"^template: rendering took longer"):
            render(SPIN)
        with pytest.raises(TemplateLimitExceeded) as caught:
            render("{{ data.profileId }}")  # the action's time is spent
    assert str(caught.value) == timeout + "the template or raise the limit"
    with limits.applied():
        assert render("{{ data.profileId }}") == "1204"  # the next action starts afresh
    assert render("{{ data.profileId }}") == "1204"  # outside a block: default limits


def test_the_limit_counts_the_render_s_cpu_time_not_the_clock() -> None:
    """On a busy machine a render waits for the CPU or the GIL: that wait is not the template's
    doing, and a one-line template must not die of it. A spinning one still does."""
    limits = RenderLimits(timeout=0.2)
    with limits.applied():
        time.sleep(0.3)  # the thread kept waiting, spending no CPU: the clock is past the limit
        assert render("{{ data.profileId }}") == "1204"
        with pytest.raises(TemplateLimitExceeded, match=r"^template: rendering took longer"):
            render(SPIN)
    started = time.thread_time()
    with limits.applied():
        time.sleep(0.3)
        with pytest.raises(TemplateLimitExceeded):
            render(SPIN)  # stopped once its own CPU time is over the limit
    assert time.thread_time() - started < 0.2 * 3


def test_a_limit_error_is_shown_even_for_a_template_that_reads_secrets() -> None:
    # Its message is the router's own sentence: nothing of the template's values is in it.
    template = compile_template("{{ secrets.KEY * 99999999 }}")
    with pytest.raises(TemplateLimitExceeded) as caught:
        template.render(context(EnvSecrets({"KEY": "s3cr3t"})), where="body")
    assert str(caught.value) == (
        "template for body: repeating a text would exceed the limit of 1048576 characters "
        "(ROUTER_TEMPLATE_MAX_BYTES); make it smaller or raise the limit"
    )


def test_render_action_reports_the_key_over_a_limit() -> None:
    with RenderLimits(timeout=0.2).applied(), pytest.raises(TemplateLimitExceeded) as caught:
        render_action(http(SPIN), context())
    assert str(caught.value).startswith("template for body: rendering took longer than 0.2 s")


def test_the_templates_of_one_action_share_one_total_of_what_they_build() -> None:
    # Each header is within the limit; forty of them are not, together. Each counts three
    # million characters (built, written, kept): the twelfth goes over 32 MiB.
    action = http(None, **{f"X-{n}": "{{ 'x' * 1000000 }}" for n in range(40)})
    with RenderLimits().applied(), pytest.raises(TemplateLimitExceeded) as caught:
        render_action(action, context())
    assert str(caught.value) == (
        "template for headers.X-11: the templates of this action build more than 33554432 "
        "characters in all (32 times ROUTER_TEMPLATE_MAX_BYTES); make them build less or raise "
        "the limit"
    )


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'x' | center(200000000) }}",
        "{{ '%200000000s' % 'x' }}",
        "{{ 'x' | indent(200000000) }}",
        "{% if ('x' | center(200000000)) %}{% endif %}",
    ],
)
def test_nothing_is_evaluated_while_compiling(source: str) -> None:
    # Jinja folds constant expressions (filters included) at compile time: these would each
    # allocate 200 MB in `router check` before any limit could apply.
    tracemalloc.start()
    try:
        template = compile_template(source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10_000_000
    with pytest.raises(TemplateLimitExceeded):
        template.render(context())


def test_a_render_error_quotes_no_more_than_a_few_hundred_characters() -> None:
    # The message names the missing key, here a text of the event: it is cut, not stored whole.
    record = {**RECORD, "data": {"text": "x" * 100000}}
    with pytest.raises(RenderError) as caught:
        compile_template("{{ data[data.text] }}").render(context(record=record))
    message = str(caught.value)
    assert message.startswith("template: 'dict object' has no attribute 'xxx")
    assert message.endswith("x…") and len(message) == len("template: ") + 300
