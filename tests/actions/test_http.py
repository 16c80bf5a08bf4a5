from __future__ import annotations

import asyncio
import gzip
import time
import tracemalloc
import zlib
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest

from router.actions.base import Delivered
from router.actions.http import USER_AGENT, HttpDeliverer
from router.exceptions import DeliveryFailed, GiveUp, RetryLater
from router.excerpts import READ_BYTES, Excerpt
from tests.sinks import HttpSink, Reply, free_port

Outcome = Delivered | int | None | DeliveryFailed
OK = Delivered(200, Excerpt(""))  # the sink's default answer: 200, no body


@pytest.fixture
def sink() -> Iterator[HttpSink]:
    with HttpSink() as running:
        yield running


async def _attempts(
    renders: list[Mapping[str, Any]], *, timeout: float, job_id: str, **options: Any
) -> list[Outcome]:
    deliverer = HttpDeliverer(**options)
    await deliverer.start()
    outcomes: list[Outcome] = []
    try:
        for rendered in renders:
            try:
                outcomes.append(await deliverer.deliver(rendered, job_id=job_id, timeout=timeout))
            except DeliveryFailed as exc:
                outcomes.append(exc)
    finally:
        await deliverer.close()
    return outcomes


def attempt(
    rendered: Mapping[str, Any], *, times: int = 1, timeout: float = 5.0, job_id: str = "job-1"
) -> list[Outcome]:
    """Deliver `rendered` `times` times through one deliverer; each outcome or error."""
    return asyncio.run(_attempts([rendered] * times, timeout=timeout, job_id=job_id))


def post(url: str, body: str = '{"a": 1}', **extra: Any) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "url": url, "headers": {}, "body": body, **extra}


def _http_date(offset: float) -> str:
    return format_datetime(datetime.fromtimestamp(time.time() + offset, UTC), usegmt=True)


@pytest.mark.parametrize(
    ("reply", "kind", "status"),
    [
        (Reply(200), None, 200),
        (Reply(201), None, 201),
        (Reply(204), None, 204),
        (Reply(408), RetryLater, 408),
        (Reply(429), RetryLater, 429),
        (Reply(500), RetryLater, 500),
        (Reply(502), RetryLater, 502),
        (Reply(503), RetryLater, 503),
        (Reply(400), GiveUp, 400),
        (Reply(401), GiveUp, 401),
        (Reply(404), GiveUp, 404),
        (Reply(422), GiveUp, 422),
        (Reply(301, headers={"Location": "/elsewhere"}), GiveUp, 301),
        (Reply(307, headers={"Location": "/elsewhere"}), GiveUp, 307),
    ],
)
def test_status_outcomes(
    sink: HttpSink, reply: Reply, kind: type[DeliveryFailed] | None, status: int
) -> None:
    sink.script(reply)
    (outcome,) = attempt(post(sink.url("/hook")))
    if kind is None:
        assert outcome == Delivered(status, Excerpt(""))
    else:
        assert type(outcome) is kind
        assert isinstance(outcome, DeliveryFailed)
        assert outcome.status_code == status
        assert str(outcome).startswith(f"HTTP {status} from 127.0.0.1:{sink.port}")
    assert len(sink.requests) == 1  # redirects are not followed


def test_redirect_message_says_why(sink: HttpSink) -> None:
    sink.script(Reply(302, headers={"Location": sink.url("/other")}))
    (outcome,) = attempt(post(sink.url("/hook")))
    assert str(outcome) == f"HTTP 302 from 127.0.0.1:{sink.port} (redirects are not followed)"


def test_503_twice_then_200_with_a_stable_idempotency_key(sink: HttpSink) -> None:
    sink.script(Reply(503), Reply(503))
    outcomes = attempt(post(sink.url("/hook")), times=3, job_id="01HX-job")
    assert [type(o) for o in outcomes] == [RetryLater, RetryLater, Delivered]
    assert outcomes[2] == OK
    assert [r.headers["Idempotency-Key"] for r in sink.requests] == ["01HX-job"] * 3


@pytest.mark.parametrize(
    ("retry_after", "low", "high"),
    [
        (None, None, None),
        ("7", 7.0, 7.0),
        ("0", 0.0, 0.0),
        ("-3", 0.0, 0.0),
        ("whenever", None, None),
        (120.0, 115.0, 120.0),  # an HTTP date 120 s ahead (dates have whole seconds)
        (-60.0, 0.0, 0.0),  # an HTTP date in the past
    ],
)
def test_retry_after_is_parsed(
    sink: HttpSink, retry_after: str | float | None, low: float | None, high: float | None
) -> None:
    # Dates are written when the test runs, not at collection: time passes in between.
    value = _http_date(retry_after) if isinstance(retry_after, float) else retry_after
    sink.script(Reply(429, headers={"Retry-After": value} if value else {}))
    (outcome,) = attempt(post(sink.url("/hook")))
    assert isinstance(outcome, RetryLater)
    if low is None or high is None:
        assert outcome.retry_after is None
    else:
        assert outcome.retry_after is not None
        assert low <= outcome.retry_after <= high


def test_slow_destination_times_out(sink: HttpSink) -> None:
    sink.script(Reply(200, delay=5.0))
    started = time.monotonic()
    (outcome,) = attempt(post(sink.url("/slow")), timeout=0.3)
    assert time.monotonic() - started < 3.0
    assert isinstance(outcome, RetryLater)
    assert str(outcome) == f"no answer from 127.0.0.1:{sink.port} within 0.3 s"
    assert outcome.status_code is None


def test_connection_refused_is_retried() -> None:
    port = free_port()
    (outcome,) = attempt(post(f"http://127.0.0.1:{port}/hook"))
    assert isinstance(outcome, RetryLater)
    assert str(outcome) == f"connection refused by 127.0.0.1:{port}"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "invalid URL: empty"),
        ("not a url", "invalid URL: no scheme, expected http or https"),
        ("ftp://files.example.com/x", "invalid URL: scheme 'ftp', expected http or https"),
        ("file:///etc/passwd", "invalid URL: scheme 'file', expected http or https"),
        ("http:///only-a-path", "invalid URL: no host"),
        ("http://example.com:99999/", "invalid URL: its host or port is not valid"),
    ],
)
def test_invalid_url_is_permanent(url: str, message: str) -> None:
    (outcome,) = attempt(post(url))
    assert isinstance(outcome, GiveUp)
    assert str(outcome) == message


def test_headers_arrive(sink: HttpSink) -> None:
    rendered = post(
        sink.url("/hook"), headers={"Authorization": "Bearer abc", "X-Source": "actito"}
    )
    attempt(rendered, job_id="job-42")
    (request,) = sink.requests
    assert request.method == "POST"
    assert request.headers["Authorization"] == "Bearer abc"
    assert request.headers["X-Source"] == "actito"
    assert request.headers["Idempotency-Key"] == "job-42"
    assert request.headers["User-Agent"] == USER_AGENT
    assert USER_AGENT.startswith("actito-router/")
    assert request.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("name", ["Content-Type", "content-type", "CONTENT-TYPE"])
def test_rule_content_type_replaces_the_default(sink: HttpSink, name: str) -> None:
    attempt(post(sink.url("/hook"), body="a=1", headers={name: "text/plain"}))
    (request,) = sink.requests
    assert request.headers.getall("Content-Type") == ["text/plain"]


@pytest.mark.parametrize(
    ("method", "body"),
    [("GET", None), ("DELETE", None), ("PUT", '{"put": true}'), ("PATCH", "[1]")],
)
def test_methods(sink: HttpSink, method: str, body: str | None) -> None:
    (outcome,) = attempt(post(sink.url("/m?page=2"), body=body or "", method=method))
    assert outcome == OK
    (request,) = sink.requests
    assert (request.method, request.path, request.query) == (method, "/m", "page=2")
    assert request.body == (body or "").encode()


@pytest.mark.parametrize(
    "body",
    [
        '{"email": "zoë@example.com", "emoji": "\U0001f680"}',
        "line one\r\nline two\n\ttabbed  ",
        "",
        "x" * 300_000,
    ],
)
def test_body_arrives_byte_exact(sink: HttpSink, body: str) -> None:
    attempt(post(sink.url("/hook"), body=body))
    (request,) = sink.requests
    assert request.body == body.encode("utf-8")


def test_large_answer_is_read_bounded(sink: HttpSink) -> None:
    sink.script(Reply(200, body=b"z" * 2_000_000))
    assert attempt(post(sink.url("/hook"))) == [Delivered(200, Excerpt("z" * READ_BYTES, True))]


def test_a_gigabyte_answer_costs_what_a_short_one_does(sink: HttpSink) -> None:
    """The head of the answer is read for the excerpt; the rest is never read (the connection
    closes under it), so memory stays within a small bound and the sink stops sending early."""
    sink.script(Reply(200, body=b"accepted ", stream=2**30))
    tracemalloc.start()
    try:
        started = time.monotonic()
        (outcome,) = attempt(post(sink.url("/hook")), timeout=30.0)
        took = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    sink.stop()  # every write of the streamed answer has ended: its count is final
    assert isinstance(outcome, Delivered) and outcome.response is not None
    assert outcome.response == Excerpt("accepted " + "z" * (READ_BYTES - 9), cut=True)
    assert peak < 4 * 2**20, f"{peak} bytes at the peak"
    assert sink.streamed < 64 * 2**20, f"{sink.streamed} bytes went out of 1 GiB"
    assert took < 10.0


def test_a_body_that_stalls_after_the_status_keeps_the_status_outcome(sink: HttpSink) -> None:
    sink.script(Reply(201, body=b"queued; more follows", hang=True))
    (outcome,) = attempt(post(sink.url("/hook")), timeout=1.0)
    assert outcome == Delivered(201, Excerpt("queued; more follows", cut=True))


@pytest.mark.parametrize(
    ("reply", "excerpt"),
    [
        (Reply(200, body=b'{"id": 7}'), Excerpt('{"id": 7}')),
        (Reply(200, body=b"caf\xe9 \xff"), Excerpt("caf\ufffd \ufffd")),  # not UTF-8
        (
            Reply(200, headers={"Content-Encoding": "gzip"}, body=gzip.compress(b'{"id": 7}')),
            Excerpt('{"id": 7}'),
        ),
        (
            Reply(200, headers={"Content-Encoding": "deflate"}, body=zlib.compress(b"ok")),
            Excerpt("ok"),
        ),
        (  # a bomb: 64 MiB inflated from 64 KiB; the head is inflated to READ_BYTES only
            Reply(200, headers={"Content-Encoding": "gzip"}, body=gzip.compress(b" " * 2**26)),
            Excerpt(" " * READ_BYTES, cut=True),
        ),
        (Reply(200, headers={"Content-Encoding": "br"}, body=b"\x1b\x00"), None),
        (Reply(200, headers={"Content-Encoding": "gzip"}, body=b"not gzip"), None),
    ],
)
def test_the_head_of_the_answer_is_the_excerpt(
    sink: HttpSink, reply: Reply, excerpt: Excerpt | None
) -> None:
    sink.script(reply)
    assert attempt(post(sink.url("/hook"))) == [Delivered(200, excerpt)]


@pytest.mark.parametrize(("status", "kind"), [(400, GiveUp), (503, RetryLater), (302, GiveUp)])
def test_a_failed_attempt_carries_what_the_destination_answered(
    sink: HttpSink, status: int, kind: type[DeliveryFailed]
) -> None:
    sink.script(Reply(status, body=b'{"error": "email is invalid"}'))
    (outcome,) = attempt(post(sink.url("/hook")))
    assert isinstance(outcome, kind)
    assert outcome.response == Excerpt('{"error": "email is invalid"}')
    assert "email is invalid" not in str(outcome)  # the error stays the router's sentence


def test_connections_are_reused_across_50_deliveries(sink: HttpSink) -> None:
    outcomes = attempt(post(sink.url("/hook")), times=50)
    assert outcomes == [OK] * 50
    assert len(sink.requests) == 50
    assert sink.connections == 1


def test_concurrent_deliveries_share_a_bounded_pool(sink: HttpSink) -> None:
    async def burst() -> list[Delivered]:
        deliverer = HttpDeliverer(concurrency=16, per_host_concurrency=4)
        await deliverer.start()
        try:
            return await asyncio.gather(
                *(
                    deliverer.deliver(post(sink.url("/hook")), job_id=f"job-{i}", timeout=5.0)
                    for i in range(50)
                )
            )
        finally:
            await deliverer.close()

    assert asyncio.run(burst()) == [OK] * 50
    assert 1 <= sink.connections <= 4
    assert {r.headers["Idempotency-Key"] for r in sink.requests} == {f"job-{i}" for i in range(50)}


SECRETS = ("HdrS3cret", "QueryS3cret", "Us3rName", "Passw0rdX", "PathS3cret")


def _secret_request(url_base: str) -> dict[str, Any]:
    host = url_base.removeprefix("http://")
    return post(
        f"http://Us3rName:Passw0rdX@{host}/PathS3cret?token=QueryS3cret",
        headers={"X-Api-Key": "HdrS3cret", "Cookie": "session=HdrS3cret"},
    )


@pytest.mark.parametrize(
    "reply", [Reply(503), Reply(400), Reply(429, headers={"Retry-After": "x"}), Reply(delay=5)]
)
def test_errors_hold_no_secret(sink: HttpSink, reply: Reply) -> None:
    sink.script(reply)
    (outcome,) = attempt(_secret_request(sink.url("")), timeout=0.5)
    assert isinstance(outcome, DeliveryFailed)
    assert not [secret for secret in SECRETS if secret in str(outcome)]
    (request,) = sink.wait_for(1)  # the request itself went out with all of them
    assert request.query == "token=QueryS3cret"
    assert request.headers["X-Api-Key"] == "HdrS3cret"


def test_url_credentials_and_authorization_header_conflict(sink: HttpSink) -> None:
    rendered = post(
        sink.url("/hook").replace("http://", "http://u:p@"),
        headers={"Authorization": "Bearer HdrS3cret"},
    )
    (outcome,) = attempt(rendered)
    assert isinstance(outcome, GiveUp)
    assert "HdrS3cret" not in str(outcome)
    assert "Authorization" in str(outcome)


def test_url_credentials_are_sent_as_basic_auth(sink: HttpSink) -> None:
    assert attempt(post(sink.url("/hook").replace("http://", "http://us3r:pw@"))) == [OK]
    (request,) = sink.requests
    assert request.headers["Authorization"] == "Basic dXMzcjpwdw=="


def test_connection_errors_hold_no_secret() -> None:
    (outcome,) = attempt(_secret_request(f"http://127.0.0.1:{free_port()}"))
    assert isinstance(outcome, RetryLater)
    assert not [secret for secret in SECRETS if secret in str(outcome)]


def test_header_with_a_line_break_is_permanent_and_not_echoed(sink: HttpSink) -> None:
    (outcome,) = attempt(post(sink.url("/hook"), headers={"X-Token": "HdrS3cret\r\nX-Evil: 1"}))
    assert isinstance(outcome, GiveUp)
    assert "HdrS3cret" not in str(outcome)
    assert sink.requests == []


def test_deliver_before_start_is_a_programming_error() -> None:
    with pytest.raises(RuntimeError, match="start"):
        asyncio.run(HttpDeliverer().deliver(post("http://127.0.0.1:9/"), job_id="j", timeout=1))


def test_a_lone_surrogate_in_a_body_is_sent_not_fatal(sink: HttpSink) -> None:
    (outcome,) = attempt(post(sink.url("/hook"), body="half \ud800 pair"))
    assert outcome == OK
    assert sink.wait_for(1)[0].body == b"half ? pair"


def test_the_url_goes_out_exactly_as_rendered(sink: HttpSink) -> None:
    # Nothing downstream decodes %2F or %41, re-encodes %25, or resolves anything.
    target = "/c/a%2Fb/%41%25/..%2F..%2Fadmin?q=%2B%26x%3D1&n=a%20b#frag"
    assert attempt(post(sink.url(target))) == [OK]
    (request,) = sink.wait_for(1)
    assert request.target == target.partition("#")[0]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/a/../admin", "invalid URL: a path segment is . or .. (perhaps percent-encoded)"),
        ("/a/%2e%2E/admin", "invalid URL: a path segment is . or .. (perhaps percent-encoded)"),
        ("/a b", "invalid URL: it holds characters that must be percent-encoded"),
    ],
)
def test_a_url_the_checks_refuse_is_permanent(sink: HttpSink, path: str, message: str) -> None:
    (outcome,) = attempt(post(sink.url(path)))
    assert isinstance(outcome, GiveUp)
    assert str(outcome).startswith(message)
    assert sink.requests == []


@pytest.mark.parametrize("value", ["a\x00b", "a\x1bb", "a\rb", "a\u2028b"])
def test_header_with_a_control_character_is_permanent(sink: HttpSink, value: str) -> None:
    (outcome,) = attempt(post(sink.url("/hook"), headers={"X-Token": value}))
    assert isinstance(outcome, GiveUp)
    assert str(outcome).startswith("invalid request: header X-Token: the value contains a")
    assert sink.requests == []
