"""ROUTER_OPS_PORT: the intake's port answers the webhook (and the console) only, the operations
port health, readiness (with its detail) and metrics; a worker keeps everything on its one
port; and the readiness an intake is probed with (`/readyz?exclude=store`) keeps it in its
Service during a store outage, so senders get the router's own JSON 503 with Retry-After."""

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


CONSOLE_TOKEN = "ops-split-console-token-0001"
CONSOLE_PATHS = ("/console/login", "/api/v1/overview", "/api/v1/pauses")


def _console_get(base: str, path: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {CONSOLE_TOKEN}"}
    return httpx.get(f"{base}{path}", headers=headers, timeout=10)


def test_the_console_stays_on_the_intake_port_and_operations_on_theirs(
    tmp_path: Path, rules_dir: Path, sink: HttpSink, router_factory: list[RouterProcess]
) -> None:
    (rules_dir / "f.toml").write_text(forward_rule(sink.url("/in")))
    ops_port = free_port()
    router = RouterProcess(
        tmp_path,
        rules_dir,
        env={"ROUTER_OPS_PORT": str(ops_port), "ROUTER_CONSOLE_TOKENS": CONSOLE_TOKEN},
    )
    router_factory.append(router)
    router.start(wait=False)
    split = Split(router, ops_port)
    poll(lambda: _answers(split.ops + "/readyz"), timeout=20)
    for path in CONSOLE_PATHS:
        assert _console_get(router.base, path).status_code == 200, path
        hidden = _console_get(split.ops, path)
        assert (hidden.status_code, hidden.json()) == (404, {"error": "Not Found"}), path
    redirect = httpx.get(f"{router.base}/console", timeout=10)
    assert (redirect.status_code, redirect.headers["location"]) == (308, "/console/")
    assert httpx.get(f"{split.ops}/console", timeout=10).status_code == 404
    # Pausing through the intake's port is the store's: the CLI sees it.
    paused = httpx.post(
        f"{router.base}/api/v1/pauses",
        json={"rule": "forward-all"},
        headers={"Authorization": f"Bearer {CONSOLE_TOKEN}"},
        timeout=10,
    )
    assert paused.json() == {"kind": "rule", "target": "forward-all", "paused": True}
    assert "forward-all" in router.cli("deliveries", "pauses").stdout
    for path in ("/metrics", "/readyz"):
        assert split.get(path).status_code == 200, path
        assert router.get(path).status_code == 404, path


def test_a_workers_console_shares_its_one_port_whatever_ROUTER_OPS_PORT_says(
    tmp_path: Path, rules_dir: Path, sink: HttpSink, router_factory: list[RouterProcess]
) -> None:
    """`router worker` has no intake to keep apart: its port serves health, metrics and the
    console, and ROUTER_OPS_PORT (set for a deployment's intakes) opens no port of its own."""
    (rules_dir / "f.toml").write_text(forward_rule(sink.url("/in")))
    ops_port, port = free_port(), free_port()
    worker = RouterProcess(
        tmp_path,
        rules_dir,
        command=("worker",),
        port=port,
        env={
            "ROUTER_OPS_PORT": str(ops_port),
            "ROUTER_WORKER_PORT": str(port),
            "ROUTER_CONSOLE_TOKENS": CONSOLE_TOKEN,
        },
    )
    router_factory.append(worker)
    worker.start(wait=False)
    poll(lambda: _answers(worker.base + "/readyz"), timeout=20)
    for path in (*CONSOLE_PATHS, "/metrics", "/readyz", "/healthz"):
        assert _console_get(worker.base, path).status_code == 200, path
    assert worker.get("/webhooks/actito").status_code == 404
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{ops_port}/healthz", timeout=5)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
