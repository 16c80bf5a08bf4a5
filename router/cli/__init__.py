"""The `router` command line (also `python -m router`).

    authoring.py    check, test, new: the rule files, what they would do, a new one
    backtest.py     backtest: new rules against the events the store kept
    processes.py    serve, worker, migrate: running the router
    deliveries.py   deliveries list, show, replay: the jobs in the store
    actito.py       actito plan, apply: the ACTITO webhook subscriptions the rules need
    common.py       settings, options and output the commands share

Errors become exit statuses here, and only here: 0 success; 1 the rules or their tests failed,
or a command could not do its work (CommandError, StartupError); 2 the command itself is wrong
(UsageError: bad arguments, an event file that is not an event, invalid settings). Each command
module registers its parsers in `add_<command>(sub)` functions (its COMMANDS) and runs in the
function it sets as `func`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import metadata

from router.cli import actito, authoring, backtest, deliveries, processes
from router.cli.common import Formatter
from router.exceptions import CommandError, StartupError, UsageError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_MAIN_EPILOG = """\
examples (the authoring loop: `router new NAME --from event.json` or edit rules/*.toml, then):
  router check rules/                              # is every file valid?
  router test rules/ rules/events/unsubscribe.json # what would this event do?
  router test --explain rules/ event.json          # why did a rule not match?
  router test rules/                               # do the [[test]] tables still pass?
  router backtest rules-next/ --since 7d           # what would new rules change on real events?

Settings come from ROUTER_* environment variables (and a .env file); `router <command> --help`
shows each command's options and examples.
"""

# The commands, in the order `router --help` lists them.
COMMANDS = (
    *authoring.COMMANDS,
    *backtest.COMMANDS,
    *processes.COMMANDS,
    *deliveries.COMMANDS,
    *actito.COMMANDS,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="router",
        description="Rule-based event router for ACTITO webhooks.",
        epilog=_MAIN_EPILOG,
        formatter_class=Formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def _version() -> str:
    try:
        return metadata.version("actito-router")
    except metadata.PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit status (the console script exits with it)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
    except UsageError as exc:
        print(f"router {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (CommandError, StartupError) as exc:
        print(f"router {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`router test ... | head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    return status
