"""Lints: rules that are valid but almost certainly not what their author meant. Each is a
warning at the key's file:line, in one plain sentence that ends with the fix.

- A comparison that is also true when its field is missing (`!=`, `!`), on a rule that does not
  make sure the record carries the field: ACTITO sends only the fields that changed, and trigger
  events carry none of a data event's fields (nor the other way round), so
  `data."etl.executionStatus" != 'SUCCESS'` alone matches every data event.
- A word where a value was meant (`data.status == SHIPPED`, `== "SHIPPED"`): both are field
  names in JMESPath, and records have no such field.
- A dotted path into a trigger event's keys, which have dots in their names (`data.etl.id`
  where the key is "etl.id"), in a condition or a template.
- A template reading a data field without a default on a rule matching an operation whose
  pushes carry only the changed fields (UPDATE and its kind).
- (For the loader) a TOML string ended early by a quote inside it.

Bare numbers in a condition are a syntax error of JMESPath, explained where conditions are
compiled (router.conditions); `{{ id }}` and friends, where templates are (router.templating).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from typing import Any

from jinja2 import nodes
from jmespath import exceptions as jmespath_errors

from router.actions.registry import keys_of
from router.checks import KeyPath
from router.conditions import Condition, evaluate, truthy
from router.events import STANDARD_KEYS
from router.explain import Node, unparse
from router.rulefiles.schema import Context
from router.rules import Rule
from router.template_syntax import children, walk
from router.templating import syntax_tree

# Keys a record has besides `data` (STANDARD_KEYS and the envelope's links).
ENVELOPE_KEYS = frozenset({*STANDARD_KEYS, "data", "_links"})
# The first part of the dotted keys of ACTITO's trigger events ("etl.executionStatus", ...).
TRIGGER_FAMILIES = ("etl", "export", "actionParameters", "profileAttributes", "fileReference")
# Operations whose pushes carry only the fields that changed (and the row's identifiers).
PARTIAL_OPERATIONS = frozenset({"UPDATE", "UPDATED_SUBSCRIPTION", "UPDATED_SEGMENT"})
IDENTIFIERS = frozenset({"profileId", "id", "businessKey"})  # in every push of a row
_MAPPING_METHODS = frozenset({"get", "items", "keys", "values"})
_EMPTY_RECORD: Mapping[str, Any] = {"data": {}}  # a record that carries no field at all
_ASSIGNMENT = re.compile(r"""^\s*([A-Za-z0-9_.\-]+|"[^"]*")\s*=\s*("|')(?!\2\2)""")


def lint_rule(context: Context, path: KeyPath, rule: Rule) -> None:
    """Report every lint of a compiled rule (`path` is its `("rule", i)`)."""
    condition = rule.match.condition
    if condition is not None:
        at = (*path, "match", "condition")
        negated, words, dotted = _condition_findings(condition)
        missing = _missing_field_comparisons(condition, rule.match.fields)
        for message in (*negated, *missing, *words, *dotted):
            context.report(at, message, severity="warning")
    partial = rule.match.operation is not None and bool(rule.match.operation & PARTIAL_OPERATIONS)
    carried = _carried_keys(rule)
    for index, action in enumerate(rule.actions):
        for key, source in _templates(action.type, action.spec):
            at = (*path, "action", index, *key)
            dotted_paths, unguarded = _template_findings(source)
            for message in dotted_paths:
                context.report(at, message, severity="warning")
            if partial and rule.match.operation is not None:
                operation = sorted(rule.match.operation & PARTIAL_OPERATIONS)[0]
                for name in unguarded:
                    if name not in carried:
                        context.report(at, _partial_message(name, operation), severity="warning")


# What depends on a condition's or a template's text only is found once per text: rule sets
# repeat the same conditions and templates, and a reload meets them all again.
FINDINGS_CACHE_SIZE = 20_000


@functools.lru_cache(maxsize=FINDINGS_CACHE_SIZE)
def _condition_findings(
    condition: Condition,
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    tree, source = condition.parsed, condition.source
    return tuple(_negated_paths(tree)), tuple(_words(tree, source)), tuple(_dotted_paths(tree))


@functools.lru_cache(maxsize=FINDINGS_CACHE_SIZE)
def _template_findings(source: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    ast = syntax_tree(source)
    return tuple(_template_dotted_paths(ast)), tuple(_unguarded_reads(ast))


# ---------------------------------------------------------------- conditions


def _record_scope(node: Node) -> Iterator[Node]:
    """The nodes evaluated on the record itself (not on an element of a projection, nor on
    the result of a pipe), outermost first."""
    yield node
    kind = node["type"]
    children = [c for c in node.get("children", []) if isinstance(c, Mapping)]
    if kind in ("subexpression", "index_expression", "pipe", "flatten") or "projection" in kind:
        children = children[:1]
    elif kind == "expref":
        children = []
    for child in children:
        yield from _record_scope(child)


def _data_path(node: Node) -> tuple[str, ...] | None:
    """("data", key, ...) for a plain path into the record's data, else None."""
    keys: list[str] = []
    if node["type"] == "field":
        keys = [node["value"]]
    elif node["type"] == "subexpression" and all(c["type"] == "field" for c in node["children"]):
        keys = [c["value"] for c in node["children"]]
    return tuple(keys) if len(keys) >= 2 and keys[0] == "data" else None


def _paths_in(node: Node) -> set[tuple[str, ...]]:
    return {path for n in _record_scope(node) if (path := _data_path(n)) is not None}


def _holds_on_empty(node: Node) -> bool:
    try:
        return truthy(evaluate(node, _EMPTY_RECORD))
    except jmespath_errors.JMESPathError:
        return False


def _conjuncts(node: Node) -> list[Node]:
    if node["type"] != "and_expression":
        return [node]
    return [part for child in node["children"] for part in _conjuncts(child)]


@functools.lru_cache(maxsize=FINDINGS_CACHE_SIZE)
def _missing_field_comparisons(
    condition: Condition, fields: frozenset[str] | None
) -> tuple[str, ...]:
    return tuple(_missing_field_messages(condition.parsed, fields))


def _missing_field_messages(tree: Node, fields: frozenset[str] | None) -> Iterator[str]:
    conjuncts = _conjuncts(tree)
    for node in _risky(tree):
        (path,) = _paths_in(node)
        guards = [c for c in conjuncts if node not in list(_record_scope(c))]
        if _pinned(path, guards, fields):
            continue
        part, key = unparse(node), path[1]
        shown = unparse({"type": "subexpression", "children": _fields(path)})
        if "." in key:
            why = f"for every record without {key}, such as every data event"
            fix = f"write {shown} != `null` && {part}"
        else:
            why = f"for every record without {key} (ACTITO sends only the fields that changed)"
            fix = f'write {shown} != `null` && {part}, or add fields = ["{key}"]'
        yield f"{part} is also true {why}; {fix}"


def _negated_paths(tree: Node) -> Iterator[str]:
    """`!data.x` reads as `(!data).x` in JMESPath (`!` binds tighter than `.`): never true."""
    for node in _record_scope(tree):
        if node["type"] == "subexpression" and node["children"][0]["type"] == "not_expression":
            inner = node["children"][0]["children"][0]
            path = {"type": "subexpression", "children": [inner, *node["children"][1:]]}
            written = "!" + unparse(path)
            yield (
                f"{written} reads as {unparse(node)}, which is never true; write !({unparse(path)})"
            )


def _risky(node: Node) -> Iterator[Node]:
    """The outermost `!=` / `!` parts on one data path that are true when it is missing."""
    kind = node["type"]
    if kind in ("comparator", "not_expression") and len(_paths_in(node)) == 1:
        literals = [c for c in node["children"] if c["type"] == "literal"]
        compares_null = any(c["value"] is None for c in literals)
        only_path = all(c["type"] == "literal" or _data_path(c) for c in node["children"])
        if (kind == "not_expression" or only_path) and not compares_null and _holds_on_empty(node):
            yield node
            return
    if kind in ("and_expression", "or_expression", "not_expression"):
        for child in node["children"]:
            yield from _risky(child)


def _pinned(path: tuple[str, ...], guards: list[Node], fields: frozenset[str] | None) -> bool:
    """Whether the rule makes sure a record carries `path`: `fields` names only its key, or
    another part of the condition that is false without it (or without a key of the same
    trigger family, or the subscription's link) must hold too."""
    key = path[1]
    if fields is not None and fields == {key}:
        return True
    family = key.split(".", 1)[0] if "." in key else None
    for guard in guards:
        paths = {p for n in _record_scope(guard) if (p := _data_path(n))}
        links = any(n["type"] == "field" and n["value"] == "_links" for n in _record_scope(guard))
        related = (
            path in paths
            or links
            or any(family is not None and p[1].split(".", 1)[0] == family for p in paths)
        )
        if related and not _holds_on_empty(guard):
            return True
    return False


def _fields(path: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{"type": "field", "value": key, "children": []} for key in path]


def _words(tree: Node, source: str) -> Iterator[str]:
    """Bare words (or "double-quoted" ones) compared with or passed to a function: field
    names in JMESPath, of fields no record has."""
    seen: set[str] = set()
    for node in _record_scope(tree):
        if node["type"] not in ("comparator", "function_expression"):
            continue
        for operand in node["children"]:
            name = operand.get("value") if operand["type"] == "field" else None
            if not isinstance(name, str) or name in ENVELOPE_KEYS or name in seen:
                continue
            if name in ("null", "true", "false"):
                continue  # router.conditions warns about these already
            seen.add(name)
            text = "'" + name.replace("'", "\\'") + "'"
            if f'"{name}"' in source:
                yield (
                    f'"{name}" in double quotes is a field name, and records have no such '
                    f"field; write {text} in single quotes for the text"
                )
            else:
                yield (
                    f"{name} here is a field name, and records have no such field; write "
                    f"{text} in single quotes for the text"
                )


def _dotted_paths(tree: Node) -> Iterator[str]:
    seen: set[str] = set()
    for node in _record_scope(tree):
        path = _data_path(node)
        if path is None or len(path) < 3 or path[1] not in TRIGGER_FAMILIES:
            continue
        key = f"{path[1]}.{path[2]}"
        if key not in seen:
            seen.add(key)
            shown = unparse({"type": "subexpression", "children": _fields(("data", key))})
            yield f'trigger events name this key "{key}", with a dot; write {shown}'


def _carried_keys(rule: Rule) -> frozenset[str]:
    """Data keys every record the rule matches carries: identifiers, the one field `fields`
    names, and keys the condition cannot hold without."""
    carried = set(IDENTIFIERS)
    if rule.match.fields is not None and len(rule.match.fields) == 1:
        carried |= rule.match.fields
    if rule.match.condition is not None:
        carried |= _required_keys(rule.match.condition)
    return frozenset(carried)


@functools.lru_cache(maxsize=FINDINGS_CACHE_SIZE)
def _required_keys(condition: Condition) -> frozenset[str]:
    """Data keys the condition cannot hold without."""
    required: set[str] = set()
    for conjunct in _conjuncts(condition.parsed):
        paths = _paths_in(conjunct)
        if len(paths) == 1 and not _holds_on_empty(conjunct):
            required.add(next(iter(paths))[1])
    return frozenset(required)


# ---------------------------------------------------------------- templates


def _templates(kind: str, spec: Mapping[str, Any]) -> Iterator[tuple[KeyPath, str]]:
    """(key path inside the action, source) of every template of an action's table."""
    for key in keys_of(kind):
        value = spec.get(key.name)
        if not key.template or value is None:
            continue
        if isinstance(value, str):
            yield (key.name,), value
        elif isinstance(value, list):
            yield from (((key.name, i), v) for i, v in enumerate(value) if isinstance(v, str))
        elif isinstance(value, dict):
            yield from (((key.name, k), v) for k, v in value.items() if isinstance(v, str))


def _data_key(node: nodes.Node) -> str | None:
    """The key of `data.key` / `data["key"]`, else None."""
    if isinstance(node, nodes.Getattr) and _is_data(node.node):
        return str(node.attr)
    if (
        isinstance(node, nodes.Getitem)
        and _is_data(node.node)
        and isinstance(node.arg, nodes.Const)
        and isinstance(node.arg.value, str)
    ):
        return node.arg.value
    return None


def _is_data(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Name) and node.name == "data"


def _inner_key(node: nodes.Node) -> tuple[str, str] | None:
    """(first, second) of `data.first.second` (any mix of dots and brackets)."""
    if not isinstance(node, nodes.Getattr | nodes.Getitem):
        return None
    first = _data_key(node.node)
    if first is None:
        return None
    if isinstance(node, nodes.Getattr):
        return first, str(node.attr)
    if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
        return first, node.arg.value
    return None


def _template_dotted_paths(ast: nodes.Template) -> Iterator[str]:
    seen: set[str] = set()
    for node in walk(ast):
        if not isinstance(node, nodes.Getattr | nodes.Getitem):
            continue
        pair = _inner_key(node)
        if pair is None or pair[0] not in TRIGGER_FAMILIES:
            continue
        key = ".".join(pair)
        if key not in seen:
            seen.add(key)
            yield f'trigger events name this key "{key}", with a dot; write data["{key}"]'


def _unguarded_reads(ast: nodes.Template) -> list[str]:
    """Data keys the template reads with neither a `default` nor an `is defined` test (nor
    `in data`) anywhere in the template, in order of first reading."""
    tested: set[str] = set()
    reads: dict[str, bool] = {}  # key -> read at least once without a default

    def visit(node: nodes.Node, guarded: bool) -> None:
        if isinstance(node, nodes.Filter) and node.name in ("default", "d"):
            if node.node is not None:
                visit(node.node, True)
            for argument in (*node.args, *(kw.value for kw in node.kwargs)):
                visit(argument, False)
            return
        if isinstance(node, nodes.Test) and node.name in ("defined", "undefined"):
            key = _data_key(node.node)
            if key is not None:
                tested.add(key)
        if isinstance(node, nodes.Compare) and any(op.op in ("in", "notin") for op in node.ops):
            subject = node.expr
            if isinstance(subject, nodes.Const) and isinstance(subject.value, str):
                tested.add(subject.value)
        key = _data_key(node)
        if key is not None and key not in _MAPPING_METHODS:
            reads[key] = reads.get(key, False) or not guarded
        chain = isinstance(node, nodes.Getattr | nodes.Getitem)
        for child in children(node):
            visit(child, guarded and chain)

    visit(ast, False)
    return [key for key, unguarded in reads.items() if unguarded and key not in tested]


def _partial_message(key: str, operation: str) -> str:
    shown = f"data.{key}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) else f'data["{key}"]'
    return (
        f"{shown} may be missing: on {operation}, ACTITO sends only the fields that changed; "
        f'give a default: {{{{ {shown} | default("") }}}}'
    )


# ---------------------------------------------------------------- TOML


def toml_quote_hint(line: str) -> str | None:
    """What to say when TOML fails on `line` because a quote inside a one-line string ended
    it early (`condition = "data."etl.id" == 'x'"`), or None when that is not the cause."""
    found = _ASSIGNMENT.match(line)
    if found is None:
        return None
    key, quote = found[1], found[2]
    rest = line[found.end() :]
    inner = len(re.findall(r'(?<!\\)"', rest)) if quote == '"' else rest.count("'")
    if inner < 2:
        return None
    if quote == '"':
        return f'a " inside the "…" value of {key} ends it early; write each " inside it as \\"'
    return f"a ' inside the '…' value of {key} ends it early; put the value in \"…\" instead"
