"""With PostgreSQL, any replica's console shows every replica's records and jobs: an intake
(`router serve --no-worker`) and a `router worker` on one database, each with its console; a
push to the intake is found, delivered and shown through the worker's console, and the
delivery through the intake's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.console.conftest import OPERATOR, event, rules_text
from tests.e2e.harness import RouterProcess, poll
from tests.e2e.pg import Unavailable, fresh_database
from tests.sinks import HttpSink, Reply, free_port

pytestmark = pytest.mark.postgres

ENV = {"ROUTER_CONSOLE_TOKENS": OPERATOR, "ROUTER_SECRET_CRM": "replica-secret-value"}
AUTH = {"Authorization": f"Bearer {OPERATOR}"}


@pytest.fixture
def database() -> Iterator[str]:
    try:
        with fresh_database() as url:
            yield url
    except Unavailable as exc:
        pytest.skip(str(exc))


def api(process: RouterProcess, path: str, **params: Any) -> Any:
    answer = httpx.get(
        f"{process.base}/api/v1{path}",
        params=params,
        headers={"Authorization": f"Bearer {OPERATOR}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_each_replicas_console_shows_every_replicas_work(tmp_path: Path, database: str) -> None:
    with HttpSink(Reply(200)) as sink:
        rules = tmp_path / "rules"
        rules.mkdir()
        (rules / "rules.toml").write_text(rules_text(sink.url("/")))
        intake = RouterProcess(
            tmp_path, rules, store_url=database, command=("serve", "--no-worker"), env=ENV
        )
        port = free_port()
        worker = RouterProcess(
            tmp_path,
            rules,
            store_url=database,
            command=("worker",),
            port=port,
            env={**ENV, "ROUTER_WORKER_PORT": str(port)},
        )
        try:
            intake.start()
            worker.start(wait=False)
            poll(lambda: _ready(worker), timeout=30)
            assert intake.push(event("replica-1", 31, 9)).status_code == 202
            found = poll(lambda: api(worker, "/events", event_id="replica-1")["items"])
            detail = api(worker, f"/events/{found[0]['id']}")
            job = detail["jobs"][0]["id"]
            poll(lambda: api(worker, f"/jobs/{job}")["job"]["status"] == "done")
            delivered = api(intake, "/jobs", status="done")["items"]
            assert job in [item["id"] for item in delivered]
            assert sink.wait_for(1)[0].path == "/contacts/31"
            rules_seen = api(worker, "/rules")["rules"]
            assert rules_seen[0]["day"]["delivered"] == 1
            # Text PostgreSQL cannot hold, as a filter or an id, finds nothing and breaks nothing.
            for path in (
                "/events?event_id=%00",
                "/jobs?rule=a%00b",
                "/events?profile_id=%ED%A0%80",
            ):
                answer = httpx.get(f"{intake.base}/api/v1{path}", headers=AUTH, timeout=10)
                assert answer.status_code == 200 and answer.json()["items"] == [], path
            for path in ("/jobs/%00", "/events/99999999999999999"):
                answer = httpx.get(f"{intake.base}/api/v1{path}", headers=AUTH, timeout=10)
                assert answer.status_code == 404, path
            refused = httpx.post(f"{intake.base}/api/v1/jobs/%00/replay", headers=AUTH, timeout=10)
            assert refused.json() == {"replayed": [], "count": 0}
        finally:
            for process in (worker, intake):
                if process.proc is not None:
                    process.stop()


def _ready(process: RouterProcess) -> bool:
    try:
        return httpx.get(f"{process.base}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
