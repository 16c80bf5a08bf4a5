"""The http action: one request per attempt through one pooled aiohttp session.

Outcomes: 2xx is delivered (the status is returned). 408, 429 and 5xx, connection errors,
timeouts and DNS failures are RetryLater (with the destination's `Retry-After`, if any). Other
4xx are GiveUp, and so are 3xx: redirects are not followed, because following one would send
the body and the rule's headers (often a bearer token) to wherever the answer points; a moved
endpoint is a rule to fix, and the dead job says so. An invalid URL, or a header value with a
line break or another control character, is GiveUp.

The URL is sent exactly as rendered: render_action percent-encoded the event's values in it
(router.urls), and `URL(..., encoded=True)` keeps yarl and aiohttp from re-encoding or
normalising it (`%2F` stays `%2F`, nothing resolves `..`).

Error messages name the destination as host[:port] only. Header values and the URL's path,
query and userinfo are never repeated: they are where secrets live.
"""

from __future__ import annotations

import errno
import importlib.metadata
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self

import aiohttp
from yarl import URL

from router.actions.base import Deliverer
from router.exceptions import GiveUp, RetryLater
from router.headers import header_problem
from router.retry import parse_retry_after
from router.rules import HTTP_TIMEOUT_DEFAULT
from router.urls import UrlProblem, check

if TYPE_CHECKING:
    from router.settings import Settings

DNS_CACHE_SECONDS = 300
MAX_RESPONSE_BYTES = 64 * 1024  # read (and discard) at most this much of an answer
RETRY_STATUSES = frozenset({408, 429})


def _version() -> str:
    try:
        return importlib.metadata.version("actito-router")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "0"


USER_AGENT = f"actito-router/{_version()}"


def _where(url: URL) -> str:
    """host, or host:port when the port is not the scheme's default; never path or query."""
    host = url.raw_host or "?"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return host if url.is_default_port() else f"{host}:{url.port}"


def parse_url(raw: object) -> URL:
    """The URL to request, as it is (router.urls.check), or GiveUp saying what is wrong with
    it (without repeating it)."""
    if not isinstance(raw, str) or not raw.strip():
        raise GiveUp("invalid URL: empty")
    try:
        return check(raw)
    except UrlProblem as problem:
        raise GiveUp(f"invalid URL: {problem.message}") from None


class HttpDeliverer(Deliverer):
    """Sends {"type": "http", "method", "url", "headers", "body"} as one HTTP request.

    Headers sent: the rendered ones, plus `Idempotency-Key: <job id>`, `User-Agent` and
    `Content-Type: application/json` unless the rule set its own (names compare case-
    insensitively; the rule's value wins). The body is sent as UTF-8 bytes, as rendered (a
    lone surrogate, which UTF-8 cannot carry, becomes "?").
    """

    type = "http"

    def __init__(
        self,
        *,
        concurrency: int = 64,
        per_host_concurrency: int = 8,
        default_timeout: float = HTTP_TIMEOUT_DEFAULT,
    ) -> None:
        self._limit = concurrency
        self._limit_per_host = per_host_concurrency
        self._default_timeout = default_timeout
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        # The worker limits deliveries per destination itself (ROUTER_PER_HOST_CONCURRENCY).
        # A second per-host limit here, on aiohttp's own key, would queue requests inside
        # the client, where the wait counts against their timeout.
        return cls(concurrency=settings.concurrency, per_host_concurrency=0)

    async def start(self) -> None:
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(
            limit=self._limit,
            limit_per_host=self._limit_per_host,
            ttl_dns_cache=DNS_CACHE_SECONDS,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # One destination's cookies must never reach another rule's requests.
            cookie_jar=aiohttp.DummyCookieJar(),
            # The answer is discarded: do not spend CPU inflating it.
            auto_decompress=False,
            raise_for_status=False,
        )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def deliver(
        self, rendered: Mapping[str, Any], *, job_id: str, timeout: float | None
    ) -> int | None:
        if self._session is None:
            raise RuntimeError("HttpDeliverer.start() was not called")
        url = parse_url(rendered.get("url"))
        where = _where(url)
        method = str(rendered.get("method") or "POST").upper()
        headers = self._headers(rendered.get("headers") or {}, job_id)
        if url.raw_user is not None and any(n.lower() == "authorization" for n in headers):
            # aiohttp refuses the pair; say which rule fix is needed instead of "malformed".
            raise GiveUp("invalid request: the URL holds credentials and an Authorization header")
        body = rendered.get("body")
        # A lone surrogate (a sender's escape, inserted raw by a template) has no UTF-8 form:
        # it goes out as "?" rather than failing the delivery on every attempt.
        data = body.encode("utf-8", "replace") if isinstance(body, str) else body
        seconds = timeout if timeout is not None else rendered.get("timeout")
        client_timeout = aiohttp.ClientTimeout(total=float(seconds or self._default_timeout))
        try:
            async with self._session.request(
                method,
                url,
                headers=headers,
                data=data,
                timeout=client_timeout,
                allow_redirects=False,
            ) as response:
                status = response.status
                retry_after = response.headers.get("Retry-After")
                await response.content.read(MAX_RESPONSE_BYTES)
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise RetryLater(f"no answer from {where} within {client_timeout.total:g} s") from exc
        except aiohttp.ClientConnectorDNSError as exc:
            raise RetryLater(f"cannot resolve host {url.raw_host}") from exc
        except aiohttp.ClientSSLError as exc:
            raise RetryLater(f"TLS handshake with {where} failed") from exc
        except aiohttp.ClientConnectorError as exc:
            if exc.os_error.errno == errno.ECONNREFUSED:
                raise RetryLater(f"connection refused by {where}") from exc
            reason = exc.os_error.strerror or type(exc.os_error).__name__
            raise RetryLater(f"cannot connect to {where}: {reason}") from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise RetryLater(f"{where} closed the connection before answering") from exc
        except aiohttp.InvalidURL as exc:
            raise GiveUp("invalid URL: it cannot be requested") from exc
        except aiohttp.ClientResponseError as exc:
            raise RetryLater(f"invalid HTTP answer from {where}") from exc
        except aiohttp.ClientError as exc:
            raise RetryLater(f"request to {where} failed: {type(exc).__name__}") from exc
        except ValueError as exc:
            # aiohttp refuses a header value with a line break (and the like) as it writes it.
            raise GiveUp(f"request to {where} is invalid: a header or method is malformed") from exc
        return _outcome(status, where, retry_after)

    @staticmethod
    def _headers(rendered: Mapping[str, Any], job_id: str) -> dict[str, str]:
        headers = {str(name): str(value) for name, value in rendered.items()}
        for name, value in headers.items():
            problem = header_problem(value)
            if problem is not None:  # render_action refuses it first; this guards other callers
                raise GiveUp(f"invalid request: header {name}: {problem}")
        present = {name.lower() for name in headers}
        for name, value in (
            ("Idempotency-Key", job_id),
            ("User-Agent", USER_AGENT),
            ("Content-Type", "application/json"),
        ):
            if name.lower() not in present:
                headers[name] = value
        return headers


def _outcome(status: int, where: str, retry_after: str | None) -> int:
    """Map a status to the return value, RetryLater or GiveUp."""
    if 200 <= status < 300:
        return status
    message = f"HTTP {status} from {where}"
    if status in RETRY_STATUSES or status >= 500:
        raise RetryLater(
            message,
            status_code=status,
            retry_after=parse_retry_after(retry_after, now=time.time()),
        )
    if 300 <= status < 400:
        raise GiveUp(f"{message} (redirects are not followed)", status_code=status)
    raise GiveUp(message, status_code=status)


__all__ = ["MAX_RESPONSE_BYTES", "USER_AGENT", "HttpDeliverer", "parse_url"]
