"""Notices through a real redis-server: a held slot asks Redis again only when it must.

A caller holding a slot more than one slot ahead used to ask Redis again on waking (2.0 Redis
calls per request in W8); now each process subscribes once to the key's notices, and a slot
is rechecked only when a cooldown or daily block was published, or the subscription was lost,
since it was reserved.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import anyio
import pytest

from nanogpt_async import DailyLimitExceededError
from nanogpt_async._pacing import Grant, Pacer
from nanogpt_async._pacing._redis import RedisBackend
from nanogpt_async._pacing._state import Grant as StateGrant
from tests._pacing_time import FakeTime
from tests._redis import RedisProcess, redis_is_asyncio_only, redis_server

pytestmark = redis_is_asyncio_only

__all__ = ["redis_server"]  # the fixture, used by name below

KEY = "ngk_notices_SECRET_7"
INTERVAL = 0.1


async def reserve(backend: RedisBackend) -> Grant:
    return await backend.reserve(interval=INTERVAL, burst=1, max_wait=60.0)


async def changed(backend: RedisBackend, condition: Callable[[], bool]) -> None:
    """Wait (bounded) until the backend's notice watch satisfies ``condition``."""
    with anyio.fail_after(10):
        while not condition():
            await backend._watch.next_change()


async def watching(server: RedisProcess) -> RedisBackend:
    """A backend whose notice subscription is confirmed."""
    backend = RedisBackend(server.url, key=KEY)
    await reserve(backend)
    await changed(backend, lambda: backend._watch.live)
    return backend


async def held_far_ahead(backend: RedisBackend) -> Grant:
    """A slot more than one slot away (the next two are due within 0.1 and 0.2 s)."""
    await reserve(backend)
    grant = await reserve(backend)
    assert grant.delay > INTERVAL
    return grant


def pacer_on(backend: RedisBackend, sleep: Callable[[float], Awaitable[None]]) -> Pacer:
    return Pacer(rps=1 / INTERVAL, backend=backend, clock=FakeTime(), sleep=sleep)


async def test_a_slot_held_far_ahead_is_sent_without_asking_redis_again(
    redis_server: RedisProcess,
) -> None:
    backend = await watching(redis_server)
    clock = FakeTime()
    pacer = Pacer(rps=1 / INTERVAL, backend=backend, clock=clock, sleep=clock.sleep)
    calls = backend.calls
    for _ in range(3):  # slots ~0.1, ~0.2 and ~0.3 s away on Redis's clock
        await pacer.wait_turn()
    assert max(clock.sleeps) > INTERVAL
    assert backend.calls == calls + 3  # one reservation each, no recheck
    assert backend.subscriptions == 1
    await backend.aclose()


async def test_a_cooldown_set_by_another_process_moves_a_slot_held_far_ahead(
    redis_server: RedisProcess,
) -> None:
    other, mine = RedisBackend(redis_server.url, key=KEY), await watching(redis_server)
    await held_far_ahead(mine)
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 1:  # while the caller waits for its slot, a 429 elsewhere
            heard = mine._watch.count
            await other.cooldown(5.0)
            await changed(mine, lambda: mine._watch.count > heard)

    await pacer_on(mine, sleep).wait_turn()
    assert sleeps[0] > INTERVAL
    assert sleeps[1] == pytest.approx(5.0, abs=0.3)  # asked again: a new slot after it
    await mine.aclose()
    await other.aclose()


async def test_a_daily_block_set_by_another_process_stops_a_slot_held_far_ahead(
    redis_server: RedisProcess,
) -> None:
    other, mine = RedisBackend(redis_server.url, key=KEY), await watching(redis_server)
    await held_far_ahead(mine)

    async def sleep(_: float) -> None:
        heard = mine._watch.count
        await other.block_daily(3600.0, "daily_rpd_limit_exceeded")
        await changed(mine, lambda: mine._watch.count > heard)

    with pytest.raises(DailyLimitExceededError):
        await pacer_on(mine, sleep).wait_turn()
    await mine.aclose()
    await other.aclose()


async def test_slots_held_when_the_subscription_was_lost_ask_redis_again(
    redis_server: RedisProcess,
) -> None:
    backend = await watching(redis_server)
    held = await held_far_ahead(backend)
    assert not backend.should_recheck(held, INTERVAL)
    count = backend._watch.count
    killer = RedisBackend(redis_server.url, key="ngk_other_key").link.connection()
    # At least ours: an earlier test's closed subscription may not be processed by Redis yet.
    assert await killer.client_kill_filter(_type="pubsub") >= 1
    await changed(backend, lambda: backend._watch.count > count)
    assert backend.should_recheck(held, INTERVAL)  # a notice may have been missed meanwhile
    await changed(backend, lambda: backend._watch.live)
    assert not backend.should_recheck(await held_far_ahead(backend), INTERVAL)
    await killer.aclose()
    await backend.aclose()


async def test_a_subscription_that_missed_a_notice_is_found_out_by_the_next_reservation(
    redis_server: RedisProcess,
) -> None:
    backend = await watching(redis_server)
    held = await held_far_ahead(backend)
    # A notice published but never delivered (a subscription dropped without an error): the
    # state's notice number moves, the watch hears nothing.
    connection = backend.link.connection()
    await connection.hincrby(backend._key("state"), "n", 1)
    assert not backend.should_recheck(held, INTERVAL)  # nothing says so yet
    later = await held_far_ahead(backend)  # reports notice 1, the watch heard none
    assert backend.should_recheck(held, INTERVAL)
    assert backend.should_recheck(later, INTERVAL)
    await backend.aclose()


async def test_a_slot_reserved_before_the_subscription_was_confirmed_asks_again(
    redis_server: RedisProcess,
) -> None:
    backend = RedisBackend(redis_server.url, key=KEY)
    first = await reserve(backend)  # connects, and starts subscribing only now
    assert first.mark is None
    assert backend.should_recheck(StateGrant(kind="go", delay=1.0, schedule="s"), INTERVAL)
    await backend.aclose()


async def test_closing_the_backend_ends_its_subscription(redis_server: RedisProcess) -> None:
    backend = await watching(redis_server)
    observer = RedisBackend(redis_server.url, key="ngk_other_key").link.connection()
    channel = backend._watch.channel
    assert dict(await observer.pubsub_numsub(channel)) == {channel.encode(): 1}
    await backend.aclose()
    # Redis counts a closed connection's subscription until it has processed the close: ask
    # until it has (bounded), never a fixed pause.
    for _ in range(1000):
        if dict(await observer.pubsub_numsub(channel)) == {channel.encode(): 0}:
            break
        await anyio.sleep(0.01)
    else:
        pytest.fail("the closed backend's subscription was still counted after 10 s")
    await observer.aclose()


async def test_a_slots_wait_counts_from_when_redis_read_its_clock(
    redis_server: RedisProcess,
) -> None:
    # Redis reads its clock midway through the round trip: sleeping the whole delay after the
    # answer arrived sent every request half a round trip after its slot.
    ticks = FakeTime()

    def clock() -> float:
        ticks.now += 1.0  # every reading of the clock takes a "second"
        return ticks.now

    backend = RedisBackend(redis_server.url, key=KEY, clock=clock)
    before = clock()
    grant = await reserve(backend)
    after = clock()
    assert 0 < grant.elapsed <= (after - before) / 2

    slept: list[float] = []

    class OneGrant:
        name = "stub"

        async def reserve(self, **_: object) -> Grant:
            return StateGrant(kind="go", delay=0.3, elapsed=0.1, schedule="s")

        def should_recheck(self, grant: Grant, interval: float) -> bool:
            return False

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    pacer = Pacer(rps=1.0, backend=OneGrant(), clock=FakeTime(), sleep=sleep)  # type: ignore[arg-type]
    await pacer.wait_turn()
    assert slept == [pytest.approx(0.2)]
    await backend.aclose()


def test_a_process_ends_whenever_its_loop_ends_while_the_subscription_starts(
    redis_server: RedisProcess,
) -> None:
    # asyncio.run cancels leftover tasks once at exit; a cancel that redis-py swallowed while
    # connecting left the subscription listening for ever, and the process hung at exit.
    def run(steps: int, close: bool) -> None:
        async def main() -> None:
            backend = RedisBackend(redis_server.url, key=KEY)
            backend.link.connection()
            for _ in range(steps):
                await asyncio.sleep(0)
            if close:
                await backend.aclose()

        asyncio.run(main())

    for steps in range(16):
        for close in (True, False):
            worker = threading.Thread(target=run, args=(steps, close), daemon=True)
            worker.start()
            worker.join(timeout=20)
            assert not worker.is_alive(), f"hung at exit after {steps} steps (close={close})"


async def test_a_cooldown_survives_an_empty_restart_of_redis(redis_server: RedisProcess) -> None:
    # A cooldown lived only in Redis: a restart without persistence lifted it for everyone.
    # A process that knew of it sets it again when it sees the new schedule.
    knew, newcomer = (
        RedisBackend(redis_server.url, key=KEY),
        RedisBackend(redis_server.url, key=KEY),
    )
    await reserve(knew)
    await knew.cooldown(30.0)
    redis_server.stop()
    redis_server.start()
    grant = await reserve(knew)
    assert grant.delay == pytest.approx(30.0, abs=1.0)
    assert (await reserve(newcomer)).cooldown == pytest.approx(30.0, abs=1.0)
    await knew.aclose()
    await newcomer.aclose()


async def test_a_daily_block_survives_an_empty_restart_of_redis(redis_server: RedisProcess) -> None:
    knew, newcomer = (
        RedisBackend(redis_server.url, key=KEY),
        RedisBackend(redis_server.url, key=KEY),
    )
    await reserve(knew)
    await knew.block_daily(3600.0, "daily_usd_limit_exceeded")
    redis_server.stop()
    redis_server.start()
    assert (await reserve(knew)).kind == "daily"
    refused = await reserve(newcomer)
    assert refused.kind == "daily"
    assert refused.daily_code == "daily_usd_limit_exceeded"
    await knew.aclose()
    await newcomer.aclose()
