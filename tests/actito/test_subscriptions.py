"""Webhook subscriptions from the rules: what the rules need, what the entity holds (in every
list shape ACTITO may answer), the difference, and `router actito plan` / `apply` against the
fake ACTITO, applied twice (the second time changes nothing)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from router.actito.client import ActitoClient
from router.actito.subscriptions import (
    PAGE_SIZE,
    Derivation,
    Target,
    Unplanned,
    Wanted,
    derive,
    list_subscriptions,
    make_plan,
    subscriptions_in,
)
from router.cli import main
from router.exceptions import CommandError
from router.rulefiles.loader import load_rules
from tests.actito.fake import API_KEY, ENTITY, FakeActito
from tests.actito.test_client import config, run

PUBLIC = "https://router.example.org"
TARGET_URL = f"{PUBLIC}/webhooks/actito"
SECRET = "s3cret-shared-with-actito"
TARGET = Target.of(PUBLIC, {"X-Authorization": SECRET}, "ONE_BY_ONE")

RULES = """
[[rule]]
name = "crm-email"
[rule.match]
tableType = "PROFILE_TABLE"
tableId = "16"
operation = ["CREATE", "UPDATE"]
fields = ["emailAddress"]
[[rule.action]]
type = "log"
message = "x"

[[rule]]
name = "crm-tier"
[rule.match]
tableType = "PROFILE_TABLE"
tableId = 16
operation = "UPDATE"
fields = ["LoyaltyTier", "emailAddress"]
[[rule.action]]
type = "log"
message = "x"

[[rule]]
name = "unsubscribes"
[rule.match]
tableType = "PROFILE_TABLE"
tableId = ["16", "17"]
operation = "UPDATED_SUBSCRIPTION"
[[rule.action]]
type = "log"
message = "x"

[[rule]]
name = "orders"
[rule.match]
tableType = "CUSTOM_TABLE"
tableId = "orders-table"
operation = ["CREATE", "UPDATED_SEGMENT"]
[[rule.action]]
type = "log"
message = "x"

[[rule]]
name = "audit"
[[rule.action]]
type = "log"
message = "x"

[[rule]]
name = "some-table"
[rule.match]
tableType = "PROFILE_TABLE"
operation = "CREATE"
[[rule.action]]
type = "log"
message = "x"

[[rule]]
name = "any-operation"
[rule.match]
tableType = "PROFILE_TABLE"
tableId = "16"
[[rule.action]]
type = "log"
message = "x"

[[rule]]
name = "both-kinds"
[rule.match]
tableType = ["PROFILE_TABLE", "CUSTOM_TABLE"]
tableId = "16"
operation = "CREATE"
[[rule.action]]
type = "log"
message = "x"

[[rule]]
name = "imports"
[rule.match]
eventType = "TRIGGER"
[[rule.action]]
type = "log"
message = "x"

[[rule]]
name = "switched-off"
enabled = false
[rule.match]
tableType = "PROFILE_TABLE"
tableId = "99"
operation = "CREATE"
[[rule.action]]
type = "log"
message = "x"
"""


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    directory = tmp_path / "rules"
    directory.mkdir()
    (directory / "rules.toml").write_text(RULES)
    return directory


def test_the_rules_need_one_subscription_per_table_and_event_type(rules: Path) -> None:
    derived = derive(load_rules(rules))
    assert derived.wanted == (
        Wanted("CUSTOM_TABLE", "orders-table", "CREATE", None, ("orders",)),
        Wanted("PROFILE_TABLE", "16", "CREATE", ("emailAddress",), ("crm-email",)),
        Wanted(
            "PROFILE_TABLE",
            "16",
            "UPDATE",
            ("LoyaltyTier", "emailAddress"),
            ("crm-email", "crm-tier"),
        ),
        Wanted("PROFILE_TABLE", "16", "UPDATED_SUBSCRIPTION", None, ("unsubscribes",)),
        Wanted("PROFILE_TABLE", "17", "UPDATED_SUBSCRIPTION", None, ("unsubscribes",)),
    )
    assert derived.unplanned == (
        Unplanned("orders", "custom tables have no UPDATED_SEGMENT events"),
        Unplanned("audit", "it matches any table type; set tableType in its [rule.match]"),
        Unplanned("some-table", "it matches any table; set tableId in its [rule.match]"),
        Unplanned("any-operation", "it matches any operation; set operation in its [rule.match]"),
        Unplanned(
            "both-kinds", "it matches both table types; split it into one rule per table type"
        ),
        Unplanned(
            "imports",
            "it matches trigger events only; ACTITO's documentation does not say how to "
            "subscribe to those, so create that subscription by hand",
        ),
    )


def test_a_rule_without_fields_widens_the_subscription_to_every_field(tmp_path: Path) -> None:
    (tmp_path / "r.toml").write_text(
        RULES.split('[[rule]]\nname = "unsubscribes"')[0]
        + """
[[rule]]
name = "every-update"
[rule.match]
tableType = "PROFILE_TABLE"
tableId = "16"
operation = "UPDATE"
[[rule.action]]
type = "log"
message = "x"
"""
    )
    update = [w for w in derive(load_rules(tmp_path)).wanted if w.event_type == "UPDATE"]
    assert update == [
        Wanted("PROFILE_TABLE", "16", "UPDATE", None, ("crm-email", "crm-tier", "every-update"))
    ]


SUBSCRIPTION = {
    "id": 17,
    "on": "PROFILE_TABLE",
    "onElementId": "16",
    "eventType": "CREATE",
    "targetUrl": TARGET_URL,
    "headers": {"X-Authorization": SECRET},
    "webhookPushType": "ONE_BY_ONE",
    "isActive": True,
}


@pytest.mark.parametrize(
    "body",
    [
        [SUBSCRIPTION],
        {"webhookSubscriptions": [SUBSCRIPTION], "totalElements": 1},
        {"items": [SUBSCRIPTION], "links": [{"rel": "self"}]},
        {"_embedded": {"subscriptions": [SUBSCRIPTION]}, "_links": {}},
    ],
    ids=["list", "object", "object-with-another-list", "embedded"],
)
def test_every_list_shape_is_read(body: Any) -> None:
    assert subscriptions_in(body) == [SUBSCRIPTION]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("nope", "is not JSON that lists them"),
        ({"count": 0}, "holds no list"),
        ({"a": [SUBSCRIPTION], "b": [SUBSCRIPTION]}, "holds several lists"),
    ],
)
def test_an_unreadable_list_says_why(body: Any, message: str) -> None:
    with pytest.raises(CommandError, match=message):
        subscriptions_in(body)


def test_an_empty_list_is_empty() -> None:
    assert subscriptions_in({"webhookSubscriptions": [], "page": {"number": 0}}) == []


def wanted(event: str, fields: tuple[str, ...] | None = None, table: str = "16") -> Wanted:
    return Wanted("PROFILE_TABLE", table, event, fields, ("r",))


def existing(ident: int, event: str, **changes: Any) -> dict[str, Any]:
    return {**SUBSCRIPTION, "id": ident, "eventType": event, **changes}


def test_the_plan_sorts_every_subscription_into_one_kind() -> None:
    derived = Derivation(
        (
            wanted("CREATE"),
            wanted("UPDATE", ("emailAddress",)),
            wanted("UPDATED_SUBSCRIPTION"),
            wanted("UPDATED_SEGMENT"),
            wanted("CREATE", table="17"),
        ),
        (Unplanned("audit", "it matches any table type"),),
    )
    listed = [
        existing(17, "CREATE"),  # as wanted
        existing(18, "UPDATE", onFields=["emailAddress", "x"]),  # other fields
        existing(19, "UPDATED_SUBSCRIPTION", targetUrl="https://old.example.org/webhooks/actito"),
        existing(20, "UPDATED_SEGMENT", headers={"x-authorization": "old-secret"}, isActive=False),
        existing(21, "DELETE"),  # no rule needs it
        existing(22, "CREATE", targetUrl="https://wallet.example.com/hook"),  # someone else's
        existing(23, "UPDATED_SUBSCRIPTION"),  # a twin of 19, better kept
        existing(24, "DELETE", onElementId="18", isActive=False),  # ours, off, not needed
        {"eventType": "CREATE", "targetUrl": TARGET_URL},  # no id: nothing can be done with it
    ]
    plan = make_plan(derived, listed, TARGET)
    summary = [(c.kind, c.existing.id if c.existing else None, c.differences) for c in plan.changes]
    assert summary == [
        ("unchanged", "17", ()),
        ("update", "18", ("fields",)),
        ("update", "19", ("target URL",)),
        ("deactivate", "23", ("duplicate",)),
        ("update", "20", ("headers", "activation")),
        ("create", None, ()),
        ("deactivate", "21", ("no rule needs it",)),
    ]
    assert [e.id for e in plan.elsewhere] == ["22"]
    assert [e.id for e in plan.inactive] == ["24"]
    assert plan.unplanned == derived.unplanned
    assert [c.kind for c in plan.pending] == [
        "create",
        "update",
        "update",
        "update",
        "deactivate",
        "deactivate",
    ]
    created = plan.of("create")[0].body
    assert created == {
        "on": "PROFILE_TABLE",
        "onElementId": "17",
        "eventType": "CREATE",
        "targetUrl": TARGET_URL,
        "headers": {"X-Authorization": SECRET},
        "webhookPushType": "ONE_BY_ONE",
        "isActive": True,
    }
    deactivated = plan.of("deactivate")[1].body
    assert deactivated is not None and deactivated["isActive"] is False
    assert deactivated["eventType"] == "DELETE"


def test_headers_the_list_does_not_show_are_no_difference() -> None:
    listed = [{k: v for k, v in SUBSCRIPTION.items() if k != "headers"}]
    plan = make_plan(Derivation((wanted("CREATE"),), ()), listed, TARGET)
    assert [c.kind for c in plan.changes] == ["unchanged"]


def test_the_list_is_read_page_by_page() -> None:
    with FakeActito(list_shape="object") as actito:
        for n in range(PAGE_SIZE * 2 + 50):
            actito.add_subscription(**{**SUBSCRIPTION, "onElementId": str(n)})
        client = ActitoClient(config(actito.url, calls_per_minute=60_000))
        listed = run(client, list_subscriptions)
        assert len(listed) == 250
        pages = [c.query for c in actito.calls if c.path.endswith("/webhookSubscription")]
        assert pages == [{"page": str(n), "pageSize": str(PAGE_SIZE)} for n in range(3)]


@pytest.mark.parametrize("paging", [True, False], ids=["full-last-page", "page-ignored"])
def test_the_list_ends_on_a_page_with_nothing_new(paging: bool) -> None:
    with FakeActito() as actito:
        for n in range(PAGE_SIZE):
            actito.add_subscription(**{**SUBSCRIPTION, "onElementId": str(n)})
        actito.paging = paging
        client = ActitoClient(config(actito.url, calls_per_minute=60_000))
        assert len(run(client, list_subscriptions)) == PAGE_SIZE
        assert len([c for c in actito.calls if c.path.endswith("/webhookSubscription")]) == 2


# ---------------------------------------------------------------- the commands


@pytest.fixture
def actito() -> Iterator[FakeActito]:
    with FakeActito(list_shape="embedded") as fake:
        yield fake


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, rules: Path, actito: FakeActito) -> None:
    monkeypatch.chdir(tmp_path)  # no .env file
    for name in [n for n in __import__("os").environ if n.startswith("ROUTER_")]:
        monkeypatch.delenv(name)
    for name, value in {
        "ROUTER_RULES_DIR": str(rules),
        "ROUTER_ACTITO_API_URL": actito.url,
        "ROUTER_ACTITO_API_KEY": API_KEY,
        "ROUTER_ACTITO_ENTITY": ENTITY,
        "ROUTER_ACTITO_CALLS_PER_MINUTE": "60000",
        "ROUTER_PUBLIC_URL": PUBLIC,
        "ROUTER_WEBHOOK_SECRETS": f"old-secret,{SECRET}",
    }.items():
        monkeypatch.setenv(name, value)


@pytest.mark.usefixtures("env")
def test_plan_then_apply_then_apply_again_changes_nothing(
    actito: FakeActito, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = actito.add_subscription(**existing(0, "DELETE", onElementId="16"))
    other = actito.add_subscription(**existing(0, "CREATE", targetUrl="https://wallet.example/h"))
    before = dict(actito.subscriptions[other])

    assert main(["actito", "plan"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        f"ACTITO entity demo at {actito.url.removeprefix('http://')} holds 2 webhook "
        "subscriptions; "
        f"the router's push to {TARGET_URL}\n"
    )
    assert (
        "to create (5):\n  + CUSTOM_TABLE orders-table CREATE (every field; rules orders)\n" in out
    )
    assert (
        "  + PROFILE_TABLE 16 UPDATE (fields LoyaltyTier, emailAddress; "
        "rules crm-email, crm-tier)\n" in out
    )
    assert (
        f"to deactivate (1):\n  - subscription {stale}: PROFILE_TABLE 16 DELETE: no rule needs it\n"
        in out
    )
    assert (
        "not planned (6):\n  ! rule 'orders': custom tables have no UPDATED_SEGMENT events\n" in out
    )
    assert "left alone: 1 subscription pushing elsewhere\n" in out
    assert out.endswith("\n6 changes to make: run `router actito apply`.\n")
    assert len(actito.subscriptions) == 2  # plan changed nothing

    assert main(["actito", "apply", "--yes"]) == 0
    out = capsys.readouterr().out
    assert "created PROFILE_TABLE 17 UPDATED_SUBSCRIPTION" in out
    assert f"deactivated subscription {stale}: PROFILE_TABLE 16 DELETE" in out
    assert out.endswith(f"\n6 changes made; ACTITO pushes to {TARGET_URL}.\n")
    ours = [s for s in actito.subscriptions.values() if s["targetUrl"] == TARGET_URL]
    assert len(ours) == 6
    active = sorted(
        (s["on"], s["onElementId"], s["eventType"], tuple(s.get("onFields", ())))
        for s in ours
        if s["isActive"]
    )
    assert active == [
        ("CUSTOM_TABLE", "orders-table", "CREATE", ()),
        ("PROFILE_TABLE", "16", "CREATE", ("emailAddress",)),
        ("PROFILE_TABLE", "16", "UPDATE", ("LoyaltyTier", "emailAddress")),
        ("PROFILE_TABLE", "16", "UPDATED_SUBSCRIPTION", ()),
        ("PROFILE_TABLE", "17", "UPDATED_SUBSCRIPTION", ()),
    ]
    # The newest of two accepted secrets (a rotation) is what ACTITO sends.
    assert {json.dumps(s["headers"]) for s in ours if s["isActive"]} == {
        json.dumps({"X-Authorization": SECRET})
    }
    assert actito.subscriptions[stale]["isActive"] is False
    assert actito.subscriptions[other] == before  # someone else's: untouched

    writes = len([c for c in actito.calls if c.method in ("POST", "PUT")])
    assert main(["actito", "apply", "--yes"]) == 0
    out = capsys.readouterr().out
    assert "unchanged (5):" in out
    assert out.endswith("\nNothing to change.\n")
    assert len([c for c in actito.calls if c.method in ("POST", "PUT")]) == writes
    assert main(["actito", "plan"]) == 0
    assert capsys.readouterr().out.endswith("\nNothing to change.\n")


@pytest.mark.usefixtures("env")
def test_a_new_secret_updates_the_headers_and_no_output_shows_it(
    actito: FakeActito, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["actito", "apply", "--yes"]) == 0
    capsys.readouterr()
    monkeypatch.setenv("ROUTER_WEBHOOK_SECRETS", f"{SECRET},rotated-secret-2")
    assert main(["actito", "plan", "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert [u["differences"] for u in document["update"]] == [["headers"]] * 5
    assert document["create"] == [] and document["deactivate"] == []
    assert document["target_url"] == TARGET_URL
    assert main(["actito", "apply", "-y"]) == 0
    out = capsys.readouterr().out
    assert out.count(": headers") == 10  # listed in the plan, then as done
    assert "rotated-secret-2" not in out and SECRET not in out
    assert {s["headers"]["X-Authorization"] for s in actito.subscriptions.values()} == {
        "rotated-secret-2"
    }


@pytest.mark.usefixtures("env")
def test_apply_asks_first_and_refuses_without_a_terminal(
    actito: FakeActito, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["actito", "apply"]) == 2
    assert capsys.readouterr().err.endswith(
        "router actito: error: refusing to change ACTITO's subscriptions without confirmation: "
        "run it in a terminal, or pass --yes\n"
    )
    assert actito.subscriptions == {}

    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert main(["actito", "apply"]) == 1
    assert capsys.readouterr().out.endswith("Nothing was changed.\n")
    assert actito.subscriptions == {}

    asked: list[str] = []
    monkeypatch.setattr("builtins.input", lambda prompt: asked.append(prompt) or "yes")
    assert main(["actito", "apply"]) == 0
    assert asked == ["\nMake 5 changes in ACTITO entity demo? [y/N] "]
    assert len(actito.subscriptions) == 5


@pytest.mark.usefixtures("env")
@pytest.mark.parametrize(
    ("unset", "value", "message"),
    [
        ("ROUTER_ACTITO_API_KEY", None, "set ROUTER_ACTITO_API_KEY to reach ACTITO's API"),
        (
            "ROUTER_ACTITO_ENTITY",
            None,
            "set ROUTER_ACTITO_ENTITY to reach ACTITO's API",
        ),
        ("ROUTER_PUBLIC_URL", None, "set ROUTER_PUBLIC_URL to the router's public HTTPS address"),
        ("ROUTER_PUBLIC_URL", "http://router.example.org", "must be an https:// address"),
        ("ROUTER_WEBHOOK_SECRETS", None, "set ROUTER_WEBHOOK_SECRETS: each subscription"),
        ("ROUTER_ACTITO_API_URL", "ftp://x", "ROUTER_ACTITO_API_URL: Value error, must start"),
    ],
)
def test_missing_settings_are_named(
    unset: str,
    value: str | None,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if value is None:
        monkeypatch.delenv(unset)
    else:
        monkeypatch.setenv(unset, value)
    assert main(["actito", "plan"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.usefixtures("env")
def test_a_refusal_or_an_outage_is_one_sentence(
    actito: FakeActito, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    actito.fail(403)
    assert main(["actito", "plan"]) == 1
    assert capsys.readouterr().err == (
        "router actito: error: ACTITO refused to list the webhook subscriptions (HTTP 403): "
        "Scripted failure\n"
    )
    actito.fail(503)
    assert main(["actito", "plan"]) == 1
    assert capsys.readouterr().err == (
        "router actito: error: the ACTITO API answered HTTP 503; try again later\n"
    )
    monkeypatch.setenv("ROUTER_ACTITO_API_KEY", "wrong-key-77")
    assert main(["actito", "plan"]) == 1
    err = capsys.readouterr().err
    assert "ACTITO refused the API key (HTTP 401)" in err and "wrong-key-77" not in err


@pytest.mark.usefixtures("env")
def test_apply_that_stops_half_way_says_so_and_a_second_apply_finishes(
    actito: FakeActito, capsys: pytest.CaptureFixture[str]
) -> None:
    original = actito._route

    def flaky(method: str, parts: list[str], request: Any, body: Any) -> Any:
        if method == "POST" and len(actito.subscriptions) == 2:
            from tests.actito.fake import _error

            return _error(400, "Quota of subscriptions reached")
        return original(method, parts, request, body)

    actito._route = flaky  # type: ignore[method-assign]
    assert main(["actito", "apply", "--yes"]) == 1
    assert capsys.readouterr().err.endswith(
        "ACTITO refused to create the subscription PROFILE_TABLE 16 UPDATE (HTTP 400): Quota "
        "of subscriptions reached; 2 of 5 change(s) were made before it; run `router actito "
        "apply` again to make the rest\n"
    )
    actito._route = original  # type: ignore[method-assign]
    assert main(["actito", "apply", "--yes"]) == 0
    assert "3 changes made" in capsys.readouterr().out
    assert len(actito.subscriptions) == 5


@pytest.mark.usefixtures("env")
def test_invalid_rules_are_refused(rules: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (rules / "broken.toml").write_text("[[rule]]\nname = 3\n")
    assert main(["actito", "plan"]) == 1
    assert (
        f"the rules in {rules} are invalid; run `router check {rules}`" in capsys.readouterr().err
    )
