"""Conditions: JMESPath expressions compiled once at load and evaluated on records. Pure.

A condition is parsed by the jmespath library and compiled to Python closures
(router.jmespath_compiled) that give exactly the library's results; explain takes the parsed
tree apart with the library's interpreter.

A condition holds when its result is truthy in JMESPath's sense (false, null, "", [] and {} are
false; 0 and the string "false" are true). An evaluation error (a function given a value of the
wrong type, e.g. ends_with on null) means it does not hold. Unknown functions and wrong numbers
of arguments, which jmespath reports only when searching, are compile errors here.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jmespath
from jmespath import exceptions as jmespath_errors
from jmespath.functions import Functions
from jmespath.lexer import Lexer
from jmespath.visitor import Options, TreeInterpreter

from router.jmespath_compiled import compile_tree

if TYPE_CHECKING:
    from jmespath.visitor import _TreeNode

# One interpreter for every condition: building one per search costs as much as the search.
_INTERPRETER = TreeInterpreter(Options())
_FUNCTIONS: Mapping[str, Any] = Functions().FUNCTION_TABLE
_LITERAL_NAMES = ("null", "true", "false")
CACHE_SIZE = 20_000  # compiled conditions kept by source, so a reload recompiles only changes
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")


class ConditionProblem(ValueError):
    """A condition cannot be compiled, or could not be evaluated on a record."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Condition:
    """A compiled JMESPath condition (immutable); equal when the sources are equal."""

    __slots__ = ("_evaluate", "_parsed", "source")

    def __init__(self, source: str, parsed: _TreeNode) -> None:
        self.source = source
        self._parsed = parsed
        self._evaluate = compile_tree(parsed)  # the interpreter's results, as closures

    def holds(self, record: Mapping[str, Any]) -> bool:
        """JMESPath truthiness of the result; an evaluation error (a function given a value of
        the wrong type, e.g. ends_with on null) means the condition does not hold."""
        try:
            return truthy(self._evaluate(record))
        except jmespath_errors.JMESPathError:
            return False

    @property
    def parsed(self) -> _TreeNode:
        """The parsed JMESPath tree (explain and the lints read it; never change it)."""
        return self._parsed

    def value(self, record: Mapping[str, Any]) -> Any:
        """The raw result (for explain); ConditionProblem when evaluation fails."""
        try:
            return self._evaluate(record)
        except jmespath_errors.JMESPathError as exc:
            raise ConditionProblem(" ".join(str(exc).split())) from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Condition) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)

    def __repr__(self) -> str:
        return f"Condition({self.source!r})"


def evaluate(node: Mapping[str, Any], record: Mapping[str, Any]) -> Any:
    """Evaluate one node of a parsed condition on `record` (JMESPathError when it fails)."""
    return _INTERPRETER.visit(node, record)  # type: ignore[arg-type]


def truthy(value: Any) -> bool:
    # JMESPath truthiness, not Python's: 0 is true. (`0 == False` in Python, so test identity.)
    if value is None or value is False:
        return False
    if isinstance(value, str | list | dict):
        return len(value) > 0
    return True


def compile_condition(source: str) -> Condition:
    """Compile a JMESPath condition; ConditionProblem (with the 1-based column) on a syntax
    error, an unknown function or a wrong number of arguments. Conditions (and problems) are
    kept by source: compiling the same text again is a lookup."""
    found = _compiled(source)
    if isinstance(found, ConditionProblem):
        raise ConditionProblem(found.message)
    return found


@functools.lru_cache(maxsize=CACHE_SIZE)
def _compiled(source: str) -> Condition | ConditionProblem:
    try:
        return _compile(source)
    except ConditionProblem as problem:
        return problem


def _compile(source: str) -> Condition:
    if not source.strip():
        raise ConditionProblem("the condition is empty; write a JMESPath expression")
    try:
        parsed = jmespath.compile(source).parsed
    except jmespath_errors.LexerError as exc:
        raise ConditionProblem(f"column {exc.lex_position + 1}: {exc.message}") from None
    except jmespath_errors.ParseError as exc:
        if isinstance(exc, jmespath_errors.IncompleteExpressionError):
            what = "the expression is incomplete"
        elif str(exc.token_type).lower() == "number":
            number = _NUMBER.match(source, exc.lex_position)
            text = number[0] if number else str(exc.token_value)
            what = f"write the number {text} in backticks: `{text}`"
        elif exc.token_value is not None:
            what = f"unexpected {exc.token_value!r}"
        else:
            what = exc.msg
        raise ConditionProblem(f"column {exc.lex_position + 1}: {what}") from None
    except jmespath_errors.JMESPathError as exc:
        raise ConditionProblem(" ".join(str(exc).split())) from None
    _check_functions(parsed)
    return Condition(source, parsed)


def _check_functions(node: Mapping[str, Any]) -> None:
    # jmespath reports unknown functions and arity only at search time; we want them at load.
    if node.get("type") == "function_expression":
        name = node["value"]
        if name not in _FUNCTIONS:
            raise ConditionProblem(f"unknown JMESPath function {name}()")
        signature = _FUNCTIONS[name]["signature"]
        given = len(node["children"])
        variadic = bool(signature) and signature[-1].get("variadic", False)
        if given < len(signature) or (given > len(signature) and not variadic):
            wanted = f"{len(signature)}{' or more' if variadic else ''}"
            raise ConditionProblem(f"{name}() takes {wanted} argument(s), given {given}")
    for child in node.get("children", ()):
        if isinstance(child, Mapping):
            _check_functions(child)


def condition_warnings(source: str) -> list[str]:
    """Warnings for bare `null`, `true`, `false`: in JMESPath they are field names (almost
    always null), the literals are written with backticks. Quoted identifiers ("null") and
    names after a dot (data.true) are meant as field names and are not reported."""
    return list(_warnings(source))


@functools.lru_cache(maxsize=CACHE_SIZE)
def _warnings(source: str) -> tuple[str, ...]:
    warnings: list[str] = []
    previous = ""
    try:
        for token in Lexer().tokenize(source):
            if (
                token["type"] == "unquoted_identifier"
                and token["value"] in _LITERAL_NAMES
                and previous != "dot"
            ):
                message = (
                    f"'{token['value']}' here is a field name; "
                    f"write `{token['value']}` with backticks for the literal"
                )
                if message not in warnings:
                    warnings.append(message)
            previous = token["type"]
    except jmespath_errors.JMESPathError:
        return ()  # compile_condition reports the syntax error
    return tuple(warnings)
