"""The ingest baseline: a bare Starlette endpoint that parses the JSON body and answers 202."""

from __future__ import annotations

import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def intake(request: Request) -> JSONResponse:
    payload = json.loads(await request.body())
    records = len(payload["data"]) if isinstance(payload.get("data"), list) else 1
    return JSONResponse({"accepted": records, "duplicates": 0}, status_code=202)


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[Route("/webhooks/actito", intake, methods=["POST"]), Route("/healthz", healthz)]
)
