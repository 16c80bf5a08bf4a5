"""Enrichment's profile reads against the fake ACTITO: what templates see of a profile, which
records name one, one read per profile however many ask at once, reuse for a short time, and
a clear reason when the profile is gone."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from router.actito.client import ActitoClient
from router.actito.profiles import ProfileSource, profile_of, profile_view
from router.exceptions import GiveUp
from tests.actito.fake import FakeActito
from tests.actito.test_client import Clock, config, run


def record(profile_id: Any = 1204, **envelope: Any) -> dict[str, Any]:
    return {
        "id": "e-1",
        "tableType": "PROFILE_TABLE",
        "tableId": "16",
        "operation": "UPDATE",
        "data": {"profileId": profile_id, "LoyaltyTier": "Gold"},
        **envelope,
    }


def test_profile_view_flattens_actito_s_representation() -> None:
    answer = {
        "attributes": [
            {"name": "emailAddress", "value": "marie@example.be"},
            {"name": "age", "value": 41},
            {"value": "no name"},
            "junk",
        ],
        "subscriptions": [
            {"name": "Newsletter", "subscribe": True},
            {"name": "Promotions", "subscribe": False},
            {"subscribe": True},
        ],
        "segmentations": [
            {"belongs": True, "segmentation": {"category": "Tier", "name": "Gold"}},
            {"belongs": False, "segmentation": {"category": "Region", "name": "North"}},
            {"segmentation": {"category": "Interests", "name": "Bikes"}},
            {"belongs": True, "segmentation": {"category": "Interests", "name": "Hiking"}},
            {"belongs": True, "segmentation": "junk"},
        ],
        "dataCollectionInformation": {"source": "shop"},
    }
    assert profile_view(answer) == {
        "attributes": {"emailAddress": "marie@example.be", "age": 41},
        "subscriptions": {"Newsletter": True, "Promotions": False},
        "segmentations": {"Tier": "Gold", "Interests": ["Bikes", "Hiking"]},
    }
    assert profile_view({"attributes": "junk"}) == {
        "attributes": {},
        "subscriptions": {},
        "segmentations": {},
    }


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (record(), ("16", 1204)),
        (record("1204"), ("16", 1204)),
        (record(tableId=16), ("16", 1204)),
    ],
)
def test_a_profile_table_record_names_its_profile(
    given: dict[str, Any], expected: tuple[str, int]
) -> None:
    assert profile_of(given) == expected


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        (
            record(tableType="CUSTOM_TABLE"),
            "needs a record of a profile table, and this one is CUSTOM_TABLE",
        ),
        (record(tableType=None), "this one is an event without a table"),
        (record(tableId=None), "needs the record's tableId"),
        (record(tableId="7" * 201), "the record's tableId is too long"),
        (record(None), "needs data.profileId (a number)"),
        (record(True), "needs data.profileId"),
        (record("12a"), "needs data.profileId"),
        (record(-3), "needs data.profileId"),
        ({**record(), "data": ["not", "an", "item"]}, "needs data.profileId"),
    ],
)
def test_a_record_without_a_profile_is_given_up(given: dict[str, Any], reason: str) -> None:
    with pytest.raises(GiveUp, match=reason.replace("(", r"\(").replace(")", r"\)")):
        profile_of(given)


def test_many_asking_for_one_profile_at_once_read_it_once() -> None:
    with FakeActito(latency=0.05) as actito:
        actito.add_profile("16", 1204, {"emailAddress": "marie@example.be"})
        actito.add_profile("16", 1205, {"emailAddress": "jan@example.be"})
        client = ActitoClient(config(actito.url, calls_per_minute=60_000))
        profiles = ProfileSource(client, ttl=30.0)

        async def work(c: ActitoClient) -> list[Any]:
            asks = [profiles.fetch(record(1204)) for _ in range(40)]
            asks += [profiles.fetch(record(1205)) for _ in range(10)]
            return await asyncio.gather(*asks)

        got = run(client, work)
        assert {p["attributes"]["emailAddress"] for p in got[:40]} == {"marie@example.be"}
        assert got[-1]["attributes"]["emailAddress"] == "jan@example.be"
        assert len(actito.profile_reads()) == 2
        assert profiles.reads == 2


def test_a_profile_is_reused_for_the_cache_time_then_read_again() -> None:
    clock = Clock()
    with FakeActito() as actito:
        actito.add_profile("16", 1204, {"LoyaltyTier": "Silver"})
        client = ActitoClient(config(actito.url, calls_per_minute=60_000))
        profiles = ProfileSource(client, ttl=30.0, clock=clock)

        async def work(c: ActitoClient) -> list[str]:
            tiers = []
            for elapsed, tier in ((0, None), (29, "Gold"), (31, None)):
                if tier:
                    actito.profiles["16"][1204]["attributes"][1]["value"] = tier
                clock.now = 1000.0 + elapsed
                profile = await profiles.fetch(record(1204))
                tiers.append(profile["attributes"]["LoyaltyTier"])
            return tiers

        assert run(client, work) == ["Silver", "Silver", "Gold"]
        assert len(actito.profile_reads()) == 2


def test_with_no_cache_time_every_delivery_reads_the_profile() -> None:
    with FakeActito() as actito:
        actito.add_profile("16", 1204, {})
        client = ActitoClient(config(actito.url, calls_per_minute=60_000))
        profiles = ProfileSource(client, ttl=0.0)

        async def work(c: ActitoClient) -> None:
            for _ in range(3):
                await profiles.fetch(record(1204))

        run(client, work)
        assert len(actito.profile_reads()) == 3


def test_a_profile_that_no_longer_exists_is_a_clear_reason() -> None:
    with FakeActito() as actito:
        client = ActitoClient(config(actito.url))
        profiles = ProfileSource(client)
        with pytest.raises(GiveUp) as caught:
            run(client, lambda c: profiles.fetch(record(999)))
        assert str(caught.value) == (
            "profile 999 does not exist in the ACTITO profile table 16 (HTTP 404): it was "
            "deleted, or ACTITO knows the table by its name (see ROUTER_ACTITO_PROFILE_TABLES)"
        )
        assert caught.value.status_code == 404


def test_a_refused_read_quotes_actito_s_reason() -> None:
    with FakeActito() as actito:
        actito.fail(403)
        client = ActitoClient(config(actito.url))
        with pytest.raises(GiveUp, match=r"\(HTTP 403\): Scripted failure"):
            run(client, lambda c: ProfileSource(c).fetch(record()))


def test_a_table_name_setting_replaces_the_table_id_in_the_path() -> None:
    with FakeActito() as actito:
        actito.add_profile("Customers", 1204, {"emailAddress": "marie@example.be"})
        client = ActitoClient(config(actito.url, profile_tables={"16": "Customers"}))
        profile = run(client, lambda c: ProfileSource(c).fetch(record()))
        assert profile["attributes"]["emailAddress"] == "marie@example.be"
        (read,) = actito.profile_reads()
        assert read.path == "/v4/entity/demo/table/Customers/profile/1204"


def test_a_read_that_fails_is_not_kept() -> None:
    with FakeActito() as actito:
        actito.add_profile("16", 1204, {})
        actito.fail(503)
        client = ActitoClient(config(actito.url, calls_per_minute=60_000))
        profiles = ProfileSource(client, ttl=30.0)

        async def work(c: ActitoClient) -> Any:
            with pytest.raises(Exception, match="HTTP 503"):
                await profiles.fetch(record())
            return await profiles.fetch(record())

        assert run(client, work)["attributes"]["profileId"] == 1204
