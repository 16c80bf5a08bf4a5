"""The ACTITO API client: one per process, shared by enrichment, the `actito` action and the
`router actito` commands, so that they all draw on one access token and one set of limits.

Authentication (ACTITO's API keys): `GET {api}/auth/token` with the key as the Authorization
header answers an access token that lives 15 minutes ("expiresIn": "900s"). The token is
cached until shortly before it expires and fetched by one caller at a time; a call answered
401 (a token ACTITO dropped early) fetches a new token once and is made again.

Outcomes of a call, the same for every caller: connection errors, timeouts, 408, 429 and 5xx
are RetryLater (with ACTITO's Retry-After, if any), so a delivery waits and tries again like
any other; a refused API key is RetryLater too (a setting to fix, not a job to lose). Every
other answer is returned as it is, for the caller to judge (a 404 means something different
to an enrichment and to an unsubscribe).

The API key and tokens never appear in a log line or an error message; messages name the API
host only. The head of an answer a delivery keeps (router.excerpts) has them masked.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import aiohttp
from pydantic import SecretStr
from yarl import URL

from router.actito.limits import MINUTE, CallLimits
from router.exceptions import GiveUp, RetryLater
from router.excerpts import Excerpt
from router.retry import parse_retry_after

if TYPE_CHECKING:
    from router.settings import Settings

log = logging.getLogger("router.actito")

TOKEN_PATH = "/auth/token"
DEFAULT_TOKEN_SECONDS = 900.0  # ACTITO's documented lifetime, when an answer does not say
# A token is renewed this long before it expires (60 s of a 15-minute token), and never later
# than nine tenths of its life: a call must not start with a token that dies on the way.
TOKEN_MARGIN = 60.0
TOKEN_MARGIN_SHARE = 0.1
MAX_ANSWER_BYTES = 1024 * 1024  # the most of one answer read (a profile, a page of a list)
MAX_PROBLEM_CHARS = 200  # of ACTITO's own error message quoted in an error
RETRY_STATUSES = frozenset({408, 429})
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*s?\s*$")


def _version() -> str:
    try:
        return importlib.metadata.version("actito-router")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "0"


USER_AGENT = f"actito-router/{_version()}"


def segment(value: object) -> str:
    """One path segment, percent-encoded: an id or a name from an event or a rule can never add
    a segment, a query or a fragment to the path."""
    return quote(str(value), safe="")


@dataclass(frozen=True, slots=True)
class ActitoConfig:
    """What the client needs of the settings (ROUTER_ACTITO_*)."""

    api_url: str
    entity: str | None
    api_key: SecretStr | None
    max_concurrent: int = 5
    calls_per_minute: int = 100
    timeout: float = 30.0
    profile_cache_seconds: float = 30.0
    profile_tables: Mapping[str, str] = field(default_factory=dict)  # tableId -> name in paths

    @classmethod
    def from_settings(cls, settings: Settings) -> ActitoConfig:
        tables = {}
        for item in settings.actito_profile_tables:
            table_id, _, name = item.partition("=")
            tables[table_id.strip()] = name.strip()
        return cls(
            api_url=settings.actito_api_url,
            entity=settings.actito_entity or None,
            api_key=settings.actito_api_key,
            max_concurrent=settings.actito_max_concurrent,
            calls_per_minute=settings.actito_calls_per_minute,
            timeout=settings.actito_timeout,
            profile_cache_seconds=settings.actito_profile_cache_seconds,
            profile_tables=tables,
        )

    @property
    def missing(self) -> list[str]:
        """The settings that must still be set before any call can be made."""
        missing = []
        if self.api_key is None or not self.api_key.get_secret_value():
            missing.append("ROUTER_ACTITO_API_KEY")
        if not self.entity:
            missing.append("ROUTER_ACTITO_ENTITY")
        return missing

    @property
    def host(self) -> str:
        """The API's host[:port], the only part of an address an error message names."""
        return urlsplit(self.api_url).netloc or self.api_url


@dataclass(frozen=True, slots=True)
class Answer:
    """An answer the caller has to judge: its status and its JSON (None: empty or not JSON),
    and its head as a delivery keeps it (credentials masked)."""

    status: int
    body: Any
    excerpt: Excerpt | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def problem(self) -> str:
        """ACTITO's own message about a refusal, as one short line ("" when it gave none)."""
        body = self.body
        text: Any = body
        if isinstance(body, Mapping):
            text = next(
                (body[k] for k in ("message", "errorMessage", "error", "detail") if k in body), ""
            )
        if isinstance(text, list) and text:
            text = text[0]
        if isinstance(text, Mapping):
            text = text.get("message", "")
        if not isinstance(text, str):
            return ""
        line = " ".join(text.split())
        if len(line) > MAX_PROBLEM_CHARS:
            line = line[: MAX_PROBLEM_CHARS - 1] + "…"
        return line


class ActitoClient:
    """Calls ACTITO's API under the process's limits. `start()` opens the HTTP session (inside
    the running loop), `close()` closes it; `call` may be used concurrently in between."""

    def __init__(
        self,
        config: ActitoConfig,
        *,
        limits: CallLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.limits = limits or CallLimits(
            concurrent=config.max_concurrent, per_window=config.calls_per_minute, window=MINUTE
        )
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._token: str | None = None
        self._renew_at = 0.0
        self._token_lock = asyncio.Lock()
        self.token_fetches = 0  # tokens fetched so far, for logs and tests

    async def start(self) -> None:
        if self._session is not None:
            return
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.config.max_concurrent),
            cookie_jar=aiohttp.DummyCookieJar(),
            raise_for_status=False,
        )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def check_configured(self) -> None:
        """RetryLater naming the settings to set, when any is missing."""
        missing = self.config.missing
        if missing:
            raise RetryLater(f"ACTITO is not configured: set {' and '.join(missing)}")

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Any = None,
        timeout: float | None = None,
    ) -> Answer:
        """Call `/v4/entity/{entity}/{path}` (segments of `path` already encoded, see
        `segment`) with `body` as JSON (None: no body), allowing it `timeout` seconds
        (default: the configured timeout). Returns every answer but those that are RetryLater
        (see the module docstring); GiveUp when the answer is too large."""
        self.check_configured()
        entity = segment(self.config.entity)
        url = URL(f"{self.config.api_url}/v4/entity/{entity}/{path}", encoded=True)
        if params:
            url = url.with_query({key: str(value) for key, value in params.items()})
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode()
        for attempt in (1, 2):
            token = await self._access_token()
            status, raw, retry_after = await self._send(method, url, token, data, timeout=timeout)
            if status != 401:
                break
            self._drop(token)  # dropped early by ACTITO: fetch a new one, once
            if attempt == 2:
                raise RetryLater(
                    "ACTITO refused a fresh access token (HTTP 401); check that the "
                    "ROUTER_ACTITO_API_KEY user may use this entity",
                    status_code=401,
                )
        excerpt = self._excerpt(raw, token)
        if status in RETRY_STATUSES or status >= 500:
            busy = " (more than its limit of calls at once)" if status == 429 else ""
            raise RetryLater(
                f"the ACTITO API answered HTTP {status}{busy}",
                status_code=status,
                retry_after=parse_retry_after(retry_after, now=time.time()),
                response=excerpt,
            )
        return Answer(status, _json(raw), excerpt)

    def _excerpt(self, raw: bytes, token: str) -> Excerpt:
        """The head of an answer with the credentials the call carried masked."""
        key = self.config.api_key.get_secret_value() if self.config.api_key else ""
        credentials = {"ACTITO_ACCESS_TOKEN": token, "ROUTER_ACTITO_API_KEY": key}
        return Excerpt.of(raw).masked(credentials)

    async def _access_token(self) -> str:
        token = self._token
        if token is not None and self._clock() < self._renew_at:
            return token
        async with self._token_lock:
            if self._token is not None and self._clock() < self._renew_at:
                return self._token  # another caller renewed it while this one waited
            return await self._fetch_token()

    def _drop(self, token: str) -> None:
        if self._token == token:  # not one another caller fetched meanwhile
            self._token = None

    async def _fetch_token(self) -> str:
        assert self.config.api_key is not None  # check_configured ran
        url = URL(f"{self.config.api_url}{TOKEN_PATH}", encoded=True)
        headers = {"Authorization": self.config.api_key.get_secret_value()}
        status, raw, retry_after = await self._send("GET", url, None, None, headers=headers)
        answer = _json(raw)
        if status in (401, 403):
            raise RetryLater(
                f"ACTITO refused the API key (HTTP {status}); check ROUTER_ACTITO_API_KEY and "
                "ROUTER_ACTITO_API_URL (each region has its own host)",
                status_code=status,
            )
        if not 200 <= status < 300:
            raise RetryLater(
                f"ACTITO's token endpoint answered HTTP {status}",
                status_code=status,
                retry_after=parse_retry_after(retry_after, now=time.time()),
            )
        token = answer.get("accessToken") if isinstance(answer, Mapping) else None
        if not isinstance(token, str) or not token:
            raise RetryLater("ACTITO's token endpoint answered without an access token")
        lifetime = _seconds(answer.get("expiresIn"))
        margin = min(TOKEN_MARGIN, lifetime * TOKEN_MARGIN_SHARE)
        self._token = token
        self._renew_at = self._clock() + lifetime - margin
        self.token_fetches += 1
        log.debug("fetched an ACTITO access token", extra={"lifetime": lifetime})
        return token

    async def _send(
        self,
        method: str,
        url: URL,
        token: str | None,
        data: bytes | None,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, bytes, str | None]:
        """One HTTP exchange under the limits: (status, the answer's body, Retry-After)."""
        if self._session is None:
            raise RuntimeError("ActitoClient.start() was not called")
        sent = {"Accept": "application/json", "User-Agent": USER_AGENT, **(headers or {})}
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        if data is not None:
            sent["Content-Type"] = "application/json"
        host = self.config.host
        limit = aiohttp.ClientTimeout(total=timeout or self.config.timeout)
        try:
            async with (
                self.limits.call(),
                self._session.request(
                    method, url, headers=sent, data=data, timeout=limit, allow_redirects=False
                ) as response,
            ):
                status = response.status
                retry_after = response.headers.get("Retry-After")
                raw = await _read(response)
        except TimeoutError as exc:
            raise RetryLater(
                f"no answer from the ACTITO API at {host} within {limit.total:g} s"
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror or type(exc.os_error).__name__
            raise RetryLater(f"cannot connect to the ACTITO API at {host}: {reason}") from exc
        except aiohttp.ClientError as exc:
            raise RetryLater(
                f"the call to the ACTITO API at {host} failed: {type(exc).__name__}"
            ) from exc
        return status, raw, retry_after


async def _read(response: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise GiveUp(f"the ACTITO API's answer exceeds {MAX_ANSWER_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _json(raw: bytes) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw.decode("utf-8", "replace"))
    except ValueError:  # an error page of a proxy, say: the status tells what happened
        return None


def _seconds(value: Any) -> float:
    """A token lifetime as ACTITO writes it ("900s", or a number); the documented 15 minutes
    when it is missing or unreadable (a 401 then renews it early)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    if isinstance(value, str):
        found = _DURATION.match(value)
        if found and float(found.group(1)) > 0:
            return float(found.group(1))
    return DEFAULT_TOKEN_SECONDS


__all__ = ["USER_AGENT", "ActitoClient", "ActitoConfig", "Answer", "segment"]
