"""ROUTER_OPS_PORT: the intake's port answers the webhook only, the operations port health,
readiness (with its detail) and metrics; and the readiness an intake is probed with
(`/readyz?exclude=store`) keeps it in its Service during a store outage, so senders get the
router's own JSON 503 with Retry-After."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import forward_rule
from tests.e2e.harness import RouterProcess, poll
from tests.sinks import HttpSink, free_port

OPERATIONS = ("/healthz", "/readyz", "/metrics")


def event(name: str) -> dict[str, Any]:
    return {"id": name, "tableType": "PROFILE_TABLE", "operation": "CREATE", "data": {"n": 1}}


class Split:
    """A running `router serve` with its operations on their own port."""

    def __init__(self, router: RouterProcess, ops_port: int) -> None:
        self.router = router
        self.ops = f"http://127.0.0.1:{ops_port}"

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.ops}{path}", timeout=10)


@pytest.fixture
def split(
    tmp_path: Path, rules_dir: Path, sink: HttpSink, router_factory: list[RouterProcess]
) -> Iterator[Split]:
    (rules_dir / "f.toml").write_text(forward_rule(sink.url("/in")))
    ops_port = free_port()
    router = RouterProcess(tmp_path, rules_dir, env={"ROUTER_OPS_PORT": str(ops_port)})
    router_factory.append(router)
    router.start(wait=False)
    running = Split(router, ops_port)

    def ready() -> bool:
        assert router.proc is not None and router.proc.poll() is None, router.log()
        try:
            return running.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    poll(ready, timeout=20)
    yield running


def test_the_intake_port_answers_the_webhook_only(split: Split, sink: HttpSink) -> None:
    router = split.router
    assert router.push(event("split-1")).status_code == 202
    sink.wait_for(1)
    for path in OPERATIONS:
        hidden = router.get(path)
        assert (hidden.status_code, hidden.json()) == (404, {"error": "Not Found"}), path
        assert split.get(path).status_code == 200, path
    assert router.get("/webhooks/actito").status_code == 405  # the webhook's own answer
    # The operations port takes no pushes.
    pushed = httpx.post(f"{split.ops}/webhooks/actito", json=event("split-2"), timeout=10)
    assert (pushed.status_code, pushed.json()) == (404, {"error": "Not Found"})
    assert "router_records_received_total 1.0" in split.get("/metrics").text
    assert "health and metrics on port" in router.log()


def test_during_a_store_outage_the_intake_stays_ready_and_answers_503_itself(
    split: Split, tmp_path: Path
) -> None:
    router = split.router
    assert router.push(event("before")).status_code == 202
    for name in ("router.db", "router.db-wal"):
        (tmp_path / name).unlink()  # the store is gone (see docs/operations.md)
    refused = router.push(event("during"))
    assert refused.status_code == 503
    assert refused.headers["Retry-After"]
    assert refused.json() == {"error": "the store is unavailable; retry later"}
    strict = split.get("/readyz")
    assert strict.status_code == 503
    assert strict.json()["problems"][0].startswith("store unavailable: ")
    probe = split.get("/readyz?exclude=store")
    assert probe.status_code == 200
    body = probe.json()
    assert (body["status"], body["excluded"]) == ("ok", ["store"])
    assert body["problems"] == strict.json()["problems"]  # the detail still says why
    unknown = split.get("/readyz?exclude=rules")
    assert unknown.status_code == 400
    assert unknown.json() == {"error": "unknown check 'rules' in exclude; the checks are: store"}


def test_one_port_for_both_is_refused(
    tmp_path: Path, rules_dir: Path, router_factory: list[RouterProcess]
) -> None:
    (rules_dir / "f.toml").write_text(forward_rule("http://127.0.0.1:9/x"))
    port = free_port()
    router = RouterProcess(tmp_path, rules_dir, port=port, env={"ROUTER_OPS_PORT": str(port)})
    router_factory.append(router)
    router.start(wait=False)
    assert router.proc is not None
    assert router.proc.wait(20) == 1
    assert f"ROUTER_OPS_PORT and ROUTER_PORT are both {port}" in router.log()
