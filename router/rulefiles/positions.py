"""Where each key of a TOML document is written: key path -> 1-based line.

The TOML reader gives values without positions, so the loader asks this map where a value came
from. A key path follows the decoded document, with array indices:
`("rule", 0, "action", 1, "url")`. The map covers table headers (`[[rule]]`, `[rule.match]`,
`[[rule.action]]`), dotted keys, inline tables and array elements. It is built from a
tree-sitter parse of a document that the reader already accepted, so it never has to report
syntax errors itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import tomli
import tree_sitter_toml
from tree_sitter import Language, Node, Parser, Point, Tree

KeyPath = tuple[str | int, ...]
Pace = Callable[[], None]  # called often during a long piece of work (see load)

_PARSER = Parser(Language(tree_sitter_toml.language()))
_MULTILINE_OPENERS = ('"""', "'''")
# A bare or dotted key of bare parts: `name`, `rule.match`, `a . b` (TOML allows the blanks).
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+(?:[ \t]*\.[ \t]*[A-Za-z0-9_-]+)*")


@dataclass(frozen=True, slots=True)
class _Value:
    first_line: int  # line of the first character of the string's content
    last_line: int


class Positions:
    """Lines of the keys of one document. Lookups fall back to the nearest enclosing key, so a
    missing key is reported at the header of the table that lacks it.

    The line of each top-level `[[NAME]]` header (a rule's or a test's location) is known at
    once: given by the decoder (router.rulefiles.decoding finds them as it splits the text) or
    read from a tree-sitter parse; the parse, and the map of every key, wait for the first
    other lookup otherwise (a valid rule set needs none)."""

    def __init__(
        self, source: str, pace: Pace | None = None, headers: dict[KeyPath, int] | None = None
    ) -> None:
        self._data = source.encode("utf-8")
        self._pace = pace or _no_pace
        self._parsed: Tree | None = None
        self._map: _Map | None = None
        self._headers = headers if headers is not None else self._read_headers()

    @property
    def _tree(self) -> Tree:
        if self._parsed is None:
            data, pace = self._data, self._pace
            self._parsed = _PARSER.parse(data if pace is _no_pace else _paced_reader(data, pace))
        return self._parsed

    def _read_headers(self) -> dict[KeyPath, int]:
        headers: dict[KeyPath, int] = {}
        counts: dict[str, int] = {}
        for number, node in enumerate(self._tree.root_node.named_children):
            if number % _PACED_NODES == 0:
                self._pace()
            if node.type != "table_array_element":
                continue
            key_node = _header_key(node)
            parts = _key_parts(key_node, self._data) if key_node is not None else []
            if len(parts) == 1:
                index = counts.get(parts[0], 0)
                counts[parts[0]] = index + 1
                headers[(parts[0], index)] = node.start_point.row + 1
        return headers

    @property
    def keys(self) -> dict[KeyPath, int]:
        return self._full().keys

    @property
    def values(self) -> dict[KeyPath, _Value]:
        return self._full().values

    def _full(self) -> _Map:
        if self._map is None:
            self._map = _walk_tree(self._tree, self._data)
        return self._map

    def line(self, path: KeyPath) -> int:
        header = self._headers.get(path)
        if header is not None:
            return header
        keys = self.keys
        for end in range(len(path), 0, -1):
            line = keys.get(path[:end])
            if line is not None:
                return line
        return 1

    def template_line(self, path: KeyPath, lineno: int) -> int:
        """The file line of line `lineno` (1-based) of the string at `path`; the key's line when
        the string is not a multi-line one (its line structure is not in the file then)."""
        value = self.values.get(path)
        if value is None or value.first_line == value.last_line:
            return self.line(path)
        return min(value.first_line + max(lineno, 1) - 1, value.last_line)


@dataclass
class _Map:
    keys: dict[KeyPath, int] = field(default_factory=dict)
    values: dict[KeyPath, _Value] = field(default_factory=dict)


def positions(
    source: str, pace: Pace | None = None, headers: dict[KeyPath, int] | None = None
) -> Positions:
    """Map every key of `source` (valid TOML) to its line; `headers`: the line of each
    top-level `[[NAME]]` header, ("NAME", index) -> line, when the caller knows them. With
    `pace`, a parse reads the text in pieces and calls it before each (see
    router.rulefiles.loader.load)."""
    return Positions(source, pace, headers)


_PIECE = 4_096  # bytes tree-sitter reads at a time in a paced parse: well under 1 ms of work
_PACED_NODES = 64  # top-level statements read between two calls of the pace


def _no_pace() -> None:
    pass


def _paced_reader(data: bytes, pace: Pace) -> Callable[[int, Point], bytes]:
    def read(offset: int, _point: Point) -> bytes:
        pace()
        return data[offset : offset + _PIECE]

    return read


def _walk_tree(tree: Tree, data: bytes) -> _Map:
    found = _Map()
    arrays: dict[KeyPath, int] = {}  # array-of-tables path -> elements so far
    for node in tree.root_node.named_children:
        if node.type not in ("table", "table_array_element"):
            if node.type == "pair":
                _pair(node, (), found, data)
            continue
        key_node = _header_key(node)
        if key_node is None:
            continue
        parts = _key_parts(key_node, data)
        path = (*_resolve(parts[:-1], arrays), *parts[-1:])
        if node.type == "table_array_element":
            index = arrays.get(path, 0)
            arrays[path] = index + 1
            found.keys.setdefault(path, node.start_point.row + 1)
            path = (*path, index)
        elif path in arrays:  # [rule.match] after [[rule]]: a table inside its last element
            path = (*path, arrays[path] - 1)
        found.keys.setdefault(path, node.start_point.row + 1)
        for child in node.named_children:
            if child.type == "pair":
                _pair(child, path, found, data)
    return found


def _header_key(node: Node) -> Node | None:
    """The key of a `[table]` or `[[array]]` header node."""
    first = node.named_child(0)  # the key, unless a comment comes first: then look further
    if first is not None and first.type.endswith("key"):
        return first
    return next((c for c in node.named_children if c.type.endswith("key")), None)


def _resolve(parts: list[str], arrays: dict[KeyPath, int]) -> KeyPath:
    """A header's key path with the current index of every array of tables it goes through."""
    path: KeyPath = ()
    for part in parts:
        path = (*path, part)
        if path in arrays:
            path = (*path, arrays[path] - 1)
    return path


def _pair(node: Node, table: KeyPath, found: _Map, data: bytes) -> None:
    key_node, value = node.named_children[0], node.named_children[-1]
    line = node.start_point.row + 1
    path = table
    for part in _key_parts(key_node, data):
        path = (*path, part)
        found.keys.setdefault(path, line)
    _value(value, path, found, data)


def _value(node: Node, path: KeyPath, found: _Map, data: bytes) -> None:
    if node.type == "inline_table":
        for child in node.named_children:
            if child.type == "pair":
                _pair(child, path, found, data)
    elif node.type == "array":
        elements = [c for c in node.named_children if c.type != "comment"]
        for index, element in enumerate(elements):
            found.keys.setdefault((*path, index), element.start_point.row + 1)
            _value(element, (*path, index), found, data)
    elif node.type == "string":
        first = node.start_point.row + 1
        text = _text(node, data)
        # TOML drops a newline right after the opening quotes of a multi-line string.
        if text[:3] in _MULTILINE_OPENERS and text[3:4] in ("\n", "\r"):
            first += 1
        found.values[path] = _Value(first, node.end_point.row + 1)


def _text(node: Node, data: bytes) -> str:
    """The text of `node` (node.text is None in a tree parsed from pieces)."""
    return data[node.start_byte : node.end_byte].decode("utf-8")


def _key_parts(node: Node, data: bytes) -> list[str]:
    """The decoded parts of a bare, quoted or dotted key (tomli does the unquoting; keys of
    bare parts only, the usual case, are split here)."""
    text = _text(node, data)
    if _BARE_KEY.fullmatch(text):
        return [part.strip(" \t") for part in text.split(".")]
    try:
        decoded: Any = tomli.loads(f"{text} = 0")
    except tomli.TOMLDecodeError:
        return [text]
    return list(_walk(decoded))


def _walk(decoded: Any) -> Iterator[str]:
    while isinstance(decoded, dict) and decoded:
        key = next(iter(decoded))
        yield key
        decoded = decoded[key]
