"""Stage 3 of a batch: admission, what may start now.

An item starts only with a pipeline slot (memory: at most ``concurrency +
download_concurrency`` items between the producer and the results stream), a generation slot
(the adaptive concurrency limit) and its estimate reserved in the budget. The slots are taken
before the item's task starts, so only items that can go now are started and reserve budget.
A shared budget is booked later, at the item's turn (`Sender.book_shared`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio

from nanogpt_async._batch._budget import DEFAULT_MODEL, Budget, Reservation
from nanogpt_async._batch._prepare import Job
from nanogpt_async._batch._results import ItemResult
from nanogpt_async._errors import InvalidInputError

if TYPE_CHECKING:
    from nanogpt_async._batch._settings import BatchSettings

__all__ = ["Admission"]


class Admission:
    """The pipeline slots, the generation slots and the budget, taken in that order."""

    __slots__ = ("_budgeted", "_pipeline", "_slots", "budget")

    def __init__(
        self,
        settings: BatchSettings,
        budget: Budget,
        slots: anyio.CapacityLimiter,
    ) -> None:
        self._pipeline = anyio.Semaphore(settings.concurrency + settings.download_concurrency)
        self._slots = slots
        self._budgeted = bool(settings.max_cost)
        self.budget = budget

    def priced(self, job: Job) -> Job | ItemResult:
        """Give a budgeted job its price estimate; an item with none fails, unsent."""
        if not self._budgeted:
            return job  # no budget, or nothing may be spent (the budget stops it)
        model, size = job.body.get("model"), job.body.get("size")
        job.per_image = self.budget.estimate(
            model if isinstance(model, str) else None, size if isinstance(size, str) else None
        )
        if job.per_image is not None:
            return job
        return ItemResult(
            id=job.id,
            index=job.index,
            request=job.request,
            status="failed",
            started_at=job.started_at,
            finished_at=time.time(),
            error=InvalidInputError(
                f"no price estimate for model {model or DEFAULT_MODEL!r}: the image-models list "
                "has no price for it and no answer has stated a price yet, so max_cost cannot "
                "be kept. Check the model name (a dry run lists the known ones), or run "
                "without max_cost"
            ),
        )

    async def admit(self, job: Job) -> Reservation | None:
        """Take the job's slots and reserve its estimate; ``None``: the budget is spent."""
        pipeline, slots = self._pipeline, self._slots
        # No loop turn when there is room: anyio's acquire always takes one (a shielded
        # checkpoint, ~10 us of CPU each), two per item for nothing while slots are free (W1
        # profile). Full, they wait as before; the producer takes its turns there.
        try:
            pipeline.acquire_nowait()
        except anyio.WouldBlock:
            await pipeline.acquire()
        try:
            try:
                slots.acquire_on_behalf_of_nowait(job)
            except anyio.WouldBlock:
                await slots.acquire_on_behalf_of(job)
            try:
                reservation = await self.budget.admit(job.per_image, job.n)
            except BaseException:
                slots.release_on_behalf_of(job)
                raise
        except BaseException:
            pipeline.release()
            raise
        if reservation is None:
            slots.release_on_behalf_of(job)
            pipeline.release()
        return reservation

    def leave(self) -> None:
        """An admitted item left the pipeline (its result was handed on)."""
        self._pipeline.release()
