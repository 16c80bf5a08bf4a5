"""Pause and resume, end to end: `router deliveries pause` as a user runs it, real workers on
one store (as replicas), a real sink; the paused time is given back to the jobs' budget."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from router.cli import main
from router.store import open_store
from router.store.base import Status
from tests.controls.support import (
    BACKENDS,
    FlakySink,
    delivered,
    deployment,
    event,
    rules,
    store_url,
)


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def cli(url: str, *args: str) -> Ran:
    """`router deliveries ARGS --store URL`, in this process (its own event loop)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["deliveries", *args, "--store", url])
    return Ran(status, out.getvalue(), err.getvalue())


async def budget_since(url: str, job_id: str) -> float:
    if url.startswith("sqlite"):
        import sqlite3

        from router.store.sqlite import path_from_url

        with sqlite3.connect(path_from_url(url)) as conn:
            row: Any = conn.execute("SELECT budget_since FROM jobs WHERE id = ?", (job_id,))
            return float(row.fetchone()[0])
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return float(await conn.fetchval("SELECT budget_since FROM jobs WHERE id = $1", job_id))
    finally:
        await conn.close()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("by", ["rule", "host", "url"])
def test_paused_jobs_wait_for_every_worker_and_go_after_resume(
    backend: str, by: str, tmp_path: Path
) -> None:
    with FlakySink() as sink, FlakySink() as other, store_url(backend, tmp_path) as url:
        ruleset = rules(
            tmp_path,
            f"""
[[destination]]
url = "{sink.url("/crm/")}"

[[rule]]
name = "crm"
[[rule.action]]
type = "http"
url = "{sink.url("/crm/")}{{{{ data.n }}}}"

[[rule]]
name = "other"
[[rule.action]]
type = "http"
url = "{other.url("/")}{{{{ data.n }}}}"
""",
        )
        target = {
            "rule": ["--rule", "crm"],
            "host": ["--destination", f"127.0.0.1:{sink.port}"],
            "url": ["--destination", sink.url("/crm/")],
        }[by]
        paused = cli(url, "pause", *target)  # the CLI never creates a store
        assert paused.returncode == 1 and "run `router migrate`" in paused.stderr

        async def prepare() -> None:
            store = open_store(url)
            await store.open()
            await store.close()

        asyncio.run(prepare())
        paused = cli(url, "pause", *target)
        assert paused.returncode == 0, paused.stderr
        assert cli(url, "pause", *target).stdout.startswith(target[0][2:])  # already paused

        async def held() -> list[str]:
            async with deployment(url, ruleset, workers=2, running=False) as d:
                await d.push([event(n) for n in range(3)])
                for worker in d.workers:  # both replicas: nothing of crm is claimable
                    await worker.run(asyncio.Event(), drain=True)
                jobs = await d.stores[0].list_jobs(rule="crm")
                assert {job.status for job in jobs} == {Status.PENDING}
                assert all(job.attempts == 0 for job in jobs)
                return [job.id for job in jobs]

        ids = asyncio.run(held())
        assert delivered(sink) == []
        assert len(delivered(other)) == 3  # never held up
        listing = cli(url, "list", "--status", "paused", "--format", "json")
        assert sorted(job["id"] for job in json.loads(listing.stdout)) == sorted(ids)
        assert "paused" in cli(url, "list").stdout

        before = asyncio.run(budget_since(url, ids[0]))
        resumed = cli(url, "resume", *target)
        assert resumed.returncode == 0, resumed.stderr
        assert "3 pending job(s)" in resumed.stdout
        after = asyncio.run(budget_since(url, ids[0]))
        assert after > before  # the paused time is given back to the retry budget
        assert cli(url, "resume", *target).returncode == 1  # not paused any more

        async def deliver() -> None:
            async with deployment(url, ruleset, running=False) as d:
                await d.workers[0].run(asyncio.Event(), drain=True)

        asyncio.run(deliver())
        assert sorted(delivered(sink)) == ["/crm/0", "/crm/1", "/crm/2"]


def test_a_pause_target_that_names_nothing_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    result = cli(url, "pause", "--destination", "ftp://x/")
    assert result.returncode == 1
    assert "https://host" in result.stderr
