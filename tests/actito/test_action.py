"""The `actito` action (write-back) and the `enrich` key every action has: what `router check`
refuses, what `router test` shows (the request it would make; a placeholder profile), and
deliveries against the fake ACTITO."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from router.actions.actito import ActitoDeliverer
from router.actions.base import delivered
from router.actions.registry import compile_action, enrichments_of, parse_action, render
from router.actito.client import ActitoClient
from router.checks import Problems
from router.cli import main
from router.exceptions import GiveUp, RenderError
from router.sandbox import PlaceholderSecrets
from router.templating import build_context
from tests.actito.fake import FakeActito
from tests.actito.test_client import config

RECORD = {
    "id": "e-1",
    "tableType": "PROFILE_TABLE",
    "tableId": "16",
    "operation": "UPDATE",
    "data": {"profileId": 1204, "LoyaltyTier": "Gold"},
}
UPDATE = {
    "type": "actito",
    "do": "update_profile",
    "table": "{{ record.tableId }}",
    "profile": "{{ data.profileId }}",
    "attributes": {"loyaltyTier": "{{ data.LoyaltyTier }}", "points": 10, "vip": True},
}


def problems(spec: dict[str, Any]) -> list[str]:
    found = Problems()
    compile_action(found, (), spec)
    return found.lines


def rendered(spec: dict[str, Any], record: dict[str, Any] = RECORD) -> dict[str, Any]:
    context = build_context(record, rule="r", delivery_id="d", secrets=PlaceholderSecrets())
    return render(parse_action(spec), context)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            UPDATE,
            {
                "method": "PUT",
                "path": "table/16/profile/1204",
                "body": {
                    "attributes": [
                        {"name": "loyaltyTier", "value": "Gold"},
                        {"name": "points", "value": 10},
                        {"name": "vip", "value": True},
                    ]
                },
            },
        ),
        (
            {
                "type": "actito",
                "do": "subscribe",
                "table": "Customers",
                "profile": "{{ data.profileId }}",
                "subscription": "News letter/EN",
            },
            {
                "method": "POST",
                "path": "table/Customers/profile/1204/subscription/News%20letter%2FEN",
                "body": None,
            },
        ),
        (
            {
                "type": "actito",
                "do": "unsubscribe",
                "table": "16",
                "profile": " {{ data.profileId }} ",
                "subscription": "Newsletter",
            },
            {
                "method": "DELETE",
                "path": "table/16/profile/1204/subscription/Newsletter",
                "body": None,
            },
        ),
        (
            {
                "type": "actito",
                "do": "create_record",
                "table": "loyalty-log",
                "properties": {
                    "profileId": "{{ data.profileId }}",
                    "tier": "{{ data.LoyaltyTier }}",
                },
            },
            {
                "method": "POST",
                "path": "customTable/loyalty-log/record",
                "body": {
                    "properties": [
                        {"name": "profileId", "value": "1204"},
                        {"name": "tier", "value": "Gold"},
                    ]
                },
            },
        ),
    ],
    ids=["update_profile", "subscribe", "unsubscribe", "create_record"],
)
def test_each_write_renders_the_request_it_makes(
    spec: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert problems(spec) == []
    result = rendered(spec)
    body = result["body"]
    assert {**result, "body": None if body is None else json.loads(body)} == {
        "type": "actito",
        **expected,
    }


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "actito", "table": "16"}, "do: is missing; say what to write"),
        (
            {**UPDATE, "do": "update_profiles"},
            "do: 'update_profiles' is not a known write; did you mean 'update_profile'?",
        ),
        ({**UPDATE, "table": None} | {"table": 16}, "table: must be a string, not an integer"),
        (
            {k: v for k, v in UPDATE.items() if k != "profile"},
            'profile: is missing; give the profile id, e.g. profile = "{{ data.profileId }}"',
        ),
        ({**UPDATE, "subscription": "News"}, 'subscription: is not used by do = "update_profile"'),
        ({**UPDATE, "attributes": {}}, "attributes: is an empty table; give at least one value"),
        ({**UPDATE, "attributes": {"a": [1]}}, "attributes.a: must be a template, a number"),
        ({**UPDATE, "attributes": {"a": float("inf")}}, "attributes.a: must be a finite number"),
        ({**UPDATE, "attributes": {"a": "{{ emailAddress }}"}}, "data.emailAddress"),
        (
            {"type": "actito", "do": "create_record", "table": "t", "profile": "1"},
            "properties: is missing",
        ),
        ({**UPDATE, "timeout": 0}, "timeout: 0 is out of range"),
    ],
)
def test_check_refuses_a_wrong_table_saying_how_to_fix_it(
    spec: dict[str, Any], message: str
) -> None:
    lines = problems(spec)
    assert any(message in line for line in lines), lines


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ("abc", "template for profile: the rendered value is not a profile id"),
        ("{{ data.missing }}", "template for profile:"),
        ("1" * 19, "not a profile id"),
    ],
)
def test_a_value_that_is_no_profile_id_is_a_render_error(profile: str, message: str) -> None:
    with pytest.raises(RenderError, match=message):
        rendered({**UPDATE, "profile": profile})


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("{{ data.nothing | default('') }}", "the rendered value is empty"),
        ("{{ 'x' * 201 }}", "the rendered value is over 200 characters"),
        ("{{ 'a\tb' }}", "the rendered value holds a control character"),
    ],
)
def test_a_table_that_is_no_name_is_a_render_error(table: str, message: str) -> None:
    with pytest.raises(RenderError, match=f"template for table: {message}"):
        rendered({**UPDATE, "table": table})


# ---------------------------------------------------------------- enrich


def test_profile_is_a_name_only_for_an_action_that_fetches_it() -> None:
    log = {"type": "log", "message": "{{ profile.attributes.emailAddress }}"}
    assert problems(log) == [
        "message: template: name 'profile' is available only to an action that fetches it; "
        'add enrich = ["profile"] to the action'
    ]
    assert problems({**log, "enrich": ["profile"]}) == []
    assert enrichments_of(parse_action({**log, "enrich": ["profile"]})) == ("profile",)
    assert enrichments_of(parse_action({"type": "log", "message": "x"})) == ()


@pytest.mark.parametrize(
    ("enrich", "message"),
    [
        ("profile", 'enrich: must be a list such as ["profile"], not a string'),
        ([], "enrich: is an empty list; remove the key to fetch nothing"),
        (
            ["profiles"],
            "enrich[0]: 'profiles' is not a known thing to fetch; did you mean 'profile'?",
        ),
        (["profile", "profile"], "enrich[1]: 'profile' is listed twice"),
        ([3], "enrich[0]: must be a string, not an integer"),
    ],
)
def test_enrich_is_checked(enrich: Any, message: str) -> None:
    lines = problems({"type": "log", "message": "x", "enrich": enrich})
    assert any(line.startswith(message) for line in lines), lines


def test_the_enrichments_are_known_alike_to_the_checks_templates_and_worker() -> None:
    from router.actions.base import ENRICHMENTS
    from router.actions.registry import FETCHED_FROM
    from router.templating import ENRICHMENT_NAMES

    assert set(ENRICHMENTS) == set(ENRICHMENT_NAMES) == set(FETCHED_FROM) == {"profile"}


def test_every_action_type_may_enrich() -> None:
    http = {
        "type": "http",
        "url": "https://crm.example.com/c/{{ profile.attributes.customerId }}",
        "body": "{{ profile.attributes | tojson }}",
        "enrich": ["profile"],
    }
    assert problems(http) == []
    # What a preview shows: placeholders, never a fetch.
    assert rendered(http)["url"] == (
        "https://crm.example.com/c/%3Cprofile%20attributes.customerId%3E"
    )
    assert rendered(http)["body"] == "{}"
    writes = {**UPDATE, "attributes": {"tier": "{{ profile.segmentations.Tier }}"}}
    assert problems({**writes, "enrich": ["profile"]}) == []


RULES = """
[[rule]]
name = "gold-to-crm"
[rule.match]
tableType = "PROFILE_TABLE"
operation = "UPDATE"
[[rule.action]]
type = "email"
to = "{{ profile.attributes.emailAddress }}"
subject = "Welcome to {{ data.LoyaltyTier }}, {{ profile.attributes.firstName }}"
text = "{% if profile.subscriptions.Newsletter %}subscribed{% endif %}"
enrich = ["profile"]

[[rule.action]]
type = "actito"
do = "update_profile"
table = "{{ record.tableId }}"
profile = "{{ data.profileId }}"
attributes = { loyaltyTier = "{{ data.LoyaltyTier }}", synced = true }

[[test]]
name = "the write-back request"
expect = ["gold-to-crm"]
[test.event]
tableType = "PROFILE_TABLE"
tableId = "16"
operation = "UPDATE"
data = { profileId = 1204, LoyaltyTier = "Gold" }

[[test.action]]
rule = "gold-to-crm"
action = 1
method = "PUT"
path = "table/16/profile/1204"
body_json = { attributes = [
  { name = "loyaltyTier", value = "Gold" },
  { name = "synced", value = true },
] }

[[test.action]]
rule = "gold-to-crm"
action = 0
subject = "Welcome to Gold, <profile attributes.firstName>"
"""


def test_router_test_shows_the_request_and_a_placeholder_profile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "r.toml").write_text(RULES)
    event = tmp_path / "event.json"
    event.write_text(json.dumps(RECORD))
    assert main(["check", str(rules)]) == 0
    capsys.readouterr()
    assert main(["test", str(rules)]) == 0, capsys.readouterr().out
    capsys.readouterr()
    assert main(["test", str(rules), str(event)]) == 0
    out = capsys.readouterr().out
    assert "actito PUT /v4/entity/<ROUTER_ACTITO_ENTITY>/table/16/profile/1204" in out
    assert '{"attributes": [{"name": "loyaltyTier", "value": "Gold"}' in out
    assert "<profile attributes.emailAddress>" in out
    assert main(["test", "--format", "json", str(rules), str(event)]) == 0
    email, write = json.loads(capsys.readouterr().out)["records"][0]["actions"]
    assert email["to"] == ["<profile attributes.emailAddress>"]
    assert email["text"] == "subscribed"
    assert (write["method"], write["path"]) == ("PUT", "table/16/profile/1204")


# ---------------------------------------------------------------- deliveries


def deliver(actito: FakeActito, spec: dict[str, Any], record: dict[str, Any] = RECORD) -> Any:
    async def scenario() -> Any:
        deliverer = ActitoDeliverer(ActitoClient(config(actito.url)))
        await deliverer.start()
        try:
            answer = await deliverer.deliver(rendered(spec, record), job_id="j", timeout=5.0)
            return delivered(answer).status
        finally:
            await deliverer.close()

    return asyncio.run(scenario())


def test_write_back_changes_the_profile_in_actito() -> None:
    with FakeActito() as actito:
        actito.add_profile("16", 1204, {"loyaltyTier": "Silver"}, subscriptions={"News": True})
        assert deliver(actito, UPDATE) == 200
        assert actito.attributes("16", 1204) == {
            "profileId": 1204,
            "loyaltyTier": "Gold",
            "points": 10,
            "vip": True,
        }
        unsubscribe = {
            "type": "actito",
            "do": "unsubscribe",
            "table": "16",
            "profile": "{{ data.profileId }}",
            "subscription": "News",
        }
        assert deliver(actito, unsubscribe) == 200
        assert actito.subscribed("16", 1204) == {"News": False}
        assert deliver(actito, {**unsubscribe, "do": "subscribe", "subscription": "Promo"}) == 200
        assert actito.subscribed("16", 1204) == {"News": False, "Promo": True}
        row = {"type": "actito", "do": "create_record", "table": "log", "properties": {"a": "1"}}
        assert deliver(actito, row) == 200
        assert actito.records["log"] == [{"properties": [{"name": "a", "value": "1"}]}]


def test_an_unsubscribe_of_what_is_not_there_is_done() -> None:
    with FakeActito() as actito:
        actito.add_profile("16", 1204, {})
        spec = {
            "type": "actito",
            "do": "unsubscribe",
            "table": "16",
            "profile": "{{ data.profileId }}",
            "subscription": "Never",
        }
        assert deliver(actito, spec) == 404


def test_what_actito_refuses_is_given_up_with_its_reason() -> None:
    with FakeActito() as actito:
        actito.add_profile("16", 1204, {})
        spec = {**UPDATE, "attributes": {"unknownAttribute": "x"}}
        with pytest.raises(GiveUp) as caught:
            deliver(actito, spec)
        assert str(caught.value) == (
            "ACTITO refused PUT table/16/profile/1204 (HTTP 400): Attribute unknownAttribute "
            "does not exist"
        )
        # ACTITO's whole answer is the attempt's excerpt.
        answer = caught.value.response
        assert answer is not None and not answer.cut
        assert json.loads(answer.text)["message"] == "Attribute unknownAttribute does not exist"
        with pytest.raises(GiveUp, match=r"\(HTTP 404\): Profile 1204 not found"):
            deliver(actito, UPDATE, {**RECORD, "tableId": "17"})
