"""`router backtest NEW_RULES_DIR`: run the records the store kept through the serving rules and
through new ones, and say per rule what would change. Nothing is sent; the store is only read."""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from router.cli.common import (
    Formatter,
    Sub,
    add_format,
    add_store_option,
    load_settings,
    plural,
    print_json,
    rules_dir,
    settings,
    shown,
)
from router.exceptions import CommandError, StoreUnavailable, UsageError
from router.matching import RuleSet
from router.rulefiles.backtest import Backtest
from router.rulefiles.loader import load
from router.store import open_store
from router.template_limits import RenderLimits

EXIT_OK = 0
EXIT_FAILED = 1  # a rule set has errors
PAGE = 500  # stored records read per short read transaction
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

_EPILOG = """\
The serving rules are those of ROUTER_RULES_DIR (or --serving). Every record the store kept
(within ROUTER_RETENTION; with --since, only the recent ones) goes through both sets; for each
rule the report counts the records it newly matches, no longer matches, and renders differently,
with a few examples each. Secrets show as <secret NAME>. Nothing is sent, and the store is only
read, a page at a time, so the intake is never held up.

examples:
  router backtest rules-next/                     # everything the store kept
  router backtest rules-next/ --since 24h
  router backtest rules-next/ --store postgresql://router@db/router --format json
"""


def _add_backtest(sub: Sub[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "backtest",
        help="what new rules would have done with the events the store kept",
        description="Compare new rules with the serving ones on the events the store kept, "
        "sending nothing.",
        epilog=_EPILOG,
        formatter_class=Formatter,
    )
    parser.add_argument("new_rules", metavar="NEW_RULES_DIR", help="the rules to try")
    parser.add_argument(
        "--since",
        metavar="DURATION",
        help="only events received within this time, e.g. 30m, 12h, 7d (default: all kept)",
    )
    parser.add_argument(
        "--serving",
        metavar="RULES_DIR",
        help="the rules to compare with (default: ROUTER_RULES_DIR)",
    )
    add_store_option(parser)
    add_format(parser)
    parser.set_defaults(func=_run_backtest)


def parse_duration(text: str) -> float:
    """`30m`, `12h`, `7d`, `2w`, `90s` -> seconds; UsageError otherwise."""
    found = _DURATION.match(text.strip().lower())
    if found is None:
        raise UsageError(f"--since {text!r}: write a duration such as 30m, 12h or 7d")
    return float(found[1]) * _UNIT_SECONDS[found[2]]


def _rules(directory: Path, what: str) -> RuleSet:
    result = load(directory, secrets=None, unset_secrets="ignore")
    if result.ruleset is None:
        lines = "\n".join(str(d) for d in result.diagnostics if d.severity == "error")
        raise CommandError(f"the {what} rules in {shown(directory)} have errors:\n{lines}")
    return result.ruleset


def _run_backtest(args: argparse.Namespace) -> int:
    since = time.time() - parse_duration(args.since) if args.since else 0.0
    candidate_dir = rules_dir(args.new_rules)
    serving_dir = rules_dir(args.serving)
    serving = _rules(serving_dir, "serving")
    candidate = _rules(candidate_dir, "new")
    store_settings = load_settings(store_url=args.store)
    test = Backtest(serving, candidate, limits=RenderLimits.from_settings(settings()))
    try:
        asyncio.run(_feed(store_settings.store_url, test, since))
    except StoreUnavailable as exc:
        raise CommandError(f"the store is unavailable: {exc}") from None
    except ValueError as exc:  # a malformed store URL
        raise CommandError(str(exc)) from None
    report = {
        "serving": {"rules_dir": shown(serving_dir), "version": serving.version},
        "new": {"rules_dir": shown(candidate_dir), "version": candidate.version},
        "since": since or None,
        **test.report(),
    }
    if args.format == "json":
        print_json(report)
    else:
        _print(report)
    return EXIT_OK


async def _feed(url: str, test: Backtest, since: float) -> None:
    store = open_store(url)
    await store.open(migrate=False)  # reading never creates or migrates a store
    try:
        after = 0
        while page := await store.read_events(since=since, after=after, limit=PAGE):
            # Matching and rendering are CPU work: in a thread, page by page.
            await asyncio.to_thread(test.feed, page)
            after = page[-1].id
    finally:
        await store.close()


_LABELS = {
    "newly_matching": "newly matched",
    "no_longer_matching": "no longer matched",
    "changed": "rendered differently",
}


def _print(report: dict[str, Any]) -> None:
    window = ""
    if report["since"]:
        window = f" received since {datetime.fromtimestamp(report['since'], UTC):%Y-%m-%d %H:%M}Z"
    print(
        f"{report['new']['rules_dir']} against {report['serving']['rules_dir']} (serving), on "
        f"{plural(report['records'], 'record')} kept in the store{window}:"
    )
    for rule in report["rules"]:
        counts = ", ".join(
            f"{plural(rule[kind], 'record')} {label}"
            for kind, label in _LABELS.items()
            if rule[kind]
        )
        print(f"  {rule['rule']}: {counts}")
        for kind, label in _LABELS.items():
            for example in rule["examples"][kind]:
                print(f"    {label}: event {example['event_id']} ({example['received']})")
                for action in example.get("actions", ()):
                    _print_action(action)
    unchanged: Sequence[str] = report["unchanged"]
    if unchanged:
        print(f"  no change: {', '.join(unchanged)}")
    if not report["rules"]:
        print("  the new rules do what the serving ones do on every record")
    print("Nothing was sent.")


def _print_action(action: dict[str, Any]) -> None:
    for key, values in action["changed"].items():
        print(f"      action {action['action']} {key}")
        print(f"        before: {_line(values['before'])}")
        print(f"        after:  {_line(values['after'])}")


def _line(value: Any) -> str:
    return "(none)" if value is None else " ".join(str(value).split())


COMMANDS = (_add_backtest,)
