"""A batch's lifecycle: one state, why it stopped, and what stopping wakes up.

Every stage that may stop the batch (a fatal answer, a failed write, the budget, the input)
does it here, so the reason recorded is the first one and stopping always does the same:
no new item starts, attempts waiting for their turn are woken, and once the batch is being
cancelled, paid-for saves get `SAVE_TIMEOUT` more seconds.
"""

from __future__ import annotations

import enum

import anyio

from nanogpt_async._errors import NanoGPTError

__all__ = ["RECORD_TIMEOUT", "SAVE_TIMEOUT", "AbandonedError", "BatchState", "Lifecycle"]

#: Once the batch is cancelled, paid-for results still being saved get this many seconds.
SAVE_TIMEOUT = 30.0
#: Bound on writing one manifest line (or a Redis settlement) under cancellation.
RECORD_TIMEOUT = 10.0


class AbandonedError(Exception):
    """An attempt not sent because the batch is stopping (internal: never escapes)."""


class BatchState(enum.IntEnum):
    """Where a batch is; it only ever moves forward (ordered, so ``>=`` reads as "past")."""

    NEW = 0
    #: ``dry_run()`` is reading the input; the batch never runs.
    PLANNING = 1
    #: Reading the input and starting items.
    RUNNING = 2
    #: Every item was read; those in flight finish.
    DRAINING = 3
    #: No new item starts (``stop()``, the budget, a fatal error, an input error); items in
    #: flight finish, and may retry.
    STOPPING = 4
    #: Being cancelled: what is waiting is dropped, paid-for saves get `SAVE_TIMEOUT`.
    CANCELLING = 5
    #: Every item finished, the folder closed.
    DONE = 6


class Lifecycle:
    """The batch's state and stop reason, shared by its stages."""

    __slots__ = (
        "fatal_error",
        "input_error",
        "producer_scope",
        "saving",
        "started_may_send",
        "state",
        "stop_reason",
        "waiting",
    )

    def __init__(self) -> None:
        self.state = BatchState.NEW
        self.stop_reason: str | None = None
        self.fatal_error: NanoGPTError | None = None
        #: What the input raised (a bad line, a repeated id): raised once the batch is left.
        self.input_error: Exception | None = None
        #: Attempts waiting for their turn (woken by stopping) and saves (bounded by aborting).
        self.waiting: set[anyio.CancelScope] = set()
        self.saving: set[anyio.CancelScope] = set()
        self.producer_scope: anyio.CancelScope | None = None
        #: Stopped by an input error alone: items started before it still send (`input_failed`).
        self.started_may_send = False

    @property
    def halted(self) -> bool:
        """No new item may start."""
        return BatchState.STOPPING <= self.state <= BatchState.CANCELLING

    @property
    def cancelling(self) -> bool:
        """The batch is being cancelled: new saves get a deadline too."""
        return self.state == BatchState.CANCELLING

    def begin(self, state: BatchState) -> anyio.CancelScope:
        """Leave `NEW` for ``state`` (a stop asked for before stops it at once).

        Returns:
            The scope to read the input in: stopping cancels it.
        """
        if self.state != BatchState.NEW:
            raise RuntimeError("a Batch runs once; call generate_many() again for another run")
        self.state = BatchState.STOPPING if self.stop_reason is not None else state
        self.producer_scope = anyio.CancelScope()
        return self.producer_scope

    def advance(self, state: BatchState) -> None:
        """Move on to ``state`` unless already past it."""
        self.state = max(self.state, state)

    def check_may_send(self, sent_before: int) -> None:
        """Raise `AbandonedError` unless an attempt may go now.

        After a fatal error nothing more is sent; after a stop only retries of items in flight.
        """
        if self.fatal_error is not None or (
            sent_before == 0 and self.halted and not self.started_may_send
        ):
            raise AbandonedError

    def stop(self) -> None:
        """Stop gracefully (see `Batch.stop`)."""
        self.started_may_send = False
        if self.stop_reason is None and self.state <= BatchState.RUNNING:
            self.stop_reason = "stopped"
        self.halt()

    def stop_for(self, reason: str) -> None:
        """Stop gracefully for ``reason``, unless the batch already stopped for another."""
        self.started_may_send = False
        if self.stop_reason is None:
            self.stop_reason = reason
        self.halt()

    def fail_fast(self, error: NanoGPTError, reason: str | None = None) -> None:
        """Stop for an error no retry fixes; the first one is the batch's ``fatal_error``."""
        self.started_may_send = False
        if self.fatal_error is None:
            self.fatal_error = error
            self.stop_reason = f"fatal: {reason or f'{type(error).__name__}: {error}'}"
        self.halt()

    def input_failed(self, error: Exception) -> None:
        """The input raised (a bad line, a repeated id): stop as `stop` does.

        In-flight items are paid for: they finish and are saved, then the error is raised
        when the ``async with`` block exits.
        """
        first = self.stop_reason is None
        self.input_error = error
        self.stop_for(f"input error: {error}")
        # Items started before the bad entry was read are in flight: they go. The producer
        # starts items without a loop turn while slots are free (W1), so "started" no longer
        # implies "its request went out" when the input fails right after them.
        self.started_may_send = first

    def abort(self) -> None:
        """The batch is being cancelled: give paid-for saves ``SAVE_TIMEOUT`` more seconds."""
        self.started_may_send = False
        # A cancel after stop() (the CLI's second Ctrl-C) abandons what stop() let finish:
        # "cancelled" is what happened, and what the docs promise.
        if self.stop_reason in (None, "stopped"):
            self.stop_reason = "cancelled"
        self.advance(BatchState.CANCELLING)
        self.halt()
        deadline = anyio.current_time() + SAVE_TIMEOUT
        for scope in self.saving:
            scope.deadline = min(scope.deadline, deadline)

    def halt(self) -> None:
        """Stop starting items and wake attempts waiting for their turn."""
        if BatchState.PLANNING <= self.state < BatchState.STOPPING:
            self.state = BatchState.STOPPING
        if self.producer_scope is not None:
            self.producer_scope.cancel()
        for scope in list(self.waiting):
            scope.cancel()
