"""The excerpt of an answer: decoded with replacement, secrets masked in every form a request
carries them in, a secret cut off at the end of what was read never kept, at most
EXCERPT_CHARS characters stored."""

from __future__ import annotations

import json
from urllib.parse import quote, quote_plus

import pytest

from router.excerpts import EXCERPT_CHARS, READ_BYTES, Excerpt

SECRET = 'k3y "quoted" / + & é'


def test_bytes_are_decoded_with_replacement_and_bounded() -> None:
    assert Excerpt.of(b"caf\xc3\xa9 \xff") == Excerpt("café \ufffd")
    assert Excerpt.of(b"a" * (READ_BYTES + 5)) == Excerpt("a" * READ_BYTES, cut=True)


@pytest.mark.parametrize(
    "form",
    [
        SECRET,
        json.dumps(SECRET)[1:-1],
        json.dumps(SECRET, ensure_ascii=False)[1:-1],
        quote(SECRET, safe=""),
        quote_plus(SECRET, safe=""),
    ],
    ids=["as-is", "json-ascii", "json", "percent", "form"],
)
def test_every_form_of_a_secret_is_masked(form: str) -> None:
    echoed = Excerpt(f"Authorization: Bearer {form}\r\n\r\n{{}}")
    masked = echoed.masked({"CRM": SECRET})
    assert masked.text == "Authorization: Bearer <secret CRM>\r\n\r\n{}"


def test_the_longest_secret_wins_and_a_placeholder_is_not_searched_again() -> None:
    masked = Excerpt("token=abcdef; short=abc; secret").masked(
        {"LONG": "abcdef", "SHORT": "abc", "WORD": "secret", "EMPTY": ""}
    )
    assert masked.text == "token=<secret LONG>; short=<secret SHORT>; <secret WORD>"


def test_a_secret_cut_off_where_reading_stopped_is_dropped() -> None:
    # The answer went on past what was read: its end may be the start of a secret.
    head = Excerpt("ok " + SECRET + " then" + " " * 100 + SECRET[:5], cut=True)
    masked = head.masked({"CRM": SECRET})
    assert SECRET[:5] not in masked.text
    assert masked.text.startswith("ok <secret CRM> then")
    # A whole answer has nothing cut off: its end is kept.
    assert Excerpt("then " + SECRET[:5]).masked({"CRM": SECRET}).text == "then " + SECRET[:5]


def test_what_is_stored_is_at_most_excerpt_chars() -> None:
    long = Excerpt("é" * (EXCERPT_CHARS * 3), cut=True)
    assert long.stored() == "é" * EXCERPT_CHARS
    assert Excerpt("short").stored() == "short"


def test_a_secret_straddling_the_stored_length_is_masked_whole() -> None:
    text = "x" * (EXCERPT_CHARS - 3) + SECRET + "y" * 100
    stored = Excerpt(text).masked({"CRM": SECRET}).stored()
    assert SECRET[:3] not in stored
    assert stored == "x" * (EXCERPT_CHARS - 3) + "<se"
