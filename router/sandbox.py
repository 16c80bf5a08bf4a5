"""The one sandboxed Jinja2 environment every template is compiled in, and what it lets a
template reach.

An immutable sandbox with StrictUndefined (an undefined name is an error, never an empty
string), no autoescaping, and trailing newlines kept. Jinja's default globals (range, dict,
lipsum, cycler, joiner, namespace) are all removed: a template renders one value from one record
and needs none of them, and an empty global namespace is the smallest surface to audit.

Rendering is bounded in time and size (router.template_limits): the environment routes every
loop, lookup, call, operator, filter, literal and output through a check, nothing of a template
is evaluated while compiling it, and what a router has no use for (macros, call and block tags,
recursive loops, most methods of built-in types, a few filters) is not available.

Secrets answer item lookups only (SecretsView): their attributes (keys, items, ...) are not
reachable from templates, so `secrets.items()` cannot dump them.
"""

from __future__ import annotations

import functools
import json
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import update_wrapper
from typing import Any

import jinja2
from jinja2 import StrictUndefined, meta, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import (
    ImmutableSandboxedEnvironment,
    SandboxedEscapeFormatter,
    SandboxedFormatter,
)
from markupsafe import Markup

from router import template_limits as limits
from router import urls
from router.exceptions import MissingSecret
from router.settings import SECRET_PREFIX
from router.template_limits import Budget

# Jinja filters a router has no use for, each a way around the checks or more surface to audit:
# attr reaches attributes as getattr does not; batch and slice pad with repeated values;
# pprint, urlize and xmlattr format for people and browsers; random makes rule tests flaky.
DROPPED_FILTERS = frozenset({"attr", "batch", "pprint", "random", "slice", "urlize", "xmlattr"})
# Filters that turn their value into text first (Jinja calls str() on it): converted under the
# size limit here, so a list holding one long text many times cannot be written out at once.
TEXT_FILTERS = frozenset(
    {
        "capitalize", "center", "e", "escape", "forceescape", "format", "indent", "lower",
        "replace", "safe", "string", "striptags", "title", "trim", "truncate", "upper",
        "wordcount", "wordwrap",
    }
)  # fmt: skip
# Filters that loop over their input in Python: it is handed to them through the deadline
# check, so even the items they skip are counted.
LOOPING_FILTERS = frozenset(
    {"map", "max", "min", "reject", "rejectattr", "select", "selectattr", "sum", "unique"}
)
# Filters that only pick or reorder the values they are given: their result is not new data.
PICKING_FILTERS = frozenset(
    {
        "d", "default", "dictsort", "first", "groupby", "items", "last", "max", "min",
        "reject", "rejectattr", "reverse", "select", "selectattr", "sort", "unique",
    }
)  # fmt: skip
# Methods of built-in types a template may call (any other is refused). Those that can build a
# long text (center, join, replace, format...) are checked before they run.
STR_METHODS = frozenset(
    {
        "capitalize", "casefold", "center", "count", "endswith", "expandtabs", "find", "format",
        "format_map", "index", "isalnum", "isalpha", "isascii", "isdecimal", "isdigit",
        "isidentifier", "islower", "isnumeric", "isprintable", "isspace", "istitle", "isupper",
        "join", "ljust", "lower", "lstrip", "partition", "removeprefix", "removesuffix",
        "replace", "rfind", "rindex", "rjust", "rpartition", "rsplit", "rstrip", "split",
        "splitlines", "startswith", "strip", "swapcase", "title", "upper", "zfill",
    }
)  # fmt: skip
MAPPING_METHODS = frozenset({"get", "items", "keys", "values"})
SEQUENCE_METHODS = frozenset({"count", "index"})


class SecretsView(Mapping[str, str]):
    """Secrets answer only item lookups: their attributes (keys, items, ...) are not reachable
    from templates, so `secrets.items()` cannot dump them and a secret may be named `keys`."""


class PlaceholderSecrets(SecretsView):
    """Renders `<secret NAME>` for any NAME (`router test`, `router check`): never a value."""

    def __getitem__(self, name: str) -> str:
        return f"<secret {name}>"

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "PlaceholderSecrets()"


class EnvSecrets(SecretsView):
    """Resolved secret values by NAME (from ROUTER_SECRET_<NAME>); a missing NAME is a
    RenderError. The repr names the secrets, never their values."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)

    def __getitem__(self, name: str) -> str:
        try:
            return self._values[name]
        except KeyError:
            raise MissingSecret(f"secret {name} is not set ({SECRET_PREFIX}{name})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def get(self, name: str, default: Any = None) -> Any:
        return self._values.get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"EnvSecrets(names={sorted(self._values)!r})"


def tojson(value: Any) -> str:
    # Jinja's own tojson HTML-escapes (<, >, &, '); a JSON body wants plain, valid JSON.
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises its UndefinedError here
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate the sender escaped: keep it escaped
            text = json.dumps(value, allow_nan=False)
    return text


class _CodeGenerator(CodeGenerator):
    """Compiles a template so that each loop iterates through the deadline check, each literal
    list, tuple and mapping is measured, and `~` joins under the size limit."""

    def __init__(
        self,
        environment: jinja2.Environment,
        name: str | None,
        filename: str | None,
        stream: Any = None,
        defer_init: bool = False,
        optimized: bool = True,
    ) -> None:
        # Jinja's optimizer evaluates constant expressions, filters included, while compiling:
        # `'x' | center(10**9)` would run in `router check`, outside any limit.
        super().__init__(environment, name, filename, stream, defer_init, optimized=False)
        self._loop_iterables: set[int] = set()

    def _output_child_to_const(self, node: nodes.Expr, frame: Frame, finalize: Any) -> str:
        # The other compile-time evaluation: `{{ expression }}` made constant text. Only
        # literal template text may be.
        if isinstance(node, nodes.TemplateData):
            return super()._output_child_to_const(node, frame, finalize)
        raise nodes.Impossible()

    def visit(self, node: nodes.Node, *args: Any, **kwargs: Any) -> Any:
        if id(node) in self._loop_iterables:
            self.write("environment.checked_iter(")
            super().visit(node, *args, **kwargs)
            self.write(")")
            return None
        return super().visit(node, *args, **kwargs)

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        self._loop_iterables.add(id(node.iter))
        super().visit_For(node, frame)

    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self.write("environment.checked_build(")
        super().visit_List(node, frame)
        self.write(")")

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self.write("environment.checked_build(")
        super().visit_Dict(node, frame)
        self.write(")")

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        if node.ctx != "load":  # an assignment target: `{% for key, value in ... %}`
            super().visit_Tuple(node, frame)
            return
        self.write("environment.checked_build(")
        super().visit_Tuple(node, frame)
        self.write(")")

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.checked_tilde((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class NameTracker(meta.TrackingCodeGenerator, _CodeGenerator):
    """meta.find_undeclared_variables with our code generator (which evaluates nothing)."""


class _CheckedFormatter(SandboxedFormatter):
    """str.format under the size limit: each field is measured (its value and every width or
    precision in its spec) before it is formatted, and the text so far is counted."""

    def __init__(self, env: jinja2.Environment, budget: Budget, **kwargs: Any) -> None:
        super().__init__(env, **kwargs)
        self._budget = budget
        self._size = 0

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion is not None:
            self._budget.refuse_over(self._budget.size_of(value), "format()")
        return super().convert_field(value, conversion)

    def format_field(self, value: Any, format_spec: str) -> Any:
        budget = self._budget
        budget.tick()
        field_size = budget.size_of(value) + limits.spec_size(format_spec)
        budget.refuse_over(self._size + field_size, "format()")
        text = super().format_field(value, format_spec)
        self._size += len(text)
        budget.refuse_over(self._size, "format()")
        return text


class _CheckedEscapeFormatter(_CheckedFormatter, SandboxedEscapeFormatter):
    pass


class _Environment(ImmutableSandboxedEnvironment):
    # The operators whose result can be far larger than their operands: checked first.
    intercepted_binops = frozenset({"+", "*", "**", "%"})
    code_generator_class = _CodeGenerator

    def getattr(self, obj: Any, attribute: str) -> Any:
        limits.current()  # checks the deadline
        if isinstance(obj, SecretsView):
            return obj[attribute]
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        limits.current()  # checks the deadline
        if isinstance(obj, SecretsView):
            return obj[argument]
        return super().getitem(obj, argument)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if not super().is_safe_attribute(obj, attr, value):
            return False
        allowed = _allowed_methods(value)
        return allowed is None or attr in allowed

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        if not (
            isinstance(value, types.MethodType | types.BuiltinMethodType)
            and value.__name__ in ("format", "format_map")
            and isinstance(value.__self__, str)
        ):
            return None
        text: str = value.__self__
        is_format_map = value.__name__ == "format_map"

        def checked_format(*args: Any, **kwargs: Any) -> str:
            budget = limits.current()
            formatter: _CheckedFormatter
            if isinstance(text, Markup):
                formatter = _CheckedEscapeFormatter(self, budget, escape=text.escape)
            else:
                formatter = _CheckedFormatter(self, budget)
            if is_format_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                result = formatter.vformat(text, (), args[0])
            else:
                result = formatter.vformat(text, args, kwargs)
            return budget.new_text(type(text)(result), "format()")

        return update_wrapper(checked_format, value)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget = limits.current()
        owner = getattr(obj, "__self__", None)
        if isinstance(owner, str) and isinstance(obj, types.MethodType | types.BuiltinMethodType):
            name = obj.__name__
            args = limits.str_call_args(budget, name, owner, args, kwargs)
            return limits.checked_result(
                budget, super().call(context, obj, *args, **kwargs), f"{name}()"
            )
        return super().call(context, obj, *args, **kwargs)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = limits.current()
        limits.check_binop(budget, operator, left, right)
        result = super().call_binop(context, operator, left, right)
        return limits.checked_result(budget, result, operator)

    # Called from the code _CodeGenerator writes, and for every buffer a block joins.

    def checked_iter(self, iterable: Iterable[Any]) -> Iterator[Any]:
        return limits.current().iterate(iterable)

    def checked_build(self, value: Any) -> Any:
        kind = "mapping" if isinstance(value, dict) else type(value).__name__
        return limits.current().built(value, f"this {kind}")

    def checked_tilde(self, parts: tuple[Any, ...]) -> str:
        budget = limits.current()
        texts = [budget.text(part, "~") for part in parts]
        budget.refuse_over(sum(map(len, texts)), "~")
        return budget.new_text("".join(texts), "~")

    def concat(self, parts: Iterable[str]) -> str:
        budget = limits.current()
        texts = parts if isinstance(parts, list) else list(parts)
        budget.refuse_over(sum(map(len, texts)), "a block of the template")
        return budget.new_text("".join(texts), "a block of the template")


def _finalize(value: Any) -> str:
    """Every `{{ expression }}` becomes text here, under the size limit, and is counted."""
    budget = limits.current()
    text = budget.text(value, "writing this value")
    if text is value:  # a text written as it is (text() counted the ones it converted)
        budget.made(len(text))
    return text


def _allowed_methods(value: Any) -> frozenset[str] | None:
    """The method names allowed for the object a bound method `value` belongs to; None when
    `value` is not a method of a built-in type (the sandbox's own rules apply)."""
    if not isinstance(value, types.MethodType | types.BuiltinMethodType):
        return None
    owner = value.__self__
    if isinstance(owner, type):
        return frozenset()  # class methods: dict.fromkeys, str.maketrans, ...
    if isinstance(owner, str):
        return STR_METHODS
    if isinstance(owner, dict):
        return MAPPING_METHODS
    if isinstance(owner, list | tuple):
        return SEQUENCE_METHODS
    if isinstance(owner, int | float):
        return frozenset()  # int.to_bytes(10**9) and the like
    return None


class _CheckedFilters(dict[str, Callable[..., Any]]):
    """The environment's filters: each one registered, however, is wrapped in the deadline and
    size checks."""

    def __setitem__(self, name: str, func: Callable[..., Any]) -> None:
        super().__setitem__(name, _checked_filter(name, func))

    def update(self, *args: Any, **kwargs: Any) -> None:
        for name, func in dict(*args, **kwargs).items():
            self[name] = func

    def setdefault(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        if name not in self:
            self[name] = func
        return self[name]


def _checked_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    # Filters decorated with pass_context / pass_environment get that first, then the value.
    skip = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0
    stringify = name in TEXT_FILTERS
    loops = name in LOOPING_FILTERS
    prechecked = name in limits.CHECKED_FILTERS
    picks = name in PICKING_FILTERS
    what = f"the {name} filter"

    @functools.wraps(func)
    def checked(*args: Any, **kwargs: Any) -> Any:
        budget = limits.current()
        if (stringify or loops or prechecked) and len(args) > skip:
            value = args[skip]
            if stringify and not isinstance(value, str):
                value = budget.text(value, what)
            if loops and not isinstance(value, jinja2.Undefined):
                value = budget.iterate(value)
            if prechecked:
                value = limits.check_filter(budget, name, value, args[skip + 1 :], kwargs)
            if value is not args[skip]:
                args = (*args[:skip], value, *args[skip + 1 :])
        result = func(*args, **kwargs)
        if picks or isinstance(result, int | float):
            return result
        if isinstance(result, str):
            return budget.new_text(result, what)
        if isinstance(result, Iterator):
            return budget.counted(result, what)
        return limits.checked_result(budget, result, what)

    return checked


@jinja2.pass_environment
def _sum(
    environment: jinja2.Environment, iterable: Iterable[Any], attribute: Any = None, start: Any = 0
) -> Any:
    # Only numbers: summing lists would build a list of every item, in quadratic time.
    if not isinstance(start, int | float):
        raise SecurityError("the sum filter adds numbers only")
    return jinja2.filters.sync_do_sum(environment, iterable, attribute, start)


def _list(value: Iterable[Any]) -> list[Any]:
    # Jinja's list() reads the whole input before anything could measure the result.
    return limits.current().collect(value, "the list filter")


@jinja2.pass_environment
def _join(
    environment: jinja2.Environment, value: Iterable[Any], d: str = "", attribute: Any = None
) -> str:
    # Jinja's join turns each item into text unchecked; here each item is measured first.
    budget = limits.current()
    if attribute is not None:
        getter = jinja2.filters.make_attrgetter(environment, attribute)
        value = map(getter, value)
    separator = budget.text(d, "the join filter")
    texts: list[str] = []
    size = 0
    for item in budget.iterate(value):
        text = budget.text(item, "the join filter")
        size += len(text) + (len(separator) if texts else 0)
        budget.refuse_over(size, "the join filter")
        texts.append(text)
    return separator.join(texts)


def _environment() -> _Environment:
    env = _Environment(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=_finalize,
    )
    env.globals.clear()
    filters = _CheckedFilters()
    for name, func in env.filters.items():
        if name not in DROPPED_FILTERS:
            filters[name] = func
    env.filters = filters
    env.filters["tojson"] = tojson
    env.filters["sum"] = _sum
    env.filters["join"] = _join
    env.filters["list"] = _list
    env.filters[urls.TRUSTED_FILTER] = urls.trusted
    env.filters[urls.VALUE_FILTER] = urls.mark  # inserted by compile_url_template only
    return env


ENV = _environment()
