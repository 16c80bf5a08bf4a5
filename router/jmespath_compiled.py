"""JMESPath expressions compiled to Python closures, with exactly the jmespath library's results.

`compile_tree` turns a parsed expression (jmespath's tree of dicts) into one function of the
value it is evaluated on. Each node becomes a closure that does what the library's
TreeInterpreter does for that node, step for step: the same equality (0 and 1 are not true and
false), ordering only between numbers and strings (anything else is null), null propagation
through fields, indexes and slices of non-lists, projections that drop nulls, the same
truthiness for `||`, `&&`, `!` and filters, and functions called through the library's own
function table (so type errors are the library's JMESPathError, raised the same way). A few
common shapes get a shorter closure with the same result: a chain of plain fields
(`data.emailAddress`), and `==` / `!=` against a string or null literal.

Node types the compiler does not know are evaluated by the interpreter itself, so a new node
type in a later jmespath is still evaluated correctly. Expression references (`&field`, the
argument of sort_by, max_by, map...) are handed to functions as the interpreter's own objects.
Property-based tests compare the two on generated expressions and documents
(tests/test_compiled.py).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping
from numbers import Number
from typing import Any

from jmespath.functions import Functions
from jmespath.visitor import Options, TreeInterpreter, _Expression

Compiled = Callable[[Any], Any]
Node = Mapping[str, Any]

_INTERPRETER = TreeInterpreter(Options())
_FUNCTIONS = Functions()
_ORDERING: Mapping[str, Callable[[Any, Any], Any]] = {
    "lt": operator.lt,
    "gt": operator.gt,
    "lte": operator.le,
    "gte": operator.ge,
}


def compile_tree(node: Node) -> Compiled:
    """The function computing what jmespath's interpreter computes for `node`."""
    builder = _BUILDERS.get(node["type"])
    if builder is None:
        return _interpreted(node)
    return builder(node)


def _interpreted(node: Node) -> Compiled:
    visit = _INTERPRETER.visit

    def interpreted(value: Any) -> Any:
        return visit(node, value)  # type: ignore[arg-type]

    return interpreted


# ---------------------------------------------------------------- the library's value rules


def _is_actual_number(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, Number)


def _equals(x: Any, y: Any) -> bool:
    # 0 == False and 1 == True in Python, not in JMESPath.
    if _is_actual_number(x) and x in (0, 1):
        if isinstance(y, bool):
            return False
    elif _is_actual_number(y) and y in (0, 1) and isinstance(x, bool):
        return False
    return bool(x == y)


def _is_comparable(x: Any) -> bool:
    return _is_actual_number(x) or isinstance(x, str)


def _is_false(value: Any) -> bool:
    return value == "" or value == [] or value == {} or value is None or value is False


# ---------------------------------------------------------------- node types


def _field(node: Node) -> Compiled:
    key = node["value"]

    def field(value: Any) -> Any:
        try:
            return value.get(key)
        except AttributeError:
            return None

    return field


def _path(keys: tuple[str, ...]) -> Compiled:
    """A chain of fields: null as soon as a step is not a mapping (what each field gives)."""

    def path(value: Any) -> Any:
        for key in keys:
            try:
                value = value.get(key)
            except AttributeError:
                return None
        return value

    return path


def _chain(node: Node) -> Compiled:
    """subexpression, index_expression and pipe: each child on the result of the one before."""
    children = node["children"]
    if all(child["type"] == "field" for child in children):
        return _path(tuple(child["value"] for child in children))
    steps = tuple(compile_tree(child) for child in children)
    if len(steps) == 2:
        first, second = steps

        def pair(value: Any) -> Any:
            return second(first(value))

        return pair

    def chain(value: Any) -> Any:
        for step in steps:
            value = step(value)
        return value

    return chain


def _literal(node: Node) -> Compiled:
    constant = node["value"]

    def literal(value: Any) -> Any:
        return constant

    return literal


def _identity(node: Node) -> Compiled:
    def identity(value: Any) -> Any:
        return value

    return identity


def _comparator(node: Node) -> Compiled:
    operation = node["value"]
    left_node, right_node = node["children"]
    left, right = compile_tree(left_node), compile_tree(right_node)
    if operation in ("eq", "ne"):
        literal = _plain_literal(right_node)
        if literal is not _NOT_PLAIN:
            # Against a string or null, jmespath's equality is Python's.
            if operation == "eq":
                return lambda value: left(value) == literal
            return lambda value: left(value) != literal
        if operation == "eq":
            return lambda value: _equals(left(value), right(value))
        return lambda value: not _equals(left(value), right(value))
    compare = _ORDERING[operation]

    def ordering(value: Any) -> Any:
        # Both sides are evaluated before either is checked, as the interpreter does.
        x, y = left(value), right(value)
        if not (_is_comparable(x) and _is_comparable(y)):
            return None
        return compare(x, y)

    return ordering


_NOT_PLAIN = object()


def _plain_literal(node: Node) -> Any:
    if node["type"] == "literal" and (node["value"] is None or type(node["value"]) is str):
        return node["value"]
    return _NOT_PLAIN


def _or(node: Node) -> Compiled:
    left, right = (compile_tree(child) for child in node["children"])

    def either(value: Any) -> Any:
        matched = left(value)
        if _is_false(matched):
            matched = right(value)
        return matched

    return either


def _and(node: Node) -> Compiled:
    left, right = (compile_tree(child) for child in node["children"])

    def both(value: Any) -> Any:
        matched = left(value)
        if _is_false(matched):
            return matched
        return right(value)

    return both


def _not(node: Node) -> Compiled:
    (child,) = (compile_tree(c) for c in node["children"])

    def negation(value: Any) -> Any:
        result = child(value)
        if _is_actual_number(result) and result == 0:
            return False  # !0 is false: 0 is true in JMESPath
        return not result

    return negation


def _function(node: Node) -> Compiled:
    name = node["value"]
    arguments = tuple(compile_tree(child) for child in node["children"])
    call = _FUNCTIONS.call_function
    fast = _FAST_FUNCTIONS.get(name)
    if fast is not None and len(arguments) == 2:
        first, second = arguments

        def pair_function(value: Any) -> Any:
            x, y = first(value), second(value)
            result = fast(x, y)
            return call(name, [x, y]) if result is _UNSURE else result

        return pair_function

    def function(value: Any) -> Any:
        return call(name, [argument(value) for argument in arguments])

    return function


_UNSURE = object()


def _ends_with(search: Any, suffix: Any) -> Any:
    if type(search) is str and type(suffix) is str:
        return search.endswith(suffix)
    return _UNSURE  # the library checks the types, and raises its own error


def _starts_with(search: Any, prefix: Any) -> Any:
    if type(search) is str and type(prefix) is str:
        return search.startswith(prefix)
    return _UNSURE


def _contains(subject: Any, search: Any) -> Any:
    if type(subject) is list or (type(subject) is str and type(search) is str):
        return search in subject
    return _UNSURE


# What the library computes once the arguments pass its type check, for the argument types
# each handles (str and list exactly, as the library names them); anything else is _UNSURE and
# goes through the library's call.
_FAST_FUNCTIONS: Mapping[str, Callable[[Any, Any], Any]] = {
    "ends_with": _ends_with,
    "starts_with": _starts_with,
    "contains": _contains,
}


def _expref(node: Node) -> Compiled:
    expression = _Expression(node["children"][0], _INTERPRETER)

    def reference(value: Any) -> Any:
        return expression

    return reference


def _kept(results: Iterable[Any]) -> list[Any]:
    """A projection's results, in order, without the nulls (as the library collects them)."""
    return [result for result in results if result is not None]


def _projection(node: Node) -> Compiled:
    base, each = (compile_tree(child) for child in node["children"])

    def projection(value: Any) -> Any:
        elements = base(value)
        if not isinstance(elements, list):
            return None
        return _kept(map(each, elements))

    return projection


def _value_projection(node: Node) -> Compiled:
    base, each = (compile_tree(child) for child in node["children"])

    def value_projection(value: Any) -> Any:
        elements = base(value)
        try:
            elements = elements.values()
        except AttributeError:
            return None
        return _kept(map(each, elements))

    return value_projection


def _filter_projection(node: Node) -> Compiled:
    base, each, condition = (compile_tree(child) for child in node["children"])

    def filter_projection(value: Any) -> Any:
        elements = base(value)
        if not isinstance(elements, list):
            return None
        return _kept(each(element) for element in elements if not _is_false(condition(element)))

    return filter_projection


def _flatten(node: Node) -> Compiled:
    (base,) = (compile_tree(child) for child in node["children"])

    def flatten(value: Any) -> Any:
        elements = base(value)
        if not isinstance(elements, list):
            return None
        merged: list[Any] = []
        for element in elements:
            if isinstance(element, list):
                merged.extend(element)
            else:
                merged.append(element)
        return merged

    return flatten


def _index(node: Node) -> Compiled:
    position = node["value"]

    def index(value: Any) -> Any:
        if not isinstance(value, list):
            return None
        try:
            return value[position]
        except IndexError:
            return None

    return index


def _slice(node: Node) -> Compiled:
    bounds = slice(*node["children"])

    def slicing(value: Any) -> Any:
        if not isinstance(value, list):
            return None
        return value[bounds]

    return slicing


def _multi_select_list(node: Node) -> Compiled:
    parts = tuple(compile_tree(child) for child in node["children"])

    def multi_select_list(value: Any) -> Any:
        if value is None:
            return None
        return [part(value) for part in parts]

    return multi_select_list


def _multi_select_dict(node: Node) -> Compiled:
    parts = tuple((child["value"], compile_tree(child)) for child in node["children"])

    def multi_select_dict(value: Any) -> Any:
        if value is None:
            return None
        collected = {}
        for key, part in parts:
            collected[key] = part(value)
        return collected

    return multi_select_dict


def _key_val_pair(node: Node) -> Compiled:
    return compile_tree(node["children"][0])


_BUILDERS: Mapping[str, Callable[[Node], Compiled]] = {
    "field": _field,
    "subexpression": _chain,
    "index_expression": _chain,
    "pipe": _chain,
    "literal": _literal,
    "current": _identity,
    "identity": _identity,
    "comparator": _comparator,
    "or_expression": _or,
    "and_expression": _and,
    "not_expression": _not,
    "function_expression": _function,
    "expref": _expref,
    "projection": _projection,
    "value_projection": _value_projection,
    "filter_projection": _filter_projection,
    "flatten": _flatten,
    "index": _index,
    "slice": _slice,
    "multi_select_list": _multi_select_list,
    "multi_select_dict": _multi_select_dict,
    "key_val_pair": _key_val_pair,
}
