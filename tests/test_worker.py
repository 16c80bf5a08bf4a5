"""The worker against a real SQLite store and real HTTP sinks: isolation between destinations,
no churn on a saturated destination, render failures, graceful stop."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from router.actions.registry import build_deliverers, destination_of
from router.excerpts import EXCERPT_CHARS
from router.retry import RetryPolicy
from router.rulefiles.loader import load_rules
from router.rules import Action
from router.settings import Settings
from router.store.base import IncomingRecord, Job, Mode, NewJob, Status
from router.store.sqlite import SQLiteStore
from router.template_limits import RenderLimits
from router.worker import Worker, WorkerLimits
from tests.sinks import HttpSink, Reply


class CountingStore(SQLiteStore):
    """The real SQLite store, counting what the worker asks of it."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.released = 0
        self.claims = 0  # claims that brought jobs (an idle worker's polls find none)
        self.excluded: list[Collection[str]] = []

    async def release(self, claims: Sequence[tuple[str, str]], *, next_at: float) -> None:
        self.released += len(claims)
        await super().release(claims, next_at=next_at)

    async def claim(
        self,
        *,
        limit: int,
        lease: float,
        now: float,
        exclude: Collection[str] = (),
        destination: str | None = None,
    ) -> list[Job]:
        self.excluded.append(list(exclude))
        jobs = await super().claim(
            limit=limit, lease=lease, now=now, exclude=exclude, destination=destination
        )
        self.claims += bool(jobs)
        return jobs


def action_for(tmp: Path, name: str, toml_action: str) -> Action:
    directory = tmp / f"rules-{name}"
    directory.mkdir()
    (directory / "r.toml").write_text(f'[[rule]]\nname = "{name}"\n[[rule.action]]\n{toml_action}')
    return load_rules(directory).rules[0].actions[0]


async def backlog(
    store: SQLiteStore, action: Action, rule: str, count: int, *, mode: Mode = Mode.LIVE
) -> None:
    records = [
        IncomingRecord(
            event_id=f"{rule}-{n}",
            dedupe_key=None,
            record={"id": f"{rule}-{n}", "data": {"n": n}},
            matched=(rule,),
            jobs=(
                NewJob(
                    uuid.uuid4().hex,
                    rule,
                    0,
                    action.type,
                    action.spec,
                    destination_of(action),
                    mode,
                ),
            ),
        )
        for n in range(count)
    ]
    await store.accept(records, ruleset_version="t", dedupe_window=0, now=time.time())


def make_worker(
    store: SQLiteStore,
    *,
    concurrency: int,
    per_host: int,
    lease: float = 60.0,
    backoff: float = 0.01,
    render_limits: RenderLimits | None = None,
    secrets: Mapping[str, str] | None = None,
) -> Worker:
    settings = Settings(retry_base_delay=backoff, retry_max_delay=max(backoff, 0.05))
    return Worker(
        store,
        build_deliverers(settings),
        RetryPolicy.from_settings(settings),
        secrets=secrets or {},
        limits=WorkerLimits(
            concurrency=concurrency, per_host=per_host, lease=lease, drain_grace=10
        ),
        render_limits=render_limits,
    )


async def run_worker(worker: Worker, stop: asyncio.Event, *, drain: bool = False) -> None:
    for deliverer in worker.deliverers.values():
        await deliverer.start()
    try:
        await worker.run(stop, drain=drain)
    finally:
        for deliverer in worker.deliverers.values():
            await deliverer.close()


def test_a_slow_destination_does_not_hold_up_another(tmp_path: Path) -> None:
    with HttpSink(default=Reply(200, delay=1.0)) as slow, HttpSink() as fast:
        slow_action = action_for(tmp_path, "slow", f'type = "http"\nurl = "{slow.url("/s")}"')
        fast_action = action_for(tmp_path, "fast", f'type = "http"\nurl = "{fast.url("/f")}"')

        async def scenario() -> tuple[int, int]:
            store = CountingStore(f"sqlite:///{tmp_path / 'w.db'}")
            await store.open()
            await backlog(store, slow_action, "slow", 30)  # queued first: oldest due
            await backlog(store, fast_action, "fast", 10)
            stop = asyncio.Event()
            task = asyncio.create_task(
                run_worker(make_worker(store, concurrency=8, per_host=2), stop)
            )
            await fast.wait(10)
            slow_seen = len(slow.requests)
            stop.set()
            await task
            released = store.released
            await store.close()
            return slow_seen, released

        slow_seen, released = asyncio.run(scenario())
        # Every fast job arrived while the slow destination was still far from done.
        assert slow_seen < 30
        # The saturated destination was skipped by later claims, not churned through the store.
        assert released <= 30


def test_a_saturated_destination_drains_without_churn(tmp_path: Path) -> None:
    with HttpSink(default=Reply(200, delay=0.005)) as sink:
        action = action_for(tmp_path, "one", f'type = "http"\nurl = "{sink.url("/x")}"')

        async def scenario() -> tuple[int, CountingStore]:
            store = CountingStore(f"sqlite:///{tmp_path / 'w.db'}")
            await store.open()
            await backlog(store, action, "one", 300)
            worker = make_worker(store, concurrency=64, per_host=4)
            await run_worker(worker, asyncio.Event(), drain=True)
            stats = await store.stats(now=time.time())
            await store.close()
            return stats.pending, store

        pending, store = asyncio.run(scenario())
        assert pending == 0
        assert len(sink.requests) == 300
        # Only the first claim brought more than the destination could take (64 claimed, 12
        # held); after that its jobs came in refills of at least its 4 slots, never released.
        assert store.released == 64 - 12
        assert store.claims <= 2 * 300 / 4
        host = sink.url("/").split("//")[1].rstrip("/")
        assert any(host in excluded for excluded in store.excluded)


def test_a_job_that_cannot_render_is_dead_at_once(tmp_path: Path) -> None:
    action = action_for(tmp_path, "bad", 'type = "log"\nmessage = "{{ data.missing.deeper }}"')

    async def scenario() -> list[Status]:
        store = SQLiteStore(f"sqlite:///{tmp_path / 'w.db'}")
        await store.open()
        await backlog(store, action, "bad", 1)
        await run_worker(make_worker(store, concurrency=4, per_host=4), asyncio.Event(), drain=True)
        jobs = await store.list_jobs()
        detail = await store.get_job(jobs[0].id)
        await store.close()
        assert detail is not None and "cannot render" in (detail.summary.last_error or "")
        return [job.status for job in jobs]

    assert asyncio.run(scenario()) == [Status.DEAD]


def test_a_shadow_job_is_rendered_and_recorded_never_sent(tmp_path: Path) -> None:
    with HttpSink() as sink:
        sent = action_for(tmp_path, "sent", f'type = "http"\nurl = "{sink.url("/live")}"')
        tried = action_for(
            tmp_path, "tried", f'type = "http"\nurl = "{sink.url("/shadow")}/{{{{ data.n }}}}"'
        )
        broken = action_for(tmp_path, "broken", 'type = "log"\nmessage = "{{ data.nope.x }}"')

        async def scenario() -> dict[str, tuple[Status, str | None]]:
            store = SQLiteStore(f"sqlite:///{tmp_path / 'w.db'}")
            await store.open()
            await backlog(store, sent, "sent", 1)
            await backlog(store, tried, "tried", 3, mode=Mode.SHADOW)
            await backlog(store, broken, "broken", 1, mode=Mode.SHADOW)
            worker = make_worker(store, concurrency=4, per_host=1)
            await run_worker(worker, asyncio.Event(), drain=True)
            jobs = await store.list_jobs(limit=100)
            await store.close()
            metric = worker.metrics.registry.get_sample_value
            labels = {"action": "http", "outcome": "shadow", "mode": "shadow"}
            assert metric("router_deliveries_total", labels) == 3
            labels = {"action": "http", "outcome": "done", "mode": "live"}
            assert metric("router_deliveries_total", labels) == 1
            return {f"{job.rule}-{job.event_id}": (job.status, job.last_error) for job in jobs}

        outcome = asyncio.run(scenario())
        assert [request.path for request in sink.requests] == ["/live"]
        assert outcome["sent-sent-0"] == (Status.DONE, None)
        assert {outcome[f"tried-tried-{n}"] for n in range(3)} == {(Status.SHADOW, None)}
        status, error = outcome["broken-broken-0"]
        assert status is Status.SHADOW
        assert error is not None and error.startswith("cannot render: template for message")


def test_stop_lets_deliveries_in_flight_finish(tmp_path: Path) -> None:
    with HttpSink(default=Reply(200, delay=0.5)) as sink:
        action = action_for(tmp_path, "one", f'type = "http"\nurl = "{sink.url("/x")}"')

        async def scenario() -> tuple[int, int]:
            store = SQLiteStore(f"sqlite:///{tmp_path / 'w.db'}")
            await store.open()
            await backlog(store, action, "one", 20)
            stop = asyncio.Event()
            task = asyncio.create_task(
                run_worker(make_worker(store, concurrency=8, per_host=4), stop)
            )
            await sink.wait(1)
            stop.set()
            await task
            done = len(await store.list_jobs(status=Status.DONE, limit=100))
            pending = (await store.stats(now=time.time())).pending
            await store.close()
            return done, pending

        done, pending = asyncio.run(scenario())
        # What was started was finished and recorded; the rest is pending, not lost or dead.
        assert done == len(sink.requests) >= 1
        assert done + pending == 20


def test_a_delivery_longer_than_the_lease_is_not_claimed_again(tmp_path: Path) -> None:
    # Leases are renewed while a job is held, so neither this worker nor another claims it
    # a second time, however long the destination takes.
    with HttpSink(default=Reply(200, delay=1.5)) as sink:
        action = action_for(
            tmp_path, "slow", f'type = "http"\nurl = "{sink.url("/x")}"\ntimeout = 5'
        )

        async def scenario() -> list[int]:
            store = SQLiteStore(f"sqlite:///{tmp_path / 'w.db'}")
            await store.open()
            await backlog(store, action, "slow", 3)
            worker = make_worker(store, concurrency=1, per_host=1, lease=0.5)
            other = make_worker(store, concurrency=4, per_host=4, lease=0.5)
            stop = asyncio.Event()
            others = asyncio.create_task(run_worker(other, stop))
            await run_worker(worker, asyncio.Event(), drain=True)
            stop.set()
            await others
            jobs = await store.list_jobs()
            await store.close()
            return [job.attempts for job in jobs if job.status is Status.DONE]

        attempts = asyncio.run(scenario())
        assert attempts == [1, 1, 1]
        assert len(sink.requests) == 3
        assert len({r.headers["Idempotency-Key"] for r in sink.requests}) == 3


def test_a_secret_missing_in_this_process_retries_instead_of_killing_the_job(
    tmp_path: Path,
) -> None:
    action = action_for(
        tmp_path,
        "crm",
        'type = "http"\nurl = "http://127.0.0.1:9/x"\n'
        'headers = { Authorization = "Bearer {{ secrets.CRM_TOKEN }}" }',
    )

    async def scenario() -> tuple[Status, int, str]:
        store = SQLiteStore(f"sqlite:///{tmp_path / 'w.db'}")
        await store.open()
        await backlog(store, action, "crm", 1)
        worker = make_worker(store, concurrency=1, per_host=1, backoff=3600)
        await run_worker(worker, asyncio.Event(), drain=True)
        (job,) = await store.list_jobs()
        await store.close()
        return job.status, job.attempts, job.last_error or ""

    status, attempts, error = asyncio.run(scenario())
    assert (status, attempts) == (Status.PENDING, 1)
    assert "secret CRM_TOKEN is not set" in error


# A secret with what JSON escapes and a URL encodes: an echo may carry it in any of those forms.
ECHOED_SECRET = 'S3cr3t "crm" / key+=&'
ECHO_ACTION = """type = "http"
url = "{url}"
headers = {{ Authorization = "Bearer {{{{ secrets.CRM_TOKEN }}}}" }}
body = '{{"token": {{{{ secrets.CRM_TOKEN | tojson }}}}, "n": {{{{ data.n }}}}}}'
"""


async def history(store: SQLiteStore) -> list[tuple[str, int | None, str | None]]:
    """(outcome, status code, response) of every attempt of every job, oldest job first."""
    seen = []
    for job in reversed(await store.list_jobs(limit=1000)):
        detail = await store.get_job(job.id)
        assert detail is not None
        seen += [(a.outcome.value, a.status_code, a.response) for a in detail.history]
    return seen


def test_an_answer_echoing_the_request_is_kept_with_its_secrets_masked(tmp_path: Path) -> None:
    with HttpSink(Reply(400, echo=True)) as sink:
        action = action_for(tmp_path, "crm", ECHO_ACTION.format(url=sink.url("/contacts")))

        async def scenario() -> list[tuple[str, int | None, str | None]]:
            store = SQLiteStore(f"sqlite:///{tmp_path / 'w.db'}")
            await store.open()
            await backlog(store, action, "crm", 1)
            worker = make_worker(
                store, concurrency=1, per_host=1, secrets={"CRM_TOKEN": ECHOED_SECRET}
            )
            await run_worker(worker, asyncio.Event(), drain=True)
            seen = await history(store)
            await store.close()
            return seen

        ((outcome, status, response),) = asyncio.run(scenario())
        (request,) = sink.requests
    assert request.headers["Authorization"] == f"Bearer {ECHOED_SECRET}"  # it was sent...
    assert (outcome, status) == ("dead", 400)
    assert response is not None
    assert "Authorization: Bearer <secret CRM_TOKEN>\r\n" in response  # ...and is masked
    assert response.endswith('{"token": "<secret CRM_TOKEN>", "n": 0}')
    assert "S3cr3t" not in response
    for stored in tmp_path.glob("w.db*"):  # nor anywhere in the store's files
        assert b"S3cr3t" not in stored.read_bytes()


def test_the_answer_of_every_attempt_is_kept_bounded(tmp_path: Path) -> None:
    with HttpSink() as sink:
        sink.script(Reply(503, body=b'{"retry": "soon"}'), Reply(200, body="é".encode() * 5000))
        action = action_for(tmp_path, "crm", f'type = "http"\nurl = "{sink.url("/c")}"')

        async def scenario() -> list[tuple[str, int | None, str | None]]:
            store = SQLiteStore(f"sqlite:///{tmp_path / 'w.db'}")
            await store.open()
            await backlog(store, action, "crm", 1)
            worker = make_worker(store, concurrency=1, per_host=1)
            deadline = time.monotonic() + 10
            while len(sink.requests) < 2:  # a drain may end before the retry is due
                assert time.monotonic() < deadline, "the retry was not made in time"
                await run_worker(worker, asyncio.Event(), drain=True)
            seen = await history(store)
            await store.close()
            return seen

        seen = asyncio.run(scenario())
    assert seen == [("retry", 503, '{"retry": "soon"}'), ("done", 200, "é" * EXCERPT_CHARS)]


# A billion empty loop iterations: never done within a time limit.
SPIN = (
    "{% set s = 'x' * 1000 %}{% for a in s %}{% for b in s %}{% for c in s %}"
    "{% endfor %}{% endfor %}{% endfor %}"
)


def test_a_runaway_template_is_dead_at_its_limit_and_never_stalls_the_loop(
    tmp_path: Path,
) -> None:
    with HttpSink() as sink:
        spin = action_for(tmp_path, "spin", f'type = "log"\nmessage = "{SPIN}"')
        fast = action_for(tmp_path, "fast", f'type = "http"\nurl = "{sink.url("/f")}"')

        async def scenario() -> tuple[float, list[Status], set[str | None]]:
            store = SQLiteStore(f"sqlite:///{tmp_path / 'w.db'}")
            await store.open()
            await backlog(store, spin, "spin", 3)  # queued first: rendered first
            await backlog(store, fast, "fast", 5)
            worker = make_worker(
                store, concurrency=8, per_host=4, render_limits=RenderLimits(timeout=0.3)
            )
            rendering = asyncio.Event()
            longest = 0.0

            async def watch_the_loop() -> None:
                # How late the loop wakes a 10 ms timer while the worker renders.
                nonlocal longest
                while not rendering.is_set():
                    before = time.monotonic()
                    await asyncio.sleep(0.01)
                    longest = max(longest, time.monotonic() - before)

            watcher = asyncio.create_task(watch_the_loop())
            await run_worker(worker, asyncio.Event(), drain=True)
            rendering.set()
            await watcher
            jobs = await store.list_jobs(rule="spin")
            await store.close()
            return longest, [job.status for job in jobs], {job.last_error for job in jobs}

        longest, statuses, errors = asyncio.run(scenario())
    # Rendered on the loop, each 0.3 s render would have held it for 0.3 s.
    assert longest < 0.15
    assert statuses == [Status.DEAD] * 3
    assert errors == {
        "cannot render: template for message: rendering took longer than 0.3 s "
        "(ROUTER_TEMPLATE_TIMEOUT); simplify the template or raise the limit"
    }
    assert len(sink.requests) == 5
