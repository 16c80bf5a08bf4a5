"""The checks an e-mail passes before it is sent: plain addresses, one per recipient entry,
and header values that cannot turn into more headers.

Python's e-mail package is lenient, which event data could exploit: it reads `"a@b.c"
<x@evil.example>` as x@evil.example behind a display name that looks like a@b.c, takes a
comma-separated header for several recipients, and decodes encoded words after any check of
the raw text. So a rendered recipient is parsed here, strictly: `local@domain`, or `Name
<local@domain>` (the name unquoted or in plain double quotes), with nothing in the name that
could pass for an address. An entry is one address, unless the action sets `address_lists`;
then it may hold several, separated by commas, each checked as one.

Both the e-mail action's rendering (so `router test` shows what a delivery would meet) and its
deliverer (which builds the envelope from the parsed addresses) run these checks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from email.headerregistry import Address
from typing import Any

from router.actions.headers import header_problem

RECIPIENT_KEYS = ("to", "cc", "bcc")
MAX_LOCAL_LENGTH = 64  # characters, RFC 5321
MAX_ADDRESS_LENGTH = 254  # characters, RFC 5321 (a path of 256 less the angle brackets)

# RFC 5322 atext, plus any non-ASCII character that is not a space (SMTPUTF8 addresses).
_ATOM = r"(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]|[^\x00-\x7f\s])+"
_LABEL = r"(?:[^\W_]|[^\W_][\w-]*[^\W_])"  # letters and digits of any script, inner hyphens
_ADDRESS = re.compile(rf"(?P<local>{_ATOM}(?:\.{_ATOM})*)@(?P<domain>{_LABEL}(?:\.{_LABEL})*)")
_NAME_REFUSED = frozenset('@<>"\\')

FORMAT_HINT = "write local@domain, or Name <local@domain>"


class AddressProblem(ValueError):
    """A rendered e-mail value cannot be sent; `key` names it (`to[0]`, `subject`)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def parse_address(text: str) -> Address:
    """One address, `local@domain` or `Name <local@domain>`; ValueError saying what is wrong
    (never repeating `text`)."""
    text = text.strip()
    if text.endswith(">") and "<" in text:
        start = text.rindex("<")
        name, address = text[:start].strip(), text[start + 1 : -1]
        if len(name) >= 2 and name[0] == name[-1] == '"':
            name = name[1:-1]
        if _NAME_REFUSED.intersection(name):
            raise ValueError(
                "the display name contains @, <, >, a quote or a backslash; "
                "an address is given once, in <...>"
            )
    else:
        name, address = "", text
    found = _ADDRESS.fullmatch(address)
    if found is None:
        raise ValueError(f"it is not a plain e-mail address; {FORMAT_HINT}")
    if len(found["local"]) > MAX_LOCAL_LENGTH or len(address) > MAX_ADDRESS_LENGTH:
        raise ValueError("the address is longer than e-mail allows")
    return Address(display_name=name, username=found["local"], domain=found["domain"])


def split_list(text: str) -> list[str]:
    """The comma-separated parts of `text` (commas inside double quotes do not separate),
    stripped, empty ones left out; ValueError for an unclosed quote."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if quoted:
        raise ValueError("a quote is not closed")
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


def entry_addresses(text: str, *, lists: bool) -> list[str]:
    """The addresses one rendered recipient entry holds, each checked (an empty entry holds
    none); ValueError saying what is wrong. Without `lists`, at most one."""
    problem = header_problem(text, encoded_words=True)
    if problem is not None:
        raise ValueError(problem)
    parts = split_list(text)
    if len(parts) > 1 and not lists:
        raise ValueError(
            f"it holds {len(parts)} addresses separated by commas; "
            "set address_lists = true on the action to send to a list"
        )
    for part in parts:
        parse_address(part)
    return parts


def check_email(
    rendered: Mapping[str, Any],
    *,
    address_lists: bool = False,
    opaque: Callable[[str], bool] | None = None,
) -> dict[str, Any]:
    """`rendered` (an e-mail action's rendered keys) with every recipient entry checked and
    split into one address per entry; raises AddressProblem naming the key.

    `to`, `cc` and `bcc` are lists of rendered entries (`to` may be one string). Empty
    entries are dropped; `to` must keep at least one address. `subject`, and `from` when
    present, are checked as header values. An entry for which `opaque` is true (a dry run's
    secret placeholder, whose real value is unknown) is kept unchecked.
    """
    checked = dict(rendered)
    for key in RECIPIENT_KEYS:
        entries = rendered.get(key)
        if entries is None:
            continue
        entries = [entries] if isinstance(entries, str) else entries
        addresses: list[str] = []
        for index, entry in enumerate(str(entry) for entry in entries):
            where = f"{key}[{index}]"
            if opaque is not None and opaque(entry):
                addresses.append(entry)
                continue
            try:
                addresses += entry_addresses(entry, lists=address_lists)
            except ValueError as exc:
                raise AddressProblem(where, str(exc)) from None
        checked[key] = addresses
    if not checked.get("to"):
        raise AddressProblem("to", "no recipient address; every entry rendered empty")
    subject = rendered.get("subject")
    problem = header_problem(str(subject or ""), encoded_words=True)
    if problem is not None:
        raise AddressProblem("subject", problem)
    sender = rendered.get("from")
    if sender is not None and not (opaque is not None and opaque(str(sender))):
        try:
            one_address(str(sender))
        except ValueError as exc:
            raise AddressProblem("from", str(exc)) from None
    return checked


def one_address(text: str) -> Address:
    """`text` as exactly one checked address (a sender); ValueError saying what is wrong."""
    problem = header_problem(text, encoded_words=True)
    if problem is not None:
        raise ValueError(problem)
    if len(split_list(text)) != 1:
        raise ValueError(f"it is not one e-mail address; {FORMAT_HINT}")
    return parse_address(text)


__all__ = [
    "RECIPIENT_KEYS",
    "AddressProblem",
    "check_email",
    "entry_addresses",
    "one_address",
    "parse_address",
    "split_list",
]
