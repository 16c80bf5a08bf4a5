"""Scale-out benchmark: PostgreSQL against SQLite, and one `router worker` against two.

    python tests/bench/scale.py [--rounds 3] [--seconds 5] [--jobs 20000] [--postgres URL]
                                [--only ingest,delivery,workers]

(a) ingest: tests/bench/ingest.py's measurement (router --no-worker on one core, wrk on the
    other, against a bare Starlette endpoint) with a SQLite store and with a PostgreSQL store.
(b) delivery: tests/bench/delivery.py (one in-process worker draining a backlog to a fast sink)
    with both stores.
(c) workers: a backlog of --jobs on PostgreSQL drained by 1 and by 2 `router worker` processes
    into a counting sink; time from the first delivery to the last, and deliveries/s.

Rounds are interleaved (SQLite, PostgreSQL, SQLite, ...) and medians are printed, since the
machine is small and shared. --postgres names a server allowed to CREATE DATABASE (default:
ROUTER_TEST_POSTGRES_URL); each measurement gets a fresh database, dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from router.store import open_store
from tests.bench import ingest
from tests.bench.common import REPO, median, python, start, stop, wait_port
from tests.bench.delivery import backlog
from tests.e2e.pg import fresh_database
from tests.sinks import free_port

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
DRAIN_SECONDS = 300.0  # give up on a drain after this long
STORES = ("sqlite", "postgresql")


@dataclass
class Options:
    rounds: int
    seconds: int
    jobs: int
    connections: int
    concurrency: int
    postgres: str


@contextmanager
def store_url(kind: str, options: Options, directory: Path) -> Iterator[str]:
    """A fresh, empty store of `kind` for one measurement."""
    if kind == "sqlite":
        path = directory / f"bench-{time.monotonic_ns()}.db"
        yield f"sqlite:///{path}"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    else:
        with fresh_database(options.postgres) as url:
            yield url


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(
                cell.rjust(w) if i else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    print()


# -- (a) ingest ---------------------------------------------------------------------------------


def bench_ingest(options: Options, directory: Path) -> None:
    rates: dict[str, list[tuple[float, float]]] = {kind: [] for kind in STORES}
    for round_number in range(options.rounds):
        for kind in STORES:
            with store_url(kind, options, directory) as url:
                bare, routed = ingest.run(url, options.seconds, 1, options.connections)
            rates[kind].append((bare, routed))
            print(
                f"  ingest round {round_number + 1} {kind}: "
                f"router {routed:.0f}/s, bare {bare:.0f}/s"
            )
    routed_sqlite = median([r for _, r in rates["sqlite"]])
    rows = []
    for kind in STORES:
        bare = median([b for b, _ in rates[kind]])
        routed = median([r for _, r in rates[kind]])
        vs_bare = median([r / b for b, r in rates[kind]])
        rows.append(
            (kind, f"{bare:.0f}", f"{routed:.0f}", f"{vs_bare:.2f}", ratio(routed, routed_sqlite))
        )
    print(
        f"(a) ingest, {options.connections} connections, "
        f"median of {options.rounds} x {options.seconds} s"
    )
    table(("store", "bare req/s", "router req/s", "router/bare", "vs sqlite"), rows)


# -- (b) delivery -------------------------------------------------------------------------------

_DELIVERY_LINE = re.compile(r"^(\w+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$")


def bench_delivery(options: Options, directory: Path) -> None:
    worker: dict[str, list[float]] = {kind: [] for kind in STORES}
    raw: list[float] = []
    for round_number in range(options.rounds):
        with (
            store_url("sqlite", options, directory) as lite,
            store_url("postgresql", options, directory) as pg,
        ):
            out = subprocess.run(
                [
                    python(),
                    "tests/bench/delivery.py",
                    "--jobs",
                    str(options.jobs),
                    "--concurrency",
                    str(options.concurrency),
                    "--store",
                    lite,
                    "--store",
                    pg,
                ],
                cwd=REPO,
                capture_output=True,
                text=True,
                check=True,
                timeout=DRAIN_SECONDS * 2,
            ).stdout
        for line in out.splitlines():
            match = _DELIVERY_LINE.match(line.strip())
            if match:
                worker[match.group(1)].append(float(match.group(3)))
                raw.append(float(match.group(4)))
        print(
            f"  delivery round {round_number + 1}: "
            + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in worker.items())
        )
    baseline = median(raw)
    rate_sqlite = median(worker["sqlite"])
    rows = [
        (
            kind,
            f"{median(worker[kind]):.0f}",
            f"{baseline:.0f}",
            ratio(median(worker[kind]), baseline),
            ratio(median(worker[kind]), rate_sqlite),
        )
        for kind in STORES
    ]
    print(
        f"(b) delivery, one in-process worker, {options.jobs} jobs, "
        f"concurrency {options.concurrency}, median of {options.rounds}"
    )
    table(("store", "worker/s", "raw client/s", "worker/raw", "vs sqlite"), rows)


# -- (c) worker processes -----------------------------------------------------------------------


@dataclass
class Drain:
    seconds: float  # first delivery to last
    wall: float  # worker processes started to backlog drained (includes their start-up)
    deliveries: int

    @property
    def rate(self) -> float:
        return self.deliveries / self.seconds if self.seconds > 0 else 0.0


def sink_stats(port: int) -> dict[str, float]:
    stats: dict[str, float] = httpx.get(f"http://127.0.0.1:{port}/stats", timeout=5).json()
    return stats


def drain_with_workers(options: Options, directory: Path, workers: int) -> Drain:
    port = free_port()
    sink = start([python(), __file__, "--sink", str(port)])
    procs: list[subprocess.Popen[bytes]] = []
    try:
        wait_port(port)
        with store_url("postgresql", options, directory) as url:
            asyncio.run(backlog(url, f"http://127.0.0.1:{port}/hook", options.jobs, directory))
            env = {
                "ROUTER_STORE_URL": url,
                "ROUTER_CONCURRENCY": str(options.concurrency),
                # One destination: let a worker use all its concurrency on it.
                "ROUTER_PER_HOST_CONCURRENCY": str(options.concurrency),
                "ROUTER_LOG_LEVEL": "warning",
            }
            started = time.perf_counter()
            for n in range(workers):
                own = {**env, "ROUTER_WORKER_PORT": str(free_port())}
                log = directory / f"worker-{workers}-{n}.log"
                procs.append(start([python(), "-m", "router", "worker"], env=own, log=log))
            deadline = started + DRAIN_SECONDS
            stats = sink_stats(port)
            while stats["count"] < options.jobs:
                if time.perf_counter() > deadline:
                    raise SystemExit(f"only {stats['count']} of {options.jobs} delivered")
                if any(proc.poll() is not None for proc in procs):
                    raise SystemExit(f"a worker exited; see {directory}")
                time.sleep(0.05)
                stats = sink_stats(port)
            wall = time.perf_counter() - started
            left = asyncio.run(pending(url))
            for proc in procs:
                stop(proc)
            if left:
                raise SystemExit(f"{left} jobs still pending after the drain")
        return Drain(stats["last"] - stats["first"], wall, int(stats["count"]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                stop(proc)
        stop(sink)


async def pending(url: str) -> int:
    store = open_store(url)
    await store.open()
    try:
        return (await store.stats(now=time.time())).pending
    finally:
        await store.close()


def bench_workers(options: Options, directory: Path) -> None:
    results: dict[int, list[Drain]] = {1: [], 2: []}
    for round_number in range(options.rounds):
        for workers in results:
            drain = drain_with_workers(options, directory, workers)
            results[workers].append(drain)
            print(
                f"  workers round {round_number + 1}, {workers} process(es): "
                f"{drain.rate:.0f}/s, {drain.seconds:.1f} s"
            )
    one = median([d.rate for d in results[1]])
    rows = []
    for workers, drains in results.items():
        rate = median([d.rate for d in drains])
        rows.append(
            (
                str(workers),
                f"{median([d.seconds for d in drains]):.1f}",
                f"{median([d.wall for d in drains]):.1f}",
                f"{rate:.0f}",
                ratio(rate, one),
                str(max(d.deliveries for d in drains) - options.jobs),
            )
        )
    print(
        f"(c) `router worker` processes on PostgreSQL, {options.jobs} jobs, "
        f"concurrency {options.concurrency} each, median of {options.rounds}"
    )
    table(("workers", "drain s", "wall s", "deliveries/s", "vs 1", "repeats"), rows)


# -- the counting sink --------------------------------------------------------------------------


def serve_sink(port: int) -> None:
    """A fast HTTP destination counting POSTs; GET /stats -> {count, first, last}."""
    from aiohttp import web

    state: dict[str, float] = {"count": 0, "first": 0.0, "last": 0.0}

    async def receive(request: web.Request) -> web.Response:
        await request.read()
        now = time.time()
        if not state["count"]:
            state["first"] = now
        state["count"] += 1
        state["last"] = now
        return web.Response()

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(state)

    app = web.Application()
    app.router.add_get("/stats", stats)
    app.router.add_post("/{tail:.*}", receive)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5, help="wrk seconds per ingest round")
    parser.add_argument("--jobs", type=int, default=20_000, help="backlog size for (b) and (c)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--postgres", default=os.environ.get("ROUTER_TEST_POSTGRES_URL", DEFAULT_POSTGRES)
    )
    parser.add_argument("--only", default="ingest,delivery,workers")
    parser.add_argument("--sink", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink:
        serve_sink(args.sink)
        return
    options = Options(
        args.rounds, args.seconds, args.jobs, args.connections, args.concurrency, args.postgres
    )
    parts: dict[str, Callable[[Options, Path], None]] = {
        "ingest": bench_ingest,
        "delivery": bench_delivery,
        "workers": bench_workers,
    }
    wanted = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in parts]
    if unknown:
        raise SystemExit(f"unknown part(s) {unknown}; choose from {list(parts)}")
    print(f"cores: {os.cpu_count()}, load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp_name:
        for name in wanted:
            parts[name](options, Path(tmp_name))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
