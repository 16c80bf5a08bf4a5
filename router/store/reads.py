"""The console's reads, for every backend: its SQL in each dialect, and the rows as dataclasses.

Each read runs through `Store.read_only` (one snapshot, never holding up the intake) and uses an
index of schema step 5 (router.store.migrations), so a page answers in the same time with a
million jobs as with a hundred:

- jobs newest first by `seq`, filtered by status, rule or destination (`jobs_status`,
  `jobs_rule`, `jobs_destination`), the next page from the last `seq` seen. These indexes hold
  only jobs that left `pending`, so a push writes none of them: pending jobs (the backlog) are
  read through `jobs_due`, as claims read them, and each list merges the two parts;
- records newest first by id, by rule (through the rule's jobs, `jobs_rule`) or without a
  match (`events_unmatched`);
- records by event id (`events_event_id`, schema step 8; on PostgreSQL the index holds the
  id's first EVENT_ID_PREFIX characters, so that no id is too long for an index entry);
- a search inside records (a profile id, a table, an operation, any text) reads at most
  SCAN_WINDOW records, newest first, and says where it stopped: a search must never read a
  whole store, and an index inside records would cost every push a write;
- the counters of the last hour and day read `jobs_recent`, which holds every column they need
  (on SQLite led by rule, destination and status, read by a skip-scan in group order; on
  PostgreSQL led by the creation time), and the hours counted once (router.store.rollups).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from router.store import rollups, rows
from router.store.base import (
    Activity,
    Counts,
    Dialect,
    EventPage,
    EventQuery,
    FoundJob,
    JobQuery,
    JobSummary,
    Status,
    Store,
    StoredEvent,
)

MAX_PAGE = 500  # most rows one page reads
SCAN_WINDOW = 10_000  # most records a search inside records reads per page
EVENT_ID_PREFIX = 200  # characters of an event id PostgreSQL's index holds (schema step 8)
HOUR = 3600.0
DAY = 86400.0
Statement = tuple[str, list[Any]]
FOUND_COLUMNS = f"{rows.SUMMARY_COLUMNS}, j.seq, j.event"


class _Params:
    """Placeholders in a dialect's style: `?` (SQLite) or `$n::type` (PostgreSQL)."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self.values: list[Any] = []

    def __call__(self, value: Any, pg_type: str) -> str:
        self.values.append(value)
        if self.dialect == "sqlite":
            return "?"
        return f"${len(self.values)}::{pg_type}"


def _limit(limit: int) -> int:
    return max(1, min(limit, MAX_PAGE))


def _job_filters(query: JobQuery, p: _Params) -> list[str]:
    where: list[str] = []
    if query.status is not None:
        where.append(f"j.status = {p(str(query.status), 'text')}")
    if query.rule is not None:
        where.append(f"j.rule = {p(query.rule, 'text')}")
    if query.destination is not None:
        where.append(f"j.destination = {p(query.destination, 'text')}")
    if query.since is not None:
        where.append(f"j.created_at >= {p(query.since, 'float8')}")
    if query.until is not None:
        where.append(f"j.created_at < {p(query.until, 'float8')}")
    return where


def _where(conditions: list[str]) -> str:
    return " WHERE " + " AND ".join(conditions) if conditions else ""


SETTLED = "j.status <> 'pending'"  # the condition of every partial index of step 5
PENDING = "j.status = 'pending'"  # read through jobs_due, as the worker's claims do


def _parts(query: JobQuery) -> list[str]:
    """The parts of the jobs a query reads: those that left `pending` (the console's partial
    indexes), those still pending (jobs_due), or both."""
    if query.status is None:
        return [SETTLED, PENDING]
    return [PENDING] if query.status is Status.PENDING else [SETTLED]


def find_jobs(dialect: Dialect, query: JobQuery) -> list[Statement]:
    """One statement per part (see _parts), each newest first; merged by `merge_jobs`."""
    statements: list[Statement] = []
    for part in _parts(query):
        p = _Params(dialect)
        where = [*_job_filters(query, p), part]
        if query.before is not None:
            where.append(f"j.seq < {p(query.before, 'int8')}")
        limit = p(_limit(query.limit), "int8")
        statements.append(
            (
                f"SELECT {FOUND_COLUMNS} FROM jobs AS j JOIN events AS e ON e.id = j.event"
                f"{_where(where)} ORDER BY j.seq DESC LIMIT {limit}",
                p.values,
            )
        )
    return statements


def merge_jobs(parts: list[list[Any]], limit: int) -> list[FoundJob]:
    found = [found_job(row) for rows_ in parts for row in rows_]
    found.sort(key=lambda item: item.seq, reverse=True)
    return found[: _limit(limit)]


def count_jobs(dialect: Dialect, query: JobQuery) -> list[Statement]:
    statements: list[Statement] = []
    for part in _parts(query):
        p = _Params(dialect)
        where = [*_job_filters(query, p), part]
        statements.append((f"SELECT count(*) FROM jobs AS j{_where(where)}", p.values))
    return statements


def found_job(row: rows.Row) -> FoundJob:
    """A row of FOUND_COLUMNS."""
    return FoundJob(seq=int(row[13]), event=int(row[14]), job=rows.summary(row))


def jobs_of_event(dialect: Dialect, event: int) -> Statement:
    p = _Params(dialect)
    return (
        f"SELECT {FOUND_COLUMNS} FROM jobs AS j JOIN events AS e ON e.id = j.event "
        f"WHERE j.event = {p(event, 'int8')} ORDER BY j.seq",
        p.values,
    )


def get_event(dialect: Dialect, event: int) -> Statement:
    p = _Params(dialect)
    return f"SELECT {_EVENT_COLUMNS} FROM events AS e WHERE e.id = {p(event, 'int8')}", p.values


def top_event(dialect: Dialect) -> Statement:
    return "SELECT max(id) FROM events", []


_EVENT_COLUMNS = "e.id, e.event_id, e.record, e.matched, e.ruleset_version, e.received_at"


def _like(term: str) -> str:
    """`term` as a LIKE pattern that finds it in a stored record: records are stored as
    ASCII-escaped JSON, so a value is searched in that form; `!` escapes the wildcards."""
    escaped = json.dumps(term)[1:-1]
    escaped = escaped.replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return f"%{escaped}%"


def _like_key(key: str, value: str) -> tuple[str, str]:
    """LIKE patterns of `"key":value` in a stored record, the value as a number and as text
    (records are stored as compact JSON); a prefilter, never the test itself."""
    escape = str.maketrans({"!": "!!", "%": "!%", "_": "!_"})
    number = f"{json.dumps(key)}:{value}".translate(escape)
    text = f"{json.dumps(key)}:{json.dumps(value)}".translate(escape)
    return f"%{number}%", f"%{text}%"


def _inside(dialect: Dialect, path: tuple[str, ...]) -> str:
    """A record's value at `path` as text (NULL when absent, or when a step is no object)."""
    if dialect == "sqlite":
        return f"CAST(json_extract(e.record, '$.{'.'.join(path)}') AS TEXT)"
    parent = "e.record" + "".join(f" -> '{key}'" for key in path[:-1])
    return f"(CASE WHEN json_typeof({parent}) = 'object' THEN {parent} ->> '{path[-1]}' END)"


def _event_filters(dialect: Dialect, query: EventQuery, p: _Params, floor: int | None) -> list[str]:
    """The conditions of `query` on the records (`e`), their values registered with `p`."""
    where: list[str] = []
    if query.event_id is not None:
        wanted = p(query.event_id, "text")
        where.append(f"e.event_id IS NOT NULL AND e.event_id = {wanted}")
        if dialect == "postgres":
            where.append(f"left(e.event_id, {EVENT_ID_PREFIX}) = left({wanted}, {EVENT_ID_PREFIX})")
    if query.unmatched:
        where.append("e.matched = '[]'" if dialect == "sqlite" else "e.matched::text = '[]'")
    as_text = "e.record" if dialect == "sqlite" else "e.record::text"
    if query.profile_id is not None:
        # Text first (cheap), then the value itself (the record parsed) on what remains.
        number, text = _like_key("profileId", query.profile_id)
        where.append(
            f"({as_text} LIKE {p(number, 'text')} ESCAPE '!' "
            f"OR {as_text} LIKE {p(text, 'text')} ESCAPE '!')"
        )
        where.append(f"{_inside(dialect, ('data', 'profileId'))} = {p(query.profile_id, 'text')}")
    if query.table is not None:
        where.append(f"{_inside(dialect, ('tableId',))} = {p(query.table, 'text')}")
    if query.operation is not None:
        where.append(f"{_inside(dialect, ('operation',))} = {p(query.operation, 'text')}")
    if query.text is not None:
        operator = "LIKE" if dialect == "sqlite" else "ILIKE"
        where.append(f"{as_text} {operator} {p(_like(query.text), 'text')} ESCAPE '!'")
    if floor is not None:
        where.append(f"e.id >= {p(floor, 'int8')}")
    return where


def find_events(
    dialect: Dialect, query: EventQuery, top: int | None
) -> tuple[str, list[Any], int | None]:
    """The statement of one page of `query` and, for a search inside records, the lowest id it
    reads (`top`: the cursor, or above the newest record)."""
    p = _Params(dialect)
    floor = max(top - SCAN_WINDOW, 0) if query.scans and top is not None else None
    limit = _limit(query.limit)
    if query.rule is not None:
        # Through the rule's jobs (one per record: its first action), newest first: those that
        # left `pending` and those still pending, each part limited, then merged.
        parts = []
        for part, name in ((SETTLED, "settled"), (PENDING, "waiting")):
            conditions = _event_filters(dialect, query, p, floor)
            conditions += [f"j.rule = {p(query.rule, 'text')}", "j.action_index = 0", part]
            if query.before is not None:
                conditions.append(f"j.seq < {p(query.before, 'int8')}")
            parts.append(
                f"SELECT * FROM (SELECT {_EVENT_COLUMNS}, j.seq FROM jobs AS j "
                f"JOIN events AS e ON e.id = j.event{_where(conditions)} "
                f"ORDER BY j.seq DESC LIMIT {p(limit, 'int8')}) AS {name}"
            )
        statement = (
            f"SELECT * FROM ({' UNION ALL '.join(parts)}) AS found "
            f"ORDER BY 7 DESC LIMIT {p(limit, 'int8')}"
        )
    else:
        where = _event_filters(dialect, query, p, floor)
        if top is not None:
            where.append(f"e.id < {p(top, 'int8')}")
        statement = (
            f"SELECT {_EVENT_COLUMNS}, e.id FROM events AS e"
            f"{_where(where)} ORDER BY e.id DESC LIMIT {p(limit, 'int8')}"
        )
    return statement, p.values, floor


def stored_event(row: rows.Row) -> StoredEvent:
    return rows.stored_event(row)


def event_page(found: list[Any], query: EventQuery, floor: int | None) -> EventPage:
    events = [rows.stored_event(row) for row in found]
    if len(found) >= _limit(query.limit):
        return EventPage(events, int(found[-1][6]))
    if floor:  # the window ended before the page filled: older records are still unread
        return EventPage(events, None if query.rule else floor, searched_to=floor)
    return EventPage(events, None)


def rolled_in(dialect: Dialect, now: float) -> Statement:
    """The rolled hours (router.store.rollups) wholly inside the day before `now`."""
    return rollups.marked(dialect, *rollups.full_hours(now))


def _range(p: _Params, start: float, end: float | None) -> str:
    where = f"j.created_at >= {p(start, 'float8')}"
    return where if end is None else f"{where} AND j.created_at < {p(end, 'float8')}"


def activity(dialect: Dialect, now: float, rolled: Sequence[int] = ()) -> list[Statement]:
    """The counters' statements. First, per (rule, destination, status, action): settled jobs
    created in the last day and in the last hour, and the newest creation time (a rule's first
    action has one job per matched record), counted live outside the `rolled` hours; then the
    counts of those hours, in the same shape (router.store.rollups). Then pending jobs, retrying
    jobs, the last errors, records per minute."""
    p = _Params(dialect)
    day, hour = now - DAY, now - HOUR
    ranges = rollups.live_ranges(now, rolled)
    if dialect == "sqlite":
        in_day = " + ".join(
            rollups.COUNT_SQLITE.format(what="count(*)", where=_range(p, start, end))
            for start, end in ranges
        )
        counts = ", ".join(
            (
                f"({in_day})",
                rollups.COUNT_SQLITE.format(what="count(*)", where=_range(p, hour, None)),
                rollups.COUNT_SQLITE.format(what="max(j.created_at)", where=_range(p, day, None)),
            )
        )
        statements: list[Statement] = [(rollups.GROUPS_SQLITE.format(counts=counts), p.values)]
    else:
        # One index range per part (each an index-only scan of jobs_recent), then summed.
        parts = [
            (window, _range(p, start, end))
            for window, (start, end) in [*(("day", r) for r in ranges), ("hour", (hour, None))]
        ]
        union = " UNION ALL ".join(
            f"SELECT '{window}' AS w, j.rule, j.destination, j.status, j.action_index, "
            f"count(*) AS n, max(j.created_at) AS last FROM jobs AS j WHERE {where} AND {SETTLED} "
            "GROUP BY j.rule, j.destination, j.status, j.action_index"
            for window, where in parts
        )
        statements = [
            (
                "SELECT rule, destination, status, action_index, "
                "coalesce(sum(n) FILTER (WHERE w = 'day'), 0), "
                "coalesce(sum(n) FILTER (WHERE w = 'hour'), 0), max(last) "
                f"FROM ({union}) AS parts GROUP BY rule, destination, status, action_index",
                p.values,
            )
        ]
    p = _Params(dialect)
    hours = (
        f"hour IN ({', '.join(p(h, 'int8') for h in rolled)})"
        if dialect == "sqlite"
        else f"hour = ANY({p(list(rolled), 'int8[]')})"
    )
    statements.append(
        (
            "SELECT rule, destination, status, action_index, sum(n), 0, max(last) "
            f"FROM job_hours WHERE {hours} GROUP BY rule, destination, status, action_index",
            p.values,
        )
    )
    # Pending jobs (the backlog, read through jobs_due), in the same shape.
    p = _Params(dialect)
    in_hour = (
        f"sum(j.created_at >= {p(hour, 'float8')})"
        if dialect == "sqlite"
        else f"count(*) FILTER (WHERE j.created_at >= {p(hour, 'float8')})"
    )
    statements.append(
        (
            f"SELECT j.rule, j.destination, j.status, j.action_index, count(*), {in_hour}, "
            f"max(j.created_at) FROM jobs AS j WHERE {PENDING} "
            f"AND j.created_at >= {p(day, 'float8')} "
            "GROUP BY j.rule, j.destination, j.status, j.action_index",
            p.values,
        )
    )
    statements.append(
        (f"SELECT j.rule, max(j.created_at) FROM jobs AS j WHERE {PENDING} GROUP BY j.rule", [])
    )
    p = _Params(dialect)
    recent = p(now - HOUR, "float8")
    statements.append(
        (
            f"SELECT j.rule, j.destination, j.created_at >= {recent}, count(*) FROM jobs AS j "
            f"WHERE j.status = 'pending' AND j.attempts > 0 "
            f"AND j.created_at >= {p(now - DAY, 'float8')} GROUP BY 1, 2, 3",
            p.values,
        )
    )
    for status in ("dead", "pending"):
        p = _Params(dialect)
        statements.append(
            (
                "SELECT j.destination, j.last_error, j.updated_at FROM jobs AS j "
                f"WHERE j.status = {p(status, 'text')} AND j.last_error IS NOT NULL "
                f"AND {SETTLED if status == 'dead' else PENDING} "
                f"AND j.updated_at >= {p(now - DAY, 'float8')} "
                f"ORDER BY j.seq DESC LIMIT {p(MAX_PAGE, 'int8')}",
                p.values,
            )
        )
    p = _Params(dialect)
    minute = (
        "CAST(e.received_at / 60 AS INTEGER)"
        if dialect == "sqlite"
        else "floor(e.received_at / 60)::int8"
    )
    statements.append(
        (
            f"SELECT {minute}, count(*) FROM events AS e "
            f"WHERE e.received_at >= {p(now - HOUR, 'float8')} GROUP BY 1 ORDER BY 1",
            p.values,
        )
    )
    return statements


def last_match(dialect: Dialect, rule: str) -> Statement:
    p = _Params(dialect)
    hint = " INDEXED BY jobs_rule" if dialect == "sqlite" else ""
    return (
        f"SELECT j.created_at FROM jobs AS j{hint} WHERE {SETTLED} AND j.rule = {p(rule, 'text')} "
        "ORDER BY j.seq DESC LIMIT 1",
        p.values,
    )


def _add(
    counts: dict[str, Counts], key: str, status: str, n: int, last: float | None, *, first: bool
) -> None:
    old = counts.get(key, Counts())
    if first:  # first actions: one per matched record
        counts[key] = Counts(**{**_fields(old), "matched": old.matched + n})
        return
    counts[key] = Counts(
        jobs=old.jobs + n,
        matched=old.matched,
        delivered=old.delivered + (n if status == Status.DONE else 0),
        retrying=old.retrying,
        dead=old.dead + (n if status == Status.DEAD else 0),
        pending=old.pending + (n if status == Status.PENDING else 0),
        shadow=old.shadow + (n if status == Status.SHADOW else 0),
        last=last if old.last is None or (last is not None and last > old.last) else old.last,
    )


def activity_of(found: list[list[Any]], rules: Sequence[str]) -> Activity:
    groups, rolled, waiting, waiting_lasts, retrying, dead_errors, retry_errors, minutes, *lasts = (
        found
    )
    tables: dict[str, dict[str, Counts]] = {
        "rules_day": {},
        "rules_hour": {},
        "destinations_day": {},
        "destinations_hour": {},
    }
    for rule, destination, status, action_index, day, hour, last in [*groups, *rolled, *waiting]:
        for window, n in (("day", day), ("hour", hour)):
            if not n:
                continue
            _add(tables[f"rules_{window}"], rule, status, int(n), last, first=False)
            if action_index == 0:
                _add(tables[f"rules_{window}"], rule, status, int(n), None, first=True)
            _add(tables[f"destinations_{window}"], destination, status, int(n), last, first=False)
    for rule, destination, recent, n in retrying:
        for window in ("day", "hour") if recent else ("day",):
            for table, key in ((f"rules_{window}", rule), (f"destinations_{window}", destination)):
                old = tables[table].get(key, Counts())
                tables[table][key] = Counts(**{**_fields(old), "retrying": old.retrying + int(n)})
    last_errors: dict[str, tuple[str, float]] = {}
    for destination, error, at in [*dead_errors, *retry_errors]:
        if destination not in last_errors or at > last_errors[destination][1]:
            last_errors[destination] = (error, float(at))
    rules_day = tables["rules_day"]
    pending_last = {rule: float(at) for rule, at in waiting_lasts}
    for rule, found_last in zip(rules, lasts, strict=True):
        times = [float(found_last[0][0])] if found_last else []
        times += [pending_last[rule]] if rule in pending_last else []
        if times:
            old = rules_day.get(rule, Counts())
            newest = max(times)
            rules_day[rule] = Counts(**{**_fields(old), "last": max(old.last or newest, newest)})
    return Activity(
        rules_hour=tables["rules_hour"],
        rules_day=rules_day,
        destinations_hour=tables["destinations_hour"],
        destinations_day=tables["destinations_day"],
        last_errors=last_errors,
        received_per_minute=[(float(m) * 60, int(n)) for m, n in minutes],
    )


def _fields(counts: Counts) -> dict[str, Any]:
    return {name: getattr(counts, name) for name in Counts.__slots__}


# -- the reads, on any store


async def find_jobs_in(store: Store, query: JobQuery) -> list[FoundJob]:
    """Jobs matching `query`, newest first, at most `query.limit` (at most MAX_PAGE)."""
    return merge_jobs(await store.read_only(find_jobs(store.dialect, query)), query.limit)


async def count_jobs_in(store: Store, query: JobQuery) -> int:
    """How many jobs match `query` (its cursor and limit aside)."""
    found = await store.read_only(count_jobs(store.dialect, query))
    return sum(int(rows_[0][0]) for rows_ in found)


async def find_events_in(store: Store, query: EventQuery) -> EventPage:
    """Stored records matching `query`, newest first (see EventQuery)."""
    top = query.before
    # Through a rule, pages go by its jobs' `seq`: the window is counted from the newest record.
    if query.scans and (top is None or query.rule is not None):
        (found,) = await store.read_only([top_event(store.dialect)])
        if found[0][0] is None:
            return EventPage([], None)
        top = int(found[0][0]) + 1
    sql, params, floor = find_events(store.dialect, query, top)
    (found,) = await store.read_only([(sql, params)])
    return event_page(found, query, floor)


async def event_in(store: Store, event: int) -> tuple[StoredEvent, list[JobSummary]] | None:
    """One stored record and the jobs it made, in acceptance order; None when unknown."""
    found, jobs = await store.read_only(
        [get_event(store.dialect, event), jobs_of_event(store.dialect, event)]
    )
    if not found:
        return None
    return rows.stored_event(found[0]), [found_job(row).job for row in jobs]


async def activity_in(store: Store, *, now: float, rules: Sequence[str] = ()) -> Activity:
    """Counters of the last hour and day, per rule and destination; each of `rules` also gets
    its last match, however old (its day's Counts.last)."""
    [rolled] = await store.read_only([rolled_in(store.dialect, now)])
    statements = activity(store.dialect, now, [int(row[0]) for row in rolled])
    statements += [last_match(store.dialect, rule) for rule in rules]
    return activity_of(await store.read_only(statements), rules)
