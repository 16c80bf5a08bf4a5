"""The deliverer contract: one class per action type, looked up by name in the registry.

The worker renders an action's templates into a plain dict (`rendered`) and hands it to the
deliverer of that type. A deliverer makes exactly one attempt and reports how it went: a status
code, or RetryLater / GiveUp. It never retries by itself and never sleeps: retrying is the
worker's business (see router.retry), so that a failing destination costs a job a row in the
store, not a held slot.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Self

if TYPE_CHECKING:
    from router.settings import Settings


class Deliverer(abc.ABC):
    """Sends rendered actions of one type.

    Lifecycle: built by `from_settings`, `start()` once before the first delivery (open pools
    and clients; it runs inside the worker's event loop), `close()` once at shutdown. `deliver`
    may be called concurrently; concurrency limits are the worker's, a deliverer only bounds
    what its own pools need.
    """

    type: ClassVar[str]

    @classmethod
    @abc.abstractmethod
    def from_settings(cls, settings: Settings) -> Self:
        """Build a deliverer from the settings; no I/O here."""

    async def start(self) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Open pools and clients. Called once, inside the running event loop."""

    async def close(self) -> None:  # noqa: B027 - optional hook, deliberately empty
        """Release what `start` opened. Must be safe to call when `start` was never called."""

    @abc.abstractmethod
    async def deliver(
        self, rendered: Mapping[str, Any], *, job_id: str, timeout: float | None
    ) -> int | None:
        """Make one delivery attempt of `rendered`.

        Returns the destination's status code (None where there is none). Raises RetryLater
        for a transient failure and GiveUp for a permanent one; every other exception is a bug.
        Error messages are one sentence and must never hold a secret: no header values, no
        URL query or userinfo, no password.
        """
