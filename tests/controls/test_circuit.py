"""Circuit breaking, end to end: a destination that fails N times in a row gets one probe at a
time, its other jobs wait without spending attempts, and the first success closes it; the
state is the store's, so a second worker sees it. `advance` (pure) is checked on its own."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from router.circuit import (
    CLOSED,
    OPEN,
    CircuitPolicy,
    CircuitState,
    Outcomes,
    Transition,
    advance,
)
from router.store.base import Status
from tests.controls.support import BACKENDS, FlakySink, deployment, event, rules, store_url, until
from tests.sinks import Reply

JOBS = 20
FAILURES = 3
POLICY = CircuitPolicy(failures=FAILURES, probe_delay=0.2, probe_max_delay=0.4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_open_circuit_sends_one_probe_at_a_time_and_closes_on_success(
    backend: str, tmp_path: Path
) -> None:
    with FlakySink(default=Reply(503)) as sink, store_url(backend, tmp_path) as url:
        ruleset = rules(
            tmp_path,
            f"""
[[rule]]
name = "crm"
[[rule.action]]
type = "http"
url = "{sink.url("/")}{{{{ data.n }}}}"
""",
        )
        changes: list[Transition] = []

        async def scenario() -> None:
            async with deployment(
                url, ruleset, workers=2, per_host=1, circuit=POLICY, on_transition=changes.append
            ) as d:
                await d.push([event(n) for n in range(JOBS)])
                await until(lambda: changes, what="the circuit to open")
                assert (changes[0].old, changes[0].new) == (CLOSED, OPEN)
                opened_at = len(sink.requests)
                # It opened before every job was tried (how many failed first depends on how
                # fast the workers' reports reach the store).
                assert opened_at < JOBS
                await until(lambda: len(sink.requests) >= opened_at + 3, what="three probes")
                # Then one probe at a time, and a wait: not 20 jobs retrying every 50 ms. Beside
                # the probes, only what was in flight or queued in a worker when it opened (one
                # slot and a queue of three each).
                assert len(sink.requests) <= opened_at + 3 + 2 * 4
                sink.default = Reply(200)
                await until(lambda: len(changes) >= 2, what="the circuit to close")
                assert (changes[1].old, changes[1].new) == (OPEN, CLOSED)
                store = d.stores[0]

                async def all_done() -> bool:
                    jobs = await store.list_jobs(rule="crm", limit=JOBS)
                    return {job.status for job in jobs} == {Status.DONE}

                await until(all_done, what="every job delivered")
                jobs = await store.list_jobs(rule="crm", limit=JOBS)
                # Attempts were spent by the failures that opened it and by the probes: a
                # handful beyond one per job, where retrying without the circuit costs hundreds.
                assert sum(job.attempts for job in jobs) == len(sink.requests) < 2 * JOBS
                assert await store.circuits() == {f"127.0.0.1:{sink.port}": CLOSED}

        asyncio.run(scenario())


def test_failures_open_probes_back_off_and_a_success_closes() -> None:
    policy = CircuitPolicy(failures=3, probe_delay=10, probe_max_delay=25)
    state = advance(CircuitState(), Outcomes(False, 2), policy, now=0)
    assert (state.state, state.failures) == (CLOSED, 2)
    assert advance(state, Outcomes(True, 0), policy, now=1).failures == 0  # not in a row
    state = advance(state, Outcomes(False, 1), policy, now=2)
    assert (state.state, state.probe_at, state.probe_delay) == (OPEN, 12, 10)
    # A failure of an attempt started before it opened (no probe out) changes nothing.
    assert advance(state, Outcomes(False, 1), policy, now=3) == state
    out = CircuitState(OPEN, 3, 2, 12, 10, probe_until=100)  # a probe is out
    failed = advance(out, Outcomes(False, 1), policy, now=13)
    assert (failed.probe_at, failed.probe_delay, failed.probe_until) == (33, 20, None)
    again = advance(CircuitState(OPEN, 3, 2, 33, 20, 200), Outcomes(False, 1), policy, now=34)
    assert again.probe_delay == 25  # capped
    assert advance(again, Outcomes(True, 0), policy, now=60) == CircuitState()
    assert advance(CircuitState(), Outcomes(False, 9), CircuitPolicy(failures=0), 0).state == CLOSED
