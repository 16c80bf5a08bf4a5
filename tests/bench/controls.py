"""Delivery-controls benchmark: what ordering per key costs, and whether a destination's rate
holds under two worker processes.

    python tests/bench/controls.py [--jobs 10000] [--keys 1000] [--rounds 3]
                                   [--store URL ...] [--postgres URL] [--rate 50]
                                   [--window 20] [--only order,rate]

(a) order: a backlog of --jobs over --keys keys (accepted through the real engine, keys
    interleaved as a BULK push would bring them) drained by one in-process worker to a fast
    local sink, with `order_by` and without it, in interleaved rounds; prints both rates and
    their ratio (target >= 0.7). SQLite by default; --store adds (or replaces) stores.
(b) rate: a [[destination]] with `rate = "--rate/s"`, a backlog larger than the window needs,
    two `router worker` processes on one PostgreSQL store (--postgres, a server allowed to
    CREATE DATABASE; default ROUTER_TEST_POSTGRES_URL), measured at a real sink: the most
    requests in any --window seconds, against rate x window (target <= 1.1).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from router.engine import Engine
from router.matching import RuleSet
from router.rulefiles.loader import load_rules
from router.store import open_store
from tests.bench.common import (
    LOAD_CORE,
    SERVER_CORE,
    drain_backlog,
    median,
    pinned,
    python,
    start,
    stop,
    wait_port,
)
from tests.e2e.pg import fresh_database
from tests.sinks import free_port

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
PUSH = 500  # records per accept() while building a backlog
CONCURRENCY = 64
DRAIN_SECONDS = 600.0  # give up on a rate run after this long


def ruleset(directory: Path, text: str) -> RuleSet:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bench.toml").write_text(text)
    return load_rules(directory)


def order_rules(sink: str, ordered: bool) -> str:
    order = 'order_by = "{{ data.profileId }}"\n' if ordered else ""
    return f'[[rule]]\nname = "bench"\n[[rule.action]]\ntype = "http"\nurl = "{sink}"\n{order}'


async def accept_backlog(url: str, rules: RuleSet, jobs: int, keys: int) -> None:
    store = open_store(url)
    await store.open()
    engine = Engine(store, rules, dedupe_window=0)
    await engine.declare_destinations()
    for start_at in range(0, jobs, PUSH):
        records = [
            {
                "id": f"bench-{n}",
                "tableType": "PROFILE_TABLE",
                "operation": "UPDATE",
                "data": {"n": n, "profileId": n % keys},
            }
            for n in range(start_at, min(jobs, start_at + PUSH))
        ]
        await engine.accept(records)
    await store.close()


def bench_order(args: argparse.Namespace, directory: Path) -> None:
    port = free_port()
    sink_proc = start(pinned(LOAD_CORE, [python(), "tests/bench/sink.py", str(port)]))
    sink = f"http://127.0.0.1:{port}/hook"
    stores = args.store or [f"sqlite:///{directory}/order.db"]
    results: dict[tuple[str, bool], list[float]] = {}
    try:
        wait_port(port)
        for round_number in range(args.rounds):
            for url in stores:
                for ordered in (False, True):  # interleaved: the machine is shared
                    name = url.split(":", 1)[0]
                    rules = ruleset(directory / f"rules-{ordered}", order_rules(sink, ordered))
                    run = fresh(url, directory, f"order-{round_number}-{ordered}")
                    with run as store_url:
                        asyncio.run(accept_backlog(store_url, rules, args.jobs, args.keys))
                        rate, _ = asyncio.run(drain_backlog(store_url, CONCURRENCY))
                    results.setdefault((name, ordered), []).append(rate)
                    label = "order_by" if ordered else "unordered"
                    print(f"  round {round_number + 1} {name} {label}: {rate:.0f}/s")
    finally:
        stop(sink_proc)
    print(
        f"(a) ordering: {args.jobs} jobs over {args.keys} keys, one worker, concurrency "
        f"{CONCURRENCY}, median of {args.rounds}"
    )
    print(f"{'store':<12} {'unordered/s':>12} {'order_by/s':>11} {'ratio':>6}")
    for url in stores:
        name = url.split(":", 1)[0]
        plain, ordered = median(results[name, False]), median(results[name, True])
        print(f"{name:<12} {plain:>12.0f} {ordered:>11.0f} {ordered / plain:>6.2f}")


class fresh:
    """A store URL for one measurement: a new SQLite file, or a fresh PostgreSQL database."""

    def __init__(self, url: str, directory: Path, name: str) -> None:
        self.url, self.directory, self.name = url, directory, name
        self._database: object = None

    def __enter__(self) -> str:
        if self.url.startswith("sqlite"):
            return f"sqlite:///{self.directory}/{self.name}.db"
        self._database = fresh_database(self.url)
        return self._database.__enter__()  # type: ignore[attr-defined,no-any-return]

    def __exit__(self, *exc: object) -> None:
        if self._database is not None:
            self._database.__exit__(*exc)  # type: ignore[attr-defined]


def bench_rate(args: argparse.Namespace, directory: Path) -> None:
    port = free_port()
    sink_proc = start(pinned(LOAD_CORE, [python(), __file__, "--sink", str(port)]))
    procs = []
    jobs = int(args.rate * (args.window + 10) * 1.5)  # more than the workers can send
    try:
        wait_port(port)
        sink = f"http://127.0.0.1:{port}/hook/"
        text = f'[[destination]]\nurl = "{sink}"\nrate = "{args.rate}/s"\n\n' + order_rules(
            sink + "{{ data.n }}", False
        )
        rules = ruleset(directory / "rules-rate", text)
        with fresh_database(args.postgres) as url:
            asyncio.run(accept_backlog(url, rules, jobs, jobs))
            env = {
                "ROUTER_STORE_URL": url,
                "ROUTER_CONCURRENCY": str(CONCURRENCY),
                "ROUTER_PER_HOST_CONCURRENCY": str(CONCURRENCY),
                "ROUTER_LOG_LEVEL": "warning",
            }
            for n in range(2):
                own = {**env, "ROUTER_WORKER_PORT": str(free_port())}
                log = directory / f"worker-{n}.log"
                procs.append(start([python(), "-m", "router", "worker"], env=own, log=log))
            deadline = time.monotonic() + DRAIN_SECONDS
            while True:  # until the window (and a margin either side) has passed at the sink
                seen = httpx.get(f"http://127.0.0.1:{port}/stats", timeout=5).json()
                arrivals, distinct = seen["arrivals"], seen["distinct"]
                if arrivals and arrivals[-1] - arrivals[0] >= args.window + 4:
                    break
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise SystemExit(f"the workers did not deliver; see {directory}")
                time.sleep(0.5)
    finally:
        for proc in procs:
            stop(proc)
        stop(sink_proc)
    most = 0
    first = 0
    for last, at in enumerate(arrivals):  # the busiest window: two pointers over arrival times
        while at - arrivals[first] > args.window:
            first += 1
        most = max(most, last - first + 1)
    allowed = args.rate * args.window
    steady = (arrivals[-1] - arrivals[0]) and (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    print(
        f"(b) rate: destination rate {args.rate}/s, two `router worker` processes on "
        "PostgreSQL, measured at the sink"
    )
    widths = {"window s": 8, "most requests": 14, "rate x window": 14, "ratio": 6}
    widths.update({"mean/s": 7, "repeats": 8})
    print(" ".join(f"{name:>{width}}" for name, width in widths.items()))
    print(
        f"{args.window:>8} {most:>14} {allowed:>14.0f} {most / allowed:>6.2f} {steady:>7.1f} "
        f"{len(arrivals) - distinct:>8}"
    )


def serve_sink(port: int) -> None:
    """An HTTP destination recording arrival times; GET /stats -> the list."""
    from aiohttp import web

    arrivals: list[float] = []
    paths: set[str] = set()

    async def receive(request: web.Request) -> web.Response:
        await request.read()
        arrivals.append(time.time())
        paths.add(request.path)
        return web.Response()

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"arrivals": arrivals, "distinct": len(paths)})

    app = web.Application()
    app.router.add_get("/stats", stats)
    app.router.add_post("/{tail:.*}", receive)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--store", action="append", help="store URL(s) for (a); default SQLite")
    parser.add_argument(
        "--postgres", default=os.environ.get("ROUTER_TEST_POSTGRES_URL", DEFAULT_POSTGRES)
    )
    parser.add_argument("--rate", type=int, default=50, help="requests/s of (b)'s destination")
    parser.add_argument("--window", type=int, default=20, help="seconds of (b)'s window")
    parser.add_argument("--only", default="order,rate")
    parser.add_argument("--sink", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        serve_sink(args.sink)
        return
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {int(SERVER_CORE)})
    with tempfile.TemporaryDirectory() as tmp_name:
        directory = Path(tmp_name)
        if "order" in args.only:
            bench_order(args, directory)
        if "rate" in args.only:
            bench_rate(args, directory)


if __name__ == "__main__":
    main()
