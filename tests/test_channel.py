"""The channel's big-body slots: a context manager that always gives its slot back."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest

from nanogpt_async._http._exchange import BigBodies
from tests._serving import fake_client, fake_servers

KEY = "ngk_channel_SECRET_5521"


def _free(bodies: BigBodies) -> int:
    return int(bodies._semaphore.value)


async def test_a_slot_is_taken_once_however_often_asked_and_given_back_on_exit() -> None:
    bodies = BigBodies(2)

    with bodies.slot() as slot:
        await slot.take()
        await slot.take()
        assert _free(bodies) == 1

    assert _free(bodies) == 2


async def test_a_slot_is_given_back_when_the_attempt_fails() -> None:
    bodies = BigBodies(1)

    async def failing_attempt() -> None:
        with bodies.slot() as slot:
            await slot.take()
            raise RuntimeError

    with pytest.raises(RuntimeError):
        await failing_attempt()

    assert _free(bodies) == 1


async def test_an_attempt_that_never_needed_a_slot_gives_none_back() -> None:
    bodies = BigBodies(1)

    with bodies.slot():
        pass

    assert _free(bodies) == 1


async def test_a_wait_for_a_slot_cancelled_takes_none_and_gives_none_back() -> None:
    bodies = BigBodies(1)
    with bodies.slot() as holder:
        await holder.take()
        with anyio.move_on_after(0.01), bodies.slot() as waiter:
            await waiter.take()  # all slots held: cancelled while waiting
        assert not waiter.held
        assert _free(bodies) == 0

    assert _free(bodies) == 1


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_request_arms_one_timer_when_its_read_timeout_is_its_whole_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The default timeout (300 s, connect 10 s): the attempt's deadline covers reading. aiohttp's
    # own read timer would never fire first, and it was re-armed at every chunk received: 3
    # timers a request (W10 profile), 1 now (the deadline).
    with fake_servers(KEY) as serve:
        server = serve()
        async with fake_client(server, KEY, rps=None) as client:  # no pacing timers
            await client.images.generate(prompt="warm")  # the connection is open: no connect
            timers: list[float] = []
            ours = asyncio.get_running_loop()  # not the fake's, in a thread of its own
            real_call_at = asyncio.BaseEventLoop.call_at

            def call_at(loop: asyncio.BaseEventLoop, when: float, *args: Any, **kw: Any) -> Any:
                if loop is ours:
                    timers.append(when)
                return real_call_at(loop, when, *args, **kw)

            monkeypatch.setattr(asyncio.BaseEventLoop, "call_at", call_at)
            for number in range(10):
                await client.images.generate(prompt=f"prompt {number}")
            monkeypatch.undo()

    assert len(timers) == 10, timers
