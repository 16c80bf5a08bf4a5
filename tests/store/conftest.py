"""Store backends for the contract suite, and small builders the store tests share.

`backend` is parametrised: `sqlite` (a file in tmp_path) and `postgres` (a fresh database per
test, created through ROUTER_TEST_POSTGRES_URL and dropped after; skipped when that variable is
unset or the PostgreSQL backend is not there). Tests run their async body with `backend.run`,
which opens a store, awaits the body and closes the store inside one `asyncio.run`. Beside the
store, `backend.sql` runs a statement on its database directly, `backend.layout` reads the
tables and columns the database has, and `backend.migrate_to` builds the schema of an earlier
release with the real migration runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import sqlite3
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

# Every table and column a store has after migrating, on every backend (router.store.migrations).
LAYOUT: dict[str, set[str]] = {
    "schema_version": {"version", "applied_at"},
    "events": {"id", "event_id", "record", "matched", "ruleset_version", "received_at"},
    "specs": {"hash", "spec"},
    "jobs": {
        "id",
        "seq",
        "event",
        "rule",
        "action_index",
        "action_type",
        "spec",
        "destination",
        "status",
        "attempts",
        "attempts_total",
        "budget_since",
        "created_at",
        "updated_at",
        "next_at",
        "last_error",
        "lease_token",
        "lease_until",
        "mode",
        "order_key",
        "order_hold",
    },
    "attempts": {
        "job_id",
        "number",
        "at",
        "outcome",
        "status_code",
        "error",
        "duration",
        "response",
    },
    "dedupe": {"key", "seen_at"},
    "store_meta": {"key", "value"},
    "destinations": {
        "key",
        "rate",
        "concurrency",
        "tat",
        "state",
        "failures",
        "opened_at",
        "probe_at",
        "probe_delay",
        "probe_until",
    },
    "pauses": {"kind", "target", "since"},
    "alert_signals": {"kind", "scope", "detail", "at"},
    "alert_states": {"name", "firing", "fired_at", "changed_at"},
    "batch_slots": {"token", "key", "until"},
    "job_hours": {"hour", "rule", "destination", "status", "action_index", "n", "last"},
    "rolled_hours": {"hour"},
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

    @property
    def is_sqlite(self) -> bool:
        return self.name == "sqlite"

    def sql(self, statement: str, *args: Any) -> list[tuple[Any, ...]]:
        """Run one statement on the database itself, outside any store; its rows."""
        if self.is_sqlite:
            from router.store.sqlite import path_from_url

            with contextlib.closing(sqlite3.connect(path_from_url(self.url))) as conn, conn:
                return conn.execute(statement, args).fetchall()

        async def main() -> list[tuple[Any, ...]]:
            import asyncpg

            conn = await asyncpg.connect(self.url)
            try:
                return [tuple(row) for row in await conn.fetch(statement, *args)]
            finally:
                await conn.close()

        return asyncio.run(main())

    def layout(self) -> dict[str, set[str]]:
        """Every table of the database, with its column names."""
        if self.is_sqlite:
            tables = self.sql(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
            return {
                name: {column[1] for column in self.sql(f'PRAGMA table_info("{name}")')}
                for (name,) in tables
            }
        layout: dict[str, set[str]] = {}
        columns = self.sql(
            """
            SELECT c.table_name, c.column_name FROM information_schema.columns AS c
            JOIN information_schema.tables AS t
                ON t.table_schema = c.table_schema AND t.table_name = c.table_name
            WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'
            """
        )
        for table, column in columns:
            layout.setdefault(table, set()).add(column)
        return layout

    def migrate_to(self, version: int) -> None:
        """Give the (empty) database the schema of `version` with the real runner, as the
        release that stopped at that version left it."""
        if self.is_sqlite:
            from router.store import sql_sqlite
            from router.store.sqlite import path_from_url

            path = path_from_url(self.url)
            with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
                sql_sqlite.migrate(conn, True, target=version)
                conn.execute("PRAGMA journal_mode = WAL")
            return
        from router.store.postgres import PostgresStore

        async def main() -> None:
            store = PostgresStore(self.url)
            try:
                await store.migrate(target=version)
            finally:
                await store.close()

        asyncio.run(main())


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


@pytest.fixture
def pg() -> Iterator[Backend]:
    """A fresh PostgreSQL database (skipped without ROUTER_TEST_POSTGRES_URL)."""
    yield from _postgres()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield Backend("sqlite", f"sqlite:///{tmp_path / 'router.db'}")
    else:
        yield from _postgres()
