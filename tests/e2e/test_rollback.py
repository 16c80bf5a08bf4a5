"""Upgrades and rollbacks on PostgreSQL, as docs/deploy.md tells an operator to do them: new
code on an old schema is refused until `router migrate`; code one release back runs on the
schema the next release left when that release's steps are additive (a rollback), and is
refused with one sentence when they are not. "The next release" is written here the way its
runner would leave the database (its step, its schema_version row, its floor)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from router.store.migrations import FLOOR_KEY, SCHEMA_VERSION, floor_of, schema_problem
from router.store.postgres import PostgresStore
from tests.e2e.conftest import forward_rule
from tests.e2e.harness import RouterProcess
from tests.e2e.pg import Unavailable, fresh_database
from tests.sinks import HttpSink

pytestmark = pytest.mark.postgres

NEXT = SCHEMA_VERSION + 1
# The next release's step: a nullable column old code does not write, and a table it ignores.
NEXT_STEP = (
    "ALTER TABLE jobs ADD COLUMN priority integer",
    "CREATE TABLE notes (id bigint PRIMARY KEY, body text)",
)


@pytest.fixture
def database() -> Iterator[str]:
    try:
        with fresh_database() as url:
            yield url
    except Unavailable as exc:
        pytest.skip(str(exc))


def sql(url: str, *statements: str) -> Any:
    """Run statements on the database itself; the first column of the last one's first row."""

    async def main() -> Any:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            for statement in statements[:-1]:
                await conn.execute(statement)
            return await conn.fetchval(statements[-1])
        finally:
            await conn.close()

    return asyncio.run(main())


def migrate_to(url: str, version: int) -> None:
    async def main() -> None:
        store = PostgresStore(url)
        try:
            await store.migrate(target=version)
        finally:
            await store.close()

    asyncio.run(main())


def next_release_migrated(url: str, *, floor: int) -> None:
    sql(
        url,
        *NEXT_STEP,
        f"INSERT INTO schema_version (version) VALUES ({NEXT})",
        f"UPDATE store_meta SET value = '{floor}' WHERE key = '{FLOOR_KEY}'",
        "SELECT 1",
    )


def record(url: str) -> tuple[int, str]:
    """The schema version and floor the database says it has."""
    version = sql(url, "SELECT max(version) FROM schema_version")
    floor = sql(url, f"SELECT value FROM store_meta WHERE key = '{FLOOR_KEY}'")
    return int(version), str(floor)


def router(
    tmp_path: Path, rules: Path, url: str, started: list[RouterProcess], *command: str
) -> RouterProcess:
    process = RouterProcess(tmp_path, rules, store_url=url, command=command or ("serve",))
    started.append(process)
    return process


def refused_start(process: RouterProcess) -> str:
    """Start `process`, expect it to stop with status 1; its error line."""
    process.start(wait=False)
    assert process.proc is not None
    assert process.proc.wait(30) == 1, process.log()
    (line,) = [line for line in process.log().splitlines() if ": error: " in line]
    return line


def serves_and_delivers(process: RouterProcess, sink: HttpSink, name: str) -> None:
    process.start()
    before = len(sink.requests)
    event = {"id": name, "tableType": "PROFILE_TABLE", "operation": "CREATE", "data": {"n": 1}}
    assert process.push(event).status_code == 202
    delivered = sink.wait_for(before + 1)[-1]
    assert delivered.headers["X-Rule"] == "forward-all"
    assert process.stop() == 0


def test_new_code_on_the_previous_schema_waits_for_router_migrate(
    tmp_path: Path,
    rules_dir: Path,
    sink: HttpSink,
    router_factory: list[RouterProcess],
    database: str,
) -> None:
    (rules_dir / "f.toml").write_text(forward_rule(sink.url("/in")))
    migrate_to(database, SCHEMA_VERSION - 1)  # the previous release's schema
    upgraded = router(tmp_path, rules_dir, database, router_factory, "serve", "--no-migrate")
    line = refused_start(upgraded)
    assert line.endswith(str(schema_problem(SCHEMA_VERSION - 1))), line
    assert upgraded.cli("migrate", "--check").returncode == 1
    migrated = upgraded.cli("migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert record(database) == (SCHEMA_VERSION, str(floor_of(SCHEMA_VERSION)))
    serves_and_delivers(upgraded, sink, "after-migrate")


def test_code_one_release_back_runs_on_additive_steps(
    tmp_path: Path,
    rules_dir: Path,
    sink: HttpSink,
    router_factory: list[RouterProcess],
    database: str,
) -> None:
    """The rollback: this code, started on what the next release's `router migrate` left."""
    (rules_dir / "f.toml").write_text(forward_rule(sink.url("/in")))
    migrate_to(database, SCHEMA_VERSION)
    next_release_migrated(database, floor=floor_of(SCHEMA_VERSION))
    rolled_back = router(tmp_path, rules_dir, database, router_factory, "serve", "--no-migrate")
    # Its migrate step (an init container, compose's migrate service) passes and changes nothing.
    migrated = rolled_back.cli("migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "every newer step is additive" in migrated.stderr
    assert record(database) == (NEXT, str(floor_of(SCHEMA_VERSION)))
    serves_and_delivers(rolled_back, sink, "after-rollback")
    assert "every newer step is additive" in rolled_back.log()
    # The jobs it wrote are in the newer table, its new column left empty.
    assert sql(database, "SELECT count(*) FROM jobs WHERE priority IS NULL") == 1


def test_code_one_release_back_is_refused_a_step_it_cannot_use(
    tmp_path: Path,
    rules_dir: Path,
    router_factory: list[RouterProcess],
    database: str,
) -> None:
    (rules_dir / "f.toml").write_text(forward_rule("http://127.0.0.1:9/x"))
    migrate_to(database, SCHEMA_VERSION)
    next_release_migrated(database, floor=NEXT)
    sentence = str(schema_problem(NEXT, NEXT))
    for command in (("serve", "--no-migrate"), ("serve",), ("worker", "--no-migrate")):
        line = refused_start(router(tmp_path, rules_dir, database, router_factory, *command))
        assert line.endswith(sentence), (command, line)
    migrated = router_factory[0].cli("migrate")
    assert migrated.returncode == 1
    assert migrated.stderr.strip().endswith(sentence)
    assert record(database) == (NEXT, str(NEXT))  # left as the newer release wrote it
