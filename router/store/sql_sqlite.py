"""The SQL of the SQLite store: schema migrations, statements, and the synchronous bodies that
run them on one connection inside a transaction the caller (the writer thread) owns.

Migrations are numbered from 1; `schema_version` holds the number of the last one applied.
A job points at its action spec by `router.rules.spec_hash`: a rule's spec is written once, not
once per job, which keeps the write volume of a busy intake down.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from router.exceptions import StoreUnavailable
from router.rules import spec_hash
from router.store.base import (
    AcceptResult,
    AttemptRecord,
    AttemptResult,
    IncomingRecord,
    Job,
    JobDetail,
    JobSummary,
    Outcome,
    QueueStats,
    Status,
    storable_text,
)

PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    # FULL: a commit is on disk (WAL fsynced) before accept() returns, i.e. before the 202.
    "PRAGMA synchronous = FULL",
    "PRAGMA foreign_keys = ON",
)

SCHEMA_VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
HAS_SCHEMA_VERSION = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
GET_SCHEMA_VERSION = "SELECT max(version) FROM schema_version"
SET_SCHEMA_VERSION = "INSERT INTO schema_version (version) VALUES (?)"

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: events, specs, jobs, attempts, dedupe keys.
    (
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            event_id TEXT,
            record TEXT NOT NULL,
            matched TEXT NOT NULL,
            ruleset_version TEXT NOT NULL,
            received_at REAL NOT NULL
        )""",
        "CREATE INDEX events_received_at ON events (received_at)",
        """CREATE TABLE specs (
            hash TEXT PRIMARY KEY,
            spec TEXT NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            event INTEGER NOT NULL REFERENCES events (id),
            rule TEXT NOT NULL,
            action_index INTEGER NOT NULL,
            action_type TEXT NOT NULL,
            spec TEXT NOT NULL REFERENCES specs (hash),
            destination TEXT NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            budget_since REAL NOT NULL,
            next_at REAL,
            lease_token TEXT,
            lease_until REAL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            last_error TEXT,
            ruleset_version TEXT NOT NULL
        )""",
        "CREATE INDEX jobs_due ON jobs (status, next_at)",
        "CREATE INDEX jobs_event ON jobs (event)",
        """CREATE TABLE attempts (
            job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            number INTEGER NOT NULL,
            at REAL NOT NULL,
            outcome TEXT NOT NULL,
            status_code INTEGER,
            error TEXT,
            duration REAL NOT NULL,
            PRIMARY KEY (job_id, number)
        ) WITHOUT ROWID""",
        """CREATE TABLE dedupe (
            key TEXT PRIMARY KEY,
            seen_at REAL NOT NULL
        ) WITHOUT ROWID""",
        "CREATE INDEX dedupe_seen_at ON dedupe (seen_at)",
    ),
    # 2: the row readiness probes write (the store's random identity is the file header's
    # user_version, set by `migrate`: it can be read from the file without SQLite).
    (
        """CREATE TABLE store_meta (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) WITHOUT ROWID""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

# A real write: readiness must fail while writes fail (a full disk, a read-only file).
PROBE = """
    INSERT INTO store_meta (key, value) VALUES ('probe', ?)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value
"""

# -- accept
# A row back means the key is new (or its last sighting fell out of the window): accept it.
CLAIM_DEDUPE_KEY = """
    INSERT INTO dedupe (key, seen_at) VALUES (:key, :now)
    ON CONFLICT (key) DO UPDATE SET seen_at = excluded.seen_at WHERE dedupe.seen_at < :cutoff
    RETURNING key
"""
INSERT_EVENT = """
    INSERT INTO events (event_id, record, matched, ruleset_version, received_at)
    VALUES (?, ?, ?, ?, ?) RETURNING id
"""
INSERT_SPEC = "INSERT INTO specs (hash, spec) VALUES (?, ?) ON CONFLICT (hash) DO NOTHING"
INSERT_JOB = """
    INSERT INTO jobs (id, event, rule, action_index, action_type, spec, destination, status,
                      attempts, budget_since, next_at, created_at, updated_at, ruleset_version)
    VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', 0, ?, ?, ?, ?, ?)
"""

# -- claim
SELECT_DUE = """
    SELECT id FROM jobs
    WHERE status = 'pending' AND next_at <= :now AND (lease_until IS NULL OR lease_until < :now)
      AND destination NOT IN (SELECT value FROM json_each(:exclude))
      AND (:only IS NULL OR destination = :only)
    ORDER BY next_at
    LIMIT :limit
"""
LEASE_JOB = "UPDATE jobs SET lease_token = ?, lease_until = ? WHERE id = ?"
SELECT_CLAIMED = """
    SELECT j.id, j.rule, j.action_index, j.action_type, s.spec, j.destination, e.record,
           e.event_id, j.ruleset_version, j.attempts, j.budget_since, j.lease_token
    FROM jobs AS j
    JOIN events AS e ON e.id = j.event
    JOIN specs AS s ON s.hash = j.spec
    WHERE j.id IN (SELECT value FROM json_each(?))
"""

# -- record
SELECT_LEASE = "SELECT lease_token FROM jobs WHERE id = ?"
NEXT_ATTEMPT_NUMBER = "SELECT coalesce(max(number), 0) + 1 FROM attempts WHERE job_id = ?"
INSERT_ATTEMPT = """
    INSERT INTO attempts (job_id, number, at, outcome, status_code, error, duration)
    VALUES (?, ?, ?, ?, ?, ?, ?)
"""
FINISH_JOB = """
    UPDATE jobs SET status = :status, attempts = attempts + 1, next_at = NULL,
                    lease_token = NULL, lease_until = NULL, updated_at = :now,
                    last_error = coalesce(:error, last_error)
    WHERE id = :id
"""
RETRY_JOB = """
    UPDATE jobs SET status = 'pending', attempts = attempts + 1, next_at = :next_at,
                    lease_token = NULL, lease_until = NULL, updated_at = :now,
                    last_error = :error
    WHERE id = :id
"""
RELEASE_JOB = """
    UPDATE jobs SET next_at = :next_at, lease_token = NULL, lease_until = NULL
    WHERE id = :id AND lease_token = :token AND status = 'pending'
"""

RENEW_LEASE = """
    UPDATE jobs SET lease_until = :until
    WHERE id = :id AND lease_token = :token AND status = 'pending'
"""

CLEAR_LEASES = (
    "UPDATE jobs SET lease_token = NULL, lease_until = NULL WHERE lease_token IS NOT NULL"
)

# -- replay
REPLAY_JOB = """
    UPDATE jobs SET status = 'pending', attempts = 0, budget_since = :now, next_at = :now,
                    lease_token = NULL, lease_until = NULL, updated_at = :now
    WHERE id = :id AND status = 'dead'
"""
REPLAY_DEAD = """
    UPDATE jobs SET status = 'pending', attempts = 0, budget_since = :now, next_at = :now,
                    lease_token = NULL, lease_until = NULL, updated_at = :now
    WHERE status = 'dead' AND (:rule IS NULL OR rule = :rule)
"""

# -- reads
SUMMARY_COLUMNS = """
    j.id, j.rule, j.action_index, j.action_type, j.destination, j.status, j.attempts,
    j.created_at, j.updated_at, j.next_at, j.last_error, e.event_id, j.ruleset_version
"""
LIST_JOBS = f"SELECT {SUMMARY_COLUMNS} FROM jobs AS j JOIN events AS e ON e.id = j.event"
LIST_ORDER = " ORDER BY j.created_at DESC, j.id DESC LIMIT ?"
GET_JOB = f"""
    SELECT {SUMMARY_COLUMNS}, s.spec, e.record
    FROM jobs AS j
    JOIN events AS e ON e.id = j.event
    JOIN specs AS s ON s.hash = j.spec
    WHERE j.id = ?
"""
GET_HISTORY = """
    SELECT number, at, outcome, status_code, error, duration
    FROM attempts WHERE job_id = ? ORDER BY number
"""
STATS = """
    SELECT (SELECT count(*) FROM jobs WHERE status = 'pending'),
           (SELECT count(*) FROM jobs WHERE status = 'dead'),
           (SELECT min(created_at) FROM jobs WHERE status = 'pending')
"""

# -- purge
PURGE_ATTEMPTS = """
    DELETE FROM attempts WHERE job_id IN (
        SELECT id FROM jobs WHERE status = 'done' AND updated_at < :before)
"""
PURGE_JOBS = "DELETE FROM jobs WHERE status = 'done' AND updated_at < :before"
PURGE_EVENTS = """
    DELETE FROM events
    WHERE received_at < :before AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.event = events.id)
"""
PURGE_DEDUPE = "DELETE FROM dedupe WHERE seen_at < :before"


def migrate(conn: sqlite3.Connection, apply: bool) -> None:
    """Bring the schema to SCHEMA_VERSION, or raise StoreUnavailable if it is not current and
    `apply` is false (or it is newer than this code)."""
    conn.execute("BEGIN IMMEDIATE")  # two processes starting at once migrate one after another
    try:
        version = 0
        if conn.execute(HAS_SCHEMA_VERSION).fetchone() is not None:
            version = int(conn.execute(GET_SCHEMA_VERSION).fetchone()[0] or 0)
        if version > SCHEMA_VERSION or (version < SCHEMA_VERSION and not apply):
            raise StoreUnavailable(
                f"the SQLite store has schema version {version}, this router needs "
                f"{SCHEMA_VERSION}; open it with migrations enabled"
            )
        conn.execute(SCHEMA_VERSION_TABLE)
        for number in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[number - 1]:
                conn.execute(statement)
            conn.execute(SET_SCHEMA_VERSION, (number,))
        if apply and not conn.execute("PRAGMA user_version").fetchone()[0]:
            conn.execute(f"PRAGMA user_version = {secrets.randbelow(2**31 - 1) + 1}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


STORE_ID_OFFSET = 60  # the header's user_version: a big-endian 32-bit integer at this offset
HEADER_MAGIC = b"SQLite format 3\x00"


def file_store_id(fd: int) -> int | None:
    """The store identity written in the header of the open file `fd`, read without SQLite
    (what is on disk, not what this process's cache or WAL says); None if it is no store.

    Never open and close the database file to read it: closing any descriptor of a file drops
    every POSIX lock the process holds on it, SQLite's included (another process would then
    take itself for the last user and delete the WAL). Keep one descriptor open instead."""
    header = os.pread(fd, STORE_ID_OFFSET + 4, 0)
    if len(header) < STORE_ID_OFFSET + 4 or not header.startswith(HEADER_MAGIC):
        return None
    return int.from_bytes(header[STORE_ID_OFFSET:], "big") or None


def _json_default(value: Any) -> Any:
    # Specs are TOML tables: any Mapping is an object; a TOML date is kept as its text.
    return dict(value) if isinstance(value, Mapping) else str(value)


def _dumps(value: Any) -> str:
    # ASCII-only JSON: a lone surrogate a sender wrote as an escape stays an escape (SQLite
    # cannot store it as UTF-8 text).
    return json.dumps(value, separators=(",", ":"), default=_json_default)


SpecCache = dict[int, tuple[Mapping[str, Any], str]]
SPEC_CACHE_MAX = 4096


def _stored_spec(conn: sqlite3.Connection, spec: Mapping[str, Any], cache: SpecCache) -> str:
    """The hash of `spec`, written to the specs table once per store instance. The cache is
    keyed by the identity of the (long-lived, immutable) spec object of a loaded action and
    keeps the object, so an id cannot be reused; spec rows are never deleted."""
    known = cache.get(id(spec))
    if known is not None and known[0] is spec:
        return known[1]
    digest = spec_hash(spec)
    conn.execute(INSERT_SPEC, (digest, _dumps(spec)))
    if len(cache) >= SPEC_CACHE_MAX:
        cache.clear()
    cache[id(spec)] = (spec, digest)
    return digest


def accept(
    conn: sqlite3.Connection,
    records: Sequence[IncomingRecord],
    ruleset_version: str,
    window: float,
    now: float,
    specs: SpecCache,
) -> AcceptResult:
    accepted = 0
    repeated: set[int] = set()
    for position, incoming in enumerate(records):
        if incoming.dedupe_key is not None and window > 0:
            params = {"key": incoming.dedupe_key, "now": now, "cutoff": now - window}
            if conn.execute(CLAIM_DEDUPE_KEY, params).fetchone() is None:
                repeated.add(position)
                continue
        event_row = (
            storable_text(incoming.event_id),
            _dumps(incoming.record),
            _dumps(list(incoming.matched)),
            ruleset_version,
            now,
        )
        (event,) = conn.execute(INSERT_EVENT, event_row).fetchone()
        for job in incoming.jobs:
            digest = _stored_spec(conn, job.spec, specs)
            row = (job.id, event, job.rule, job.action_index, job.action_type, digest)
            try:
                conn.execute(
                    INSERT_JOB, (*row, job.destination, now, now, now, now, ruleset_version)
                )
            except sqlite3.IntegrityError as exc:
                raise ValueError(f"job id {job.id!r} already exists") from exc
        accepted += 1
    return AcceptResult(accepted, len(repeated), frozenset(repeated))


def claim(
    conn: sqlite3.Connection,
    limit: int,
    until: float,
    now: float,
    exclude: Sequence[str] = (),
    only: str | None = None,
) -> list[Job]:
    params = {"now": now, "limit": limit, "exclude": json.dumps(list(exclude)), "only": only}
    due = [row[0] for row in conn.execute(SELECT_DUE, params)]
    if not due:
        return []
    token = uuid.uuid4().hex
    conn.executemany(LEASE_JOB, [(token, until, job_id) for job_id in due])
    rows = {row[0]: row for row in conn.execute(SELECT_CLAIMED, (json.dumps(due),))}
    return [_job(rows[job_id]) for job_id in due]


def _job(row: Sequence[Any]) -> Job:
    return Job(
        id=row[0],
        rule=row[1],
        action_index=row[2],
        action_type=row[3],
        spec=json.loads(row[4]),
        destination=row[5],
        record=json.loads(row[6]),
        event_id=row[7],
        ruleset_version=row[8],
        attempts=row[9],
        budget_since=row[10],
        lease_token=row[11],
    )


def record(conn: sqlite3.Connection, results: Sequence[AttemptResult], now: float) -> None:
    for result in results:
        held = conn.execute(SELECT_LEASE, (result.job_id,)).fetchone()
        if held is None:
            continue  # purged meanwhile: nothing to append to
        (number,) = conn.execute(NEXT_ATTEMPT_NUMBER, (result.job_id,)).fetchone()
        attempt = (result.job_id, number, result.started_at, str(result.outcome))
        error = storable_text(result.error)
        conn.execute(INSERT_ATTEMPT, (*attempt, result.status_code, error, result.duration))
        if held[0] != result.lease_token:
            continue  # another claim holds the job now: its result decides
        params: Mapping[str, Any] = {"id": result.job_id, "now": now, "error": error}
        if result.outcome is Outcome.RETRY:
            conn.execute(RETRY_JOB, {**params, "next_at": result.next_at})
        else:
            status = Status.DONE if result.outcome is Outcome.DONE else Status.DEAD
            conn.execute(FINISH_JOB, {**params, "status": str(status)})


def release(conn: sqlite3.Connection, claims: Sequence[tuple[str, str]], next_at: float) -> None:
    params = [{"id": job_id, "token": token, "next_at": next_at} for job_id, token in claims]
    conn.executemany(RELEASE_JOB, params)


def renew(conn: sqlite3.Connection, claims: Sequence[tuple[str, str]], until: float) -> None:
    params = [{"id": job_id, "token": token, "until": until} for job_id, token in claims]
    conn.executemany(RENEW_LEASE, params)


def replay(conn: sqlite3.Connection, job_ids: Sequence[str], now: float) -> list[str]:
    ids = dict.fromkeys(job_ids)  # once each, in the order given
    return [i for i in ids if conn.execute(REPLAY_JOB, {"id": i, "now": now}).rowcount]


def replay_dead(conn: sqlite3.Connection, rule: str | None, now: float) -> int:
    return conn.execute(REPLAY_DEAD, {"rule": rule, "now": now}).rowcount


def purge(conn: sqlite3.Connection, before: float, dedupe_before: float) -> int:
    conn.execute(PURGE_ATTEMPTS, {"before": before})
    deleted: int = conn.execute(PURGE_JOBS, {"before": before}).rowcount
    conn.execute(PURGE_EVENTS, {"before": before})
    conn.execute(PURGE_DEDUPE, {"before": dedupe_before})
    return deleted


def list_jobs(
    conn: sqlite3.Connection, status: Status | None, rule: str | None, limit: int
) -> list[JobSummary]:
    where: list[str] = []
    params: list[Any] = []
    if status is not None:
        where.append("j.status = ?")
        params.append(str(status))
    if rule is not None:
        where.append("j.rule = ?")
        params.append(rule)
    query = LIST_JOBS + (" WHERE " + " AND ".join(where) if where else "") + LIST_ORDER
    return [_summary(row) for row in conn.execute(query, (*params, limit))]


def _summary(row: Sequence[Any]) -> JobSummary:
    return JobSummary(
        id=row[0],
        rule=row[1],
        action_index=row[2],
        action_type=row[3],
        destination=row[4],
        status=Status(row[5]),
        attempts=row[6],
        created_at=row[7],
        updated_at=row[8],
        next_at=row[9],
        last_error=row[10],
        event_id=row[11],
        ruleset_version=row[12],
    )


def get_job(conn: sqlite3.Connection, job_id: str) -> JobDetail | None:
    row = conn.execute(GET_JOB, (job_id,)).fetchone()
    if row is None:
        return None
    history = tuple(
        AttemptRecord(number=n, at=at, outcome=Outcome(o), status_code=c, error=e, duration=d)
        for n, at, o, c, e, d in conn.execute(GET_HISTORY, (job_id,))
    )
    return JobDetail(
        summary=_summary(row), spec=json.loads(row[13]), record=json.loads(row[14]), history=history
    )


def stats(conn: sqlite3.Connection, now: float) -> QueueStats:
    pending, dead, oldest = conn.execute(STATS).fetchone()
    age = None if oldest is None else now - oldest
    return QueueStats(pending=pending, dead=dead, oldest_pending_age=age)
