"""The http action: one HTTP request per delivery, through one pooled aiohttp session.

Its table: `url` (a template; event values are percent-encoded where they stand, router.urls),
`method`, `headers` (templates; each rendered value one line, router.actions.headers), `body`
(a template; without one, the record's `data` is sent as JSON), `timeout`, and `batch`: many
records in one request (router.batches), whose templates see `records` instead of `record` and
`data` (without a body, the list of the records' `data` is sent as JSON). Its jobs count
against the URL's host:port, so a slow host never holds up another.

Outcomes of an attempt: 2xx is delivered (the status is returned). 408, 429 and 5xx, connection
errors, timeouts and DNS failures are RetryLater (with the destination's `Retry-After`, if any).
Other 4xx are GiveUp, and so are 3xx: redirects are not followed, because following one would
send the body and the rule's headers (often a bearer token) to wherever the answer points; a
moved endpoint is a rule to fix, and the dead job says so. An invalid URL, or a header value
with a line break or another control character, is GiveUp.

The URL is sent exactly as rendered: rendering percent-encoded the event's values in it, and
`URL(..., encoded=True)` keeps yarl and aiohttp from re-encoding or normalising it (`%2F` stays
`%2F`, nothing resolves `..`).

Error messages name the destination as host[:port] only. Header values and the URL's path,
query and userinfo are never repeated: they are where secrets live.

The answer's status decides the outcome; its body is read only for the attempt's excerpt
(router.excerpts): at most READ_BYTES of it (inflated, when gzip or deflate encoded, to at most
as much), and a failure or timeout while reading it ends the excerpt there. The rest is never
read: leaving the response closes its connection, so a gigabyte answer costs what a short one
does.
"""

from __future__ import annotations

import errno
import importlib.metadata
import json
import re
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from router.actions.base import ActionType, Delivered, Deliverer, Key
from router.actions.headers import header_problem
from router.batches import compile_batch
from router.checks import Checker, KeyPath, kind_of
from router.exceptions import GiveUp, RenderError, RetryLater
from router.excerpts import READ_BYTES, Excerpt
from router.retry import RetryOverride, parse_retry_after
from router.rules import Action, Batch, spec_hash
from router.sandbox import PlaceholderSecrets, tojson
from router.templating import BATCH_NAMES, Template, compile_url_template, scoped
from router.urls import UrlProblem, build, check

if TYPE_CHECKING:
    from router.settings import Settings

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP token (RFC 9110)

URL_KEY = Key(
    "url",
    "template",
    "The URL to call. Values from the event are percent-encoded for where they stand.",
    required=True,
    template=True,
)
METHOD_KEY = Key("method", "string", f"One of {', '.join(METHODS)}.", default="POST")
HEADERS_KEY = Key(
    "headers",
    "table of templates",
    "Header name = template; each value must be one line.",
    template=True,
)
BODY_KEY = Key(
    "body",
    "template",
    "The request body; without it, the record's `data` is sent as JSON.",
    template=True,
)
TIMEOUT_KEY = Key(
    "timeout", "number", "Seconds one attempt may take.", default=10.0, bounds=(0.1, 300.0)
)
BATCH_KEY = Key(
    "batch",
    "table",
    '`{ max_records = 500, max_wait = "2s" }`: send up to max_records records in one request, '
    "once that many are due or the first has waited max_wait; the templates then see "
    "`records` (the list) instead of `record` and `data`.",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpAction(Action):
    type: str = "http"
    method: str
    url: Template
    headers: tuple[tuple[str, Template], ...]
    body: Template | None  # None: send the record's `data` as JSON


DNS_CACHE_SECONDS = 300
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
        default_timeout: float = TIMEOUT_KEY.default,
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
            # Only the head of an answer is read, and inflated bounded (_head): never all of it.
            auto_decompress=False,
            raise_for_status=False,
        )

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def deliver(
        self, rendered: Mapping[str, Any], *, job_id: str, timeout: float | None
    ) -> Delivered:
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
                head = await _head(response)
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
        return Delivered(_outcome(status, where, retry_after, head), head)

    @staticmethod
    def _headers(rendered: Mapping[str, Any], job_id: str) -> dict[str, str]:
        headers = {str(name): str(value) for name, value in rendered.items()}
        for name, value in headers.items():
            problem = header_problem(value)
            if problem is not None:  # rendering refuses it first; this guards other callers
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


_ENCODINGS = frozenset({"", "identity", "gzip", "x-gzip", "deflate"})  # what _head can read


async def _head(response: aiohttp.ClientResponse) -> Excerpt | None:
    """The head of the answer's body, read bounded (see the module docstring); None when it is
    encoded in a way this cannot inflate (br, zstd) or does not inflate."""
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in _ENCODINGS:
        return None
    raw = bytearray()
    cut = False
    try:
        while len(raw) < READ_BYTES:
            chunk = await response.content.read(READ_BYTES - len(raw))
            if not chunk:
                break
            raw += chunk
    except (TimeoutError, aiohttp.ClientError):
        cut = True  # the status has been answered: the excerpt ends where the body broke off
    cut = cut or not response.content.at_eof()
    if encoding in ("", "identity"):
        return Excerpt.of(bytes(raw), cut=cut)
    inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 32)  # a gzip or zlib header
    try:
        body = inflater.decompress(bytes(raw), READ_BYTES)
    except zlib.error:
        return None
    return Excerpt.of(body, cut=cut or bool(inflater.unconsumed_tail) or not inflater.eof)


def _outcome(status: int, where: str, retry_after: str | None, head: Excerpt | None) -> int:
    """Map a status to the return value, RetryLater or GiveUp."""
    if 200 <= status < 300:
        return status
    message = f"HTTP {status} from {where}"
    if status in RETRY_STATUSES or status >= 500:
        raise RetryLater(
            message,
            status_code=status,
            retry_after=parse_retry_after(retry_after, now=time.time()),
            response=head,
        )
    if 300 <= status < 400:
        raise GiveUp(f"{message} (redirects are not followed)", status_code=status, response=head)
    raise GiveUp(message, status_code=status, response=head)


class HttpType(ActionType):
    name = "http"
    summary = "Send an HTTP request (a CRM, a shop, a chat or any REST API)."
    keys = (URL_KEY, METHOD_KEY, HEADERS_KEY, BODY_KEY, TIMEOUT_KEY, BATCH_KEY)
    rendered = ("method", "url", "headers", "body")

    deliverer = HttpDeliverer

    @property
    def test_keys(self) -> tuple[str, ...]:
        return (*self.rendered, "body_json")

    def compile(
        self, checker: Checker, path: KeyPath, raw: dict[str, Any], retry: RetryOverride
    ) -> Action | None:
        if "batch" not in raw:
            return self._compile(checker, path, raw, retry, None)
        batch = compile_batch(checker, (*path, "batch"), raw["batch"])
        if "enrich" in raw:
            checker.report((*path, "enrich"), "is not available to a batch action; remove one")
        with scoped(BATCH_NAMES):  # its templates see `records`, not `record` and `data`
            action = self._compile(checker, path, raw, retry, batch)
        return action if batch is not None else None

    def _compile(
        self,
        checker: Checker,
        path: KeyPath,
        raw: dict[str, Any],
        retry: RetryOverride,
        batch: Batch | None,
    ) -> Action | None:
        method = checker.text((*path, "method"), raw.get("method", METHOD_KEY.default))
        if method is not None and method.upper() not in METHODS:
            checker.choice((*path, "method"), method, METHODS, "HTTP method")
        url = checker.template(
            (*path, "url"),
            checker.require(raw, "url", path, "give the URL to call"),
            compiler=compile_url_template,
        )
        headers: list[tuple[str, Template | None]] = []
        table = raw.get("headers", {})
        if not isinstance(table, dict):
            checker.report(
                (*path, "headers"), f"must be a table of name = template, not {kind_of(table)}"
            )
        else:
            for name, value in table.items():
                if not _HEADER_NAME.match(name):
                    checker.report((*path, "headers", name), "is not a valid HTTP header name")
                template = checker.template((*path, "headers", name), value)
                checker.literal((*path, "headers", name), template, header_problem)
                headers.append((name, template))
        body = checker.template((*path, "body"), raw.get("body"))
        assert TIMEOUT_KEY.bounds is not None
        timeout = checker.number(
            (*path, "timeout"), raw.get("timeout", TIMEOUT_KEY.default), TIMEOUT_KEY.bounds
        )
        complete = [(n, t) for n, t in headers if t is not None]
        if method is None or url is None or timeout is None or len(complete) < len(headers):
            return None
        return HttpAction(
            spec=raw,
            method=method.upper(),
            url=url,
            headers=tuple(complete),
            body=body,
            timeout=float(timeout),
            retry=retry,
            batch=batch,
        )

    def render(self, action: HttpAction, context: Mapping[str, Any]) -> dict[str, Any]:
        # A dry run renders secrets as placeholders: where one stands, the real value is unknown.
        dry = isinstance(context.get("secrets"), PlaceholderSecrets)
        headers = {}
        for name, template in action.headers:
            value = template.render(context, where=f"headers.{name}")
            problem = header_problem(value)  # a line break would add headers
            if problem is not None:
                raise RenderError(f"template for headers.{name}: {problem}")
            headers[name] = value
        if action.body is None and action.batch is not None:
            body = tojson([record.get("data") for record in context.get("records", ())])
        elif action.body is None:
            body = tojson(context.get("data"))
        else:
            body = action.body.render(context, where="body")
        try:
            url = build(action.url.render(context, where="url"), placeholders=dry)
        except UrlProblem as problem:
            raise RenderError(f"template for url: {problem.message}") from None
        return {
            "type": "http",
            "method": action.method,
            "url": url,
            "headers": headers,
            "body": body,
        }

    def destination(self, action: HttpAction) -> str:
        """The URL's host:port when the template writes it out, else (a host computed by the
        template, e.g. from a secret) one destination per action."""
        try:
            parts = urlsplit(action.url.source.strip())
            port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
        except ValueError:
            parts, port = None, None
        if parts is None or "{" in parts.netloc or not parts.hostname or port is None:
            return f"http:{spec_hash(action.spec)[:12]}"
        return f"{parts.hostname}:{port}"  # hostname is lower-cased, userinfo dropped

    def expected(self, checker: Checker, path: KeyPath, key: str, value: Any) -> Any:
        if key == "body_json":
            return value  # compared as parsed JSON
        if key == "headers":
            if not isinstance(value, dict):
                checker.report(
                    path, f"must be a table of header name = value, not {kind_of(value)}"
                )
                return None
            return {name: checker.text((*path, name), v) for name, v in value.items()}
        text = checker.text(path, value)
        return text.upper() if key == "method" and text else text

    def compare(self, key: str, want: Any, rendered: Mapping[str, Any]) -> tuple[str, Any] | None:
        if key == "body_json":
            body = rendered.get("body")
            try:
                actual = json.loads(body) if isinstance(body, str) else body
            except ValueError as exc:
                return f"the rendered body is not JSON ({exc})", body
            return None if actual == want else ("the rendered body differs", actual)
        if key == "headers" and isinstance(want, dict):
            # The listed headers must have these values; others (Content-Type...) may exist.
            # Header names are case-insensitive.
            folded = {str(name).lower(): value for name, value in rendered["headers"].items()}
            seen = {name: folded.get(str(name).lower()) for name in want}
            return None if seen == want else ("the rendered headers differ", seen)
        return super().compare(key, want, rendered)

    def describe(self, rendered: Mapping[str, Any]) -> tuple[str, list[tuple[str, str]]]:
        blocks = [(str(name), str(value)) for name, value in rendered["headers"].items()]
        return f"{rendered['method']} {rendered['url']}", [*blocks, ("body", rendered["body"])]


__all__ = [
    "USER_AGENT",
    "HttpAction",
    "HttpDeliverer",
    "HttpType",
    "parse_url",
]
