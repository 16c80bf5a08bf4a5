"""The schema of a rule's match and actions: validate one table, compile it, report diagnostics.

Every check reports through a `Context` (the file, its line map, the rule being read) and goes
on, so one pass finds every mistake; a part with an error compiles to None. The loader runs these
checks on each rule; the worker runs `parse_action` on the spec a delivery job stored, so a job
is rebuilt by the very code that validated it.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from router.diagnostics import Diagnostic, Severity
from router.events import EVENT_TYPES, OPERATIONS, TABLE_TYPES
from router.headers import header_problem
from router.mail import entry_addresses
from router.matching import Condition, ConditionProblem, compile_condition, condition_warnings
from router.rules import (
    ACTION_TYPES,
    HTTP_METHODS,
    HTTP_TIMEOUT_DEFAULT,
    HTTP_TIMEOUT_RANGE,
    LOG_LEVELS,
    RETRY_ATTEMPTS_RANGE,
    RETRY_MAX_AGE_RANGE,
    Action,
    EmailAction,
    HttpAction,
    LogAction,
    Match,
    RetryOverride,
)
from router.settings import SECRET_PREFIX
from router.templating import (
    Template,
    TemplateProblem,
    compile_template,
    compile_url_template,
)
from router.toml_positions import KeyPath, Positions

UnsetSecrets = Literal["ignore", "warn", "error"]

_MATCH_SETS = (("tableType", TABLE_TYPES), ("operation", OPERATIONS), ("eventType", EVENT_TYPES))
_MATCH_KEYS = ("tableType", "tableId", "operation", "eventType", "fields", "condition")
_ACTION_KEYS = {
    "http": ("type", "method", "url", "headers", "body", "timeout", "retry"),
    "email": ("type", "to", "cc", "bcc", "address_lists", "subject", "text", "html", "retry"),
    "log": ("type", "level", "message", "retry"),
}
_RETRY_KEYS = ("max_attempts", "max_age")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP token (RFC 9110)


def parse_action(spec: Mapping[str, Any]) -> Action:
    """Rebuild the action compiled from `spec` (an `Action.spec` stored with a delivery job);
    ValueError if the spec is not a valid action."""
    context = Context("action", Positions(), [])
    action = compile_action(context, (), dict(spec))
    if action is None:
        raise ValueError("; ".join(f"{d.key or 'action'}: {d.message}" for d in context.out))
    return action


@dataclass
class Context:
    """Where checks of one file report to, and which rule (if any) they are inside."""

    file: str
    positions: Positions
    out: list[Diagnostic]
    secrets: frozenset[str] | None = None  # set secrets; None: do not check
    unset: UnsetSecrets = "ignore"
    used_secrets: set[str] = field(default_factory=set)
    rule: str | None = None
    hidden: int = 0  # leading key-path parts left out of messages (the `rule, i` of a named rule)
    errors: int = 0

    def report(
        self, path: KeyPath, message: str, *, severity: Severity = "error", line: int = 0
    ) -> None:
        self.errors += severity == "error"
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path[self.hidden :])
        line = line or self.positions.line(path)
        self.out.append(
            Diagnostic(
                self.file,
                line,
                message,
                self.rule,
                key[1:] if key.startswith(".") else key or None,
                severity,
            )
        )

    def table(self, path: KeyPath, value: Any, keys: Collection[str]) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.report(path, f"must be a table, not {kind_of(value)}")
            return None
        for key in value:
            if key not in keys:
                self.report((*path, key), unknown_keys(key, keys))
        return value

    def require(self, table: Mapping[str, Any], key: str, path: KeyPath, why: str) -> Any:
        if key not in table:
            self.report((*path, key), f"is missing; {why}")
        return table.get(key)

    def text(self, path: KeyPath, value: Any) -> str | None:
        if value is None or isinstance(value, str):
            return value
        self.report(path, f"must be a string, not {kind_of(value)}")
        return None

    def texts(self, path: KeyPath, value: Any, *, numbers: bool = False) -> list[str] | None:
        """A string or a list of them (integers too with `numbers`, as text); None if absent
        or wrong. An empty list is the caller's to judge."""
        if value is None:
            return None
        items, ok = (value, True) if isinstance(value, list) else ([value], False)
        what = "a string or an integer" if numbers else "a string"
        texts: list[str] = []
        for index, item in enumerate(items):
            if isinstance(item, str):
                texts.append(item)
            elif numbers and isinstance(item, int) and not isinstance(item, bool):
                texts.append(str(item))
            elif ok:
                self.report((*path, index), f"must be {what}, not {kind_of(item)}")
            else:
                plural = "strings or integers" if numbers else "strings"
                self.report(path, f"must be {what} or a list of {plural}, not {kind_of(item)}")
        return texts if len(texts) == len(items) else None

    def number(
        self, path: KeyPath, value: Any, bounds: tuple[float, float], *, integer: bool = False
    ) -> float | None:
        what = "an integer" if integer else "a number"
        if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
            self.report(path, f"must be {what}, not {kind_of(value)}")
            return None
        low, high = bounds
        if not low <= value <= high:
            self.report(path, f"{value} is out of range; use {what} from {low:g} to {high:g}")
            return None
        return value

    def choice(self, path: KeyPath, value: str, known: Collection[str], what: str) -> None:
        close = closest(value, known)
        hint = f"; did you mean '{close}'?" if close else ""
        self.report(path, f"'{value}' is not a known {what}{hint} (known: {', '.join(known)})")

    def template(
        self,
        path: KeyPath,
        value: Any,
        *,
        compiler: Callable[[str], Template] = compile_template,
    ) -> Template | None:
        source = self.text(path, value)
        if source is None:
            return None
        try:
            compiled = compiler(source)
        except TemplateProblem as problem:
            line = self.positions.template_line(path, problem.lineno)
            self.report(path, f"template: {problem.message}", line=line)
            return None
        self.used_secrets |= compiled.secrets
        if self.secrets is not None and self.unset != "ignore":
            severity: Severity = "error" if self.unset == "error" else "warning"
            for name in sorted(compiled.secrets - self.secrets):
                message = f"secrets.{name} is not set; set the environment variable "
                self.report(path, f"{message}{SECRET_PREFIX}{name}", severity=severity)
        return compiled


def kind_of(value: Any) -> str:
    kinds: tuple[tuple[type, str], ...] = (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (dict, "a table"),
        (list, "an array"),
    )
    return next((name for cls, name in kinds if isinstance(value, cls)), "a date or time")


def closest(word: str, known: Collection[str]) -> str | None:
    folded = {name.lower(): name for name in known}
    close = difflib.get_close_matches(word.lower(), list(folded), n=1, cutoff=0.6)
    return folded[close[0]] if close else None


def unknown_keys(key: str, known: Collection[str]) -> str:
    if tuple(known) in _ACTION_KEYS.values():
        owners = [kind for kind, keys in _ACTION_KEYS.items() if key in keys]
        if owners:
            return f"unknown key: only {' and '.join(owners)} actions have {key}"
    close = closest(key, known)
    if close:
        return f"unknown key; did you mean '{close}'?"
    return f"unknown key; use one of {', '.join(known)}"


def compile_match(context: Context, path: KeyPath, value: Any) -> Match | None:
    if value is None:
        return Match()
    table = context.table(path, value, _MATCH_KEYS)
    if table is None:
        return None
    given: dict[str, list[str] | None] = {}
    for key in ("tableType", "tableId", "operation", "eventType", "fields"):
        given[key] = context.texts((*path, key), table.get(key), numbers=key == "tableId")
        if given[key] == []:
            context.report((*path, key), "is an empty list; remove the key to accept any value")
    for key, known in _MATCH_SETS:
        for index, name in enumerate(given[key] or ()):
            if name not in known:
                at = (*path, key, index) if isinstance(table[key], list) else (*path, key)
                context.choice(at, name, known, re.sub("([A-Z])", r" \1", key).lower())
    sets = {key: frozenset(values) if values else None for key, values in given.items()}
    condition: Condition | None = None
    source = context.text((*path, "condition"), table.get("condition"))
    if source is not None:
        try:
            condition = compile_condition(source)
        except ConditionProblem as problem:
            context.report((*path, "condition"), f"JMESPath: {problem.message}")
        for warning in condition_warnings(source):
            context.report((*path, "condition"), warning, severity="warning")
    return Match(
        table_type=sets["tableType"],
        table_id=sets["tableId"],
        operation=sets["operation"],
        event_type=sets["eventType"],
        fields=sets["fields"],
        condition=condition,
    )


def compile_action(context: Context, path: KeyPath, value: Any) -> Action | None:
    """One action table (from a rule, or a stored spec); None after reporting any problem."""
    before = context.errors
    if not isinstance(value, dict):
        context.report(path, f"must be a table, not {kind_of(value)}")
        return None
    kind = context.text((*path, "type"), context.require(value, "type", path, "set type"))
    if kind is None:
        return None
    if kind not in ACTION_TYPES:
        context.choice((*path, "type"), kind, ACTION_TYPES, "action type")
        return None
    context.table(path, value, _ACTION_KEYS[kind])
    retry = _retry(context, (*path, "retry"), value.get("retry"))
    built = {"http": _http, "email": _email, "log": _log}[kind](context, path, value, retry)
    return built if context.errors == before else None


def _retry(context: Context, path: KeyPath, value: Any) -> RetryOverride:
    table = {} if value is None else context.table(path, value, _RETRY_KEYS) or {}
    attempts = table.get("max_attempts")
    if attempts is not None:
        attempts = context.number(
            (*path, "max_attempts"), attempts, RETRY_ATTEMPTS_RANGE, integer=True
        )
    age = table.get("max_age")
    if age is not None:
        age = context.number((*path, "max_age"), age, RETRY_MAX_AGE_RANGE)
    return RetryOverride(
        max_attempts=None if attempts is None else int(attempts),
        max_age=None if age is None else float(age),
    )


def _http(
    context: Context, path: KeyPath, raw: dict[str, Any], retry: RetryOverride
) -> Action | None:
    method = context.text((*path, "method"), raw.get("method", "POST"))
    if method is not None and method.upper() not in HTTP_METHODS:
        context.choice((*path, "method"), method, HTTP_METHODS, "HTTP method")
    url = context.template(
        (*path, "url"),
        context.require(raw, "url", path, "give the URL to call"),
        compiler=compile_url_template,
    )
    headers: list[tuple[str, Template | None]] = []
    table = raw.get("headers", {})
    if not isinstance(table, dict):
        context.report(
            (*path, "headers"), f"must be a table of name = template, not {kind_of(table)}"
        )
    else:
        for name, value in table.items():
            if not _HEADER_NAME.match(name):
                context.report((*path, "headers", name), "is not a valid HTTP header name")
            template = context.template((*path, "headers", name), value)
            _check_literal(context, (*path, "headers", name), template, header_problem)
            headers.append((name, template))
    body = context.template((*path, "body"), raw.get("body"))
    timeout = context.number(
        (*path, "timeout"), raw.get("timeout", HTTP_TIMEOUT_DEFAULT), HTTP_TIMEOUT_RANGE
    )
    complete = [(n, t) for n, t in headers if t is not None]
    if method is None or url is None or timeout is None or len(complete) < len(headers):
        return None
    return HttpAction(
        copy.deepcopy(raw), method.upper(), url, tuple(complete), body, float(timeout), retry
    )


def _email(
    context: Context, path: KeyPath, raw: dict[str, Any], retry: RetryOverride
) -> Action | None:
    lists = raw.get("address_lists", False)
    if not isinstance(lists, bool):
        context.report((*path, "address_lists"), f"must be true or false, not {kind_of(lists)}")
        lists = False
    value = context.require(raw, "to", path, "give at least one recipient address")
    to = _recipients(context, (*path, "to"), value, lists)
    if to == []:
        context.report((*path, "to"), "is empty; give at least one recipient address")
    cc = _recipients(context, (*path, "cc"), raw.get("cc"), lists)
    bcc = _recipients(context, (*path, "bcc"), raw.get("bcc"), lists)
    subject = context.template(
        (*path, "subject"), context.require(raw, "subject", path, "give the subject")
    )
    _check_literal(
        context,
        (*path, "subject"),
        subject,
        lambda text: header_problem(text, encoded_words=True),
    )
    text = context.template((*path, "text"), raw.get("text"))
    html = context.template((*path, "html"), raw.get("html"))
    if "text" not in raw and "html" not in raw:
        context.report((*path, "text"), "is missing; an email needs text, html or both")
    recipients = [*(to or ()), *(cc or ()), *(bcc or ())]
    if subject is None or not to or None in recipients:
        return None
    return EmailAction(
        copy.deepcopy(raw),
        tuple(t for t in to if t is not None),
        subject,
        text,
        html,
        retry,
        cc=tuple(t for t in cc or () if t is not None),
        bcc=tuple(t for t in bcc or () if t is not None),
        address_lists=lists,
    )


def _recipients(
    context: Context, path: KeyPath, value: Any, lists: bool
) -> list[Template | None] | None:
    """Each entry of to, cc or bcc compiled (None where it failed); None if the key is absent
    or not a string or a list of them."""
    entries = context.texts(path, value)
    if entries is None:
        return None
    compiled: list[Template | None] = []
    for index, source in enumerate(entries):
        at = (*path, index) if isinstance(value, list) else path
        template = context.template(at, source)
        _check_literal(context, at, template, lambda text: _address_problem(text, lists))
        compiled.append(template)
    return compiled


def _address_problem(text: str, lists: bool) -> str | None:
    try:
        entry_addresses(text, lists=lists)
    except ValueError as exc:
        return str(exc)
    return None


def _check_literal(
    context: Context,
    path: KeyPath,
    template: Template | None,
    problem_of: Callable[[str], str | None],
) -> None:
    """Run a render-time check at load on a template that is plain text (no `{`), whose value
    is known now: the mistake is the rule's, and `router check` can say so."""
    if template is None or "{" in template.source:
        return
    problem = problem_of(template.source)
    if problem is not None:
        context.report(path, problem)


def _log(
    context: Context, path: KeyPath, raw: dict[str, Any], retry: RetryOverride
) -> Action | None:
    level = context.text((*path, "level"), raw.get("level", "info"))
    if level is not None and level.lower() not in LOG_LEVELS:
        context.choice((*path, "level"), level, LOG_LEVELS, "log level")
    message = context.template(
        (*path, "message"), context.require(raw, "message", path, "give the message to log")
    )
    if message is not None and message.secrets:
        # Secrets never reach a log line; a log action's message is one.
        names = ", ".join(f"secrets.{name}" for name in sorted(message.secrets))
        context.report((*path, "message"), f"a log message cannot show secrets ({names})")
        return None
    if level is None or message is None:
        return None
    return LogAction(copy.deepcopy(raw), level.lower(), message, retry)
