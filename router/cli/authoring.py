"""Authoring commands: `router check` (are the rule files valid?), `router test` (what would
these events do; do the [[test]] tables pass?) and `router new` (a rule file to start from)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import AoT

from router.actions import registry
from router.cli.common import (
    Formatter,
    Sub,
    add_format,
    plural,
    print_json,
    rules_dir,
    settings,
    shown,
)
from router.events import Record, normalise, parse_body
from router.exceptions import CommandError, RejectedBody, UsageError
from router.rulefiles import dryrun, scaffold, snapshots
from router.rulefiles.diagnostics import Diagnostic
from router.rulefiles.loader import LoadResult, load
from router.settings import secret_values
from router.template_limits import RenderLimits

EXIT_OK = 0
EXIT_FAILED = 1  # the rules, a test or a render failed


def _rule_files(directory: Path) -> int:
    # As the loader reads them: *.toml directly in the directory, hidden files left out.
    return sum(1 for path in directory.glob("*.toml") if not path.name.startswith("."))


def _counts(diagnostics: Sequence[Diagnostic]) -> tuple[int, int]:
    errors = sum(1 for d in diagnostics if d.severity == "error")
    return errors, len(diagnostics) - errors


def _summary(directory: Path, result: LoadResult) -> str:
    errors, warnings = _counts(result.diagnostics)
    files = _rule_files(directory)
    rules = "" if result.ruleset is None else f"{plural(len(result.ruleset.rules), 'rule')} in "
    return (
        f"{shown(directory)}: {rules}{plural(files, 'file')}, "
        f"{plural(errors, 'error')}, {plural(warnings, 'warning')}"
    )


# ---------------------------------------------------------------- router check

_CHECK_EPILOG = """\
Every problem in every file is reported at once, one per line:
  rules/<file>.toml:<line>: rule '<name>': <key path>: <what is wrong and how to fix it>
then a summary line. Exit status: 0 when there are no errors (warnings allowed), 1 otherwise.

Secrets (ROUTER_SECRET_<NAME>) that a template uses but that are not set are warnings; with
--strict they are errors, as `router serve` treats them.

examples:
  router check                      # the directory in ROUTER_RULES_DIR (default: rules)
  router check rules/
  router check --strict rules/      # before a deploy: every secret must be set
  router check --format json rules/ | jq '.diagnostics[] | select(.severity == "error")'
"""


def _add_check(sub: Sub[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "check",
        help="validate the rule files",
        description="Validate the rule files of RULES_DIR: TOML syntax, keys, types, "
        "JMESPath conditions, templates and secrets.",
        epilog=_CHECK_EPILOG,
        formatter_class=Formatter,
    )
    parser.add_argument(
        "rules_dir", nargs="?", metavar="RULES_DIR", help="default: ROUTER_RULES_DIR or 'rules'"
    )
    parser.add_argument(
        "--strict", action="store_true", help="treat secrets that are not set as errors"
    )
    add_format(parser)
    parser.set_defaults(func=_run_check)


def _run_check(args: argparse.Namespace) -> int:
    directory = rules_dir(args.rules_dir)
    result = load(
        directory,
        secrets=frozenset(secret_values()),
        unset_secrets="error" if args.strict else "warn",
    )
    errors, _ = _counts(result.diagnostics)
    ok = result.ruleset is not None and errors == 0
    if args.format == "json":
        ruleset = result.ruleset
        print_json(
            {
                "ok": ok,
                "rules": None if ruleset is None else len(ruleset.rules),
                "files": _rule_files(directory),
                "version": None if ruleset is None else ruleset.version,
                "diagnostics": [d.as_dict() for d in result.diagnostics],
            }
        )
    else:
        for diagnostic in result.diagnostics:
            print(diagnostic)
        print(_summary(directory, result))
    return EXIT_OK if ok else EXIT_FAILED


# ---------------------------------------------------------------- router test

_TEST_EPILOG = """\
With event files: a dry run. Each file holds one ACTITO push (an event, a BULK event or a list
of events); for each record it shows which rules match and every action rendered, and sends
nothing. Secrets render as <secret NAME>, never their value; delivery_id renders as "dry-run".
Without event files: runs every [[test]] table of the rule files and rules/tests/*.toml.

The first argument is RULES_DIR when it is a directory; otherwise every argument is an event
file and the rules come from ROUTER_RULES_DIR (default: rules). A directory after RULES_DIR
stands for the *.json files in it.

Exit status: 0 all good; 1 a test failed, an action could not be rendered, or the rule files
have errors; 2 an event file cannot be read or is not an ACTITO event.

examples:
  router test                                    # run the [[test]] tables of ./rules
  router test rules/ rules/events/new-subscriber.json
  router test rules/ rules/events/               # every sample event
  router test --explain rules/ event.json        # also: why each other rule did not match
  router test --update rules/                    # write what renders now into failing and
                                                 # new tests' [[test.action]] tables
  router test --format json rules/ event.json | jq '.records[].matched'
"""


def _add_test(sub: Sub[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "test",
        usage="router test [-h] [--explain] [--update] [--format {text,json}] [RULES_DIR] "
        "[EVENT.json ...]",
        help="dry-run events through the rules, or run the [[test]] tables",
        description="Show what the rules would do with some events (sending nothing), or run "
        "the rule tests.",
        epilog=_TEST_EPILOG,
        formatter_class=Formatter,
    )
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="RULES_DIR (when the first path is a directory), then EVENT.json files or "
        "directories of them",
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="for each rule that did not match, show the first criterion that failed "
        "(always included with --format json)",
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help="write what the rules render now into the [[test.action]] tables of failing and "
        "new tests (review the change with git diff)",
    )
    add_format(parser)
    parser.set_defaults(func=_run_test)


def _split_paths(paths: Sequence[str]) -> tuple[Path, list[Path]]:
    if paths and Path(paths[0]).is_dir():
        return rules_dir(paths[0]), _event_files(paths[1:])
    return rules_dir(None), _event_files(paths)


def _event_files(paths: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found = sorted(path.glob("*.json"))
            if not found:
                raise UsageError(f"{given}: the directory holds no *.json event file")
            files.extend(found)
        else:
            files.append(path)
    return files


def _read_events(files: Sequence[Path]) -> list[tuple[Path, Record]]:
    """Every record of every file, in order; any unreadable file is a UsageError."""
    records: list[tuple[Path, Record]] = []
    for path in files:
        try:
            body = path.read_bytes()
        except OSError as exc:
            raise UsageError(f"{path}: cannot read the event file: {exc.strerror}") from None
        try:
            records.extend((path, record) for record in normalise(parse_body(body)))
        except RejectedBody as exc:
            raise UsageError(f"{path}: not an ACTITO event: {exc}") from None
    return records


def _run_test(args: argparse.Namespace) -> int:
    directory, files = _split_paths(args.paths)
    if files and args.update:
        raise UsageError("--update writes the [[test]] tables; give no event files with it")
    records = _read_events(files)  # before loading: a bad event file is a usage error
    limits = RenderLimits.from_settings(settings())  # as a worker would render
    result = load(directory, secrets=None, unset_secrets="ignore")
    if result.ruleset is None:
        if args.format == "json":
            diagnostics = [d.as_dict() for d in result.diagnostics]
            print_json({"ok": False, "diagnostics": diagnostics})
        else:
            for diagnostic in result.diagnostics:
                print(diagnostic)
            print(_summary(directory, result))
        return EXIT_FAILED
    for diagnostic in result.diagnostics:  # warnings only; keep stdout for the report
        print(diagnostic, file=sys.stderr)
    if files:
        return _dry_run(args, result, records, limits)
    if args.update:
        result = _update(directory, result, limits)
    return _rule_tests(args, directory, result, limits)


def _update(directory: Path, result: LoadResult, limits: RenderLimits) -> LoadResult:
    """Write the snapshots of the failing and new tests, then load the files again."""
    assert result.ruleset is not None
    now = datetime.now(UTC)
    outcomes = dryrun.run_tests(result.ruleset, result.tests, now=now, limits=limits)
    written = snapshots.update(result.ruleset, outcomes, now=now, limits=limits)
    for item in written:
        tables = plural(item.tables, "[[test.action]] table")
        print(f"updated {item.test.name} ({item.test.location}): {tables}", file=sys.stderr)
    if not written:
        print("nothing to update", file=sys.stderr)
        return result
    again = load(directory, secrets=None, unset_secrets="ignore")
    if again.ruleset is None:  # cannot happen for tables written from rendered values
        raise CommandError("the updated rule files no longer load; undo the change with git")
    return again


def _dry_run(
    args: argparse.Namespace,
    result: LoadResult,
    records: list[tuple[Path, Record]],
    limits: RenderLimits,
) -> int:
    assert result.ruleset is not None
    explain = args.explain or args.format == "json"
    document = dryrun.dry_run(
        result.ruleset, [r for _, r in records], explain=explain, limits=limits
    )
    document["records"] = [
        {"index": entry["index"], "file": path.as_posix(), **entry}
        for entry, (path, _) in zip(document["records"], records, strict=True)
    ]
    failed = any("error" in a for entry in document["records"] for a in entry["actions"])
    failed = failed or any("error" in batch for batch in document["batches"])
    if args.format == "json":
        for entry in document["records"]:
            for miss in entry.get("not_matched", ()):
                miss.pop("lines", None)  # the text report's; `explain` holds the same
        print_json(document)
    else:
        _print_dry_run(document, [record for _, record in records])
    return EXIT_FAILED if failed else EXIT_OK


def _print_dry_run(document: dict[str, Any], records: Sequence[Record]) -> None:
    current_file = None
    matches = actions = errors = 0
    for entry, record in zip(document["records"], records, strict=True):
        if entry["file"] != current_file:
            current_file = entry["file"]
            print(f"{current_file}")
        print(f"  record {entry['index']}: {_describe(record)}")
        print(f"    matched: {', '.join(entry['matched']) or '(no rule)'}")
        matches += len(entry["matched"])
        for action in entry["actions"]:
            if "batch" in action:  # rendered once for its batch, printed below
                print(
                    f"    -> {action['rule']} action {action['action']}: in batch {action['batch']}"
                )
                continue
            actions += 1
            errors += "error" in action
            _print_action(action)
        if "not_matched" in entry:
            for miss in entry["not_matched"]:
                print(f"    not matched: {miss['rule']}: {miss['reason']}")
                for line in miss["lines"]:
                    print(f"      {line}")
    for batch in document["batches"]:
        actions += 1
        errors += "error" in batch
        shown = ", ".join(str(index) for index in batch["records"])
        print(f"  batch {batch['batch']}: {plural(len(batch['records']), 'record')} ({shown})")
        _print_action(batch)
    rendered = f"{plural(actions - errors, 'action')} rendered"
    failed = f", {errors} could not be rendered" if errors else ""
    counted = f"{plural(len(records), 'record')}, {plural(matches, 'match', 'matches')}"
    print(f"\n{counted}, {rendered}{failed}; nothing was sent")


def _describe(record: Record) -> str:
    keys = ("tableType", "tableId", "eventType", "operation", "triggerType")
    shown = [str(record[key]) for key in keys if record.get(key) is not None] or ["trigger"]
    event = f"event {record['id']}" if record.get("id") is not None else "event without id"
    return " ".join([*shown, f"({event})"])


def _print_action(action: dict[str, Any]) -> None:
    head = f"    -> {action['rule']} action {action['action']}: {action['type']}"
    if "error" in action:
        print(f"{head}: ERROR {action['error']}")
        return
    summary, blocks = registry.REGISTRY[action["type"]].describe(action)
    print(f"{head} {summary}".rstrip())
    for label, text in blocks:
        _print_block(label, text)


def _print_block(label: str, text: str) -> None:
    lines = text.splitlines() or [""]
    print(f"         {label}: {lines[0]}")
    for line in lines[1:]:
        print(f"         {' ' * len(label)}  {line}".rstrip())


def _rule_tests(
    args: argparse.Namespace, directory: Path, result: LoadResult, limits: RenderLimits
) -> int:
    assert result.ruleset is not None
    outcomes = dryrun.run_tests(result.ruleset, result.tests, limits=limits)
    failed = sum(1 for outcome in outcomes if not outcome.passed)
    passed = len(outcomes) - failed
    if args.format == "json":
        print_json(
            {
                "ok": failed == 0,
                "passed": passed,
                "failed": failed,
                "tests": [outcome.as_dict() for outcome in outcomes],
            }
        )
    else:
        if not outcomes:
            print(f"{shown(directory)}: no [[test]] tables to run")
        for outcome in outcomes:
            _print_outcome(outcome)
        print(f"\n{passed} passed, {failed} failed")
    return EXIT_FAILED if failed else EXIT_OK


def _print_outcome(outcome: dryrun.TestOutcome) -> None:
    status = "PASS" if outcome.passed else "FAIL"
    print(f"{status} {outcome.test.name} ({outcome.test.location})")
    for failure in outcome.failures:
        where = [f"record {failure.record}"] if failure.record is not None else []
        if failure.rule is not None:
            where.append(f"rule '{failure.rule}' action {failure.action}")
        if failure.key is not None:
            where.append(failure.key)
        print(f"  {failure.location}: {': '.join([*where, failure.message])}")
        if failure.expected is not None or failure.actual is not None:
            wanted, seen = _LABELS.get(failure.key or "", ("expected:", "actual:  "))
            print(f"    {wanted} {_value(failure.key, failure.expected)}")
            print(f"    {seen} {_value(failure.key, failure.actual)}")


# How a failure's two values are labelled, by key (default: expected / actual).
_LABELS = {
    "match": ("must match:    ", "matched:       "),
    "no_match": ("must not match:", "matched:       "),
}


def _value(key: str | None, value: Any) -> str:
    if key in ("expect", "match", "no_match") and isinstance(value, list):
        return ", ".join(value) or "(no rule)"
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


# ---------------------------------------------------------------- router new

_NEW_EPILOG = """\
Writes RULES_DIR/RULE_NAME.toml: a rule whose [rule.match] is filled from the event's first
record, a log action to start with, a commented example of every other action type, and a
[[test]] that uses the event. `router check` and `router test` pass on it as written; edit it
from there.

examples:
  router new vip-upgrade --from rules/events/new-subscriber.json
  router new import-failed --from etl-finished.json --dir rules/
"""


def _add_new(sub: Sub[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "new",
        help="write a rule file to start from, filled from a sample event",
        description="Write a new rule file from a sample event.",
        epilog=_NEW_EPILOG,
        formatter_class=Formatter,
    )
    parser.add_argument("name", metavar="RULE_NAME", help="the rule's name (also the file's)")
    parser.add_argument(
        "--from", dest="event", metavar="EVENT.json", required=True, help="a sample event"
    )
    parser.add_argument(
        "--dir", metavar="RULES_DIR", help="where to write it (default: ROUTER_RULES_DIR)"
    )
    parser.set_defaults(func=_run_new)


def _run_new(args: argparse.Namespace) -> int:
    if not scaffold.NAME.match(args.name):
        raise UsageError(
            f"{args.name!r} cannot name a rule file; use letters, digits, '-', '_' and '.'"
        )
    directory = rules_dir(args.dir)
    event = Path(args.event)
    ((_, record), *_) = _read_events([event])
    target = directory / f"{args.name}.toml"
    if target.exists():
        raise CommandError(f"{target} already exists; choose another name or remove it")
    before = load(directory, secrets=None, unset_secrets="ignore")
    if before.ruleset is not None and before.ruleset.rule(args.name) is not None:
        raise CommandError(f"a rule named '{args.name}' already exists in {shown(directory)}")
    relative = os.path.relpath(event.resolve(), directory.resolve())
    target.write_text(
        scaffold.rule_file(args.name, record, Path(relative).as_posix(), str(event)),
        encoding="utf-8",
    )
    _snapshot_new(directory, target)
    print(f"wrote {target}")
    print(
        f"next: edit it, then run `router check {shown(directory)}` and `router test "
        f"{shown(directory)}`"
    )
    return EXIT_OK


def _snapshot_new(directory: Path, target: Path) -> None:
    """Add what the new rule's action renders for the event to its [[test]] (when the whole
    directory loads: the snapshot needs the rule set)."""
    result = load(directory, secrets=None, unset_secrets="ignore")
    test = next((t for t in result.tests if t.location.file == str(target)), None)
    if result.ruleset is None or test is None:
        return
    document = tomlkit.parse(target.read_text(encoding="utf-8"))
    tests = document["test"]
    assert isinstance(tests, AoT)
    if snapshots.snapshot_test(result.ruleset, test, tests[0], now=datetime.now(UTC)):
        target.write_text(tomlkit.dumps(document), encoding="utf-8")


COMMANDS = (_add_check, _add_test, _add_new)
