"""Normalisation of every ACTITO shape, and rejection of what is no event."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from router.events import STANDARD_KEYS, dedupe_key, normalise, parse_body
from router.exceptions import MalformedBody, NotAnEvent

SAMPLES = Path(__file__).parent / "samples"


def sample(name: str) -> Any:
    return json.loads(next(SAMPLES.glob(f"{name}-*.json")).read_text())


# (sample number, records, tableType, operation, eventType) for all 24 shapes.
EXPECTED = [
    ("01", 1, "PROFILE_TABLE", "CREATE", "DATA"),
    ("02", 3, "PROFILE_TABLE", "CREATE", "DATA"),
    ("03", 1, "PROFILE_TABLE", "UPDATE", "DATA"),
    ("04", 3, "PROFILE_TABLE", "UPDATE", "DATA"),
    ("05", 1, "PROFILE_TABLE", "UPDATED_SUBSCRIPTION", "DATA"),
    ("06", 3, "PROFILE_TABLE", "UPDATED_SUBSCRIPTION", "DATA"),
    ("07", 1, "PROFILE_TABLE", "UPDATED_SEGMENT", "DATA"),
    ("08", 2, "PROFILE_TABLE", "UPDATED_SEGMENT", "DATA"),
    ("09", 1, "CUSTOM_TABLE", "CREATE", "DATA"),
    ("10", 2, "CUSTOM_TABLE", "CREATE", "DATA"),
    ("11", 1, "CUSTOM_TABLE", "UPDATE", "DATA"),
    ("12", 2, "CUSTOM_TABLE", "UPDATE", "DATA"),
    ("13", 1, "CUSTOM_TABLE", "CREATE", "DATA"),
    ("14", 1, "PROFILE_TABLE", "DELETE", "DATA"),
    ("15", 2, "PROFILE_TABLE", "CREATE", "DATA"),
    ("16", 1, None, None, None),
    ("17", 2, None, None, None),
    ("18", 1, None, None, None),
    ("19", 1, None, None, None),
    ("20", 1, None, None, None),
    ("21", 2, None, None, None),
    ("22", 1, None, None, None),
    ("23", 1, None, None, None),
    ("24", 1, None, None, None),
]


def test_every_sample_is_covered() -> None:
    assert sorted(p.name[:2] for p in SAMPLES.glob("*.json")) == [e[0] for e in EXPECTED]


@pytest.mark.parametrize(("number", "count", "table_type", "operation", "event_type"), EXPECTED)
def test_samples_normalise(
    number: str, count: int, table_type: str | None, operation: str | None, event_type: str | None
) -> None:
    payload = sample(number)
    records = normalise(parse_body(json.dumps(payload).encode()))
    assert len(records) == count
    envelopes = payload if isinstance(payload, list) else [payload] * count
    items = (
        [e["data"] for e in envelopes]
        if isinstance(payload, list)
        else (payload["data"] if isinstance(payload["data"], list) else [payload["data"]])
    )
    for record, envelope, item in zip(records, envelopes, items, strict=True):
        assert record["tableType"] == table_type
        assert record["operation"] == operation
        assert record["eventType"] == event_type
        assert record["data"] == item  # data values are never coerced
        assert isinstance(record["fields"], list)
        assert set(STANDARD_KEYS) <= set(record)
        for key, value in envelope.items():  # envelope keys are kept (legacy ones rewritten)
            if key not in ("data", "fields", "eventType", "operation"):
                assert record[key] == value


def test_bulk_records_keep_the_envelope() -> None:
    records = normalise(sample("02"))
    assert {r["id"] for r in records} == {"a81d2f44-90c3-4e6b-8d2a-71b5c0e9f312"}
    assert [r["data"]["profileId"] for r in records] == [1205, 1206, 1207]
    assert all(r["fields"] == ["emailAddress"] for r in records)


def test_legacy_shape_moves_event_type_to_operation() -> None:
    (record,) = normalise(sample("13"))
    assert (record["eventType"], record["operation"], record["fields"]) == ("DATA", "CREATE", [])
    assert record["data"]["synchronized"] == "false"  # the string stays a string
    assert record["id"] == 34


def test_trigger_keeps_dotted_keys_and_links() -> None:
    records = normalise(sample("17"))
    assert [r["data"]["etl.executionStatus"] for r in records] == ["SUCCESS", "WITH_ERROR"]
    assert records[0]["_links"]["webhook"]["href"].endswith("/webhookSubscription/58")


def test_unknown_envelope_keys_are_kept() -> None:
    (record,) = normalise({"id": "x", "data": {"a": 1}, "newKey": {"b": 2}})
    assert record["newKey"] == {"b": 2}


def test_empty_bulk_gives_no_records() -> None:
    assert normalise({"id": "x", "tableType": "PROFILE_TABLE", "data": []}) == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b"   ", "empty"),
        (b"\xff\xfe{}", "UTF-8"),
        (b"{not json", "not valid JSON"),
        (b'{"data": NaN}', "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_malformed_bodies(body: bytes, message: str) -> None:
    with pytest.raises(MalformedBody, match=message):
        parse_body(body)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"id": "x"}, "data is missing"),
        ({"id": "x", "data": "text"}, "data must be an object or a list"),
        ({"id": "x", "data": 5}, "data must be an object or a list"),
        ({"id": "x", "data": [{"a": 1}, 2]}, r"data\[1\] must be an object"),
        ({"id": "x", "data": {}, "fields": "emailAddress"}, "fields must be a list"),
        ({"id": "x", "data": {}, "fields": [1]}, "fields must be a list"),
        ({"id": "x", "data": {}, "operation": 3}, "operation must be a string"),
        ({"id": "x", "data": {}, "tableId": {"a": 1}}, "tableId must be a string"),
        ([], "empty list"),
        ([{"id": "x", "data": {}}, 3], r"\[1\] must be an event object"),
        ([{"id": "x", "data": {}}, {"id": "y"}], r"\[1\]\.data is missing"),
        ("text", "must be an event object"),
        (42, "must be an event object"),
        (None, "must be an event object"),
    ],
)
def test_not_an_event(payload: Any, message: str) -> None:
    with pytest.raises(NotAnEvent, match=message):
        normalise(payload)


def test_dedupe_key_depends_on_id_position_and_content() -> None:
    a = {"id": "1", "data": {"Newsletter": True}}
    b = {"id": "2", "data": {"Newsletter": True}}
    assert dedupe_key(a, 0) == dedupe_key(dict(a), 0)
    assert dedupe_key(a, 0) != dedupe_key(b, 0)  # same content, another push: not a repeat
    assert dedupe_key(a, 0) != dedupe_key(a, 2)  # same content later in one BULK: a new step
    assert dedupe_key({"data": {}}, 0) is None  # no id: nothing to compare
