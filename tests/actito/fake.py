"""A fake ACTITO API as a real HTTP server on 127.0.0.1, behaving as ACTITO's documentation
describes it (see docs/actito.md):

- `GET /auth/token` with the API key as Authorization answers a token that lives
  `token_seconds` (15 minutes unless a test shortens it); a wrong key gets 401;
- every other call needs `Authorization: Bearer <token>`; an unknown or expired token gets 401;
- more than `max_concurrent` calls in flight at once (5, ACTITO's limit per licence): 429;
- `/v4/entity/{entity}/webhookSubscription`: list (paged with page and pageSize, in the shape
  `list_shape` says), create (POST), update (PUT .../{id});
- `/v4/entity/{entity}/table/{table}/profile/{id}`: read (GET), update attributes (PUT), and
  `/subscription/{name}` (POST subscribes, DELETE unsubscribes);
- `/v4/entity/{entity}/customTable/{table}/record`: create a row (POST).

It records every call (start and end time, status), the peak number of calls in flight, and
what it refused, so tests can check the limits were held. `hold()` makes calls wait until
`release()`; `fail(status, n)` answers the next n API calls with `status`.

    with FakeActito(token_seconds=2) as actito:
        actito.add_profile("16", 1204, {"emailAddress": "a@example.com"})
        ... ROUTER_ACTITO_API_URL=actito.url ...
        actito.profile_reads(), actito.peak, actito.refused_busy, actito.max_calls_within(1.0)
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self, cast

from aiohttp import web

from tests.sinks import HOST, _LoopThread, free_port

API_KEY = "fake-actito-api-key"
ENTITY = "demo"
ListShape = Literal["list", "object", "embedded"]


@dataclass(frozen=True)
class Call:
    method: str
    path: str  # as sent, percent-encoded, without the query
    query: Mapping[str, str]
    body: Any
    started: float  # time.monotonic()
    ended: float
    status: int


class FakeActito:
    def __init__(
        self,
        *,
        api_key: str = API_KEY,
        entity: str = ENTITY,
        token_seconds: float = 900.0,
        max_concurrent: int = 5,
        latency: float = 0.0,
        list_shape: ListShape = "list",
    ) -> None:
        self.api_key = api_key
        self.entity = entity
        self.token_seconds = token_seconds
        self.max_concurrent = max_concurrent
        self.latency = latency
        self.list_shape = list_shape
        self.paging = True  # False: every page is the first (an API that ignores `page`)
        self.subscriptions: dict[int, dict[str, Any]] = {}
        self.profiles: dict[str, dict[int, dict[str, Any]]] = {}
        self.records: dict[str, list[dict[str, Any]]] = {}
        self.token_fetches = 0
        self.peak = 0  # most calls in flight at once, refused ones included
        self.refused_busy = 0  # 429s for going over max_concurrent
        self.refused_token = 0  # 401s for an unknown or expired token
        self._ids = itertools.count(17)
        self._tokens: dict[str, float] = {}
        self._in_flight = 0
        self._failures: list[int] = []
        self._lock = threading.Lock()
        self._calls: list[Call] = []
        self._gate: asyncio.Event | None = None
        self._held = 0
        self._thread: _LoopThread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- the test's side
    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def add_profile(
        self,
        table: str,
        profile_id: int,
        attributes: Mapping[str, Any],
        *,
        subscriptions: Mapping[str, bool] | None = None,
        segments: Mapping[str, str] | None = None,
    ) -> None:
        self.profiles.setdefault(table, {})[profile_id] = {
            "attributes": [
                {"name": "profileId", "value": profile_id},
                *({"name": k, "value": v} for k, v in attributes.items()),
            ],
            "subscriptions": [
                {"name": k, "subscribe": v} for k, v in (subscriptions or {}).items()
            ],
            "segmentations": [
                {"belongs": True, "segmentation": {"category": k, "name": v}}
                for k, v in (segments or {}).items()
            ],
        }

    def attributes(self, table: str, profile_id: int) -> dict[str, Any]:
        profile = self.profiles[table][profile_id]
        return {item["name"]: item["value"] for item in profile["attributes"]}

    def subscribed(self, table: str, profile_id: int) -> dict[str, bool]:
        profile = self.profiles[table][profile_id]
        return {item["name"]: item["subscribe"] for item in profile["subscriptions"]}

    def add_subscription(self, **fields: Any) -> int:
        ident = next(self._ids)
        self.subscriptions[ident] = {**fields, "id": ident}
        return ident

    def expire_tokens(self) -> None:
        """Every token issued so far is refused from now on (expired, or dropped by ACTITO)."""
        self._run(self._expire())

    def fail(self, status: int, count: int = 1) -> None:
        """Answer the next `count` API calls (not token requests) with `status`."""
        with self._lock:
            self._failures.extend([status] * count)

    def hold(self) -> None:
        """Calls wait, unanswered, until release()."""
        self._run(self._set_gate(hold=True))

    def release(self) -> None:
        self._run(self._set_gate(hold=False))

    @property
    def held(self) -> int:
        return self._held

    def profile_reads(self, status: int = 200) -> list[Call]:
        return [
            c
            for c in self.calls
            if c.method == "GET" and "/profile/" in c.path and c.status == status
        ]

    def max_calls_within(self, seconds: float) -> int:
        """The most calls (token requests included) that started within any `seconds`."""
        starts = sorted(call.started for call in self.calls)
        best, first = 0, 0
        for last, start in enumerate(starts):
            while start - starts[first] >= seconds:
                first += 1
            best = max(best, last - first + 1)
        return best

    # -- lifecycle
    def start(self) -> None:
        self._thread = _LoopThread(f"fake-actito-{id(self):x}")
        self.port = free_port()
        self._thread.run(self._start())

    def stop(self) -> None:
        if self._thread is None:
            return
        self._thread.run(self._stop())
        self._thread.close()
        self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self, coro: Any) -> Any:
        assert self._thread is not None, "FakeActito is not started"
        return self._thread.run(coro)

    async def _start(self) -> None:
        self._gate = asyncio.Event()
        self._gate.set()
        app = web.Application(middlewares=[self._limits])
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, HOST, self.port).start()

    async def _stop(self) -> None:
        assert self._gate is not None and self._runner is not None
        self._gate.set()
        await self._runner.cleanup()

    async def _expire(self) -> None:
        self._tokens.clear()

    async def _set_gate(self, *, hold: bool) -> None:
        assert self._gate is not None
        if hold:
            self._gate.clear()
        else:
            self._gate.set()

    # -- the API's side
    @web.middleware
    async def _limits(self, request: web.Request, handler: Any) -> web.StreamResponse:
        started = time.monotonic()
        body = _json(await request.read())
        self._in_flight += 1
        self.peak = max(self.peak, self._in_flight)
        try:
            if self._in_flight > self.max_concurrent:
                self.refused_busy += 1
                response: web.StreamResponse = _error(429, "Too many concurrent requests")
            else:
                assert self._gate is not None
                if not self._gate.is_set():
                    self._held += 1
                    await self._gate.wait()
                if self.latency:
                    await asyncio.sleep(self.latency)
                response = await handler(request)
        finally:
            self._in_flight -= 1
        with self._lock:
            self._calls.append(
                Call(
                    request.method,
                    request.raw_path.split("?", 1)[0],
                    dict(request.query),
                    body,
                    started,
                    time.monotonic(),
                    response.status,
                )
            )
        return response

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/auth/token":
            return self._token(request)
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ")
        expires = self._tokens.get(token)
        if not auth.startswith("Bearer ") or expires is None or time.monotonic() >= expires:
            self.refused_token += 1
            return _error(401, "Invalid or expired token")
        with self._lock:
            failure = self._failures.pop(0) if self._failures else None
        if failure is not None:
            return _error(failure, "Scripted failure")
        prefix = f"/v4/entity/{self.entity}/"
        if not path.startswith(prefix):
            return _error(404, "No such entity")
        parts = path[len(prefix) :].split("/")
        return self._route(request.method, parts, request, _json(await request.read()))

    def _token(self, request: web.Request) -> web.StreamResponse:
        if request.method != "GET" or request.headers.get("Authorization") != self.api_key:
            return _error(401, "Bad credentials")
        token = uuid.uuid4().hex
        self._tokens[token] = time.monotonic() + self.token_seconds
        self.token_fetches += 1
        return web.json_response(
            {
                "accessToken": token,
                "tokenType": "bearer",
                "expiresIn": f"{self.token_seconds:g}s",
                "scope": "read write",
                "jti": uuid.uuid4().hex,
            }
        )

    def _route(
        self, method: str, parts: list[str], request: web.Request, body: Any
    ) -> web.StreamResponse:
        match (method, parts):
            case ("GET", ["webhookSubscription"]):
                return self._list(request)
            case ("POST", ["webhookSubscription"]):
                return self._create_subscription(body)
            case ("PUT", ["webhookSubscription", ident]):
                return self._update_subscription(ident, body)
            case ("GET", ["table", table, "profile", ident]):
                profile = self._profile(table, ident)
                if profile is None:
                    return _error(404, f"Profile {ident} not found")
                return web.json_response(profile)
            case ("PUT", ["table", table, "profile", ident]):
                return self._update_profile(table, ident, body)
            case ("POST" | "DELETE", ["table", table, "profile", ident, "subscription", name]):
                return self._subscribe(table, ident, name, method == "POST")
            case ("POST", ["customTable", table, "record"]):
                if not isinstance(body, dict) or not isinstance(body.get("properties"), list):
                    return _error(400, "properties are required")
                rows = self.records.setdefault(table, [])
                rows.append(body)
                return web.json_response({"id": len(rows)})
        return _error(404, "No such resource")

    def _list(self, request: web.Request) -> web.StreamResponse:
        page = int(request.query.get("page", "0")) if self.paging else 0
        size = int(request.query.get("pageSize", "20"))
        ordered = [self.subscriptions[i] for i in sorted(self.subscriptions)]
        items = ordered[page * size : (page + 1) * size]
        if self.list_shape == "list":
            return web.json_response(items)
        if self.list_shape == "object":
            return web.json_response(
                {
                    "webhookSubscriptions": items,
                    "page": {"number": page, "size": size, "totalElements": len(ordered)},
                }
            )
        return web.json_response(
            {"_embedded": {"subscriptions": items}, "_links": {"self": {"href": "/x"}}}
        )

    def _create_subscription(self, body: Any) -> web.StreamResponse:
        required = ("on", "onElementId", "eventType", "targetUrl")
        if not isinstance(body, dict) or any(key not in body for key in required):
            return _error(400, "on, onElementId, eventType and targetUrl are required")
        ident = self.add_subscription(**{k: v for k, v in body.items() if k != "id"})
        return web.json_response(self.subscriptions[ident])

    def _update_subscription(self, ident: str, body: Any) -> web.StreamResponse:
        if not ident.isdigit() or int(ident) not in self.subscriptions:
            return _error(404, f"Webhook subscription {ident} not found")
        if not isinstance(body, dict):
            return _error(400, "a subscription is required")
        self.subscriptions[int(ident)] = {**body, "id": int(ident)}
        return web.json_response(self.subscriptions[int(ident)])

    def _profile(self, table: str, ident: str) -> dict[str, Any] | None:
        if not ident.isdigit():
            return None
        return self.profiles.get(table, {}).get(int(ident))

    def _update_profile(self, table: str, ident: str, body: Any) -> web.StreamResponse:
        profile = self._profile(table, ident)
        if profile is None:
            return _error(404, f"Profile {ident} not found")
        if not isinstance(body, dict) or not isinstance(body.get("attributes"), list):
            return _error(400, "attributes are required")
        known = {item["name"]: item for item in profile["attributes"]}
        for item in body["attributes"]:
            if item.get("name") == "unknownAttribute":
                return _error(400, "Attribute unknownAttribute does not exist")
            if item["name"] in known:
                known[item["name"]]["value"] = item["value"]
            else:
                profile["attributes"].append({"name": item["name"], "value": item["value"]})
        return web.json_response({"profileId": int(ident)})

    def _subscribe(self, table: str, ident: str, name: str, on: bool) -> web.StreamResponse:
        profile = self._profile(table, ident)
        if profile is None:
            return _error(404, f"Profile {ident} not found")
        found = [item for item in profile["subscriptions"] if item["name"] == name]
        if not on and not found:
            return _error(404, f"Profile {ident} has no subscription {name}")
        for item in found:
            item["subscribe"] = on
        if not found:
            profile["subscriptions"].append({"name": name, "subscribe": on})
        return web.json_response({"profileId": int(ident)})


def _json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def _error(status: int, message: str) -> web.Response:
    return cast(web.Response, web.json_response({"message": message}, status=status))


__all__ = ["API_KEY", "ENTITY", "Call", "FakeActito"]
