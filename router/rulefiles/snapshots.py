"""Snapshots: `router test --update` writes what the rules render now into the `[[test.action]]`
tables of failing and new tests, so an author reviews a diff instead of typing expected bodies.

A failing test gets the values it checks replaced by what renders now (only those that differ).
A new test (one without `[[test.action]]` tables) gets one table per action of every rule it
says must match (`match`, `expect` and their per-record forms), for each record that rule
matches. Files are edited with tomlkit, which keeps their comments and layout.

What cannot be snapshotted is left alone: an action that does not render (its error stays a
failure to fix), a rule that does not match (the expectation is the author's to change), and a
value whose template reads `now` (it would differ on the next run). TOML has no null, so a JSON
body holding one is written as text (`body`) instead of `body_json`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import AoT, String, StringType, Table, Trivia

from router.actions.registry import REGISTRY
from router.events import Record, normalise
from router.exceptions import NotAnEvent
from router.matching import Matcher, RuleSet
from router.rulefiles.dryrun import TestOutcome, batch_for, render
from router.rulefiles.ruletests import RuleTest
from router.rules import Action, Rule
from router.template_limits import RenderLimits
from router.templating import TemplateProblem, compile_template

# The values each built-in type's snapshot writes, in this order (others: its test keys).
_SNAPSHOT_KEYS = {
    "http": ("method", "url", "headers", "body_json", "body"),
    "email": ("to", "cc", "bcc", "subject", "text", "html"),
    "log": ("level", "message"),
}


@dataclass(frozen=True, slots=True)
class Written:
    """One test whose tables were written."""

    test: RuleTest
    tables: int  # [[test.action]] tables added or changed


def update(
    ruleset: RuleSet,
    outcomes: Sequence[TestOutcome],
    *,
    now: datetime,
    limits: RenderLimits | None = None,
) -> list[Written]:
    """Write the snapshots of the failing and new tests among `outcomes` into their files."""
    written: list[Written] = []
    by_file: dict[str, list[TestOutcome]] = {}
    for outcome in outcomes:
        if not outcome.passed or not outcome.test.actions:
            by_file.setdefault(outcome.test.location.file, []).append(outcome)
    for file, chosen in by_file.items():
        path = Path(file)
        document = tomlkit.parse(path.read_text(encoding="utf-8"))
        tests = document.get("test")
        if not isinstance(tests, AoT):
            continue
        changed = []
        for outcome in chosen:
            table = tests[outcome.test.index]
            last = outcome.test.index == len(tests) - 1
            count = _snapshot(ruleset, outcome.test, table, now, limits, last=last)
            if count:
                changed.append(Written(outcome.test, count))
        if changed:
            path.write_text(tomlkit.dumps(document), encoding="utf-8")
            written += changed
    return written


def snapshot_test(ruleset: RuleSet, test: RuleTest, table: Table, *, now: datetime) -> int:
    """Fill a `[[test]]` table (of a document being written) as `update` does a new test."""
    return _snapshot(ruleset, test, table, now, None, last=True)


def _snapshot(
    ruleset: RuleSet,
    test: RuleTest,
    table: Table,
    now: datetime,
    limits: RenderLimits | None,
    *,
    last: bool,
) -> int:
    try:
        records = normalise(test.event)
    except NotAnEvent:
        return 0
    count = 0
    if test.actions:  # a failing test: correct the values it checks
        existing = table.get("action")
        for expected in test.actions:
            rule = ruleset.rule(expected.rule)
            if rule is None or expected.record >= len(records) or not isinstance(existing, AoT):
                continue
            values = _values(rule, expected.action, records, expected.record, now, limits)
            if values is None:
                continue
            target = existing[expected.index]
            changed = False
            for key in expected.values:
                if key in ("body_json", "body"):
                    key = "body_json" if "body_json" in values else "body"
                    for old in ("body", "body_json"):
                        if old != key and old in target:
                            del target[old]
                if key in values and target.get(key) != values[key]:
                    target[key] = _item(values[key])
                    changed = True
            count += changed
        return count
    actions = tomlkit.aot()
    for index, record in enumerate(records):
        matched = {rule.name for rule in ruleset.matcher.match(record)}
        for rule in ruleset.rules:
            if rule.name not in matched or rule.name not in _wanted(test, index):
                continue
            for position in range(len(rule.actions)):
                values = _values(rule, position, records, index, now, limits)
                if values is None:
                    continue
                new = tomlkit.table()
                new["rule"] = rule.name
                if position:
                    new["action"] = position
                if index:
                    new["record"] = index
                for key, value in values.items():
                    new[key] = _item(value)
                actions.append(new)
                count += 1
    if count:
        if not last:  # a blank line before the next [[test]]
            actions[-1].add(tomlkit.nl())
        table["action"] = actions
    return count


def _wanted(test: RuleTest, record: int) -> frozenset[str]:
    names = test.wanted("match", record)
    if test.expect is not None:
        names |= test.expect
    if test.expect_per_record is not None and record < len(test.expect_per_record):
        names |= test.expect_per_record[record]
    return names


def _values(
    rule: Rule,
    index: int,
    records: Sequence[Record],
    position: int,
    now: datetime,
    limits: RenderLimits | None,
) -> dict[str, Any] | None:
    """The snapshot of one rendered action for `records[position]`: the keys a
    `[[test.action]]` table checks, with the values they have now (a batch action's: those of
    the batch the record goes out in); None when the action does not render."""
    together = None
    if rule.actions[index].batch is not None:
        matcher = Matcher((rule,))
        matched = [{r.name for r in matcher.match(record)} for record in records]
        together = batch_for(rule, index, records, matched, position)
    record = records[position]
    rendered = render(rule, index, record, now=now, limits=limits, batch=together)
    if "error" in rendered:
        return None
    action = rule.actions[index]
    kind = REGISTRY[action.type]
    keys = _SNAPSHOT_KEYS.get(action.type, kind.test_keys)
    values: dict[str, Any] = {}
    for key in keys:
        source = "body" if key == "body_json" else key
        if key not in kind.test_keys or (key != "headers" and _reads_now(action, source)):
            continue  # (each header is looked at on its own below)
        if key == "body_json":
            parsed = _json(rendered.get("body"))
            if parsed is not None:
                values["body_json"] = parsed
            continue
        if key == "body" and "body_json" in values:
            continue
        value = rendered.get(key)
        if key == "headers" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if not _reads_now(action, "headers", k)}
        if value is None or value == [] or value == {} or not _storable(value):
            continue
        values[key] = value
    return values


def _reads_now(action: Action, key: str, item: str | None = None) -> bool:
    value = action.spec.get(key)
    if isinstance(value, dict):
        value = [v for k, v in value.items() if item is None or k == item]
    sources = value if isinstance(value, list) else [value]
    for source in sources:
        if not isinstance(source, str):
            continue
        try:
            if "now" in compile_template(source).names:
                return True
        except TemplateProblem:
            return False
    return False


def _json(body: Any) -> Any:
    """The body as JSON when it is an object or a list TOML can hold (no null), else None."""
    if not isinstance(body, str):
        return None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict | list) and _storable(parsed) else None


def _storable(value: Any) -> bool:
    """Whether TOML can hold `value` (it has no null)."""
    if value is None:
        return False
    if isinstance(value, dict):
        return all(isinstance(k, str) and _storable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_storable(v) for v in value)
    return isinstance(value, str | int | float | bool)


def _item(value: Any) -> Any:
    """A value as tomlkit should write it: tables inline, long text as a multi-line string."""
    if isinstance(value, dict):
        table = tomlkit.inline_table()
        for key, inner in value.items():
            table[key] = _item(inner)
        return table
    if isinstance(value, list):
        array = tomlkit.array()
        array.extend(_item(inner) for inner in value)
        return array
    if isinstance(value, str) and "\n" in value:
        if "'''" not in value and all(c >= " " or c in "\n\t" for c in value):
            # As a person writes a body: the text starts on the line below the quotes (TOML
            # drops a newline right after them).
            return String(StringType.MLL, value, "\n" + value, Trivia())
        return tomlkit.string(value, multiline=True)
    return value
