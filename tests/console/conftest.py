"""A real `router serve` with its console on, for the console's tests.

One process for the package's tests (starting one takes seconds on a busy machine): an SQLite
store in a temporary directory, two rules (one that posts to a real HTTP sink on 127.0.0.1
with a secret in a header, one that never matches the records these tests push), an
operator's token and a viewer's. Tests push through the real intake and read through the real
console and API.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import RouterProcess, poll
from tests.sinks import HttpSink, Reply

OPERATOR = "operator-token-for-tests-0001"
VIEWER = "viewer-token-for-tests-00001"
SECRET_VALUE = "crm-secret-value-never-shown"  # ROUTER_SECRET_CRM
HOSTILE = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "{{7*7}}")


def rules_text(sink_url: str) -> str:
    return f"""
[[rule]]
name = "crm-sync"
description = "Profiles with a score go to the CRM"
[rule.match]
tableType = "PROFILE_TABLE"
condition = "data.score > `5`"
[[rule.action]]
type = "http"
url = "{sink_url}contacts/{{{{ data.profileId }}}}"
headers = {{ Authorization = "Bearer {{{{ secrets.CRM }}}}" }}
timeout = 5

[[rule]]
name = "deletions"
[rule.match]
operation = "DELETE"
[[rule.action]]
type = "log"
message = "deleted {{{{ data.profileId }}}}"
"""


def event(event_id: str, profile: int, score: int, **data: Any) -> dict[str, Any]:
    return {
        "id": event_id,
        "tableType": "PROFILE_TABLE",
        "tableId": 16,
        "operation": "UPDATE",
        "data": {"profileId": profile, "score": score, **data},
    }


@dataclass
class Console:
    router: RouterProcess
    sink: HttpSink

    @property
    def base(self) -> str:
        return self.router.base

    def api(self, token: str = OPERATOR) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.base}/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )

    @contextlib.contextmanager
    def browser(self, token: str | None = OPERATOR) -> Iterator[httpx.Client]:
        """An HTTP client logged in to the pages with `token` (None: not logged in)."""
        with httpx.Client(base_url=self.base, timeout=10) as client:
            if token is not None:
                answer = client.post("/console/login", data={"token": token})
                assert answer.status_code == 303, answer.text
            yield client

    def push(self, payload: Any) -> None:
        answer = self.router.push(payload)
        assert answer.status_code == 202, answer.text

    def job_of(self, event_id: str) -> dict[str, Any]:
        """The first job of the record with `event_id`, once it exists."""
        with self.api() as api:

            def find() -> dict[str, Any] | None:
                items = api.get("/events", params={"event_id": event_id}).json()["items"]
                if not items:
                    return None
                jobs: list[dict[str, Any]] = api.get(f"/events/{items[0]['id']}").json()["jobs"]
                return jobs[0] if jobs else None

            return poll(find)


def start_console(
    workdir: Path, sink: HttpSink, *, store_url: str | None = None, **env: str
) -> RouterProcess:
    rules = workdir / "rules"
    rules.mkdir(parents=True, exist_ok=True)
    (rules / "rules.toml").write_text(rules_text(sink.url("/")))
    router = RouterProcess(
        workdir,
        rules,
        store_url=store_url,
        env={
            "ROUTER_CONSOLE_TOKENS": OPERATOR,
            "ROUTER_CONSOLE_VIEWER_TOKENS": VIEWER,
            "ROUTER_SECRET_CRM": SECRET_VALUE,
            "ROUTER_RETRY_MAX_ATTEMPTS": "2",
            **env,
        },
    )
    return router.start()


@pytest.fixture(scope="package")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    with HttpSink(Reply(200)) as sink:
        router = start_console(tmp_path_factory.mktemp("console"), sink)
        try:
            yield Console(router, sink)
        finally:
            router.stop()
