"""One schema and one migration story for every store backend.

The schema is a numbered list of steps, the same list on every backend: after step N a SQLite
file and a PostgreSQL database have the same tables with the same columns (a column's SQL type
differs only where the dialects must: an integer key is SQLite's rowid and a PostgreSQL
identity, epoch seconds are REAL and double precision). Each dialect writes its own SQL for a
step, or a Python step where SQL cannot do it. `schema_version` holds a row per applied step.
A step is never edited once released; a change of schema is a new step at the end of both lists.

Every backend runs the same way (only the transaction and the lock are its own): the pending
steps are applied in one transaction, so a failed upgrade leaves the store as it was; a store
whose schema is newer than this code is refused, migrating or not (old code could corrupt it);
with migrations off, an older schema is refused. The sentences an operator reads are written
here only, so `router migrate --check` says the same on every backend.

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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from router.exceptions import StoreUnavailable

SCHEMA_VERSION = 4  # the steps each dialect lists; version N is the same layout everywhere

Step = TypeVar("Step")


def schema_problem(version: int) -> str | None:
    """Why a store at schema `version` cannot be used as it is, or None when it is current."""
    if version > SCHEMA_VERSION:
        return (
            f"the store's schema version {version} is newer than this router's "
            f"{SCHEMA_VERSION}; upgrade the router"
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


@dataclass(frozen=True)
class Migrations(Generic[Step]):
    """A dialect's steps: `steps[N - 1]` brings a store from version N - 1 to N."""

    steps: Sequence[Step]

    def __post_init__(self) -> None:
        assert len(self.steps) == SCHEMA_VERSION, "every dialect lists every step"

    def pending(
        self, version: int, *, apply: bool, target: int = SCHEMA_VERSION
    ) -> list[tuple[int, Step]]:
        """The (number, step) pairs that bring a store at `version` to `target`, in order.

        Raises StoreUnavailable with the operator's sentence when the store is newer than this
        code, or older than `target` and `apply` is false. `target` below SCHEMA_VERSION only
        builds stores of an earlier release (tests of upgrades)."""
        if version > SCHEMA_VERSION or (version < target and not apply):
            raise StoreUnavailable(str(schema_problem(version)))
        return [(number, self.steps[number - 1]) for number in range(version + 1, target + 1)]
