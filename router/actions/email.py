"""The email action: one SMTP session per attempt through aiosmtplib.

Outcomes: the server accepted the message for every recipient -> delivered (returns 250).
SMTP 4xx replies, connection errors and timeouts -> RetryLater; 5xx replies -> GiveUp, including
a recipient refused with 5xx (then retrying cannot help; the accepted recipients already have
the message). A recipient refused with 4xx is RetryLater: at-least-once, so the recipients who
accepted may get the message twice. A `Message-ID` derived from the job id is the same on every
attempt, so mail systems can recognise repeats.

One connection per attempt keeps the deliverer stateless and each failure isolated; e-mail
volumes are small next to HTTP. The password is never put in a message, and server replies are
shortened and scrubbed of it.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, Literal, Self

import aiosmtplib
from pydantic import SecretStr

from router.actions.base import Deliverer
from router.exceptions import DeliveryFailed, GiveUp, RetryLater

if TYPE_CHECKING:
    from router.settings import Settings

TlsMode = Literal["none", "starttls", "tls"]
REPLY_CHARS = 200  # how much of a server reply an error message keeps
SENT = 250


class EmailDeliverer(Deliverer):
    """Sends {"type": "email", "to": [...], "subject", "text", "html"} (text and/or html; both
    make a multipart/alternative message). An optional "from" overrides the default sender.

    `tls_context` replaces the default certificate checks (for a private CA).
    """

    type = "email"

    def __init__(
        self,
        *,
        host: str = "localhost",
        port: int = 25,
        username: str | None = None,
        password: SecretStr | str | None = None,
        tls: TlsMode = "none",
        timeout: float = 30.0,
        sender: str = "router@localhost",
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self._host = host
        self._port = port
        self._username = username
        self._password = password if isinstance(password, SecretStr | None) else SecretStr(password)
        self._tls = tls
        self._timeout = timeout
        self._sender = sender
        self._tls_context = tls_context
        self._where = f"{host}:{port}"

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(
            host=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username,
            password=settings.smtp_password,
            tls=settings.smtp_tls,
            timeout=settings.smtp_timeout,
            sender=settings.email_from,
        )

    async def deliver(
        self, rendered: Mapping[str, Any], *, job_id: str, timeout: float | None
    ) -> int | None:
        message = self.build_message(rendered, job_id=job_id)
        password = self._password.get_secret_value() if self._password else None
        try:
            refused, _ = await aiosmtplib.send(
                message,
                hostname=self._host,
                port=self._port,
                username=self._username,
                password=password,
                use_tls=self._tls == "tls",
                start_tls=self._tls == "starttls",
                tls_context=self._tls_context,
                timeout=timeout if timeout is not None else self._timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise self._refused({r.recipient: (r.code, r.message) for r in exc.recipients}) from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise self._reply(exc.code, exc.message, "") from exc
        except aiosmtplib.SMTPNotSupported as exc:
            # Raised for a non-ASCII address the server cannot take: a property of this message.
            raise GiveUp(f"SMTP server {self._where}: {self._scrub(str(exc))}") from exc
        except aiosmtplib.SMTPTimeoutError as exc:
            raise RetryLater(f"SMTP server {self._where} did not answer in time") from exc
        except aiosmtplib.SMTPConnectError as exc:
            raise RetryLater(f"cannot connect to SMTP server {self._where}") from exc
        except aiosmtplib.SMTPServerDisconnected as exc:
            raise RetryLater(f"SMTP server {self._where} closed the connection") from exc
        except ssl.SSLError as exc:
            raise RetryLater(f"TLS with SMTP server {self._where} failed: {exc.reason}") from exc
        except aiosmtplib.SMTPException as exc:
            # The server lacks what the settings ask for (STARTTLS, AUTH): retry, so the jobs
            # are still there once the settings are fixed.
            raise RetryLater(f"SMTP server {self._where}: {self._scrub(str(exc))}") from exc
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise RetryLater(f"sending to SMTP server {self._where} failed: {reason}") from exc
        if refused:
            raise self._refused({rcpt: (r.code, r.message) for rcpt, r in refused.items()})
        return SENT

    def build_message(self, rendered: Mapping[str, Any], *, job_id: str) -> EmailMessage:
        """The message for `rendered`, or GiveUp when it cannot be a valid e-mail."""
        to = rendered.get("to") or []
        recipients = [to] if isinstance(to, str) else [str(r) for r in to if str(r).strip()]
        if not recipients:
            raise GiveUp("e-mail has no recipient")
        text, html = rendered.get("text"), rendered.get("html")
        message = EmailMessage()
        try:
            message["From"] = str(rendered.get("from") or self._sender)
            message["To"] = ", ".join(recipients)
            message["Subject"] = str(rendered.get("subject") or "")
            message["Date"] = formatdate(usegmt=True)
            message["Message-ID"] = f"<{job_id}@{_domain(self._sender)}>"
        except (ValueError, TypeError) as exc:  # a line break in a header, an unparsable address
            # Not repeating the value: a header may hold what a template put there.
            raise GiveUp("e-mail headers are invalid: a line break or a malformed address") from exc
        if text is not None and html is not None:
            message.set_content(str(text))
            message.add_alternative(str(html), subtype="html")
        elif html is not None:
            message.set_content(str(html), subtype="html")
        else:
            message.set_content(str(text or ""))
        return message

    def _refused(self, refused: Mapping[str, tuple[int, str]]) -> DeliveryFailed:
        """Any 5xx refusal is permanent; otherwise (4xx only) retry."""
        code, reply = max(refused.values(), key=lambda answer: answer[0])
        names = ", ".join(sorted(refused))
        return self._reply(code, reply, f" for {len(refused)} recipient(s) ({names})")

    def _reply(self, code: int, reply: str, context: str) -> DeliveryFailed:
        message = f"SMTP {code} from {self._where}{context}: {self._scrub(reply)}"
        if 400 <= code < 500:
            return RetryLater(message, status_code=code)
        if 500 <= code < 600:
            return GiveUp(message, status_code=code)
        return RetryLater(message, status_code=code)  # not a reply code: treat as a glitch

    def _scrub(self, text: str) -> str:
        if self._password and (secret := self._password.get_secret_value()):
            text = text.replace(secret, "***")  # before shortening, which could cut it in two
        return " ".join(text.split())[:REPLY_CHARS]


def _domain(address: str) -> str:
    """The domain of an address for Message-ID, tolerating display names."""
    domain = address.rpartition("@")[2].strip(" >")
    return domain or "localhost"


__all__ = ["SENT", "EmailDeliverer"]
