"""Push -> arrival latency through `router serve` (intake + worker, SQLite) at a fixed push rate.

    python tests/bench/latency.py [--rate N] [--seconds 10]

First measures the same router's ingest-only rate (`serve --no-worker`, wrk with 32
connections for --seconds), then pushes at half of it (or at --rate) through `router serve`
(intake and worker in one process). The router runs on one core; the pusher and the sink
share the other. Each push carries its send time; the sink notes the arrival time. Prints the
rates and p50/p90/p99/max in milliseconds (target: p99 <= 50 ms at half the ingest-only rate).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench import sink as sink_module
from tests.bench.common import SECRET, SERVER_CORE, pinned, python, start, stop, wait_ready
from tests.bench.ingest import wrk
from tests.sinks import free_port


async def measure(router_port: int, sink_port: int, rate: int, seconds: int) -> list[float]:
    runner = web.AppRunner(sink_module.make_app(record=True))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", sink_port).start()
    url = f"http://127.0.0.1:{router_port}/webhooks/actito"
    total = rate * seconds
    async with aiohttp.ClientSession() as session:

        async def push(n: int) -> None:
            event = {
                "id": f"lat-{n}",
                "tableType": "PROFILE_TABLE",
                "tableId": "16",
                "operation": "CREATE",
                "data": {"n": n, "sent": time.time()},
            }
            async with session.post(url, json=event, headers={"X-Authorization": SECRET}) as r:
                if r.status != 202:
                    raise SystemExit(f"push {n} answered {r.status}")

        started = time.monotonic()
        tasks = []
        for n in range(total):  # open loop: pushes go out on schedule, whatever the answers
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(push(n)))
        await asyncio.gather(*tasks)
        deadline = time.monotonic() + 60
        while len(sink_module.arrivals) < total and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    await runner.cleanup()
    seen: dict[int, float] = {}
    for arrived, body in sink_module.arrivals:
        data = json.loads(body)
        seen.setdefault(data["n"], arrived - data["sent"])
    if len(seen) < total:
        raise SystemExit(f"only {len(seen)} of {total} pushes arrived")
    return sorted(seen.values())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=int, help="pushes/s (default: half the ingest-only rate)")
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    router_port, sink_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "rules").mkdir()
        (tmp / "rules" / "forward.toml").write_text(
            f'[[rule]]\nname = "latency"\n[[rule.action]]\ntype = "http"\n'
            f'url = "http://127.0.0.1:{sink_port}/in"\n'
        )
        ingest_only = ingest_rate(tmp, args.seconds)
        rate = args.rate or max(1, round(ingest_only / 2))
        router = start(
            pinned(SERVER_CORE, [python(), "-m", "router", "serve"]),
            env={
                "ROUTER_RULES_DIR": str(tmp / "rules"),
                "ROUTER_STORE_URL": f"sqlite:///{tmp / 'latency.db'}",
                "ROUTER_PORT": str(router_port),
                "ROUTER_WEBHOOK_SECRETS": SECRET,
                "ROUTER_LOG_LEVEL": "warning",
            },
            log=tmp / "router.log",
        )
        try:
            wait_ready(f"http://127.0.0.1:{router_port}/readyz")
            latencies = asyncio.run(measure(router_port, sink_port, rate, args.seconds))
        finally:
            stop(router)
    ms = [x * 1000 for x in latencies]
    q = statistics.quantiles(ms, n=100)
    print("ingest-only/s  pushes/s  pushes   p50 ms   p90 ms   p99 ms   max ms")
    print(
        f"{ingest_only:>13.0f} {rate:>9} {len(ms):>7} {q[49]:>8.1f} {q[89]:>8.1f} "
        f"{q[98]:>8.1f} {max(ms):>8.1f}"
    )


def ingest_rate(tmp: Path, seconds: int) -> float:
    """Pushes/s `serve --no-worker` takes with the same rules (nothing is delivered)."""
    port = free_port()
    router = start(
        pinned(SERVER_CORE, [python(), "-m", "router", "serve", "--no-worker"]),
        env={
            "ROUTER_RULES_DIR": str(tmp / "rules"),
            "ROUTER_STORE_URL": f"sqlite:///{tmp / 'ingest-only.db'}",
            "ROUTER_PORT": str(port),
            "ROUTER_WEBHOOK_SECRETS": SECRET,
            "ROUTER_LOG_LEVEL": "warning",
            "ROUTER_RELOAD": "false",
        },
        log=tmp / "ingest-only.log",
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz")
        url = f"http://127.0.0.1:{port}/webhooks/actito"
        wrk(url, 2, 32)  # warm up
        return wrk(url, seconds, 32)
    finally:
        stop(router)


if __name__ == "__main__":
    main()
