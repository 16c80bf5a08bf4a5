"""Stores of the previous release upgrade in place, on every backend, without losing a job.

A store is given the schema the previous release left (version 2, by the real runner), then
rows written with that release's own layout: on SQLite specs in their table and the rule set
version copied into every job; on PostgreSQL the spec inline in every job and uuid event ids.
Pending jobs (new, retried, leased by a worker that died) and dead jobs with their attempts.
The real `router migrate` upgrades it; a real `router worker` delivers the pending jobs to a real
HTTP sink, and a replay of the dead ones delivers those too, with their history intact.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from router.rules import spec_hash
from router.store.base import Outcome, Status, Store
from router.store.migrations import schema_problem
from router.store.sqlite import path_from_url
from tests.e2e.conftest import forward_rule
from tests.e2e.harness import RouterProcess, poll
from tests.sinks import HttpSink

from .conftest import LAYOUT, LEASE, Backend, accept, incoming, new_job

OLD_RULESET = "rules-before-the-upgrade"


@dataclass(frozen=True)
class OldJob:
    id: str
    event: int  # its event's position in EVENTS
    rule: str
    spec: str  # a key of the specs
    status: str
    history: tuple[tuple[str, int, str], ...] = ()  # each attempt: outcome, status code, error
    leased: bool = False  # claimed by a worker that died: the lease has run out


EVENTS = [f"old-{n}" for n in range(4)]
# In the order they were accepted; every job of the old store was accepted at the same moment.
JOBS = [
    OldJob("old-pending-new", 0, "forward", "in", "pending"),
    OldJob("old-dead-once", 0, "archive", "archive", "dead", (("dead", 410, "HTTP 410: gone"),)),
    OldJob("old-pending-retried", 1, "forward", "in", "pending", (("retry", 503, "HTTP 503"),)),
    OldJob("old-pending-leased", 2, "forward", "in", "pending", leased=True),
    OldJob(
        "old-dead-retried",
        3,
        "archive",
        "archive",
        "dead",
        (("retry", 500, "HTTP 500"), ("dead", 500, "HTTP 500: gave up after 2 attempts")),
    ),
]
PENDING = {job.id for job in JOBS if job.status == "pending"}
DEAD = {job.id for job in JOBS if job.status == "dead"}


def specs(base_url: str) -> dict[str, dict[str, Any]]:
    """The old jobs' action specs, as a loaded rule file gives them."""
    return {
        "in": {
            "type": "http",
            "url": f"{base_url}/in",
            "headers": {"X-Rule": "{{ rule.name }}"},
            "timeout": 5,
        },
        "archive": {"type": "http", "url": f"{base_url}/archive", "timeout": 5},
    }


def record(event: int) -> dict[str, Any]:
    return {"id": EVENTS[event], "tableType": "PROFILE_TABLE", "data": {"seq": event}}


def attempt_rows(job: OldJob, at: float) -> list[tuple[Any, ...]]:
    return [
        (job.id, number, at + number, outcome, code, error, 0.25)
        for number, (outcome, code, error) in enumerate(job.history, start=1)
    ]


def urlsplit_host(url: str) -> str:
    """The destination the intake stores for an HTTP action to `url` (host:port)."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


def job_times(job: OldJob, at: float) -> tuple[Any, ...]:
    """attempts, next_at, lease_token, lease_until, last_error of `job` in the old store."""
    last_error = job.history[-1][2] if job.history else None
    next_at = at if job.status == "pending" else None
    lease = ("a-worker-that-died", at + 1) if job.leased else (None, None)
    return (len(job.history), next_at, *lease, last_error)


def write_old_sqlite(url: str, spec_of: Mapping[str, Mapping[str, Any]], at: float) -> None:
    """The rows the previous release's SQLite store wrote, in its layout."""
    destination = urlsplit_host(spec_of["in"]["url"])
    with (
        contextlib.closing(sqlite3.connect(path_from_url(url))) as conn,
        conn,
    ):
        for number, name in enumerate(EVENTS, start=1):
            conn.execute(
                "INSERT INTO events (id, event_id, record, matched, ruleset_version, received_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (number, name, json.dumps(record(number - 1)), '["forward"]', OLD_RULESET, at),
            )
        for spec in spec_of.values():
            conn.execute(
                "INSERT INTO specs (hash, spec) VALUES (?, ?)",
                (spec_hash(spec), json.dumps(spec, separators=(",", ":"))),
            )
        for job in JOBS:
            attempts, next_at, token, until, error = job_times(job, at)
            conn.execute(
                "INSERT INTO jobs (id, event, rule, action_index, action_type, spec,"
                " destination, status, attempts, budget_since, next_at, lease_token,"
                " lease_until, created_at, updated_at, last_error, ruleset_version)"
                " VALUES (?, ?, ?, 0, 'http', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    job.event + 1,
                    job.rule,
                    spec_hash(spec_of[job.spec]),
                    destination,
                    job.status,
                    attempts,
                    at,
                    next_at,
                    token,
                    until,
                    at,
                    at + len(job.history),
                    error,
                    OLD_RULESET,
                ),
            )
            conn.executemany(
                "INSERT INTO attempts (job_id, number, at, outcome, status_code, error, duration)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                attempt_rows(job, at),
            )


async def write_old_postgres(url: str, spec_of: Mapping[str, Mapping[str, Any]], at: float) -> None:
    """The rows the previous release's PostgreSQL store wrote, in its layout."""
    import asyncpg

    destination = urlsplit_host(spec_of["in"]["url"])
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            events = [uuid.uuid4() for _ in EVENTS]
            for number, name in enumerate(EVENTS):
                await conn.execute(
                    "INSERT INTO events (id, event_id, record, matched, ruleset_version,"
                    " received_at) VALUES ($1, $2, $3::json, $4::json, $5, $6)",
                    events[number],
                    name,
                    json.dumps(record(number)),
                    '["forward"]',
                    OLD_RULESET,
                    at + number,  # the events arrived one after another
                )
            for job in JOBS:
                attempts, next_at, token, until, error = job_times(job, at)
                await conn.execute(
                    "INSERT INTO jobs (id, event, rule, action_index, action_type, spec,"
                    " destination, status, attempts, attempts_total, budget_since, created_at,"
                    " updated_at, next_at, last_error, lease_token, lease_until)"
                    " VALUES ($1, $2, $3, 0, 'http', $4::json, $5, $6, $7, $8, $9, $9, $10,"
                    " $11, $12, $13, $14)",
                    job.id,
                    events[job.event],
                    job.rule,
                    json.dumps(spec_of[job.spec], separators=(",", ":")),
                    destination,
                    job.status,
                    attempts,
                    len(job.history),
                    at,
                    at + len(job.history),
                    next_at,
                    error,
                    token,
                    until,
                )
                await conn.executemany(
                    "INSERT INTO attempts (job_id, number, at, outcome, status_code, error,"
                    " duration) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    attempt_rows(job, at),
                )
    finally:
        await conn.close()


def make_old_store(backend: Backend, base_url: str, at: float) -> dict[str, dict[str, Any]]:
    backend.migrate_to(2)
    spec_of = specs(base_url)
    if backend.is_sqlite:
        write_old_sqlite(backend.url, spec_of, at)
    else:
        asyncio.run(write_old_postgres(backend.url, spec_of, at))
    return spec_of


@pytest.fixture
def sink() -> Iterator[HttpSink]:
    with HttpSink() as s:
        yield s


def test_an_old_store_upgrades_with_router_migrate_and_delivers_every_job(
    backend: Backend, tmp_path: Path, sink: HttpSink
) -> None:
    at = time.time() - 600  # accepted ten minutes before the upgrade
    make_old_store(backend, sink.url(""), at)
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "forward.toml").write_text(forward_rule(sink.url("/in"), name="forward"))
    worker = RouterProcess(
        tmp_path, rules, store_url=backend.url, command=("worker", "--no-migrate")
    )
    worker.env["ROUTER_WORKER_PORT"] = "0"

    check = worker.cli("migrate", "--check")
    assert (check.returncode, check.stdout) == (
        1,
        f"the store is not ready: cannot open the store: {schema_problem(2)}\n",
    )
    migrated = worker.cli("migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout == "migrations applied; the store schema is current\n"
    assert backend.layout() == LAYOUT

    def delivered() -> Counter[str]:
        return Counter(request.headers["Idempotency-Key"] for request in sink.requests)

    worker.start()  # --no-migrate: it refuses to start unless the upgrade took
    try:
        first = poll(lambda: delivered() if sum(delivered().values()) >= len(PENDING) else None)
        assert set(first) == PENDING  # the dead jobs stay dead until replayed
        replay = worker.cli("deliveries", "replay", "--all-dead")
        assert replay.returncode == 0, replay.stderr
        assert replay.stdout == f"replayed {len(DEAD)} dead job(s)\n"
        poll(lambda: sum(delivered().values()) >= len(JOBS))
    finally:
        assert worker.stop() == 0, worker.log()
    assert delivered() == Counter({job.id: 1 for job in JOBS})

    # Each job reached its own action's URL with its own event's data and its own rule.
    for request in sink.requests:
        job = next(j for j in JOBS if j.id == request.headers["Idempotency-Key"])
        assert request.path == f"/{job.spec}"
        assert json.loads(request.body) == record(job.event)["data"]
        if job.spec == "in":
            assert request.headers["X-Rule"] == job.rule

    async def body(store: Store) -> None:
        for job in JOBS:
            detail = await store.get_job(job.id)
            assert detail is not None
            summary = detail.summary
            assert (summary.status, summary.rule, summary.event_id) == (
                Status.DONE,
                job.rule,
                EVENTS[job.event],
            )
            assert summary.ruleset_version == OLD_RULESET
            assert detail.record == record(job.event)
            # The attempts made before the upgrade, then the delivery: numbered over the
            # job's whole life, across the replay.
            old = [(a.number, a.at, a.outcome, a.status_code, a.error) for a in detail.history]
            assert old[:-1] == [row[1:6] for row in attempt_rows(job, at)]
            assert old[-1][0] == len(job.history) + 1
            assert (old[-1][2], old[-1][3]) == (Outcome.DONE, 200)
            # Attempts since creation or the last replay: a replayed job starts again at 0.
            expected = 1 if job.status == "dead" else len(job.history) + 1
            assert summary.attempts == expected

    backend.run(body, migrate=False)


def test_an_upgraded_store_keeps_its_order_and_takes_new_pushes(backend: Backend) -> None:
    at = time.time() - 600
    spec_of = make_old_store(backend, "http://127.0.0.1:9", at)
    same_as_old = dict(spec_of["in"])  # equal to a stored spec, but another object
    fresh = new_job("forward", spec=same_as_old, destination="127.0.0.1:9")
    other = new_job("other")

    async def body(store: Store) -> None:
        # All old jobs were accepted at one moment: newest first is their acceptance order.
        assert [job.id for job in await store.list_jobs()] == [job.id for job in reversed(JOBS)]
        now = time.time()
        result = await accept(store, incoming("new", jobs=[fresh, other]), now=now)
        assert result.accepted == 1
        claimed = {job.id: job for job in await store.claim(limit=100, lease=LEASE, now=now)}
        assert set(claimed) == PENDING | {fresh.id, other.id}
        assert claimed[fresh.id].spec == spec_of["in"]
        assert claimed["old-pending-retried"].spec == spec_of["in"]
        assert claimed["old-pending-retried"].attempts == 1
        assert claimed["old-pending-retried"].budget_since == at
        dead = await store.list_jobs(status=Status.DEAD)
        assert {job.id for job in dead} == DEAD
        assert all(job.ruleset_version == OLD_RULESET for job in dead)

    backend.run(body)
    # The spec already stored was not stored again; event ids go on after the old ones.
    assert backend.sql("SELECT count(*) FROM specs") == [(3,)]
    events = backend.sql("SELECT id, event_id FROM events ORDER BY id")
    assert events == [*((n, name) for n, name in enumerate(EVENTS, start=1)), (5, "1001")]


@pytest.mark.postgres
def test_router_migrate_says_the_same_on_every_backend(tmp_path: Path, pg: Backend) -> None:
    sqlite = Backend("sqlite", f"sqlite:///{tmp_path / 'router.db'}")

    def migrate(backend: Backend, *args: str) -> tuple[int, str, str]:
        done = subprocess.run(
            [sys.executable, "-m", "router", "migrate", "--store", backend.url, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return done.returncode, done.stdout, done.stderr

    said = [
        [migrate(backend, "--check"), migrate(backend), migrate(backend, "--check")]
        for backend in (sqlite, pg)
    ]
    assert said[0] == said[1]
    assert said[0] == [
        (1, f"the store is not ready: cannot open the store: {schema_problem(0)}\n", ""),
        (0, "migrations applied; the store schema is current\n", ""),
        (0, "the store schema is current\n", ""),
    ]
