"""The rule model at run time: frozen data compiled once at load. Pure.

router.rulefiles builds these objects from TOML; router.matching indexes and matches them; the
engine turns a match into delivery jobs, one per action. Each action type (router.actions)
subclasses Action; an action keeps the raw `spec` it was built from: a delivery job stores that
spec, so a job is delivered with the rule as it was when its event was accepted, whatever
reloads happen since.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from router.retry import RetryOverride

if TYPE_CHECKING:
    from router.conditions import Condition
    from router.templating import Template


@dataclass(frozen=True, slots=True)
class Location:
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class Match:
    """All given criteria must hold; None means "not given". Sets mean "any of"."""

    table_type: frozenset[str] | None = None
    table_id: frozenset[str] | None = None  # compared as text
    operation: frozenset[str] | None = None
    event_type: frozenset[str] | None = None
    fields: frozenset[str] | None = None  # any overlap with the record's `fields`
    condition: Condition | None = None  # JMESPath on the record, must be truthy


@dataclass(frozen=True, slots=True, kw_only=True)
class Action:
    """A compiled action (immutable; each action type subclasses it, router.actions). `spec` is
    the raw table it was compiled from: a delivery job stores it, so a job is delivered with the
    rule as it was when its event was accepted, and `parse_action` rebuilds the same Action."""

    type: str
    spec: Mapping[str, Any]
    retry: RetryOverride = field(default_factory=RetryOverride)
    timeout: float | None = None  # seconds one attempt may take; None: the deliverer's default
    # Ordering (router.ordering): jobs with the same rendered key are delivered in the order
    # their records were accepted. `on_dead`: "continue" lets later jobs go when one dies,
    # "hold" keeps them waiting until it is replayed or discarded.
    order_by: Template | None = None
    on_dead: str = "continue"
    batch: Batch | None = None  # set: one request for many records (router.batches)


@dataclass(frozen=True, slots=True)
class Batch:
    """An action's `batch` table: its jobs go out together, up to `max_records` records in one
    request, once that many are due or the first of them has waited `max_wait` seconds."""

    max_records: int
    max_wait: float


def spec_hash(spec: Mapping[str, Any]) -> str:
    """Stable identity of an action spec (what a delivery job stores)."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


ON_DEAD = ("continue", "hold")


ALERT_WHEN = ("dead", "failing", "circuit_open", "reload_refused")


@dataclass(frozen=True, slots=True)
class Alert:
    """An `[[alert]]` table (router.alerts): when `threshold` or more of `when` happen within
    `window` seconds (of `rule` or `destination` when given), its action tells someone, at
    most once per window, and again when it recovers."""

    name: str
    when: str  # one of ALERT_WHEN
    rule: str | None
    destination: str | None  # as jobs name it: host:port, "smtp", "log", ...
    threshold: int
    window: float
    action: Action
    location: Location


MODES = ("live", "shadow")  # a shadow rule matches and renders, and sends nothing


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    description: str
    enabled: bool
    match: Match
    actions: tuple[Action, ...]
    location: Location
    mode: str = "live"  # one of MODES

    @property
    def shadow(self) -> bool:
        return self.mode == "shadow"
