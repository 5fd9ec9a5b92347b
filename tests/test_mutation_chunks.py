"""A resume's input chunks: rules mutation testing found unpinned.

An in-memory input is read on the event loop for at most ``fair_share`` seconds at a time,
the clock read every 16 entries; an entry naming input images ends its chunk, whatever the
spelling of the entry (a dict, any other mapping, a `BatchItem` with its fields in
``params``). The clock here is a fake one that moves only as entries are read.
"""

from __future__ import annotations

import gc
import types
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

from nanogpt_async import BatchItem
from nanogpt_async._batch import _chunks
from nanogpt_async._batch._chunks import ChunkedInput, InputChunks


class EntryClock:
    """A monotonic clock that moves one second per entry read, and never otherwise."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def entries(self, count: int) -> Iterator[int]:
        for entry in range(count):
            self.now += 1.0
            yield entry


async def chunk_sizes(chunks: InputChunks) -> list[int]:
    sizes = []
    while not chunks.ended:
        chunk, failure = await chunks.next()
        assert failure is None
        sizes.append(len(chunk))
    return sizes


async def test_a_sync_input_is_read_for_its_fair_share_the_clock_read_every_16_entries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = EntryClock()
    monkeypatch.setattr(_chunks, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    # 32 s of reading allowed per chunk at 1 s an entry: after 16 entries 16 s have passed,
    # after 32 exactly 32 (not past it), after 48, 48: the chunk ends there, on a clock read.
    async with InputChunks(clock.entries(100), size=1000, fair_share=32.0) as chunks:
        assert await chunk_sizes(chunks) == [48, 48, 4]


IMAGE = "data:image/png;base64,iVBORw0KGgo="


@pytest.mark.parametrize(
    "heavy",
    [
        {"prompt": "p", "image": IMAGE},
        types.MappingProxyType({"prompt": "p", "mask": IMAGE}),
        BatchItem("p", params={"images": [IMAGE]}),
        BatchItem("p", params=types.MappingProxyType({"image": IMAGE})),
    ],
    ids=["dict", "mapping", "batch-item", "batch-item-mapping-params"],
)
async def test_an_entry_naming_input_images_ends_its_chunk_however_it_is_spelled(
    heavy: Any,
) -> None:
    plain = [{"prompt": "a"}, BatchItem("b"), "c", types.MappingProxyType({"prompt": "d"})]
    entries = iter([plain[0], heavy, *plain[1:]])
    async with InputChunks(entries, size=100, fair_share=60.0) as chunks:
        first, _ = await chunks.next()
        rest, _ = await chunks.next()
    assert first == [plain[0], heavy]
    assert rest == plain[1:]


async def test_a_chunked_input_read_one_entry_at_a_time_then_hands_over_the_rest_of_its_list() -> (
    None
):
    async def lists() -> AsyncIterator[list[str]]:
        yield ["a", "b", "c"]
        yield ["d"]

    entries = ChunkedInput(lists())
    assert await entries.__anext__() == "a"
    assert await entries.next_chunk() == ["b", "c"]  # the rest of the list, not the next one
    assert await entries.next_chunk() == ["d"]
    with pytest.raises(StopAsyncIteration):
        await entries.next_chunk()


async def test_an_async_inputs_read_ahead_stream_is_closed_when_its_chunks_are_left() -> None:
    # Left unclosed, the stream warns when it is collected (a ResourceWarning: an error for
    # anyone running with -W error). Closed before the reader stopped, the reader's next send
    # raised BrokenResourceError out of the batch (under trio).
    async def entries() -> AsyncIterator[int]:
        for entry in range(10):
            yield entry

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chunks = InputChunks(entries(), size=4, fair_share=60.0)
        async with chunks:
            await anyio.wait_all_tasks_blocked()  # the reader filled the buffer, holds a fifth
            # Taking a chunk hands the reader room: it is about to send again as the chunks
            # are left (under trio, cancelling it then reaches it only at its next wait).
            first, _ = await chunks.next()
        stream = f"{id(chunks._receive):x}"
        del chunks
        gc.collect()
    assert first
    assert [str(w.message) for w in caught if stream in str(w.message)] == []


class FailingLists:
    """Lists of entries whose every read raises (a bad line), counting the reads."""

    def __init__(self) -> None:
        self.reads = 0

    def __aiter__(self) -> FailingLists:
        return self

    async def __anext__(self) -> list[str]:
        self.reads += 1
        raise ValueError("line 3 of prompts.jsonl is not JSON")


async def test_a_chunked_input_that_raised_has_ended_and_is_not_read_again() -> None:
    lists = FailingLists()
    async with InputChunks(ChunkedInput(lists), size=4, fair_share=60.0) as chunks:
        chunk, failure = await chunks.next()
        assert chunk == []
        assert isinstance(failure, ValueError)
        assert chunks.ended is True
        assert await chunks.next() == ([], None)
    assert lists.reads == 1
