"""Pacing end to end: every call a client sends, against the fake NanoGPT with its rate limit."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from nanogpt_async import (
    AsyncNanoGPT,
    DailyLimitExceededError,
    LocalRateLimitError,
    RateLimitError,
)
from nanogpt_async._pacing import Pacer
from nanogpt_async.testing import FakeNanoGPT, FakeServer, Fault, ManualClock
from tests._pacing_time import SettledTime
from tests._serving import settled_client

KEY = "ngk_pacing_SECRET_77"


class SharedClock:
    """The fake server's ManualClock, driven by the pacer: a sleep moves it to the wake-up
    time, so a request is never sent before its slot on the server's own clock."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock

    async def sleep(self, seconds: float) -> None:
        self.clock.set(max(self.clock(), self.clock() + seconds))
        await anyio.lowlevel.checkpoint()


@contextlib.contextmanager
def fake_at(rate: float, **knobs: object) -> Iterator[tuple[FakeServer, SharedClock]]:
    clock = ManualClock()
    fake = FakeNanoGPT(api_key=KEY, rate_limit=rate, clock=clock, **knobs)  # type: ignore[arg-type]
    with fake.run_in_thread() as server:
        yield server, SharedClock(clock)


def client_on(server: FakeServer, clock: SharedClock, **options: object) -> AsyncNanoGPT:
    client = AsyncNanoGPT(api_key=KEY, base_url=server.base_url, **options)  # type: ignore[arg-type]
    pacer = client.channel.pacer
    client.channel.pacer = Pacer(
        rps=pacer.max_rate,
        burst=pacer.burst,
        max_wait=pacer.max_wait,
        clock=clock.clock,
        sleep=clock.sleep,
    )
    return client


async def burst_of_calls(client: AsyncNanoGPT, count: int) -> list[BaseException | None]:
    outcomes: list[BaseException | None] = []

    async def one(number: int) -> None:
        try:
            await client.images.generate(prompt=f"burst {number}")
        except RateLimitError as exc:
            outcomes.append(exc)
        else:
            outcomes.append(None)

    async with anyio.create_task_group() as group:
        for number in range(count):
            group.start_soon(one, number)
    return outcomes


@pytest.fixture
def settled_fake() -> Iterator[tuple[FakeServer, SettledTime]]:
    """The fake allowing 100 req/s in bursts of 50 (half a second's worth), on virtual time
    that stands still while the client is busy or a request is on its way (`SettledTime`):
    on real time, a loaded machine's pauses of the server thread pile requests up."""
    time = SettledTime()
    fake = FakeNanoGPT(api_key=KEY, rate_limit=100.0, burst=50, clock=time)
    with fake.run_in_thread() as server:
        yield server, time


async def test_100_concurrent_calls_all_succeed_against_the_servers_rate(
    settled_fake: tuple[FakeServer, SettledTime],
) -> None:
    # Before: at 25 req/s with defaults, 28 of 200 succeeded; 95% of requests got 429. 100
    # calls, twice the fake's bucket, take 1 s (200 took 2): unpaced, 50 would be refused.
    server, time = settled_fake
    async with settled_client(server, KEY, time, rps=100.0) as client:
        outcomes = await burst_of_calls(client, 100)
    assert outcomes == [None] * 100
    assert server.fake.stats.rate_limited == 0
    assert server.fake.stats.generations == 100


async def test_calls_beyond_max_wait_fail_locally_and_send_nothing(
    settled_fake: tuple[FakeServer, SettledTime],
) -> None:
    server, time = settled_fake
    # 0.195 s, not 0.2: the 21st slot, at 20 intervals of 0.01 s summed in floats, is a hair
    # over 0.2. On virtual time every caller asks before any time passes: nothing frees up.
    async with settled_client(server, KEY, time, rps=100.0, max_wait=0.195) as client:
        outcomes = await burst_of_calls(client, 200)
    local = [o for o in outcomes if isinstance(o, LocalRateLimitError)]
    ok = outcomes.count(None)
    assert ok == 20  # slots 0 .. 0.19 s at 100/s
    assert len(local) == 200 - ok
    assert all(0.1 < o.retry_after <= 2.0 for o in local)  # type: ignore[operator]
    assert server.fake.stats.generation_requests == ok  # the others were never sent
    assert server.fake.stats.rate_limited == 0


async def test_a_daily_cap_answer_stops_every_later_call_without_sending() -> None:
    with fake_at(25.0) as (server, clock):
        server.fake.enqueue(Fault.daily_cap())
        async with client_on(server, clock) as client:
            with pytest.raises(DailyLimitExceededError):
                await client.images.generate(prompt="first")
            for _ in range(5):
                with pytest.raises(DailyLimitExceededError, match="not sent"):
                    await client.images.generate(prompt="later")
            assert client.pacing.daily_blocked_until is not None
            await client.images.models()  # free calls still work
    assert server.fake.stats.generation_requests == 1


async def test_a_429_holds_the_other_callers_until_its_retry_after() -> None:
    with fake_at(100.0) as (server, clock):
        server.fake.enqueue(Fault.rate_limited(retry_after="7"))
        async with client_on(server, clock, rps=None) as client:
            with pytest.raises(RateLimitError):
                await client.with_options(max_retries=0).images.generate(prompt="refused")
            started = clock.clock()
            await client.images.generate(prompt="after")
    assert clock.clock() - started == pytest.approx(7.0, abs=0.01)


async def test_retries_are_paced_too(instant_backoff: list[float]) -> None:
    with fake_at(25.0) as (server, clock):
        server.fake.enqueue(Fault.status(503), count=3)
        async with client_on(server, clock, max_retries=5) as client:
            pacer = client.channel.pacer
            turns = 0
            original = pacer.wait_turn

            async def counted() -> None:
                nonlocal turns
                turns += 1
                await original()

            pacer.wait_turn = counted  # type: ignore[method-assign]
            await client.images.generate(prompt="flaky")
    assert turns == 4


async def test_the_batch_takes_its_turns_from_the_clients_pacer(tmp_path: Path) -> None:
    time = SettledTime()
    with FakeNanoGPT(api_key=KEY, rate_limit=25.0, clock=time).run_in_thread() as server:
        async with settled_client(server, KEY, time) as client:
            pacer = client.channel.pacer
            turns = 0
            original = pacer.wait_turn

            async def counted() -> None:
                nonlocal turns
                turns += 1
                await original()

            original_now = pacer.turn_now

            def counted_now() -> bool:  # a turn due now is taken with no wait
                nonlocal turns
                taken = original_now()
                turns += taken
                return taken

            pacer.wait_turn = counted  # type: ignore[method-assign]
            pacer.turn_now = counted_now  # type: ignore[method-assign]
            # Several in flight (the default concurrency): on SharedClock, which jumps to each
            # sleeper's slot at once, requests sent at their slots reached the server after later
            # sleepers had moved its clock on, at one instant, and met 429s on a loaded machine
            # (4-5 runs in 25; the retries' turns made 31-34). Settled time waits for them.
            summary = await client.images.generate_many(
                [f"item {i}" for i in range(30)], output_dir=tmp_path
            ).run()
    assert summary.ok == 30
    assert turns == 30
    assert server.fake.stats.rate_limited == 0
    assert time.now == pytest.approx(29 / 25)


@pytest.mark.parametrize(
    "fault",
    [
        Fault.rate_limited(retry_after="99999999"),
        Fault.status(429, headers={"retry-after-ms": "inf"}),
    ],
    ids=["retry-after-99999999", "retry-after-ms-inf"],
)
async def test_a_huge_retry_after_stops_the_batch_with_a_reason_instead_of_freezing(
    fault: Fault, tmp_path: Path
) -> None:
    with fake_at(25.0) as (server, clock):
        server.fake.enqueue(fault)
        async with client_on(server, clock) as client:
            batch = client.images.generate_many(
                [f"item {i}" for i in range(50)], output_dir=tmp_path, concurrency=8
            )
            with anyio.fail_after(30):
                summary = await batch.run()
    assert summary.ok + summary.failed + summary.not_started == 50
    assert summary.not_started > 0  # unsent items are left for a later run
    assert isinstance(summary.fatal_error, LocalRateLimitError)
    assert summary.stopped_reason is not None
    assert "asked to wait" in summary.stopped_reason
    assert "max_wait" in summary.stopped_reason
    # Money: what the server charged is what the manifest recorded.
    lines = (tmp_path / "manifest.jsonl").read_text().splitlines()
    recorded_ok = sum('"status": "ok"' in line or '"status":"ok"' in line for line in lines)
    assert server.fake.stats.generations == recorded_ok == summary.ok
