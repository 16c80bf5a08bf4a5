"""Rendered header values: one line of plain text, nothing a parser downstream reads as more.

A template puts event data into HTTP headers and e-mail headers. A line break there starts a
new header (`Bcc:`, a second `Host:`), and other control characters are read differently by
the parsers along the way. In e-mail, an RFC 2047 encoded word (`=?utf-8?q?...?=`) is decoded
by mail software after any check of the raw text, so it can carry what the check refused; rules
never need to write one, because the e-mail library encodes non-ASCII text by itself.

The problems are phrased without the value: it comes from the event and may hold anything.
"""

from __future__ import annotations

import re

# CR and LF, and what Python's str.splitlines (used by the e-mail package) also ends a line at.
_LINE_BREAK = re.compile("[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
# Unicode's control characters (category Cc), except tab.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")
# `=?charset?encoding?text?=`, loosely: any run that a decoder could take for an encoded word.
_ENCODED_WORD = re.compile(r"=\?[^?]*\?[^?]*\?.*?\?=", re.DOTALL)


def header_problem(value: str, *, encoded_words: bool = False) -> str | None:
    """Why `value` cannot be sent as a header value, or None when it can. Tab is allowed; line
    breaks and every other control character are not. With `encoded_words`, an RFC 2047
    encoded word is refused too (for e-mail headers)."""
    if _LINE_BREAK.search(value):
        return "the value contains a line break"
    if _CONTROL.search(value):
        return "the value contains a control character"
    if encoded_words and _ENCODED_WORD.search(value):
        return (
            "the value contains an encoded word (=?...?=), which is refused; "
            "non-ASCII text needs no encoding"
        )
    return None


__all__ = ["header_problem"]
