"""Stage 4 of a batch: answers -> bytes -> files, then one manifest line per item.

A save is shielded from cancellation (bounded by ``SAVE_TIMEOUT`` once the batch is being
cancelled) because its generation is already paid for. An item's manifest line is written only
after its files are: a line names files that exist. Without ``output_dir`` the bytes stay in
the result and nothing is written.
"""

from __future__ import annotations

import errno
import time
import urllib.parse
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from nanogpt_async._batch._appender import GroupAppender
from nanogpt_async._batch._budget import known_cost
from nanogpt_async._batch._expiry import DeadlineGate, describe_expiry, url_expiry, urls_expiry
from nanogpt_async._batch._lifecycle import RECORD_TIMEOUT, SAVE_TIMEOUT, Lifecycle
from nanogpt_async._batch._manifest import (
    FileEntry,
    ManifestIndex,
    ManifestWriter,
    read_manifest,
    sweep_temp_files,
    write_images,
)
from nanogpt_async._batch._names import image_file_name
from nanogpt_async._batch._results import ItemResult, ItemStatus
from nanogpt_async._errors import ImageError, ImageURLExpiredError, NanoGPTError, OutputWriteError
from nanogpt_async._output._files import LOCK_NAME, FolderLock, describe_write_error
from nanogpt_async._sniff import sniff_image

if TYPE_CHECKING:
    from nanogpt_async._batch._prepare import Job
    from nanogpt_async._batch._send import Attempts
    from nanogpt_async._batch._settings import BatchSettings
    from nanogpt_async._batch._shards import Shard
    from nanogpt_async._batch._tally import Tally
    from nanogpt_async._output._responses import GeneratedImage, ImagesResponse

__all__ = ["Saver"]


class _Folder:
    """The output folder, locked for the run, and its manifest (opened in a worker thread)."""

    __slots__ = ("lock", "manifest", "path", "shard", "writer")

    def __init__(self, path: Path, manifest: Path, shard: Shard | None) -> None:
        self.path = path
        self.manifest = manifest
        self.shard = shard
        self.lock: FolderLock | None = None
        self.writer: ManifestWriter | None = None

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
            sweep_temp_files(self.path, shard.owns_temp_file if shard is not None else None)
            recorded = read_manifest(self.manifest, self.path)
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

    __slots__ = ("_appender", "_folder", "_lifecycle", "_tally", "folder", "gate")

    def __init__(self, settings: BatchSettings, lifecycle: Lifecycle, tally: Tally) -> None:
        self.folder = folder = settings.folder
        manifest = settings.manifest_path
        self._folder = (
            _Folder(folder, manifest, settings.shard)
            if folder is not None and manifest is not None
            else None
        )
        #: Saves at once; the soonest-expiring URLs go first.
        self.gate = DeadlineGate(settings.download_concurrency)
        self._appender: GroupAppender | None = None
        self._lifecycle = lifecycle
        self._tally = tally

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
            self._appender = GroupAppender(self._folder.writer.append_many)
        return recorded

    async def close(self, *, report: bool = True) -> None:
        """Close the manifest and unlock the folder, shielded; a failed close is fatal."""
        if self._folder is None:
            return
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
        images: list[bytes] = []
        entries: list[FileEntry] = []
        delay = None
        if response is not None:
            scope = anyio.CancelScope(shield=True)
            if self._lifecycle.cancelling:
                scope.deadline = anyio.current_time() + SAVE_TIMEOUT
            self._lifecycle.saving.add(scope)
            try:
                with scope:
                    expiry = urls_expiry(image.url for image in response.data)
                    async with self.gate.slot(expiry):  # soonest-expiring URLs first
                        images, entries, error = await self._fetch_and_write(job, response)
            finally:
                self._lifecycle.saving.discard(scope)
            if scope.cancelled_caught and error is None:
                error = OutputWriteError(
                    "the batch was cancelled before this paid-for image was saved"
                )
            delay = time.monotonic() - answered
        status: ItemStatus = "ok" if error is None and (images or entries) else "failed"
        if status == "ok" and latency is not None and delay is not None:
            self._tally.latency.add(latency)
            self._tally.delay.add(delay)
        folder = self.folder or Path()
        result = ItemResult(
            id=job.id,
            index=job.index,
            request=job.request,
            status=status,
            images=images if self.folder is None else [],
            files=[folder / entry.path for entry in entries],
            cost=float(cost) if cost is not None else None,  # never NaN or negative
            attempts=attempts.count,
            started_at=job.started_at,
            finished_at=time.time(),
            latency=latency,
            download_delay=delay,
            error=error,
            request_id=response.request_id if response is not None else _request_id(error),
        )
        return await self.record(result, entries)

    async def _fetch_and_write(
        self, job: Job, response: ImagesResponse
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
        if self.folder is None:
            return [data for _, data in fetched], [], error
        named = []
        for number, data in fetched:
            kind = sniff_image(data)
            extension = kind.extension if kind is not None else ".bin"
            name = image_file_name(job.index, job.body["prompt"], job.id, number, extension)
            named.append((name, data))
        try:
            entries = await anyio.to_thread.run_sync(write_images, self.folder, named)
        except OSError as exc:
            failure = OutputWriteError(
                f"cannot write images into {str(self.folder)!r}: "
                f"{describe_write_error(self.folder, exc)}"
            )
            self._lifecycle.fail_fast(failure)
            return [], [], failure
        return [], entries, error

    async def record(self, result: ItemResult, entries: list[FileEntry] | None) -> ItemResult:
        """Append the item's manifest line (after its files are written)."""
        if self._folder is None or self._appender is None or self._folder.writer is None:
            return result
        writer = self._folder.writer
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + RECORD_TIMEOUT
            try:
                await self._appender.append(_manifest_line(result, entries))
            except OSError as exc:
                failure = self._manifest_failed(writer, exc)
                result = replace(result, status="failed", error=failure)
        return result

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
