"""The SQLite store: the default, one file, durable before the intake answers 202.

All writes go through one writer thread that owns one connection. It takes every request
queued at that moment (accepts, claims, results, replays) into ONE transaction and ONE commit,
then resolves their futures: fifty concurrent pushes share one fsync (group commit). Each
request runs in its own savepoint, so a request that fails on its own (a duplicate job id) is
rolled back alone; a failure of the database itself fails the whole batch as StoreUnavailable.
Reads for the CLI use a second connection on a second thread (WAL readers never block writers).
Several processes may share the file: writes take the lock with BEGIN IMMEDIATE.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from router.exceptions import StoreUnavailable
from router.store import sql_sqlite as sql
from router.store.base import (
    AcceptResult,
    AttemptResult,
    IncomingRecord,
    Job,
    JobDetail,
    JobSummary,
    Outcome,
    QueueStats,
    Status,
    Store,
)

T = TypeVar("T")
Work = Callable[[sqlite3.Connection], T]

URL_PREFIX = "sqlite:///"
BUSY_TIMEOUT = 5.0  # seconds a write waits for another process's lock before StoreUnavailable
MAX_BATCH = 512  # requests per group commit: bounds the latency one commit adds to the first
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

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__(name="sqlite-writer", daemon=True)
        self.conn = conn
        self.requests: queue.SimpleQueue[_Request | object] = queue.SimpleQueue()
        self.commits = 0
        self.on_rollback: list[Callable[[], None]] = []  # caches of what a rollback undid

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
        except sqlite3.Error as exc:
            # After an I/O error SQLite may have rolled back already; ROLLBACK may then fail.
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            self._rolled_back()
            outcomes = [(False, _wrap(exc)) for _ in batch]
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


def _connect(path: str, *, create: bool, busy_timeout: float) -> sqlite3.Connection:
    target = f"file:{path}" if create else f"file:{path}?mode=rw"
    # isolation_level=None: transactions are ours (BEGIN IMMEDIATE), never implicit.
    conn = sqlite3.connect(target, uri=True, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    return conn


class SQLiteStore(Store):
    """Store in one SQLite file (WAL, synchronous=FULL). `commits` counts group commits."""

    def __init__(self, url: str, *, busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.path = path_from_url(url)
        self.busy_timeout = busy_timeout
        self._writer: _Writer | None = None
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None
        self._read_conn: sqlite3.Connection | None = None
        self._work_added = asyncio.Event()
        self._specs: sql.SpecCache = {}  # action specs already in the specs table

    @property
    def commits(self) -> int:
        """Transactions committed by this instance (one per group of writes), for metrics."""
        return self._writer.commits if self._writer is not None else 0

    # -- plumbing

    async def _write(self, work: Work[T]) -> T:
        writer = self._writer
        if writer is None or not writer.is_alive():
            raise StoreUnavailable("the SQLite store is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        writer.requests.put(_Request(work, loop, future))
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
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._reader, self._read_in_thread, work)
        except sqlite3.Error as exc:
            if _unavailable(exc):
                raise _wrap(exc) from exc
            raise

    def _open_sync(self, migrate: bool) -> sqlite3.Connection:
        if migrate and os.path.dirname(self.path):
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
        conn = _connect(self.path, create=migrate, busy_timeout=self.busy_timeout)
        try:
            sql.migrate(conn, migrate)
            for pragma in sql.PRAGMAS:
                conn.execute(pragma)
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
        self._writer = _Writer(conn)
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

    async def ping(self) -> None:
        await self._write(lambda conn: conn.execute(sql.GET_SCHEMA_VERSION).fetchone())

    async def pragmas(self) -> dict[str, Any]:
        """The write connection's journal_mode, synchronous, foreign_keys and busy_timeout."""
        names = ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")

        def work(conn: sqlite3.Connection) -> dict[str, Any]:
            return {name: conn.execute(f"PRAGMA {name}").fetchone()[0] for name in names}

        return await self._write(work)

    # -- intake and worker

    async def accept(
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

    async def claim(
        self,
        *,
        limit: int,
        lease: float,
        now: float,
        exclude: Collection[str] = (),
        destination: str | None = None,
    ) -> list[Job]:
        if limit <= 0:
            return []
        skip = sorted(exclude)
        return await self._write(
            lambda conn: sql.claim(conn, limit, now + lease, now, skip, destination)
        )

    async def record(self, results: Sequence[AttemptResult], *, now: float) -> None:
        for result in results:
            if result.outcome is Outcome.RETRY and result.next_at is None:
                raise ValueError(f"job {result.job_id}: a RETRY result needs next_at")
        if results:
            await self._write(lambda conn: sql.record(conn, results, now))

    async def release(self, claims: Sequence[tuple[str, str]], *, next_at: float) -> None:
        if claims:
            await self._write(lambda conn: sql.release(conn, claims, next_at))

    async def renew(self, claims: Sequence[tuple[str, str]], *, until: float) -> None:
        if claims:
            await self._write(lambda conn: sql.renew(conn, claims, until))

    async def wait_for_work(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._work_added.wait(), timeout)
        except TimeoutError:
            return
        self._work_added.clear()

    # -- operators

    async def list_jobs(
        self, *, status: Status | None = None, rule: str | None = None, limit: int = 50
    ) -> list[JobSummary]:
        return await self._read(lambda conn: sql.list_jobs(conn, status, rule, limit))

    async def get_job(self, job_id: str) -> JobDetail | None:
        return await self._read(lambda conn: sql.get_job(conn, job_id))

    async def replay(self, job_ids: Sequence[str], *, now: float) -> list[str]:
        replayed = await self._write(lambda conn: sql.replay(conn, job_ids, now))
        if replayed:
            self._work_added.set()
        return replayed

    async def replay_dead(self, *, rule: str | None, now: float) -> int:
        count = await self._write(lambda conn: sql.replay_dead(conn, rule, now))
        if count:
            self._work_added.set()
        return count

    async def stats(self, *, now: float) -> QueueStats:
        return await self._read(lambda conn: sql.stats(conn, now))

    async def purge(self, *, before: float, dedupe_before: float) -> int:
        return await self._write(lambda conn: sql.purge(conn, before, dedupe_before))
