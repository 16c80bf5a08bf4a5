"""Batches delivered by the real worker to a real HTTP sink, on a real SQLite store: many records
to a request, every job done with its batch, a failing batch retried as a whole, a 4xx split in
halves until the bad record is alone, shadow batches recorded and never sent."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from router.actions.registry import destination_of
from router.rules import Action
from router.store.base import IncomingRecord, Mode, NewJob, Status
from router.store.sqlite import SQLiteStore
from tests.sinks import HttpSink, Reply
from tests.test_worker import action_for, make_worker, run_worker

DEADLINE = 20.0  # seconds any wait for the worker may take before the test fails


def batch_action(tmp: Path, sink: HttpSink, batch: str, name: str = "bulk") -> Action:
    return action_for(
        tmp,
        name,
        f'type = "http"\nurl = "{sink.url("/bulk")}"\nbatch = {batch}\n',
    )


async def accept(
    store: SQLiteStore, action: Action, datas: list[dict[str, Any]], *, mode: Mode = Mode.LIVE
) -> list[str]:
    """One record per item of `datas`, each with one job of `action`, accepted in order."""
    ids = [uuid.uuid4().hex for _ in datas]
    records = [
        IncomingRecord(
            event_id=f"e{n}",
            dedupe_key=None,
            record={"id": n, "data": data},
            matched=("bulk",),
            jobs=(NewJob(ids[n], "bulk", 0, "http", action.spec, destination_of(action), mode),),
        )
        for n, data in enumerate(datas)
    ]
    await store.accept(records, ruleset_version="t", dedupe_window=0, now=time.time())
    return ids


async def statuses(store: SQLiteStore) -> dict[str, Status]:
    return {job.id: job.status for job in await store.list_jobs(limit=10_000)}


async def until(check: Callable[[], Awaitable[bool]]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not await check():
        assert time.monotonic() < deadline, "the worker did not get there in time"
        await asyncio.sleep(0.02)


def bodies(sink: HttpSink) -> list[list[Any]]:
    return [json.loads(request.body) for request in sink.requests]


def test_many_records_go_in_one_request_and_every_job_is_done(tmp_path: Path) -> None:
    with HttpSink() as sink:
        action = batch_action(tmp_path, sink, '{ max_records = 10, max_wait = "5s" }')

        async def scenario() -> dict[str, Status]:
            store = SQLiteStore(f"sqlite:///{tmp_path / 'b.db'}")
            await store.open()
            await accept(store, action, [{"n": n} for n in range(25)])
            worker = make_worker(store, concurrency=8, per_host=2)
            await run_worker(worker, asyncio.Event(), drain=True)
            result = await statuses(store)
            await store.close()
            return result

        result = asyncio.run(scenario())
    sent = sorted(bodies(sink), key=len, reverse=True)
    assert [len(body) for body in sent] == [10, 10, 5]
    assert sorted(item["n"] for body in sent for item in body) == list(range(25))
    assert set(result.values()) == {Status.DONE} and len(result) == 25
    keys = [request.headers["Idempotency-Key"] for request in sink.requests]
    assert len(set(keys)) == 3 and all(key.startswith("batch-") for key in keys)


def test_a_batch_is_sent_when_its_first_record_has_waited_max_wait(tmp_path: Path) -> None:
    with HttpSink() as sink:
        action = batch_action(tmp_path, sink, '{ max_records = 500, max_wait = "100ms" }')

        async def scenario() -> dict[str, Status]:
            store = SQLiteStore(f"sqlite:///{tmp_path / 'b.db'}")
            await store.open()
            await accept(store, action, [{"n": n} for n in range(3)])
            stop = asyncio.Event()
            task = asyncio.create_task(
                run_worker(make_worker(store, concurrency=8, per_host=2), stop)
            )
            await sink.wait(1)  # far fewer than max_records: max_wait sends them
            await until(lambda: _all(store, Status.DONE, 3))
            stop.set()
            await task
            result = await statuses(store)
            await store.close()
            return result

        result = asyncio.run(scenario())
    assert [len(body) for body in bodies(sink)] == [3]
    assert set(result.values()) == {Status.DONE}


async def _all(store: SQLiteStore, status: Status, count: int) -> bool:
    seen = await statuses(store)
    return len(seen) == count and set(seen.values()) == {status}


def test_a_failing_batch_is_retried_as_a_whole(tmp_path: Path) -> None:
    with HttpSink() as sink:
        sink.script(Reply(503), Reply(503))
        action = batch_action(tmp_path, sink, '{ max_records = 6, max_wait = "50ms" }')

        async def scenario() -> dict[str, Status]:
            store = SQLiteStore(f"sqlite:///{tmp_path / 'b.db'}")
            await store.open()
            await accept(store, action, [{"n": n} for n in range(6)])
            stop = asyncio.Event()
            worker = make_worker(store, concurrency=8, per_host=2, backoff=0.05)
            task = asyncio.create_task(run_worker(worker, stop))
            await until(lambda: _all(store, Status.DONE, 6))
            stop.set()
            await task
            result = await statuses(store)
            await store.close()
            return result

        result = asyncio.run(scenario())
    # The same six records, together, three times: two failures, then delivered.
    assert [sorted(item["n"] for item in body) for body in bodies(sink)] == [list(range(6))] * 3
    assert set(result.values()) == {Status.DONE}


def test_a_4xx_splits_the_batch_until_the_bad_record_is_alone(tmp_path: Path) -> None:
    with HttpSink() as sink:
        # 8 records, the one at index 5 refused: [0-7] 400, [0-3] ok, [4-7] 400, [4,5] 400,
        # [4] ok, [5] 400 (dead), [6,7] ok.
        sink.script(Reply(400), Reply(200), Reply(400), Reply(400), Reply(200), Reply(400))
        action = batch_action(tmp_path, sink, '{ max_records = 8, max_wait = "5s" }')

        async def scenario() -> tuple[list[str], dict[str, Status], str | None]:
            store = SQLiteStore(f"sqlite:///{tmp_path / 'b.db'}")
            await store.open()
            ids = await accept(store, action, [{"n": n, "bad": n == 5} for n in range(8)])
            await run_worker(
                make_worker(store, concurrency=8, per_host=2), asyncio.Event(), drain=True
            )
            result = await statuses(store)
            detail = await store.get_job(ids[5])
            await store.close()
            assert detail is not None
            return ids, result, detail.summary.last_error

        ids, result, error = asyncio.run(scenario())
    sent = [[item["n"] for item in body] for body in bodies(sink)]
    assert sent == [list(range(8)), [0, 1, 2, 3], [4, 5, 6, 7], [4, 5], [4], [5], [6, 7]]
    assert result[ids[5]] is Status.DEAD
    assert all(result[job] is Status.DONE for n, job in enumerate(ids) if n != 5)
    assert error is not None and "HTTP 400" in error and "batch of 8" in error


def test_each_job_keeps_its_batch_s_answer_with_the_secrets_masked(tmp_path: Path) -> None:
    with HttpSink() as sink:
        # [0-3] refused, [0,1] accepted, [2,3] accepted: each job keeps the answer of the
        # request that settled it, echoing the secret it carried.
        sink.script(Reply(422, echo=True), Reply(200, echo=True), Reply(201, echo=True))
        action = action_for(
            tmp_path,
            "bulk",
            f'type = "http"\nurl = "{sink.url("/bulk")}"\n'
            'headers = { "X-Api-Key" = "{{ secrets.BULK_KEY }}" }\n'
            'batch = { max_records = 4, max_wait = "5s" }\n',
        )

        async def scenario() -> list[list[tuple[int | None, str | None]]]:
            store = SQLiteStore(f"sqlite:///{tmp_path / 'b.db'}")
            await store.open()
            ids = await accept(store, action, [{"n": n} for n in range(4)])
            worker = make_worker(
                store, concurrency=8, per_host=2, secrets={"BULK_KEY": "bulk-S3cret"}
            )
            await run_worker(worker, asyncio.Event(), drain=True)
            kept = []
            for job_id in ids:
                detail = await store.get_job(job_id)
                assert detail is not None
                kept.append([(a.status_code, a.response) for a in detail.history])
            await store.close()
            return kept

        kept = asyncio.run(scenario())
    assert [request.headers["X-Api-Key"] for request in sink.requests] == ["bulk-S3cret"] * 3
    assert [[code for code, _ in attempts] for attempts in kept] == [[200], [200], [201], [201]]
    for attempts in kept:
        ((_, response),) = attempts
        assert response is not None and "X-Api-Key: <secret BULK_KEY>" in response
        assert "S3cret" not in response
    assert '"n": 1' in str(kept[1]) and '"n": 3' in str(kept[3])  # its own request's echo


def test_a_record_its_batch_template_cannot_render_is_found_and_killed(tmp_path: Path) -> None:
    with HttpSink() as sink:
        body = "{% for r in records %}{{ r.data.name | upper }};{% endfor %}"
        action = action_for(
            tmp_path,
            "bulk",
            f'type = "http"\nurl = "{sink.url("/bulk")}"\nbody = "{body}"\n'
            'batch = { max_records = 4, max_wait = "5s" }\n',
        )

        async def scenario() -> tuple[list[str], dict[str, Status]]:
            store = SQLiteStore(f"sqlite:///{tmp_path / 'b.db'}")
            await store.open()
            names: list[dict[str, Any]] = [{"name": "a"}, {"name": "b"}, {}, {"name": "d"}]
            ids = await accept(store, action, names)
            await run_worker(
                make_worker(store, concurrency=8, per_host=2), asyncio.Event(), drain=True
            )
            result = await statuses(store)
            await store.close()
            return ids, result

        ids, result = asyncio.run(scenario())
    assert [request.body for request in sink.requests] == [b"A;B;", b"D;"]
    assert [result[job] for job in ids] == [Status.DONE, Status.DONE, Status.DEAD, Status.DONE]


def test_a_shadow_batch_is_recorded_and_never_sent(tmp_path: Path) -> None:
    with HttpSink() as sink:
        action = batch_action(tmp_path, sink, '{ max_records = 10, max_wait = "5s" }')

        async def scenario() -> dict[str, Status]:
            store = SQLiteStore(f"sqlite:///{tmp_path / 'b.db'}")
            await store.open()
            await accept(store, action, [{"n": n} for n in range(4)], mode=Mode.SHADOW)
            await run_worker(
                make_worker(store, concurrency=8, per_host=2), asyncio.Event(), drain=True
            )
            result = await statuses(store)
            await store.close()
            return result

        result = asyncio.run(scenario())
    assert sink.requests == []
    assert set(result.values()) == {Status.SHADOW} and len(result) == 4


def test_stopping_hands_back_a_batch_that_is_still_filling(tmp_path: Path) -> None:
    with HttpSink() as sink:
        action = batch_action(tmp_path, sink, '{ max_records = 500, max_wait = "300s" }')

        async def scenario() -> tuple[list[str], int]:
            store = SQLiteStore(f"sqlite:///{tmp_path / 'b.db'}")
            await store.open()
            ids = await accept(store, action, [{"n": n} for n in range(3)])
            stop = asyncio.Event()
            worker = make_worker(store, concurrency=8, per_host=2)
            task = asyncio.create_task(run_worker(worker, stop))
            await until(lambda: _claimed(worker))
            stop.set()
            await task
            # Handed back, not waiting for a lease to end: another worker takes them at once.
            again = await store.claim(limit=10, lease=60, now=time.time())
            await store.close()
            return ids, len(again)

        ids, claimed = asyncio.run(scenario())
    assert sink.requests == []
    assert claimed == len(ids)


async def _claimed(worker: Any) -> bool:
    return bool(worker._batches.held)
