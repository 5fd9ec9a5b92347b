"""The channel's big-body slots: a context manager that always gives its slot back."""

from __future__ import annotations

import anyio
import pytest

from nanogpt_async._http._exchange import BigBodies


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
