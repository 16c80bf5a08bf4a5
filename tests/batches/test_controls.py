"""Batches under the delivery controls: a batch is one delivery to its destination. Its request
takes one slot of the declared rate and concurrency (its records none), shared by every worker;
a pause holds its jobs; its answer is one outcome for the circuit, and while the circuit is
open its jobs wait unattempted; with order_by, a batch carries at most one record of a key, so
every key's records arrive in order. Real engine, real workers, a real sink, both backends."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from pathlib import Path

import pytest

from router.circuit import CLOSED, OPEN, CircuitPolicy, Transition
from router.store import open_store
from router.store.base import Status, Store
from tests.controls.support import BACKENDS, FlakySink, deployment, event, rules, store_url, until
from tests.sinks import Reply

RECORDS = 40


def batch_rules(base: str, limits: str = "", extra: str = "") -> str:
    return f"""
[[destination]]
url = "{base}/"
{limits}

[[rule]]
name = "crm"
[[rule.action]]
type = "http"
url = "{base}/bulk"
body = "{{{{ records | map(attribute='data') | list | tojson }}}}"
batch = {{ max_records = 10, max_wait = "50ms" }}
{extra}
"""


def batches(sink: FlakySink) -> list[list[dict[str, int]]]:
    """The records of each request that was answered with a 2xx, in arrival order (a sink
    that answers at once: its answers and its requests are in the same order)."""
    answered = [status for _path, status in sink.answers]
    return [
        json.loads(request.body)
        for request, status in zip(sink.requests, answered, strict=True)
        if 200 <= status < 300
    ]


async def all_done(store: Store, count: int) -> bool:
    jobs = await store.list_jobs(rule="crm", limit=count)
    return len(jobs) == count and {job.status for job in jobs} == {Status.DONE}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_batch_request_takes_one_slot_of_rate_and_concurrency(
    backend: str, tmp_path: Path
) -> None:
    with store_url(backend, tmp_path) as url:
        ruleset = rules(
            tmp_path, batch_rules("https://crm.example.com", 'rate = "10/s"\nconcurrency = 1')
        )

        async def scenario() -> None:
            async with deployment(url, ruleset, running=False) as d:
                await d.push([event(n) for n in range(RECORDS)])
                other = open_store(url)
                await other.open()
                try:
                    now = time.time() + 1  # every job due
                    claimed = await d.stores[1].claim(limit=100, lease=30, now=now)
                    # Records take no slot: all of them, where single jobs would get 11.
                    assert len(claimed) == RECORDS
                    assert {job.not_before for job in claimed} == {None}
                    key = claimed[0].destination
                    first = await d.stores[1].take_slot(key, token="a", until=now + 30, now=now)
                    # The one concurrent request is out, whichever store asks.
                    assert await other.take_slot(key, token="b", until=now + 30, now=now) is None
                    await d.stores[1].free_slot("a")
                    second = await other.take_slot(key, token="b", until=now + 30, now=now)
                    await other.free_slot("b")
                    third = await other.take_slot(key, token="c", until=now + 30, now=now)
                finally:
                    await other.close()
                assert first == now
                assert second == pytest.approx(now + 0.1, abs=1e-6)  # one request per 1/rate
                assert third == pytest.approx(now + 0.2, abs=1e-6)

        asyncio.run(scenario())


@pytest.mark.parametrize("backend", BACKENDS)
def test_batches_of_two_workers_hold_the_destinations_limits(backend: str, tmp_path: Path) -> None:
    with (
        FlakySink(default=Reply(200, delay=0.05)) as sink,
        store_url(backend, tmp_path) as url,
    ):
        ruleset = rules(
            tmp_path, batch_rules(sink.url("").rstrip("/"), 'rate = "20/s"\nconcurrency = 1')
        )

        async def scenario() -> None:
            async with deployment(url, ruleset, workers=2) as d:
                await d.push([event(n) for n in range(RECORDS)])
                await until(lambda: all_done(d.stores[0], RECORDS), what="every job done")

        asyncio.run(scenario())
    sent = [json.loads(request.body) for request in sink.requests]  # every answer a 200
    assert sorted(record["n"] for batch in sent for record in batch) == list(range(RECORDS))
    assert sink.most_in_flight == 1  # one request at a time, for both workers
    assert max(len(batch) for batch in sent) == 10  # full batches: records took no slot


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_paused_rule_holds_its_batches(backend: str, tmp_path: Path) -> None:
    with FlakySink() as sink, store_url(backend, tmp_path) as url:
        ruleset = rules(tmp_path, batch_rules(sink.url("").rstrip("/")))

        async def scenario() -> None:
            async with deployment(url, ruleset, running=False) as d:
                await d.stores[0].pause("rule", "crm", now=time.time())
                await d.push([event(n) for n in range(5)])
                await d.workers[0].run(asyncio.Event(), drain=True)
                jobs = await d.stores[0].list_jobs(rule="crm")
                assert {job.status for job in jobs} == {Status.PENDING}
                assert sink.requests == []
                assert await d.stores[0].resume("rule", "crm", now=time.time()) == 5
                await d.workers[0].run(asyncio.Event(), drain=True)

        asyncio.run(scenario())
    assert [[record["n"] for record in batch] for batch in batches(sink)] == [[0, 1, 2, 3, 4]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_failing_batches_open_the_circuit_and_their_jobs_wait(backend: str, tmp_path: Path) -> None:
    policy = CircuitPolicy(failures=2, probe_delay=0.2, probe_max_delay=0.4)
    with FlakySink(default=Reply(503)) as sink, store_url(backend, tmp_path) as url:
        ruleset = rules(tmp_path, batch_rules(sink.url("").rstrip("/")))
        changes: list[Transition] = []

        async def scenario() -> None:
            async with deployment(url, ruleset, circuit=policy, on_transition=changes.append) as d:
                await d.push([event(n) for n in range(RECORDS)])
                await until(lambda: changes, what="the circuit to open")
                assert (changes[0].old, changes[0].new) == (CLOSED, OPEN)
                # Two failed requests opened it: one outcome per batch, not one per record.
                assert changes[0].detail.startswith(f"circuit of 127.0.0.1:{sink.port}/ opened")
                opened_at = len(sink.requests)
                await until(lambda: len(sink.requests) >= opened_at + 3, what="three probes")
                probes = [json.loads(r.body) for r in sink.requests[-2:]]
                assert [len(probe) for probe in probes] == [1, 1]  # one job at a time, alone
                sink.default = Reply(200)
                await until(lambda: len(changes) >= 2, what="the circuit to close")
                assert (changes[1].old, changes[1].new) == (OPEN, CLOSED)
                await until(lambda: all_done(d.stores[0], RECORDS), what="every job done")
                jobs = await d.stores[0].list_jobs(rule="crm", limit=RECORDS)
                # An attempt per record sent: the jobs that waited for the circuit spent none.
                sent = sum(len(json.loads(r.body)) for r in sink.requests)
                assert sum(job.attempts for job in jobs) == sent

        asyncio.run(scenario())


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_batch_with_order_by_carries_one_record_of_a_key(backend: str, tmp_path: Path) -> None:
    keys, per_key = 5, 4
    with FlakySink(fail_first=0.3) as sink, store_url(backend, tmp_path) as url:
        ruleset = rules(
            tmp_path, batch_rules(sink.url("").rstrip("/"), extra='order_by = "{{ data.key }}"')
        )

        async def scenario() -> None:
            async with deployment(url, ruleset, workers=2) as d:
                records = [event(n, key=n % keys) for n in range(keys * per_key)]
                await d.push(records)
                await until(lambda: all_done(d.stores[0], keys * per_key), what="every job done")

        asyncio.run(scenario())
    arrived: defaultdict[int, list[int]] = defaultdict(list)
    for batch in batches(sink):
        assert len({record["key"] for record in batch}) == len(batch)  # one record per key
        for record in batch:
            arrived[record["key"]].append(record["n"])
    assert arrived == {k: [n for n in range(keys * per_key) if n % keys == k] for k in range(keys)}
