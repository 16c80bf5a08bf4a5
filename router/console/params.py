"""Filters as a request gives them (query parameters, form fields, a JSON body) → the store's
queries, with one plain sentence for whatever is not valid (BadParameter: answered 400)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from router.console.queries import text_filter
from router.destinations import DestinationProblem, pause_target
from router.store.base import EventQuery, JobQuery, Status, storable_text
from router.store.reads import MAX_PAGE

DEFAULT_PAGE = 50
NOT_A_PAUSE = 'the body must be a JSON object: {"rule": NAME} or {"destination": URL}'
MAX_CURSOR = 10**18  # a cursor is a row number; anything longer is no cursor of ours


class BadParameter(ValueError):
    """A filter that is not valid; its message says which and what it takes."""


def _text(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadParameter(f"{name} must be text")
    return text_filter(value)


def _flag(params: Mapping[str, Any], name: str) -> bool:
    value = params.get(name)
    if value is None or value in ("", "false", "0", "off", False):
        return False
    if value in ("true", "1", "on", "yes", True):
        return True
    raise BadParameter(f"{name} must be true or false")


def _time(params: Mapping[str, Any], name: str) -> float | None:
    value = _text(params, name)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadParameter(f"{name} must be a date and time such as 2026-05-01T12:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # the console shows UTC
    return moment.timestamp()


def cursor(params: Mapping[str, Any]) -> int | None:
    value = _text(params, "cursor")
    if value is None:
        return None
    if not value.isascii() or not value.isdigit() or int(value) > MAX_CURSOR:
        raise BadParameter("cursor must be the next_cursor of a previous page")
    return int(value)


def limit(params: Mapping[str, Any]) -> int:
    value = _text(params, "limit")
    if value is None:
        return DEFAULT_PAGE
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_PAGE:
        raise BadParameter(f"limit must be a whole number from 1 to {MAX_PAGE}")
    return int(value)


def job_query(params: Mapping[str, Any], *, paged: bool = True) -> JobQuery:
    status = _text(params, "status")
    if status is not None and status not in {s.value for s in Status}:
        raise BadParameter("status must be one of " + ", ".join(s.value for s in Status))
    since, until = _time(params, "since"), _time(params, "until")
    return JobQuery(
        status=None if status is None else Status(status),
        rule=_text(params, "rule"),
        destination=_text(params, "destination"),
        since=since,
        until=until,
        before=cursor(params) if paged else None,
        limit=limit(params) if paged else DEFAULT_PAGE,
    )


def event_query(params: Mapping[str, Any]) -> EventQuery:
    return EventQuery(
        event_id=_text(params, "event_id"),
        profile_id=_text(params, "profile_id"),
        text=_text(params, "q"),
        table=_text(params, "table"),
        operation=_text(params, "operation"),
        rule=_text(params, "rule"),
        unmatched=_flag(params, "unmatched"),
        before=cursor(params),
        limit=limit(params),
    )


def flag(params: Mapping[str, Any], name: str) -> bool:
    return _flag(params, name)


def pause_request(params: Any) -> tuple[str, str]:
    """The (kind, target) a pause or resume names: `{"rule": NAME}` or `{"destination": URL or
    host:port}`, normalised as `router deliveries pause` does (a rule's name as given, a
    destination by router.destinations.pause_target, with its messages)."""
    if not isinstance(params, Mapping):
        raise BadParameter(NOT_A_PAUSE)
    unknown = sorted(set(params) - {"rule", "destination"})
    if unknown:
        raise BadParameter(f"unknown key {unknown[0]!r}; name a rule or a destination")
    given = [name for name in ("rule", "destination") if params.get(name) is not None]
    if len(given) != 1:
        raise BadParameter("name either a rule or a destination")
    kind = given[0]
    value = params[kind]
    if not isinstance(value, str):
        raise BadParameter(f"{kind} must be text")
    if kind == "rule":
        if not value.strip():
            raise BadParameter("rule needs a rule name")
        target = value
    else:
        try:
            target = pause_target(value)
        except DestinationProblem as problem:
            raise BadParameter(str(problem)) from None
    # Text a database cannot hold names nothing it holds; made storable, it stays harmless.
    return kind, storable_text(target) or ""
