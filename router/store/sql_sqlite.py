"""The SQL of the SQLite store: its migration steps, its statements, and the synchronous bodies
that run them on one connection inside a transaction the caller (the writer thread) owns.

The layout is the one every backend shares (router.store.migrations says why). What is SQLite's
own: `events.id` and `jobs.seq` are rowids (a job's id is a UNIQUE column beside its rowid, so
the rowid can be its acceptance order); jobs refer to their event and their spec by foreign key
(`PRAGMA foreign_keys = ON`); the journal is a WAL fsynced at every commit, before the intake
answers 202; the writer thread groups the requests of a moment into one transaction, each in
its own savepoint (router.store.sqlite). The store's random identity is the file header's
`user_version`, set when the schema is first written: it can be read without SQLite.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import astuple, replace
from typing import Any

from router.circuit import CircuitPolicy, CircuitState, Outcomes, Transition, advance, transition
from router.destinations import Destination
from router.exceptions import StoreUnavailable
from router.store import controls, rollups, rows
from router.store.base import (
    AcceptResult,
    AttemptResult,
    IncomingRecord,
    Job,
    JobDetail,
    JobSummary,
    Pause,
    QueueStats,
    Status,
    StoredEvent,
)
from router.store.migrations import (
    FLOOR_KEY,
    SCHEMA_VERSION,
    Migrations,
    floor_of,
    parse_floor,
    step_failed,
)
from router.store.specs import SpecCache, spec_row

PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    # FULL: a commit is on disk (WAL fsynced) before accept() returns, i.e. before the 202.
    "PRAGMA synchronous = FULL",
    "PRAGMA foreign_keys = ON",
)

# The shape the table had when the first step was written: step 3 gives it its current one.
SCHEMA_VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
HAS_SCHEMA_VERSION = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
GET_SCHEMA_VERSION = "SELECT max(version) FROM schema_version"
SET_SCHEMA_VERSION = "INSERT INTO schema_version (version) VALUES (?)"
GET_FLOOR = "SELECT value FROM store_meta WHERE key = ?"
SET_FLOOR = """
    INSERT INTO store_meta (key, value) VALUES (?, ?)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value
"""

MIGRATIONS = Migrations[tuple[str, ...]](
    (
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
        # 2: the row readiness probes write.
        (
            """CREATE TABLE store_meta (
                key TEXT PRIMARY KEY,
                value TEXT NOT NULL
            ) WITHOUT ROWID""",
        ),
        # 3: the layout shared with PostgreSQL. SQLite cannot add a primary key to a table, so
        # jobs are copied into a new one: `seq` takes each job's rowid (acceptance order kept),
        # `attempts_total` the last number of its history, and `ruleset_version` stays with the
        # events. The copy runs with foreign keys off (see `migrate`): dropping the old table
        # must not cascade to the attempts.
        (
            """CREATE TABLE jobs_v3 (
                seq INTEGER PRIMARY KEY,
                id TEXT NOT NULL UNIQUE,
                event INTEGER NOT NULL REFERENCES events (id),
                rule TEXT NOT NULL,
                action_index INTEGER NOT NULL,
                action_type TEXT NOT NULL,
                spec TEXT NOT NULL REFERENCES specs (hash),
                destination TEXT NOT NULL,
                status TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                attempts_total INTEGER NOT NULL DEFAULT 0,
                budget_since REAL NOT NULL,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL,
                next_at REAL,
                last_error TEXT,
                lease_token TEXT,
                lease_until REAL
            )""",
            """INSERT INTO jobs_v3 (
                seq, id, event, rule, action_index, action_type, spec, destination, status,
                attempts, attempts_total, budget_since, created_at, updated_at, next_at,
                last_error, lease_token, lease_until
            )
            SELECT rowid, id, event, rule, action_index, action_type, spec, destination, status,
                   attempts,
                   (SELECT coalesce(max(number), 0) FROM attempts WHERE job_id = jobs.id),
                   budget_since, created_at, updated_at, next_at, last_error, lease_token,
                   lease_until
            FROM jobs ORDER BY rowid""",
            "DROP TABLE jobs",
            "ALTER TABLE jobs_v3 RENAME TO jobs",
            "CREATE INDEX jobs_due ON jobs (status, next_at)",
            "CREATE INDEX jobs_event ON jobs (event)",
            """CREATE TABLE schema_version_v3 (
                version INTEGER PRIMARY KEY,
                applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
            )""",
            "INSERT INTO schema_version_v3 (version) SELECT DISTINCT version FROM schema_version",
            "DROP TABLE schema_version",
            "ALTER TABLE schema_version_v3 RENAME TO schema_version",
        ),
        # Shadow jobs: each job's mode (a shadow rule's jobs are rendered and recorded, never
        # sent). Every job stored before was live. `status` is free text here: 'shadow' needs
        # no change of its own.
        ("ALTER TABLE jobs ADD COLUMN mode TEXT NOT NULL DEFAULT 'live'",),
        # 5: delivery controls. Each job's order key and whether a dead one holds it; the
        # destinations (declared limits, rate slots, circuit) and the pauses, shared by every
        # worker; the indexes a claim reads them by.
        (
            "ALTER TABLE jobs ADD COLUMN order_key TEXT",
            "ALTER TABLE jobs ADD COLUMN order_hold INTEGER NOT NULL DEFAULT 0",
            """CREATE INDEX jobs_order ON jobs (order_key, status, seq)
                WHERE order_key IS NOT NULL""",
            """CREATE INDEX jobs_leased ON jobs (destination, lease_until)
                WHERE lease_token IS NOT NULL""",
            """CREATE TABLE destinations (
                key TEXT PRIMARY KEY,
                rate REAL,
                concurrency INTEGER,
                tat REAL,
                state TEXT NOT NULL DEFAULT 'closed',
                failures INTEGER NOT NULL DEFAULT 0,
                opened_at REAL,
                probe_at REAL,
                probe_delay REAL,
                probe_until REAL
            ) WITHOUT ROWID""",
            """CREATE TABLE pauses (
                kind TEXT NOT NULL,
                target TEXT NOT NULL,
                since REAL NOT NULL,
                PRIMARY KEY (kind, target)
            ) WITHOUT ROWID""",
        ),
        # 6: alerts: signals from processes, each alert's state, and the indexes its counts read.
        (
            """CREATE TABLE alert_signals (
                kind TEXT NOT NULL,
                scope TEXT,
                detail TEXT,
                at REAL NOT NULL
            )""",
            "CREATE INDEX alert_signals_at ON alert_signals (kind, at)",
            """CREATE TABLE alert_states (
                name TEXT PRIMARY KEY,
                firing INTEGER NOT NULL DEFAULT 0,
                fired_at REAL,
                changed_at REAL NOT NULL
            )""",
            "CREATE INDEX jobs_dead_at ON jobs (updated_at) WHERE status = 'dead'",
            "CREATE INDEX attempts_failed_at ON attempts (at) WHERE outcome IN ('retry', 'dead')",
            # A batch request's slot of its destination's concurrency (router.store.controls).
            """CREATE TABLE batch_slots (
                token TEXT PRIMARY KEY,
                key TEXT NOT NULL,
                until REAL NOT NULL
            ) WITHOUT ROWID""",
            "CREATE INDEX batch_slots_key ON batch_slots (key, until)",
        ),
        # 7: the console's reads (router.store.migrations).
        (
            "CREATE INDEX events_unmatched ON events (id) WHERE matched = '[]'",
            # Jobs leave `pending` once delivered or dead: these hold the jobs that did, so a
            # push writes none of them (pending jobs are read through jobs_due).
            "CREATE INDEX jobs_rule ON jobs (rule, seq) WHERE status <> 'pending'",
            "CREATE INDEX jobs_destination ON jobs (destination, seq) WHERE status <> 'pending'",
            "CREATE INDEX jobs_status ON jobs (status, seq) WHERE status <> 'pending'",
            # Counters by rule, destination, status and action over a window of creation
            # times: each group found by a seek and counted as a range (router.store.reads).
            "CREATE INDEX jobs_recent ON jobs (rule, destination, status, action_index, created_at)"
            " WHERE status <> 'pending'",
        ),
        # 8: the hours' counts (router.store.rollups) and records by event id.
        (
            *rollups.SQLITE_STEP,
            "CREATE INDEX events_event_id ON events (event_id) WHERE event_id IS NOT NULL",
        ),
        # 9: the excerpt of the destination's answer kept with each attempt (router.excerpts).
        ("ALTER TABLE attempts ADD COLUMN response TEXT",),
    )
)

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
    INSERT INTO jobs (id, event, rule, action_index, action_type, spec, destination, mode, status,
                      budget_since, created_at, updated_at, next_at, order_key, order_hold)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?)
"""

# -- claim
# `seq` is the rowid, the last column of every index entry: jobs_due yields this order as is.
# Paused jobs and jobs held back by their order key are passed over (router.store.controls).
_DUE = """
    SELECT id FROM jobs AS j
    WHERE status = 'pending' AND next_at <= :now AND (lease_until IS NULL OR lease_until < :now)
      AND destination NOT IN (SELECT value FROM json_each(:exclude))
      AND (:only IS NULL OR destination = :only)
      AND NOT {held}
      AND NOT {paused}{batched}
    ORDER BY next_at, seq
    LIMIT :limit
"""
_BATCHED = controls.BATCHED.format(has_batch="json_extract(s.spec, '$.batch') IS NOT NULL")
_HELD = controls.HELD_BY_ORDER.format(true=1)
SELECT_DUE = _DUE.format(held=_HELD, paused=controls.PAUSED, batched="")
# Of one controlled destination: its single jobs, or its batch actions' jobs (:batched 0 or 1).
SELECT_DUE_OF = _DUE.format(
    held=_HELD, paused=controls.PAUSED, batched=f"\n      AND {_BATCHED} = :batched"
)
SELECT_CONTROLLED = (
    f"SELECT {controls.CONTROLLED_COLUMNS} FROM destinations WHERE {controls.CONTROLLED_WHERE}"
)
# A destination's requests in flight: its single jobs leased, and its batch requests' slots.
COUNT_LEASED = f"""
    SELECT (SELECT count(*) FROM jobs AS j
            WHERE destination = :key AND lease_token IS NOT NULL AND lease_until >= :now
              AND NOT {_BATCHED})
         + (SELECT count(*) FROM batch_slots WHERE key = :key AND until >= :now)
"""
GET_LIMITS = "SELECT rate, concurrency, tat FROM destinations WHERE key = ?"
DROP_OLD_SLOTS = "DELETE FROM batch_slots WHERE key = ? AND until < ?"
ADD_SLOT = "INSERT INTO batch_slots (token, key, until) VALUES (?, ?, ?)"
FREE_SLOT = "DELETE FROM batch_slots WHERE token = ?"
TAKE_SLOTS = "UPDATE destinations SET tat = coalesce(:tat, tat) WHERE key = :key"
TAKE_PROBE = "UPDATE destinations SET probe_until = :until WHERE key = :key"
LEASE_JOB = "UPDATE jobs SET lease_token = ?, lease_until = ? WHERE id = ?"
SELECT_CLAIMED = f"""
    SELECT {rows.JOB_COLUMNS}
    FROM jobs AS j
    JOIN events AS e ON e.id = j.event
    JOIN specs AS s ON s.hash = j.spec
    WHERE j.id IN (SELECT value FROM json_each(?))
"""

# -- record
# The attempt is always counted (its number comes back); the job moves only while the token
# holds it. A retry keeps its own error; done and dead keep the last error when they bring none.
COUNT_ATTEMPT = """
    UPDATE jobs SET
        attempts = CASE WHEN lease_token = :token THEN attempts + 1 ELSE attempts END,
        attempts_total = attempts_total + 1,
        status = CASE WHEN lease_token = :token THEN :status ELSE status END,
        next_at = CASE WHEN lease_token = :token THEN :next_at ELSE next_at END,
        last_error = CASE
            WHEN lease_token IS NOT :token THEN last_error
            WHEN :status = 'pending' THEN :error
            ELSE coalesce(:error, last_error)
        END,
        updated_at = CASE WHEN lease_token = :token THEN :now ELSE updated_at END,
        lease_until = CASE WHEN lease_token = :token THEN NULL ELSE lease_until END,
        lease_token = CASE WHEN lease_token = :token THEN NULL ELSE lease_token END
    WHERE id = :job_id
    RETURNING attempts_total
"""
INSERT_ATTEMPT = """
    INSERT INTO attempts (job_id, number, at, outcome, status_code, error, duration, response)
    VALUES (:job_id, :number, :at, :outcome, :status_code, :error, :duration, :response)
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
# A probe out with those leases is gone with them: the next probe may go at its time.
CLEAR_PROBES = "UPDATE destinations SET probe_until = NULL WHERE probe_until IS NOT NULL"
# So are the concurrency slots of its batch requests.
CLEAR_BATCH_SLOTS = "DELETE FROM batch_slots"

# -- replay
_REPLAY_SET = """
    UPDATE jobs SET status = 'pending', attempts = 0, budget_since = :now, next_at = :now,
                    lease_token = NULL, lease_until = NULL, updated_at = :now
"""
REPLAY_JOB = _REPLAY_SET + "WHERE id = :id AND status = 'dead'"
DISCARD_JOB = """
    UPDATE jobs SET order_hold = 0, updated_at = :now
    WHERE id = :id AND status = 'dead' AND order_hold = 1
"""

# -- controls
CLEAR_LIMITS = """
    UPDATE destinations SET rate = NULL, concurrency = NULL
    WHERE key NOT IN (SELECT value FROM json_each(?))
"""
DECLARE = """
    INSERT INTO destinations (key, rate, concurrency) VALUES (?, ?, ?)
    ON CONFLICT (key) DO UPDATE SET rate = excluded.rate, concurrency = excluded.concurrency
"""
GET_CIRCUIT = f"SELECT {controls.CIRCUIT_COLUMNS} FROM destinations WHERE key = ?"
PUT_CIRCUIT = """
    INSERT INTO destinations (key, state, failures, opened_at, probe_at, probe_delay,
                              probe_until)
    VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (key) DO UPDATE SET state = excluded.state, failures = excluded.failures,
        opened_at = excluded.opened_at, probe_at = excluded.probe_at,
        probe_delay = excluded.probe_delay, probe_until = excluded.probe_until
"""
LIST_CIRCUITS = "SELECT key, state FROM destinations ORDER BY key"
PAUSE = """
    INSERT INTO pauses (kind, target, since) VALUES (?, ?, ?)
    ON CONFLICT (kind, target) DO NOTHING
"""
UNPAUSE = "DELETE FROM pauses WHERE kind = ? AND target = ? RETURNING since"
LIST_PAUSES = "SELECT kind, target, since FROM pauses ORDER BY since, kind, target"
# The paused time back on each pending job's retry budget: from the pause (or the job's own
# start, if later) to now.
_CREDIT = """
    UPDATE jobs AS j SET budget_since = budget_since + (:now - max(:since, budget_since))
    WHERE status = 'pending' AND budget_since < :now AND
"""
CREDIT_RULE = _CREDIT + "j.rule = :target"
CREDIT_DESTINATION = _CREDIT + controls.UNDER.format(dest="j.destination", target=":target")
REPLAY_DEAD = _REPLAY_SET + "WHERE status = 'dead' AND (:rule IS NULL OR rule = :rule)"

# -- reads
# Filters are added only when given: `j.status = ?` can use jobs_due, `? IS NULL OR` cannot.
LIST_JOBS = f"SELECT {rows.SUMMARY_COLUMNS} FROM jobs AS j JOIN events AS e ON e.id = j.event"
LIST_STATUS = "j.status = ?"
LIST_RULE = "j.rule = ?"
LIST_ORDER = " ORDER BY j.created_at DESC, j.seq DESC LIMIT ?"
GET_JOB = f"""
    SELECT {rows.DETAIL_COLUMNS}
    FROM jobs AS j
    JOIN events AS e ON e.id = j.event
    JOIN specs AS s ON s.hash = j.spec
    WHERE j.id = ?
"""
GET_HISTORY = f"SELECT {rows.ATTEMPT_COLUMNS} FROM attempts WHERE job_id = ? ORDER BY number"
STATS = f"SELECT {rows.STATS_COLUMNS}"
READ_EVENTS = f"""
    SELECT {rows.EVENT_COLUMNS} FROM events
    WHERE id > :after AND received_at >= :since
    ORDER BY id LIMIT :limit
"""

# -- purge
PURGE_ATTEMPTS = """
    DELETE FROM attempts WHERE job_id IN (
        SELECT id FROM jobs WHERE status IN ('done', 'shadow') AND updated_at < :before)
"""
PURGE_JOBS = "DELETE FROM jobs WHERE status IN ('done', 'shadow') AND updated_at < :before"
PURGE_EVENTS = """
    DELETE FROM events
    WHERE received_at < :before AND NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.event = events.id)
"""
PURGE_DEDUPE = "DELETE FROM dedupe WHERE seen_at < :before"


def current_version(conn: sqlite3.Connection) -> int:
    """The highest applied step; 0 for a file the router never wrote to."""
    if conn.execute(HAS_SCHEMA_VERSION).fetchone() is None:
        return 0
    return int(conn.execute(GET_SCHEMA_VERSION).fetchone()[0] or 0)


def stored_floor(conn: sqlite3.Connection) -> int | None:
    """The store's floor (router.store.migrations), or None when it has none."""
    try:
        row = conn.execute(GET_FLOOR, (FLOOR_KEY,)).fetchone()
    except sqlite3.OperationalError:  # no store_meta table: a store of a very early release
        return None
    return parse_floor(row[0]) if row else None


def migrate(conn: sqlite3.Connection, apply: bool, *, target: int = SCHEMA_VERSION) -> list[int]:
    """Bring the schema to `target` in one transaction, as router.store.migrations lays down
    (StoreUnavailable when that cannot or must not be done); returns the steps applied."""
    # Off while steps copy tables (dropping the old jobs table must not cascade to attempts).
    # A no-op inside a transaction, so set before it; the store turns them on after (PRAGMAS).
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute("BEGIN IMMEDIATE")  # two processes starting at once migrate one after another
    try:
        version = current_version(conn)
        floor = stored_floor(conn) if version > SCHEMA_VERSION else None
        pending = MIGRATIONS.pending(version, apply=apply, target=target, floor=floor)
        conn.execute(SCHEMA_VERSION_TABLE)
        for number, statements in pending:
            try:
                for statement in statements:
                    conn.execute(statement)
            except sqlite3.Error as exc:
                raise StoreUnavailable(step_failed(number, exc)) from exc
            conn.execute(SET_SCHEMA_VERSION, (number,))
        if apply and version <= SCHEMA_VERSION and MIGRATIONS.records_floor(target):
            conn.execute(SET_FLOOR, (FLOOR_KEY, str(floor_of(SCHEMA_VERSION))))
        if apply and not conn.execute("PRAGMA user_version").fetchone()[0]:
            conn.execute(f"PRAGMA user_version = {secrets.randbelow(2**31 - 1) + 1}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return [number for number, _ in pending]


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


def _stored_spec(conn: sqlite3.Connection, spec: Mapping[str, Any], cache: SpecCache) -> str:
    """The hash of `spec`, written to the specs table the first time this store meets it. The
    cache is remembered before the commit: the writer clears it when a transaction rolls back."""
    digest = cache.get(spec)
    if digest is None:
        digest, text = spec_row(spec)
        conn.execute(INSERT_SPEC, (digest, text))
        cache.remember(spec, digest)
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
        event_row = (*rows.event_row(incoming), ruleset_version, now)
        (event,) = conn.execute(INSERT_EVENT, event_row).fetchone()
        for job in incoming.jobs:
            digest = _stored_spec(conn, job.spec, specs)
            row = (job.id, event, job.rule, job.action_index, job.action_type, digest)
            try:
                conn.execute(
                    INSERT_JOB,
                    (
                        *row,
                        job.destination,
                        job.mode,
                        now,
                        now,
                        now,
                        now,
                        job.order_key,
                        int(job.order_hold),
                    ),
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
    exclude: Sequence[str],
    only: str | None,
) -> list[Job]:
    """The controlled destinations first, each within what its row allows, then the rest."""
    token = uuid.uuid4().hex
    held = [controls.controlled(row) for row in conn.execute(SELECT_CONTROLLED)]
    claimed: list[Job] = []
    for row in controls.order(held, exclude, only):
        if len(claimed) >= limit:
            break
        leased = 0
        if row.concurrency is not None:
            leased = conn.execute(COUNT_LEASED, {"key": row.key, "now": now}).fetchone()[0]
        plan = controls.plan(row, leased=leased, limit=limit - len(claimed), now=now)
        jobs: list[Job] = []
        if plan.count > 0:
            jobs = _claim_due(conn, token, plan.count, until, now, (), row.key, batched=False)
        if jobs:
            if plan.probe:
                conn.execute(TAKE_PROBE, {"until": until, "key": row.key})
            conn.execute(TAKE_SLOTS, {"tat": plan.tat_after(len(jobs)), "key": row.key})
            times = plan.send_times(len(jobs))
            claimed += [replace(job, not_before=at) for job, at in zip(jobs, times, strict=True)]
            if plan.probe:
                continue  # the probe is out
        batches = controls.plan_batched(row, limit=limit - len(claimed), now=now)
        if batches.count <= 0:
            continue
        jobs = _claim_due(conn, token, batches.count, until, now, (), row.key, batched=True)
        if jobs and batches.probe:
            conn.execute(TAKE_PROBE, {"until": until, "key": row.key})
        claimed += jobs
    skip = [*exclude, *(row.key for row in held)]
    if len(claimed) < limit and (only is None or only not in skip):
        claimed += _claim_due(conn, token, limit - len(claimed), until, now, skip, only)
    return claimed


def _claim_due(
    conn: sqlite3.Connection,
    token: str,
    limit: int,
    until: float,
    now: float,
    exclude: Sequence[str],
    only: str | None,
    *,
    batched: bool | None = None,
) -> list[Job]:
    params = {"now": now, "limit": limit, "exclude": json.dumps(list(exclude)), "only": only}
    if batched is None:
        due = [row[0] for row in conn.execute(SELECT_DUE, params)]
    else:
        due = [row[0] for row in conn.execute(SELECT_DUE_OF, {**params, "batched": int(batched)})]
    if not due:
        return []
    conn.executemany(LEASE_JOB, [(token, until, job_id) for job_id in due])
    claimed = {row[0]: row for row in conn.execute(SELECT_CLAIMED, (json.dumps(due),))}
    return [rows.job(claimed[job_id]) for job_id in due]


def record(conn: sqlite3.Connection, results: Sequence[AttemptResult], now: float) -> None:
    for result in results:
        attempt = rows.attempt_row(result)._asdict()
        counted = conn.execute(COUNT_ATTEMPT, {**attempt, "now": now}).fetchone()
        if counted is None:
            continue  # purged meanwhile: nothing to append to
        conn.execute(INSERT_ATTEMPT, {**attempt, "number": counted[0]})


def release(conn: sqlite3.Connection, claims: Sequence[tuple[str, str]], next_at: float) -> None:
    params = [{"id": job_id, "token": token, "next_at": next_at} for job_id, token in claims]
    conn.executemany(RELEASE_JOB, params)


def renew(conn: sqlite3.Connection, claims: Sequence[tuple[str, str]], until: float) -> None:
    params = [{"id": job_id, "token": token, "until": until} for job_id, token in claims]
    conn.executemany(RENEW_LEASE, params)


def replay(conn: sqlite3.Connection, job_ids: Sequence[str], now: float) -> Collection[str]:
    return {i for i in job_ids if conn.execute(REPLAY_JOB, {"id": i, "now": now}).rowcount}


def discard(conn: sqlite3.Connection, job_ids: Sequence[str], now: float) -> Collection[str]:
    return {i for i in job_ids if conn.execute(DISCARD_JOB, {"id": i, "now": now}).rowcount}


def take_slot(
    conn: sqlite3.Connection, key: str, token: str, until: float, now: float
) -> float | None:
    row = conn.execute(GET_LIMITS, (key,)).fetchone()
    if row is None or (row[0] is None and row[1] is None):
        return now
    rate, concurrency, tat = row
    conn.execute(DROP_OLD_SLOTS, (key, now))
    busy = 0
    if concurrency is not None:
        busy = conn.execute(COUNT_LEASED, {"key": key, "now": now}).fetchone()[0]
    at, next_tat = controls.slot(rate, concurrency, tat, busy, now)
    if at is None:
        return None
    if concurrency is not None:
        conn.execute(ADD_SLOT, (token, key, until))
    if next_tat is not None:
        conn.execute(TAKE_SLOTS, {"tat": next_tat, "key": key})
    return at


def free_slot(conn: sqlite3.Connection, token: str) -> None:
    conn.execute(FREE_SLOT, (token,))


def declare(conn: sqlite3.Connection, destinations: Sequence[Destination]) -> None:
    conn.execute(CLEAR_LIMITS, (json.dumps([d.key for d in destinations]),))
    conn.executemany(DECLARE, [(d.key, d.rate, d.concurrency) for d in destinations])


def report(
    conn: sqlite3.Connection, outcomes: Mapping[str, Outcomes], policy: CircuitPolicy, now: float
) -> list[Transition]:
    changes: list[Transition] = []
    for key in sorted(outcomes):
        row = conn.execute(GET_CIRCUIT, (key,)).fetchone()
        old = controls.circuit_state(row) if row else CircuitState()
        new = advance(old, outcomes[key], policy, now)
        if new == old:
            continue
        conn.execute(PUT_CIRCUIT, (key, *astuple(new)))
        change = transition(key, old, new)
        if change is not None:
            changes.append(change)
    return changes


def circuits(conn: sqlite3.Connection) -> dict[str, str]:
    return {key: state for key, state in conn.execute(LIST_CIRCUITS)}


def pause(conn: sqlite3.Connection, kind: str, target: str, now: float) -> bool:
    return bool(conn.execute(PAUSE, (kind, target, now)).rowcount)


def resume(conn: sqlite3.Connection, kind: str, target: str, now: float) -> int | None:
    row = conn.execute(UNPAUSE, (kind, target)).fetchone()
    if row is None:
        return None
    credit = CREDIT_RULE if kind == "rule" else CREDIT_DESTINATION
    return int(conn.execute(credit, {"now": now, "since": row[0], "target": target}).rowcount)


def pauses(conn: sqlite3.Connection) -> list[Pause]:
    return [Pause(kind, target, since) for kind, target, since in conn.execute(LIST_PAUSES)]


def replay_dead(conn: sqlite3.Connection, rule: str | None, now: float) -> int:
    return conn.execute(REPLAY_DEAD, {"rule": rule, "now": now}).rowcount


# -- alerts
# A destination scope covers the jobs of its key and of every key below it (router.destinations).
_SCOPE = "(:rule IS NULL OR j.rule = :rule) AND (:destination IS NULL OR " + (
    controls.UNDER.format(dest="j.destination", target=":destination") + ")"
)
COUNT_DEAD = f"""
    SELECT count(*) FROM jobs j
    WHERE j.status = 'dead' AND j.updated_at >= :since AND {_SCOPE}
"""
FIRST_DEAD = f"""
    SELECT j.last_error FROM jobs j
    WHERE j.status = 'dead' AND j.updated_at >= :since AND {_SCOPE}
    ORDER BY j.updated_at LIMIT :limit
"""
COUNT_FAILED = f"""
    SELECT count(*) FROM attempts a JOIN jobs j ON j.id = a.job_id
    WHERE a.outcome IN ('retry', 'dead') AND a.at >= :since AND {_SCOPE}
"""
FIRST_FAILED = f"""
    SELECT a.error FROM attempts a JOIN jobs j ON j.id = a.job_id
    WHERE a.outcome IN ('retry', 'dead') AND a.at >= :since AND {_SCOPE}
    ORDER BY a.at LIMIT :limit
"""
COUNT_SIGNALS = """
    SELECT count(*) FROM alert_signals
    WHERE kind = :kind AND at >= :since AND (:scope IS NULL OR scope = :scope)
"""
FIRST_SIGNALS = """
    SELECT detail FROM alert_signals
    WHERE kind = :kind AND at >= :since AND (:scope IS NULL OR scope = :scope)
    ORDER BY at LIMIT :limit
"""
ADD_SIGNAL = "INSERT INTO alert_signals (kind, scope, detail, at) VALUES (?, ?, ?, ?)"
PURGE_SIGNALS = "DELETE FROM alert_signals WHERE at < ?"
# A row back: this caller moved the alert to firing (at most once per window, whoever asks).
FIRE_ALERT = """
    INSERT INTO alert_states (name, firing, fired_at, changed_at) VALUES (:name, 1, :now, :now)
    ON CONFLICT (name) DO UPDATE SET
        firing = 1,
        fired_at = :now,
        changed_at = CASE WHEN alert_states.firing = 1 THEN alert_states.changed_at ELSE :now END
    WHERE alert_states.fired_at IS NULL OR alert_states.fired_at <= :now - :window
    RETURNING changed_at
"""
RECOVER_ALERT = """
    UPDATE alert_states SET firing = 0, changed_at = :now WHERE name = :name AND firing = 1
    RETURNING changed_at
"""
UNFIRE_ALERT = "UPDATE alert_states SET firing = 0, fired_at = NULL WHERE name = ?"


def alert_facts(
    conn: sqlite3.Connection,
    kind: str,
    scope: Mapping[str, str | None],
    since: float,
    limit: int,
) -> tuple[int, tuple[str, ...]]:
    if kind in ("dead", "failing"):
        count, first = (COUNT_DEAD, FIRST_DEAD) if kind == "dead" else (COUNT_FAILED, FIRST_FAILED)
        args: dict[str, Any] = {
            "rule": scope.get("rule"),
            "destination": scope.get("destination"),
            "since": since,
        }
    else:
        count, first = COUNT_SIGNALS, FIRST_SIGNALS
        args = {"kind": kind, "scope": scope.get("scope"), "since": since}
    total = int(conn.execute(count, args).fetchone()[0])
    errors = tuple(str(row[0]) for row in conn.execute(first, {**args, "limit": limit}) if row[0])
    return total, errors


def add_signal(
    conn: sqlite3.Connection,
    kind: str,
    scope: str | None,
    detail: str | None,
    at: float,
    keep: float,
) -> None:
    conn.execute(ADD_SIGNAL, (kind, scope, detail, at))
    conn.execute(PURGE_SIGNALS, (at - keep,))


def fire_alert(conn: sqlite3.Connection, name: str, now: float, window: float) -> bool | None:
    """None: not now (fired within the window); True: newly firing; False: still firing."""
    row = conn.execute(FIRE_ALERT, {"name": name, "now": now, "window": window}).fetchone()
    return None if row is None else row[0] == now


def recover_alert(conn: sqlite3.Connection, name: str, now: float) -> bool:
    return conn.execute(RECOVER_ALERT, {"name": name, "now": now}).fetchone() is not None


def unfire_alert(conn: sqlite3.Connection, name: str) -> None:
    conn.execute(UNFIRE_ALERT, (name,))


def purge(conn: sqlite3.Connection, before: float, dedupe_before: float) -> int:
    conn.execute(PURGE_ATTEMPTS, {"before": before})
    deleted: int = conn.execute(PURGE_JOBS, {"before": before}).rowcount
    conn.execute(PURGE_EVENTS, {"before": before})
    conn.execute(PURGE_DEDUPE, {"before": dedupe_before})
    return deleted


def roll_hour(conn: sqlite3.Connection, hour: int, again: bool) -> bool:
    """Count the settled jobs of `hour` into job_hours and mark it (router.store.rollups),
    unless it is marked already (or, `again`, unless its rows are still few); whether it was."""
    span = {"hour": hour, "end": hour + rollups.HOUR}
    if again:
        if conn.execute(rollups.ROWS_SQLITE, span).fetchone()[0] <= rollups.COMPACT:
            return False
    elif conn.execute(rollups.IS_ROLLED_SQLITE, span).fetchone() is not None:
        return False
    conn.execute(rollups.CLEAR_SQLITE, span)
    conn.execute(rollups.ROLL_SQLITE, span)
    conn.execute(rollups.MARK_SQLITE, span)
    return True


def forget_hours(conn: sqlite3.Connection, before: int) -> None:
    for statement in rollups.FORGET_SQLITE:
        conn.execute(statement, {"before": before})


def list_jobs(
    conn: sqlite3.Connection, status: Status | None, rule: str | None, limit: int
) -> list[JobSummary]:
    where: list[str] = []
    params: list[Any] = []
    if status is not None:
        where.append(LIST_STATUS)
        params.append(str(status))
    if rule is not None:
        where.append(LIST_RULE)
        params.append(rule)
    query = LIST_JOBS + (" WHERE " + " AND ".join(where) if where else "") + LIST_ORDER
    return [rows.summary(row) for row in conn.execute(query, (*params, limit))]


def get_job(conn: sqlite3.Connection, job_id: str) -> JobDetail | None:
    row = conn.execute(GET_JOB, (job_id,)).fetchone()
    if row is None:
        return None
    return rows.detail(row, conn.execute(GET_HISTORY, (job_id,)))


def read_events(
    conn: sqlite3.Connection, since: float, after: int, limit: int
) -> list[StoredEvent]:
    params = {"since": since, "after": after, "limit": limit}
    return [rows.stored_event(row) for row in conn.execute(READ_EVENTS, params)]


def stats(conn: sqlite3.Connection, now: float) -> QueueStats:
    return rows.stats(conn.execute(STATS).fetchone(), now)
