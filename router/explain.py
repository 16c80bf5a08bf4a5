"""Why a rule did not match a record, with the values it saw. Pure.

For `[rule.match]` keys: the first criterion that failed, what it wanted and what it saw. For a
condition: the smallest part that failed and the values it looked at, found by evaluating the
parts of the parsed JMESPath tree one by one (never the matcher's own evaluation, which may be
compiled differently for speed): for `a && b` the first side that is false, for `a || b` each
side, for a comparison both operands, for a function its arguments, and for a path whether the
key is missing. Only the record-level parts are taken apart (not the inside of a projection or
a pipe), so each part is evaluated on the record itself.

`Miss.reason` is the one-line reason `router test --format json` has always given; `detail` is
the structured explanation beside it, and `lines` the same for the text report.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from jmespath import exceptions as jmespath_errors

from router.conditions import Condition, evaluate, truthy
from router.rules import Match, Rule

# Exact-match criteria in the order explain reports them; `fields` and `condition` follow.
MATCH_CRITERIA = ("tableType", "tableId", "operation", "eventType")
VALUE_PREVIEW = 80  # characters of a seen value shown in a one-line reason
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_COMPARATORS = {"eq": "==", "ne": "!=", "lt": "<", "gt": ">", "lte": "<=", "gte": ">="}
# A child binds less tightly than its parent: it needs parentheses to be read back the same.
_LOOSER = {
    "or_expression": {"pipe"},
    "and_expression": {"pipe", "or_expression"},
    "comparator": {"pipe", "or_expression", "and_expression", "comparator"},
    # `!` binds tighter than `.`: `!data.x` reads as `(!data).x`.
    "not_expression": {
        *("pipe", "or_expression", "and_expression", "comparator", "subexpression"),
        *("index_expression", "projection", "value_projection", "filter_projection", "flatten"),
    },
    "subexpression": {"pipe", "or_expression", "and_expression", "comparator", "not_expression"},
}
Node = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Fact:
    """One value a failing part looked at: a path that is missing, or what it holds."""

    expression: str
    value: Any = None
    missing: bool = False

    def text(self) -> str:
        if self.missing:
            return f"{self.expression} is missing"
        return f"{self.expression} is {show(self.value)}"

    def as_dict(self) -> dict[str, Any]:
        if self.missing:
            return {"expression": self.expression, "missing": True}
        return {"expression": self.expression, "value": self.value}


@dataclass(frozen=True, slots=True)
class Part:
    """A part of a condition and why it is false: its result (or the error that stopped it),
    the values it looked at, and for `&&` / `||` the parts that made it false."""

    expression: str
    gave: Any = None
    error: str | None = None
    facts: tuple[Fact, ...] = ()
    parts: tuple[Part, ...] = ()

    def summary(self) -> str:
        outcome = f"failed: {self.error}" if self.error else f"gave {show(self.gave)}"
        facts = "; ".join(fact.text() for fact in self.facts)
        return f"{self.expression} {outcome}" + (f": {facts}" if facts else "")

    def lines(self, indent: str = "") -> Iterator[str]:
        """The text report under the one-line reason: the failing parts, one per line."""
        if not self.parts:
            for fact in self.facts:
                yield f"{indent}{fact.text()}"
            return
        for part in self.parts:
            if part.parts:
                yield f"{indent}{part.expression} gave {show(part.gave)}"
                yield from part.lines(indent + "  ")
            else:
                yield f"{indent}{part.summary()}"

    def as_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {"expression": self.expression}
        if self.error is not None:
            found["error"] = self.error
        else:
            found["gave"] = self.gave
        if self.facts:
            found["values"] = [fact.as_dict() for fact in self.facts]
        if self.parts:
            found["parts"] = [part.as_dict() for part in self.parts]
        return found


@dataclass(frozen=True, slots=True)
class Miss:
    """Why one rule did not match one record."""

    key: str  # "enabled", a match key, or "condition"
    reason: str  # one line
    detail: dict[str, Any] = field(default_factory=dict)  # the structured explanation
    lines: tuple[str, ...] = ()  # what the text report prints under the reason


def why_not(rule: Rule, record: Mapping[str, Any]) -> Miss | None:
    """None when `rule` matches `record`; else the first criterion that failed, explained."""
    if not rule.enabled:
        return Miss("enabled", "rule is disabled", {"key": "enabled", "enabled": False})
    match = rule.match
    for name, wanted in zip(MATCH_CRITERIA, _criteria(match), strict=True):
        seen = record.get(name)
        if wanted is not None and _text(name, seen) not in wanted:
            alternatives = " or ".join(show(option) for option in sorted(wanted))
            detail = {"key": name, "wanted": sorted(wanted), "saw": seen}
            return Miss(name, f"{name}: wanted {alternatives}, saw {show(seen)}", detail)
    fields = match.fields
    if fields is not None and fields.isdisjoint(_fields_of(record)):
        seen = record.get("fields")
        reason = f"fields: wanted any of {show(sorted(fields))}, saw {show(seen)}"
        return Miss("fields", reason, {"key": "fields", "wanted": sorted(fields), "saw": seen})
    if match.condition is not None:
        return _condition_miss(match.condition, record)
    return None


def _criteria(match: Match) -> tuple[frozenset[str] | None, ...]:
    return (match.table_type, match.table_id, match.operation, match.event_type)


def _text(name: str, value: Any) -> str | None:
    # As the matcher compares: strings as they are, a tableId integer as its text.
    if isinstance(value, str):
        return value
    if name == "tableId" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _fields_of(record: Mapping[str, Any]) -> frozenset[str]:
    fields = record.get("fields")
    if not isinstance(fields, list):
        return frozenset()
    return frozenset(name for name in fields if isinstance(name, str))


def _condition_miss(condition: Condition, record: Mapping[str, Any]) -> Miss | None:
    part = explain_condition(condition, record)
    if part.error is None and truthy(part.gave):
        return None
    source = " ".join(condition.source.split())
    if part.error is not None:
        reason = f"condition: {source} failed: {part.error}"
    else:
        reason = f"condition: {source} gave {show(part.gave)}"
    detail = {"key": "condition", **part.as_dict(), "expression": source}
    return Miss("condition", reason, detail, tuple(part.lines()))


def explain_condition(condition: Condition, record: Mapping[str, Any]) -> Part:
    """The condition's result on `record`, taken apart down to the parts that made it false."""
    return _explain(condition.parsed, record)


def _explain(node: Node, record: Mapping[str, Any]) -> Part:
    value, error = _evaluate(node, record)
    kind = node["type"]
    text = unparse(node)
    if kind == "and_expression":
        sides = list(_flatten(node, kind))
        for side in sides:
            side_value, side_error = _evaluate(side, record)
            if side_error is not None or not truthy(side_value):
                return Part(text, value, error, parts=(_explain(side, record),))
    if kind == "or_expression":
        parts = tuple(_explain(side, record) for side in _flatten(node, kind))
        return Part(text, value, error, parts=parts)
    return Part(text, value, error, facts=tuple(_facts(node, record)))


def _flatten(node: Node, kind: str) -> Iterator[Node]:
    """The sides of a chain of `&&` (or of `||`), left to right."""
    for child in node["children"]:
        if child["type"] == kind:
            yield from _flatten(child, kind)
        else:
            yield child


def _facts(node: Node, record: Mapping[str, Any]) -> Iterator[Fact]:
    """The values a part looked at: a comparison's operands, a function's arguments, the
    operand of `!`, or the path itself; literals are left out (they are in the text)."""
    kind = node["type"]
    if kind == "not_expression":
        yield from _facts(node["children"][0], record)
        return
    if kind in ("comparator", "function_expression"):
        operands = [c for c in node["children"] if c["type"] not in ("literal", "expref")]
    else:
        operands = [node]
    for operand in operands:
        path = _path(operand)
        if path is not None and _missing(path, record):
            yield Fact(unparse(operand), missing=True)
        else:
            value, error = _evaluate(operand, record)
            if error is None:
                yield Fact(unparse(operand), value)


def _evaluate(node: Node, record: Mapping[str, Any]) -> tuple[Any, str | None]:
    try:
        return evaluate(node, record), None
    except jmespath_errors.JMESPathTypeError as exc:
        wanted = " or ".join(str(kind) for kind in exc.expected_types)
        return None, f"{exc.function_name}() was given {exc.actual_type} where it needs {wanted}"
    except jmespath_errors.JMESPathError as exc:
        return None, " ".join(str(exc).split())


def _path(node: Node) -> list[str] | None:
    """The keys of a plain path (`data.a."b.c"`), or None for anything else."""
    if node["type"] == "field":
        return [node["value"]]
    if node["type"] == "subexpression":
        keys: list[str] = []
        for child in node["children"]:
            inner = _path(child)
            if inner is None:
                return None
            keys += inner
        return keys
    return None


def _missing(path: list[str], record: Mapping[str, Any]) -> bool:
    current: Any = record
    for key in path:
        if not isinstance(current, Mapping) or key not in current:
            return True
        current = current[key]
    return False


def unparse(node: Node) -> str:
    """The JMESPath text of a parsed node, as a user would write it."""
    kind = node["type"]
    children = node.get("children", [])
    if kind == "field":
        name = node["value"]
        return name if _IDENTIFIER.match(name) else json.dumps(name, ensure_ascii=False)
    if kind == "literal":
        value = node["value"]
        if isinstance(value, str):
            return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        return "`" + json.dumps(value, ensure_ascii=False) + "`"
    if kind == "subexpression":
        return ".".join(_operand(child, kind) for child in children)
    if kind in ("current", "identity"):
        return "@"
    if kind == "comparator":
        left, right = (_operand(child, kind) for child in children)
        return f"{left} {_COMPARATORS[node['value']]} {right}"
    if kind in ("and_expression", "or_expression"):
        operator = " && " if kind == "and_expression" else " || "
        return operator.join(_operand(child, kind) for child in children)
    if kind == "not_expression":
        return "!" + _operand(children[0], kind)
    if kind == "function_expression":
        return f"{node['value']}({', '.join(unparse(child) for child in children)})"
    if kind == "expref":
        return "&" + unparse(children[0])
    if kind == "pipe":
        return " | ".join(unparse(child) for child in children)
    return _unparse_projection(kind, node, children)


def _unparse_projection(kind: str, node: Node, children: list[Any]) -> str:
    if kind == "index":
        return f"[{node['value']}]"
    if kind == "slice":
        return "[" + ":".join("" if part is None else str(part) for part in children) + "]"
    if kind == "index_expression":
        base = "" if children[0]["type"] == "identity" else unparse(children[0])
        return base + unparse(children[1])
    if kind == "flatten":
        return unparse(children[0]) + "[]"
    if kind == "projection":
        left, right = children
        base = unparse(left)
        if left["type"] not in ("flatten", "index_expression"):
            base += "[*]"
        return base + _tail(right)
    if kind == "value_projection":
        return unparse(children[0]) + ".*" + _tail(children[1])
    if kind == "filter_projection":
        left, right, test = children
        return f"{unparse(left)}[?{unparse(test)}]" + _tail(right)
    if kind == "multi_select_list":
        return "[" + ", ".join(unparse(child) for child in children) + "]"
    if kind == "multi_select_dict":
        pairs = (f"{pair['value']}: {unparse(pair['children'][0])}" for pair in children)
        return "{" + ", ".join(pairs) + "}"
    return f"<{kind}>"  # a node type this jmespath version added: shown, never evaluated here


def _tail(node: Node) -> str:
    """What follows a projection: nothing for the identity, `.x` or `[0]` otherwise."""
    if node["type"] == "identity":
        return ""
    text = unparse(node)
    return text if text.startswith("[") else "." + text


def _operand(child: Node, parent: str) -> str:
    text = unparse(child)
    return f"({text})" if child["type"] in _LOOSER[parent] else text


def show(value: Any) -> str:
    """A value as JSON, shortened to VALUE_PREVIEW characters."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    if len(text) > VALUE_PREVIEW:
        return text[: VALUE_PREVIEW - 1] + "…"
    return text
