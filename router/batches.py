"""Batches: one request for many records. An action with `batch = { max_records, max_wait }`
(http only) does not send its jobs one by one: the worker hands them to a Batcher, which
gathers the due jobs of one action (same rule, same spec, same mode) and sends them as one
request once `max_records` are in hand or the first has waited `max_wait` seconds. Its
templates see `records`, the list of records, instead of `record` and `data`.

Each job stays a job of its own in the store: it is done when its batch is delivered. A batch
that fails for a while (5xx, 429, a timeout) retries as a whole: every job gets the same next
attempt time, so they meet again in one batch. A 4xx, or a template that fails on the batch,
splits it in halves, each tried at once, until the one bad record is alone: that job dies with
the answer, and every other record is delivered. One bad record never kills the others.

A batch is a delivery to its destination, under the delivery controls (router.store.controls):
its jobs are claimed as any job is, so a paused rule or destination holds them, and an open
circuit lets one probe job through (sent as a batch of one). Its records take no slot of the
destination's rate or concurrency when claimed; each request does, when it is sent (a split
half is a request of its own): one send time of the rate, and one of the concurrent requests
until it is answered, shared by every worker of the deployment. A batch's answer is one
outcome for the destination's circuit; while this worker has seen enough failures in a row
there to open it, batches waiting to be sent go back to the store unsent (no attempt spent).

A destination is sent at most ROUTER_PER_HOST_CONCURRENCY batches at once (beside its single
jobs, which have slots of their own in the worker). A destination whose batches hold
BATCHES_IN_HAND times `max_records` jobs in this process is left out of claims until one is
sent, so a slow destination cannot pile up jobs here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from router.actions.base import Delivered
from router.checks import Checker, KeyPath
from router.exceptions import GiveUp, MissingSecret, RenderError, RetryLater, StoreUnavailable
from router.excerpts import Excerpt
from router.retry import Decision
from router.rules import Action, Batch, spec_hash
from router.store.base import Job, Mode, Outcome
from router.template_limits import RenderLimits
from router.templating import build_batch_context

log = logging.getLogger("router.batches")

MAX_RECORDS_RANGE = (1, 10_000)
MAX_WAIT_RANGE = (0.0, 300.0)  # seconds
BATCH_KEYS = ("max_records", "max_wait")
BATCHES_IN_HAND = 2  # jobs held per destination, as a multiple of its largest max_records
SLOT_POLL = 0.05  # seconds between two asks for a slot of a destination's concurrency
DEFAULT_TIMEOUT = 10.0  # seconds a request may take when its action does not say

_T = TypeVar("_T")


def compile_batch(checker: Checker, path: KeyPath, value: Any) -> Batch | None:
    """The `batch` table of an action; None when absent or wrong (reported)."""
    if value is None:
        return None
    table = checker.table(path, value, BATCH_KEYS)
    if table is None:
        return None
    records = checker.require(table, "max_records", path, "say how many records one request holds")
    size = None
    if records is not None:
        size = checker.number((*path, "max_records"), records, MAX_RECORDS_RANGE, integer=True)
    wait = checker.duration((*path, "max_wait"), table.get("max_wait", "1s"), MAX_WAIT_RANGE)
    if size is None or wait is None:
        return None
    return Batch(max_records=int(size), max_wait=wait)


def chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    """`items` in consecutive pieces of at most `size`."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def batch_id(job_ids: Sequence[str]) -> str:
    """A batch's identity (its Idempotency-Key): the same jobs make the same id."""
    return "batch-" + hashlib.sha256("\0".join(job_ids).encode()).hexdigest()[:24]


def render_batch(
    action: Action,
    records: Sequence[Mapping[str, Any]],
    *,
    rule: str,
    delivery_id: str,
    secrets: Mapping[str, str],
    limits: RenderLimits,
    render: Callable[[Action, Mapping[str, Any]], dict[str, Any]],
    now: Any = None,
) -> dict[str, Any]:
    """Render a batch action for `records` (raises what rendering raises)."""
    with limits.applied():
        context = build_batch_context(
            records, rule=rule, delivery_id=delivery_id, secrets=secrets, now=now
        )
        return render(action, context)


@dataclass
class _Open:
    """A batch being filled."""

    action: Action
    destination: str
    jobs: list[Job] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


@dataclass
class BatchHooks:
    """What a Batcher needs of its worker."""

    action_of: Callable[[Mapping[str, Any]], Action]  # the compiled action of a job's spec
    render: Callable[[Action, Sequence[Job], str], Awaitable[dict[str, Any]]]  # in its thread
    deliver: Callable[[Action, Mapping[str, Any], str, str], Awaitable[Delivered]]  # + dest
    # (job, action, outcome, started, *, status, error, next_at, response)
    finish: Callable[..., None]
    decide: Callable[[Job, Action, RetryLater], Decision]  # the job's own retry policy
    changed: Callable[[], None]  # room was made: claim again
    per_host: int
    # The destination's circuit is opening (this worker saw it fail): send nothing there.
    held_back: Callable[[str], bool] = lambda destination: False
    give_back: Callable[[Sequence[Job]], Awaitable[None]] | None = None  # unsent, to the store
    # A request's slot of its destination's limits: (destination, token, seconds it may take)
    # -> its send time, or None while none is free; and giving it back. None: no limits.
    take_slot: Callable[[str, str, float], Awaitable[float | None]] | None = None
    free_slot: Callable[[str], Awaitable[None]] | None = None
    clock: Callable[[], float] = time.time


class Batcher:
    """Gathers the jobs of batch actions and sends each batch in a slot of its destination."""

    def __init__(self, hooks: BatchHooks) -> None:
        self.hooks = hooks
        self._open: dict[tuple[str, str, str], _Open] = {}
        self._held: defaultdict[str, int] = defaultdict(int)  # destination -> jobs held
        self._limit: dict[str, int] = {}  # destination -> most jobs held before it is busy
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def held(self) -> int:
        return sum(self._held.values())

    def busy(self) -> list[str]:
        """Destinations whose batches hold as many jobs as this process keeps for them."""
        return [key for key, count in self._held.items() if count >= self._limit.get(key, 0)]

    def take(self, jobs: list[Job]) -> list[Job]:
        """Keep the jobs of batch actions (they go out in batches); return the others."""
        others: list[Job] = []
        for job in jobs:
            action = self._batch_action(job)
            if action is None or action.batch is None:
                others.append(job)
                continue
            self._add(job, action)
        return others

    def _batch_action(self, job: Job) -> Action | None:
        if not isinstance(job.spec.get("batch"), dict):
            return None
        try:
            return self.hooks.action_of(job.spec)
        except ValueError:
            return None  # the worker's own path records why it is invalid

    def _add(self, job: Job, action: Action) -> None:
        assert action.batch is not None
        key = (job.rule, spec_hash(job.spec), job.mode.value)
        batch = self._open.get(key)
        if batch is None:
            batch = self._open[key] = _Open(action, job.destination)
            loop = asyncio.get_running_loop()
            batch.timer = loop.call_later(action.batch.max_wait, self._close, key)
        batch.jobs.append(job)
        self._held[job.destination] += 1
        limit = action.batch.max_records * BATCHES_IN_HAND
        self._limit[job.destination] = max(self._limit.get(job.destination, 0), limit)
        if len(batch.jobs) >= action.batch.max_records:
            self._close(key)

    def _close(self, key: tuple[str, str, str]) -> None:
        batch = self._open.pop(key, None)
        if batch is None:
            return
        if batch.timer is not None:
            batch.timer.cancel()
        task = asyncio.create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: _Open) -> None:
        slots = self._slots.setdefault(batch.destination, asyncio.Semaphore(self.hooks.per_host))
        try:
            async with slots:
                if self.hooks.held_back(batch.destination) and self.hooks.give_back:
                    await self.hooks.give_back(batch.jobs)  # they wait for the circuit there
                    return
                await self._attempt(batch.action, batch.jobs, of=len(batch.jobs))
        finally:
            self._held[batch.destination] -= len(batch.jobs)
            if self._held[batch.destination] <= 0:
                del self._held[batch.destination]
                self._limit.pop(batch.destination, None)
            self.hooks.changed()

    async def _slot(self, destination: str, token: str, timeout: float) -> bool:
        """Wait for a slot of `destination`'s limits, then for its send time. True when one
        was taken (to be freed once answered)."""
        take = self.hooks.take_slot
        if take is None:
            return False
        while True:
            try:
                at = await take(destination, token, timeout)
            except StoreUnavailable as exc:
                log.warning("cannot take a slot of %s for a batch: %s", destination, exc)
                at = None
            if at is not None:
                await asyncio.sleep(max(0.0, at - self.hooks.clock()))
                return True
            await asyncio.sleep(SLOT_POLL)

    async def _free(self, token: str) -> None:
        if self.hooks.free_slot is not None:
            with contextlib.suppress(StoreUnavailable):  # else it ends with its lease
                await self.hooks.free_slot(token)

    async def _attempt(self, action: Action, jobs: Sequence[Job], *, of: int) -> None:
        """Send `jobs` as one request; on a 4xx or a render error, split them in halves."""
        hooks = self.hooks
        started = hooks.clock()
        identity = batch_id([job.id for job in jobs])
        try:
            rendered = await hooks.render(action, jobs, identity)
        except MissingSecret as exc:  # this process is misconfigured: retry, do not give up
            self._retry(action, jobs, started, RetryLater(f"cannot render: {exc}"))
            return
        except (RenderError, ValueError) as exc:
            if len(jobs) > 1:
                await self._split(action, jobs, of=of)
                return
            self._finish(action, jobs, Outcome.DEAD, started, error=f"cannot render: {exc}")
            return
        except Exception as exc:  # a bug in rendering must not lose the jobs: retry them
            log.exception("rendering a batch crashed", extra={"delivery_id": identity})
            self._retry(action, jobs, started, RetryLater(f"internal error: {type(exc).__name__}"))
            return
        if jobs[0].mode is Mode.SHADOW:
            self._finish(action, jobs, Outcome.SHADOW, started)
            return
        token = uuid.uuid4().hex
        held = await self._slot(jobs[0].destination, token, action.timeout or DEFAULT_TIMEOUT)
        split = False
        try:
            answer = await hooks.deliver(action, rendered, identity, jobs[0].destination)
        except GiveUp as exc:
            code = exc.status_code
            if code is not None and 400 <= code < 500 and len(jobs) > 1:
                split = True  # once this request's slot is free: its halves take their own
            else:
                error = str(exc) if of == 1 else f"{exc} (sent alone, out of a batch of {of})"
                self._finish(
                    action,
                    jobs,
                    Outcome.DEAD,
                    started,
                    status=code,
                    error=error,
                    response=exc.response,
                )
        except RetryLater as exc:
            self._retry(action, jobs, started, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in a deliverer must not lose the jobs: retry them
            log.exception("batch delivery crashed", extra={"delivery_id": identity})
            self._retry(action, jobs, started, RetryLater(f"internal error: {type(exc).__name__}"))
        else:
            self._finish(
                action, jobs, Outcome.DONE, started, status=answer.status, response=answer.response
            )
        finally:
            if held:
                await self._free(token)
        if split:
            await self._split(action, jobs, of=of)

    async def _split(self, action: Action, jobs: Sequence[Job], *, of: int) -> None:
        middle = len(jobs) // 2
        await self._attempt(action, jobs[:middle], of=of)
        await self._attempt(action, jobs[middle:], of=of)

    def _retry(
        self, action: Action, jobs: Sequence[Job], started: float, failure: RetryLater
    ) -> None:
        """The whole batch again, at one time for all (each job's own limits may kill it)."""
        decisions = {job.id: self.hooks.decide(job, action, failure) for job in jobs}
        common = max((d.retry_at for d in decisions.values() if d.retry_at), default=None)
        for job in jobs:
            decision = decisions[job.id]
            if decision.retry_at is None:
                self._finish(
                    action,
                    [job],
                    Outcome.DEAD,
                    started,
                    status=failure.status_code,
                    error=f"{failure}; {decision.reason}",
                    response=failure.response,
                )
            else:
                self._finish(
                    action,
                    [job],
                    Outcome.RETRY,
                    started,
                    status=failure.status_code,
                    error=str(failure),
                    next_at=common,
                    response=failure.response,
                )

    def _finish(
        self,
        action: Action,
        jobs: Sequence[Job],
        outcome: Outcome,
        started: float,
        *,
        status: int | None = None,
        error: str | None = None,
        next_at: float | None = None,
        response: Excerpt | None = None,
    ) -> None:
        for job in jobs:
            self.hooks.finish(
                job,
                action,
                outcome,
                started,
                status=status,
                error=error,
                next_at=next_at,
                response=response,
            )

    def release_open(self, destination: str | None = None) -> list[Job]:
        """Stop gathering (for `destination`, or for all): the jobs of batches not sent yet,
        to hand back to the store."""
        jobs: list[Job] = []
        for key, batch in list(self._open.items()):
            if destination is not None and batch.destination != destination:
                continue
            if batch.timer is not None:
                batch.timer.cancel()
            jobs.extend(batch.jobs)
            self._held[batch.destination] -= len(batch.jobs)
            if self._held[batch.destination] <= 0:
                del self._held[batch.destination]
                self._limit.pop(batch.destination, None)
            del self._open[key]
        return jobs

    def flush(self) -> None:
        """Send every batch being filled now, without waiting for its max_wait."""
        for key in list(self._open):
            self._close(key)

    @property
    def tasks(self) -> set[asyncio.Task[None]]:
        """Batches being sent."""
        return self._tasks
