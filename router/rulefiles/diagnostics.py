"""A diagnostic: one problem in the rule files, located and explained for the user."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """`<file>:<line>: rule '<name>': <key path>: <message>` (rule and key are optional)."""

    file: str
    line: int
    message: str
    rule: str | None = None
    key: str | None = None
    severity: Severity = "error"

    def __str__(self) -> str:
        parts = [f"{self.file}:{self.line}"]
        if self.rule is not None:
            parts.append(f"rule '{self.rule}'")
        if self.key:
            parts.append(self.key)
        prefix = ": ".join(parts)
        tag = "warning: " if self.severity == "warning" else ""
        return f"{prefix}: {tag}{self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "rule": self.rule,
            "key": self.key,
            "severity": self.severity,
            "message": self.message,
        }
