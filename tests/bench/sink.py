"""A minimal, fast HTTP destination for benchmarks: answers 200 to any POST and can report
arrival times. Run: python tests/bench/sink.py PORT"""

from __future__ import annotations

import sys
import time

from aiohttp import web

arrivals: list[tuple[float, bytes]] = []


async def receive(request: web.Request) -> web.Response:
    body = await request.read()
    if request.app["record"]:
        arrivals.append((time.time(), body))
    return web.Response(status=200)


def make_app(record: bool = False) -> web.Application:
    app = web.Application()
    app["record"] = record
    app.router.add_post("/{tail:.*}", receive)
    return app


if __name__ == "__main__":
    web.run_app(make_app(), host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
