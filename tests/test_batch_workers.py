"""The batch's item tasks (`Workers`), reused from item to item, and its results stream."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import anyio

from nanogpt_async._batch._item import Results, Workers
from nanogpt_async._batch._results import ItemResult
from nanogpt_async._batch._tally import Tally

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


# -- the results stream -----------------------------------------------------------------------


def _result(index: int) -> ItemResult:
    return ItemResult(
        id=str(index), index=index, request={}, status="ok", started_at=0.0, finished_at=0.0
    )


async def test_a_reader_waiting_for_a_result_gets_each_one_as_it_comes_then_ends() -> None:
    results = Results(4, Tally(None))
    read: list[int] = []

    async def reader() -> None:
        async for result in results:
            read.append(result.index)  # noqa: PERF401 - each as it comes, not all at the end

    async with anyio.create_task_group() as group:
        group.start_soon(reader)
        for index in range(3):
            await anyio.wait_all_tasks_blocked()  # the reader waits on an empty stream
            await results.emit(_result(index))
        await anyio.wait_all_tasks_blocked()
        assert read == [0, 1, 2]
        results.close()  # wakes the waiting reader: its loop ends
    assert read == [0, 1, 2]


async def test_two_readers_waiting_on_the_results_are_both_woken_and_both_end() -> None:
    results = Results(4, Tally(None))
    read: list[int] = []
    ended: list[str] = []

    async def reader(name: str) -> None:
        read.extend([result.index async for result in results])
        ended.append(name)

    with anyio.fail_after(5):  # a reader left waiting would hang here
        async with anyio.create_task_group() as group:
            group.start_soon(reader, "a")
            group.start_soon(reader, "b")
            await anyio.wait_all_tasks_blocked()
            await results.emit(_result(0))
            await anyio.wait_all_tasks_blocked()
            await results.emit(_result(1))
            await anyio.wait_all_tasks_blocked()
            results.close()
    assert sorted(read) == [0, 1]
    assert sorted(ended) == ["a", "b"]


async def test_a_result_that_waited_for_room_in_the_stream_still_wakes_the_reader() -> None:
    results = Results(1, Tally(None))
    read: list[int] = []

    async def reader() -> None:
        async for result in results:
            read.append(result.index)  # noqa: PERF401 - each as it comes, not all at the end

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            await results.emit(_result(0))  # the stream is full...
            group.start_soon(results.emit, _result(1))  # ...so this one waits for room
            group.start_soon(reader)  # takes the first, then waits while the second comes
            await anyio.wait_all_tasks_blocked()
            assert read == [0, 1]
            results.close()
    assert read == [0, 1]
