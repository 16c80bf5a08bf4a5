"""Files decoded in pieces decode to the whole text's document, with the same errors and the
same header lines as tree-sitter finds; a paced load (the reloader's) gives what an unpaced one
gives, and lets the pace run often."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import tomli

from router.reload import Pacer
from router.rulefiles import load
from router.rulefiles.decoding import decode
from router.rulefiles.positions import positions
from tests.bench.load import rule_text

ROOT = Path(__file__).resolve().parents[1]


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def outcome(text: str, pace: Any) -> tuple[str, Any]:
    try:
        if pace is None:
            return "value", tomli.loads(text)
        return "value", decode(text, pace).document
    except tomli.TOMLDecodeError as exc:
        return "error", str(exc)


RULE = rule_text(1)
TEXTS = [
    RULE * 3,
    "# a comment\ntitle = 'x'\n" + RULE + "[[destination]]\nkey = 'crm'\n" + RULE,
    RULE + '[[test]]\nrule = "rule-1"\nevent = { id = "1" }\n[test.expect]\nmatched = true\n',
    RULE + "[[rule.action]]\ntype = 'log'\nmessage = '''\n[[rule]]\nname = \"not a rule\"\n'''\n",
    '[[ "rule" ]]\nname = "quoted"\n[ rule . match ]\ntableType = "PROFILE_TABLE"\n' + RULE,
    "rule = 1\n" + RULE,  # a root key and an array of the same name: the whole text's error
    RULE + "[rule]\nname = 'x'\n",
    "[[a]]\nx = 1\n[[b]]\ny = 2\n[a.c]\nz = 3\n",  # a table of an earlier array's element
    "[table]\nx = 1\n" + RULE,
    RULE + RULE.replace('name = "rule-1"', 'name = "rule-1"\nname = "again"'),
    RULE + RULE.replace("[rule.match]", "[rule.match]\n[rule.match]"),
    RULE + "[[rule]]\nname = 'unterminated\n" + RULE,
    RULE + "[[rule]]\nname = 'x' trailing\n",
    RULE.replace("[[rule]]", "[[rule]]  # first\r") + "\t[[ rule ]]\nname = 'b'\n",
    RULE + "[[rule.action]]\ntype = 'log'\nmessage = [\n[['rule']],\n]\n" + RULE,
    RULE + "[[ 'rule' ]]\nname = 'quoted, not cut'\n" + RULE,
    "[[rule]]\n[[rule.action]]\nurl = {a = 1,}\n",
    "",
    "# only a comment\n",
]


@pytest.mark.parametrize("text", TEXTS)
def test_decoding_in_pieces_gives_the_whole_texts_document_or_error(text: str) -> None:
    assert outcome(text, Counter()) == outcome(text, None)
    if outcome(text, None)[0] == "value":
        headers = decode(text).headers
        assert headers is None or headers == positions(text)._read_headers()


def test_a_file_of_rules_is_decoded_in_pieces_with_the_pace_between() -> None:
    text = "# rules\n" + RULE * 50
    pace = Counter()
    decoded = decode(text, pace)
    assert decoded.document == tomli.loads(text)
    assert pace.calls >= 50
    assert decoded.headers == positions(text)._read_headers()
    assert decoded.headers is not None and decoded.headers[("rule", 1)] == 2 + RULE.count("\n")


def everything(directory: Path, pace: Any) -> Any:
    result = load(directory, pace=pace)
    rules = result.ruleset.rules if result.ruleset else ()
    return (
        [str(d) for d in result.diagnostics],
        result.ruleset.version if result.ruleset else None,
        [(r.name, r.location, [a.spec for a in r.actions]) for r in rules],
        result.tests,
    )


def test_the_examples_load_the_same_paced(tmp_path: Path) -> None:
    directory = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", directory)
    (directory / "zz-bench.toml").write_text("".join(rule_text(n) for n in range(300)))
    pace = Counter()
    assert everything(directory, pace) == everything(directory, None)
    assert pace.calls >= 300


def test_mistakes_are_reported_the_same_paced(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(RULE + "[[rule]]\nname = 'x'\n[rule.match]\nbad = 1\n")
    (tmp_path / "b.toml").write_text(RULE + "[[rule]]\nname = 'unterminated\n")
    (tmp_path / "c.toml").write_text("rule = 1\n" + RULE)
    paced = everything(tmp_path, Counter())
    assert paced == everything(tmp_path, None)
    assert len(paced[0]) >= 3


def test_the_reloaders_pacer_lets_others_run_during_a_load(tmp_path: Path) -> None:
    (tmp_path / "r.toml").write_text("".join(rule_text(n) for n in range(200)))
    pacer = Pacer(every=0.0)
    assert load(tmp_path, pace=pacer).ruleset is not None
    assert pacer.turns >= 200
