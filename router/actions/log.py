"""The log action: one structured line through the `router.actions.log` logger."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self

from router.actions.base import Deliverer
from router.exceptions import GiveUp

if TYPE_CHECKING:
    from router.settings import Settings

logger = logging.getLogger("router.actions.log")

LEVELS: Mapping[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


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
