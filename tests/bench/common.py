"""Shared pieces of the benchmarks: processes pinned to cores, readiness, rule generation."""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
SECRET = "bench-secret"
SERVER_CORE = "0"  # the server under test
LOAD_CORE = "1"  # the load generator / sink


def pinned(core: str, argv: Sequence[str]) -> list[str]:
    """Prefix `argv` with taskset when the machine has it and more than one core."""
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", core, *argv]
    return list(argv)


def start(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    log: Path | None = None,
) -> subprocess.Popen[bytes]:
    out = log.open("wb") if log else subprocess.DEVNULL
    return subprocess.Popen(
        list(argv),
        env={**os.environ, **(env or {})},
        cwd=cwd or REPO,
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def wait_ready(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not come up within {timeout} s")


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} did not open within {timeout} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def write_rules(directory: Path, count: int, url: str) -> None:
    """`count` rules spread over tables and operations, one rule per (table, operation) up to
    count/5 tables (at least 20), so a push of the benchmarks (tables 16 to 35) matches one rule
    whatever the size of the set; every rule forwards to `url`."""
    directory.mkdir(parents=True, exist_ok=True)
    operations = ["CREATE", "UPDATE", "UPDATED_SUBSCRIPTION", "UPDATED_SEGMENT", "DELETE"]
    tables = max(20, count // len(operations))
    lines = []
    for n in range(count):
        table = 16 + n % tables
        operation = operations[(n // tables) % len(operations)]
        lines.append(
            f'[[rule]]\nname = "bench-{n}"\n[rule.match]\ntableType = "PROFILE_TABLE"\n'
            f'tableId = "{table}"\noperation = "{operation}"\n'
            + ('fields = ["emailAddress"]\n' if n % 3 == 0 else "")
            + f'[[rule.action]]\ntype = "http"\nurl = "{url}"\n\n'
        )
    (directory / "bench.toml").write_text("".join(lines))


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def python() -> str:
    return sys.executable


async def drain_backlog(url: str, concurrency: int | None = None) -> tuple[float, int]:
    """Drain a store's backlog with one worker (in this process) to wherever its jobs go:
    deliveries per second, and how many. Refuses to report a drain that left jobs pending or
    dead. `concurrency`: the worker's and per host (default: the settings' defaults)."""
    import asyncio

    from router.actions.registry import build_deliverers
    from router.retry import RetryPolicy
    from router.settings import Settings
    from router.store import open_store
    from router.worker import Worker, WorkerLimits

    settings = (
        Settings()
        if concurrency is None
        else Settings(concurrency=concurrency, per_host_concurrency=concurrency)
    )
    store = open_store(url)
    await store.open()
    deliverers = build_deliverers(settings)
    for deliverer in deliverers.values():
        await deliverer.start()
    worker = Worker(
        store,
        deliverers,
        RetryPolicy.from_settings(settings),
        secrets={},
        limits=WorkerLimits(
            concurrency=settings.concurrency, per_host=settings.per_host_concurrency
        ),
    )
    started = time.perf_counter()
    await worker.run(asyncio.Event(), drain=True)
    elapsed = time.perf_counter() - started
    for deliverer in deliverers.values():
        await deliverer.close()
    stats = await store.stats(now=time.time())
    await store.close()
    if stats.pending or stats.dead:
        raise SystemExit(f"{stats.pending} pending and {stats.dead} dead after the drain")
    return worker.delivered / elapsed, worker.delivered
