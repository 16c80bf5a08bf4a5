from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from router.actions.base import Delivered
from router.actions.email import SENT, EmailDeliverer
from router.exceptions import DeliveryFailed, GiveUp, RetryLater
from router.excerpts import Excerpt
from router.settings import Settings
from tests.sinks import (
    SmtpSink,
    client_tls_context,
    free_port,
    self_signed_cert,
    server_tls_context,
)

Outcome = Delivered | int | None | DeliveryFailed
OK = Delivered(SENT, Excerpt("OK"))  # the sink's "250 OK": its text is the attempt's excerpt
PASSWORD = "Sm7pPassw0rd"


@pytest.fixture
def smtp() -> Iterator[SmtpSink]:
    with SmtpSink() as running:
        yield running


def attempt(
    deliverer: EmailDeliverer, rendered: Mapping[str, Any], job_id: str = "job-1"
) -> Outcome:
    async def go() -> Outcome:
        await deliverer.start()
        try:
            return await deliverer.deliver(rendered, job_id=job_id, timeout=5.0)
        except DeliveryFailed as exc:
            return exc
        finally:
            await deliverer.close()

    return asyncio.run(go())


def to(sink: SmtpSink, **options: Any) -> EmailDeliverer:
    return EmailDeliverer(host=sink.host, port=sink.port, sender="router@acme.test", **options)


def mail(**fields: Any) -> dict[str, Any]:
    return {
        "type": "email",
        "to": ["ops@acme.test"],
        "subject": "New subscriber",
        "text": None,
        "html": None,
        **fields,
    }


def test_plain_text(smtp: SmtpSink) -> None:
    outcome = attempt(to(smtp), mail(text="Profile 42 subscribed.\n"), job_id="01HXJOB")
    assert outcome == OK
    (received,) = smtp.wait_for(1)
    assert received.mail_from == "router@acme.test"
    assert received.rcpt_tos == ("ops@acme.test",)
    assert received.login is None
    message = received.message
    assert message["From"] == "router@acme.test"
    assert message["To"] == "ops@acme.test"
    assert message["Subject"] == "New subscriber"
    assert message["Message-ID"] == "<01HXJOB@acme.test>"
    assert message["Date"]
    assert message.get_content_type() == "text/plain"
    assert message.get_content() == "Profile 42 subscribed.\n"


def test_html_and_text_make_multipart_alternative(smtp: SmtpSink) -> None:
    rendered = mail(to=["a@acme.test", "b@acme.test"], text="plain ö", html="<p>rich ö</p>")
    assert attempt(to(smtp), rendered) == OK
    (received,) = smtp.wait_for(1)
    assert received.rcpt_tos == ("a@acme.test", "b@acme.test")
    message = received.message
    assert message.get_content_type() == "multipart/alternative"
    parts = {part.get_content_type(): part.get_content() for part in message.iter_parts()}
    assert parts == {"text/plain": "plain ö\n", "text/html": "<p>rich ö</p>\n"}


def test_html_only(smtp: SmtpSink) -> None:
    assert attempt(to(smtp), mail(html="<b>hi</b>")) == OK
    (received,) = smtp.wait_for(1)
    assert received.message.get_content_type() == "text/html"


def test_from_in_the_action_overrides_the_default(smtp: SmtpSink) -> None:
    assert attempt(to(smtp), mail(text="x", **{"from": "crm@acme.test"})) == OK
    (received,) = smtp.wait_for(1)
    assert received.mail_from == "crm@acme.test"


def test_auth() -> None:
    with SmtpSink(users={"router": PASSWORD}) as smtp:
        deliverer = to(smtp, username="router", password=PASSWORD)
        assert attempt(deliverer, mail(text="x")) == OK
        (received,) = smtp.wait_for(1)
        assert received.login == "router"


def test_wrong_password_is_permanent_and_not_echoed() -> None:
    with SmtpSink(users={"router": PASSWORD}) as smtp:
        outcome = attempt(to(smtp, username="router", password="Wr0ngS3cret"), mail(text="x"))
        assert isinstance(outcome, GiveUp)
        assert outcome.status_code == 535
        assert "Wr0ngS3cret" not in str(outcome)
        assert smtp.messages == []


@pytest.mark.parametrize(
    ("reply", "kind", "code"),
    [
        ("451 4.3.0 Mailbox busy, try later", RetryLater, 451),
        ("452 4.3.1 Insufficient storage", RetryLater, 452),
        ("554 5.7.1 Message rejected as spam", GiveUp, 554),
        ("552 5.3.4 Message too big", GiveUp, 552),
    ],
)
def test_data_replies(smtp: SmtpSink, reply: str, kind: type[DeliveryFailed], code: int) -> None:
    smtp.script(reply)
    outcome = attempt(to(smtp), mail(text="x"))
    assert type(outcome) is kind
    assert isinstance(outcome, DeliveryFailed)
    assert outcome.status_code == code
    assert str(outcome).startswith(f"SMTP {code} from 127.0.0.1:{smtp.port}: ")
    assert reply[4:] in str(outcome)
    assert outcome.response == Excerpt(reply)  # the server's reply is the attempt's excerpt


def test_the_server_s_reply_to_the_message_is_the_excerpt_password_masked() -> None:
    with SmtpSink(users={"router": PASSWORD}) as smtp:
        deliverer = to(smtp, username="router", password=PASSWORD)
        smtp.script(f"250 2.0.0 queued as 4F2A for {PASSWORD}")
        assert attempt(deliverer, mail(text="x")) == Delivered(
            SENT, Excerpt("2.0.0 queued as 4F2A for <secret ROUTER_SMTP_PASSWORD>")
        )
        smtp.script(f"554 5.7.1 refused {PASSWORD}")
        refused = attempt(deliverer, mail(text="x"))
        assert isinstance(refused, GiveUp) and refused.response is not None
        assert refused.response.text == "554 5.7.1 refused <secret ROUTER_SMTP_PASSWORD>"


@pytest.mark.parametrize(
    ("refusals", "recipients", "kind", "code", "delivered"),
    [
        ({"gone@acme.test": "550 5.1.1 No such user"}, ["gone@acme.test"], GiveUp, 550, 0),
        ({"full@acme.test": "450 4.2.1 Try later"}, ["full@acme.test"], RetryLater, 450, 0),
        # One of two refused: the message reached the other; the refusal decides the outcome.
        ({"gone@acme.test": "550 5.1.1 No such user"}, ["ok@acme.test", "gone@acme.test"],
         GiveUp, 550, 1),
        ({"full@acme.test": "450 4.2.1 Try later"}, ["ok@acme.test", "full@acme.test"],
         RetryLater, 450, 1),
        # A 5xx among 4xx refusals is permanent.
        ({"full@acme.test": "450 4.2.1 Try later", "gone@acme.test": "550 5.1.1 No such user"},
         ["full@acme.test", "gone@acme.test"], GiveUp, 550, 0),
    ],
)  # fmt: skip
def test_refused_recipients(
    smtp: SmtpSink,
    refusals: dict[str, str],
    recipients: list[str],
    kind: type[DeliveryFailed],
    code: int,
    delivered: int,
) -> None:
    for address, reply in refusals.items():
        smtp.refuse(address, reply)
    outcome = attempt(to(smtp), mail(to=recipients, text="x"))
    assert type(outcome) is kind
    assert isinstance(outcome, DeliveryFailed)
    assert outcome.status_code == code
    assert all(address in str(outcome) for address in refusals)
    assert len(smtp.messages) == delivered


def test_connection_refused_is_retried() -> None:
    port = free_port()
    outcome = attempt(
        EmailDeliverer(host="127.0.0.1", port=port, password=PASSWORD), mail(text="x")
    )
    assert isinstance(outcome, RetryLater)
    assert str(outcome) == f"cannot connect to SMTP server 127.0.0.1:{port}"


def test_starttls_required_but_not_offered_is_retried(smtp: SmtpSink) -> None:
    outcome = attempt(to(smtp, tls="starttls", password=PASSWORD), mail(text="x"))
    assert isinstance(outcome, RetryLater)
    assert "STARTTLS" in str(outcome) or "starttls" in str(outcome).lower()
    assert PASSWORD not in str(outcome)


def test_starttls(tmp_path: Path) -> None:
    pair = self_signed_cert(tmp_path)
    if pair is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = pair
    with SmtpSink(starttls=server_tls_context(cert, key)) as smtp:
        deliverer = to(smtp, tls="starttls", tls_context=client_tls_context(cert))
        assert attempt(deliverer, mail(text="over TLS")) == OK
        (received,) = smtp.wait_for(1)
        assert received.tls


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"to": []}, "invalid e-mail: to: no recipient"),
        ({"to": ["  "]}, "invalid e-mail: to: no recipient"),
        ({"subject": "hi\r\nBcc: spy@evil.test"}, "invalid e-mail: subject: the value contains"),
    ],
)
def test_invalid_messages_are_permanent(
    smtp: SmtpSink, fields: dict[str, Any], message: str
) -> None:
    outcome = attempt(to(smtp), mail(text="x") | fields)
    assert isinstance(outcome, GiveUp)
    assert str(outcome).startswith(message)
    assert "spy@evil.test" not in str(outcome)
    assert smtp.messages == []


def test_from_settings_and_destination() -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        smtp_host="127.0.0.1",
        smtp_port=2525,
        smtp_username="u",
        smtp_password=PASSWORD,  # type: ignore[arg-type]
        email_from="router@acme.test",
    )
    deliverer = EmailDeliverer.from_settings(settings)
    assert PASSWORD not in repr(vars(deliverer))


def test_cc_and_bcc_are_envelope_recipients_and_bcc_is_no_header(smtp: SmtpSink) -> None:
    rendered = mail(
        to=["a@acme.test"], cc=["c@acme.test", "a@acme.test"], bcc=["hidden@acme.test"], text="x"
    )
    assert attempt(to(smtp), rendered) == OK
    (received,) = smtp.wait_for(1)
    # Each address once, To then Cc then Bcc.
    assert received.rcpt_tos == ("a@acme.test", "c@acme.test", "hidden@acme.test")
    message = received.message
    assert message["To"] == "a@acme.test"
    assert message["Cc"] == "c@acme.test, a@acme.test"
    assert "Bcc" not in message
    assert b"hidden@acme.test" not in received.content


def test_display_names_are_written_by_the_library(smtp: SmtpSink) -> None:
    rendered = mail(to=['"Dupont, Marie" <marie@acme.test>', "Zoë Ünal <zoe@acme.test>"], text="x")
    assert attempt(to(smtp), rendered) == OK
    (received,) = smtp.wait_for(1)
    assert received.rcpt_tos == ("marie@acme.test", "zoe@acme.test")
    header = received.message["To"]
    assert [(a.display_name, a.addr_spec) for a in header.addresses] == [
        ("Dupont, Marie", "marie@acme.test"),
        ("Zoë Ünal", "zoe@acme.test"),
    ]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"to": ["a@acme.test, spy@evil.test"]}, "invalid e-mail: to[0]: it holds 2 addresses"),
        ({"cc": ['"a@acme.test" <spy@evil.test>']}, "invalid e-mail: cc[0]: the display name"),
        ({"bcc": ["spy@evil.test\nTo: x@acme.test"]}, "invalid e-mail: bcc[0]: the value contains"),
        ({"subject": "=?utf-8?q?a=0D=0ABcc:_spy@evil.test?="}, "invalid e-mail: subject: the"),
        ({"from": "a@acme.test, spy@evil.test"}, "invalid e-mail: from: it is not one e-mail"),
    ],
)
def test_every_address_and_header_is_checked_again_before_sending(
    smtp: SmtpSink, fields: dict[str, Any], message: str
) -> None:
    outcome = attempt(to(smtp), mail(text="x") | fields)
    assert isinstance(outcome, GiveUp)
    assert str(outcome).startswith(message)
    assert "spy@evil.test" not in str(outcome)
    assert smtp.messages == []


def test_an_invalid_sender_setting_is_retried_until_fixed(smtp: SmtpSink) -> None:
    deliverer = EmailDeliverer(host=smtp.host, port=smtp.port, sender="router at acme")
    outcome = attempt(deliverer, mail(text="x"))
    assert isinstance(outcome, RetryLater)
    assert str(outcome) == (
        "the sender address (ROUTER_EMAIL_FROM) is invalid: it is not a plain e-mail address; "
        "write local@domain, or Name <local@domain>; fix the setting"
    )
    assert smtp.messages == []


def test_a_sender_with_a_display_name(smtp: SmtpSink) -> None:
    deliverer = EmailDeliverer(host=smtp.host, port=smtp.port, sender="Router <router@acme.test>")
    assert attempt(deliverer, mail(text="x"), job_id="j7") == OK
    (received,) = smtp.wait_for(1)
    assert received.mail_from == "router@acme.test"
    assert received.message["From"] == "Router <router@acme.test>"
    assert received.message["Message-ID"] == "<j7@acme.test>"
