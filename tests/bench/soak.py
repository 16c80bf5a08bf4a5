"""Soak: records pushed through one `router serve` (intake and worker, SQLite) for a long time,
every one delivered twice (an http action to a real sink, a log action to the router's log),
with a short retention (and dedupe window) so purging runs all along.

    python tests/bench/soak.py [--records 1000000] [--batch 100] [--retention 60]

Pushes BULK events of --batch records from a few concurrent senders, holding back while more
than --backlog records wait for delivery (so the store holds what the retention keeps, not a
growing queue). Every --every records it prints the router's RSS, the store's size on disk
(database and WAL) and what has arrived. At the end it checks: every record arrived at the sink
and in the log, no error line in the log, and RSS at the end within 10 % of RSS at 200,000
records. The router runs on one core, the senders and the sink on the other.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.common import SECRET, SERVER_CORE, pinned, python, wait_ready
from tests.sinks import free_port

MARK = "soak record"  # the log action's message starts so
SENDERS = 4  # concurrent pushes
LOG_ERRORS_KEPT = 5


class Arrivals:
    """Which records arrived at the sink (a bit per record) and in the log."""

    def __init__(self, records: int) -> None:
        self.http = bytearray(records)
        self.http_count = 0
        self.http_repeats = 0
        self.logged = 0
        self.errors: list[str] = []

    def arrived(self, n: int) -> None:
        if self.http[n]:
            self.http_repeats += 1  # at-least-once: allowed, counted
        else:
            self.http[n] = 1
            self.http_count += 1


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def store_mib(database: Path) -> float:
    files = [database, Path(f"{database}-wal"), Path(f"{database}-shm")]
    return sum(f.stat().st_size for f in files if f.exists()) / 2**20


def read_log(stream: object, arrivals: Arrivals) -> None:
    """Count the log action's lines and keep the first error lines (the router logs JSON)."""
    for raw in stream:  # type: ignore[attr-defined]
        line = raw.decode("utf-8", "replace")
        if MARK in line:
            arrivals.logged += 1
        try:
            level = str(json.loads(line).get("level", "")).lower()
        except (ValueError, AttributeError):
            level = "error" if "Traceback" in line or "ERROR" in line else ""
        if level in ("error", "critical") and len(arrivals.errors) < LOG_ERRORS_KEPT:
            arrivals.errors.append(line.strip()[:300])


async def soak(
    args: argparse.Namespace,
    router_port: int,
    sink_port: int,
    pid: int,
    database: Path,
    arrivals: Arrivals,
) -> list[tuple[int, float, float, int, int]]:
    async def receive(request: web.Request) -> web.Response:
        arrivals.arrived(json.loads(await request.read())["n"])
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/{tail:.*}", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", sink_port).start()
    url = f"http://127.0.0.1:{router_port}/webhooks/actito"
    rows: list[tuple[int, float, float, int, int]] = []
    pushes = args.records // args.batch
    next_push = 0
    started = time.monotonic()

    def report(sent: int) -> None:
        rows.append((sent, rss_mib(pid), store_mib(database), arrivals.http_count, arrivals.logged))
        sent_, rss, size, http, logged = rows[-1]
        print(
            f"{sent_:>9,} {rss:>9.1f} {size:>9.1f} {http:>11,} {logged:>10,} "
            f"{time.monotonic() - started:>8.0f}",
            flush=True,
        )

    async with aiohttp.ClientSession() as session:

        async def sender() -> None:
            nonlocal next_push
            while next_push < pushes:
                push = next_push
                next_push += 1
                while push * args.batch - arrivals.http_count > args.backlog:
                    await asyncio.sleep(0.05)  # hold back: the worker is behind
                first = push * args.batch
                event = {
                    "id": f"soak-{push}",
                    "tableType": "PROFILE_TABLE",
                    "tableId": "16",
                    "operation": "CREATE",
                    "eventType": "DATA",
                    "fields": ["emailAddress"],
                    "data": [
                        {"n": n, "emailAddress": f"p{n}@example.be"}
                        for n in range(first, first + args.batch)
                    ],
                }
                headers = {"X-Authorization": SECRET}
                async with session.post(url, json=event, headers=headers) as response:
                    if response.status != 202:
                        raise SystemExit(f"push {push} answered {response.status}")
                sent = (push + 1) * args.batch
                if sent % args.every == 0:
                    report(sent)

        print(
            f"{'records':>9} {'RSS MiB':>9} {'store MiB':>9} {'http seen':>11} "
            f"{'log seen':>10} {'s':>8}",
            flush=True,
        )
        await asyncio.gather(*(sender() for _ in range(SENDERS)))
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and (
            arrivals.http_count < pushes * args.batch or arrivals.logged < pushes * args.batch
        ):
            await asyncio.sleep(0.2)
        report(pushes * args.batch)  # everything delivered (or the deadline passed)
        # Let a purge pass after the last deliveries' retention, and measure the store again.
        await asyncio.sleep(args.retention * 1.5)
        report(pushes * args.batch)
    await runner.cleanup()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=100, help="records per push")
    parser.add_argument("--every", type=int, default=100_000, help="records between rows")
    parser.add_argument("--retention", type=float, default=60.0, help="ROUTER_RETENTION, s")
    parser.add_argument("--backlog", type=int, default=20_000, help="records not yet delivered")
    args = parser.parse_args()
    router_port, sink_port = free_port(), free_port()
    arrivals = Arrivals(args.records)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "rules").mkdir()
        (tmp / "rules" / "soak.toml").write_text(
            '[[rule]]\nname = "soak"\n[rule.match]\ntableType = "PROFILE_TABLE"\n'
            f'[[rule.action]]\ntype = "http"\nurl = "http://127.0.0.1:{sink_port}/in"\n'
            f'[[rule.action]]\ntype = "log"\nmessage = "{MARK} {{{{ data.n }}}}"\n'
        )
        database = tmp / "soak.db"
        router = subprocess.Popen(
            pinned(SERVER_CORE, [python(), "-m", "router", "serve"]),
            env={
                **os.environ,
                "ROUTER_RULES_DIR": str(tmp / "rules"),
                "ROUTER_STORE_URL": f"sqlite:///{database}",
                "ROUTER_PORT": str(router_port),
                "ROUTER_WEBHOOK_SECRETS": SECRET,
                "ROUTER_LOG_LEVEL": "info",
                "ROUTER_RETENTION": str(args.retention),
                # Dedupe keys are kept for their own window (a day by default): as short as
                # the retention, so that everything the store keeps is bounded in this run.
                "ROUTER_DEDUPE_WINDOW": str(args.retention),
                "ROUTER_RELOAD": "false",
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        reader = threading.Thread(target=read_log, args=(router.stdout, arrivals), daemon=True)
        reader.start()
        try:
            wait_ready(f"http://127.0.0.1:{router_port}/readyz")
            rows = asyncio.run(soak(args, router_port, sink_port, router.pid, database, arrivals))
        finally:
            router.terminate()
            router.wait(60)
    verdicts = check(args, rows, arrivals)
    for line in verdicts:
        print(line)
    if any(line.startswith("FAIL") for line in verdicts):
        raise SystemExit(1)


def check(
    args: argparse.Namespace, rows: list[tuple[int, float, float, int, int]], arrivals: Arrivals
) -> list[str]:
    total = args.records // args.batch * args.batch
    out = []
    at_200k = next((rss for sent, rss, *_ in rows if sent >= 200_000), None)
    end_rss = rows[-1][1]
    if at_200k:
        ok = end_rss <= at_200k * 1.10
        out.append(
            f"{'ok' if ok else 'FAIL'}: RSS at the end {end_rss:.1f} MiB, at 200,000 "
            f"records {at_200k:.1f} MiB ({end_rss / at_200k - 1:+.1%}; limit +10 %)"
        )
    else:
        out.append("n/a: fewer than 200,000 records pushed, no RSS comparison")
    out.append(
        f"{'ok' if arrivals.http_count == total else 'FAIL'}: {arrivals.http_count:,} "
        f"of {total:,} records arrived at the sink ({arrivals.http_repeats} repeats)"
    )
    out.append(
        f"{'ok' if arrivals.logged >= total else 'FAIL'}: {arrivals.logged:,} log "
        f"action lines for {total:,} records"
    )
    out.append(
        f"{'ok' if not arrivals.errors else 'FAIL'}: error lines in the log: "
        f"{len(arrivals.errors)}{' ' + arrivals.errors[0] if arrivals.errors else ''}"
    )
    sizes = [size for *_, size, _http, _log in rows]
    out.append(f"store size: largest {max(sizes):.1f} MiB, at the end {sizes[-1]:.1f} MiB")
    return out


if __name__ == "__main__":
    main()
