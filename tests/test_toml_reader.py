"""Rule files are decoded by tomli (compiled), which must read TOML exactly as the standard
library's tomllib does: the same documents, the same errors, and none of TOML 1.1."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli

from router.rulefiles import load


def outcome(module: Any, text: str) -> tuple[str, str]:
    try:
        return "value", repr(module.loads(text))
    except (tomli.TOMLDecodeError, tomllib.TOMLDecodeError) as exc:
        return "error", str(exc)


TOML_1_1 = [
    "a = {b = 1,}",  # a trailing comma in an inline table
    "a = {\nb = 1\n}",  # newlines in an inline table
    's = "\\e"',  # the escape character
    's = "\\x41"',  # a byte escape
    "t = 12:30",  # a time without seconds
]
BROKEN = [
    "a = 1\na = 2",
    "x = [1,,]",
    'a = "unterminated',
    "[[rule]]\nname = rule-1",
    "a.b = 1\n[a]\n",
    "a = 1979-13-01",
    'a = "\x01"',
]


@pytest.mark.parametrize("text", TOML_1_1 + BROKEN)
def test_tomli_reads_as_tomllib_does(text: str) -> None:
    assert outcome(tomli, text) == outcome(tomllib, text)
    assert outcome(tomli, text)[0] == "error"


@pytest.mark.parametrize("text", TOML_1_1)
def test_toml_1_1_in_a_rule_file_is_a_syntax_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "r.toml").write_text(text + "\n")
    result = load(tmp_path)
    assert result.ruleset is None
    assert any("invalid TOML" in d.message for d in result.diagnostics)
