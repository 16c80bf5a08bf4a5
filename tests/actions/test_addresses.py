"""The checks of rendered e-mail values and header values (actions.addresses, actions.headers)."""

from __future__ import annotations

from typing import Any

import pytest

from router.actions.addresses import (
    AddressProblem,
    check_email,
    entry_addresses,
    parse_address,
    split_list,
)
from router.actions.headers import header_problem

EVIL = "attacker@evil.example"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("plain text, tabs\tand ünïcode are fine", None),
        ("a\r\nBcc: x", "the value contains a line break"),
        ("a\nb", "the value contains a line break"),
        ("a\rb", "the value contains a line break"),
        ("a\u2028b", "the value contains a line break"),
        ("a\x85b", "the value contains a line break"),
        ("a\x0bb", "the value contains a line break"),  # str.splitlines splits here too
        ("a\x00b", "the value contains a control character"),
        ("a\x1bb", "the value contains a control character"),
        ("a\x7fb", "the value contains a control character"),
        ("a\x9bb", "the value contains a control character"),
    ],
)
def test_header_values(value: str, problem: str | None) -> None:
    assert header_problem(value) == problem


@pytest.mark.parametrize(
    "value",
    [
        "=?utf-8?q?a=0D=0ABcc:_x@evil.example?=",
        "=?UTF-8?B?YQ0KQmNjOiB4QGV2aWwuZXhhbXBsZQ==?=",
        "Hello =?iso-8859-1?q?Zo=EB?= there",
        "=?utf-8*en?q?a?=",
    ],
)
def test_encoded_words_are_refused_in_e_mail_headers_only(value: str) -> None:
    assert header_problem(value) is None
    problem = header_problem(value, encoded_words=True)
    assert problem is not None and problem.startswith("the value contains an encoded word")


@pytest.mark.parametrize(
    ("text", "name", "address"),
    [
        ("ops@example.com", "", "ops@example.com"),
        ("  ops@example.com ", "", "ops@example.com"),
        ("Ops Team <ops@example.com>", "Ops Team", "ops@example.com"),
        ('"Dupont, Marie" <marie@example.be>', "Dupont, Marie", "marie@example.be"),
        ("<ops@example.com>", "", "ops@example.com"),
        ("Zoë <zoë@exämple.be>", "Zoë", "zoë@exämple.be"),
        ("first.o'hara+tag@sub.example.co.uk", "", "first.o'hara+tag@sub.example.co.uk"),
        ("router@localhost", "", "router@localhost"),
    ],
)
def test_addresses_that_parse(text: str, name: str, address: str) -> None:
    parsed = parse_address(text)
    assert (parsed.display_name, parsed.addr_spec) == (name, address)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (f'"a@b.c" <{EVIL}>', "the display name contains @"),
        (f"a@b.c <{EVIL}>", "the display name contains @"),
        (f"Name <ops@example.com> <{EVIL}>", "the display name contains @"),
        (f'"Ops" "x" <{EVIL}>', "the display name contains @"),
        (f'Ops\\" <{EVIL}>', "the display name contains @"),
        ("ops", "it is not a plain e-mail address"),
        ("ops@", "it is not a plain e-mail address"),
        ("@example.com", "it is not a plain e-mail address"),
        ('"quoted local"@example.com', "it is not a plain e-mail address"),
        ("a b@example.com", "it is not a plain e-mail address"),
        ("ops@[127.0.0.1]", "it is not a plain e-mail address"),
        ("ops@example..com", "it is not a plain e-mail address"),
        (".ops@example.com", "it is not a plain e-mail address"),
        ("ops@-example.com", "it is not a plain e-mail address"),
        ("(comment) ops@example.com", "it is not a plain e-mail address"),
        ("Group: ops@example.com;", "it is not a plain e-mail address"),
        (f"ops@example.com>{EVIL}", "it is not a plain e-mail address"),
        ("x" * 65 + "@example.com", "the address is longer than e-mail allows"),
        ("x@" + "a" * 250 + ".com", "the address is longer than e-mail allows"),
    ],
)
def test_addresses_that_are_refused(text: str, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_address(text)
    assert str(caught.value).startswith(problem)
    assert EVIL not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("a@x.be, b@x.be", ["a@x.be", "b@x.be"]),
        ('"Dupont, Marie" <m@x.be>,b@x.be,', ['"Dupont, Marie" <m@x.be>', "b@x.be"]),
        (" , ,", []),
        ("", []),
    ],
)
def test_split_list(text: str, parts: list[str]) -> None:
    assert split_list(text) == parts


def test_split_list_refuses_an_unclosed_quote() -> None:
    with pytest.raises(ValueError, match="a quote is not closed"):
        split_list('"Dupont, Marie <m@x.be>, b@x.be')


def test_one_address_per_entry_unless_lists_are_allowed() -> None:
    entry = f"victim@example.com, {EVIL}"
    with pytest.raises(ValueError) as caught:
        entry_addresses(entry, lists=False)
    assert str(caught.value) == (
        "it holds 2 addresses separated by commas; "
        "set address_lists = true on the action to send to a list"
    )
    assert entry_addresses(entry, lists=True) == ["victim@example.com", EVIL]
    with pytest.raises(ValueError, match="display name"):
        entry_addresses(f'ok@example.com, "a@b.c" <{EVIL}>', lists=True)
    assert entry_addresses("  ", lists=False) == []


def rendered(**keys: Any) -> dict[str, Any]:
    return {"type": "email", "to": ["ops@example.com"], "subject": "s", "text": "t", **keys}


def test_check_email_flattens_lists_and_keeps_the_rest() -> None:
    checked = check_email(
        rendered(to=["a@x.be, b@x.be", " "], cc=["c@x.be"], bcc="d@x.be"), address_lists=True
    )
    assert checked == rendered(to=["a@x.be", "b@x.be"], cc=["c@x.be"], bcc=["d@x.be"])


@pytest.mark.parametrize(
    ("keys", "key", "problem"),
    [
        ({"to": ["ok@x.be", f"v@x.be, {EVIL}"]}, "to[1]", "it holds 2 addresses"),
        ({"cc": [f"v@x.be, {EVIL}"]}, "cc[0]", "it holds 2 addresses"),
        ({"bcc": [f'"a@b.c" <{EVIL}>']}, "bcc[0]", "the display name contains @"),
        ({"to": [f"ok@x.be\r\nBcc: {EVIL}"]}, "to[0]", "the value contains a line break"),
        ({"to": [f"=?utf-8?q?a?= <{EVIL}>"]}, "to[0]", "the value contains an encoded word"),
        ({"to": [" ", ""]}, "to", "no recipient address"),
        ({"to": []}, "to", "no recipient address"),
        ({"subject": f"=?utf-8?q?a=0D=0ABcc:_{EVIL}?="}, "subject", "the value contains an "),
        ({"subject": f"hi\nBcc: {EVIL}"}, "subject", "the value contains a line break"),
        ({"from": f"a@x.be, {EVIL}"}, "from", "it is not one e-mail address"),
        ({"from": f'"a@x.be" <{EVIL}>'}, "from", "the display name contains @"),
    ],
)
def test_check_email_names_the_key_and_never_the_value(
    keys: dict[str, Any], key: str, problem: str
) -> None:
    with pytest.raises(AddressProblem) as caught:
        check_email(rendered(**keys))
    assert (caught.value.key, caught.value.problem[: len(problem)]) == (key, problem)
    assert EVIL not in str(caught.value)


def test_opaque_entries_are_kept_unchecked() -> None:
    def opaque(value: str) -> bool:
        return "<secret " in value

    keys = rendered(to=["<secret OPS>"], cc=["<secret A>, <secret B>"], **{"from": "<secret F>"})
    assert check_email(keys, opaque=opaque)["to"] == ["<secret OPS>"]
    with pytest.raises(AddressProblem):
        check_email(keys)
