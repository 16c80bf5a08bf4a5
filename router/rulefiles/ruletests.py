"""`[[test]]` tables -> RuleTest: an event, what must (and must not) match it, the expected
actions.

A test states the rules it cares about: `match` (these must match every record) and `no_match`
(these must not), or per record `match_per_record` / `no_match_per_record`; so adding a rule file
breaks no other file's tests. `expect` (and `expect_per_record`) keeps its exact meaning: the
whole set of rules that match.

What an action's rendered values may be checked against, and how, is its type's
(router.actions: `test_keys`, `expected`, `compare`).

Tests are read after every rule file, so a test can name any rule and its actions; a rule name
nobody defines is a mistake only when every rule file could be read (otherwise the rule may be in
the file that failed, which has its own diagnostic). Problems are reported through the same
`Context` as the rules' own.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router.actions.registry import REGISTRY
from router.checks import KeyPath, closest, kind_of
from router.events import Record, normalise, parse_body
from router.exceptions import MalformedBody, NotAnEvent
from router.rulefiles.schema import Context
from router.rules import Location

_EXACT_KEYS = ("expect", "expect_per_record")
_SCOPED_KEYS = ("match", "no_match", "match_per_record", "no_match_per_record")
_TEST_KEYS = ("name", "event", *_EXACT_KEYS, *_SCOPED_KEYS, "action")
# What a test says about the rules, per key: one set for every record, or one per record.
Expectation = frozenset[str] | tuple[frozenset[str], ...]


@dataclass(frozen=True, slots=True)
class ExpectedAction:
    """Rendered values one action of one rule must have for one record of a rule test."""

    rule: str
    action: int  # index among the rule's actions
    record: int  # index among the test event's records
    values: Mapping[str, Any]  # test key -> expected value, as the action's type reads it
    location: Location
    index: int = 0  # position among the test's [[test.action]] tables


@dataclass(frozen=True, slots=True)
class RuleTest:
    name: str
    location: Location
    event: Any  # the decoded event body (inline, or read from the JSON file at load)
    expect: frozenset[str] | None  # exact set of rules matching every record
    expect_per_record: tuple[frozenset[str], ...] | None  # or one set per record
    actions: tuple[ExpectedAction, ...]
    # key (match, no_match, match_per_record, no_match_per_record) -> what it says
    scoped: Mapping[str, Expectation] = field(default_factory=dict)
    index: int = 0  # position among its file's [[test]] tables

    def wanted(self, key: str, record: int) -> frozenset[str]:
        """The rules that `key` ("match" or "no_match") names for record `record`: from the
        key itself and from its per-record form."""
        names: frozenset[str] = frozenset()
        for given in (self.scoped.get(key), self.scoped.get(f"{key}_per_record")):
            if isinstance(given, frozenset):
                names |= given
            elif given is not None and record < len(given):
                names |= given[record]
        return names


def _test_action_keys() -> tuple[str, ...]:
    """Every key a `[[test.action]]` table may have, whatever its rule's action type."""
    keys = dict.fromkeys(("rule", "action", "record"))
    for action_type in REGISTRY.values():
        keys.update(dict.fromkeys(action_type.test_keys))
    return tuple(keys)


class TestReader:
    """Reads `[[test]]` tables against the rules of one load, once all of them are read."""

    __test__ = False  # not a pytest test class, despite its name

    def __init__(
        self,
        defined: Mapping[str, Location],
        action_types: Mapping[str, list[Any]],
        complete: bool,
    ) -> None:
        self.defined = defined  # rule name -> where it is first defined
        self.action_types = action_types  # rule name -> raw `type` of each action
        self.complete = complete  # every rule file was read, so an unknown rule name is a mistake
        self.tests: list[RuleTest] = []

    def read(self, context: Context, index: int, raw: Any, shown: str) -> None:
        """Check test `index` of the file `shown`; keep it in `tests` if it has no error."""
        path: KeyPath = ("test", index)
        before = context.errors
        table = context.table(path, raw, _TEST_KEYS)
        if table is None:
            return
        name = context.text((*path, "name"), table.get("name")) or f"test {index + 1} of {shown}"
        why = "give the event inline or as the path of a JSON file"
        loaded = self._event(context, (*path, "event"), context.require(table, "event", path, why))
        records = None if loaded is None else loaded[1]
        expect = self._names(context, (*path, "expect"), table.get("expect"))
        per_record = self._per_record(context, path, table, "expect_per_record", records)
        scoped: dict[str, Expectation] = {}
        for key in _SCOPED_KEYS:
            if key.endswith("_per_record"):
                lists = self._per_record(context, path, table, key, records)
                if lists is not None:
                    scoped[key] = lists
            elif (names := self._names(context, (*path, key), table.get(key))) is not None:
                scoped[key] = names
        self._expectation_keys(context, path, table, scoped, records)
        raw_actions = table.get("action", [])
        if not isinstance(raw_actions, list):
            context.report((*path, "action"), "must be an array of tables: write [[test.action]]")
            raw_actions = []
        actions = [
            self._expected(context, (*path, "action", i), item, records, i)
            for i, item in enumerate(raw_actions)
        ]
        if context.errors > before or loaded is None:
            return
        self.tests.append(
            RuleTest(
                name=name,
                location=Location(context.file, context.positions.line(path)),
                event=loaded[0],
                expect=expect,
                expect_per_record=per_record,
                actions=tuple(a for a in actions if a is not None),
                scoped=scoped,
                index=index,
            )
        )

    def _per_record(
        self,
        context: Context,
        path: KeyPath,
        table: Mapping[str, Any],
        key: str,
        records: list[Record] | None,
    ) -> tuple[frozenset[str], ...] | None:
        """A `*_per_record` key: one list of rule names per record of the event."""
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, list):
            context.report((*path, key), f"must be an array of lists, not {kind_of(value)}")
            return None
        lists = [self._names(context, (*path, key, i), v) for i, v in enumerate(value)]
        if records is not None and len(value) != len(records):
            message = f"has {len(value)} list(s) but the event has {len(records)} record(s)"
            context.report((*path, key), f"{message}; give one per record")
        if any(names is None for names in lists):
            return None
        return tuple(names for names in lists if names is not None)

    def _expectation_keys(
        self,
        context: Context,
        path: KeyPath,
        table: Mapping[str, Any],
        scoped: Mapping[str, Expectation],
        records: list[Record] | None,
    ) -> None:
        """Which expectation keys go together: expect or expect_per_record (exact), or any of
        the scoped ones; and no rule both must and must not match the same record."""
        exact = [key for key in _EXACT_KEYS if key in table]
        given = [key for key in _SCOPED_KEYS if key in table]
        if len(exact) == 2:
            context.report((*path, "expect"), "give expect or expect_per_record, not both")
        elif exact and given:
            message = f"{exact[0]} already names every rule that matches; remove {given[0]}"
            context.report((*path, given[0]), message)
        elif not exact and not given:
            message = (
                "is missing; say which rules must match (match = [...]) or must not "
                "(no_match = [...]), or give expect, the exact set"
            )
            context.report((*path, "match"), message)
        count = len(records) if records is not None else 1
        probe = RuleTest("", Location("", 0), None, None, None, (), scoped)
        for record in range(count):
            both = probe.wanted("match", record) & probe.wanted("no_match", record)
            if both:
                names = ", ".join(sorted(both))
                at = "no_match" if "no_match" in table else "no_match_per_record"
                context.report((*path, at), f"{names} cannot both match and not match; keep one")
                return

    def _event(
        self, context: Context, path: KeyPath, value: Any
    ) -> tuple[Any, list[Record]] | None:
        event = value
        if isinstance(value, str):
            source = Path(os.path.dirname(context.file)) / value
            try:
                event = parse_body(source.read_bytes())
            except OSError as exc:
                context.report(
                    path,
                    f"cannot read '{value}' ({exc.strerror}); the path is relative to this file",
                )
                return None
            except MalformedBody as exc:
                context.report(path, f"'{value}': {exc}")
                return None
        elif isinstance(value, dict | list):
            try:
                json.dumps(value)
            except TypeError:
                context.report(
                    path, "holds a date or time, which no event has; write it as a string"
                )
                return None
        else:
            if value is not None:
                context.report(
                    path, f"must be a table or the path of a JSON file, not {kind_of(value)}"
                )
            return None
        try:
            return event, normalise(event)
        except NotAnEvent as exc:
            context.report(path, f"is not an ACTITO event: {exc}")
            return None

    def _names(self, context: Context, path: KeyPath, value: Any) -> frozenset[str] | None:
        if value is not None and not isinstance(value, list):
            context.report(path, f"must be a list of rule names, not {kind_of(value)}")
            return None
        names = context.texts(path, value)
        if names is None:
            return None
        for index, name in enumerate(names):
            self._known(context, (*path, index), name)
        return frozenset(names)

    def _known(self, context: Context, path: KeyPath, name: str) -> bool:
        if name in self.defined or not self.complete:
            return name in self.defined
        close = closest(name, self.defined)
        context.report(
            path, f"no rule is named '{name}'" + (f"; did you mean '{close}'?" if close else "")
        )
        return False

    def _expected(
        self,
        context: Context,
        path: KeyPath,
        raw: Any,
        records: list[Record] | None,
        position: int,
    ) -> ExpectedAction | None:
        before = context.errors
        known_keys = _test_action_keys()
        table = context.table(path, raw, known_keys)
        if table is None:
            return None
        value = context.require(table, "rule", path, "name the rule whose action is checked")
        rule = context.text((*path, "rule"), value)
        action = _index(context, (*path, "action"), table.get("action", 0))
        record = _index(context, (*path, "record"), table.get("record", 0))
        kind = None
        if rule is not None and self._known(context, (*path, "rule"), rule) and action is not None:
            kinds = self.action_types.get(rule)
            if kinds is not None and action >= len(kinds):
                message = f"rule '{rule}' has {len(kinds)} action(s); action is an index from 0"
                context.report((*path, "action"), message)
            elif kinds is not None and isinstance(kinds[action], str):
                kind = REGISTRY.get(kinds[action])
        if record is not None and records is not None and record >= len(records):
            message = f"the event has {len(records)} record(s); record is an index from 0"
            context.report((*path, "record"), message)
        values: dict[str, Any] = {}
        for key, value in table.items():
            at = (*path, key)
            if key in ("rule", "action", "record") or key not in known_keys:
                continue
            if kind is not None and key not in kind.test_keys:
                context.report(
                    at,
                    f"a {kind.name} action has no {key}; it renders {', '.join(kind.test_keys)}",
                )
                continue
            # A rule of unknown type (its file had errors): read the value as the first type
            # that knows the key would.
            reader = kind or next(t for t in REGISTRY.values() if key in t.test_keys)
            values[key] = reader.expected(context, at, key, value)
        if context.errors > before or rule is None or action is None or record is None:
            return None
        where = Location(context.file, context.positions.line(path))
        return ExpectedAction(rule, action, record, values, where, position)


def _index(context: Context, path: KeyPath, value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    context.report(path, f"must be an index (an integer from 0), not {value!r}")
    return None
