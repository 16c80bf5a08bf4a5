"""The email action: one message per delivery, one SMTP session per attempt (aiosmtplib).

Its table: `to`, `cc`, `bcc` (templates; each entry renders to exactly one address unless
`address_lists = true`), `subject` (a template; one line, no encoded words), `text` and/or
`html` (templates). Every rendered recipient and header is checked after rendering
(router.actions.addresses), so event data can neither add a recipient nor a header. Its jobs
count against one destination: the SMTP server.

Outcomes of an attempt: the server accepted the message for every recipient -> delivered
(returns 250). SMTP 4xx replies, connection errors and timeouts -> RetryLater; 5xx replies ->
GiveUp, including a recipient refused with 5xx (then retrying cannot help; the accepted
recipients already have the message). A recipient refused with 4xx is RetryLater:
at-least-once, so the recipients who accepted may get the message twice. A `Message-ID` derived
from the job id is the same on every attempt, so mail systems can recognise repeats.

One connection per attempt keeps the deliverer stateless and each failure isolated; e-mail
volumes are small next to HTTP. The password is never put in a message, and server replies are
shortened and scrubbed of it. An attempt's excerpt (router.excerpts) is the server's reply to
the message (or the refusal), the password masked in it.

The envelope is explicit: its sender and recipients are the addresses the checks accepted (To,
Cc and Bcc), never read back from the headers, so no header can add a recipient; Bcc is in the
envelope only. A rendered action that fails those checks is GiveUp (rendering refuses it first;
this guards every other caller).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, Literal, Self

import aiosmtplib
from pydantic import SecretStr

from router.actions.addresses import AddressProblem, check_email, entry_addresses, one_address
from router.actions.base import ActionType, Delivered, Deliverer, Key
from router.actions.headers import header_problem
from router.checks import Checker, KeyPath
from router.exceptions import DeliveryFailed, GiveUp, RenderError, RetryLater
from router.excerpts import Excerpt
from router.retry import RetryOverride
from router.rules import Action
from router.sandbox import PlaceholderSecrets
from router.templating import Template

if TYPE_CHECKING:
    from router.settings import Settings

TlsMode = Literal["none", "starttls", "tls"]
REPLY_CHARS = 200  # how much of a server reply an error message keeps
SENT = 250
RECIPIENTS = ("to", "cc", "bcc")

KEYS = (
    Key(
        "to",
        "template or list of templates",
        "Recipients; each entry renders to one address (`local@domain` or `Name <local@domain>`).",
        required=True,
        template=True,
    ),
    Key("cc", "template or list of templates", "Copy recipients, like `to`.", template=True),
    Key(
        "bcc",
        "template or list of templates",
        "Blind-copy recipients, like `to`; they are never shown in the headers.",
        template=True,
    ),
    Key(
        "address_lists",
        "boolean",
        "Let an entry of to, cc or bcc render to several comma-separated addresses.",
        default=False,
    ),
    Key("subject", "template", "The subject: one line.", required=True, template=True),
    Key("text", "template", "The plain-text body (text, html or both).", template=True),
    Key("html", "template", "The HTML body (text, html or both).", template=True),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class EmailAction(Action):
    type: str = "email"
    to: tuple[Template, ...]
    subject: Template
    text: Template | None
    html: Template | None
    cc: tuple[Template, ...] = ()
    bcc: tuple[Template, ...] = ()
    address_lists: bool = False


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message and its envelope: the sender and every recipient (To, Cc and Bcc)."""

    message: EmailMessage
    sender: str
    recipients: tuple[str, ...]


class EmailDeliverer(Deliverer):
    """Sends {"type": "email", "to": [...], "subject", "text", "html"} (text and/or html; both
    make a multipart/alternative message), with optional "cc" and "bcc" lists; each entry is
    one address. An optional "from" overrides the default sender.

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
    ) -> Delivered:
        outgoing = self.build_message(rendered, job_id=job_id)
        password = self._password.get_secret_value() if self._password else None
        try:
            refused, reply = await aiosmtplib.send(
                outgoing.message,
                sender=outgoing.sender,
                recipients=list(outgoing.recipients),
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
        return Delivered(SENT, self._excerpt(reply))

    def build_message(self, rendered: Mapping[str, Any], *, job_id: str) -> Outgoing:
        """The message for `rendered` and its envelope, or GiveUp when it cannot be a valid
        e-mail; RetryLater when the configured sender is not a valid address."""
        try:
            checked = check_email(rendered)
        except AddressProblem as problem:
            # The problem never repeats the value: it may hold what a template put there.
            raise GiveUp(f"invalid e-mail: {problem}") from None
        sender = self._sender_address(checked.get("from"))
        lists = {key: [one_address(e) for e in checked.get(key) or ()] for key in ("to", "cc")}
        hidden = [one_address(entry) for entry in checked.get("bcc") or ()]
        message = EmailMessage()
        message["From"] = sender
        message["To"] = lists["to"]
        if lists["cc"]:
            message["Cc"] = lists["cc"]
        message["Subject"] = str(checked.get("subject") or "")
        message["Date"] = formatdate(usegmt=True)
        message["Message-ID"] = f"<{job_id}@{sender.domain}>"
        text, html = checked.get("text"), checked.get("html")
        if text is not None and html is not None:
            message.set_content(str(text))
            message.add_alternative(str(html), subtype="html")
        elif html is not None:
            message.set_content(str(html), subtype="html")
        else:
            message.set_content(str(text or ""))
        everyone = [a.addr_spec for a in (*lists["to"], *lists["cc"], *hidden)]
        return Outgoing(message, sender.addr_spec, tuple(dict.fromkeys(everyone)))

    def _sender_address(self, rendered: Any) -> Address:
        if rendered is not None:  # checked with the rest of `rendered`
            return one_address(str(rendered))
        try:
            return one_address(self._sender)
        except ValueError as exc:
            # The setting, not the message, is wrong: retry, so jobs wait for the fix.
            raise RetryLater(
                f"the sender address (ROUTER_EMAIL_FROM) is invalid: {exc}; fix the setting"
            ) from None

    def _refused(self, refused: Mapping[str, tuple[int, str]]) -> DeliveryFailed:
        """Any 5xx refusal is permanent; otherwise (4xx only) retry."""
        code, reply = max(refused.values(), key=lambda answer: answer[0])
        names = ", ".join(sorted(refused))
        return self._reply(code, reply, f" for {len(refused)} recipient(s) ({names})")

    def _reply(self, code: int, reply: str, context: str) -> DeliveryFailed:
        message = f"SMTP {code} from {self._where}{context}: {self._scrub(reply)}"
        answer = self._excerpt(f"{code} {reply}")
        if 500 <= code < 600:
            return GiveUp(message, status_code=code, response=answer)
        # 4xx, or not a reply code: treat as a glitch.
        return RetryLater(message, status_code=code, response=answer)

    def _excerpt(self, reply: str) -> Excerpt:
        password = self._password.get_secret_value() if self._password else ""
        return Excerpt(reply).masked({"ROUTER_SMTP_PASSWORD": password})

    def _scrub(self, text: str) -> str:
        if self._password and (secret := self._password.get_secret_value()):
            text = text.replace(secret, "***")  # before shortening, which could cut it in two
        return " ".join(text.split())[:REPLY_CHARS]


class EmailType(ActionType):
    name = "email"
    summary = "Send an e-mail through the SMTP server of the settings."
    keys = KEYS
    rendered = ("to", "cc", "bcc", "subject", "text", "html")
    shown_when_set = ("html",)
    deliverer = EmailDeliverer

    def compile(
        self, checker: Checker, path: KeyPath, raw: dict[str, Any], retry: RetryOverride
    ) -> Action | None:
        lists = checker.boolean((*path, "address_lists"), raw.get("address_lists"), False)
        value = checker.require(raw, "to", path, "give at least one recipient address")
        to = _recipients(checker, (*path, "to"), value, bool(lists))
        if to == []:
            checker.report((*path, "to"), "is empty; give at least one recipient address")
        cc = _recipients(checker, (*path, "cc"), raw.get("cc"), bool(lists))
        bcc = _recipients(checker, (*path, "bcc"), raw.get("bcc"), bool(lists))
        subject = checker.template(
            (*path, "subject"), checker.require(raw, "subject", path, "give the subject")
        )
        checker.literal(
            (*path, "subject"), subject, lambda text: header_problem(text, encoded_words=True)
        )
        text = checker.template((*path, "text"), raw.get("text"))
        html = checker.template((*path, "html"), raw.get("html"))
        if "text" not in raw and "html" not in raw:
            checker.report((*path, "text"), "is missing; an email needs text, html or both")
        recipients = [*(to or ()), *(cc or ()), *(bcc or ())]
        if subject is None or not to or None in recipients or lists is None:
            return None
        return EmailAction(
            spec=raw,
            to=tuple(t for t in to if t is not None),
            subject=subject,
            text=text,
            html=html,
            retry=retry,
            cc=tuple(t for t in cc or () if t is not None),
            bcc=tuple(t for t in bcc or () if t is not None),
            address_lists=lists,
        )

    def render(self, action: EmailAction, context: Mapping[str, Any]) -> dict[str, Any]:
        rendered: dict[str, Any] = {"type": "email"}
        for key, templates in (("to", action.to), ("cc", action.cc), ("bcc", action.bcc)):
            if key == "to" or templates:
                rendered[key] = [
                    template.render(context, where=f"{key}[{i}]")
                    for i, template in enumerate(templates)
                ]
        rendered["subject"] = action.subject.render(context, where="subject")
        rendered["text"] = action.text.render(context, where="text") if action.text else None
        rendered["html"] = action.html.render(context, where="html") if action.html else None
        # A dry run renders secrets (and a fetched profile) as placeholders: where one stands,
        # the address is unknown.
        dry = isinstance(context.get("secrets"), PlaceholderSecrets)
        try:
            return check_email(
                rendered,
                address_lists=action.address_lists,
                opaque=_has_placeholder if dry else None,
            )
        except AddressProblem as problem:
            raise RenderError(f"template for {problem.key}: {problem.problem}") from None

    def destination(self, action: EmailAction) -> str:
        return "smtp"

    def expected(self, checker: Checker, path: KeyPath, key: str, value: Any) -> Any:
        if key in RECIPIENTS:
            return checker.texts(path, value)
        return checker.text(path, value)

    def describe(self, rendered: Mapping[str, Any]) -> tuple[str, list[tuple[str, str]]]:
        blocks = [(key, ", ".join(rendered[key])) for key in ("cc", "bcc") if rendered.get(key)]
        blocks.append(("subject", rendered["subject"]))
        blocks += [
            (key, rendered[key]) for key in ("text", "html") if rendered.get(key) is not None
        ]
        return f"to {', '.join(rendered['to'])}", blocks


def _recipients(
    checker: Checker, path: KeyPath, value: Any, lists: bool
) -> list[Template | None] | None:
    """Each entry of to, cc or bcc compiled (None where it failed); None if the key is absent
    or not a string or a list of them."""
    entries = checker.texts(path, value)
    if entries is None:
        return None
    compiled: list[Template | None] = []
    for index, source in enumerate(entries):
        at = (*path, index) if isinstance(value, list) else path
        template = checker.template(at, source)
        checker.literal(at, template, lambda text: _address_problem(text, lists))
        compiled.append(template)
    return compiled


def _address_problem(text: str, lists: bool) -> str | None:
    try:
        entry_addresses(text, lists=lists)
    except ValueError as exc:
        return str(exc)
    return None


def _has_placeholder(value: str) -> bool:
    return "<secret " in value or "<profile " in value


__all__ = ["SENT", "EmailAction", "EmailDeliverer", "EmailType", "Outgoing"]
