"""One schema and one migration story for every store backend.

The schema is a numbered list of steps, the same list on every backend: after step N a SQLite
file and a PostgreSQL database have the same tables with the same columns (a column's SQL type
differs only where the dialects must: an integer key is SQLite's rowid and a PostgreSQL
identity, epoch seconds are REAL and double precision). Each dialect writes its own SQL for a
step, or a Python step where SQL cannot do it. `schema_version` holds a row per applied step.
A step is never edited once released; a change of schema is a new step at the end of both lists.

Every backend runs the same way (only the transaction and the lock are its own): the pending
steps are applied in one transaction, so a failed upgrade leaves the store as it was; with
migrations off, an older schema is refused. The sentences an operator reads are written here
only, so `router migrate --check` says the same on every backend.

A store newer than the code (a rollback after an upgrade) is used as it is when every step the
code does not know is *additive* (ADDITIVE): it only adds tables, indexes, or columns that are
nullable or have a default, and leaves the meaning of what exists alone, so the older code's
reads and writes still hold. Old code cannot know what later steps did, so the store says it:
whenever steps are applied, the runner records in `store_meta` (key FLOOR_KEY) the oldest schema
version whose code may use the store, the number of its last step that is not additive. Code
whose SCHEMA_VERSION is below that floor is refused with one sentence, migrating or not; so is
any code older than a store that has no floor (written before the policy existed).

Version 3 settled the points where the two backends had drifted apart, taking the better side:
- `specs`: an action's spec is stored once, keyed by `router.rules.spec_hash`, and a job names
  it by hash (`jobs.spec`), where PostgreSQL used to write the whole spec into every job. Rules
  have a handful of actions and a busy intake writes thousands of jobs: a 32-character hash per
  job cuts the write volume, and each store keeps a cache of the hashes it has written, so a
  known spec costs nothing on the ingest path.
- `jobs.seq`: acceptance order, from PostgreSQL. A claim takes the jobs due first and, among
  those due at the same moment, the first accepted; listings show the newest first by it, and
  deliveries can be ordered per key by it. On SQLite it is the rowid: free, and a new job's is
  above every stored job's (a purged job's number may come back; PostgreSQL's never does).
- `jobs.attempts_total`, from PostgreSQL: the job's attempts over its whole life, which numbers
  its history (`attempts` restarts at a replay). A counter in the row replaces SQLite's
  max(number) lookup of the history on every recorded attempt.
- `events.id` is an integer on both: the rowid on SQLite; on PostgreSQL an identity whose
  values the ingest statement takes itself (no round trip), where it used to be a random uuid.
  Increasing keys append at the right edge of the primary key index; random ones scattered
  every insert across all of it, and took twice the room in the index and in every job.
- `ruleset_version` lives on `events` only (it was copied into every job on SQLite): every job
  of an event was made by the rule set that accepted the event.
- `schema_version` has `version` as primary key and `applied_at` on both.

The shadow-jobs step adds `jobs.mode` (`live` or `shadow`, from the rule's `mode` when the event
was accepted) and the job status `shadow`: a shadow job is rendered and recorded, never sent.

The delivery-controls step adds each job's order key (`jobs.order_key`, `jobs.order_hold`),
the `destinations` table (declared limits, rate slots and the circuit of each destination) and
the `pauses` table: the state every worker of a deployment shares (router.store.controls).

The alerts step (6) adds what alerts read and write (router.alerts): `alert_signals`, what
happened in some process (a refused reload, an opened circuit), and `alert_states`, each alert's
state, which only one replica at a time moves, so only one fires; the indexes that count dead
jobs and failed attempts within a window; and `batch_slots`, the concurrency slots of the batch
requests in flight (router.store.controls).

The console step (7) adds only indexes, for the console's pages and API (router.console): the events
that matched nothing (partial: a matched record never writes it; no index reads inside a
record, so a hostile record can never fail its own insert); and jobs that left `pending`
(partial: a push writes none of them) newest first by rule, by destination and by status,
and by rule, destination, status, action and age for the per-rule and per-destination
counters.

The counts step (8) adds `job_hours` and `rolled_hours`, the settled jobs of each ended hour
counted once (router.store.rollups), with the triggers that keep a counted hour's rows true
when its jobs change or go; and `events_event_id`, the records by event id (partial: a record
without an id writes nothing).

The response step (9) adds `attempts.response`, nullable: the excerpt of what the destination
answered (router.excerpts). Code without it writes attempts without one and reads around it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from router.exceptions import StoreUnavailable

log = logging.getLogger("router.store")

SCHEMA_VERSION = 9  # the steps each dialect lists; version N is the same layout everywhere

# Whether step N (at index N - 1) is additive, as the module docstring defines it. Decided once,
# when the step is written, and never changed: a rollback across the step depends on it.
ADDITIVE: tuple[bool, ...] = (
    False,  # 1: the first layout
    True,  # 2: store_meta, a new table
    False,  # 3: one layout for both backends (tables rebuilt, columns dropped and renamed)
    # 4: jobs.mode (shadow rules) and the `shadow` status. Not additive: code that does not know
    # the mode would deliver a shadow rule's pending jobs, and cannot read a `shadow` status.
    False,
    # 5: delivery controls: jobs.order_key and jobs.order_hold, the destinations and pauses
    # tables and their indexes. Additive: code without it delivers as it always did.
    True,
    True,  # 6: alert_signals, alert_states and batch_slots, new tables; their indexes
    # 7: the console's read indexes (events without a match; settled jobs by rule,
    # destination, status and age). Indexes only.
    True,
    # 8: the hours' counts (job_hours, rolled_hours, the triggers that keep them true) and the
    # index of event ids. New tables, triggers and an index: older code reads and writes as it
    # did, and the triggers follow its writes as they follow this code's.
    True,
    # 9: attempts.response, nullable: code without it never writes it and never reads it.
    True,
)
assert len(ADDITIVE) == SCHEMA_VERSION, "say of every step whether it is additive"

# The store_meta key that holds the oldest schema version whose code may use the store.
FLOOR_KEY = "schema_floor"

Step = TypeVar("Step")


def floor_of(version: int) -> int:
    """The oldest schema version whose code may use a store at `version` (this code's steps):
    the last step up to `version` that is not additive."""
    breaking = [n for n in range(1, version + 1) if not ADDITIVE[n - 1]]
    return breaking[-1] if breaking else 0


def schema_problem(version: int, floor: int | None = None) -> str | None:
    """Why a store at schema `version` cannot be used as it is, or None when it can. `floor`
    is the store's record of the oldest code that may use it (None: no record)."""
    if version > SCHEMA_VERSION:
        needed = version if floor is None else floor
        if needed <= SCHEMA_VERSION:
            return None
        return (
            f"the store's schema version {version} needs a router of schema version {needed} "
            f"or newer and this one has {SCHEMA_VERSION}; upgrade the router (or restore the "
            "database backup taken before the store was migrated)"
        )
    if version < SCHEMA_VERSION:
        return (
            f"the store has schema version {version}, expected {SCHEMA_VERSION}; "
            "run `router migrate`"
        )
    return None


def step_failed(number: int, exc: BaseException) -> str:
    """What to tell the operator when step `number` failed (its transaction rolled back)."""
    cause = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return (
        f"schema step {number} failed and the store was left as it was "
        f"({type(exc).__name__}: {cause}); fix the cause and run `router migrate` again"
    )


def parse_floor(value: object) -> int | None:
    """The floor as stored in store_meta (text), or None when absent or unreadable."""
    text = str(value) if value is not None else ""
    return int(text) if text.isdigit() else None


@dataclass(frozen=True)
class Migrations(Generic[Step]):
    """A dialect's steps: `steps[N - 1]` brings a store from version N - 1 to N."""

    steps: Sequence[Step]

    def __post_init__(self) -> None:
        assert len(self.steps) == SCHEMA_VERSION, "every dialect lists every step"

    def pending(
        self,
        version: int,
        *,
        apply: bool,
        target: int = SCHEMA_VERSION,
        floor: int | None = None,
    ) -> list[tuple[int, Step]]:
        """The (number, step) pairs that bring a store at `version` to `target`, in order.

        A store newer than this code whose `floor` (see the module docstring) allows this code
        needs nothing: []. Raises StoreUnavailable with the operator's sentence when the store
        is newer and does not allow it, or older than `target` and `apply` is false. `target`
        below SCHEMA_VERSION only builds stores of an earlier release (tests of upgrades)."""
        if version > SCHEMA_VERSION:
            problem = schema_problem(version, floor)
            if problem is not None:
                raise StoreUnavailable(problem)
            log.warning(
                "the store's schema version %d is newer than this router's %d; every newer "
                "step is additive, so this router uses the store as it is",
                version,
                SCHEMA_VERSION,
            )
            return []
        if version < target and not apply:
            raise StoreUnavailable(str(schema_problem(version)))
        return [(number, self.steps[number - 1]) for number in range(version + 1, target + 1)]

    def records_floor(self, target: int) -> bool:
        """Whether a run to `target` writes the floor: real migrations do; stores built as an
        earlier release left them (tests of upgrades) stay without one, as that release did."""
        return target == SCHEMA_VERSION
