"""Input that goes bad mid-run: the batch stops like stop(), saves what is paid, then raises."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from nanogpt_async import AsyncNanoGPT, BatchItem, InvalidInputError, read_prompts
from nanogpt_async.testing import FakeNanoGPT, FakeServer
from tests._waiting import wait_until

KEY = "ngk_input_errors_SECRET_8080"


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeNanoGPT(api_key=KEY, latency=0.05).run_in_thread() as running:
        yield running


def rows(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def recorded_prompts(folder: Path) -> list[str]:
    return sorted(row["prompt"] for row in rows(folder) if row["status"] == "ok")


async def settled(server: FakeServer) -> None:
    await anyio.to_thread.run_sync(
        wait_until, lambda: server.fake.stats.in_flight == 0, "the fake to finish"
    )


class BrokenSourceError(Exception):
    """What a user's input source raises."""


async def test_an_input_that_raises_mid_run_lets_in_flight_items_finish_then_raises(
    server: FakeServer, tmp_path: Path
) -> None:
    async def items() -> AsyncIterator[str]:
        for i in range(6):
            yield f"prompt {i}"
        # Raised once all six were sent (some may be done already: each takes 50 ms, and trio
        # starts them in an order of its own, so "six in flight at once" may never happen).
        await anyio.to_thread.run_sync(
            wait_until, lambda: server.fake.stats.generation_requests == 6, "six generations sent"
        )
        raise BrokenSourceError("the database went away")

    async with AsyncNanoGPT(api_key=KEY, base_url=server.base_url) as client:
        batch = client.images.generate_many(items(), output_dir=tmp_path, rps=None)
        with pytest.raises(BrokenSourceError):
            await batch.run()
    await settled(server)
    assert batch.summary.ok == 6
    assert (batch.summary.stopped_reason or "").startswith("input error: the database")
    # Money: all six charged generations are recorded.
    assert sorted(server.fake.stats.generations_by_prompt) == recorded_prompts(tmp_path)
    assert server.fake.stats.generations == 6


async def test_a_bad_line_of_a_streamed_prompt_file_stops_at_that_line(
    server: FakeServer, tmp_path: Path
) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        '{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c", "n": 0}\n{"prompt": "d"}\n'
    )
    out = tmp_path / "out"
    async with AsyncNanoGPT(api_key=KEY, base_url=server.base_url) as client:
        batch = client.images.generate_many(read_prompts(prompts), output_dir=out, rps=None)
        with pytest.raises(InvalidInputError, match="line 3"):
            await batch.run()
    await settled(server)
    # What was sent before the reader reached line 3 is paid and recorded; nothing after it is
    # sent. Whether "b" went out first is the scheduler's call (trio runs ready tasks in an
    # order of its own; asyncio sends both).
    charged = sorted(server.fake.stats.generations_by_prompt)
    assert recorded_prompts(out) == charged
    assert set(charged) <= {"a", "b"}
    assert server.fake.stats.generations == len(charged)


async def test_a_repeated_user_id_is_refused_before_it_is_sent(
    server: FakeServer, tmp_path: Path
) -> None:
    items: list[str | BatchItem | dict[str, str]] = [
        BatchItem("a fox", id="fox"),
        {"prompt": "an owl", "id": "owl"},
        {"prompt": "a different fox", "id": "fox"},
        "never sent",
    ]
    async with AsyncNanoGPT(api_key=KEY, base_url=server.base_url) as client:
        batch = client.images.generate_many(items, output_dir=tmp_path, rps=None)
        with pytest.raises(InvalidInputError) as caught:
            await batch.run()
    await settled(server)
    assert "item 2 has the id 'fox' of item 0" in str(caught.value)
    # Items before it that were sent are paid and recorded (whether "an owl" went out before the
    # check is the scheduler's call: under trio it may not); the repeat and after: never sent.
    charged = sorted(server.fake.stats.generations_by_prompt)
    assert recorded_prompts(tmp_path) == charged
    assert set(charged) <= {"a fox", "an owl"}


async def test_ids_repeated_only_by_the_generated_scheme_are_fine(
    server: FakeServer, tmp_path: Path
) -> None:
    async with AsyncNanoGPT(api_key=KEY, base_url=server.base_url) as client:
        summary = await client.images.generate_many(
            ["same", "same", "same"], output_dir=tmp_path, rps=None
        ).run()
    assert summary.ok == 3


async def test_a_repeated_id_in_a_prompt_file_edited_after_its_check_is_never_sent(
    server: FakeServer, tmp_path: Path
) -> None:
    # The command line's second read of a checked file leaves its ids unchecked while the file
    # is unchanged: edited between the two reads, the run stops before anything read since.
    from nanogpt_async._cli._batchrun import prompt_items

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "fox", "prompt": "a fox"}\n{"id": "owl", "prompt": "an owl"}\n')
    source = prompt_items(str(prompts), "auto")
    assert source.total == 2
    prompts.write_text(
        '{"id": "fox", "prompt": "a fox"}\n{"id": "fox", "prompt": "a different fox"}\n'
        '{"prompt": "never sent"}\n'
    )
    async with AsyncNanoGPT(api_key=KEY, base_url=server.base_url) as client:
        batch = client.images.generate_many(source.items, output_dir=tmp_path / "out", rps=None)
        with pytest.raises(
            InvalidInputError, match="line 1: the file changed after it was checked before the run"
        ):
            await batch.run()
    await settled(server)
    assert server.fake.stats.generations_by_prompt == {}
    assert recorded_prompts(tmp_path / "out") == []


async def test_items_started_before_the_input_fails_are_sent_and_recorded(
    server: FakeServer, tmp_path: Path
) -> None:
    # The producer starts items without a loop turn while slots are free, and this source never
    # yields to the loop either: when it raises right after three entries, none of the three
    # has sent yet. They were read before the bad entry: they go (docs/cli.md, exit code 2).
    async def items() -> AsyncIterator[str]:
        for prompt in ("a", "b", "c"):
            yield prompt
        raise BrokenSourceError("the cursor broke")

    async with AsyncNanoGPT(api_key=KEY, base_url=server.base_url) as client:
        batch = client.images.generate_many(items(), output_dir=tmp_path, rps=None)
        with pytest.raises(BrokenSourceError):
            await batch.run()
    await settled(server)
    assert sorted(server.fake.stats.generations_by_prompt) == ["a", "b", "c"]
    assert recorded_prompts(tmp_path) == ["a", "b", "c"]
    assert batch.summary.ok == 3
    assert batch.summary.not_started == 0
