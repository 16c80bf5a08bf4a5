"""`router new`: a rule file to start from, written from a sample event.

Its `[rule.match]` is filled from the event's first record (table type, id, operation and
fields of a data event; for a trigger event, a condition on its data keys, which are what tells
the kinds of trigger apart). Its one action logs (harmless until edited), with each key
explained, followed by a commented-out example of every other registered action type, read from
the registry. A `[[test]]` uses the event, and says the rule must match it. The text is checked:
`router check` and `router test` pass on it as written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from router.actions.base import Key
from router.actions.registry import REGISTRY, keys_of
from router.events import Record

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Keys that identify a row in ACTITO's pushes, preferred in example URLs and messages.
_ID_KEYS = ("profileId", "id", "businessKey")
_TRIGGER_KINDS = {
    "etl": "an import (ETL) execution",
    "export": "an export execution",
    "actionParameters": "a scenario custom action",
    "profileAttributes": "a scenario custom action",
    "fileReference": "a file reference synchronization",
}


def toml_text(value: Any) -> str:
    """A value as TOML (strings as basic strings: JSON's escapes are TOML's)."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(toml_text(item) for item in value) + "]"
    return json.dumps(value)


def _template_path(key: str) -> str:
    """How a template reads data key `key`: data.key, or data["key"] when it has dots."""
    return f"data.{key}" if _IDENTIFIER.match(key) else f'data["{key}"]'


def _jmespath_path(key: str) -> str:
    return f"data.{key}" if _IDENTIFIER.match(key) else 'data."' + key + '"'


def rule_file(name: str, record: Record, event_path: str, shown_event: str) -> str:
    """The text of the rule file for `record` (the first record of the event at `event_path`,
    relative to the rules directory; `shown_event` is how the user named it)."""
    given = record.get("data")
    data: Mapping[str, Any] = given if isinstance(given, dict) else {}
    trigger = record.get("tableType") is None and record.get("operation") is None
    lines = [
        f"# {name}: written by `router new` from {shown_event}.",
        f"# {_what(record, data, trigger)}",
        "# Edit it, then run `router check` and `router test` on this directory.",
        "",
        "[[rule]]",
        f"name = {toml_text(name)}",
        'description = "Say what this rule is for"',
        '# mode = "shadow"   # try it on live traffic first: it matches and renders, sends nothing',
        "",
        "[rule.match]",
        *_match(record, data, trigger),
        "",
        "# What to do with each record the rule matches. This log action is a harmless start;",
        "# the commented examples below it show every other action type. A rule may have",
        "# several actions: each is delivered on its own.",
        *_log_action(name, record, data),
    ]
    for kind in REGISTRY:
        if kind != "log":
            lines += ["", *(f"# {line}" for line in _example(kind, name, data))]
    lines += [
        "",
        "# ---------------------------------------------------------------------------------",
        "# Tests (`router test`): the sample event must match this rule.",
        "",
        "[[test]]",
        f"name = {toml_text(f'{name} matches its sample event')}",
        f"event = {toml_text(event_path)}",
        f"match = [{toml_text(name)}]",
    ]
    return "\n".join(lines) + "\n"


def _what(record: Record, data: Mapping[str, Any], trigger: bool) -> str:
    if trigger:
        families = {key.split(".", 1)[0] for key in data if "." in key}
        kinds = sorted({_TRIGGER_KINDS[f] for f in families if f in _TRIGGER_KINDS})
        what = " or ".join(kinds) if kinds else "a trigger"
        return f"The event is a trigger event: {what}."
    parts = [str(record[k]) for k in ("tableType", "operation") if record.get(k) is not None]
    table = f" of table {record['tableId']}" if record.get("tableId") is not None else ""
    return f"The event is a data event: {' '.join(parts)}{table}."


def _match(record: Record, data: Mapping[str, Any], trigger: bool) -> list[str]:
    if trigger:
        dotted = [key for key in data if "." in key]
        key = next((k for k in dotted if k.endswith("Status")), dotted[0] if dotted else None)
        found = [
            "# Trigger events have no tableType, tableId or operation: the keys of their data",
            "# tell the kinds apart. This condition holds for events that carry this key.",
        ]
        if key is None:
            return [*found, '# condition = "data.someKey != `null`"']
        condition = f"{_jmespath_path(key)} != `null`"
        found.append(f"condition = {toml_text(condition)}")
        href = _subscription(record)
        if href is not None:
            example = f"{condition} && ends_with(_links.webhook.href, '{href}')"
            found += [
                "# One subscription only (STARTED and FINISHED come through different ones):",
                f"# condition = {toml_text(example)}",
            ]
        return found
    lines: list[str] = []
    for key in ("tableType", "tableId", "operation"):
        value = record.get(key)
        if value is not None:
            lines.append(f"{key} = {toml_text(str(value))}")
    fields = record.get("fields")
    if isinstance(fields, list) and fields:
        lines.append(f"fields = {toml_text(fields)}   # the push names at least one of these")
    sample = next((k for k in data if k not in _ID_KEYS), None)
    if sample is not None:
        value = data[sample]
        literal = f"'{value}'" if isinstance(value, str) and "'" not in value else None
        literal = literal or f"`{json.dumps(value, ensure_ascii=False)}`"
        condition = f"{_jmespath_path(sample)} == {literal}"
        lines += [
            "# A JMESPath condition on the record narrows it further (text in '…', other values",
            "# in backticks). Pushes carry only the fields that changed, so test a field is there.",
            f"# condition = {toml_text(condition)}",
        ]
    return lines


def _subscription(record: Record) -> str | None:
    """The end of the subscription's link (`/webhookSubscription/58`), if the event has one."""
    links = record.get("_links")
    webhook = links.get("webhook") if isinstance(links, dict) else None
    href = webhook.get("href") if isinstance(webhook, dict) else None
    if not isinstance(href, str) or href.count("/") < 2 or "'" in href:
        return None
    return "/" + "/".join(href.rsplit("/", 2)[-2:])


def _row_id(data: Mapping[str, Any]) -> str:
    key = next((k for k in _ID_KEYS if k in data), None)
    return "{{ " + _template_path(key) + " }}" if key else "{{ record.id }}"


def _log_action(name: str, record: Record, data: Mapping[str, Any]) -> list[str]:
    row = next((k for k in _ID_KEYS if k in data), None)
    message = f"{name}: event {{{{ record.id }}}}"
    if row is not None:
        message += f" ({row} {{{{ {_template_path(row)} }}}})"
    values = {"type": "log", "level": "info", "message": message}
    lines = ["[[rule.action]]"]
    for key in keys_of("log"):
        if key.name in values:
            lines.append(f"{key.name} = {toml_text(values[key.name])}   # {_doc(key)}")
    return lines


def _example(kind: str, name: str, data: Mapping[str, Any]) -> Iterator[str]:
    """A commented-out table of `kind` with each key: an example value and what it is."""
    yield "[[rule.action]]"
    examples = _examples(kind, name, data)
    keys = keys_of(kind)
    # The type first, its own keys next, the keys every type has (retry) last.
    for key in sorted(keys, key=lambda k: (k.name != "type", k.name == "retry")):
        if key.name == "type":
            yield f"type = {toml_text(kind)}"
            continue
        value = examples.get(key.name, key.default)
        text = toml_text(value) if value is not None else '"…"'
        if key.name == "retry":
            text = "{ max_attempts = 5, max_age = 86400 }"
        if isinstance(value, dict):
            text = "{ " + ", ".join(f"{k} = {toml_text(v)}" for k, v in value.items()) + " }"
        required = "required. " if key.required else ""
        yield f"{key.name} = {text}   # {required}{_doc(key)}"


def _examples(kind: str, name: str, data: Mapping[str, Any]) -> dict[str, Any]:
    row = _row_id(data) if data else "{{ record.id }}"
    if kind == "http":
        return {
            "url": f"https://api.example.com/hooks/{row}",
            "headers": {"Authorization": "Bearer {{ secrets.API_TOKEN }}"},
            "body": '{"event": {{ record.id | tojson }}, "data": {{ data | tojson }}}',
        }
    if kind == "email":
        return {
            "to": ["team@example.com"],
            "cc": ["lead@example.com"],
            "bcc": ["archive@example.com"],
            "subject": f"{name}: {row}",
            "text": "ACTITO event {{ record.id }}: {{ data | tojson }}",
            "html": "<p>ACTITO event {{ record.id | e }}.</p>",
        }
    return {}


def _doc(key: Key) -> str:
    return " ".join(key.doc.split())
