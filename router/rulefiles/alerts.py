"""`[[alert]]` tables: when to tell someone that deliveries are in trouble (router.alerts).

An alert names what to watch (`when`: dead jobs, failing attempts, an open circuit, a refused
reload), optionally one `rule` or one `destination`, how many within which `window` make it fire
(`threshold`), and an `[alert.action]`: an email, http or log action whose templates see
`alert` (what happened), `secrets` and `now`. Every problem is a diagnostic with its line.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from router.actions.registry import compile_action
from router.checks import KeyPath, kind_of
from router.destinations import DestinationProblem, pause_target
from router.rulefiles.schema import Context
from router.rules import ALERT_WHEN, Alert, Location
from router.templating import ALERT_NAMES, scoped

ALERT_KEYS = ("name", "when", "rule", "destination", "threshold", "window", "action")
ALERT_ACTION_TYPES = ("email", "http", "log")
THRESHOLD_RANGE = (1, 1_000_000)
WINDOW_RANGE = (10.0, 7 * 86400.0)  # seconds
DEFAULT_WINDOW = "15m"
# The scopes each kind of alert can have.
SCOPES: dict[str, tuple[str, ...]] = {
    "dead": ("rule", "destination"),
    "failing": ("rule", "destination"),
    "circuit_open": ("destination",),
    "reload_refused": (),
}


def destination_key(text: str) -> str | None:
    """A destination as jobs name it (router.destinations): `https://crm.example.com/` ->
    `crm.example.com:443`, the host (every destination on it); a URL with a path, as in a
    `[[destination]]` table, -> `crm.example.com:443/api/` (it and the keys below it);
    `host:port`, `smtp`, `log` and `actito` as they are. None if unreadable."""
    try:
        key = pause_target(text)
    except DestinationProblem:
        return None
    host, slash, path = key.partition("/")
    return host if slash and not path else key


def read_alert(
    context: Context, path: KeyPath, raw: Any, rules: Collection[str], complete: bool
) -> Alert | None:
    """One `[[alert]]` table; None after reporting any problem. `rules` are the rule names
    defined (`complete`: every rule file was read, so an unknown name is a mistake)."""
    context.rule, context.hidden = None, 0
    if not isinstance(raw, dict):
        context.report(path, f"must be a table, not {kind_of(raw)}")
        return None
    before = context.errors
    table = context.table(path, raw, ALERT_KEYS) or raw
    when = context.text((*path, "when"), context.require(table, "when", path, "say what to watch"))
    if when is not None and when not in ALERT_WHEN:
        context.choice((*path, "when"), when, ALERT_WHEN, "alert condition")
        when = None
    rule = context.text((*path, "rule"), table.get("rule"))
    if rule is not None and complete and rule not in rules:
        context.choice((*path, "rule"), rule, sorted(rules), "rule name")
    destination = None
    given = context.text((*path, "destination"), table.get("destination"))
    if given is not None:
        destination = destination_key(given)
        if destination is None:
            message = "write a URL such as https://crm.example.com/ or a host:port"
            context.report((*path, "destination"), f"'{given}' is not a destination; {message}")
    if when is not None:
        for key in ("rule", "destination"):
            if key in table and key not in SCOPES[when]:
                allowed = " or ".join(SCOPES[when]) or "nothing"
                context.report((*path, key), f"an alert on {when} can be scoped by {allowed}")
    if rule is not None and given is not None:
        context.report((*path, "destination"), "give rule or destination, not both")
    threshold = context.number(
        (*path, "threshold"), table.get("threshold", 1), THRESHOLD_RANGE, integer=True
    )
    window = context.duration((*path, "window"), table.get("window", DEFAULT_WINDOW), WINDOW_RANGE)
    action = _action(context, (*path, "action"), table)
    name = context.text((*path, "name"), table.get("name"))
    if name is None and when is not None:
        name = when + (f" of rule {rule}" if rule else f" of {destination}" if destination else "")
    if context.errors != before or None in (when, name, threshold, window, action):
        return None
    assert when is not None and name is not None and action is not None
    assert threshold is not None and window is not None
    location = Location(context.file, context.positions.line(path))
    return Alert(name, when, rule, destination, int(threshold), window, action, location)


def _action(context: Context, path: KeyPath, table: dict[str, Any]) -> Any:
    raw = context.require(table, "action", path[:-1], "add an [alert.action] table")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        context.report(path, f"must be a table: write [alert.action], not {kind_of(raw)}")
        return None
    kind = raw.get("type")
    if isinstance(kind, str) and kind not in ALERT_ACTION_TYPES:
        context.choice((*path, "type"), kind, ALERT_ACTION_TYPES, "alert action type")
        return None
    for key in ("batch", "enrich"):
        if key in raw:
            context.report((*path, key), "is not available to an alert's action")
            return None
    with scoped(ALERT_NAMES):  # its templates see `alert`, not a record
        return compile_action(context, path, raw)
