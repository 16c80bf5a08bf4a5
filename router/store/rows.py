"""Rows in and out, for every backend: the store's values as column values, and query rows as
the interface's dataclasses.

A query a mapper reads selects the mapper's column list below, in that order, with the tables
aliased `j` (jobs), `e` (events) and `s` (specs); both drivers index rows by position. JSON
columns come back as text on both (SQLite TEXT; PostgreSQL `json`, which asyncpg leaves as text).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple, Protocol

from router.store.base import (
    AttemptRecord,
    AttemptResult,
    IncomingRecord,
    Job,
    JobDetail,
    JobSummary,
    Mode,
    Outcome,
    QueueStats,
    Status,
    StoredEvent,
    storable_text,
)


class Row(Protocol):
    """A result row of either driver (a tuple, an asyncpg Record)."""

    def __getitem__(self, index: int, /) -> Any: ...


JOB_COLUMNS = """
    j.id, j.rule, j.action_index, j.action_type, s.spec, j.destination, e.record, e.event_id,
    e.ruleset_version, j.attempts, j.budget_since, j.lease_token, j.mode
"""
SUMMARY_COLUMNS = """
    j.id, j.rule, j.action_index, j.action_type, j.destination, j.status, j.attempts,
    j.created_at, j.updated_at, j.next_at, j.last_error, e.event_id, e.ruleset_version
"""
DETAIL_COLUMNS = f"{SUMMARY_COLUMNS}, s.spec, e.record"
ATTEMPT_COLUMNS = "number, at, outcome, status_code, error, duration, response"
EVENT_COLUMNS = "id, event_id, record, matched, ruleset_version, received_at"
STATS_COLUMNS = """
    (SELECT count(*) FROM jobs WHERE status = 'pending'),
    (SELECT count(*) FROM jobs WHERE status = 'dead'),
    (SELECT min(created_at + 0) FROM jobs WHERE status = 'pending')
"""
# `created_at + 0`: the oldest pending job is found among the pending jobs (their status index),
# never by walking an index of every job in creation order until a pending one turns up.

_NEXT_STATUS = {
    Outcome.DONE: Status.DONE,
    Outcome.RETRY: Status.PENDING,
    Outcome.DEAD: Status.DEAD,
    Outcome.SHADOW: Status.SHADOW,
}


def _json_default(value: Any) -> Any:
    # Specs are TOML tables: any Mapping is an object; a TOML date is kept as its text.
    return dict(value) if isinstance(value, Mapping) else str(value)


def to_json(value: Any) -> str:
    """Compact ASCII-only JSON: a lone surrogate a sender wrote as an escape stays an escape
    (neither database can hold it as text), and PostgreSQL's `json` keeps a `\\u0000` escape."""
    return json.dumps(value, separators=(",", ":"), default=_json_default)


# -- in


class EventRow(NamedTuple):
    event_id: str | None
    record: str
    matched: str


def event_row(incoming: IncomingRecord) -> EventRow:
    return EventRow(
        storable_text(incoming.event_id), to_json(incoming.record), to_json(list(incoming.matched))
    )


class AttemptRow(NamedTuple):
    """One attempt to append, and where it moves its job while the lease token holds it."""

    job_id: str
    token: str
    status: str  # the job's status after the attempt
    next_at: float | None  # when pending again (a retry)
    error: str | None
    at: float
    outcome: str
    status_code: int | None
    duration: float
    response: str | None


def attempt_row(result: AttemptResult) -> AttemptRow:
    return AttemptRow(
        job_id=result.job_id,
        token=result.lease_token,
        status=str(_NEXT_STATUS[result.outcome]),
        next_at=result.next_at if result.outcome is Outcome.RETRY else None,
        error=storable_text(result.error),
        at=result.started_at,
        outcome=str(result.outcome),
        status_code=result.status_code,
        duration=result.duration,
        response=storable_text(result.response),
    )


# -- out


def job(row: Row) -> Job:
    """A row of JOB_COLUMNS."""
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
        mode=Mode(row[12]),
    )


def summary(row: Row) -> JobSummary:
    """A row of SUMMARY_COLUMNS (or DETAIL_COLUMNS)."""
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


def attempt(row: Row) -> AttemptRecord:
    """A row of ATTEMPT_COLUMNS."""
    return AttemptRecord(
        number=row[0],
        at=row[1],
        outcome=Outcome(row[2]),
        status_code=row[3],
        error=row[4],
        duration=row[5],
        response=row[6],
    )


def detail(row: Row, history: Iterable[Row]) -> JobDetail:
    """A row of DETAIL_COLUMNS and the job's attempts (rows of ATTEMPT_COLUMNS), in order."""
    return JobDetail(
        summary=summary(row),
        spec=json.loads(row[13]),
        record=json.loads(row[14]),
        history=tuple(attempt(h) for h in history),
    )


def stored_event(row: Row) -> StoredEvent:
    """A row of EVENT_COLUMNS."""
    return StoredEvent(
        id=row[0],
        event_id=row[1],
        record=json.loads(row[2]),
        matched=tuple(json.loads(row[3])),
        ruleset_version=row[4],
        received_at=row[5],
    )


def stats(row: Row, now: float) -> QueueStats:
    """A row of STATS_COLUMNS. The age is never negative: `now` may come from a replica whose
    clock is a little behind the one that accepted the job."""
    oldest = row[2]
    age = None if oldest is None else max(now - oldest, 0.0)
    return QueueStats(pending=row[0], dead=row[1], oldest_pending_age=age)
