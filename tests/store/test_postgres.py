"""What only the PostgreSQL store promises: replicas sharing one database (SKIP LOCKED claims,
dedupe by primary key, NOTIFY wake-ups), a versioned schema migrated safely by several replicas at
once, and outages that surface quickly as StoreUnavailable and heal without a restart."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import asyncpg
import pytest

from router.exceptions import StoreUnavailable
from router.store.base import AcceptResult, AttemptResult, Outcome, Store
from router.store.migrations import FLOOR_KEY, SCHEMA_VERSION
from router.store.postgres import CONNECT_TIMEOUT, POOL_SIZE, PostgresStore

from .conftest import LEASE, T0, Backend, accept, incoming, new_job

QUIET = 0.3  # seconds without a wake-up after which a store counts as idle
WAKE_DEADLINE = 5.0  # a notified waiter (waiting 60 s) must return well within this
NO_WAKE = 1.0  # a notice takes milliseconds: none within this, none was sent


@asynccontextmanager
async def replicas(url: str, count: int, *, pool_size: int = 3) -> AsyncIterator[list[Store]]:
    """`count` stores on one database, as separate router processes would have."""
    stores: list[Store] = [PostgresStore(url, pool_size=pool_size) for _ in range(count)]
    await asyncio.gather(*(store.open() for store in stores))
    try:
        yield stores
    finally:
        await asyncio.gather(*(store.close() for store in stores))


async def sql(url: str, statement: str, *args: object) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(statement, *args)
    finally:
        await conn.close()


async def quiet(store: Store) -> None:
    """Consume the wake-ups already on their way, until none comes for QUIET seconds."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        started = time.monotonic()
        await store.wait_for_work(QUIET)
        if time.monotonic() - started >= QUIET * 0.9:  # loop timers may fire a hair early
            return
    raise AssertionError("the store never stopped waking up")


async def wakes(
    store: Store, trigger: Callable[[], Awaitable[object]], within: float = WAKE_DEADLINE
) -> bool:
    """Does `trigger` wake a worker idling on `store` in wait_for_work(60), `within` seconds?"""
    await quiet(store)
    waiter = asyncio.create_task(store.wait_for_work(60))
    await asyncio.sleep(0)  # the waiter is waiting now
    await trigger()
    try:
        await asyncio.wait_for(waiter, within)
    except TimeoutError:
        return False
    return True


async def terminate_backends(url: str, database: str | None = None, *, wait: bool = True) -> int:
    """Kill every other session of `database` (default: the one `url` names), as a server
    restart would; with `wait`, return once they are gone."""
    conn = await asyncpg.connect(url)
    try:
        others = """
            SELECT array_agg(pid) FROM pg_stat_activity
            WHERE datname = coalesce($1, current_database()) AND pid <> pg_backend_pid()
        """
        killed = await conn.fetchval(others, database) or []
        await conn.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", killed)
        alive = "SELECT count(*) FROM pg_stat_activity WHERE pid = any($1::int[])"
        deadline = time.monotonic() + 10
        while wait and await conn.fetchval(alive, killed):
            assert time.monotonic() < deadline, "terminated sessions did not go away"
            await asyncio.sleep(0.02)
        return len(killed)
    finally:
        await conn.close()


@pytest.mark.postgres
def test_replicas_never_claim_the_same_job(pg: Backend) -> None:
    async def main() -> Counter[str]:
        async with replicas(pg.url, 4) as stores:
            await accept(stores[0], *(incoming(f"k{i}", event_id=str(i)) for i in range(300)))
            claimed: Counter[str] = Counter()

            async def worker(store: Store) -> None:
                while batch := await store.claim(limit=5, lease=LEASE, now=T0):
                    claimed.update(job.id for job in batch)
                    done = [
                        AttemptResult(j.id, j.lease_token, Outcome.DONE, T0, 0.1) for j in batch
                    ]
                    await store.record(done, now=T0)

            await asyncio.gather(*(worker(store) for store in stores for _ in range(3)))
            return claimed

    claimed = asyncio.run(main())
    assert len(claimed) == 300
    assert max(claimed.values()) == 1


@pytest.mark.postgres
def test_dedupe_holds_across_replicas(pg: Backend) -> None:
    async def main() -> tuple[int, int]:
        async with replicas(pg.url, 2) as (a, b):
            results: list[AcceptResult] = []
            for i in range(30):  # the same push reaching two replicas at the same moment
                results += await asyncio.gather(
                    accept(a, incoming(f"k{i}")), accept(b, incoming(f"k{i}"))
                )
            # Batches sharing keys in opposite orders must neither deadlock nor both win.
            keys = [f"batch{i}" for i in range(20)]
            results += await asyncio.gather(
                accept(a, *(incoming(key) for key in keys)),
                accept(b, *(incoming(key) for key in reversed(keys))),
            )
            jobs = await a.claim(limit=1000, lease=LEASE, now=T0)
            assert len(jobs) == 50
            return sum(r.accepted for r in results), sum(r.duplicates for r in results)

    assert asyncio.run(main()) == (50, 50)


@pytest.mark.postgres
def test_one_bad_push_does_not_fail_the_pushes_sharing_its_commit(pg: Backend) -> None:
    # Concurrent pushes share a transaction (group commit); a push the database refuses
    # (here a non-finite number, which the intake rejects but the store must not trust)
    # fails alone.
    async def main() -> list[object]:
        async with replicas(pg.url, 1) as (store,):
            bad = incoming("bad", record={"id": "bad", "data": {"x": float("inf")}})
            return await asyncio.gather(
                accept(store, incoming("good-1")),
                accept(store, bad),
                accept(store, incoming("good-2")),
                return_exceptions=True,
            )

    first, second, third = asyncio.run(main())
    assert first == AcceptResult(1, 0) and third == AcceptResult(1, 0)
    assert isinstance(second, Exception) and not isinstance(second, StoreUnavailable)


Trigger = Callable[[Store, str, tuple[str, str]], Awaitable[object]]
# name -> (what the intake replica does, given a dead job id and a held claim; wakes workers?)
TRIGGERS: dict[str, tuple[Trigger, bool]] = {
    "accept": (lambda store, dead_id, claim: accept(store, incoming("new")), True),
    "replay": (lambda store, dead_id, claim: store.replay([dead_id], now=T0), True),
    "replay_dead": (lambda store, dead_id, claim: store.replay_dead(rule=None, now=T0), True),
    "release": (lambda store, dead_id, claim: store.release([claim], next_at=T0), True),
    "a read (control)": (lambda store, dead_id, claim: store.stats(now=T0), False),
}


@pytest.mark.postgres
@pytest.mark.parametrize("trigger", list(TRIGGERS))
def test_notify_wakes_a_worker_of_another_replica(pg: Backend, trigger: str) -> None:
    action, expected = TRIGGERS[trigger]

    async def main() -> tuple[bool, float]:
        async with replicas(pg.url, 2) as (intake, worker):
            await accept(intake, incoming("dead", jobs=[new_job("crm")]), incoming("leased"))
            first, second = await intake.claim(limit=2, lease=LEASE, now=T0)
            dead = AttemptResult(first.id, first.lease_token, Outcome.DEAD, T0, 0.1, 410, "gone")
            await intake.record([dead], now=T0)
            started = time.monotonic()
            claim = (second.id, second.lease_token)
            within = WAKE_DEADLINE if expected else NO_WAKE
            woken = await wakes(worker, lambda: action(intake, first.id, claim), within)
            return woken, time.monotonic() - started

    woken, elapsed = asyncio.run(main())
    assert woken is expected
    if expected:
        assert elapsed < WAKE_DEADLINE


@pytest.mark.postgres
def test_concurrent_opens_migrate_once(pg: Backend) -> None:
    async def main() -> None:
        stores = [PostgresStore(pg.url, pool_size=2) for _ in range(4)]
        applied = await asyncio.gather(*(store.migrate() for store in stores))
        assert sorted(applied) == [[], [], [], list(range(1, SCHEMA_VERSION + 1))]
        async with replicas(pg.url, 3):  # opening (and migrating) at once, again
            pass
        assert [await store.migrate() for store in stores] == [[]] * 4
        assert {await store.schema_version() for store in stores} == {SCHEMA_VERSION}
        await asyncio.gather(*(store.close() for store in stores))
        assert await sql(pg.url, "SELECT count(*) FROM schema_version") == SCHEMA_VERSION

    asyncio.run(main())


# A store the next release migrated with a step that is not additive (it records that floor).
NEWER_AND_BREAKING = [
    f"INSERT INTO schema_version (version) VALUES ({SCHEMA_VERSION + 1})",
    f"UPDATE store_meta SET value = '{SCHEMA_VERSION + 1}' WHERE key = '{FLOOR_KEY}'",
]


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("setup", "migrate", "message"),
    [
        ([], False, f"schema version 0, expected {SCHEMA_VERSION}; run `router migrate`"),
        (
            [f"DELETE FROM schema_version WHERE version = {SCHEMA_VERSION}"],
            False,
            f"schema version {SCHEMA_VERSION - 1}, expected {SCHEMA_VERSION}; run `router migrate`",
        ),
        (
            NEWER_AND_BREAKING,
            False,
            f"schema version {SCHEMA_VERSION + 1} needs a router of schema version "
            f"{SCHEMA_VERSION + 1} or newer and this one has {SCHEMA_VERSION}",
        ),
        (
            NEWER_AND_BREAKING,
            True,
            f"schema version {SCHEMA_VERSION + 1} needs a router of schema version "
            f"{SCHEMA_VERSION + 1} or newer and this one has {SCHEMA_VERSION}",
        ),
    ],
    ids=["empty", "old", "newer", "newer-migrating"],
)
def test_a_schema_that_is_not_current_is_refused(
    pg: Backend, setup: list[str], migrate: bool, message: str
) -> None:
    async def main() -> None:
        if setup:
            store = PostgresStore(pg.url)
            await store.migrate()
            await store.close()
            for statement in setup:
                await sql(pg.url, statement)
        store = PostgresStore(pg.url)
        with pytest.raises(StoreUnavailable) as raised:
            await store.open(migrate=migrate)
        assert message in str(raised.value)
        with pytest.raises(StoreUnavailable):  # a failed open leaves the store closed
            await store.ping()

    asyncio.run(main())


@pytest.mark.postgres
def test_the_store_recovers_after_its_connections_are_killed(pg: Backend) -> None:
    async def main() -> None:
        async with replicas(pg.url, 2) as (store, other):
            # Used at once, pooled connections meet their dying backends mid-statement; used
            # later, the pool already knows they are closed. Both must go unnoticed.
            for round_, wait in enumerate([False, True]):
                await asyncio.gather(*(store.ping() for _ in range(6)))  # fill the pool
                assert await terminate_backends(pg.url, wait=wait) >= 3  # pools and listeners
                results = await asyncio.gather(
                    accept(store, incoming(f"k{round_}")),
                    store.claim(limit=10, lease=LEASE, now=T0),
                    store.stats(now=T0),
                    store.list_jobs(),
                )
                assert results[0].accepted == 1
                # The listener is back too: a job from the other replica wakes this one.
                assert await wakes(store, lambda: accept(other, incoming(None)))

    asyncio.run(main())


@pytest.mark.postgres
def test_an_outage_is_unavailable_quickly_and_heals_without_a_restart(pg: Backend) -> None:
    server = os.environ["ROUTER_TEST_POSTGRES_URL"]
    name = pg.url.rsplit("/", 1)[1]

    async def main() -> None:
        async with replicas(pg.url, 1) as (store,):
            await accept(store, incoming("before"))
            try:
                await sql(server, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                await terminate_backends(server, name)
                operations: list[Callable[[], Awaitable[object]]] = [
                    store.ping,
                    lambda: store.stats(now=T0),
                    lambda: accept(store, incoming("x")),
                ]
                for operation in operations:
                    started = time.monotonic()
                    with pytest.raises(StoreUnavailable, match="not currently accepting"):
                        await operation()
                    assert time.monotonic() - started < CONNECT_TIMEOUT
                await store.wait_for_work(0.05)  # the listener cannot come back: a plain timeout
            finally:
                await sql(server, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            assert (await accept(store, incoming("after"))).accepted == 1
            assert len(await store.claim(limit=10, lease=LEASE, now=T0)) == 2

    asyncio.run(main())


@pytest.mark.postgres
def test_a_spec_is_written_once_until_the_store_connects_again(pg: Backend) -> None:
    async def specs() -> object:
        return await sql(pg.url, "SELECT count(*) FROM specs")

    async def main() -> None:
        async with replicas(pg.url, 1) as (store,):
            await accept(store, incoming("a"))
            assert await specs() == 1
            # Written once: later pushes of the same action send no spec (shown by its
            # absence once the row is gone behind the store's back).
            await sql(pg.url, "DELETE FROM specs")
            await accept(store, incoming("b"))
            assert await specs() == 0
            # A new connection may reach a database without it (a failover to a standby that
            # missed the latest commits): the store writes its specs again.
            await terminate_backends(pg.url)
            await accept(store, incoming("c"))
            assert await specs() == 1
            claimed = await store.claim(limit=10, lease=LEASE, now=T0)
            assert len(claimed) == 3  # the spec written again serves "b" too

    asyncio.run(main())


@pytest.mark.postgres
def test_text_postgresql_cannot_hold_is_stored_anyway(pg: Backend) -> None:
    record = {"id": "a\x00b", "data": {"nul": "x\u0000y", "surrogate": "\ud800", "emoji": "👍"}}

    async def body(store: Store) -> None:
        job = new_job()
        await accept(store, incoming("k", jobs=[job], event_id="a\x00b", record=record))
        detail = await store.get_job(job.id)
        assert detail is not None
        assert detail.record == record  # json keeps the escapes that jsonb and text refuse
        assert detail.summary.event_id == "a\ufffdb"

    pg.run(body)


def test_a_closed_port_is_unavailable_quickly() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def main() -> None:
        store = PostgresStore(f"postgresql://router:s3cret@127.0.0.1:{port}/router")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as raised:
            await store.open()
        assert time.monotonic() - started < CONNECT_TIMEOUT
        assert f"127.0.0.1:{port}/router" in str(raised.value)
        assert "s3cret" not in str(raised.value)

    asyncio.run(main())


@pytest.mark.parametrize(
    ("url", "argument", "size"),
    [
        ("postgresql://router@db:5432/router", None, POOL_SIZE),
        ("postgres://router@db/router?pool_size=3", None, 3),
        ("postgresql://router@db/router?pool_size=3&sslmode=disable", 7, 7),
    ],
)
def test_pool_size(url: str, argument: int | None, size: int) -> None:
    assert PostgresStore(url, pool_size=argument).pool_size == size


@pytest.mark.parametrize(
    "url",
    [
        "mysql://router@db/router",
        "sqlite:///x.db",
        "postgresql://router@db/router?pool_size=0",
        "postgresql://router@db/router?pool_size=many",
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        PostgresStore(url)


@pytest.mark.postgres
def test_pool_size_from_the_url_bounds_the_connections(pg: Backend) -> None:
    async def body(store: Store) -> object:
        # Twenty concurrent operations share the two pooled connections (and one listener).
        await asyncio.gather(*(store.list_jobs() for _ in range(20)))
        return await sql(
            pg.url,
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'router'",
        )

    assert Backend("postgres", pg.url + "?pool_size=2").run(body) == 2
