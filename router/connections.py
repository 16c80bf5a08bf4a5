"""Bounded connections at the HTTP server, whichever HTTP/1.1 parser uvicorn uses.

Each connection is in one phase at a time; every phase but BUSY has a deadline:

    FRESH    open, no byte yet                closed quietly at opening + header timeout
    HEADERS  a request head is arriving       408 at (opening, or its first byte) + header timeout
    BODY     its body is arriving             408 at end of headers + body timeout
    BUSY     the application is answering     none: the application bounds its own work
    DRAIN    answered before the whole body   closed quietly at end of headers + body timeout
    IDLE     keep-alive, between requests     closed quietly at last answer + keep-alive timeout
    CLOSING  refused: the answer is sent, the rest of the input is read and dropped for
             LINGER_SECONDS so the client sees the answer rather than a connection reset

At most `max_connections` are open at once. A newcomer at the cap closes the connection that has
been waiting longest in any phase but BUSY, so a flood of slow or idle clients only displaces
itself while real requests, which complete in milliseconds, get through; only when every
connection is BUSY is the newcomer answered 503.

The guard is a mixin put in front of the protocol class uvicorn would use (h11 or httptools):
it watches `data_received`, the request `cycle` uvicorn creates once a request's headers are
complete, and `on_response_complete`, and replaces uvicorn's plain-text 400 with a JSON one.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import re
import resource
import sys
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, ClassVar, cast

if TYPE_CHECKING:
    # Typed against the h11 protocol; httptools' has the same attributes and methods.
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Protocol

    from router.settings import Settings
else:
    _Protocol = object

log = logging.getLogger("router.connections")

LINGER_SECONDS = 2.0  # a refused connection's input is read and dropped this long, then cut
RESERVED_DESCRIPTORS = 64  # files kept for all but client connections: stdio, the listening
# socket, the event loop, store files or pool, the rules watcher, name lookups
MIN_CONNECTIONS = 16  # the cap is never lowered below this, however few files are allowed
RETRY_AFTER_SECONDS = 5  # Retry-After of a 503 given because of the connection cap
HEAD_END = re.compile(rb"\n\r?\n")  # the blank line that ends a request head


class Phase(enum.Enum):
    FRESH = "fresh"
    HEADERS = "headers"
    BODY = "body"
    BUSY = "busy"
    DRAIN = "drain"
    IDLE = "idle"
    CLOSING = "closing"


# Phases in which the bytes that arrive are a request head, counted against max_header_bytes.
_RECEIVING_HEAD = frozenset({Phase.FRESH, Phase.IDLE, Phase.HEADERS})


@dataclass(frozen=True)
class ConnectionLimits:
    """Timeouts in seconds; sizes in bytes."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 5.0
    max_connections: int = 1000
    max_header_bytes: int = 32 * 1024


def connection_limits(settings: Settings, *, delivering: bool) -> ConnectionLimits:
    """The limits of the settings, with the connection cap lowered to what the process may open.

    Raises the soft file-descriptor limit to the hard one first, then keeps RESERVED_DESCRIPTORS
    (plus one per delivery slot if the process delivers) for everything but client connections.
    Logs a warning when the cap had to be lowered."""
    available = raise_descriptor_limit()
    reserved = RESERVED_DESCRIPTORS + (settings.concurrency if delivering else 0)
    cap = settings.max_connections
    if available - reserved < cap:
        cap = max(MIN_CONNECTIONS, available - reserved)
        log.warning(
            "ROUTER_MAX_CONNECTIONS is %d but the process may open only %d files (%d kept for "
            "the store, deliveries and logs), so at most %d connections are served at once; "
            "raise the open-files limit (ulimit -n) to serve more",
            settings.max_connections,
            available,
            reserved,
            cap,
        )
    return ConnectionLimits(
        header_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
        keepalive_timeout=settings.keepalive_timeout,
        max_connections=cap,
        max_header_bytes=settings.max_header_bytes,
    )


def raise_descriptor_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return sys.maxsize
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft  # the kernel allows less than the hard limit says: keep what we have
        return target
    return soft


class ConnectionGuard:
    """The open connections of one server, kept in the order they would be given up.

    `protocol_class(base)` returns the protocol to give uvicorn; `on_refusal(reason)` is called
    for every request the guard refuses (`timeout`, `headers_too_large`, `bad_http`,
    `connection_limit`), e.g. to count it."""

    def __init__(
        self, limits: ConnectionLimits, *, on_refusal: Callable[[str], None] | None = None
    ) -> None:
        self.limits = limits
        self._on_refusal = on_refusal
        # Waiting connections (every phase but BUSY and CLOSING), longest-waiting first.
        self._waiting: OrderedDict[_GuardedConnection, None] = OrderedDict()
        self._busy: set[_GuardedConnection] = set()
        self._closing: OrderedDict[_GuardedConnection, None] = OrderedDict()

    def protocol_class(self, base: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
        """`base` (uvicorn's H11Protocol or HttpToolsProtocol) with this guard in front."""
        name = f"Guarded{base.__name__}"
        return cast(type[asyncio.Protocol], type(name, (_GuardedConnection, base), {"guard": self}))

    def __len__(self) -> int:
        return len(self._waiting) + len(self._busy) + len(self._closing)

    def _admit(self, newcomer: _GuardedConnection) -> bool:
        """Make room for `newcomer` if the cap is reached; False if no one can be given up."""
        if len(self) < self.limits.max_connections:
            return True
        if self._closing:
            victim, _ = self._closing.popitem(last=False)
        elif self._waiting:
            victim, _ = self._waiting.popitem(last=False)
            log.warning(
                "%d connections are open (ROUTER_MAX_CONNECTIONS): closed the one that waited "
                "longest to let a new one in",
                self.limits.max_connections,
            )
        else:
            log.warning(
                "all %d connections are busy (ROUTER_MAX_CONNECTIONS): answered a new one 503",
                self.limits.max_connections,
            )
            return False
        victim._give_up()
        return True

    def _place(self, conn: _GuardedConnection, phase: Phase, *, restart: bool) -> None:
        if phase is Phase.BUSY:
            self._waiting.pop(conn, None)
            self._busy.add(conn)
        elif phase is Phase.CLOSING:
            self._waiting.pop(conn, None)
            self._busy.discard(conn)
            self._closing[conn] = None
        elif conn in self._waiting:
            if restart:
                self._waiting.move_to_end(conn)
        else:
            self._busy.discard(conn)
            self._waiting[conn] = None

    def _forget(self, conn: _GuardedConnection) -> None:
        self._waiting.pop(conn, None)
        self._busy.discard(conn)
        self._closing.pop(conn, None)

    def _refused(self, reason: str) -> None:
        if self._on_refusal is not None:
            self._on_refusal(reason)


BAD_HTTP = (
    "the request is not valid HTTP/1.1 (request line, headers, Content-Length or chunked "
    "body); fix the client that sent it"
)
BUSY = "the server is answering as many connections as it may at once; retry later"
EVICTED = (
    "the server needed this incomplete request's connection for another client; send the "
    "whole request without pausing, and retry"
)


class _GuardedConnection(_Protocol):
    guard: ClassVar[ConnectionGuard]  # set by ConnectionGuard.protocol_class

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = Phase.FRESH
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._headers_at = 0.0  # when the current request's head was complete
        self._seen_cycle: object = None  # uvicorn's cycle of the current request
        self._head_bytes = 0  # bytes of the current request head so far
        self._tail = b""  # the last bytes of the head so far, to find a blank line split in two

    # ---------------------------------------------------------------- uvicorn's callbacks

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.guard._admit(self):
            self._refuse(HTTPStatus.SERVICE_UNAVAILABLE, BUSY, "connection_limit", retry=True)
            return
        self._enter(Phase.FRESH, self.loop.time() + self.guard.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._arm(None)
        self.guard._forget(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase is Phase.CLOSING:
            return  # refused: the input is dropped until the connection closes
        if phase in _RECEIVING_HEAD:
            if self._head_too_large(data):
                self._refuse_large_head()
                return
            if phase is Phase.IDLE:
                timeout = self.guard.limits.header_timeout
                self._enter(Phase.HEADERS, self.loop.time() + timeout, restart=True)
            elif phase is Phase.FRESH:
                # The first request's head is due within the header timeout of the opening.
                self._enter(Phase.HEADERS, self._deadline)
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to input its parser refuses: JSON, and a lingering close."""
        if self._phase in _RECEIVING_HEAD and self._head_bytes > self.guard.limits.max_header_bytes:
            self._refuse_large_head()
        else:
            self._refuse(HTTPStatus.BAD_REQUEST, BAD_HTTP, "bad_http")

    def _unsupported_upgrade_warning(self) -> None:
        # uvicorn's warning would tell every sender of an Upgrade header to install a WebSocket
        # library; the router serves no WebSockets, so the request is answered as plain HTTP.
        log.debug("ignored an Upgrade header")

    # ---------------------------------------------------------------- phases

    def _follow(self) -> None:
        """Move to the phase uvicorn's request cycle shows, after it saw input or an answer."""
        if self._phase is Phase.CLOSING or self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None:
            return  # no request head completed yet: FRESH or HEADERS, set by data_received
        new_request = cycle is not self._seen_cycle
        if new_request:
            self._seen_cycle = cycle
            self._headers_at = self.loop.time()
            self._head_bytes = 0
            self._tail = b""
        deadline: float | None
        if cycle.more_body:
            phase = Phase.DRAIN if cycle.response_complete else Phase.BODY
            deadline = self._headers_at + self.guard.limits.body_timeout
        elif not cycle.response_complete:
            phase, deadline = Phase.BUSY, None
        elif self._head_bytes or self._phase is Phase.IDLE:
            return  # the next request's head is arriving (HEADERS), or nothing changed
        else:
            phase = Phase.IDLE
            deadline = self.loop.time() + self.guard.limits.keepalive_timeout
        if new_request or phase is not self._phase:
            self._enter(phase, deadline)

    def _enter(self, phase: Phase, deadline: float | None, *, restart: bool = False) -> None:
        self._phase = phase
        self.guard._place(self, phase, restart=restart)
        self._arm(deadline)

    def _arm(self, deadline: float | None) -> None:
        if self._timer is not None:
            if deadline == self._deadline:
                return
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._deadline = deadline
            self._timer = self.loop.call_at(deadline, self._on_deadline)

    def _on_deadline(self) -> None:
        self._timer = None
        limits = self.guard.limits
        if self._phase is Phase.HEADERS:
            self._refuse(
                HTTPStatus.REQUEST_TIMEOUT,
                f"the request headers did not arrive within {limits.header_timeout:g} s; send "
                "the whole request without pausing (ROUTER_HEADER_TIMEOUT)",
                "timeout",
            )
        elif self._phase is Phase.BODY:
            self._refuse(
                HTTPStatus.REQUEST_TIMEOUT,
                f"the request body did not arrive within {limits.body_timeout:g} s of its "
                "headers; send the whole body without pausing (ROUTER_BODY_TIMEOUT)",
                "timeout",
            )
        elif self._phase is Phase.CLOSING:
            self.transport.abort()  # the client neither closed nor read: stop waiting for it
        else:  # FRESH, IDLE, DRAIN: no request is owed an answer
            self._unset_keepalive_if_required()
            self._enter(Phase.CLOSING, self.loop.time() + LINGER_SECONDS)
            self.transport.close()

    # ---------------------------------------------------------------- refusals

    def _head_too_large(self, data: bytes) -> bool:
        """Count `data` into the current request head; True if the head is over the limit.

        Only the bytes up to the blank line that ends the head count: a body may follow it in
        the same chunk."""
        end = -1
        if self._tail:
            match = HEAD_END.search(self._tail + data[:2])
            if match:
                end = max(0, match.end() - len(self._tail))
        if end < 0:
            match = HEAD_END.search(data)
            if match:
                end = match.end()
        size = self._head_bytes + (end if end >= 0 else len(data))
        self._head_bytes += len(data)
        self._tail = (self._tail + data[-2:])[-2:]
        return size > self.guard.limits.max_header_bytes

    def _refuse(
        self, status: HTTPStatus, message: str, reason: str, *, retry: bool = False
    ) -> None:
        """Answer `status` with a JSON error (unless an answer has begun), then close lingering."""
        self.guard._refused(reason)
        log.debug("refused a request: %s", message, extra={"status_code": status.value})
        if self._answerable():
            self.transport.write(self._answer(status, message, retry=retry))
        self._unset_keepalive_if_required()
        self._enter(Phase.CLOSING, self.loop.time() + LINGER_SECONDS)
        if self.transport.is_closing():
            return
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        # Half-close and keep reading: closing with unread input would make the kernel send a
        # reset, which can destroy the answer before the client has read it.
        self.transport.write_eof()
        self.flow.resume_reading()

    def _refuse_large_head(self) -> None:
        self._refuse(
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
            f"the request line and headers are larger than {self.guard.limits.max_header_bytes} "
            "bytes; send a shorter URL or fewer headers (ROUTER_MAX_HEADER_BYTES)",
            "headers_too_large",
        )

    def _give_up(self) -> None:
        """Close at once to make room for a newcomer (the guard has already forgotten it)."""
        if self._phase in (Phase.HEADERS, Phase.BODY):
            self.guard._refused("connection_limit")
            if self._answerable():
                self.transport.write(
                    self._answer(HTTPStatus.SERVICE_UNAVAILABLE, EVICTED, retry=True)
                )
        self._arm(None)
        self._phase = Phase.CLOSING
        self._unset_keepalive_if_required()
        self.transport.abort()

    def _answerable(self) -> bool:
        """Whether a refusal may write its answer; a request still in the application is told
        its client is gone, so whatever the application answers later is dropped."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            return True
        cycle.disconnected = True
        cycle.message_event.set()
        return not cycle.response_started

    def _answer(self, status: HTTPStatus, message: str, *, retry: bool = False) -> bytes:
        body = json.dumps({"error": message}).encode()
        head = [b"HTTP/1.1 %d %s" % (status.value, status.phrase.encode())]
        head += [name + b": " + value for name, value in self.server_state.default_headers]
        head += [
            b"content-type: application/json",
            b"content-length: %d" % len(body),
            b"connection: close",
        ]
        if retry:
            head.append(b"retry-after: %d" % RETRY_AFTER_SECONDS)
        return b"\r\n".join(head) + b"\r\n\r\n" + body
