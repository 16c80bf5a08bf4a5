"""Ordering per key, end to end: the real engine accepts, several real workers deliver to a
real sink whose first attempts fail at random, on SQLite and PostgreSQL; `on_dead` decides
whether a dead job holds up the later jobs of its key."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from pathlib import Path

import pytest

from router.store.base import Status
from tests.controls.support import (
    BACKENDS,
    FlakySink,
    delivered,
    deployment,
    event,
    rules,
    store_url,
    until,
)

KEYS = 12
PER_KEY = 8


def ordered_rules(sink: FlakySink, on_dead: str = "continue") -> str:
    return f"""
[[rule]]
name = "crm"
[[rule.action]]
type = "http"
url = "{sink.url()}{{{{ data.key }}}}/{{{{ data.n }}}}"
order_by = "{{{{ data.key }}}}"
on_dead = "{on_dead}"
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_key_arrives_in_acceptance_order_despite_random_failures(
    backend: str, tmp_path: Path
) -> None:
    with FlakySink(fail_first=0.4) as sink, store_url(backend, tmp_path) as url:
        ruleset = rules(tmp_path, ordered_rules(sink))

        async def scenario() -> None:
            async with deployment(url, ruleset, workers=3) as d:
                # Interleaved keys, several pushes: each key's jobs spread over the queue.
                for n in range(PER_KEY):
                    await d.push([event(n, key=f"k{k}") for k in range(KEYS)])
                await until(
                    lambda: len(delivered(sink)) >= KEYS * PER_KEY,
                    deadline=60,
                    what="every job delivered",
                )

        asyncio.run(scenario())
        assert sink.failed > 0, "the sink failed no first attempt: nothing was tested"
        seen: dict[str, list[int]] = defaultdict(list)
        with sink._lock:
            answers = list(sink.answers)
        for path, _status in answers:  # every attempt, failed ones included
            key, n = path.strip("/").split("/")
            seen[key].append(int(n))
        for key, numbers in seen.items():
            # A later job is sent only once every earlier one of its key was delivered: the
            # attempts of a key never go back (a retry repeats its own number).
            assert numbers == sorted(numbers), f"{key} arrived out of order: {numbers}"
            assert sorted(set(numbers)) == list(range(PER_KEY))
        oks = delivered(sink)
        assert len(oks) == len(set(oks)) == KEYS * PER_KEY


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_dead_job_holds_its_key_until_discarded_and_never_another_key(
    backend: str, tmp_path: Path
) -> None:
    with FlakySink() as sink, store_url(backend, tmp_path) as url:
        sink.fail_paths["/a/0"] = 400  # a permanent failure: dead at once
        ruleset = rules(tmp_path, ordered_rules(sink, on_dead="hold"))

        async def scenario() -> None:
            async with deployment(url, ruleset, running=False) as d:
                await d.push([event(0, key="a"), event(0, key="b")])
                await d.push([event(1, key="a"), event(1, key="b")])
                await d.workers[0].run(asyncio.Event(), drain=True)
                assert sorted(delivered(sink)) == ["/b/0", "/b/1"]
                store = d.stores[0]
                jobs = {j.id: j for j in await store.list_jobs(rule="crm")}
                dead = [j for j in jobs.values() if j.status is Status.DEAD]
                waiting = [j for j in jobs.values() if j.status is Status.PENDING]
                assert len(dead) == 1 and len(waiting) == 1
                assert waiting[0].attempts == 0  # held, never attempted
                assert await store.discard([dead[0].id], now=time.time()) == [dead[0].id]
                assert await store.discard([dead[0].id], now=time.time()) == []  # once
                await d.workers[0].run(asyncio.Event(), drain=True)
                assert delivered(sink)[-1] == "/a/1"

        asyncio.run(scenario())


@pytest.mark.parametrize("backend", BACKENDS)
def test_on_dead_continue_lets_the_later_jobs_go(backend: str, tmp_path: Path) -> None:
    with FlakySink() as sink, store_url(backend, tmp_path) as url:
        sink.fail_paths["/a/0"] = 400
        ruleset = rules(tmp_path, ordered_rules(sink, on_dead="continue"))

        async def scenario() -> None:
            async with deployment(url, ruleset, running=False) as d:
                await d.push([event(0, key="a")])
                await d.push([event(1, key="a")])
                await d.workers[0].run(asyncio.Event(), drain=True)

        asyncio.run(scenario())
        assert [path for path, _ in sink.answers] == ["/a/0", "/a/1"]
        assert delivered(sink) == ["/a/1"]
