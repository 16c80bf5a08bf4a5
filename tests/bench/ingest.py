"""Ingest benchmark: `router serve` (100 and 10,000 rules, durable group-committed store
write) against a bare Starlette endpoint that only parses the JSON, both under uvicorn with
httptools and uvloop (uvicorn[standard], what the router ships with) on one core, wrk on the
other.

    python tests/bench/ingest.py [--seconds 10] [--rounds 3] [--connections 32] [--store URL]
                                 [--rules 100,10000]

Prints requests/s of each, the ratio router/bare (target >= 0.7 with 100 rules) and 10,000
rules against 100 (target >= 0.8). The router runs with --no-worker: this measures the intake
path (auth, parse, normalise, match, group-committed store write); delivery has its own
benchmark.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
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


def run(
    store: str | None, seconds: int, rounds: int, connections: int, rule_counts: list[int]
) -> tuple[float, list[float]]:
    """Median req/s of the bare endpoint and of the router with each number of rules."""
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
        try:
            for count in rule_counts:
                port = free_port()
                write_rules(tmp / f"rules-{count}", count, "http://127.0.0.1:9/unused")
                database = tmp / f"bench-{count}.db"
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
                            log=tmp / f"router-{count}.log",
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
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed (Debian: apt-get install wrk)")
    counts = [int(count) for count in args.rules.split(",")]
    print(
        f"{'store':<10} {'bare req/s':>10} | "
        + " | ".join(f"{count:>6} rules req/s  ratio" for count in counts)
        + (f" | {counts[-1]}/{counts[0]} rules" if len(counts) > 1 else "")
    )
    for store in args.store or [None]:
        bare, routed = run(store, args.seconds, args.rounds, args.connections, counts)
        name = (store or "sqlite").split(":", 1)[0]
        cells = " | ".join(f"{rate:>12.0f} {rate / bare:>12.2f}" for rate in routed)
        last = f" | {routed[-1] / routed[0]:>12.2f}" if len(routed) > 1 else ""
        print(f"{name:<10} {bare:>10.0f} | {cells}{last}")


if __name__ == "__main__":
    main()
