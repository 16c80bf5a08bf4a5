"""Ingest benchmark: `router serve` (100 and 10,000 rules, durable group-committed store
write) against a bare Starlette endpoint that only parses the JSON, both under uvicorn with
httptools and uvloop (uvicorn[standard], what the router ships with) on one core, wrk on the
other.

    python tests/bench/ingest.py [--seconds 10] [--rounds 3] [--connections 32] [--store URL]
                                 [--rules 100,10000] [--console-cost]

Prints requests/s of each, the ratio router/bare (target >= 0.7 with 100 rules) and 10,000
rules against 100 (target >= 0.8). The router runs with --no-worker: this measures the intake
path (auth, parse, normalise, match, group-committed store write); delivery has its own
benchmark. With --console-cost, the same run also measures the router on a store without the
indexes a push writes for the console (target: they cost at most 0.05 of the ratio).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.common import (
    LOAD_CORE,
    SECRET,
    SERVER_CORE,
    median,
    pinned,
    python,
    start,
    stop,
    wait_ready,
    write_rules,
)
from tests.sinks import free_port

LUA = Path(__file__).with_name("ingest.wrk.lua")


def wrk(url: str, seconds: int, connections: int) -> float:
    out = subprocess.run(
        pinned(LOAD_CORE, ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(LUA), url]),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise SystemExit(f"{non2xx.group(1)} requests failed:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert match, out
    return float(match.group(1))


# What a push writes only for the console's sake (schema steps 7 and 8): its indexes of the
# records without a match and of event ids. The other console indexes hold settled jobs only,
# which a push never writes.
CONSOLE_INDEXES = ("events_unmatched", "events_event_id")


def without_console_indexes(database: Path) -> None:
    """Migrate a fresh SQLite store, then drop the indexes a push writes for the console."""
    subprocess.run(
        [python(), "-m", "router", "migrate"],
        env={**os.environ, "ROUTER_STORE_URL": f"sqlite:///{database}"},
        check=True,
        capture_output=True,
    )
    with closing(sqlite3.connect(database)) as conn:
        for index in CONSOLE_INDEXES:
            conn.execute(f"DROP INDEX {index}")
        conn.commit()


def run(
    store: str | None,
    seconds: int,
    rounds: int,
    connections: int,
    rule_counts: list[int],
    console_cost: bool = False,
) -> tuple[float, list[float]]:
    """Median req/s of the bare endpoint and of the router with each number of rules (and,
    with `console_cost`, last, of the router with the first number of rules and without the
    console's indexes)."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        port_bare = free_port()
        # The stack a deployment runs: uvicorn[standard]'s httptools parser and uvloop, named
        # here so that a missing one fails instead of falling back to h11 and asyncio.
        bare = start(
            pinned(
                SERVER_CORE,
                [
                    python(),
                    "-m",
                    "uvicorn",
                    "tests.bench.bare_app:app",
                    "--port",
                    str(port_bare),
                    "--http",
                    "httptools",
                    "--loop",
                    "uvloop",
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ],
            )
        )
        routers: list[tuple[int, subprocess.Popen[bytes]]] = []
        variants = [(count, False) for count in rule_counts]
        variants += [(rule_counts[0], True)] if console_cost else []
        try:
            for count, bare_store in variants:
                port = free_port()
                if not (tmp / f"rules-{count}").exists():
                    write_rules(tmp / f"rules-{count}", count, "http://127.0.0.1:9/unused")
                database = tmp / f"bench-{count}{'-bare' if bare_store else ''}.db"
                if bare_store:
                    without_console_indexes(database)
                routers.append(
                    (
                        port,
                        start(
                            pinned(SERVER_CORE, [python(), "-m", "router", "serve", "--no-worker"]),
                            env={
                                "ROUTER_RULES_DIR": str(tmp / f"rules-{count}"),
                                "ROUTER_STORE_URL": _store(store, database),
                                "ROUTER_PORT": str(port),
                                "ROUTER_WEBHOOK_SECRETS": SECRET,
                                "ROUTER_LOG_LEVEL": "warning",
                                "ROUTER_RELOAD": "false",
                            },
                            log=tmp / f"router-{count}{'-bare' if bare_store else ''}.log",
                        ),
                    )
                )
            wait_ready(f"http://127.0.0.1:{port_bare}/healthz")
            for port, _ in routers:
                wait_ready(f"http://127.0.0.1:{port}/readyz", timeout=300)
            urls = [f"http://127.0.0.1:{port_bare}/webhooks/actito"]
            urls += [f"http://127.0.0.1:{port}/webhooks/actito" for port, _ in routers]
            for url in urls:
                wrk(url, 2, connections)  # warm up
            rates: list[list[float]] = [[] for _ in urls]
            for _ in range(rounds):  # interleaved, so drift hits all alike
                for url, found in zip(urls, rates, strict=True):
                    found.append(wrk(url, seconds, connections))
            return median(rates[0]), [median(found) for found in rates[1:]]
        finally:
            stop(bare)
            for _, router in routers:
                stop(router)


def _store(store: str | None, database: Path) -> str:
    return store or f"sqlite:///{database}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--store", action="append", help="store URL(s); default: SQLite")
    parser.add_argument(
        "--rules", default="100,10000", help="rule counts, comma-separated (default: 100,10000)"
    )
    parser.add_argument(
        "--console-cost",
        action="store_true",
        help="also run the router (first rule count, SQLite) without the indexes a push writes "
        "for the console, and print what they cost",
    )
    args = parser.parse_args()
    if args.console_cost and args.store:
        raise SystemExit("--console-cost measures the SQLite store only")
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed (Debian: apt-get install wrk)")
    counts = [int(count) for count in args.rules.split(",")]
    print(
        f"{'store':<10} {'bare req/s':>10} | "
        + " | ".join(f"{count:>6} rules req/s  ratio" for count in counts)
        + (f" | {counts[-1]}/{counts[0]} rules" if len(counts) > 1 else "")
    )
    for store in args.store or [None]:
        bare, routed = run(
            store, args.seconds, args.rounds, args.connections, counts, args.console_cost
        )
        if args.console_cost:
            *routed, plain = routed
            print(
                f"without the console's indexes: {plain:.0f} req/s, ratio {plain / bare:.2f}; "
                f"with them {routed[0] / bare:.2f}: they cost {(plain - routed[0]) / bare:.2f} "
                "of the ratio"
            )
        name = (store or "sqlite").split(":", 1)[0]
        cells = " | ".join(f"{rate:>12.0f} {rate / bare:>12.2f}" for rate in routed)
        last = f" | {routed[-1] / routed[0]:>12.2f}" if len(routed) > 1 else ""
        print(f"{name:<10} {bare:>10.0f} | {cells}{last}")


if __name__ == "__main__":
    main()
