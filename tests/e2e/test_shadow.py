"""Shadow rules through a real `router serve`: they match and render on live traffic, record each
would-be delivery and send nothing; a reload that makes one live sends only what comes after."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.conftest import forward_rule
from tests.e2e.harness import RouterProcess, poll
from tests.sinks import HttpSink


def jobs(router: RouterProcess, *args: str) -> list[dict[str, object]]:
    listed = router.cli("deliveries", "list", "--format", "json", *args)
    assert listed.returncode == 0, listed.stderr
    found: list[dict[str, object]] = json.loads(listed.stdout)
    return found


def event(seq: int) -> dict[str, object]:
    return {"id": f"shadow-{seq}", "tableType": "PROFILE_TABLE", "data": {"seq": seq}}


def test_a_shadow_rule_sends_nothing_until_a_reload_makes_it_live(
    tmp_path: Path, rules_dir: Path, sink: HttpSink, router_factory: list[RouterProcess]
) -> None:
    rule = rules_dir / "tryout.toml"
    rule.write_text(forward_rule(sink.url("/hook"), name="tryout", extra='mode = "shadow"'))
    router = RouterProcess(tmp_path, rules_dir)
    router_factory.append(router)
    router.start()

    assert router.push(event(1)).status_code == 202
    (job,) = poll(lambda: jobs(router, "--status", "shadow"))
    assert (job["rule"], job["event_id"], job["last_error"]) == ("tryout", "shadow-1", None)
    metrics = router.get("/metrics").text
    assert 'router_rule_matches_total{mode="shadow",rule="tryout"} 1.0' in metrics
    assert 'router_deliveries_total{action="http",mode="shadow",outcome="shadow"} 1.0' in metrics

    # The same rule, live: a reload swaps it in; only the event accepted after it is sent.
    before = router.get("/readyz").json()["ruleset"]
    rule.write_text(forward_rule(sink.url("/hook"), name="tryout", extra='mode = "live"'))
    poll(lambda: router.get("/readyz").json()["ruleset"] != before)
    assert router.push(event(2)).status_code == 202
    sink.wait_for(1)
    poll(lambda: jobs(router, "--status", "done"))
    assert [json.loads(request.body)["seq"] for request in sink.requests] == [2]
    assert [j["event_id"] for j in jobs(router, "--status", "shadow")] == ["shadow-1"]
    assert 'router_rule_matches_total{mode="live",rule="tryout"} 1.0' in router.get("/metrics").text
