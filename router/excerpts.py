"""What a destination answered: the excerpt of its answer kept with each attempt.

A deliverer reads at most READ_BYTES of an answer's body (a destination answering a gigabyte
costs what one answering a page does: the rest is never read) and hands the worker an
Excerpt: that head, decoded as UTF-8 with replacement, and whether the answer went on past it.
The worker masks the secrets of the rendered request in it and stores its first EXCERPT_CHARS
characters with the attempt (router.store), for the console, the API and `router deliveries
show`.

A destination may echo the request, an Authorization header included: every form of a secret's
value a request carries it in (as it is, JSON-escaped, percent-encoded) becomes `<secret NAME>`
before anything is stored. Masking runs on the whole head read, before it is shortened, so a
secret that begins within the excerpt is masked whole; and when the answer went on past the
head, the head's last characters, where a secret may begin and be cut off, are dropped.
A value a template computed from a secret (reversed, hashed) is not recognised.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, quote_plus

EXCERPT_CHARS = 1024  # of an answer, kept with its attempt
# Of an answer's body, read for its excerpt: four times EXCERPT_CHARS (a character takes at most
# four bytes in UTF-8) and as much again, so a secret that begins within the excerpt ends
# within what was read and is masked whole.
READ_BYTES = 8 * EXCERPT_CHARS


@dataclass(frozen=True, slots=True)
class Excerpt:
    """The head of an answer as read (`text`), and whether the answer went on past it (`cut`).
    Never stored as it is: `masked` first, then `stored`."""

    text: str
    cut: bool = False

    @classmethod
    def of(cls, raw: bytes, *, cut: bool = False) -> Excerpt:
        """The excerpt of a body's first bytes (at most READ_BYTES are kept)."""
        if len(raw) > READ_BYTES:
            raw, cut = raw[:READ_BYTES], True
        return cls(raw.decode("utf-8", "replace"), cut)

    def masked(self, secrets: Mapping[str, str]) -> Excerpt:
        """This excerpt with every form of each secret's value (by NAME) as `<secret NAME>`."""
        forms = {
            form: f"<secret {name}>"
            for name, value in secrets.items()
            if value
            for form in _forms(value)
        }
        if not forms:
            return self
        # The longest form first, in one pass: a placeholder is never searched again.
        ordered = sorted(forms, key=len, reverse=True)
        pattern = re.compile("|".join(re.escape(form) for form in ordered))
        text = pattern.sub(lambda found: forms[found.group()], self.text)
        if self.cut:
            # The answer went on: its last characters may begin a secret that was cut off.
            text = text[: max(0, len(text) - (len(ordered[0]) - 1))]
        return Excerpt(text, self.cut)

    def stored(self) -> str:
        """What is kept with the attempt: the first EXCERPT_CHARS characters."""
        return self.text[:EXCERPT_CHARS]


def _forms(value: str) -> Iterable[str]:
    """The forms a request carries `value` in, as a destination may echo them."""
    return {
        value,
        json.dumps(value)[1:-1],  # JSON-escaped, ASCII only
        json.dumps(value, ensure_ascii=False)[1:-1],
        quote(value, safe=""),
        quote_plus(value, safe=""),
    }


__all__ = ["EXCERPT_CHARS", "READ_BYTES", "Excerpt"]
