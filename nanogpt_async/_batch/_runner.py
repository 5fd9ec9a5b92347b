"""The batch runner behind ``client.images.generate_many()``: the pipeline's outline.

The data's way through, an item at a time per task (`Workers`), all inside one task group::

    input (read lazily) -> prepare: id, checked body                    (_produce, _prepare)
      -> resume: skip what an earlier run did, checked in chunks          (_resume, _chunks)
      -> admission: price estimate, pipeline slot, generation slot, budget (_admit, _budget)
      -> send: adaptive concurrency, the client's pace, the fence's claim  (_send, _api, _shared)
      -> save: its own limit; decode/download, atomic writes, one manifest line  (_item, _save)
      -> results stream (bounded) -> ``async for result in batch``

Memory is bounded by the pipeline slots (``concurrency + download_concurrency`` items at most
are between the producer and the results stream), never by the size of the input. When saving
falls behind, the slots fill up and the producer stops starting generations: unfetched signed
URLs cannot pile up. A save is shielded from cancellation (bounded by ``SAVE_TIMEOUT`` once the
batch is being cancelled) because its generation is already paid for. Why the batch stops and
where it is (`BatchState`) live in `_lifecycle`; its counts in `_tally`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from decimal import Decimal
from os import PathLike
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from typing_extensions import Self

from nanogpt_async._batch._admit import Admission
from nanogpt_async._batch._api import BatchApi
from nanogpt_async._batch._budget import Budget
from nanogpt_async._batch._item import ItemFlow, Results, Workers
from nanogpt_async._batch._lifecycle import SAVE_TIMEOUT, BatchState, Lifecycle
from nanogpt_async._batch._manifest import read_manifest
from nanogpt_async._batch._plan import BatchPlan, Planner, plan_input
from nanogpt_async._batch._prepare import BatchInput, Preparer, entries_of, price_list
from nanogpt_async._batch._produce import Producer
from nanogpt_async._batch._results import BatchProgress, BatchSummary, ItemResult
from nanogpt_async._batch._resume import Resume
from nanogpt_async._batch._save import Saver
from nanogpt_async._batch._send import Sender
from nanogpt_async._batch._settings import BatchSettings, ProgressCallback
from nanogpt_async._batch._shared import Shared
from nanogpt_async._batch._tally import Tally, report_every, report_once
from nanogpt_async._types import NOT_GIVEN, NotGiven

if TYPE_CHECKING:
    from nanogpt_async._batch._shards import Shard
    from nanogpt_async._http._channel import Channel

__all__ = ["SAVE_TIMEOUT", "Batch", "BatchInput", "ProgressCallback"]


class Batch:
    """Many generations, paced to the account's limits; build it with ``generate_many()``.

    Use it as an async context manager and iterate it for results as items finish, or await
    [run][nanogpt_async.Batch.run] for the summary alone. Leaving the ``async with`` block
    before the input is exhausted stops the batch the way [stop][nanogpt_async.Batch.stop] does.

    Example:
        >>> batch = client.images.generate_many(prompts, output_dir="out")  # doctest: +SKIP
        >>> async with batch:  # doctest: +SKIP
        ...     async for result in batch:
        ...         print(result.index, result.status, result.files)
        >>> batch.summary.ok  # doctest: +SKIP

    Args:
        rps: See [Images.generate_many][nanogpt_async.Images.generate_many], like every other
            argument. Default: `the client's pacer`.
    """

    def __init__(
        self,
        channel: Channel,
        items: BatchInput,
        *,
        output_dir: str | PathLike[str] | None = None,
        concurrency: int = 64,
        rps: float | NotGiven | None = NOT_GIVEN,
        burst: int | None = None,
        download_concurrency: int = 32,
        max_cost: float | Decimal | None = None,
        shared_budget: str | None = None,
        retry_failed: bool = True,
        skipped_results: bool = True,
        on_progress: ProgressCallback | None = None,
        progress_interval: float = 0.5,
        manifest_name: str = "manifest.jsonl",
        total: int | None = None,
        defaults: Mapping[str, Any] | None = None,
        shard: tuple[int, int] | Shard | None = None,
        job_id: str | None = None,
        fence_lease: float = 30.0,  # DEFAULT_LEASE, spelled out for the docs
    ) -> None:
        """See [Images.generate_many][nanogpt_async.Images.generate_many] for the arguments."""
        self._settings = settings = BatchSettings.check(
            max_connections=channel.pools.size,
            items=items,
            output_dir=output_dir,
            concurrency=concurrency,
            rps=rps,
            burst=burst,
            download_concurrency=download_concurrency,
            max_cost=max_cost,
            shared_budget=shared_budget,
            retry_failed=retry_failed,
            skipped_results=skipped_results,
            on_progress=on_progress,
            progress_interval=progress_interval,
            manifest_name=manifest_name,
            total=total,
            defaults=defaults,
            shard=shard,
            job_id=job_id,
            fence_lease=fence_lease,
        )
        self._items = items
        self._api = BatchApi(channel, rps=settings.rps, burst=settings.burst)
        self._shared = Shared.build(self._api, settings)
        self._lifecycle = Lifecycle()
        self._tally = Tally(settings.total)
        self._preparer = Preparer(settings.defaults, self._lifecycle, self._tally)
        # Replaced once the price list is read; a summary of a batch that never started
        # (no price for --max-cost) still needs one.
        self._budget = Budget(None)

    # -- public surface -----------------------------------------------------------------

    def stop(self) -> None:
        """Stop gracefully: start no new item; in-flight items finish and are saved.

        Safe to call more than once, and from a signal handler on the event loop's thread
        (the CLI's first Ctrl-C). Items never started are counted in ``not_started``; running
        the same batch into the same folder again does them.
        """
        self._lifecycle.stop()

    @property
    def summary(self) -> BatchSummary:
        """Counts, cost, rates and timings; final once the ``async with`` block has exited."""
        return self._tally.summary(
            self._lifecycle, self._settings.manifest_path, self._budget.unpriced
        )

    @property
    def progress(self) -> BatchProgress:
        """A progress snapshot now (what ``on_progress`` receives)."""
        return self._tally.progress()

    async def dry_run(self) -> BatchPlan:
        """Check every item and estimate the cost, sending no paid request; see `BatchPlan`.

        Reads the whole input (instead of running it) and the image-models list (one free
        ``GET``), checks each item's model, size and ``n`` against that list, and prices it from
        the list's pricing. Items an earlier run finished into ``output_dir`` count as skipped;
        the folder is only read. A batch is either dry-run or run, not both: build another with
        ``generate_many()`` to run it.

        Example:
            >>> batch = client.images.generate_many(prompts, model="hidream")  # doctest: +SKIP
            >>> plan = await batch.dry_run()  # doctest: +SKIP
            >>> plan.problems, plan.estimated_cost  # doctest: +SKIP
            ([], Decimal('0.50'))
        """
        self._lifecycle.begin(BatchState.PLANNING)
        planner = Planner(await self._api.models())
        path = self._settings.manifest_path
        recorded = await anyio.to_thread.run_sync(read_manifest, path) if path else None
        resume = Resume(recorded, self._settings.folder, retry_failed=self._settings.retry_failed)
        plan = await plan_input(
            planner,
            entries_of(self._items),
            preparer=self._preparer,
            resume=resume,
            shard=self._settings.shard,
            tally=self._tally,
        )
        self._tally.ended = time.monotonic()
        self._lifecycle.advance(BatchState.DONE)
        return plan

    async def run(self) -> BatchSummary:
        """Run the whole batch, discarding per-item results; return the summary."""
        async with self:
            self._results.wanted = False
            async for _ in self:  # what was sent before
                pass
        return self.summary

    async def __aenter__(self) -> Self:
        """Prepare the output folder (sweep temp files, read the manifest) and start.

        Raises:
            InvalidInputError: under trio with a shared budget or an item fence, which need
                redis-py's asyncio client (nothing is sent, not even the price list).
        """
        self._shared.require_asyncio()
        self._producer_scope = self._lifecycle.begin(BatchState.RUNNING)
        settings, lifecycle, tally = self._settings, self._lifecycle, self._tally
        tally.started = time.monotonic()
        # Sync primitives need a running event loop: made here, not in __init__.
        self._sender = sender = Sender(
            self._api, settings.concurrency, lifecycle, tally, self._shared
        )
        self._saver = Saver(settings, lifecycle, tally)
        prices = await price_list(self._api, settings.max_cost, settings.defaults)
        self._budget = Budget(settings.max_cost, prices)
        self._admission = Admission(settings, self._budget, sender.slots)
        self._results = Results(
            settings.download_concurrency, tally, skipped=settings.skipped_results
        )
        self._flow = ItemFlow(
            admission=self._admission,
            sender=sender,
            saver=self._saver,
            results=self._results,
            lifecycle=lifecycle,
            tally=tally,
        )
        self._aux_scope = anyio.CancelScope()
        self._heartbeat_scope = anyio.CancelScope()
        recorded = await self._saver.open()
        resume = Resume(recorded, settings.folder, retry_failed=settings.retry_failed)
        self._producer = Producer(
            self._items,
            settings=settings,
            preparer=self._preparer,
            resume=resume,
            admission=self._admission,
            saver=self._saver,
            results=self._results,
            lifecycle=lifecycle,
            tally=tally,
        )
        self._group = anyio.create_task_group()
        try:
            await self._group.__aenter__()
        except BaseException:
            await self._saver.close(report=False)
            raise
        self._group.start_soon(self._aux)
        if self._shared.fence is not None:
            self._group.start_soon(self._shared.heartbeat, self._heartbeat_scope)
        self._group.start_soon(self._main)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Wait for the batch (stopping it first if the block was left early).

        Raises:
            Exception: what the input raised while being read (a bad line of a prompt file,
                a repeated item id), once the items in flight were saved.
        """
        if exc is None:
            try:
                if self._lifecycle.state != BatchState.DONE:
                    self.stop()
                async for _ in self._results.receive:  # let in-flight items finish and be saved
                    pass
            except BaseException as drain_error:
                if not await self._group.__aexit__(
                    type(drain_error), drain_error, drain_error.__traceback__
                ):
                    raise
                return None
        suppressed = await self._group.__aexit__(exc_type, exc, tb)
        if exc is None and self._lifecycle.input_error is not None:
            raise self._lifecycle.input_error
        return suppressed

    def __aiter__(self) -> AsyncIterator[ItemResult]:
        """Results as items finish (ok, failed, or skipped because done before)."""
        if self._lifecycle.state == BatchState.NEW:
            raise RuntimeError("iterate a Batch inside 'async with batch:'")
        return self._results.__aiter__()

    def __repr__(self) -> str:
        """Show where it writes and how far it got."""
        progress = self.progress
        folder = self._settings.folder
        return (
            f"Batch(output_dir={str(folder) if folder else None!r}, "
            f"done={progress.done}, total={progress.total}, in_flight={progress.in_flight})"
        )

    # -- the run ------------------------------------------------------------------------

    async def _aux(self) -> None:
        """Progress reports; and, when the batch is torn down, bound the shielded saves."""
        with self._aux_scope:
            try:
                await report_every(self._settings, lambda: self.progress)
            finally:
                if self._lifecycle.state != BatchState.DONE:
                    self._lifecycle.abort()

    async def _main(self) -> None:
        try:
            async with anyio.create_task_group() as group:
                workers = Workers(self._flow, group)
                try:
                    with self._producer_scope:
                        await self._producer.produce(workers)
                finally:
                    workers.close()
                self._lifecycle.advance(BatchState.DRAINING)
        finally:
            self._lifecycle.advance(BatchState.DONE)
            self._tally.ended = time.monotonic()
            self._aux_scope.cancel()
            self._heartbeat_scope.cancel()
            await self._saver.close()
            await self._shared.aclose()
            self._results.close()
            report_once(self._settings, self.progress)
