"""Retry is data: (attempts made, the failure, the clock) -> retry at T, or dead.

Pure: no I/O, no clock reads. The worker passes `now` and the job's `budget_since` (acceptance,
or the last replay), and stores the returned `Decision`. Backoff is exponential with full
jitter (a uniformly random delay between 0 and the exponential step), so many jobs failing on
one destination at once do not all come back at the same instant. A destination's
`Retry-After` is a floor on the delay, capped so that a hostile or broken answer cannot park a
job for a year.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

from router.exceptions import DeliveryFailed, RetryLater

if TYPE_CHECKING:
    from router.settings import Settings

# 2 ** 64 base delays is far beyond any sane max_delay; the cap keeps float powers finite.
_MAX_EXPONENT = 64
_DEFAULT_RNG = random.Random()

REASON_PERMANENT = "permanent failure"
REASON_TOO_OLD = "gave up: older than max age"


@dataclass(frozen=True, slots=True)
class RetryOverride:
    """An action's own retry limits (its `retry` table); None keeps the global setting."""

    max_attempts: int | None = None
    max_age: float | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do after a failed attempt: retry at `retry_at` (epoch seconds), or None: dead."""

    retry_at: float | None
    reason: str

    @property
    def dead(self) -> bool:
        return self.retry_at is None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long a failing delivery is retried. All durations in seconds."""

    max_attempts: int  # 0: no limit (the max age decides)
    max_age: float
    base_delay: float
    max_delay: float
    retry_after_cap: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_attempts=settings.retry_max_attempts,
            max_age=settings.retry_max_age,
            base_delay=settings.retry_base_delay,
            max_delay=settings.retry_max_delay,
            retry_after_cap=settings.retry_after_cap,
        )

    def with_override(self, override: RetryOverride) -> RetryPolicy:
        """This policy with an action's own limits applied (None keeps ours)."""
        return dataclasses.replace(
            self,
            max_attempts=self.max_attempts
            if override.max_attempts is None
            else override.max_attempts,
            max_age=self.max_age if override.max_age is None else override.max_age,
        )

    def backoff_cap(self, attempts: int) -> float:
        """Upper bound of the jittered delay after `attempts` attempts (>= 1)."""
        exponent = min(max(attempts - 1, 0), _MAX_EXPONENT)
        return min(self.max_delay, self.base_delay * 2.0**exponent)

    def decide(
        self,
        *,
        attempts: int,
        budget_since: float,
        now: float,
        failure: DeliveryFailed,
        rng: random.Random | None = None,
    ) -> Decision:
        """Decide after the failed attempt number `attempts` (counting this one).

        GiveUp (and any DeliveryFailed that is not RetryLater) is dead at once. A RetryLater is
        retried unless the attempts are used up or the retry would fall after the job's max age.
        """
        if not isinstance(failure, RetryLater):
            return Decision(None, REASON_PERMANENT)
        if self.max_attempts and attempts >= self.max_attempts:
            plural = "" if attempts == 1 else "s"
            return Decision(None, f"gave up after {attempts} attempt{plural}")
        delay = (rng or _DEFAULT_RNG).uniform(0.0, self.backoff_cap(attempts))
        if failure.retry_after is not None:
            delay = max(delay, min(max(failure.retry_after, 0.0), self.retry_after_cap))
        if now + delay > budget_since + self.max_age:
            return Decision(None, REASON_TOO_OLD)
        of = f" of {self.max_attempts}" if self.max_attempts else ""
        return Decision(now + delay, f"retry {attempts + 1}{of} in {delay:.1f} s")


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta seconds or an HTTP date.

    A date in the past, or a negative delta, means 0. None when absent or unreadable (the
    caller then falls back to its own backoff).
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a zone-less date is read the same way
        when = when.replace(tzinfo=UTC)
    return max((when - datetime.fromtimestamp(now, UTC)).total_seconds(), 0.0)
