"""The schema of a rule file's own tables (a rule's match; the rule table itself is read in
router.rulefiles.loader), and `Context`: the Checker that turns problems into diagnostics with
file, line, rule and key path. Action tables are their type's to check (router.actions).

Every check reports and goes on, so one pass finds every mistake; a part with an error compiles
to None.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from router.checks import Checker, KeyPath, Severity, key_text
from router.conditions import Condition, ConditionProblem, compile_condition, condition_warnings
from router.events import EVENT_TYPES, OPERATIONS, TABLE_TYPES
from router.rulefiles.diagnostics import Diagnostic
from router.rulefiles.positions import Positions
from router.rules import Match
from router.settings import SECRET_PREFIX
from router.templating import Template

UnsetSecrets = Literal["ignore", "warn", "error"]

_MATCH_SETS = (("tableType", TABLE_TYPES), ("operation", OPERATIONS), ("eventType", EVENT_TYPES))
MATCH_KEYS = ("tableType", "tableId", "operation", "eventType", "fields", "condition")


@dataclass(eq=False)
class Context(Checker):
    """Where checks of one file report to, and which rule (if any) they are inside."""

    file: str
    positions: Positions
    out: list[Diagnostic]
    secrets: frozenset[str] | None = None  # set secrets; None: do not check
    unset: UnsetSecrets = "ignore"
    used_secrets: set[str] = field(default_factory=set)
    rule: str | None = None
    hidden: int = 0  # leading key-path parts left out of messages (the `rule, i` of a named rule)
    errors: int = 0

    def report(
        self, path: KeyPath, message: str, *, severity: Severity = "error", line: int = 0
    ) -> None:
        super().report(path, message, severity=severity, line=line)
        self.out.append(
            Diagnostic(
                self.file,
                line or self.positions.line(path),
                message,
                self.rule,
                key_text(path[self.hidden :]) or None,
                severity,
            )
        )

    def template_line(self, path: KeyPath, lineno: int) -> int:
        return self.positions.template_line(path, lineno)

    def compiled(self, path: KeyPath, template: Template) -> None:
        self.used_secrets |= template.secrets
        if self.secrets is not None and self.unset != "ignore":
            severity: Severity = "error" if self.unset == "error" else "warning"
            for name in sorted(template.secrets - self.secrets):
                message = f"secrets.{name} is not set; set the environment variable "
                self.report(path, f"{message}{SECRET_PREFIX}{name}", severity=severity)


def compile_match(context: Context, path: KeyPath, value: Any) -> Match | None:
    if value is None:
        return Match()
    table = context.table(path, value, MATCH_KEYS)
    if table is None:
        return None
    given: dict[str, list[str] | None] = {}
    for key in ("tableType", "tableId", "operation", "eventType", "fields"):
        given[key] = context.texts((*path, key), table.get(key), numbers=key == "tableId")
        if given[key] == []:
            context.report((*path, key), "is an empty list; remove the key to accept any value")
    for key, known in _MATCH_SETS:
        for index, name in enumerate(given[key] or ()):
            if name not in known:
                at = (*path, key, index) if isinstance(table[key], list) else (*path, key)
                context.choice(at, name, known, re.sub("([A-Z])", r" \1", key).lower())
    sets = {key: frozenset(values) if values else None for key, values in given.items()}
    condition: Condition | None = None
    source = context.text((*path, "condition"), table.get("condition"))
    if source is not None:
        try:
            condition = compile_condition(source)
        except ConditionProblem as problem:
            context.report((*path, "condition"), f"JMESPath: {problem.message}")
        for warning in condition_warnings(source):
            context.report((*path, "condition"), warning, severity="warning")
    return Match(
        table_type=sets["tableType"],
        table_id=sets["tableId"],
        operation=sets["operation"],
        event_type=sets["eventType"],
        fields=sets["fields"],
        condition=condition,
    )
