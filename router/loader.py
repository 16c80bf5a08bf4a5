"""Rules directory -> RuleSet, or every problem in it as a located Diagnostic.

Files are read in name order (`*.toml`, then `tests/*.toml`, which hold only `[[test]]` tables),
decoded with tomllib and mapped to lines with router.toml_positions. Every check runs on every
file before anything is returned, so a user sees all mistakes at once. Templates and conditions
are compiled here, once; an action keeps its raw table as `spec`, and `parse_action` rebuilds
the same action from it for the worker.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import re
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from router.diagnostics import Diagnostic, Severity
from router.events import EVENT_TYPES, OPERATIONS, TABLE_TYPES, Record, normalise, parse_body
from router.exceptions import MalformedBody, NotAnEvent, RuleSetInvalid
from router.matching import (
    Condition,
    ConditionProblem,
    Matcher,
    compile_condition,
    condition_warnings,
)
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
    ExpectedAction,
    HttpAction,
    Location,
    LogAction,
    Match,
    RetryOverride,
    Rule,
    RuleSet,
    RuleTest,
)
from router.settings import SECRET_PREFIX
from router.templating import Template, TemplateProblem, compile_template
from router.toml_positions import KeyPath, Positions, positions

UnsetSecrets = Literal["ignore", "warn", "error"]

_RULE_KEYS = ("name", "description", "enabled", "match", "action")
_MATCH_SETS = (("tableType", TABLE_TYPES), ("operation", OPERATIONS), ("eventType", EVENT_TYPES))
_MATCH_KEYS = ("tableType", "tableId", "operation", "eventType", "fields", "condition")
_ACTION_KEYS = {
    "http": ("type", "method", "url", "headers", "body", "timeout", "retry"),
    "email": ("type", "to", "subject", "text", "html", "retry"),
    "log": ("type", "level", "message", "retry"),
}
_RETRY_KEYS = ("max_attempts", "max_age")
_TEST_KEYS = ("name", "event", "expect", "expect_per_record", "action")
_RENDERED_KEYS = {
    "http": ("method", "url", "headers", "body", "body_json"),
    "email": ("to", "subject", "text", "html"),
    "log": ("level", "message"),
}
_TEST_ACTION_KEYS = ("rule", "action", "record", *sum(_RENDERED_KEYS.values(), ()))
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP token (RFC 9110)
_SYNTAX_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


@dataclass(frozen=True)
class LoadResult:
    """The compiled rule set (None iff any diagnostic is an error) and every diagnostic, in
    file order then line order."""

    ruleset: RuleSet | None
    diagnostics: list[Diagnostic]


def load(
    directory: str | Path,
    *,
    secrets: Collection[str] | None = None,
    unset_secrets: UnsetSecrets = "warn",
) -> LoadResult:
    """Read, validate and compile the rules in `directory`. Problems in the files never raise:
    they are diagnostics. `secrets` names the secrets that are set (None: do not check); a
    template of an enabled rule reading another one gets a diagnostic per `unset_secrets`."""
    loader = _Loader(None if secrets is None else frozenset(secrets), unset_secrets)
    return loader.run(directory)


def load_rules(
    directory: str | Path,
    *,
    secrets: Collection[str] | None = None,
    unset_secrets: UnsetSecrets = "warn",
) -> RuleSet:
    """Like `load`, but raise RuleSetInvalid (carrying every diagnostic) on any error."""
    result = load(directory, secrets=secrets, unset_secrets=unset_secrets)
    if result.ruleset is None:
        raise RuleSetInvalid(result.diagnostics)
    return result.ruleset


def parse_action(spec: Mapping[str, Any]) -> Action:
    """Rebuild the action compiled from `spec` (an `Action.spec` stored with a delivery job);
    ValueError if the spec is not a valid action."""
    context = _Context("action", Positions(), [])
    action = _action(context, (), dict(spec))
    if action is None:
        raise ValueError("; ".join(f"{d.key or 'action'}: {d.message}" for d in context.out))
    return action


@dataclass(frozen=True)
class _File:
    name: str  # relative to the rules directory: "crm.toml", "tests/crm.toml"
    shown: str  # as diagnostics show it: the directory as given, joined with the name
    path: Path


@dataclass
class _Context:
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
            self.report(path, f"must be a table, not {_kind(value)}")
            return None
        for key in value:
            if key not in keys:
                self.report((*path, key), _unknown(key, keys))
        return value

    def require(self, table: Mapping[str, Any], key: str, path: KeyPath, why: str) -> Any:
        if key not in table:
            self.report((*path, key), f"is missing; {why}")
        return table.get(key)

    def text(self, path: KeyPath, value: Any) -> str | None:
        if value is None or isinstance(value, str):
            return value
        self.report(path, f"must be a string, not {_kind(value)}")
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
                self.report((*path, index), f"must be {what}, not {_kind(item)}")
            else:
                plural = "strings or integers" if numbers else "strings"
                self.report(path, f"must be {what} or a list of {plural}, not {_kind(item)}")
        return texts if len(texts) == len(items) else None

    def number(
        self, path: KeyPath, value: Any, bounds: tuple[float, float], *, integer: bool = False
    ) -> float | None:
        what = "an integer" if integer else "a number"
        if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
            self.report(path, f"must be {what}, not {_kind(value)}")
            return None
        low, high = bounds
        if not low <= value <= high:
            self.report(path, f"{value} is out of range; use {what} from {low:g} to {high:g}")
            return None
        return value

    def choice(self, path: KeyPath, value: str, known: Collection[str], what: str) -> None:
        close = _closest(value, known)
        hint = f"; did you mean '{close}'?" if close else ""
        self.report(path, f"'{value}' is not a known {what}{hint} (known: {', '.join(known)})")

    def template(self, path: KeyPath, value: Any) -> Template | None:
        source = self.text(path, value)
        if source is None:
            return None
        try:
            compiled = compile_template(source)
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


def _kind(value: Any) -> str:
    kinds: tuple[tuple[type, str], ...] = (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (dict, "a table"),
        (list, "an array"),
    )
    return next((name for cls, name in kinds if isinstance(value, cls)), "a date or time")


def _closest(word: str, known: Collection[str]) -> str | None:
    folded = {name.lower(): name for name in known}
    close = difflib.get_close_matches(word.lower(), list(folded), n=1, cutoff=0.6)
    return folded[close[0]] if close else None


def _unknown(key: str, known: Collection[str]) -> str:
    if tuple(known) in _ACTION_KEYS.values():
        owners = [kind for kind, keys in _ACTION_KEYS.items() if key in keys]
        if owners:
            return f"unknown key: only {' and '.join(owners)} actions have {key}"
    close = _closest(key, known)
    if close:
        return f"unknown key; did you mean '{close}'?"
    return f"unknown key; use one of {', '.join(known)}"


def _match(context: _Context, path: KeyPath, value: Any) -> Match | None:
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


def _action(context: _Context, path: KeyPath, value: Any) -> Action | None:
    """One action table (from a rule, or a stored spec); None after reporting any problem."""
    before = context.errors
    if not isinstance(value, dict):
        context.report(path, f"must be a table, not {_kind(value)}")
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


def _retry(context: _Context, path: KeyPath, value: Any) -> RetryOverride:
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
    context: _Context, path: KeyPath, raw: dict[str, Any], retry: RetryOverride
) -> Action | None:
    method = context.text((*path, "method"), raw.get("method", "POST"))
    if method is not None and method.upper() not in HTTP_METHODS:
        context.choice((*path, "method"), method, HTTP_METHODS, "HTTP method")
    url = context.template(
        (*path, "url"), context.require(raw, "url", path, "give the URL to call")
    )
    headers: list[tuple[str, Template | None]] = []
    table = raw.get("headers", {})
    if not isinstance(table, dict):
        context.report(
            (*path, "headers"), f"must be a table of name = template, not {_kind(table)}"
        )
    else:
        for name, value in table.items():
            if not _HEADER_NAME.match(name):
                context.report((*path, "headers", name), "is not a valid HTTP header name")
            headers.append((name, context.template((*path, "headers", name), value)))
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
    context: _Context, path: KeyPath, raw: dict[str, Any], retry: RetryOverride
) -> Action | None:
    value = context.require(raw, "to", path, "give at least one recipient address")
    to = context.texts((*path, "to"), value)
    if to == []:
        context.report((*path, "to"), "is empty; give at least one recipient address")
    at = [
        (*path, "to", i) if isinstance(value, list) else (*path, "to") for i in range(len(to or ()))
    ]
    recipients = [
        context.template(where, source) for where, source in zip(at, to or (), strict=True)
    ]
    subject = context.template(
        (*path, "subject"), context.require(raw, "subject", path, "give the subject")
    )
    text = context.template((*path, "text"), raw.get("text"))
    html = context.template((*path, "html"), raw.get("html"))
    if "text" not in raw and "html" not in raw:
        context.report((*path, "text"), "is missing; an email needs text, html or both")
    complete = [t for t in recipients if t is not None]
    if subject is None or not complete or len(complete) < len(recipients):
        return None
    return EmailAction(copy.deepcopy(raw), tuple(complete), subject, text, html, retry)


def _log(
    context: _Context, path: KeyPath, raw: dict[str, Any], retry: RetryOverride
) -> Action | None:
    level = context.text((*path, "level"), raw.get("level", "info"))
    if level is not None and level.lower() not in LOG_LEVELS:
        context.choice((*path, "level"), level, LOG_LEVELS, "log level")
    message = context.template(
        (*path, "message"), context.require(raw, "message", path, "give the message to log")
    )
    if level is None or message is None:
        return None
    return LogAction(copy.deepcopy(raw), level.lower(), message, retry)


class _Loader:
    """One load: collects rules, tests and diagnostics over all files."""

    def __init__(self, secrets: frozenset[str] | None, unset: UnsetSecrets) -> None:
        self.secrets, self.unset = secrets, unset
        self.out: list[Diagnostic] = []
        self.rules: list[Rule] = []
        self.tests: list[RuleTest] = []
        self.defined: dict[str, Location] = {}  # rule name -> where it is first defined
        self.action_types: dict[str, list[Any]] = {}  # rule name -> raw `type` of each action
        self.used_secrets: set[str] = set()
        self.digest = hashlib.sha256()  # the version: over (name, content) of every file
        self.complete = True  # every rule file was read, so an unknown rule name is a mistake

    def run(self, directory: str | Path) -> LoadResult:
        files = self._discover(directory)
        documents = [doc for file in files if (doc := self._read(file)) is not None]
        for file, document, context in documents:
            context.rule, context.hidden = None, 0
            allowed = ("test",) if file.name.startswith("tests/") else ("rule", "test")
            for key in document:
                if key == "rule" and key not in allowed:
                    context.report((key,), "rules are not read from tests/; move it to a rule file")
                elif key in _RULE_KEYS and "rule" in allowed:
                    context.report((key,), "is outside any rule; put it under a [[rule]] table")
                elif key not in allowed:
                    context.report((key,), _unknown(key, allowed))
            for index, raw in enumerate(
                _array(context, document, "rule") if "rule" in allowed else ()
            ):
                self._rule(context, ("rule", index), raw)
        for file, document, context in documents:
            for index, raw in enumerate(_array(context, document, "test")):
                self._test(context, index, raw, file)
        order = {file.shown: position for position, file in enumerate(files)}
        diagnostics = sorted(self.out, key=lambda d: (order.get(d.file, -1), d.line))
        if any(d.severity == "error" for d in diagnostics):
            return LoadResult(None, diagnostics)
        rules = tuple(self.rules)
        version = self.digest.hexdigest()[:12]
        ruleset = RuleSet(
            rules, tuple(self.tests), version, frozenset(self.used_secrets), Matcher(rules)
        )
        return LoadResult(ruleset, diagnostics)

    def _discover(self, directory: str | Path) -> list[_File]:
        shown, root = os.fspath(directory), Path(directory)
        if not root.is_dir():
            self.out.append(Diagnostic(shown, 0, "the rules directory does not exist"))
            return []
        files: list[_File] = []
        seen: set[Path] = set()
        for folder in ("", "tests"):
            if not (root / folder).is_dir():
                continue
            for entry in sorted((root / folder).iterdir(), key=lambda entry: entry.name):
                # Hidden entries include Kubernetes' `..data`: its files are reached through the
                # `x.toml -> ..data/x.toml` links, and each real file is read once.
                if entry.name.startswith(".") or entry.suffix != ".toml" or not entry.is_file():
                    continue
                if entry.resolve() in seen:
                    continue
                seen.add(entry.resolve())
                name = f"{folder}/{entry.name}" if folder else entry.name
                files.append(_File(name, os.path.join(shown, folder, entry.name), entry))
        if all(file.name.startswith("tests/") for file in files):
            self.out.append(
                Diagnostic(shown, 0, "no rule files; add a NAME.toml with a [[rule]] table")
            )
        return files

    def _read(self, file: _File) -> tuple[_File, dict[str, Any], _Context] | None:
        try:
            data = file.path.read_bytes()
        except OSError as exc:
            self.complete = False
            self.out.append(Diagnostic(file.shown, 0, f"cannot read the file: {exc.strerror}"))
            return None
        self.digest.update(f"{file.name}\0{len(data)}\0".encode())
        self.digest.update(data)
        try:
            source = data.decode("utf-8-sig")
            document = tomllib.loads(source)
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            message = "the file is not UTF-8 text; save it as UTF-8"
        except tomllib.TOMLDecodeError as exc:
            found = _SYNTAX_AT.search(str(exc))
            line = int(found[1]) if found else 1
            reason = _SYNTAX_AT.sub("", str(exc))
            where = f" at column {found[2]}" if found else ""
            message = f"invalid TOML{where}: {reason[:1].lower()}{reason[1:]}"
        else:
            context = _Context(file.shown, positions(source), self.out, self.secrets, self.unset)
            context.used_secrets = self.used_secrets
            return file, document, context
        self.complete = self.complete and file.name.startswith("tests/")
        self.out.append(Diagnostic(file.shown, line, message))
        return None

    def _rule(self, context: _Context, path: KeyPath, raw: Any) -> None:
        context.rule, context.hidden = None, 0
        if not isinstance(raw, dict):
            context.report(path, f"must be a table, not {_kind(raw)}")
            return
        location = Location(context.file, context.positions.line(path))
        value = context.require(raw, "name", path, "give the rule a unique name")
        name = context.text((*path, "name"), value)
        if name is not None and not name.strip():
            context.report((*path, "name"), "is empty; give the rule a unique name")
            name = None
        if name is not None:
            context.rule, context.hidden = name, len(path)
            first = self.defined.setdefault(name, location)
            if first is not location:
                message = f"rule name '{name}' is already used at {first}; rename one of them"
                context.report((*path, "name"), message)
        table = context.table(path, raw, _RULE_KEYS) or raw  # unknown keys, named by the rule
        before = context.errors
        description = context.text((*path, "description"), table.get("description", ""))
        enabled = table.get("enabled", True)
        if not isinstance(enabled, bool):
            context.report((*path, "enabled"), f"must be true or false, not {_kind(enabled)}")
        match = _match(context, (*path, "match"), table.get("match"))
        # A disabled rule may wait for its secret to be set: only enabled rules need theirs.
        context.secrets = self.secrets if enabled is not False else None
        actions: list[Action] = []
        raw_actions = context.require(table, "action", path, "add a [[rule.action]] table")
        if raw_actions is not None and (not isinstance(raw_actions, list) or not raw_actions):
            message = "must hold at least one action: write each as a [[rule.action]] table"
            context.report((*path, "action"), message)
        elif raw_actions is not None:
            if name is not None:
                kinds = [
                    item.get("type") if isinstance(item, dict) else None for item in raw_actions
                ]
                self.action_types.setdefault(name, kinds)
            built = [_action(context, (*path, "action", i), a) for i, a in enumerate(raw_actions)]
            actions = [action for action in built if action is not None]
        if context.errors == before and name and description is not None and match is not None:
            self.rules.append(Rule(name, description, enabled, match, tuple(actions), location))

    def _test(self, context: _Context, index: int, raw: Any, file: _File) -> None:
        path: KeyPath = ("test", index)
        before = context.errors
        table = context.table(path, raw, _TEST_KEYS)
        if table is None:
            return
        name = (
            context.text((*path, "name"), table.get("name")) or f"test {index + 1} of {file.shown}"
        )
        why = "give the event inline or as the path of a JSON file"
        loaded = self._event(context, (*path, "event"), context.require(table, "event", path, why))
        records = None if loaded is None else loaded[1]
        expect = self._names(context, (*path, "expect"), table.get("expect"))
        per_record: list[frozenset[str] | None] = []
        value = table.get("expect_per_record")
        if value is not None and not isinstance(value, list):
            context.report(
                (*path, "expect_per_record"), f"must be an array of lists, not {_kind(value)}"
            )
        elif value is not None:
            per_record = [
                self._names(context, (*path, "expect_per_record", i), v)
                for i, v in enumerate(value)
            ]
            if records is not None and len(value) != len(records):
                message = f"has {len(value)} list(s) but the event has {len(records)} record(s)"
                context.report((*path, "expect_per_record"), f"{message}; give one per record")
        if ("expect" in table) == ("expect_per_record" in table):
            both = "not both" if "expect" in table else "one is required"
            message = f"give expect (rules matching every record) or expect_per_record, {both}"
            context.report((*path, "expect"), message)
        raw_actions = table.get("action", [])
        if not isinstance(raw_actions, list):
            context.report((*path, "action"), "must be an array of tables: write [[test.action]]")
            raw_actions = []
        actions = [
            self._expected(context, (*path, "action", i), item, records)
            for i, item in enumerate(raw_actions)
        ]
        if context.errors > before or loaded is None:
            return
        self.tests.append(
            RuleTest(
                name=name,
                location=Location(context.file, context.positions.line(path)),
                event=loaded[0],
                expect=expect,
                expect_per_record=None
                if value is None
                else tuple(n for n in per_record if n is not None),
                actions=tuple(a for a in actions if a is not None),
            )
        )

    def _event(
        self, context: _Context, path: KeyPath, value: Any
    ) -> tuple[Any, list[Record]] | None:
        event = value
        if isinstance(value, str):
            source = Path(os.path.dirname(context.file)) / value
            try:
                event = parse_body(source.read_bytes())
            except OSError as exc:
                context.report(
                    path,
                    f"cannot read '{value}' ({exc.strerror}); the path is relative to this file",
                )
                return None
            except MalformedBody as exc:
                context.report(path, f"'{value}': {exc}")
                return None
        elif isinstance(value, dict | list):
            try:
                json.dumps(value)
            except TypeError:
                context.report(
                    path, "holds a date or time, which no event has; write it as a string"
                )
                return None
        else:
            if value is not None:
                context.report(
                    path, f"must be a table or the path of a JSON file, not {_kind(value)}"
                )
            return None
        try:
            return event, normalise(event)
        except NotAnEvent as exc:
            context.report(path, f"is not an ACTITO event: {exc}")
            return None

    def _names(self, context: _Context, path: KeyPath, value: Any) -> frozenset[str] | None:
        if value is not None and not isinstance(value, list):
            context.report(path, f"must be a list of rule names, not {_kind(value)}")
            return None
        names = context.texts(path, value)
        if names is None:
            return None
        for index, name in enumerate(names):
            self._known(context, (*path, index), name)
        return frozenset(names)

    def _known(self, context: _Context, path: KeyPath, name: str) -> bool:
        if name in self.defined or not self.complete:
            return name in self.defined
        close = _closest(name, self.defined)
        context.report(
            path, f"no rule is named '{name}'" + (f"; did you mean '{close}'?" if close else "")
        )
        return False

    def _expected(
        self, context: _Context, path: KeyPath, raw: Any, records: list[Record] | None
    ) -> ExpectedAction | None:
        before = context.errors
        table = context.table(path, raw, _TEST_ACTION_KEYS)
        if table is None:
            return None
        value = context.require(table, "rule", path, "name the rule whose action is checked")
        rule = context.text((*path, "rule"), value)
        action = _index(context, (*path, "action"), table.get("action", 0))
        record = _index(context, (*path, "record"), table.get("record", 0))
        kind = None
        if rule is not None and self._known(context, (*path, "rule"), rule) and action is not None:
            kinds = self.action_types.get(rule)
            if kinds is not None and action >= len(kinds):
                message = f"rule '{rule}' has {len(kinds)} action(s); action is an index from 0"
                context.report((*path, "action"), message)
            elif (
                kinds is not None
                and isinstance(kinds[action], str)
                and kinds[action] in _RENDERED_KEYS
            ):
                kind = kinds[action]
        if record is not None and records is not None and record >= len(records):
            message = f"the event has {len(records)} record(s); record is an index from 0"
            context.report((*path, "record"), message)
        values: dict[str, Any] = {}
        for key, value in table.items():
            at = (*path, key)
            if key in ("rule", "action", "record") or key not in _TEST_ACTION_KEYS:
                continue
            if kind is not None and key not in _RENDERED_KEYS[kind]:
                context.report(
                    at,
                    f"a {kind} action has no {key}; it renders {', '.join(_RENDERED_KEYS[kind])}",
                )
            elif key == "body_json":
                values[key] = value
            elif key == "headers" and not isinstance(value, dict):
                context.report(at, f"must be a table of header name = value, not {_kind(value)}")
            elif key == "headers":
                values[key] = {n: context.text((*at, n), v) for n, v in value.items()}
            elif key == "to":
                values[key] = context.texts(at, value)
            else:
                text = context.text(at, value)
                values[key] = text.upper() if key == "method" and text else text
                values[key] = text.lower() if key == "level" and text else values[key]
        if context.errors > before or rule is None or action is None or record is None:
            return None
        return ExpectedAction(
            rule, action, record, values, Location(context.file, context.positions.line(path))
        )


def _array(context: _Context, document: dict[str, Any], key: str) -> list[Any]:
    context.rule, context.hidden = None, 0
    value = document.get(key, [])
    if isinstance(value, list):
        return value
    context.report((key,), f"must be an array of tables: write [[{key}]], not [{key}]")
    return []


def _index(context: _Context, path: KeyPath, value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    context.report(path, f"must be an index (an integer from 0), not {value!r}")
    return None
