"""Stopping a process: a signal during start-up ends the start at once and cleanly; a signal
while serving lets the deliveries in flight finish (within ROUTER_DRAIN_TIMEOUT) and records
each of them once, so a destination is not sent the same job again after a restart."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from router.store.sql_postgres import MIGRATION_LOCK_KEY
from tests.e2e.conftest import forward_rule
from tests.e2e.harness import RouterProcess, poll
from tests.e2e.pg import Unavailable, fresh_database
from tests.sinks import HttpSink, Reply, free_port

PROMPTLY = 5.0  # seconds: a stop during start-up ends the process within this
SLOW_REPLY = 3.0  # seconds the sink takes to answer the delivery in flight (under the
# action's 5 s timeout, so the delivery itself succeeds)


def event(name: str) -> dict[str, Any]:
    return {"id": name, "tableType": "PROFILE_TABLE", "operation": "CREATE", "data": {"n": 1}}


def jobs(router: RouterProcess) -> list[dict[str, Any]]:
    listed = router.cli("deliveries", "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    result: list[dict[str, Any]] = json.loads(listed.stdout)
    return result


def stop_and_time(router: RouterProcess, timeout: float = 60) -> tuple[int, float]:
    started = time.monotonic()
    code = router.stop(signal.SIGTERM, timeout=timeout)
    return code, time.monotonic() - started


@pytest.fixture
def database() -> Iterator[str]:
    try:
        with fresh_database() as url:
            yield url
    except Unavailable as exc:
        pytest.skip(str(exc))


class HeldLock:
    """The migration lock, held by "another replica" (this test) on its own connection."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.loop = asyncio.new_event_loop()
        self.conn: asyncpg.Connection[Any] | None = None

    def __enter__(self) -> HeldLock:
        self.conn = self.loop.run_until_complete(asyncpg.connect(self.url, timeout=10))
        self.loop.run_until_complete(
            self.conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        )
        return self

    def fetch(self, query: str) -> Any:
        assert self.conn is not None
        return self.loop.run_until_complete(self.conn.fetchval(query))

    def waiters(self) -> int:
        """Sessions of this database waiting for an advisory lock: a router stuck behind this
        one (the server is shared: other databases' sessions do not count)."""
        query = """
            SELECT count(*) FROM pg_locks
            WHERE locktype = 'advisory' AND NOT granted
                AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
        """
        return int(self.fetch(query))

    def __exit__(self, *exc: object) -> None:
        if self.conn is not None:
            self.loop.run_until_complete(self.conn.close())
        self.loop.close()


@pytest.mark.postgres
@pytest.mark.parametrize("command", [("serve",), ("worker",)])
def test_a_stop_signal_while_waiting_to_migrate_ends_the_start(
    tmp_path: Path,
    rules_dir: Path,
    router_factory: list[RouterProcess],
    database: str,
    command: tuple[str, ...],
) -> None:
    """Another replica migrates (holds the lock) for as long as it likes: the starting process
    waits for it, and a SIGTERM then (a rollout cancelled, `docker stop`) ends it at once with
    status 0, having changed nothing."""
    (rules_dir / "f.toml").write_text(forward_rule("http://127.0.0.1:9/x"))
    port = free_port()
    router = RouterProcess(
        tmp_path,
        rules_dir,
        store_url=database,
        command=command,
        port=port,
        env={"ROUTER_WORKER_PORT": str(port)},
    )
    router_factory.append(router)
    with HeldLock(database) as lock:
        router.start(wait=False)
        poll(lambda: lock.waiters() > 0 or router.proc is None or router.proc.poll() is not None)
        assert router.proc is not None and router.proc.poll() is None, router.log()
        code, took = stop_and_time(router)
        assert code == 0, router.log()
        assert took < PROMPTLY, router.log()
        assert "stopped by signal SIGTERM before serving" in router.log()
        assert lock.fetch("SELECT to_regclass('schema_version')") is None  # nothing migrated


def test_a_stop_signal_lets_the_delivery_in_flight_finish_and_records_it_once(
    tmp_path: Path, rules_dir: Path, router_factory: list[RouterProcess]
) -> None:
    with HttpSink(Reply(200, delay=SLOW_REPLY)) as sink:
        (rules_dir / "f.toml").write_text(forward_rule(sink.url("/in")))
        router = RouterProcess(tmp_path, rules_dir)
        router_factory.append(router)
        router.start()
        assert router.push(event("slow-1")).status_code == 202
        sink.wait_for(1)  # arrived; its answer comes SLOW_REPLY seconds later
        code, took = stop_and_time(router)
        assert code == 0, router.log()
        assert took >= SLOW_REPLY - 1, "the process did not wait for the delivery"
        # Done, not pending with a lease: a restarted router has nothing to send again.
        (job,) = jobs(router)
        assert (job["status"], job["attempts"]) == ("done", 1), job
        assert len(sink.requests) == 1


def test_a_delivery_longer_than_the_drain_is_cut_and_sent_again_later(
    tmp_path: Path, rules_dir: Path, router_factory: list[RouterProcess]
) -> None:
    """ROUTER_DRAIN_TIMEOUT bounds the wait: past it the delivery is abandoned unrecorded (its
    lease runs out) and the next process delivers it again, at least once."""
    with HttpSink(Reply(200, delay=SLOW_REPLY)) as sink:
        (rules_dir / "f.toml").write_text(forward_rule(sink.url("/in")))
        router = RouterProcess(
            tmp_path, rules_dir, env={"ROUTER_DRAIN_TIMEOUT": "1", "ROUTER_LEASE_SECONDS": "1"}
        )
        router_factory.append(router)
        router.start()
        assert router.push(event("slower")).status_code == 202
        sink.wait_for(1)
        code, took = stop_and_time(router)
        assert code == 0, router.log()
        assert took < SLOW_REPLY - 1, router.log()
        (job,) = jobs(router)
        assert (job["status"], job["attempts"]) == ("pending", 0), job
        sink.default = Reply(200)
        router.start()
        sink.wait_for(2)
        poll(lambda: jobs(router)[0]["status"] == "done")
        assert stop_and_time(router)[0] == 0
