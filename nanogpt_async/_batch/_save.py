"""Stage 4 of a batch: answers -> bytes -> files, then one manifest line per item.

A save is shielded from cancellation (bounded by ``SAVE_TIMEOUT`` once the batch is being
cancelled) because its generation is already paid for. An item's manifest line is written only
after its files are: a line names files that exist. Without ``output_dir`` the bytes stay in
the result and nothing is written.

An answer's files and its manifest line are written in one worker-thread call, one after the
other (the line only once every file is written); items that end without files (failed,
fenced) append their line through `GroupAppender`, which groups them. Under asyncio that call
goes straight to an executor of the batch's own: anyio's ``to_thread.run_sync`` cost ~60 us of
CPU per call against ~25 us (this machine), and its second hop for the line another share of
one. The executor has a thread per save allowed at once (``download_concurrency``), as anyio's
pool gave them: with the loop's default executor (6 threads on 2 cores) a wave of 256 answers
waited behind fsyncs, and so did the next requests (the pipeline slots come back after saving).
"""

from __future__ import annotations

import asyncio
import errno
import math
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.to_thread
import sniffio

from nanogpt_async._batch._appender import GroupAppender
from nanogpt_async._batch._budget import known_cost
from nanogpt_async._batch._expiry import DeadlineGate, describe_expiry, url_expiry, urls_expiry
from nanogpt_async._batch._lifecycle import RECORD_TIMEOUT, SAVE_TIMEOUT, Lifecycle
from nanogpt_async._batch._manifest import (
    FileEntry,
    ManifestIndex,
    ManifestWriter,
    open_recorded,
    write_images,
)
from nanogpt_async._batch._names import image_file_name
from nanogpt_async._batch._results import ItemResult, ItemStatus
from nanogpt_async._errors import ImageError, ImageURLExpiredError, NanoGPTError, OutputWriteError
from nanogpt_async._output._files import LOCK_NAME, FolderLock, describe_write_error
from nanogpt_async._output._responses import decoded_image
from nanogpt_async._sniff import sniff_image

if TYPE_CHECKING:
    from nanogpt_async._batch._prepare import Job
    from nanogpt_async._batch._send import Attempts
    from nanogpt_async._batch._settings import BatchSettings
    from nanogpt_async._batch._shards import Shard
    from nanogpt_async._batch._tally import Tally
    from nanogpt_async._output._responses import GeneratedImage, ImagesResponse

__all__ = ["Saver"]

_T = TypeVar("_T")
#: An item's result from its bytes, written files and first image error (see `Saver.save`).
_Finish = Callable[[list[bytes], list["FileEntry"], NanoGPTError | None], ItemResult]
#: What a save got, nothing recorded yet: the bytes (no folder), the files, the first error.
_Fetched = tuple[list[bytes], list["FileEntry"], NanoGPTError | None]
#: An image of the answer by its number: its base64 (decoded in the save's thread call), its
#: bytes, or why there are none.
_Image = tuple[int, "str | bytes | ImageError"]


class _Recorded:
    """An answer whose files, then manifest line, were written in one worker-thread call.

    ``manifest_error``: the line's write failed (the files are there).
    """

    __slots__ = ("manifest_error", "result")

    def __init__(self, result: ItemResult, manifest_error: OSError | None) -> None:
        self.result = result
        self.manifest_error = manifest_error


class _Folder:
    """The output folder, locked for the run, and its manifest (opened in a worker thread)."""

    __slots__ = ("_appending", "lock", "manifest", "path", "shard", "writer")

    def __init__(self, path: Path, manifest: Path, shard: Shard | None) -> None:
        self.path = path
        self.manifest = manifest
        self.shard = shard
        self.lock: FolderLock | None = None
        self.writer: ManifestWriter | None = None
        # Lines are appended from several worker threads (each saved answer's own call, and
        # the groups of `GroupAppender`): one at a time.
        self._appending = threading.Lock()

    def append_many(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Append records to the manifest (blocking; from any thread, one call at a time)."""
        if self.writer is None:
            raise ValueError("the manifest is not open")
        with self._appending:
            self.writer.append_many(records)

    def open(self) -> ManifestIndex:
        """Lock the folder, then sweep temp files and read the manifest (blocking).

        The lock comes first: a second run must neither sweep the temp files of a running one
        (it would lose images being written) nor read a manifest that is still growing.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        shard = self.shard
        self.lock = FolderLock.acquire(
            self.path, shard.lock_name if shard is not None else LOCK_NAME
        )
        try:
            owned = shard.owns_temp_file if shard is not None else None
            recorded = open_recorded(self.manifest, self.path, owned)
            self.writer = ManifestWriter(self.manifest)
        except BaseException:
            self.close()
            raise
        return recorded

    def close(self) -> OSError | None:
        """Close the manifest (fsync), then unlock the folder; the close's error, if any."""
        failure = None
        try:
            if self.writer is not None:
                self.writer.close()
        except OSError as exc:
            failure = exc
        finally:
            if self.lock is not None:
                self.lock.release()
                self.lock = None
        return failure


class Saver:
    """Saves paid answers into the folder and records them in the manifest."""

    __slots__ = (
        "_appender",
        "_folder",
        "_lifecycle",
        "_loop",
        "_saves",
        "_tally",
        "_threads",
        "folder",
        "gate",
    )

    def __init__(self, settings: BatchSettings, lifecycle: Lifecycle, tally: Tally) -> None:
        self.folder = folder = settings.folder
        manifest = settings.manifest_path
        self._folder = (
            _Folder(folder, manifest, settings.shard)
            if folder is not None and manifest is not None
            else None
        )
        #: Saves at once; the soonest-expiring URLs go first.
        self._saves = settings.download_concurrency
        self.gate = DeadlineGate(self._saves)
        self._appender: GroupAppender | None = None
        self._lifecycle = lifecycle
        self._tally = tally
        #: Under asyncio, the running loop and the threads the saves' calls run in (``None``:
        #: anyio's worker threads do).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: ThreadPoolExecutor | None = None

    async def open(self) -> ManifestIndex | None:
        """Prepare the folder (lock, sweep temp files, read the manifest): what was recorded.

        Raises:
            OutputWriteError: the folder cannot be prepared.
        """
        if self._folder is None:
            return None
        try:
            recorded = await anyio.to_thread.run_sync(self._folder.open)
        except OSError as exc:
            raise OutputWriteError(
                f"cannot prepare the output folder {str(self._folder.path)!r}: "
                f"{describe_write_error(self._folder.path, exc)}"
            ) from exc
        if self._folder.writer is not None:
            self._appender = GroupAppender(self._folder.append_many)
        if sniffio.current_async_library() == "asyncio":
            # Threads are started as saves need them, up to one per save allowed at once.
            self._loop = asyncio.get_running_loop()
            self._threads = ThreadPoolExecutor(self._saves, thread_name_prefix="nanogpt-save")
        return recorded

    async def close(self, *, report: bool = True) -> None:
        """Close the manifest and unlock the folder, shielded; a failed close is fatal."""
        if self._folder is None:
            return
        if self._threads is not None:
            # Every save has returned (the batch closes the folder last): the threads are idle.
            self._threads.shutdown(wait=False)
            self._loop = self._threads = None
        with anyio.CancelScope(shield=True):
            failure = await anyio.to_thread.run_sync(self._folder.close)
        if report and failure is not None and self._folder.writer is not None:
            self._manifest_failed(self._folder.writer, failure)

    async def save(
        self,
        job: Job,
        *,
        response: ImagesResponse | None,
        error: NanoGPTError | None,
        attempts: Attempts,
        latency: float | None,
        answered: float,
        cost: Decimal | None = None,
    ) -> ItemResult:
        """Turn the answer into bytes/files and a manifest line, shielded: it is paid for.

        ``cost`` is the price the answer stated, as `known_cost` read it (read once per item).
        """
        folder = self.folder

        def finish(
            images: list[bytes], entries: list[FileEntry], error: NanoGPTError | None
        ) -> ItemResult:  # run in a worker thread too (`_store`)
            """The item's result once its bytes are in hand (and written, with a folder)."""
            delay = time.monotonic() - answered if response is not None else None
            status: ItemStatus = "ok" if error is None and (images or entries) else "failed"
            return ItemResult(
                id=job.id,
                index=job.index,
                request=job.request,
                status=status,
                images=images if folder is None else [],
                files=[(folder or Path()) / entry.path for entry in entries],
                cost=float(cost) if cost is not None else None,  # never NaN or negative
                attempts=attempts.count,
                started_at=job.started_at,
                finished_at=time.time(),
                latency=latency,
                download_delay=delay,
                error=error,
                request_id=response.request_id if response is not None else _request_id(error),
            )

        if response is None:
            return await self.record(finish([], [], error), [])
        saved: _Fetched | _Recorded = [], [], None
        scope = anyio.CancelScope(shield=True)
        if self._lifecycle.cancelling:
            scope.deadline = anyio.current_time() + SAVE_TIMEOUT
        self._lifecycle.saving.add(scope)
        try:
            with scope:
                gate = self.gate  # explicit, not ``slot()``: see `DeadlineGate.acquire_nowait`
                if not gate.acquire_nowait():  # soonest-expiring URLs first
                    await gate.acquire(urls_expiry(image.url for image in response.data))
                try:
                    saved = await self._fetch_and_write(job, response, finish, scope)
                finally:
                    gate.release()
        finally:
            self._lifecycle.saving.discard(scope)
        if isinstance(saved, _Recorded):
            result = saved.result
            self._count_latency(result)
            if saved.manifest_error is not None:
                result = self._record_failed(result, saved.manifest_error)
            return result
        images, entries, error = saved
        if scope.cancelled_caught and error is None:
            error = OutputWriteError("the batch was cancelled before this paid-for image was saved")
        result = finish(images, entries, error)
        self._count_latency(result)
        return await self.record(result, entries)

    def _count_latency(self, result: ItemResult) -> None:
        if (
            result.status == "ok"
            and result.latency is not None
            and result.download_delay is not None
        ):
            self._tally.latency.add(result.latency)
            self._tally.delay.add(result.download_delay)

    async def _fetch_and_write(
        self,
        job: Job,
        response: ImagesResponse,
        finish: _Finish,
        scope: anyio.CancelScope,
    ) -> _Fetched | _Recorded:
        """The answer's bytes; with a folder, its files and manifest line, in one thread call.

        Returns the bytes, nothing written, and the first image error (no folder, or writing
        failed); or, once the files are written, the recorded result and any manifest error.
        With a folder, base64 images are decoded in that thread call too: decoding them on
        the event loop cost it ~0.2 ms per item (W10 profile), a third of its CPU per item, and
        the next wave of requests waited for it.
        """
        folder = self.folder if self._folder is not None else None
        images: list[_Image] = []
        for image in response.data:
            if folder is not None and image.b64_json is not None:
                images.append((image.index, image.b64_json))  # decoded in `_store`
                continue
            data = await _read_image(image)
            if isinstance(data, ImageURLExpiredError) and image.url is not None:
                data = _paid_url_expired(data, image.url, response)
            images.append((image.index, data))
        if folder is None:
            error = next((data for _, data in images if isinstance(data, ImageError)), None)
            fetched = [data for _, data in images if isinstance(data, bytes)]
            return fetched, [], error
        stored = await self._in_thread(scope, self._store, folder, job, images, finish)
        if isinstance(stored, OSError):
            failure = OutputWriteError(
                f"cannot write images into {str(folder)!r}: {describe_write_error(folder, stored)}"
            )
            self._lifecycle.fail_fast(failure)
            return [], [], failure
        return stored

    def _store(
        self, folder: Path, job: Job, images: list[_Image], finish: _Finish
    ) -> _Recorded | OSError:
        """Decode, name and write the files, then (only then) the item's manifest line.

        Blocking: run in a worker thread. One bad image does not throw away the others: the
        item's error is the first image's error, in the answer's order.
        """
        error: NanoGPTError | None = None
        named = []
        for number, image in images:
            data = image
            if isinstance(data, str):
                try:
                    data = decoded_image(data, number)
                except ImageError as exc:
                    data = exc
            if isinstance(data, ImageError):
                error = error or data
                continue
            kind = sniff_image(data)
            extension = kind.extension if kind is not None else ".bin"
            name = image_file_name(job.index, job.body["prompt"], job.id, number, extension)
            named.append((name, data))
        try:
            entries = write_images(folder, named)
        except OSError as exc:
            return exc  # nothing recorded: the item is recorded failed by `record`
        result = finish([], entries, error)
        try:
            if self._folder is not None:
                self._folder.append_many([_manifest_line(result, entries)])
        except OSError as exc:
            return _Recorded(result, exc)
        return _Recorded(result, None)

    async def _in_thread(self, scope: anyio.CancelScope, func: Callable[..., _T], *args: Any) -> _T:
        """``func(*args)`` in a worker thread, waited for whatever cancellation comes.

        Under asyncio, on the batch's own threads; otherwise anyio's worker threads. Either way, as
        anyio's ``run_sync`` does, the call cannot be abandoned: the thread would go on writing
        a paid image whose outcome must not be lost. ``scope`` is the save's (shielded): only
        cancelling the batch can give it a deadline (`Lifecycle.abort`), so while it has none,
        taking it out of the batch's reach makes it a shield for the call with no scope of its
        own (~20 us of loop CPU a save, W10 profile).
        """
        loop, threads = self._loop, self._threads
        if loop is None or threads is None:
            return await anyio.to_thread.run_sync(func, *args)
        future = loop.run_in_executor(threads, func, *args)
        if scope.shield and scope.deadline == math.inf and not scope.cancel_called:
            self._lifecycle.saving.discard(scope)
            await future
        else:
            with anyio.CancelScope(shield=True):
                await future
        return future.result()

    async def record(self, result: ItemResult, entries: list[FileEntry] | None) -> ItemResult:
        """Append the item's manifest line (after its files are written)."""
        if self._folder is None or self._appender is None or self._folder.writer is None:
            return result
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + RECORD_TIMEOUT
            try:
                await self._appender.append(_manifest_line(result, entries))
            except OSError as exc:
                result = self._record_failed(result, exc)
        return result

    def _record_failed(self, result: ItemResult, exc: OSError) -> ItemResult:
        """The item's manifest line could not be written: the batch stops, the item failed."""
        writer = self._folder.writer if self._folder is not None else None
        if writer is None:  # pragma: no cover - only called once the manifest is open
            raise exc
        return replace(result, status="failed", error=self._manifest_failed(writer, exc))

    def _manifest_failed(self, writer: ManifestWriter, exc: OSError) -> OutputWriteError:
        """A manifest write failed (disk full...): fatal, with what to do and what was lost."""
        folder = self.folder or writer.path.parent
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        failure = OutputWriteError(
            f"cannot write to the manifest {str(writer.path)!r}: "
            f"{describe_write_error(folder, exc)}. The batch stops; items finishing now keep "
            "their images in the folder but are not recorded. "
            f"{'Free some space' if full else 'Fix that'} and run the same batch again: "
            "recorded items are skipped, the rest are generated again"
        )
        self._lifecycle.fail_fast(failure)
        return failure


def _manifest_line(result: ItemResult, entries: list[FileEntry] | None) -> dict[str, Any]:
    request = dict(result.request)
    prompt = request.pop("prompt", None)
    return {
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


def _request_id(error: NanoGPTError | None) -> str | None:
    value = getattr(error, "request_id", None)
    return value if isinstance(value, str) else None
