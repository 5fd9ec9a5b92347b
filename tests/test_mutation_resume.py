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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

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
