"""The store contract: every backend must pass this suite unchanged (see conftest `backend`)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from pathlib import Path

import pytest

from router.exceptions import StoreUnavailable
from router.store.base import (
    AttemptResult,
    Job,
    Mode,
    Outcome,
    QueueStats,
    Status,
    Store,
)
from router.store.migrations import (
    ADDITIVE,
    FLOOR_KEY,
    SCHEMA_VERSION,
    floor_of,
    schema_problem,
)

from .conftest import DAY, LAYOUT, LEASE, RULESET, SPEC, T0, Backend, accept, incoming, new_job


def done(job: Job, at: float, *, status_code: int | None = 200) -> AttemptResult:
    return AttemptResult(job.id, job.lease_token, Outcome.DONE, at, 0.25, status_code)


def retry(job: Job, at: float, next_at: float, error: str = "HTTP 503") -> AttemptResult:
    return AttemptResult(job.id, job.lease_token, Outcome.RETRY, at, 0.5, 503, error, next_at)


def dead(job: Job, at: float, error: str = "HTTP 410: the contact is gone") -> AttemptResult:
    return AttemptResult(job.id, job.lease_token, Outcome.DEAD, at, 0.5, 410, error)


async def claim_all(store: Store, now: float, limit: int = 1000) -> list[Job]:
    return await store.claim(limit=limit, lease=LEASE, now=now)


async def make_dead(store: Store, *jobs_rules: str, now: float = T0) -> list[str]:
    """Accept one job per rule given and kill each at its first attempt; returns their ids."""
    records = [incoming(jobs=[new_job(rule)], event_id=str(i)) for i, rule in enumerate(jobs_rules)]
    await accept(store, *records, now=now)
    claimed = await claim_all(store, now)
    await store.record([dead(job, now) for job in claimed], now=now + 1)
    return [job.id for job in claimed]


def test_accept_claim_record_lifecycle(backend: Backend) -> None:
    async def body(store: Store) -> None:
        await store.ping()
        crm, mail = new_job("crm"), new_job("mail", 1, action_type="email", destination="smtp")
        record = {"id": "42", "tableType": "PROFILE_TABLE", "data": {"name": "Zoë", "n": [1, 2]}}
        result = await accept(store, incoming("k1", jobs=[crm, mail], event_id="42", record=record))
        assert (result.accepted, result.duplicates) == (1, 0)

        claimed = {job.id: job for job in await claim_all(store, T0)}
        assert set(claimed) == {crm.id, mail.id}
        job = claimed[crm.id]
        assert (job.rule, job.action_index, job.action_type) == ("crm", 0, "http")
        assert (job.destination, job.event_id, job.ruleset_version) == (
            "crm.example.com",
            "42",
            RULESET,
        )
        assert job.spec == SPEC
        assert job.record == record
        assert (job.attempts, job.budget_since) == (0, T0)
        assert job.lease_token
        assert claimed[mail.id].destination == "smtp"
        assert await claim_all(store, T0 + 1) == []  # both are leased

        await store.record(
            [done(job, T0 + 2), retry(claimed[mail.id], T0 + 2, T0 + 30)], now=T0 + 3
        )
        detail = await store.get_job(crm.id)
        assert detail is not None
        assert detail.summary.status is Status.DONE
        assert (detail.summary.attempts, detail.summary.next_at) == (1, None)
        assert [(a.number, a.at, a.outcome, a.status_code) for a in detail.history] == [
            (1, T0 + 2, Outcome.DONE, 200)
        ]
        assert detail.history[0].duration == 0.25
        assert await claim_all(store, T0 + 29) == []
        (again,) = await claim_all(store, T0 + 30)
        assert (again.id, again.attempts, again.budget_since) == (mail.id, 1, T0)

    backend.run(body)


def test_records_without_jobs_are_accepted(backend: Backend) -> None:
    async def body(store: Store) -> None:
        result = await accept(store, incoming("a", jobs=[]), incoming(None, jobs=[]))
        assert (result.accepted, result.duplicates) == (2, 0)
        assert await claim_all(store, T0) == []
        assert await store.stats(now=T0) == QueueStats(pending=0, dead=0, oldest_pending_age=None)

    backend.run(body)


def test_accepted_jobs_and_results_survive_close_and_reopen(backend: Backend) -> None:
    first, second = new_job("crm"), new_job("slack")

    async def write(store: Store) -> None:
        await accept(store, incoming("k", jobs=[first, second]))
        claimed = {job.id: job for job in await claim_all(store, T0)}
        await store.record([retry(claimed[first.id], T0, T0 + 10, "timed out")], now=T0)

    async def read(store: Store) -> None:
        detail = await store.get_job(first.id)
        assert detail is not None
        assert (detail.summary.status, detail.summary.last_error) == (Status.PENDING, "timed out")
        assert len(detail.history) == 1
        # `second` is still leased by the claim made before the restart, until the lease ends.
        assert [job.id for job in await claim_all(store, T0 + 10)] == [first.id]
        assert [job.id for job in await claim_all(store, T0 + LEASE + 1)] == [second.id]
        assert (await accept(store, incoming("k"), now=T0 + 60)).duplicates == 1

    backend.run(write)
    backend.run(read)
    backend.run(lambda store: store.ping(), migrate=False)  # the schema is current now


@pytest.mark.parametrize(
    ("window", "pushes", "expected"),
    [
        # (window, [(time offset, key)], accepted? per push)
        (100.0, [(0, "k"), (50, "k"), (100, "k"), (100.5, "k"), (150, "k")], [1, 0, 0, 1, 0]),
        (100.0, [(0, "k"), (0, "j"), (1, "k"), (1, "j")], [1, 1, 0, 0]),
        (0.0, [(0, "k"), (0, "k"), (1, "k")], [1, 1, 1]),
        (100.0, [(0, None), (0, None)], [1, 1]),
        # Identical content under another envelope id has another key: both are accepted.
        (100.0, [(0, "1001:hash"), (0, "1002:hash")], [1, 1]),
    ],
    ids=["window", "two-keys", "disabled", "no-key", "other-event-id"],
)
def test_dedupe(
    backend: Backend, window: float, pushes: list[tuple[float, str | None]], expected: list[int]
) -> None:
    async def body(store: Store) -> list[int]:
        outcomes = []
        for offset, key in pushes:
            result = await accept(store, incoming(key), now=T0 + offset, window=window)
            assert result.accepted + result.duplicates == 1
            outcomes.append(result.accepted)
        assert len(await claim_all(store, T0 + 1000)) == sum(outcomes)
        return outcomes

    assert backend.run(body) == expected


@pytest.mark.parametrize(
    ("window", "keys", "accepted", "duplicates"),
    [
        (DAY, ["k", "k"], 1, 1),
        (DAY, ["a", "b", "a", "c", "b"], 3, 2),
        (0.0, ["k", "k"], 2, 0),
    ],
)
def test_dedupe_within_one_call(
    backend: Backend, window: float, keys: list[str], accepted: int, duplicates: int
) -> None:
    async def body(store: Store) -> None:
        records = [incoming(key, event_id=str(i)) for i, key in enumerate(keys)]
        result = await accept(store, *records, window=window)
        assert (result.accepted, result.duplicates) == (accepted, duplicates)
        # Which positions were repeats (the engine counts rule matches of the others only).
        first = {key: keys.index(key) for key in keys}
        expected = {i for i, key in enumerate(keys) if window and first[key] != i}
        assert result.repeated == expected
        claimed = await claim_all(store, T0)
        # The first record of each key is the one kept, with its jobs; duplicates store nothing.
        kept = [records[keys.index(k)] for k in dict.fromkeys(keys)] if window else records
        assert {job.id for job in claimed} == {r.jobs[0].id for r in kept}

    backend.run(body)


def test_concurrent_accepts_all_commit(backend: Backend) -> None:
    async def body(store: Store) -> None:
        results = await asyncio.gather(
            *(accept(store, incoming(f"k{i}", jobs=[new_job(), new_job("b")])) for i in range(50))
        )
        assert all((r.accepted, r.duplicates) == (1, 0) for r in results)
        assert len(await claim_all(store, T0)) == 100

    backend.run(body)


def test_concurrent_claims_never_share_a_job(backend: Backend) -> None:
    async def body(store: Store) -> None:
        await accept(store, *(incoming(f"k{i}", event_id=str(i)) for i in range(200)))
        batches = await asyncio.gather(
            *(store.claim(limit=7, lease=LEASE, now=T0) for _ in range(40))
        )
        ids = Counter(job.id for batch in batches for job in batch)
        assert len(ids) == 200
        assert max(ids.values()) == 1
        assert all(len(batch) <= 7 for batch in batches)

    backend.run(body)


def test_claim_takes_the_oldest_due_first_up_to_limit(backend: Backend) -> None:
    async def body(store: Store) -> None:
        jobs = [new_job(f"r{i}") for i in range(4)]
        for i, job in enumerate(jobs):  # accepted (so due) at T0, T0+1, T0+2, T0+3
            await accept(store, incoming(None, jobs=[job]), now=T0 + i)
        assert await store.claim(limit=0, lease=LEASE, now=T0 + 10) == []
        claimed = await store.claim(limit=2, lease=LEASE, now=T0 + 10)
        assert [job.id for job in claimed] == [jobs[0].id, jobs[1].id]
        # A job retried to a later time lines up behind the ones due earlier.
        await store.record([retry(claimed[0], T0 + 10, T0 + 20)], now=T0 + 10)
        later = await store.claim(limit=10, lease=LEASE, now=T0 + 30)
        assert [job.id for job in later] == [jobs[2].id, jobs[3].id, jobs[0].id]

    backend.run(body)


def test_claim_skips_excluded_destinations_or_takes_only_one(backend: Backend) -> None:
    async def body(store: Store) -> None:
        slow = [new_job("slow", destination="slow.example.com") for _ in range(3)]
        fast = new_job("fast", destination="fast.example.com")
        mail = new_job("mail", action_type="email", destination="smtp")
        await accept(store, incoming(None, jobs=[*slow, fast, mail]), now=T0)
        first = await store.claim(limit=10, lease=LEASE, now=T0, exclude={"slow.example.com"})
        assert {job.destination for job in first} == {"fast.example.com", "smtp"}
        one = await store.claim(limit=1, lease=LEASE, now=T0, destination="slow.example.com")
        assert [job.id for job in one] == [slow[0].id]
        rest = await store.claim(limit=10, lease=LEASE, now=T0, exclude=())
        assert sorted(job.id for job in rest) == sorted(job.id for job in slow[1:])

    backend.run(body)


def test_renewed_lease_keeps_the_job_from_other_claims(backend: Backend) -> None:
    async def body(store: Store) -> None:
        await accept(store, incoming(None, jobs=[new_job(), new_job("other")]), now=T0)
        held, other = await store.claim(limit=2, lease=LEASE, now=T0)
        await store.renew(
            [(held.id, held.lease_token), (other.id, "not-its-token")], until=T0 + 3 * LEASE
        )
        later = await store.claim(limit=10, lease=LEASE, now=T0 + 2 * LEASE)
        assert [job.id for job in later] == [other.id]  # only the lease that was not renewed
        await store.record([done(held, T0 + 2 * LEASE)], now=T0 + 2 * LEASE)
        assert (await store.stats(now=T0 + 2 * LEASE)).pending == 1

    backend.run(body)


def test_not_yet_accepted_time_is_not_due(backend: Backend) -> None:
    async def body(store: Store) -> None:
        await accept(store, incoming("k"), now=T0)
        assert await claim_all(store, T0 - 1) == []
        assert len(await claim_all(store, T0)) == 1

    backend.run(body)


def test_expired_lease_is_reclaimed_and_the_stale_result_does_not_move_the_job(
    backend: Backend,
) -> None:
    async def body(store: Store) -> None:
        await accept(store, incoming("k"))
        (first,) = await store.claim(limit=5, lease=30, now=T0)
        assert await store.claim(limit=5, lease=30, now=T0 + 29) == []
        (second,) = await store.claim(limit=5, lease=30, now=T0 + 31)
        assert second.id == first.id
        assert second.lease_token != first.lease_token

        # The first worker finally answers: its attempt is history, but the job stays leased.
        await store.record([done(first, T0 + 1)], now=T0 + 32)
        detail = await store.get_job(first.id)
        assert detail is not None
        assert (detail.summary.status, detail.summary.attempts) == (Status.PENDING, 0)
        assert [a.number for a in detail.history] == [1]
        assert await store.claim(limit=5, lease=30, now=T0 + 40) == []

        await store.record([dead(second, T0 + 33, "HTTP 404")], now=T0 + 34)
        detail = await store.get_job(first.id)
        assert detail is not None
        assert (detail.summary.status, detail.summary.attempts) == (Status.DEAD, 1)
        assert detail.summary.last_error == "HTTP 404"
        assert [(a.number, a.outcome) for a in detail.history] == [
            (1, Outcome.DONE),
            (2, Outcome.DEAD),
        ]
        # A late result for a job that is no longer pending changes nothing either.
        await store.record([done(second, T0 + 35)], now=T0 + 36)
        detail = await store.get_job(first.id)
        assert detail is not None
        assert detail.summary.status is Status.DEAD
        assert len(detail.history) == 3

    backend.run(body)


def test_retry_waits_for_next_at_and_counts_attempts(backend: Backend) -> None:
    async def body(store: Store) -> None:
        await accept(store, incoming("k"))
        (job,) = await claim_all(store, T0)
        for attempt in range(1, 4):
            due = T0 + attempt * 100
            await store.record([retry(job, due - 99, due, f"HTTP 50{attempt}")], now=due - 99)
            (summary,) = await store.list_jobs()
            assert (summary.status, summary.next_at) == (Status.PENDING, due)
            assert (summary.attempts, summary.last_error) == (attempt, f"HTTP 50{attempt}")
            assert await claim_all(store, due - 1) == []  # lease cleared, yet not due
            (job,) = await claim_all(store, due)
            assert (job.attempts, job.budget_since) == (attempt, T0)

    backend.run(body)


def test_dead_job_is_kept_with_its_last_error(backend: Backend) -> None:
    async def body(store: Store) -> None:
        (job_id,) = await make_dead(store, "crm")
        assert await claim_all(store, T0 + DAY) == []
        detail = await store.get_job(job_id)
        assert detail is not None
        assert detail.summary.status is Status.DEAD
        assert detail.summary.last_error == "HTTP 410: the contact is gone"
        assert detail.summary.next_at is None
        assert [(a.outcome, a.status_code, a.error) for a in detail.history] == [
            (Outcome.DEAD, 410, "HTTP 410: the contact is gone")
        ]
        assert await store.stats(now=T0 + 5) == QueueStats(
            pending=0, dead=1, oldest_pending_age=None
        )

    backend.run(body)


def test_replay_gives_dead_jobs_a_fresh_budget(backend: Backend) -> None:
    async def body(store: Store) -> None:
        dead_id, other_dead = await make_dead(store, "crm", "crm")
        await accept(store, incoming("pending"), now=T0 + 2)
        (pending,) = await store.claim(limit=5, lease=DAY, now=T0 + 2)  # held throughout

        replayed = await store.replay([dead_id, "no-such-job", pending.id, dead_id], now=T0 + 500)
        assert replayed == [dead_id]
        assert await store.replay([dead_id], now=T0 + 501) == []  # no longer dead
        assert await claim_all(store, T0 + 499) == []
        (job,) = await claim_all(store, T0 + 500)
        assert (job.id, job.attempts, job.budget_since) == (dead_id, 0, T0 + 500)
        await store.record([done(job, T0 + 501)], now=T0 + 502)
        detail = await store.get_job(dead_id)
        assert detail is not None
        assert detail.summary.status is Status.DONE
        assert [a.number for a in detail.history] == [1, 2]  # history spans the replay
        assert await store.stats(now=T0 + 600) == QueueStats(1, 1, 598.0)
        assert other_dead in {j.id for j in await store.list_jobs(status=Status.DEAD)}

    backend.run(body)


def test_replay_dead_by_rule(backend: Backend) -> None:
    async def body(store: Store) -> None:
        await make_dead(store, "crm", "crm", "slack", "mail")
        assert await store.replay_dead(rule="crm", now=T0 + 10) == 2
        assert {j.rule for j in await claim_all(store, T0 + 10)} == {"crm"}
        assert await store.replay_dead(rule="crm", now=T0 + 11) == 0
        assert await store.replay_dead(rule="nope", now=T0 + 11) == 0
        assert await store.replay_dead(rule=None, now=T0 + 12) == 2
        replayed = await claim_all(store, T0 + 12)
        assert sorted(j.rule for j in replayed) == ["mail", "slack"]
        assert all((j.attempts, j.budget_since) == (0, T0 + 12) for j in replayed)
        assert (await store.stats(now=T0 + 12)).dead == 0

    backend.run(body)


def test_list_jobs_filters_and_orders_newest_first(backend: Backend) -> None:
    async def body(store: Store) -> None:
        ids = []
        for i, rule in enumerate(["crm", "slack", "crm", "crm"]):
            job = new_job(rule)
            ids.append(job.id)
            await accept(store, incoming(None, jobs=[job], event_id=f"e{i}"), now=T0 + i)
        (first,) = await store.claim(limit=1, lease=LEASE, now=T0 + 10)
        await store.record([dead(first, T0 + 10)], now=T0 + 11)

        everything = await store.list_jobs()
        assert [j.id for j in everything] == ids[::-1]
        newest = everything[0]
        assert (newest.rule, newest.action_index, newest.action_type) == ("crm", 0, "http")
        assert (newest.destination, newest.event_id, newest.ruleset_version) == (
            "crm.example.com",
            "e3",
            RULESET,
        )
        assert (newest.status, newest.attempts, newest.created_at) == (Status.PENDING, 0, T0 + 3)
        assert (newest.updated_at, newest.next_at, newest.last_error) == (T0 + 3, T0 + 3, None)
        assert [j.id for j in await store.list_jobs(limit=2)] == ids[:1:-1]
        assert [j.id for j in await store.list_jobs(rule="crm")] == [ids[3], ids[2], ids[0]]
        assert [j.id for j in await store.list_jobs(status=Status.DEAD)] == [ids[0]]
        assert [j.id for j in await store.list_jobs(status=Status.PENDING, rule="crm")] == [
            ids[3],
            ids[2],
        ]
        assert await store.list_jobs(status=Status.DONE) == []
        assert await store.list_jobs(rule="nope") == []

    backend.run(body)


def test_get_job_returns_spec_record_and_history(backend: Backend) -> None:
    async def body(store: Store) -> None:
        spec = {"type": "log", "level": "info", "message": "{{ data.n }} ✓", "tags": ["a", 1]}
        job = new_job("log", 2, spec=spec, action_type="log", destination="log")
        record = {"id": None, "data": {"etl.executionStatus": "FINISHED", "n": 1.5}}
        await accept(store, incoming("k", jobs=[job], event_id=None, record=record))
        assert await store.get_job("no-such-job") is None
        detail = await store.get_job(job.id)
        assert detail is not None
        assert (detail.spec, detail.record, detail.history) == (spec, record, ())
        assert (detail.summary.event_id, detail.summary.action_index) == (None, 2)

        (claimed,) = await claim_all(store, T0)
        assert claimed.event_id is None
        await store.record([retry(claimed, T0 + 1, T0 + 5, "connection refused")], now=T0 + 2)
        (claimed,) = await claim_all(store, T0 + 5)
        await store.record([done(claimed, T0 + 6, status_code=204)], now=T0 + 7)
        detail = await store.get_job(job.id)
        assert detail is not None
        assert [(a.number, a.at, a.outcome, a.status_code, a.error) for a in detail.history] == [
            (1, T0 + 1, Outcome.RETRY, 503, "connection refused"),
            (2, T0 + 6, Outcome.DONE, 204, None),
        ]
        assert (detail.summary.status, detail.summary.attempts) == (Status.DONE, 2)
        assert detail.summary.updated_at == T0 + 7

    backend.run(body)


def test_one_record_call_numbers_each_attempt_of_a_job_in_turn(backend: Backend) -> None:
    """Results of several jobs recorded at once, one job twice (its lease lost between two
    attempts), and one job purged meanwhile: every attempt of a job numbered after the one
    before, nothing appended to a job that is gone."""

    async def body(store: Store) -> None:
        jobs = [new_job("crm", index) for index in range(3)]
        await accept(store, incoming("k", jobs=jobs))
        claimed = {job.id: job for job in await claim_all(store, T0)}
        first, second, third = (claimed[job.id] for job in jobs)
        gone = dataclasses.replace(third, id="no-such-job")
        await store.record(
            [retry(first, T0 + 1, T0 + 5), done(second, T0 + 1), dead(gone, T0 + 1)], now=T0 + 2
        )
        await store.record([retry(third, T0 + 1, T0 + 5), done(third, T0 + 2)], now=T0 + 3)
        numbers = {}
        for job in jobs:
            detail = await store.get_job(job.id)
            assert detail is not None
            numbers[job.id] = [(a.number, a.outcome) for a in detail.history]
        assert numbers == {
            first.id: [(1, Outcome.RETRY)],
            second.id: [(1, Outcome.DONE)],
            third.id: [(1, Outcome.RETRY), (2, Outcome.DONE)],
        }
        assert await store.get_job("no-such-job") is None

    backend.run(body)


def test_each_attempt_keeps_the_excerpt_of_the_answer(backend: Backend) -> None:
    async def body(store: Store) -> None:
        await accept(store, incoming("k"))
        (job,) = await claim_all(store, T0)
        # What a destination answers is text a database must hold: NUL, a lone surrogate.
        answer = '{"error": "busy"}\x00 \ud800 ✓'
        await store.record(
            [dataclasses.replace(retry(job, T0 + 1, T0 + 5), response=answer)], now=T0 + 1
        )
        (job,) = await claim_all(store, T0 + 5)
        await store.record([done(job, T0 + 6)], now=T0 + 6)  # answered nothing to show
        detail = await store.get_job(job.id)
        assert detail is not None
        assert [a.response for a in detail.history] == ['{"error": "busy"}\ufffd ? ✓', None]

    backend.run(body)


# The attempts of the router one release back (schema 7), as its code writes and reads them.
OLD_ATTEMPT_WRITE = """
    INSERT INTO attempts (job_id, number, at, outcome, status_code, error, duration)
    VALUES ('{job}', 2, 1700000010.0, 'done', 204, NULL, 0.5)
"""
OLD_ATTEMPT_READ = (
    "SELECT number, at, outcome, status_code, error, duration FROM attempts "
    "WHERE job_id = '{job}' ORDER BY number"
)


def test_the_response_step_leaves_an_older_router_its_attempts(backend: Backend) -> None:
    """Step 8 is additive: code without it writes attempts as it did and reads them around
    the new column; this code reads those attempts without an excerpt."""
    assert SCHEMA_VERSION >= 8 and ADDITIVE[8 - 1]
    assert floor_of(8) == floor_of(7)  # a rollback across the step is allowed

    async def first(store: Store) -> str:
        await accept(store, incoming("k"))
        (job,) = await claim_all(store, T0)
        answered = dataclasses.replace(retry(job, T0 + 1, T0 + 5), response="try later")
        await store.record([answered], now=T0 + 1)
        return job.id

    job_id = backend.run(first)
    backend.sql(OLD_ATTEMPT_WRITE.format(job=job_id))
    old_read = backend.sql(OLD_ATTEMPT_READ.format(job=job_id))
    assert [(row[0], row[2], row[3]) for row in old_read] == [(1, "retry", 503), (2, "done", 204)]

    async def then(store: Store) -> list[str | None]:
        detail = await store.get_job(job_id)
        assert detail is not None
        return [a.response for a in detail.history]

    assert backend.run(then) == ["try later", None]


def test_stats(backend: Backend) -> None:
    async def body(store: Store) -> None:
        assert await store.stats(now=T0) == QueueStats(0, 0, None)
        await accept(store, incoming("a", jobs=[new_job(), new_job()]), now=T0)
        await accept(store, incoming("b"), now=T0 + 10)
        claimed = await store.claim(limit=2, lease=LEASE, now=T0 + 20)
        assert await store.stats(now=T0 + 25) == QueueStats(3, 0, 25.0)  # leased jobs count
        await store.record([done(claimed[0], T0 + 26), dead(claimed[1], T0 + 26)], now=T0 + 27)
        assert await store.stats(now=T0 + 30) == QueueStats(1, 1, 20.0)

    backend.run(body)


def test_purge(backend: Backend) -> None:
    async def body(store: Store) -> None:
        await accept(store, incoming("old", jobs=[new_job(), new_job()]), now=T0)
        await accept(store, incoming("unmatched", jobs=[]), now=T0)
        old = await claim_all(store, T0)
        await store.record([done(old[0], T0)], now=T0 + 1)
        await store.record([dead(old[1], T0)], now=T0 + 1)
        await accept(store, incoming("recent"), now=T0 + 100)
        (recent,) = await claim_all(store, T0 + 100)
        await store.record([done(recent, T0 + 100)], now=T0 + 101)
        await accept(store, incoming("waiting"), now=T0 + 1)

        deleted = await store.purge(before=T0 + 50, dedupe_before=T0 + 50)
        assert deleted == 1
        assert await store.get_job(old[0].id) is None
        assert await store.get_job(recent.id) is not None
        dead_detail = await store.get_job(old[1].id)  # dead jobs are kept until replayed
        assert dead_detail is not None
        assert dead_detail.record == old[1].record
        (waiting,) = await claim_all(store, T0 + 200)  # its event is still there
        assert waiting.record == incoming().record
        assert await store.purge(before=T0 + 50, dedupe_before=T0 + 50) == 0
        # Purged dedupe keys are new again, even within the window; kept ones are not.
        again = await accept(store, incoming("old"), incoming("recent"), now=T0 + 300)
        assert (again.accepted, again.duplicates) == (1, 1)

    backend.run(body)


def test_shadow_jobs_are_claimed_recorded_listed_and_purged_apart(backend: Backend) -> None:
    async def body(store: Store) -> None:
        live, shadow, failed = new_job("live"), new_job("tryout"), new_job("tryout", 1)
        shadow = dataclasses.replace(shadow, mode=Mode.SHADOW)
        failed = dataclasses.replace(failed, mode=Mode.SHADOW)
        await accept(store, incoming("k", jobs=[live, shadow, failed]))
        claimed = {job.id: job for job in await claim_all(store, T0)}
        assert [claimed[j.id].mode for j in (live, shadow, failed)] == [
            Mode.LIVE,
            Mode.SHADOW,
            Mode.SHADOW,
        ]
        rendered = AttemptResult(shadow.id, claimed[shadow.id].lease_token, Outcome.SHADOW, T0, 0)
        broken = AttemptResult(
            failed.id, claimed[failed.id].lease_token, Outcome.SHADOW, T0, 0, None, "cannot render"
        )
        await store.record([rendered, broken, done(claimed[live.id], T0)], now=T0 + 1)
        listed = await store.list_jobs(status=Status.SHADOW)
        assert {(job.id, job.last_error) for job in listed} == {
            (shadow.id, None),
            (failed.id, "cannot render"),
        }
        assert {job.id for job in await store.list_jobs(status=Status.DONE)} == {live.id}
        assert await claim_all(store, T0 + 1000) == []  # recorded: never claimed again
        stats = await store.stats(now=T0 + 1)
        assert (stats.pending, stats.dead) == (0, 0)
        detail = await store.get_job(failed.id)
        assert detail is not None
        assert [(a.outcome, a.error) for a in detail.history] == [(Outcome.SHADOW, "cannot render")]
        assert await store.replay([failed.id], now=T0 + 2) == []  # nothing to deliver again
        assert await store.purge(before=T0 + 50, dedupe_before=T0) == 3
        assert await store.list_jobs() == []

    backend.run(body)


def test_read_events_pages_through_what_was_kept(backend: Backend) -> None:
    async def body(store: Store) -> None:
        await accept(store, incoming("old", event_id="e-old"), now=T0)
        records = [
            incoming(f"k{n}", event_id=f"e{n}", record={"id": f"e{n}", "data": {"n": n}})
            for n in range(5)
        ]
        await accept(store, *records[:3], now=T0 + 100)
        await accept(store, *records[3:], incoming(None, jobs=[], event_id=None), now=T0 + 200)
        seen: list[str | None] = []
        after = 0
        while page := await store.read_events(since=T0 + 50, after=after, limit=2):
            assert len(page) <= 2
            seen += [event.event_id for event in page]
            after = page[-1].id
            if len(seen) == 2:  # the intake goes on between pages; later records come too
                await accept(store, incoming("late", event_id="late"), now=T0 + 300)
        assert seen == ["e0", "e1", "e2", "e3", "e4", None, "late"]
        (first,) = await store.read_events(since=T0 + 50, limit=1)
        assert (first.record, first.matched) == ({"id": "e0", "data": {"n": 0}}, ("crm",))
        assert (first.ruleset_version, first.received_at) == (RULESET, T0 + 100)
        assert await store.read_events(since=T0, limit=0) == []
        # Reads never hold up accepts: both run side by side.
        pushes = [accept(store, incoming(f"p{n}"), now=T0 + 400) for n in range(20)]
        pages = [store.read_events(since=T0, limit=3) for _ in range(20)]
        outcomes = await asyncio.gather(*pushes, *pages)
        assert sum(result.accepted for result in outcomes[:20]) == 20  # type: ignore[union-attr]

    backend.run(body)


def test_release_gives_jobs_back_without_an_attempt(backend: Backend) -> None:
    async def body(store: Store) -> None:
        await accept(store, incoming("a"), incoming("b"))
        first, second = await claim_all(store, T0)
        await store.release([(first.id, first.lease_token)], next_at=T0 + 5)
        await store.release([(second.id, "not-the-token")], next_at=T0 + 5)
        assert await claim_all(store, T0 + 4) == []
        (again,) = await claim_all(store, T0 + 5)
        assert (again.id, again.attempts) == (first.id, 0)
        detail = await store.get_job(first.id)
        assert detail is not None
        assert detail.history == ()

    backend.run(body)


def test_wait_for_work_wakes_on_accept_and_times_out_otherwise(backend: Backend) -> None:
    async def body(store: Store) -> None:
        started = time.monotonic()
        await store.wait_for_work(0.05)  # nothing happens: returns after the timeout
        assert time.monotonic() - started < 5
        waiter = asyncio.create_task(store.wait_for_work(60))
        await asyncio.sleep(0)  # let the waiter start waiting
        await accept(store, incoming("k"))
        await asyncio.wait_for(waiter, 10)  # far sooner than its 60 s timeout

    backend.run(body)


def test_open_without_migrations_on_an_empty_database_is_unavailable(backend: Backend) -> None:
    with pytest.raises(StoreUnavailable) as raised:
        backend.run(lambda store: store.ping(), migrate=False)
    assert str(raised.value) == schema_problem(0)  # the same sentence on every backend
    assert "run `router migrate`" in str(raised.value)
    backend.run(lambda store: store.ping())  # migrating opens it


def test_a_closed_store_is_unavailable(backend: Backend) -> None:
    async def main() -> None:
        store = backend.make()
        await store.open()
        await store.close()
        with pytest.raises(StoreUnavailable):
            await accept(store, incoming("k"))

    asyncio.run(main())


def test_arguments_are_checked_alike(backend: Backend) -> None:
    async def body(store: Store) -> None:
        empty = await store.accept([], ruleset_version=RULESET, dedupe_window=DAY, now=T0)
        assert (empty.accepted, empty.duplicates) == (0, 0)
        await accept(store, incoming("a"), incoming("b"))
        first, second = await claim_all(store, T0)
        timeless = AttemptResult(second.id, second.lease_token, Outcome.RETRY, T0, 0.1, 503)
        with pytest.raises(ValueError, match="needs next_at"):
            await store.record([done(first, T0), timeless], now=T0)
        for job in (first, second):  # nothing of the refused batch was stored
            detail = await store.get_job(job.id)
            assert detail is not None
            assert (detail.summary.status, detail.history) == (Status.PENDING, ())
        await store.record([], now=T0)
        await store.release([], next_at=T0)
        await store.renew([], until=T0)
        assert await store.replay([], now=T0) == []
        for limit in (0, -1):
            assert await store.claim(limit=limit, lease=LEASE, now=T0 + DAY) == []
            assert await store.list_jobs(limit=limit) == []
        assert len(await store.list_jobs(limit=1)) == 1

    backend.run(body)


# -- one schema, migrated the same way on every backend


def test_the_schema_has_the_shared_layout(backend: Backend) -> None:
    backend.run(lambda store: store.ping())
    assert backend.layout() == LAYOUT


@pytest.mark.postgres
def test_the_schema_is_the_same_on_every_backend(tmp_path: Path, pg: Backend) -> None:
    sqlite = Backend("sqlite", f"sqlite:///{tmp_path / 'router.db'}")
    for each in (sqlite, pg):
        each.run(lambda store: store.ping())
    assert sqlite.layout() == pg.layout()


# What the next release's runner leaves after one more step: the step itself (additive: a
# nullable column and a table), its schema_version row and the floor it computed.
NEXT_STEP = {
    "sqlite": (
        "ALTER TABLE jobs ADD COLUMN priority INTEGER",
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)",
    ),
    "postgres": (
        "ALTER TABLE jobs ADD COLUMN priority integer",
        "CREATE TABLE notes (id bigint PRIMARY KEY, body text)",
    ),
}


def migrated_by_the_next_release(backend: Backend, *, floor: int | None) -> None:
    backend.run(lambda store: store.ping())
    for statement in NEXT_STEP[backend.name]:
        backend.sql(statement)
    backend.sql(f"INSERT INTO schema_version (version) VALUES ({SCHEMA_VERSION + 1})")
    backend.sql(f"DELETE FROM store_meta WHERE key = '{FLOOR_KEY}'")
    if floor is not None:
        backend.sql(f"INSERT INTO store_meta (key, value) VALUES ('{FLOOR_KEY}', '{floor}')")


def schema_record(backend: Backend) -> list[tuple[object, ...]]:
    versions = backend.sql("SELECT version FROM schema_version ORDER BY version")
    return versions + backend.sql(f"SELECT value FROM store_meta WHERE key = '{FLOOR_KEY}'")


def test_migrating_records_the_oldest_code_that_may_use_the_store(backend: Backend) -> None:
    backend.migrate_to(SCHEMA_VERSION - 1)  # as that release left it: no floor yet
    assert backend.sql(f"SELECT value FROM store_meta WHERE key = '{FLOOR_KEY}'") == []
    backend.run(lambda store: store.ping())
    floor = backend.sql(f"SELECT value FROM store_meta WHERE key = '{FLOOR_KEY}'")
    assert floor == [(str(floor_of(SCHEMA_VERSION)),)]


@pytest.mark.parametrize("migrate", [False, True], ids=["checking", "migrating"])
@pytest.mark.parametrize("floor", [SCHEMA_VERSION + 1, None], ids=["breaking", "unrecorded"])
def test_a_newer_schema_this_code_may_not_use_is_refused(
    backend: Backend, migrate: bool, floor: int | None
) -> None:
    migrated_by_the_next_release(backend, floor=floor)
    before = schema_record(backend)
    with pytest.raises(StoreUnavailable) as raised:
        backend.run(lambda store: store.ping(), migrate=migrate)
    assert str(raised.value) == schema_problem(SCHEMA_VERSION + 1, floor)
    assert "upgrade the router" in str(raised.value)
    assert schema_record(backend) == before


@pytest.mark.parametrize("migrate", [False, True], ids=["checking", "migrating"])
def test_a_newer_schema_whose_new_steps_are_additive_is_used_as_it_is(
    backend: Backend, migrate: bool
) -> None:
    """A rollback one release back: this code reads and writes the newer layout."""
    migrated_by_the_next_release(backend, floor=floor_of(SCHEMA_VERSION))
    before = schema_record(backend)

    async def body(store: Store) -> None:
        await accept(store, incoming("k1"))
        (job,) = await claim_all(store, T0)
        await store.record([done(job, T0 + 1)], now=T0 + 1)
        detail = await store.get_job(job.id)
        assert detail is not None and detail.summary.status == Status.DONE

    backend.run(body, migrate=migrate)
    assert schema_record(backend) == before  # nothing of the newer release's record changed


def test_an_older_schema_is_refused_unless_migrating_then_upgraded(backend: Backend) -> None:
    backend.migrate_to(SCHEMA_VERSION - 1)
    with pytest.raises(StoreUnavailable) as raised:
        backend.run(lambda store: store.ping(), migrate=False)
    assert str(raised.value) == schema_problem(SCHEMA_VERSION - 1)
    backend.run(lambda store: store.ping())
    backend.run(lambda store: store.ping(), migrate=False)  # current now
    assert backend.layout() == LAYOUT
    applied = backend.sql("SELECT version FROM schema_version ORDER BY version")
    assert applied == [(number,) for number in range(1, SCHEMA_VERSION + 1)]


# A view on a column that step 3 removes: the step fails after it has already changed things.
BLOCKING_VIEW = {
    "sqlite": "CREATE VIEW old_jobs AS SELECT ruleset_version FROM jobs",
    "postgres": "CREATE VIEW old_jobs AS SELECT spec FROM jobs",
}


def test_a_failed_step_leaves_the_store_as_it_was(backend: Backend) -> None:
    backend.migrate_to(2)
    backend.sql(BLOCKING_VIEW[backend.name])
    before = backend.layout()
    with pytest.raises(StoreUnavailable) as raised:
        backend.run(lambda store: store.ping())
    message = str(raised.value)
    assert message.startswith("schema step 3 failed and the store was left as it was (")
    assert message.endswith("; fix the cause and run `router migrate` again")
    assert backend.layout() == before
    assert backend.sql("SELECT max(version) FROM schema_version") == [(2,)]
    backend.sql("DROP VIEW old_jobs")
    backend.run(lambda store: store.ping())
    assert backend.layout() == LAYOUT
