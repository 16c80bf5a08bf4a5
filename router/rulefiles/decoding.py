"""Decoding a rule file: tomli over the whole text or, for a paced load, one `[[NAME]]` table
at a time.

tomli (compiled) never lets go of the interpreter while it decodes: a file of 1,000 rules holds
it for about 50 ms, and a server reloading its rules would answer nothing meanwhile. A paced
load (see router.rulefiles.loader.load) therefore decodes a file in pieces, calling its pace
between them: the text before the first header, then each top-level `[[NAME]]` table with the
`[NAME.x]` / `[[NAME.x]]` tables that follow it. Each such piece is a TOML document of its
own and decodes to `{NAME: [the element]}`, the element the whole text has at that place, so
the pieces put together are the whole document. That holds when every header below a
`[[NAME]]` is one of NAME's (it then refers to that element and nothing before it) and the
root keys name no array; any other file, and any file a piece of which fails, is decoded
whole, so a mistake is reported exactly as an unpaced load reports it.
"""

from __future__ import annotations

from typing import Any

import tomli

from router.rulefiles.positions import Pace, Positions, Section


def decode(source: str, positions: Positions | None = None, pace: Pace | None = None) -> Any:
    """`source` decoded (tomli.TOMLDecodeError if it is not TOML); in pieces, calling `pace`
    between them, when `pace` and the `positions` of the same text are given and the file
    allows it."""
    if pace is None or positions is None or positions.has_error:
        return tomli.loads(source)
    pieces = _pieces(positions.sections())
    if pieces is None:
        return tomli.loads(source)
    data = source.encode("utf-8")
    ends = [*(start for _, start in pieces[1:]), len(data)]
    try:
        document: dict[str, Any] = tomli.loads(data[: pieces[0][1]].decode("utf-8"))
        if any(name in document for name, _ in pieces):
            return tomli.loads(source)  # `rule = ...` and [[rule]]: the whole text's error
        for (name, start), end in zip(pieces, ends, strict=True):
            pace()
            piece = tomli.loads(data[start:end].decode("utf-8"))
            if list(piece) != [name] or len(piece[name]) != 1:
                return tomli.loads(source)  # not read as the headers said: trust the whole
            document.setdefault(name, []).append(piece[name][0])
    except tomli.TOMLDecodeError:
        return tomli.loads(source)  # the error as the whole text has it (or none at all)
    return document


def _pieces(sections: list[Section]) -> list[tuple[str, int]] | None:
    """(NAME, start) of each top-level `[[NAME]]` table, when the file splits at them."""
    pieces: list[tuple[str, int]] = []
    for section in sections:
        if section.kind == "pair" and not pieces:
            continue  # a root key: in the text before the first header
        if section.kind == "table_array_element" and len(section.key) == 1:
            pieces.append((section.key[0], section.start))
        elif section.kind in ("table", "table_array_element") and pieces:
            if len(section.key) < 2 or section.key[0] != pieces[-1][0]:
                return None  # a table of another array's element, or of the root
        else:
            return None
    return pieces or None
