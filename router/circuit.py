"""Circuit breaking per destination: its state, and the one place it changes. Pure.

A destination's circuit is *closed* while it answers. `failures` consecutive failures that are
its fault (no answer, a timeout, 408, 429 or 5xx: router.circuit.counts_against) *open* it: its
jobs wait in the store without being attempted, and one job at a time is sent as a *probe*,
first `probe_delay` seconds after it opened, then at intervals that double up to
`probe_max_delay`. The first success closes the circuit. So a destination down for hours costs
one attempt per probe interval, not one per job per retry, and its jobs are not worn out.

The state lives in the store (one row per destination, router.store), so every worker of the
deployment sees the same circuit. `advance` computes the next state from the outcomes of a
batch of attempts; the store applies it under the row's lock, and the worker hands the
transitions it caused to its `on_transition` callback (logs and metrics by default; alerts
attach there).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from router.exceptions import DeliveryFailed

if TYPE_CHECKING:
    from router.metrics import Metrics
    from router.settings import Settings

log = logging.getLogger("router.circuit")

CLOSED = "closed"
OPEN = "open"


@dataclass(frozen=True, slots=True)
class CircuitPolicy:
    failures: int = 5  # consecutive failures that open the circuit; 0: never open it
    probe_delay: float = 10.0  # seconds from opening to the first probe
    probe_max_delay: float = 600.0  # the longest interval between two probes

    @classmethod
    def from_settings(cls, settings: Settings) -> CircuitPolicy:
        return cls(
            failures=settings.circuit_failures,
            probe_delay=settings.circuit_probe_delay,
            probe_max_delay=settings.circuit_probe_max_delay,
        )


@dataclass(frozen=True, slots=True)
class CircuitState:
    """One destination's circuit as the store keeps it."""

    state: str = CLOSED
    failures: int = 0  # consecutive failures counted so far
    opened_at: float | None = None
    probe_at: float | None = None  # when open: the earliest time of the next probe
    probe_delay: float | None = None  # when open: the interval before the next probe
    probe_until: float | None = None  # when open: a probe is out until then (its lease)


@dataclass(frozen=True, slots=True)
class Outcomes:
    """What a batch of attempts at one destination came to, in order: whether any succeeded,
    and how many failures (that count against it) followed the last success."""

    succeeded: bool = False
    trailing_failures: int = 0

    def then(self, ok: bool) -> Outcomes:
        """These outcomes, and then one more attempt."""
        if ok:
            return Outcomes(True, 0)
        return replace(self, trailing_failures=self.trailing_failures + 1)

    def followed_by(self, later: Outcomes) -> Outcomes:
        """These outcomes, and then `later`'s."""
        if later.succeeded:
            return later
        return Outcomes(self.succeeded, self.trailing_failures + later.trailing_failures)


@dataclass(frozen=True, slots=True)
class Transition:
    destination: str
    old: str
    new: str
    detail: str  # one sentence for the log


OnTransition = Callable[[Transition], None]


def counts_against(failure: DeliveryFailed) -> bool:
    """Whether a failed attempt says the destination is unwell (rather than that this request
    was wrong): no answer, a timeout, 408, 429 or 5xx."""
    status = failure.status_code
    return status is None or status in (408, 429) or status >= 500


def advance(
    state: CircuitState, outcomes: Outcomes, policy: CircuitPolicy, now: float
) -> CircuitState:
    """The circuit after `outcomes`. A success closes it; failures count up and open it at
    `policy.failures`; while open, a failed probe (one was out) doubles the probe interval, up
    to the cap, and failures of attempts started before it opened change nothing."""
    if policy.failures <= 0:
        return CircuitState()
    if outcomes.succeeded:
        state = CircuitState(failures=0) if state.state == OPEN else replace(state, failures=0)
    if not outcomes.trailing_failures:
        return state
    if state.state == OPEN:
        if state.probe_until is None:
            return state  # a straggler from before it opened
        delay = min((state.probe_delay or policy.probe_delay) * 2, policy.probe_max_delay)
        return replace(state, probe_at=now + delay, probe_delay=delay, probe_until=None)
    failures = state.failures + outcomes.trailing_failures
    if failures < policy.failures:
        return replace(state, failures=failures)
    delay = min(policy.probe_delay, policy.probe_max_delay)
    return CircuitState(OPEN, failures, now, now + delay, delay, None)


def transition(destination: str, old: CircuitState, new: CircuitState) -> Transition | None:
    """The transition from `old` to `new`, if the state changed."""
    if old.state == new.state:
        return None
    if new.state == OPEN:
        detail = (
            f"circuit of {destination} opened after {new.failures} failures in a row; its jobs "
            f"wait, and one probe goes in {new.probe_delay or 0:.0f} s"
        )
    else:
        detail = f"circuit of {destination} closed: it answered again; its jobs go"
    return Transition(destination, old.state, new.state, detail)


def log_and_count(metrics: Metrics) -> OnTransition:
    """The default `on_transition`: one log line and the circuit metrics."""

    def on_transition(change: Transition) -> None:
        extra = {"destination": change.destination, "circuit": change.new}
        if change.new == OPEN:
            log.warning("%s", change.detail, extra=extra)
        else:
            log.info("%s", change.detail, extra=extra)
        metrics.circuit_open.labels(destination=change.destination).set(change.new == OPEN)
        metrics.circuit_transitions.labels(destination=change.destination, state=change.new).inc()

    return on_transition
