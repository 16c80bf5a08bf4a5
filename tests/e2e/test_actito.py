"""ACTITO both ways through a real `router serve`, against the fake ACTITO: a BULK push of 1,000
profiles enriched within ACTITO's limits while its tokens expire, a 202 that never waits for
ACTITO, a gone profile as a dead job with its reason, and a write-back rule.

One router and one fake serve the module (tests run in order). The per-minute limit is scaled
up (12,000 a minute: a call every 5 ms) so that 1,000 profiles take seconds; the fake checks
the spacing holds over every second, as it would over every minute at 100."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.actito.fake import API_KEY, ENTITY, FakeActito
from tests.e2e.harness import RouterProcess, poll
from tests.sinks import HttpSink

CALLS_PER_MINUTE = 12_000
PROFILES = 1000
REPEATS = 50  # further records of profile 1 in the same push: one read serves them all

RULES = """
[[rule]]
name = "gold-to-crm"
[rule.match]
tableType = "PROFILE_TABLE"
tableId = "16"
operation = "UPDATE"
[[rule.action]]
type = "http"
method = "PUT"
url = "{sink}/crm/{{{{ data.profileId }}}}"
enrich = ["profile"]
body = '''{{"email": {{{{ profile.attributes.emailAddress | tojson }}}},
  "tier": {{{{ data.LoyaltyTier | tojson }}}}}}'''

[[rule]]
name = "unsubscribed-to-actito"
[rule.match]
tableType = "PROFILE_TABLE"
tableId = "16"
operation = "UPDATED_SUBSCRIPTION"
[[rule.action]]
type = "actito"
do = "update_profile"
table = "{{{{ record.tableId }}}}"
profile = "{{{{ data.profileId }}}}"
attributes = {{ newsletterChangedBy = "router", newsletter = "{{{{ data.Newsletter }}}}" }}
"""


@pytest.fixture(scope="module")
def actito() -> Iterator[FakeActito]:
    # Tokens live 2 s here (15 minutes at ACTITO): a run of seconds renews several.
    with FakeActito(token_seconds=2.0) as fake:
        for n in range(1, PROFILES + 1):
            fake.add_profile("16", n, {"emailAddress": f"customer{n}@example.com"})
        yield fake


@pytest.fixture(scope="module")
def sink() -> Iterator[HttpSink]:
    with HttpSink() as s:
        yield s


@pytest.fixture(scope="module")
def router(
    tmp_path_factory: pytest.TempPathFactory, actito: FakeActito, sink: HttpSink
) -> Iterator[RouterProcess]:
    workdir = tmp_path_factory.mktemp("actito")
    rules = workdir / "rules"
    rules.mkdir()
    (rules / "actito.toml").write_text(RULES.format(sink=sink.url("").rstrip("/")))
    process = RouterProcess(
        workdir,
        rules,
        env={
            "ROUTER_ACTITO_API_URL": actito.url,
            "ROUTER_ACTITO_API_KEY": API_KEY,
            "ROUTER_ACTITO_ENTITY": ENTITY,
            "ROUTER_ACTITO_CALLS_PER_MINUTE": str(CALLS_PER_MINUTE),
        },
    )
    process.start()
    yield process
    process.stop()


def bulk(items: list[dict[str, Any]], operation: str = "UPDATE") -> dict[str, Any]:
    return {
        "id": f"bulk-{operation}-{items[0]['profileId']}-{len(items)}",
        "tableType": "PROFILE_TABLE",
        "tableId": "16",
        "fields": ["LoyaltyTier"],
        "eventType": "DATA",
        "triggerType": None,
        "operation": operation,
        "data": items,
    }


def jobs(router: RouterProcess, *args: str) -> list[dict[str, Any]]:
    listed = router.cli("deliveries", "list", "--format", "json", "--limit", "5000", *args)
    assert listed.returncode == 0, listed.stderr
    result: list[dict[str, Any]] = json.loads(listed.stdout)
    return result


def test_a_bulk_push_of_1000_profiles_is_enriched_within_actito_s_limits(
    router: RouterProcess, actito: FakeActito, sink: HttpSink
) -> None:
    items = [{"profileId": n, "LoyaltyTier": "Gold"} for n in range(1, PROFILES + 1)]
    items += [{"profileId": 1, "LoyaltyTier": f"Gold-{n}"} for n in range(REPEATS)]
    answer = router.push(bulk(items))
    assert (answer.status_code, answer.json()) == (202, {"accepted": 1050, "duplicates": 0})

    sink.wait_for(300, timeout=60)
    actito.expire_tokens()  # ACTITO drops the token mid-run: renewed, nothing lost
    requests = sink.wait_for(PROFILES + REPEATS, timeout=90)

    seen = {}
    for request in requests:
        assert request.method == "PUT"
        profile = int(request.path.rsplit("/", 1)[1])
        body = json.loads(request.body)
        assert body["email"] == f"customer{profile}@example.com"
        seen.setdefault(profile, []).append(body["tier"])
    assert sorted(seen) == list(range(1, PROFILES + 1))
    assert sorted(seen[1]) == sorted(["Gold", *(f"Gold-{n}" for n in range(REPEATS))])

    # The limits held: never more than 5 calls at once, never a 429, calls spaced out. (The
    # router spaces the calls it sends; the fake times their arrival, which a busy machine
    # delays unevenly by a few milliseconds: 2% of slack. Unspaced, 5 calls at once to a
    # local server make several hundred a second.)
    assert actito.peak <= 5
    assert actito.refused_busy == 0
    assert actito.max_calls_within(1.0) <= CALLS_PER_MINUTE / 60 * 1.02 + 1
    # One read per profile, though profile 1 was in 51 records.
    assert len(actito.profile_reads()) == PROFILES
    # Tokens were renewed before they expired, and once more when ACTITO dropped one.
    assert actito.token_fetches >= 3
    assert actito.refused_token >= 1
    assert jobs(router, "--status", "dead") == []


def test_the_202_never_waits_for_actito(
    router: RouterProcess, actito: FakeActito, sink: HttpSink
) -> None:
    sink.clear()
    actito.add_profile("16", 1001, {"emailAddress": "new@example.com"})  # not read yet
    actito.hold()
    try:
        before = actito.held
        answer = httpx.post(
            f"{router.base}/webhooks/actito",
            json=bulk([{"profileId": 1001, "LoyaltyTier": "Platinum"}]),
            headers={"X-Authorization": router.secret or ""},
            timeout=10,
        )
        assert answer.status_code == 202
        poll(lambda: actito.held > before)  # the read waits at delivery, not at intake
        assert sink.requests == []
    finally:
        actito.release()
    (request,) = sink.wait_for(1)
    assert json.loads(request.body) == {"email": "new@example.com", "tier": "Platinum"}


def test_a_gone_profile_is_a_dead_delivery_with_its_reason(router: RouterProcess) -> None:
    assert router.push(bulk([{"profileId": 999_999, "LoyaltyTier": "Gold"}])).status_code == 202
    (dead,) = poll(lambda: jobs(router, "--status", "dead", "--rule", "gold-to-crm"))
    assert dead["last_error"] == (
        "profile 999999 does not exist in the ACTITO profile table 16 (HTTP 404): it was "
        "deleted, or ACTITO knows the table by its name (see ROUTER_ACTITO_PROFILE_TABLES)"
    )


def test_a_write_back_rule_updates_the_profile_in_actito(
    router: RouterProcess, actito: FakeActito
) -> None:
    unsubscribed = bulk([{"profileId": 12, "Newsletter": "false"}], "UPDATED_SUBSCRIPTION")
    assert router.push(unsubscribed).status_code == 202
    poll(lambda: actito.attributes("16", 12).get("newsletterChangedBy") == "router")
    assert actito.attributes("16", 12)["newsletter"] == "false"
    (done,) = poll(lambda: jobs(router, "--status", "done", "--rule", "unsubscribed-to-actito"))
    assert done["action_type"] == "actito"
    writes = [c for c in actito.calls if c.method == "PUT" and c.path.endswith("/profile/12")]
    assert [(c.path, c.status) for c in writes] == [("/v4/entity/demo/table/16/profile/12", 200)]


def test_nothing_of_the_api_key_or_a_token_reaches_the_log(router: RouterProcess) -> None:
    log = router.log()
    assert "delivered" in log
    assert API_KEY not in log
    assert "accessToken" not in log and "Bearer" not in log
    assert Path(router.workdir / "router.db").exists()
    assert API_KEY.encode() not in (router.workdir / "router.db").read_bytes()
