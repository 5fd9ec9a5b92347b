"""The batch runner behind ``client.images.generate_many()``.

The data's way through, one task per item, all inside one task group::

    input (read lazily) -> producer: id, resume check, budget admission, a pipeline slot
      -> generation: adaptive concurrency limit, rate limit + shared 429 cooldown per attempt
      -> save: its own limit; decode/download, atomic writes, then one manifest line
      -> results stream (bounded) -> ``async for result in batch``

Memory is bounded by the pipeline slots (``concurrency + download_concurrency`` items at most
are between the producer and the results stream), never by the size of the input. When saving
falls behind, the slots fill up and the producer stops starting generations: unfetched signed
URLs cannot pile up. A save is shielded from cancellation (bounded by ``SAVE_TIMEOUT`` once the
batch is being cancelled) because its generation is already paid for.
"""

from __future__ import annotations

import contextlib
import errno
import math
import time
import urllib.parse
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from decimal import Decimal
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
from typing_extensions import Self

from nanogpt_async._batch._appender import GroupAppender
from nanogpt_async._batch._budget import (
    DEFAULT_MODEL,
    Budget,
    PriceList,
    Reservation,
    Sample,
    known_cost,
)
from nanogpt_async._batch._chunks import InputChunks
from nanogpt_async._batch._expiry import DeadlineGate, describe_expiry, url_expiry, urls_expiry
from nanogpt_async._batch._fence import RedisFence, busy_error, uncertain_error
from nanogpt_async._batch._manifest import (
    FileEntry,
    ManifestIndex,
    ManifestWriter,
    RecordedItem,
    read_manifest,
    sweep_temp_files,
    write_images,
)
from nanogpt_async._batch._names import (
    IdentityCounter,
    describe_request,
    image_file_name,
)
from nanogpt_async._batch._plan import BatchPlan, Planner
from nanogpt_async._batch._results import (
    BatchItem,
    BatchProgress,
    BatchSummary,
    ItemResult,
    ItemStatus,
    OutputWriteError,
)
from nanogpt_async._batch._shards import Shard
from nanogpt_async._batch._streak import ErrorStreak
from nanogpt_async._errors import (
    APIConnectionError,
    APIResponseValidationError,
    AuthenticationError,
    DailyLimitExceededError,
    GatewayError,
    ImageError,
    ImageURLExpiredError,
    InsufficientBalanceError,
    InvalidInputError,
    LocalRateLimitError,
    NanoGPTError,
    PermissionDeniedError,
    RateLimitError,
)
from nanogpt_async._input._body import (
    build_item_body,
    build_item_body_now,
    check_generation_fields,
)
from nanogpt_async._input._ids import RepeatedIds
from nanogpt_async._output._files import LOCK_NAME, FolderLock, describe_write_error
from nanogpt_async._pacing import AIMD
from nanogpt_async._pacing._budget import BudgetReservation, RedisBudget
from nanogpt_async._pacing._redis import RedisBackend
from nanogpt_async._sniff import sniff_image
from nanogpt_async._types import NOT_GIVEN, NotGiven

if TYPE_CHECKING:
    from collections.abc import Awaitable, Sequence

    from nanogpt_async._client import AsyncNanoGPT
    from nanogpt_async._output._responses import GeneratedImage, ImagesResponse

__all__ = ["SAVE_TIMEOUT", "Batch", "BatchInput", "ProgressCallback"]

#: One input item: a prompt, a `BatchItem`, or a dict with ``prompt`` (and ``id``, fields).
BatchEntry = str | BatchItem | Mapping[str, Any]
#: What ``generate_many`` reads from, lazily.
BatchInput = Iterable[BatchEntry] | AsyncIterable[BatchEntry]
ProgressCallback = Callable[[BatchProgress], object]

#: Once the batch is cancelled, paid-for results still being saved get this many seconds.
SAVE_TIMEOUT = 30.0
#: Bound on writing one manifest line under cancellation.
_RECORD_TIMEOUT = 10.0

#: Errors no retry fixes: stop scheduling at the first one.
_FATAL = (
    AuthenticationError,
    InsufficientBalanceError,
    PermissionDeniedError,
    DailyLimitExceededError,
)


class _Abandoned(Exception):  # noqa: N818 - internal signal, never escapes
    """An attempt not sent because the batch is stopping."""


class _RepeatedIdError(InvalidInputError):
    """Two input items carry the same user id."""


class _Fenced(Exception):  # noqa: N818 - internal signal, never escapes
    """The fence refused the item (done elsewhere, busy, uncertain): nothing is sent."""

    def __init__(self, result: ItemResult, *, record: bool) -> None:
        super().__init__(result.id)
        self.result = result
        self.record = record


class _Job:
    """One item on its way: who it is and the body to send."""

    __slots__ = (
        "body",
        "booking",
        "claimed",
        "edit",
        "holds_slot",
        "id",
        "index",
        "n",
        "per_image",
        "request",
        "started_at",
    )

    def __init__(
        self,
        index: int,
        item_id: str,
        body: dict[str, Any],
        request: dict[str, Any],
        started_at: float,
    ) -> None:
        self.index = index
        self.id = item_id
        self.body = body
        self.request = request
        n = body.get("n", 1)
        self.n = n if isinstance(n, int) and n > 0 else 1
        self.started_at = started_at
        self.holds_slot = True
        self.edit = False  # an "operation": "edit" item goes to POST /images/edits
        self.per_image: Decimal | None = None  # the budget's estimate, with max_cost
        self.booking: BudgetReservation | None = None  # its share of a shared budget
        self.claimed = False  # claimed in the fence (at its first turn, just before sending)


class _Attempts:
    """The per-item `TurnHooks`: when to take turns, and counting.

    Turns come from the client's pacer (one limiter per key, shared with every other call the
    client makes); the batch only decides whether an attempt may still go.
    """

    def __init__(self, batch: Batch, job: _Job | None = None) -> None:
        self._batch = batch
        self._job = job
        self.count = 0
        self.last_error: NanoGPTError | None = None
        self.last_started = time.monotonic()

    async def take_turn(self, wait_turn: Callable[[], Awaitable[None]]) -> None:
        await self._batch._before_attempt(self, wait_turn)  # noqa: SLF001 - the runner's own
        if self.count == 0 and self._job is not None:
            # Claimed once its turn has come, not when admitted: an item waiting for a turn
            # in a process that dies was never sent, and must not read as "may be charged"
            # (W10: claiming at admission left 192 such items uncertain, 4 of them charged).
            await self._batch._claim(self._job)  # noqa: SLF001
        self.count += 1
        self.last_started = time.monotonic()

    async def after_attempt(self, error: BaseException | None) -> None:
        if isinstance(error, NanoGPTError):
            self.last_error = error
        self._batch._after_attempt(error)  # noqa: SLF001


def _normalise(entry: object) -> tuple[str | None, dict[str, Any]]:
    """``(user id, fields)`` of one input entry; raises InvalidInputError for anything else."""
    if isinstance(entry, str):
        return None, {"prompt": entry}
    if type(entry) is not dict and isinstance(entry, BatchItem):  # a dict: no ABC checks
        if "prompt" in entry.params or "id" in entry.params:
            raise InvalidInputError("BatchItem.params must not repeat 'prompt' or 'id'")
        return entry.id, {**entry.params, "prompt": entry.prompt}
    if type(entry) is dict or isinstance(entry, Mapping):
        fields = {str(k): v for k, v in entry.items()}
        item_id = fields.pop("id", None)
        if item_id is not None and not isinstance(item_id, (str, int)):
            raise InvalidInputError(f"an item id must be a string, got {item_id!r}")
        if "prompt" not in fields:
            raise InvalidInputError(f"a batch item needs a 'prompt', got keys {sorted(fields)}")
        return (str(item_id) if item_id is not None else None), fields
    raise InvalidInputError(
        f"a batch item must be a prompt string, a BatchItem or a dict, got {type(entry).__name__}"
    )


def _error_json(error: NanoGPTError | None) -> dict[str, Any] | None:
    if error is None:
        return None
    status = getattr(error, "status_code", None)
    code = getattr(error, "code", None)
    request_id = getattr(error, "request_id", None)
    return {
        "type": type(error).__name__,
        "status": status if isinstance(status, int) else None,
        "code": code if isinstance(code, str) else None,
        "message": str(error),
        "request_id": request_id if isinstance(request_id, str) else None,
    }


def _check_rps(rps: object) -> None:
    if isinstance(rps, NotGiven) or rps is None:
        return
    if isinstance(rps, bool) or not isinstance(rps, (int, float)) or not 0 < rps < math.inf:
        raise InvalidInputError(f"rps must be a positive number or None, got {rps!r}")


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{name} must be a whole number of at least 1, got {value!r}")
    return value


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

    def __init__(  # noqa: C901, PLR0915 - argument checks, one per argument
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
        self._client = client
        self._concurrency = _check_positive_int("concurrency", concurrency)
        self._download_concurrency = _check_positive_int(
            "download_concurrency", download_concurrency
        )
        limit = client.max_connections
        if concurrency > limit:
            raise InvalidInputError(
                f"concurrency ({concurrency}) must not exceed the client's connection pool "
                f"(max_connections={limit}): requests beyond it would only queue for a "
                "connection and time out. Lower it or create the client with "
                f"AsyncNanoGPT(max_connections={concurrency})"
            )
        # Downloads have a pool of the same size of their own; more workers would only queue.
        self._download_concurrency = min(self._download_concurrency, limit)
        _check_rps(rps)
        if burst is not None:
            _check_positive_int("burst", burst)
        if max_cost is not None:
            if isinstance(max_cost, bool) or not isinstance(max_cost, (int, float, Decimal)):
                raise InvalidInputError(f"max_cost must be a number of USD, got {max_cost!r}")
            if not max_cost >= 0:
                raise InvalidInputError(f"max_cost must be >= 0, got {max_cost!r}")
        if not progress_interval > 0:
            raise InvalidInputError(f"progress_interval must be > 0, got {progress_interval!r}")
        if (
            not manifest_name
            or manifest_name in (".", "..")
            or any(sep in manifest_name for sep in "/\\\0")
        ):
            raise InvalidInputError(
                f"manifest_name must be a plain file name, not {manifest_name!r}"
            )
        if total is not None and (isinstance(total, bool) or total < 0):
            raise InvalidInputError(f"total must be >= 0, got {total!r}")
        self._defaults = dict(defaults or {})
        for reserved in ("prompt", "id"):
            if reserved in self._defaults:
                raise InvalidInputError(f"{reserved!r} is per item, not a batch default")
        check_generation_fields({"prompt": "defaults check", **self._defaults})

        self._items = items
        self._total = total
        if self._total is None and hasattr(items, "__len__"):
            self._total = len(items)  # type: ignore[arg-type]
        self._shard = _shard(shard)
        self._total = _shard_total(self._total, self._shard)
        manifest_name = _shard_manifest(manifest_name, self._shard)
        self._folder = Path(output_dir) if output_dir is not None else None
        self._manifest_path = self._folder / manifest_name if self._folder is not None else None
        if not isinstance(rps, NotGiven) or burst is not None:
            # An explicit pace for this batch alone: a pacer of its own (see generate_many).
            own_rps = client.pacing.max_rate if isinstance(rps, NotGiven) else rps
            self._client = client._with_own_pacer(rps=own_rps, burst=burst or 1)  # noqa: SLF001
        self._paced = self._client.pacing.max_rate is not None
        self._max_cost = Decimal(str(max_cost)) if max_cost is not None else None
        self._shared_budget = self._make_shared_budget(shared_budget)
        self._fence = self._make_fence(job_id, fence_lease)
        self._retry_failed = retry_failed
        self._on_progress = on_progress
        self._progress_interval = progress_interval

        # Run state (sync primitives need a running event loop: made in __aenter__).
        self._entered = False
        self._dry = False
        self._halted = False
        self._producer_finished = False
        self._main_finished = False
        self._stop_reason: str | None = None
        self._fatal_error: NanoGPTError | None = None
        self._aborting = False
        self._recorded: ManifestIndex | None = None
        #: ``run()`` discards results: then they are not sent through the stream at all.
        self._results_wanted = True
        self._writer: ManifestWriter | None = None
        self._appender: GroupAppender | None = None
        self._lock: FolderLock | None = None
        self._ids = IdentityCounter()
        self._streak = ErrorStreak()
        self._user_ids = RepeatedIds()
        self._input_error: Exception | None = None
        self._waiting: set[anyio.CancelScope] = set()
        self._saving: set[anyio.CancelScope] = set()
        self._consumed = 0
        self._input_read = False
        # Replaced once the price list is read; a summary of a batch that never started
        # (no price for --max-cost) still needs one.
        self._budget = Budget(None)
        self._ok = self._failed = self._skipped = 0
        self._in_flight = 0
        self._attempts = 0
        self._rate_limited = 0
        self._cost = Decimal(0)
        self._latency = Sample()
        self._delay = Sample()
        self._started = time.monotonic()
        self._ended: float | None = None

    # -- public surface -----------------------------------------------------------------

    def stop(self) -> None:
        """Stop gracefully: start no new item; in-flight items finish and are saved.

        Safe to call more than once, and from a signal handler on the event loop's thread
        (the CLI's first Ctrl-C). Items never started are counted in ``not_started``; running
        the same batch into the same folder again does them.
        """
        if self._stop_reason is None and not self._producer_finished:
            self._stop_reason = "stopped"
        self._halt()

    @property
    def summary(self) -> BatchSummary:
        """Counts, cost, rates and timings; final once the ``async with`` block has exited."""
        done = self._ok + self._failed + self._skipped
        total = self._total if self._total is not None else self._consumed
        elapsed = self._elapsed()
        worked = self._ok + self._failed
        return BatchSummary(
            total=total,
            ok=self._ok,
            failed=self._failed,
            skipped=self._skipped,
            not_started=max(0, total - done - self._in_flight),
            cost=float(self._cost),
            elapsed=elapsed,
            rate=worked / elapsed if elapsed > 0 else 0.0,
            latency_p50=self._latency.quantile(0.5),
            latency_p99=self._latency.quantile(0.99),
            download_delay_p50=self._delay.quantile(0.5),
            download_delay_p99=self._delay.quantile(0.99),
            download_delay_max=self._delay.max,
            attempts=self._attempts,
            rate_limited=self._rate_limited,
            stopped_reason=self._stop_reason,
            fatal_error=self._fatal_error,
            manifest=self._manifest_path,
            unpriced=self._budget.unpriced if self._entered else 0,
            # With no length given, what was never read cannot be counted: say so instead.
            unread_input=self._total is None and not self._input_read,
        )

    @property
    def progress(self) -> BatchProgress:
        """A progress snapshot now (what ``on_progress`` receives)."""
        done = self._ok + self._failed + self._skipped
        elapsed = self._elapsed()
        worked = self._ok + self._failed
        rate = worked / elapsed if elapsed > 0 else 0.0
        eta = None
        if self._total is not None:
            left = max(0, self._total - done)
            eta = 0.0 if left == 0 else (left / rate if rate > 0 else None)
        return BatchProgress(
            total=self._total,
            done=done,
            ok=self._ok,
            failed=self._failed,
            skipped=self._skipped,
            in_flight=self._in_flight,
            cost=float(self._cost),
            rate=rate,
            eta=eta,
            elapsed=elapsed,
        )

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
        if self._entered:
            raise RuntimeError("a Batch runs once; call generate_many() again for another run")
        self._entered = self._dry = True
        planner = Planner(await self._client.images.models())
        self._budget = Budget(None)
        if self._manifest_path is not None:
            self._recorded = await anyio.to_thread.run_sync(read_manifest, self._manifest_path)
        entries = _entries(self._items)
        index = 0
        while (entry := await _next_entry(entries)) is not _END:
            prepared = await self._prepare(entry, index)
            index += 1
            if not self._owns(prepared.index):
                continue
            self._consumed += 1
            if isinstance(prepared, _Job):
                prepared = await self._resumed(prepared)
            if isinstance(prepared, _Job):
                planner.add_request(prepared.body, prepared.n)
            elif prepared.status == "skipped":
                planner.add_skipped()
            else:
                planner.add_invalid(str(prepared.error))
        self._input_read = True
        self._ended = time.monotonic()
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
        if self._entered:
            raise RuntimeError("a Batch runs once; call generate_many() again for another run")
        self._entered = True
        self._started = time.monotonic()
        self._concurrency_control = AIMD(self._concurrency, floor=1, beta=0.5)
        self._generation_slots = anyio.CapacityLimiter(self._concurrency)
        self._save_gate = DeadlineGate(self._download_concurrency)
        self._pipeline = anyio.Semaphore(self._concurrency + self._download_concurrency)
        self._budget = Budget(self._max_cost, await self._price_list())
        self._send, self._receive = anyio.create_memory_object_stream[ItemResult](
            self._download_concurrency
        )
        self._producer_scope = anyio.CancelScope()
        self._aux_scope = anyio.CancelScope()
        self._heartbeat_scope = anyio.CancelScope()
        if self._folder is not None:
            try:
                self._recorded, writer = await anyio.to_thread.run_sync(self._open_folder)
                self._writer, self._appender = writer, GroupAppender(writer.append_many)
            except OSError as exc:
                raise OutputWriteError(
                    f"cannot prepare the output folder {str(self._folder)!r}: "
                    f"{describe_write_error(self._folder, exc)}"
                ) from exc
        self._group = anyio.create_task_group()
        try:
            await self._group.__aenter__()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._close_folder, self._writer)
            raise
        self._group.start_soon(self._aux)
        if self._fence is not None:
            self._group.start_soon(self._fence_heartbeat)
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
                if not self._main_finished:
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
        if exc is None and self._input_error is not None:
            raise self._input_error
        return suppressed

    def __aiter__(self) -> AsyncIterator[ItemResult]:
        """Results as items finish (ok, failed, or skipped because done before)."""
        if not self._entered:
            raise RuntimeError("iterate a Batch inside 'async with batch:'")
        return self._receive.__aiter__()

    def __repr__(self) -> str:
        """Show where it writes and how far it got."""
        progress = self.progress
        return (
            f"Batch(output_dir={str(self._folder) if self._folder else None!r}, "
            f"done={progress.done}, total={progress.total}, in_flight={progress.in_flight})"
        )

    # -- the run ------------------------------------------------------------------------

    async def _price_list(self) -> PriceList | None:
        """The image-models pricing, fetched once for a budgeted run (``None`` without one).

        Raises:
            InvalidInputError: a budget is set and there is no price estimate for the batch's
                model: the run refuses to start rather than spend blind.
        """
        if not self._max_cost:
            return None  # no budget, or one of 0: nothing will be sent, no estimate needed
        model = self._defaults.get("model")
        model = model if isinstance(model, str) else None
        try:
            prices = PriceList(await self._client.images.models())
        except NanoGPTError as exc:
            raise InvalidInputError(
                "max_cost needs a price estimate, but the image-models list (its pricing) could "
                f"not be read: {exc}. Try again, or run without max_cost"
            ) from exc
        # Items may name their own model; the batch-wide one (or, with none, any price at
        # all) must be there, else nothing could be estimated.
        if not len(prices) or (model is not None and not prices.has_model(model)):
            what = f"model {model!r}" if len(prices) else "any model"
            raise InvalidInputError(
                f"max_cost needs a price estimate, but the image-models list has no price for "
                f"{what}. Check the model name (`nanogpt-async models` lists them), or run "
                "without max_cost"
            )
        return prices

    def _open_folder(self) -> tuple[ManifestIndex, ManifestWriter]:
        """Lock the folder, then sweep temp files and read the manifest (blocking: a thread).

        The lock comes first: a second run must neither sweep the temp files of a running one
        (it would lose images being written) nor read a manifest that is still growing.
        """
        assert self._folder is not None  # noqa: S101 - only called with a folder
        assert self._manifest_path is not None  # noqa: S101
        self._folder.mkdir(parents=True, exist_ok=True)
        shard = self._shard
        self._lock = FolderLock.acquire(
            self._folder, shard.lock_name if shard is not None else LOCK_NAME
        )
        try:
            sweep_temp_files(self._folder, shard.owns_temp_file if shard is not None else None)
            recorded = read_manifest(self._manifest_path)
            return recorded, ManifestWriter(self._manifest_path)
        except BaseException:
            self._close_folder(None)
            raise

    def _close_folder(self, writer: ManifestWriter | None) -> OSError | None:
        """Close the manifest (fsync), then unlock the folder; the close's error, if any."""
        failure = None
        try:
            if writer is not None:
                writer.close()
        except OSError as exc:
            failure = exc
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None
        return failure

    def _elapsed(self) -> float:
        end = self._ended if self._ended is not None else time.monotonic()
        return max(0.0, end - self._started)

    def _adapt_concurrency(self, error: BaseException | None) -> None:
        """AIMD over the generation limit: up on success, halved on a 429 when unpaced.

        With a rate limit, a 429 is the pacer's business (it holds every caller for the
        cooldown and lowers the rate): cutting the concurrency too starved the batch, down to
        2.8 items/s against a server allowing 10 req/s (issue 10, item 15). Without one, the
        concurrency is the only lever.
        """
        control = self._concurrency_control
        before = int(control.value)
        if error is None:
            control.increase()
        elif isinstance(error, RateLimitError) and not self._paced:
            control.hold = max(error.retry_after or 1.0, 0.5)
            control.decrease(time.monotonic())
        after = max(1, int(control.value))
        if after != before:
            self._generation_slots.total_tokens = after

    def _halt(self) -> None:
        """Stop starting items and wake attempts waiting for their turn."""
        self._halted = True
        if self._entered:
            self._producer_scope.cancel()
        for scope in list(self._waiting):
            scope.cancel()

    def _fail_fast(self, error: NanoGPTError, reason: str | None = None) -> None:
        if self._fatal_error is None:
            self._fatal_error = error
            self._stop_reason = f"fatal: {reason or f'{type(error).__name__}: {error}'}"
        self._halt()

    async def _fence_heartbeat(self) -> None:
        assert self._fence is not None  # noqa: S101 - only started with a fence
        with self._heartbeat_scope:
            await self._fence.heartbeat()

    async def _aux(self) -> None:
        """Progress reports; and, when the batch is torn down, bound the shielded saves."""
        with self._aux_scope:
            try:
                if self._on_progress is None:
                    await anyio.sleep_forever()
                while True:
                    await anyio.sleep(self._progress_interval)
                    self._report_progress()
            finally:
                if not self._main_finished:
                    self._abort()

    def _abort(self) -> None:
        """The batch is being cancelled: give paid-for saves ``SAVE_TIMEOUT`` more seconds."""
        # A cancel after stop() (the CLI's second Ctrl-C) abandons what stop() let finish:
        # "cancelled" is what happened, and what the docs promise.
        if self._stop_reason in (None, "stopped"):
            self._stop_reason = "cancelled"
        self._aborting = True
        self._halt()
        deadline = anyio.current_time() + SAVE_TIMEOUT
        for scope in self._saving:
            scope.deadline = min(scope.deadline, deadline)

    def _report_progress(self) -> None:
        if self._on_progress is not None:
            self._on_progress(self.progress)

    async def _main(self) -> None:
        try:
            async with anyio.create_task_group() as work:
                with self._producer_scope:
                    await self._produce(work)
                self._producer_finished = True
        finally:
            self._main_finished = True
            self._ended = time.monotonic()
            self._aux_scope.cancel()
            self._heartbeat_scope.cancel()
            if self._folder is not None:
                with anyio.CancelScope(shield=True):
                    failure = await anyio.to_thread.run_sync(self._close_folder, self._writer)
                if failure is not None and self._writer is not None:
                    self._manifest_failed(self._writer, failure)
            if self._shared_budget is not None:
                with anyio.CancelScope(shield=True) as scope:
                    scope.deadline = anyio.current_time() + _RECORD_TIMEOUT
                    await self._shared_budget.aclose()
            if self._fence is not None:
                with anyio.CancelScope(shield=True) as scope:
                    scope.deadline = anyio.current_time() + _RECORD_TIMEOUT
                    await self._fence.aclose()
            self._send.close()
            self._report_progress()

    async def _produce(self, work: anyio.abc.TaskGroup) -> None:
        entries = _entries(self._items)
        if self._recorded is not None and len(self._recorded):
            await self._produce_resumed(entries, work)
            return
        index = 0
        while not self._halted:
            prepared = await self._next_prepared(entries, index)
            if prepared is None:  # the end, or an input error (which halts)
                break
            index += 1
            if not self._owns(prepared.index):
                continue  # another shard's: read (its id counts), not done here
            self._consumed += 1
            if not await self._take(prepared, work):
                break

    async def _produce_resumed(
        self, entries: Iterator[Any] | AsyncIterator[Any], work: anyio.abc.TaskGroup
    ) -> None:
        """Resume: items in chunks (`InputChunks`), each triaged in one worker-thread call.

        Each chunk is prepared, looked up and checked against its files in one call
        (`_triage`): no task, event or stream per item. A million recorded items took 56 s
        (about 50 µs an item) going through the per-item path; see docs/benchmarks.md.
        """
        index = 0
        async with InputChunks(entries, size=_TRIAGE_CHUNK, fair_share=_FAIR_SHARE) as chunks:
            while not self._halted:
                chunk, failure = await chunks.next()
                ended = chunks.ended
                if ended and failure is None:
                    self._input_read = True
                if not await self._take_chunk(chunk, index, work):
                    return
                index += len(chunk)
                if failure is not None:
                    self._input_failed(failure)
                if ended:
                    return

    async def _take_chunk(self, chunk: list[object], index: int, work: anyio.abc.TaskGroup) -> bool:
        """Triage ``chunk`` (input item ``index`` first) and take its items; ``False``: stop."""
        done = 0
        while done < len(chunk) and not self._halted:
            outcomes = await anyio.to_thread.run_sync(self._triage, chunk[done:], index + done)
            for triaged in outcomes:
                if self._halted or not await self._take_triaged(triaged, work):
                    return False
            done += len(outcomes)
            if done < len(chunk) and not self._halted:  # it has input images: on the loop
                prepared = await self._prepare_or_halt(chunk[done], index + done)
                done += 1
                if prepared is None:
                    return False
                outcome: _Triaged = _NOT_MINE
                if self._owns(prepared.index):
                    outcome = await self._resumed(prepared)
                if not await self._take_triaged(outcome, work):
                    return False
        return not self._halted

    def _triage(self, entries: Sequence[object], first_index: int) -> list[_Triaged]:
        """Prepare ``entries`` and check them against earlier runs (blocking: a worker thread).

        One outcome per entry, in order, up to the first that needs the loop: an item with
        input images (read and encoded in threads of their own) is left for `_prepare`; a
        repeated id ends the list as its error. Skipped items are only counted when nobody
        reads the results (`run`).
        """
        outcomes: list[_Triaged] = []
        looked_up: list[int] = []
        for offset, entry in enumerate(entries):
            try:
                prepared = self._prepare_now(entry, first_index + offset)
            except _RepeatedIdError as exc:
                outcomes.append(exc)
                break
            if prepared is None:
                break
            if not self._owns(prepared.index):
                outcomes.append(_NOT_MINE)
                continue
            if isinstance(prepared, _Job):
                looked_up.append(len(outcomes))
            outcomes.append(prepared)
        if looked_up:
            jobs = [outcomes[position] for position in looked_up]
            found = self._earlier_runs([job.id for job in jobs if isinstance(job, _Job)])
            for position, job, recorded in zip(looked_up, jobs, found, strict=True):
                if recorded is not None and isinstance(job, _Job):
                    outcomes[position] = (
                        self._skipped_result(job, recorded) if self._results_wanted else _SKIPPED
                    )
        return outcomes

    async def _take_triaged(self, outcome: _Triaged, work: anyio.abc.TaskGroup) -> bool:
        """`_take` for an outcome of `_triage`; ``False``: stop."""
        if outcome is _NOT_MINE:
            return True  # another shard's: read (its id counts), not done here
        if isinstance(outcome, _RepeatedIdError):
            self._input_failed(outcome)
            return False
        self._consumed += 1
        if outcome is _SKIPPED:
            self._skipped += 1
            return True
        assert isinstance(outcome, (_Job, ItemResult))  # noqa: S101 - the rest of _Triaged
        return await self._take(outcome, work)

    async def _take(self, prepared: _Job | ItemResult, work: anyio.abc.TaskGroup) -> bool:
        """Start the next item, or report it (skipped, or failed unsent); ``False``: stop."""
        if isinstance(prepared, _Job):
            prepared = self._priced(prepared)
        if isinstance(prepared, ItemResult):
            if prepared.status == "failed":
                await self._record(prepared, None)
            await self._emit(prepared)
            return True
        return await self._start(prepared, work)

    async def _start(self, prepared: _Job, work: anyio.abc.TaskGroup) -> bool:
        """Admit a job (pipeline slot, generation slot, budget) and start it; ``False``: stop."""
        await self._pipeline.acquire()
        try:
            # The slot is taken here, not in the item's task, so only items that can go
            # now are started (and reserve budget); the task hands it back.
            await self._generation_slots.acquire_on_behalf_of(prepared)
            try:
                reservation = await self._budget.admit(prepared.per_image, prepared.n)
                if reservation is not None and not await self._book_shared(prepared, reservation):
                    reservation = None
            except BaseException:
                self._generation_slots.release_on_behalf_of(prepared)
                raise
        except BaseException:
            self._pipeline.release()
            raise
        if reservation is None:
            self._generation_slots.release_on_behalf_of(prepared)
            self._pipeline.release()
            if self._stop_reason is None:
                self._stop_reason = "budget"
            self._halt()
            return False
        self._in_flight += 1
        work.start_soon(self._process, prepared, reservation)
        return True

    def _make_shared_budget(self, name: str | None) -> RedisBudget | None:
        if name is None:
            return None
        backend = self._client._pacer.backend  # noqa: SLF001 - the client's own pacer
        if self._max_cost is None or not isinstance(backend, RedisBackend):
            raise InvalidInputError(
                "shared_budget needs max_cost and a client with limits_url (redis://...): "
                "the cap is kept in Redis"
            )
        key = self._client._api_key  # noqa: SLF001 - only hashed, for the Redis key names
        return RedisBudget(backend.url, key=key, max_cost=self._max_cost, name=name)

    def _make_fence(self, job_id: str | None, lease: float) -> RedisFence | None:
        """The at-most-once fence: with a shard or a job id, and ``limits_url`` (Redis)."""
        if self._shard is None and job_id is None:
            return None
        backend = self._client._pacer.backend  # noqa: SLF001 - the client's own pacer
        if not isinstance(backend, RedisBackend) or self._folder is None:
            if job_id is None:
                return None  # shards without Redis: disjoint by construction, no fence
            raise InvalidInputError(
                "job_id names an at-most-once fence in Redis: it needs output_dir and a client "
                "with limits_url (redis://...)"
            )
        if job_id is None:
            job_id = str(self._folder.resolve())
        key = self._client._api_key  # noqa: SLF001 - only hashed, for the Redis key names
        return RedisFence(backend.url, key=key, job_id=job_id, folder=self._folder, lease=lease)

    def _owns(self, index: int) -> bool:
        return self._shard is None or self._shard.owns(index)

    async def _book_shared(self, job: _Job, reservation: Reservation) -> bool:
        """Book the request's estimate in the shared budget too; ``False``: it is spent."""
        if self._shared_budget is None:
            return True
        # Waits while Redis cannot be checked (fails closed).
        job.booking = await self._shared_budget.reserve(reservation.amount)
        if job.booking is None:
            self._budget.settle(reservation, None, job.n, charged=False)
            return False
        return True

    async def _settle_shared(self, job: _Job, cost: Decimal | None, *, charged: bool) -> None:
        if self._shared_budget is None or job.booking is None:
            return
        booking, job.booking = job.booking, None
        # Shielded and bounded: if it cannot be written, the booking expires as spent.
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + _RECORD_TIMEOUT
            await self._shared_budget.settle(booking, cost, maybe_charged=charged)

    async def _next_prepared(
        self, entries: Iterator[Any] | AsyncIterator[Any], index: int
    ) -> _Job | ItemResult | None:
        """The next input item, prepared; ``None`` at the end of the input or on its error."""
        try:
            entry = await _next_entry(entries)
        except Exception as exc:  # noqa: BLE001 - the input's own error, raised at the end
            self._input_failed(exc)
            return None
        if entry is _END:
            self._input_read = True
            return None
        return await self._prepare_or_halt(entry, index)

    async def _prepare_or_halt(self, entry: object, index: int) -> _Job | ItemResult | None:
        """`_prepare`; ``None`` after a repeated id, which stops the batch as an input error."""
        try:
            return await self._prepare(entry, index)
        except _RepeatedIdError as exc:
            self._input_failed(exc)
            return None

    async def _prepare(self, entry: object, index: int) -> _Job | ItemResult:
        """Normalise an entry and give it its id (in input order: ids count occurrences)."""
        prepared = self._prepare_now(entry, index)
        if prepared is not None:
            return prepared
        started = time.time()  # input images to read and encode: in worker threads
        user_id: str | None = None
        try:
            user_id, merged = self._fields(entry)
            operation, body = await build_item_body(merged)
        except (InvalidInputError, UnicodeEncodeError) as exc:
            return _invalid(entry, user_id, index, started, exc)
        if user_id is not None:
            self._check_unique(user_id, index)
        # An edit's id and manifest line say so; a generation's stay as before (resume works).
        described = body if operation == "generate" else {**body, "operation": operation}
        # Hashing megabytes of data URLs would stall the event loop: a worker thread.
        digest, request = await anyio.to_thread.run_sync(describe_request, described)
        item_id = user_id if user_id is not None else self._ids.next_id(digest)
        job = _Job(index, item_id, body, request, started)
        job.edit = operation == "edit"
        return job

    def _prepare_now(self, entry: object, index: int) -> _Job | ItemResult | None:
        """`_prepare` for an item without input images, at once; ``None`` for the others.

        Blocking only in the sense of CPU: `_triage` runs it in a worker thread, in order.
        """
        started = time.time()
        user_id: str | None = None
        try:
            user_id, merged = self._fields(entry)
            built = build_item_body_now(merged)
        except (InvalidInputError, UnicodeEncodeError) as exc:
            return _invalid(entry, user_id, index, started, exc)
        if built is None:
            return None
        _, body = built
        if user_id is not None:
            self._check_unique(user_id, index)
            # The id is the user's: no digest needed, and no image to show as a placeholder.
            return _Job(index, user_id, body, dict(body), started)
        digest, request = describe_request(body)
        return _Job(index, self._ids.next_id(digest), body, request, started)

    def _fields(self, entry: object) -> tuple[str | None, dict[str, Any]]:
        """``(user id, fields with the batch's defaults)``; raises for an invalid entry."""
        user_id, fields = _normalise(entry)
        given = {k: v for k, v in fields.items() if v is not None}
        merged = {**self._defaults, **given} if self._defaults else given
        prompt = merged.get("prompt")
        if isinstance(prompt, str):
            prompt.encode("utf-8")  # a lone surrogate cannot be sent as JSON
        return user_id, merged

    async def _resumed(self, job: _Job | ItemResult) -> _Job | ItemResult:
        """``job``, or its ``skipped`` result when an earlier run did it (checked in a thread)."""
        if isinstance(job, ItemResult) or self._recorded is None or not len(self._recorded):
            return job
        [recorded] = await anyio.to_thread.run_sync(self._earlier_runs, [job.id])
        return job if recorded is None else self._skipped_result(job, recorded)

    def _skipped_result(self, job: _Job, recorded: RecordedItem) -> ItemResult:
        folder = self._folder or Path()
        return ItemResult(
            id=job.id,
            index=job.index,
            request=job.request,
            status="skipped",
            files=[folder / entry.path for entry in recorded.files],
            started_at=job.started_at,
            finished_at=time.time(),
            request_id=recorded.request_id,
        )

    def _priced(self, job: _Job) -> _Job | ItemResult:
        """Give a budgeted job its price estimate; an item with none fails, unsent."""
        if not self._max_cost or self._dry:
            return job  # no budget, or nothing may be spent (the budget stops it), or a plan
        model, size = job.body.get("model"), job.body.get("size")
        job.per_image = self._budget.estimate(
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

    def _check_unique(self, item_id: str, index: int) -> None:
        """Refuse a user id given twice: both items would share one manifest record."""
        earlier = self._user_ids.add(item_id, index)
        if earlier is not None:
            where = f"item {earlier}" if earlier >= 0 else "an earlier item"
            raise _RepeatedIdError(
                f"item {index} has the id {item_id!r} of {where} (counting from 0); every id "
                "must be unique, as a re-run finds finished items by id. The batch stopped "
                "before sending it"
            )

    def _input_failed(self, error: Exception) -> None:
        """The input raised (a bad line, a repeated id): stop as `stop` does.

        In-flight items are paid for: they finish and are saved, then the error is raised
        when the ``async with`` block exits.
        """
        self._input_error = error
        if self._stop_reason is None:
            self._stop_reason = f"input error: {error}"
        self._halt()

    def _earlier_runs(self, item_ids: Sequence[str]) -> list[RecordedItem | None]:
        """What an earlier run did that this one should not redo, per id (blocking: a thread).

        ``None`` when the item must run: never recorded, recorded failed with ``retry_failed``,
        or recorded ok but a file has gone or changed since (size, then stamp or SHA-256).
        """
        assert self._recorded is not None  # noqa: S101 - only called when resuming
        assert self._folder is not None  # noqa: S101 - a manifest implies a folder
        return self._recorded.finished(self._folder, item_ids, retry_failed=self._retry_failed)

    # -- one item -----------------------------------------------------------------------

    async def _before_attempt(
        self, attempts: _Attempts, wait_turn: Callable[[], Awaitable[None]]
    ) -> None:
        while True:
            self._check_may_send(attempts)
            with anyio.CancelScope() as scope:
                self._waiting.add(scope)
                try:
                    await wait_turn()
                except (LocalRateLimitError, DailyLimitExceededError) as exc:
                    # Refused by the pacer before sending (a cooldown longer than max_wait,
                    # e.g. a Retry-After of 99999999; or the daily cap): waiting would only
                    # freeze the batch behind an ETA. Stop it; unsent items stay not_started
                    # and a later run does them.
                    self._fail_fast(exc)
                    raise _Abandoned from exc
                finally:
                    self._waiting.discard(scope)
            if not scope.cancelled_caught:
                self._check_may_send(attempts)
                self._attempts += 1
                return

    def _check_may_send(self, attempts: _Attempts) -> None:
        # After a fatal error nothing more is sent; after stop() only retries of in-flight items.
        if self._fatal_error is not None or (self._halted and attempts.count == 0):
            raise _Abandoned

    def _after_attempt(self, error: BaseException | None) -> None:
        if isinstance(error, RateLimitError):
            self._rate_limited += 1
        self._adapt_concurrency(error)
        if isinstance(error, _FATAL):
            self._fail_fast(error)

    async def _process(self, job: _Job, reservation: Reservation) -> None:
        try:
            try:
                result = await self._generate_and_save(job, reservation)
            finally:
                self._in_flight -= 1
                if job.holds_slot:
                    self._generation_slots.release_on_behalf_of(job)
            if result is not None:
                await self._emit(result)
        finally:
            self._pipeline.release()

    async def _generate_and_save(self, job: _Job, reservation: Reservation) -> ItemResult | None:
        attempts = _Attempts(self, job)
        response: ImagesResponse | None = None
        error: NanoGPTError | None = None
        settled = False
        try:
            try:
                api = self._client.images
                send = api.edit_from_body if job.edit else api.generate_from_body
                response = await send(job.body, hooks=attempts)
            except _Fenced as fenced:
                self._budget.settle(reservation, None, job.n, charged=False)
                settled = True
                await self._settle_shared(job, None, charged=False)
                if fenced.record:
                    return await self._record(fenced.result, None)
                return fenced.result
            except _Abandoned:
                if attempts.count == 0:
                    await self._unclaim(job)
                    return None  # never sent: counted in not_started, a later run does it
                error = attempts.last_error
            except NanoGPTError as exc:
                error = exc
            finally:
                job.holds_slot = False
                self._generation_slots.release_on_behalf_of(job)
            answered = time.monotonic()
            # An answer means a charge, stated or not; a lost answer to a sent request may be one.
            charged = response is not None or _maybe_charged(error)
            cost = known_cost(response.cost) if response is not None else None
            images = len(response.data) if response is not None else job.n
            self._budget.settle(reservation, cost, images, charged=charged)
            settled = True
            await self._settle_shared(job, cost, charged=charged)
            if self._streak.observe(error if response is None else None) and error is not None:
                self._fail_fast(error, self._streak.describe())
            if cost is not None:
                self._cost += cost
        finally:
            if not settled:
                self._budget.settle(reservation, None, job.n, charged=True)
                await self._settle_shared(job, None, charged=True)
        latency = answered - attempts.last_started if response is not None else None
        result = await self._save(
            job,
            response=response,
            error=error,
            attempts=attempts,
            latency=latency,
            answered=answered,
        )
        await self._finish_claim(job, result, charged=charged)
        return result

    async def _claim(self, job: _Job) -> None:
        """Claim the item in the fence at its first turn; raise `_Fenced` if refused.

        Called from `_Attempts.take_turn`, i.e. inside the client's call: `_Fenced` comes out
        of ``generate_from_body`` like `_Abandoned` does, before anything is sent.
        """
        if self._fence is None:
            return
        take_over = self._client.retry_policy.retry_ambiguous
        verdict = await self._fence.claim(job.id, take_over=take_over)
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
        raise _Fenced(result, record=verdict == "uncertain")

    async def _finish_claim(self, job: _Job, result: ItemResult, *, charged: bool) -> None:
        """After the manifest line: mark the claim done, or release it, or keep it.

        A failure that cost nothing is released (a later run may retry it); one that may have
        been charged stays claimed, so it reads as uncertain once this process is gone.
        """
        if self._fence is not None and job.claimed and (result.status == "ok" or not charged):
            await self._fence.finish(job.id, done=result.status == "ok")

    async def _unclaim(self, job: _Job) -> None:
        if self._fence is not None and job.claimed:
            with anyio.CancelScope(shield=True) as scope:
                scope.deadline = anyio.current_time() + _RECORD_TIMEOUT
                await self._fence.finish(job.id, done=False)

    async def _save(
        self,
        job: _Job,
        *,
        response: ImagesResponse | None,
        error: NanoGPTError | None,
        attempts: _Attempts,
        latency: float | None,
        answered: float,
    ) -> ItemResult:
        """Turn the answer into bytes/files and a manifest line, shielded: it is paid for."""
        images: list[bytes] = []
        entries: list[FileEntry] = []
        delay = None
        if response is not None:
            scope = anyio.CancelScope(shield=True)
            if self._aborting:
                scope.deadline = anyio.current_time() + SAVE_TIMEOUT
            self._saving.add(scope)
            try:
                with scope:
                    expiry = urls_expiry(image.url for image in response.data)
                    async with self._save_gate.slot(expiry):  # soonest-expiring URLs first
                        images, entries, error = await self._fetch_and_write(job, response)
            finally:
                self._saving.discard(scope)
            if scope.cancelled_caught and error is None:
                error = OutputWriteError(
                    "the batch was cancelled before this paid-for image was saved"
                )
            delay = time.monotonic() - answered
        status: ItemStatus = "ok" if error is None and (images or entries) else "failed"
        if status == "ok" and latency is not None and delay is not None:
            self._latency.add(latency)
            self._delay.add(delay)
        folder = self._folder or Path()
        result = ItemResult(
            id=job.id,
            index=job.index,
            request=job.request,
            status=status,
            images=images if self._folder is None else [],
            files=[folder / entry.path for entry in entries],
            cost=_stated_cost(response),
            attempts=attempts.count,
            started_at=job.started_at,
            finished_at=time.time(),
            latency=latency,
            download_delay=delay,
            error=error,
            request_id=response.request_id if response is not None else _request_id(error),
        )
        return await self._record(result, entries)

    async def _fetch_and_write(
        self, job: _Job, response: ImagesResponse
    ) -> tuple[list[bytes], list[FileEntry], NanoGPTError | None]:
        error: NanoGPTError | None = None
        fetched: list[tuple[int, bytes]] = []
        for image in response.data:
            data = await _read_image(image)
            if isinstance(data, ImageURLExpiredError) and image.url is not None:
                data = _paid_url_expired(data, image.url, response)
            if isinstance(data, ImageError):  # one bad item does not throw away the others
                error = error or data
            else:
                fetched.append((image.index, data))
        if self._folder is None:
            return [data for _, data in fetched], [], error
        named = []
        for number, data in fetched:
            kind = sniff_image(data)
            extension = kind.extension if kind is not None else ".bin"
            name = image_file_name(job.index, job.body["prompt"], job.id, number, extension)
            named.append((name, data))
        try:
            entries = await anyio.to_thread.run_sync(write_images, self._folder, named)
        except OSError as exc:
            failure = OutputWriteError(
                f"cannot write images into {str(self._folder)!r}: "
                f"{describe_write_error(self._folder, exc)}"
            )
            self._fail_fast(failure)
            return [], [], failure
        return [], entries, error

    async def _record(self, result: ItemResult, entries: list[FileEntry] | None) -> ItemResult:
        """Append the item's manifest line (after its files are written); count it."""
        if self._writer is not None and self._appender is not None:
            request = dict(result.request)
            prompt = request.pop("prompt", None)
            record = {
                "id": result.id,
                "index": result.index,
                "prompt": prompt,
                "params": request,
                "status": result.status,
                "files": [entry.as_json() for entry in entries or []],
                "cost": result.cost,
                "attempts": result.attempts,
                "error": _error_json(result.error),
                "request_id": result.request_id,
                "started_at": result.started_at,
                "finished_at": result.finished_at,
            }
            writer = self._writer
            with anyio.CancelScope(shield=True) as scope:
                scope.deadline = anyio.current_time() + _RECORD_TIMEOUT
                try:
                    await self._appender.append(record)
                except OSError as exc:
                    result = _replace_failed(result, self._manifest_failed(writer, exc))
        return result

    def _manifest_failed(self, writer: ManifestWriter, exc: OSError) -> OutputWriteError:
        """A manifest write failed (disk full...): fatal, with what to do and what was lost."""
        folder = self._folder or writer.path.parent
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        failure = OutputWriteError(
            f"cannot write to the manifest {str(writer.path)!r}: "
            f"{describe_write_error(folder, exc)}. The batch stops; items finishing now keep "
            "their images in the folder but are not recorded. "
            f"{'Free some space' if full else 'Fix that'} and run the same batch again: "
            "recorded items are skipped, the rest are generated again"
        )
        self._fail_fast(failure)
        return failure

    async def _emit(self, result: ItemResult) -> None:
        if result.status == "ok":
            self._ok += 1
        elif result.status == "failed":
            self._failed += 1
        else:
            self._skipped += 1
        if not self._results_wanted:
            return
        # If nobody is listening any more, the manifest has it.
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            try:
                # No loop turn when there is room (the stream's send always takes one).
                self._send.send_nowait(result)
            except anyio.WouldBlock:
                await self._send.send(result)


_END = object()
#: Items a resume reads and triages per worker-thread call (`Batch._triage`): a few ms each.
_TRIAGE_CHUNK = 256


class _Mark:
    """An outcome of `Batch._triage` that is neither a job nor a result."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


#: `Batch._triage`'s outcome for an item another shard does.
_NOT_MINE = _Mark("not mine")
#: `Batch._triage`'s outcome for an item an earlier run did, when nobody reads the results.
_SKIPPED = _Mark("skipped")
#: What `Batch._triage` says about one item.
_Triaged = _Job | ItemResult | _RepeatedIdError | _Mark


def _entries(items: BatchInput) -> Iterator[Any] | AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        return items.__aiter__()
    return iter(items)


async def _next_entry(entries: Iterator[Any] | AsyncIterator[Any]) -> object:
    """The next input entry, or ``_END``."""
    if isinstance(entries, Iterator):
        await anyio.lowlevel.checkpoint()  # a long sync input must not starve the loop
        return next(entries, _END)
    try:
        return await entries.__anext__()
    except StopAsyncIteration:
        return _END


#: Longest a resume reads a sync input without letting other tasks in (seconds). A checkpoint
#: per item was a full event-loop turn per item: about half of a million-item resume's time.
_FAIR_SHARE = 0.002


def _invalid(
    entry: object, user_id: str | None, index: int, started: float, exc: Exception
) -> ItemResult:
    """The failed result of an entry that cannot be sent (checked before anything is sent)."""
    error = (
        exc
        if isinstance(exc, InvalidInputError)
        else InvalidInputError(f"the prompt is not valid Unicode text: {exc}")
    )
    return ItemResult(
        id=user_id if user_id is not None else f"invalid-{index:06d}",
        index=index,
        request={"prompt": _raw_prompt(entry)},
        status="failed",
        started_at=started,
        finished_at=time.time(),
        error=error,
    )


def _raw_prompt(entry: object) -> str:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, BatchItem):
        return entry.prompt
    if isinstance(entry, Mapping):
        return str(entry.get("prompt"))
    return repr(entry)[:200]


async def _read_image(image: GeneratedImage) -> bytes | ImageError:
    try:
        return await image.read()
    except ImageError as exc:
        return exc


def _paid_url_expired(
    error: ImageURLExpiredError, url: str, response: ImagesResponse
) -> ImageURLExpiredError:
    """The storage host's refusal, restated: which host, when the URL expired, that it was paid."""
    host = urllib.parse.urlsplit(url).hostname or "the storage host"
    charged = (
        f"NanoGPT charged ${response.cost} for this request"
        if known_cost(response.cost) is not None
        else "NanoGPT charged for this request"
    )
    request = f" (request id {response.request_id})" if response.request_id else ""
    paid = ImageURLExpiredError(
        f"a paid image was lost: its signed URL on {host} {describe_expiry(url_expiry(url))} "
        f"before it was downloaded (HTTP {error.status_code}). {charged}{request}; the image "
        "cannot be fetched any more. Saving fell behind generation: raise "
        "download_concurrency (--download-concurrency) or lower concurrency. Original error: "
        f"{error}",
        url=error.url,
        status_code=error.status_code,
    )
    paid.__cause__ = error
    return paid


def _stated_cost(response: ImagesResponse | None) -> float | None:
    """The cost an answer stated, as a number the manifest can hold (never NaN or negative)."""
    cost = known_cost(response.cost) if response is not None else None
    return float(cost) if cost is not None else None


def _maybe_charged(error: NanoGPTError | None) -> bool:
    # A gateway's page instead of NanoGPT's answer: the origin may have charged (issue 10.16).
    return isinstance(error, (APIResponseValidationError, GatewayError)) or (
        isinstance(error, APIConnectionError) and error.request_sent
    )


def _request_id(error: NanoGPTError | None) -> str | None:
    value = getattr(error, "request_id", None)
    return value if isinstance(value, str) else None


def _shard_manifest(name: str, shard: Shard | None) -> str:
    return shard.manifest_name if shard is not None and name == "manifest.jsonl" else name


def _shard_total(total: int | None, shard: Shard | None) -> int | None:
    return shard.size(total) if shard is not None and total is not None else total


def _shard(shard: tuple[int, int] | Shard | None) -> Shard | None:
    if shard is None or isinstance(shard, Shard):
        return shard
    if not isinstance(shard, tuple) or len(shard) != 2:  # noqa: PLR2004 - (index, count)
        raise InvalidInputError(f"shard must be (index, count), got {shard!r}")
    try:
        return Shard(*shard)
    except ValueError as exc:
        raise InvalidInputError(str(exc)) from None


def _replace_failed(result: ItemResult, error: NanoGPTError) -> ItemResult:
    from dataclasses import replace  # noqa: PLC0415 - rare path

    return replace(result, status="failed", error=error)
