"""A real `router serve`: the CRM goes down, its circuit opens and a circuit_open alert reaches
an HTTP sink at once (the worker's transition is the alert's signal); the CRM comes back, a
probe closes the circuit and the alert says it recovered; every contact is delivered."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.e2e.conftest import router_factory, rules_dir  # noqa: F401 - fixtures
from tests.e2e.harness import RouterProcess, poll
from tests.sinks import HttpSink, Reply

CONTACTS = 6


def test_a_circuit_opening_alerts_and_its_closing_recovers(
    tmp_path: Path,
    rules_dir: Path,  # noqa: F811
    router_factory: list[RouterProcess],  # noqa: F811
) -> None:
    with HttpSink(default=Reply(503)) as crm, HttpSink() as ops:
        (rules_dir / "crm.toml").write_text(
            f"""
[[rule]]
name = "crm"
[[rule.action]]
type = "http"
url = "{crm.url("/contacts/")}{{{{ data.n }}}}"

[[alert]]
name = "CRM down"
when = "circuit_open"
destination = "{crm.url("/")}"
window = "5m"
[alert.action]
type = "http"
url = "{ops.url("/alerts")}"
body = "{{{{ {{'state': alert.state, 'count': alert.count, 'errors': alert.errors}} | tojson }}}}"
"""
        )
        router = RouterProcess(
            tmp_path,
            rules_dir,
            env={
                "ROUTER_CIRCUIT_FAILURES": "3",
                "ROUTER_CIRCUIT_PROBE_DELAY": "0.5",
                "ROUTER_CIRCUIT_PROBE_MAX_DELAY": "1",
                # Far longer than the test: what arrives was sent by the transitions' signals.
                "ROUTER_ALERT_INTERVAL": "3600",
            },
        )
        router_factory.append(router)
        router.start()
        response = router.push({"id": "bulk-1", "data": [{"n": n} for n in range(CONTACTS)]})
        assert response.status_code == 202, response.text

        (opened,) = ops.wait_for(1, timeout=20)
        alert = json.loads(opened.body)
        assert alert["state"] == "firing" and alert["count"] == 1
        (error,) = alert["errors"]
        # At least 3: failures of attempts in flight when it opened are reported with them.
        assert re.match(rf"circuit of 127\.0\.0\.1:{crm.port} opened after \d+ failures", error)
        down = len(crm.requests)

        crm.default = Reply(200)  # the CRM is back: the next probe closes the circuit
        arrived = ops.wait_for(2, timeout=20)
        recovered = json.loads(arrived[1].body)
        assert recovered["state"] == "recovered" and recovered["count"] == 0

        def delivered() -> bool:
            listed = router.cli("deliveries", "list", "--format", "json")
            return sorted(job["status"] for job in json.loads(listed.stdout)) == ["done"] * CONTACTS

        poll(delivered, timeout=20, every=0.2)
    # While it was open the jobs waited instead of retrying: the requests the CRM saw before
    # it came back are the failures that opened it (and the ones in flight), and probes.
    assert down < 2 * CONTACTS
    assert len(ops.requests) == 2  # once firing, once recovered
