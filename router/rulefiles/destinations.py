"""The `[[destination]]` tables of a rule file: a URL prefix and the limits its jobs share
(router.destinations), checked with file:line diagnostics like every other table.

    [[destination]]
    url = "https://crm.example.com/"
    rate = "10/s"        # also "/min", "/h"
    concurrency = 4

A destination may be declared once across all files; one with neither `rate` nor
`concurrency` is still a destination (it can be paused by its URL, and has its own circuit).
"""

from __future__ import annotations

from typing import Any

from router.checks import KeyPath
from router.destinations import Destination, DestinationProblem, key_of_url, parse_rate
from router.rulefiles.schema import Context
from router.rules import Location

DESTINATION_KEYS = ("url", "rate", "concurrency")
CONCURRENCY_RANGE = (1, 10_000)


def read_destination(
    context: Context, path: KeyPath, raw: Any, declared: dict[str, Location]
) -> Destination | None:
    """One `[[destination]]` table; None after reporting its problems. `declared` holds the
    keys declared so far (across files) and where: a second declaration is reported."""
    context.rule, context.hidden = None, 0
    table = context.table(path, raw, DESTINATION_KEYS)
    if table is None:
        return None
    before = context.errors
    url = context.text(
        (*path, "url"), context.require(table, "url", path, 'set url = "https://host/"')
    )
    key = None
    if url is not None:
        try:
            key = key_of_url(url)
        except DestinationProblem as problem:
            context.report((*path, "url"), str(problem))
    rate = None
    rate_text = context.text((*path, "rate"), table.get("rate"))
    if rate_text is not None:
        try:
            rate = parse_rate(rate_text)
        except DestinationProblem as problem:
            context.report((*path, "rate"), str(problem))
    concurrency = None
    if table.get("concurrency") is not None:
        value = context.number(
            (*path, "concurrency"), table["concurrency"], CONCURRENCY_RANGE, integer=True
        )
        concurrency = None if value is None else int(value)
    if key is not None:
        here = Location(context.file, context.positions.line(path))
        first = declared.setdefault(key, here)
        if first is not here:
            context.report((*path, "url"), f"this destination is already declared at {first}")
    if context.errors != before or key is None or url is None:
        return None
    return Destination(key, url, rate, concurrency)
