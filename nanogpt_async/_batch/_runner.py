"""The batch runner behind ``client.images.generate_many()``: the pipeline's outline.

The data's way through, one task per item, all inside one task group::

    input (read lazily) -> prepare: id, checked body, price estimate       (_prepare)
      -> resume: skip what an earlier run did, checked ahead in groups     (_resume)
      -> admission: a pipeline slot, a generation slot, the budget         (here, _budget)
      -> send: adaptive concurrency, the client's pace, the fence's claim  (_send, _shared)
      -> save: its own limit; decode/download, atomic writes, one manifest line  (_save)
      -> results stream (bounded) -> ``async for result in batch``

Memory is bounded by the pipeline slots (``concurrency + download_concurrency`` items at most
are between the producer and the results stream), never by the size of the input. When saving
falls behind, the slots fill up and the producer stops starting generations: unfetched signed
URLs cannot pile up. A save is shielded from cancellation (bounded by ``SAVE_TIMEOUT`` once the
batch is being cancelled) because its generation is already paid for. Why the batch stops and
where it is (`BatchState`) live in `_lifecycle`; its counts in `_tally`.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping
from decimal import Decimal
from os import PathLike
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.to_thread
from typing_extensions import Self

from nanogpt_async._batch._budget import Budget, Reservation, known_cost
from nanogpt_async._batch._lifecycle import SAVE_TIMEOUT, AbandonedError, BatchState, Lifecycle
from nanogpt_async._batch._manifest import read_manifest
from nanogpt_async._batch._plan import BatchPlan, Planner
from nanogpt_async._batch._prepare import (
    END,
    FAIR_SHARE,
    BatchInput,
    Job,
    Preparer,
    entries_of,
    next_entry,
    price_list,
    priced,
)
from nanogpt_async._batch._results import BatchProgress, BatchSummary, ItemResult
from nanogpt_async._batch._resume import HEAVY_LOOKAHEAD, LOOKAHEAD, Ahead, Resume, head_ready
from nanogpt_async._batch._save import Saver
from nanogpt_async._batch._send import Attempts, Sender
from nanogpt_async._batch._settings import BatchSettings, ProgressCallback, own_pace_client
from nanogpt_async._batch._shared import FencedError, Shared
from nanogpt_async._batch._streak import ErrorStreak
from nanogpt_async._batch._tally import Tally
from nanogpt_async._errors import (
    APIConnectionError,
    APIResponseValidationError,
    GatewayError,
    NanoGPTError,
)
from nanogpt_async._types import NOT_GIVEN, NotGiven

if TYPE_CHECKING:
    from nanogpt_async._batch._shards import Shard
    from nanogpt_async._client import AsyncNanoGPT
    from nanogpt_async._output._responses import ImagesResponse

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
        client: AsyncNanoGPT,
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
            max_connections=client.max_connections,
            items=items,
            output_dir=output_dir,
            concurrency=concurrency,
            rps=rps,
            burst=burst,
            download_concurrency=download_concurrency,
            max_cost=max_cost,
            shared_budget=shared_budget,
            retry_failed=retry_failed,
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
        self._client = own_pace_client(client, settings)
        self._shared = Shared.build(self._client, settings)
        self._lifecycle = Lifecycle()
        self._tally = Tally(settings.total)
        self._preparer = Preparer(settings.defaults, self._lifecycle, self._tally)
        self._streak = ErrorStreak()
        # Replaced once the price list is read; a summary of a batch that never started
        # (no price for --max-cost) still needs one.
        self._budget = Budget(None)
        #: ``run()`` discards results: then they are not sent through the stream at all.
        self._results_wanted = True

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
        planner = Planner(await self._client.images.models())
        path = self._settings.manifest_path
        recorded = await anyio.to_thread.run_sync(read_manifest, path) if path else None
        resume = Resume(recorded, self._settings.folder, retry_failed=self._settings.retry_failed)
        entries = entries_of(self._items)
        index = 0
        while (entry := await next_entry(entries, self._preparer.fairness)) is not END:
            prepared = await self._preparer.prepare(entry, index)
            index += 1
            if not self._owns(prepared.index):
                continue
            self._tally.consumed += 1
            if isinstance(prepared, Job):
                prepared = await resume.resumed(prepared)
            if isinstance(prepared, Job):
                planner.add_request(prepared.body, prepared.n)
            elif prepared.status == "skipped":
                planner.add_skipped()
            else:
                planner.add_invalid(str(prepared.error))
        self._tally.input_read = True
        self._tally.ended = time.monotonic()
        self._lifecycle.advance(BatchState.DONE)
        return planner.plan()

    async def run(self) -> BatchSummary:
        """Run the whole batch, discarding per-item results; return the summary."""
        async with self:
            self._results_wanted = False
            async for _ in self:  # what was sent before
                pass
        return self.summary

    async def __aenter__(self) -> Self:
        """Prepare the output folder (sweep temp files, read the manifest) and start."""
        self._producer_scope = self._lifecycle.begin(BatchState.RUNNING)
        settings, lifecycle, tally = self._settings, self._lifecycle, self._tally
        tally.started = time.monotonic()
        # Sync primitives need a running event loop: made here, not in __init__.
        self._sender = Sender(self._client, settings.concurrency, lifecycle, tally, self._shared)
        self._saver = Saver(settings, lifecycle, tally)
        self._pipeline = anyio.Semaphore(settings.concurrency + settings.download_concurrency)
        prices = await price_list(self._client, settings.max_cost, settings.defaults)
        self._budget = Budget(settings.max_cost, prices)
        self._send, self._receive = anyio.create_memory_object_stream[ItemResult](
            settings.download_concurrency
        )
        self._aux_scope = anyio.CancelScope()
        self._heartbeat_scope = anyio.CancelScope()
        recorded = await self._saver.open()
        self._resume = Resume(recorded, settings.folder, retry_failed=settings.retry_failed)
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
                async for _ in self._receive:  # let in-flight items finish and be saved
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
        return self._receive.__aiter__()

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
                if self._settings.on_progress is None:
                    await anyio.sleep_forever()
                while True:
                    await anyio.sleep(self._settings.progress_interval)
                    self._report_progress()
            finally:
                if self._lifecycle.state != BatchState.DONE:
                    self._lifecycle.abort()

    def _report_progress(self) -> None:
        if self._settings.on_progress is not None:
            self._settings.on_progress(self.progress)

    async def _main(self) -> None:
        try:
            async with anyio.create_task_group() as work:
                with self._producer_scope:
                    await self._produce(work)
                self._lifecycle.advance(BatchState.DRAINING)
        finally:
            self._lifecycle.advance(BatchState.DONE)
            self._tally.ended = time.monotonic()
            self._aux_scope.cancel()
            self._heartbeat_scope.cancel()
            await self._saver.close()
            await self._shared.aclose()
            self._send.close()
            self._report_progress()

    async def _produce(self, work: anyio.abc.TaskGroup) -> None:
        """Read items ahead (their resume checks overlap) and start them in input order."""
        entries = entries_of(self._items)
        index = 0
        ahead: deque[Ahead] = deque()
        exhausted = False
        lifecycle, preparer, resume = self._lifecycle, self._preparer, self._resume
        async with anyio.create_task_group() as checks:
            resume.start_checks(checks)
            # Resuming from an in-memory input, read as far ahead as allowed: reading cannot
            # block, and the checkers take what is waiting in groups (one thread hop each).
            # An async input may block (lines piped in slowly), so it is only read on while
            # the next item's check still runs.
            greedy = resume.active and isinstance(entries, Iterator)
            if greedy:
                # Most items are skipped: no need to let each started one send at once (a
                # checkpoint per item lets an item started just before an input error send).
                preparer.fairness.interval = FAIR_SHARE
            heavy = 0  # items ahead carrying input images (megabytes each, maybe)
            while not lifecycle.halted:
                while (
                    not exhausted
                    and not lifecycle.halted
                    and len(ahead) < LOOKAHEAD
                    and heavy < HEAVY_LOOKAHEAD
                    and (greedy or not head_ready(ahead))
                ):
                    prepared = await preparer.next(entries, index)
                    if prepared is None:  # the end, or an input error (which halts)
                        exhausted = True
                        break
                    index += 1
                    if not self._owns(prepared.index):
                        continue  # another shard's: read (its id counts), not done here
                    self._tally.consumed += 1
                    ahead.append(resume.look_up(prepared))
                    heavy += ahead[-1].heavy
                if not ahead:
                    break
                head = ahead.popleft()
                heavy -= head.heavy
                if not await self._take(head, work):
                    break
            checks.cancel_scope.cancel()

    async def _take(self, head: Ahead, work: anyio.abc.TaskGroup) -> bool:
        """Start the next item, or report it (skipped, or failed unsent); ``False``: stop."""
        prepared = head.value if head.ready else await head.result()
        if isinstance(prepared, Job) and self._settings.max_cost:
            prepared = priced(prepared, self._budget)
        if isinstance(prepared, ItemResult):
            if prepared.status == "failed":
                await self._saver.record(prepared, None)
            await self._emit(prepared)
            return True
        return await self._start(prepared, work)

    async def _start(self, job: Job, work: anyio.abc.TaskGroup) -> bool:
        """Admit a job (pipeline slot, generation slot, budget) and start it; ``False``: stop."""
        slots = self._sender.slots
        await self._pipeline.acquire()
        try:
            # The slot is taken here, not in the item's task, so only items that can go
            # now are started (and reserve budget); the task hands it back.
            await slots.acquire_on_behalf_of(job)
            try:
                reservation = await self._budget.admit(job.per_image, job.n)
                if reservation is not None and not await self._shared.book(
                    job, reservation, self._budget
                ):
                    reservation = None
            except BaseException:
                slots.release_on_behalf_of(job)
                raise
        except BaseException:
            self._pipeline.release()
            raise
        if reservation is None:
            slots.release_on_behalf_of(job)
            self._pipeline.release()
            self._lifecycle.stop_for("budget")
            return False
        self._tally.in_flight += 1
        work.start_soon(self._process, job, reservation)
        return True

    def _owns(self, index: int) -> bool:
        shard = self._settings.shard
        return shard is None or shard.owns(index)

    # -- one item -----------------------------------------------------------------------

    async def _process(self, job: Job, reservation: Reservation) -> None:
        try:
            try:
                result = await self._generate_and_save(job, reservation)
            finally:
                self._tally.in_flight -= 1
                if job.holds_slot:
                    self._sender.slots.release_on_behalf_of(job)
            if result is not None:
                await self._emit(result)
        finally:
            self._pipeline.release()

    async def _generate_and_save(self, job: Job, reservation: Reservation) -> ItemResult | None:
        """Send, settle the budget, save, then let the fence know; ``None``: never sent."""
        attempts = Attempts(self._sender, job)
        response: ImagesResponse | None = None
        error: NanoGPTError | None = None
        settled = False
        try:
            try:
                response = await self._sender.send(job, attempts)
            except FencedError as fenced:
                self._budget.settle(reservation, None, job.n, charged=False)
                settled = True
                await self._shared.settle(job, None, charged=False)
                if fenced.record:
                    return await self._saver.record(fenced.result, None)
                return fenced.result
            except AbandonedError:
                if attempts.count == 0:
                    await self._shared.unclaim(job)
                    return None  # never sent: counted in not_started, a later run does it
                error = attempts.last_error
            except NanoGPTError as exc:
                error = exc
            answered = time.monotonic()
            # An answer means a charge, stated or not; a lost answer to a sent request may be one.
            charged = response is not None or _maybe_charged(error)
            cost = known_cost(response.cost) if response is not None else None
            images = len(response.data) if response is not None else job.n
            self._budget.settle(reservation, cost, images, charged=charged)
            settled = True
            await self._shared.settle(job, cost, charged=charged)
            if self._streak.observe(error if response is None else None) and error is not None:
                self._lifecycle.fail_fast(error, self._streak.describe())
            if cost is not None:
                self._tally.cost += cost
        finally:
            if not settled:
                self._budget.settle(reservation, None, job.n, charged=True)
                await self._shared.settle(job, None, charged=True)
        latency = answered - attempts.last_started if response is not None else None
        result = await self._saver.save(
            job,
            response=response,
            error=error,
            attempts=attempts,
            latency=latency,
            answered=answered,
        )
        await self._shared.finish_claim(job, result, charged=charged)
        return result

    async def _emit(self, result: ItemResult) -> None:
        self._tally.count(result.status)
        if not self._results_wanted:
            return
        # If nobody is listening any more, the manifest has it.
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            try:
                # No loop turn when there is room (the stream's send always takes one).
                self._send.send_nowait(result)
            except anyio.WouldBlock:
                await self._send.send(result)


def _maybe_charged(error: NanoGPTError | None) -> bool:
    # A gateway's page instead of NanoGPT's answer: the origin may have charged (issue 10.16).
    return isinstance(error, (APIResponseValidationError, GatewayError)) or (
        isinstance(error, APIConnectionError) and error.request_sent
    )
