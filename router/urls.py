"""An http action's URL: event values are percent-encoded and cannot move where the request goes.

A url template is compiled with each `{{ expression }}` wrapped in a marker filter
(`mark_values`), so its rendered text shows which characters came from values. `build` then
splits the text at the markers and assembles the URL:

- the rule's literal text, and trusted values, go in as written (characters that can never
  stand in a URL, such as spaces or non-ASCII, are percent-encoded; `%XX` is kept);
- every other value is percent-encoded whole: all but `A-Z a-z 0-9 - . _ ~`, so `/ ? # & = +
  % ;` and the rest cannot end a path segment, start a query or a fragment, or split a query
  value. Full encoding is valid wherever a value may stand and leaves nothing to interpret;
- a value that is not trusted may not stand before the path: the scheme, user info, host and
  port come from the rule (refused at load when the literal text shows it, else here);
- a `.` or `..` path segment, also written `%2e`, is refused, wherever it comes from.

Trusted are values read directly from `secrets.NAME` (configuration: a base URL in a secret is
common) and expressions whose last filter is `trusted` (`{{ data.path | trusted }}`).

The result is final: the deliverer sends it with yarl's `URL(..., encoded=True)`, which neither
re-encodes nor normalises it (`check` is what both run).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, unquote

from jinja2 import nodes
from yarl import URL

SCHEMES = ("http", "https")
TRUSTED_FILTER = "trusted"
# Inserted by `mark_values` only: a name with a space cannot be written in a template.
VALUE_FILTER = "url value"
# Private-use characters around each value in the rendered text; values are stripped of them.
_UNTRUSTED, _TRUSTED, _END = "\ue000", "\ue001", "\ue002"
_MARKERS = _UNTRUSTED + _TRUSTED + _END
_STRIP = str.maketrans("", "", _MARKERS)
_VALUE = re.compile(f"([{_UNTRUSTED}{_TRUSTED}])([^{_MARKERS}]*){_END}")
# The text before a value ends the authority: `scheme://authority` and then / ? or #.
_AUTHORITY_DONE = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*[/?#]")
_ABSOLUTE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*:)//([^/?#]*)(.*)", re.DOTALL)
# What a URL may hold as it is: unreserved, reserved, and % before two hex digits.
_NOT_IN_URL = re.compile(r"%(?![0-9A-Fa-f]{2})|[^A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]")
# `router test` renders secrets as `<secret NAME>`; where one stands, a stand-in is checked.
_PLACEHOLDER = re.compile(r"<secret [^<>]*>")
_STAND_IN_URL = "https://secret.invalid"  # a secret the URL starts with: a base URL
_STAND_IN = "secret"

AUTHORITY_PROBLEM = (
    "a value from the event would stand in the scheme, host, port or user info; write the URL "
    "up to its path in the rule (or in a secret), or mark a value you trust with | trusted"
)


class UrlProblem(ValueError):
    """What is wrong with a URL or a url template, in one phrase that never repeats a value;
    `lineno` is the template line (for load-time problems)."""

    def __init__(self, message: str, lineno: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.lineno = lineno


def trusted(value: Any) -> Any:
    """The `trusted` filter: returns its value. In a url, it marks the value as safe to insert
    as written (the compiler reads it); elsewhere it changes nothing."""
    return value


def mark(value: Any, is_trusted: bool) -> str:
    """The marker filter: `value` as text, stripped of marker characters, between markers."""
    return (_TRUSTED if is_trusted else _UNTRUSTED) + str(value).translate(_STRIP) + _END


def mark_values(ast: nodes.Template) -> None:
    """Rewrite a parsed url template in place so that every output expression goes through
    the marker filter. Raises UrlProblem when the template's literal start shows a value that
    is not trusted where the scheme, host, port or user info stand, or when a value ends in
    `urlencode` (it would be encoded twice)."""
    check_values(ast)
    for output in ast.find_all(nodes.Output):
        for index, child in enumerate(output.nodes):
            if isinstance(child, nodes.TemplateData):
                child.data = child.data.translate(_STRIP)
                continue
            flag = nodes.Const(_is_trusted(child), lineno=child.lineno)
            output.nodes[index] = nodes.Filter(
                child, VALUE_FILTER, [flag], [], None, None, lineno=child.lineno
            )


def check_values(ast: nodes.Template) -> None:
    """The UrlProblem `mark_values` would raise on `ast`, without changing it."""
    _check_start(ast)
    for output in ast.find_all(nodes.Output):
        for child in output.nodes:
            if isinstance(child, nodes.Filter) and child.name == "urlencode":
                raise UrlProblem(
                    "values are percent-encoded by the router; remove the urlencode filter, "
                    "which would encode them twice",
                    child.lineno,
                )


def _is_trusted(node: nodes.Expr) -> bool:
    if isinstance(node, nodes.Filter):
        return node.name == TRUSTED_FILTER
    return (
        isinstance(node, nodes.Getattr | nodes.Getitem)
        and isinstance(node.node, nodes.Name)
        and node.node.name == "secrets"
    )


def _check_start(ast: nodes.Template) -> None:
    """The load-time half of the authority rule: follow the template's text from its start
    while it is plain (no if/for); the first value met must come after the authority, unless
    it is trusted (then what follows depends on its value: checked at render time)."""
    prefix = ""
    for statement in ast.body:
        if not isinstance(statement, nodes.Output):
            return
        for child in statement.nodes:
            if isinstance(child, nodes.TemplateData):
                prefix += child.data
            elif _is_trusted(child) or _AUTHORITY_DONE.match(prefix):
                return
            else:
                raise UrlProblem(AUTHORITY_PROBLEM, child.lineno)


def build(rendered: str, *, placeholders: bool = False) -> str:
    """The URL to send, from the text a marked url template rendered; UrlProblem if a value
    stands where it may not, or if the result fails `check`.

    With `placeholders` (a dry run), a trusted value that is a `<secret NAME>` placeholder is
    shown as it is, and a stand-in takes its place for the checks.
    """
    pieces: list[tuple[str, str]] = []  # (marker, text); marker "" for the rule's own text
    position = 0
    for found in _VALUE.finditer(rendered):
        pieces += [("", rendered[position : found.start()]), (found[1], found[2])]
        position = found.end()
    pieces.append(("", rendered[position:]))
    if any(char in _MARKERS for marker, text in pieces if not marker for char in text):
        raise UrlProblem(
            "its template mixes values in a way whose place in the URL cannot be told; "
            "write each value as its own {{ ... }}"
        )
    shown: list[str] = []
    probe: list[str] = []
    stand_ins = False
    for marker, text in pieces:
        if marker == _UNTRUSTED:
            if not _AUTHORITY_DONE.match("".join(probe)):
                raise UrlProblem(AUTHORITY_PROBLEM)
            encoded = quote(text, safe="", errors="replace")
            shown.append(encoded)
            probe.append(encoded)
        elif marker == _TRUSTED and placeholders and _PLACEHOLDER.fullmatch(text.strip()):
            shown.append(text)
            probe.append(_STAND_IN if "".join(probe).strip() else _STAND_IN_URL)
            stand_ins = True
        else:
            shown.append(_requote(text))
            probe.append(text)
    url = _normalise("".join(probe).strip())
    check(url)
    # A dry run cannot know a secret: it shows the placeholder where the value would be.
    return "".join(shown).strip() if stand_ins else url


def _requote(text: str) -> str:
    return _NOT_IN_URL.sub(lambda found: quote(found[0], safe="", errors="replace"), text)


def _normalise(text: str) -> str:
    """`scheme://authority` as yarl writes it (host lower-cased, IDNA); the rest requoted."""
    parts = _ABSOLUTE.fullmatch(text)
    if parts is None:
        raise UrlProblem("it is not an absolute URL; start it with https:// or http://")
    scheme, authority, rest = parts.groups()
    try:
        origin = URL(f"{scheme}//{authority}", encoded=False)
        written = origin.raw_authority
    except (ValueError, TypeError):
        raise UrlProblem("its host or port is not valid") from None
    return f"{scheme}//{written}{_requote(rest)}"


def check(url: str) -> URL:
    """`url` parsed as it is (nothing re-encoded or normalised), or UrlProblem: it must be an
    absolute http(s) URL with a host and a valid port, hold only characters a URL may hold,
    and have no `.` or `..` path segment (even percent-encoded)."""
    if not url:
        raise UrlProblem("it is empty")
    try:
        parsed = URL(url, encoded=True)
    except (ValueError, TypeError):
        raise UrlProblem("it cannot be parsed") from None
    if not parsed.scheme:
        raise UrlProblem("no scheme, expected http or https")
    if parsed.scheme not in SCHEMES:
        scheme = parsed.scheme
        shown = scheme if scheme.isascii() and scheme.isalnum() and len(scheme) <= 16 else "other"
        raise UrlProblem(f"scheme {shown!r}, expected http or https")
    try:
        # yarl splits the authority lazily: an out-of-range port raises here, not at send time.
        host, _ = parsed.raw_host, parsed.port
    except ValueError:
        raise UrlProblem("its host or port is not valid") from None
    if not host:
        raise UrlProblem("no host")
    if _NOT_IN_URL.search(url):
        raise UrlProblem("it holds characters that must be percent-encoded")
    if any(unquote(segment) in (".", "..") for segment in parsed.raw_path.split("/")):
        raise UrlProblem("a path segment is . or .. (perhaps percent-encoded), which is refused")
    return parsed


__all__ = [
    "AUTHORITY_PROBLEM",
    "SCHEMES",
    "TRUSTED_FILTER",
    "VALUE_FILTER",
    "UrlProblem",
    "build",
    "check",
    "mark",
    "mark_values",
    "trusted",
]
