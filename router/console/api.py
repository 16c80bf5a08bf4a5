"""/api/v1: everything the console's pages show and do, as JSON, for a bearer token.

A missing or wrong token gets 401 and nothing else (no detail, nothing that tells a wrong
token from a missing one); a viewer's token gets 403 on what would change something. Bad
parameters get 400 with one sentence; the store's outage 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from router.console import openapi, queries
from router.console.auth import Access, Role
from router.console.params import (
    NOT_A_PAUSE,
    BadParameter,
    event_query,
    flag,
    job_query,
    pause_request,
)
from router.console.queries import Sources
from router.exceptions import RejectedBody, StoreUnavailable

MAX_TRY_BYTES = 1024 * 1024  # largest event the try endpoint takes
MAX_FILTER_BYTES = 16 * 1024  # largest replay filter, or pause, body
RETRY_AFTER = "5"

Handler = Callable[[Request, Role], Awaitable[Any]]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def unauthorized() -> Response:
    return Response(status_code=401, headers={"WWW-Authenticate": "Bearer"})


def api_routes(src: Sources, access: Access) -> list[Route]:
    def endpoint(handler: Handler, *, changes: bool = False) -> Callable[..., Any]:
        async def run(request: Request) -> Response:
            role = access.bearer(request.headers.get("authorization"))
            if role is None:
                return unauthorized()
            if changes and role is not Role.OPERATOR:
                return _error(
                    403, "this token may only read; replay and pause need an operator's token"
                )
            try:
                found = await handler(request, role)
            except BadParameter as exc:
                return _error(400, str(exc))
            except StoreUnavailable:
                response = _error(503, "the store is unavailable; retry later")
                response.headers["Retry-After"] = RETRY_AFTER
                return response
            if isinstance(found, Response):
                return found
            return JSONResponse(found, headers={"Cache-Control": "no-store"})

        return run

    async def overview(request: Request, role: Role) -> Any:
        return await queries.overview(src)

    async def rules(request: Request, role: Role) -> Any:
        return await queries.rules(src)

    async def events(request: Request, role: Role) -> Any:
        return await queries.events(src, event_query(request.query_params))

    async def event(request: Request, role: Role) -> Any:
        number = _number(request.path_params["event"])
        found = None
        if number is not None:
            explain = flag(request.query_params, "explain")
            found = await queries.event(src, number, explain=explain)
        return found if found is not None else _error(404, "no such record")

    async def jobs(request: Request, role: Role) -> Any:
        return await queries.jobs(src, job_query(request.query_params))

    async def count(request: Request, role: Role) -> Any:
        return await queries.count(src, job_query(request.query_params, paged=False))

    async def job(request: Request, role: Role) -> Any:
        found = await queries.job(src, request.path_params["job_id"])
        return found if found is not None else _error(404, "no such job")

    async def replay(request: Request, role: Role) -> Any:
        return await queries.replay(src, [request.path_params["job_id"]])

    async def replay_dead(request: Request, role: Role) -> Any:
        filters = await _json_body(request, "the body must be a JSON object of filters")
        if not isinstance(filters, dict):
            raise BadParameter("the body must be a JSON object of filters")
        unknown = sorted(set(filters) - {"rule", "destination", "since", "until"})
        if unknown:
            raise BadParameter(
                f"unknown filter {unknown[0]!r}; the filters are rule, destination, since, until"
            )
        return await queries.replay_matching(src, job_query(filters, paged=False))

    async def pauses(request: Request, role: Role) -> Any:
        return await queries.pauses(src)

    async def pause(request: Request, role: Role) -> Any:
        body = await _json_body(request, NOT_A_PAUSE)
        return await queries.pause(src, *pause_request(body))

    async def resume(request: Request, role: Role) -> Any:
        body = await _json_body(request, NOT_A_PAUSE)
        return await queries.resume(src, *pause_request(body))

    async def try_event(request: Request, role: Role) -> Any:
        body = await _body(request, MAX_TRY_BYTES)
        try:
            return await asyncio.to_thread(queries.try_event, src, body)
        except RejectedBody as exc:
            return _error(exc.status_code, str(exc))
        except RecursionError:
            return _error(400, "the JSON body is nested too deeply")

    async def schema(request: Request, role: Role) -> Any:
        return openapi.document()

    return [
        Route("/openapi.json", endpoint(schema)),
        Route("/overview", endpoint(overview)),
        Route("/rules", endpoint(rules)),
        Route("/events", endpoint(events)),
        Route("/events/{event}", endpoint(event)),
        Route("/jobs", endpoint(jobs)),
        Route("/jobs/count", endpoint(count)),
        Route("/jobs/{job_id}", endpoint(job)),
        Route("/jobs/{job_id}/replay", endpoint(replay, changes=True), methods=["POST"]),
        Route("/dead/replay", endpoint(replay_dead, changes=True), methods=["POST"]),
        Route("/pauses", endpoint(pauses), methods=["GET"]),
        Route("/pauses", endpoint(pause, changes=True), methods=["POST"]),
        Route("/pauses/resume", endpoint(resume, changes=True), methods=["POST"]),
        Route("/try", endpoint(try_event), methods=["POST"]),
    ]


def _number(text: str) -> int | None:
    """A record's number from a path, or None when it cannot be one."""
    if text.isascii() and text.isdigit() and len(text) <= 18:
        return int(text)
    return None


async def _json_body(request: Request, not_json: str) -> Any:
    """A small JSON body (at most MAX_FILTER_BYTES), or BadParameter saying `not_json`."""
    body = await _body(request, MAX_FILTER_BYTES)
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise BadParameter(not_json) from None


async def _body(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadParameter(f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
