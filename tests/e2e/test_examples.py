"""Every example rule in rules/, delivered end to end by a real `router serve`: HTTP bodies and
headers with secrets at an HTTP sink, e-mails at an SMTP sink, log lines in the router's log."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.e2e.harness import RouterProcess, poll
from tests.sinks import HttpSink, SmtpSink

RULES = Path(__file__).parents[2] / "rules"
CRM_TOKEN = "crm-token-5f1e"


def test_every_example_rule_end_to_end(
    tmp_path: Path, sink: HttpSink, router_factory: list[RouterProcess]
) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    # The one hard-coded destination host points at the local sink instead.
    for crm in (rules / "10-crm-new-subscriber.toml", rules / "50-loyalty-campaign-activity.toml"):
        local = crm.read_text().replace("https://crm.example.com", sink.url("").rstrip("/"))
        crm.write_text(local)
    with SmtpSink() as smtp:
        router = RouterProcess(
            tmp_path,
            rules,
            env={
                "ROUTER_SECRET_CRM_TOKEN": CRM_TOKEN,
                "ROUTER_SECRET_CHAT_WEBHOOK_URL": sink.url("/chat/hooks/T1"),
                "ROUTER_SMTP_HOST": smtp.host,
                "ROUTER_SMTP_PORT": str(smtp.port),
                "ROUTER_EMAIL_FROM": "router@example.org",
            },
        )
        router_factory.append(router)
        router.start()
        pushed = (
            "new-subscriber",
            "unsubscribe",
            "orders-updated-bulk",
            "etl-finished-bulk",
            "etl-started",
            "scenario-custom-action",
        )
        for name in pushed:
            response = router.push(json.loads((rules / "events" / f"{name}.json").read_text()))
            assert response.status_code == 202, response.text

        requests = {r.path: r for r in sink.wait_for(3)}
        contact = requests["/api/contacts/actito-1204"]
        assert contact.method == "PUT"
        assert contact.headers["Authorization"] == f"Bearer {CRM_TOKEN}"
        assert json.loads(contact.body) == {
            "email": "marie.dupont@example.be",
            "firstName": "Marie",
            "lastName": "Dupont",
            "language": "fr",
            "source": "actito",
            "actitoProfileId": 1204,
        }
        chat = json.loads(requests["/chat/hooks/T1"].body)
        assert chat["text"] == "Order ORD-2024-000187 has shipped"
        step = requests["/api/contacts/actito-1205/activities/campaign-445566"]
        assert step.method == "PUT" and step.headers["Authorization"] == f"Bearer {CRM_TOKEN}"
        assert json.loads(step.body)["group"] == "Loyalty"

        mails = {m.message["Subject"]: m for m in smtp.wait_for(2)}
        unsubscribe = mails["Newsletter unsubscribe: profile 1204"]
        assert unsubscribe.rcpt_tos == ("marketing-team@example.com",)
        assert unsubscribe.mail_from == "router@example.org"
        etl = mails["ACTITO import 480213 finished with errors"]
        assert set(etl.rcpt_tos) == {"data-team@example.com", "marketing-ops@example.com"}
        assert "771045004" in etl.message.get_body(("plain",)).get_content()
        assert etl.message.get_body(("html",)) is not None

        # The audit log: one line per record (1 + 1 + 2 + 2 + 1 + 2 records pushed).
        def audit_lines() -> list[dict[str, object]] | None:
            lines = [
                line
                for line in router.log_lines()
                if line.get("logger") == "router.actions.log" and line.get("rule") == "audit-log"
            ]
            return lines if len(lines) >= 9 else None

        audit = poll(audit_lines)
        assert len(audit) == 9
        assert any("PROFILE_TABLE 16 CREATE" in str(line["message"]) for line in audit)
        assert all(line.get("delivery_id") and line.get("event_id") for line in audit)
        assert CRM_TOKEN not in router.log()
        # Nothing more arrives than the rules call for.
        assert len(sink.requests) == 3 and len(smtp.messages) == 2
