"""Intake latency while the rules reload: `python tests/bench/reload.py`.

`router serve --no-worker` with 1,000 rules (those of tests/bench/load.py) takes a steady
stream of pushes (open loop, --rate pushes/s) for --seconds without a reload, then as long
again while the rules directory is rewritten every --every seconds, each time with every
rule's url changed (so every template is new to the router: the most a reload can cost), or
with one rule's description changed (`--change one`, the usual edit). Prints p50/p90/p99/max of
the push answers in both phases, the reloads seen, and the ratio of the p99s (target: <= 2).
The router runs on one core; the pusher on the other.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.common import SECRET, SERVER_CORE, pinned, python, start, stop, wait_ready
from tests.bench.load import rule_text
from tests.sinks import free_port

RULES = 1_000


def write(directory: Path, generation: int, change: str) -> None:
    text = "".join(rule_text(n) for n in range(RULES))
    if change == "all":
        text = text.replace("/hooks/", f"/hooks/g{generation}/")
    else:
        old = "Forward table 16 changes"
        text = text.replace(old, f"{old} ({generation})", 1)
    staged = directory.parent / "bench.toml.new"  # outside the watched directory
    staged.write_text(text)
    staged.replace(directory / "bench.toml")  # whole, as an editor or a ConfigMap writes


async def phase(url: str, rate: int, seconds: float) -> list[float]:
    """Answer times (s) of pushes sent on schedule for `seconds`."""
    latencies: list[float] = []
    async with aiohttp.ClientSession() as session:

        async def push(n: int) -> None:
            event = {
                "id": f"reload-{time.time_ns()}-{n}",
                "tableType": "PROFILE_TABLE",
                "tableId": str(16 + n % 50),
                "operation": "CREATE",
                "data": {"profileId": n, "emailAddress": f"p{n}@example.be"},
            }
            sent = time.perf_counter()
            async with session.post(url, json=event, headers={"X-Authorization": SECRET}) as r:
                if r.status != 202:
                    raise SystemExit(f"push answered {r.status}")
            latencies.append(time.perf_counter() - sent)

        started = time.monotonic()
        tasks = []
        n = 0
        while time.monotonic() - started < seconds:
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(push(n)))
            n += 1
        await asyncio.gather(*tasks)
    return latencies


async def reloading(directory: Path, every: float, seconds: float, change: str) -> int:
    generation = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds - every / 2:
        await asyncio.sleep(every)
        generation += 1
        write(directory, generation, change)
    return generation


def reloads_done(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith('router_rule_reloads_total{result="ok"}')
    )


def row(name: str, latencies: list[float]) -> tuple[str, float]:
    ms = sorted(x * 1000 for x in latencies)
    q = statistics.quantiles(ms, n=100)
    print(f"{name:<16} {len(ms):>7} {q[49]:>8.1f} {q[89]:>8.1f} {q[98]:>8.1f} {ms[-1]:>8.1f}")
    return name, q[98]


async def run(port: int, directory: Path, args: argparse.Namespace) -> None:
    url = f"http://127.0.0.1:{port}/webhooks/actito"
    await phase(url, args.rate, 2)  # warm up
    quiet = await phase(url, args.rate, args.seconds)
    before = reloads_done(port)
    busy, generations = await asyncio.gather(
        phase(url, args.rate, args.seconds),
        reloading(directory, args.every, args.seconds, args.change),
    )
    await asyncio.sleep(args.every)  # the last reload finishes
    reloads = reloads_done(port) - before
    print(f"{'phase':<16} {'pushes':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    _, p99_quiet = row("no reload", quiet)
    _, p99_busy = row("reloading", busy)
    print(
        f"{args.rate} pushes/s, {RULES} rules, {generations} rewrites, {reloads:.0f} reloads "
        f"({args.change} changed); p99 reloading / quiet: {p99_busy / p99_quiet:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=int, default=200, help="pushes/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--every", type=float, default=4.0, help="seconds between rewrites")
    parser.add_argument("--change", choices=("all", "one"), default="all")
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        rules = tmp / "rules"
        rules.mkdir()
        write(rules, 0, args.change)
        router = start(
            pinned(SERVER_CORE, [python(), "-m", "router", "serve", "--no-worker"]),
            env={
                "ROUTER_RULES_DIR": str(rules),
                "ROUTER_STORE_URL": f"sqlite:///{tmp / 'reload.db'}",
                "ROUTER_PORT": str(port),
                "ROUTER_WEBHOOK_SECRETS": SECRET,
                "ROUTER_LOG_LEVEL": "warning",
                "ROUTER_RELOAD": "true",
            },
            log=tmp / "router.log",
        )
        try:
            wait_ready(f"http://127.0.0.1:{port}/readyz", timeout=120)
            asyncio.run(run(port, rules, args))
        finally:
            stop(router)


if __name__ == "__main__":
    main()
