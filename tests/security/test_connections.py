"""Attacks on the connections themselves: idle, slow and oversized requests, malformed HTTP,
connection floods, and application errors that would take a connection down with them.

The guard is tested on an in-process uvicorn server with each of uvicorn's HTTP/1.1 parsers
(h11 and httptools); the flood and the worker's port against real router processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import resource
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from router.app import starlette_app
from router.connections import LINGER_SECONDS, ConnectionLimits
from router.wiring import build_server
from tests.e2e.conftest import forward_rule
from tests.e2e.harness import SECRET, RouterProcess, poll
from tests.sinks import HttpSink, free_port

HOST = "127.0.0.1"
SHORT = ConnectionLimits(header_timeout=0.5, body_timeout=1.0, keepalive_timeout=0.5)


@pytest.fixture
def sink() -> Iterator[HttpSink]:
    with HttpSink() as s:
        yield s


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    path = tmp_path / "rules"
    path.mkdir()
    return path


@pytest.fixture
def routers() -> Iterator[list[RouterProcess]]:
    started: list[RouterProcess] = []
    yield started
    for router in started:
        if router.proc is not None and router.proc.poll() is None:
            router.kill()


# ---------------------------------------------------------------- an in-process server


class Gate:
    """Requests to /hold wait here until the test opens it: connections busy in the app."""

    def __init__(self) -> None:
        self.waiting = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    async def wait(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._event is None:
            self._event = asyncio.Event()
        self.waiting += 1
        await asyncio.wait_for(self._event.wait(), 30)

    def open(self) -> None:
        if self._loop is not None and self._event is not None:
            self._loop.call_soon_threadsafe(self._event.set)


def guarded_app(gate: Gate) -> ASGIApp:
    async def echo(request: Request) -> Response:
        body = await request.body()
        return JSONResponse({"size": len(body)})

    async def hold(request: Request) -> Response:
        await gate.wait()
        return JSONResponse({"held": True})

    async def boom(request: Request) -> Response:
        raise RuntimeError("a bug")

    app = starlette_app(
        [
            Route("/echo", echo, methods=["GET", "POST"]),
            Route("/hold", hold),
            Route("/boom", boom),
        ]
    )

    async def with_raw_failure(scope: Scope, receive: Receive, send: Send) -> None:
        # An exception that no Starlette handler sees: the error boundary alone must answer.
        if scope["type"] == "http" and scope["path"] == "/raw":
            raise RuntimeError("a bug below the framework")
        await app(scope, receive, send)

    return with_raw_failure


class InProcess:
    """A server built as `router serve` builds its own, in a thread, on a free port."""

    def __init__(self, limits: ConnectionLimits, http: type[asyncio.Protocol]) -> None:
        self.gate = Gate()
        self.port = free_port()
        self.server = build_server(guarded_app(self.gate), HOST, self.port, limits, http=http)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.sockets: list[socket.socket] = []

    def __enter__(self) -> InProcess:
        self.thread.start()
        poll(lambda: self.server.started, timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.gate.open()
        for sock in self.sockets:
            sock.close()
        self.server.should_exit = True
        self.thread.join(30)

    def connect(self) -> socket.socket:
        sock = socket.create_connection((HOST, self.port), timeout=10)
        self.sockets.append(sock)
        return sock


@pytest.fixture(params=[H11Protocol, HttpToolsProtocol], ids=["h11", "httptools"])
def serve(request: pytest.FixtureRequest) -> Iterator[Callable[[ConnectionLimits], InProcess]]:
    running: list[InProcess] = []

    def start(limits: ConnectionLimits) -> InProcess:
        server = InProcess(limits, request.param).__enter__()
        running.append(server)
        return server

    yield start
    for server in running:
        server.__exit__()


# ---------------------------------------------------------------- reading answers


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> str:
        assert self.headers["content-type"].startswith("application/json"), self.headers
        message = json.loads(self.body)["error"]
        assert isinstance(message, str) and message
        return message


def parse_reply(raw: bytes) -> Reply:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(int(lines[0].split()[1]), headers, body)


class Replies:
    """The answers on one connection, in order: pipelined ones may arrive in one read."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def next(self, timeout: float = 10.0) -> Reply:
        self.sock.settimeout(timeout)
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        reply = parse_reply(head + b"\r\n\r\n")
        length = int(reply.headers.get("content-length", "0"))
        while len(self.buffer) < length:
            self._read()
        reply.body, self.buffer = self.buffer[:length], self.buffer[length:]
        return reply

    def _read(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, f"connection closed after {self.buffer!r}"
        self.buffer += chunk


def read_reply(sock: socket.socket, timeout: float = 10.0) -> Reply:
    """The one answer to the one request sent on a connection that stays open."""
    replies = Replies(sock)
    reply = replies.next(timeout)
    assert not replies.buffer, f"unexpected bytes after the answer: {replies.buffer!r}"
    return reply


def read_to_end(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sends until it closes the connection (a reset fails the test)."""
    sock.settimeout(timeout)
    raw = b""
    while chunk := sock.recv(65536):
        raw += chunk
    return raw


def request(method: str, path: str, body: bytes = b"", extra: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: router\r\nContent-Length: {len(body)}\r\n{extra}"
    return head.encode() + b"\r\n" + body


# ---------------------------------------------------------------- timeouts


def test_a_connection_that_never_sends_is_closed_quietly(
    serve: Callable[[ConnectionLimits], InProcess],
) -> None:
    server = serve(SHORT)
    sock = server.connect()
    opened = time.monotonic()
    assert read_to_end(sock) == b""
    assert time.monotonic() - opened >= SHORT.header_timeout * 0.9


def test_headers_sent_slowly_get_408_on_time(
    serve: Callable[[ConnectionLimits], InProcess],
) -> None:
    server = serve(SHORT)
    sock = server.connect()
    opened = time.monotonic()
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: router\r\nX-Slow: ")
    sock.settimeout(0.05)
    raw = b""
    # A byte every 50 ms must not extend the deadline, which runs from the connection opening.
    while not raw and time.monotonic() - opened < 5:
        try:
            sock.send(b"a")
            raw = sock.recv(65536)
        except TimeoutError:
            continue
    elapsed = time.monotonic() - opened
    reply = parse_reply(raw + read_to_end(sock))
    assert reply.status == 408
    assert "headers did not arrive within 0.5 s" in reply.error()
    assert SHORT.header_timeout * 0.9 <= elapsed < SHORT.header_timeout + 2


def test_a_body_sent_slowly_gets_408_on_time(
    serve: Callable[[ConnectionLimits], InProcess],
) -> None:
    server = serve(SHORT)
    sock = server.connect()
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: router\r\nContent-Length: 100\r\n\r\n0123456789")
    sent = time.monotonic()
    reply = parse_reply(read_to_end(sock))
    assert reply.status == 408
    assert "body did not arrive within 1 s" in reply.error()
    assert time.monotonic() - sent >= SHORT.body_timeout * 0.9


def test_an_idle_keepalive_connection_is_closed_quietly(
    serve: Callable[[ConnectionLimits], InProcess],
) -> None:
    server = serve(SHORT)
    sock = server.connect()
    for _ in range(2):  # the connection is reused while it is used
        sock.sendall(request("POST", "/echo", b"{}"))
        assert read_reply(sock).status == 200
    answered = time.monotonic()
    assert read_to_end(sock) == b""
    assert time.monotonic() - answered >= SHORT.keepalive_timeout * 0.9


# ---------------------------------------------------------------- malformed and oversized


@pytest.mark.parametrize("size", [70_000, 1_000_000], ids=["70KB", "1MB"])
def test_an_oversized_header_block_gets_431_not_a_reset(
    serve: Callable[[ConnectionLimits], InProcess], size: int
) -> None:
    server = serve(ConnectionLimits())
    sock = server.connect()
    sock.sendall(request("GET", "/echo", extra=f"X-Big: {'a' * size}\r\n"))
    reply = parse_reply(read_to_end(sock))
    assert reply.status == 431
    assert "larger than 32768 bytes" in reply.error()


def test_a_header_block_under_the_limit_is_served(
    serve: Callable[[ConnectionLimits], InProcess],
) -> None:
    server = serve(ConnectionLimits())
    sock = server.connect()
    sock.sendall(request("POST", "/echo", b"{}", extra=f"X-Big: {'a' * 30_000}\r\n"))
    assert read_reply(sock).status == 200


MALFORMED = {
    "negative Content-Length": b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "not HTTP": b"HELLO THERE\r\n\r\n",
    "bad chunk size": b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "space in a header name": b"GET /echo HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n",
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_http_gets_a_json_400(
    serve: Callable[[ConnectionLimits], InProcess], raw: bytes
) -> None:
    server = serve(ConnectionLimits())
    sock = server.connect()
    sock.sendall(raw)
    reply = parse_reply(read_to_end(sock))
    assert reply.status == 400
    assert "not valid HTTP/1.1" in reply.error()


# ---------------------------------------------------------------- the connection cap


def is_open(sock: socket.socket) -> bool:
    """Nothing to read and not closed: the server still holds the connection open, silently."""
    readable, _, _ = select.select([sock], [], [], 0)
    return not readable


def test_at_the_cap_the_connection_waiting_longest_is_given_up(
    serve: Callable[[ConnectionLimits], InProcess],
) -> None:
    server = serve(ConnectionLimits(max_connections=4))
    slow = server.connect()
    slow.sendall(b"POST /echo HTTP/1.1\r\nHost: router\r\n")  # a head that never ends
    idle = [server.connect() for _ in range(3)]
    for sock in idle:  # each served once, then idle on keep-alive: all four slots are taken
        sock.sendall(request("POST", "/echo", b"{}"))
        assert read_reply(sock).status == 200

    newcomer = server.connect()
    newcomer.sendall(request("POST", "/echo", b"{}"))
    assert read_reply(newcomer).status == 200
    # The incomplete request waited longest: it is told why and closed.
    evicted = parse_reply(read_to_end(slow))
    assert evicted.status == 503
    assert evicted.headers["retry-after"] == "5"
    assert "needed this incomplete request's connection" in evicted.error()
    assert all(is_open(sock) for sock in idle)

    second = server.connect()  # then the idle connection served first goes, quietly
    second.sendall(request("POST", "/echo", b"{}"))
    assert read_reply(second).status == 200
    assert read_to_end(idle[0]) == b""
    assert is_open(idle[1]) and is_open(idle[2]) and is_open(newcomer)


def test_when_every_connection_is_busy_a_newcomer_gets_503(
    serve: Callable[[ConnectionLimits], InProcess],
) -> None:
    server = serve(ConnectionLimits(max_connections=2))
    busy = [server.connect() for _ in range(2)]
    for sock in busy:
        sock.sendall(request("GET", "/hold"))
    poll(lambda: server.gate.waiting == 2, timeout=10)

    refused = parse_reply(read_to_end(server.connect()))
    assert refused.status == 503
    assert refused.headers["retry-after"] == "5"
    assert "as many connections as it may" in refused.error()

    server.gate.open()
    for sock in busy:  # the busy ones were not touched
        assert read_reply(sock).status == 200
    late = server.connect()
    late.sendall(request("POST", "/echo", b"{}"))
    assert read_reply(late).status == 200


# ---------------------------------------------------------------- application errors


@pytest.mark.parametrize("path", ["/boom", "/raw"], ids=["in a route", "below the framework"])
def test_an_application_error_is_a_503_and_spares_the_connection(
    serve: Callable[[ConnectionLimits], InProcess],
    path: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = serve(ConnectionLimits())
    sock = server.connect()
    # Pipelined: the request behind the failing one must be answered on the same connection.
    sock.sendall(request("GET", path) + request("POST", "/echo", b"{}"))
    replies = Replies(sock)
    failed = replies.next()
    assert failed.status == 503
    assert failed.error() == "internal error; retry later"
    assert failed.headers["retry-after"] == "5"
    assert replies.next().status == 200
    sock.sendall(request("POST", "/echo", b"{}"))
    assert replies.next().status == 200

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [f"unexpected error handling GET '{path}'"]
    assert errors[0].exc_info is not None


def test_an_upgrade_request_is_answered_as_plain_http(
    serve: Callable[[ConnectionLimits], InProcess],
) -> None:
    server = serve(ConnectionLimits())
    sock = server.connect()
    sock.sendall(request("GET", "/echo", extra="Connection: Upgrade\r\nUpgrade: websocket\r\n"))
    assert read_reply(sock).status == 200


# ---------------------------------------------------------------- real router processes

SAMPLE = {"id": "conn-1", "tableType": "PROFILE_TABLE", "operation": "CREATE", "data": {"a": 1}}


def raw_exchange(port: int, raw: bytes) -> Reply:
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(raw)
        return parse_reply(read_to_end(sock))


def test_router_serve_answers_hostile_http_in_json(
    tmp_path: Path, rules_dir: Path, sink: HttpSink, routers: list[RouterProcess]
) -> None:
    (rules_dir / "forward.toml").write_text(forward_rule(sink.url("/in")))
    router = RouterProcess(tmp_path, rules_dir)
    routers.append(router)
    router.start()
    head = b"POST /webhooks/actito HTTP/1.1\r\nHost: router\r\n"
    assert raw_exchange(router.port, head + b"Content-Length: -1\r\n\r\n").status == 400
    for size in (70_000, 1_000_000):
        reply = raw_exchange(router.port, head + b"X-Big: " + b"a" * size + b"\r\n\r\n")
        assert reply.status == 431, reply
        assert "ROUTER_MAX_HEADER_BYTES" in reply.error()
    assert router.push(SAMPLE).status_code == 202
    rejected = router.get("/metrics").text
    assert 'router_requests_rejected_total{reason="bad_http"} 1.0' in rejected
    assert 'router_requests_rejected_total{reason="headers_too_large"} 2.0' in rejected


def test_the_worker_port_is_guarded_too(
    tmp_path: Path, rules_dir: Path, routers: list[RouterProcess]
) -> None:
    worker = RouterProcess(
        tmp_path,
        rules_dir,
        command=("worker",),
        env={"ROUTER_WORKER_PORT": str(free_port()), "ROUTER_HEADER_TIMEOUT": "0.5"},
    )
    port = int(worker.env["ROUTER_WORKER_PORT"])
    routers.append(worker)
    worker.start()

    def healthy() -> bool:
        try:
            return httpx.get(f"http://{HOST}:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    poll(healthy, timeout=20)
    with socket.create_connection((HOST, port), timeout=10) as idle:
        assert read_to_end(idle) == b""
    slow = raw_exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    assert slow.status == 408
    big = raw_exchange(port, b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
    assert big.status == 431


# ---------------------------------------------------------------- the flood

FILE_LIMIT = 1024  # the router's descriptor limit in the flood test
FLOOD = 1020  # slow and idle clients, more than the router can hold at once
HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 12.0
PUSHES = 10
PRLIMIT = shutil.which("prlimit") or "prlimit"


class LimitedRouter(RouterProcess):
    """`router serve` started under `prlimit --nofile=FILE_LIMIT:FILE_LIMIT`."""

    def start(self, *, wait: bool = True) -> LimitedRouter:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [PRLIMIT, f"--nofile={FILE_LIMIT}", sys.executable, "-m", "router", *self.command],
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait:
            self.wait_healthy()
        return self


class Flood:
    """FLOOD connections in four kinds: silent from the start, idle after one request, a head
    that grows by a byte a second, a body that grows by a byte a second. Collects whatever the
    server sends each, and notes when it closes them."""

    KINDS = ("silent", "keepalive", "slow-head", "slow-body")

    def __init__(self, port: int, secret: str) -> None:
        self.port = port
        self.head = (
            b"POST /webhooks/actito HTTP/1.1\r\nHost: router\r\n"
            b"X-Authorization: " + secret.encode() + b"\r\n"
        )
        self.kinds: dict[int, str] = {}
        self.sockets: dict[int, socket.socket] = {}
        self.received: dict[int, bytes] = defaultdict(bytes)
        self.closed: set[int] = set()
        self._stop = threading.Event()
        self._trickle = threading.Thread(target=self._send_slowly, daemon=True)

    def open(self) -> None:
        for n in range(FLOOD):
            kind = self.KINDS[n % len(self.KINDS)]
            sock = socket.create_connection((HOST, self.port), timeout=10)
            if kind == "keepalive":
                sock.sendall(request("GET", "/healthz"))
                reply = read_reply(sock)
                assert reply.status == 200, reply
            elif kind == "slow-head":
                sock.sendall(self.head + b"X-Slow: ")
            elif kind == "slow-body":
                sock.sendall(
                    self.head + b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
                )
            sock.setblocking(False)
            self.kinds[sock.fileno()] = kind
            self.sockets[sock.fileno()] = sock
        self._trickle.start()

    def _send_slowly(self) -> None:
        while not self._stop.wait(1.0):
            for fd, sock in list(self.sockets.items()):
                if self.kinds[fd].startswith("slow") and fd not in self.closed:
                    with contextlib.suppress(OSError):  # closed by the server: noted by collect
                        sock.send(b"a")

    def collect(self) -> None:
        """Read what has arrived on every connection; note those the server closed."""
        poller = select.poll()
        for fd in self.sockets:
            if fd not in self.closed:
                poller.register(fd, select.POLLIN)
        for fd, _ in poller.poll(0):
            sock = self.sockets[fd]
            try:
                while chunk := sock.recv(65536):
                    self.received[fd] += chunk
                self.closed.add(fd)
            except BlockingIOError:
                pass
            except ConnectionResetError:
                self.closed.add(fd)

    def open_count(self) -> int:
        self.collect()
        return len(self.sockets) - len(self.closed)

    def close(self) -> None:
        self._stop.set()
        if self._trickle.is_alive():
            self._trickle.join(5)
        for sock in self.sockets.values():
            sock.close()


@pytest.fixture
def many_files() -> Iterator[None]:
    """Lets this test process hold the flood's sockets: its soft file limit raised for a while."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FLOOD + 512
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the hard open-files limit ({hard}) is below the {wanted} this test needs")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def most_per_second(lines: list[dict[str, Any]]) -> tuple[int, str]:
    """The most repeats of one line within any second, and its message. A repeat: the same
    logger and message, and for records of work (below warning: a delivery, each with its own
    delivery_id), the same fields too; those are never dropped, and each tells its own news."""
    times: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for line in lines:
        stamp = datetime.fromisoformat(line["time"]).timestamp()
        fields = {k: v for k, v in line.items() if k not in ("time", "suppressed")}
        detail = "" if line["level"] in ("warning", "error", "critical") else json.dumps(fields)
        times[(line["logger"], line["message"], detail)].append(stamp)
    worst = (0, "")
    for (_, message, _), stamps in times.items():
        stamps.sort()
        start = 0
        for end, stamp in enumerate(stamps):
            while stamp - stamps[start] >= 1.0:  # stamps in ms: a 1 s window holds < 1.0 s
                start += 1
            worst = max(worst, (end - start + 1, message))
    return worst


def test_a_flood_of_slow_and_idle_clients_does_not_starve_real_pushes(
    tmp_path: Path,
    rules_dir: Path,
    sink: HttpSink,
    routers: list[RouterProcess],
    many_files: None,
) -> None:
    (rules_dir / "forward.toml").write_text(forward_rule(sink.url("/in")))
    router = LimitedRouter(
        tmp_path,
        rules_dir,
        env={
            "ROUTER_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
            "ROUTER_BODY_TIMEOUT": str(BODY_TIMEOUT),
            "ROUTER_KEEPALIVE_TIMEOUT": str(HEADER_TIMEOUT),
        },
    )
    routers.append(router)
    router.start()
    clamp = re.search(r"at most (\d+) connections are served at once", router.log())
    assert clamp, "the start-up log does not say the connection cap was lowered"
    cap = int(clamp.group(1))
    assert cap < FLOOD

    flood = Flood(router.port, SECRET)
    started = time.monotonic()
    try:
        flood.open()
        # The server is full of flood connections; those beyond the cap displaced the oldest.
        poll(lambda: flood.open_count() <= cap, timeout=HEADER_TIMEOUT / 2)
        assert flood.open_count() >= cap - 10, cap

        for n in range(PUSHES):
            response = router.push({**SAMPLE, "id": f"push-{n}"})
            assert response.status_code == 202, response.text
        pushed = time.monotonic()
        # Answered while the flood still held the server: no timeout had freed anything yet.
        assert pushed - started < HEADER_TIMEOUT, pushed - started
        assert flood.open_count() >= cap - 10 - PUSHES

        def all_closed() -> bool:
            return flood.open_count() == 0

        poll(all_closed, timeout=BODY_TIMEOUT + LINGER_SECONDS + 10, every=0.05)
        assert time.monotonic() - started >= HEADER_TIMEOUT * 0.9
    finally:
        flood.close()

    statuses: dict[str, Counter[int | None]] = defaultdict(Counter)
    for fd, kind in flood.kinds.items():
        raw = flood.received.get(fd, b"")  # a keep-alive one's 200 was read when it opened
        statuses[kind][parse_reply(raw).status if raw else None] += 1
    # Silent and idle connections are closed without a word; a request left incomplete is
    # told why: 408 when its time ran out, 503 when it was displaced at the cap.
    assert set(statuses["silent"]) == {None}, statuses
    assert set(statuses["keepalive"]) == {None}, statuses
    for kind in ("slow-head", "slow-body"):
        assert set(statuses[kind]) <= {408, 503}, statuses
        assert statuses[kind][408] > 100, statuses

    assert router.get("/readyz").status_code == 200
    lines = router.log_lines()
    assert not [line for line in lines if "Too many open files" in json.dumps(line)]
    count, message = most_per_second(lines)
    assert count <= 5, f"{message!r} was logged {count} times within a second"
    assert any(line.get("suppressed") for line in lines), "the flood's repeats were not counted"
