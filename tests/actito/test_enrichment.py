"""Enrichment in the worker, on a real SQLite store, with the fake ACTITO and a real HTTP sink:
the profile is fetched when the job is delivered, rendered into the request, read once per
profile; a gone profile is a dead job with its reason, a busy ACTITO a retry; and a slow
ACTITO holds up the enriched deliveries only."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from router.actions.registry import build_deliverers, destination_of
from router.retry import RetryPolicy
from router.rules import Action
from router.settings import Settings
from router.store.base import IncomingRecord, NewJob, Status
from router.store.sqlite import SQLiteStore
from router.worker import Worker, WorkerLimits
from tests.actito.fake import API_KEY, ENTITY, FakeActito
from tests.sinks import HttpSink
from tests.test_worker import action_for

_T = TypeVar("_T")
DEADLINE = 20.0  # seconds a scenario may take


def enriched_http(tmp: Path, name: str, url: str) -> Action:
    return action_for(
        tmp,
        name,
        f"""type = "http"
url = "{url}"
enrich = ["profile"]
body = '''{{{{ {{"email": profile.attributes.emailAddress,
  "news": profile.subscriptions.get("Newsletter"),
  "tier": profile.segmentations.get("Tier")}} | tojson }}}}'''
""",
    )


def profile_record(profile_id: int, n: int = 0) -> dict[str, Any]:
    return {
        "id": f"push-{profile_id}-{n}",
        "tableType": "PROFILE_TABLE",
        "tableId": "16",
        "eventType": "DATA",
        "operation": "UPDATE",
        "fields": ["LoyaltyTier"],
        "data": {"profileId": profile_id, "n": n},
    }


async def enqueue(store: SQLiteStore, action: Action, records: list[dict[str, Any]]) -> list[str]:
    ids = []
    incoming = []
    for record in records:
        job_id = uuid.uuid4().hex
        ids.append(job_id)
        incoming.append(
            IncomingRecord(
                event_id=record["id"],
                dedupe_key=None,
                record=record,
                matched=("r",),
                jobs=(NewJob(job_id, "r", 0, action.type, action.spec, destination_of(action)),),
            )
        )
    await store.accept(incoming, ruleset_version="t", dedupe_window=0, now=time.time())
    return ids


def settings(actito: FakeActito, **more: Any) -> Settings:
    values: dict[str, Any] = {
        "actito_api_url": actito.url,
        "actito_api_key": API_KEY,
        "actito_entity": ENTITY,
        "actito_calls_per_minute": 60_000,
        "retry_base_delay": 0.01,
        "retry_max_delay": 0.05,
        **more,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


async def working(
    tmp: Path,
    config: Settings,
    scenario: Callable[[SQLiteStore, Worker], Awaitable[_T]],
) -> _T:
    """Run a worker (deliverers started) on a fresh store while `scenario` runs."""
    store = SQLiteStore(f"sqlite:///{tmp / 'w.db'}")
    await store.open()
    worker = Worker(
        store,
        build_deliverers(config),
        RetryPolicy.from_settings(config),
        secrets={},
        limits=WorkerLimits(concurrency=64, per_host=8, drain_grace=5),
    )
    for deliverer in worker.deliverers.values():
        await deliverer.start()
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        return await asyncio.wait_for(scenario(store, worker), DEADLINE)
    finally:
        stop.set()
        await task
        for deliverer in worker.deliverers.values():
            await deliverer.close()
        await store.close()


async def settled(store: SQLiteStore, ids: list[str], status: Status) -> list[Any]:
    """The jobs `ids`, once every one of them has `status` (polled, within the deadline)."""
    while True:
        jobs = [await store.get_job(job_id) for job_id in ids]
        if all(job is not None and job.summary.status == status for job in jobs):
            return jobs
        await asyncio.sleep(0.02)


def test_the_profile_is_fetched_at_delivery_and_read_once_per_profile(tmp_path: Path) -> None:
    with FakeActito() as actito, HttpSink() as sink:
        actito.add_profile(
            "16",
            1,
            {"emailAddress": "marie@example.be"},
            subscriptions={"Newsletter": True},
            segments={"Tier": "Gold"},
        )
        actito.add_profile(
            "16", 2, {"emailAddress": "jan@example.be"}, subscriptions={"Newsletter": False}
        )
        action = enriched_http(tmp_path, "r", sink.url("/crm"))

        async def scenario(store: SQLiteStore, worker: Worker) -> None:
            records = [profile_record(1, n) for n in range(6)] + [profile_record(2)]
            assert actito.calls == []  # accepting jobs asks nothing of ACTITO
            ids = await enqueue(store, action, records)
            await settled(store, ids, Status.DONE)

        asyncio.run(working(tmp_path, settings(actito), scenario))
        bodies = [json.loads(r.body) for r in sink.requests]
        assert len(bodies) == 7
        assert bodies.count({"email": "marie@example.be", "news": True, "tier": "Gold"}) == 6
        assert {"email": "jan@example.be", "news": False, "tier": None} in bodies
        assert len(actito.profile_reads()) == 2
        assert actito.token_fetches == 1


def test_a_gone_profile_is_a_dead_job_with_its_reason(tmp_path: Path) -> None:
    with FakeActito() as actito, HttpSink() as sink:
        action = enriched_http(tmp_path, "r", sink.url("/crm"))

        async def scenario(store: SQLiteStore, worker: Worker) -> Any:
            ids = await enqueue(store, action, [profile_record(404)])
            return await settled(store, ids, Status.DEAD)

        (job,) = asyncio.run(working(tmp_path, settings(actito), scenario))
        assert job.summary.last_error == (
            "profile 404 does not exist in the ACTITO profile table 16 (HTTP 404): it was "
            "deleted, or ACTITO knows the table by its name (see ROUTER_ACTITO_PROFILE_TABLES)"
        )
        assert len(job.history) == 1
        assert sink.requests == []


def test_a_busy_actito_is_retried_like_any_delivery(tmp_path: Path) -> None:
    with FakeActito() as actito, HttpSink() as sink:
        actito.add_profile("16", 1, {"emailAddress": "marie@example.be"})
        actito.fail(429)
        actito.fail(503)
        action = enriched_http(tmp_path, "r", sink.url("/crm"))

        async def scenario(store: SQLiteStore, worker: Worker) -> Any:
            ids = await enqueue(store, action, [profile_record(1)])
            return await settled(store, ids, Status.DONE)

        (job,) = asyncio.run(working(tmp_path, settings(actito), scenario))
        assert [a.error for a in job.history] == [
            "the ACTITO API answered HTTP 429 (more than its limit of calls at once)",
            "the ACTITO API answered HTTP 503",
            None,
        ]
        (request,) = sink.requests
        assert json.loads(request.body)["email"] == "marie@example.be"


def test_unconfigured_actito_keeps_the_job_and_says_what_to_set(tmp_path: Path) -> None:
    with FakeActito() as actito, HttpSink() as sink:
        action = enriched_http(tmp_path, "r", sink.url("/crm"))

        async def scenario(store: SQLiteStore, worker: Worker) -> Any:
            ids = await enqueue(store, action, [profile_record(1)])
            while True:
                (job,) = [await store.get_job(job_id) for job_id in ids]
                if job is not None and job.summary.attempts >= 2:
                    return job
                await asyncio.sleep(0.02)

        job = asyncio.run(working(tmp_path, settings(actito, actito_api_key=None), scenario))
        assert job.summary.status == Status.PENDING
        assert job.summary.last_error == ("ACTITO is not configured: set ROUTER_ACTITO_API_KEY")


def test_a_slow_actito_holds_up_enriched_deliveries_only(tmp_path: Path) -> None:
    # Three enriched rules, each to its own host: all their jobs wait for one API, so together
    # they hold what one destination may (8 in flight, 16 queued), not three times that, and
    # the plain deliveries go on while ACTITO answers nothing.
    with (
        FakeActito() as actito,
        HttpSink() as one,
        HttpSink() as two,
        HttpSink() as three,
        HttpSink() as plain_sink,
    ):
        actito.add_profile("16", 1, {"emailAddress": "marie@example.be"})
        enriched = [
            enriched_http(tmp_path, f"e{n}", sink.url("/crm"))
            for n, sink in enumerate((one, two, three))
        ]
        plain = action_for(tmp_path, "p", f'type = "http"\nurl = "{plain_sink.url("/p")}"')
        assert {destination_of(action) for action in enriched} == {"actito"}
        actito.hold()

        async def scenario(store: SQLiteStore, worker: Worker) -> None:
            waiting = []
            for action in enriched:
                waiting += await enqueue(store, action, [profile_record(1, n) for n in range(20)])
            done = await enqueue(store, plain, [profile_record(7, n) for n in range(20)])
            await settled(store, done, Status.DONE)  # while ACTITO answers nothing
            assert actito.held >= 1
            assert one.requests == two.requests == three.requests == []
            actito.release()
            await settled(store, waiting, Status.DONE)

        asyncio.run(working(tmp_path, settings(actito), scenario))
        assert len(plain_sink.requests) == 20
        assert [len(sink.requests) for sink in (one, two, three)] == [20, 20, 20]
