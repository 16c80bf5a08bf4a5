"""Checking the values of a table and saying what is wrong: the vocabulary that the rule files
and the action types share.

A Checker reports each problem at a key path and goes on, so one pass finds every mistake. What
a problem becomes is the subclass's business: a diagnostic with file and line in a rule file
(router.rulefiles), or one sentence of a ValueError for a spec a delivery job stored
(router.actions.parse_action). Nothing here does I/O.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any, Literal

from router.templating import Template, TemplateProblem, compile_template

KeyPath = tuple[str | int, ...]
Severity = Literal["error", "warning"]

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class Checker:
    """Reports problems at key paths; `errors` counts those of severity error. Subclasses
    decide where a problem goes (`report`) and may watch each compiled template (`compiled`)."""

    def __init__(self) -> None:
        self.errors = 0

    def report(
        self, path: KeyPath, message: str, *, severity: Severity = "error", line: int = 0
    ) -> None:
        """Record one problem; `line` overrides the line of `path` where the caller knows
        better (a line inside a multi-line template)."""
        self.errors += severity == "error"

    def template_line(self, path: KeyPath, lineno: int) -> int:
        """The line of line `lineno` of the template at `path` (0: the key's own line)."""
        return 0

    def compiled(self, path: KeyPath, template: Template) -> None:
        """Called for every template compiled without error (e.g. to note its secrets)."""

    # -- the checks

    def table(self, path: KeyPath, value: Any, keys: Collection[str]) -> dict[str, Any] | None:
        """`value` as a table whose unknown keys are reported; None if it is no table."""
        if not isinstance(value, dict):
            self.report(path, f"must be a table, not {kind_of(value)}")
            return None
        for key in value:
            if key not in keys:
                self.report((*path, key), self.unknown_key(key, keys))
        return value

    def unknown_key(self, key: str, known: Collection[str]) -> str:
        close = closest(key, known)
        if close:
            return f"unknown key; did you mean '{close}'?"
        return f"unknown key; use one of {', '.join(known)}"

    def require(self, table: Mapping[str, Any], key: str, path: KeyPath, why: str) -> Any:
        if key not in table:
            self.report((*path, key), f"is missing; {why}")
        return table.get(key)

    def text(self, path: KeyPath, value: Any) -> str | None:
        if value is None or isinstance(value, str):
            return value
        self.report(path, f"must be a string, not {kind_of(value)}")
        return None

    def texts(self, path: KeyPath, value: Any, *, numbers: bool = False) -> list[str] | None:
        """A string or a list of them (integers too with `numbers`, as text); None if absent
        or wrong. An empty list is the caller's to judge."""
        if value is None:
            return None
        items, ok = (value, True) if isinstance(value, list) else ([value], False)
        what = "a string or an integer" if numbers else "a string"
        texts: list[str] = []
        for index, item in enumerate(items):
            if isinstance(item, str):
                texts.append(item)
            elif numbers and isinstance(item, int) and not isinstance(item, bool):
                texts.append(str(item))
            elif ok:
                self.report((*path, index), f"must be {what}, not {kind_of(item)}")
            else:
                plural = "strings or integers" if numbers else "strings"
                self.report(path, f"must be {what} or a list of {plural}, not {kind_of(item)}")
        return texts if len(texts) == len(items) else None

    def boolean(self, path: KeyPath, value: Any, default: bool) -> bool | None:
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        self.report(path, f"must be true or false, not {kind_of(value)}")
        return None

    def number(
        self, path: KeyPath, value: Any, bounds: tuple[float, float], *, integer: bool = False
    ) -> float | None:
        what = "an integer" if integer else "a number"
        if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
            self.report(path, f"must be {what}, not {kind_of(value)}")
            return None
        low, high = bounds
        if not low <= value <= high:
            self.report(path, f"{value} is out of range; use {what} from {low:g} to {high:g}")
            return None
        return value

    def duration(self, path: KeyPath, value: Any, bounds: tuple[float, float]) -> float | None:
        """A duration written `"2s"`, `"500ms"`, `"15m"`, `"1h"` or `"1d"` (or a number of
        seconds), within `bounds` seconds."""
        if isinstance(value, str):
            found = _DURATION.match(value.strip().lower())
            if found is None:
                self.report(path, f"'{value}' is not a duration; write one such as 2s, 15m or 1h")
                return None
            seconds = float(found[1]) * _UNIT_SECONDS[found[2]]
        elif isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        else:
            self.report(path, f'must be a duration such as "2s" or "15m", not {kind_of(value)}')
            return None
        low, high = bounds
        if not low <= seconds <= high:
            self.report(path, f"{value} is out of range; use {low:g} s to {high:g} s")
            return None
        return seconds

    def choice(self, path: KeyPath, value: str, known: Collection[str], what: str) -> None:
        close = closest(value, known)
        hint = f"; did you mean '{close}'?" if close else ""
        self.report(path, f"'{value}' is not a known {what}{hint} (known: {', '.join(known)})")

    def template(
        self,
        path: KeyPath,
        value: Any,
        *,
        compiler: Callable[[str], Template] = compile_template,
    ) -> Template | None:
        source = self.text(path, value)
        if source is None:
            return None
        try:
            compiled = compiler(source)
        except TemplateProblem as problem:
            line = self.template_line(path, problem.lineno)
            self.report(path, f"template: {problem.message}", line=line)
            return None
        self.compiled(path, compiled)
        return compiled

    def literal(
        self, path: KeyPath, template: Template | None, problem_of: Callable[[str], str | None]
    ) -> None:
        """Run a render-time check at load on a template that is plain text (no `{`), whose
        value is known now: the mistake is the rule's, and `router check` can say so."""
        if template is None or "{" in template.source:
            return
        problem = problem_of(template.source)
        if problem is not None:
            self.report(path, problem)


class Problems(Checker):
    """Collects problems as `key: message` lines (for specs, where there is no file)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def report(
        self, path: KeyPath, message: str, *, severity: Severity = "error", line: int = 0
    ) -> None:
        super().report(path, message, severity=severity, line=line)
        if severity == "error":
            self.lines.append(f"{key_text(path) or 'action'}: {message}")


def key_text(path: KeyPath) -> str:
    """`("action", 0, "url")` -> `action[0].url`."""
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
    return key[1:] if key.startswith(".") else key


def kind_of(value: Any) -> str:
    kinds: tuple[tuple[type, str], ...] = (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (dict, "a table"),
        (list, "an array"),
    )
    return next((name for cls, name in kinds if isinstance(value, cls)), "a date or time")


def closest(word: str, known: Collection[str]) -> str | None:
    folded = {name.lower(): name for name in known}
    close = difflib.get_close_matches(word.lower(), list(folded), n=1, cutoff=0.6)
    return folded[close[0]] if close else None
