"""The Starlette receiver: the only place errors become HTTP status codes.

POST /webhooks/actito answers 202 only after every delivery job of the push is durably stored.
Every refusal is a JSON body {"error": "<one sentence>"}; no input produces a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from router.engine import Engine
from router.events import normalise, parse_body
from router.exceptions import BodyTooLarge, RejectedBody, StoreUnavailable
from router.metrics import Metrics
from router.store.base import Store

log = logging.getLogger("router.app")

ACCEPT_TIMEOUT = 10.0  # seconds a push may wait for the store before it is answered 503
READY_TIMEOUT = 3.0  # seconds /readyz waits for the store
JSON_MEDIA_TYPES = ("application/json", "text/json")
INTERNAL_ERROR_RETRY_AFTER = 5  # seconds a sender is asked to wait after an unexpected error
READY_CHECKS = ("store",)  # what /readyz checks, by the names `?exclude=` takes
INTAKE_PATHS = frozenset({"/webhooks/actito", "/webhooks/actito/"})


@dataclass
class ReloadStatus:
    """What /readyz and metrics say of the rule set: the last reload attempt and its result."""

    version: str
    ok: bool = True
    at: float | None = None
    errors: list[str] = field(default_factory=list)


@dataclass
class IntakeConfig:
    secrets: tuple[bytes, ...]  # accepted shared secrets; empty: intake is unauthenticated
    secret_header: str = "X-Authorization"
    max_body_bytes: int = 10 * 1024 * 1024
    max_records: int = 10_000


def create_app(
    engine: Engine,
    config: IntakeConfig,
    status: ReloadStatus,
    *,
    lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]] | None = None,
    extra: Sequence[BaseRoute] = (),
) -> Starlette:
    """The intake and the operations endpoints, and `extra` routes (the console's)."""
    metrics = engine.metrics

    def reject(reason: str, status_code: int, message: str) -> JSONResponse:
        metrics.requests_rejected.labels(reason=reason).inc()
        return JSONResponse({"error": message}, status_code=status_code)

    def authorised(request: Request) -> bool:
        if not config.secrets:
            return True
        # Header values arrive as bytes, which Starlette decodes as Latin-1: encoding them back
        # the same way gives the exact bytes the sender put there (a UTF-8 secret included).
        given = request.headers.get(config.secret_header, "").encode("latin-1")
        # Compare against every secret, so timing does not tell which one (or none) was close.
        results = [hmac.compare_digest(given, secret) for secret in config.secrets]
        return any(results)

    async def intake(request: Request) -> Response:
        if not authorised(request):
            return reject(
                "unauthorized", 401, f"missing or wrong secret in the {config.secret_header} header"
            )
        content_type = request.headers.get("content-type", "")
        media = content_type.split(";", 1)[0].strip().lower()
        if media and media not in JSON_MEDIA_TYPES and not media.endswith("+json"):
            return reject("unsupported_media_type", 415, f"content type {media} is not JSON")
        try:
            body = await _read_body(request, config.max_body_bytes)
        except BodyTooLarge:
            return reject(
                "too_large", 413, f"the body is larger than {config.max_body_bytes} bytes"
            )
        except ClientDisconnect:
            return reject("disconnected", 400, "the client disconnected before the body ended")
        try:
            records = normalise(parse_body(body))
        except RejectedBody as exc:
            reason = "malformed" if exc.status_code == 400 else "not_an_event"
            return reject(reason, exc.status_code, str(exc))
        if len(records) > config.max_records:
            return reject(
                "too_many_records",
                413,
                f"the push holds {len(records)} records; at most {config.max_records} are "
                "accepted at once (ROUTER_MAX_RECORDS)",
            )
        try:
            async with asyncio.timeout(ACCEPT_TIMEOUT):
                result = await engine.accept(records)
        except RecursionError:  # nesting deep enough to parse, too deep to serialise again
            return reject("malformed", 400, "the JSON body is nested too deeply")
        except (StoreUnavailable, TimeoutError) as exc:
            log.error(
                "cannot store a push: %s", exc or "timed out", extra={"records": len(records)}
            )
            response = reject("unavailable", 503, "the store is unavailable; retry later")
            response.headers["Retry-After"] = "5"
            return response
        event_id = records[0].get("id") if records else None
        log.debug(
            "push accepted",
            extra={"event_id": event_id, "records": len(records)},
        )
        # JSONResponse's own text (compact), written by orjson: a few µs less on every push.
        body = orjson.dumps({"accepted": result.accepted, "duplicates": result.duplicates})
        return Response(body, status_code=202, media_type="application/json")

    def describe() -> dict[str, Any]:
        return {
            "ruleset": engine.ruleset.version,
            "rules": len(engine.ruleset.enabled),
            "last_reload": {
                "ok": status.ok,
                "at": status.at,
                "version": status.version,
                "errors": status.errors,
            },
        }

    routes = [
        # The second is the same intake, not a redirect: a sender might not follow a 307 with
        # its body.
        *(Route(path, intake, methods=["POST"]) for path in sorted(INTAKE_PATHS)),
        *operations_routes(engine.store, metrics, describe, engine.clock),
        *extra,
    ]
    return starlette_app(routes, lifespan)


def create_worker_app(
    store: Store,
    metrics: Metrics,
    *,
    lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]] | None = None,
    extra: Sequence[BaseRoute] = (),
) -> Starlette:
    """Health, readiness and metrics of a `router worker` (it has no intake), and `extra`
    routes (the console's)."""
    return starlette_app(
        [*operations_routes(store, metrics, lambda: {"role": "worker"}, time.time), *extra],
        lifespan,
    )


def operations_routes(
    store: Store,
    metrics: Metrics,
    describe: Callable[[], dict[str, Any]],
    clock: Callable[[], float],
) -> list[Route]:
    """/healthz (alive), /readyz (the store answers; plus `describe()`), /metrics."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        # `?exclude=store` (as Kubernetes' own /readyz?exclude=…): the store is still asked and
        # reported, but its outage does not fail the answer. An intake probed this way stays in
        # its Service during a database outage, so senders get its JSON 503 with Retry-After
        # rather than a proxy's bare 502.
        excluded = request.query_params.getlist("exclude")
        unknown = sorted(set(excluded) - set(READY_CHECKS))
        if unknown:
            return JSONResponse(
                {
                    "error": f"unknown check {unknown[0]!r} in exclude; the checks are: "
                    + ", ".join(READY_CHECKS)
                },
                status_code=400,
            )
        failed: dict[str, str] = {}
        try:
            await asyncio.wait_for(store.ping(), READY_TIMEOUT)
        except (StoreUnavailable, TimeoutError) as exc:
            failed["store"] = f"store unavailable: {exc or 'timed out'}"
        ready = all(check in excluded for check in failed)
        body: dict[str, Any] = {"status": "ok" if ready else "unavailable", **describe()}
        if failed:
            body["problems"] = list(failed.values())
        if excluded:
            body["excluded"] = sorted(set(excluded))
        return JSONResponse(body, status_code=200 if ready else 503)

    async def metrics_endpoint(request: Request) -> Response:
        try:
            stats = await asyncio.wait_for(store.stats(now=clock()), READY_TIMEOUT)
        except (StoreUnavailable, TimeoutError):
            pass  # serve the counters anyway; the gauges keep their last values
        else:
            metrics.queue_depth.set(stats.pending)
            metrics.dead_jobs.set(stats.dead)
            metrics.oldest_pending_age.set(stats.oldest_pending_age or 0.0)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]


def starlette_app(
    routes: Sequence[BaseRoute],
    lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]] | None = None,
) -> Starlette:
    """A Starlette application serving `routes`, whose errors are JSON bodies: HTTP errors with
    their status, unexpected exceptions 503 (then re-raised, for ErrorBoundary to log)."""

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        # Its headers too: a 405 must say which methods are allowed (Allow).
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    async def internal_error(request: Request, exc: Exception) -> Response:
        # Starlette answers with this and then re-raises; ErrorBoundary logs and swallows it.
        return _internal_error_response()

    return Starlette(
        routes=list(routes),
        exception_handlers={HTTPException: http_error, Exception: internal_error},
        lifespan=lifespan,
    )


def _internal_error_response() -> JSONResponse:
    # A bug must not look like a rejection: 503 makes the sender retry, nothing is lost.
    return JSONResponse(
        {"error": "internal error; retry later"},
        status_code=503,
        headers={"Retry-After": str(INTERNAL_ERROR_RETRY_AFTER)},
    )


class ErrorBoundary:
    """The outermost ASGI layer: an exception that escapes the application is logged once and
    swallowed, and answered 503 if no answer has begun, so it never reaches the server (which
    would log it again and drop the connection, and with it any request pipelined behind).
    Lifespan events pass through untouched: a failing start-up must still stop the server."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except Exception:
            log.exception("unexpected error handling %s %r", scope["method"], scope["path"])
            if not started:
                # The server's send can itself be what failed; nothing more can be done then.
                with contextlib.suppress(Exception):
                    await _internal_error_response()(scope, receive, send)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


class PortSplit:
    """The intake and the operations endpoints on two ports of one server: requests to the
    `ops_port` reach everything but the webhook (health, readiness with its detail, metrics),
    requests to any other port the webhook only, and the paths under `public_prefixes` (the
    console, which asks for its own token). Everything else is a JSON 404, so the public port
    tells an outsider nothing about the router's state or rules."""

    def __init__(self, app: ASGIApp, ops_port: int, public_prefixes: Sequence[str] = ()) -> None:
        self.app = app
        self.ops_port = ops_port
        self.public_prefixes = tuple(public_prefixes)

    def _public(self, path: str) -> bool:
        if path in INTAKE_PATHS:
            return True
        return any(path == p or path.startswith(p + "/") for p in self.public_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            server = scope.get("server")
            on_ops_port = server is not None and server[1] == self.ops_port
            if on_ops_port == self._public(scope["path"]):
                response = JSONResponse({"error": "Not Found"}, status_code=404)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
