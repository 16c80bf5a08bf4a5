"""The ACTITO client against the fake ACTITO (a real HTTP server): access tokens fetched once,
renewed before they expire and when ACTITO drops them, the limits held, and failures that
retry, all without the API key or a token ever reaching a message or a log."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from pydantic import SecretStr

from router.actito.client import ActitoClient, ActitoConfig, Answer
from router.actito.limits import CallLimits
from router.exceptions import GiveUp, RetryLater
from tests.actito.fake import API_KEY, ENTITY, FakeActito
from tests.sinks import HttpSink, Reply, free_port

_T = TypeVar("_T")


def config(url: str, **overrides: object) -> ActitoConfig:
    values: dict[str, object] = {
        "api_url": url,
        "entity": ENTITY,
        "api_key": SecretStr(API_KEY),
        "timeout": 5.0,
        **overrides,
    }
    return ActitoConfig(**values)  # type: ignore[arg-type]


def run(client: ActitoClient, work: Callable[[ActitoClient], Awaitable[_T]]) -> _T:
    async def scenario() -> _T:
        await client.start()
        try:
            return await work(client)
        finally:
            await client.close()

    return asyncio.run(scenario())


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_token_serves_many_calls() -> None:
    with FakeActito() as actito:
        actito.add_profile("16", 1, {"emailAddress": "a@example.com"})
        client = ActitoClient(config(actito.url, calls_per_minute=60_000))

        async def work(c: ActitoClient) -> list[Answer]:
            return await asyncio.gather(*(c.call("GET", "table/16/profile/1") for _ in range(20)))

        answers = run(client, work)
        assert {a.status for a in answers} == {200}
        assert actito.token_fetches == client.token_fetches == 1
        assert answers[0].body["attributes"][1] == {
            "name": "emailAddress",
            "value": "a@example.com",
        }


def test_the_token_is_renewed_shortly_before_it_expires() -> None:
    clock = Clock()
    with FakeActito() as actito:
        actito.add_profile("16", 1, {})
        client = ActitoClient(config(actito.url, calls_per_minute=60_000), clock=clock)

        async def work(c: ActitoClient) -> list[int]:
            fetched = []
            for elapsed in (0, 800, 839, 841, 900, 1600, 1700):
                clock.now = 1000.0 + elapsed
                await c.call("GET", "table/16/profile/1")
                fetched.append(c.token_fetches)
            return fetched

        # 15-minute tokens, renewed 60 s before the end: at 841 s, and at 841 + 840 s.
        assert run(client, work) == [1, 1, 1, 2, 2, 2, 3]
        assert actito.token_fetches == 3
        assert actito.refused_token == 0


def test_a_token_actito_dropped_early_is_renewed_once_and_the_call_made_again() -> None:
    with FakeActito() as actito:
        actito.add_profile("16", 1, {})
        client = ActitoClient(config(actito.url, calls_per_minute=60_000))

        async def work(c: ActitoClient) -> tuple[int, int]:
            first = await c.call("GET", "table/16/profile/1")
            actito.expire_tokens()
            second = await c.call("GET", "table/16/profile/1")
            return first.status, second.status

        assert run(client, work) == (200, 200)
        assert actito.refused_token == 1
        assert actito.token_fetches == 2


def test_a_token_refused_twice_is_a_retry_that_names_the_setting() -> None:
    with FakeActito(token_seconds=0.0) as actito:  # every token is dead on arrival
        client = ActitoClient(config(actito.url, calls_per_minute=60_000))
        with pytest.raises(RetryLater, match="ROUTER_ACTITO_API_KEY") as caught:
            run(client, lambda c: c.call("GET", "table/16/profile/1"))
        assert caught.value.status_code == 401
        assert actito.token_fetches == 2  # one renewal, not a loop


def test_a_wrong_api_key_is_a_retry_that_names_the_setting_not_the_key() -> None:
    with FakeActito() as actito:
        client = ActitoClient(config(actito.url, api_key=SecretStr("not-the-key-4711")))
        with pytest.raises(RetryLater) as caught:
            run(client, lambda c: c.call("GET", "webhookSubscription"))
        message = str(caught.value)
        assert "ACTITO refused the API key (HTTP 401)" in message
        assert "ROUTER_ACTITO_API_KEY" in message
        assert "not-the-key-4711" not in message


def test_at_most_five_calls_are_in_flight_at_once() -> None:
    with FakeActito(latency=0.05) as actito:
        actito.add_profile("16", 1, {})
        client = ActitoClient(config(actito.url, calls_per_minute=60_000))

        async def work(c: ActitoClient) -> list[Answer]:
            return await asyncio.gather(*(c.call("GET", "table/16/profile/1") for _ in range(30)))

        assert {a.status for a in run(client, work)} == {200}
        assert actito.peak == 5
        assert actito.refused_busy == 0


def test_the_fake_refuses_a_sixth_call_and_the_client_retries_later() -> None:
    # The check above can fail: a client allowed 8 calls at once meets ACTITO's 429.
    with FakeActito(latency=0.1) as actito:
        actito.add_profile("16", 1, {})
        client = ActitoClient(config(actito.url, calls_per_minute=60_000, max_concurrent=8))

        async def work(c: ActitoClient) -> list[Answer | BaseException]:
            await c.call("GET", "table/16/profile/1")  # the token first
            calls = (c.call("GET", "table/16/profile/1") for _ in range(8))
            return await asyncio.gather(*calls, return_exceptions=True)

        outcomes = run(client, work)
        busy = [o for o in outcomes if isinstance(o, RetryLater)]
        assert busy and all(o.status_code == 429 for o in busy)
        assert "more than its limit of calls at once" in str(busy[0])
        assert actito.refused_busy == len(busy)


def test_calls_are_spaced_out_to_hold_the_calls_per_window() -> None:
    with FakeActito() as actito:
        actito.add_profile("16", 1, {})
        # 10 calls per 0.5 s stands in for 100 per minute.
        limits = CallLimits(concurrent=5, per_window=10, window=0.5)
        client = ActitoClient(config(actito.url), limits=limits)

        async def work(c: ActitoClient) -> float:
            loop = asyncio.get_running_loop()
            began = loop.time()
            await asyncio.gather(*(c.call("GET", "table/16/profile/1") for _ in range(25)))
            return loop.time() - began

        elapsed = run(client, work)
        assert len(actito.calls) == 26  # and the token
        assert actito.max_calls_within(0.5) <= 10 + 1
        assert elapsed >= 25 * 0.05 * 0.9  # spaced, not sent at once


@pytest.mark.parametrize("status", [429, 500, 502, 503, 408])
def test_busy_or_failing_actito_is_a_retry(status: int) -> None:
    with FakeActito() as actito:
        actito.fail(status)
        client = ActitoClient(config(actito.url))
        with pytest.raises(RetryLater, match=f"HTTP {status}") as caught:
            run(client, lambda c: c.call("GET", "table/16/profile/1"))
        assert caught.value.status_code == status


@pytest.mark.parametrize("status", [400, 403, 404, 409])
def test_other_answers_are_the_callers_to_judge(status: int) -> None:
    with FakeActito() as actito:
        actito.fail(status)
        client = ActitoClient(config(actito.url))
        answer = run(client, lambda c: c.call("GET", "table/16/profile/1"))
        assert (answer.status, answer.ok, answer.problem()) == (status, False, "Scripted failure")


@pytest.mark.parametrize("status", [400, 503])
def test_an_answer_that_echoes_the_credentials_keeps_them_masked(status: int) -> None:
    token = "access-T0ken-never-kept"
    with HttpSink() as sink:
        sink.script(
            Reply(200, body=json.dumps({"accessToken": token, "expiresIn": "900s"}).encode()),
            Reply(status, echo=True),
        )
        client = ActitoClient(config(sink.url("").rstrip("/")))
        try:
            excerpt = run(client, lambda c: c.call("GET", "table/16/profile/1")).excerpt
        except RetryLater as failure:
            excerpt = failure.response
        (_, call) = sink.wait_for(2)
    assert call.headers["Authorization"] == f"Bearer {token}"  # what was echoed
    assert excerpt is not None
    assert "Authorization: Bearer <secret ACTITO_ACCESS_TOKEN>" in excerpt.text
    assert token not in excerpt.text


def test_an_unconfigured_client_names_the_settings_to_set() -> None:
    client = ActitoClient(config("http://127.0.0.1:9", api_key=None, entity=None))
    with pytest.raises(RetryLater) as caught:
        run(client, lambda c: c.call("GET", "webhookSubscription"))
    assert str(caught.value) == (
        "ACTITO is not configured: set ROUTER_ACTITO_API_KEY and ROUTER_ACTITO_ENTITY"
    )


def test_an_unreachable_api_is_a_retry_that_names_the_host_only() -> None:
    port = free_port()
    client = ActitoClient(config(f"http://127.0.0.1:{port}/secret-path"))
    with pytest.raises(RetryLater) as caught:
        run(client, lambda c: c.call("GET", "webhookSubscription"))
    assert str(caught.value).startswith(f"cannot connect to the ACTITO API at 127.0.0.1:{port}")
    assert "secret-path" not in str(caught.value)


def test_an_oversized_answer_is_given_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("router.actito.client.MAX_ANSWER_BYTES", 200)
    with FakeActito() as actito:
        actito.add_profile("16", 1, {"bio": "x" * 500})
        client = ActitoClient(config(actito.url))
        with pytest.raises(GiveUp, match="exceeds 200 bytes"):
            run(client, lambda c: c.call("GET", "table/16/profile/1"))


def test_path_segments_from_events_cannot_add_segments() -> None:
    from router.actito.client import segment

    assert segment("../x?y#z") == "..%2Fx%3Fy%23z"
    assert segment(1204) == "1204"


def test_neither_the_key_nor_a_token_reaches_the_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with FakeActito() as actito:
        actito.add_profile("16", 1, {})
        client = ActitoClient(config(actito.url, calls_per_minute=60_000))

        async def work(c: ActitoClient) -> None:
            await c.call("GET", "table/16/profile/1")
            actito.expire_tokens()
            await c.call("GET", "table/16/profile/1")

        run(client, work)
        assert client.token_fetches == 2
        text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
        assert "fetched an ACTITO access token" in text
        assert API_KEY not in text
        assert client._token is not None and client._token not in text
