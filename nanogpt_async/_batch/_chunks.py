"""A batch's input read in chunks, for a resume that checks many items per worker-thread call.

A resumed run meets mostly items an earlier run finished. Checking them one by one cost a
task switch, an event and a thread hop each (a million items: 56 s); `Batch._triage` checks a
chunk of up to 1,024 in one worker-thread call instead. This module hands out those chunks:

- an in-memory (sync) input is read on the loop, without a coroutine per entry, for at most
  ``fair_share`` seconds at a time;
- an async input (lines read off the loop, piped in slowly...) is read by a task of its own
  into a buffer; a chunk is what the buffer holds, at least one entry. Reading stays ahead of
  the checks instead of waiting for them, and a slow input simply makes small chunks.

An entry naming input images (megabytes each, maybe) ends its chunk, and the reader waits for
it to be taken before reading on: at most two such entries are held at once.

An input that already comes in lists (`ChunkedInput`: the CLI's prompt file, read in a worker
thread 1,024 records at a time) is taken a list at a time: no task, no stream, no step of an
async generator per entry (about 3 µs an entry of a million-line resume).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator, Mapping
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from typing_extensions import Self

from nanogpt_async._batch._results import BatchItem

__all__ = ["ChunkedInput", "InputChunks", "names_images"]


#: The fields that name input images.
_IMAGE_FIELDS = frozenset({"image", "images", "mask"})


def names_images(entry: object) -> bool:
    """Whether an input entry names input images (the data, a path, or a data URL)."""
    if type(entry) is str or (type(entry) is dict and _IMAGE_FIELDS.isdisjoint(entry)):
        return False  # the common entries, answered in C: a resume reads a million
    fields = entry.params if isinstance(entry, BatchItem) else entry
    if type(fields) is not dict and not isinstance(fields, Mapping):  # dict: no ABC check
        return False
    get = fields.get
    return get("image") is not None or get("images") is not None or get("mask") is not None


class ChunkedInput:
    """An async input whose entries come in lists: a batch can take a whole list at once.

    Iterated like any async input (one entry at a time); a resumed batch takes each list whole
    instead (`InputChunks`). ``chunks`` yields non-empty lists of entries; its error ends the
    input after the entries before it.

    Example:
        >>> async def lists():  # doctest: +SKIP
        ...     yield [{"prompt": "a red fox"}, {"prompt": "a blue jay"}]
        >>> client.images.generate_many(ChunkedInput(lists()), output_dir="out")  # doctest: +SKIP
    """

    __slots__ = ("_at", "_buffer", "_chunks", "unique_ids")

    def __init__(self, chunks: AsyncIterator[list[Any]], *, unique_ids: bool = False) -> None:
        """Entries from the lists ``chunks`` yields.

        ``unique_ids``: ``chunks`` never yields two entries with one id (it raises at the
        second, as the command line's prompt file reader does): the batch does not check them
        again (about 1 µs an id, a second of a million-item resume).
        """
        self._chunks = chunks
        self._buffer: list[Any] = []
        self._at = 0
        self.unique_ids = unique_ids

    def __aiter__(self) -> Self:
        """Itself: an async iterator of entries."""
        return self

    async def __anext__(self) -> Any:
        """The next entry."""
        while self._at >= len(self._buffer):
            self._buffer = await self._chunks.__anext__()
            self._at = 0
        entry = self._buffer[self._at]
        self._at += 1
        return entry

    async def next_chunk(self) -> list[Any]:
        """The entries not handed out yet: the rest of a list, or the next one.

        Raises:
            StopAsyncIteration: the input ended.
        """
        rest = self._buffer[self._at :]
        self._buffer, self._at = [], 0
        while not rest:
            rest = await self._chunks.__anext__()
        return rest


class _Heavy:
    """An entry naming input images, with the event its reader waits on."""

    __slots__ = ("entry", "taken")

    def __init__(self, entry: object) -> None:
        self.entry = entry
        self.taken = anyio.Event()


class _Failed:
    """The input raised: what, after the entries read before it."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class InputChunks:
    """The entries of a batch's input, a chunk at a time; use as ``async with``."""

    def __init__(
        self, entries: Iterator[Any] | AsyncIterator[Any], *, size: int, fair_share: float
    ) -> None:
        """Chunks of at most ``size`` entries of ``entries``.

        ``fair_share``: the longest a sync input is read without letting other tasks in.
        """
        self._entries = entries
        self._size = size
        self._fair_share = fair_share
        self._last_checkpoint = 0.0
        #: Nothing more to read: the input ended (or raised).
        self.ended = False
        self._tasks: anyio.abc.TaskGroup | None = None
        self._receive: MemoryObjectReceiveStream[object] | None = None

    async def __aenter__(self) -> Self:
        """Start reading an async input ahead."""
        if isinstance(self._entries, AsyncIterator) and not isinstance(self._entries, ChunkedInput):
            send, self._receive = anyio.create_memory_object_stream[object](self._size)
            self._tasks = anyio.create_task_group()
            await self._tasks.__aenter__()
            self._tasks.start_soon(self._read_ahead, self._entries, send)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Stop reading ahead (what was read and not taken is dropped, never started)."""
        if self._tasks is None:
            return None
        self._tasks.cancel_scope.cancel()
        try:
            return await self._tasks.__aexit__(exc_type, exc, tb)
        finally:
            # Closed only once the reader has stopped: closed before, a reader that had just
            # been handed room (under trio the cancellation reaches it at its next wait) sent
            # its next entry into a closed stream, and its BrokenResourceError ended the batch.
            if self._receive is not None:
                self._receive.close()

    async def next(self) -> tuple[list[object], Exception | None]:
        """The next chunk (empty at the end), and the input's error if it raised after it."""
        if self.ended:
            return [], None
        if isinstance(self._entries, ChunkedInput):
            return await self._next_list(self._entries)
        if self._receive is None:
            return await self._next_sync()
        return await self._next_async(self._receive)

    async def _next_sync(self) -> tuple[list[object], Exception | None]:
        assert isinstance(self._entries, Iterator)  # noqa: S101 - only for sync input
        now = time.monotonic()
        if now - self._last_checkpoint >= self._fair_share:
            await anyio.lowlevel.checkpoint()
            now = self._last_checkpoint = time.monotonic()
        chunk: list[object] = []
        until = now + self._fair_share
        size, clock = self._size, time.monotonic
        try:
            for entry in self._entries:
                chunk.append(entry)
                # The clock every 16 entries: a million clock reads were 0.15 s of a resume.
                if (
                    names_images(entry)
                    or len(chunk) >= size
                    or (not len(chunk) % 16 and clock() > until)
                ):
                    break
            else:
                self.ended = True
        except Exception as exc:  # noqa: BLE001 - the input's own error, handed to the batch
            self.ended = True
            return chunk, exc
        return chunk, None

    async def _next_list(self, entries: ChunkedInput) -> tuple[list[object], Exception | None]:
        try:
            return await entries.next_chunk(), None
        except StopAsyncIteration:
            self.ended = True
        except Exception as exc:  # noqa: BLE001 - the input's own error, handed to the batch
            self.ended = True
            return [], exc
        return [], None

    async def _next_async(
        self, receive: MemoryObjectReceiveStream[object]
    ) -> tuple[list[object], Exception | None]:
        chunk: list[object] = []
        try:
            item = await receive.receive()  # at least one entry: this may wait for the input
            while True:
                if isinstance(item, _Failed):
                    self.ended = True
                    return chunk, item.error
                if isinstance(item, _Heavy):
                    chunk.append(item.entry)
                    item.taken.set()
                    break
                chunk.append(item)
                if len(chunk) >= self._size:
                    break
                item = receive.receive_nowait()
        except anyio.WouldBlock:
            pass
        except anyio.EndOfStream:
            self.ended = True
        return chunk, None

    @staticmethod
    async def _read_ahead(
        entries: AsyncIterator[Any], send: MemoryObjectSendStream[object]
    ) -> None:
        async with send:
            while True:
                try:
                    entry = await entries.__anext__()
                except StopAsyncIteration:
                    return
                except Exception as exc:  # noqa: BLE001 - the input's own error, handed on
                    await send.send(_Failed(exc))
                    return
                item: object = _Heavy(entry) if names_images(entry) else entry
                try:
                    # No loop turn per entry while there is room: a fast input fills a whole
                    # chunk before the batch takes one (with a turn each, chunks of 1 to 2).
                    send.send_nowait(item)
                except anyio.WouldBlock:
                    await send.send(item)
                if isinstance(item, _Heavy):
                    await item.taken.wait()
