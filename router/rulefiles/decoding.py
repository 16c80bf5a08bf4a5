"""Decoding a rule file with tomli, one top-level `[[NAME]]` table at a time when the text
allows it, which also tells the line of each such header.

A rule file is mostly `[[rule]]` tables, each with its `[rule.match]` and `[[rule.action]]`.
Cut before each line that reads `[[NAME]]` (a bare key, blanks and a comment allowed), every
piece is a TOML document of its own that decodes to `{NAME: [the element]}`: the element the
whole text has at that place. Decoding the pieces gives the whole document, with the line of
each header for free (router.rulefiles.positions would otherwise parse the file with
tree-sitter to find them), and lets a paced load (router.rulefiles.loader.load) call its pace
between pieces: tomli, compiled, never lets go of the interpreter while it decodes, about
50 ms for a file of 1,000 rules.

A cut is only trusted when every piece proves it: the text before the first cut may not define
any NAME, and each piece must decode to exactly one element of its NAME and nothing else. A
line that only looks like a header (inside a multi-line string or array) leaves the piece
before it unterminated, so that piece fails; a header the pattern does not know (a quoted key)
stays inside the piece before it, which then holds two elements or another name. Any failure,
and any file without such a header, is decoded whole, so a mistake is reported exactly as
tomli reports it for the whole text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import tomli

from router.checks import KeyPath
from router.rulefiles.positions import Pace

_HEADER = re.compile(r"^[ \t]*\[\[[ \t]*([A-Za-z0-9_-]+)[ \t]*\]\][ \t]*(?:#[^\n]*)?\r?$", re.M)


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded file, and the line of each top-level `[[NAME]]` header, ("NAME", index) ->
    line, when the decoding found them (None: ask router.rulefiles.positions)."""

    document: dict[str, Any]
    headers: dict[KeyPath, int] | None


def decode(source: str, pace: Pace | None = None) -> Decoded:
    """`source` decoded (tomli.TOMLDecodeError if it is not TOML), calling `pace` between
    pieces when it is decoded in pieces."""
    try:
        split = _in_pieces(source, pace)
    except tomli.TOMLDecodeError:
        split = None  # the error as the whole text has it (or none at all), below
    return split if split is not None else Decoded(tomli.loads(source), None)


def _in_pieces(source: str, pace: Pace | None) -> Decoded | None:
    cuts = list(_HEADER.finditer(source))
    if not cuts:
        return None
    document: dict[str, Any] = tomli.loads(source[: cuts[0].start()])
    if any(cut[1] in document for cut in cuts):
        return None  # `rule = ...` and [[rule]]: the whole text's error
    headers: dict[KeyPath, int] = {}
    line = source.count("\n", 0, cuts[0].start()) + 1
    ends = [*(cut.start() for cut in cuts[1:]), len(source)]
    for cut, end in zip(cuts, ends, strict=True):
        if pace is not None:
            pace()
        name = cut[1]
        piece = tomli.loads(source[cut.start() : end])
        if list(piece) != [name] or len(piece[name]) != 1:
            return None  # a header the pattern did not see: trust only the whole
        elements = document.setdefault(name, [])
        headers[(name, len(elements))] = line
        elements.append(piece[name][0])
        line += source.count("\n", cut.start(), end)
    return Decoded(document, headers)
