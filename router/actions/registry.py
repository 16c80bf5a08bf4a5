"""The action types, by name: the one registry that `router check`, `[[test]]` tables, the dry
run, the worker, the CLI and the docs read. A type is one module (router.actions.http, .email,
.log, .actito) holding an ActionType; `register` adds one, so a new type touches no other module.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from router.actions.actito import ActitoType
from router.actions.base import (
    COMMON_KEYS,
    ActionType,
    Deliverer,
    Key,
    compile_enrich,
    compile_order,
    compile_retry,
)
from router.actions.email import EmailType
from router.actions.http import HttpType
from router.actions.log import LogType
from router.checks import Checker, KeyPath, Problems, kind_of
from router.destinations import Destination, resolve
from router.rules import Action
from router.templating import Template, enriched

if TYPE_CHECKING:
    from router.settings import Settings

REGISTRY: dict[str, ActionType] = {}
# The destination whose slots the jobs of an action that fetches each enrichment wait in.
FETCHED_FROM: Mapping[str, str] = {"profile": ActitoType.name}


def register(action_type: ActionType) -> ActionType:
    """Make `action_type` known by its name (a second type of the same name replaces it)."""
    REGISTRY[action_type.name] = action_type
    return action_type


def of(action: Action) -> ActionType:
    """The registered type of a compiled action."""
    return REGISTRY[action.type]


def keys_of(name: str) -> tuple[Key, ...]:
    """Every key a table of type `name` may have, the common ones first."""
    return (*COMMON_KEYS, *REGISTRY[name].keys)


def compile_action(checker: Checker, path: KeyPath, value: Any) -> Action | None:
    """One action table (from a rule file, or a spec a job stored): its type's checks and
    compilation; None after reporting any problem. `value` becomes the action's spec, the one
    its jobs store, as it is: the caller hands it over and never changes it afterwards (a
    table just decoded from a rule file is nobody else's; parse_action copies a stored spec).
    Copying every spec here was a fifth of reloading a large rule set."""
    before = checker.errors
    if not isinstance(value, dict):
        checker.report(path, f"must be a table, not {kind_of(value)}")
        return None
    name = checker.text((*path, "type"), checker.require(value, "type", path, "set type"))
    if name is None:
        return None
    action_type = REGISTRY.get(name)
    if action_type is None:
        checker.choice((*path, "type"), name, list(REGISTRY), "action type")
        return None
    known = [key.name for key in keys_of(name)]
    for key in value:
        if key not in known:
            checker.report((*path, key), _unknown_key(key, known, checker))
    retry = compile_retry(checker, (*path, "retry"), value.get("retry"))
    fetched = compile_enrich(checker, (*path, "enrich"), value.get("enrich"))
    order = compile_order(checker, path, value)
    with enriched(fetched):  # its templates may read what it fetches, and only that
        action = action_type.compile(checker, path, value, retry)
    if checker.errors != before or action is None:
        return None
    return dataclasses.replace(action, **order) if order["order_by"] is not None else action


def enrichments_of(action: Action) -> tuple[str, ...]:
    """What `action` fetches when its job is delivered (its `enrich` list, checked)."""
    value = action.spec.get("enrich")
    return tuple(value) if isinstance(value, list) else ()


def secrets_of(action: Action) -> frozenset[str]:
    """The NAME of every `secrets.NAME` the templates of `action` read: what its rendered
    requests may carry, whichever branch of a template ran."""
    names: set[str] = set()

    def visit(value: Any) -> None:
        if isinstance(value, Template):
            names.update(value.secrets)
        elif isinstance(value, tuple | list):
            for item in value:
                visit(item)

    for item in dataclasses.fields(action):
        visit(getattr(action, item.name))
    return frozenset(names)


def _unknown_key(key: str, known: list[str], checker: Checker) -> str:
    owners = [name for name in REGISTRY if key in {k.name for k in keys_of(name)}]
    if owners:
        return f"unknown key: only {' and '.join(owners)} actions have {key}"
    return checker.unknown_key(key, known)


def parse_action(spec: Mapping[str, Any]) -> Action:
    """Rebuild the action compiled from `spec` (an `Action.spec` a delivery job stored), with
    the very code that validated it; ValueError if the spec is not a valid action."""
    problems = Problems()
    action = compile_action(problems, (), copy.deepcopy(dict(spec)))  # the action's own
    if action is None:
        raise ValueError("; ".join(problems.lines) or "not a valid action")
    return action


def render(action: Action, context: Mapping[str, Any]) -> dict[str, Any]:
    """Render `action` with `context` (see ActionType.render)."""
    return of(action).render(action, context)


def destination_of(action: Action, declared: Sequence[Destination] = ()) -> str:
    """The destination a job of `action` counts against (see ActionType.destination), or the
    `declared` destination ([[destination]]) its URL falls under. An action with `enrich`
    counts against the API it fetches from: that API's limits set the pace of its jobs (100
    ACTITO calls a minute), so all of them together may hold no more of a worker than one
    destination may, whatever their own destinations."""
    fetched = enrichments_of(action)
    if fetched:
        return FETCHED_FROM[fetched[0]]
    key = of(action).destination(action)
    url = action.spec.get("url")
    if declared and isinstance(url, str):
        return resolve(url, key, declared)
    return key


def build_deliverers(settings: Settings) -> dict[str, Deliverer]:
    """One deliverer per registered type, not started yet (the worker calls `start`)."""
    return {name: kind.make_deliverer(settings) for name, kind in REGISTRY.items()}


for _builtin in (HttpType(), EmailType(), LogType(), ActitoType()):
    register(_builtin)

__all__ = [
    "REGISTRY",
    "build_deliverers",
    "compile_action",
    "destination_of",
    "enrichments_of",
    "keys_of",
    "of",
    "parse_action",
    "register",
    "render",
    "secrets_of",
]
