"""Every SQL statement of the PostgreSQL store: the schema as ordered migration steps, how they
are applied, the queries that rely on them, and how the store's values become their arguments
and their rows become the store's values (a schema change and its queries change together).

Version N is `MIGRATIONS[N - 1]`; applied versions are rows of `schema_version`. Several replicas
may start at once, so migrating runs in one transaction behind a transaction-scoped advisory lock:
the first applies the pending steps, the others wait, then find nothing left to do. A step is
never edited once released; a change of schema is a new step at the end.

Design notes for version 1:
- Times are epoch seconds (double precision) given by the caller, as in the store interface.
- `record` and `spec` are `json`, not `jsonb`: nothing queries inside them, `json` input is
  cheaper, and it accepts the `\\u0000` escape that `jsonb` refuses (a sender controls records).
- jobs carry no foreign key to events: the check would lock an events row per job on the ingest
  path; a job and its event are written in one statement and purge removes events only once
  they have no job left.
- `attempts_total` numbers the history over a job's whole life; `attempts` restarts at replay.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from router.exceptions import StoreUnavailable
from router.store.base import (
    AttemptRecord,
    IncomingRecord,
    Job,
    JobSummary,
    Outcome,
    Status,
    storable_text,
)

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

    Connection = PoolConnectionProxy[asyncpg.Record]

# Any constant works: it only has to be the same for every replica sharing the database.
MIGRATION_LOCK_KEY = 0x726F75746572  # "router"
# Seconds one migration statement may take (waiting for another replica's lock included):
# rewriting a large table outlasts the store's command timeout.
MIGRATION_TIMEOUT = 600.0

MIGRATIONS: tuple[str, ...] = (
    # 1: events, jobs, attempts, dedupe keys.
    """
    CREATE TABLE events (
        id uuid PRIMARY KEY,
        event_id text,
        record json NOT NULL,
        matched json NOT NULL,
        ruleset_version text NOT NULL,
        received_at double precision NOT NULL
    );
    CREATE INDEX events_received_at ON events (received_at);

    CREATE TABLE jobs (
        id text PRIMARY KEY,
        seq bigint GENERATED ALWAYS AS IDENTITY,
        event uuid NOT NULL,
        rule text NOT NULL,
        action_index integer NOT NULL,
        action_type text NOT NULL,
        spec json NOT NULL,
        destination text NOT NULL,
        status text NOT NULL CHECK (status IN ('pending', 'done', 'dead')),
        attempts integer NOT NULL DEFAULT 0,
        attempts_total integer NOT NULL DEFAULT 0,
        budget_since double precision NOT NULL,
        created_at double precision NOT NULL,
        updated_at double precision NOT NULL,
        next_at double precision,
        last_error text,
        lease_token text,
        lease_until double precision
    );
    CREATE INDEX jobs_due ON jobs (next_at, seq) WHERE status = 'pending';
    CREATE INDEX jobs_newest ON jobs (created_at, seq);
    CREATE INDEX jobs_done ON jobs (updated_at) WHERE status = 'done';
    CREATE INDEX jobs_dead ON jobs (rule) WHERE status = 'dead';

    CREATE TABLE attempts (
        job_id text NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        number integer NOT NULL,
        at double precision NOT NULL,
        outcome text NOT NULL,
        status_code integer,
        error text,
        duration double precision NOT NULL,
        PRIMARY KEY (job_id, number)
    );

    CREATE TABLE dedupe (
        key text PRIMARY KEY,
        seen_at double precision NOT NULL
    );
    CREATE INDEX dedupe_seen_at ON dedupe (seen_at);
    """,
    # 2: the row readiness probes write.
    """
    CREATE TABLE store_meta (
        key text PRIMARY KEY,
        value text NOT NULL
    );
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)

_CREATE_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


def version_problem(version: int) -> str | None:
    """Why a database at `version` cannot be used as it is, or None when it is current."""
    if version > SCHEMA_VERSION:
        return (
            f"schema version {version} is newer than this router's {SCHEMA_VERSION}; "
            "upgrade the router"
        )
    if version < SCHEMA_VERSION:
        return f"schema version {version}, expected {SCHEMA_VERSION}; run `router migrate`"
    return None


async def current_version(conn: Connection) -> int:
    """The highest applied version; 0 for a database the router never touched."""
    if await conn.fetchval("SELECT to_regclass('schema_version')") is None:
        return 0
    version = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
    return int(version)


async def apply_pending(conn: Connection) -> list[int]:
    """Apply every step newer than the database, in one transaction; return the versions applied.

    Raises StoreUnavailable when the database is newer than this code knows (a newer router
    migrated it): running old code on it could corrupt data.
    """
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY, timeout=MIGRATION_TIMEOUT
        )
        await conn.execute(_CREATE_VERSION_TABLE)
        version = await current_version(conn)
        if version > SCHEMA_VERSION:
            raise StoreUnavailable(str(version_problem(version)))
        applied: list[int] = []
        for number in range(version + 1, SCHEMA_VERSION + 1):
            await conn.execute(MIGRATIONS[number - 1], timeout=MIGRATION_TIMEOUT)
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", number)
            applied.append(number)
        return applied


# -- queries of the store, next to the schema they rely on -------------------------------------

# $1 keys (sorted), $2 now, $3 cutoff. A returned key is new (or last seen before the cutoff):
# its record is accepted. The primary key makes replicas agree: a concurrent insert of the same
# key waits for the first transaction, then sees its row and returns nothing.
CLAIM_DEDUPE_KEYS = """
INSERT INTO dedupe AS d (key, seen_at)
SELECT key, $2::float8 FROM unnest($1::text[]) AS key
ON CONFLICT (key) DO UPDATE SET seen_at = EXCLUDED.seen_at WHERE d.seen_at < $3::float8
RETURNING d.key
"""

# Column arrays of the events ($1-$4) and of their jobs ($5-$11); $12 ruleset version, $13 now.
INSERT_EVENTS_AND_JOBS = """
WITH new_events AS (
    INSERT INTO events (id, event_id, record, matched, ruleset_version, received_at)
    SELECT e.id, e.event_id, e.record::json, e.matched::json, $12, $13::float8
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[]) AS e (id, event_id, record, matched)
)
INSERT INTO jobs (id, event, rule, action_index, action_type, spec, destination, status,
                  budget_since, created_at, updated_at, next_at)
SELECT j.id, j.event, j.rule, j.action_index, j.action_type, j.spec::json, j.destination,
       'pending', $13::float8, $13::float8, $13::float8, $13::float8
FROM unnest($5::text[], $6::uuid[], $7::text[], $8::int[], $9::text[], $10::text[], $11::text[])
    AS j (id, event, rule, action_index, action_type, spec, destination)
"""

# $1 now, $2 limit, $3 lease token, $4 lease seconds. SKIP LOCKED: concurrent claimers pass over
# the rows another claimer is taking instead of waiting for them (and then taking them twice).
CLAIM_JOBS = """
WITH due AS (
    SELECT id FROM jobs
    WHERE status = 'pending' AND next_at <= $1::float8
      AND (lease_until IS NULL OR lease_until < $1::float8)
      AND destination <> ALL($5::text[])
      AND ($6::text IS NULL OR destination = $6::text)
    ORDER BY next_at, seq
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE jobs SET lease_token = $3, lease_until = $1::float8 + $4::float8
    FROM due WHERE jobs.id = due.id
    RETURNING jobs.*
)
SELECT c.id, c.rule, c.action_index, c.action_type, c.spec, c.destination, c.attempts,
       c.budget_since, c.lease_token, e.record, e.event_id, e.ruleset_version
FROM claimed c JOIN events e ON e.id = c.event
ORDER BY c.next_at, c.seq
"""

# $1 job, $2 lease token, $3 new status, $4 next_at, $5 error, $6 now, $7 started_at,
# $8 outcome, $9 status code, $10 duration. The attempt is always appended (numbered by the
# row-locked counter); the job moves, and counts the attempt, only while the token holds it.
# A retry keeps its own error; done and dead keep the last error when they bring none.
RECORD_ATTEMPT = """
WITH counted AS (
    UPDATE jobs SET
        attempts = CASE WHEN lease_token = $2 THEN attempts + 1 ELSE attempts END,
        attempts_total = attempts_total + 1,
        status = CASE WHEN lease_token = $2 THEN $3 ELSE status END,
        next_at = CASE WHEN lease_token = $2 THEN $4::float8 ELSE next_at END,
        last_error = CASE
            WHEN lease_token IS DISTINCT FROM $2 THEN last_error
            WHEN $3 = 'pending' THEN $5
            ELSE coalesce($5, last_error)
        END,
        updated_at = CASE WHEN lease_token = $2 THEN $6::float8 ELSE updated_at END,
        lease_until = CASE WHEN lease_token = $2 THEN NULL ELSE lease_until END,
        lease_token = CASE WHEN lease_token = $2 THEN NULL ELSE lease_token END
    WHERE id = $1
    RETURNING attempts_total
)
INSERT INTO attempts (job_id, number, at, outcome, status_code, error, duration)
SELECT $1, attempts_total, $7::float8, $8, $9::int, $5, $10::float8 FROM counted
"""

# $1 job ids, $2 lease tokens (pairwise), $3 next_at. Only a claim that still holds its job.
RELEASE_JOBS = """
UPDATE jobs SET next_at = $3::float8, lease_token = NULL, lease_until = NULL
FROM unnest($1::text[], $2::text[]) AS r (id, token)
WHERE jobs.id = r.id AND jobs.lease_token = r.token AND jobs.status = 'pending'
"""

RENEW_LEASES = """
UPDATE jobs SET lease_until = $3::float8
FROM unnest($1::text[], $2::text[]) AS r (id, token)
WHERE jobs.id = r.id AND jobs.lease_token = r.token AND jobs.status = 'pending'
"""

_REPLAY_SET = """
UPDATE jobs SET status = 'pending', next_at = $2::float8, attempts = 0,
    budget_since = $2::float8, updated_at = $2::float8, lease_token = NULL, lease_until = NULL
"""
# $1 job ids, $2 now.
REPLAY_JOBS = _REPLAY_SET + "WHERE id = ANY($1::text[]) AND status = 'dead' RETURNING id"
# $1 rule or NULL, $2 now.
REPLAY_DEAD = f"""
WITH replayed AS (
    {_REPLAY_SET} WHERE status = 'dead' AND ($1::text IS NULL OR rule = $1) RETURNING 1
)
SELECT count(*) FROM replayed
"""

_SUMMARY_COLUMNS = """
j.id, j.rule, j.action_index, j.action_type, j.destination, j.status, j.attempts,
j.created_at, j.updated_at, j.next_at, j.last_error, e.event_id, e.ruleset_version
"""
# $1 status or NULL, $2 rule or NULL, $3 limit.
LIST_JOBS = f"""
SELECT {_SUMMARY_COLUMNS}
FROM jobs j JOIN events e ON e.id = j.event
WHERE ($1::text IS NULL OR j.status = $1) AND ($2::text IS NULL OR j.rule = $2)
ORDER BY j.created_at DESC, j.seq DESC
LIMIT $3
"""
GET_JOB = f"""
SELECT {_SUMMARY_COLUMNS}, j.spec, e.record
FROM jobs j JOIN events e ON e.id = j.event
WHERE j.id = $1
"""
GET_ATTEMPTS = """
SELECT number, at, outcome, status_code, error, duration
FROM attempts WHERE job_id = $1 ORDER BY number
"""

# Each part reads only its partial index, however many done jobs are kept.
STATS = """
SELECT (SELECT count(*) FROM jobs WHERE status = 'pending') AS pending,
       (SELECT count(*) FROM jobs WHERE status = 'dead') AS dead,
       (SELECT min(created_at) FROM jobs WHERE status = 'pending') AS oldest
"""

# $1 before. Attempts go with their jobs (ON DELETE CASCADE).
PURGE_JOBS = """
WITH gone AS (DELETE FROM jobs WHERE status = 'done' AND updated_at < $1::float8 RETURNING 1)
SELECT count(*) FROM gone
"""
PURGE_EVENTS = """
DELETE FROM events e
WHERE e.received_at < $1::float8 AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.event = e.id)
"""
PURGE_DEDUPE = "DELETE FROM dedupe WHERE seen_at < $1::float8"

NOTIFY = "SELECT pg_notify($1, '')"

# A real write: readiness must fail while writes fail (a full disk, a read-only standby).
PROBE = """
INSERT INTO store_meta (key, value) VALUES ('probe', $1::text)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
"""


# -- rows in, rows out ---------------------------------------------------------------------------


def insert_arguments(kept: Sequence[IncomingRecord]) -> list[list[Any]]:
    """INSERT_EVENTS_AND_JOBS's column arrays, the events' then their jobs' (unnest turns them
    back into rows, so one statement writes the whole batch); ruleset version and now follow."""
    events: list[tuple[Any, ...]] = []
    jobs: list[tuple[Any, ...]] = []
    spec_text: dict[int, str] = {}  # one serialisation per action spec object in this batch
    for incoming in kept:
        event = uuid.uuid4()
        # ASCII-only JSON: a lone surrogate a sender wrote as an escape stays an escape.
        record = json.dumps(incoming.record, separators=(",", ":"))
        matched = json.dumps(list(incoming.matched))
        events.append((event, storable_text(incoming.event_id), record, matched))
        for new in incoming.jobs:
            spec = _spec_json(new.spec, spec_text)
            jobs.append(
                (new.id, event, new.rule, new.action_index, new.action_type, spec, new.destination)
            )
    return [*_columns(events, 4), *_columns(jobs, 7)]


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * width


def _spec_json(spec: Mapping[str, Any], cache: dict[int, str]) -> str:
    # Keyed by identity: every job of one rule action shares the loaded spec object, and the
    # objects outlive the batch, so an id cannot be reused while the cache lives.
    text = cache.get(id(spec))
    if text is None:
        text = cache[id(spec)] = json.dumps(spec, separators=(",", ":"), default=str)
    return text


def job_from_row(row: asyncpg.Record) -> Job:
    return Job(
        id=row["id"],
        rule=row["rule"],
        action_index=row["action_index"],
        action_type=row["action_type"],
        spec=json.loads(row["spec"]),
        destination=row["destination"],
        record=json.loads(row["record"]),
        event_id=row["event_id"],
        ruleset_version=row["ruleset_version"],
        attempts=row["attempts"],
        budget_since=row["budget_since"],
        lease_token=row["lease_token"],
    )


def summary_from_row(row: asyncpg.Record) -> JobSummary:
    return JobSummary(
        id=row["id"],
        rule=row["rule"],
        action_index=row["action_index"],
        action_type=row["action_type"],
        destination=row["destination"],
        status=Status(row["status"]),
        attempts=row["attempts"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        next_at=row["next_at"],
        last_error=row["last_error"],
        event_id=row["event_id"],
        ruleset_version=row["ruleset_version"],
    )


def attempt_from_row(row: asyncpg.Record) -> AttemptRecord:
    return AttemptRecord(
        number=row["number"],
        at=row["at"],
        outcome=Outcome(row["outcome"]),
        status_code=row["status_code"],
        error=row["error"],
        duration=row["duration"],
    )
