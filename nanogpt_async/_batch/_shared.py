"""What a batch shares with other processes through Redis: the fence and the shared budget.

The fence (with a shard or a ``job_id``) claims an item at its first turn, just before it is
sent, so no item is paid for by two processes; the shared budget books each request's
estimate in Redis at its first turn, next to the batch's own budget (booked at admission,
every waiting item held an estimate: 8 shards x 64 filled a $2 cap at $0.33 spent). Without
``limits_url`` there is neither, and every call here returns at once.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import TYPE_CHECKING, Literal

import anyio

from nanogpt_async._batch._fence import RedisFence, busy_error, uncertain_error
from nanogpt_async._batch._lifecycle import RECORD_TIMEOUT
from nanogpt_async._batch._results import ItemResult
from nanogpt_async._errors import InvalidInputError, NanoGPTError
from nanogpt_async._pacing._shared_budget import RedisBudget

if TYPE_CHECKING:
    from nanogpt_async._batch._api import BatchApi
    from nanogpt_async._batch._prepare import Job
    from nanogpt_async._batch._settings import BatchSettings

__all__ = ["FencedError", "Shared"]


class FencedError(Exception):
    """The fence refused the item (done elsewhere, busy, uncertain): nothing is sent.

    Internal: raised at the item's first turn, caught by the batch, never escapes.
    """

    def __init__(self, result: ItemResult, *, record: bool) -> None:
        super().__init__(result.id)
        self.result = result
        self.record = record


class Shared:
    """The batch's fence and shared budget (each ``None`` when not asked for)."""

    __slots__ = ("budget", "fence", "take_over")

    def __init__(
        self, fence: RedisFence | None, budget: RedisBudget | None, *, take_over: bool
    ) -> None:
        self.fence = fence
        self.budget = budget
        #: Take over items another run left uncertain (``RetryPolicy(retry_ambiguous=True)``).
        self.take_over = take_over

    @classmethod
    def build(cls, api: BatchApi, settings: BatchSettings) -> Shared:
        """The fence and shared budget ``settings`` ask for, on the client's Redis.

        Raises:
            InvalidInputError: one is asked for without what it needs.
        """
        redis = api.redis()
        budget = None
        if settings.shared_budget is not None:
            if settings.max_cost is None or redis is None:
                raise InvalidInputError(
                    "shared_budget needs max_cost and a client with limits_url (redis://...): "
                    "the cap is kept in Redis"
                )
            url, key = redis
            budget = RedisBudget(
                url, key=key, max_cost=settings.max_cost, name=settings.shared_budget
            )
        return cls(_fence(redis, settings), budget, take_over=api.retry_ambiguous)

    def require_asyncio(self) -> None:
        """Raise `InvalidInputError` under trio if the batch needs Redis: before anything is sent.

        The fence and the shared budget fail closed; under trio, where redis-py's async client
        cannot run, they would wait for Redis forever.
        """
        for needs_redis in (self.budget, self.fence):
            if needs_redis is not None:
                needs_redis.require_asyncio()

    async def heartbeat(self, scope: anyio.CancelScope) -> None:
        """Keep the fence's claims this process's own until ``scope`` is cancelled."""
        if self.fence is not None:
            with scope:
                await self.fence.heartbeat()

    async def aclose(self) -> None:
        """Close both connections, shielded and bounded: the batch is ending."""
        for closing in (self.budget, self.fence):
            if closing is not None:
                with anyio.CancelScope(shield=True) as scope:
                    scope.deadline = anyio.current_time() + RECORD_TIMEOUT
                    await closing.aclose()

    # -- the fence ----------------------------------------------------------------------

    async def claim(self, job: Job) -> None:
        """Claim the item in the fence at its first turn; raise `FencedError` if refused.

        Called from the item's first turn, i.e. inside the client's call: `FencedError` comes
        out of ``generate_from_body`` like `AbandonedError` does, before anything is sent.
        """
        if self.fence is None:
            return
        verdict = await self.fence.claim(job.id, take_over=self.take_over)
        if verdict == "claimed":
            job.claimed = True
            return
        error: NanoGPTError | None = None
        if verdict == "uncertain":
            error = uncertain_error(job.id)
        elif verdict == "busy":
            error = busy_error(job.id)
        result = ItemResult(
            id=job.id,
            index=job.index,
            request=job.request,
            status="skipped" if error is None else "failed",
            started_at=job.started_at,
            finished_at=time.time(),
            error=error,
        )
        # "uncertain" goes in the manifest (status shows it); "busy" is the other run's to record.
        raise FencedError(result, record=verdict == "uncertain")

    async def finish_claim(self, job: Job, result: ItemResult, *, charged: bool) -> None:
        """After the manifest line: mark the claim done, or release it, or keep it.

        A failure that cost nothing is released (a later run may retry it); one that may have
        been charged stays claimed, so it reads as uncertain once this process is gone.
        """
        if self.fence is not None and job.claimed and (result.status == "ok" or not charged):
            await self.fence.finish(job.id, done=result.status == "ok")

    async def unclaim(self, job: Job) -> None:
        """Release the claim of an item that was never sent."""
        if self.fence is not None and job.claimed:
            with anyio.CancelScope(shield=True) as scope:
                scope.deadline = anyio.current_time() + RECORD_TIMEOUT
                await self.fence.finish(job.id, done=False)

    # -- the shared budget --------------------------------------------------------------

    async def book(self, job: Job) -> Literal["booked", "full", "spent"]:
        """Book the request's estimate in the shared budget, just before it is sent.

        ``"full"``: requests in flight hold the rest of the cap (wait for `room`, try again);
        ``"spent"``: not even one more fits. Waits while Redis cannot be checked (fails closed).
        """
        if self.budget is None:
            return "booked"
        if job.per_image is None:
            raise ValueError("a budgeted request needs a price estimate")
        booked = await self.budget.book(job.per_image * job.n)
        if isinstance(booked, str):
            return booked
        job.booking = booked
        return "booked"

    async def room(self) -> None:
        """Wait until a booking may fit again (a settlement here, or a short poll)."""
        if self.budget is not None:
            await self.budget.room()

    async def settle(self, job: Job, cost: Decimal | None, *, charged: bool) -> None:
        """Turn the job's booking into what it cost (or may have cost)."""
        if self.budget is None or job.booking is None:
            return
        booking, job.booking = job.booking, None
        # Shielded and bounded: if it cannot be written, the booking expires as spent.
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + RECORD_TIMEOUT
            await self.budget.settle(booking, cost, maybe_charged=charged)


def _fence(redis: tuple[str, str] | None, settings: BatchSettings) -> RedisFence | None:
    """The at-most-once fence: with a shard or a job id, and ``limits_url`` (Redis)."""
    job_id, folder = settings.job_id, settings.folder
    if settings.shard is None and job_id is None:
        return None
    if redis is None or folder is None:
        if job_id is None:
            return None  # shards without Redis: disjoint by construction, no fence
        raise InvalidInputError(
            "job_id names an at-most-once fence in Redis: it needs output_dir and a client "
            "with limits_url (redis://...)"
        )
    if job_id is None:
        job_id = str(folder.resolve())
    url, key = redis
    return RedisFence(url, key=key, job_id=job_id, folder=folder, lease=settings.fence_lease)
