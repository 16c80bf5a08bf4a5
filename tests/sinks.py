"""Real servers for tests: an HTTP sink and an SMTP sink on 127.0.0.1.

Each sink runs its own event loop on its own thread, so the code under test never shares a
loop with it: a sync test may block on it, async code may await next to it. Both are context
managers, sync and async alike, and both record what arrives.

HTTP::

    with HttpSink() as sink:                      # or: async with HttpSink() as sink:
        sink.script(Reply(503), Reply(503))       # the next two requests get 503 ...
        sink.default = Reply(200)                 # ... and every later one this (the default)
        deliver_to(sink.url("/hooks/crm?x=1"))
        (first, *_) = sink.wait_for(3)            # or: await sink.wait(3); blocks, with a deadline
        first.method, first.path, first.query, first.headers["Idempotency-Key"], first.body
        sink.connections                          # distinct TCP connections that sent requests

    Reply(429, headers={"Retry-After": "7"}), Reply(200, delay=2.0) (answer late),
    Reply(400, body=b"nope"), Reply(200, echo=True) (answer the request's headers and body),
    Reply(200, stream=2**30) (a gigabyte after the body, streamed: sink.streamed counts what
    went out), Reply(200, body=b"half", hang=True) (the body, then nothing until the sink stops).

SMTP::

    with SmtpSink(users={"alice": "s3cret"}) as smtp:   # AUTH offered (without TLS) when users
        smtp.script("451 4.3.0 try later")              # the next DATA gets this reply
        smtp.refuse("bad@example.com", "550 5.1.1 no such user")   # RCPT answer for one address
        ... send to smtp.host:smtp.port ...
        (message,) = smtp.wait_for(1)             # or: await smtp.wait(1)
        message.mail_from, message.rcpt_tos, message.login, message.message["Subject"]

`self_signed_cert(directory)` makes a certificate for 127.0.0.1 (needs the openssl command) for
`SmtpSink(starttls=...)`; `server_tls_context` / `client_tls_context` build the two sides.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email
import email.policy
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar, cast

from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from multidict import CIMultiDict, CIMultiDictProxy

HOST = "127.0.0.1"
WAIT_SECONDS = 10.0  # default deadline of wait_for / wait
SHUTDOWN_SECONDS = 1.0  # how long the HTTP sink lets a request in progress finish
STREAM_CHUNK = b"z" * 65536  # what a streamed answer repeats
CLOSE_TURNS = 3  # loop turns a closed transport needs to release its socket
_T = TypeVar("_T")


class _Sink:
    """Shared plumbing: a lock-guarded list of arrivals, waiting with a deadline, contexts."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._arrivals: list[Any] = []

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def _arrived(self, item: Any) -> None:
        with self._lock:
            self._arrivals.append(item)
            self._lock.notify_all()

    def _wait_for(self, count: int, timeout: float) -> list[Any]:
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._arrivals) >= count, timeout):
                raise AssertionError(
                    f"{type(self).__name__}: expected {count} arrival(s) within {timeout} s, "
                    f"got {len(self._arrivals)}"
                )
            return list(self._arrivals)

    def clear(self) -> None:
        """Forget what arrived so far (scripts and defaults are kept)."""
        with self._lock:
            self._arrivals.clear()

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

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)


# --- HTTP ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One scripted HTTP answer; `delay` seconds pass before it is sent."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0
    echo: bool = False  # the body is the request as received: its header lines, then its body
    stream: int = 0  # bytes sent after the body, in chunks, until the client stops reading
    hang: bool = False  # after the body (and stream), send nothing more until the sink stops


@dataclass(frozen=True)
class HttpRequest:
    """One request as the sink received it."""

    method: str
    path: str  # without the query string
    query: str  # raw query string, "" when none
    headers: CIMultiDictProxy[str]  # case-insensitive
    body: bytes  # byte-exact
    peer: tuple[str, int]  # the client's address: one per TCP connection
    target: str = ""  # the request target as sent (path and query, still percent-encoded)


class _LoopThread:
    """An event loop running on a daemon thread; `run` executes a coroutine on it."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float = WAIT_SECONDS) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.run(self.loop.shutdown_asyncgens())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(WAIT_SECONDS)
        self.loop.close()


class HttpSink(_Sink):
    """An HTTP/1.1 server on 127.0.0.1 (a free port) that records requests and answers each
    with the next scripted Reply, or `default` once the script is used up."""

    def __init__(self, default: Reply | None = None) -> None:
        super().__init__()
        self.default = default or Reply(200)
        self._script: collections.deque[Reply] = collections.deque()
        self._thread: _LoopThread | None = None
        self._listener: socket.socket | None = None
        self._server: web.Server | None = None
        self._connecting: set[asyncio.Task[None]] = set()
        self._transports: set[asyncio.Transport] = set()  # accepted, to abort at stop
        self._stopping: asyncio.Event | None = None
        self.port = 0
        self.streamed = 0  # bytes of streamed answers (Reply.stream) written so far

    # -- use
    def url(self, path: str = "/") -> str:
        return f"http://{HOST}:{self.port}{path}"

    def script(self, *replies: Reply) -> None:
        """Queue answers for the next requests, in order (after any still queued)."""
        with self._lock:
            self._script.extend(replies)

    @property
    def requests(self) -> list[HttpRequest]:
        with self._lock:
            return list(self._arrivals)

    @property
    def connections(self) -> int:
        """Distinct TCP connections that carried at least one request."""
        with self._lock:
            return len({request.peer for request in self._arrivals})

    def wait_for(self, count: int, timeout: float = WAIT_SECONDS) -> list[HttpRequest]:
        """Block until `count` requests arrived (AssertionError after `timeout`); all of them."""
        return self._wait_for(count, timeout)

    async def wait(self, count: int, timeout: float = WAIT_SECONDS) -> list[HttpRequest]:
        return await asyncio.to_thread(self._wait_for, count, timeout)

    # -- lifecycle
    def start(self) -> None:
        assert self._thread is None, "HttpSink already started"
        self._thread = _LoopThread(f"http-sink-{id(self):x}")
        self.port = self._thread.run(self._start())

    def stop(self) -> None:
        if self._thread is None:
            return
        self._thread.run(self._stop())
        self._thread.close()
        self._thread = None

    async def _start(self) -> int:
        self._stopping = asyncio.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((HOST, 0))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self._server = web.Server(self._handle)
        # Our own accept instead of loop.create_server: on CPython 3.11 a connection accepted
        # while that server closes leaks its socket (a ResourceWarning, an error under
        # filterwarnings=error). Removing the reader stops accepting at a known point.
        asyncio.get_running_loop().add_reader(self._listener.fileno(), self._accept)
        return cast(int, self._listener.getsockname()[1])

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        conn.setblocking(False)
        task = asyncio.get_running_loop().create_task(self._connect(conn))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self, conn: socket.socket) -> None:
        assert self._server is not None
        try:
            transport, _ = await asyncio.get_running_loop().connect_accepted_socket(
                self._server, conn
            )
        except OSError:  # the client went away before we got to it
            conn.close()
            return
        self._transports.add(transport)

    async def _stop(self) -> None:
        assert self._stopping and self._listener and self._server
        self._stopping.set()  # slow replies answer now instead of holding the shutdown
        asyncio.get_running_loop().remove_reader(self._listener.fileno())
        self._listener.close()
        # Connections accepted so far join the server's list, so its shutdown closes them.
        await asyncio.gather(*self._connecting)
        self._server.pre_shutdown()
        await self._server.shutdown(SHUTDOWN_SECONDS)
        # A transport still flushing to a client that died (kill -9 mid-request) would stay
        # "closing" past the loop's end and leak its socket: drop what it still holds.
        for transport in self._transports:
            transport.abort()
        self._transports.clear()
        # Closed transports release their sockets on the next loop turns.
        for _ in range(CLOSE_TURNS):
            await asyncio.sleep(0)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport else ("?", 0)
        arrived = HttpRequest(
            method=request.method,
            path=request.path,
            query=request.query_string,
            headers=CIMultiDictProxy(CIMultiDict(request.headers)),
            body=body,
            peer=(peer[0], peer[1]),
            target=request.raw_path,
        )
        with self._lock:
            reply = self._script.popleft() if self._script else self.default
        self._arrived(arrived)
        if reply.delay > 0 and self._stopping is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), reply.delay)
        body = reply.body
        if reply.echo:
            lines = "".join(f"{name}: {value}\r\n" for name, value in arrived.headers.items())
            body = lines.encode() + b"\r\n" + arrived.body
        if not (reply.stream or reply.hang):
            return web.Response(status=reply.status, headers=dict(reply.headers), body=body)
        response = web.StreamResponse(status=reply.status, headers=dict(reply.headers))
        # The client closing its end (as it should, once it has read enough) ends the answer.
        with contextlib.suppress(ConnectionError):
            await response.prepare(request)
            await response.write(body)
            left = reply.stream
            while left > 0:
                chunk = STREAM_CHUNK if left >= len(STREAM_CHUNK) else STREAM_CHUNK[:left]
                await response.write(chunk)
                left -= len(chunk)
                with self._lock:
                    self.streamed += len(chunk)
            if reply.hang and self._stopping is not None:
                await self._stopping.wait()
            await response.write_eof()
        return response


# --- SMTP ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmtpMessage:
    """One message as the sink accepted (or refused) it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    login: str | None  # the AUTH user, None without AUTH
    tls: bool  # whether the session had switched to TLS (STARTTLS)
    reply: str  # what the sink answered to DATA

    @property
    def message(self) -> EmailMessage:
        """The parsed message, line endings turned from CRLF (the wire's) into LF."""
        content = self.content.replace(b"\r\n", b"\n")
        return email.message_from_bytes(content, policy=email.policy.default)


class _Handler:
    """aiosmtpd handler: scripted RCPT and DATA answers, every DATA recorded."""

    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        refusal = self._sink._refusals.get(address.lower())
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = self._sink._next_reply()
        content = envelope.original_content or b""
        self._sink._arrived(
            SmtpMessage(
                mail_from=str(envelope.mail_from),
                rcpt_tos=tuple(envelope.rcpt_tos),
                content=content,
                login=cast(str | None, session.auth_data),
                tls=session.ssl is not None,
                reply=reply,
            )
        )
        return reply


class SmtpSink(_Sink):
    """An SMTP server on 127.0.0.1 (a free port) that records messages.

    `users` ({login: password}) enables AUTH PLAIN/LOGIN without TLS; a wrong password gets 535.
    `starttls` (a server SSLContext) offers STARTTLS without requiring it.
    """

    def __init__(
        self,
        *,
        users: Mapping[str, str] | None = None,
        starttls: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__()
        self.host = HOST
        self.port = 0
        self.default_reply = "250 OK"
        self._users = dict(users or {})
        self._starttls = starttls
        self._script: collections.deque[str] = collections.deque()
        self._refusals: dict[str, str] = {}
        self._controller: Controller | None = None

    # -- use
    def script(self, *replies: str) -> None:
        """Queue DATA answers ("451 4.3.0 busy", "554 5.7.1 rejected") for the next messages."""
        with self._lock:
            self._script.extend(replies)

    def refuse(self, address: str, reply: str) -> None:
        """Answer RCPT TO:<address> with `reply` (e.g. "550 5.1.1 no such user") from now on."""
        self._refusals[address.lower()] = reply

    @property
    def messages(self) -> list[SmtpMessage]:
        with self._lock:
            return list(self._arrivals)

    def wait_for(self, count: int, timeout: float = WAIT_SECONDS) -> list[SmtpMessage]:
        """Block until `count` DATA commands arrived (AssertionError after `timeout`)."""
        return self._wait_for(count, timeout)

    async def wait(self, count: int, timeout: float = WAIT_SECONDS) -> list[SmtpMessage]:
        return await asyncio.to_thread(self._wait_for, count, timeout)

    # -- lifecycle
    def start(self) -> None:
        assert self._controller is None, "SmtpSink already started"
        self.port = free_port()
        kwargs: dict[str, Any] = {}
        if self._users:
            kwargs.update(authenticator=self._authenticate, auth_require_tls=False)
        if self._starttls is not None:
            kwargs.update(tls_context=self._starttls, require_starttls=False)
        self._controller = Controller(
            _Handler(self), hostname=HOST, port=self.port, server_hostname="sink.test", **kwargs
        )
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def _next_reply(self) -> str:
        with self._lock:
            return self._script.popleft() if self._script else self.default_reply

    def _authenticate(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        mechanism: str,
        auth_data: Any,
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            login = auth_data.login.decode()
            if self._users.get(login) == auth_data.password.decode():
                return AuthResult(success=True, auth_data=login)
        return AuthResult(success=False, handled=False)


# --- helpers ------------------------------------------------------------------------------


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (right now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return cast(int, sock.getsockname()[1])


def self_signed_cert(directory: Path) -> tuple[Path, Path] | None:
    """(cert, key) for CN/SAN 127.0.0.1 in `directory`, or None without the openssl command."""
    if shutil.which("openssl") is None:
        return None
    cert, key = directory / "cert.pem", directory / "key.pem"
    command: Sequence[str] = (
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        "-keyout", str(key), "-out", str(cert),
    )  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    return cert, key


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def client_tls_context(cert: Path) -> ssl.SSLContext:
    """Trusts exactly `cert` (verification stays on)."""
    return ssl.create_default_context(cafile=str(cert))


__all__ = [
    "HOST",
    "HttpRequest",
    "HttpSink",
    "Reply",
    "SmtpMessage",
    "SmtpSink",
    "client_tls_context",
    "free_port",
    "self_signed_cert",
    "server_tls_context",
]
