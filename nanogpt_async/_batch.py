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
import math
import time
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

from nanogpt_async._batch_budget import Budget, Sample
from nanogpt_async._batch_manifest import (
    FileEntry,
    ManifestIndex,
    ManifestWriter,
    RecordedItem,
    files_intact,
    read_manifest,
    sweep_temp_files,
    write_images,
)
from nanogpt_async._batch_models import (
    BatchItem,
    BatchProgress,
    BatchSummary,
    ItemResult,
    ItemStatus,
    OutputWriteError,
)
from nanogpt_async._batch_names import (
    IdentityCounter,
    describe_request,
    has_input_images,
    image_file_name,
)
from nanogpt_async._batch_pacing import Pacer
from nanogpt_async._errors import (
    APIConnectionError,
    APIResponseValidationError,
    AuthenticationError,
    DailyLimitExceededError,
    GatewayError,
    ImageError,
    InsufficientBalanceError,
    InvalidInputError,
    NanoGPTError,
    PermissionDeniedError,
)
from nanogpt_async._request import build_generation_body, check_generation_fields
from nanogpt_async._sniff import sniff_image

if TYPE_CHECKING:
    from nanogpt_async._client import AsyncNanoGPT
    from nanogpt_async._models import GeneratedImage, ImagesResponse

__all__ = ["SAVE_TIMEOUT", "Batch", "BatchInput", "ProgressCallback"]

#: One input item: a prompt, a :class:`BatchItem`, or a dict with ``prompt`` (and ``id``, fields).
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


class _Job:
    """One item on its way: who it is and the body to send."""

    __slots__ = ("body", "holds_slot", "id", "index", "n", "request", "started_at")

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


class _Attempts:
    """The per-item :class:`~nanogpt_async._retry.AttemptHooks`: pacing and counting."""

    def __init__(self, batch: Batch) -> None:
        self._batch = batch
        self.count = 0
        self.last_error: NanoGPTError | None = None
        self.last_started = time.monotonic()

    async def before_attempt(self) -> None:
        await self._batch._before_attempt(self)  # noqa: SLF001 - the runner's own helper
        self.count += 1
        self.last_started = time.monotonic()

    def after_attempt(self, error: BaseException | None) -> None:
        if isinstance(error, NanoGPTError):
            self.last_error = error
        self._batch._after_attempt(error)  # noqa: SLF001


def _normalise(entry: object) -> tuple[str | None, dict[str, Any]]:
    """``(user id, fields)`` of one input entry; raises InvalidInputError for anything else."""
    if isinstance(entry, str):
        return None, {"prompt": entry}
    if isinstance(entry, BatchItem):
        if "prompt" in entry.params or "id" in entry.params:
            raise InvalidInputError("BatchItem.params must not repeat 'prompt' or 'id'")
        return entry.id, {**entry.params, "prompt": entry.prompt}
    if isinstance(entry, Mapping):
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


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{name} must be a whole number of at least 1, got {value!r}")
    return value


class Batch:
    """Many generations, paced to the account's limits; build it with ``generate_many()``.

    Use it as an async context manager and iterate it for results as items finish, or await
    :meth:`run` for the summary alone. Leaving the ``async with`` block before the input is
    exhausted stops the batch the way :meth:`stop` does.

    Example:
        >>> batch = client.images.generate_many(prompts, output_dir="out")  # doctest: +SKIP
        >>> async with batch:  # doctest: +SKIP
        ...     async for result in batch:
        ...         print(result.index, result.status, result.files)
        >>> batch.summary.ok  # doctest: +SKIP
    """

    def __init__(  # noqa: C901, PLR0915 - argument checks, one per argument
        self,
        client: AsyncNanoGPT,
        items: BatchInput,
        *,
        output_dir: str | PathLike[str] | None = None,
        concurrency: int = 64,
        rps: float | None = 25.0,
        burst: int | None = None,
        download_concurrency: int = 32,
        max_cost: float | Decimal | None = None,
        retry_failed: bool = True,
        on_progress: ProgressCallback | None = None,
        progress_interval: float = 0.5,
        manifest_name: str = "manifest.jsonl",
        total: int | None = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> None:
        """See :meth:`nanogpt_async.Images.generate_many` for the arguments."""
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
        if rps is not None and (
            isinstance(rps, bool) or not isinstance(rps, (int, float)) or not 0 < rps < math.inf
        ):
            raise InvalidInputError(f"rps must be a positive number or None, got {rps!r}")
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
        self._folder = Path(output_dir) if output_dir is not None else None
        self._manifest_path = self._folder / manifest_name if self._folder is not None else None
        self._rps = float(rps) if rps is not None else None
        self._burst = burst
        self._max_cost = Decimal(str(max_cost)) if max_cost is not None else None
        self._retry_failed = retry_failed
        self._on_progress = on_progress
        self._progress_interval = progress_interval

        # Run state (sync primitives need a running event loop: made in __aenter__).
        self._entered = False
        self._halted = False
        self._producer_finished = False
        self._main_finished = False
        self._stop_reason: str | None = None
        self._fatal_error: NanoGPTError | None = None
        self._aborting = False
        self._recorded: ManifestIndex | None = None
        self._writer: ManifestWriter | None = None
        self._ids = IdentityCounter()
        self._waiting: set[anyio.CancelScope] = set()
        self._saving: set[anyio.CancelScope] = set()
        self._consumed = 0
        self._ok = self._failed = self._skipped = 0
        self._in_flight = 0
        self._attempts = 0
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
            rate_limited=self._pacer.rate_limited if self._entered else 0,
            stopped_reason=self._stop_reason,
            fatal_error=self._fatal_error,
            manifest=self._manifest_path,
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

    async def run(self) -> BatchSummary:
        """Run the whole batch, discarding per-item results; return the summary."""
        async with self:
            async for _ in self:
                pass
        return self.summary

    async def __aenter__(self) -> Self:
        """Prepare the output folder (sweep temp files, read the manifest) and start."""
        if self._entered:
            raise RuntimeError("a Batch runs once; call generate_many() again for another run")
        self._entered = True
        self._started = time.monotonic()
        self._pacer = Pacer(
            concurrency=self._concurrency,
            rps=self._rps,
            burst=self._burst,
            on_concurrency=self._set_concurrency,
        )
        self._generation_slots = anyio.CapacityLimiter(self._concurrency)
        self._save_slots = anyio.CapacityLimiter(self._download_concurrency)
        self._pipeline = anyio.Semaphore(self._concurrency + self._download_concurrency)
        self._budget = Budget(self._max_cost)
        self._manifest_lock = anyio.Lock()
        self._send, self._receive = anyio.create_memory_object_stream[ItemResult](
            self._download_concurrency
        )
        self._producer_scope = anyio.CancelScope()
        self._aux_scope = anyio.CancelScope()
        if self._folder is not None:
            try:
                self._recorded, self._writer = await anyio.to_thread.run_sync(self._open_folder)
            except OSError as exc:
                raise OutputWriteError(
                    f"cannot prepare the output folder {str(self._folder)!r}: {exc}"
                ) from exc
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        self._group.start_soon(self._aux)
        self._group.start_soon(self._main)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Wait for the batch (stopping it first if the block was left early)."""
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
        return await self._group.__aexit__(exc_type, exc, tb)

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

    def _open_folder(self) -> tuple[ManifestIndex, ManifestWriter]:
        assert self._folder is not None  # noqa: S101 - only called with a folder
        assert self._manifest_path is not None  # noqa: S101
        self._folder.mkdir(parents=True, exist_ok=True)
        sweep_temp_files(self._folder)
        recorded = read_manifest(self._manifest_path)
        return recorded, ManifestWriter(self._manifest_path)

    def _elapsed(self) -> float:
        end = self._ended if self._ended is not None else time.monotonic()
        return max(0.0, end - self._started)

    def _set_concurrency(self, value: int) -> None:
        self._generation_slots.total_tokens = value

    def _halt(self) -> None:
        """Stop starting items and wake attempts waiting for their turn."""
        self._halted = True
        if self._entered:
            self._producer_scope.cancel()
        for scope in list(self._waiting):
            scope.cancel()

    def _fail_fast(self, error: NanoGPTError) -> None:
        if self._fatal_error is None:
            self._fatal_error = error
            self._stop_reason = f"fatal: {type(error).__name__}: {error}"
        self._halt()

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
        if self._stop_reason is None:
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
            if self._writer is not None:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._writer.close)
            self._send.close()
            self._report_progress()

    async def _produce(self, work: anyio.abc.TaskGroup) -> None:
        entries: Iterator[Any] | AsyncIterator[Any]
        if isinstance(self._items, AsyncIterable):
            entries = self._items.__aiter__()
        else:
            entries = iter(self._items)
        index = 0
        while not self._halted:
            entry = await _next_entry(entries)
            if entry is _END:
                break
            self._consumed += 1
            prepared = await self._prepare(entry, index)
            index += 1
            if isinstance(prepared, ItemResult):
                if prepared.status == "failed":
                    await self._record(prepared, None)
                await self._emit(prepared)
                continue
            await self._pipeline.acquire()
            try:
                # The slot is taken here, not in the item's task, so only items that can go
                # now are started (and reserve budget); the task hands it back.
                await self._generation_slots.acquire_on_behalf_of(prepared)
                try:
                    reservation = await self._budget.admit(prepared.n)
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
                break
            self._in_flight += 1
            work.start_soon(self._process, prepared, reservation)

    async def _prepare(self, entry: object, index: int) -> _Job | ItemResult:
        """Normalise an entry, give it its id, and decide whether an earlier run did it."""
        started = time.time()
        user_id: str | None = None
        try:
            user_id, fields = _normalise(entry)
            merged = {**self._defaults, **{k: v for k, v in fields.items() if v is not None}}
            prompt = merged.get("prompt")
            if isinstance(prompt, str):
                prompt.encode("utf-8")  # a lone surrogate cannot be sent as JSON
            body = await build_generation_body(merged)
        except (InvalidInputError, UnicodeEncodeError) as exc:
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
        if has_input_images(body):
            # Hashing megabytes of data URLs would stall the event loop: a worker thread.
            digest, request = await anyio.to_thread.run_sync(describe_request, body)
        else:
            digest, request = describe_request(body)
        item_id = user_id if user_id is not None else self._ids.next_id(digest)
        job = _Job(index, item_id, body, request, started)
        if self._recorded is None or not len(self._recorded):
            return job
        recorded = await anyio.to_thread.run_sync(self._earlier_run, item_id)
        if recorded is None:
            return job
        folder = self._folder or Path()
        return ItemResult(
            id=item_id,
            index=index,
            request=job.request,
            status="skipped",
            files=[folder / entry.path for entry in recorded.files],
            started_at=started,
            finished_at=time.time(),
            request_id=recorded.request_id,
        )

    def _earlier_run(self, item_id: str) -> RecordedItem | None:
        """What an earlier run did that this one should not redo (blocking: a worker thread).

        ``None`` when the item must run: never recorded, recorded failed with ``retry_failed``,
        or recorded ok but a file has gone or changed size since.
        """
        assert self._recorded is not None  # noqa: S101 - only called when resuming
        assert self._folder is not None  # noqa: S101 - a manifest implies a folder
        recorded = self._recorded.get(item_id)
        if recorded is None:
            return None
        if recorded.status == "failed":
            return None if self._retry_failed else recorded
        return recorded if files_intact(self._folder, recorded.files) else None

    # -- one item -----------------------------------------------------------------------

    async def _before_attempt(self, attempts: _Attempts) -> None:
        while True:
            self._check_may_send(attempts)
            with anyio.CancelScope() as scope:
                self._waiting.add(scope)
                try:
                    await self._pacer.wait_turn()
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
        self._pacer.observe(error)
        if isinstance(error, _FATAL):
            self._fail_fast(error)

    async def _process(self, job: _Job, reservation: Decimal) -> None:
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

    async def _generate_and_save(self, job: _Job, reservation: Decimal) -> ItemResult | None:
        attempts = _Attempts(self)
        response: ImagesResponse | None = None
        error: NanoGPTError | None = None
        settled = False
        try:
            try:
                response = await self._client.images.generate_from_body(job.body, hooks=attempts)
            except _Abandoned:
                if attempts.count == 0:
                    return None  # never sent: counted in not_started, a later run does it
                error = attempts.last_error
            except NanoGPTError as exc:
                error = exc
            finally:
                job.holds_slot = False
                self._generation_slots.release_on_behalf_of(job)
            answered = time.monotonic()
            maybe_charged = isinstance(error, (APIResponseValidationError, GatewayError)) or (
                isinstance(error, APIConnectionError) and error.request_sent
            )
            cost = response.cost if response is not None else None
            images = len(response.data) if response is not None else job.n
            self._budget.settle(reservation, cost, images, maybe_charged=maybe_charged)
            settled = True
            if cost is not None:
                self._cost += Decimal(str(cost))
        finally:
            if not settled:
                self._budget.settle(reservation, None, job.n, maybe_charged=True)
        latency = answered - attempts.last_started if response is not None else None
        return await self._save(
            job,
            response=response,
            error=error,
            attempts=attempts,
            latency=latency,
            answered=answered,
        )

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
                    async with self._save_slots:
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
            cost=response.cost if response is not None else None,
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
            named.append((image_file_name(job.index, job.body["prompt"], number, extension), data))
        try:
            entries = await anyio.to_thread.run_sync(write_images, self._folder, named)
        except OSError as exc:
            failure = OutputWriteError(f"cannot write images into {str(self._folder)!r}: {exc}")
            self._fail_fast(failure)
            return [], [], failure
        return [], entries, error

    async def _record(self, result: ItemResult, entries: list[FileEntry] | None) -> ItemResult:
        """Append the item's manifest line (after its files are written); count it."""
        if self._writer is not None:
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
                async with self._manifest_lock:
                    try:
                        await anyio.to_thread.run_sync(writer.append, record)
                    except OSError as exc:
                        failure = OutputWriteError(
                            f"cannot append to the manifest {str(writer.path)!r}: {exc}"
                        )
                        self._fail_fast(failure)
                        result = _replace_failed(result, failure)
        return result

    async def _emit(self, result: ItemResult) -> None:
        if result.status == "ok":
            self._ok += 1
        elif result.status == "failed":
            self._failed += 1
        else:
            self._skipped += 1
        # If nobody is listening any more, the manifest has it.
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self._send.send(result)


_END = object()


async def _next_entry(entries: Iterator[Any] | AsyncIterator[Any]) -> object:
    """The next input entry, or ``_END``."""
    if isinstance(entries, Iterator):
        await anyio.lowlevel.checkpoint()  # a long sync input must not starve the loop
        return next(entries, _END)
    try:
        return await entries.__anext__()
    except StopAsyncIteration:
        return _END


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


def _request_id(error: NanoGPTError | None) -> str | None:
    value = getattr(error, "request_id", None)
    return value if isinstance(value, str) else None


def _replace_failed(result: ItemResult, error: NanoGPTError) -> ItemResult:
    from dataclasses import replace  # noqa: PLC0415 - rare path

    return replace(result, status="failed", error=error)
