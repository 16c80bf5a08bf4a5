"""What only the SQLite store promises: group commit, its pragmas, several instances on one file,
durability through `kill -9`, and driver errors surfacing as StoreUnavailable."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from router.exceptions import StoreGone, StoreUnavailable
from router.store.base import Job
from router.store.sqlite import SQLiteStore, path_from_url

from .conftest import LEASE, T0, accept, incoming, new_job

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'router.db'}"


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///router.db", "router.db"),
        ("sqlite:///data/router.db", "data/router.db"),
        ("sqlite:////var/lib/router/router.db", "/var/lib/router/router.db"),
        ("SQLITE:///router.db", "router.db"),
    ],
)
def test_path_from_url(url: str, path: str) -> None:
    assert path_from_url(url) == path


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "postgresql://db/router", "router.db"])
def test_path_from_url_refuses_other_urls(url: str) -> None:
    with pytest.raises(ValueError, match="SQLite store URL"):
        path_from_url(url)


def test_pragmas_make_commits_durable(url: str) -> None:
    async def main() -> dict[str, object]:
        store = SQLiteStore(url, busy_timeout=2.5)
        await store.open()
        try:
            return await store.pragmas()
        finally:
            await store.close()

    # synchronous: 2 is FULL (a commit fsyncs the WAL before accept returns).
    expected = {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1, "busy_timeout": 2500}
    assert asyncio.run(main()) == expected


def test_concurrent_accepts_share_commits(url: str) -> None:
    async def main() -> int:
        store = SQLiteStore(url)
        await store.open()
        try:
            before = store.commits
            results = await asyncio.gather(
                *(accept(store, incoming(f"k{i}", event_id=str(i))) for i in range(100))
            )
            assert sum(r.accepted for r in results) == 100
            assert len(await store.claim(limit=500, lease=LEASE, now=T0)) == 100
            return store.commits - before - 1  # the claim is one commit of its own
        finally:
            await store.close()

    commits = asyncio.run(main())
    assert 1 <= commits <= 10, f"100 concurrent accepts took {commits} commits"


def test_a_failing_request_does_not_fail_the_others_in_its_batch(url: str) -> None:
    async def main() -> None:
        store = SQLiteStore(url)
        await store.open()
        try:
            taken = new_job()
            await accept(store, incoming("first", jobs=[taken]))
            clash = incoming("clash", jobs=[new_job(), taken])  # reuses a job id
            results = await asyncio.gather(
                *(accept(store, incoming(f"k{i}")) for i in range(10)),
                accept(store, clash),
                *(accept(store, incoming(f"m{i}")) for i in range(10)),
                return_exceptions=True,
            )
            assert isinstance(results[10], ValueError)
            assert all(not isinstance(r, BaseException) and r.accepted == 1 for r in results[:10])
            assert all(not isinstance(r, BaseException) and r.accepted == 1 for r in results[11:])
            # Nothing of the refused record stayed: its dedupe key and first job are not there.
            assert await store.get_job(clash.jobs[0].id) is None
            again = await accept(store, incoming("clash"))
            assert again.accepted == 1
        finally:
            await store.close()

    asyncio.run(main())


def test_two_stores_on_one_file_never_claim_the_same_job(url: str) -> None:
    async def drain(store: SQLiteStore) -> list[Job]:
        claimed: list[Job] = []
        for _ in range(300):  # bounded: a store that hands jobs out twice must not hang here
            batch = await store.claim(limit=3, lease=LEASE, now=T0)
            if not batch:
                break
            claimed.extend(batch)
        return claimed

    async def main() -> None:
        first, second = SQLiteStore(url), SQLiteStore(url)
        await first.open()
        await second.open()
        try:
            await accept(first, *(incoming(None, event_id=str(i)) for i in range(300)))
            batches = await asyncio.gather(*(drain(s) for s in [first, second] * 3))
            ids = [job.id for batch in batches for job in batch]
            assert len(ids) == 300
            assert len(set(ids)) == 300
        finally:
            await first.close()
            await second.close()

    asyncio.run(main())


def test_purge_removes_old_events_left_without_jobs(url: str) -> None:
    async def main() -> None:
        store = SQLiteStore(url)
        await store.open()
        try:
            await accept(store, incoming("unmatched", jobs=[]), now=T0)
            await accept(store, incoming("recent", jobs=[]), now=T0 + 100)
            await accept(store, incoming("pending"), now=T0)  # its job keeps the event
            assert await store.purge(before=T0 + 50, dedupe_before=T0) == 0
        finally:
            await store.close()

    asyncio.run(main())
    with sqlite3.connect(path_from_url(url)) as conn:
        rows = conn.execute("SELECT received_at FROM events ORDER BY received_at").fetchall()
    assert rows == [(T0,), (T0 + 100,)]


def test_close_commits_the_writes_already_queued(url: str) -> None:
    async def main() -> None:
        store = SQLiteStore(url)
        await store.open()
        tasks = [asyncio.create_task(accept(store, incoming(f"k{i}"))) for i in range(20)]
        await asyncio.sleep(0)  # let every task queue its request
        await store.close()
        assert sum(r.accepted for r in await asyncio.gather(*tasks)) == 20
        reopened = SQLiteStore(url)
        await reopened.open(migrate=False)
        try:
            assert len(await reopened.claim(limit=100, lease=LEASE, now=T0)) == 20
        finally:
            await reopened.close()

    asyncio.run(main())


def test_a_locked_database_is_unavailable_then_recovers(url: str) -> None:
    async def main() -> None:
        store = SQLiteStore(url, busy_timeout=0.1)
        await store.open()
        other = sqlite3.connect(path_from_url(url), isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            with pytest.raises(StoreUnavailable, match="locked") as caught:
                await accept(store, incoming("k"))
            assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
            assert (await store.stats(now=T0)).pending == 0  # readers are not blocked
            other.execute("ROLLBACK")
            assert (await accept(store, incoming("k"))).accepted == 1
        finally:
            other.close()
            await store.close()

    asyncio.run(main())


def test_a_schema_newer_than_the_code_is_unavailable(url: str) -> None:
    async def open_close(migrate: bool) -> None:
        store = SQLiteStore(url)
        await store.open(migrate=migrate)
        await store.close()

    asyncio.run(open_close(True))
    with sqlite3.connect(path_from_url(url)) as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (99)")
        # Its release says no code before it may use it (router.store.migrations).
        conn.execute("UPDATE store_meta SET value = '99' WHERE key = 'schema_floor'")
    for migrate in (False, True):
        with pytest.raises(StoreUnavailable, match="schema version 99"):
            asyncio.run(open_close(migrate))


@pytest.mark.parametrize("migrate", [False, True])
def test_a_path_that_cannot_be_opened_is_unavailable(tmp_path: Path, migrate: bool) -> None:
    (tmp_path / "file").write_text("not a directory")

    async def main() -> None:
        await SQLiteStore(f"sqlite:///{tmp_path / 'file' / 'router.db'}").open(migrate=migrate)

    with pytest.raises(StoreUnavailable, match="cannot be opened"):
        asyncio.run(main())


def test_a_file_that_is_no_database_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "router.db").write_bytes(b"this is not a database file, not at all" * 100)

    async def main() -> None:
        await SQLiteStore(f"sqlite:///{tmp_path / 'router.db'}").open()

    with pytest.raises(StoreUnavailable):
        asyncio.run(main())


PUSHER = textwrap.dedent(
    """
    import asyncio, sys
    from router.store.base import IncomingRecord, NewJob
    from router.store.sqlite import SQLiteStore

    async def push(store, i):
        job = NewJob(f"job-{i}", "crm", 0, "log", {"type": "log", "message": "hi"}, "log")
        record = IncomingRecord(str(i), f"key-{i}", {"i": i}, ("crm",), (job,))
        await store.accept([record], ruleset_version="v1", dedupe_window=60.0, now=1.0)
        print(f"committed {i}", flush=True)

    async def main():
        store = SQLiteStore(sys.argv[1])
        await store.open()
        i = 0
        while True:
            await asyncio.gather(*(push(store, i + n) for n in range(10)))
            i += 10

    asyncio.run(main())
    """
)


def test_every_acknowledged_record_survives_kill_9(url: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", PUSHER, url], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    acknowledged: list[int] = []
    deadline = time.monotonic() + 60
    try:
        while len(acknowledged) < 300 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break  # the child died on its own: checked below
            acknowledged.append(int(line.split()[1]))
    finally:
        os.kill(child.pid, signal.SIGKILL)
    # Lines written before the kill are still in the pipe: they were acknowledged too.
    acknowledged.extend(int(line.split()[1]) for line in child.stdout.read().splitlines())
    child.stdout.close()
    assert child.wait() == -signal.SIGKILL
    assert len(acknowledged) >= 300

    async def main() -> set[str]:
        store = SQLiteStore(url)
        await store.open(migrate=False)
        try:
            stored = await store.claim(limit=1_000_000, lease=LEASE, now=2.0)
            assert all(job.record == {"i": int(job.id[4:])} for job in stored)
            return {job.id for job in stored}
        finally:
            await store.close()

    stored = asyncio.run(main())
    assert {f"job-{i}" for i in acknowledged} <= stored
    with sqlite3.connect(path_from_url(url)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def _replace_in_place(path: Path, other_url: str) -> None:
    async def make() -> None:
        other = SQLiteStore(other_url)
        await other.open()  # a store of its own, with its own identity
        await other.close()

    asyncio.run(make())
    other_path = Path(path_from_url(other_url))
    path.write_bytes(other_path.read_bytes())  # same inode, other content


@pytest.mark.parametrize("how", ["deleted", "moved over", "overwritten in place", "wal deleted"])
def test_a_file_gone_under_the_store_fails_every_call_and_is_saved(
    tmp_path: Path, url: str, how: str
) -> None:
    path = Path(path_from_url(url))

    async def main() -> None:
        store = SQLiteStore(url)
        await store.open()
        try:
            kept = await accept(store, incoming("before", event_id="kept"))
            assert kept.accepted == 1
            await store.ping()
            if how == "deleted":
                path.unlink()
            elif how == "moved over":
                other = SQLiteStore(f"sqlite:///{tmp_path / 'other.db'}")
                await other.open()
                await other.close()
                os.rename(tmp_path / "other.db", path)
            elif how == "overwritten in place":
                await asyncio.to_thread(
                    _replace_in_place, path, f"sqlite:///{tmp_path / 'other.db'}"
                )
            else:
                Path(f"{path}-wal").unlink()
            # The first write after the change is refused (what it committed went to a lost
            # file), and so is everything after it, reads included.
            with pytest.raises(StoreGone, match="file is gone"):
                await accept(store, incoming("after", event_id="lost"))
            for call in (
                store.ping(),
                store.claim(limit=10, lease=LEASE, now=T0),
                store.list_jobs(),
                accept(store, incoming("later")),
            ):
                with pytest.raises(StoreGone):
                    await call
        finally:
            await store.close()

    asyncio.run(main())

    async def saved() -> list[str | None]:
        (copy,) = tmp_path.glob("router.db.orphaned-*")
        store = SQLiteStore(f"sqlite:///{copy}")
        await store.open(migrate=False)
        try:
            assert len(await store.claim(limit=10, lease=LEASE, now=T0)) >= 1  # no lease held
            return [job.event_id for job in await store.list_jobs()]
        finally:
            await store.close()

    assert "kept" in asyncio.run(saved())


def test_another_process_closing_the_file_leaves_the_store_whole(url: str) -> None:
    # Closing any descriptor of a file drops every POSIX lock the process holds on it; a
    # store that opened and closed the file behind SQLite's back let the next process to close
    # take itself for the last one and delete the WAL of the running store.
    path = Path(path_from_url(url))

    async def main() -> None:
        store = SQLiteStore(url)
        await store.open()
        try:
            await accept(store, incoming("one"))
            for _ in range(3):
                await store.ping()
                done = subprocess.run(
                    [sys.executable, "-m", "router", "deliveries", "list", "--store", url],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
                assert done.returncode == 0, done.stderr
                assert Path(f"{path}-wal").exists()
            await store.ping()
            assert (await accept(store, incoming("two"))).accepted == 1
        finally:
            await store.close()

    asyncio.run(main())
