"""Dry runs and rule tests: what a rule set *would* do with some records, sending nothing.

Pure logic for `router test`: no printing, no I/O. `dry_run` renders every matching rule's
actions for a list of records; `run_tests` checks a rule set's `[[test]]` tables. A batch
action (router.batches) renders once for the records it would send together: those of the
dry run (or of a test's event) that its rule matches, max_records at a time. Both render
with placeholder secrets (`<secret NAME>`), so no secret value can reach a report.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from router.actions import registry
from router.batches import chunks
from router.events import Record, normalise
from router.exceptions import NotAnEvent, RenderError
from router.explain import Miss
from router.matching import RuleSet
from router.rulefiles.ruletests import ExpectedAction, RuleTest
from router.rules import Location, Rule
from router.sandbox import PlaceholderSecrets
from router.template_limits import RenderLimits
from router.templating import build_batch_context, build_context

# What `delivery_id` renders as when nothing is delivered.
DRY_RUN_DELIVERY_ID = "dry-run"


def render(
    rule: Rule,
    index: int,
    record: Record,
    *,
    now: datetime,
    limits: RenderLimits | None = None,
    batch: Sequence[Record] | None = None,
) -> dict[str, Any]:
    """One action of `rule` rendered for `record` under `limits` (default: RenderLimits()):
    {"rule", "action", "type", ...rendered keys}, or {"rule", "action", "type", "error"} when a
    template fails on this record or goes over a limit. A batch action renders for `batch`,
    the records sent with this one (default: this one alone)."""
    action = rule.actions[index]
    head: dict[str, Any] = {"rule": rule.name, "action": index, "type": action.type}
    if action.batch is not None:
        context = build_batch_context(
            batch or [record],
            rule=rule.name,
            delivery_id=DRY_RUN_DELIVERY_ID,
            secrets=PlaceholderSecrets(),
            now=now,
        )
    else:
        context = build_context(
            record,
            rule=rule.name,
            delivery_id=DRY_RUN_DELIVERY_ID,
            secrets=PlaceholderSecrets(),
            now=now,
        )
    try:
        with (limits or RenderLimits()).applied():
            rendered = registry.render(action, context)
    except RenderError as exc:
        return {**head, "error": str(exc)}
    for key in registry.of(action).shown_when_set:  # e.g. an e-mail's html: only when it has one
        if rendered.get(key) is None:
            rendered.pop(key, None)
    return {**head, **rendered}


def batches_of(
    rule: Rule, index: int, records: Sequence[Record], matched: Sequence[set[str]]
) -> Iterator[list[int]]:
    """The positions in `records` of each batch that action `index` of `rule` (a batch action)
    would send: the records it matches, in order, max_records at a time."""
    batch = rule.actions[index].batch
    assert batch is not None
    mine = [position for position, names in enumerate(matched) if rule.name in names]
    for chunk in chunks(mine, batch.max_records):
        yield list(chunk)


def batch_for(
    rule: Rule, index: int, records: Sequence[Record], matched: Sequence[set[str]], position: int
) -> list[Record] | None:
    """The records that go out with `records[position]` in one request of action `index` of
    `rule` (None when that action is not a batch action, or the rule does not match it)."""
    if rule.actions[index].batch is None:
        return None
    for chunk in batches_of(rule, index, records, matched):
        if position in chunk:
            return [records[i] for i in chunk]
    return None


def dry_run(
    ruleset: RuleSet,
    records: Sequence[Record],
    *,
    explain: bool,
    now: datetime | None = None,
    limits: RenderLimits | None = None,
) -> dict[str, Any]:
    """The `router test --format json` document for `records`, in input order.

    Each record lists the rules that match (rule-set order) and every rendered action; with
    `explain`, also `not_matched`: each other rule with the first criterion that failed (one
    line, `reason`), its structured explanation (`explain`) and the text report's lines under
    the reason (`lines`; the CLI prints them and leaves them out of its JSON).
    """
    moment = now or datetime.now(UTC)
    order = {rule.name: position for position, rule in enumerate(ruleset.rules)}
    documents: list[dict[str, Any]] = []
    matches = [{rule.name for rule in ruleset.matcher.match(record)} for record in records]
    batches: list[dict[str, Any]] = []
    in_batch: dict[tuple[str, int, int], int] = {}  # (rule, action, record) -> its batch
    for rule in ruleset.rules:
        for position, action in enumerate(rule.actions):
            if action.batch is None:
                continue
            for chunk in batches_of(rule, position, records, matches):
                together = [records[i] for i in chunk]
                rendered = render(
                    rule, position, together[0], now=moment, limits=limits, batch=together
                )
                for i in chunk:
                    in_batch[(rule.name, position, i)] = len(batches)
                batches.append({"batch": len(batches), "records": chunk, **rendered})
    for index, record in enumerate(records):
        matched = sorted(
            (r for r in ruleset.rules if r.name in matches[index]), key=lambda r: order[r.name]
        )
        actions: list[dict[str, Any]] = []
        for rule in matched:
            for position, action in enumerate(rule.actions):
                if action.batch is None:
                    actions.append(render(rule, position, record, now=moment, limits=limits))
                else:
                    head = {"rule": rule.name, "action": position, "type": action.type}
                    actions.append({**head, "batch": in_batch[(rule.name, position, index)]})
        document: dict[str, Any] = {
            "index": index,
            "event_id": record.get("id"),
            "matched": [rule.name for rule in matched],
            "actions": actions,
        }
        if explain:
            names = set(document["matched"])
            misses = sorted(ruleset.matcher.misses(record), key=lambda pair: order[pair[0].name])
            document["not_matched"] = [
                _not_matched(rule.name, miss) for rule, miss in misses if rule.name not in names
            ]
        documents.append(document)
    return {"records": documents, "batches": batches}


def _not_matched(name: str, miss: Miss | None) -> dict[str, Any]:
    if miss is None:  # matched by the explanation, not by the matcher: a bug, say so plainly
        return {"rule": name, "reason": "did not match", "explain": {}, "lines": []}
    return {"rule": name, "reason": miss.reason, "explain": miss.detail, "lines": list(miss.lines)}


@dataclass(frozen=True, slots=True)
class Failure:
    """One way a rule test failed; `expected` and `actual` are shown side by side."""

    message: str
    location: Location
    record: int | None = None
    rule: str | None = None
    action: int | None = None
    key: str | None = None
    expected: Any = None
    actual: Any = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "file": self.location.file,
            "line": self.location.line,
            "record": self.record,
            "rule": self.rule,
            "action": self.action,
            "key": self.key,
            "expected": self.expected,
            "actual": self.actual,
        }


@dataclass(frozen=True, slots=True)
class TestOutcome:
    """The result of one `[[test]]` table: passed when it has no failures."""

    __test__: ClassVar[bool] = False  # not a pytest test class, despite its name

    test: RuleTest
    failures: tuple[Failure, ...]

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.test.name,
            "file": self.test.location.file,
            "line": self.test.location.line,
            "passed": self.passed,
            "failures": [failure.as_dict() for failure in self.failures],
        }


def run_tests(
    ruleset: RuleSet,
    tests: Sequence[RuleTest],
    *,
    now: datetime | None = None,
    limits: RenderLimits | None = None,
) -> list[TestOutcome]:
    """Run the `[[test]]` tables `tests` against `ruleset`, in order, rendering under `limits`
    (default: RenderLimits())."""
    moment = now or datetime.now(UTC)
    return [TestOutcome(test, tuple(_check(ruleset, test, moment, limits))) for test in tests]


def _check(
    ruleset: RuleSet, test: RuleTest, now: datetime, limits: RenderLimits | None
) -> list[Failure]:
    where = test.location
    try:
        records = normalise(test.event)
    except NotAnEvent as exc:
        return [Failure(f"the test's event is not an ACTITO event: {exc}", where)]
    failures: list[Failure] = []
    if test.expect_per_record is not None and len(test.expect_per_record) != len(records):
        failures.append(
            Failure(
                "expect_per_record must list one set of rules per record of the event",
                where,
                key="expect_per_record",
                expected=len(test.expect_per_record),
                actual=len(records),
            )
        )
        return failures

    matched: list[set[str]] = []
    for index, record in enumerate(records):
        names = {rule.name for rule in ruleset.matcher.match(record)}
        matched.append(names)
        wanted = test.expect if test.expect_per_record is None else test.expect_per_record[index]
        if wanted is not None and names != wanted:
            failures.append(
                Failure(
                    "the rules that match differ from the expected ones",
                    where,
                    record=index,
                    key="expect",
                    expected=_ordered(ruleset, wanted),
                    actual=_ordered(ruleset, names),
                )
            )
        missing = test.wanted("match", index) - names
        if missing:
            failures.append(
                Failure(
                    f"{_rules(ruleset, missing)} must match this record but "
                    f"{'does' if len(missing) == 1 else 'do'} not",
                    where,
                    record=index,
                    key="match",
                    expected=_ordered(ruleset, test.wanted("match", index)),
                    actual=_ordered(ruleset, names),
                )
            )
        unwanted = test.wanted("no_match", index) & names
        if unwanted:
            failures.append(
                Failure(
                    f"{_rules(ruleset, unwanted)} must not match this record but "
                    f"{'does' if len(unwanted) == 1 else 'do'}",
                    where,
                    record=index,
                    key="no_match",
                    expected=_ordered(ruleset, test.wanted("no_match", index)),
                    actual=_ordered(ruleset, names),
                )
            )
    for expected in test.actions:
        failures.extend(_check_action(ruleset, expected, records, matched, now, limits))
    return failures


def _check_action(
    ruleset: RuleSet,
    expected: ExpectedAction,
    records: Sequence[Record],
    matched: Sequence[set[str]],
    now: datetime,
    limits: RenderLimits | None,
) -> list[Failure]:
    def fail(message: str, **details: Any) -> Failure:
        return Failure(
            message,
            expected.location,
            record=expected.record,
            rule=expected.rule,
            action=expected.action,
            **details,
        )

    rule = ruleset.rule(expected.rule)
    if rule is None:
        return [fail(f"there is no rule named '{expected.rule}'")]
    if not 0 <= expected.record < len(records):
        count = len(records)
        return [fail(f"the event has {count} record(s), there is no record {expected.record}")]
    if not 0 <= expected.action < len(rule.actions):
        return [fail(f"the rule has {len(rule.actions)} action(s), no action {expected.action}")]
    if expected.rule not in matched[expected.record]:
        return [fail("the rule does not match this record, so its action is never rendered")]

    together = batch_for(rule, expected.action, records, matched, expected.record)
    record = records[expected.record]
    rendered = render(rule, expected.action, record, now=now, limits=limits, batch=together)
    if "error" in rendered:
        return [fail(f"the action cannot be rendered: {rendered['error']}")]
    failures: list[Failure] = []
    for key, want in expected.values.items():
        problem = registry.of(rule.actions[expected.action]).compare(key, want, rendered)
        if problem is not None:
            message, actual = problem
            failures.append(fail(message, key=key, expected=want, actual=actual))
    return failures


def _rules(ruleset: RuleSet, names: set[str] | frozenset[str]) -> str:
    ordered = _ordered(ruleset, names)
    quoted = ", ".join(f"'{name}'" for name in ordered)
    return f"rule {quoted}" if len(ordered) == 1 else f"rules {quoted}"


def _ordered(ruleset: RuleSet, names: set[str] | frozenset[str]) -> list[str]:
    order = {rule.name: position for position, rule in enumerate(ruleset.rules)}
    return sorted(names, key=lambda name: (order.get(name, len(order)), name))
