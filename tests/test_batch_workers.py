"""The batch's item tasks (`Workers`): reused from item to item, never losing a handed item."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import anyio

from nanogpt_async._batch._item import Workers

if TYPE_CHECKING:
    from nanogpt_async._batch._budget import Reservation
    from nanogpt_async._batch._item import ItemFlow
    from nanogpt_async._batch._prepare import Job


class _Flow:
    """Stands in for `ItemFlow`: records which task ran which item, and that it finished."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, int]] = []
        self.handed_back: list[str] = []
        self.done = anyio.Event()

    async def process(self, job: Job, reservation: Reservation) -> None:
        name = cast("str", job)
        try:
            self.ran.append((name, anyio.get_current_task().id))
            await anyio.lowlevel.checkpoint()
        finally:
            self.handed_back.append(name)  # ItemFlow hands the item's slots back here
            self.done.set()


def _job(name: str) -> Job:
    return cast("Job", name)


_RESERVED = cast("Reservation", object())


async def _until_done(flow: _Flow) -> None:
    await flow.done.wait()
    flow.done = anyio.Event()
    await anyio.lowlevel.checkpoint()  # the task goes idle


async def test_a_task_whose_item_is_done_runs_the_next_item_instead_of_a_new_task() -> None:
    flow = _Flow()
    async with anyio.create_task_group() as group:
        workers = Workers(cast("ItemFlow", flow), group)
        workers.start(_job("a"), _RESERVED)
        await _until_done(flow)
        workers.start(_job("b"), _RESERVED)
        await _until_done(flow)
        workers.close()  # the idle task ends: the group exits
    assert [name for name, _ in flow.ran] == ["a", "b"]
    assert flow.ran[0][1] == flow.ran[1][1]


async def test_items_in_flight_at_once_each_get_a_task() -> None:
    flow = _Flow()
    async with anyio.create_task_group() as group:
        workers = Workers(cast("ItemFlow", flow), group)
        workers.start(_job("a"), _RESERVED)
        workers.start(_job("b"), _RESERVED)
        workers.close()  # busy tasks finish their item, then end
    assert sorted(name for name, _ in flow.ran) == ["a", "b"]
    assert flow.ran[0][1] != flow.ran[1][1]
    assert sorted(flow.handed_back) == ["a", "b"]


async def test_an_item_handed_to_an_idle_task_as_the_batch_is_cancelled_hands_its_slots_back() -> (
    None
):
    flow = _Flow()
    async with anyio.create_task_group() as group:
        workers = Workers(cast("ItemFlow", flow), group)
        workers.start(_job("a"), _RESERVED)
        await _until_done(flow)
        workers.start(_job("b"), _RESERVED)  # wakes the idle task...
        group.cancel_scope.cancel()  # ...which is cancelled before it runs
    assert flow.handed_back == ["a", "b"]
