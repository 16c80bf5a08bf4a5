"""A real `router serve`: a BULK push goes out as one batch; the record the destination refuses
is found by splitting and is the only dead delivery; a dead alert e-mails a real SMTP server
(aiosmtpd) about it, once."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.conftest import router_factory, rules_dir  # noqa: F401 - fixtures
from tests.e2e.harness import RouterProcess
from tests.sinks import HttpSink, Reply, SmtpSink

BULK = Path(__file__).parent.parent / "samples" / "02-data-v1-profile-table-create-bulk.json"


def test_a_bulk_push_goes_out_as_one_batch_and_its_bad_record_alerts(
    tmp_path: Path,
    rules_dir: Path,  # noqa: F811
    router_factory: list[RouterProcess],  # noqa: F811
) -> None:
    with HttpSink() as crm, SmtpSink() as smtp:
        # 3 records; the third refused: [0 1 2] 400, [0] ok, [1 2] 400, [1] ok, [2] 400.
        crm.script(Reply(400), Reply(200), Reply(400), Reply(200), Reply(400))
        (rules_dir / "crm.toml").write_text(
            f"""
[[rule]]
name = "crm-bulk"
[[rule.action]]
type = "http"
url = "{crm.url("/contacts/bulk")}"
body = "{{{{ records | map(attribute='data.profileId') | list | tojson }}}}"
batch = {{ max_records = 500, max_wait = "200ms" }}

[[alert]]
when = "dead"
rule = "crm-bulk"
window = "5m"
[alert.action]
type = "email"
to = "crm-team@example.com"
subject = "{{{{ alert.count }}}} dead: {{{{ alert.errors | first }}}}"
text = "{{{{ alert.link }}}}"
"""
        )
        router = RouterProcess(
            tmp_path,
            rules_dir,
            env={
                "ROUTER_SMTP_HOST": "127.0.0.1",
                "ROUTER_SMTP_PORT": str(smtp.port),
                "ROUTER_ALERT_INTERVAL": "1",
                "ROUTER_CONSOLE_URL": "https://router.example.com/console/",
            },
        )
        router_factory.append(router)
        router.start()
        assert router.push(json.loads(BULK.read_text())).status_code == 202

        (message,) = smtp.wait_for(1)  # after the dead job was recorded
        listed = router.cli("deliveries", "list", "--format", "json")
    sent = [json.loads(request.body) for request in crm.requests]
    assert sent == [[1205, 1206, 1207], [1205], [1206, 1207], [1206], [1207]]
    assert sorted(job["status"] for job in json.loads(listed.stdout)) == ["dead", "done", "done"]
    parsed = message.message
    assert parsed["Subject"].strip() == (
        f"1 dead: HTTP 400 from 127.0.0.1:{crm.port} (sent alone, out of a batch of 3)"
    )
    link = "https://router.example.com/console/deliveries?status=dead&rule=crm-bulk"
    assert parsed.get_content().strip() == link
