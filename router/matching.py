"""Evaluate a record against a rule set (indexed), and explain why a rule did not match. Pure.

A rule matches when every criterion it gives holds (SPEC §3): tableType, tableId, operation and
eventType compare the record's value exactly (a list means any of; tableId compares as text, so
16 and "16" are equal); `fields` holds when the record's `fields` overlaps the wanted names;
`condition` is a JMESPath expression on the whole record that must be truthy in JMESPath's sense
(router.conditions).

The Matcher indexes rules by their four exact-match criteria, so a record only meets the rules
that can match it; only `fields` and `condition` are checked per candidate.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from router.conditions import Condition
from router.destinations import Destination
from router.explain import Miss, why_not
from router.rules import Alert, Match, Rule

# Exact-match criteria in the order explain reports them; `fields` and `condition` follow.
_KEYS = ("tableType", "tableId", "operation", "eventType")
_ANY = object()  # index bucket component of a rule that leaves a key out
CACHE_LIMIT = 4096  # distinct record keys whose candidate list is kept


def _text_id(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _record_key(record: Mapping[str, Any]) -> tuple[str | None, ...]:
    # Non-string values can equal no criterion (criteria are strings, compared without coercion).
    table_type = record.get("tableType")
    operation = record.get("operation")
    event_type = record.get("eventType")
    return (
        table_type if isinstance(table_type, str) else None,
        _text_id(record.get("tableId")),
        operation if isinstance(operation, str) else None,
        event_type if isinstance(event_type, str) else None,
    )


def _criteria(match: Match) -> tuple[frozenset[str] | None, ...]:
    return (match.table_type, match.table_id, match.operation, match.event_type)


_Candidate = tuple[Rule, frozenset[str] | None, Condition | None]


class Matcher:
    """Matches records against a rule set; built once per rule set, then only read.

    Rules are indexed by (tableType, tableId, operation, eventType); a rule that leaves a key
    out sits in the wildcard bucket of that key, and a rule with a list sits in one bucket per
    value. A record looks up every combination of its value and the wildcard (a few dict
    lookups, cached per distinct record key), so its cost grows with the rules that can match
    it, not with the rule set. Results keep rule-set order.
    """

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        self._buckets: dict[tuple[object, ...], list[int]] = {}
        used = [False] * len(_KEYS)
        for index, rule in enumerate(self.rules):
            if not rule.enabled:
                continue
            criteria = _criteria(rule.match)
            for position, wanted in enumerate(criteria):
                used[position] = used[position] or wanted is not None
            options = [sorted(wanted) if wanted is not None else [_ANY] for wanted in criteria]
            for key in itertools.product(*options):
                self._buckets.setdefault(key, []).append(index)
        # Keys no rule constrains are looked up as wildcards only.
        self._used = tuple(used)
        self._cache: dict[tuple[str | None, ...], tuple[_Candidate, ...]] = {}

    def _candidates(self, key: tuple[str | None, ...]) -> tuple[_Candidate, ...]:
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        options = [
            (value, _ANY) if used and value is not None else (_ANY,)
            for value, used in zip(key, self._used, strict=True)
        ]
        indexes: list[int] = []
        for combination in itertools.product(*options):
            indexes.extend(self._buckets.get(combination, ()))
        # A rule sits in at most one of a record's combinations, so sorting suffices.
        indexes.sort()
        found = tuple(
            (self.rules[i], self.rules[i].match.fields, self.rules[i].match.condition)
            for i in indexes
        )
        if len(self._cache) >= CACHE_LIMIT:
            self._cache.clear()  # many distinct keys (e.g. arbitrary tableIds): start over
        self._cache[key] = found
        return found

    def match(self, record: Mapping[str, Any]) -> list[Rule]:
        """The enabled rules that match `record`, in rule-set order."""
        matched: list[Rule] = []
        record_fields: frozenset[str] | None = None
        for rule, fields, condition in self._candidates(_record_key(record)):
            if fields is not None:
                if record_fields is None:
                    record_fields = _fields_of(record)
                if fields.isdisjoint(record_fields):
                    continue
            if condition is not None and not condition.holds(record):
                continue
            matched.append(rule)
        return matched

    def explain(self, record: Mapping[str, Any]) -> list[tuple[Rule, str | None]]:
        """Every rule in rule-set order, disabled ones too, with None when it matches or else
        the first failed criterion and the value seen, in one line."""
        return [(rule, None if miss is None else miss.reason) for rule, miss in self.misses(record)]

    def misses(self, record: Mapping[str, Any]) -> list[tuple[Rule, Miss | None]]:
        """Like `explain`, with the whole explanation (router.explain) of each miss. Off the
        matching path: it takes each condition apart on the record, for people to read."""
        return [(rule, why_not(rule, record)) for rule in self.rules]


def _fields_of(record: Mapping[str, Any]) -> frozenset[str]:
    fields = record.get("fields")
    if not isinstance(fields, list):
        return frozenset()
    return frozenset(name for name in fields if isinstance(name, str))


@dataclass(frozen=True, slots=True)
class RuleSet:
    """A validated, compiled set of rules with its index. Immutable: a reload builds a new one
    and swaps it in."""

    rules: tuple[Rule, ...]  # enabled and disabled, in file-name then file order
    version: str  # content hash of the files it was built from
    secrets: frozenset[str]  # names referenced as secrets.NAME by any template
    alerts: tuple[Alert, ...] = ()  # the [[alert]] tables (router.alerts)
    matcher: Matcher = field(init=False, repr=False, compare=False)
    destinations: tuple[Destination, ...] = ()  # the [[destination]] tables (router.destinations)

    def __post_init__(self) -> None:
        object.__setattr__(self, "matcher", Matcher(self.rules))

    @property
    def enabled(self) -> tuple[Rule, ...]:
        return tuple(rule for rule in self.rules if rule.enabled)

    def rule(self, name: str) -> Rule | None:
        return next((rule for rule in self.rules if rule.name == name), None)
