"""The console's reads on both stores (router.store.reads): filters, newest first, cursors,
searches inside records bounded per page, counters of the last hour and day, and hostile text
as a filter. Real SQLite files and real PostgreSQL databases (tests/store/conftest.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from router import wiring
from router.circuit import CircuitPolicy, Outcomes
from router.console import queries
from router.console.params import pause_request
from router.console.queries import Sources
from router.settings import Settings
from router.store import reads, rollups
from router.store.base import AttemptResult, EventQuery, JobQuery, Outcome, Status, Store
from tests.store.conftest import T0, Backend, accept, incoming, new_job
from tests.store.conftest import backend as backend  # the parametrised fixture: both stores

HOUR = 3600.0
DAY = 86400.0


def record(n: int, **data: Any) -> dict[str, Any]:
    return {
        "id": f"ev-{n}",
        "tableType": "PROFILE_TABLE",
        "tableId": 16 if n % 2 else "17",
        "operation": "UPDATE" if n % 3 else "DELETE",
        "data": {"profileId": 1000 + n, **data},
    }


async def fill(store: Store) -> None:
    """Ten records an hour apart, newest last: odd ones matched by crm (2 jobs each, on two
    destinations), every third by audit too, and the rest by nothing."""
    for n in range(10):
        jobs = []
        if n % 2:
            jobs += [new_job("crm", 0, destination="crm.example.com")]
            jobs += [new_job("crm", 1, destination="mail.example.com")]
        if n % 3 == 0 and n:
            jobs += [new_job("audit", 0, destination="log")]
        await accept(
            store,
            incoming(event_id=f"ev-{n}", record=record(n, note=f"value {n}"), jobs=jobs),
            now=T0 + n * HOUR,
        )


def test_jobs_newest_first_filtered_and_paged(backend: Backend) -> None:
    async def body(store: Store) -> None:
        await fill(store)
        everything = await reads.find_jobs_in(store, JobQuery(limit=500))
        assert len(everything) == 5 * 2 + 3
        seqs = [found.seq for found in everything]
        assert seqs == sorted(seqs, reverse=True)
        crm = await reads.find_jobs_in(store, JobQuery(rule="crm", limit=3))
        assert [f.job.event_id for f in crm] == ["ev-9", "ev-9", "ev-7"]
        rest = await reads.find_jobs_in(store, JobQuery(rule="crm", limit=3, before=crm[-1].seq))
        assert [f.job.event_id for f in rest] == ["ev-7", "ev-5", "ev-5"]
        mail = await reads.find_jobs_in(store, JobQuery(destination="mail.example.com"))
        assert {f.job.action_index for f in mail} == {1}
        window = JobQuery(since=T0 + 3 * HOUR, until=T0 + 6 * HOUR)
        assert {f.job.event_id for f in await reads.find_jobs_in(store, window)} == {
            "ev-3",
            "ev-5",
        }
        assert await reads.count_jobs_in(store, JobQuery(status=Status.PENDING)) == 13
        assert await reads.count_jobs_in(store, JobQuery(status=Status.DEAD, rule="crm")) == 0

    backend.run(body)


def test_records_by_index_and_by_search_inside_them(backend: Backend) -> None:
    async def body(store: Store) -> None:
        await fill(store)

        async def ids(**query: Any) -> list[str | None]:
            page = await reads.find_events_in(store, EventQuery(**query))
            return [event.event_id for event in page.events]

        assert await ids(event_id="ev-4") == ["ev-4"]
        assert await ids(unmatched=True) == ["ev-8", "ev-4", "ev-2", "ev-0"]
        assert await ids(rule="audit") == ["ev-9", "ev-6", "ev-3"]
        assert await ids(profile_id="1005") == ["ev-5"]
        assert await ids(table="17") == ["ev-8", "ev-6", "ev-4", "ev-2", "ev-0"]
        assert await ids(operation="DELETE") == ["ev-9", "ev-6", "ev-3", "ev-0"]
        assert await ids(text="value 7") == ["ev-7"]
        assert await ids(text="VALUE 7") == ["ev-7"]  # any case
        assert await ids(text="100%") == []  # a wildcard is searched as itself
        assert await ids(text="<script>'\x00\ud800") == []  # hostile text is only text
        assert await ids(rule="crm", text="value") == ["ev-9", "ev-7", "ev-5", "ev-3", "ev-1"]
        first = await reads.find_events_in(store, EventQuery(text="value", limit=4))
        assert [e.event_id for e in first.events] == ["ev-9", "ev-8", "ev-7", "ev-6"]
        assert first.next is not None
        second = await reads.find_events_in(
            store, EventQuery(text="value", limit=4, before=first.next)
        )
        assert [e.event_id for e in second.events] == ["ev-5", "ev-4", "ev-3", "ev-2"]
        found = await reads.event_in(store, first.events[0].id)
        assert found is not None
        event, jobs = found
        assert event.matched == ("crm", "audit")
        assert [(j.rule, j.action_index) for j in jobs] == [("crm", 0), ("crm", 1), ("audit", 0)]
        assert await reads.event_in(store, 10**9) is None

    backend.run(body)


def test_a_search_inside_records_reads_a_bounded_window(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reads, "SCAN_WINDOW", 4)

    async def body(store: Store) -> None:
        await fill(store)
        page = await reads.find_events_in(store, EventQuery(text="value 1"))
        assert page.events == []  # ev-1 is older than the window of 4
        assert page.searched_to is not None and page.next == page.searched_to
        pages = 1
        found: list[str | None] = []
        while page.next is not None and pages < 10:
            page = await reads.find_events_in(store, EventQuery(text="value 1", before=page.next))
            found += [e.event_id for e in page.events]
            pages += 1
        assert found == ["ev-1"]

    backend.run(body)


def test_counters_of_the_last_hour_and_day(backend: Backend) -> None:
    async def body(store: Store) -> None:
        await fill(store)
        now = T0 + 9 * HOUR + 60
        activity = await reads.activity_in(store, now=now, rules=["crm", "audit", "idle"])
        assert activity.rules_day["crm"].matched == 5
        assert activity.rules_day["crm"].jobs == 10
        assert activity.rules_day["crm"].pending == 10
        assert activity.rules_hour["crm"].matched == 1
        assert activity.rules_hour["audit"].jobs == 1
        assert "idle" not in activity.rules_day
        assert activity.rules_day["audit"].last == T0 + 9 * HOUR
        assert activity.destinations_day["mail.example.com"].jobs == 5
        assert activity.destinations_hour["log"].jobs == 1
        assert sum(n for _, n in activity.received_per_minute) == 1
        overview = await reads.activity_in(store, now=now)
        assert overview.destinations_day == activity.destinations_day

    backend.run(body)


async def settle_hours(store: Store, hours: int) -> float:
    """A record an hour apart for `hours` hours, each with a crm job (delivered; every third
    one dead) and a log job (delivered); the newest hour's jobs and one more old one stay
    pending. Returns a time 10 minutes into the hour after the last."""
    for n in range(hours):
        at = T0 + n * HOUR + 60
        jobs = [new_job("crm", 0, destination="crm.example.com")]
        jobs += [new_job("crm", 1, destination="log")]
        await accept(store, incoming(event_id=f"h-{n}", record=record(n), jobs=jobs), now=at)
    claimed = await store.claim(limit=1000, lease=60.0, now=T0 + hours * HOUR)
    keep = {f"h-{hours - 1}", "h-10"}  # the newest record's jobs, and an old one's
    results = [
        AttemptResult(
            job.id,
            job.lease_token,
            Outcome.DEAD if job.action_index == 0 and n % 3 == 0 else Outcome.DONE,
            T0 + hours * HOUR,
            0.1,
            200,
            "HTTP 410" if job.action_index == 0 and n % 3 == 0 else None,
        )
        for n, job in enumerate(claimed)
        if job.event_id not in keep
    ]
    await store.record(results, now=T0 + hours * HOUR)
    await store.release(
        [(job.id, job.lease_token) for job in claimed if job.event_id in keep],
        next_at=T0 + hours * HOUR,
    )
    return T0 + (hours - 1) * HOUR + 600


def counted(activity: Any) -> dict[str, Any]:
    return {
        name: getattr(activity, name)
        for name in ("rules_day", "rules_hour", "destinations_day", "destinations_hour")
    }


def test_the_hours_counted_once_give_the_counts_of_the_jobs(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The day's counters from counted hours equal the counters from the jobs themselves, and
    stay equal as jobs change after their hour was counted: a late delivery, a replay, a
    purge, an hour counted again."""

    async def body(store: Store) -> None:
        now = await settle_hours(store, 30)
        live = await reads.activity_in(store, now=now, rules=["crm"])
        assert live.rules_day["crm"].jobs == 2 * 24
        assert live.rules_day["crm"].pending == 4  # h-10's and the newest record's
        # The hours of the last day that ended 5 minutes ago.
        assert await store.roll_up(now=now, since=0.0) == 24
        assert await store.roll_up(now=now, since=0.0) == 0  # nothing new to count
        assert counted(await reads.activity_in(store, now=now, rules=["crm"])) == counted(live)

        async def check(at: float) -> None:
            truth = counted(await reads.activity_in(store, now=at, rules=["crm"]))
            # The same reads with no hour counted: every job read one by one.
            [marks] = await store.read_only([rollups.marked(store.dialect, 0, 2**40)])
            assert marks, "no hour is counted: the check would compare live with live"
            activity = reads.activity_of(
                await store.read_only(reads.activity(store.dialect, at) + last_crm), ["crm"]
            )
            assert truth == counted(activity)

        last_crm = [reads.last_match(store.dialect, "crm")]
        # A late delivery: h-10's pending jobs, settled hours after their hour was counted.
        now = T0 + 30 * HOUR + 1  # when they are due again
        waiting = await store.claim(limit=10, lease=60.0, now=now)
        old = [job for job in waiting if job.event_id == "h-10"]
        assert len(old) == 2
        await store.record(
            [AttemptResult(j.id, j.lease_token, Outcome.DONE, now, 0.1, 200) for j in old],
            now=now,
        )
        await check(now)
        # A replay of a dead job in a counted hour.
        dead_jobs = await reads.find_jobs_in(store, JobQuery(status=Status.DEAD, limit=500))
        assert await store.replay([dead_jobs[0].job.id], now=now) == [dead_jobs[0].job.id]
        await check(now)
        # An hour whose rows have grown is counted again, to the same counts.
        monkeypatch.setattr(rollups, "COMPACT", 1)
        assert await store.roll_up(now=now, since=0.0) > 0
        await check(now)
        monkeypatch.undo()
        # A purge of delivered jobs unmarks the hours it took jobs from: every hour had some
        # but the newest, whose jobs are still out (claimed above, not recorded).
        assert await store.purge(before=now + 1, dedupe_before=0.0) > 0
        [marks] = await store.read_only([rollups.marked(store.dialect, 0, 2**40)])
        assert [int(row[0]) for row in marks] == [rollups.hour_of(T0 + 29 * HOUR + 60)]
        later = now + 2 * HOUR
        assert await store.roll_up(now=later, since=0.0) > 0
        await check(later)
        # Days later, the hours the last day no longer reaches are forgotten, counts and marks.
        days_later = now + 3 * DAY
        await store.roll_up(now=days_later, since=0.0)
        horizon = rollups.hour_of(days_later - DAY) - int(HOUR)
        [marks] = await store.read_only([rollups.marked(store.dialect, 0, horizon - 1)])
        assert marks == []
        [counts] = await store.read_only([("SELECT count(*) FROM job_hours", [])])
        assert [tuple(row) for row in counts] == [(0,)]

    backend.run(body)


def test_live_ranges_cover_the_day_but_the_rolled_hours() -> None:
    now = 1_700_000_000.0 + 1234.5
    first, last = rollups.full_hours(now)
    assert first >= now - DAY and last + HOUR <= now
    assert rollups.live_ranges(now, []) == [(now - DAY, None)]
    every = list(range(first, last + 1, 3600))
    edges = [(now - DAY, float(first)), (float(last + 3600), None)]
    assert rollups.live_ranges(now, every) == edges
    hole = every[:5] + every[6:]
    assert rollups.live_ranges(now, hole) == [
        (now - DAY, float(first)),
        (float(every[5]), float(every[6])),
        (float(last + 3600), None),
    ]


def test_an_event_id_of_any_length_is_stored_and_found_by_its_index(backend: Backend) -> None:
    """PostgreSQL's index of event ids holds their first characters: an id too long for an
    index entry is still accepted (a push never fails on it) and found whole."""
    long_id = "é" * 5000 + "-tail"
    twin = "é" * 5000 + "-twin"

    async def body(store: Store) -> None:
        for n, event_id in enumerate((long_id, twin, "short")):
            found = incoming(event_id=event_id, record={"id": event_id, "n": n}, jobs=[])
            await accept(store, found, now=T0 + n)
        for event_id in (long_id, twin, "short"):
            page = await reads.find_events_in(store, EventQuery(event_id=event_id))
            assert [e.event_id for e in page.events] == [event_id]
            assert page.next is None and page.searched_to is None

    backend.run(body)


def test_every_serving_process_counts_the_hours_in_the_background(backend: Backend) -> None:
    """serve and `router worker` run wiring.roll_up_loop: without being asked, it counts the
    hours of the last day that have ended (here without jobs: each is marked, with no counts)."""

    async def body(store: Store) -> None:
        stop = asyncio.Event()
        settings = Settings(retention=10 * 365 * DAY)  # type: ignore[call-arg]
        loop = asyncio.create_task(wiring.roll_up_loop(store, settings, stop))
        try:
            deadline = time.monotonic() + 10
            marked: list[int] = []
            # One transaction an hour: poll until the last of them is in.
            while marked != rollups.to_roll(time.time(), 0.0) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                [marks] = await store.read_only([rollups.marked(store.dialect, 0, 2**40)])
                marked = [int(row[0]) for row in marks]
        finally:
            stop.set()
            await asyncio.wait_for(loop, 10)
        assert marked == rollups.to_roll(time.time(), 0.0)

    backend.run(body)


def test_pauses_and_circuits_as_the_console_shows_and_steers_them(backend: Backend) -> None:
    """Pause and resume through the console's queries: what the overview, the rules and
    /pauses say of them, on both stores, with names no database column could hold as sent."""

    async def body(store: Store) -> None:
        await fill(store)
        now = T0 + 9 * HOUR + 60
        src = Sources(store, lambda: None, clock=lambda: now)
        assert await queries.pauses(src) == {"pauses": [], "circuits": []}
        await store.report_outcomes(
            {"mail.example.com": Outcomes(trailing_failures=1)},
            policy=CircuitPolicy(failures=1),
            now=now,
        )
        hostile = pause_request({"rule": "<script>\x00\ud800"})
        assert hostile == ("rule", "<script>\ufffd?")  # storable, and still text
        assert await queries.pause(src, *hostile) == {
            "kind": "rule",
            "target": "<script>\ufffd?",
            "paused": True,
        }
        held = pause_request({"destination": "LOG"})
        assert (await queries.pause(src, *held))["paused"] is True
        assert (await queries.pause(src, *held))["paused"] is False  # already
        listed = await queries.pauses(src)
        assert listed["pauses"] == [  # oldest first; then by kind and target
            {"kind": "destination", "target": "log", "since": queries.when(now)},
            {"kind": "rule", "target": "<script>\ufffd?", "since": queries.when(now)},
        ]
        assert listed["circuits"] == [{"destination": "mail.example.com", "state": "open"}]
        overview = await queries.overview(src)
        assert overview["paused"] == listed["pauses"]
        assert overview["circuits"] == listed["circuits"]
        rows = {d["destination"]: d for d in overview["destinations"]}
        assert (rows["log"]["paused_by"], rows["log"]["pausable"]) == ("log", True)
        mail = rows["mail.example.com"]
        assert (mail["circuit"], mail["paused_by"]) == ("open", None)
        assert mail["pausable"] is False  # a bare host is no key `pause` takes: its rule is
        resumed = await queries.resume(src, *held)
        assert resumed == {"kind": "destination", "target": "log", "resumed": True, "jobs": 3}
        assert (await queries.resume(src, *held))["resumed"] is False
        assert (await queries.resume(src, *hostile))["resumed"] is True
        assert (await queries.pauses(src))["pauses"] == []

    backend.run(body)
