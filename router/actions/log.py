"""The log action: one structured line through the `router.actions.log` logger.

Its table: `level` and `message` (a template). A log line is where secrets must never go, so a
message may not read any. Its jobs count against one destination: the log.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

from router.actions.base import ActionType, Deliverer, Key
from router.checks import Checker, KeyPath
from router.exceptions import GiveUp
from router.retry import RetryOverride
from router.rules import Action
from router.templating import Template

if TYPE_CHECKING:
    from router.settings import Settings

logger = logging.getLogger("router.actions.log")

LEVELS: Mapping[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
LEVEL_KEY = Key("level", "string", f"One of {', '.join(LEVELS)}.", default="info")
MESSAGE_KEY = Key(
    "message",
    "template",
    "The line to log (it may not read secrets).",
    required=True,
    template=True,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class LogAction(Action):
    type: str = "log"
    level: str
    message: Template


class LogDeliverer(Deliverer):
    """Writes the rendered message at the rendered level, with fields `rule` and `delivery_id`.

    `rendered` is {"type": "log", "level", "message"}, optionally with "rule" (the rule's
    name) and "event_id"; the job id is the delivery id. Always succeeds for a known level.
    """

    type = "log"

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls()

    async def deliver(
        self, rendered: Mapping[str, Any], *, job_id: str, timeout: float | None
    ) -> int | None:
        level_name = str(rendered.get("level", "info")).lower()
        level = LEVELS.get(level_name)
        if level is None:
            raise GiveUp(f"unknown log level {level_name!r}")
        # The message is passed as-is, never as a format string: no args, so '%' stays literal.
        logger.log(
            level,
            str(rendered.get("message", "")),
            extra={
                "rule": rendered.get("rule"),
                "event_id": rendered.get("event_id"),
                "delivery_id": job_id,
            },
        )
        return None


class LogType(ActionType):
    name = "log"
    summary = "Write a line to the router's log (an audit trail, or a rule being tried out)."
    keys = (LEVEL_KEY, MESSAGE_KEY)
    rendered = ("level", "message")
    deliverer = LogDeliverer

    def compile(
        self, checker: Checker, path: KeyPath, raw: dict[str, Any], retry: RetryOverride
    ) -> Action | None:
        level = checker.text((*path, "level"), raw.get("level", LEVEL_KEY.default))
        if level is not None and level.lower() not in LEVELS:
            checker.choice((*path, "level"), level, tuple(LEVELS), "log level")
        message = checker.template(
            (*path, "message"), checker.require(raw, "message", path, "give the message to log")
        )
        if message is not None and message.secrets:
            # Secrets never reach a log line; a log action's message is one.
            names = ", ".join(f"secrets.{name}" for name in sorted(message.secrets))
            checker.report((*path, "message"), f"a log message cannot show secrets ({names})")
            return None
        if level is None or message is None:
            return None
        return LogAction(spec=raw, level=level.lower(), message=message, retry=retry)

    def render(self, action: LogAction, context: Mapping[str, Any]) -> dict[str, Any]:
        message = action.message.render(context, where="message")
        return {"type": "log", "level": action.level, "message": message}

    def destination(self, action: LogAction) -> str:
        return "log"

    def expected(self, checker: Checker, path: KeyPath, key: str, value: Any) -> Any:
        text = checker.text(path, value)
        return text.lower() if key == "level" and text else text

    def describe(self, rendered: Mapping[str, Any]) -> tuple[str, list[tuple[str, str]]]:
        return f"[{rendered['level']}] {rendered['message']}", []


__all__ = ["LEVELS", "LogAction", "LogDeliverer", "LogType"]
