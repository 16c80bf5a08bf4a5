"""Delivery benchmark: a backlog of jobs drained to a local sink by the worker, against the raw
HTTP client sending the same number of requests to the same sink.

    python tests/bench/delivery.py [--jobs 20000] [--store URL ...] [--concurrency 64]

The benchmark process runs on one core, the sink on the other. Prints deliveries/s (target
>= 1,000/s) and the ratio to the raw client (the ceiling for this sink and core).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from router.rulefiles.loader import load_rules
from router.store import open_store
from router.store.base import IncomingRecord, NewJob
from tests.bench.common import (
    LOAD_CORE,
    SERVER_CORE,
    drain_backlog,
    pinned,
    python,
    start,
    stop,
    wait_port,
)
from tests.sinks import free_port

BATCH = 500  # records per accept() while building the backlog


async def backlog(url: str, sink: str, jobs: int, directory: Path) -> None:
    rules = directory / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "bench.toml").write_text(
        f'[[rule]]\nname = "bench"\n[[rule.action]]\ntype = "http"\nurl = "{sink}"\n'
    )
    action = load_rules(rules).rules[0].actions[0]
    store = open_store(url)
    await store.open()
    now = time.time()
    for start_at in range(0, jobs, BATCH):
        records = [
            IncomingRecord(
                event_id=f"bench-{n}",
                dedupe_key=None,
                record={"id": f"bench-{n}", "tableType": "PROFILE_TABLE", "data": {"n": n}},
                matched=("bench",),
                jobs=(NewJob(uuid.uuid4().hex, "bench", 0, "http", action.spec, "127.0.0.1"),),
            )
            for n in range(start_at, min(jobs, start_at + BATCH))
        ]
        await store.accept(records, ruleset_version="bench", dedupe_window=0, now=now)
    await store.close()


async def raw(sink: str, requests: int, concurrency: int) -> float:
    body = b'{"n": 1}'
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        queue = iter(range(requests))

        async def one_lane() -> None:
            for _ in queue:
                async with session.post(sink, data=body) as response:
                    await response.read()

        started = time.perf_counter()
        await asyncio.gather(*(one_lane() for _ in range(concurrency)))
        return requests / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--store", action="append", help="store URL(s); default: SQLite")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {int(SERVER_CORE)})
    port = free_port()
    sink_proc = start(pinned(LOAD_CORE, [python(), "tests/bench/sink.py", str(port)]))
    sink = f"http://127.0.0.1:{port}/hook"
    try:
        wait_port(port)
        baseline = asyncio.run(raw(sink, args.jobs, args.concurrency))
        print(f"{'store':<12} {'jobs':>7} {'worker/s':>9} {'raw client/s':>13} {'ratio':>6}")
        with tempfile.TemporaryDirectory() as tmp_name:
            for url in args.store or [f"sqlite:///{tmp_name}/bench.db"]:
                asyncio.run(backlog(url, sink, args.jobs, Path(tmp_name)))
                rate, _ = asyncio.run(drain_backlog(url, args.concurrency))
                name = url.split(":", 1)[0]
                ratio = rate / baseline
                print(f"{name:<12} {args.jobs:>7} {rate:>9.0f} {baseline:>13.0f} {ratio:>6.2f}")
    finally:
        stop(sink_proc)


if __name__ == "__main__":
    main()
