"""Rules directory -> RuleSet and rule tests, or every problem in it as a located Diagnostic.

Files are read in name order (`*.toml`, then `tests/*.toml`, which hold only `[[test]]` tables),
decoded by router.rulefiles.decoding (tomli: the standard library's tomllib, compiled, so the
same errors) and mapped to lines with router.rulefiles.positions. Every check runs on every file
before anything is returned, so a user sees all mistakes at once. This module finds and reads
the files and assembles rules; router.rulefiles.schema checks a rule's match, each
action's type checks its own table (router.actions), templates and conditions are compiled once;
router.rulefiles.ruletests reads the `[[test]]` tables; router.rulefiles.alerts the `[[alert]]`
tables; router.rulefiles.lints warns about rules that are valid but almost certainly not what
their author meant.
"""

from __future__ import annotations

import gc
import hashlib
import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli

from router.actions.registry import compile_action
from router.checks import KeyPath, kind_of
from router.destinations import Destination
from router.exceptions import RouterError
from router.matching import RuleSet
from router.rulefiles.alerts import read_alert
from router.rulefiles.decoding import decode
from router.rulefiles.destinations import read_destination
from router.rulefiles.diagnostics import Diagnostic
from router.rulefiles.lints import lint_rule, toml_quote_hint
from router.rulefiles.positions import Pace, positions
from router.rulefiles.ruletests import RuleTest, TestReader
from router.rulefiles.schema import Context, UnsetSecrets, compile_match
from router.rules import MODES, Action, Alert, Location, Rule

__all__ = ["LoadResult", "RuleSetInvalid", "UnsetSecrets", "load", "load_rules"]

_RULE_KEYS = ("name", "description", "enabled", "mode", "match", "action")
_SYNTAX_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


class RuleSetInvalid(RouterError):
    """A rule set failed validation; `diagnostics` holds every problem found."""

    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        self.diagnostics = list(diagnostics)
        errors = [d for d in self.diagnostics if d.severity == "error"]
        super().__init__(f"{len(errors)} error(s) in the rule files")


@dataclass(frozen=True)
class LoadResult:
    """The compiled rule set (None iff any diagnostic is an error), its `[[test]]` tables, and
    every diagnostic, in file order then line order."""

    ruleset: RuleSet | None
    diagnostics: list[Diagnostic]
    tests: tuple[RuleTest, ...] = ()


def load(
    directory: str | Path,
    *,
    secrets: Collection[str] | None = None,
    unset_secrets: UnsetSecrets = "warn",
    pace: Pace | None = None,
) -> LoadResult:
    """Read, validate and compile the rules in `directory`. Problems in the files never raise:
    they are diagnostics. `secrets` names the secrets that are set (None: do not check); a
    template of an enabled rule reading another one gets a diagnostic per `unset_secrets`.

    `pace` is called between small pieces of the work (a rule, a piece of a file's text: well
    under a millisecond each), for a load that runs beside an event loop in another thread:
    it can let the loop run (router.reload). The result is the same with or without it."""
    checks = None if secrets is None else frozenset(secrets)
    loader = _Loader(checks, unset_secrets, pace)
    # A load allocates much and frees little until it ends: the cyclic collector would scan
    # the growing heap again and again (about a fifth of a large load) and find nothing.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return loader.run(directory)
    finally:
        if pace is not None:
            # What the load made would all be scanned by the next collection of the youngest
            # generation, one pause of 10 ms and more for 1,000 rules: move it to the oldest
            # (freeze and unfreeze do that without scanning), scanned with the rest of the
            # heap by the next full collection.
            gc.freeze()
            gc.unfreeze()
        if collecting:
            gc.enable()


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


@dataclass(frozen=True)
class _File:
    name: str  # relative to the rules directory: "crm.toml", "tests/crm.toml"
    shown: str  # as diagnostics show it: the directory as given, joined with the name
    path: Path


class _Loader:
    """One load: collects rules, tests and diagnostics over all files."""

    def __init__(
        self, secrets: frozenset[str] | None, unset: UnsetSecrets, pace: Pace | None
    ) -> None:
        self.secrets, self.unset = secrets, unset
        self.paced, self.pace = pace, pace or _no_pace
        self.out: list[Diagnostic] = []
        self.rules: list[Rule] = []
        self.defined: dict[str, Location] = {}  # rule name -> where it is first defined
        self.action_types: dict[str, list[Any]] = {}  # rule name -> raw `type` of each action
        self.used_secrets: set[str] = set()
        self.digest = hashlib.sha256()  # the version: over (name, content) of every file
        self.complete = True  # every rule file was read, so an unknown rule name is a mistake
        self.destinations: list[Destination] = []  # the [[destination]] tables
        self.declared: dict[str, Location] = {}  # destination key -> where it is declared

    def run(self, directory: str | Path) -> LoadResult:
        files = self._discover(directory)
        documents = [doc for file in files if (doc := self._read(file)) is not None]
        for file, document, context in documents:
            context.rule, context.hidden = None, 0
            allowed = (
                ("test",)
                if file.name.startswith("tests/")
                else ("rule", "test", "destination", "alert")
            )
            for key in document:
                if key == "rule" and key not in allowed:
                    context.report((key,), "rules are not read from tests/; move it to a rule file")
                elif key in _RULE_KEYS and "rule" in allowed:
                    context.report((key,), "is outside any rule; put it under a [[rule]] table")
                elif key not in allowed:
                    context.report((key,), context.unknown_key(key, allowed))
            for index, raw in enumerate(
                _array(context, document, "rule") if "rule" in allowed else ()
            ):
                self.pace()
                self._rule(context, ("rule", index), raw)
            for index, raw in enumerate(
                _array(context, document, "destination") if "destination" in allowed else ()
            ):
                found = read_destination(context, ("destination", index), raw, self.declared)
                if found is not None:
                    self.destinations.append(found)
        alerts: dict[str, Alert] = {}
        for file, document, context in documents:
            if file.name.startswith("tests/"):
                continue
            for index, raw in enumerate(_array(context, document, "alert")):
                alert = read_alert(context, ("alert", index), raw, self.defined, self.complete)
                if alert is not None and alert.name in alerts:
                    first = alerts[alert.name].location
                    message = f"an alert named '{alert.name}' is already at {first}; name each"
                    context.report(("alert", index), message)
                elif alert is not None:
                    alerts[alert.name] = alert
        tests = TestReader(self.defined, self.action_types, self.complete)
        for file, document, context in documents:
            for index, raw in enumerate(_array(context, document, "test")):
                self.pace()
                tests.read(context, index, raw, file.shown)
        order = {file.shown: position for position, file in enumerate(files)}
        diagnostics = sorted(self.out, key=lambda d: (order.get(d.file, -1), d.line))
        if any(d.severity == "error" for d in diagnostics):
            return LoadResult(None, diagnostics)
        version = self.digest.hexdigest()[:12]
        ruleset = RuleSet(
            tuple(self.rules),
            version,
            frozenset(self.used_secrets),
            destinations=tuple(self.destinations),
            alerts=tuple(alerts.values()),
        )
        return LoadResult(ruleset, diagnostics, tuple(tests.tests))

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

    def _read(self, file: _File) -> tuple[_File, dict[str, Any], Context] | None:
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
            decoded = decode(source, self.paced)
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            message = "the file is not UTF-8 text; save it as UTF-8"
        except tomli.TOMLDecodeError as exc:
            found = _SYNTAX_AT.search(str(exc))
            line = int(found[1]) if found else 1
            reason = _SYNTAX_AT.sub("", str(exc))
            where = f" at column {found[2]}" if found else ""
            lines = source.splitlines()
            hint = toml_quote_hint(lines[line - 1]) if 0 < line <= len(lines) else None
            message = f"invalid TOML{where}: {hint or reason[:1].lower() + reason[1:]}"
        else:
            lines_of = positions(source, self.paced, decoded.headers)
            context = Context(file.shown, lines_of, self.out, self.secrets, self.unset)
            context.used_secrets = self.used_secrets
            return file, decoded.document, context
        self.complete = self.complete and file.name.startswith("tests/")
        self.out.append(Diagnostic(file.shown, line, message))
        return None

    def _rule(self, context: Context, path: KeyPath, raw: Any) -> None:
        context.rule, context.hidden = None, 0
        if not isinstance(raw, dict):
            context.report(path, f"must be a table, not {kind_of(raw)}")
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
            context.report((*path, "enabled"), f"must be true or false, not {kind_of(enabled)}")
        mode = context.text((*path, "mode"), table.get("mode", "live"))
        if mode is not None and mode not in MODES:
            context.choice((*path, "mode"), mode, MODES, "mode")
        match = compile_match(context, (*path, "match"), table.get("match"))
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
            built = [
                compile_action(context, (*path, "action", i), a) for i, a in enumerate(raw_actions)
            ]
            actions = [action for action in built if action is not None]
        if context.errors == before and name and description is not None and match is not None:
            rule = Rule(name, description, enabled, match, tuple(actions), location, mode or "live")
            self.rules.append(rule)
            lint_rule(context, path, rule)


def _no_pace() -> None:
    pass


def _array(context: Context, document: dict[str, Any], key: str) -> list[Any]:
    context.rule, context.hidden = None, 0
    value = document.get(key, [])
    if isinstance(value, list):
        return value
    context.report((key,), f"must be an array of tables: write [[{key}]], not [{key}]")
    return []
