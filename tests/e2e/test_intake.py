"""Hostile and odd input at the intake: each the right 4xx with a JSON error, never a 5xx, and
the server keeps serving."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import forward_rule
from tests.e2e.harness import RouterProcess, poll
from tests.sinks import HttpSink

SAMPLE = json.loads(
    (
        Path(__file__).parents[1] / "samples/01-data-v1-profile-table-create-one-by-one.json"
    ).read_text()
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> object:
    tmp = tmp_path_factory.mktemp("intake")
    rules = tmp / "rules"
    rules.mkdir()
    with HttpSink() as sink:
        (rules / "forward.toml").write_text(forward_rule(sink.url("/in")))
        router = RouterProcess(tmp, rules, env={"ROUTER_MAX_BODY_BYTES": str(10 * 1024 * 1024)})
        router.start()
        try:
            yield router, sink
        finally:
            router.kill()


CASES = [
    ("no secret", {"X-Authorization": ""}, json.dumps(SAMPLE).encode(), 401),
    ("wrong secret", {"X-Authorization": "guess"}, json.dumps(SAMPLE).encode(), 401),
    ("invalid JSON", {}, b"{nope", 400),
    ("invalid UTF-8", {}, b'{"id": "\xff\xfe"}', 400),
    ("empty body", {}, b"", 400),
    ("deep nesting", {}, b"[" * 200_000 + b"]" * 200_000, 400),
    ("wrong content type", {"Content-Type": "text/xml"}, b"<event/>", 415),
    ("form content type", {"Content-Type": "application/x-www-form-urlencoded"}, b"a=b", 415),
    ("non-event JSON", {}, b'{"hello": "world"}', 422),
    ("data not a list or object", {}, b'{"id": "1", "data": 3}', 422),
    ("JSON scalar", {}, b"42", 422),
    ("too large", {}, b'{"data": "' + b"x" * (11 * 1024 * 1024) + b'"}', 413),
    ("too many records", {}, b'{"id": "m", "data": [' + b",".join([b"{}"] * 10_001) + b"]}", 413),
    ("number out of range", {}, b'{"id": "n", "data": {"x": 1e999}}', 400),
    ("boolean tableId", {}, b'{"id": "b", "tableId": true, "data": {}}', 422),
    (
        "nested deeper than can be stored",
        {},
        b'{"id": "d", "data": ' + b"[" * 990 + b"]" * 990 + b"}",
        400,
    ),
]


@pytest.mark.parametrize(("case", "headers", "body", "status"), CASES, ids=[c[0] for c in CASES])
def test_hostile_input(
    served: tuple[RouterProcess, HttpSink],
    case: str,
    headers: dict[str, str],
    body: bytes,
    status: int,
) -> None:
    router, _sink = served
    response = router.push(body, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert isinstance(error, str) and error
    assert "Traceback" not in response.text
    # Still serving, and a good push still goes through.
    assert router.push(SAMPLE).status_code == 202


def test_error_names_the_offending_key(served: tuple[RouterProcess, HttpSink]) -> None:
    router, _ = served
    response = router.push({"id": "1", "data": "nope"})
    assert response.json() == {"error": "data must be an object or a list, not a string"}


def test_secret_never_logged(served: tuple[RouterProcess, HttpSink]) -> None:
    router, _ = served
    router.push(SAMPLE)
    router.push(b"{broken")
    assert router.secret and router.secret not in router.log()


def test_truncated_body_from_a_vanishing_client(served: tuple[RouterProcess, HttpSink]) -> None:
    router, _ = served
    with socket.create_connection(("127.0.0.1", router.port)) as conn:
        conn.sendall(
            b"POST /webhooks/actito HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-Authorization: " + router.secret.encode() + b'\r\nContent-Length: 1000\r\n\r\n{"id'
        )
    assert router.push(SAMPLE).status_code == 202


def test_unknown_paths_and_methods_are_json(served: tuple[RouterProcess, HttpSink]) -> None:
    router, _ = served
    assert router.get("/nope").status_code == 404
    assert router.get("/nope").json()["error"]
    response = httpx.get(f"{router.base}/webhooks/actito")
    assert response.status_code == 405 and response.json()["error"]


def test_a_trailing_slash_reaches_the_intake(served: tuple[RouterProcess, HttpSink]) -> None:
    router, sink = served
    payload = {**SAMPLE, "id": "trailing-slash-1", "data": {"marker": "trailing-slash-1"}}
    response = httpx.post(
        f"{router.base}/webhooks/actito/",
        json=payload,
        headers={"X-Authorization": router.secret or ""},
    )
    assert response.status_code == 202, response.text  # not a 307 the sender might not follow
    assert response.json() == {"accepted": 1, "duplicates": 0}
    poll(lambda: any(b"trailing-slash-1" in r.body for r in sink.requests))


def test_duplicates_are_acknowledged_but_route_nothing(
    served: tuple[RouterProcess, HttpSink],
) -> None:
    router, _sink = served
    before = rule_matches(router)
    payload = {**SAMPLE, "id": "dup-check-1"}
    assert router.push(payload).json() == {"accepted": 1, "duplicates": 0}
    assert router.push(payload).json() == {"accepted": 0, "duplicates": 1}
    # The same content under another id is a new event (subscribe -> unsubscribe -> subscribe).
    assert router.push({**payload, "id": "dup-check-2"}).json() == {"accepted": 1, "duplicates": 0}
    listed = router.cli("deliveries", "list", "--format", "json", "--limit", "1000")
    assert listed.returncode == 0, listed.stderr
    jobs = [j for j in json.loads(listed.stdout) if j["event_id"] in ("dup-check-1", "dup-check-2")]
    assert sorted(j["event_id"] for j in jobs) == ["dup-check-1", "dup-check-2"]
    # A push mixing a repeat and a new record routes (and counts) only the new one.
    mixed = [payload, {**payload, "id": "dup-check-3"}]
    assert router.push(mixed).json() == {"accepted": 1, "duplicates": 1}
    assert rule_matches(router) - before == 3


def rule_matches(router: RouterProcess) -> float:
    for line in router.get("/metrics").text.splitlines():
        if line.startswith('router_rule_matches_total{mode="live",rule="forward-all"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_lone_surrogate_reaches_the_destination_escaped(
    served: tuple[RouterProcess, HttpSink],
) -> None:
    router, sink = served
    assert router.push(b'{"id": "surrogate-2", "data": {"mark": "s2 \\ud800"}}').status_code == 202

    def arrived() -> list[bytes]:
        return [r.body for r in sink.requests if b"s2 " in r.body]

    (body,) = poll(arrived)
    assert json.loads(body) == {"mark": "s2 \ud800"}
