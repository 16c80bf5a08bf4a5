"""Batch benchmark: one backlog of jobs drained to a local sink by the worker, first with a plain
http action (one request per record), then with the same action batched (one request per
`--batch` records). Both runs in the same process, to the same sink, on the same machine.

    python tests/bench/batches.py [--jobs 10000] [--batch 500] [--store URL]

Prints records delivered per second for each, the requests the sink received, and the ratio of
the batched rate to the plain one.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from router.actions.registry import destination_of
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

ACCEPT = 500  # records per accept() while building the backlog


async def backlog(url: str, action_toml: str, jobs: int, directory: Path) -> None:
    rules = directory / f"rules-{uuid.uuid4().hex[:6]}"
    rules.mkdir()
    (rules / "bench.toml").write_text(f'[[rule]]\nname = "bench"\n[[rule.action]]\n{action_toml}')
    action = load_rules(rules).rules[0].actions[0]
    store = open_store(url)
    await store.open()
    now = time.time()
    for first in range(0, jobs, ACCEPT):
        records = [
            IncomingRecord(
                event_id=f"bench-{n}",
                dedupe_key=None,
                record={"id": f"bench-{n}", "tableType": "PROFILE_TABLE", "data": {"n": n}},
                matched=("bench",),
                jobs=(
                    NewJob(
                        uuid.uuid4().hex, "bench", 0, "http", action.spec, destination_of(action)
                    ),
                ),
            )
            for n in range(first, min(jobs, first + ACCEPT))
        ]
        await store.accept(records, ruleset_version="bench", dedupe_window=0, now=now)
    await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--store", help="store URL; default: SQLite in a temporary directory")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {int(SERVER_CORE)})
    port = free_port()
    sink_proc = start(pinned(LOAD_CORE, [python(), "tests/bench/sink.py", str(port)]))
    sink = f"http://127.0.0.1:{port}/hook"
    plain = f'type = "http"\nurl = "{sink}"\n'
    batched = f'{plain}batch = {{ max_records = {args.batch}, max_wait = "1s" }}\n'
    try:
        wait_port(port)
        print(f"{'action':<16} {'records':>8} {'records/s':>10}")
        rates = []
        with tempfile.TemporaryDirectory() as tmp_name:
            for n, (name, action) in enumerate((("plain", plain), ("batch", batched))):
                url = args.store or f"sqlite:///{tmp_name}/bench-{n}.db"
                asyncio.run(backlog(url, action, args.jobs, Path(tmp_name)))
                rate, delivered = asyncio.run(drain_backlog(url))
                rates.append(rate)
                label = name if name == "plain" else f"batch of {args.batch}"
                print(f"{label:<16} {delivered:>8} {rate:>10.0f}")
        print(f"batched / plain: {rates[1] / rates[0]:.1f}x")
    finally:
        stop(sink_proc)


if __name__ == "__main__":
    main()
