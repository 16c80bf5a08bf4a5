"""The console's day counters, counted once per hour: what keeps the Overview and Rules pages
as quick with a million jobs as with a hundred.

Counting the day's settled jobs one by one costs what the day holds (about 143,000 jobs with a
million a week). Instead, once an hour has ended (MARGIN ago), its settled jobs are counted per
(rule, destination, status, action) into `job_hours`, and the hour is marked in `rolled_hours`
(schema step 8, router.store.migrations). A day's counters add up the rows of the marked hours
and count live only the rest: the part of an hour where the window starts, the current hour,
and any hour not marked yet. The last hour's counters are always counted live (a few thousand
jobs at most); so are pending jobs, the backlog, wherever they were created.

What keeps a marked hour's rows true, in the database itself (triggers), so that whatever
version of the router writes to the store, the rows follow the jobs:
- no job is created in an hour that ended MARGIN ago (jobs are created at the time of their
  push; replicas' clocks are assumed to agree within MARGIN);
- a job of a marked hour whose status changes (a late delivery or death after retries, a
  replay) adds a row of -1 for its old status if that was settled, and of +1 for the new one
  if that is: rows are only ever inserted, so concurrent workers never wait on each other's
  counters. A job can only settle into a marked hour more than MARGIN after its creation, so
  the trigger ignores the quicker ones without looking;
- a settled job deleted (the retention purge) unmarks its hour, which is counted again;
- when an hour has gathered more than COMPACT rows, it is counted again from its jobs;
- on PostgreSQL, counting an hour takes a transaction-scoped advisory lock (LOCK_KEY) that
  every trigger takes shared: an hour is never counted from a snapshot that misses a change
  whose trigger found it unmarked. SQLite has one writer: its writes come one after another.

`Store.roll_up`, called every ROLL_EVERY seconds by every process with a store
(router.wiring), counts the hours; the console's reads (router.store.reads) only read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

HOUR = 3600
DAY = 86400
# Seconds after an hour's end before it is counted. Schema step 8's triggers hold the same
# figure (a job settling more than 300 s after its creation may settle into a counted hour): a
# smaller MARGIN needs a new step.
MARGIN = 300.0
COMPACT = 2000  # rows of one hour (counts and changes) beyond which it is counted again
ROLL_EVERY = 60.0  # seconds between roll-ups in a serving process
LOCK_KEY = 0x526F6C6C48727321  # PostgreSQL advisory lock of counting hours and removing marks


def hour_of(at: float) -> int:
    """The start of the hour holding `at` (epoch seconds), as the triggers compute it."""
    return math.floor(at / HOUR) * HOUR


def to_roll(now: float, since: float) -> list[int]:
    """The hours a roll-up at `now` may count: those of the last day (the first one too, which
    the window holds only in part, so that it is ready when the window moves on), none starting
    before `since` (the retention's horizon: older jobs are being purged), ended at least
    MARGIN ago. Oldest first."""
    first = max(hour_of(now - DAY), math.ceil(since / HOUR) * HOUR)
    last = hour_of(now - MARGIN) - HOUR  # the newest hour that ended MARGIN ago
    return list(range(first, last + 1, HOUR))


def full_hours(now: float) -> tuple[int, int]:
    """The first and last start of the hours wholly inside the day before `now`."""
    return math.ceil((now - DAY) / HOUR) * HOUR, hour_of(now) - HOUR


def live_ranges(now: float, rolled: Sequence[int]) -> list[tuple[float, float | None]]:
    """The parts of the day before `now` whose settled jobs are counted live: everything but
    the rolled hours, as [start, end) ranges (None: no end), oldest first, adjacent ones joined."""
    ranges: list[tuple[float, float | None]] = []
    start: float | None = now - DAY
    first, last = full_hours(now)
    done = set(rolled)
    for hour in range(first, last + 1, HOUR):
        if hour in done:
            if start is not None and start < hour:
                ranges.append((start, float(hour)))
            start = None
        elif start is None:
            start = float(hour)
    ranges.append((start if start is not None else float(last + HOUR), None))
    return ranges


def marked(dialect: str, first: int, last: int) -> tuple[str, list[int]]:
    """The statement of the marked hours from `first` to `last` (starts, both included)."""
    if dialect == "sqlite":
        return "SELECT hour FROM rolled_hours WHERE hour >= ? AND hour <= ? ORDER BY hour", [
            first,
            last,
        ]
    return (
        "SELECT hour FROM rolled_hours WHERE hour >= $1::int8 AND hour <= $2::int8 ORDER BY hour",
        [first, last],
    )


def marked_rows(dialect: str, first: int, last: int) -> tuple[str, list[int]]:
    """The marked hours from `first` to `last` with how many rows each has."""
    low, high = ("?", "?") if dialect == "sqlite" else ("$1::int8", "$2::int8")
    return (
        "SELECT r.hour, (SELECT count(*) FROM job_hours AS c WHERE c.hour = r.hour) "
        f"FROM rolled_hours AS r WHERE r.hour >= {low} AND r.hour <= {high}",
        [first, last],
    )


OLDEST_MARK: tuple[str, list[int]] = ("SELECT min(hour) FROM rolled_hours", [])


# -- schema step 8, in each dialect

_SQLITE_HOUR = "CAST(OLD.created_at / 3600 AS INTEGER) * 3600"
_SQLITE_COLUMNS = "hour, rule, destination, status, action_index, n, last"
SQLITE_STEP = (
    """CREATE TABLE job_hours (
        hour INTEGER NOT NULL,
        rule TEXT NOT NULL,
        destination TEXT NOT NULL,
        status TEXT NOT NULL,
        action_index INTEGER NOT NULL,
        n INTEGER NOT NULL,
        last REAL NOT NULL
    )""",
    "CREATE INDEX job_hours_hour ON job_hours (hour)",
    "CREATE TABLE rolled_hours (hour INTEGER PRIMARY KEY)",
    f"""CREATE TRIGGER jobs_hour_counts AFTER UPDATE OF status ON jobs
        WHEN OLD.status <> NEW.status
            AND (OLD.status <> 'pending' OR NEW.updated_at - OLD.created_at > 300)
            AND EXISTS (SELECT 1 FROM rolled_hours WHERE hour = {_SQLITE_HOUR})
        BEGIN
            INSERT INTO job_hours ({_SQLITE_COLUMNS})
            SELECT {_SQLITE_HOUR}, OLD.rule, OLD.destination, OLD.status, OLD.action_index, -1,
                   OLD.created_at
            WHERE OLD.status <> 'pending';
            INSERT INTO job_hours ({_SQLITE_COLUMNS})
            SELECT {_SQLITE_HOUR}, NEW.rule, NEW.destination, NEW.status, NEW.action_index, 1,
                   NEW.created_at
            WHERE NEW.status <> 'pending';
        END""",
    f"""CREATE TRIGGER jobs_hour_unmark AFTER DELETE ON jobs WHEN OLD.status <> 'pending'
        BEGIN DELETE FROM rolled_hours WHERE hour = {_SQLITE_HOUR}; END""",
)

POSTGRES_STEP = f"""
    CREATE TABLE job_hours (
        hour bigint NOT NULL,
        rule text NOT NULL,
        destination text NOT NULL,
        status text NOT NULL,
        action_index integer NOT NULL,
        n bigint NOT NULL,
        last double precision NOT NULL
    );
    CREATE INDEX job_hours_hour ON job_hours (hour);
    CREATE TABLE rolled_hours (hour bigint PRIMARY KEY);
    CREATE FUNCTION router_job_hour_counts() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        h bigint := (floor(OLD.created_at / 3600) * 3600)::bigint;
    BEGIN
        PERFORM pg_advisory_xact_lock_shared({LOCK_KEY});
        IF EXISTS (SELECT 1 FROM rolled_hours WHERE hour = h) THEN
            IF OLD.status <> 'pending' THEN
                INSERT INTO job_hours VALUES (
                    h, OLD.rule, OLD.destination, OLD.status, OLD.action_index, -1,
                    OLD.created_at);
            END IF;
            IF NEW.status <> 'pending' THEN
                INSERT INTO job_hours VALUES (
                    h, NEW.rule, NEW.destination, NEW.status, NEW.action_index, 1,
                    NEW.created_at);
            END IF;
        END IF;
        RETURN NULL;
    END $$;
    CREATE FUNCTION router_job_hour_unmark() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF EXISTS (SELECT 1 FROM gone WHERE status <> 'pending') THEN
            PERFORM pg_advisory_xact_lock_shared({LOCK_KEY});
            DELETE FROM rolled_hours WHERE hour IN (
                SELECT DISTINCT (floor(created_at / 3600) * 3600)::bigint FROM gone
                WHERE status <> 'pending');
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER jobs_hour_counts AFTER UPDATE OF status ON jobs FOR EACH ROW
        WHEN (OLD.status <> NEW.status
              AND (OLD.status <> 'pending' OR NEW.updated_at - OLD.created_at > 300))
        EXECUTE FUNCTION router_job_hour_counts();
    CREATE TRIGGER jobs_hour_unmark AFTER DELETE ON jobs
        REFERENCING OLD TABLE AS gone FOR EACH STATEMENT
        EXECUTE FUNCTION router_job_hour_unmark();
"""

# SQLite: the (rule, destination, status) groups of `jobs_recent`, found by seeking from one
# to the next (a loose index scan: a few index lookups per group, not a scan of every job; the
# planner would only do that itself with statistics the store never gathers), then each
# group's counts read as ranges of the same index.
GROUPS_SQLITE = """
WITH RECURSIVE
r(rule) AS (
    SELECT min(rule) FROM jobs INDEXED BY jobs_recent WHERE status <> 'pending'
    UNION ALL
    SELECT (SELECT min(rule) FROM jobs INDEXED BY jobs_recent
            WHERE status <> 'pending' AND rule > r.rule)
    FROM r WHERE r.rule IS NOT NULL
),
rd(rule, destination) AS (
    SELECT rule, (SELECT min(destination) FROM jobs INDEXED BY jobs_recent
                  WHERE status <> 'pending' AND rule = r.rule)
    FROM r WHERE r.rule IS NOT NULL
    UNION ALL
    SELECT rule, (SELECT min(destination) FROM jobs INDEXED BY jobs_recent
                  WHERE status <> 'pending' AND rule = rd.rule AND destination > rd.destination)
    FROM rd WHERE rd.destination IS NOT NULL
),
rds(rule, destination, status) AS (
    SELECT rule, destination,
           (SELECT min(status) FROM jobs INDEXED BY jobs_recent
            WHERE status <> 'pending' AND rule = rd.rule AND destination = rd.destination)
    FROM rd WHERE rd.destination IS NOT NULL
    UNION ALL
    SELECT rule, destination,
           (SELECT min(status) FROM jobs INDEXED BY jobs_recent
            WHERE status <> 'pending' AND rule = rds.rule AND destination = rds.destination
              AND status > rds.status)
    FROM rds WHERE rds.status IS NOT NULL
),
g(rule, destination, status, action_index) AS (
    SELECT rule, destination, status,
           (SELECT min(action_index) FROM jobs INDEXED BY jobs_recent
            WHERE status <> 'pending' AND rule = rds.rule AND destination = rds.destination
              AND status = rds.status)
    FROM rds WHERE rds.status IS NOT NULL
    UNION ALL
    SELECT rule, destination, status,
           (SELECT min(action_index) FROM jobs INDEXED BY jobs_recent
            WHERE status <> 'pending' AND rule = g.rule AND destination = g.destination
              AND status = g.status AND action_index > g.action_index)
    FROM g WHERE g.action_index IS NOT NULL
)
SELECT g.rule, g.destination, g.status, g.action_index, {counts}
FROM g WHERE g.action_index IS NOT NULL
"""
COUNT_SQLITE = (
    "(SELECT {what} FROM jobs AS j INDEXED BY jobs_recent WHERE j.status <> 'pending' "
    "AND j.rule = g.rule AND j.destination = g.destination AND j.status = g.status "
    "AND j.action_index = g.action_index AND {where})"
)


# -- counting one hour (`hour`, `end`: its start and the next hour's)

ROWS_SQLITE = "SELECT count(*) FROM job_hours WHERE hour = :hour"
IS_ROLLED_SQLITE = "SELECT 1 FROM rolled_hours WHERE hour = :hour"
CLEAR_SQLITE = "DELETE FROM job_hours WHERE hour = :hour"
MARK_SQLITE = "INSERT OR IGNORE INTO rolled_hours (hour) VALUES (:hour)"
_IN_HOUR = "j.created_at >= :hour AND j.created_at < :end"
_ROLL_COUNTS = (
    COUNT_SQLITE.format(what="count(*)", where=_IN_HOUR)
    + " AS n, "
    + COUNT_SQLITE.format(what="max(j.created_at)", where=_IN_HOUR)
    + " AS last"
)
ROLL_SQLITE = (
    "INSERT INTO job_hours (hour, rule, destination, status, action_index, n, last) "
    "SELECT :hour, rule, destination, status, action_index, n, last FROM ("
    + GROUPS_SQLITE.format(counts=_ROLL_COUNTS)
    + ") WHERE n > 0"
)
# Hours the last day no longer reaches.
FORGET_SQLITE = (
    "DELETE FROM job_hours WHERE hour < :before",
    "DELETE FROM rolled_hours WHERE hour < :before",
)

LOCK_POSTGRES = f"SELECT pg_advisory_xact_lock({LOCK_KEY})"
ROWS_POSTGRES = "SELECT count(*) FROM job_hours WHERE hour = $1::int8"
IS_ROLLED_POSTGRES = "SELECT 1 FROM rolled_hours WHERE hour = $1::int8"
CLEAR_POSTGRES = "DELETE FROM job_hours WHERE hour = $1::int8"
ROLL_POSTGRES = """
    INSERT INTO job_hours (hour, rule, destination, status, action_index, n, last)
    SELECT $1::int8, rule, destination, status, action_index, count(*), max(created_at)
    FROM jobs WHERE status <> 'pending' AND created_at >= $2::float8 AND created_at < $3::float8
    GROUP BY rule, destination, status, action_index
"""
MARK_POSTGRES = "INSERT INTO rolled_hours (hour) VALUES ($1::int8) ON CONFLICT DO NOTHING"
FORGET_POSTGRES = (
    "DELETE FROM job_hours WHERE hour < $1::int8",
    "DELETE FROM rolled_hours WHERE hour < $1::int8",
)
