"""Enrichment (`enrich = ["profile"]`): the profile a record is about, as it is now, read from
ACTITO when the job is delivered.

ACTITO pushes only the attributes of the operation that caused an event; a rule that must
e-mail or sync a profile on UPDATE needs the rest. The profile is read with
`GET /v4/entity/{entity}/table/{table}/profile/{profileId}`, where `{table}` is the push's
tableId, or the name ROUTER_ACTITO_PROFILE_TABLES gives that id (which of the two ACTITO wants
is not documented in what we could read).

Templates see it as `profile.attributes.<name>` (the value), `profile.subscriptions.<name>`
(true or false) and `profile.segmentations.<category>` (the segment's name; a list of names
when the profile is in several segments of one category).

A profile read is reused for ROUTER_ACTITO_PROFILE_CACHE_SECONDS, and reads of one profile in
flight at once are one read: a BULK push that touches a profile many times (or several rules
that enrich the same record) reads it once.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from router.actito.client import ActitoClient, segment
from router.exceptions import GiveUp

MAX_CACHED_PROFILES = 10_000  # profiles kept at once; the oldest go first
MAX_TABLE_ID_CHARS = 200  # longer is no ACTITO table id, and would make an unusable path
PROFILE_TABLE = "PROFILE_TABLE"
_ENRICH = 'enrich = ["profile"]'

Profile = dict[str, dict[str, Any]]
_Key = tuple[str, int]


def profile_view(answer: Mapping[str, Any]) -> Profile:
    """What templates see of ACTITO's profile representation (`attributes: [{name, value}]`,
    `subscriptions: [{name, subscribe}]`, `segmentations: [{belongs, segmentation: {category,
    name}}]`). Entries of another shape are left out: the answer is data, not trusted."""
    attributes: dict[str, Any] = {}
    raw = answer.get("attributes")
    if isinstance(raw, Mapping):
        attributes.update((str(name), value) for name, value in raw.items())
    for item in raw if isinstance(raw, list) else ():
        if isinstance(item, Mapping) and isinstance(item.get("name"), str):
            attributes[item["name"]] = item.get("value")
    subscriptions: dict[str, Any] = {}
    for item in _items(answer.get("subscriptions")):
        if isinstance(item.get("name"), str):
            subscribed = item.get("subscribe", item.get("subscribed"))
            subscriptions[item["name"]] = subscribed
    segmentations: dict[str, Any] = {}
    for item in _items(answer.get("segmentations")):
        inner = item.get("segmentation")
        if item.get("belongs") is False or not isinstance(inner, Mapping):
            continue
        category, name = inner.get("category"), inner.get("name")
        if not isinstance(category, str) or not isinstance(name, str):
            continue
        seen = segmentations.get(category)
        if seen is None:
            segmentations[category] = name
        elif isinstance(seen, list):
            seen.append(name)
        else:
            segmentations[category] = [seen, name]
    return {
        "attributes": attributes,
        "subscriptions": subscriptions,
        "segmentations": segmentations,
    }


def _items(value: Any) -> list[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def profile_of(record: Mapping[str, Any]) -> tuple[str, int]:
    """(tableId, profileId) of a profile-table record; GiveUp saying what is missing."""
    table_type = record.get("tableType")
    if table_type != PROFILE_TABLE:
        kind = table_type if isinstance(table_type, str) else "an event without a table"
        raise GiveUp(f"{_ENRICH} needs a record of a profile table, and this one is {kind}")
    table_id = record.get("tableId")
    if isinstance(table_id, int) and not isinstance(table_id, bool):
        table_id = str(table_id)
    if not isinstance(table_id, str) or not table_id:
        raise GiveUp(f"{_ENRICH} needs the record's tableId, and it has none")
    if len(table_id) > MAX_TABLE_ID_CHARS:
        raise GiveUp(f"{_ENRICH} needs a table id, and the record's tableId is too long")
    data = record.get("data")
    raw = data.get("profileId") if isinstance(data, Mapping) else None
    if isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 18:
        raw = int(raw)
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 0:
        raise GiveUp(f"{_ENRICH} needs data.profileId (a number), and this record has none")
    return table_id, raw


class ProfileSource:
    """Reads profiles through the process's ActitoClient (so under its token and limits), with
    a short-lived cache. Raises what the client raises (RetryLater), and GiveUp for a record
    that names no profile or a profile that does not exist."""

    def __init__(
        self,
        client: ActitoClient,
        *,
        ttl: float | None = None,
        tables: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.ttl = client.config.profile_cache_seconds if ttl is None else ttl
        self.tables = dict(client.config.profile_tables if tables is None else tables)
        self._clock = clock
        self._cache: OrderedDict[_Key, tuple[float, Profile]] = OrderedDict()
        self._reading: dict[_Key, asyncio.Task[Profile]] = {}
        self.reads = 0  # profiles read from ACTITO (not from the cache), for logs and tests

    async def fetch(self, record: Mapping[str, Any]) -> Profile:
        """The profile `record` is about (see profile_of), as ACTITO has it now (or had it at
        most `ttl` seconds ago)."""
        self.client.check_configured()
        table_id, profile_id = profile_of(record)
        key = (self.tables.get(table_id, table_id), profile_id)
        cached = self._cache.get(key)
        if cached is not None and self._clock() < cached[0]:
            return cached[1]
        task = self._reading.get(key)
        if task is None:
            task = asyncio.ensure_future(self._read(key))
            self._reading[key] = task
            task.add_done_callback(lambda done: self._done(key, done))
        # Shielded: a caller that gives up (a worker shutting down) leaves the read to others.
        return await asyncio.shield(task)

    def _done(self, key: _Key, task: asyncio.Task[Profile]) -> None:
        self._reading.pop(key, None)
        if task.cancelled() or task.exception() is not None:  # marks the error as seen
            return
        if self.ttl > 0:
            self._cache[key] = (self._clock() + self.ttl, task.result())
            self._cache.move_to_end(key)
            while len(self._cache) > MAX_CACHED_PROFILES:
                self._cache.popitem(last=False)

    async def _read(self, key: _Key) -> Profile:
        table, profile_id = key
        answer = await self.client.call("GET", f"table/{segment(table)}/profile/{profile_id}")
        self.reads += 1
        if answer.status == 404:
            raise GiveUp(
                f"profile {profile_id} does not exist in the ACTITO profile table {table} "
                "(HTTP 404): it was deleted, or ACTITO knows the table by its name "
                "(see ROUTER_ACTITO_PROFILE_TABLES)",
                status_code=404,
            )
        if not answer.ok:
            problem = answer.problem()
            raise GiveUp(
                f"ACTITO refused to read profile {profile_id} of table {table} "
                f"(HTTP {answer.status}){': ' + problem if problem else ''}",
                status_code=answer.status,
            )
        if not isinstance(answer.body, Mapping):
            raise GiveUp(f"ACTITO's answer for profile {profile_id} is not a profile")
        return profile_view(answer.body)


__all__ = ["MAX_CACHED_PROFILES", "Profile", "ProfileSource", "profile_of", "profile_view"]
