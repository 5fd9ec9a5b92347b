"""Fake time for pacing tests: nothing really sleeps, and nothing asserts on wall time."""

from __future__ import annotations

import asyncio
import heapq
import math

import anyio
import anyio.lowlevel
import anyio.to_thread
import httpx
import sniffio
import trio.testing


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
        await self._sleeper(seconds).wait()

    def _sleeper(self, seconds: float) -> anyio.Event:
        """The event set when ``seconds`` of virtual time have passed."""
        event = anyio.Event()
        self._seq += 1
        heapq.heappush(self._sleepers, (self.now + seconds, self._seq, event))
        return event

    def _wake_the_next(self) -> None:
        """Jump to the next sleeper's wake-up time and wake everyone due then."""
        self.now = max(self.now, self._sleepers[0][0])
        while self._sleepers and self._sleepers[0][0] <= self.now:
            heapq.heappop(self._sleepers)[2].set()

    async def drive(self, until: float) -> None:
        """Advance time until ``until`` (or until nobody sleeps any more)."""
        while self.now < until:
            await anyio.wait_all_tasks_blocked()
            if not self._sleepers:
                return
            self._wake_the_next()


class SettledTime(VirtualTime):
    """Virtual time for a client and a fake server in its own thread: it moves only when the
    client's loop has settled (every task blocked) and no request is on its way to the server.

    Then it jumps to the next sleeper's wake-up time. The fake's token bucket (``clock=``) and
    the client's pacer (``clock=``, ``sleep=``) read it; requests reach the transport through
    :meth:`transport`, which counts them until their answer's headers arrive: by then the fake
    has taken its token, at the virtual time the pacer sent the request. On real time, a server
    thread or a client loop descheduled for 100-300 ms on a loaded machine let requests pile up
    and handed them to the bucket back to back, which refused the pile: 429s that said nothing
    about the pacer (3-4 runs in 70 of each of two batch tests, 4 workers on 2 busy cores). A
    pause now pauses virtual time with it. Run :meth:`drive` in a task group next to the client.
    """

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self._changed: anyio.Event | None = None  # made in the loop: drive() waits on it

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        event = self._sleeper(seconds)
        self._wake_driver()
        try:
            await event.wait()
        finally:
            event.set()  # a cancelled sleeper's wake-up time no longer moves the clock

    def transport(self, inner: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
        """``inner``, counting each request in flight until its answer's headers arrive."""
        return _Counted(inner, self)

    def answered(self) -> None:
        self.in_flight -= 1
        self._wake_driver()

    def _wake_driver(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def drive(self, until: float = math.inf) -> None:
        """Move time until ``until``, by default forever (cancel it when the client is done)."""
        threads = anyio.to_thread.current_default_thread_limiter()
        while self.now < until:
            await _all_tasks_blocked()
            if threads.borrowed_tokens:
                # A task waiting for a worker thread (a file written, an image decoded) is not
                # done: it may take a turn after it. Nothing to wait on but the thread itself.
                await anyio.sleep(0.001)
                continue
            while self._sleepers and self._sleepers[0][2].is_set():
                heapq.heappop(self._sleepers)  # cancelled
            if self.in_flight or not self._sleepers:
                self._changed = changed = anyio.Event()
                await changed.wait()
                continue
            self._wake_the_next()


class _Counted(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, time: SettledTime) -> None:
        self._inner = inner
        self._time = time

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._time.in_flight += 1
        try:
            return await self._inner.handle_async_request(request)
        finally:
            self._time.answered()

    async def aclose(self) -> None:
        await self._inner.aclose()


async def _all_tasks_blocked() -> None:
    """``anyio.wait_all_tasks_blocked``, without its 0.1 s polls under asyncio (one per step of
    virtual time made a 0.45 s test take seconds)."""
    if sniffio.current_async_library() == "trio":
        await trio.testing.wait_all_tasks_blocked()
        return
    this = asyncio.current_task()
    while True:
        await asyncio.sleep(0)
        if all(task is this or _waiting(task) for task in asyncio.all_tasks()):
            return


def _waiting(task: asyncio.Task[object]) -> bool:
    # What anyio's own wait_all_tasks_blocked looks at: the future the task awaits, if any.
    waiter = task._fut_waiter  # type: ignore[attr-defined]
    return waiter is not None and not waiter.done()
