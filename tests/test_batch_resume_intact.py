"""A resume at scale: records whose files were unchanged when the index was built skip fast.

The manifest index checks each ok record's files as it reads the lines (one ``stat`` each) and
marks the unchanged ones intact; a run that discards its results then skips them without reading
their lines back. What must not change: a damaged or missing file is regenerated, an item is
never paid twice, and only the new items are sent and charged (the fake's own counts).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from nanogpt_async._batch import _manifest as manifest_module
from nanogpt_async._batch._chunks import ChunkedInput
from nanogpt_async._batch._manifest import ManifestWriter, read_manifest
from nanogpt_async._batch._prepare import Preparer
from nanogpt_async._batch._resume import Resume
from nanogpt_async._errors import RepeatedIdError
from tests._counting import hop_counter, open_counter
from tests._recorded import entry, record, recorded_items
from tests._serving import Serve, fake_client, fake_servers

KEY = "ngk_resume_intact_SECRET_7"


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start fake servers with the given knobs (stopped at the end of the test)."""
    with fake_servers(KEY) as start:
        yield start


def test_an_index_built_with_its_folder_marks_only_unchanged_ok_records_intact(
    tmp_path: Path,
) -> None:
    path = tmp_path / "manifest.jsonl"
    writer = ManifestWriter(path)
    for name in ("same", "deleted", "rewritten", "grown", "replaced-by-link"):
        record(writer, name, "ok", [entry(tmp_path, f"{name}.png", b"image " + name.encode())])
    record(writer, "failed", "failed", [])
    record(writer, "no-stamp", "ok", [entry(tmp_path, "no-stamp.png", b"x", stamped=False)])
    record(writer, "no-files", "ok", [])
    two = [entry(tmp_path, "two-1.png", b"one"), entry(tmp_path, "two-2.png", b"two")]
    record(writer, "two-files", "ok", two)
    half = [entry(tmp_path, "half-1.png", b"one"), entry(tmp_path, "half-2.png", b"two")]
    record(writer, "one-of-two-gone", "ok", half)
    record(writer, "outside", "ok", [{**entry(tmp_path, "o.png", b"o"), "path": "../o.png"}])
    # A failed retry's line after an ok one: the latest line wins.
    record(writer, "retried", "ok", [entry(tmp_path, "retried.png", b"first")])
    record(writer, "retried", "failed", [])
    # An ok line after a failed one: intact.
    record(writer, "fixed", "failed", [])
    record(writer, "fixed", "ok", [entry(tmp_path, "fixed.png", b"second")])
    writer.close()
    (tmp_path / "deleted.png").unlink()
    rewritten = tmp_path / "rewritten.png"
    before = rewritten.stat()
    rewritten.write_bytes(b"IMAGE rewritten")  # same size, new ctime
    os.utime(rewritten, ns=(before.st_atime_ns, before.st_mtime_ns))
    (tmp_path / "grown.png").write_bytes(b"image grown, and more")
    (tmp_path / "replaced-by-link.png").unlink()
    (tmp_path / "replaced-by-link.png").symlink_to(tmp_path / "same.png")
    (tmp_path / "half-2.png").unlink()
    ids = ["same", "deleted", "rewritten", "grown", "replaced-by-link", "failed", "no-stamp"]
    ids += ["no-files", "two-files", "one-of-two-gone", "outside", "retried", "fixed", "absent"]

    index = read_manifest(path, tmp_path)

    intact = dict(zip(ids, index.intact(ids), strict=True))
    assert {item for item, done in intact.items() if done} == {"same", "two-files", "fixed"}
    # Built without its folder, nothing is known intact: every item is checked the slow way.
    assert read_manifest(path).intact(ids) == [False] * len(ids)


def test_an_intact_record_needs_the_96_bit_id_check_not_only_the_64_bit_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "manifest.jsonl"
    writer = ManifestWriter(path)
    record(writer, "a", "ok", [entry(tmp_path, "a.png", b"a")])
    writer.close()
    index = read_manifest(path, tmp_path)
    assert index.intact(["a"]) == [True]
    # Another id with the same 64-bit key (a collision): its other 32 bits differ, so it is
    # not taken for "a" (which would skip an item never done).
    monkeypatch.setattr(manifest_module, "_id_check", lambda _: 0xDEADBEEF)
    assert index.intact(["a"]) == [False]


async def test_a_resume_that_discards_results_reads_no_manifest_line_back(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve()
    items = recorded_items(tmp_path, 700)
    opened = open_counter(monkeypatch)
    async with fake_client(server, KEY) as client:
        summary = await client.images.generate_many(items, output_dir=tmp_path, rps=None).run()
    assert (summary.skipped, summary.ok, summary.failed) == (700, 0, 0)
    assert server.fake.stats.generation_requests == 0
    # Once to build the index; before, once more per chunk of 256 items to read lines back.
    assert opened == [tmp_path / "manifest.jsonl"]


async def test_a_resume_of_recorded_and_new_items_sends_and_charges_only_the_new_ones(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve()
    recorded = [{"id": f"old-{i}", "prompt": f"old prompt {i}"} for i in range(40)]
    async with fake_client(server, KEY) as client:
        first = await client.images.generate_many(recorded, output_dir=tmp_path, rps=None).run()
        assert (first.ok, server.fake.stats.generations) == (40, 40)
        charged_before = server.fake.stats.charged_usd
        # Damage two recorded items' files: they are regenerated, the rest skipped.
        manifest = read_manifest(tmp_path / "manifest.jsonl")
        for damaged in ("old-3", "old-30"):
            found = manifest.get(damaged)
            assert found is not None
            (tmp_path / found.files[0].path).write_bytes(b"not the image")
        new = [{"id": f"new-{i}", "prompt": f"new prompt {i}"} for i in range(5)]
        mixed = [*recorded[:10], new[0], *recorded[10:25], *new[1:3], *recorded[25:], *new[3:]]
        again = await client.images.generate_many(mixed, output_dir=tmp_path, rps=None).run()
    assert (again.ok, again.skipped, again.failed) == (7, 38, 0)
    stats = server.fake.stats
    assert stats.generation_requests == stats.generations == 40 + 7
    assert stats.generations_by_prompt["old prompt 3"] == 2
    assert stats.generations_by_prompt["old prompt 30"] == 2
    assert all(stats.generations_by_prompt[f"new prompt {i}"] == 1 for i in range(5))
    assert sum(stats.generations_by_prompt.values()) == 47
    assert again.cost == pytest.approx(stats.charged_usd - charged_before)


@pytest.mark.parametrize("recorded_first", [False, True])
async def test_without_skipped_results_a_resume_hands_out_only_the_items_it_ran(
    serve: Serve, tmp_path: Path, *, recorded_first: bool
) -> None:
    server = serve()
    items = recorded_items(tmp_path, 300)
    new = [{"id": f"new-{i}", "prompt": f"new prompt {i}"} for i in range(3)]
    new[1]["prompt"] = " "  # invalid: fails unsent
    mixed = [*items, *new] if recorded_first else [new[0], *items, *new[1:]]
    async with fake_client(server, KEY) as client:
        batch = client.images.generate_many(
            mixed, output_dir=tmp_path, rps=None, skipped_results=False
        )
        async with batch:
            results = [result async for result in batch]
    assert sorted((result.id, result.status) for result in results) == [
        ("new-0", "ok"),
        ("new-1", "failed"),
        ("new-2", "ok"),
    ]
    summary = batch.summary
    assert (summary.total, summary.skipped, summary.ok, summary.failed) == (303, 300, 2, 1)
    assert batch.progress.done == 303
    assert server.fake.stats.generation_requests == server.fake.stats.generations == 2


async def test_a_chunked_input_is_taken_a_list_at_a_time_and_its_error_ends_it_in_place(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve()
    items = recorded_items(tmp_path, 1000)
    lists_read: list[int] = []

    async def lists() -> AsyncIterator[list[Any]]:
        for start in range(0, 1000, 250):
            lists_read.append(start)
            yield items[start : start + 250]
        yield [{"id": "new-1", "prompt": "new one"}]
        raise ValueError("line 1002 of prompts.jsonl is not JSON")

    hops = hop_counter(monkeypatch)
    async with fake_client(server, KEY) as client:
        batch = client.images.generate_many(ChunkedInput(lists()), output_dir=tmp_path, rps=None)
        with pytest.raises(ValueError, match="line 1002"):
            await batch.run()
    # The new item may or may not have had its turn before the error stopped the batch.
    assert batch.summary.skipped == 1000
    assert server.fake.stats.generations == batch.summary.ok <= 1
    assert lists_read == [0, 250, 500, 750]
    # One triage call per list (the entries are not read ahead one by one into chunks).
    triaged = [
        hop
        for hop in hops
        if getattr(getattr(hop, "func", None), "__func__", None) is Resume.triage
    ]
    assert len(triaged) == 5


async def test_a_chunked_input_runs_one_entry_at_a_time_without_a_manifest(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve()

    async def lists() -> AsyncIterator[list[Any]]:
        yield ["a red fox", {"prompt": "a blue jay", "id": "jay"}]
        yield []
        yield ["a wren"]

    async with fake_client(server, KEY) as client:
        batch = client.images.generate_many(ChunkedInput(lists()), output_dir=tmp_path, rps=None)
        async with batch:
            results = sorted([(r.index, r.status) async for r in batch])
    assert results == [(0, "ok"), (1, "ok"), (2, "ok")]
    assert server.fake.stats.generations_by_prompt == {"a red fox": 1, "a blue jay": 1, "a wren": 1}


async def test_a_resume_that_discards_results_prepares_a_request_only_for_the_items_it_runs(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve()
    items = recorded_items(tmp_path, 40)
    (tmp_path / "item-7.png").unlink()  # recorded, its file gone: runs again
    items[3]["prompt"] = "  "  # recorded, now blank: fails unsent, as any blank prompt
    items[5]["prompt"] = "caf\u00e9 \ud800"  # recorded, now a lone surrogate: fails unsent
    items[6]["prompt"] = "caf\u00e9"  # recorded, not ASCII: skipped all the same
    items.append({"id": "new-1", "prompt": "new one"})
    items.append({"prompt": "new without an id"})
    made = []
    real = Preparer.plain_job

    def counted(entry: Any, index: int, user_id: str) -> Any:
        made.append(user_id)
        return real(entry, index, user_id)

    monkeypatch.setattr(Preparer, "plain_job", staticmethod(counted))
    async with fake_client(server, KEY) as client:
        summary = await client.images.generate_many(items, output_dir=tmp_path, rps=None).run()
    assert (summary.ok, summary.failed, summary.skipped) == (3, 2, 37)
    assert sorted(made) == ["item-7", "new-1"]  # no job for the 37 skipped
    assert server.fake.stats.generations_by_prompt == {
        "recorded 7": 1,
        "new one": 1,
        "new without an id": 1,
    }
    assert summary.cost == pytest.approx(server.fake.stats.charged_usd)


async def test_a_repeated_id_stops_a_resume_that_discards_results_where_it_stands(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve()
    items = recorded_items(tmp_path, 10)
    items.insert(6, {"id": "new-1", "prompt": "new one"})
    items.insert(8, {"id": "item-2", "prompt": "recorded 2 again"})
    async with fake_client(server, KEY) as client:
        batch = client.images.generate_many(items, output_dir=tmp_path, rps=None)
        with pytest.raises(RepeatedIdError, match="item 8 has the id 'item-2' of item 2"):
            await batch.run()
    # The items before the repeat are skipped; the new one may or may not have had its turn.
    assert batch.summary.skipped == 7
    assert server.fake.stats.generations == batch.summary.ok <= 1
    assert "recorded 2 again" not in server.fake.stats.generations_by_prompt
