"""Manifest lines of items finishing together share one write; each still waits for its own."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import anyio

from nanogpt_async._batch._appender import GroupAppender


class BlockingWriter:
    """Records each ``append_many`` call; the first one blocks until released."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail = False

    def append_many(self, records: Sequence[Mapping[str, Any]]) -> None:
        self.calls.append([str(record["id"]) for record in records])
        if len(self.calls) == 1:
            self.entered.set()
            self.release.wait(10)
        if self.fail:
            raise OSError(28, "No space left on device")


async def test_lines_waiting_while_one_is_written_go_out_together_in_one_write() -> None:
    writer = BlockingWriter()
    appender = GroupAppender(writer.append_many)
    finished: list[str] = []
    queued: list[str] = []

    async def append(name: str) -> None:
        queued.append(name)
        await appender.append({"id": name})
        finished.append(name)

    async with anyio.create_task_group() as group:
        group.start_soon(append, "a")
        await anyio.to_thread.run_sync(writer.entered.wait)  # "a" is being written
        for name in ("b", "c", "d"):
            group.start_soon(append, name)
        await anyio.wait_all_tasks_blocked()
        assert finished == []  # nobody returns before its line is written
        writer.release.set()
    # In the order they came (trio starts tasks in an order of its own, asyncio in theirs).
    assert writer.calls == [["a"], queued[1:]]
    assert sorted(queued) == sorted(finished) == ["a", "b", "c", "d"]


async def test_a_failed_group_write_fails_every_line_in_it() -> None:
    writer = BlockingWriter()
    appender = GroupAppender(writer.append_many)
    errors: dict[str, OSError] = {}
    queued: list[str] = []

    async def append(name: str) -> None:
        queued.append(name)
        try:
            await appender.append({"id": name})
        except OSError as exc:
            errors[name] = exc

    async with anyio.create_task_group() as group:
        group.start_soon(append, "a")
        await anyio.to_thread.run_sync(writer.entered.wait)
        group.start_soon(append, "b")
        group.start_soon(append, "c")
        await anyio.wait_all_tasks_blocked()
        writer.fail = True
        writer.release.set()
    assert writer.calls == [["a"], queued[1:]]  # in the order they came
    assert sorted(queued) == sorted(errors) == ["a", "b", "c"]


async def test_a_line_cancelled_before_its_write_is_not_written_later() -> None:
    writer = BlockingWriter()
    appender = GroupAppender(writer.append_many)
    scope = anyio.CancelScope()

    async def cancelled() -> None:
        with scope:
            await appender.append({"id": "b"})

    async with anyio.create_task_group() as group:
        group.start_soon(appender.append, {"id": "a"})
        await anyio.to_thread.run_sync(writer.entered.wait)
        group.start_soon(cancelled)
        await anyio.wait_all_tasks_blocked()
        group.start_soon(appender.append, {"id": "c"})
        await anyio.wait_all_tasks_blocked()
        scope.cancel()  # "b" gives up while "a" is still being written
        await anyio.wait_all_tasks_blocked()
        writer.release.set()
    assert writer.calls == [["a"], ["c"]]
