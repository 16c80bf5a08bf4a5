from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from router.exceptions import DeliveryFailed, GiveUp, RetryLater
from router.retry import Decision, RetryOverride, RetryPolicy, parse_retry_after
from router.settings import Settings

POLICY = RetryPolicy(
    max_attempts=10, max_age=86400.0, base_delay=1.0, max_delay=3600.0, retry_after_cap=600.0
)
NOW = 1_700_000_000.0


def decide(
    failure: DeliveryFailed,
    *,
    attempts: int = 1,
    budget_since: float = NOW,
    now: float = NOW,
    policy: RetryPolicy = POLICY,
    seed: int = 7,
) -> Decision:
    return policy.decide(
        attempts=attempts,
        budget_since=budget_since,
        now=now,
        failure=failure,
        rng=random.Random(seed),
    )


@pytest.mark.parametrize(
    ("failure", "attempts", "budget_since", "now", "reason"),
    [
        (GiveUp("HTTP 400 from x", status_code=400), 1, NOW, NOW, "permanent failure"),
        (DeliveryFailed("unclassified"), 1, NOW, NOW, "permanent failure"),
        (RetryLater("HTTP 503 from x"), 10, NOW, NOW, "gave up after 10 attempts"),
        (RetryLater("HTTP 503 from x"), 11, NOW, NOW, "gave up after 11 attempts"),
        # Accepted a day ago: any retry lands past the max age.
        (RetryLater("x", retry_after=1.0), 2, NOW - 86400.0, NOW, "gave up: older than max age"),
        (
            RetryLater("x", retry_after=60.0),
            2,
            NOW - 86400 + 59,
            NOW,
            "gave up: older than max age",
        ),
    ],
)
def test_dead_decisions(
    failure: DeliveryFailed, attempts: int, budget_since: float, now: float, reason: str
) -> None:
    decision = decide(failure, attempts=attempts, budget_since=budget_since, now=now)
    assert decision == Decision(None, reason)
    assert decision.dead


def test_retry_just_inside_max_age_is_kept() -> None:
    decision = decide(RetryLater("x", retry_after=60.0), attempts=2, budget_since=NOW - 86400 + 61)
    assert decision.retry_at == NOW + 60.0
    assert not decision.dead


def test_seeded_rng_gives_full_jitter_of_the_exponential_step() -> None:
    for attempts in range(1, 10):
        cap = min(POLICY.max_delay, POLICY.base_delay * 2 ** (attempts - 1))
        expected = NOW + random.Random(attempts).uniform(0, cap)
        decision = decide(RetryLater("x"), attempts=attempts, seed=attempts)
        assert decision.retry_at == expected
        assert decision.reason.startswith(f"retry {attempts + 1} of 10 in ")


@pytest.mark.parametrize("attempts", [1, 2, 3, 5, 8, 12, 13, 40, 99])
def test_jitter_stays_within_bounds_and_spreads(attempts: int) -> None:
    policy = RetryPolicy(
        max_attempts=100, max_age=1e9, base_delay=2.0, max_delay=5000.0, retry_after_cap=60.0
    )
    cap = min(5000.0, 2.0 * 2 ** (attempts - 1))
    rng = random.Random(attempts)
    delays = []
    for _ in range(300):
        decision = policy.decide(
            attempts=attempts, budget_since=NOW, now=NOW, failure=RetryLater("x"), rng=rng
        )
        assert decision.retry_at is not None
        delays.append(decision.retry_at - NOW)
    assert all(0.0 <= delay <= cap for delay in delays)
    # Full jitter: the draws cover the range, they do not cluster at the cap.
    assert min(delays) < cap * 0.1
    assert max(delays) > cap * 0.9


@pytest.mark.parametrize(
    ("retry_after", "base_delay", "expected_delay"),
    [
        (30.0, 0.001, 30.0),  # Retry-After is a floor over a tiny backoff
        (10_000.0, 0.001, 600.0),  # ... capped by retry_after_cap
        (0.0, 0.001, None),  # 0 leaves the jittered backoff
        (-5.0, 0.001, None),  # negative counts as 0
        (1.0, 1000.0, None),  # a backoff longer than Retry-After wins
    ],
)
def test_retry_after_floor_and_cap(
    retry_after: float, base_delay: float, expected_delay: float | None
) -> None:
    policy = RetryPolicy(
        max_attempts=10, max_age=1e9, base_delay=base_delay, max_delay=5000.0, retry_after_cap=600.0
    )
    decision = decide(RetryLater("x", retry_after=retry_after), policy=policy, seed=3)
    jitter = random.Random(3).uniform(0, base_delay)
    assert decision.retry_at == NOW + (jitter if expected_delay is None else expected_delay)


def test_without_rng_delays_still_respect_bounds() -> None:
    decision = POLICY.decide(attempts=3, budget_since=NOW, now=NOW, failure=RetryLater("x"))
    assert decision.retry_at is not None
    assert NOW <= decision.retry_at <= NOW + 4.0


@pytest.mark.parametrize(
    ("override", "max_attempts", "max_age"),
    [
        (RetryOverride(), 10, 86400.0),
        (RetryOverride(max_attempts=3), 3, 86400.0),
        (RetryOverride(max_age=60.0), 10, 60.0),
        (RetryOverride(max_attempts=1, max_age=5.0), 1, 5.0),
    ],
)
def test_with_override(override: RetryOverride, max_attempts: int, max_age: float) -> None:
    policy = POLICY.with_override(override)
    assert (policy.max_attempts, policy.max_age) == (max_attempts, max_age)
    assert (policy.base_delay, policy.max_delay, policy.retry_after_cap) == (1.0, 3600.0, 600.0)


def test_override_of_one_attempt_makes_the_first_failure_final() -> None:
    policy = POLICY.with_override(RetryOverride(max_attempts=1))
    assert decide(RetryLater("x"), policy=policy).reason == "gave up after 1 attempt"


def test_from_settings() -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        retry_max_attempts=4,
        retry_max_age=120.0,
        retry_base_delay=0.5,
        retry_max_delay=30.0,
        retry_after_cap=45.0,
    )
    assert RetryPolicy.from_settings(settings) == RetryPolicy(
        max_attempts=4, max_age=120.0, base_delay=0.5, max_delay=30.0, retry_after_cap=45.0
    )


def _http_date(offset: float) -> str:
    return format_datetime(datetime.fromtimestamp(NOW + offset, UTC), usegmt=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("-5", 0.0),
        (_http_date(90), 90.0),
        (_http_date(-90), 0.0),  # a date in the past: now
        ("Tue, 14 Nov 2023 22:13:50 -0000", 30.0),  # zone-less date read as GMT
        ("soon", None),
        ("", None),
        (None, None),
        ("inf", None),
        ("nan", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


@pytest.mark.parametrize("outage", [60.0, 3600.0, 6 * 3600.0])
def test_default_policy_rides_out_an_outage(outage: float) -> None:
    # 2,000 jobs fail on every attempt while the destination is down; with the default
    # settings none of them may die before it is back, however the jitter falls.
    policy = RetryPolicy.from_settings(Settings())  # type: ignore[call-arg]
    rng = random.Random(11)
    dead = 0
    for job in range(2000):
        accepted = now = NOW + job * 0.01
        attempts = 0
        while now < NOW + outage:
            attempts += 1
            decision = policy.decide(
                attempts=attempts, budget_since=accepted, now=now, failure=RetryLater("x"), rng=rng
            )
            if decision.retry_at is None:
                dead += 1
                break
            now = decision.retry_at
    assert dead == 0
    assert policy.max_age == 86400.0 and policy.max_delay == 3600.0


def test_max_attempts_zero_means_no_limit() -> None:
    unlimited = RetryPolicy(
        max_attempts=0, max_age=86400.0, base_delay=1.0, max_delay=60.0, retry_after_cap=600.0
    )
    decision = decide(RetryLater("x"), attempts=5000, policy=unlimited)
    assert not decision.dead
    assert decision.reason.startswith("retry 5001 in ")
