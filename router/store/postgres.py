"""The PostgreSQL store: several intake and worker replicas sharing one database.

Replicas coordinate through the database only: the dedupe table's primary key decides which
replica accepts a repeated push, `FOR UPDATE SKIP LOCKED` hands each due job to one claimer, and
`NOTIFY router_jobs` wakes idle workers everywhere. Every driver failure that means "the database
cannot serve now" becomes StoreUnavailable within a few seconds (bounded connect, acquire and
command timeouts); the pool replaces dead connections, so the store recovers by itself when the
server comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import astuple, dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from router.circuit import CircuitPolicy, Outcomes, Transition, advance, transition
from router.destinations import Destination
from router.exceptions import StoreUnavailable
from router.store import controls, rollups, rows
from router.store import sql_postgres as sql
from router.store.base import (
    SIGNAL_KEEP,
    AcceptResult,
    AttemptResult,
    Dialect,
    IncomingRecord,
    Job,
    JobDetail,
    JobSummary,
    Pause,
    QueueStats,
    Status,
    Store,
    StoredEvent,
)
from router.store.migrations import SCHEMA_VERSION
from router.store.specs import SpecCache

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Connection = PoolConnectionProxy[asyncpg.Record]

T = TypeVar("T")
log = logging.getLogger(__name__)

CHANNEL = "router_jobs"
POOL_SIZE = 10
CONNECT_TIMEOUT = 5.0  # seconds to open one connection
COMMAND_TIMEOUT = 10.0  # seconds one statement may run
ACQUIRE_TIMEOUT = 10.0  # seconds to wait for a free pooled connection
CLOSE_TIMEOUT = 10.0  # seconds close() waits for borrowed connections before cutting them
ACCEPT_BATCH = 256  # most pushes written by one group-commit transaction

# SQLSTATE classes that mean "not now" rather than "wrong query": connection exception,
# transaction rollback (deadlock, serialization), insufficient resources, operator
# intervention (shutdown, cannot connect now), system error.
_TRANSIENT_CLASSES = ("08", "40", "53", "57", "58")
_READ_ONLY_TRANSACTION = "25006"  # a failover left us on a standby


def _is_connection_lost(exc: BaseException) -> bool:
    """The connection broke under us (or the driver gave up on it)."""
    if isinstance(exc, asyncpg.InterfaceError):
        return not isinstance(exc, asyncpg.DataError)  # a bad argument is our bug, not an outage
    # InternalClientError: a backend that died while the connection sat idle can leave the
    # driver's protocol state confused on the next statement.
    return isinstance(
        exc,
        asyncpg.PostgresConnectionError
        | asyncpg.AdminShutdownError
        | asyncpg.InternalClientError
        | ConnectionError,
    )


def _is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, OSError | asyncio.TimeoutError) or _is_connection_lost(exc):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        return state[:2] in _TRANSIENT_CLASSES or state == _READ_ONLY_TRANSACTION
    return False


@dataclass(frozen=True, slots=True)
class _Accept:
    """One accept() call waiting for its group commit."""

    records: Sequence[IncomingRecord]
    ruleset_version: str
    dedupe_window: float
    now: float
    future: asyncio.Future[AcceptResult]


class PostgresStore(Store):
    """Store on PostgreSQL, safe for many replicas at once.

    `url` is postgresql://USER[:PASSWORD]@HOST[:PORT]/DB (or postgres://); its query may set
    `pool_size=N` (connections per process; the `pool_size` argument wins). Other query
    parameters go to the driver. The password never appears in errors or logs.
    """

    dialect: Dialect = "postgres"

    def __init__(
        self,
        url: str,
        *,
        pool_size: int | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        command_timeout: float = COMMAND_TIMEOUT,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("a PostgreSQL store URL starts with postgresql:// or postgres://")
        query = parse_qsl(parts.query, keep_blank_values=True)
        from_url = [value for key, value in query if key == "pool_size"]
        size = pool_size if pool_size is not None else from_url[-1] if from_url else POOL_SIZE
        if not str(size).isdigit() or int(size) < 1:
            raise ValueError(f"pool_size must be a whole number of at least 1, not {size!r}")
        rest = [(key, value) for key, value in query if key != "pool_size"]
        self._dsn = urlunsplit(parts._replace(query=urlencode(rest)))
        self._target = f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"
        self.pool_size = int(size)
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._closed = False
        self._listener: asyncpg.Connection[asyncpg.Record] | None = None
        self._pool_lock = asyncio.Lock()
        self._listener_lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self._notice_wanted = False
        self._notifier: asyncio.Task[None] | None = None
        self._accepts: list[_Accept] = []  # pushes waiting for the next group commit
        self._accepting: asyncio.Task[None] | None = None
        self._specs = SpecCache()  # action specs known to be in the specs table

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self, *, migrate: bool = True) -> None:
        self._closed = False
        try:
            if migrate:
                await self.migrate()
            else:
                await self._run(sql.check_version, transaction=False)
            if not await self._listen():
                raise StoreUnavailable(f"cannot listen for new jobs on PostgreSQL {self._target}")
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        accepting = self._accepting
        if accepting is not None:  # pushes already queued get their commit
            with contextlib.suppress(Exception):
                await asyncio.wait_for(accepting, CLOSE_TIMEOUT)
        notifier = self._notifier
        if notifier is not None:  # let the last notice out first
            with contextlib.suppress(Exception):
                await asyncio.wait_for(notifier, CLOSE_TIMEOUT)
        self._closed = True
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(Exception):
                await listener.close(timeout=CLOSE_TIMEOUT)
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
            except (TimeoutError, asyncpg.InterfaceError, OSError):
                pool.terminate()

    async def migrate(self, *, target: int = SCHEMA_VERSION) -> list[int]:
        """Apply pending schema migrations (safe while other replicas start); returns the
        versions applied, [] when the schema was current. Works before `open`. A `target`
        below SCHEMA_VERSION builds the schema of an earlier release (upgrade tests)."""
        return await self._run(
            lambda conn: sql.apply_pending(conn, target=target), transaction=False
        )

    async def schema_version(self) -> int:
        """The database's schema version (0: empty). Works before `open`."""
        return await self._run(sql.current_version, transaction=False)

    async def ping(self) -> None:
        """A real write: a database that answers reads but refuses writes (a full disk, a
        standby after a failover) is not ready to take pushes."""
        await self._run(lambda conn: conn.execute(sql.PROBE, repr(time.time())), transaction=True)

    # -- intake ------------------------------------------------------------------------------

    async def _accept(
        self,
        records: Sequence[IncomingRecord],
        *,
        ruleset_version: str,
        dedupe_window: float,
        now: float,
    ) -> AcceptResult:
        if self._closed:
            raise StoreUnavailable("the store is closed")
        # Group commit: pushes that arrive while a transaction is in flight are written
        # together by the next one, so concurrent pushes share a transaction and its commit.
        future: asyncio.Future[AcceptResult] = asyncio.get_running_loop().create_future()
        self._accepts.append(_Accept(records, ruleset_version, dedupe_window, now, future))
        if self._accepting is None or self._accepting.done():
            self._accepting = asyncio.create_task(self._write_accepts())
        return await asyncio.shield(future)

    async def _write_accepts(self) -> None:
        try:
            while self._accepts:
                batch, self._accepts = self._accepts[:ACCEPT_BATCH], self._accepts[ACCEPT_BATCH:]
                groups: dict[tuple[str, float], list[_Accept]] = {}
                for request in batch:  # one group unless a reload or a setting changed
                    key = (request.ruleset_version, request.dedupe_window)
                    groups.setdefault(key, []).append(request)
                for (version, window), group in groups.items():
                    await self._commit_group(group, version, window)
        finally:
            for request in self._accepts if self._closed else ():
                if not request.future.done():
                    request.future.set_exception(StoreUnavailable("the store is closed"))

    async def _commit_group(self, group: list[_Accept], version: str, window: float) -> None:
        try:
            results = await self._accept_group(group, version, window)
        except StoreUnavailable as exc:
            for request in group:
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        except Exception as exc:
            if len(group) > 1:  # one push's bad data must not fail the pushes beside it
                for request in group:
                    await self._commit_group([request], version, window)
                return
            if not group[0].future.done():
                group[0].future.set_exception(exc)
            return
        for request, result in zip(group, results, strict=True):
            if not request.future.done():
                request.future.set_result(result)

    async def _accept_group(
        self, group: list[_Accept], ruleset_version: str, dedupe_window: float
    ) -> list[AcceptResult]:
        now = max(request.now for request in group)
        # Sorted keys take row locks in one order everywhere, so concurrent accepts that share
        # keys wait for each other instead of deadlocking.
        keys: list[str] = []
        if dedupe_window > 0:
            keys = sorted(
                {r.dedupe_key for q in group for r in q.records if r.dedupe_key is not None}
            )

        async def work(conn: Connection) -> tuple[list[AcceptResult], sql.NewSpecs, bool]:
            new_keys: set[str] = set()
            if keys:
                found = await conn.fetch(sql.CLAIM_DEDUPE_KEYS, keys, now, now - dedupe_window)
                new_keys = {row[0] for row in found}
            kept: list[IncomingRecord] = []
            results: list[AcceptResult] = []
            for request in group:
                repeated: set[int] = set()
                for position, incoming in enumerate(request.records):
                    key = incoming.dedupe_key if keys else None
                    if key is None:
                        kept.append(incoming)
                    elif key in new_keys:
                        new_keys.discard(key)  # a second copy in this very batch is a duplicate
                        kept.append(incoming)
                    else:
                        repeated.add(position)
                accepted = len(request.records) - len(repeated)
                results.append(AcceptResult(accepted, len(repeated), frozenset(repeated)))
            new_specs: sql.NewSpecs = []
            if kept:
                # Built here, not before: a retry runs on a new connection, which emptied the
                # cache of written specs.
                columns, new_specs, extra = sql.insert_arguments(kept, self._specs)
                try:
                    await conn.execute(
                        sql.INSERT_EVENTS_AND_JOBS, *columns, ruleset_version, now, *extra
                    )
                except asyncpg.UniqueViolationError as exc:
                    raise ValueError(f"a job id already exists: {exc.detail}") from exc
            return results, new_specs, any(incoming.jobs for incoming in kept)

        results, new_specs, created = await self._run(work, transaction=True)
        for spec, digest in new_specs:  # committed: later pushes need not write them again
            self._specs.remember(spec, digest)
        if created:
            self._notify()
        return results

    # -- delivery ----------------------------------------------------------------------------

    async def _claim(
        self, *, limit: int, until: float, now: float, exclude: Sequence[str], only: str | None
    ) -> list[Job]:
        token = uuid.uuid4().hex

        async def work(conn: Connection) -> list[Job]:
            # The controlled destinations first, each within what its row allows (the rows
            # stay locked until the claim commits), then the rest.
            held = [controls.controlled(r) for r in await conn.fetch(sql.SELECT_CONTROLLED)]
            claimed: list[Job] = []
            for row in controls.order(held, exclude, only):
                if len(claimed) >= limit:
                    break
                leased = 0
                if row.concurrency is not None:
                    leased = int(await conn.fetchval(sql.COUNT_LEASED, row.key, now))
                plan = controls.plan(row, leased=leased, limit=limit - len(claimed), now=now)
                found = []
                if plan.count > 0:
                    found = await conn.fetch(
                        sql.CLAIM_JOBS_OF, now, plan.count, token, until, [], row.key, False
                    )
                if found:
                    probe_until = until if plan.probe else None
                    tat = plan.tat_after(len(found))
                    await conn.execute(sql.TAKE_SLOTS, row.key, tat, probe_until)
                    times = plan.send_times(len(found))
                    claimed += [
                        replace(rows.job(r), not_before=at)
                        for r, at in zip(found, times, strict=True)
                    ]
                    if plan.probe:
                        continue  # the probe is out
                # Batch actions' jobs: what the circuit allows; their requests take slots.
                batches = controls.plan_batched(row, limit=limit - len(claimed), now=now)
                if batches.count <= 0:
                    continue
                found = await conn.fetch(
                    sql.CLAIM_JOBS_OF, now, batches.count, token, until, [], row.key, True
                )
                if found and batches.probe:
                    await conn.execute(sql.TAKE_SLOTS, row.key, None, until)
                claimed += [rows.job(r) for r in found]
            skip = [*exclude, *(row.key for row in held)]
            if len(claimed) < limit and (only is None or only not in skip):
                found = await conn.fetch(
                    sql.CLAIM_JOBS, now, limit - len(claimed), token, until, skip, only
                )
                claimed += [rows.job(r) for r in found]
            return claimed

        # Safe to retry: a claim lost in transit only leaves leases that expire.
        return await self._run(work, transaction=True)

    async def _record(self, results: Sequence[AttemptResult], *, now: float) -> None:
        args = [(*rows.attempt_row(result), now) for result in results]

        async def work(conn: Connection) -> None:
            await conn.executemany(sql.RECORD_ATTEMPT, args)

        await self._run(work, transaction=True)

    async def _release(self, claims: Sequence[tuple[str, str]], *, next_at: float) -> None:
        ids = [job_id for job_id, _ in claims]
        tokens = [token for _, token in claims]

        async def work(conn: Connection) -> None:
            await conn.execute(sql.RELEASE_JOBS, ids, tokens, next_at)

        await self._run(work, transaction=True)
        self._notify()  # they may be due at once, for another worker

    async def _renew(self, claims: Sequence[tuple[str, str]], *, until: float) -> None:
        ids = [job_id for job_id, _ in claims]
        tokens = [token for _, token in claims]

        async def work(conn: Connection) -> None:
            await conn.execute(sql.RENEW_LEASES, ids, tokens, until)

        await self._run(work, transaction=True)

    async def wait_for_work(self, timeout: float) -> None:
        if self._closed:
            raise StoreUnavailable("the PostgreSQL store is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        if self._listener is None or self._listener.is_closed():
            # A failed reconnect is not an error here: the caller polls after `timeout` anyway,
            # and its next claim reports an outage.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._listen(), max(deadline - loop.time(), 0.0))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), max(deadline - loop.time(), 0.0))
        # Cleared before the caller claims: a notice arriving later is for jobs that claim may
        # miss, so it must wake the next wait.
        self._wakeup.clear()

    # -- inspection and operations -----------------------------------------------------------

    async def _list_jobs(
        self, *, status: Status | None, rule: str | None, limit: int
    ) -> list[JobSummary]:
        status_text = None if status is None else str(status)

        async def work(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(sql.LIST_JOBS, status_text, rule, limit)

        return [rows.summary(row) for row in await self._run(work, transaction=False)]

    async def get_job(self, job_id: str) -> JobDetail | None:
        async def work(conn: Connection) -> tuple[asyncpg.Record | None, list[asyncpg.Record]]:
            # One snapshot for the job and its history.
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                row = await conn.fetchrow(sql.GET_JOB, job_id)
                history = await conn.fetch(sql.GET_ATTEMPTS, job_id) if row else []
            return row, history

        row, history = await self._run(work, transaction=False)
        return None if row is None else rows.detail(row, history)

    async def _replay(self, job_ids: Sequence[str], *, now: float) -> set[str]:
        async def work(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(sql.REPLAY_JOBS, list(job_ids), now)

        replayed = {row["id"] for row in await self._run(work, transaction=True)}
        if replayed:
            self._notify()
        return replayed

    async def replay_dead(self, *, rule: str | None, now: float) -> int:
        async def work(conn: Connection) -> int:
            return int(await conn.fetchval(sql.REPLAY_DEAD, rule, now))

        count = await self._run(work, transaction=True)
        if count:
            self._notify()
        return count

    async def _discard(self, job_ids: Sequence[str], *, now: float) -> set[str]:
        async def work(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(sql.DISCARD_JOBS, list(job_ids), now)

        discarded = {row["id"] for row in await self._run(work, transaction=True)}
        if discarded:
            self._notify()
        return discarded

    # -- delivery controls --------------------------------------------------------------------

    async def declare_destinations(self, destinations: Sequence[Destination]) -> None:
        keys = [d.key for d in destinations]
        rates = [d.rate for d in destinations]
        concurrencies = [d.concurrency for d in destinations]

        async def work(conn: Connection) -> None:
            await conn.execute(sql.DECLARE, keys, rates, concurrencies)

        await self._run(work, transaction=True)

    async def report_outcomes(
        self, outcomes: Mapping[str, Outcomes], *, policy: CircuitPolicy, now: float
    ) -> list[Transition]:
        keys = sorted(outcomes)
        failing = [key for key in keys if outcomes[key].trailing_failures]

        async def work(conn: Connection) -> list[Transition]:
            if failing:
                await conn.execute(sql.ENSURE_CIRCUITS, failing)
            changes: list[Transition] = []
            for row in await conn.fetch(sql.LOCK_CIRCUITS, keys):
                key = row[0]
                old = controls.circuit_state(row, 1)
                new = advance(old, outcomes[key], policy, now)
                if new == old:
                    continue
                await conn.execute(sql.PUT_CIRCUIT, key, *astuple(new))
                change = transition(key, old, new)
                if change is not None:
                    changes.append(change)
            return changes

        changes = await self._run(work, transaction=True)
        if changes:
            self._notify()
        return changes

    async def take_slot(
        self, destination: str, *, token: str, until: float, now: float
    ) -> float | None:
        async def work(conn: Connection) -> float | None:
            row = await conn.fetchrow(sql.GET_LIMITS, destination)
            if row is None or (row["rate"] is None and row["concurrency"] is None):
                return now
            await conn.execute(sql.DROP_OLD_SLOTS, destination, now)
            busy = 0
            if row["concurrency"] is not None:
                busy = int(await conn.fetchval(sql.COUNT_LEASED, destination, now))
            at, tat = controls.slot(row["rate"], row["concurrency"], row["tat"], busy, now)
            if at is None:
                return None
            if row["concurrency"] is not None:
                await conn.execute(sql.ADD_SLOT, token, destination, until)
            if tat is not None:
                await conn.execute(sql.TAKE_SLOTS, destination, tat, None)
            return at

        return await self._run(work, transaction=True)

    async def free_slot(self, token: str) -> None:
        async def work(conn: Connection) -> None:
            await conn.execute(sql.FREE_SLOT, token)

        await self._run(work, transaction=True)

    async def circuits(self) -> dict[str, str]:
        async def work(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(sql.LIST_CIRCUITS)

        return {row[0]: row[1] for row in await self._run(work, transaction=False)}

    async def pause(self, kind: str, target: str, *, now: float) -> bool:
        async def work(conn: Connection) -> bool:
            return await conn.fetchval(sql.PAUSE, kind, target, now) is not None

        return await self._run(work, transaction=True)

    async def resume(self, kind: str, target: str, *, now: float) -> int | None:
        async def work(conn: Connection) -> int | None:
            since = await conn.fetchval(sql.UNPAUSE, kind, target)
            if since is None:
                return None
            credit = sql.CREDIT_RULE if kind == "rule" else sql.CREDIT_DESTINATION
            return int(await conn.fetchval(credit, now, since, target))

        credited = await self._run(work, transaction=True)
        if credited is not None:
            self._notify()
        return credited

    async def pauses(self) -> list[Pause]:
        async def work(conn: Connection) -> list[asyncpg.Record]:
            return await conn.fetch(sql.LIST_PAUSES)

        return [Pause(r[0], r[1], r[2]) for r in await self._run(work, transaction=False)]

    async def _read_events(self, *, since: float, after: int, limit: int) -> list[StoredEvent]:
        async def work(conn: Connection) -> list[asyncpg.Record]:
            # A read-only snapshot takes no lock an insert waits for: intake goes on.
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                return await conn.fetch(sql.READ_EVENTS, after, since, limit)

        return [rows.stored_event(row) for row in await self._run(work, transaction=False)]

    async def _alert_facts(
        self, kind: str, where: Mapping[str, str | None], since: float, errors: int
    ) -> tuple[int, tuple[str, ...]]:
        if kind in ("dead", "failing"):
            count, first = (
                (sql.COUNT_DEAD, sql.FIRST_DEAD)
                if kind == "dead"
                else (sql.COUNT_FAILED, sql.FIRST_FAILED)
            )
            args: tuple[Any, ...] = (since, where.get("rule"), where.get("destination"))
        else:
            count, first = sql.COUNT_SIGNALS, sql.FIRST_SIGNALS
            args = (since, kind, where.get("scope"))

        async def work(conn: Connection) -> tuple[int, tuple[str, ...]]:
            total = int(await conn.fetchval(count, *args))
            found = await conn.fetch(first, *args, errors)
            return total, tuple(str(row[0]) for row in found if row[0])

        return await self._run(work, transaction=False)

    async def _add_signal(
        self, kind: str, scope: str | None, detail: str | None, at: float
    ) -> None:
        async def work(conn: Connection) -> None:
            await conn.execute(sql.ADD_SIGNAL, kind, scope, detail, at)
            await conn.execute(sql.PURGE_SIGNALS, at - SIGNAL_KEEP)

        await self._run(work, transaction=True)

    async def fire_alert(self, name: str, *, now: float, window: float) -> bool | None:
        async def work(conn: Connection) -> bool | None:
            changed = await conn.fetchval(sql.FIRE_ALERT, name, now, window)
            return None if changed is None else changed == now

        return await self._run(work, transaction=True)

    async def recover_alert(self, name: str, *, now: float) -> bool:
        async def work(conn: Connection) -> bool:
            return await conn.fetchval(sql.RECOVER_ALERT, name, now) is not None

        return await self._run(work, transaction=True)

    async def unfire_alert(self, name: str) -> None:
        async def work(conn: Connection) -> None:
            await conn.execute(sql.UNFIRE_ALERT, name)

        await self._run(work, transaction=True)

    async def read_only(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[list[Any]]:
        async def work(conn: Connection) -> list[list[Any]]:
            # A read-only snapshot takes no lock an insert waits for: intake goes on.
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                return [list(await conn.fetch(sql_, *params)) for sql_, params in statements]

        return await self._run(work, transaction=False)

    async def stats(self, *, now: float) -> QueueStats:
        async def work(conn: Connection) -> asyncpg.Record | None:
            return await conn.fetchrow(sql.STATS)

        row = await self._run(work, transaction=False)
        assert row is not None  # an aggregate always yields a row
        return rows.stats(row, now)

    async def _roll_hour(self, hour: int, *, again: bool) -> bool:
        async def work(conn: Connection) -> bool:
            # The lock first, exclusive: what follows sees every job change whose trigger found
            # the hour unmarked, and those to come wait to count against the new mark
            # (router.store.rollups).
            await conn.execute(rollups.LOCK_POSTGRES)
            if again:
                if int(await conn.fetchval(rollups.ROWS_POSTGRES, hour)) <= rollups.COMPACT:
                    return False
            elif await conn.fetchval(rollups.IS_ROLLED_POSTGRES, hour) is not None:
                return False
            await conn.execute(rollups.CLEAR_POSTGRES, hour)
            await conn.execute(rollups.ROLL_POSTGRES, hour, float(hour), float(hour + rollups.HOUR))
            await conn.execute(rollups.MARK_POSTGRES, hour)
            return True

        return await self._run(work, transaction=True)

    async def _forget_hours(self, before: int) -> None:
        async def work(conn: Connection) -> None:
            for statement in rollups.FORGET_POSTGRES:
                await conn.execute(statement, before)

        await self._run(work, transaction=True)

    async def purge(self, *, before: float, dedupe_before: float) -> int:
        async def work(conn: Connection) -> int:
            deleted = int(await conn.fetchval(sql.PURGE_JOBS, before))
            await conn.execute(sql.PURGE_EVENTS, before)
            await conn.execute(sql.PURGE_DEDUPE, dedupe_before)
            return deleted

        return await self._run(work, transaction=True)

    # -- plumbing ----------------------------------------------------------------------------

    async def _pool_or_connect(self) -> asyncpg.Pool[asyncpg.Record]:
        if self._closed:
            raise StoreUnavailable("the PostgreSQL store is closed")
        async with self._pool_lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self._dsn,
                    # No floor: during an outage asyncpg would keep reconnecting (and logging)
                    # in the background; connections are made when needed instead.
                    min_size=0,
                    max_size=self.pool_size,
                    timeout=self._connect_timeout,
                    command_timeout=self._command_timeout,
                    server_settings={"application_name": "router"},
                    init=self._new_connection,
                )
            return self._pool

    async def _new_connection(self, conn: asyncpg.Connection[asyncpg.Record]) -> None:
        # A new connection may reach another database than the last one did (a failover to a
        # standby that missed the latest commits, a restore): write each spec again.
        self._specs.clear()

    async def _run(self, work: Callable[[Connection], Awaitable[T]], *, transaction: bool) -> T:
        """Run `work` on a pooled connection (in a transaction if asked), translating outages
        into StoreUnavailable.

        A connection that died while idle in the pool (server restart, terminated backend)
        fails on first use; that use is retried once on a fresh connection when nothing can
        have been committed: a read, a claim (its leases expire), or a transaction that had
        not reached COMMIT.
        """
        for attempt in (1, 2):
            stage = "connect"
            try:
                pool = await self._pool_or_connect()
                async with pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                    stage = "work"
                    if transaction:
                        async with conn.transaction():
                            result = await work(conn)
                            stage = "commit"
                    else:
                        result = await work(conn)
                    stage = "done"
                return result
            except Exception as exc:
                if stage == "done":  # only giving the connection back failed; the pool drops it
                    log.info("a PostgreSQL connection broke on release: %s", exc)
                    return result
                if attempt == 1 and stage == "work" and _is_connection_lost(exc):
                    log.info("PostgreSQL connection lost; retrying on a new one: %s", exc)
                    # What killed one pooled connection (a restart, a failover) most likely
                    # killed its idle siblings: replace them all rather than meet each.
                    await pool.expire_connections()
                    continue
                # Whatever the server says while we connect (no such database, connections
                # not allowed, bad password) means it cannot serve us now.
                refused = stage == "connect" and isinstance(exc, asyncpg.PostgresError)
                if not (refused or _is_unavailable(exc)):
                    raise
                raise StoreUnavailable(
                    f"PostgreSQL {self._target} is unavailable: {type(exc).__name__}: {exc}"
                ) from exc
        raise AssertionError("unreachable")

    def _notify(self) -> None:
        """Wake idle workers of every replica, once the caller's commit is done. Best effort:
        the data is already committed, and workers poll when a notice is lost.

        Notices go out from one background task, so a burst of commits shares one NOTIFY
        (each costs a round trip and a cluster-wide lock); the flag is cleared before a notice
        is sent, so every commit is followed by a notice that starts after it.
        """
        self._wakeup.set()  # this process's workers need not wait for the round trip
        self._notice_wanted = True
        if self._notifier is None or self._notifier.done():
            self._notifier = asyncio.create_task(self._send_notices())

    async def _send_notices(self) -> None:
        while self._notice_wanted and not self._closed:
            self._notice_wanted = False
            try:
                await self._run(lambda conn: conn.execute(sql.NOTIFY, CHANNEL), transaction=False)
            except Exception as exc:
                log.warning("could not notify workers of new jobs: %s", exc)

    async def _listen(self) -> bool:
        """Make sure the listening connection is up; False if it cannot be opened now."""
        async with self._listener_lock:
            if self._listener is not None and not self._listener.is_closed():
                return True
            reconnect = self._listener is not None
            try:
                conn = await asyncpg.connect(
                    self._dsn,
                    timeout=self._connect_timeout,
                    command_timeout=self._command_timeout,
                    server_settings={"application_name": "router-listener"},
                )
            except Exception as exc:
                if not (isinstance(exc, asyncpg.PostgresError) or _is_unavailable(exc)):
                    raise
                log.warning("cannot listen for new jobs on PostgreSQL %s: %s", self._target, exc)
                return False
            try:
                await conn.add_listener(CHANNEL, self._on_notify)
            except Exception:
                await conn.close()
                raise
            conn.add_termination_listener(self._on_listener_lost)
            self._listener = conn
            if reconnect:
                self._wakeup.set()  # notices sent while we were not listening are lost
            return True

    def _on_notify(self, *_: object) -> None:
        self._wakeup.set()

    def _on_listener_lost(self, *_: object) -> None:
        # Wake the waiter: it polls once, and its next wait reconnects.
        self._wakeup.set()
