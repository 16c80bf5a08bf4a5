"""Ingest benchmark: `router serve` (100 rules, durable SQLite commit per push) against a bare
Starlette endpoint that only parses the JSON, both under uvicorn on one core, wrk on the other.

    python tests/bench/ingest.py [--seconds 10] [--rounds 3] [--connections 32] [--store URL]

Prints requests/s of each and the ratio router/bare (target >= 0.5). The router runs with
--no-worker: this measures the intake path (auth, parse, normalise, match, group-committed
store write); delivery has its own benchmark.
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


def run(store: str | None, seconds: int, rounds: int, connections: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        port_bare, port_router = free_port(), free_port()
        write_rules(tmp / "rules", 100, "http://127.0.0.1:9/unused")
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
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ],
            )
        )
        router = start(
            pinned(SERVER_CORE, [python(), "-m", "router", "serve", "--no-worker"]),
            env={
                "ROUTER_RULES_DIR": str(tmp / "rules"),
                "ROUTER_STORE_URL": store or f"sqlite:///{tmp / 'bench.db'}",
                "ROUTER_PORT": str(port_router),
                "ROUTER_WEBHOOK_SECRETS": SECRET,
                "ROUTER_LOG_LEVEL": "warning",
                "ROUTER_RELOAD": "false",
            },
            log=tmp / "router.log",
        )
        try:
            wait_ready(f"http://127.0.0.1:{port_bare}/healthz")
            wait_ready(f"http://127.0.0.1:{port_router}/readyz")
            bare_rates, router_rates = [], []
            wrk(f"http://127.0.0.1:{port_bare}/webhooks/actito", 2, connections)  # warm up
            wrk(f"http://127.0.0.1:{port_router}/webhooks/actito", 2, connections)
            for _ in range(rounds):  # interleaved, so drift hits both alike
                bare_rates.append(
                    wrk(f"http://127.0.0.1:{port_bare}/webhooks/actito", seconds, connections)
                )
                router_rates.append(
                    wrk(f"http://127.0.0.1:{port_router}/webhooks/actito", seconds, connections)
                )
            return median(bare_rates), median(router_rates)
        finally:
            stop(bare)
            stop(router)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--store", action="append", help="store URL(s); default: SQLite")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed (Debian: apt-get install wrk)")
    print(f"{'store':<12} {'bare req/s':>11} {'router req/s':>13} {'ratio':>6}")
    for store in args.store or [None]:
        bare, routed = run(store, args.seconds, args.rounds, args.connections)
        name = (store or "sqlite").split(":", 1)[0]
        print(f"{name:<12} {bare:>11.0f} {routed:>13.0f} {routed / bare:>6.2f}")


if __name__ == "__main__":
    main()
