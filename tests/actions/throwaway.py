"""A throwaway action type, defined here and nowhere in the router: `note` appends one rendered
line to a file. It proves that an action type is one module registered in the registry: the
rule files, `router check`, `router test` and a real `router serve` all take it as it is.

`python -m tests.actions.throwaway serve` runs the router with the type registered (what a
deployment's own entry point would do)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from router.actions.base import ActionType, Deliverer, Key
from router.actions.registry import register
from router.checks import Checker, KeyPath
from router.exceptions import GiveUp
from router.retry import RetryOverride
from router.rules import Action
from router.settings import Settings
from router.templating import Template


@dataclass(frozen=True, slots=True, kw_only=True)
class NoteAction(Action):
    type: str = "note"
    file: str
    line: Template


class NoteDeliverer(Deliverer):
    type = "note"

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls()

    async def deliver(
        self, rendered: Mapping[str, Any], *, job_id: str, timeout: float | None
    ) -> int | None:
        try:
            with open(rendered["file"], "a", encoding="utf-8") as notes:
                notes.write(f"{rendered['line']}\n")
        except OSError as exc:
            raise GiveUp(f"cannot write the note: {exc.strerror}") from None
        return None


class NoteType(ActionType):
    name = "note"
    summary = "Append a line to a file."
    keys = (
        Key("file", "string", "The file to append to.", required=True),
        Key("line", "template", "The line to write.", required=True, template=True),
    )
    rendered = ("file", "line")
    deliverer = NoteDeliverer

    def compile(
        self, checker: Checker, path: KeyPath, raw: dict[str, Any], retry: RetryOverride
    ) -> Action | None:
        file = checker.text((*path, "file"), checker.require(raw, "file", path, "name a file"))
        line = checker.template(
            (*path, "line"), checker.require(raw, "line", path, "give the line")
        )
        if file is None or line is None:
            return None
        return NoteAction(spec=raw, file=file, line=line, retry=retry)

    def render(self, action: NoteAction, context: Mapping[str, Any]) -> dict[str, Any]:
        return {"type": "note", "file": action.file, "line": action.line.render(context)}

    def destination(self, action: NoteAction) -> str:
        return f"note:{Path(action.file).name}"


def register_note() -> None:
    register(NoteType())


if __name__ == "__main__":
    register_note()
    from router.cli import main

    sys.exit(main(sys.argv[1:]))
