"""Request body -> normalised records, or a rejection that says why.

A *record* is what rules and templates see: the envelope's keys with `data` set to one item.
ONE_BY_ONE and BULK envelopes give the same records, so one rule serves both. Values are never
coerced: ACTITO sometimes sends "false" or "1" as strings, and rules see exactly that.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import orjson

from router.exceptions import MalformedBody, NotAnEvent

Record = dict[str, Any]

# Operations ACTITO has used; in the 2019 shape they arrive in `eventType`.
OPERATIONS = ("CREATE", "UPDATE", "DELETE", "UPDATED_SUBSCRIPTION", "UPDATED_SEGMENT")
TABLE_TYPES = ("PROFILE_TABLE", "CUSTOM_TABLE")
EVENT_TYPES = ("DATA", "TRIGGER")
# More digits than a 64-bit integer can hold without doubt (orjson reads those as floats).
_LONG_DIGITS = re.compile(rb"\d{19}")
# Nesting no deeper than this is read by the json module at any depth of the caller's stack.
_FEW_BRACKETS = 200
# What orjson writes otherwise than json.dumps: float text (digits then . or e) and DEL.
_WRITTEN_OTHERWISE = re.compile(rb"\d[.eE]|\x7f")
# Keys every record has (null when the envelope does not carry them), so rules can rely on them.
MAX_INT_DIGITS = 4300  # Python's own limit on converting integers from text (int_info)
STANDARD_KEYS = ("id", "tableType", "tableId", "fields", "eventType", "triggerType", "operation")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # e.g. 1e999: no store or receiver can keep it
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:  # Python refuses them, in words meant for us
        raise ValueError(f"a number has more than {MAX_INT_DIGITS} digits")
    return int(text)


def parse_body(body: bytes) -> Any:
    """Decode a request body as strict JSON (UTF-8, no NaN/Infinity), or raise MalformedBody."""
    if not body.strip():
        raise MalformedBody("the request body is empty; send a JSON event")
    # orjson reads most bodies several times faster. It reads integers of more than 64 bits as
    # floats, so a body with a long run of digits goes to the json module (which keeps them
    # exact), and so does every body orjson refuses: its reading says what is wrong. So does a
    # body with many brackets: it may nest deeper than the json module reads (which refuses
    # it as nested too deeply), and orjson reads deeper.
    if body.count(b"[") + body.count(b"{") <= _FEW_BRACKETS and not _LONG_DIGITS.search(body):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedBody(f"the body is not valid UTF-8 (byte {exc.start})") from exc
    try:
        return json.loads(
            text,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
        )
    except RecursionError as exc:
        raise MalformedBody("the JSON body is nested too deeply") from exc
    except ValueError as exc:
        raise MalformedBody(f"the body is not valid JSON: {exc}") from exc


def normalise(payload: Any) -> list[Record]:
    """Turn a decoded body into records, in the order they were sent; raise NotAnEvent if it is
    no ACTITO event. The message names the offending key."""
    if isinstance(payload, list):
        if not payload:
            raise NotAnEvent("the body is an empty list; expected one event or a list of events")
        records: list[Record] = []
        for position, envelope in enumerate(payload):
            if not isinstance(envelope, dict):
                raise NotAnEvent(f"[{position}] must be an event object, not {_kind(envelope)}")
            records.extend(_records_of(envelope, f"[{position}]."))
        return records
    if isinstance(payload, dict):
        return _records_of(payload, "")
    raise NotAnEvent(f"the body must be an event object or a list of them, not {_kind(payload)}")


def _records_of(envelope: dict[str, Any], where: str) -> list[Record]:
    if "data" not in envelope:
        raise NotAnEvent(f"{where}data is missing; an ACTITO event carries a 'data' object or list")
    data = envelope["data"]
    if isinstance(data, dict):
        items = [data]
    elif isinstance(data, list):
        for index, item in enumerate(data):
            if not isinstance(item, dict):
                raise NotAnEvent(f"{where}data[{index}] must be an object, not {_kind(item)}")
        items = data
    else:
        raise NotAnEvent(f"{where}data must be an object or a list, not {_kind(data)}")

    fields = envelope.get("fields")
    if fields is None:
        fields = []
    elif not (isinstance(fields, list) and all(isinstance(f, str) for f in fields)):
        raise NotAnEvent(f"{where}fields must be a list of names or null")
    for key in ("tableType", "operation", "eventType", "triggerType"):
        value = envelope.get(key)
        if value is not None and not isinstance(value, str):
            raise NotAnEvent(f"{where}{key} must be a string or null, not {_kind(value)}")
    table_id = envelope.get("tableId")
    if table_id is not None and (isinstance(table_id, bool) or not isinstance(table_id, str | int)):
        raise NotAnEvent(f"{where}tableId must be a string, not {_kind(table_id)}")

    base: Record = dict.fromkeys(STANDARD_KEYS)
    base.update(envelope)
    base["fields"] = fields
    # The 2019 shape: no `operation`, and `eventType` holds it.
    if "operation" not in envelope and base["eventType"] in OPERATIONS:
        base["operation"] = base["eventType"]
        base["eventType"] = "DATA"
    return [{**base, "data": item} for item in items]


def dedupe_key(record: Record, position: int) -> str | None:
    """Identity of a record for duplicate detection: the envelope `id`, the record's position in
    the push, and its content. None when the envelope has no id (nothing to compare against)."""
    if record.get("id") is None:
        return None
    return hashlib.sha256(_canonical([position, record])).hexdigest()


def _canonical(value: Any) -> bytes:
    """json.dumps(value, sort_keys=True, separators=(",", ":")), byte for byte (keys stored by
    earlier versions must still match), through orjson when its text is the same: ASCII, with
    no float (orjson writes 1e-05 as 0.00001) and no DEL (json escapes it). A record holds no
    NaN or infinity (parse_body refuses them), which orjson would write as null."""
    try:
        text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # a larger integer, a lone surrogate, deep nesting
        text = b"\xff"
    if text.isascii() and not _WRITTEN_OTHERWISE.search(text):
        return text
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"
