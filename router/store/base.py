"""The store interface: what the intake, the worker and the CLI need from durable storage.

Backends (SQLite, PostgreSQL) implement `Store`; one contract test suite runs against each.
All times are UNIX epoch seconds (float) passed in by the caller, so tests control the clock.
Driver errors that mean "cannot reach or write the database" surface as StoreUnavailable.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from router.circuit import OPEN, CircuitPolicy, Outcomes, Transition
from router.destinations import Destination, under
from router.store import rollups

Record = dict[str, Any]
Dialect = Literal["sqlite", "postgres"]  # the SQL a backend speaks


def storable_text(value: str | None) -> str | None:
    """Text a database column can hold. A sender controls event ids (and error messages may
    quote what it sent): neither SQLite's UTF-8 text nor PostgreSQL's can hold a lone surrogate,
    and PostgreSQL's cannot hold NUL. The record itself is stored as ASCII-escaped JSON, so it
    keeps every such character exactly; this is for the columns shown and searched beside it."""
    if value is None:
        return None
    if not value.isascii():
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


class Status(enum.StrEnum):
    PENDING = "pending"
    DONE = "done"
    DEAD = "dead"
    SHADOW = "shadow"  # a shadow rule's job: rendered (or not, with its error), never sent


class Mode(enum.StrEnum):
    """A job's mode, from its rule's when its event was accepted."""

    LIVE = "live"
    SHADOW = "shadow"  # the worker renders it and records it; nothing is sent


class Outcome(enum.StrEnum):
    """What one attempt came to."""

    DONE = "done"  # delivered
    RETRY = "retry"  # failed, try again at `next_at`
    DEAD = "dead"  # failed for good (permanent error, or retries exhausted)
    SHADOW = "shadow"  # a shadow job rendered (or failed to, with its error); nothing was sent


@dataclass(frozen=True, slots=True)
class NewJob:
    """One delivery job to create: (record, rule, action)."""

    id: str  # also the Idempotency-Key sent to HTTP destinations
    rule: str
    action_index: int
    action_type: str
    spec: Mapping[str, Any]  # the action's raw spec as loaded: the job is delivered with it
    destination: str  # key for per-destination concurrency (an HTTP host, "smtp", "log")
    mode: Mode = Mode.LIVE
    # Ordering (router.ordering): a job waits while an earlier job of the same key is pending
    # (or, when `order_hold`, dead until replayed or discarded). None: not ordered.
    order_key: str | None = None
    order_hold: bool = False


@dataclass(frozen=True, slots=True)
class IncomingRecord:
    """A normalised record about to be accepted, with the jobs it produced."""

    event_id: str | None  # the envelope's `id`, as text
    dedupe_key: str | None  # None: never a duplicate
    record: Record
    matched: tuple[str, ...]  # names of the rules that matched
    jobs: tuple[NewJob, ...]


@dataclass(frozen=True, slots=True)
class AcceptResult:
    accepted: int
    duplicates: int
    repeated: frozenset[int] = frozenset()  # positions (in the call's records) of duplicates


@dataclass(frozen=True, slots=True)
class Job:
    """A claimed job: everything the worker needs to deliver it."""

    id: str
    rule: str
    action_index: int
    action_type: str
    spec: Mapping[str, Any]
    destination: str
    record: Record
    event_id: str | None
    ruleset_version: str
    attempts: int  # attempts made since the job was created or last replayed
    budget_since: float  # retry budget start: acceptance, or the last replay
    lease_token: str  # proves this claim when the result is recorded
    mode: Mode = Mode.LIVE
    # A rate-limited destination's slot: the job is sent no earlier than this (epoch seconds).
    not_before: float | None = None


@dataclass(frozen=True, slots=True)
class AttemptResult:
    job_id: str
    lease_token: str
    outcome: Outcome
    started_at: float
    duration: float  # seconds
    status_code: int | None = None
    error: str | None = None  # one sentence, never a secret
    next_at: float | None = None  # required when outcome is RETRY
    # What the destination answered (router.excerpts): at most EXCERPT_CHARS characters, the
    # request's secrets masked; None when it answered nothing (or nothing was sent).
    response: str | None = None


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    number: int  # 1-based over the job's whole life
    at: float
    outcome: Outcome
    status_code: int | None
    error: str | None
    duration: float
    response: str | None = None  # the excerpt of the destination's answer (AttemptResult)


@dataclass(frozen=True, slots=True)
class JobSummary:
    id: str
    rule: str
    action_index: int
    action_type: str
    destination: str
    status: Status
    attempts: int
    created_at: float
    updated_at: float
    next_at: float | None  # when pending
    last_error: str | None
    event_id: str | None
    ruleset_version: str


@dataclass(frozen=True, slots=True)
class JobDetail:
    summary: JobSummary
    spec: Mapping[str, Any]
    record: Record
    history: tuple[AttemptRecord, ...]


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One record as the intake stored it (for a backtest): its row id, the envelope's id,
    the normalised record, the rules that matched then, and when."""

    id: int  # the store's own, increasing in the order records were accepted
    event_id: str | None
    record: Record
    matched: tuple[str, ...]
    ruleset_version: str
    received_at: float


@dataclass(frozen=True, slots=True)
class Pause:
    """Deliveries held by an operator: of a rule (`kind` "rule", `target` its name) or of a
    destination (`kind` "destination", `target` a key of router.destinations)."""

    kind: str
    target: str
    since: float


PAUSE_KINDS = ("rule", "destination")


@dataclass(frozen=True, slots=True)
class AlertFacts:
    """What an alert counts within its window: how many, and the first errors (oldest first)."""

    count: int
    errors: tuple[str, ...]


ALERT_KINDS = ("dead", "failing", "circuit_open", "reload_refused")
SIGNAL_KEEP = 7 * 86400.0  # seconds a signal is kept for alerts to count


@dataclass(frozen=True, slots=True)
class QueueStats:
    pending: int
    dead: int
    oldest_pending_age: float | None  # seconds, None when nothing is pending


@dataclass(frozen=True, slots=True)
class JobQuery:
    """Which jobs the console lists, newest (last accepted) first. Every filter is optional;
    `before` is the cursor: only jobs accepted before the job whose `seq` it is."""

    status: Status | None = None
    rule: str | None = None
    destination: str | None = None
    since: float | None = None  # created at or after
    until: float | None = None  # created before
    before: int | None = None
    limit: int = 50


@dataclass(frozen=True, slots=True)
class FoundJob:
    seq: int  # acceptance order: the cursor of the next page
    event: int  # the store's id of its event (StoredEvent.id)
    job: JobSummary


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Which stored records the console lists, newest first. `event_id`, `rule` and
    `unmatched` read indexes; `profile_id`, `text` (anywhere in the record: a data value, a
    field name), `table` and `operation` are read inside at most SCAN_WINDOW records per page;
    such a search says where it stopped (see EventPage). `before` is an opaque cursor from the
    previous page."""

    event_id: str | None = None
    profile_id: str | None = None
    text: str | None = None
    table: str | None = None
    operation: str | None = None
    rule: str | None = None
    unmatched: bool = False
    before: int | None = None
    limit: int = 50

    @property
    def scans(self) -> bool:
        """Whether the search reads inside records, a window at a time."""
        return any(
            value is not None for value in (self.profile_id, self.text, self.table, self.operation)
        )


@dataclass(frozen=True, slots=True)
class EventPage:
    events: list[StoredEvent]
    next: int | None  # cursor of the next (older) page, None when there is none
    # A search that reads inside records stopped there: records with a lower id were not
    # looked at yet (`next` continues from it). None when nothing was left unread.
    searched_to: int | None = None


@dataclass(frozen=True, slots=True)
class Counts:
    """Jobs created in a window, by what became of them."""

    jobs: int = 0
    matched: int = 0  # events (a rule's first action only: one per matched record)
    delivered: int = 0
    retrying: int = 0  # pending after at least one failed attempt
    dead: int = 0
    pending: int = 0
    shadow: int = 0
    last: float | None = None  # the newest job's creation time


@dataclass(frozen=True, slots=True)
class Activity:
    """What the console's overview and rules page count, over the last hour and day."""

    rules_hour: dict[str, Counts]
    rules_day: dict[str, Counts]
    destinations_hour: dict[str, Counts]
    destinations_day: dict[str, Counts]
    last_errors: dict[str, tuple[str, float]]  # destination -> (last error, when), last day
    received_per_minute: list[tuple[float, int]]  # (minute start, records), last hour


class Store(abc.ABC):
    """Durable storage of events, delivery jobs and attempts.

    Methods may be called concurrently from one event loop; implementations serialise or pool
    as they need. None of them may block the event loop. The argument checks every backend
    shares (empty batches, limits below 1, a retry without its time, repeated ids) are made
    here, once; a backend implements the underscored methods behind them.
    """

    @abc.abstractmethod
    async def open(self, *, migrate: bool = True) -> None:
        """Connect and check the schema; apply pending migrations when `migrate`, else raise
        StoreUnavailable if the schema is not current."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; pending writes are committed first."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise StoreUnavailable if the store cannot serve right now."""

    async def accept(
        self,
        records: Sequence[IncomingRecord],
        *,
        ruleset_version: str,
        dedupe_window: float,
        now: float,
    ) -> AcceptResult:
        """Store the records and their jobs in one transaction, durably committed on return.

        A record whose dedupe_key was accepted within `dedupe_window` seconds (0: never) is a
        duplicate: it is counted and nothing of it is stored. Concurrent calls may share one
        commit (group commit). Raises StoreUnavailable when the data cannot be made durable.
        """
        if not records:
            return AcceptResult(accepted=0, duplicates=0)
        return await self._accept(
            records, ruleset_version=ruleset_version, dedupe_window=dedupe_window, now=now
        )

    async def claim(
        self,
        *,
        limit: int,
        lease: float,
        now: float,
        exclude: Collection[str] = (),
        destination: str | None = None,
    ) -> list[Job]:
        """Reserve up to `limit` due jobs (pending, next_at <= now, no live lease), oldest due
        first (then first accepted), for `lease` seconds. A job is never held by two claims at
        once. Jobs whose destination is in `exclude` (the worker's busy destinations) are left
        alone; with `destination`, only that destination's jobs are claimed (a busy one's
        refill). A limit below 1 claims nothing.

        The delivery controls hold for every claimer of the store: a job of a paused rule or
        destination is never claimed, nor one whose order key has an earlier job pending (or
        dead and holding it); a declared destination (declare_destinations) gives at most its
        concurrency in leased jobs and its rate in slots (each job's `not_before`), and an open
        circuit gives one probe at a time, when its time has come."""
        if limit < 1:
            return []
        return await self._claim(
            limit=limit, until=now + lease, now=now, exclude=sorted(exclude), only=destination
        )

    async def record(self, results: Sequence[AttemptResult], *, now: float) -> None:
        """Append each attempt to its job's history and move the job: DONE -> done, RETRY ->
        pending at next_at, DEAD -> dead with the error kept, SHADOW -> shadow (a shadow job,
        recorded without sending; the error of its render, if any, kept). A result whose
        lease_token no longer holds the job (the lease expired and another claim took it)
        still appends its attempt but does not move the job. Raises ValueError, storing
        nothing, when a RETRY result has no next_at."""
        for result in results:
            if result.outcome is Outcome.RETRY and result.next_at is None:
                raise ValueError(f"job {result.job_id}: a RETRY result needs next_at")
        if results:
            await self._record(results, now=now)

    async def release(self, claims: Sequence[tuple[str, str]], *, next_at: float) -> None:
        """Give back claimed jobs without an attempt: each (job_id, lease_token) whose token
        still holds the job becomes claimable again at `next_at` (lease cleared, attempts
        unchanged). The worker uses it for jobs it claimed but cannot start soon (their
        destination is saturated), so one slow destination never holds up others."""
        if claims:
            await self._release(claims, next_at=next_at)

    async def renew(self, claims: Sequence[tuple[str, str]], *, until: float) -> None:
        """Extend the leases of jobs still held by their (job_id, lease_token) to `until`.
        The worker renews what it holds (in flight or queued) well before the lease ends, so
        a slow delivery is never claimed a second time while it is still running."""
        if claims:
            await self._renew(claims, until=until)

    @abc.abstractmethod
    async def wait_for_work(self, timeout: float) -> None:
        """Return when new jobs may be due (or after `timeout` seconds), so idle workers do not
        depend on a poll interval."""

    async def list_jobs(
        self, *, status: Status | None = None, rule: str | None = None, limit: int = 50
    ) -> list[JobSummary]:
        """Newest first (by acceptance); at most `limit`, none when it is below 1."""
        if limit < 1:
            return []
        return await self._list_jobs(status=status, rule=rule, limit=limit)

    @abc.abstractmethod
    async def get_job(self, job_id: str) -> JobDetail | None: ...

    # The SQL dialect of the console's reads (router.store.reads builds them).
    dialect: Dialect

    @abc.abstractmethod
    async def read_only(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[list[Any]]:
        """Run read-only statements in one snapshot that never holds up the intake (SQLite's
        reader connection; a read-only snapshot on PostgreSQL): the rows of each, indexable by
        position. For router.store.reads, which writes the statements."""

    async def read_events(
        self, *, since: float, after: int = 0, limit: int = 500
    ) -> list[StoredEvent]:
        """The stored records received at `since` or later whose id is above `after`, in id
        (acceptance) order, at most `limit` (none when it is below 1): page through them by
        passing the last id as `after`. Read-only, in short read transactions that never hold
        up the intake (SQLite's reader connection; a read-only snapshot on PostgreSQL)."""
        if limit < 1:
            return []
        return await self._read_events(since=since, after=after, limit=limit)

    async def replay(self, job_ids: Sequence[str], *, now: float) -> list[str]:
        """Make the given dead jobs pending again, due now, with a fresh retry budget
        (attempts 0, budget_since now). Returns the ids that were dead and are now pending,
        once each, in the order given."""
        wanted = list(dict.fromkeys(job_ids))
        if not wanted:
            return []
        replayed = await self._replay(wanted, now=now)
        return [job_id for job_id in wanted if job_id in replayed]

    @abc.abstractmethod
    async def replay_dead(self, *, rule: str | None, now: float) -> int:
        """Replay every dead job (of `rule` if given); returns how many."""

    @abc.abstractmethod
    async def stats(self, *, now: float) -> QueueStats: ...

    @abc.abstractmethod
    async def purge(self, *, before: float, dedupe_before: float) -> int:
        """Delete done jobs (with their attempts) last updated before `before`, events with no
        remaining job received before `before`, and dedupe keys older than `dedupe_before`.
        Returns the number of jobs deleted."""

    async def roll_up(self, *, now: float, since: float) -> int:
        """Count, once, the settled jobs of each ended hour of the last day not counted yet,
        none before `since`, and again those whose rows have grown past rollups.COMPACT; forget
        the hours the day has left (router.store.rollups). Returns how many hours were counted.
        The console's day counters then read those counts instead of every job."""
        hours = rollups.to_roll(now, since)
        if not hours:
            return 0
        marks, [(oldest,)] = await self.read_only(
            [rollups.marked_rows(self.dialect, hours[0], hours[-1]), rollups.OLDEST_MARK]
        )
        rows_of = {int(hour): int(rows) for hour, rows in marks}
        counted = 0
        for hour in hours:
            if hour not in rows_of:
                counted += await self._roll_hour(hour, again=False)
            elif rows_of[hour] > rollups.COMPACT:
                counted += await self._roll_hour(hour, again=True)
        horizon = rollups.hour_of(now - rollups.DAY) - rollups.HOUR
        if oldest is not None and int(oldest) < horizon:
            await self._forget_hours(horizon)
        return counted

    @abc.abstractmethod
    async def _roll_hour(self, hour: int, *, again: bool) -> bool:
        """Count one hour in one transaction (router.store.rollups): unless it is marked
        already, or (`again`) unless its rows are still within rollups.COMPACT. Whether it was
        counted."""

    @abc.abstractmethod
    async def _forget_hours(self, before: int) -> None:
        """Delete the counts and marks of the hours before `before`."""

    # -- delivery controls

    @abc.abstractmethod
    async def declare_destinations(self, destinations: Sequence[Destination]) -> None:
        """Make `destinations` (the serving rule set's) the declared ones: their limits hold
        for every claim; every other destination loses its limits (its circuit stays)."""

    @abc.abstractmethod
    async def report_outcomes(
        self, outcomes: Mapping[str, Outcomes], *, policy: CircuitPolicy, now: float
    ) -> list[Transition]:
        """Move the circuit of each destination by what its attempts came to
        (router.circuit.advance), each under its row's lock; returns the transitions made."""

    @abc.abstractmethod
    async def take_slot(
        self, destination: str, *, token: str, until: float, now: float
    ) -> float | None:
        """A batch request's slot at `destination` (router.store.controls): the time it may be
        sent (one slot of the declared rate), and one of the declared concurrency, held as
        `token` until `free_slot` or `until`. None while the concurrency is taken: ask again.
        A destination without limits: `now`, and nothing is held."""

    @abc.abstractmethod
    async def free_slot(self, token: str) -> None:
        """Give back a batch request's concurrency slot (it was answered)."""

    @abc.abstractmethod
    async def circuits(self) -> dict[str, str]:
        """Each destination the store knows a circuit of (or limits for), with its state."""

    @abc.abstractmethod
    async def pause(self, kind: str, target: str, *, now: float) -> bool:
        """Hold the jobs of a rule or destination (Pause); False when already paused."""

    @abc.abstractmethod
    async def resume(self, kind: str, target: str, *, now: float) -> int | None:
        """Lift a pause; its pending jobs get the paused time back on their retry budget (their
        max age counts from later). Returns how many jobs were credited, None if not paused."""

    @abc.abstractmethod
    async def pauses(self) -> list[Pause]:
        """Every pause, oldest first."""

    async def discard(self, job_ids: Sequence[str], *, now: float) -> list[str]:
        """Let the later jobs of the order key of each given dead job go (`on_dead = "hold"`):
        the job stays dead, kept for inspection and replay. Returns the ids that were dead
        and holding, in the order given."""
        wanted = list(dict.fromkeys(job_ids))
        if not wanted:
            return []
        discarded = await self._discard(wanted, now=now)
        return [job_id for job_id in wanted if job_id in discarded]

    # -- alerts

    async def alert_facts(
        self,
        *,
        kind: str,
        since: float,
        rule: str | None = None,
        destination: str | None = None,
        scope: str | None = None,
        errors: int = 3,
    ) -> AlertFacts:
        """For an alert of `kind` (ALERT_KINDS): "dead" counts jobs that died at `since` or
        later, "failing" failed attempts (retried or dead) since then, both of `rule` and
        `destination` (and the destinations below it) when given; "circuit_open" the circuits
        open now (of `scope` and below it), so a closing circuit recovers its alert; any other
        kind counts the signals of that kind (of `scope` when given). With the first `errors`
        errors (or signal details), oldest first."""
        if kind not in ALERT_KINDS:
            raise ValueError(f"unknown alert kind {kind!r}")
        if kind == "circuit_open":
            return await self._open_circuits(scope, since, max(errors, 0))
        where = {"rule": rule, "destination": destination, "scope": scope}
        count, first = await self._alert_facts(kind, where, since, max(errors, 0))
        return AlertFacts(count, first)

    async def _open_circuits(self, scope: str | None, since: float, errors: int) -> AlertFacts:
        """The circuits open now under `scope`, each quoted by the signal of its opening
        within the window (or plainly, when it opened before the window or elsewhere)."""
        states = await self.circuits()
        opened = sorted(
            key
            for key, state in states.items()
            if state == OPEN and (scope is None or under(key, scope))
        )
        details: list[str] = []
        for key in opened[:errors]:
            where = {"rule": None, "destination": None, "scope": key}
            _count, first = await self._alert_facts("circuit_open", where, since, 1)
            details.append(first[0] if first else f"circuit of {key} is open")
        return AlertFacts(len(opened), tuple(details))

    async def add_signal(
        self, *, kind: str, scope: str | None, detail: str | None, at: float
    ) -> None:
        """Record that `kind` happened (a refused reload, an opened circuit) for alerts of
        every replica to count; signals older than SIGNAL_KEEP go at the same time."""
        await self._add_signal(kind, scope, storable_text(detail), at)

    @abc.abstractmethod
    async def fire_alert(self, name: str, *, now: float, window: float) -> bool | None:
        """Move alert `name` to firing unless it fired less than `window` seconds ago. Atomic:
        of several replicas asking at once, one gets an answer other than None. True: it was
        not firing (a new alert); False: it still fires (a reminder); None: not now."""

    @abc.abstractmethod
    async def recover_alert(self, name: str, *, now: float) -> bool:
        """Move a firing alert `name` to recovered; True for the one caller that did."""

    @abc.abstractmethod
    async def unfire_alert(self, name: str) -> None:
        """Undo a firing whose notification could not be sent, so it is tried again."""

    # -- what each backend implements behind the checks above

    @abc.abstractmethod
    async def _discard(self, job_ids: Sequence[str], *, now: float) -> Collection[str]:
        """`discard` of distinct ids (at least one); returns those discarded, in any order."""

    @abc.abstractmethod
    async def _alert_facts(
        self, kind: str, where: Mapping[str, str | None], since: float, errors: int
    ) -> tuple[int, tuple[str, ...]]:
        """`alert_facts`, the kind known."""

    @abc.abstractmethod
    async def _add_signal(
        self, kind: str, scope: str | None, detail: str | None, at: float
    ) -> None:
        """`add_signal`."""

    @abc.abstractmethod
    async def _accept(
        self,
        records: Sequence[IncomingRecord],
        *,
        ruleset_version: str,
        dedupe_window: float,
        now: float,
    ) -> AcceptResult:
        """`accept`, given at least one record."""

    @abc.abstractmethod
    async def _claim(
        self, *, limit: int, until: float, now: float, exclude: Sequence[str], only: str | None
    ) -> list[Job]:
        """`claim` with a limit of at least 1, leases ending at `until`, `exclude` sorted."""

    @abc.abstractmethod
    async def _record(self, results: Sequence[AttemptResult], *, now: float) -> None:
        """`record`, given at least one result, every RETRY with its next_at."""

    @abc.abstractmethod
    async def _release(self, claims: Sequence[tuple[str, str]], *, next_at: float) -> None:
        """`release`, given at least one claim."""

    @abc.abstractmethod
    async def _renew(self, claims: Sequence[tuple[str, str]], *, until: float) -> None:
        """`renew`, given at least one claim."""

    @abc.abstractmethod
    async def _list_jobs(
        self, *, status: Status | None, rule: str | None, limit: int
    ) -> list[JobSummary]:
        """`list_jobs` with a limit of at least 1."""

    @abc.abstractmethod
    async def _read_events(self, *, since: float, after: int, limit: int) -> list[StoredEvent]:
        """`read_events` with a limit of at least 1."""

    @abc.abstractmethod
    async def _replay(self, job_ids: Sequence[str], *, now: float) -> Collection[str]:
        """`replay` of distinct ids (at least one); returns those replayed, in any order."""
