"""Per-record match time as the rule set grows: `python tests/bench/match.py`.

Every rule set is built so that a record's index bucket holds about 10 rules (rules spread over
tableType x operation x tableId), with a realistic mix: some rules want `fields`, some have a
JMESPath condition, half leave `eventType` out, one in ten lists two operations. The cost per
record should stay flat: targets are 10,000 rules <= 3x the 10-rule cost, and <= 20 µs/record
at 1,000 rules.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from router.conditions import compile_condition
from router.matching import Matcher
from router.rules import Location, Match, Rule

TABLE_TYPES = ("PROFILE_TABLE", "CUSTOM_TABLE")
OPERATIONS = ("CREATE", "UPDATE", "DELETE", "UPDATED_SUBSCRIPTION", "UPDATED_SEGMENT")
RULES_PER_BUCKET = 10
RULE_COUNTS = (10, 100, 1_000, 10_000)
RECORDS = 2_000
ROUNDS = 7
CONDITIONS = (
    "data.emailAddress != `null` && !ends_with(data.emailAddress, '@example.com')",
    "data.motherLanguage == 'FR'",
)


def bucket_of(number: int) -> tuple[str, str, str]:
    """(tableType, operation, tableId) of bucket `number`: rules spread over all three keys."""
    table_type = TABLE_TYPES[number % len(TABLE_TYPES)]
    operation = OPERATIONS[(number // len(TABLE_TYPES)) % len(OPERATIONS)]
    table_id = str(number // (len(TABLE_TYPES) * len(OPERATIONS)))
    return table_type, operation, table_id


def build_rules(count: int) -> list[Rule]:
    rules: list[Rule] = []
    for index in range(count):
        table_type, operation, table_id = bucket_of(index // RULES_PER_BUCKET)
        slot = index % RULES_PER_BUCKET
        next_operation = OPERATIONS[(OPERATIONS.index(operation) + 1) % len(OPERATIONS)]
        match = Match(
            table_type=frozenset({table_type}),
            table_id=frozenset({table_id}),
            # One rule in ten lists two operations, so it sits in two buckets.
            operation=frozenset({operation, next_operation})
            if slot == 9
            else frozenset({operation}),
            event_type=frozenset({"DATA"}) if slot % 2 else None,
            fields=frozenset({"emailAddress"} if slot % 4 == 1 else {"lastName"})
            if slot % 4 in (1, 2)
            else None,
            condition=compile_condition(CONDITIONS[slot % 2]) if slot in (3, 6) else None,
        )
        rules.append(
            Rule(
                name=f"rule-{index}",
                description="",
                enabled=True,
                match=match,
                actions=(),
                location=Location("rules/bench.toml", index + 1),
            )
        )
    return rules


def build_records(rule_count: int, rng: random.Random) -> list[dict[str, Any]]:
    buckets = max(1, rule_count // RULES_PER_BUCKET)
    records = []
    for number in range(RECORDS):
        table_type, operation, table_id = bucket_of(rng.randrange(buckets))
        records.append(
            {
                "id": f"event-{number}",
                "tableType": table_type,
                "tableId": table_id,
                "fields": ["emailAddress"] if number % 2 else ["firstName"],
                "eventType": "DATA",
                "triggerType": None,
                "operation": operation,
                "data": {
                    "profileId": number,
                    "emailAddress": f"person{number}@example.{'com' if number % 3 else 'be'}",
                    "motherLanguage": "FR" if number % 2 else "NL",
                },
            }
        )
    return records


def per_record_us(matcher: Matcher, records: list[dict[str, Any]]) -> tuple[float, float]:
    """Median µs per record over ROUNDS rounds, and the mean number of matches per record."""
    matched = sum(len(matcher.match(record)) for record in records)  # also warms the cache
    timings = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for record in records:
            matcher.match(record)
        timings.append((time.perf_counter() - start) / len(records) * 1e6)
    return statistics.median(timings), matched / len(records)


def main() -> None:
    rng = random.Random(7)
    print(f"{'rules':>8} | {'µs/record':>10} | {'ratio to 10 rules':>17} | matches/record")
    baseline = None
    for count in RULE_COUNTS:
        matcher = Matcher(build_rules(count))
        micros, matches = per_record_us(matcher, build_records(count, rng))
        baseline = baseline or micros
        print(f"{count:>8,} | {micros:>10.2f} | {micros / baseline:>17.2f} | {matches:.1f}")


if __name__ == "__main__":
    main()
