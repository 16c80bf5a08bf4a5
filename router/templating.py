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
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jinja2
from jinja2 import StrictUndefined, meta, nodes
from jinja2.defaults import DEFAULT_NAMESPACE
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from router import urls
from router.exceptions import MissingSecret, RenderError
from router.headers import header_problem
from router.mail import AddressProblem, check_email
from router.rules import Action, EmailAction, HttpAction, LogAction
from router.settings import SECRET_PREFIX

CONTEXT_NAMES: frozenset[str] = frozenset(
    {"record", "data", "rule", "secrets", "now", "delivery_id"}
)
_NAMES_IN_ORDER = "record, data, rule, secrets, now, delivery_id"
# Guards against a template (or a record value fed into one) that builds a huge string or number.
MAX_REPEAT_LENGTH = 1_000_000  # items in the result of `sequence * n`
MAX_EXPONENT = 1_000


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


class _Environment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, _SecretsBase):
            return obj[attribute]
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(obj, _SecretsBase):
            return obj[argument]
        return super().getitem(obj, argument)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"an exponent above {MAX_EXPONENT} is not allowed")
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(count, int)
                    and len(seq) * count > MAX_REPEAT_LENGTH
                ):
                    raise SecurityError("a repeated value of this size is not allowed")
        return super().call_binop(context, operator, left, right)


def _environment() -> _Environment:
    env = _Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
    env.globals.clear()
    env.filters["tojson"] = _tojson
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
        """Render with `context` (see build_context). Raises RenderError, one sentence that
        starts with "template for <where>: " and never contains a secret value."""
        try:
            return self._compiled.render(context)
        except MissingSecret as exc:
            prefix = f"template for {where}" if where else "template"
            raise MissingSecret(f"{prefix}: {exc}") from None
        except Exception as exc:
            prefix = f"template for {where}" if where else "template"
            if self.secrets and isinstance(context.get("secrets"), EnvSecrets):
                # A secret can reach an error message through a lookup such as
                # data[secrets.KEY | upper], in forms no redaction can recognise: say nothing.
                reason = f"{type(exc).__name__} (details withheld: this template reads secrets)"
            else:
                reason = _reason(exc)
            raise RenderError(f"{prefix}: {reason}") from None


def _reason(exc: Exception) -> str:
    if isinstance(exc, RenderError):
        return str(exc)
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, jinja2.TemplateError | SecurityError):
        return text
    return f"{type(exc).__name__}: {text}"


def compile_template(source: str) -> Template:
    """Parse and compile `source`; raise TemplateProblem for syntax errors, unknown filters or
    tests, names outside CONTEXT_NAMES, a non-literal use of `secrets`, include/import/extends."""
    try:
        ast = _ENV.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateProblem(_one_sentence(exc), exc.lineno) from None
    _check_nodes(ast)
    names = frozenset(meta.find_undeclared_variables(ast))
    unknown = sorted(names - CONTEXT_NAMES)
    if unknown:
        raise TemplateProblem(_unknown_name(unknown[0]), _first_line(ast, unknown[0]))
    secrets = _secret_names(ast) if "secrets" in names else frozenset()
    try:
        compiled = _ENV.from_string(ast)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateProblem(_one_sentence(exc), exc.lineno) from None
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


def _check_nodes(ast: nodes.Template) -> None:
    # Jinja defers unknown filters inside `if` blocks to render time; we want them all at load.
    kinds = (nodes.Filter, nodes.Test, nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends)
    for node in ast.find_all(kinds):
        if isinstance(node, nodes.Filter):
            _check_known("filter", node.name, _ENV.filters, node.lineno)
        elif isinstance(node, nodes.Test):
            _check_known("test", node.name, _ENV.tests, node.lineno)
        else:
            raise TemplateProblem(
                "include, import and extends are not available in templates", node.lineno
            )


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


def _secret_names(ast: nodes.Template) -> frozenset[str]:
    """NAME of every secrets.NAME / secrets["NAME"]; any other use of `secrets` is refused."""
    found: set[str] = set()
    allowed: set[int] = set()
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        assert isinstance(node, nodes.Getattr | nodes.Getitem)
        target = node.node
        if not (isinstance(target, nodes.Name) and target.name == "secrets"):
            continue
        if isinstance(node, nodes.Getattr):
            found.add(node.attr)
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            found.add(node.arg.value)
        else:
            raise TemplateProblem(
                'a secret must be named literally: secrets.NAME or secrets["NAME"]', node.lineno
            )
        allowed.add(id(target))
    for name_node in ast.find_all(nodes.Name):
        if name_node.name == "secrets" and id(name_node) not in allowed:
            raise TemplateProblem(
                "secrets can only be read one by one: write secrets.NAME", name_node.lineno
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
