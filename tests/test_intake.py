"""The intake in process: `create_app` on a real Engine and a real store (an SQLite file, and a
fresh PostgreSQL database where ROUTER_TEST_POSTGRES_URL is set), driven through httpx's ASGI
transport.

Each status code the intake answers is checked with its JSON body and the rejection it counts
(the `reason` label of router_requests_rejected), and that a refused push stores nothing; then
the duplicate rules, and /healthz, /readyz and /metrics. What only a socket shows (uvicorn, the
connection guard, a sender that vanishes mid-body) is tested in tests/e2e and tests/security.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sqlite3
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from router.app import IntakeConfig, ReloadStatus, create_app
from router.engine import Engine
from router.metrics import Metrics
from router.rulefiles.loader import load_rules
from router.store import open_store
from router.store.base import JobSummary, Store
from router.store.sqlite import SQLiteStore

PATH = "/webhooks/actito"
SECRETS = ("current-secret", "previous-secret")  # two at once, as during a rotation
MAX_BODY = 64 * 1024  # bytes
MAX_RECORDS = 3
CONFIG = IntakeConfig(
    secrets=tuple(secret.encode() for secret in SECRETS),
    max_body_bytes=MAX_BODY,
    max_records=MAX_RECORDS,
)
DAY = 86400.0  # seconds: the dedupe window unless a test sets another
T0 = 1_700_000_000.0  # the injected clock starts here
LOCK_WAIT = 0.2  # seconds the SQLite store waits for another process's write lock
RULE = """
[[rule]]
name = "forward-all"

[[rule.action]]
type = "http"
url = "http://127.0.0.1:9/in/{{ data.n }}"
"""
SAMPLES = Path(__file__).parent / "samples"


def event(event_id: str | None, *items: dict[str, Any], **envelope: Any) -> dict[str, Any]:
    """An ACTITO envelope: ONE_BY_ONE for one item, BULK for several."""
    data: Any = items[0] if len(items) == 1 else list(items)
    body = {"tableType": "PROFILE_TABLE", "operation": "CREATE", **envelope, "data": data}
    return body if event_id is None else {"id": event_id, **body}


# ---------------------------------------------------------------- the app on a real store


class Clock:
    """The engine's clock, moved by the test."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Intake:
    """One app on one open store, and what a test reads back from them."""

    client: httpx.AsyncClient
    engine: Engine
    status: ReloadStatus
    clock: Clock

    @property
    def store(self) -> Store:
        return self.engine.store

    @property
    def metrics(self) -> Metrics:
        return self.engine.metrics

    async def push(
        self,
        body: Any,
        *,
        secret: str | None = SECRETS[0],
        content_type: str | None = "application/json",
        headers: Mapping[str, str] | None = None,
        path: str = PATH,
    ) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        sent: dict[str, str] = {}
        if content_type is not None:
            sent["Content-Type"] = content_type
        if secret is not None:
            sent["X-Authorization"] = secret
        sent.update(headers or {})
        return await self.client.post(path, content=content, headers=sent)

    def count(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(f"{name}_total", labels) or 0.0

    def rejections(self) -> dict[str, float]:
        """router_requests_rejected by reason: every reason counted so far."""
        return {
            sample.labels["reason"]: sample.value
            for family in self.metrics.registry.collect()
            if family.name == "router_requests_rejected"
            for sample in family.samples
            if sample.name.endswith("_total")
        }

    async def jobs(self) -> list[JobSummary]:
        return await self.store.list_jobs(limit=10_000)

    async def routed(self) -> Counter[str | None]:
        """Jobs stored per event id."""
        return Counter(job.event_id for job in await self.jobs())


@contextlib.asynccontextmanager
async def serving(
    url: str,
    rules: Path,
    *,
    config: IntakeConfig = CONFIG,
    window: float = DAY,
    store: Store | None = None,
) -> AsyncIterator[Intake]:
    """The app on the store at `url` (or `store`, not yet open), opened here and closed after."""
    store = store or open_store(url)
    await store.open()
    try:
        clock = Clock()
        engine = Engine(store, load_rules(rules), dedupe_window=window, clock=clock)
        status = ReloadStatus(version=engine.ruleset.version, at=T0)
        transport = httpx.ASGITransport(app=create_app(engine, config, status))
        async with httpx.AsyncClient(transport=transport, base_url="http://router.test") as client:
            yield Intake(client, engine, status, clock)
    finally:
        await store.close()


Scenario = Callable[[Intake], Awaitable[None]]


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules"
    path.mkdir()
    (path / "forward.toml").write_text(RULE)
    return path


async def _admin(server_url: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An SQLite file in tmp_path, or a fresh PostgreSQL database dropped after the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'router.db'}"
        return
    server_url = os.environ.get("ROUTER_TEST_POSTGRES_URL")
    if not server_url:
        pytest.skip("set ROUTER_TEST_POSTGRES_URL (a server URL allowed to CREATE DATABASE)")
    name = f"test_{uuid.uuid4().hex[:16]}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    try:
        yield urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    finally:
        asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'router.db'}"


def run(url: str, rules: Path, scenario: Scenario, **options: Any) -> None:
    """Serve the app on a newly opened store and run `scenario` against it, in one loop."""

    async def main() -> None:
        async with serving(url, rules, **options) as intake:
            await scenario(intake)

    asyncio.run(main())


# ---------------------------------------------------------------- 202


def test_a_push_is_acknowledged_once_its_jobs_are_stored(store_url: str, rules: Path) -> None:
    async def scenario(intake: Intake) -> None:
        response = await intake.push(event("evt-1", {"n": 1}, {"n": 2}))
        assert response.status_code == 202, response.text
        assert response.json() == {"accepted": 2, "duplicates": 0}
        jobs = await intake.jobs()
        assert sorted(job.destination for job in jobs) == ["127.0.0.1:9"] * 2
        assert {(job.event_id, job.rule, job.ruleset_version) for job in jobs} == {
            ("evt-1", "forward-all", intake.engine.ruleset.version)
        }
        assert {job.created_at for job in jobs} == {T0}  # the engine's clock, not the wall's
        assert intake.count("router_records_received") == 2
        assert intake.rejections() == {}

    run(store_url, rules, scenario)


def test_every_sample_is_accepted_record_by_record(sqlite_url: str, rules: Path) -> None:
    def records(payload: Any) -> int:
        envelopes = payload if isinstance(payload, list) else [payload]
        return sum(len(e["data"]) if isinstance(e["data"], list) else 1 for e in envelopes)

    samples = sorted(SAMPLES.glob("*.json"))
    assert samples

    async def scenario(intake: Intake) -> None:
        expected = 0
        for sample in samples:
            payload = json.loads(sample.read_text())
            response = await intake.push(sample.read_bytes())
            assert response.status_code == 202, (sample.name, response.text)
            assert response.json() == {"accepted": records(payload), "duplicates": 0}
            expected += records(payload)
        assert len(await intake.jobs()) == expected

    # The largest sample holds more records than the shared configuration allows at once.
    run(sqlite_url, rules, scenario, config=IntakeConfig(secrets=CONFIG.secrets))


def test_hostile_values_are_stored_exactly(store_url: str, rules: Path) -> None:
    """NUL and lone surrogates (which neither database can hold as text) in the id and the
    data, odd keys: acknowledged, stored as sent, and recognised when repeated."""
    body = (
        b'{"id": "evil\\u0000\\ud800", "tableType": "PROFILE_TABLE", "x.y": {"__proto__": 1},'
        b' "data": {"n": "\\u0000\\udfff\\u2028", "k\\u0000": [1e308, -0.0, 12345678901234567890]}}'
    )
    sent = json.loads(body)

    async def scenario(intake: Intake) -> None:
        first = await intake.push(body)
        assert (first.status_code, first.json()) == (202, {"accepted": 1, "duplicates": 0})
        (job,) = await intake.jobs()
        detail = await intake.store.get_job(job.id)
        assert detail is not None
        assert detail.record["data"] == sent["data"]
        assert detail.record["id"] == sent["id"]
        assert detail.record["x.y"] == {"__proto__": 1}
        again = await intake.push(body)
        assert again.json() == {"accepted": 0, "duplicates": 1}

    run(store_url, rules, scenario)


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
        "text/json",
        "application/vnd.actito+json",
        None,  # no Content-Type at all
    ],
)
def test_json_content_types_are_accepted(
    sqlite_url: str, rules: Path, content_type: str | None
) -> None:
    async def scenario(intake: Intake) -> None:
        response = await intake.push(event("ct", {"n": 1}), content_type=content_type)
        assert response.status_code == 202, response.text

    run(sqlite_url, rules, scenario)


def test_limits_are_inclusive(sqlite_url: str, rules: Path) -> None:
    async def scenario(intake: Intake) -> None:
        items = [{"n": n} for n in range(MAX_RECORDS)]
        response = await intake.push(event("at-the-record-limit", *items))
        assert response.json() == {"accepted": MAX_RECORDS, "duplicates": 0}
        prefix = b'{"id": "at-the-byte-limit", "data": {"pad": "'
        body = prefix + b"x" * (MAX_BODY - len(prefix) - 3) + b'"}}'
        assert len(body) == MAX_BODY
        response = await intake.push(body)
        assert response.status_code == 202, response.text
        assert intake.rejections() == {}

    run(sqlite_url, rules, scenario)


# ---------------------------------------------------------------- 401


@pytest.mark.parametrize("secret", SECRETS)
def test_each_configured_secret_is_accepted(sqlite_url: str, rules: Path, secret: str) -> None:
    async def scenario(intake: Intake) -> None:
        response = await intake.push(event(f"by-{secret}", {"n": 1}), secret=secret)
        assert response.status_code == 202, response.text

    run(sqlite_url, rules, scenario)


def test_the_secret_header_is_the_one_configured(sqlite_url: str, rules: Path) -> None:
    config = IntakeConfig(secrets=CONFIG.secrets, secret_header="X-Actito-Token")

    async def scenario(intake: Intake) -> None:
        refused = await intake.push(event("h", {"n": 1}))  # the secret, in the default header
        assert refused.status_code == 401
        assert refused.json() == {"error": "missing or wrong secret in the X-Actito-Token header"}
        accepted = await intake.push(
            event("h", {"n": 1}), secret=None, headers={"x-actito-token": SECRETS[1]}
        )
        assert accepted.status_code == 202, accepted.text
        assert intake.rejections() == {"unauthorized": 1}

    run(sqlite_url, rules, scenario, config=config)


def test_without_secrets_the_intake_is_open(sqlite_url: str, rules: Path) -> None:
    async def scenario(intake: Intake) -> None:
        response = await intake.push(event("open", {"n": 1}), secret=None)
        assert response.status_code == 202, response.text

    run(sqlite_url, rules, scenario, config=IntakeConfig(secrets=()))


def test_a_non_ascii_secret_matches_the_same_bytes(sqlite_url: str, rules: Path) -> None:
    secret = "clé-secrète"
    config = IntakeConfig(secrets=(secret.encode(),))  # as `router serve` builds it

    async def scenario(intake: Intake) -> None:
        response = await intake.client.post(
            PATH,
            content=json.dumps(event("utf8", {"n": 1})).encode(),
            headers={"X-Authorization": secret.encode()},  # the same bytes, on the wire
        )
        assert response.status_code == 202, response.text

    run(sqlite_url, rules, scenario, config=config)


# ---------------------------------------------------------------- every refusal


@dataclass(frozen=True)
class Refusal:
    body: bytes
    status: int
    reason: str
    error: str | re.Pattern[str]  # the exact sentence, or a pattern it matches
    secret: str | None = SECRETS[0]
    content_type: str | None = "application/json"
    headers: Mapping[str, str] | None = None


_GOOD = json.dumps(event("good", {"n": 1})).encode()


def unauthorised(
    secret: str | None, body: bytes = _GOOD, headers: Mapping[str, str] | None = None
) -> Refusal:
    error = "missing or wrong secret in the X-Authorization header"
    return Refusal(body, 401, "unauthorized", error, secret=secret, headers=headers)


def unsupported(content_type: str, media: str) -> Refusal:
    error = f"content type {media} is not JSON"
    return Refusal(_GOOD, 415, "unsupported_media_type", error, content_type=content_type)


def too_many(body: Any) -> Refusal:
    error = (
        f"the push holds 4 records; at most {MAX_RECORDS} are accepted at once (ROUTER_MAX_RECORDS)"
    )
    return Refusal(json.dumps(body).encode(), 413, "too_many_records", error)


def malformed(body: bytes, error: str | re.Pattern[str]) -> Refusal:
    return Refusal(body, 400, "malformed", error)


def not_an_event(body: Any, error: str) -> Refusal:
    return Refusal(
        body if isinstance(body, bytes) else json.dumps(body).encode(), 422, "not_an_event", error
    )


def envelope(**keys: Any) -> dict[str, Any]:
    return {"id": "bad", "data": {}, **keys}


EMPTY = "the request body is empty; send a JSON event"
NO_DATA = "data is missing; an ACTITO event carries a 'data' object or list"
DEEP = "the JSON body is nested too deeply"
REFUSALS: dict[str, Refusal] = {
    # 401: checked first, before the body is looked at or read.
    "no secret": unauthorised(None),
    "empty secret": unauthorised(""),
    "wrong secret": unauthorised("guess"),
    "a secret's prefix": unauthorised(SECRETS[0][:-1]),
    "a secret and more": unauthorised(SECRETS[0] + "x"),
    "both secrets at once": unauthorised(",".join(SECRETS)),
    "in another header": unauthorised(None, headers={"Authorization": SECRETS[0]}),
    "wrong secret, bad body": unauthorised("guess", b"{nope"),
    "wrong secret, huge body": unauthorised(
        "guess", headers={"Content-Length": str(MAX_BODY * 1000)}
    ),
    # 415: an explicit content type that is not JSON.
    "xml": unsupported("Text/XML; charset=utf-8", "text/xml"),
    "form": unsupported("application/x-www-form-urlencoded", "application/x-www-form-urlencoded"),
    "plain text": unsupported("text/plain", "text/plain"),
    "json lines": unsupported("application/jsonl", "application/jsonl"),
    # 413: a declared body over the limit (a streamed one has its own test), too many records.
    "declared too large": Refusal(
        _GOOD,
        413,
        "too_large",
        f"the body is larger than {MAX_BODY} bytes",
        headers={"Content-Length": str(MAX_BODY + 1)},
    ),
    "too many in a BULK": too_many(event("bulk", *({"n": n} for n in range(4)))),
    "too many over envelopes": too_many([event(f"e{n}", {"n": n}, {"n": -n}) for n in (1, 2)]),
    # 400: no JSON to read.
    "empty": malformed(b"", EMPTY),
    "blank": malformed(b" \r\n\t", EMPTY),
    "not JSON": malformed(b"{nope", re.compile(r"the body is not valid JSON: .*line 1 column 2.*")),
    "trailing garbage": malformed(
        _GOOD + b" x", re.compile(r"the body is not valid JSON: Extra data.*")
    ),
    "not UTF-8": malformed(
        b'{"id": "\xff\xfe", "data": {}}', "the body is not valid UTF-8 (byte 8)"
    ),
    "UTF-16": malformed('{"data": {}}'.encode("utf-16"), "the body is not valid UTF-8 (byte 0)"),
    "NaN": malformed(b'{"data": {"x": NaN}}', "the body is not valid JSON: NaN is not valid JSON"),
    "-Infinity": malformed(
        b'{"data": {"x": -Infinity}}', "the body is not valid JSON: -Infinity is not valid JSON"
    ),
    "out of range": malformed(
        b'{"data": {"x": 1e999}}', "the body is not valid JSON: the number 1e999 is out of range"
    ),
    "negative out of range": malformed(
        b'{"data": {"x": -1e999}}', "the body is not valid JSON: the number -1e999 is out of range"
    ),
    "nested too deeply": malformed(b"[" * 30_000 + b"]" * 30_000, DEEP),
    "data nested too deeply": malformed(
        b'{"data": {"x": %s%s}}' % (b"[" * 30_000, b"]" * 30_000), DEEP
    ),
    # 422: JSON, but no ACTITO event; the sentence names the offending key.
    "no data": not_an_event({"hello": "world"}, NO_DATA),
    "data a number": not_an_event(
        envelope(data=3), "data must be an object or a list, not a number"
    ),
    "data a string": not_an_event(
        envelope(data="x"), "data must be an object or a list, not a string"
    ),
    "data null": not_an_event(envelope(data=None), "data must be an object or a list, not null"),
    "a BULK item a list": not_an_event(
        envelope(data=[{}, [1]]), "data[1] must be an object, not a list"
    ),
    "a number": not_an_event(
        42, "the body must be an event object or a list of them, not a number"
    ),
    "a string": not_an_event(
        "e", "the body must be an event object or a list of them, not a string"
    ),
    "null": not_an_event(None, "the body must be an event object or a list of them, not null"),
    "an empty list": not_an_event(
        [], "the body is an empty list; expected one event or a list of events"
    ),
    "a list holding true": not_an_event(
        [envelope(), True], "[1] must be an event object, not a boolean"
    ),
    "the second without data": not_an_event([envelope(), {"id": 2}], f"[1].{NO_DATA}"),
    "fields a string": not_an_event(
        envelope(fields="email"), "fields must be a list of names or null"
    ),
    "fields holding a number": not_an_event(
        envelope(fields=["a", 1]), "fields must be a list of names or null"
    ),
    "tableType a number": not_an_event(
        envelope(tableType=1), "tableType must be a string or null, not a number"
    ),
    "operation a list": not_an_event(
        envelope(operation=["CREATE"]), "operation must be a string or null, not a list"
    ),
    "eventType an object": not_an_event(
        envelope(eventType={}), "eventType must be a string or null, not an object"
    ),
    "triggerType a boolean": not_an_event(
        envelope(triggerType=False), "triggerType must be a string or null, not a boolean"
    ),
    "tableId a boolean": not_an_event(
        envelope(tableId=True), "tableId must be a string, not a boolean"
    ),
    "tableId a list": not_an_event(envelope(tableId=[16]), "tableId must be a string, not a list"),
    "the second's tableId": not_an_event(
        [envelope(), envelope(tableId=1.5)], "[1].tableId must be a string, not a number"
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS), ids=list(REFUSALS))
def test_refusals(sqlite_url: str, rules: Path, case: str) -> None:
    """The status, the one-sentence JSON error, the reason counted; and nothing stored."""
    refusal = REFUSALS[case]

    async def scenario(intake: Intake) -> None:
        response = await intake.push(
            refusal.body,
            secret=refusal.secret,
            content_type=refusal.content_type,
            headers=refusal.headers,
        )
        assert response.status_code == refusal.status, response.text
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert list(body) == ["error"]
        if isinstance(refusal.error, str):
            assert body["error"] == refusal.error
        else:
            assert refusal.error.fullmatch(body["error"]), body["error"]
        assert "retry-after" not in response.headers  # a 4xx: sending it again cannot help
        for secret in SECRETS:
            assert secret not in response.text
        assert intake.rejections() == {refusal.reason: 1}
        assert await intake.jobs() == []
        assert intake.count("router_records_received") == 0

    run(sqlite_url, rules, scenario)


def test_an_integer_out_of_range_is_refused_in_plain_words(sqlite_url: str, rules: Path) -> None:
    async def scenario(intake: Intake) -> None:
        response = await intake.push(b'{"id": "n", "data": {"x": ' + b"9" * 5000 + b"}}")
        assert response.status_code == 400
        assert intake.rejections() == {"malformed": 1}
        error = response.json()["error"]
        assert "sys.set_int_max_str_digits" not in error, error

    run(sqlite_url, rules, scenario)


def test_a_streamed_body_over_the_limit(sqlite_url: str, rules: Path) -> None:
    """No Content-Length: the body is counted as it arrives, refused once over the limit, and
    read no further."""
    chunk = b"x" * 1024
    read = 0  # bytes the app has taken from the stream

    async def body() -> AsyncIterator[bytes]:
        nonlocal read
        for part in (b'{"id": "stream", "data": {"pad": "', *[chunk] * (4 * MAX_BODY // 1024)):
            read += len(part)
            yield part
        yield b'"}}'

    async def scenario(intake: Intake) -> None:
        response = await intake.client.post(
            PATH, content=body(), headers={"X-Authorization": SECRETS[0]}
        )
        assert response.status_code == 413
        assert response.json() == {"error": f"the body is larger than {MAX_BODY} bytes"}
        assert intake.rejections() == {"too_large": 1}
        assert await intake.jobs() == []

    run(sqlite_url, rules, scenario)
    assert MAX_BODY < read <= MAX_BODY + len(chunk)


def test_a_declared_length_is_refused_before_the_body_is_read(sqlite_url: str, rules: Path) -> None:
    """A Content-Length over the limit is refused as declared, though the body is small."""

    async def scenario(intake: Intake) -> None:
        small = json.dumps(event("declared", {"n": 1})).encode()
        response = await intake.push(small, headers={"Content-Length": str(MAX_BODY + 1)})
        assert response.status_code == 413
        # The same body declared honestly is accepted: the declaration alone was refused.
        assert (await intake.push(small)).status_code == 202

    run(sqlite_url, rules, scenario)


def test_a_client_that_disconnects_mid_body(sqlite_url: str, rules: Path) -> None:
    """The ASGI server says the client is gone before the body ended: 400, nothing stored."""
    sent: list[dict[str, Any]] = []
    incoming = iter(
        [
            {"type": "http.request", "body": b'{"id": "gone", "da', "more_body": True},
            {"type": "http.disconnect"},
        ]
    )

    async def receive() -> dict[str, Any]:
        return next(incoming)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"router.test"),
            (b"content-type", b"application/json"),
            (b"content-length", b"1000"),
            (b"x-authorization", SECRETS[0].encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
    }

    async def scenario(intake: Intake) -> None:
        app = create_app(intake.engine, CONFIG, intake.status)
        await app(scope, receive, send)
        start, body = sent[0], sent[1]
        assert start["status"] == 400
        assert json.loads(body["body"]) == {
            "error": "the client disconnected before the body ended"
        }
        assert intake.rejections() == {"disconnected": 1}
        assert await intake.jobs() == []

    run(sqlite_url, rules, scenario)


def test_unknown_paths_and_methods_are_json(sqlite_url: str, rules: Path) -> None:
    async def scenario(intake: Intake) -> None:
        missing = await intake.push(_GOOD, path="/webhooks/other")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/json"
        assert missing.json() == {"error": "Not Found"}
        for method in ("GET", "PUT", "DELETE"):
            response = await intake.client.request(method, PATH)
            assert response.status_code == 405, method
            assert response.json() == {"error": "Method Not Allowed"}
        assert (await intake.client.post("/healthz")).status_code == 405
        # Neither is a push the intake refused: no rejection is counted.
        assert intake.rejections() == {}
        assert await intake.jobs() == []

    run(sqlite_url, rules, scenario)


def test_a_wrong_method_is_told_the_allowed_one(sqlite_url: str, rules: Path) -> None:
    async def scenario(intake: Intake) -> None:
        response = await intake.client.get(PATH)
        assert response.status_code == 405
        assert response.headers.get("allow") == "POST"

    run(sqlite_url, rules, scenario)


# ---------------------------------------------------------------- nesting at the limit


def test_records_nested_at_the_limit_are_stored_or_refused(store_url: str, rules: Path) -> None:
    """Nesting is refused where the body is parsed; a record deep enough to parse must then
    also be matched, keyed and stored, never failing later as a 5xx the sender would retry
    for ever. The deepest accepted depth is found by bisection; it and the next are checked."""

    def nested(depth: int) -> bytes:
        return b'{"id": "deep-%d", "data": {"x": %s%s}}' % (depth, b"[" * depth, b"]" * depth)

    async def scenario(intake: Intake) -> None:
        async def accepted(depth: int) -> bool:
            response = await intake.push(nested(depth))
            if response.status_code == 202:
                return True
            assert response.status_code == 400, (depth, response.text)
            assert response.json() == {"error": "the JSON body is nested too deeply"}
            return False

        low, high = 1, 20_000  # accepted, refused
        assert await accepted(low)
        assert not await accepted(high)
        while high - low > 1:
            middle = (low + high) // 2
            if await accepted(middle):
                low = middle
            else:
                high = middle
        assert low > 100  # real events are never refused for their depth
        stored = {job.event_id: job.id for job in await intake.jobs()}
        detail = await intake.store.get_job(stored[f"deep-{low}"])
        assert detail is not None
        assert json.dumps(detail.record["data"]).encode() == b'{"x": %s%s}' % (
            b"[" * low,
            b"]" * low,
        )
        assert not await accepted(low + 1)

    run(store_url, rules, scenario)


# ---------------------------------------------------------------- 503


async def _unavailable(intake: Intake) -> None:
    """Push while the store cannot take it: 503, to be retried. Nothing may be acknowledged."""
    response = await intake.push(event("during-outage", {"n": 1}))
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    assert response.json() == {"error": "the store is unavailable; retry later"}
    assert intake.count("router_records_received") == 1  # only the push before the outage


def test_a_closed_store_is_answered_503(store_url: str, rules: Path) -> None:
    async def scenario(intake: Intake) -> None:
        assert (await intake.push(event("before", {"n": 1}))).status_code == 202
        await intake.store.close()
        await _unavailable(intake)
        await _unavailable(intake)
        assert intake.rejections() == {"unavailable": 2}

    run(store_url, rules, scenario)


def test_a_deleted_sqlite_file_is_answered_503(tmp_path: Path, rules: Path) -> None:
    """The store's file is removed under it (StoreGone): the push that finds out, and every
    one after, is refused, so the sender keeps its events."""
    path = tmp_path / "router.db"

    async def scenario(intake: Intake) -> None:
        assert (await intake.push(event("before", {"n": 1}))).status_code == 202
        for name in (path, Path(f"{path}-wal")):
            name.unlink()
        await _unavailable(intake)  # written into the orphaned file, then found out
        await _unavailable(intake)  # refused at once
        assert intake.rejections() == {"unavailable": 2}
        ready = await intake.client.get("/readyz")
        assert ready.status_code == 503
        (problem,) = ready.json()["problems"]
        assert problem.startswith("store unavailable: the SQLite store's file is gone"), problem

    run(f"sqlite:///{path}", rules, scenario)


def test_a_locked_sqlite_file_is_answered_503_until_released(sqlite_url: str, rules: Path) -> None:
    """Another process holds the write lock past the store's busy timeout: 503, and not ready;
    once it lets go, pushes are taken again and the store is ready."""
    path = sqlite_url.removeprefix("sqlite:///")
    store = SQLiteStore(sqlite_url, busy_timeout=LOCK_WAIT)

    async def scenario(intake: Intake) -> None:
        assert (await intake.push(event("before", {"n": 1}))).status_code == 202
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            await _unavailable(intake)
            assert (await intake.client.get("/readyz")).status_code == 503
            other.execute("ROLLBACK")
        assert (await intake.push(event("after", {"n": 2}))).status_code == 202
        assert (await intake.client.get("/readyz")).status_code == 200
        assert await intake.routed() == {"before": 1, "after": 1}
        assert intake.rejections() == {"unavailable": 1}

    run(sqlite_url, rules, scenario, store=store)


@pytest.mark.postgres
def test_a_dropped_postgres_database_is_answered_503(rules: Path) -> None:
    server_url = os.environ.get("ROUTER_TEST_POSTGRES_URL")
    if not server_url:
        pytest.skip("set ROUTER_TEST_POSTGRES_URL (a server URL allowed to CREATE DATABASE)")
    name = f"test_{uuid.uuid4().hex[:16]}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))

    async def scenario(intake: Intake) -> None:
        assert (await intake.push(event("before", {"n": 1}))).status_code == 202
        await _admin(server_url, f'DROP DATABASE "{name}" WITH (FORCE)')
        await _unavailable(intake)
        assert intake.rejections() == {"unavailable": 1}
        assert (await intake.client.get("/readyz")).status_code == 503

    try:
        run(urlunsplit(urlsplit(server_url)._replace(path=f"/{name}")), rules, scenario)
    finally:
        asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# ---------------------------------------------------------------- duplicates


def test_a_repeat_within_the_window_routes_nothing(store_url: str, rules: Path) -> None:
    push = event("dup-1", {"n": 1})

    async def scenario(intake: Intake) -> None:
        assert (await intake.push(push)).json() == {"accepted": 1, "duplicates": 0}
        intake.clock.now += DAY - 1
        assert (await intake.push(push)).json() == {"accepted": 0, "duplicates": 1}
        assert await intake.routed() == {"dup-1": 1}
        assert intake.count("router_records_received") == 1
        assert intake.count("router_records_duplicate") == 1
        assert intake.count("router_rule_matches", rule="forward-all", mode="live") == 1
        # Once the window has passed since it was first seen, it is a new push again.
        intake.clock.now = T0 + DAY + 1
        assert (await intake.push(push)).json() == {"accepted": 1, "duplicates": 0}
        assert await intake.routed() == {"dup-1": 2}

    run(store_url, rules, scenario)


def test_the_same_content_under_another_id_is_new(store_url: str, rules: Path) -> None:
    """subscribe -> unsubscribe -> subscribe: the third must not be taken for the first."""

    async def scenario(intake: Intake) -> None:
        for event_id in ("sub-1", "unsub-1", "sub-2"):
            subscribed = event_id.startswith("sub")
            push = event(event_id, {"n": 7, "subscribed": subscribed}, operation="UPDATE")
            assert (await intake.push(push)).json() == {"accepted": 1, "duplicates": 0}
        assert await intake.routed() == {"sub-1": 1, "unsub-1": 1, "sub-2": 1}

    run(store_url, rules, scenario)


def test_a_push_mixing_a_repeat_and_a_new_record(store_url: str, rules: Path) -> None:
    old, new = event("mix-1", {"n": 1}), event("mix-2", {"n": 2})

    async def scenario(intake: Intake) -> None:
        assert (await intake.push([old])).json() == {"accepted": 1, "duplicates": 0}
        assert (await intake.push([old, new])).json() == {"accepted": 1, "duplicates": 1}
        assert await intake.routed() == {"mix-1": 1, "mix-2": 1}
        assert intake.count("router_records_received") == 2
        assert intake.count("router_records_duplicate") == 1
        assert intake.count("router_rule_matches", rule="forward-all", mode="live") == 2

    run(store_url, rules, scenario)


def test_a_window_of_zero_disables_dedupe(store_url: str, rules: Path) -> None:
    push = event("again", {"n": 1})

    async def scenario(intake: Intake) -> None:
        for _ in range(3):
            assert (await intake.push(push)).json() == {"accepted": 1, "duplicates": 0}
        assert await intake.routed() == {"again": 3}
        assert intake.count("router_records_duplicate") == 0

    run(store_url, rules, scenario, window=0)


def test_a_record_without_an_id_is_never_a_repeat(store_url: str, rules: Path) -> None:
    async def scenario(intake: Intake) -> None:
        for _ in range(2):
            response = await intake.push(event(None, {"n": 1}))
            assert response.json() == {"accepted": 1, "duplicates": 0}
        assert await intake.routed() == {None: 2}

    run(store_url, rules, scenario)


def test_positions_in_a_bulk_push(store_url: str, rules: Path) -> None:
    """A record is a repeat only at the position it had: the same item at another place in
    the push is new, and equal items within one push are all kept."""
    a, b, c = {"n": 1}, {"n": 2}, {"n": 3}

    async def scenario(intake: Intake) -> None:
        async def push(*items: dict[str, Any]) -> Any:
            return (await intake.push(event("bulk-1", *items))).json()

        assert await push(a, b, c) == {"accepted": 3, "duplicates": 0}
        assert await push(a, b, c) == {"accepted": 0, "duplicates": 3}
        assert await push(a, b) == {"accepted": 0, "duplicates": 2}  # a prefix: both repeats
        assert await push(b, a, c) == {"accepted": 2, "duplicates": 1}  # a and b swapped
        assert await push(c, c) == {"accepted": 2, "duplicates": 0}  # c at 0 and 1: new
        assert await push(a, b, c) == {"accepted": 0, "duplicates": 3}
        assert await intake.routed() == {"bulk-1": 7}
        # Over a list of envelopes, the position is the record's in the whole push.
        first, second = event("env-1", {"n": 1}), event("env-2", {"n": 2})
        assert (await intake.push([first, second])).json() == {"accepted": 2, "duplicates": 0}
        assert (await intake.push([second, first])).json() == {"accepted": 2, "duplicates": 0}

    run(store_url, rules, scenario)


# ---------------------------------------------------------------- operations


def test_healthz_answers_whatever_the_store(sqlite_url: str, rules: Path) -> None:
    async def scenario(intake: Intake) -> None:
        assert (await intake.client.get("/healthz")).json() == {"status": "ok"}
        await intake.store.close()
        response = await intake.client.get("/healthz")
        assert (response.status_code, response.json()) == (200, {"status": "ok"})

    run(sqlite_url, rules, scenario)


def test_readyz(store_url: str, rules: Path) -> None:
    async def scenario(intake: Intake) -> None:
        version = intake.engine.ruleset.version
        ready = await intake.client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {
            "status": "ok",
            "ruleset": version,
            "rules": 1,
            "last_reload": {"ok": True, "at": T0, "version": version, "errors": []},
        }
        await intake.store.close()
        down = await intake.client.get("/readyz")
        assert down.status_code == 503
        body = down.json()
        assert body["status"] == "unavailable"
        assert body["ruleset"] == version  # still says what would serve
        (problem,) = body["problems"]
        assert problem.startswith("store unavailable: "), problem

    run(store_url, rules, scenario)


def test_readyz_shows_the_reload_status(sqlite_url: str, rules: Path, tmp_path: Path) -> None:
    """A refused reload leaves the last good rules serving (still ready) and says why; a
    swapped-in rule set is what /readyz names."""
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "forward.toml").write_text(RULE)
    (newer / "audit.toml").write_text(
        '[[rule]]\nname = "audit"\n[[rule.action]]\ntype = "log"\nmessage = "seen"\n'
    )

    async def scenario(intake: Intake) -> None:
        serving_version = intake.engine.ruleset.version
        intake.status.ok = False
        intake.status.at = T0 + 60
        intake.status.errors = ["rules/forward.toml:3: rule 'x': unknown key"]
        ready = await intake.client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["ruleset"] == serving_version
        assert ready.json()["last_reload"] == {
            "ok": False,
            "at": T0 + 60,
            "version": serving_version,
            "errors": ["rules/forward.toml:3: rule 'x': unknown key"],
        }
        ruleset = load_rules(newer)
        intake.engine.swap(ruleset)
        intake.status.version, intake.status.ok, intake.status.errors = ruleset.version, True, []
        body = (await intake.client.get("/readyz")).json()
        assert (body["ruleset"], body["rules"]) == (ruleset.version, 2)
        assert body["last_reload"]["version"] == ruleset.version
        assert ruleset.version != serving_version

    run(sqlite_url, rules, scenario)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics(sqlite_url: str, rules: Path) -> None:
    async def scenario(intake: Intake) -> None:
        await intake.push(event("m-1", {"n": 1}, {"n": 2}))
        await intake.push(event("m-1", {"n": 1}, {"n": 2}))
        await intake.push(b"{nope")
        await intake.push(_GOOD, secret="guess")
        intake.clock.now += 30  # the oldest pending job is 30 s old by the engine's clock
        response = await intake.client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        samples = _samples(response.text)
        version = intake.engine.ruleset.version
        expected = {
            ("router_records_received_total", ()): 2,
            ("router_records_duplicate_total", ()): 2,
            ("router_records_unmatched_total", ()): 0,
            ("router_rule_matches_total", (("mode", "live"), ("rule", "forward-all"))): 2,
            ("router_requests_rejected_total", (("reason", "malformed"),)): 1,
            ("router_requests_rejected_total", (("reason", "unauthorized"),)): 1,
            ("router_queue_depth", ()): 2,
            ("router_dead_jobs", ()): 0,
            ("router_oldest_pending_age_seconds", ()): 30,
            ("router_ruleset_info", (("version", version),)): 1,
        }
        assert {key: samples.get(key) for key in expected} == expected
        # With the store down the counters are still served; the gauges keep their values.
        await intake.store.close()
        await intake.push(event("m-2", {"n": 3}))
        down = await intake.client.get("/metrics")
        assert down.status_code == 200
        samples = _samples(down.text)
        assert samples[("router_requests_rejected_total", (("reason", "unavailable"),))] == 1
        assert samples[("router_queue_depth", ())] == 2

    run(sqlite_url, rules, scenario)
