"""The engine: the destination key per-destination concurrency groups by, and `accept` on a
real SQLite store (records -> one job per matching rule and action, in one transaction, with
one rule set per push, duplicates counted and not routed again)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from router.actions.registry import destination_of
from router.engine import Engine
from router.matching import RuleSet
from router.metrics import Metrics
from router.rulefiles.loader import load_rules
from router.rules import spec_hash
from router.store import open_store
from router.store.base import JobDetail, Record, Store


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ('type = "http"\nurl = "https://crm.example.com/c/{{ data.id }}"', "crm.example.com:443"),
        (
            'type = "http"\nurl = "http://Shop.Example.com:8080/x?t={{ secrets.T }}"',
            "shop.example.com:8080",
        ),
        ('type = "http"\nurl = "http://user:pw@127.0.0.1:9/"', "127.0.0.1:9"),
        ('type = "http"\nurl = "https://{{ secrets.HOST }}/x"', None),  # computed: per action
        ('type = "http"\nurl = "{{ secrets.CHAT_WEBHOOK_URL }}"', None),
        ('type = "email"\nto = "a@example.com"\nsubject = "s"\ntext = "t"', "smtp"),
        ('type = "log"\nmessage = "m"', "log"),
    ],
)
def test_destination_key(tmp_path: Path, action: str, expected: str | None) -> None:
    (tmp_path / "r.toml").write_text(f'[[rule]]\nname = "r"\n[[rule.action]]\n{action}\n')
    (loaded,) = load_rules(tmp_path).rules[0].actions
    key = destination_of(loaded)
    assert key == (expected or f"http:{spec_hash(loaded.spec)[:12]}")


# ---------------------------------------------------------------- Engine.accept on a real store

DAY = 86400.0  # seconds
T0 = 1_700_000_000.0  # the engine's injected clock
RULES = """
[[rule]]
name = "crm"
[rule.match]
tableType = "PROFILE_TABLE"
[[rule.action]]
type = "http"
method = "PUT"
url = "https://CRM.example.com/contacts/{{ data.profileId }}"
[[rule.action]]
type = "log"
message = "profile {{ data.profileId }}"

[[rule]]
name = "welcome"
[rule.match]
operation = "CREATE"
condition = "data.email != `null`"
[[rule.action]]
type = "email"
to = "team@example.com"
subject = "welcome"
text = "{{ data.email }}"

[[rule]]
name = "off"
enabled = false
[[rule.action]]
type = "log"
message = "never"
"""


def record(event_id: str | None, data: dict[str, Any], **keys: Any) -> Record:
    """A normalised record, as the intake hands it to the engine."""
    standard = dict.fromkeys(("tableType", "tableId", "eventType", "triggerType", "operation"))
    return {"id": event_id, **standard, "fields": [], **keys, "data": data}


PROFILE_CREATE = record(
    "p-create",
    {"profileId": 1, "email": "a@example.com"},
    tableType="PROFILE_TABLE",
    operation="CREATE",
)
CUSTOM_UPDATE = record("c-update", {"orderId": 9}, tableType="CUSTOM_TABLE", operation="UPDATE")
PROFILE_UPDATE = record("p-update", {"profileId": 2}, tableType="PROFILE_TABLE", operation="UPDATE")
NO_EMAIL = record("p-no-email", {"profileId": 3}, tableType="PROFILE_TABLE", operation="CREATE")
PUSH = [PROFILE_CREATE, CUSTOM_UPDATE, PROFILE_UPDATE, NO_EMAIL]


def rule_set(tmp_path: Path, text: str, name: str = "rules") -> RuleSet:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "rules.toml").write_text(text)
    return load_rules(folder)


@dataclass
class Accepting:
    """An engine on an open SQLite store in tmp_path; `rows` reads the file beside it."""

    engine: Engine
    path: Path

    @property
    def store(self) -> Store:
        return self.engine.store

    def count(self, name: str, **labels: str) -> float:
        return self.engine.metrics.registry.get_sample_value(f"{name}_total", labels) or 0.0

    def rows(self, query: str) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(self.path)) as conn:
            return conn.execute(query).fetchall()

    async def jobs(self) -> list[JobDetail]:
        details = [
            await self.store.get_job(job.id) for job in await self.store.list_jobs(limit=1000)
        ]
        return [detail for detail in details if detail is not None]


def accepting(
    tmp_path: Path,
    ruleset: RuleSet,
    scenario: Callable[[Accepting], Awaitable[None]],
    *,
    window: float = DAY,
    clock: Callable[[], float] = lambda: T0,
) -> None:
    path = tmp_path / "router.db"

    async def main() -> None:
        store = open_store(f"sqlite:///{path}")
        await store.open()
        try:
            engine = Engine(store, ruleset, dedupe_window=window, metrics=Metrics(), clock=clock)
            await scenario(Accepting(engine, path))
        finally:
            await store.close()

    asyncio.run(main())


def test_one_job_per_matching_rule_and_action(tmp_path: Path) -> None:
    ruleset = rule_set(tmp_path, RULES)
    actions = {
        (rule.name, i): action for rule in ruleset.rules for i, action in enumerate(rule.actions)
    }

    async def scenario(it: Accepting) -> None:
        result = await it.engine.accept(PUSH)
        assert (result.accepted, result.duplicates, result.repeated) == (4, 0, frozenset())
        jobs = await it.jobs()
        found = sorted(
            (job.summary.event_id, job.summary.rule, job.summary.action_index) for job in jobs
        )
        assert found == [
            ("p-create", "crm", 0),
            ("p-create", "crm", 1),
            ("p-create", "welcome", 0),
            ("p-no-email", "crm", 0),  # the condition keeps welcome out
            ("p-no-email", "crm", 1),
            ("p-update", "crm", 0),
            ("p-update", "crm", 1),
        ]
        records = {r["id"]: r for r in PUSH}
        for job in jobs:
            summary = job.summary
            action = actions[(summary.rule, summary.action_index)]
            assert summary.action_type == action.type
            assert job.spec == action.spec  # delivered later with the rule as it is now
            assert (
                summary.destination
                == {"http": "crm.example.com:443", "log": "log", "email": "smtp"}[action.type]
            )
            assert job.record == records[summary.event_id]
            assert summary.ruleset_version == ruleset.version
            assert (summary.status, summary.attempts) == ("pending", 0)
            assert summary.created_at == summary.next_at == T0  # due at once, by the clock
        assert len({job.summary.id for job in jobs}) == len(jobs)
        assert all(re.fullmatch("[0-9a-f]{32}", job.summary.id) for job in jobs)

    accepting(tmp_path, ruleset, scenario)


def test_unmatched_records_are_stored_and_counted(tmp_path: Path) -> None:
    ruleset = rule_set(tmp_path, RULES)

    async def scenario(it: Accepting) -> None:
        await it.engine.accept(PUSH)
        events = it.rows("SELECT event_id, matched, ruleset_version FROM events ORDER BY id")
        assert [(event_id, json.loads(matched), v) for event_id, matched, v in events] == [
            ("p-create", ["crm", "welcome"], ruleset.version),
            ("c-update", [], ruleset.version),
            ("p-update", ["crm"], ruleset.version),
            ("p-no-email", ["crm"], ruleset.version),
        ]
        assert it.count("router_records_received") == 4
        assert it.count("router_records_unmatched") == 1
        assert it.count("router_rule_matches", rule="crm", mode="live") == 3
        assert it.count("router_rule_matches", rule="welcome", mode="live") == 1
        assert it.count("router_rule_matches", rule="off", mode="live") == 0

    accepting(tmp_path, ruleset, scenario)


def test_a_repeat_is_counted_but_not_routed_again(tmp_path: Path) -> None:
    ruleset = rule_set(tmp_path, RULES)
    fresh = record("p-fresh", {"profileId": 4}, tableType="PROFILE_TABLE", operation="UPDATE")

    async def scenario(it: Accepting) -> None:
        await it.engine.accept(PUSH)
        again = await it.engine.accept(PUSH)
        assert (again.accepted, again.duplicates, again.repeated) == (0, 4, frozenset(range(4)))
        # The repeat is at its first place, the new record after it.
        mixed = await it.engine.accept([PROFILE_CREATE, fresh])
        assert (mixed.accepted, mixed.duplicates, mixed.repeated) == (1, 1, frozenset({0}))
        assert len(await it.jobs()) == 7 + 2
        assert it.rows("SELECT count(*) FROM events") == [(5,)]
        assert it.count("router_records_received") == 5
        assert it.count("router_records_duplicate") == 5
        assert it.count("router_records_unmatched") == 1
        assert it.count("router_rule_matches", rule="crm", mode="live") == 4
        assert it.count("router_rule_matches", rule="welcome", mode="live") == 1

    accepting(tmp_path, ruleset, scenario)


@pytest.mark.parametrize(("window", "keys"), [(DAY, 2), (0.0, 0)])
def test_dedupe_keys_only_when_the_window_is_on(tmp_path: Path, window: float, keys: int) -> None:
    ruleset = rule_set(tmp_path, RULES)
    no_id = record(None, {"profileId": 5}, tableType="PROFILE_TABLE")

    async def scenario(it: Accepting) -> None:
        first = await it.engine.accept([PROFILE_CREATE, no_id, CUSTOM_UPDATE])
        assert (first.accepted, first.duplicates) == (3, 0)
        # One key per record with an id, stamped with the engine's clock; none without the window.
        assert it.rows("SELECT count(*), coalesce(min(seen_at), 0) FROM dedupe") == [
            (keys, T0 if keys else 0)
        ]
        second = await it.engine.accept([PROFILE_CREATE, no_id, CUSTOM_UPDATE])
        assert (second.accepted, second.duplicates) == ((1, 2) if window else (3, 0))

    accepting(tmp_path, ruleset, scenario, window=window)


def test_the_window_is_measured_by_the_engine_clock(tmp_path: Path) -> None:
    ruleset = rule_set(tmp_path, RULES)
    now = [T0]

    async def scenario(it: Accepting) -> None:
        assert (await it.engine.accept([CUSTOM_UPDATE])).accepted == 1
        now[0] = T0 + 3599
        assert (await it.engine.accept([CUSTOM_UPDATE])).duplicates == 1
        now[0] = T0 + 3601
        assert (await it.engine.accept([CUSTOM_UPDATE])).accepted == 1

    accepting(tmp_path, ruleset, scenario, window=3600, clock=lambda: now[0])


class SwapWhileRead(Sequence[Record]):
    """A push whose records, as they are read for matching, swap the engine's rule set: what a
    reload does from its own thread while a push is being matched."""

    def __init__(self, records: list[Record], engine: Engine, swap_to: RuleSet) -> None:
        self.records, self.engine, self.swap_to = records, engine, swap_to
        self.swapped = False

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, int) and index == 1 and not self.swapped:
            self.engine.swap(self.swap_to)
            self.swapped = True
        return self.records[index]


def test_a_push_is_matched_by_one_rule_set_however_it_is_swapped(tmp_path: Path) -> None:
    everything = '[[rule]]\nname = "{0}"\n[[rule.action]]\ntype = "log"\nmessage = "{0}"\n'
    old = rule_set(tmp_path, everything.format("old"), "old")
    new = rule_set(tmp_path, everything.format("new"), "new")
    records = [record(f"r{n}", {"n": n}) for n in range(3)]

    async def scenario(it: Accepting) -> None:
        push = SwapWhileRead(records, it.engine, new)
        await it.engine.accept(push)
        assert push.swapped and it.engine.ruleset is new
        stored = it.rows("SELECT ruleset_version, matched FROM events ORDER BY id")
        (version, matched), *_ = stored
        assert stored == [(version, matched)] * 3  # one version matched the whole push
        assert (version, matched) in [(old.version, '["old"]'), (new.version, '["new"]')]
        # A push being stored is matched already: a swap now does not touch it.
        later = asyncio.create_task(it.engine.accept([record("r3", {"n": 3})]))
        await asyncio.sleep(0)
        it.engine.swap(old)
        await later
        assert it.rows("SELECT ruleset_version, matched FROM events WHERE event_id = 'r3'") == [
            (new.version, '["new"]')
        ]
        rules = {
            (job.summary.event_id, job.summary.ruleset_version, job.summary.rule)
            for job in await it.jobs()
        }
        assert rules == {
            *((f"r{n}", version, json.loads(matched)[0]) for n in range(3)),
            ("r3", new.version, "new"),
        }
        info = it.engine.metrics.registry.get_sample_value
        assert info("router_ruleset_info", {"version": old.version}) == 1
        assert info("router_ruleset_info", {"version": new.version}) is None

    accepting(tmp_path, old, scenario)


def test_an_empty_push_stores_nothing(tmp_path: Path) -> None:
    async def scenario(it: Accepting) -> None:
        result = await it.engine.accept([])
        assert (result.accepted, result.duplicates) == (0, 0)
        assert it.rows("SELECT count(*) FROM events") == [(0,)]
        assert it.count("router_records_received") == 0

    accepting(tmp_path, rule_set(tmp_path, RULES), scenario)
