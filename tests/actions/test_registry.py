"""One registry of action types: a type defined outside the router (tests/actions/throwaway.py)
goes through `router check`, `router test` and a real `router serve` delivery, and every part
of the router reads the types from the registry."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.actions.registry import REGISTRY, compile_action, keys_of, parse_action
from router.checks import Problems
from router.cli import main
from tests.actions.throwaway import NoteAction, register_note
from tests.e2e.harness import RouterProcess, poll

ROOT = Path(__file__).resolve().parents[2]
EVENT = {"id": "note-1", "tableType": "PROFILE_TABLE", "data": {"profileId": 7}}


def rule_file(notes: Path, extra: str = "") -> str:
    return f"""
[[rule]]
name = "take-note"
[[rule.action]]
type = "note"
file = "{notes}"
line = "profile {{{{ data.profileId }}}} by {{{{ rule.name }}}}"
{extra}

[[test]]
name = "a note per profile"
event = {{ id = "note-1", tableType = "PROFILE_TABLE", data = {{ profileId = 7 }} }}
expect = ["take-note"]

[[test.action]]
rule = "take-note"
line = "profile 7 by take-note"
"""


@pytest.fixture
def note_type() -> Iterator[None]:
    register_note()
    yield
    del REGISTRY["note"]


def test_the_built_in_types_are_registered() -> None:
    assert list(REGISTRY) == ["http", "email", "log", "actito"]
    for name, action_type in REGISTRY.items():
        assert action_type.name == name
        assert {key.name for key in keys_of(name)} >= {"type", "retry"}


def test_an_unknown_type_is_refused_until_it_is_registered(tmp_path: Path) -> None:
    spec = {"type": "note", "file": str(tmp_path / "n"), "line": "x"}
    with pytest.raises(ValueError, match="'note' is not a known action type"):
        parse_action(spec)
    register_note()
    try:
        assert isinstance(parse_action(spec), NoteAction)
        problems = Problems()
        assert compile_action(problems, (), {**spec, "colour": "red"}) is None
        known = "type, retry, enrich, order_by, on_dead, file, line"
        assert problems.lines == [f"colour: unknown key; use one of {known}"]
    finally:
        del REGISTRY["note"]


def test_check_and_test_take_a_registered_type(
    tmp_path: Path, note_type: None, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "notes.toml").write_text(rule_file(tmp_path / "notes.txt"))
    assert main(["check", str(rules)]) == 0
    assert main(["test", str(rules)]) == 0
    assert "1 passed, 0 failed" in capsys.readouterr().out

    event = tmp_path / "event.json"
    event.write_text(json.dumps(EVENT))
    assert main(["test", "--format", "json", str(rules), str(event)]) == 0
    (record,) = json.loads(capsys.readouterr().out)["records"]
    assert record["actions"] == [
        {
            "rule": "take-note",
            "action": 0,
            "type": "note",
            "file": str(tmp_path / "notes.txt"),
            "line": "profile 7 by take-note",
        }
    ]
    assert main(["test", str(rules), str(event)]) == 0
    assert "-> take-note action 0: note" in capsys.readouterr().out

    (rules / "notes.toml").write_text(rule_file(tmp_path / "notes.txt", 'colour = "red"'))
    assert main(["check", str(rules)]) == 1
    known = "type, retry, enrich, order_by, on_dead, file, line"
    assert f"action[0].colour: unknown key; use one of {known}" in (capsys.readouterr().out)


def test_serve_delivers_a_registered_type(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "notes.toml").write_text(rule_file(notes))
    router = RouterProcess(
        tmp_path,
        rules,
        module="tests.actions.throwaway",
        env={"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
    )
    router.start()
    try:
        assert router.push(EVENT).status_code == 202
        poll(lambda: notes.exists() and notes.read_text() == "profile 7 by take-note\n")
        listed = router.cli("deliveries", "list", "--format", "json")
        # `router deliveries` itself knows nothing of notes: the job is stored data.
        (job,) = json.loads(listed.stdout)
        assert (job["action_type"], job["destination"], job["status"]) == (
            "note",
            "note:notes.txt",
            "done",
        )
    finally:
        router.stop()
