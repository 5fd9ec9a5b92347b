"""Fake time for pacing tests: nothing really sleeps, and nothing asserts on wall time."""

from __future__ import annotations

import heapq

import anyio
import anyio.lowlevel


class FakeTime:
    """A clock and a sleep that advances it: waits are recorded, never slept.

    For one waiter at a time (concurrent sleepers would each move the clock by their own wait).
    """

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await anyio.lowlevel.checkpoint()


class VirtualTime:
    """Virtual time for many concurrent tasks: when every task is blocked, jump to the next
    sleeper's wake-up time. Run :meth:`drive` in the task group next to the tasks."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, anyio.Event]] = []
        self._seq = 0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        self._seq += 1
        heapq.heappush(self._sleepers, (self.now + seconds, self._seq, event))
        await event.wait()

    async def drive(self, until: float) -> None:
        """Advance time until ``until`` (or until nobody sleeps any more)."""
        while self.now < until:
            await anyio.wait_all_tasks_blocked()
            if not self._sleepers:
                return
            when = self._sleepers[0][0]
            self.now = max(self.now, when)
            while self._sleepers and self._sleepers[0][0] <= self.now:
                heapq.heappop(self._sleepers)[2].set()
