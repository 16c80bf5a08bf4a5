"""Store backends for the contract suite, and small builders the store tests share.

`backend` is parametrised: `sqlite` (a file in tmp_path) and `postgres` (a fresh database per
test, created through ROUTER_TEST_POSTGRES_URL and dropped after; skipped when that variable is
unset or the PostgreSQL backend is not there). Tests run their async body with `backend.run`,
which opens a store, awaits the body and closes the store inside one `asyncio.run`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest

from router.store import open_store
from router.store.base import AcceptResult, IncomingRecord, NewJob, Store

T = TypeVar("T")

T0 = 1_700_000_000.0  # the tests' clock starts here; every time is passed in explicitly
DAY = 86400.0
LEASE = 60.0
RULESET = "rules-v1"
SPEC: Mapping[str, Any] = {
    "type": "http",
    "method": "POST",
    "url": "https://crm.example.com/contacts/{{ data.profileId }}",
    "headers": {"Authorization": "Bearer {{ secrets.CRM_TOKEN }}"},
    "timeout": 10,
}


@dataclass(frozen=True)
class Backend:
    name: str
    url: str

    def make(self) -> Store:
        return open_store(self.url)

    def run(self, body: Callable[[Store], Awaitable[T]], *, migrate: bool = True) -> T:
        """Open a store, await `body(store)`, close the store: all in one event loop."""

        async def main() -> T:
            store = self.make()
            await store.open(migrate=migrate)
            try:
                return await body(store)
            finally:
                await store.close()

        return asyncio.run(main())


def new_job(
    rule: str = "crm",
    index: int = 0,
    *,
    spec: Mapping[str, Any] = SPEC,
    action_type: str = "http",
    destination: str = "crm.example.com",
) -> NewJob:
    return NewJob(
        id=uuid.uuid4().hex,
        rule=rule,
        action_index=index,
        action_type=action_type,
        spec=spec,
        destination=destination,
    )


def incoming(
    key: str | None = None,
    *,
    jobs: Sequence[NewJob] | None = None,
    event_id: str | None = "1001",
    record: Mapping[str, Any] | None = None,
) -> IncomingRecord:
    """A record with its jobs (one `crm` job unless `jobs` is given)."""
    jobs = [new_job()] if jobs is None else jobs
    return IncomingRecord(
        event_id=event_id,
        dedupe_key=key,
        record=dict(record or {"id": event_id, "tableType": "PROFILE_TABLE", "data": {"n": 1}}),
        matched=tuple(dict.fromkeys(job.rule for job in jobs)),
        jobs=tuple(jobs),
    )


async def accept(
    store: Store,
    *records: IncomingRecord,
    now: float = T0,
    window: float = DAY,
    ruleset_version: str = RULESET,
) -> AcceptResult:
    return await store.accept(
        records, ruleset_version=ruleset_version, dedupe_window=window, now=now
    )


def _database_url(server_url: str, name: str) -> str:
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))


async def _admin(server_url: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _postgres() -> Iterator[Backend]:
    server_url = os.environ.get("ROUTER_TEST_POSTGRES_URL")
    if not server_url:
        pytest.skip("set ROUTER_TEST_POSTGRES_URL (a server URL allowed to CREATE DATABASE)")
    if importlib.util.find_spec("router.store.postgres") is None:
        pytest.skip("router.store.postgres does not exist yet")
    name = f"test_{uuid.uuid4().hex[:16]}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    try:
        yield Backend("postgres", _database_url(server_url, name))
    finally:
        asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield Backend("sqlite", f"sqlite:///{tmp_path / 'router.db'}")
    else:
        yield from _postgres()
