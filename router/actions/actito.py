"""The actito action: write back to ACTITO through its API, with the process's one ActitoClient
(router.actito.client: its access token, its limits).

Its table: `do` (what to write), `table` (a template: the profile table, or the custom table
for `create_record`), and what `do` needs:

    update_profile  PUT    table/{table}/profile/{profile}               {"attributes": [...]}
    subscribe       POST   table/{table}/profile/{profile}/subscription/{subscription}
    unsubscribe     DELETE table/{table}/profile/{profile}/subscription/{subscription}
    create_record   POST   customTable/{table}/record                    {"properties": [...]}

(paths under /v4/entity/{ROUTER_ACTITO_ENTITY}/). `profile` and `subscription` are templates;
`attributes` and `properties` are tables of name = template (sent as the rendered text) or of
name = a TOML number or boolean (sent as that). Its jobs count against one destination, the
ACTITO API.

Outcomes: 2xx is done; so is 404 to an unsubscribe (there is nothing left to remove). What
ACTITO refuses otherwise (4xx) is GiveUp, with ACTITO's own message; 429, 5xx and the like are
RetryLater (the client's rules). Deliverer.enrichers offers the profile reads of
router.actito.profiles, through the same client.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

from router.actions.base import ActionType, Delivered, Deliverer, Enricher, Key
from router.actito.client import ActitoClient, ActitoConfig, segment
from router.actito.profiles import ProfileSource
from router.checks import Checker, KeyPath, kind_of
from router.exceptions import GiveUp, RenderError
from router.retry import RetryOverride
from router.rules import Action
from router.templating import Template

if TYPE_CHECKING:
    from router.settings import Settings

# What `do` may be, and the keys each needs (beyond `table`).
WRITES: Mapping[str, tuple[str, ...]] = {
    "update_profile": ("profile", "attributes"),
    "subscribe": ("profile", "subscription"),
    "unsubscribe": ("profile", "subscription"),
    "create_record": ("properties",),
}
_WHY = {
    "profile": 'give the profile id, e.g. profile = "{{ data.profileId }}"',
    "attributes": 'give the attributes to write, e.g. attributes = { lastSync = "{{ now }}" }',
    "subscription": 'name the subscription, e.g. subscription = "Newsletter"',
    "properties": 'give the row\'s values, e.g. properties = { orderId = "{{ data.id }}" }',
}
MAX_PROFILE_ID_DIGITS = 18
MAX_NAME_CHARS = 200  # of a rendered table or subscription name: longer is no ACTITO name
ENTITY_SHOWN = "<ROUTER_ACTITO_ENTITY>"  # what a preview shows for the entity of the path

DO_KEY = Key("do", "string", f"What to write: {', '.join(WRITES)}.", required=True)
TABLE_KEY = Key(
    "table",
    "template",
    "The profile table (or, for create_record, the custom table), as ACTITO names it in API "
    "paths, e.g. `{{ record.tableId }}`.",
    required=True,
    template=True,
)
PROFILE_KEY = Key(
    "profile",
    "template",
    "The profile id (update_profile, subscribe, unsubscribe), e.g. `{{ data.profileId }}`.",
    template=True,
)
ATTRIBUTES_KEY = Key(
    "attributes",
    "table of templates",
    "update_profile: attribute name = template (or a number or boolean).",
    template=True,
)
SUBSCRIPTION_KEY = Key(
    "subscription",
    "template",
    "subscribe, unsubscribe: the subscription's name.",
    template=True,
)
PROPERTIES_KEY = Key(
    "properties",
    "table of templates",
    "create_record: column name = template (or a number or boolean).",
    template=True,
)
TIMEOUT_KEY = Key(
    "timeout", "number", "Seconds the call may take.", default=30.0, bounds=(0.1, 300.0)
)

Value = Template | int | float | bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ActitoAction(Action):
    type: str = "actito"
    do: str
    table: Template
    profile: Template | None
    subscription: Template | None
    values: tuple[tuple[str, Value], ...]  # attributes or properties, by `do`


class ActitoDeliverer(Deliverer):
    """Sends {"type": "actito", "method", "path", "body"} as one ACTITO API call (`path` under
    /v4/entity/{entity}/, `body` JSON text or None)."""

    type = "actito"

    def __init__(self, client: ActitoClient) -> None:
        self.client = client
        self.profiles = ProfileSource(client)

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(ActitoClient(ActitoConfig.from_settings(settings)))

    async def start(self) -> None:
        await self.client.start()

    async def close(self) -> None:
        await self.client.close()

    def enrichers(self) -> Mapping[str, Enricher]:
        return {"profile": self.profiles}

    async def deliver(
        self, rendered: Mapping[str, Any], *, job_id: str, timeout: float | None
    ) -> Delivered:
        method = str(rendered.get("method"))
        path = str(rendered.get("path"))
        body = rendered.get("body")
        try:
            payload = None if body is None else json.loads(body)
        except (TypeError, ValueError):
            raise GiveUp("invalid request: the body is not JSON") from None
        answer = await self.client.call(method, path, body=payload, timeout=timeout)
        if answer.ok or (answer.status == 404 and method == "DELETE"):
            # A 404 to an unsubscribe: nothing left to remove, what it wants.
            return Delivered(answer.status, answer.excerpt)
        problem = answer.problem()
        raise GiveUp(
            f"ACTITO refused {method} {path} (HTTP {answer.status})"
            f"{': ' + problem if problem else ''}",
            status_code=answer.status,
            response=answer.excerpt,
        )


class ActitoType(ActionType):
    name = "actito"
    summary = (
        "Write back to ACTITO: update a profile's attributes, subscribe or unsubscribe it, or "
        "create a custom-table row."
    )
    keys = (
        DO_KEY,
        TABLE_KEY,
        PROFILE_KEY,
        ATTRIBUTES_KEY,
        SUBSCRIPTION_KEY,
        PROPERTIES_KEY,
        TIMEOUT_KEY,
    )
    rendered = ("method", "path", "body")
    shown_when_set = ("body",)
    deliverer = ActitoDeliverer

    @property
    def test_keys(self) -> tuple[str, ...]:
        return (*self.rendered, "body_json")

    def compile(
        self, checker: Checker, path: KeyPath, raw: dict[str, Any], retry: RetryOverride
    ) -> Action | None:
        do = checker.text((*path, "do"), checker.require(raw, "do", path, "say what to write"))
        if do is not None and do not in WRITES:
            checker.choice((*path, "do"), do, list(WRITES), "write")
            do = None
        table = checker.template(
            (*path, "table"), checker.require(raw, "table", path, "name the ACTITO table")
        )
        needed = WRITES.get(do or "", ())
        if do is not None:
            for key in ("profile", "attributes", "subscription", "properties"):
                if key in needed:
                    checker.require(raw, key, path, _WHY[key])
                elif key in raw:
                    checker.report((*path, key), f'is not used by do = "{do}"; remove it')
        profile = checker.template((*path, "profile"), raw.get("profile"))
        subscription = checker.template((*path, "subscription"), raw.get("subscription"))
        values_key = "attributes" if do == "update_profile" else "properties"
        values = _values(checker, (*path, values_key), raw.get(values_key))
        assert TIMEOUT_KEY.bounds is not None
        timeout = checker.number(
            (*path, "timeout"), raw.get("timeout", TIMEOUT_KEY.default), TIMEOUT_KEY.bounds
        )
        if do is None or table is None or timeout is None or values is None:
            return None
        if any(key in needed and raw.get(key) is None for key in ("profile", "subscription")):
            return None
        return ActitoAction(
            spec=raw,
            do=do,
            table=table,
            profile=profile if "profile" in needed else None,
            subscription=subscription if "subscription" in needed else None,
            values=values if values_key in needed else (),
            timeout=float(timeout),
            retry=retry,
        )

    def render(self, action: ActitoAction, context: Mapping[str, Any]) -> dict[str, Any]:
        table = _one_line(action.table.render(context, where="table"), "table")
        key = "attributes" if action.do == "update_profile" else "properties"
        values = [
            {"name": name, "value": _rendered(value, context, f"{key}.{name}")}
            for name, value in action.values
        ]
        if action.do == "create_record":
            return _request("POST", f"customTable/{segment(table)}/record", {"properties": values})
        assert action.profile is not None
        profile = action.profile.render(context, where="profile").strip()
        if not (profile.isascii() and profile.isdigit()) or len(profile) > MAX_PROFILE_ID_DIGITS:
            raise RenderError("template for profile: the rendered value is not a profile id")
        base = f"table/{segment(table)}/profile/{profile}"
        if action.do == "update_profile":
            return _request("PUT", base, {"attributes": values})
        assert action.subscription is not None
        name = _one_line(action.subscription.render(context, where="subscription"), "subscription")
        method = "POST" if action.do == "subscribe" else "DELETE"
        return _request(method, f"{base}/subscription/{segment(name)}", None)

    def expected(self, checker: Checker, path: KeyPath, key: str, value: Any) -> Any:
        if key == "body_json":
            return value  # compared as parsed JSON
        text = checker.text(path, value)
        return text.upper() if key == "method" and text else text

    def compare(self, key: str, want: Any, rendered: Mapping[str, Any]) -> tuple[str, Any] | None:
        if key == "body_json":
            body = rendered.get("body")
            actual = json.loads(body) if isinstance(body, str) else body
            return None if actual == want else ("the rendered body differs", actual)
        return super().compare(key, want, rendered)

    def describe(self, rendered: Mapping[str, Any]) -> tuple[str, list[tuple[str, str]]]:
        summary = f"{rendered['method']} /v4/entity/{ENTITY_SHOWN}/{rendered['path']}"
        body = rendered.get("body")
        return summary, [("body", body)] if body is not None else []


def _values(checker: Checker, path: KeyPath, value: Any) -> tuple[tuple[str, Value], ...] | None:
    if value is None:
        return ()
    if not isinstance(value, dict):
        checker.report(path, f"must be a table of name = template, not {kind_of(value)}")
        return None
    if not value:
        checker.report(path, "is an empty table; give at least one value")
        return None
    values: list[tuple[str, Value]] = []
    ok = True
    for name, item in value.items():
        if isinstance(item, float) and not math.isfinite(item):
            checker.report((*path, name), "must be a finite number (JSON has no inf or nan)")
            ok = False
        elif isinstance(item, bool | int | float):
            values.append((name, item))
        elif isinstance(item, str):
            template = checker.template((*path, name), item)
            ok = ok and template is not None
            if template is not None:
                values.append((name, template))
        else:
            checker.report(
                (*path, name), f"must be a template, a number or a boolean, not {kind_of(item)}"
            )
            ok = False
    return tuple(values) if ok else None


def _rendered(value: Value, context: Mapping[str, Any], name: str) -> Any:
    if isinstance(value, Template):
        return value.render(context, where=name)
    return value


def _one_line(text: str, where: str) -> str:
    value = text.strip()
    if not value:
        raise RenderError(f"template for {where}: the rendered value is empty")
    if not value.isprintable():
        raise RenderError(f"template for {where}: the rendered value holds a control character")
    if len(value) > MAX_NAME_CHARS:
        raise RenderError(
            f"template for {where}: the rendered value is over {MAX_NAME_CHARS} characters"
        )
    return value


def _request(method: str, path: str, body: Mapping[str, Any] | None) -> dict[str, Any]:
    text = None if body is None else json.dumps(body, ensure_ascii=False, allow_nan=False)
    return {"type": "actito", "method": method, "path": path, "body": text}


__all__ = ["ActitoAction", "ActitoDeliverer", "ActitoType"]
