"""Accepting records: match -> delivery jobs -> store, in one durable transaction.

The engine holds the rule set that serves. A reload builds a whole new RuleSet elsewhere and
`swap`s it in; every push reads the reference once, so it is matched by exactly one version.
A shadow rule's matches become jobs of mode shadow, fixed at acceptance: a reload that makes
the rule live sends the events accepted after it, never the ones before.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from router.actions.registry import destination_of
from router.events import Record, dedupe_key
from router.matching import RuleSet
from router.metrics import Metrics
from router.ordering import order_key
from router.store.base import AcceptResult, IncomingRecord, Mode, NewJob, Store

log = logging.getLogger("router.engine")


def new_job_id() -> str:
    """A random 128-bit job id (also the Idempotency-Key). It needs to be unique, not secret:
    the Mersenne Twister, seeded from os.urandom in each process, costs a fifth of uuid4()."""
    return f"{random.getrandbits(128):032x}"


@dataclass(frozen=True, slots=True)
class _Serving:
    """A rule set with what the intake derives from it once, not per push."""

    ruleset: RuleSet
    destinations: dict[int, str]  # id(action) -> destination_of(action)

    @classmethod
    def of(cls, ruleset: RuleSet) -> _Serving:
        actions = [action for rule in ruleset.rules for action in rule.actions]
        declared = ruleset.destinations
        return cls(ruleset, {id(action): destination_of(action, declared) for action in actions})


class Engine:
    def __init__(
        self,
        store: Store,
        ruleset: RuleSet,
        *,
        dedupe_window: float,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._serving = _Serving.of(ruleset)
        self.dedupe_window = dedupe_window
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.metrics.set_ruleset(ruleset.version)

    @property
    def ruleset(self) -> RuleSet:
        return self._serving.ruleset

    def swap(self, ruleset: RuleSet) -> None:
        """Make `ruleset` the one that serves; pushes already matching keep the old one."""
        self._serving = _Serving.of(ruleset)
        self.metrics.set_ruleset(ruleset.version)

    async def declare_destinations(self) -> None:
        """Write the serving rule set's [[destination]] tables to the store, where every
        worker's claims read their limits (router.store.controls)."""
        await self.store.declare_destinations(self._serving.ruleset.destinations)

    async def accept(self, records: Sequence[Record]) -> AcceptResult:
        """Match every record and store it with its jobs; durable when this returns."""
        serving = self._serving  # one reference read: the whole push sees one rule set
        ruleset, destinations = serving.ruleset, serving.destinations
        match = ruleset.matcher.match
        dedupe = self.dedupe_window > 0
        incoming: list[IncomingRecord] = []
        modes: list[tuple[str, ...]] = []  # of the rules each record matched, for metrics
        for position, record in enumerate(records):
            rules = match(record)
            jobs = tuple(
                NewJob(
                    id=new_job_id(),
                    rule=rule.name,
                    action_index=index,
                    action_type=action.type,
                    spec=action.spec,
                    destination=destinations[id(action)],
                    mode=Mode.SHADOW if rule.shadow else Mode.LIVE,
                    order_key=None
                    if action.order_by is None
                    else order_key(action, rule.name, index, record),
                    order_hold=action.order_by is not None and action.on_dead == "hold",
                )
                for rule in rules
                for index, action in enumerate(rule.actions)
            )
            names = tuple(rule.name for rule in rules)
            modes.append(tuple(rule.mode for rule in rules))
            event_id = record.get("id")
            incoming.append(
                IncomingRecord(
                    event_id=None if event_id is None else str(event_id),
                    dedupe_key=dedupe_key(record, position) if dedupe else None,
                    record=record,
                    matched=names,
                    jobs=jobs,
                )
            )
        result = await self.store.accept(
            incoming,
            ruleset_version=ruleset.version,
            dedupe_window=self.dedupe_window,
            now=self.clock(),
        )
        self._count(result, incoming, modes)
        return result

    def _count(
        self, result: AcceptResult, incoming: list[IncomingRecord], modes: list[tuple[str, ...]]
    ) -> None:
        m = self.metrics
        m.records_received.inc(result.accepted)
        m.records_duplicate.inc(result.duplicates)
        unmatched = 0
        matches = m.rule_match
        for position, item in enumerate(incoming):
            if position in result.repeated:
                continue  # routed when it first came
            if not item.matched:
                unmatched += 1
            for name, mode in zip(item.matched, modes[position], strict=True):
                matches(name, mode).inc()
        if unmatched:
            m.records_unmatched.inc(unmatched)
