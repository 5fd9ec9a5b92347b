"""The client's pacer: GCRA slots, shared 429 cooldown, daily block, bounded wait (fake time)."""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import math

import anyio
import pytest

from nanogpt_async import (
    AsyncNanoGPT,
    DailyLimitExceededError,
    InvalidInputError,
    LocalRateLimitError,
    RateLimitError,
)
from nanogpt_async._pacing import AIMD, MAX_COOLDOWN, MemoryBackend, Pacer
from tests._pacing_time import FakeTime, VirtualTime


def rate_limited(retry_after: float | None) -> RateLimitError:
    return RateLimitError("slow down", status_code=429, retry_after=retry_after)


def daily_cap(seconds: float) -> DailyLimitExceededError:
    resets = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds)
    return DailyLimitExceededError(
        "cap",
        status_code=429,
        code="daily_rpd_limit_exceeded",
        retry_after=seconds,
        resets_at=resets,
    )


def pacer_on(clock: FakeTime | VirtualTime, **options: object) -> Pacer:
    return Pacer(clock=clock, sleep=clock.sleep, **options)  # type: ignore[arg-type]


# -- slots -----------------------------------------------------------------------------------


def test_slots_are_spaced_evenly_in_the_order_they_were_asked_for() -> None:
    clock = FakeTime()
    backend = MemoryBackend(clock=clock)
    delays = [backend.reserve_now(interval=0.1, burst=1, max_wait=60).delay for _ in range(4)]
    assert delays == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_a_burst_lets_that_many_through_then_paces() -> None:
    clock = FakeTime()
    backend = MemoryBackend(clock=clock)
    delays = [backend.reserve_now(interval=0.25, burst=3, max_wait=60).delay for _ in range(5)]
    assert delays == pytest.approx([0.0, 0.0, 0.0, 0.25, 0.5])


def test_a_quiet_spell_saves_up_only_the_burst() -> None:
    clock = FakeTime()
    backend = MemoryBackend(clock=clock)
    for _ in range(2):
        backend.reserve_now(interval=0.5, burst=2, max_wait=60)
    clock.now += 100.0
    delays = [backend.reserve_now(interval=0.5, burst=2, max_wait=60).delay for _ in range(3)]
    assert delays == pytest.approx([0.0, 0.0, 0.5])


def test_turn_now_takes_only_turns_due_now_and_books_nothing_otherwise() -> None:
    clock = FakeTime()
    backend = MemoryBackend(clock=clock)
    pacer = pacer_on(clock, rps=10.0, burst=2, backend=backend)
    assert [pacer.turn_now() for _ in range(3)] == [True, True, False]
    # The refused third booked no slot: the next one is still 0.1 s away, not 0.2 s.
    assert backend.reserve_now(interval=0.1, burst=2, max_wait=60).delay == pytest.approx(0.1)
    clock.now += 0.25
    assert pacer.turn_now()


async def test_turn_now_takes_no_turn_during_a_cooldown_or_a_daily_block() -> None:
    clock = FakeTime()
    pacer = pacer_on(clock, rps=None)
    assert pacer.turn_now()
    await pacer.observe(rate_limited(2.0))
    assert not pacer.turn_now()
    clock.now += 2.0
    assert pacer.turn_now()
    await pacer.observe(daily_cap(60.0))
    assert not pacer.turn_now()


async def test_a_turn_due_now_is_a_go_without_delay_again_the_instant_a_daily_block_ends() -> None:
    clock = FakeTime()
    backend = MemoryBackend(clock=clock)
    grant = backend.reserve_if_due(interval=0.1, burst=1)
    assert grant is not None
    assert (grant.kind, grant.delay, grant.new_slot) == ("go", 0.0, True)
    start = clock.now
    await backend.block_daily(60.0, "daily_limit")
    clock.now = start + 59.9
    assert backend.reserve_if_due(interval=0.1, burst=1) is None
    # As for `reserve_now`: a block is over at its end time, not a tick after it.
    clock.now = start + 60.0
    grant = backend.reserve_if_due(interval=0.1, burst=1)
    assert grant is not None
    assert (grant.kind, grant.delay, grant.daily) == ("go", 0.0, 0.0)


async def test_a_burst_of_calls_is_served_first_come_first_served() -> None:
    clock = VirtualTime()
    pacer = pacer_on(clock, rps=10.0)
    sent: list[tuple[int, float]] = []
    arrived: list[int] = []

    async def call(number: int) -> None:
        arrived.append(number)
        await pacer.wait_turn()
        sent.append((number, clock.now))

    async with anyio.create_task_group() as group:
        for number in range(20):
            group.start_soon(call, number)
        await clock.drive(until=10.0)
    # In the order they asked (trio starts tasks in an order of its own, asyncio in theirs).
    assert [number for number, _ in sent] == arrived
    assert sorted(arrived) == list(range(20))
    assert [at for _, at in sent] == pytest.approx([n / 10 for n in range(20)])


async def test_a_turn_beyond_max_wait_raises_before_sending_and_reserves_nothing() -> None:
    clock = FakeTime()
    pacer = pacer_on(clock, rps=1.0, max_wait=2.0)
    backend = pacer.backend
    assert isinstance(backend, MemoryBackend)
    for _ in range(3):  # slots at 0, 1, 2
        backend.reserve_now(interval=1.0, burst=1, max_wait=60)
    with pytest.raises(LocalRateLimitError) as info:
        await pacer.wait_turn()
    assert info.value.retry_after == pytest.approx(3.0)
    assert info.value.status_code == 429
    assert "max_wait=2 s" in str(info.value)
    assert "Nothing was sent" in str(info.value)
    assert clock.sleeps == []
    # The refused call took no slot: the next one that fits gets slot 3 s away... once time moves.
    clock.now += 1.0
    await pacer.wait_turn()
    assert clock.sleeps == pytest.approx([2.0])


def test_a_local_rate_limit_error_is_a_rate_limit_error_and_never_retried() -> None:
    from nanogpt_async._http._retry import RetryPolicy, should_retry

    error = LocalRateLimitError("not sent", retry_after=3.0)
    assert isinstance(error, RateLimitError)
    assert not should_retry(RetryPolicy(), error, idempotent=True)


# -- the shared 429 cooldown -------------------------------------------------------------------


async def test_a_429_holds_every_next_caller_for_retry_after_without_jitter() -> None:
    clock = FakeTime()
    pacer = pacer_on(clock, rps=None)
    await pacer.observe(rate_limited(2.0))
    await pacer.wait_turn()
    assert clock.now == pytest.approx(2.0)
    assert pacer.rate_limited == 1


async def test_a_later_shorter_429_never_shortens_the_cooldown() -> None:
    clock = FakeTime()
    pacer = pacer_on(clock, rps=None)
    await pacer.observe(rate_limited(10.0))
    await pacer.observe(rate_limited(1.0))
    await pacer.wait_turn()
    assert clock.now == pytest.approx(10.0)


async def test_a_later_longer_429_extends_the_cooldown() -> None:
    clock = FakeTime()
    pacer = pacer_on(clock, rps=None)
    await pacer.observe(rate_limited(1.0))
    clock.now += 0.5
    await pacer.observe(rate_limited(3.0))
    await pacer.wait_turn()
    assert clock.now == pytest.approx(3.5)


async def test_a_429_without_retry_after_holds_for_one_second() -> None:
    clock = FakeTime()
    pacer = pacer_on(clock, rps=None)
    await pacer.observe(rate_limited(None))
    await pacer.wait_turn()
    assert clock.now == pytest.approx(1.0)


async def test_a_cooldown_starting_while_a_caller_sleeps_moves_its_slot_after_it() -> None:
    clock = VirtualTime()
    pacer = pacer_on(clock, rps=2.0)
    sent: list[float] = []

    async def call() -> None:
        await pacer.wait_turn()
        sent.append(clock.now)

    async def answer_429_at(when: float) -> None:
        await clock.sleep(when)
        await pacer.observe(rate_limited(5.0))

    async with anyio.create_task_group() as group:
        for _ in range(4):  # slots at 0, 0.5, 1.0, 1.5
            group.start_soon(call)
        group.start_soon(answer_429_at, 0.2)  # cooldown until 5.2
        await clock.drive(until=60.0)
    assert sent[0] == pytest.approx(0.0)
    assert all(at >= 5.2 for at in sent[1:])
    # After the cooldown they are spaced again, not released all at once.
    gaps = [b - a for a, b in itertools.pairwise(sent[1:])]
    assert min(gaps) >= 0.5 - 1e-9


@pytest.mark.parametrize("retry_after", [99999999.0, math.inf])
async def test_a_huge_retry_after_is_bounded_and_callers_fail_at_once(
    retry_after: float,
) -> None:
    clock = FakeTime()
    pacer = pacer_on(clock, rps=25.0, max_wait=60.0)
    await pacer.observe(rate_limited(retry_after))
    with pytest.raises(LocalRateLimitError) as info:
        await pacer.wait_turn()
    assert info.value.retry_after == pytest.approx(MAX_COOLDOWN)
    assert "asked to wait" in str(info.value)
    assert clock.sleeps == []


# -- the daily cap -----------------------------------------------------------------------------


async def test_a_daily_cap_refuses_every_caller_at_once_until_the_reset() -> None:
    clock = FakeTime()
    pacer = pacer_on(clock, rps=25.0)
    await pacer.observe(daily_cap(3600.0))
    for _ in range(3):
        with pytest.raises(DailyLimitExceededError) as info:
            await pacer.wait_turn()
        assert "not sent" in str(info.value)
    assert clock.sleeps == []
    assert info.value.resets_at > dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=59)
    clock.now += 3600.0
    await pacer.wait_turn()  # the block is over


async def test_a_daily_cap_starts_no_cooldown_and_keeps_the_rate() -> None:
    clock = FakeTime()
    pacer = pacer_on(clock, rps=25.0)
    await pacer.observe(daily_cap(10.0))
    assert pacer.rate == 25.0
    assert pacer.state.cooldown_until is None
    assert pacer.state.daily_blocked_until is not None


# -- the rate after 429s (issue 10, item 15) ---------------------------------------------------


async def _run_against_a_limited_server(
    server_rate: float, seconds: float = 60.0
) -> tuple[float, float, float]:
    """64 callers, 1 s latency, a token-bucket server like NanoGPT's; returns
    (items/s after the first 10 s, longest gap between sends, share of 429s)."""
    clock = VirtualTime()
    pacer = pacer_on(clock, rps=25.0)
    bucket = {"tokens": server_rate, "at": 0.0}
    sends: list[float] = []
    done: list[float] = []
    refused = 0

    def server_refuses() -> float | None:
        bucket["tokens"] = min(
            server_rate, bucket["tokens"] + (clock.now - bucket["at"]) * server_rate
        )
        bucket["at"] = clock.now
        if bucket["tokens"] >= 1:
            bucket["tokens"] -= 1
            return None
        return max(1, math.ceil((1 - bucket["tokens"]) / server_rate))  # like the fake

    async def caller() -> None:
        nonlocal refused
        while clock.now < seconds:
            await pacer.wait_turn()
            sends.append(clock.now)
            retry_after = server_refuses()
            if retry_after is not None:
                refused += 1
                await pacer.observe(rate_limited(retry_after))
                await clock.sleep(retry_after)  # the retry engine's own wait
                continue
            await clock.sleep(1.0)
            done.append(clock.now)
            await pacer.observe(None)

    async with anyio.create_task_group() as group:
        for _ in range(64):
            group.start_soon(caller)
        await clock.drive(until=seconds + 5)
        group.cancel_scope.cancel()
    steady = [at for at in done if 10.0 <= at < seconds]
    gap = max(b - a for a, b in itertools.pairwise(sends))
    return len(steady) / (seconds - 10.0), gap, refused / len(sends)


@pytest.mark.parametrize("server_rate", [10.0, 20.0])
async def test_after_429s_the_rate_settles_near_what_the_server_allows(
    server_rate: float,
) -> None:
    # Before: 2.8 items/s against 10 req/s (14.5 against 20), with 6-10 s of silence. The old
    # batch pacer, in this same simulation: 8.96 and 17.74 items/s, gaps of 3.7 s and 2.3 s.
    rate, gap, refused = await _run_against_a_limited_server(server_rate)
    assert rate >= 0.93 * server_rate
    assert gap <= 1.1  # one Retry-After (1 s) and a slot, never more
    assert refused <= 0.02


async def test_without_429s_the_rate_stays_at_rps() -> None:
    rate, gap, refused = await _run_against_a_limited_server(25.0)
    assert rate == pytest.approx(25.0, rel=0.01)
    assert refused == 0
    assert gap == pytest.approx(0.04)


async def test_one_overshoot_cuts_the_rate_once_and_it_climbs_back() -> None:
    clock = FakeTime()
    pacer = pacer_on(clock, rps=20.0)
    for _ in range(5):  # one overshoot's several 429s
        await pacer.observe(rate_limited(1.0))
    assert pacer.rate == pytest.approx(10.0)  # no success seen: the floor, half
    for _ in range(100):
        clock.now += 1.0
        await pacer.observe(None)
    assert pacer.rate == pytest.approx(20.0)


# -- state and logs ----------------------------------------------------------------------------


async def test_state_shows_rate_wait_cooldown_and_block() -> None:
    clock = FakeTime()
    pacer = pacer_on(clock, rps=10.0)
    state = pacer.state
    assert (state.backend, state.rate, state.max_rate, state.wait) == ("memory", 10.0, 10.0, 0)
    assert state.cooldown_until is None
    await pacer.observe(rate_limited(30.0))
    state = pacer.state
    assert state.cooldown_until is not None
    left = (state.cooldown_until - dt.datetime.now(dt.timezone.utc)).total_seconds()
    assert 29 <= left <= 31
    assert state.rate is not None
    assert state.rate < 10.0
    assert state.rate_limited == 1
    assert "cooldown until" in state.describe()


async def test_pacing_changes_are_logged_at_debug() -> None:
    clock = FakeTime()
    pacer = pacer_on(clock, rps=10.0)
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno == logging.DEBUG:
                seen.append(record.getMessage())

    handler = Collect(level=logging.DEBUG)
    logger = logging.getLogger("nanogpt_async")
    logger.addHandler(handler)
    try:
        await pacer.observe(rate_limited(5.0))
        await pacer.observe(daily_cap(60.0))
        await pacer.observe(rate_limited(5.0))  # no change worth a line: same cooldown end
    finally:
        logger.removeHandler(handler)
    assert any("cooldown until" in line for line in seen)
    assert any("daily cap until" in line for line in seen)
    assert len(seen) == 2


# -- settings ----------------------------------------------------------------------------------


def test_the_client_paces_at_25_per_second_by_default_and_none_turns_it_off() -> None:
    assert AsyncNanoGPT(api_key="k").pacing.rate == 25.0
    assert AsyncNanoGPT(api_key="k", rps=None).pacing.rate is None
    assert AsyncNanoGPT(api_key="k").pacing.backend == "memory"


@pytest.mark.parametrize("options", [{"rps": 0}, {"rps": -1.0}, {"burst": 0}, {"max_wait": -1}])
def test_nonsense_pacing_settings_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(InvalidInputError):
        AsyncNanoGPT(api_key="k", **options)  # type: ignore[arg-type]


def test_a_view_shares_its_clients_pacer() -> None:
    client = AsyncNanoGPT(api_key="k")
    view = client.with_options(timeout=5)
    assert view.channel.pacer is client.channel.pacer


async def test_a_pacer_of_its_own_paces_on_the_clock_its_parent_was_given() -> None:
    # A batch's own rps on a test's virtual time: the batch tests against a fake on that time.
    clock = FakeTime()
    own = pacer_on(clock, rps=25.0, max_wait=7.0).of_its_own(rps=2.0, burst=1)
    await own.wait_turn()
    await own.wait_turn()
    assert clock.sleeps == [pytest.approx(0.5)]
    assert own.max_wait == 7.0


async def test_a_pacer_of_its_own_keeps_429_cooldowns_under_recorded_backoff() -> None:
    # The default clock stands for real time: a batch's own pacer holds its callers for a 429
    # (tests pacing a batch against a fake rely on it) where the client's skips the wait.
    client_pacer = Pacer(rps=25.0)
    own = client_pacer.of_its_own(rps=10.0, burst=1)
    for pacer in (client_pacer, own):
        await pacer.observe(rate_limited(30.0))
    assert client_pacer.state.cooldown_until is None
    assert own.state.cooldown_until is not None


def test_aimd_halves_on_overload_and_ignores_repeats_within_hold() -> None:
    aimd = AIMD(64, floor=1, hold=1.0)
    assert aimd.decrease(now=10.0)
    assert aimd.value == 32
    assert not aimd.decrease(now=10.5)
    assert aimd.decrease(now=11.0)
    assert aimd.value == 16
    for _ in range(10_000):
        aimd.increase()
    assert aimd.value == 64


async def test_a_caller_that_oversleeps_its_slot_takes_a_new_one_once() -> None:
    # A stalled process wakes its callers late all at once; sending them together would crowd
    # other processes' slots (a 4-process test at load 10: 18 of 178 requests got 429).
    clock = FakeTime()
    pacer = pacer_on(clock, rps=10.0)
    await pacer.wait_turn()  # slot 0; the next is at 0.1
    original = clock.sleep

    async def stalled(seconds: float) -> None:
        await original(seconds + 1.0)  # wakes a second late

    pacer._sleep = stalled
    await pacer.wait_turn()
    # Slept 0.1 (+1 late), took a fresh slot (due now + 0), and went: one re-reservation only.
    assert clock.sleeps == pytest.approx([1.1])
    backend = pacer.backend
    assert isinstance(backend, MemoryBackend)
    assert backend.reserve_now(interval=0.1, burst=1, max_wait=60).delay == pytest.approx(0.1)
