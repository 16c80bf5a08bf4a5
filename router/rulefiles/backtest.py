"""Backtest: what a new rule set would have done with the records the store kept, next to what
the serving one did. Pure: the caller feeds stored records; nothing is sent.

Per rule (by name): records it newly matches, records it no longer matches, and records both
sets match whose rendered actions differ, with a few examples of each. Both sets render with the
same `now` and placeholder secrets (`<secret NAME>`), so neither the time nor a secret value
makes a difference appear, or reach the report.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from router.matching import RuleSet
from router.rulefiles.dryrun import render
from router.rules import Rule, spec_hash
from router.store.base import StoredEvent
from router.template_limits import RenderLimits

MAX_EXAMPLES = 3  # per rule and kind of change
EXAMPLE_CHARS = 200  # of a rendered value shown in an example
KINDS = ("newly_matching", "no_longer_matching", "changed")


@dataclass
class RuleChanges:
    """What changes for one rule; `counts` and `examples` by kind (KINDS)."""

    rule: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    examples: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {kind: [] for kind in KINDS}
    )

    def add(self, kind: str, example: dict[str, Any]) -> None:
        self.counts[kind] += 1
        if len(self.examples[kind]) < MAX_EXAMPLES:
            self.examples[kind].append(example)

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, **self.counts, "examples": self.examples}


class Backtest:
    """Feed it stored records (`feed`), then read `report()`."""

    def __init__(
        self,
        serving: RuleSet,
        candidate: RuleSet,
        *,
        now: datetime | None = None,
        limits: RenderLimits | None = None,
    ) -> None:
        self.serving, self.candidate = serving, candidate
        self.now = now or datetime.now(UTC)
        self.limits = limits
        self.records = 0
        self.changes: dict[str, RuleChanges] = {}
        self._old = {rule.name: rule for rule in serving.rules}
        self._new = {rule.name: rule for rule in candidate.rules}

    def feed(self, events: Iterable[StoredEvent]) -> None:
        for event in events:
            self.records += 1
            record = event.record
            before = {rule.name for rule in self.serving.matcher.match(record)}
            after = {rule.name for rule in self.candidate.matcher.match(record)}
            for name in after - before:
                self._change(name).add("newly_matching", _where(event))
            for name in before - after:
                self._change(name).add("no_longer_matching", _where(event))
            for name in before & after:
                differences = self._differences(self._old[name], self._new[name], event)
                if differences:
                    self._change(name).add("changed", {**_where(event), "actions": differences})

    def _change(self, name: str) -> RuleChanges:
        if name not in self.changes:
            self.changes[name] = RuleChanges(name)
        return self.changes[name]

    def _differences(self, old: Rule, new: Rule, event: StoredEvent) -> list[dict[str, Any]]:
        """Each action (by index) whose rendered values differ, with the keys that do."""
        if [spec_hash(a.spec) for a in old.actions] == [spec_hash(a.spec) for a in new.actions]:
            return []  # the same actions on the same record render the same
        found: list[dict[str, Any]] = []
        for index in range(max(len(old.actions), len(new.actions))):
            was = self._render(old, index, event)
            now = self._render(new, index, event)
            keys = sorted({*was, *now} - {"rule", "action"})
            changed = {
                key: {"before": _short(was.get(key)), "after": _short(now.get(key))}
                for key in keys
                if was.get(key) != now.get(key)
            }
            if changed:
                found.append({"action": index, "changed": changed})
        return found

    def _render(self, rule: Rule, index: int, event: StoredEvent) -> dict[str, Any]:
        if index >= len(rule.actions):
            return {}
        return render(rule, index, event.record, now=self.now, limits=self.limits)

    def report(self) -> dict[str, Any]:
        order = [*self._new, *(name for name in self._old if name not in self._new)]
        changed = [self.changes[name].as_dict() for name in order if name in self.changes]
        unchanged = [name for name in order if name not in self.changes]
        return {"records": self.records, "rules": changed, "unchanged": unchanged}


def _where(event: StoredEvent) -> dict[str, Any]:
    received = datetime.fromtimestamp(event.received_at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return {"event_id": event.event_id, "received": received}


def _short(value: Any) -> Any:
    """A rendered value for an example: text (or JSON) of at most EXAMPLE_CHARS characters."""
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"
