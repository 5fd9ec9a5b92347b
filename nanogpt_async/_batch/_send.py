"""Stage 3 of a batch: send each job, within the concurrency limit and the client's pace.

Turns come from the client's pacer (one limiter per key, shared with every other call the
client makes); the batch only decides whether an attempt may still go (`Lifecycle`), lets
only this process's share of 2 s of turns wait at once (`TurnGate`), books the item's
estimate in a shared budget and claims it in the fence at its first turn, and adapts its
concurrency to the answers (AIMD).
This is the batch's only call to the API: `Sender.send` (through `BatchApi`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio

from nanogpt_async._batch._lifecycle import AbandonedError, Lifecycle
from nanogpt_async._batch._turns import TurnGate
from nanogpt_async._errors import (
    FATAL_ERRORS,
    DailyLimitExceededError,
    LocalRateLimitError,
    NanoGPTError,
    RateLimitError,
)
from nanogpt_async._pacing import AIMD

if TYPE_CHECKING:
    from nanogpt_async._batch._api import BatchApi
    from nanogpt_async._batch._prepare import Job
    from nanogpt_async._batch._shared import Shared
    from nanogpt_async._batch._tally import Tally
    from nanogpt_async._output._responses import ImagesResponse

__all__ = ["Attempts", "Sender"]


class Attempts:
    """One item's `TurnHooks`: when to take turns, and counting."""

    __slots__ = ("_job", "_sender", "count", "last_error", "last_started")

    def __init__(self, sender: Sender, job: Job) -> None:
        self._sender = sender
        self._job = job
        self.count = 0
        self.last_error: NanoGPTError | None = None
        self.last_started = time.monotonic()

    async def take_turn(self, wait_turn: Callable[[], Awaitable[None]]) -> None:
        """Wait for the pacer's turn unless the batch stopped; claim the item at its first."""
        await self._sender.take_turn(self.count, wait_turn)
        if self.count == 0:
            # Booked and claimed once its turn has come, not when admitted: an item waiting
            # for a turn holds no money and, in a process that dies, was never sent, so it must
            # not read as "may be charged" (W10: claiming at admission left 192 such items
            # uncertain, 4 of them charged; booking at admission stopped 8 shards x 64 at
            # $0.33 of a $2 cap).
            await self._sender.book_shared(self._job, wait_turn)
            await self._sender.shared.claim(self._job)
        self.count += 1
        self.last_started = time.monotonic()

    async def after_attempt(self, error: BaseException | None) -> None:
        """Remember the attempt's error; let the batch learn from it."""
        if isinstance(error, NanoGPTError):
            self.last_error = error
        self._sender.learn(error)


class Sender:
    """Sends jobs: the generation slots, the turns, and what the answers teach."""

    __slots__ = (
        "_api",
        "_control",
        "_gate",
        "_lifecycle",
        "_paced",
        "_pacer",
        "_tally",
        "shared",
        "slots",
    )

    def __init__(
        self,
        api: BatchApi,
        concurrency: int,
        lifecycle: Lifecycle,
        tally: Tally,
        shared: Shared,
    ) -> None:
        self._api = api
        self._paced = api.paced
        self._control = AIMD(concurrency, floor=1, beta=0.5)
        #: Items being generated at most (the AIMD's current limit).
        self.slots = anyio.CapacityLimiter(concurrency)
        self._pacer = api.pacer()
        self._gate = TurnGate(self._pacer, concurrency)
        self._lifecycle = lifecycle
        self._tally = tally
        self.shared = shared

    async def send(self, job: Job, attempts: Attempts) -> ImagesResponse:
        """Send the job (retried by the client) and return its answer; frees its slot."""
        try:
            return await self._api.send(job.body, edit=job.edit, hooks=attempts)
        finally:
            job.holds_slot = False
            self.slots.release_on_behalf_of(job)

    async def take_turn(self, sent_before: int, wait_turn: Callable[[], Awaitable[None]]) -> None:
        """Wait for the pacer's turn; raise `AbandonedError` once the batch may not send."""
        await self._wait(sent_before, wait_turn)
        self._tally.attempts += 1

    async def book_shared(self, job: Job, wait_turn: Callable[[], Awaitable[None]]) -> None:
        """Book the job's estimate in the shared budget (if any) at its first turn.

        "full" (the requests in flight hold the rest of the cap) waits for one to settle and
        takes a new turn: the old one went by. "spent" stops the batch (``"budget"``) and
        abandons the job, unsent.
        """
        while True:
            verdict = await self.shared.book(job)
            if verdict == "booked":
                return
            if verdict == "spent":
                self._lifecycle.stop_for("budget")
                raise AbandonedError
            await self.shared.room()
            await self._wait(0, wait_turn)

    async def _wait(self, sent_before: int, wait_turn: Callable[[], Awaitable[None]]) -> None:
        lifecycle = self._lifecycle
        while True:
            lifecycle.check_may_send(sent_before)
            if self._gate.has_room() and self._pacer.turn_now():
                # Due now (unpaced, or a slot free): nothing to wait for, so nothing a stop
                # must wake, and no cancel scope (~25 us of loop CPU per item, W10 profile).
                return
            with anyio.CancelScope() as scope:
                lifecycle.waiting.add(scope)
                # The gate's place is held while waiting for the turn (explicit enter/leave: a
                # context manager's generator costs ~4 us a turn).
                gate, token = self._gate, object()
                try:
                    await gate.enter(token)
                    try:
                        await wait_turn()
                    finally:
                        gate.leave(token)
                except (LocalRateLimitError, DailyLimitExceededError) as exc:
                    # Refused by the pacer before sending (a cooldown longer than max_wait,
                    # e.g. a Retry-After of 99999999; or the daily cap): waiting would only
                    # freeze the batch behind an ETA. Stop it; unsent items stay not_started
                    # and a later run does them.
                    lifecycle.fail_fast(exc)
                    raise AbandonedError from exc
                finally:
                    lifecycle.waiting.discard(scope)
            if not scope.cancelled_caught:  # woken by a stop: check again
                lifecycle.check_may_send(sent_before)
                return

    def learn(self, error: BaseException | None) -> None:
        """Count a 429, adapt the concurrency, stop at an error no retry fixes."""
        if isinstance(error, RateLimitError):
            self._tally.rate_limited += 1
        self._adapt_concurrency(error)
        if isinstance(error, FATAL_ERRORS):
            self._lifecycle.fail_fast(error)

    def _adapt_concurrency(self, error: BaseException | None) -> None:
        """AIMD over the generation limit: up on success, halved on a 429 when unpaced.

        With a rate limit, a 429 is the pacer's business (it holds every caller for the
        cooldown and lowers the rate): cutting the concurrency too starved the batch, down to
        2.8 items/s against a server allowing 10 req/s (issue 10, item 15). Without one, the
        concurrency is the only lever.
        """
        control = self._control
        before = int(control.value)
        if error is None:
            control.increase()
        elif isinstance(error, RateLimitError) and not self._paced:
            control.hold = max(error.retry_after or 1.0, 0.5)
            control.decrease(time.monotonic())
        after = max(1, int(control.value))
        if after != before:
            self.slots.total_tokens = after
