"""Delivery: claim -> render -> deliver -> record, with bounded concurrency.

Concurrency is bounded overall and per destination (an HTTP host, the SMTP server, the log).
Claims skip destinations whose slots are all busy; jobs one claim brings beyond a destination's
slots wait in a short local queue, and beyond that go back to the store. So a slow or dead
destination never fills the worker and holds up the others.

A shadow rule's job is rendered like any other (so its render errors show) and recorded as
`shadow`, with the error if it could not be rendered; it is never sent and takes no slot of its
destination.

Templates render off the event loop, in one thread of the worker's own: the jobs of a claim
in as few calls as their render time allows, each action under the RenderLimits. So a slow
template delays deliveries, never the intake or the health checks of the same process.

An action with `enrich` renders later, in its delivery slot: what it fetches (an ACTITO
profile) is fetched on the event loop, under the fetching client's own limits, and then the
action renders in the render thread with it. Such jobs count against the API they fetch from
(router.actions.registry.destination_of), so waiting for it holds that one destination's
slots, never the whole worker.

The jobs of a batch action go to the Batcher (router.batches) as they are claimed: it sends
them many records to a request, and records each job as this worker records any other.

Each attempt that got an answer is recorded with its excerpt (router.excerpts), the values of
the secrets its action's templates read masked in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from router.actions.base import Delivered, Deliverer, Enricher, delivered
from router.actions.registry import enrichments_of, parse_action, render, secrets_of
from router.batches import Batcher, BatchHooks, render_batch
from router.circuit import (
    OPEN,
    CircuitPolicy,
    OnTransition,
    Outcomes,
    counts_against,
    log_and_count,
)
from router.exceptions import (
    DeliveryFailed,
    MissingSecret,
    RenderError,
    RetryLater,
    StoreUnavailable,
)
from router.excerpts import Excerpt
from router.metrics import Metrics
from router.retry import Decision, RetryPolicy
from router.rules import Action, spec_hash
from router.sandbox import EnvSecrets
from router.store.base import AttemptResult, Job, Mode, Outcome, Store
from router.store.controls import SLOT_MARGIN
from router.template_limits import RenderLimits
from router.templating import build_context

log = logging.getLogger("router.worker")

CLAIM_BATCH = 200  # most jobs claimed in one store round trip
CLAIM_WHEN_FREE = 8  # while busy, claim once 1/8 of the slots are free
IDLE_WAIT = 1.0  # seconds an idle worker waits before looking for due jobs again
RETRY_SLACK = 0.005  # seconds past a retry's time before claiming it: the store compares `<=`
HOST_QUEUE_FACTOR = 2  # jobs queued here per busy destination, as a multiple of its slots
STORE_RETRY = 1.0  # seconds between attempts to reach an unavailable store
ACTION_CACHE_SIZE = 4096
# Rendering is CPU work under the GIL: more threads would not render faster, and one keeps the
# jobs of a claim in order and leaves the event loop a fair share of the interpreter.
RENDER_THREADS = 1
# Seconds of rendering in one thread call before the rendered jobs are handed to the loop:
# cheap renders go in one call per claim, and a slow template holds up the rest of its claim
# for no more than this (plus its own time limit).
RENDER_SLICE = 0.05


@dataclass
class _Prepared:
    job: Job
    action: Action
    rendered: dict[str, Any]
    host: str
    enrich: tuple[str, ...] = ()  # fetch these, then render, when its delivery starts


@dataclass
class _Unrenderable:
    """A job that could not be rendered: dead at once, or retried when `retry`."""

    job: Job
    action: Action | None
    started: float
    error: str
    retry: bool = False


@dataclass
class _Shadowed:
    """A shadow job, rendered (or not: `error` says why): recorded, never sent."""

    job: Job
    started: float
    error: str | None


@dataclass
class WorkerLimits:
    concurrency: int = 64
    per_host: int = 8
    lease: float = 60.0
    drain_grace: float = 30.0  # seconds in-flight deliveries get to finish on shutdown


@dataclass
class _HostState:
    active: int = 0
    waiting: deque[_Prepared] = field(default_factory=deque)


class Worker:
    """Delivers due jobs until stopped. Inject the store, deliverers, policy and clock."""

    def __init__(
        self,
        store: Store,
        deliverers: Mapping[str, Deliverer],
        policy: RetryPolicy,
        *,
        secrets: Mapping[str, str],
        limits: WorkerLimits | None = None,
        render_limits: RenderLimits | None = None,
        metrics: Metrics | None = None,
        circuit: CircuitPolicy | None = None,
        on_transition: OnTransition | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.deliverers = deliverers
        self.policy = policy
        self.secrets = EnvSecrets(dict(secrets))
        self.limits = limits or WorkerLimits()
        self.render_limits = render_limits or RenderLimits()
        self.metrics = metrics or Metrics()
        self.circuit = circuit or CircuitPolicy()
        # Where circuit transitions go (router.circuit): logs and metrics unless told otherwise.
        self.on_transition = on_transition or log_and_count(self.metrics)
        self.clock = clock
        self._outcomes: dict[str, Outcomes] = {}  # per destination, since the last report
        self._hosts: defaultdict[str, _HostState] = defaultdict(_HostState)
        self._active = 0
        self._waiting = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._results: list[AttemptResult] = []
        self._flushing: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._actions: dict[str, Action] = {}
        self._backlogged: set[str] = set()  # destinations with more due jobs than room here
        self._look = True  # whether a general claim may find due jobs
        self._next_retry: float | None = None  # earliest retry this worker scheduled
        self._held: dict[str, str] = {}  # job id -> lease token, for jobs claimed, not finished
        self._renderer: ThreadPoolExecutor | None = None
        # What deliverers' clients can fetch for `enrich`, by name.
        self._enrichers: dict[str, Enricher] = {
            name: enricher for d in deliverers.values() for name, enricher in d.enrichers().items()
        }
        self._batches = Batcher(
            BatchHooks(
                action_of=self._action,
                render=self._render_batch,
                deliver=self._deliver_batch,
                finish=self._finish,
                decide=self._decide,
                changed=self._batch_sent,
                held_back=self._failing,
                give_back=self._give_back,
                take_slot=self._take_slot,
                free_slot=self._free_slot,
                per_host=self.limits.per_host,
                clock=clock,
            )
        )
        self._batches_sent = 0  # batches finished: each may have made room for a claim
        self.delivered = 0  # attempts finished (any outcome), for tests and logs

    async def run(self, stop: asyncio.Event, *, drain: bool = False) -> None:
        """Work until `stop` is set (or, with drain=True, until nothing is due or in flight),
        then let in-flight deliveries finish within the grace period."""
        self._look = True  # a run starts by looking, whatever the last one found
        renewing = asyncio.create_task(self._renew_leases())
        self._renderer = ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="router-render")
        try:
            while not stop.is_set():
                if self._results and self._flushing is None:  # an earlier record() failed
                    self._flushing = asyncio.create_task(self._flush())
                try:
                    claimed = await self._refill() + await self._claim()
                except StoreUnavailable as exc:
                    log.warning("cannot claim jobs: %s", exc)
                    await _first_of(stop.wait(), asyncio.sleep(STORE_RETRY))
                    continue
                if claimed:
                    continue
                # Recording may make jobs due (the next of an order key), and a batch sent
                # makes room at its destination: drained only once every result is recorded,
                # a claim after that found nothing, and every gathered batch went out.
                idle = self._active == 0 and self._waiting == 0 and self._flushing is None
                if drain and idle and not self._results:
                    if self._look:  # a claim may find more: look before waiting
                        continue
                    if not self._batches.held:
                        break
                    if not self._batches.busy():  # else a batch being sent makes room first
                        self._batches.flush()  # nothing more is due: send what is gathered
                self._wake.clear()
                await _first_of(self._new_work(), self._wake.wait(), stop.wait())
        finally:
            try:
                await self._shutdown()  # leases stay renewed while in-flight work drains
            finally:
                renewing.cancel()
                await asyncio.gather(renewing, return_exceptions=True)
                self._renderer.shutdown(wait=False)
                self._renderer = None

    async def _renew_leases(self) -> None:
        """Keep the leases of held jobs alive: a delivery may outlast one lease (a long
        timeout, a wait in a busy destination's queue) and must not be claimed again."""
        every = self.limits.lease / 3
        while True:
            await asyncio.sleep(every)
            if not self._held:
                continue
            try:
                await self.store.renew(
                    list(self._held.items()), until=self.clock() + self.limits.lease
                )
            except StoreUnavailable as exc:
                log.warning("cannot renew %d lease(s): %s", len(self._held), exc)

    async def _new_work(self) -> None:
        # Wake for new jobs, for the earliest retry this worker scheduled, or to poll (jobs
        # of other processes, retries scheduled elsewhere).
        wait = IDLE_WAIT
        if self._next_retry is not None:
            wait = min(wait, max(0.0, self._next_retry - self.clock()) + RETRY_SLACK)
        await self.store.wait_for_work(wait)
        if self._next_retry is not None and self._next_retry <= self.clock():
            self._next_retry = None
        self._look = True  # new jobs, or time for due retries: look again

    async def _claim(self) -> int:
        """Claim due jobs for every destination that is neither busy nor backlogged, when a
        claim may find some (not after every delivery: that is what _look saves)."""
        room = self.limits.concurrency - self._active - self._waiting
        if room <= 0 or not self._look:
            return 0
        if self._active and room < self.limits.concurrency // CLAIM_WHEN_FREE:
            return 0  # wait for a few more slots: one claim for several, not one each
        limit = min(room, CLAIM_BATCH)
        busy = [key for key, host in self._hosts.items() if host.active >= self.limits.per_host]
        busy += [key for key in self._outcomes if self._failing(key)]
        busy += self._batches.busy()
        sent = self._batches_sent
        jobs = await self.store.claim(
            limit=limit,
            lease=self.limits.lease,
            now=self.clock(),
            exclude=[*busy, *self._backlogged],
        )
        # A full claim: there may be more; so may there be if a batch was sent meanwhile (its
        # destination, left out of this claim, has room again).
        self._look = len(jobs) == limit or self._batches_sent != sent
        await self._admit(jobs)
        return len(jobs)

    async def _refill(self) -> int:
        """Top up the local queue of each backlogged destination (one that had more due jobs
        than it could take) with a claim of its own jobs, once half of its queue is free."""
        claimed = 0
        capacity = self._destination_capacity
        for key in list(self._backlogged):
            host = self._hosts.get(key)
            held = host.active + len(host.waiting) if host else 0
            if capacity - held < self.limits.per_host:
                continue
            jobs = await self.store.claim(
                limit=capacity - held,
                lease=self.limits.lease,
                now=self.clock(),
                destination=key,
            )
            if len(jobs) < capacity - held:
                self._backlogged.discard(key)  # its backlog is in hand
            await self._admit(jobs)
            claimed += len(jobs)
        return claimed

    @property
    def _destination_capacity(self) -> int:
        """Jobs one destination may hold here: its slots plus a short local queue."""
        return self.limits.per_host * (1 + HOST_QUEUE_FACTOR)

    async def _admit(self, jobs: list[Job]) -> None:
        # Held from the claim on: their leases are renewed while they wait to be rendered.
        for job in jobs:
            self._held[job.id] = job.lease_token
        loop = asyncio.get_running_loop()
        pending = self._batches.take(jobs)  # batch actions' jobs go out in batches
        while pending:
            rendered, pending = await loop.run_in_executor(
                self._renderer, self._render_some, pending
            )
            await self._place(rendered)

    async def _place(self, rendered: list[_Prepared | _Unrenderable | _Shadowed]) -> None:
        """Start each rendered job, queue it, or hand it back to the store; record the jobs
        that could not be rendered, and the shadow jobs (which take no destination's slot)."""
        release: list[tuple[str, str]] = []
        for prepared in rendered:
            if isinstance(prepared, _Unrenderable):
                self._unrenderable(prepared)
                continue
            if isinstance(prepared, _Shadowed):
                job = prepared.job
                self._finish(job, None, Outcome.SHADOW, prepared.started, error=prepared.error)
                continue
            job = prepared.job
            host = self._hosts[prepared.host]
            if host.active < self.limits.per_host:
                self._start(prepared)
            elif host.active + len(host.waiting) < self._destination_capacity:
                host.waiting.append(prepared)
                self._waiting += 1
            else:
                release.append((job.id, job.lease_token))
                del self._held[job.id]
                self._backlogged.add(prepared.host)
        if release:
            # Due again at once: from now on this destination is refilled by claims of its
            # own, and another worker with free slots may take these meanwhile.
            await self.store.release(release, next_at=self.clock())

    def _render_some(
        self, jobs: list[Job]
    ) -> tuple[list[_Prepared | _Unrenderable | _Shadowed], list[Job]]:
        """In the render thread: render jobs in order until RENDER_SLICE has passed; returns
        them and the jobs left. Touches nothing the event loop uses but the action cache."""
        rendered: list[_Prepared | _Unrenderable | _Shadowed] = []
        until = time.monotonic() + RENDER_SLICE
        for index, job in enumerate(jobs):
            started = self.clock()
            prepared = self._prepare(job)
            if job.mode is Mode.SHADOW:  # rendered as a live job would be, then never sent
                error = prepared.error if isinstance(prepared, _Unrenderable) else None
                rendered.append(_Shadowed(job, started, error))
            else:
                rendered.append(prepared)
            if time.monotonic() > until:
                return rendered, jobs[index + 1 :]
        return rendered, []

    def _prepare(self, job: Job) -> _Prepared | _Unrenderable:
        """Rebuild the action from the job's stored spec and render it; a job that cannot be
        rendered is dead at once (retrying cannot change the record or the spec)."""
        started = self.clock()
        try:
            action = self._action(job.spec)
        except ValueError as exc:
            return _Unrenderable(job, None, started, f"invalid action: {exc}")
        fetched = enrichments_of(action)
        if fetched:  # rendered in its delivery slot, once what it needs is fetched
            return _Prepared(job, action, {}, job.destination, enrich=fetched)
        return self._render(job, action, started, {})

    def _render(
        self, job: Job, action: Action, started: float, fetched: Mapping[str, Any]
    ) -> _Prepared | _Unrenderable:
        """In the render thread: render `action` for `job`, with what was `fetched` for it."""
        try:
            with self.render_limits.applied():
                context = build_context(
                    job.record,
                    rule=job.rule,
                    delivery_id=job.id,
                    secrets=self.secrets,
                    enrichments=fetched,
                )
                rendered = render(action, context)
            rendered["rule"], rendered["event_id"] = job.rule, job.event_id
        except MissingSecret as exc:  # this process is misconfigured: retry, do not give up
            return _Unrenderable(job, action, started, f"cannot render: {exc}", retry=True)
        except (RenderError, ValueError) as exc:
            return _Unrenderable(job, action, started, f"cannot render: {exc}")
        except Exception as exc:  # a bug in rendering must not lose the job: retry it
            log.exception("rendering crashed", extra={"delivery_id": job.id, "rule": job.rule})
            error = f"internal error: {type(exc).__name__}"
            return _Unrenderable(job, action, started, error, retry=True)
        return _Prepared(job, action, rendered, job.destination)

    def _unrenderable(self, failed: _Unrenderable) -> None:
        if failed.action is None:
            self._finish(failed.job, None, Outcome.DEAD, failed.started, error=failed.error)
        elif failed.retry:
            self._failed(failed.job, failed.action, failed.started, RetryLater(failed.error))
        else:
            self._finish(
                failed.job, failed.action, Outcome.DEAD, failed.started, error=failed.error
            )

    def _action(self, spec: Mapping[str, Any]) -> Action:
        key = spec_hash(spec)
        action = self._actions.get(key)
        if action is None:
            if len(self._actions) >= ACTION_CACHE_SIZE:
                self._actions.clear()
            action = self._actions[key] = parse_action(spec)
        return action

    def _start(self, prepared: _Prepared) -> None:
        self._active += 1
        self._hosts[prepared.host].active += 1
        task = asyncio.create_task(self._deliver(prepared))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, prepared: _Prepared) -> None:
        job, action = prepared.job, prepared.action
        started = self.clock()
        try:
            if prepared.enrich:
                ready = await self._enrich(prepared, started)
                if isinstance(ready, _Unrenderable):
                    self._unrenderable(ready)
                    return
                prepared = ready
            if job.not_before is not None:  # a rate-limited destination's slot (the store's)
                await asyncio.sleep(max(0.0, job.not_before - self.clock()))
                started = self.clock()
            deliverer = self.deliverers[action.type]
            timeout = action.timeout
            answer = delivered(
                await deliverer.deliver(prepared.rendered, job_id=job.id, timeout=timeout)
            )
            self._answered(job.destination, True)
            self._finish(
                job, action, Outcome.DONE, started, status=answer.status, response=answer.response
            )
        except DeliveryFailed as failure:
            # An answer that blames the request (a 400) still says the destination is up.
            self._answered(job.destination, not counts_against(failure))
            self._failed(job, action, started, failure)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in a deliverer must not lose the job: retry it
            log.exception("delivery crashed", extra={"delivery_id": job.id, "rule": job.rule})
            self._failed(job, action, started, RetryLater(f"internal error: {type(exc).__name__}"))
        finally:
            self._active -= 1
            host = self._hosts[prepared.host]
            host.active -= 1
            if host.waiting and self._failing(prepared.host):
                # Enough failures in a row here to open its circuit: send no more of what is
                # queued while the store's circuit catches up (they wait there).
                self._track(asyncio.create_task(self._give_back(self._take_waiting(host))))
            if host.waiting:
                self._waiting -= 1
                self._start(host.waiting.popleft())
            else:
                # The last claim may have skipped this destination while it was busy.
                self._look = self._look or prepared.host not in self._backlogged
                if host.active == 0:
                    del self._hosts[prepared.host]
            self._wake.set()

    async def _enrich(self, prepared: _Prepared, started: float) -> _Prepared | _Unrenderable:
        """Fetch what the action's templates need (on the loop: the enricher bounds its own
        calls), then render it in the render thread. Raises what an enricher raises."""
        job = prepared.job
        fetched: dict[str, Any] = {}
        for name in prepared.enrich:
            enricher = self._enrichers.get(name)
            if enricher is None:  # a deliverer that offered it is not in this process
                raise RetryLater(f"this process cannot fetch {name!r} (enrich)")
            fetched[name] = await enricher.fetch(job.record)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._renderer, self._render, job, prepared.action, started, fetched
        )

    def _answered(self, destination: str, ok: bool) -> None:
        """Count an attempt's outcome (a job's, or a whole batch's: one request, one outcome)
        towards its destination's circuit (router.circuit)."""
        outcomes = self._outcomes.get(destination, Outcomes())
        self._outcomes[destination] = outcomes.then(ok)

    async def _report(self) -> None:
        """Hand the outcomes since the last report to the store's circuits; act on and pass on
        the transitions they made. Kept for the next report when the store is unavailable."""
        outcomes, self._outcomes = self._outcomes, {}
        try:
            changes = await self.store.report_outcomes(
                outcomes, policy=self.circuit, now=self.clock()
            )
        except StoreUnavailable as exc:
            for key, earlier in outcomes.items():
                later = self._outcomes.get(key)
                self._outcomes[key] = earlier if later is None else earlier.followed_by(later)
            log.warning("cannot report outcomes to the circuits: %s", exc)
            return
        for change in changes:
            if change.new == OPEN:
                await self._hand_back(change.destination)
            try:
                self.on_transition(change)
            except Exception:  # whatever listens must not stop deliveries
                log.exception("a circuit transition listener failed")

    def _failing(self, destination: str) -> bool:
        """Whether this worker saw enough failures in a row at `destination`, not reported yet,
        to open its circuit."""
        outcomes = self._outcomes.get(destination)
        threshold = self.circuit.failures
        return outcomes is not None and 0 < threshold <= outcomes.trailing_failures

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hand_back(self, destination: str) -> None:
        """Give the jobs queued here for `destination` back to the store (its circuit opened:
        they wait there, without spending attempts, until a probe closes it); so are the jobs
        of its batches still being gathered."""
        taken = self._batches.release_open(destination)
        host = self._hosts.get(destination)
        if host is not None and host.waiting:
            taken += self._take_waiting(host)
            if host.active == 0:
                del self._hosts[destination]
        if taken:
            await self._give_back(taken)

    def _take_waiting(self, host: _HostState) -> list[Job]:
        """Take the jobs queued for a destination out of this worker's hands."""
        taken = [prepared.job for prepared in host.waiting]
        host.waiting.clear()
        self._waiting -= len(taken)
        for job in taken:
            self._held.pop(job.id, None)
        return taken

    async def _give_back(self, jobs: Sequence[Job]) -> None:
        for job in jobs:
            self._held.pop(job.id, None)
        with contextlib.suppress(StoreUnavailable):  # else their leases expire
            await self.store.release(
                [(job.id, job.lease_token) for job in jobs], next_at=self.clock()
            )

    async def _render_batch(
        self, action: Action, jobs: Sequence[Job], identity: str
    ) -> dict[str, Any]:
        """Render a batch of `jobs` in the render thread (raises what rendering raises)."""
        loop = asyncio.get_running_loop()
        call = functools.partial(
            render_batch,
            action,
            [job.record for job in jobs],
            rule=jobs[0].rule,
            delivery_id=identity,
            secrets=self.secrets,
            limits=self.render_limits,
            render=render,
        )
        return await loop.run_in_executor(self._renderer, call)

    async def _deliver_batch(
        self, action: Action, rendered: Mapping[str, Any], identity: str, destination: str
    ) -> Delivered:
        """Send a rendered batch: one request, so one outcome for its destination's circuit."""
        deliverer = self.deliverers[action.type]
        try:
            answer = await deliverer.deliver(rendered, job_id=identity, timeout=action.timeout)
        except DeliveryFailed as failure:
            self._answered(destination, not counts_against(failure))
            raise
        self._answered(destination, True)
        return delivered(answer)

    async def _take_slot(self, destination: str, token: str, timeout: float) -> float | None:
        """A batch request's slot of its destination's limits (router.store.controls)."""
        now = self.clock()
        until = now + timeout + SLOT_MARGIN
        return await self.store.take_slot(destination, token=token, until=until, now=now)

    async def _free_slot(self, token: str) -> None:
        await self.store.free_slot(token)

    def _batch_sent(self) -> None:
        self._batches_sent += 1
        self._look = True  # its destination may have been left out of claims
        self._wake.set()

    def _decide(self, job: Job, action: Action, failure: DeliveryFailed) -> Decision:
        return self.policy.with_override(action.retry).decide(
            attempts=job.attempts + 1,
            budget_since=job.budget_since,
            now=self.clock(),
            failure=failure,
        )

    def _failed(self, job: Job, action: Action, started: float, failure: DeliveryFailed) -> None:
        decision = self._decide(job, action, failure)
        if decision.retry_at is None:
            error = (
                f"{failure}; {decision.reason}" if isinstance(failure, RetryLater) else str(failure)
            )
            self._finish(
                job,
                action,
                Outcome.DEAD,
                started,
                status=failure.status_code,
                error=error,
                response=failure.response,
            )
        else:
            self._finish(
                job,
                action,
                Outcome.RETRY,
                started,
                status=failure.status_code,
                error=str(failure),
                next_at=decision.retry_at,
                response=failure.response,
            )

    def _finish(
        self,
        job: Job,
        action: Action | None,
        outcome: Outcome,
        started: float,
        *,
        status: int | None = None,
        error: str | None = None,
        next_at: float | None = None,
        response: Excerpt | None = None,
    ) -> None:
        now = self.clock()
        self._held.pop(job.id, None)
        if next_at is not None and (self._next_retry is None or next_at < self._next_retry):
            self._next_retry = next_at
        self._results.append(
            AttemptResult(
                job_id=job.id,
                lease_token=job.lease_token,
                outcome=outcome,
                started_at=started,
                duration=max(0.0, now - started),
                status_code=status,
                error=error,
                next_at=next_at,
                response=self._excerpt(action, response),
            )
        )
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush())
        self.delivered += 1
        kind = job.action_type
        if job.mode is Mode.LIVE:  # a shadow job makes no attempt at its destination
            self.metrics.attempts.labels(action=kind).inc()
        self.metrics.deliveries.labels(action=kind, outcome=outcome.value, mode=job.mode).inc()
        if outcome is Outcome.DONE:
            self.metrics.latency.labels(action=kind).observe(max(0.0, now - job.budget_since))
        extra = {
            "delivery_id": job.id,
            "event_id": job.event_id,
            "rule": job.rule,
            "action": kind,
            "attempt": job.attempts + 1,
            "outcome": outcome.value,
            "status_code": status,
            "duration_ms": round((now - started) * 1000, 1),
            "error": error,
        }
        if outcome is Outcome.SHADOW:
            log.info("shadow rule: rendered and recorded, nothing sent", extra=extra)
        elif outcome is Outcome.DONE:
            log.info("delivered", extra=extra)
        elif outcome is Outcome.RETRY:
            log.warning("delivery failed, will retry", extra=extra)
        else:
            log.error("delivery failed for good; the job is dead", extra=extra)

    def _excerpt(self, action: Action | None, response: Excerpt | None) -> str | None:
        """What is stored of an answer: its excerpt with the values of the secrets the action's
        templates read masked (the request may have carried them; the answer may echo it);
        None for an empty one."""
        if response is None:
            return None
        names = secrets_of(action) if action is not None else frozenset()
        values = {name: self.secrets.get(name) for name in names if name in self.secrets}
        return response.masked(values).stored() or None  # an empty body shows nothing

    async def _flush(self) -> None:
        """Record finished attempts in batches: one store call for all that finished meanwhile."""
        try:
            while self._results or self._outcomes:
                batch, self._results = self._results, []
                try:
                    if batch:
                        await self.store.record(batch, now=self.clock())
                except StoreUnavailable as exc:
                    # Put them back; the next finished delivery (or shutdown) tries again. If
                    # that never succeeds the leases expire and the jobs are delivered again:
                    # at-least-once, never lost.
                    self._results[:0] = batch
                    log.warning("cannot record %d attempt(s): %s", len(batch), exc)
                    return
                self._look = True  # what was recorded may let ordered jobs go
                if self._outcomes:
                    await self._report()
                    if self._outcomes:  # the store is unavailable: the next flush tries again
                        return
        finally:
            self._flushing = None
            self._wake.set()  # a draining run may now see that nothing is left

    async def _shutdown(self) -> None:
        # Jobs waiting for a saturated host, or for their batch to fill, have not started:
        # hand them back now.
        waiting = [p.job for host in self._hosts.values() for p in host.waiting]
        waiting += self._batches.release_open()
        for job in waiting:
            self._held.pop(job.id, None)
        for host in self._hosts.values():
            host.waiting.clear()
        self._waiting = 0
        if waiting:
            with contextlib.suppress(Exception):
                await self.store.release(
                    [(job.id, job.lease_token) for job in waiting], next_at=self.clock()
                )
        if self._tasks or self._batches.tasks:
            running = {*self._tasks, *self._batches.tasks}
            _done, pending = await asyncio.wait(running, timeout=self.limits.drain_grace)
            for task in pending:  # their leases expire and another claim retries them
                task.cancel()
        if self._flushing is not None:
            await self._flushing
        if self._results:
            await self._flush()


async def _first_of(*aws: Any) -> None:
    """Wait until the first of several awaitables finishes; cancel the rest."""
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
