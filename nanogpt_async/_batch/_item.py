"""One admitted item's way: send -> settle the budget -> save -> record -> results stream.

Each item runs in a task of the batch's work group, handed to it by the producer once admitted
(`_admit`): a task whose item is done waits for the next (`Workers`), so items do not pay for a
task each. Money
decides the order: the budget is settled as soon as the answer (or its loss) is known, the
answer is saved even if the batch is being cancelled (it is paid for), the fence hears of the
item only after its manifest line, and the pipeline slot is handed back last.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import anyio
import anyio.abc
from typing_extensions import Self

from nanogpt_async._batch._budget import Reservation, known_cost
from nanogpt_async._batch._lifecycle import AbandonedError, Lifecycle
from nanogpt_async._batch._prepare import Job
from nanogpt_async._batch._results import ItemResult
from nanogpt_async._batch._send import Attempts
from nanogpt_async._batch._shared import FencedError
from nanogpt_async._batch._streak import ErrorStreak
from nanogpt_async._errors import (
    APIConnectionError,
    APIResponseValidationError,
    GatewayError,
    NanoGPTError,
)

if TYPE_CHECKING:
    from nanogpt_async._batch._admit import Admission
    from nanogpt_async._batch._save import Saver
    from nanogpt_async._batch._send import Sender
    from nanogpt_async._batch._tally import Tally
    from nanogpt_async._output._responses import ImagesResponse

__all__ = ["ItemFlow", "Results", "Workers"]


class Results:
    """The bounded results stream behind ``async for result in batch``; counts each result."""

    __slots__ = ("_ready", "_send", "_tally", "receive", "skipped", "wanted")

    def __init__(self, size: int, tally: Tally, *, skipped: bool = True) -> None:
        self._send, self.receive = anyio.create_memory_object_stream[ItemResult](size)
        self._tally = tally
        #: ``run()`` discards results: then they are not sent through the stream at all.
        self.wanted = True
        #: ``skipped_results``: whether ``skipped`` results are sent through it.
        self.skipped = skipped
        #: Set when a result comes (or the stream closes) while readers wait for one (`_Reading`).
        self._ready: anyio.Event | None = None

    async def emit(self, result: ItemResult) -> None:
        """Count ``result`` and hand it to the reader (waiting while the stream is full)."""
        tally, status = self._tally, result.status
        if status == "ok":
            tally.ok += 1
        elif status == "failed":
            tally.failed += 1
        else:
            tally.skipped += 1
            if not self.skipped:
                return
        if not self.wanted:
            return
        # If nobody is listening any more, the manifest has it.
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            try:
                # No loop turn when there is room (the stream's send always takes one).
                self._send.send_nowait(result)
            except anyio.WouldBlock:
                # Full. The send's checkpoint comes first: the reader may empty the stream and
                # wait before this result goes in, so it is woken here too.
                await self._send.send(result)
            self._wake()

    def close(self) -> None:
        """No more results: the reader's ``async for`` ends once it has read them."""
        self._send.close()
        self._wake()

    def next_result(self) -> anyio.Event:
        """An event set when the next result comes or the stream closes (for readers)."""
        if self._ready is None:
            self._ready = anyio.Event()
        return self._ready

    def _wake(self) -> None:
        ready, self._ready = self._ready, None
        if ready is not None:
            ready.set()

    def __aiter__(self) -> AsyncIterator[ItemResult]:
        """The results as they come: ``async for result in batch``."""
        return _Reading(self)


class _Reading:
    """Reads the results stream with no loop turn of its own.

    anyio's ``receive`` always takes a checkpoint, a loop turn per result even when the stream
    holds many (~10 us of CPU each, and the senders behind a full stream wait a turn longer:
    W2 profile); and when the stream is empty, as it mostly is in W2 (results come one by one,
    the reader waits for each), that turn comes on top of the wait. The reader takes what is
    there; when nothing is, it waits for `Results` to say a result came, and yields there.
    """

    __slots__ = ("_results",)

    def __init__(self, results: Results) -> None:
        self._results = results

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ItemResult:
        results = self._results
        while True:
            try:
                return results.receive.receive_nowait()
            except anyio.WouldBlock:
                pass
            except anyio.EndOfStream:
                raise StopAsyncIteration from None
            # Nothing waits between the look above and here: no result can slip by unseen.
            await results.next_result().wait()


class ItemFlow:
    """Runs admitted items to their result."""

    __slots__ = (
        "_admission",
        "_lifecycle",
        "_results",
        "_saver",
        "_sender",
        "_streak",
        "_tally",
    )

    def __init__(
        self,
        *,
        admission: Admission,
        sender: Sender,
        saver: Saver,
        results: Results,
        lifecycle: Lifecycle,
        tally: Tally,
    ) -> None:
        self._admission = admission
        self._sender = sender
        self._saver = saver
        self._results = results
        self._lifecycle = lifecycle
        self._tally = tally
        self._streak = ErrorStreak()

    async def process(self, job: Job, reservation: Reservation) -> None:
        """Run one admitted job to its result, then hand its slots back."""
        try:
            try:
                result = await self._generate_and_save(job, reservation)
            finally:
                self._tally.in_flight -= 1
                if job.holds_slot:
                    self._sender.slots.release_on_behalf_of(job)
            if result is not None:
                await self._results.emit(result)
        finally:
            self._admission.leave()

    async def _generate_and_save(self, job: Job, reservation: Reservation) -> ItemResult | None:
        """Send, settle the budget, save, then let the fence know; ``None``: never sent."""
        attempts = Attempts(self._sender, job)
        budget, shared = self._admission.budget, self._sender.shared
        response: ImagesResponse | None = None
        error: NanoGPTError | None = None
        settled = False
        try:
            try:
                response = await self._sender.send(job, attempts)
            except FencedError as fenced:
                budget.settle(reservation, None, job.n, charged=False)
                settled = True
                await shared.settle(job, None, charged=False)
                if fenced.record:
                    return await self._saver.record(fenced.result, None)
                return fenced.result
            except AbandonedError:
                if attempts.count == 0:
                    budget.settle(reservation, None, job.n, charged=False)
                    settled = True
                    await shared.settle(job, None, charged=False)
                    await shared.unclaim(job)
                    return None  # never sent: counted in not_started, a later run does it
                error = attempts.last_error
            except NanoGPTError as exc:
                error = exc
            answered = time.monotonic()
            # An answer means a charge, stated or not; a lost answer to a sent request may be one.
            charged = response is not None or _maybe_charged(error)
            cost = known_cost(response.cost) if response is not None else None
            images = len(response.data) if response is not None else job.n
            budget.settle(reservation, cost, images, charged=charged)
            settled = True
            await shared.settle(job, cost, charged=charged)
            if self._streak.observe(error if response is None else None) and error is not None:
                self._lifecycle.fail_fast(error, self._streak.describe())
            if cost is not None:
                self._tally.cost += cost
        finally:
            if not settled:
                budget.settle(reservation, None, job.n, charged=True)
                await shared.settle(job, None, charged=True)
        latency = answered - attempts.last_started if response is not None else None
        result = await self._saver.save(
            job,
            response=response,
            error=error,
            attempts=attempts,
            latency=latency,
            answered=answered,
            cost=cost,
        )
        await shared.finish_claim(job, result, charged=charged)
        return result


class _Idle:
    """A worker waiting for its next item: ``job`` is set (then ``wake``) when it gets one."""

    __slots__ = ("job", "reservation", "wake")

    def __init__(self) -> None:
        self.wake = anyio.Event()
        self.job: Job | None = None
        self.reservation: Reservation | None = None


class Workers:
    """The tasks that run admitted items: a task whose item is done takes the next one.

    A task per item cost ~20 us of CPU in anyio's spawning alone (a task handle with its own
    cancel scope and event, a done-callback, the task-state bookkeeping; ~5 us for asyncio's
    ``create_task``), about 2% of the batch's CPU per item in W2. An idle task is woken with an
    event instead; a new one is started only when none is idle, so there are never more tasks
    than items in the pipeline at once (the pipeline slots bound them).
    """

    __slots__ = ("_closed", "_flow", "_group", "_idle")

    def __init__(self, flow: ItemFlow, group: anyio.abc.TaskGroup) -> None:
        self._flow = flow
        self._group = group
        self._idle: list[_Idle] = []
        self._closed = False

    def start(self, job: Job, reservation: Reservation) -> None:
        """Run the admitted ``job`` in an idle task, or a new one if none is idle."""
        if self._idle:
            idle = self._idle.pop()  # the latest idle: the warmest
            idle.job, idle.reservation = job, reservation
            idle.wake.set()
        else:
            self._group.start_soon(self._work, job, reservation)

    def close(self) -> None:
        """No more items: idle tasks end, busy ones once their item is done."""
        self._closed = True
        idle, self._idle = self._idle, []
        for waiting in idle:
            waiting.wake.set()

    async def _work(self, job: Job, reservation: Reservation) -> None:
        while True:
            await self._flow.process(job, reservation)
            if self._closed:
                return
            idle = _Idle()
            self._idle.append(idle)
            try:
                await idle.wake.wait()
            except BaseException:
                if idle.job is None or idle.reservation is None:
                    if idle in self._idle:
                        self._idle.remove(idle)
                    raise
                # Handed an item as the cancellation came: run it, as a task started just
                # before a cancellation is (its slots and reservation are handed back).
                # Defence only: anyio and trio deliver no cancellation to a wait that was
                # already woken (it returns, and the item's first checkpoint raises).
                await self._flow.process(idle.job, idle.reservation)
                raise
            if idle.job is None or idle.reservation is None:
                return  # closed
            job, reservation = idle.job, idle.reservation


def _maybe_charged(error: NanoGPTError | None) -> bool:
    # A gateway's page instead of NanoGPT's answer: the origin may have charged (issue 10.16).
    return isinstance(error, (APIResponseValidationError, GatewayError)) or (
        isinstance(error, APIConnectionError) and error.request_sent
    )
