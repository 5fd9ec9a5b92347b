"""Resume and items with input images: rules mutation testing found unpinned.

Items naming input images are prepared on the event loop (their files are read and encoded in
threads of their own), not in the resume's chunked worker-thread calls, so they take a path
of their own through `Triage`: a repeated id, another shard's item and an entry that cannot
be read must come out of it exactly as they do for plain items. Money is asserted against the
fake server's counts.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from typing_extensions import Self

from nanogpt_async._batch import _resume
from nanogpt_async._batch._chunks import InputChunks
from nanogpt_async._errors import InvalidInputError, RepeatedIdError
from nanogpt_async.testing import make_png
from tests._serving import Serve, fake_client, fake_servers

KEY = "ngk_mutation_resume_SECRET_77"
DATA_URL = "data:image/png;base64," + base64.b64encode(make_png("in")).decode()


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start fake servers with the given knobs (stopped at the end of the test)."""
    with fake_servers(KEY) as start:
        yield start


def edit(prompt: str, **fields: Any) -> dict[str, Any]:
    return {"prompt": prompt, "operation": "edit", "image": DATA_URL, **fields}


def latest_rows(manifest: Path) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in map(json.loads, manifest.read_text().splitlines())}


async def test_a_resumed_run_stops_at_a_repeated_id_on_an_item_with_input_images(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve()
    items = [{"id": "same", "prompt": "plain"}, edit("with an image", id="same")]
    async with fake_client(server, KEY) as client:
        await client.images.generate_many(["recorded"], output_dir=tmp_path, rps=None).run()
        batch = client.images.generate_many(
            items, output_dir=tmp_path, rps=None, model="flux-kontext"
        )
        with pytest.raises(RepeatedIdError, match="'same'"):
            await batch.run()
    assert server.fake.stats.generations == 1 + batch.summary.ok  # the second "same": unsent
    assert batch.summary.ok <= 1


async def test_a_resumed_run_stops_at_a_repeated_id_among_plain_items(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve()
    items = [{"id": "same", "prompt": "first"}, {"id": "same", "prompt": "second"}]
    async with fake_client(server, KEY) as client:
        await client.images.generate_many(["recorded"], output_dir=tmp_path, rps=None).run()
        batch = client.images.generate_many(items, output_dir=tmp_path, rps=None)
        with pytest.raises(RepeatedIdError, match="item 1 has the id 'same' of item 0"):
            await batch.run()
    assert server.fake.stats.generations == 1 + batch.summary.ok  # the second "same": unsent
    assert batch.summary.ok <= 1


async def test_a_sharded_resume_skips_its_own_items_with_input_images(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve()
    items = [edit(f"edit {i}") for i in range(4)]
    async with fake_client(server, KEY) as client:
        first = await client.images.generate_many(
            items, output_dir=tmp_path, rps=None, model="flux-kontext", shard=(0, 2)
        ).run()
        again = await client.images.generate_many(
            items, output_dir=tmp_path, rps=None, model="flux-kontext", shard=(0, 2)
        ).run()
    assert (first.ok, again.skipped, again.ok) == (2, 2, 0)  # items 0 and 2, once each
    assert server.fake.stats.generations == 2
    rows = latest_rows(tmp_path / "manifest.shard-0000-of-0002.jsonl")
    assert sorted(row["index"] for row in rows.values()) == [0, 2]


async def test_an_entry_whose_image_cannot_be_read_fails_on_resume_even_if_recorded(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve()
    async with fake_client(server, KEY) as client:
        await client.images.generate_many(
            [edit("a cat", id="cat")], output_dir=tmp_path, rps=None, model="flux-kontext"
        ).run()
        # The same id, but its image is gone: the batch cannot tell it asks for what was
        # recorded, so the entry is the input's error, as a plain item's would be.
        moved = {**edit("a cat", id="cat"), "image": tmp_path / "moved-away.png"}
        batch = client.images.generate_many(
            [moved], output_dir=tmp_path, rps=None, model="flux-kontext"
        )
        async with batch:
            [result] = [result async for result in batch]
    assert result.status == "failed"
    assert isinstance(result.error, InvalidInputError)
    assert server.fake.stats.generations == 1


async def test_a_skipped_result_names_its_item_and_when_it_was_checked(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve()
    async with fake_client(server, KEY) as client:
        first = client.images.generate_many(["a fox", "a jay"], output_dir=tmp_path, rps=None)
        async with first:
            done = sorted([result async for result in first], key=lambda result: result.index)
        before = time.time()
        again = client.images.generate_many(["a fox", "a jay"], output_dir=tmp_path, rps=None)
        async with again:
            skipped = sorted([result async for result in again], key=lambda result: result.index)
    assert [result.status for result in skipped] == ["skipped", "skipped"]
    assert [result.id for result in skipped] == [result.id for result in done]
    assert [result.request_id for result in skipped] == [result.request_id for result in done]
    assert [result.request for result in skipped] == [result.request for result in done]
    assert [result.files for result in skipped] == [result.files for result in done]
    for result in skipped:
        assert before <= result.started_at <= result.finished_at <= time.time()
    assert server.fake.stats.generations == 2


# -- the input, in chunks -----------------------------------------------------------------------


async def entries_of(values: list[Any]) -> AsyncIterator[Any]:
    for value in values:
        yield value


async def all_chunks(chunks: InputChunks) -> list[list[object]]:
    taken = []
    while not chunks.ended:
        chunk, failure = await chunks.next()
        assert failure is None
        taken.append(chunk)
    return taken


async def test_a_sync_input_comes_in_chunks_of_at_most_the_chunk_size() -> None:
    async with InputChunks(iter(range(10)), size=4, fair_share=60.0) as chunks:
        assert await all_chunks(chunks) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
        assert await chunks.next() == ([], None)


async def test_an_async_input_read_ahead_comes_in_chunks_of_at_most_the_chunk_size() -> None:
    async with InputChunks(entries_of(list(range(10))), size=4, fair_share=60.0) as chunks:
        # The reader fills the buffer (4) and holds a fifth, waiting for room.
        await anyio.wait_all_tasks_blocked()
        first, failure = await chunks.next()
        assert (first, failure) == ([0, 1, 2, 3], None)
        rest = [entry for chunk in await all_chunks(chunks) for entry in chunk]
        assert rest == list(range(4, 10))


class FailingInput:
    """An input whose every read raises, counting the reads."""

    def __init__(self) -> None:
        self.reads = 0

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> object:
        self.reads += 1
        raise ValueError("line 1 of prompts.jsonl is not JSON")


class FailingAsyncInput(FailingInput):
    """`FailingInput` read as an async input (an async iterator only)."""

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> object:
        return next(self)


@pytest.mark.parametrize("kind", [FailingInput, FailingAsyncInput])
async def test_an_input_that_raised_has_ended_and_is_not_read_again(
    kind: type[FailingInput],
) -> None:
    entries = kind()
    async with InputChunks(entries, size=4, fair_share=60.0) as chunks:
        chunk, failure = await chunks.next()
        assert chunk == []
        assert isinstance(failure, ValueError)
        assert chunks.ended is True
        assert await chunks.next() == ([], None)
    assert entries.reads == 1


async def test_a_resumed_run_numbers_every_item_by_its_input_position_and_reads_it_all(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chunks of 8 instead of 1,024: the same triage over several chunks, with 30 items not 3,000.
    monkeypatch.setattr(_resume, "_TRIAGE_CHUNK", 8)
    server = serve()

    def items() -> Iterator[dict[str, Any]]:  # a generator: the batch cannot count it ahead
        for i in range(30):  # several chunks, an item with an image among them
            yield edit(f"edit {i}") if i == 10 else {"prompt": f"plain {i}"}

    async with fake_client(server, KEY) as client:
        await client.images.generate_many(["recorded"], output_dir=tmp_path, rps=None).run()
        batch = client.images.generate_many(
            items(), output_dir=tmp_path, rps=None, model="flux-kontext"
        )
        async with batch:
            results = [result async for result in batch]
    assert sorted(result.index for result in results) == list(range(30))
    assert all(result.status == "ok" for result in results)
    assert batch.summary.unread_input is False  # the whole input was read
    assert server.fake.stats.generations == 1 + 30


async def test_an_invalid_plain_entry_fails_on_resume_even_if_its_id_was_recorded(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve()
    async with fake_client(server, KEY) as client:
        await client.images.generate_many(
            [{"id": "cat", "prompt": "a cat"}], output_dir=tmp_path, rps=None
        ).run()
        batch = client.images.generate_many(
            [{"id": "cat", "prompt": "a cat", "n": 0}], output_dir=tmp_path, rps=None
        )
        async with batch:
            [result] = [result async for result in batch]
    assert result.status == "failed"
    assert isinstance(result.error, InvalidInputError)
    assert server.fake.stats.generations == 1


async def test_a_resume_of_an_uncounted_input_totals_every_skipped_chunk(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A generator cannot be counted ahead, so the summary's total is what was read: every
    # chunk's skipped items add to it (30 items in chunks of 8: 8 + 8 + 8 + 6).
    monkeypatch.setattr(_resume, "_TRIAGE_CHUNK", 8)
    server = serve()
    prompts = [f"plain {i}" for i in range(30)]
    async with fake_client(server, KEY) as client:
        await client.images.generate_many(prompts, output_dir=tmp_path, rps=None).run()
        batch = client.images.generate_many(
            iter(prompts), output_dir=tmp_path, rps=None, skipped_results=False
        )
        summary = await batch.run()
    assert (summary.total, summary.skipped, summary.not_started) == (30, 30, 0)
    assert server.fake.stats.generations == 30  # the first run's, none again


async def test_a_resume_of_an_uncounted_input_totals_skipped_and_new_items_alike(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Recorded and new items interleaved over chunks of 8: each counts once in the total.
    monkeypatch.setattr(_resume, "_TRIAGE_CHUNK", 8)
    server = serve()
    recorded = [f"plain {i}" for i in range(20)]
    new = [f"new {i}" for i in range(5)]
    mixed = [prompt for pair in zip(recorded[:5], new, strict=True) for prompt in pair]
    async with fake_client(server, KEY) as client:
        await client.images.generate_many(recorded, output_dir=tmp_path, rps=None).run()
        batch = client.images.generate_many(
            iter(mixed + recorded[5:]), output_dir=tmp_path, rps=None, skipped_results=False
        )
        summary = await batch.run()
    assert (summary.total, summary.ok, summary.skipped, summary.not_started) == (25, 5, 20, 0)
    assert server.fake.stats.generations == 25  # 20 then only the 5 new
