"""Templates: compiled once at load (every problem a TemplateProblem with its line), rendered
at delivery within limits, in the sandbox of router.sandbox.

A template sees only the context names in CONTEXT_NAMES (build_context makes them), and those
of ENRICHMENT_NAMES its action fetches at delivery (`enrich = ["profile"]`: compile it inside
`enriched(...)`; elsewhere such a name is an error at load). Secrets are
reachable only as `secrets.NAME` or `secrets["NAME"]` with a literal name, so the names a rule
set needs are known at load and no template can list or dump the secrets mapping; nothing of
`os.environ` is reachable. `include`, `import` and `extends` are refused at compile time (there
is no loader), and so are the tags the sandbox leaves out. Render errors are one sentence and
never carry a secret value.

`data.key` and `data["key"]` both read an item's key; a key with dots, or one named like a dict
method (items, keys, values, get), needs the item form: `data["etl.executionStatus"]`.
"""

from __future__ import annotations

import contextlib
import difflib
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.defaults import DEFAULT_NAMESPACE
from jinja2.exceptions import SecurityError

from router import template_limits as limits
from router import template_syntax, urls
from router.exceptions import MissingSecret, RenderError, TemplateLimitExceeded
from router.sandbox import ENV, EnvSecrets, NameTracker, SecretsView
from router.template_limits import Budget

CONTEXT_NAMES: frozenset[str] = frozenset(
    {"record", "data", "rule", "secrets", "now", "delivery_id"}
)
_NAMES_IN_ORDER = "record, data, rule, secrets, now, delivery_id"
# What the templates of a batch action see instead (router.batches): the list of records.
BATCH_NAMES: frozenset[str] = frozenset({"records", "rule", "secrets", "now", "delivery_id"})
# What the templates of an alert's action see (router.alerts).
ALERT_NAMES: frozenset[str] = frozenset({"alert", "secrets", "now"})
# The names the templates being compiled may use (see `scoped`); None: CONTEXT_NAMES.
_SCOPE: ContextVar[frozenset[str] | None] = ContextVar("scope", default=None)
# Names an action's `enrich` key adds, each the name of what it fetches when the job is
# delivered (router.actions.base.ENRICHMENTS lists the same).
ENRICHMENT_NAMES: frozenset[str] = frozenset({"profile"})
PROFILE_SECTIONS = ("attributes", "subscriptions", "segmentations")
# The enrichment names the templates being compiled may use (see `enriched`).
_ENRICHED: ContextVar[frozenset[str]] = ContextVar("enriched", default=frozenset())

# Keys of the record itself (the envelope's): `{{ id }}` means record.id, not data.id.
_RECORD_KEYS = frozenset(
    {"id", "tableType", "tableId", "fields", "eventType", "triggerType", "operation", "_links"}
)
MAX_REASON_CHARS = 300  # of an error's own text in a render error (it may quote event data)


class TemplateProblem(ValueError):
    """A template cannot be compiled; `lineno` is 1-based inside the template source."""

    def __init__(self, message: str, lineno: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.lineno = lineno


@dataclass(frozen=True, slots=True)
class Template:
    """A compiled template (immutable). `names`: the context names it uses; `secrets`: the NAME
    of each `secrets.NAME` it reads; `ast`: its checked syntax tree (read it, never change it).

    The Python code of a template is generated when it first renders (see `_COMPILE_AT_LOAD`):
    loading a rule set only parses and checks its templates."""

    source: str
    names: frozenset[str]
    secrets: frozenset[str]
    ast: nodes.Template = field(repr=False, compare=False)
    url: bool = field(default=False, repr=False, compare=False)  # values marked (router.urls)
    _code: list[jinja2.Template] = field(default_factory=list, repr=False, compare=False)

    @property
    def _compiled(self) -> jinja2.Template:
        code = self._code
        if not code:  # two threads may both compile it: the same result, one kept
            code.append(_generate(self.source, url=self.url))
        return code[0]

    def render(self, context: Mapping[str, Any], *, where: str | None = None) -> str:
        """Render with `context` (see build_context), under the limits of the enclosing
        RenderLimits.applied() block (or the default limits). Raises RenderError, one sentence
        that starts with "template for <where>: " and never contains a secret value;
        TemplateLimitExceeded when a limit was reached."""
        prefix = f"template for {where}" if where else "template"
        try:
            compiled = self._compiled  # its first render makes the code: not on the budget
            with limits.rendering() as budget:
                return self._render(compiled, context, budget)
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

    def _render(self, compiled: jinja2.Template, context: Mapping[str, Any], budget: Budget) -> str:
        # Through the generator, so output is counted as it comes instead of joined at the end.
        limit = budget.limits.max_bytes
        chunks: list[str] = []
        size = 0
        deadline = budget.deadline
        for chunk in compiled.generate(context):
            if time.monotonic() > deadline:
                budget.tick()
                deadline = budget.deadline
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


# Templates whose syntax tree is deeper than this are turned into Python code at load: Python
# refuses code nested too deeply (about 20 nested loops, or 200 nested parentheses), and that
# must be a load error. Shallower ones cannot reach those limits and compile on first render.
_COMPILE_AT_LOAD = 12
CACHE_SIZE = 20_000  # compiled templates kept by source, so a reload recompiles only changes
# Keyed by source, url or not, the enrichments and the scope in force (each decides which names
# a template may use).
_Key = tuple[str, bool, frozenset[str], frozenset[str] | None]
_CACHE: dict[_Key, Template | TemplateProblem] = {}
_CACHE_LOCK = threading.Lock()


def compile_template(source: str) -> Template:
    """Parse and check `source`; raise TemplateProblem for syntax errors, unknown filters or
    tests, names outside CONTEXT_NAMES, a non-literal use of `secrets`, tags that are not
    available (include, import, extends, macro, call, block, autoescape, recursive loops) and
    templates nested deeper than Python can compile. Nothing of the template is evaluated.
    Templates (and problems) are kept by source: compiling the same text again is a lookup."""
    return _cached(source, url=False)


def compile_url_template(source: str) -> Template:
    """compile_template for an http action's url: each value is marked so that the http action
    can percent-encode it for where it stands (see router.urls). Also a TemplateProblem: a
    value from the event where the literal text shows the scheme, host, port or user info."""
    return _cached(source, url=True)


def _cached(source: str, *, url: bool) -> Template:
    key = (source, url, _ENRICHED.get(), _SCOPE.get())
    found = _CACHE.get(key)
    if found is None:
        found = _checked(source, url=url)
        with _CACHE_LOCK:
            if len(_CACHE) >= CACHE_SIZE:
                _CACHE.clear()  # a rule set larger than the cache: start over
            _CACHE[key] = found
    if isinstance(found, TemplateProblem):
        raise TemplateProblem(found.message, found.lineno)
    return found


def _checked(source: str, *, url: bool) -> Template | TemplateProblem:
    try:
        return _compile(source, url=url)
    except TemplateProblem as problem:
        return problem
    except jinja2.TemplateSyntaxError as exc:
        return TemplateProblem(_one_sentence(exc), exc.lineno)
    except (RecursionError, SyntaxError):
        return TemplateProblem("the template nests too deeply; simplify it")
    except ValueError:  # the lexer converts numbers; Python refuses one of over 4300 digits
        return TemplateProblem("a number in the template has too many digits")


def _compile(source: str, *, url: bool) -> Template:
    ast = template_syntax.parse(source)
    depth, names = _check_nodes(ast)
    secrets = _secret_names(source) if "secrets" in source else frozenset()
    if names is None or depth > _COMPILE_AT_LOAD:
        tracker = NameTracker(ENV)
        tracker.visit(ast)
        names = frozenset(tracker.undeclared_identifiers)
    unknown = sorted(names - (_SCOPE.get() or CONTEXT_NAMES) - _ENRICHED.get())
    if unknown:
        raise TemplateProblem(_unknown_name(unknown[0]), _first_line(ast, unknown[0]))
    template = Template(source=source, names=names, secrets=secrets, ast=ast, url=url)
    if depth > _COMPILE_AT_LOAD:
        plain = _generate(source, url=False)
        template._code.append(_generate(source, url=True) if url else plain)
    if url:
        try:
            urls.check_values(ast)
        except urls.UrlProblem as problem:
            raise TemplateProblem(problem.message, problem.lineno) from None
    return template


def _marked(source: str) -> nodes.Template:
    ast = template_syntax.parse(source)
    try:
        urls.mark_values(ast)
    except urls.UrlProblem as problem:
        raise TemplateProblem(problem.message, problem.lineno) from None
    return ast


def _generate(source: str, *, url: bool) -> jinja2.Template:
    """The template's Python code (it was checked when it was compiled)."""
    return ENV.from_string(_marked(source) if url else template_syntax.parse(source))


def syntax_tree(source: str) -> nodes.Template:
    """The syntax tree of a template (the compiled one's when it is at hand; never change it)."""
    for key in _keys(source):
        found = _CACHE.get(key)
        if isinstance(found, Template):
            return found.ast
    return template_syntax.parse(source)


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


def _keys(source: str) -> Iterator[_Key]:
    for url in (False, True):
        for enrichments in (frozenset(), ENRICHMENT_NAMES):
            for scope in (None, BATCH_NAMES, ALERT_NAMES):
                yield source, url, enrichments, scope


# Nodes that declare no name and open no scope (the text and its expressions). In a tree of
# only these, the names a template reads are the names it loads, which is what Jinja's own
# analysis (NameTracker, a pass of its code generator: ten times the cost) finds for it.
_NO_SCOPE = (nodes.Template, nodes.Output, nodes.TemplateData, nodes.Expr, nodes.Helper)


def _check_nodes(ast: nodes.Template) -> tuple[int, frozenset[str] | None]:
    """Refuse what templates may not use; return the depth of the tree, and the names it reads
    when no statement of it can declare one (else None: NameTracker must find them)."""
    # Jinja defers unknown filters inside `if` blocks to render time; we want them all at load.
    depth = 0
    loads: set[str] | None = set()
    stack: list[tuple[nodes.Node, int]] = [(ast, 1)]
    while stack:
        node, level = stack.pop()
        depth = max(depth, level)
        _check_node(node)  # in the order of the text, as find_all goes
        if loads is not None:
            if not isinstance(node, _NO_SCOPE):
                loads = None
            elif isinstance(node, nodes.Name) and node.ctx == "load":
                loads.add(node.name)
        stack.extend((child, level + 1) for child in reversed(template_syntax.children(node)))
    names = None if loads is None else frozenset(loads - ENV.globals.keys())
    return depth, names


def _check_node(node: nodes.Node) -> None:
    if isinstance(node, nodes.Filter):
        _check_known("filter", node.name, ENV.filters, node.lineno)
    elif isinstance(node, nodes.Test):
        _check_known("test", node.name, ENV.tests, node.lineno)
    elif isinstance(node, nodes.For) and node.recursive:
        raise TemplateProblem("recursive loops are not available in templates", node.lineno)
    elif isinstance(node, nodes.Name) and node.name == "self":
        raise TemplateProblem(_unknown_name("self"), node.lineno)
    if isinstance(node, _NO_SCOPE):
        return  # no tag: the refused ones are all statements
    for kinds, message in _REFUSED_TAGS:
        if isinstance(node, kinds):
            raise TemplateProblem(message, node.lineno)


def _check_known(kind: str, name: str, known: Mapping[str, Any], lineno: int) -> None:
    if name in known:
        return
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise TemplateProblem(f"unknown {kind} '{name}'{hint}", lineno)


@contextlib.contextmanager
def enriched(names: Collection[str]) -> Iterator[None]:
    """Templates compiled inside this block may also use `names` (of ENRICHMENT_NAMES): the
    action they belong to fetches those when its job is delivered."""
    token = _ENRICHED.set(frozenset(names) & ENRICHMENT_NAMES)
    try:
        yield
    finally:
        _ENRICHED.reset(token)


@contextlib.contextmanager
def scoped(names: frozenset[str]) -> Iterator[None]:
    """Templates compiled inside this block see `names` (BATCH_NAMES, ALERT_NAMES) instead of
    CONTEXT_NAMES."""
    token = _SCOPE.set(names)
    try:
        yield
    finally:
        _SCOPE.reset(token)


def _unknown_name(name: str) -> str:
    scope = _SCOPE.get()
    if scope is BATCH_NAMES and name in ("record", "data"):
        return (
            f"name '{name}' is not available in a batch action's templates; they see records, "
            "the list of records: {% for r in records %}{{ r.data... }}{% endfor %}"
        )
    if scope is ALERT_NAMES:
        return f"name '{name}' is not available in an alert's templates; use alert, secrets, now"
    if name == "records" and scope is None:
        return (
            "name 'records' is available only to a batch action; add batch = "
            '{ max_records = 500, max_wait = "2s" } to the action, or use record and data'
        )
    if name in ENRICHMENT_NAMES:
        return (
            f"name '{name}' is available only to an action that fetches it; add "
            f'enrich = ["{name}"] to the action'
        )
    message = f"name '{name}' is not available in templates; use one of {_NAMES_IN_ORDER}"
    if name in DEFAULT_NAMESPACE:
        return f"{message}; Jinja's globals such as {name} are removed here"
    if name == "self":
        return f"{message}; block tags are not available either"
    if name in _RECORD_KEYS:  # the event's own keys, not fields of its item
        return f"{message}; the event's {name} is record.{name}"
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
    tokens = list(ENV.lexer.tokenize(source))
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


class Placeholder(dict[str, Any]):
    """What a preview (`router test`) shows where a template reads fetched data it cannot have:
    any key renders as `<profile attributes.NAME>`. A dict, so that filters and methods meant
    for the real mapping (tojson, items, ...) still work on it, on nothing."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def __missing__(self, key: str) -> Any:
        if self.path == "profile" and key in PROFILE_SECTIONS:
            return Placeholder(f"profile {key}")
        return f"<{self.path}.{key}>" if " " in self.path else f"<{self.path} {key}>"

    def __str__(self) -> str:
        return f"<{self.path}>"


def build_batch_context(
    records: Sequence[Mapping[str, Any]],
    *,
    rule: str,
    delivery_id: str,
    secrets: Mapping[str, str],
    now: datetime | None = None,
) -> dict[str, Any]:
    """The names a batch action's templates see (BATCH_NAMES): `records` instead of `record`
    and `data`; otherwise as build_context."""
    context = build_context({}, rule=rule, delivery_id=delivery_id, secrets=secrets, now=now)
    for name in ("record", "data", *ENRICHMENT_NAMES):
        context.pop(name, None)
    context["records"] = list(records)
    return context


def build_context(
    record: Mapping[str, Any],
    *,
    rule: str,
    delivery_id: str,
    secrets: Mapping[str, str],
    now: datetime | None = None,
    enrichments: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The names a template sees. `now` defaults to the current time; a naive `now` is UTC.
    A plain mapping of `secrets` is wrapped in EnvSecrets (its methods must stay unreachable).
    `enrichments` holds what the action fetched (`{"profile": ...}`); None, for previews that
    fetch nothing, gives each enrichment name a Placeholder."""
    if not isinstance(secrets, SecretsView):
        secrets = EnvSecrets(secrets)
    moment = now or datetime.now(UTC)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    if enrichments is None:
        enrichments = {name: Placeholder(name) for name in ENRICHMENT_NAMES}
    return {
        **{name: value for name, value in enrichments.items() if name in ENRICHMENT_NAMES},
        "record": record,
        "data": record.get("data"),
        "rule": {"name": rule},
        "secrets": secrets,
        "now": moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "delivery_id": delivery_id,
    }
