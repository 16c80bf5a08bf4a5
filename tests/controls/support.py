"""What the delivery-control tests share: a sink that fails first attempts at random and counts
requests in flight, stores on both backends, the real engine and real workers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from router.actions.registry import build_deliverers
from router.circuit import CircuitPolicy, OnTransition
from router.engine import Engine
from router.matching import RuleSet
from router.retry import RetryPolicy
from router.rulefiles.loader import load_rules
from router.settings import Settings
from router.store import open_store
from router.store.base import Store
from router.worker import Worker, WorkerLimits
from tests.e2e.pg import fresh_database
from tests.sinks import HttpRequest, HttpSink, Reply


class FlakySink(HttpSink):
    """An HTTP sink that answers the first attempt of a job (by Idempotency-Key) with 503 at
    random (`fail_first` of them), every other request with `default`; it records each request
    and the most requests it had in flight at once."""

    def __init__(self, fail_first: float = 0.0, *, seed: int = 7, default: Reply | None = None):
        super().__init__(default)
        self.fail_first = fail_first
        self.rng = random.Random(seed)
        self.seen: set[str] = set()
        self.in_flight = 0
        self.most_in_flight = 0
        self.failed = 0
        self.fail_paths: dict[str, int] = {}  # path -> the status every request of it gets
        self.answers: list[tuple[str, int]] = []  # (path, status), in arrival order

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport else ("?", 0)
        key = request.headers.get("Idempotency-Key", "")
        with self._lock:
            first = key not in self.seen
            self.seen.add(key)
            fail = first and self.rng.random() < self.fail_first
            self.failed += fail
            if request.path in self.fail_paths:
                reply = Reply(self.fail_paths[request.path])
            elif fail:
                reply = Reply(503)
            else:
                reply = self._script.popleft() if self._script else self.default
            self.answers.append((request.path, reply.status))
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if reply.delay > 0:
                await asyncio.sleep(reply.delay)
        finally:
            with self._lock:
                self.in_flight -= 1
        self._arrived(
            HttpRequest(
                method=request.method,
                path=request.path,
                query=request.query_string,
                headers=CIMultiDictProxy(CIMultiDict(request.headers)),
                body=body,
                peer=(peer[0], peer[1]),
                target=request.raw_path,
            )
        )
        return web.Response(status=reply.status)


@contextlib.contextmanager
def store_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A store URL of `backend` ("sqlite": a file; "postgres": a fresh database)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'router.db'}"
        return
    if not os.environ.get("ROUTER_TEST_POSTGRES_URL"):
        pytest.skip("set ROUTER_TEST_POSTGRES_URL (a server URL allowed to CREATE DATABASE)")
    with fresh_database() as url:
        yield url


BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def rules(tmp_path: Path, text: str) -> RuleSet:
    directory = tmp_path / f"rules-{uuid.uuid4().hex[:8]}"
    directory.mkdir()
    (directory / "rules.toml").write_text(text)
    return load_rules(directory)


def make_worker(
    store: Store,
    *,
    per_host: int = 8,
    backoff: float = 0.01,
    circuit: CircuitPolicy | None = None,
    on_transition: OnTransition | None = None,
    max_age: float = 86400.0,
) -> Worker:
    settings = Settings(
        retry_base_delay=backoff, retry_max_delay=max(backoff, 0.05), retry_max_age=max_age
    )
    return Worker(
        store,
        build_deliverers(settings),
        RetryPolicy.from_settings(settings),
        secrets={},
        limits=WorkerLimits(concurrency=64, per_host=per_host, lease=30, drain_grace=10),
        circuit=circuit,
        on_transition=on_transition,
    )


@dataclass
class Deployment:
    """An engine (the intake's) and `workers` workers, each on its own store instance: as
    separate processes would be, sharing only the database."""

    engine: Engine
    stores: list[Store]
    workers: list[Worker]

    async def push(self, records: Sequence[dict[str, Any]]) -> None:
        await self.engine.accept(records)


@contextlib.asynccontextmanager
async def deployment(
    url: str, ruleset: RuleSet, *, workers: int = 1, running: bool = True, **worker_options: Any
) -> AsyncIterator[Deployment]:
    intake = open_store(url)
    await intake.open()
    engine = Engine(intake, ruleset, dedupe_window=0)
    await engine.declare_destinations()
    stores = [open_store(url) for _ in range(workers)]
    for store in stores:
        await store.open()
    made = [make_worker(store, **worker_options) for store in stores]
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    for worker in made:
        for deliverer in worker.deliverers.values():
            await deliverer.start()
        if running:
            tasks.append(asyncio.create_task(worker.run(stop)))
    try:
        yield Deployment(engine, [intake, *stores], made)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        for worker in made:
            for deliverer in worker.deliverers.values():
                await deliverer.close()
        for store in [intake, *stores]:
            await store.close()


def delivered(sink: FlakySink) -> list[str]:
    """The paths the sink answered with a 2xx, in arrival order."""
    with sink._lock:
        return [path for path, status in sink.answers if 200 <= status < 300]


async def until(check: Any, *, deadline: float = 30.0, what: str = "the condition") -> None:
    """Poll `check()` (sync or async) until it is true; AssertionError after `deadline` s."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def event(n: int, **data: Any) -> dict[str, Any]:
    """A profile-table record."""
    return {
        "id": f"evt-{n}",
        "tableType": "PROFILE_TABLE",
        "operation": "UPDATE",
        "data": {"n": n, **data},
    }
