"""Token bucket, AIMD and the shared 429 cooldown, on a fake clock (nothing really sleeps)."""

from __future__ import annotations

import datetime as dt

import anyio
import pytest

from nanogpt_async import DailyLimitExceededError, RateLimitError
from nanogpt_async._batch_pacing import AIMD, Pacer, RateLimiter


class FakeTime:
    """A clock and a sleep that advances it: waits are recorded, never slept."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await anyio.lowlevel.checkpoint()


def rate_limited(retry_after: float | None) -> RateLimitError:
    return RateLimitError("slow down", status_code=429, retry_after=retry_after)


def no_jitter(low: float, high: float) -> float:
    return 0.0


def test_bucket_with_burst_one_spaces_requests_evenly() -> None:
    clock = FakeTime()
    limiter = RateLimiter(10.0, clock=clock, sleep=clock.sleep)
    waits = [limiter.reserve() for _ in range(4)]
    assert waits == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_bucket_lets_a_burst_through_then_paces() -> None:
    clock = FakeTime()
    limiter = RateLimiter(4.0, burst=3, clock=clock, sleep=clock.sleep)
    waits = [limiter.reserve() for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.0, 0.0, 0.25, 0.5])


def test_bucket_refills_with_time_but_never_above_burst() -> None:
    clock = FakeTime()
    limiter = RateLimiter(2.0, burst=2, clock=clock, sleep=clock.sleep)
    assert [limiter.reserve() for _ in range(2)] == [0.0, 0.0]
    clock.now += 100.0  # a long quiet spell saves up only `burst` tokens
    waits = [limiter.reserve() for _ in range(3)]
    assert waits == pytest.approx([0.0, 0.0, 0.5])


async def test_bucket_acquire_sleeps_exactly_the_reserved_wait() -> None:
    clock = FakeTime()
    limiter = RateLimiter(5.0, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        await limiter.acquire()
    assert clock.sleeps == pytest.approx([0.2, 0.2])
    assert clock.now == pytest.approx(0.4)


def test_bucket_paused_until_a_time_hands_out_nothing_before_it() -> None:
    clock = FakeTime()
    limiter = RateLimiter(10.0, burst=5, clock=clock, sleep=clock.sleep)
    limiter.pause_until(3.0)
    waits = [limiter.reserve() for _ in range(2)]
    assert waits == pytest.approx([3.1, 3.2])  # and it starts empty: no burst after a cooldown


def test_bucket_rate_change_applies_to_later_reservations() -> None:
    clock = FakeTime()
    limiter = RateLimiter(10.0, clock=clock, sleep=clock.sleep)
    limiter.reserve()
    limiter.rate = 2.0
    assert limiter.reserve() == pytest.approx(0.5)


def test_bucket_refuses_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(0.0)
    with pytest.raises(ValueError, match="burst"):
        RateLimiter(1.0, burst=0)


def test_aimd_halves_on_overload_and_ignores_repeats_within_hold() -> None:
    aimd = AIMD(64, floor=1, hold=1.0)
    assert aimd.decrease(now=10.0)
    assert aimd.value == 32
    assert not aimd.decrease(now=10.5)  # the same overshoot's other 429s
    assert aimd.value == 32
    assert aimd.decrease(now=11.0)
    assert aimd.value == 16


def test_aimd_never_goes_below_floor_or_above_ceiling() -> None:
    aimd = AIMD(4, floor=1, hold=0.0)
    for step in range(10):
        aimd.decrease(now=float(step))
    assert aimd.value == 1
    for _ in range(1000):
        aimd.increase()
    assert aimd.value == 4


def test_aimd_increases_by_about_one_per_window_of_successes() -> None:
    aimd = AIMD(100, floor=1)
    aimd.value = 10.0
    for _ in range(10):
        aimd.increase()
    assert 10.9 < aimd.value < 11.0


async def test_a_429_pauses_every_next_attempt_for_retry_after() -> None:
    clock = FakeTime()
    pacer = Pacer(
        concurrency=8, rps=None, burst=None, clock=clock, sleep=clock.sleep, jitter=no_jitter
    )
    pacer.observe(rate_limited(2.0))
    assert pacer.in_cooldown()
    await pacer.wait_turn()
    assert clock.now >= 2.0
    assert not pacer.in_cooldown()
    assert pacer.rate_limited == 1


async def test_cooldown_adds_jitter_on_top_of_retry_after() -> None:
    clock = FakeTime()
    pacer = Pacer(
        concurrency=8,
        rps=None,
        burst=None,
        clock=clock,
        sleep=clock.sleep,
        jitter=lambda _low, high: high,
    )
    pacer.observe(rate_limited(2.0))
    assert pacer.cooldown_until == pytest.approx(2.0 + 0.25)


async def test_a_429_halves_concurrency_and_rate_and_successes_raise_them_again() -> None:
    clock = FakeTime()
    applied: list[int] = []
    pacer = Pacer(
        concurrency=64,
        rps=20.0,
        burst=None,
        clock=clock,
        sleep=clock.sleep,
        jitter=no_jitter,
        on_concurrency=applied.append,
    )
    pacer.observe(rate_limited(1.0))
    pacer.observe(rate_limited(1.0))  # same overshoot: counted once
    assert pacer.concurrency_limit == 32
    assert applied == [32]
    assert pacer.limiter is not None
    assert pacer.limiter.rate == pytest.approx(10.0)
    for _ in range(200):
        pacer.observe(None)
    assert pacer.concurrency_limit > 32
    assert pacer.limiter.rate > 10.0


async def test_a_429_seen_while_waiting_for_a_token_is_honoured() -> None:
    clock = FakeTime()
    pacer = Pacer(
        concurrency=8, rps=1.0, burst=None, clock=clock, sleep=clock.sleep, jitter=no_jitter
    )
    await pacer.wait_turn()  # takes the only token
    original_sleep = clock.sleep

    async def sleep_then_429(seconds: float) -> None:
        await original_sleep(seconds)
        if pacer.rate_limited == 0:
            pacer.observe(rate_limited(5.0))

    assert pacer.limiter is not None
    pacer.limiter._sleep = sleep_then_429
    pacer._sleep = sleep_then_429
    await pacer.wait_turn()
    assert clock.now >= 1.0 + 5.0


async def test_daily_cap_starts_no_cooldown() -> None:
    clock = FakeTime()
    pacer = Pacer(concurrency=8, rps=None, burst=None, clock=clock, sleep=clock.sleep)
    resets = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    pacer.observe(
        DailyLimitExceededError("cap", status_code=429, retry_after=30000.0, resets_at=resets)
    )
    assert not pacer.in_cooldown()
    assert pacer.rate_limited == 1
    assert pacer.concurrency_limit == 8
