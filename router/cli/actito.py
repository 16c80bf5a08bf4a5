"""ACTITO commands: `router actito plan` and `router actito apply`, the webhook subscriptions
the rules need (router.actito.subscriptions)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from router.actito.client import ActitoClient, ActitoConfig
from router.actito.subscriptions import (
    Change,
    Derivation,
    Plan,
    Target,
    apply,
    derive,
    describe_key,
    list_subscriptions,
    make_plan,
)
from router.cli.common import Formatter, Sub, add_format, plural, print_json, rules_dir, settings
from router.exceptions import CommandError, DeliveryFailed, UsageError
from router.rulefiles.loader import load

_T = TypeVar("_T")

_EPILOG = """\
examples:
  router actito plan                 # what would change in the ACTITO entity
  router actito plan --format json
  router actito apply                # make those changes (asks first)
  router actito apply --yes          # without asking (scripts, CI)

settings: ROUTER_ACTITO_API_KEY, ROUTER_ACTITO_ENTITY, ROUTER_ACTITO_API_URL (your region's
host), ROUTER_PUBLIC_URL (ACTITO pushes to its /webhooks/actito) and ROUTER_WEBHOOK_SECRETS
(the subscriptions send the last one in the ROUTER_WEBHOOK_SECRET_HEADER header).
"""


def _add_actito(sub: Sub[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "actito",
        help="plan and apply the ACTITO webhook subscriptions the rules need",
        description="Derive the webhook subscriptions the enabled rules need (one per table "
        "and event type), compare them with those in the ACTITO entity, and make the "
        "difference. Subscriptions that push elsewhere are never touched.",
        epilog=_EPILOG,
        formatter_class=Formatter,
    )
    commands = parser.add_subparsers(dest="actito_command", metavar="COMMAND", required=True)
    plan = commands.add_parser(
        "plan",
        help="show what apply would change, changing nothing",
        description="List the subscriptions to create, to update (target URL, headers, "
        "fields), to deactivate, and those unchanged; and the rules no subscription can be "
        "derived for.",
        formatter_class=Formatter,
    )
    _add_rules_option(plan)
    add_format(plan)
    plan.set_defaults(func=_run_plan)
    go = commands.add_parser(
        "apply",
        help="make the subscriptions match the rules",
        description="Show the plan, ask for confirmation (unless --yes), then create, update "
        "and deactivate subscriptions so that ACTITO pushes what the rules need to "
        "ROUTER_PUBLIC_URL/webhooks/actito with the shared secret. Running it again changes "
        "nothing.",
        formatter_class=Formatter,
    )
    _add_rules_option(go)
    go.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    go.set_defaults(func=_run_apply)


def _add_rules_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rules", metavar="DIR", help="rules directory (ROUTER_RULES_DIR)")


@dataclass(frozen=True)
class _Setup:
    config: ActitoConfig
    target: Target
    derivation: Derivation


def _setup(args: argparse.Namespace) -> _Setup:
    """Everything the commands need before the first call, or a UsageError saying what to set."""
    current = settings()
    config = ActitoConfig.from_settings(current)
    if config.missing:
        raise UsageError(f"set {' and '.join(config.missing)} to reach ACTITO's API")
    public = current.public_url
    if not public:
        raise UsageError(
            "set ROUTER_PUBLIC_URL to the router's public HTTPS address (such as "
            "https://router.example.com): ACTITO pushes to its /webhooks/actito"
        )
    parts = urlsplit(public)
    if parts.scheme != "https" or not parts.netloc or parts.query or parts.fragment:
        raise UsageError(
            "ROUTER_PUBLIC_URL must be an https:// address without a query (ACTITO pushes "
            "only to public HTTPS addresses)"
        )
    if not current.webhook_secrets:
        raise UsageError(
            "set ROUTER_WEBHOOK_SECRETS: each subscription must send a shared secret, or the "
            "router cannot tell ACTITO's pushes from anyone else's"
        )
    # While two secrets are accepted (a rotation: old,new), subscriptions get the newest.
    secret = current.webhook_secrets[-1].get_secret_value()
    target = Target.of(public, {current.webhook_secret_header: secret}, current.actito_push_type)
    directory = rules_dir(args.rules)
    loaded = load(directory)
    if loaded.ruleset is None:
        raise CommandError(
            f"the rules in {directory} are invalid; run `router check {directory}` to see why"
        )
    return _Setup(config, target, derive(loaded.ruleset))


def _with_client(config: ActitoConfig, work: Callable[[ActitoClient], Awaitable[_T]]) -> _T:
    async def run() -> _T:
        client = ActitoClient(config)
        await client.start()
        try:
            return await work(client)
        finally:
            await client.close()

    try:
        return asyncio.run(run())
    except DeliveryFailed as exc:  # the client's RetryLater: ACTITO busy, unreachable, ...
        raise CommandError(f"{exc}; try again later") from None


def _plan(setup: _Setup) -> Plan:
    async def work(client: ActitoClient) -> Plan:
        return make_plan(setup.derivation, await list_subscriptions(client), setup.target)

    return _with_client(setup.config, work)


def _run_plan(args: argparse.Namespace) -> int:
    setup = _setup(args)
    plan = _plan(setup)
    if args.format == "json":
        print_json(_plan_json(setup, plan))
    else:
        _print_plan(setup, plan)
        count = len(plan.pending)
        print(
            f"\n{plural(count, 'change')} to make: run `router actito apply`."
            if count
            else "\nNothing to change."
        )
    return 0


def _run_apply(args: argparse.Namespace) -> int:
    setup = _setup(args)
    plan = _plan(setup)
    _print_plan(setup, plan)
    pending = plan.pending
    if not pending:
        print("\nNothing to change.")
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError(
                "refusing to change ACTITO's subscriptions without confirmation: run it in a "
                "terminal, or pass --yes"
            )
        answer = input(
            f"\nMake {plural(len(pending), 'change')} in ACTITO entity {setup.config.entity}? "
            "[y/N] "
        )
        if answer.strip().lower() not in ("y", "yes"):
            print("Nothing was changed.")
            return 1
    print()

    async def work(client: ActitoClient) -> int:
        return await apply(client, plan, done=lambda change: print(_done(change)))

    made = _with_client(setup.config, work)
    print(f"\n{plural(made, 'change')} made; ACTITO pushes to {setup.target.url}.")
    return 0


def _print_plan(setup: _Setup, plan: Plan) -> None:
    print(
        f"ACTITO entity {setup.config.entity} at {setup.config.host} holds "
        f"{plural(plan.listed, 'webhook subscription')}; the router's push to "
        f"{setup.target.url}"
    )
    sections: list[tuple[str, str, list[Change]]] = [
        ("to create", "+", plan.of("create")),
        ("to update", "~", plan.of("update")),
        ("to deactivate", "-", plan.of("deactivate")),
        ("unchanged", "=", plan.of("unchanged")),
    ]
    for title, mark, changes in sections:
        if changes:
            print(f"\n{title} ({len(changes)}):")
            for change in changes:
                print(f"  {mark} {_line(change)}")
    if plan.unplanned:
        print(f"\nnot planned ({len(plan.unplanned)}):")
        for unplanned in plan.unplanned:
            print(f"  ! rule '{unplanned.rule}': {unplanned.reason}")
    left = []
    if plan.elsewhere:
        left.append(f"{plural(len(plan.elsewhere), 'subscription')} pushing elsewhere")
    if plan.inactive:
        inactive = plural(len(plan.inactive), "inactive router subscription")
        left.append(f"{inactive} no rule needs")
    if left:
        print(f"\nleft alone: {', '.join(left)}")


def _line(change: Change) -> str:
    where = ""
    if change.existing is not None:
        where = f"subscription {change.existing.id}: "
    if change.wanted is not None:
        wanted = change.wanted
        fields = "every field" if wanted.fields is None else "fields " + ", ".join(wanted.fields)
        text = f"{where}{describe_key(wanted.key)} ({fields}; rules {', '.join(wanted.rules)})"
    else:
        assert change.existing is not None
        text = f"{where}{describe_key(change.existing.key)}"
    if change.differences:
        text += f": {', '.join(change.differences)}"
    return text


def _done(change: Change) -> str:
    verb = {"create": "created", "update": "updated", "deactivate": "deactivated"}[change.kind]
    return f"{verb} {_line(change)}"


def _plan_json(setup: _Setup, plan: Plan) -> dict[str, Any]:
    def item(change: Change) -> dict[str, Any]:
        wanted, existing = change.wanted, change.existing
        key = wanted.key if wanted else existing.key if existing else (None, None, None)
        return {
            "id": existing.id if existing else None,
            "on": key[0],
            "tableId": key[1],
            "eventType": key[2],
            "onFields": list(wanted.fields) if wanted and wanted.fields is not None else None,
            "rules": list(wanted.rules) if wanted else [],
            "differences": list(change.differences),
        }

    return {
        "entity": setup.config.entity,
        "target_url": setup.target.url,
        "listed": plan.listed,
        **{kind: [item(c) for c in plan.of(kind)] for kind in ("create", "update", "deactivate")},
        "unchanged": [item(c) for c in plan.of("unchanged")],
        "not_planned": [{"rule": u.rule, "reason": u.reason} for u in plan.unplanned],
        "elsewhere": len(plan.elsewhere),
        "inactive": len(plan.inactive),
    }


COMMANDS = (_add_actito,)
