"""Console benchmark: every console page and API call against a store holding 1,000,000 jobs.

    python tests/bench/console.py [--jobs 1000000] [--store sqlite|postgres|both] [--rounds 5]

Fills a fresh store (an SQLite file; a fresh PostgreSQL database through
ROUTER_TEST_POSTGRES_URL) with the schema the router migrates to and `--jobs` delivery jobs,
two per record, spread over the last 7 days (the default retention) across 20 rules and 10
destinations: 96% delivered, 2% dead, 2% pending (half of them retrying). Rows are written in
bulk, not through the intake: what is measured is reading them. Then counts each ended hour's
settled jobs once, as every serving process does in the background (router.store.rollups),
and prints how long that took. Then asks every page and API call the console has, in process
through its ASGI app (routing, the store's reads, rendering), `--rounds` times each, and prints
the median and the worst in milliseconds, with the target (200 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from router.app import starlette_app
from router.console.app import console_routes
from router.matching import RuleSet
from router.rulefiles.loader import load_rules
from router.settings import Settings
from router.store import open_store
from router.store.base import Store

TOKEN = "bench-console-token-0123456789"
TARGET_MS = 200.0
DAY = 86400.0
SPAN = 7 * DAY  # the default retention
RULES = 20
DESTINATIONS = 10
BATCH = 20_000
UNMATCHED = 0.1  # of the records, that matched no rule


def rules_text() -> str:
    return "".join(
        f"""
[[rule]]
name = "rule-{n:02d}"
[rule.match]
tableType = "PROFILE_TABLE"
condition = "data.bucket == `{n}`"
[[rule.action]]
type = "http"
url = "http://crm-{n % DESTINATIONS}.example.com/contacts/{{{{ data.profileId }}}}"
"""
        for n in range(RULES)
    )


def rows(jobs: int, now: float, specs: dict[int, str]) -> Iterator[tuple[list[Any], list[Any]]]:
    """Batches of (events, jobs) rows in the store's column order, oldest first."""
    rnd = random.Random(7)
    events = round(jobs / 2 / (1 - UNMATCHED))
    seq = 0
    for start in range(0, events, BATCH // 2):
        event_rows: list[Any] = []
        job_rows: list[Any] = []
        for event in range(start + 1, min(start + BATCH // 2, events) + 1):
            at = now - SPAN + SPAN * event / events
            rule = rnd.randrange(RULES)
            record = {
                "id": f"ev-{event}",
                "tableType": "PROFILE_TABLE",
                "tableId": 16,
                "operation": "UPDATE",
                "data": {"profileId": event, "bucket": rule, "email": f"p{event}@example.com"},
            }
            hit = event % round(1 / UNMATCHED) != 0
            matched = [f"rule-{rule:02d}"] if hit else []
            event_rows.append(
                (event, f"ev-{event}", json.dumps(record), json.dumps(matched), "bench", at)
            )
            for index in range(2 if hit else 0):
                seq += 1
                roll = rnd.random()
                status, attempts, error, next_at = "done", 1, None, None
                if roll < 0.02:
                    status, attempts, error = "dead", 5, "HTTP 400 from crm.example.com"
                elif roll < 0.04 and at > now - DAY:
                    status, next_at = "pending", at + 60
                    attempts, error = (
                        (1, "HTTP 503 from crm.example.com")
                        if roll < 0.03
                        else (
                            0,
                            None,
                        )
                    )
                job_rows.append(
                    (
                        seq,
                        f"{seq:032x}",
                        event,
                        f"rule-{rule:02d}",
                        index,
                        "http",
                        specs[rule],
                        f"crm-{(rule + index) % DESTINATIONS}.example.com",
                        status,
                        attempts,
                        attempts,
                        at,
                        at,
                        at + 1,
                        next_at,
                        error,
                    )
                )
        yield event_rows, job_rows


JOB_COLUMNS = (
    "seq, id, event, rule, action_index, action_type, spec, destination, status, attempts, "
    "attempts_total, budget_since, created_at, updated_at, next_at, last_error"
)


def spec_rows() -> dict[int, tuple[str, str]]:
    return {
        n: (
            f"{n:032x}",
            json.dumps({"type": "http", "url": f"http://crm-{n}.example.com/{{{{ data.x }}}}"}),
        )
        for n in range(RULES)
    }


def fill_sqlite(path: str, jobs: int, now: float) -> None:
    specs = spec_rows()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO specs (hash, spec) VALUES (?, ?)", specs.values())
    for event_rows, job_rows in rows(jobs, now, {n: h for n, (h, _) in specs.items()}):
        conn.executemany(
            "INSERT INTO events (id, event_id, record, matched, ruleset_version, received_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            event_rows,
        )
        conn.executemany(
            f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({', '.join('?' * 16)})", job_rows
        )
    conn.execute("COMMIT")
    # No ANALYZE: a store the router runs has no planner statistics either.
    conn.close()


async def fill_postgres(url: str, jobs: int, now: float) -> None:
    import asyncpg

    specs = spec_rows()
    conn = await asyncpg.connect(url)
    try:
        await conn.copy_records_to_table("specs", records=list(specs.values()))
        for event_rows, job_rows in rows(jobs, now, {n: h for n, (h, _) in specs.items()}):
            await conn.copy_records_to_table(
                "events",
                records=event_rows,
                columns=["id", "event_id", "record", "matched", "ruleset_version", "received_at"],
            )
            await conn.execute(
                f"INSERT INTO jobs ({JOB_COLUMNS}) OVERRIDING SYSTEM VALUE "
                "SELECT * FROM unnest($1::int8[], $2::text[], $3::int8[], $4::text[], "
                "$5::int[], $6::text[], $7::text[], $8::text[], $9::text[], $10::int[], "
                "$11::int[], $12::float8[], $13::float8[], $14::float8[], $15::float8[], "
                "$16::text[])",
                *[list(column) for column in zip(*job_rows, strict=True)],
            )
        await conn.execute("SELECT setval('events_id_seq', (SELECT max(id) FROM events))")
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


def calls(jobs: int) -> list[tuple[str, str, str]]:
    """(name, page, API call) of every page and call, with the filters people use."""
    event, job, cursor = jobs // 6, jobs // 3, jobs * 9 // 10
    paths = [
        ("overview", "/console/", "/api/v1/overview"),
        ("rules", "/console/rules", "/api/v1/rules"),
        ("events", "/console/events", "/api/v1/events"),
        (
            "events by event id",
            "/console/events?event_id=ev-4321",
            "/api/v1/events?event_id=ev-4321",
        ),
        (
            "events by profile id",
            "/console/events?profile_id=4321",
            "/api/v1/events?profile_id=4321",
        ),
        (
            "events by value",
            "/console/events?q=p99999%40example.com",
            "/api/v1/events?q=p99999%40example.com",
        ),
        ("events by rule", "/console/events?rule=rule-07", "/api/v1/events?rule=rule-07"),
        (
            "events matching nothing",
            "/console/events?unmatched=true",
            "/api/v1/events?unmatched=true",
        ),
        (
            "event + explain",
            f"/console/events/{event}?explain=true",
            f"/api/v1/events/{event}?explain=true",
        ),
        ("deliveries", "/console/deliveries", "/api/v1/jobs"),
        ("deliveries, dead", "/console/deliveries?status=dead", "/api/v1/jobs?status=dead"),
        (
            "deliveries, pending",
            "/console/deliveries?status=pending",
            "/api/v1/jobs?status=pending",
        ),
        ("deliveries by rule", "/console/deliveries?rule=rule-03", "/api/v1/jobs?rule=rule-03"),
        (
            "deliveries by destination",
            "/console/deliveries?destination=crm-5.example.com",
            "/api/v1/jobs?destination=crm-5.example.com",
        ),
        (
            "deliveries, page 2",
            f"/console/deliveries?cursor={cursor}",
            f"/api/v1/jobs?cursor={cursor}",
        ),
        ("job", f"/console/deliveries/{job:032x}", f"/api/v1/jobs/{job:032x}"),
        ("dead letters", "/console/dead", "/api/v1/jobs?status=dead&rule=rule-03"),
        (
            "dead: count to confirm",
            "/console/dead/confirm?rule=rule-03",
            "/api/v1/jobs/count?status=dead&rule=rule-03",
        ),
    ]
    return [(name, page, api) for name, page, api in paths]


async def measure(
    store: Store, ruleset: RuleSet, jobs: int, rounds: int
) -> list[tuple[str, float, float]]:
    settings = Settings(console_tokens=[TOKEN])  # type: ignore[call-arg,list-item]
    app = starlette_app(console_routes(settings, store, lambda: ruleset))
    transport = httpx.ASGITransport(app=app)
    results: list[tuple[str, float, float]] = []
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        login = await client.post("/console/login", data={"token": TOKEN})
        assert login.status_code == 303, login.text
        api = {"Authorization": f"Bearer {TOKEN}"}
        for name, page, call in calls(jobs):
            for kind, path, headers in (("page", page, {}), ("api", call, api)):
                times = []
                for _ in range(rounds):
                    started = time.perf_counter()
                    answer = await client.get(path, headers=headers)
                    times.append((time.perf_counter() - started) * 1000)
                    assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
                results.append((f"{name} ({kind})", statistics.median(times), max(times)))
    return results


async def run_store(url: str, ruleset: RuleSet, jobs: int, rounds: int, fill: Any) -> None:
    store = open_store(url)
    await store.open(migrate=True)
    await store.close()
    started = time.perf_counter()
    await fill()
    print(f"filled {jobs:,} jobs in {time.perf_counter() - started:.0f} s", flush=True)
    store = open_store(url)
    await store.open(migrate=False)
    try:
        # What every serving process does in the background within a minute of starting, then
        # for one hour an hour: count each ended hour's settled jobs once (router.store.rollups).
        started = time.perf_counter()
        now = time.time()
        hours = await store.roll_up(now=now, since=now - SPAN)
        print(f"counted {hours} hours once in {time.perf_counter() - started:.1f} s", flush=True)
        results = await measure(store, ruleset, jobs, rounds)
    finally:
        await store.close()
    worst = max(median for _, median, _ in results)
    print(f"{'call':<44} {'median ms':>10} {'max ms':>8}")
    for name, median, highest in results:
        flag = "" if median <= TARGET_MS else "  OVER"
        print(f"{name:<44} {median:>10.1f} {highest:>8.1f}{flag}")
    print(f"slowest median: {worst:.1f} ms (target <= {TARGET_MS:.0f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--store", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    now = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "rules"
        rules.mkdir()
        (rules / "bench.toml").write_text(rules_text())
        ruleset = load_rules(str(rules))
        if args.store in ("sqlite", "both"):
            print("== SQLite", flush=True)
            path = os.path.join(tmp, "console.db")
            asyncio.run(
                run_store(
                    f"sqlite:///{path}",
                    ruleset,
                    args.jobs,
                    args.rounds,
                    lambda: asyncio.to_thread(fill_sqlite, path, args.jobs, now),
                )
            )
        if args.store in ("postgres", "both"):
            from tests.e2e.pg import fresh_database

            print("== PostgreSQL", flush=True)
            with fresh_database() as url:
                asyncio.run(
                    run_store(
                        url,
                        ruleset,
                        args.jobs,
                        args.rounds,
                        lambda: fill_postgres(url, args.jobs, now),
                    )
                )


if __name__ == "__main__":
    main()
