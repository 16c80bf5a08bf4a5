"""The webhook subscriptions the rules need, those that exist in the ACTITO entity, and the
difference between them: what `router actito plan` shows and `router actito apply` does.

Derivation. ACTITO wants one subscription per table and event type. An enabled rule whose
match names its table type, table ids and operations needs one subscription per (table,
operation); the subscription's `onFields` is the union of the `fields` of the rules that need
it, or none at all (every field) when one of them does not filter on fields. A rule that
matches any table type, table or operation, or only trigger events, is reported, not guessed.

Which existing subscriptions are the router's: those whose targetUrl is the router's intake
(any address ending in /webhooks/actito, so that a router that moved is found and pointed at
its new address). Subscriptions that push elsewhere belong to other systems and are never
touched. The router's subscription for a (table, event type) is updated when its target URL,
its headers, its fields, its push type or its activation differ; a second one for the same
(table, event type) would push every event twice, and is deactivated, as are the router's
subscriptions that no rule needs any more. Deactivated, not deleted: a mistake is undone by
the next apply.

What ACTITO's list answer looks like is not documented in what we could read: a JSON list of
subscriptions is read, and so is an object holding one list of them under any key (also one
level down, as in `{"_embedded": {"...": [...]}}`); pages are read with `page` (from 0) and
`pageSize` until a page comes back short.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from router.actito.client import ActitoClient, Answer, segment
from router.exceptions import CommandError, DeliveryFailed
from router.matching import RuleSet
from router.rules import Rule

INTAKE_PATH = "/webhooks/actito"
PROFILE_TABLE, CUSTOM_TABLE = "PROFILE_TABLE", "CUSTOM_TABLE"
# The event types of each table type (DELETE: profile tables, in ACTITO's older documents).
EVENT_TYPES: Mapping[str, tuple[str, ...]] = {
    PROFILE_TABLE: ("CREATE", "UPDATE", "UPDATED_SUBSCRIPTION", "UPDATED_SEGMENT", "DELETE"),
    CUSTOM_TABLE: ("CREATE", "UPDATE"),
}
PAGE_SIZE = 100  # subscriptions asked for per page of the list
MAX_PAGES = 1000  # pages read at most: an API that ignores `page` cannot loop forever
# The keys of a subscription the router writes (and sends back when it deactivates one).
WRITTEN_KEYS = (
    "on",
    "onElementId",
    "eventType",
    "onFields",
    "targetUrl",
    "headers",
    "webhookPushType",
    "maxBlockSize",
    "isActive",
)
_LOOKS_LIKE_A_SUBSCRIPTION = ("targetUrl", "eventType", "onElementId")

Kind = Literal["create", "update", "deactivate", "unchanged"]
_Key = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Wanted:
    """A subscription the rules need. `fields` None: every field (no onFields filter)."""

    on: str
    table_id: str
    event_type: str
    fields: tuple[str, ...] | None
    rules: tuple[str, ...]

    @property
    def key(self) -> _Key:
        return (self.on, self.table_id, self.event_type)


@dataclass(frozen=True, slots=True)
class Unplanned:
    """A rule that needs a subscription the router cannot derive, and why."""

    rule: str
    reason: str


@dataclass(frozen=True, slots=True)
class Derivation:
    wanted: tuple[Wanted, ...]
    unplanned: tuple[Unplanned, ...]


def derive(ruleset: RuleSet) -> Derivation:
    """The subscriptions the enabled rules of `ruleset` need, in table then event order."""
    merged: dict[_Key, tuple[set[str] | None, list[str]]] = {}
    unplanned: list[Unplanned] = []
    for rule in ruleset.enabled:
        for key, fields in _needs(rule, unplanned):
            seen = merged.get(key)
            if seen is None:
                merged[key] = (None if fields is None else set(fields), [rule.name])
                continue
            union, rules = seen
            if union is not None and fields is not None:
                union |= fields
            merged[key] = (None if fields is None else union, [*rules, rule.name])

    def order(key: _Key) -> tuple[str, str, int]:
        return (key[0], key[1], EVENT_TYPES[key[0]].index(key[2]))

    wanted = tuple(
        Wanted(on, table, event, None if fields is None else tuple(sorted(fields)), tuple(rules))
        for (on, table, event), (fields, rules) in sorted(merged.items(), key=lambda i: order(i[0]))
    )
    return Derivation(wanted, tuple(unplanned))


def _needs(rule: Rule, unplanned: list[Unplanned]) -> list[tuple[_Key, frozenset[str] | None]]:
    match = rule.match

    def skip(reason: str) -> list[tuple[_Key, frozenset[str] | None]]:
        unplanned.append(Unplanned(rule.name, reason))
        return []

    if match.event_type is not None and "DATA" not in match.event_type:
        return skip(
            "it matches trigger events only; ACTITO's documentation does not say how to "
            "subscribe to those, so create that subscription by hand"
        )
    if match.table_type is None:
        return skip("it matches any table type; set tableType in its [rule.match]")
    if len(match.table_type) > 1:
        return skip("it matches both table types; split it into one rule per table type")
    if match.table_id is None:
        return skip("it matches any table; set tableId in its [rule.match]")
    if match.operation is None:
        return skip("it matches any operation; set operation in its [rule.match]")
    (on,) = match.table_type
    needs = []
    for operation in sorted(match.operation):
        if operation not in EVENT_TYPES[on]:
            kind = "custom tables" if on == CUSTOM_TABLE else "profile tables"
            unplanned.append(Unplanned(rule.name, f"{kind} have no {operation} events"))
            continue
        needs += [((on, table, operation), match.fields) for table in sorted(match.table_id)]
    return needs


@dataclass(frozen=True, slots=True)
class Existing:
    """A subscription as ACTITO listed it. `headers` None: the list does not show them."""

    id: str
    on: str | None
    table_id: str | None
    event_type: str | None
    fields: tuple[str, ...] | None
    target_url: str | None
    headers: Mapping[str, str] | None
    active: bool
    push_type: str | None
    raw: Mapping[str, Any] = field(repr=False)

    @property
    def key(self) -> tuple[str | None, str | None, str | None]:
        return (self.on, self.table_id, self.event_type)


def read_existing(item: Mapping[str, Any]) -> Existing | None:
    """One listed subscription (None without an id: nothing could be done with it)."""
    ident = item.get("id")
    if isinstance(ident, bool) or not isinstance(ident, int | str) or ident == "":
        return None
    fields = item.get("onFields")
    headers = item.get("headers")
    active = item.get("isActive", item.get("active", True))
    return Existing(
        id=str(ident),
        on=_text(item.get("on", item.get("tableType"))),
        table_id=_text(item.get("onElementId", item.get("tableId"))),
        event_type=_text(item.get("eventType")),
        fields=tuple(str(f) for f in fields) if isinstance(fields, list) and fields else None,
        target_url=_text(item.get("targetUrl")),
        headers={str(k): str(v) for k, v in headers.items()}
        if isinstance(headers, Mapping)
        else None,
        active=active is not False and active != "false",
        push_type=_text(item.get("webhookPushType")),
        raw=item,
    )


def _text(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    return str(value) if isinstance(value, str | int) else None


def subscriptions_in(body: Any) -> list[Mapping[str, Any]]:
    """The subscriptions in one page of ACTITO's list answer (see the module docstring);
    CommandError when the answer holds no list, or several that could be it."""
    if isinstance(body, list):
        return [item for item in body if isinstance(item, Mapping)]
    if not isinstance(body, Mapping):
        raise CommandError("ACTITO's list of webhook subscriptions is not JSON that lists them")
    candidates = [v for v in body.values() if isinstance(v, list)]
    if not candidates:
        candidates = [
            v for inner in body.values() if isinstance(inner, Mapping) for v in inner.values()
        ]
        candidates = [v for v in candidates if isinstance(v, list)]
    lists = [[i for i in c if isinstance(i, Mapping)] for c in candidates]
    lists = [items for items in lists if items]
    if len(lists) > 1:
        lists = [items for items in lists if any(k in items[0] for k in _LOOKS_LIKE_A_SUBSCRIPTION)]
    if len(lists) > 1:
        raise CommandError(
            "ACTITO's list of webhook subscriptions holds several lists, and the router cannot "
            "tell which one holds them"
        )
    if not lists and not candidates:
        raise CommandError("ACTITO's list of webhook subscriptions holds no list")
    return lists[0] if lists else []


async def list_subscriptions(client: ActitoClient) -> list[Mapping[str, Any]]:
    """Every subscription of the entity, page by page."""
    found: list[Mapping[str, Any]] = []
    seen: set[str] = set()
    for page in range(MAX_PAGES):
        answer = await client.call(
            "GET", "webhookSubscription", params={"page": page, "pageSize": PAGE_SIZE}
        )
        if not answer.ok:
            raise CommandError(_refused("list the webhook subscriptions", answer))
        items = subscriptions_in(answer.body)
        new = [item for item in items if str(item.get("id")) not in seen]
        seen.update(str(item.get("id")) for item in new)
        found += new
        if len(items) < PAGE_SIZE or not new:  # the last page; or `page` was ignored
            break
    return found


@dataclass(frozen=True, slots=True)
class Target:
    """What every router subscription must say: where to push, with which headers (the shared
    secret), how."""

    url: str
    headers: Mapping[str, str]
    push_type: str

    @classmethod
    def of(cls, public_url: str, headers: Mapping[str, str], push_type: str) -> Target:
        return cls(public_url.rstrip("/") + INTAKE_PATH, dict(headers), push_type)


@dataclass(frozen=True, slots=True)
class Change:
    """One line of the plan. `body` is what apply sends (None for unchanged)."""

    kind: Kind
    wanted: Wanted | None
    existing: Existing | None
    differences: tuple[str, ...] = ()
    body: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    changes: tuple[Change, ...]
    unplanned: tuple[Unplanned, ...]
    listed: int  # subscriptions in the entity
    elsewhere: tuple[Existing, ...]  # pushing to another system: left alone
    inactive: tuple[Existing, ...]  # the router's, inactive, needed by no rule: left as they are

    def of(self, kind: Kind) -> list[Change]:
        return [change for change in self.changes if change.kind == kind]

    @property
    def pending(self) -> list[Change]:
        """The changes apply makes, in order: creations, updates, then deactivations (so that
        events keep arriving while a subscription is replaced)."""
        return [*self.of("create"), *self.of("update"), *self.of("deactivate")]


def body_of(wanted: Wanted, target: Target) -> dict[str, Any]:
    body: dict[str, Any] = {
        "on": wanted.on,
        "onElementId": wanted.table_id,
        "eventType": wanted.event_type,
        "targetUrl": target.url,
        "headers": dict(target.headers),
        "webhookPushType": target.push_type,
        "isActive": True,
    }
    if wanted.fields is not None:
        body["onFields"] = list(wanted.fields)
    return body


def differences(existing: Existing, wanted: Wanted, target: Target) -> tuple[str, ...]:
    """What apply would change in `existing` so that it is `wanted` (empty: nothing)."""
    found = []
    if existing.target_url != target.url:
        found.append("target URL")
    if existing.headers is not None:
        theirs = {name.lower(): value for name, value in existing.headers.items()}
        if any(theirs.get(name.lower()) != value for name, value in target.headers.items()):
            found.append("headers")
    if set(existing.fields or ()) != set(wanted.fields or ()):
        found.append("fields")
    if existing.push_type is not None and existing.push_type != target.push_type:
        found.append("push type")
    if not existing.active:
        found.append("activation")
    return tuple(found)


def is_the_routers(existing: Existing, target: Target) -> bool:
    url = existing.target_url
    if url is None:
        return False
    if url == target.url:
        return True
    try:
        path = urlsplit(url).path
    except ValueError:
        return False
    return path.rstrip("/").endswith(INTAKE_PATH)


def make_plan(derivation: Derivation, listed: Sequence[Mapping[str, Any]], target: Target) -> Plan:
    """The difference between what the rules need and what the entity holds."""
    existing = [found for found in map(read_existing, listed) if found is not None]
    ours = [found for found in existing if is_the_routers(found, target)]
    elsewhere = tuple(found for found in existing if not is_the_routers(found, target))
    changes: list[Change] = []
    claimed: set[str] = set()
    for wanted in derivation.wanted:
        same = [found for found in ours if found.key == wanted.key]
        if not same:
            changes.append(Change("create", wanted, None, body=body_of(wanted, target)))
            continue
        keep = next((found for found in same if found.active), same[0])
        claimed.update(found.id for found in same)
        diff = differences(keep, wanted, target)
        if diff:
            changes.append(Change("update", wanted, keep, diff, body_of(wanted, target)))
        else:
            changes.append(Change("unchanged", wanted, keep))
        for twin in same:
            if twin is not keep and twin.active:
                changes.append(Change("deactivate", wanted, twin, ("duplicate",), _off(twin)))
    inactive = []
    for found in ours:
        if found.id in claimed:
            continue
        if found.active:
            changes.append(Change("deactivate", None, found, ("no rule needs it",), _off(found)))
        else:
            inactive.append(found)
    return Plan(tuple(changes), derivation.unplanned, len(existing), elsewhere, tuple(inactive))


def _off(existing: Existing) -> dict[str, Any]:
    body = {key: existing.raw[key] for key in WRITTEN_KEYS if key in existing.raw}
    return {**body, "isActive": False}


async def apply(
    client: ActitoClient, plan: Plan, *, done: Callable[[Change], None] | None = None
) -> int:
    """Make the plan's pending changes, in order; `done` is told of each. Returns how many
    were made; CommandError on the first that fails, saying how many were made before it
    (apply again to finish: a plan made afresh leaves out what was done)."""
    pending = plan.pending
    for made, change in enumerate(pending):
        assert change.body is not None
        try:
            if change.kind == "create":
                answer = await client.call("POST", "webhookSubscription", body=change.body)
            else:
                assert change.existing is not None
                path = f"webhookSubscription/{segment(change.existing.id)}"
                answer = await client.call("PUT", path, body=change.body)
        except DeliveryFailed as exc:
            raise CommandError(_stopped(exc, made, len(pending))) from None
        if not answer.ok:
            raise CommandError(_stopped(_refused(_verb(change), answer), made, len(pending)))
        if done is not None:
            done(change)
    return len(pending)


def _verb(change: Change) -> str:
    if change.kind == "create":
        assert change.wanted is not None
        return f"create the subscription {describe_key(change.wanted.key)}"
    assert change.existing is not None
    verb = "update" if change.kind == "update" else "deactivate"
    return f"{verb} subscription {change.existing.id}"


def _refused(what: str, answer: Answer) -> str:
    problem = answer.problem()
    return f"ACTITO refused to {what} (HTTP {answer.status}){': ' + problem if problem else ''}"


def _stopped(reason: object, made: int, total: int) -> str:
    return (
        f"{reason}; {made} of {total} change(s) were made before it; run `router actito "
        "apply` again to make the rest"
    )


def describe_key(key: Iterable[str | None]) -> str:
    on, table, event = key
    return f"{on or '?'} {table or '?'} {event or '?'}"


__all__ = [
    "INTAKE_PATH",
    "Change",
    "Derivation",
    "Existing",
    "Plan",
    "Target",
    "Unplanned",
    "Wanted",
    "apply",
    "derive",
    "list_subscriptions",
    "make_plan",
    "read_existing",
    "subscriptions_in",
]
