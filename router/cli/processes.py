"""Process commands: `router serve`, `router worker` and `router migrate`."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from router import logs
from router.cli.common import (
    Formatter,
    Sub,
    add_store_option,
    load_settings,
    settings_table,
)
from router.exceptions import CommandError, StartupError
from router.settings import Settings

_SERVE_EPILOG = """\
examples:
  router serve                                  # rules/ and router.db, on 127.0.0.1:8080
  ROUTER_WEBHOOK_SECRETS=s3cret router serve --host 0.0.0.0
  router serve --no-worker --store postgresql://router@db/router   # an intake-only replica

settings (environment variables, or a .env file; options above override them):
"""


def _add_serve(sub: Sub[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "serve",
        help="run the intake and delivery workers",
        description="Receive ACTITO webhooks on POST /webhooks/actito, store a delivery job per "
        "(record, rule, action) before answering 202, and deliver them (unless --no-worker). "
        "The rules directory is watched and reloaded on change.",
        epilog=_SERVE_EPILOG + settings_table(),
        formatter_class=Formatter,
    )
    parser.add_argument("--rules", metavar="DIR", help="rules directory (ROUTER_RULES_DIR)")
    add_store_option(parser)
    parser.add_argument("--host", help="listen address (ROUTER_HOST)")
    parser.add_argument("--port", type=int, metavar="PORT", help="listen port (ROUTER_PORT)")
    parser.add_argument(
        "--no-worker", action="store_true", help="intake only: leave delivery to `router worker`"
    )
    _add_process_options(parser)
    parser.set_defaults(func=_run_serve)


def _add_process_options(parser: argparse.ArgumentParser) -> None:
    """Options `serve` and `worker` share."""
    parser.add_argument(
        "--concurrency",
        type=int,
        metavar="N",
        help="deliveries in flight at once (ROUTER_CONCURRENCY)",
    )
    parser.add_argument(
        "--no-migrate",
        action="store_true",
        help="refuse to start if the store schema is not current instead of migrating it",
    )


def _run_serve(args: argparse.Namespace) -> int:
    from router.wiring import serve

    settings = load_settings(
        rules_dir=args.rules,
        store_url=args.store,
        host=args.host,
        port=args.port,
        concurrency=args.concurrency,
    )
    return _run_process(
        lambda: serve(settings, worker=not args.no_worker, migrate=not args.no_migrate), settings
    )


_WORKER_EPILOG = """\
examples:
  router worker                                  # next to `router serve --no-worker`
  router worker --store postgresql://router@db/router --concurrency 128

SIGTERM stops claiming new jobs and lets deliveries in flight finish.
"""


def _add_worker(sub: Sub[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "worker",
        help="deliver stored jobs (no intake)",
        description="Claim due delivery jobs from the store and deliver them, retrying with "
        "backoff. Run several against one PostgreSQL store to scale delivery.",
        epilog=_WORKER_EPILOG + "\nsettings:\n" + settings_table(),
        formatter_class=Formatter,
    )
    add_store_option(parser)
    _add_process_options(parser)
    parser.set_defaults(func=_run_worker)


def _run_worker(args: argparse.Namespace) -> int:
    from router.wiring import run_worker

    settings = load_settings(store_url=args.store, concurrency=args.concurrency)
    return _run_process(lambda: run_worker(settings, migrate=not args.no_migrate), settings)


def _run_process(run: Callable[[], None], settings: Settings) -> int:
    logs.configure(settings.log_level, settings.log_format)
    run()  # a StartupError says why the process could not start (router.cli: exit status 1)
    return 0


def _add_migrate(sub: Sub[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "migrate",
        help="bring the store's schema up to date",
        description="Apply pending schema migrations to the store. Run it once before rolling "
        "out a new version to several replicas (they can also migrate at start).",
        epilog="examples:\n  router migrate --store postgresql://router@db/router\n"
        "  router migrate --check        # exit 1 if migrations are pending",
        formatter_class=Formatter,
    )
    add_store_option(parser)
    parser.add_argument(
        "--check", action="store_true", help="only report; exit 1 if the schema is not current"
    )
    parser.set_defaults(func=_run_migrate)


def _run_migrate(args: argparse.Namespace) -> int:
    settings = load_settings(store_url=args.store)

    from router.wiring import preflight_store

    try:
        preflight_store(settings, migrate=False)
    except StartupError as exc:  # an old or missing schema, or no store at all: it says which
        if args.check:
            print(f"the store is not ready: {exc}")
            return 1
    else:
        print("the store schema is current")
        return 0
    try:
        preflight_store(settings, migrate=True)
    except StartupError as exc:
        raise CommandError(str(exc)) from None
    print("migrations applied; the store schema is current")
    return 0


COMMANDS = (_add_serve, _add_worker, _add_migrate)
