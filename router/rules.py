"""The rule model: frozen data compiled once at load (match criteria, actions, rule tests).

Nothing here does I/O. The loader builds these objects from TOML; matching and the worker read
them. An action keeps the raw `spec` it was built from: a delivery job stores that spec, so a job
is delivered with the rule as it was when its event was accepted, whatever reloads happen since.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from router.matching import Condition, Matcher
    from router.templating import Template

ActionType = Literal["http", "email", "log"]
ACTION_TYPES: tuple[ActionType, ...] = ("http", "email", "log")
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
LOG_LEVELS = ("debug", "info", "warning", "error")

# Bounds the loader enforces on numbers users write (seconds unless named otherwise).
HTTP_TIMEOUT_DEFAULT = 10.0
HTTP_TIMEOUT_RANGE = (0.1, 300.0)
RETRY_ATTEMPTS_RANGE = (1, 100)
RETRY_MAX_AGE_RANGE = (1.0, 30 * 86400.0)


@dataclass(frozen=True, slots=True)
class Location:
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class RetryOverride:
    """Per-action override of the retry settings; None keeps the global setting."""

    max_attempts: int | None = None
    max_age: float | None = None


@dataclass(frozen=True, slots=True)
class Match:
    """All given criteria must hold; None means "not given". Sets mean "any of"."""

    table_type: frozenset[str] | None = None
    table_id: frozenset[str] | None = None  # compared as text
    operation: frozenset[str] | None = None
    event_type: frozenset[str] | None = None
    fields: frozenset[str] | None = None  # any overlap with the record's `fields`
    condition: Condition | None = None  # JMESPath on the record, must be truthy


@dataclass(frozen=True, slots=True)
class HttpAction:
    spec: Mapping[str, Any]
    method: str
    url: Template
    headers: tuple[tuple[str, Template], ...]
    body: Template | None  # None: send the record's `data` as JSON
    timeout: float
    retry: RetryOverride
    type: ActionType = "http"


@dataclass(frozen=True, slots=True)
class EmailAction:
    spec: Mapping[str, Any]
    to: tuple[Template, ...]
    subject: Template
    text: Template | None
    html: Template | None
    retry: RetryOverride
    cc: tuple[Template, ...] = ()
    bcc: tuple[Template, ...] = ()  # envelope recipients only: never in the headers
    address_lists: bool = False  # an entry may render several comma-separated addresses
    type: ActionType = "email"


@dataclass(frozen=True, slots=True)
class LogAction:
    spec: Mapping[str, Any]
    level: str
    message: Template
    retry: RetryOverride
    type: ActionType = "log"


Action = HttpAction | EmailAction | LogAction


def spec_hash(spec: Mapping[str, Any]) -> str:
    """Stable identity of an action spec (what a delivery job stores)."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    description: str
    enabled: bool
    match: Match
    actions: tuple[Action, ...]
    location: Location


@dataclass(frozen=True, slots=True)
class ExpectedAction:
    """Rendered values one action of one rule must have for one record of a rule test."""

    rule: str
    action: int  # index among the rule's actions
    record: int  # index among the test event's records
    values: Mapping[str, Any]  # rendered key -> expected value (`body_json`: compare parsed)
    location: Location


@dataclass(frozen=True, slots=True)
class RuleTest:
    name: str
    location: Location
    event: Any  # the decoded event body (inline, or read from the JSON file at load)
    expect: frozenset[str] | None  # exact set of rules matching every record
    expect_per_record: tuple[frozenset[str], ...] | None  # or one set per record
    actions: tuple[ExpectedAction, ...]


@dataclass(frozen=True, slots=True)
class RuleSet:
    """A validated, compiled set of rules. Immutable: a reload builds a new one and swaps it."""

    rules: tuple[Rule, ...]  # enabled and disabled, in file-name then file order
    tests: tuple[RuleTest, ...]
    version: str  # content hash of the files it was built from
    secrets: frozenset[str]  # names referenced as secrets.NAME by any template
    matcher: Matcher = field(repr=False, compare=False)

    @property
    def enabled(self) -> tuple[Rule, ...]:
        return tuple(rule for rule in self.rules if rule.enabled)

    def rule(self, name: str) -> Rule | None:
        return next((rule for rule in self.rules if rule.name == name), None)
