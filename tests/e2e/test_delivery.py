"""Delivery through a real `router serve`: retries, Retry-After, dead letters and replay."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.e2e.conftest import forward_rule
from tests.e2e.harness import RouterProcess, poll
from tests.sinks import HttpSink, Reply

SAMPLE = json.loads(
    (
        Path(__file__).parents[1] / "samples/01-data-v1-profile-table-create-one-by-one.json"
    ).read_text()
)


def start(
    tmp_path: Path, rules: Path, sink: HttpSink, started: list[RouterProcess]
) -> RouterProcess:
    (rules / "forward.toml").write_text(forward_rule(sink.url("/hook")))
    router = RouterProcess(tmp_path, rules)
    started.append(router)
    return router.start()


def jobs(router: RouterProcess, *args: str) -> list[dict[str, Any]]:
    listed = router.cli("deliveries", "list", "--format", "json", *args)
    assert listed.returncode == 0, listed.stderr
    result: list[dict[str, Any]] = json.loads(listed.stdout)
    return result


def test_503_twice_then_200(
    tmp_path: Path, rules_dir: Path, sink: HttpSink, router_factory: list[RouterProcess]
) -> None:
    sink.script(Reply(503), Reply(503))
    router = start(tmp_path, rules_dir, sink, router_factory)
    assert router.push(SAMPLE).status_code == 202
    requests = sink.wait_for(3)
    assert [r.path for r in requests] == ["/hook"] * 3
    keys = {r.headers["Idempotency-Key"] for r in requests}
    assert len(keys) == 1  # one job, one stable key across attempts
    assert json.loads(requests[2].body) == SAMPLE["data"]
    (job,) = poll(lambda: [j for j in jobs(router, "--status", "done")])
    shown = router.cli("deliveries", "show", job["id"], "--format", "json")
    history = json.loads(shown.stdout)["history"]
    assert [(a["outcome"], a["status_code"]) for a in history] == [
        ("retry", 503),
        ("retry", 503),
        ("done", 200),
    ]


def test_429_retry_after_is_respected(
    tmp_path: Path, rules_dir: Path, sink: HttpSink, router_factory: list[RouterProcess]
) -> None:
    sink.script(Reply(429, headers={"Retry-After": "2"}))
    router = start(tmp_path, rules_dir, sink, router_factory)
    router.push(SAMPLE)
    sink.wait_for(1)
    first_seen = time.monotonic()
    sink.wait_for(2, timeout=20)
    # The configured backoff is at most 0.5 s here; only Retry-After explains the wait.
    assert time.monotonic() - first_seen >= 1.8


def test_400_is_dead_at_once_and_replay_delivers_it(
    tmp_path: Path, rules_dir: Path, sink: HttpSink, router_factory: list[RouterProcess]
) -> None:
    # The answer is shown with the attempt; an escape sequence in it never reaches a terminal.
    sink.script(Reply(400, body=b"bad request:\n\x1b[2J email is missing"))
    router = start(tmp_path, rules_dir, sink, router_factory)
    router.push(SAMPLE)
    (dead,) = poll(lambda: jobs(router, "--status", "dead"))
    assert dead["attempts"] == 1
    assert "400" in dead["last_error"]
    assert len(sink.requests) == 1
    shown = router.cli("deliveries", "show", dead["id"])
    assert "     response:\n       bad request:\n       \\x1b[2J email is missing\n" in shown.stdout
    assert "\x1b" not in shown.stdout
    as_json = json.loads(router.cli("deliveries", "show", dead["id"], "--format", "json").stdout)
    assert [a["response"] for a in as_json["history"]] == ["bad request:\n\x1b[2J email is missing"]
    text = router.cli("deliveries", "list", "--status", "dead")
    assert dead["id"] in text.stdout and "forward-all" in text.stdout
    replayed = router.cli("deliveries", "replay", dead["id"])
    assert replayed.returncode == 0, replayed.stderr
    second = sink.wait_for(2)[1]
    assert second.headers["Idempotency-Key"] == dead["id"]
    poll(lambda: jobs(router, "--status", "done"))
    assert jobs(router, "--status", "dead") == []


def test_replay_all_dead_by_rule(
    tmp_path: Path, rules_dir: Path, sink: HttpSink, router_factory: list[RouterProcess]
) -> None:
    sink.default = Reply(404)
    router = start(tmp_path, rules_dir, sink, router_factory)
    for n in range(3):
        router.push({**SAMPLE, "id": f"e{n}"})
    poll(lambda: len(jobs(router, "--status", "dead")) == 3)
    sink.default = Reply(200)
    none = router.cli("deliveries", "replay", "--all-dead", "--rule", "other-rule")
    assert none.returncode == 0 and "0" in none.stdout
    every = router.cli("deliveries", "replay", "--all-dead", "--rule", "forward-all")
    assert every.returncode == 0, every.stderr
    poll(lambda: len(jobs(router, "--status", "done")) == 3)


def test_secrets_reach_headers_but_never_the_store_or_logs(
    tmp_path: Path, rules_dir: Path, sink: HttpSink, router_factory: list[RouterProcess]
) -> None:
    (rules_dir / "secret.toml").write_text(
        f"""
[[rule]]
name = "with-secret"
[[rule.action]]
type = "http"
url = "{sink.url("/s")}"
headers = {{ Authorization = "Bearer {{{{ secrets.CRM_TOKEN }}}}" }}
body = '{{"email": {{{{ data.emailAddress | tojson }}}}}}'
"""
    )
    token = "tok-3d9c1f0a-never-stored"
    sink.default = Reply(200, echo=True)  # the destination answers the request it got
    router = RouterProcess(tmp_path, rules_dir, env={"ROUTER_SECRET_CRM_TOKEN": token})
    router_factory.append(router)
    router.start()
    router.push(SAMPLE)
    (request,) = sink.wait_for(1)
    assert request.headers["Authorization"] == f"Bearer {token}"
    assert json.loads(request.body) == {"email": "marie.dupont@example.be"}
    (job,) = poll(lambda: jobs(router, "--status", "done"))
    shown = router.cli("deliveries", "show", job["id"])
    assert token not in shown.stdout
    assert "Authorization: Bearer <secret CRM_TOKEN>" in shown.stdout
    database = tmp_path / "router.db"
    for path in [database, *database.parent.glob("router.db-*")]:
        assert token.encode() not in path.read_bytes()
    assert token not in router.log()


def test_unset_secret_refuses_to_start(
    tmp_path: Path, rules_dir: Path, router_factory: list[RouterProcess]
) -> None:
    (rules_dir / "secret.toml").write_text(
        """
[[rule]]
name = "with-secret"
[[rule.action]]
type = "http"
url = "http://127.0.0.1:9/x"
headers = { Authorization = "Bearer {{ secrets.MISSING_ONE }}" }
"""
    )
    router = RouterProcess(tmp_path, rules_dir)
    router.start(wait=False)
    assert router.proc is not None
    assert router.proc.wait(20) != 0
    assert "MISSING_ONE" in router.log()
