"""ACTITO's documented API limits, held by one process: at most N calls in flight at once (5
per licence; ACTITO answers 429 above that) and at most M calls per minute (100; ACTITO
throttles beyond that).

The per-minute limit is held by spacing calls out: each call starts at least `window / M`
seconds after the one before, so no minute ever holds more than M calls (plus the one that
opens it), and a BULK push that needs a thousand calls is spread over ten minutes instead of
being sent in bursts ACTITO would hold back. The spacing is taken inside a concurrency slot,
so calls that waited for a slot cannot start together.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

MINUTE = 60.0  # seconds: the window of ACTITO's calls-per-minute limit


class CallLimits:
    """The limits of one process's ACTITO calls. `window` is injectable so that tests can
    hold "M calls per window" over a shorter window instead of waiting minutes."""

    def __init__(
        self,
        *,
        concurrent: int,
        per_window: int,
        window: float = MINUTE,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if concurrent < 1 or per_window < 1 or window <= 0:
            raise ValueError("ACTITO call limits must be positive")
        self.concurrent = concurrent
        self.per_window = per_window
        self.window = window
        self.interval = window / per_window  # seconds between the starts of two calls
        self._slots = asyncio.Semaphore(concurrent)
        self._next_start: float | None = None
        self._clock = clock

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    @contextlib.asynccontextmanager
    async def call(self) -> AsyncIterator[None]:
        """Hold one slot for the duration of one call, starting no sooner than its turn."""
        async with self._slots:
            now = self._now()
            start = now if self._next_start is None else max(now, self._next_start)
            # Claimed before sleeping, so each waiter gets its own turn. A waiter cancelled
            # while it sleeps leaves its turn unused: spacing only ever errs on the slow side.
            self._next_start = start + self.interval
            if start > now:
                await asyncio.sleep(start - now)
            yield


__all__ = ["MINUTE", "CallLimits"]
