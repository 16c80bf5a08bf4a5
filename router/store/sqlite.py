"""The SQLite store: the default, one file, durable before the intake answers 202.

All writes go through one writer thread that owns one connection. It takes every request
queued at that moment (accepts, claims, results, replays) into ONE transaction and ONE commit,
then resolves their futures: fifty concurrent pushes share one fsync (group commit). Each
request runs in its own savepoint, so a request that fails on its own (a duplicate job id) is
rolled back alone; a failure of the database itself fails the whole batch as StoreUnavailable.
Reads for the CLI use a second connection on a second thread (WAL readers never block writers).
Several processes may share the file: writes take the lock with BEGIN IMMEDIATE.

A file deleted or replaced under a running store (an operator's `rm`, a volume swapped) would
otherwise keep taking writes into an inode nobody can open again: after every commit the writer
checks that the database and its WAL are still the files it opened. Once they are not, the store
is *gone*: every call fails with StoreGone (the intake answers 503, so the sender keeps its
events), readiness fails, and what the orphaned file held is copied next to it for recovery.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from router.circuit import CircuitPolicy, Outcomes, Transition
from router.destinations import Destination
from router.exceptions import StoreGone, StoreUnavailable
from router.store import sql_sqlite as sql
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
from router.store.migrations import schema_problem
from router.store.specs import SpecCache

T = TypeVar("T")
Work = Callable[[sqlite3.Connection], T]
log = logging.getLogger(__name__)

URL_PREFIX = "sqlite:///"
BUSY_TIMEOUT = 5.0  # seconds a write waits for another process's lock before StoreUnavailable
MAX_BATCH = 512  # requests per group commit: bounds the latency one commit adds to the first
# Seconds after a failed write (a full disk) during which readiness keeps failing, unless a
# write succeeds meanwhile. A small probe can succeed in reused WAL space while pushes fail.
WRITE_FAILURE_MEMORY = 30.0
_STOP = object()


def path_from_url(url: str) -> str:
    """`sqlite:///relative/path.db` -> `relative/path.db`; `sqlite:////abs.db` -> `/abs.db`."""
    if not url.lower().startswith(URL_PREFIX) or len(url) == len(URL_PREFIX):
        raise ValueError(f"not a SQLite store URL: {url!r}; use sqlite:///PATH")
    return url[len(URL_PREFIX) :].split("?", 1)[0]


def _unavailable(exc: BaseException) -> bool:
    # Constraint and API-misuse errors are the caller's bug; the rest mean the file is unusable.
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(
        exc, sqlite3.IntegrityError | sqlite3.ProgrammingError | sqlite3.DataError
    )


def _wrap(exc: sqlite3.Error) -> StoreUnavailable:
    error = StoreUnavailable(f"the SQLite store cannot be used: {exc}")
    error.__cause__ = exc
    return error


@dataclass(slots=True)
class _Request:
    work: Work[Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    probe: bool = False  # a readiness probe: its success says little about larger writes


class _Files:
    """The database file and its WAL as the store opened them (device and inode, and the
    store's identity in the file header), to notice when they are deleted or replaced under
    the running store: moved over, or copied over in place."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.opened: dict[str, tuple[int, int]] = {}
        self.store_id: int | None = None
        self.fd: int | None = None  # the database file, open while the store is (see below)

    def remember(self) -> None:
        for name in (self.path, f"{self.path}-wal"):
            with contextlib.suppress(OSError):
                stat = os.stat(name)
                self.opened[name] = (stat.st_dev, stat.st_ino)
        # Opened once and closed only after SQLite's own connections (sql.file_store_id).
        with contextlib.suppress(OSError):
            self.fd = os.open(self.path, os.O_RDONLY)
            self.store_id = sql.file_store_id(self.fd)

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    def problem(self) -> str | None:
        """Why the files are no longer the store's, or None."""
        for name, identity in self.opened.items():
            try:
                stat = os.stat(name)
            except FileNotFoundError:
                return f"{name} was deleted"
            except OSError as exc:
                return f"{name} cannot be checked: {exc.strerror}"
            if (stat.st_dev, stat.st_ino) != identity:
                return f"{name} was replaced by another file"
        if self.fd is None:
            return None
        try:
            found = sql.file_store_id(self.fd)
        except OSError as exc:
            return f"{self.path} cannot be read: {exc.strerror}"
        if self.store_id is None:
            # A store migrated in WAL mode has its identity in the file once a checkpoint
            # copied the header there.
            self.store_id = found
        elif found != self.store_id:
            return f"{self.path} was overwritten with another file"
        return None


def _settle(outcomes: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in outcomes:
        if future.done():  # the caller was cancelled; the work is committed all the same
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class _Writer(threading.Thread):
    """Owns the write connection; runs queued requests in group-committed batches."""

    def __init__(self, conn: sqlite3.Connection, files: _Files) -> None:
        super().__init__(name="sqlite-writer", daemon=True)
        self.conn = conn
        self.files = files
        self.requests: queue.SimpleQueue[_Request | object] = queue.SimpleQueue()
        self.commits = 0
        self.on_rollback: list[Callable[[], None]] = []  # caches of what a rollback undid
        self.gone: str | None = None  # why the store's file is no longer its own
        # The last failed write of real work (monotonic time, error), until one succeeds.
        self.write_failure: tuple[float, str] | None = None

    def run(self) -> None:
        try:
            stop = False
            while not stop:
                batch: list[_Request] = []
                item = self.requests.get()
                while True:
                    if item is _STOP:
                        stop = True
                        break
                    assert isinstance(item, _Request)
                    batch.append(item)
                    if len(batch) >= MAX_BATCH:
                        break
                    try:
                        item = self.requests.get_nowait()
                    except queue.Empty:
                        break
                if batch:
                    self._execute(batch)
        finally:
            self.conn.close()

    def _execute(self, batch: list[_Request]) -> None:
        conn = self.conn
        outcomes: list[tuple[bool, Any]] = []
        real = not all(request.probe for request in batch)
        if self.gone is not None:
            failure = StoreGone(self.gone)
            self._resolve(batch, [(False, failure) for _ in batch])
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            for request in batch:
                conn.execute("SAVEPOINT request")
                try:
                    result = request.work(conn)
                except Exception as exc:
                    if _unavailable(exc):
                        raise
                    conn.execute("ROLLBACK TO request")
                    conn.execute("RELEASE request")
                    self._rolled_back()
                    outcomes.append((False, exc))
                else:
                    conn.execute("RELEASE request")
                    outcomes.append((True, result))
            conn.execute("COMMIT")
            self.commits += 1
            if real:
                self.write_failure = None
        except sqlite3.Error as exc:
            # After an I/O error SQLite may have rolled back already; ROLLBACK may then fail.
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            self._rolled_back()
            if real:
                self.write_failure = (time.monotonic(), str(exc))
            outcomes = [(False, _wrap(exc)) for _ in batch]
        # Checked after the commit: whatever was just committed into a file that is gone must
        # not be acknowledged (the caller answers 503 and the sender sends it again).
        problem = self.files.problem()
        if problem is not None:
            self._lost(problem)
            assert self.gone is not None
            outcomes = [(False, StoreGone(self.gone)) for _ in batch]
        self._resolve(batch, outcomes)

    def _resolve(self, batch: list[_Request], outcomes: list[tuple[bool, Any]]) -> None:
        # One wake-up per event loop for the whole batch, not one per request.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for request, (ok, value) in zip(batch, outcomes, strict=True):
            by_loop.setdefault(request.loop, []).append((request.future, ok, value))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, settled)

    def _rolled_back(self) -> None:
        for forget in self.on_rollback:
            forget()

    def _lost(self, problem: str) -> None:
        """The store's file is gone: refuse all work from now on, and copy what the orphaned
        file holds (still readable through this connection) next to it for recovery."""
        copy = f"{self.files.path}.orphaned-{time.strftime('%Y%m%dT%H%M%S')}"
        try:
            with contextlib.closing(sqlite3.connect(copy)) as target:
                self.conn.backup(target)
                # Leases belong to this process, which can record nothing any more: a worker on
                # the copy takes the jobs at once (those in flight here may arrive twice).
                target.execute(sql.CLEAR_LEASES)
                target.execute(sql.CLEAR_PROBES)
                target.execute(sql.CLEAR_BATCH_SLOTS)
                target.commit()
        except (sqlite3.Error, OSError) as exc:
            saved = f"its content could not be saved ({exc})"
        else:
            saved = (
                f"its content, pending jobs included, was saved to {copy} (point "
                "ROUTER_STORE_URL at that file to inspect or deliver them)"
            )
        self.gone = (
            f"the SQLite store's file is gone: {problem}; nothing is accepted until the router "
            "is restarted"
        )
        log.error("%s; %s", self.gone, saved)


def _connect(path: str, *, create: bool, busy_timeout: float) -> sqlite3.Connection:
    target = f"file:{path}" if create else f"file:{path}?mode=rw"
    # isolation_level=None: transactions are ours (BEGIN IMMEDIATE), never implicit.
    conn = sqlite3.connect(target, uri=True, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    return conn


class SQLiteStore(Store):
    """Store in one SQLite file (WAL, synchronous=FULL). `commits` counts group commits."""

    dialect: Dialect = "sqlite"

    def __init__(self, url: str, *, busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.path = path_from_url(url)
        self.busy_timeout = busy_timeout
        self._writer: _Writer | None = None
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None
        self._read_conn: sqlite3.Connection | None = None
        self._work_added = asyncio.Event()
        self._specs = SpecCache()  # action specs already in the specs table

    @property
    def commits(self) -> int:
        """Transactions committed by this instance (one per group of writes), for metrics."""
        return self._writer.commits if self._writer is not None else 0

    # -- plumbing

    async def _write(self, work: Work[T], *, probe: bool = False) -> T:
        writer = self._writer
        if writer is None or not writer.is_alive():
            raise StoreUnavailable("the SQLite store is not open")
        if writer.gone is not None:
            raise StoreGone(writer.gone)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        writer.requests.put(_Request(work, loop, future, probe))
        return await future

    def _read_in_thread(self, work: Work[T]) -> T:
        if self._read_conn is None:
            self._read_conn = _connect(self.path, create=False, busy_timeout=self.busy_timeout)
            self._read_conn.execute("PRAGMA query_only = ON")
        conn = self._read_conn
        conn.execute("BEGIN")  # one snapshot for all the statements of this read
        try:
            return work(conn)
        finally:
            conn.execute("COMMIT")

    async def _read(self, work: Work[T]) -> T:
        if self._reader is None:
            raise StoreUnavailable("the SQLite store is not open")
        if self._writer is not None and self._writer.gone is not None:
            raise StoreGone(self._writer.gone)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._reader, self._read_in_thread, work)
        except sqlite3.Error as exc:
            if _unavailable(exc):
                raise _wrap(exc) from exc
            raise

    def _open_sync(self, migrate: bool) -> sqlite3.Connection:
        folder = os.path.dirname(self.path)
        if migrate and folder:
            os.makedirs(folder, exist_ok=True)
        if not migrate and os.path.isdir(folder or ".") and not os.path.exists(self.path):
            # No file yet is an empty store: the same sentence as an empty PostgreSQL database.
            raise StoreUnavailable(str(schema_problem(0)))
        conn = _connect(self.path, create=migrate, busy_timeout=self.busy_timeout)
        try:
            sql.migrate(conn, migrate)
            for pragma in sql.PRAGMAS:
                conn.execute(pragma)
            # Reading in WAL mode creates the WAL, so both files are known from the start.
            conn.execute(sql.GET_SCHEMA_VERSION).fetchone()
        except BaseException:
            conn.close()
            raise
        return conn

    # -- lifecycle

    async def open(self, *, migrate: bool = True) -> None:
        if self._writer is not None:
            return
        try:
            conn = await asyncio.to_thread(self._open_sync, migrate)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"the SQLite store cannot be opened: {exc}") from exc
        self._work_added = asyncio.Event()
        self._specs.clear()
        files = _Files(self.path)
        files.remember()
        self._writer = _Writer(conn, files)
        self._writer.on_rollback.append(self._specs.clear)
        self._writer.start()
        self._reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sqlite-read")

    async def close(self) -> None:
        writer, reader = self._writer, self._reader
        if writer is None or reader is None:
            return
        self._writer = self._reader = None
        writer.requests.put(_STOP)  # queued after every pending write: those commit first
        await asyncio.to_thread(writer.join)
        if self._read_conn is not None:
            await asyncio.get_running_loop().run_in_executor(reader, self._read_conn.close)
            self._read_conn = None
        reader.shutdown(wait=False)
        writer.files.close()  # last: closing it drops this process's locks on the file

    async def ping(self) -> None:
        """A real write (through the group commit, which checks afterwards that the file is
        still the store's), then the memory of a recent failed write: a full disk fails large
        writes before it fails a small probe."""
        await self._write(lambda conn: conn.execute(sql.PROBE, (repr(time.time()),)), probe=True)
        writer = self._writer
        failure = writer.write_failure if writer is not None else None
        if failure is not None and time.monotonic() - failure[0] < WRITE_FAILURE_MEMORY:
            raise StoreUnavailable(
                f"a write failed {time.monotonic() - failure[0]:.0f} s ago: {failure[1]}"
            )

    async def pragmas(self) -> dict[str, Any]:
        """The write connection's journal_mode, synchronous, foreign_keys and busy_timeout."""
        names = ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")

        def work(conn: sqlite3.Connection) -> dict[str, Any]:
            return {name: conn.execute(f"PRAGMA {name}").fetchone()[0] for name in names}

        return await self._write(work)

    # -- intake and worker

    async def _accept(
        self,
        records: Sequence[IncomingRecord],
        *,
        ruleset_version: str,
        dedupe_window: float,
        now: float,
    ) -> AcceptResult:
        result = await self._write(
            lambda conn: sql.accept(conn, records, ruleset_version, dedupe_window, now, self._specs)
        )
        if result.accepted:
            self._work_added.set()
        return result

    async def _claim(
        self, *, limit: int, until: float, now: float, exclude: Sequence[str], only: str | None
    ) -> list[Job]:
        return await self._write(lambda conn: sql.claim(conn, limit, until, now, exclude, only))

    async def _record(self, results: Sequence[AttemptResult], *, now: float) -> None:
        await self._write(lambda conn: sql.record(conn, results, now))

    async def _release(self, claims: Sequence[tuple[str, str]], *, next_at: float) -> None:
        await self._write(lambda conn: sql.release(conn, claims, next_at))

    async def _renew(self, claims: Sequence[tuple[str, str]], *, until: float) -> None:
        await self._write(lambda conn: sql.renew(conn, claims, until))

    async def wait_for_work(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._work_added.wait(), timeout)
        except TimeoutError:
            return
        self._work_added.clear()

    # -- operators

    async def _list_jobs(
        self, *, status: Status | None, rule: str | None, limit: int
    ) -> list[JobSummary]:
        return await self._read(lambda conn: sql.list_jobs(conn, status, rule, limit))

    async def read_only(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[list[Any]]:
        return await self._read(
            lambda conn: [conn.execute(sql_, params).fetchall() for sql_, params in statements]
        )

    async def get_job(self, job_id: str) -> JobDetail | None:
        return await self._read(lambda conn: sql.get_job(conn, job_id))

    async def _replay(self, job_ids: Sequence[str], *, now: float) -> Collection[str]:
        replayed = await self._write(lambda conn: sql.replay(conn, job_ids, now))
        if replayed:
            self._work_added.set()
        return replayed

    async def replay_dead(self, *, rule: str | None, now: float) -> int:
        count = await self._write(lambda conn: sql.replay_dead(conn, rule, now))
        if count:
            self._work_added.set()
        return count

    async def _alert_facts(
        self, kind: str, where: Mapping[str, str | None], since: float, errors: int
    ) -> tuple[int, tuple[str, ...]]:
        return await self._read(lambda conn: sql.alert_facts(conn, kind, where, since, errors))

    async def _add_signal(
        self, kind: str, scope: str | None, detail: str | None, at: float
    ) -> None:
        await self._write(lambda conn: sql.add_signal(conn, kind, scope, detail, at, SIGNAL_KEEP))

    async def fire_alert(self, name: str, *, now: float, window: float) -> bool | None:
        return await self._write(lambda conn: sql.fire_alert(conn, name, now, window))

    async def recover_alert(self, name: str, *, now: float) -> bool:
        return await self._write(lambda conn: sql.recover_alert(conn, name, now))

    async def unfire_alert(self, name: str) -> None:
        await self._write(lambda conn: sql.unfire_alert(conn, name))

    async def stats(self, *, now: float) -> QueueStats:
        return await self._read(lambda conn: sql.stats(conn, now))

    async def _discard(self, job_ids: Sequence[str], *, now: float) -> Collection[str]:
        discarded = await self._write(lambda conn: sql.discard(conn, job_ids, now))
        if discarded:
            self._work_added.set()
        return discarded

    # -- delivery controls

    async def declare_destinations(self, destinations: Sequence[Destination]) -> None:
        await self._write(lambda conn: sql.declare(conn, destinations))

    async def report_outcomes(
        self, outcomes: Mapping[str, Outcomes], *, policy: CircuitPolicy, now: float
    ) -> list[Transition]:
        changes = await self._write(lambda conn: sql.report(conn, outcomes, policy, now))
        if changes:
            self._work_added.set()
        return changes

    async def take_slot(
        self, destination: str, *, token: str, until: float, now: float
    ) -> float | None:
        return await self._write(lambda conn: sql.take_slot(conn, destination, token, until, now))

    async def free_slot(self, token: str) -> None:
        await self._write(lambda conn: sql.free_slot(conn, token))

    async def circuits(self) -> dict[str, str]:
        return await self._read(sql.circuits)

    async def pause(self, kind: str, target: str, *, now: float) -> bool:
        return await self._write(lambda conn: sql.pause(conn, kind, target, now))

    async def resume(self, kind: str, target: str, *, now: float) -> int | None:
        credited = await self._write(lambda conn: sql.resume(conn, kind, target, now))
        if credited is not None:
            self._work_added.set()
        return credited

    async def pauses(self) -> list[Pause]:
        return await self._read(sql.pauses)

    async def _read_events(self, *, since: float, after: int, limit: int) -> list[StoredEvent]:
        # The reader connection: WAL readers never block the writer, nor it them.
        return await self._read(lambda conn: sql.read_events(conn, since, after, limit))

    async def _roll_hour(self, hour: int, *, again: bool) -> bool:
        return await self._write(lambda conn: sql.roll_hour(conn, hour, again))

    async def _forget_hours(self, before: int) -> None:
        await self._write(lambda conn: sql.forget_hours(conn, before))

    async def purge(self, *, before: float, dedupe_before: float) -> int:
        return await self._write(lambda conn: sql.purge(conn, before, dedupe_before))
