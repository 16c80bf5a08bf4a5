"""`router deliveries list|show|replay|discard|pause|resume`: inspect delivery jobs, replay dead
ones, release the key a dead ordered job holds, and pause and resume deliveries."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from router.cli.common import Formatter, Sub, add_store_option, load_settings
from router.destinations import DestinationProblem, pause_target, under
from router.exceptions import CommandError, StoreUnavailable
from router.settings import Settings
from router.store import open_store
from router.store.base import JobDetail, JobSummary, Pause, Status, Store

_T = TypeVar("_T")

_DELIVERIES_EPILOG = """\
examples:
  router deliveries list --status dead           # what failed for good
  router deliveries list --status shadow         # what shadow rules would have sent
  router deliveries list --rule crm-new-subscriber --limit 20
  router deliveries show 3f6c0c1e9d2a4b7f8e5d1a2b3c4d5e6f
  router deliveries replay 3f6c0c1e9d2a4b7f8e5d1a2b3c4d5e6f
  router deliveries replay --all-dead --rule crm-new-subscriber
  router deliveries discard 3f6c0c1e9d2a4b7f8e5d1a2b3c4d5e6f   # let its key's later jobs go
  router deliveries pause --rule crm-new-subscriber
  router deliveries pause --destination https://crm.example.com/
  router deliveries pause --destination crm.example.com:443
  router deliveries resume --destination crm.example.com:443
  router deliveries pauses                          # what is paused, and the circuits
"""


def _add_deliveries(sub: Sub[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "deliveries",
        help="inspect delivery jobs and replay dead ones",
        description="Inspect delivery jobs (pending, done, dead) and replay dead ones. A "
        "replayed job is delivered again with the rule as it was when its event arrived.",
        epilog=_DELIVERIES_EPILOG,
        formatter_class=Formatter,
    )
    actions = parser.add_subparsers(dest="deliveries_command", metavar="ACTION", required=True)

    listing = actions.add_parser(
        "list",
        help="list jobs, newest first",
        description="List delivery jobs, newest first: id, status, rule, action, attempts, "
        "last update and last error.",
        epilog=_DELIVERIES_EPILOG,
        formatter_class=Formatter,
    )
    listing.add_argument(
        "--status",
        choices=[*(s.value for s in Status), PAUSED],
        help="pending (waiting or retrying), paused (pending, of a paused rule or "
        "destination), done (delivered), dead (gave up) or shadow (a shadow rule's: rendered "
        "and recorded, never sent)",
    )
    listing.add_argument("--rule", metavar="NAME", help="only jobs of this rule")
    listing.add_argument(
        "--limit", type=int, default=50, metavar="N", help="at most N jobs (default 50)"
    )
    _add_common(listing)
    listing.set_defaults(func=_run_list)

    show = actions.add_parser(
        "show",
        help="one job with its attempts",
        description="Show one job: its status, the action as it was when the event arrived, "
        "the record's data, and every attempt (time, outcome, status code, duration, error, "
        "and the first 1,024 characters of what the destination answered). Secrets are never "
        "stored, so they never show.",
        epilog=_DELIVERIES_EPILOG,
        formatter_class=Formatter,
    )
    show.add_argument("id", metavar="ID", help="the job id (as listed; also its Idempotency-Key)")
    _add_common(show)
    show.set_defaults(func=_run_show)

    replay = actions.add_parser(
        "replay",
        help="deliver dead jobs again",
        description="Make dead jobs pending again, due now, with a fresh retry budget. Jobs "
        "that are not dead are left alone (exit status 1 names them).",
        epilog=_DELIVERIES_EPILOG,
        formatter_class=Formatter,
    )
    replay.add_argument("ids", nargs="*", metavar="ID", help="the dead jobs to replay")
    replay.add_argument("--all-dead", action="store_true", help="every dead job (see --rule)")
    replay.add_argument("--rule", metavar="NAME", help="with --all-dead: only this rule's jobs")
    _add_common(replay)
    replay.set_defaults(func=_run_replay)

    discard = actions.add_parser(
        "discard",
        help="let the later jobs of a dead ordered job's key go",
        description='A dead job of an action with order_by and on_dead = "hold" keeps the '
        "later jobs of its key waiting. Discarding it lets them go; the job itself stays "
        "dead, kept for inspection (and may still be replayed).",
        epilog=_DELIVERIES_EPILOG,
        formatter_class=Formatter,
    )
    discard.add_argument("ids", nargs="+", metavar="ID", help="the dead jobs to discard")
    _add_common(discard)
    discard.set_defaults(func=_run_discard)

    for name, verb in (("pause", "hold"), ("resume", "deliver again")):
        control = actions.add_parser(
            name,
            help=f"{verb} the jobs of a rule or a destination",
            description="Pause: the jobs of the rule or destination are held in the store "
            "(never attempted; their retry budget and max age are not spent) by every worker, "
            "across restarts. Resume: they go again, with the paused time given back."
            if name == "pause"
            else "Deliver the jobs of a paused rule or destination again; the time they were "
            "paused is given back to their retry budget and max age.",
            epilog=_DELIVERIES_EPILOG,
            formatter_class=Formatter,
        )
        target = control.add_mutually_exclusive_group(required=True)
        target.add_argument("--rule", metavar="NAME", help="the rule's jobs")
        target.add_argument(
            "--destination",
            metavar="URL",
            help="a destination's jobs: its URL as in [[destination]], or host:port (every "
            "destination on that host)",
        )
        _add_common(control)
        control.set_defaults(func=_run_pause if name == "pause" else _run_resume)

    pauses = actions.add_parser(
        "pauses",
        help="what is paused, and the destinations' circuits",
        description="List the pauses in force (rule or destination, since when) and every "
        "destination the store keeps a circuit for, with its state (closed or open).",
        epilog=_DELIVERIES_EPILOG,
        formatter_class=Formatter,
    )
    _add_common(pauses)
    pauses.set_defaults(func=_run_pauses)


def _add_common(parser: argparse.ArgumentParser) -> None:
    add_store_option(parser)
    parser.add_argument(
        "--format", choices=["text", "json"], default="text", help="output format (default text)"
    )


PAUSED = "paused"  # what `list` shows for a pending job of a paused rule or destination


def _run_list(args: argparse.Namespace) -> int:
    settings = load_settings(store_url=args.store)
    paused_only = args.status == PAUSED
    status = Status.PENDING if paused_only else Status(args.status) if args.status else None

    async def work(store: Store) -> tuple[list[JobSummary], list[Pause]]:
        # Paused jobs are pending ones: with --status paused, look further than the limit.
        limit = args.limit * 20 if paused_only else args.limit
        return await store.list_jobs(
            status=status, rule=args.rule, limit=limit
        ), await store.pauses()

    jobs, pauses = _run(_with_store(settings, work))
    shown = {job.id: _shown_status(job, pauses) for job in jobs}
    if paused_only:
        jobs = [job for job in jobs if shown[job.id] == PAUSED][: args.limit]
    if args.format == "json":
        print(json.dumps([_summary_dict(job, shown[job.id]) for job in jobs], indent=2))
        return 0
    if not jobs:
        print("no delivery jobs")
        return 0
    rows = [
        (
            job.id,
            shown[job.id],
            job.rule,
            f"{job.action_type}[{job.action_index}]",
            str(job.attempts),
            _when(job.updated_at),
            (job.last_error or "")[:60],
        )
        for job in jobs
    ]
    _table(("ID", "STATUS", "RULE", "ACTION", "TRIES", "UPDATED", "LAST ERROR"), rows)
    return 0


def _run_show(args: argparse.Namespace) -> int:
    settings = load_settings(store_url=args.store)
    detail = _run(_with_store(settings, lambda s: s.get_job(args.id)))
    if detail is None:
        raise CommandError(f"no delivery job with id {args.id}")
    if args.format == "json":
        print(json.dumps(_detail_dict(detail), indent=2, ensure_ascii=False))
        return 0
    job = detail.summary
    print(f"job       {job.id}")
    print(f"status    {job.status.value}")
    print(f"rule      {job.rule} (action {job.action_index}, {job.action_type})")
    print(f"event     {job.event_id or '-'}   rule set {job.ruleset_version}")
    print(f"created   {_when(job.created_at)}   updated {_when(job.updated_at)}")
    if job.status is Status.PENDING and job.next_at is not None:
        print(f"next try  {_when(job.next_at)}")
    if job.last_error:
        print(f"error     {job.last_error}")
    print("action    " + json.dumps(detail.spec, ensure_ascii=False))
    print("data      " + json.dumps(detail.record.get("data"), ensure_ascii=False))
    print("attempts")
    if not detail.history:
        print("  (none yet)")
    for attempt in detail.history:
        code = attempt.status_code if attempt.status_code is not None else "-"
        print(
            f"  #{attempt.number} {_when(attempt.at)}  {attempt.outcome.value:<5} {code!s:>4}  "
            f"{attempt.duration * 1000:.0f} ms  {attempt.error or ''}"
        )
        if attempt.response:
            print("     response:")
            for line in attempt.response.splitlines() or [""]:
                print(f"       {_printable(line)}")
    return 0


def _printable(text: str) -> str:
    """A destination's text, safe for a terminal: control characters (an escape sequence
    could rewrite the screen) are shown escaped."""
    return "".join(
        char if char.isprintable() or char == "\t" else repr(char)[1:-1] for char in text
    )


def _shown_status(job: JobSummary, pauses: Sequence[Pause]) -> str:
    if job.status is Status.PENDING and any(
        (p.kind == "rule" and p.target == job.rule)
        or (p.kind == "destination" and under(job.destination, p.target))
        for p in pauses
    ):
        return PAUSED
    return job.status.value


def _pause_target(args: argparse.Namespace) -> tuple[str, str]:
    if args.rule is not None:
        if not args.rule.strip():
            raise CommandError("--rule needs a rule name")
        return "rule", args.rule
    try:
        return "destination", pause_target(args.destination)
    except DestinationProblem as problem:
        raise CommandError(str(problem)) from None


def _run_pause(args: argparse.Namespace) -> int:
    kind, target = _pause_target(args)
    settings = load_settings(store_url=args.store)
    now = time.time()
    paused = _run(_with_store(settings, lambda s: s.pause(kind, target, now=now)))
    if args.format == "json":
        print(json.dumps({"kind": kind, "target": target, "paused": paused}))
    elif paused:
        print(f"paused {kind} {target}: its jobs are held until `router deliveries resume`")
    else:
        print(f"{kind} {target} was already paused")
    return 0


def _run_resume(args: argparse.Namespace) -> int:
    kind, target = _pause_target(args)
    settings = load_settings(store_url=args.store)
    now = time.time()
    credited = _run(_with_store(settings, lambda s: s.resume(kind, target, now=now)))
    if args.format == "json":
        print(json.dumps({"kind": kind, "target": target, "resumed": credited is not None}))
        return 0 if credited is not None else 1
    if credited is None:
        print(f"{kind} {target} is not paused", file=sys.stderr)
        return 1
    print(f"resumed {kind} {target}: {credited} pending job(s) go again")
    return 0


def _run_pauses(args: argparse.Namespace) -> int:
    settings = load_settings(store_url=args.store)

    async def work(store: Store) -> tuple[list[Pause], dict[str, str]]:
        return await store.pauses(), await store.circuits()

    pauses, circuits = _run(_with_store(settings, work))
    if args.format == "json":
        print(
            json.dumps(
                {
                    "pauses": [
                        {"kind": p.kind, "target": p.target, "since": p.since} for p in pauses
                    ],
                    "circuits": circuits,
                },
                indent=2,
            )
        )
        return 0
    if pauses:
        _table(("PAUSED", "TARGET", "SINCE"), [(p.kind, p.target, _when(p.since)) for p in pauses])
    else:
        print("nothing is paused")
    if circuits:
        print()
        _table(("DESTINATION", "CIRCUIT"), sorted(circuits.items()))
    return 0


def _run_discard(args: argparse.Namespace) -> int:
    settings = load_settings(store_url=args.store)
    now = time.time()
    discarded = _run(_with_store(settings, lambda s: s.discard(args.ids, now=now)))
    if args.format == "json":
        print(json.dumps({"discarded": len(discarded), "ids": discarded}))
    else:
        print(f"discarded {len(discarded)} dead job(s): the later jobs of their keys go")
    skipped = [job_id for job_id in args.ids if job_id not in discarded]
    if skipped:
        print(
            f"not dead and holding (or unknown), left alone: {', '.join(skipped)}", file=sys.stderr
        )
        return 1
    return 0


def _run_replay(args: argparse.Namespace) -> int:
    if bool(args.ids) == bool(args.all_dead):
        raise CommandError("give job ids, or --all-dead (optionally with --rule), not both")
    if args.rule and not args.all_dead:
        raise CommandError("--rule only goes with --all-dead")
    settings = load_settings(store_url=args.store)
    now = time.time()
    if args.all_dead:
        count = _run(_with_store(settings, lambda s: s.replay_dead(rule=args.rule, now=now)))
        replayed: list[str] = []
    else:
        replayed = _run(_with_store(settings, lambda s: s.replay(args.ids, now=now)))
        count = len(replayed)
    if args.format == "json":
        print(json.dumps({"replayed": count, "ids": replayed}))
    else:
        print(f"replayed {count} dead job(s)")
    skipped = [job_id for job_id in args.ids if job_id not in replayed]
    if skipped:
        print(f"not dead (or unknown), left alone: {', '.join(skipped)}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------- helpers


async def _with_store(
    settings: Settings,
    work: Callable[[Store], Coroutine[Any, Any, _T]],
    *,
    migrate: bool = False,
) -> _T:
    """Run `work` on the store. Inspecting never creates or migrates a store: only
    `router migrate` (and starting processes) change the schema."""
    store = open_store(settings.store_url)
    try:
        await store.open(migrate=migrate)
        return await work(store)
    finally:
        await store.close()


def _run(coro: Coroutine[Any, Any, _T]) -> _T:
    try:
        return asyncio.run(coro)
    except StoreUnavailable as exc:
        raise CommandError(f"the store is unavailable: {exc}") from None
    except ValueError as exc:  # a malformed store URL
        raise CommandError(str(exc)) from None


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(
                str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip()
        )


def _summary_dict(job: JobSummary, shown: str | None = None) -> dict[str, Any]:
    return {
        "id": job.id,
        "status": shown or job.status.value,
        "rule": job.rule,
        "action_index": job.action_index,
        "action_type": job.action_type,
        "destination": job.destination,
        "attempts": job.attempts,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "next_at": job.next_at,
        "last_error": job.last_error,
        "event_id": job.event_id,
        "ruleset_version": job.ruleset_version,
    }


def _detail_dict(detail: JobDetail) -> dict[str, Any]:
    return {
        **_summary_dict(detail.summary),
        "spec": dict(detail.spec),
        "record": detail.record,
        "history": [
            {
                "number": a.number,
                "at": a.at,
                "outcome": a.outcome.value,
                "status_code": a.status_code,
                "error": a.error,
                "duration": a.duration,
                "response": a.response,
            }
            for a in detail.history
        ],
    }


COMMANDS = (_add_deliveries,)
