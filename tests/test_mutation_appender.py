"""The manifest's group appender and cancellation: a rule mutation testing found unpinned.

A waiter whose line another task has already taken into its group write must, when cancelled,
just be cancelled: its line is being written, and there is nothing of it left to withdraw.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
import anyio.from_thread

from nanogpt_async._batch._appender import GroupAppender


class GatedWriter:
    """Records each ``append_many`` call, says when it started, and holds it until let go."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.started = [anyio.Event(), anyio.Event()]
        self.gates = [threading.Event(), threading.Event()]

    def append_many(self, records: Sequence[Mapping[str, Any]]) -> None:
        call = len(self.calls)
        self.calls.append([str(record["id"]) for record in records])
        anyio.from_thread.run_sync(self.started[call].set)
        self.gates[call].wait(10)

    def release_all(self) -> None:
        for gate in self.gates:
            gate.set()


async def test_a_waiter_cancelled_while_another_task_writes_its_line_is_only_cancelled() -> None:
    writer = GatedWriter()
    appender = GroupAppender(writer.append_many)
    scope = anyio.CancelScope()
    errors: list[BaseException] = []

    async def cancelled() -> None:
        try:
            with scope:
                await appender.append({"id": "c"})
        except Exception as exc:  # noqa: BLE001 - the test asserts there is none
            errors.append(exc)

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(appender.append, {"id": "a"})
            await writer.started[0].wait()  # "a" is being written
            group.start_soon(appender.append, {"id": "b"})
            await anyio.wait_all_tasks_blocked()
            group.start_soon(cancelled)  # "c" waits behind "b"
            await anyio.wait_all_tasks_blocked()
            writer.gates[0].set()
            await writer.started[1].wait()  # "b" took the group: "b" and "c" are being written
            scope.cancel()  # "c" gives up, its line already taken
            await anyio.wait_all_tasks_blocked()
            writer.gates[1].set()
    finally:
        writer.release_all()
    assert errors == []
    assert scope.cancelled_caught
    assert writer.calls == [["a"], ["b", "c"]]  # "c" was written all the same, once
