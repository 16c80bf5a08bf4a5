"""One sandboxed Jinja2 environment: templates are compiled once at load, rendered at delivery.

The environment is an immutable sandbox with StrictUndefined (an undefined name is an error, never
an empty string), no autoescaping, and trailing newlines kept. Jinja's default globals (range,
dict, lipsum, cycler, joiner, namespace) are all removed: a template renders one value from one
record and needs none of them, and an empty global namespace is the smallest surface to audit.
`include`, `import` and `extends` are refused at compile time (there is no loader).

A template sees only the context names in CONTEXT_NAMES. Secrets are reachable only as
`secrets.NAME` or `secrets["NAME"]` with a literal name, so the names a rule set needs are known
at load and no template can list or dump the secrets mapping; nothing of `os.environ` is reachable.
Render errors are one sentence and never carry a secret value.

`data.key` and `data["key"]` both read an item's key; a key with dots, or one named like a dict
method (items, keys, values, get), needs the item form: `data["etl.executionStatus"]`.

Rendering is bounded in time and size (router.template_limits): the environment routes every
loop, lookup, call, operator, filter, literal and output through a check, nothing of a template
is evaluated while compiling it, and what a router has no use for (macros, call and block
tags, recursive loops, most methods of built-in types, a few filters) is not available.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import update_wrapper
from typing import Any

import jinja2
from jinja2 import StrictUndefined, meta, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.defaults import DEFAULT_NAMESPACE
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
from router.exceptions import MissingSecret, RenderError
from router.headers import header_problem
from router.mail import AddressProblem, check_email
from router.rules import Action, EmailAction, HttpAction, LogAction
from router.settings import SECRET_PREFIX
from router.template_limits import Budget, TemplateLimitExceeded

CONTEXT_NAMES: frozenset[str] = frozenset(
    {"record", "data", "rule", "secrets", "now", "delivery_id"}
)
_NAMES_IN_ORDER = "record, data, rule, secrets, now, delivery_id"

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
MAX_REASON_CHARS = 300  # of an error's own text in a render error (it may quote event data)
SEQUENCE_METHODS = frozenset({"count", "index"})


class TemplateProblem(ValueError):
    """A template cannot be compiled; `lineno` is 1-based inside the template source."""

    def __init__(self, message: str, lineno: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.lineno = lineno


class _SecretsBase(Mapping[str, str]):
    """Secrets answer only item lookups: their attributes (keys, items, ...) are not reachable
    from templates, so `secrets.items()` cannot dump them and a secret may be named `keys`."""


class PlaceholderSecrets(_SecretsBase):
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


class EnvSecrets(_SecretsBase):
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


def _tojson(value: Any) -> str:
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


class _NameTracker(meta.TrackingCodeGenerator, _CodeGenerator):
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
        if isinstance(obj, _SecretsBase):
            return obj[attribute]
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        limits.current()  # checks the deadline
        if isinstance(obj, _SecretsBase):
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
    env.filters["tojson"] = _tojson
    env.filters["sum"] = _sum
    env.filters["join"] = _join
    env.filters["list"] = _list
    env.filters[urls.TRUSTED_FILTER] = urls.trusted
    env.filters[urls.VALUE_FILTER] = urls.mark  # inserted by compile_url_template only
    return env


_ENV = _environment()


@dataclass(frozen=True, slots=True)
class Template:
    """A compiled template (immutable). `names`: the context names it uses; `secrets`: the NAME
    of each `secrets.NAME` it reads."""

    source: str
    names: frozenset[str]
    secrets: frozenset[str]
    _compiled: jinja2.Template = field(repr=False, compare=False)

    def render(self, context: Mapping[str, Any], *, where: str | None = None) -> str:
        """Render with `context` (see build_context), under the limits of the enclosing
        RenderLimits.applied() block (or the default limits). Raises RenderError, one sentence
        that starts with "template for <where>: " and never contains a secret value;
        TemplateLimitExceeded when a limit was reached."""
        prefix = f"template for {where}" if where else "template"
        try:
            with limits.rendering() as budget:
                return self._render(context, budget)
        except MissingSecret as exc:
            raise MissingSecret(f"{prefix}: {exc}") from None
        except TemplateLimitExceeded as exc:  # its message holds nothing of the template's data
            raise TemplateLimitExceeded(f"{prefix}: {exc}") from None
        except Exception as exc:
            if self.secrets and isinstance(context.get("secrets"), EnvSecrets):
                # A secret can reach an error message through a lookup such as
                # data[secrets.KEY | upper], in forms no redaction can recognise: say nothing.
                reason = f"{type(exc).__name__} (details withheld: this template reads secrets)"
            else:
                reason = _reason(exc)
            raise RenderError(f"{prefix}: {reason}") from None

    def _render(self, context: Mapping[str, Any], budget: Budget) -> str:
        # Through the generator, so output is counted as it comes instead of joined at the end.
        limit = budget.limits.max_bytes
        chunks: list[str] = []
        size = 0
        deadline = budget.deadline
        for chunk in self._compiled.generate(context):
            if time.monotonic() > deadline:
                budget.tick()
            size += len(chunk)
            if size > limit:  # a character is at least one byte
                raise _too_large(limit)
            chunks.append(chunk)
        text = "".join(chunks)
        if size * 4 > limit and not text.isascii():  # only then can the bytes be over
            size = len(text.encode("utf-8", "surrogatepass"))
        if size > limit:
            raise _too_large(limit)
        budget.made(len(text))
        return text


def _too_large(limit: int) -> TemplateLimitExceeded:
    return TemplateLimitExceeded(
        f"the rendered value exceeds the limit of {limit} bytes (ROUTER_TEMPLATE_MAX_BYTES); "
        "make it smaller or raise the limit"
    )


def _reason(exc: Exception) -> str:
    if isinstance(exc, RenderError):
        return str(exc)
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > MAX_REASON_CHARS:  # e.g. float() quotes the whole text it could not read
        text = text[: MAX_REASON_CHARS - 1] + "…"
    if isinstance(exc, jinja2.TemplateError | SecurityError):
        return text
    return f"{type(exc).__name__}: {text}"


def compile_template(source: str) -> Template:
    """Parse and compile `source`; raise TemplateProblem for syntax errors, unknown filters or
    tests, names outside CONTEXT_NAMES, a non-literal use of `secrets`, tags that are not
    available (include, import, extends, macro, call, block, autoescape, recursive loops) and
    templates nested deeper than Python can compile. Nothing of the template is evaluated."""
    try:
        return _compile(source)
    except TemplateProblem:
        raise
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateProblem(_one_sentence(exc), exc.lineno) from None
    except (RecursionError, SyntaxError):
        raise TemplateProblem("the template nests too deeply; simplify it") from None
    except ValueError:  # the lexer converts numbers; Python refuses one of over 4300 digits
        raise TemplateProblem("a number in the template has too many digits") from None


def _compile(source: str) -> Template:
    ast = _ENV.parse(source)
    _check_nodes(ast)
    secrets = _secret_names(source)
    tracker = _NameTracker(_ENV)
    tracker.visit(ast)
    names = frozenset(tracker.undeclared_identifiers)
    unknown = sorted(names - CONTEXT_NAMES)
    if unknown:
        raise TemplateProblem(_unknown_name(unknown[0]), _first_line(ast, unknown[0]))
    compiled = _ENV.from_string(ast)
    return Template(source=source, names=names, secrets=secrets, _compiled=compiled)


def compile_url_template(source: str) -> Template:
    """compile_template for an http action's url: each value is marked so that render_action
    can percent-encode it for where it stands (see router.urls). Also a TemplateProblem: a
    value from the event where the literal text shows the scheme, host, port or user info."""
    template = compile_template(source)
    ast = _ENV.parse(source)
    try:
        urls.mark_values(ast)
    except urls.UrlProblem as problem:
        raise TemplateProblem(problem.message, problem.lineno) from None
    return dataclasses.replace(template, _compiled=_ENV.from_string(ast))


def _one_sentence(exc: jinja2.TemplateSyntaxError) -> str:
    return " ".join((exc.message or "syntax error").split())


# Tags a template may not use, and why not: other templates (there are none); macros, call
# blocks, blocks (callable through `self`) and recursive loops recurse, holding each level's
# values at once; autoescape is evaluated while compiling.
_REFUSED_TAGS: tuple[tuple[tuple[type[nodes.Node], ...], str], ...] = (
    (
        (nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends),
        "include, import and extends are not available in templates",
    ),
    ((nodes.Macro, nodes.CallBlock), "macro and call tags are not available in templates"),
    ((nodes.Block,), "block tags are not available in templates"),
    ((nodes.EvalContextModifier,), "autoescape tags are not available in templates"),
)


def _check_nodes(ast: nodes.Template) -> None:
    # Jinja defers unknown filters inside `if` blocks to render time; we want them all at load.
    for node in ast.find_all(nodes.Node):
        if isinstance(node, nodes.Filter):
            _check_known("filter", node.name, _ENV.filters, node.lineno)
        elif isinstance(node, nodes.Test):
            _check_known("test", node.name, _ENV.tests, node.lineno)
        elif isinstance(node, nodes.For) and node.recursive:
            raise TemplateProblem("recursive loops are not available in templates", node.lineno)
        elif isinstance(node, nodes.Name) and node.name == "self":
            raise TemplateProblem(_unknown_name("self"), node.lineno)
        for kinds, message in _REFUSED_TAGS:
            if isinstance(node, kinds):
                raise TemplateProblem(message, node.lineno)


def _check_known(kind: str, name: str, known: Mapping[str, Any], lineno: int) -> None:
    if name in known:
        return
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise TemplateProblem(f"unknown {kind} '{name}'{hint}", lineno)


def _unknown_name(name: str) -> str:
    message = f"name '{name}' is not available in templates; use one of {_NAMES_IN_ORDER}"
    if name in DEFAULT_NAMESPACE:
        return f"{message}; Jinja's globals such as {name} are removed here"
    if name == "self":
        return f"{message}; block tags are not available either"
    close = difflib.get_close_matches(name, sorted(CONTEXT_NAMES), n=1)
    if close:
        return f"{message}; did you mean '{close[0]}'?"
    # The usual slip: a field of the event item written without `data.`.
    return f"{message}; the event's fields are under data, e.g. data.{name}"


def _first_line(ast: nodes.Template, name: str) -> int:
    for node in ast.find_all(nodes.Name):
        if node.name == name and node.ctx == "load":
            return int(node.lineno)
    return 1


def _secret_names(source: str) -> frozenset[str]:
    """NAME of every secrets.NAME / secrets["NAME"]; any other use of `secrets` is refused.
    Read from the tokens, not the syntax tree, where `"TO" "K"` or `("TOK")` already look
    like one literal: a secret's name must be written as exactly one."""
    tokens = list(_ENV.lexer.tokenize(source))
    found: set[str] = set()
    for index, token in enumerate(tokens):
        if token.type != "name" or token.value != "secrets":
            continue
        if index and tokens[index - 1].type == "dot":
            continue  # data.secrets: a key of the item, not the secrets
        after = [t.type for t in tokens[index + 1 : index + 4]]
        if after[:2] == ["dot", "name"] or after == ["lbracket", "string", "rbracket"]:
            found.add(tokens[index + 2].value)
        elif after[:1] == ["lbracket"]:
            raise TemplateProblem(
                'a secret must be named literally: secrets.NAME or secrets["NAME"]', token.lineno
            )
        else:
            raise TemplateProblem(
                "secrets can only be read one by one: write secrets.NAME", token.lineno
            )
    return frozenset(found)


def build_context(
    record: Mapping[str, Any],
    *,
    rule: str,
    delivery_id: str,
    secrets: Mapping[str, str],
    now: datetime | None = None,
) -> dict[str, Any]:
    """The names a template sees. `now` defaults to the current time; a naive `now` is UTC.
    A plain mapping of `secrets` is wrapped in EnvSecrets (its methods must stay unreachable)."""
    if not isinstance(secrets, _SecretsBase):
        secrets = EnvSecrets(secrets)
    moment = now or datetime.now(UTC)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return {
        "record": record,
        "data": record.get("data"),
        "rule": {"name": rule},
        "secrets": secrets,
        "now": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "delivery_id": delivery_id,
    }


def render_action(action: Action, context: Mapping[str, Any]) -> dict[str, Any]:
    """Render every template of `action`: the shape `router test --format json` prints for it
    (without "rule"). Raises RenderError naming the failing key, e.g. "template for url: ...",
    also when a rendered value fails its action type's check (router.urls for the url,
    router.headers for header values, router.mail for an e-mail), so a dry run meets the very
    error a delivery would."""
    # A dry run renders secrets as placeholders: where one stands, the real value is unknown.
    dry = isinstance(context.get("secrets"), PlaceholderSecrets)
    if isinstance(action, HttpAction):
        headers = {
            name: _header(value.render(context, where=f"headers.{name}"), f"headers.{name}")
            for name, value in action.headers
        }
        if action.body is None:
            body = _tojson(context.get("data"))
        else:
            body = action.body.render(context, where="body")
        try:
            url = urls.build(action.url.render(context, where="url"), placeholders=dry)
        except urls.UrlProblem as problem:
            raise RenderError(f"template for url: {problem.message}") from None
        return {
            "type": "http",
            "method": action.method,
            "url": url,
            "headers": headers,
            "body": body,
        }
    if isinstance(action, EmailAction):
        rendered: dict[str, Any] = {"type": "email"}
        for key, templates in (("to", action.to), ("cc", action.cc), ("bcc", action.bcc)):
            if key == "to" or templates:
                rendered[key] = [
                    template.render(context, where=f"{key}[{i}]")
                    for i, template in enumerate(templates)
                ]
        rendered["subject"] = action.subject.render(context, where="subject")
        rendered["text"] = action.text.render(context, where="text") if action.text else None
        rendered["html"] = action.html.render(context, where="html") if action.html else None
        try:
            return check_email(
                rendered,
                address_lists=action.address_lists,
                opaque=_has_placeholder if dry else None,
            )
        except AddressProblem as problem:
            raise RenderError(f"template for {problem.key}: {problem.problem}") from None
    if isinstance(action, LogAction):
        return {
            "type": "log",
            "level": action.level,
            "message": action.message.render(context, where="message"),
        }
    raise TypeError(f"not an action: {action!r}")


def _header(value: str, where: str) -> str:
    # A line break in a header value would add headers; see router.headers.
    problem = header_problem(value)
    if problem is not None:
        raise RenderError(f"template for {where}: {problem}")
    return value


def _has_placeholder(value: str) -> bool:
    return "<secret " in value
