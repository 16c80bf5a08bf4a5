"""What the console shows and does, as plain data: the pages render it and the API returns it.

Every function takes the `Sources` of one process (its store, the rules it serves, its last
reload) and returns JSON-ready dicts whose shapes router.console.openapi describes. Nothing here
knows about HTTP. Secret values never appear: a job's request is rendered with placeholder
secrets (`<secret NAME>`), as `router test` renders it. Replay goes through the store's own
replay operation, one page of dead jobs at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from router.actions import registry
from router.destinations import pause_target, under
from router.events import normalise, parse_body
from router.exceptions import RenderError
from router.matching import RuleSet
from router.rulefiles.dryrun import dry_run
from router.rules import Rule
from router.sandbox import PlaceholderSecrets
from router.store import reads
from router.store.base import (
    Counts,
    EventQuery,
    JobQuery,
    JobSummary,
    Pause,
    Status,
    Store,
    StoredEvent,
    storable_text,
)
from router.template_limits import RenderLimits
from router.templating import build_context

REPLAY_PAGE = 500  # dead jobs replayed per store call when replaying by filter
MAX_REPLAY = 100_000  # most jobs one replay by filter moves (run it again for more)


@dataclass
class Sources:
    """What one process's console reads: its store, the rule set it serves (None: this process
    has none, e.g. a worker whose rules did not load), and its last reload."""

    store: Store
    rules: Callable[[], RuleSet | None]
    reload: Callable[[], Mapping[str, Any]] = dict
    render_limits: RenderLimits = field(default_factory=RenderLimits)
    clock: Callable[[], float] = time.time


def when(epoch: float | None) -> str | None:
    """Epoch seconds as an ISO 8601 UTC time (to the millisecond), or None."""
    if epoch is None:
        return None
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def counts(found: Counts | None) -> dict[str, Any]:
    c = found or Counts()
    return {
        "jobs": c.jobs,
        "matched": c.matched,
        "delivered": c.delivered,
        "retrying": c.retrying,
        "dead": c.dead,
        "shadow": c.shadow,
        "last": when(c.last),
    }


def job_summary(job: JobSummary) -> dict[str, Any]:
    return {
        "id": job.id,
        "rule": job.rule,
        "action_index": job.action_index,
        "action_type": job.action_type,
        "destination": job.destination,
        "status": str(job.status),
        "attempts": job.attempts,
        "created_at": when(job.created_at),
        "updated_at": when(job.updated_at),
        "next_at": when(job.next_at) if job.status is Status.PENDING else None,
        "last_error": job.last_error,
        "event_id": job.event_id,
        "ruleset_version": job.ruleset_version,
    }


def stored_event(event: StoredEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "event_id": event.event_id,
        "received_at": when(event.received_at),
        "ruleset_version": event.ruleset_version,
        "matched": list(event.matched),
        "record": event.record,
    }


def match_summary(rule: Rule) -> list[str]:
    """A rule's `[rule.match]`, one criterion a line, as a rule file would say it."""
    match = rule.match
    lines = [
        f"{name} = {' | '.join(sorted(values))}"
        for name, values in (
            ("tableType", match.table_type),
            ("tableId", match.table_id),
            ("operation", match.operation),
            ("eventType", match.event_type),
            ("fields", match.fields),
        )
        if values is not None
    ]
    if match.condition is not None:
        lines.append(f"condition = {match.condition.source}")
    return lines or ["every record"]


# -- pages


def pause_summary(pause: Pause) -> dict[str, Any]:
    return {"kind": pause.kind, "target": pause.target, "since": when(pause.since)}


def pausable(destination: str) -> bool:
    """Whether a destination key can be named to pause it (a host computed by a template
    cannot: pause its rule)."""
    try:
        return pause_target(destination) == destination
    except ValueError:
        return False


def held_by(destination: str, found: list[Pause]) -> str | None:
    """The target of the pause that holds a destination's jobs (its own first), or None."""
    targets = [p.target for p in found if p.kind == "destination" and under(destination, p.target)]
    if destination in targets:
        return destination
    return targets[0] if targets else None


async def overview(src: Sources) -> dict[str, Any]:
    now = src.clock()
    stats = await src.store.stats(now=now)
    activity = await reads.activity_in(src.store, now=now)
    found, circuits = await src.store.pauses(), await src.store.circuits()
    destinations = sorted(set(activity.destinations_day) | set(activity.last_errors))
    ruleset = src.rules()
    return {
        "ruleset": None
        if ruleset is None
        else {"version": ruleset.version, "rules": len(ruleset.enabled)},
        "last_reload": _reload(src.reload()),
        "queue": {
            "pending": stats.pending,
            "dead": stats.dead,
            "oldest_pending_age": stats.oldest_pending_age,
        },
        "received_per_minute": [
            {"minute": when(minute), "records": n} for minute, n in activity.received_per_minute
        ],
        "destinations": [
            {
                "destination": name,
                "hour": counts(activity.destinations_hour.get(name)),
                "day": counts(activity.destinations_day.get(name)),
                "last_error": None
                if name not in activity.last_errors
                else {
                    "error": activity.last_errors[name][0],
                    "at": when(activity.last_errors[name][1]),
                },
                "circuit": circuits.get(name),
                "paused_by": held_by(name, found),
                "pausable": pausable(name),
            }
            for name in destinations
        ],
        "paused": [pause_summary(p) for p in found],
        "circuits": _circuits(circuits),
        "now": when(now),
    }


def _circuits(found: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"destination": key, "state": state} for key, state in sorted(found.items())]


def _reload(status: Mapping[str, Any]) -> dict[str, Any] | None:
    if not status:
        return None
    return {
        "ok": bool(status.get("ok", True)),
        "at": when(status.get("at")),
        "version": status.get("version"),
        "errors": [str(error) for error in status.get("errors", [])],
    }


async def rules(src: Sources) -> dict[str, Any]:
    ruleset = src.rules()
    if ruleset is None:
        return {"ruleset": None, "rules": []}
    names = [rule.name for rule in ruleset.rules]
    activity = await reads.activity_in(src.store, now=src.clock(), rules=names)
    paused = {p.target: p.since for p in await src.store.pauses() if p.kind == "rule"}
    return {
        "ruleset": ruleset.version,
        "rules": [
            {
                "name": rule.name,
                "description": rule.description,
                "enabled": rule.enabled,
                "mode": rule.mode,
                "file": rule.location.file,
                "line": rule.location.line,
                "match": match_summary(rule),
                "actions": [
                    {"type": action.type, "destination": registry.destination_of(action)}
                    for action in rule.actions
                ],
                "hour": counts(activity.rules_hour.get(rule.name)),
                "day": counts(activity.rules_day.get(rule.name)),
                "last_match": when(
                    activity.rules_day[rule.name].last if rule.name in activity.rules_day else None
                ),
                "paused_since": when(paused.get(rule.name)),
            }
            for rule in ruleset.rules
        ],
    }


async def events(src: Sources, query: EventQuery) -> dict[str, Any]:
    page = await reads.find_events_in(src.store, query)
    return {
        "items": [stored_event(event) for event in page.events],
        "next_cursor": None if page.next is None else str(page.next),
        "searched_to": page.searched_to,
    }


async def event(src: Sources, event_id: int, *, explain: bool) -> dict[str, Any] | None:
    found = await reads.event_in(src.store, event_id)
    if found is None:
        return None
    stored, jobs = found
    document: dict[str, Any] = {
        "event": stored_event(stored),
        "jobs": [job_summary(job) for job in jobs],
        "explain": None,
    }
    if explain:
        document["explain"] = explain_record(src, stored.record, set(stored.matched))
    return document


def explain_record(src: Sources, record: Mapping[str, Any], matched: set[str]) -> dict[str, Any]:
    """Why each rule of the serving set that did not match `record` did not (rules that matched
    it when it was accepted are left out)."""
    ruleset = src.rules()
    if ruleset is None:
        return {"ruleset": None, "not_matched": []}
    not_matched = []
    for rule, miss in ruleset.matcher.misses(record):
        if rule.name in matched or miss is None:
            continue
        not_matched.append({"rule": rule.name, "reason": miss.reason, "lines": list(miss.lines)})
    return {"ruleset": ruleset.version, "not_matched": not_matched}


async def jobs(src: Sources, query: JobQuery) -> dict[str, Any]:
    found = await reads.find_jobs_in(src.store, query)
    full = len(found) >= max(1, min(query.limit, reads.MAX_PAGE))
    return {
        "items": [{**job_summary(item.job), "event": item.event} for item in found],
        "next_cursor": str(found[-1].seq) if found and full else None,
    }


async def count(src: Sources, query: JobQuery) -> dict[str, Any]:
    return {"count": await reads.count_jobs_in(src.store, query)}


async def job(src: Sources, job_id: str) -> dict[str, Any] | None:
    detail = await src.store.get_job(storable_text(job_id) or "")
    if detail is None:
        return None
    summary = detail.summary
    return {
        "job": job_summary(summary),
        "request": await asyncio.to_thread(
            _render, detail.spec, detail.record, summary, src.render_limits
        ),
        "attempts": [
            {
                "number": attempt.number,
                "at": when(attempt.at),
                "outcome": str(attempt.outcome),
                "status_code": attempt.status_code,
                "error": attempt.error,
                "duration": attempt.duration,
                "response": attempt.response,
            }
            for attempt in detail.history
        ],
        "next_attempt_at": when(summary.next_at) if summary.status is Status.PENDING else None,
        "record": detail.record,
    }


def _render(
    spec: Mapping[str, Any], record: Mapping[str, Any], job: JobSummary, limits: RenderLimits
) -> dict[str, Any]:
    """The job's request as its worker renders it, with `<secret NAME>` for every secret and
    placeholders for what an action fetches (a profile): never a secret value."""
    try:
        action = registry.parse_action(spec)
        context = build_context(
            record,
            rule=job.rule,
            delivery_id=job.id,
            secrets=PlaceholderSecrets(),
            now=datetime.fromtimestamp(job.created_at, UTC),
        )
        with limits.applied():
            rendered = registry.render(action, context)
    except (RenderError, ValueError) as exc:
        return {"type": job.action_type, "error": str(exc)}
    return {"type": job.action_type, **rendered}


async def replay(src: Sources, job_ids: list[str]) -> dict[str, Any]:
    # An id a database cannot hold is no job's: made storable, it matches none.
    wanted = [storable_text(job_id) or "" for job_id in job_ids]
    replayed = await src.store.replay(wanted, now=src.clock())
    return {"replayed": replayed, "count": len(replayed)}


async def replay_matching(src: Sources, query: JobQuery) -> dict[str, Any]:
    """Replay the dead jobs that match `query` (its status aside), a page at a time, through
    the store's replay (which moves only jobs still dead)."""
    wanted = JobQuery(
        status=Status.DEAD,
        rule=query.rule,
        destination=query.destination,
        since=query.since,
        until=query.until,
        limit=REPLAY_PAGE,
    )
    total = 0
    before: int | None = None
    while total < MAX_REPLAY:
        page = await reads.find_jobs_in(
            src.store,
            JobQuery(**{**_fields(wanted), "before": before}),
        )
        if not page:
            break
        moved = await src.store.replay([item.job.id for item in page], now=src.clock())
        total += len(moved)
        before = page[-1].seq
    return {"count": total}


async def pauses(src: Sources) -> dict[str, Any]:
    """The pauses in force, oldest first, and every circuit the store keeps, as
    `router deliveries pauses` lists them."""
    found, circuits = await src.store.pauses(), await src.store.circuits()
    return {"pauses": [pause_summary(p) for p in found], "circuits": _circuits(circuits)}


async def pause(src: Sources, kind: str, target: str) -> dict[str, Any]:
    """Hold the jobs of a rule or destination (router.console.params.pause_request names it);
    `paused` is False when it already was."""
    paused = await src.store.pause(kind, target, now=src.clock())
    return {"kind": kind, "target": target, "paused": paused}


async def resume(src: Sources, kind: str, target: str) -> dict[str, Any]:
    """Lift a pause: its pending jobs go again, with the paused time given back. `resumed` is
    False when it was not paused; `jobs` counts the pending jobs that go again."""
    credited = await src.store.resume(kind, target, now=src.clock())
    return {"kind": kind, "target": target, "resumed": credited is not None, "jobs": credited or 0}


def _fields(query: JobQuery) -> dict[str, Any]:
    return {name: getattr(query, name) for name in JobQuery.__slots__}


def try_event(src: Sources, body: bytes) -> dict[str, Any]:
    """What the serving rules would do with `body` (an ACTITO push), with the explain of
    every rule that does not match: `router test --explain`. Raises RejectedBody."""
    ruleset = src.rules()
    records = normalise(parse_body(body))
    if ruleset is None:
        return {"ruleset": None, "records": []}
    document = dry_run(ruleset, records, explain=True, limits=src.render_limits)
    return {"ruleset": ruleset.version, **document}


def text_filter(value: str | None) -> str | None:
    """A filter as typed: blank is none; text a database column cannot hold is made storable
    (it can then match nothing it could not have matched)."""
    if value is None or not value.strip():
        return None
    return storable_text(value.strip())
