"""The intake reads bodies and writes dedupe keys through orjson where it gives exactly what
the json module gives: the same values (integers of any size kept exact) and the same keys,
byte for byte, as earlier versions stored."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from router.events import dedupe_key, parse_body

texts = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8)
values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),  # beyond 64 bits too
        st.floats(allow_nan=False, allow_infinity=False),
        texts,
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(texts, children, max_size=4)
    ),
    max_leaves=12,
)


def typed(value: Any) -> str:
    return repr(value)  # 1 and 1.0 and True differ


@settings(max_examples=600, deadline=None)
@given(values, st.sampled_from([{}, {"indent": 1}, {"ensure_ascii": False}]))
def test_bodies_read_as_the_json_module_reads_them(value: Any, options: dict[str, Any]) -> None:
    body = json.dumps(value, **options).encode()
    assert typed(parse_body(body)) == typed(json.loads(body))


@settings(max_examples=600, deadline=None)
@given(values, st.integers(0, 3))
def test_dedupe_keys_are_the_json_module_ones(data: Any, position: int) -> None:
    record = {"id": "e-1", "tableType": "PROFILE_TABLE", "triggerType": None, "data": data}
    canonical = json.dumps([position, record], sort_keys=True, separators=(",", ":"))
    assert dedupe_key(record, position) == hashlib.sha256(canonical.encode()).hexdigest()


def test_a_long_integer_stays_exact() -> None:
    assert parse_body(b'{"data": {"n": 123456789012345678901234567890}}') == {
        "data": {"n": 123456789012345678901234567890}
    }
