"""Re-runs and resume: paid images are never overwritten, and resume checks what it skips.

Money is asserted against the fake server's own counts: what it charged and generated versus
what the manifest records and the folder holds.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from nanogpt_async import AsyncNanoGPT
from nanogpt_async._batch import _manifest as manifest_module
from nanogpt_async._batch import _resume as resume_module
from nanogpt_async._batch._manifest import (
    FileEntry,
    ManifestWriter,
    files_intact,
    read_manifest,
    write_images,
    write_new,
)
from nanogpt_async._batch._names import image_file_name
from nanogpt_async._batch._results import ItemResult
from nanogpt_async.testing import FakeServer, make_png
from tests._counting import hash_counter, hop_counter, open_counter
from tests._serving import Serve, fake_client, fake_servers

KEY = "ngk_resume_SECRET_31"


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start fake servers with the given knobs (stopped at the end of the test)."""
    with fake_servers(KEY) as start:
        yield start


def client_for(server: FakeServer, **options: Any) -> AbstractAsyncContextManager[AsyncNanoGPT]:
    return fake_client(server, KEY, **options)


def rows(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def pngs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_every_row_matches_its_files(folder: Path) -> None:
    for row in rows(folder):
        for entry in row["files"]:
            path = folder / entry["path"]
            assert sha256(path) == entry["sha256"], f"{path} does not hold what row {row} paid for"


PROMPTS = ["a lighthouse", "a red fox", "a blue jay"]


# -- re-runs never overwrite ------------------------------------------------------------------


@pytest.mark.parametrize("change", [{"seed": 2}, {"size": "768x1360"}, {"model": "gpt-image-1"}])
async def test_a_rerun_asking_for_something_else_keeps_every_paid_image(
    serve: Serve, tmp_path: Path, change: dict[str, Any]
) -> None:
    server = serve()
    async with client_for(server) as client:
        first = await client.images.generate_many(
            PROMPTS, output_dir=tmp_path, seed=1, rps=None
        ).run()
        kept = {path.name: sha256(path) for path in pngs(tmp_path)}
        second = await client.images.generate_many(
            PROMPTS, output_dir=tmp_path, **{"seed": 1, **change}, rps=None
        ).run()
    assert (first.ok, second.ok, second.skipped) == (3, 3, 0)
    assert server.fake.stats.images_generated == 6
    assert len(pngs(tmp_path)) == 6  # one file per paid image
    assert {name: sha256(tmp_path / name) for name in kept} == kept
    assert_every_row_matches_its_files(tmp_path)


async def test_a_file_already_at_an_items_name_is_never_replaced(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve()
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"not the batch's")
    folder = tmp_path / "out"
    folder.mkdir()
    taken = folder / image_file_name(0, "mine", "mine", 0, ".png")
    taken.write_bytes(b"the user's own file")
    linked = folder / image_file_name(1, "linked", "linked", 0, ".png")
    linked.symlink_to(outside)
    items = [{"id": "mine", "prompt": "mine"}, {"id": "linked", "prompt": "linked"}]
    async with client_for(server) as client:
        summary = await client.images.generate_many(items, output_dir=folder, rps=None).run()
    assert summary.ok == 2
    assert taken.read_bytes() == b"the user's own file"
    assert outside.read_bytes() == b"not the batch's"
    recorded = sorted(row["files"][0]["path"] for row in rows(folder))
    assert recorded == sorted(path.name.replace("-0.png", "-0-v2.png") for path in (taken, linked))
    assert_every_row_matches_its_files(folder)


def test_writing_a_new_file_refuses_a_taken_name(tmp_path: Path) -> None:
    target = tmp_path / "x.png"
    target.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        write_new(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]  # no temp file left


def test_without_hard_links_a_new_file_is_still_created_exclusively(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(*_: object) -> None:
        raise OSError(1, "Operation not permitted")  # what FAT and some FUSE mounts answer

    monkeypatch.setattr(os, "link", no_links)
    png = make_png("fallback")
    assert write_images(tmp_path, [("a.png", png)])[0].path == "a.png"
    assert write_images(tmp_path, [("a.png", b"second")])[0].path == "a-v2.png"
    assert (tmp_path / "a.png").read_bytes() == png
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-v2.png", "a.png"]


# -- resume verifies what it skips ------------------------------------------------------------


@pytest.mark.parametrize("damage", ["same-size-bytes-changed", "deleted", "truncated"])
async def test_resume_regenerates_an_item_whose_file_was_damaged(
    serve: Serve, tmp_path: Path, damage: str
) -> None:
    server = serve()
    async with client_for(server) as client:
        await client.images.generate_many(PROMPTS, output_dir=tmp_path, rps=None).run()
        fox = tmp_path / next(r["files"][0]["path"] for r in rows(tmp_path) if "fox" in r["prompt"])
        data = bytearray(fox.read_bytes())
        if damage == "deleted":
            fox.unlink()
        elif damage == "truncated":
            fox.write_bytes(data[:-10])
        else:
            data[len(data) // 2] ^= 0xFF
            fox.write_bytes(bytes(data))
        damaged = fox.read_bytes() if fox.exists() else None
        again = await client.images.generate_many(PROMPTS, output_dir=tmp_path, rps=None).run()
    assert (again.ok, again.skipped) == (1, 2)
    assert server.fake.stats.generations_by_prompt == {
        "a lighthouse": 1,
        "a red fox": 2,
        "a blue jay": 1,
    }
    if damaged is not None:
        assert fox.read_bytes() == damaged  # kept as it was: never overwritten
    latest = {row["id"]: row for row in rows(tmp_path)}
    assert len(latest) == 3
    for row in latest.values():
        assert sha256(tmp_path / row["files"][0]["path"]) == row["files"][0]["sha256"]


def test_files_are_intact_only_with_their_recorded_size_and_sha256(tmp_path: Path) -> None:
    png = make_png("x")
    entries = write_images(tmp_path, [("a.png", png), ("b.png", png)])
    assert files_intact(tmp_path, entries)
    assert not files_intact(tmp_path, [])

    flipped = bytearray(png)
    flipped[-5] ^= 1
    (tmp_path / "b.png").unlink()
    (tmp_path / "b.png").write_bytes(bytes(flipped))
    assert not files_intact(tmp_path, entries)  # same size, other bytes

    (tmp_path / "b.png").unlink()
    assert not files_intact(tmp_path, entries)

    (tmp_path / "b.png").mkdir()
    assert not files_intact(tmp_path, entries)

    escaping = FileEntry("../a.png", entries[0].sha256, entries[0].bytes)
    assert not files_intact(tmp_path, [escaping])


def test_resume_hashes_no_file_of_an_item_with_a_wrong_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    png = make_png("x")
    entries = write_images(tmp_path, [("a.png", png), ("b.png", png)])
    (tmp_path / "b.png").unlink()
    hashed = hash_counter(monkeypatch)
    assert not files_intact(tmp_path, entries)
    assert hashed == []  # the sizes settled it: nothing read


def test_resume_hashes_no_file_whose_stamp_is_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = write_images(tmp_path, [("a.png", make_png("a")), ("b.png", make_png("b"))])
    hashed = hash_counter(monkeypatch)
    assert all(entry.stamp is not None for entry in entries)
    assert files_intact(tmp_path, entries)
    assert hashed == []  # nothing wrote to them since: the stamps settled it


def test_a_file_rewritten_with_its_old_size_and_mtime_is_hashed_and_found_damaged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    png = make_png("x")
    [entry] = write_images(tmp_path, [("a.png", png)])
    path = tmp_path / "a.png"
    before = path.stat()
    flipped = bytearray(png)
    flipped[-5] ^= 1
    with path.open("r+b") as file:  # in place: same inode, same size
        file.write(bytes(flipped))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the old mtime back
    hashed = hash_counter(monkeypatch)
    assert not files_intact(tmp_path, [entry])  # the ctime changed: hashed, and it differs
    assert hashed == [str(path)]


def test_a_file_recorded_without_a_stamp_is_hashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [entry] = write_images(tmp_path, [("a.png", make_png("a"))])
    legacy = FileEntry(entry.path, entry.sha256, entry.bytes)  # a manifest older than stamps
    hashed = hash_counter(monkeypatch)
    assert files_intact(tmp_path, [legacy])
    assert hashed == [str(tmp_path / "a.png")]
    copied = FileEntry(entry.path, entry.sha256, entry.bytes, (1, 2, 3))  # say, restored
    assert files_intact(tmp_path, [copied])
    assert len(hashed) == 2


async def test_the_manifest_records_each_files_stamp_and_a_resume_skips_without_hashing(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve()
    async with client_for(server) as client:
        await client.images.generate_many(PROMPTS, output_dir=tmp_path, rps=None).run()
        for row in rows(tmp_path):
            [entry] = row["files"]
            info = (tmp_path / entry["path"]).stat()
            assert entry["stamp"] == [info.st_ino, info.st_mtime_ns, info.st_ctime_ns]
        hashed = hash_counter(monkeypatch)
        again = await client.images.generate_many(PROMPTS, output_dir=tmp_path, rps=None).run()
    assert (again.ok, again.skipped) == (0, 3)
    assert hashed == []
    assert server.fake.stats.generations == 3


def test_looking_up_many_items_opens_the_manifest_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "manifest.jsonl"
    writer = ManifestWriter(path)
    for i in range(50):
        writer.append({"id": f"i{i}", "status": "ok", "files": [], "request_id": f"r{i}"})
    writer.close()
    index = read_manifest(path)
    opened = open_counter(monkeypatch)
    found = index.get_many([f"i{i}" for i in range(50)] + ["absent"])
    assert [item.request_id if item else None for item in found] == [
        *(f"r{i}" for i in range(50)),
        None,
    ]
    assert opened == [path]


# -- the manifest reader and writer -----------------------------------------------------------

MALFORMED = [
    b"garbage that is not json",
    b"\xff\xfe\x00 invalid utf-8",
    b"[" * 5000,
    b'{"id": 5, "status": "ok"}',
    b'{"id": "c", "status": "maybe"}',
    b'["a", "list"]',
    b"12",
    b'{"id": "c", "status": "ok", "files": "not a list"}',
]


@pytest.mark.parametrize("json_loads", ["fast", "stdlib"])
def test_a_malformed_line_in_the_middle_is_skipped_with_a_warning(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    json_loads: str,
) -> None:
    if json_loads == "stdlib":  # the codec without the speed extra
        monkeypatch.setattr(manifest_module, "loads", json.loads)
    good = b'{"id": "%s", "status": "ok", "files": []}'
    path = tmp_path / "manifest.jsonl"
    path.write_bytes(b"\n".join([good % b"a", *MALFORMED, good % b"b", b""]))
    with caplog.at_level(logging.WARNING, logger="nanogpt_async"):
        index = read_manifest(path)
    assert {key: index.get(key) is not None for key in "abc"} == {"a": True, "b": True, "c": False}
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "skipped 7 line(s)" in warning  # the record of "c" with bad files parses as a line
    assert "line 2, 3, 4, 5, 6 and 2 more" in warning


async def test_resume_survives_a_malformed_line_in_the_middle(serve: Serve, tmp_path: Path) -> None:
    server = serve()
    async with client_for(server) as client:
        await client.images.generate_many(PROMPTS[:2], output_dir=tmp_path, rps=None).run()
        manifest = tmp_path / "manifest.jsonl"
        first, second = manifest.read_bytes().splitlines()
        manifest.write_bytes(b"\n".join([first, b"[" * 5000, b"\xff{", second, b""]))
        again = await client.images.generate_many(PROMPTS, output_dir=tmp_path, rps=None).run()
    assert (again.skipped, again.ok) == (2, 1)
    assert server.fake.stats.generations == 3


def test_closing_the_writer_flushes_to_disk_and_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    writer = ManifestWriter(tmp_path / "manifest.jsonl")
    writer.append({"id": "a", "status": "ok", "files": []})
    writer.close()
    assert synced
    with pytest.raises(ValueError, match="writer is closed"):
        writer.append({"id": "b", "status": "ok", "files": []})
    writer.close()  # twice is fine
    assert read_manifest(tmp_path / "manifest.jsonl").get("a") is not None


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_a_resume_reads_only_a_few_items_with_input_images_ahead(
    serve: Serve, tmp_path: Path, *, asynchronous: bool
) -> None:
    server = serve()
    data_url = "data:image/png;base64," + base64.b64encode(make_png("in")).decode()
    read = 0

    def items() -> Iterator[dict[str, str]]:
        nonlocal read
        for i in range(40):
            read += 1  # each holds its input image's data URL (megabytes, in real use)
            yield {"prompt": f"edit {i}", "operation": "edit", "image": data_url}

    async with client_for(server) as client:
        await client.images.generate_many(["recorded"], output_dir=tmp_path, rps=None).run()
        batch = client.images.generate_many(
            as_async(items()) if asynchronous else items(),
            output_dir=tmp_path,
            rps=None,
            concurrency=1,
            download_concurrency=1,
            model="flux-kontext",
        )
        async with batch:
            read_at_results = [read async for _ in batch]
    assert batch.summary.ok == 40
    # Resuming reads far ahead (1,024 items) for small items, but not for these: items read
    # and not yet handed out stay within the 8 read ahead, plus the one generating, the one
    # saving, the one in the results buffer and the one being prepared (the old code: 40).
    backlog = [read_at - handed for handed, read_at in enumerate(read_at_results)]
    assert max(backlog) <= 12


async def test_resume_skips_an_item_whose_id_is_not_valid_unicode(
    serve: Serve, tmp_path: Path
) -> None:
    # A Python caller may pass any str as an id; the manifest must read back what it wrote.
    server = serve()
    items = [{"id": "odd\ud800", "prompt": "a lighthouse"}]
    async with client_for(server) as client:
        first = await client.images.generate_many(items, output_dir=tmp_path, rps=None).run()
        again = await client.images.generate_many(items, output_dir=tmp_path, rps=None).run()
    assert (first.ok, again.ok, again.skipped) == (1, 0, 1)
    assert server.fake.stats.generations == 1  # paid once, not once per resume


# -- resume at scale: few hops, the same verdicts ---------------------------------------------


async def as_async(items: Iterable[Any]) -> AsyncIterator[Any]:
    """``items`` as an async input, the way the CLI hands a prompt file to the batch."""
    for item in items:
        yield item


def record_items(folder: Path, count: int) -> list[dict[str, str]]:
    """``count`` items recorded ok with their files, as a finished run leaves them."""
    writer = ManifestWriter(folder / "manifest.jsonl")
    items = []
    for i in range(count):
        item = {"id": f"item-{i}", "prompt": f"recorded {i}"}
        path, data = folder / f"{item['id']}.png", f"image {i}".encode()
        path.write_bytes(data)  # no fsync per file, unlike the batch: fast enough for a test
        info = path.lstat()
        stamp = (info.st_ino, info.st_mtime_ns, info.st_ctime_ns)
        entry = FileEntry(path.name, hashlib.sha256(data).hexdigest(), len(data), stamp)
        writer.append(
            {"id": item["id"], "status": "ok", "files": [entry.as_json()], "request_id": f"r{i}"}
        )
        items.append(item)
    writer.close()
    return items


@pytest.fixture(scope="module")
def recorded_1100(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, list[dict[str, str]]]]:
    """A folder of 1,100 items recorded ok, shared by the tests that only resume it.

    A resume that skips every item changes nothing in it (the tests check), and creating 1,100
    files cost 1-2 s a test (ext4, loaded machine), more than the resume under test. Deleted
    here, while this worker goes on, rather than by pytest's controller after the last test
    (5.4 s there, measured under load).
    """
    folder = tmp_path_factory.mktemp("recorded-1100")
    yield folder, record_items(folder, 1100)
    shutil.rmtree(folder)


@pytest.mark.parametrize("asynchronous", [False, True])
@pytest.mark.parametrize("read_results", [False, True])
async def test_a_resume_checks_its_recorded_items_in_a_few_worker_thread_calls(
    serve: Serve,
    recorded_1100: tuple[Path, list[dict[str, str]]],
    monkeypatch: pytest.MonkeyPatch,
    *,
    read_results: bool,
    asynchronous: bool,
) -> None:
    server = serve()
    folder, items = recorded_1100
    manifest = (folder / "manifest.jsonl").read_bytes()
    hops = hop_counter(monkeypatch)
    # A sync input is read for at most 2 ms at a time: on a loaded machine (or under mutmut's
    # bookkeeping) that cut chunks short and made 8 hops. The count is about chunk size only.
    monkeypatch.setattr(resume_module, "FAIR_SHARE", 60.0)
    results: list[ItemResult] = []
    async with client_for(server) as client:
        batch = client.images.generate_many(
            as_async(items) if asynchronous else items, output_dir=folder, rps=None
        )
        if read_results:
            async with batch:
                results = [result async for result in batch]
        else:
            await batch.run()
    assert (batch.summary.skipped, batch.summary.ok) == (1100, 0)
    assert server.fake.stats.generations == 0
    assert (folder / "manifest.jsonl").read_bytes() == manifest  # nothing re-recorded
    # One call per 256 items read (5), plus opening and closing the folder; the per-item path
    # took a hop per group of waiting items (13 here, 37 when reading the results).
    assert len(hops) <= 7, [getattr(hop, "__qualname__", hop) for hop in hops]
    if read_results:
        assert [result.status for result in results] == ["skipped"] * 1100
        assert results[7].files == [folder / "item-7.png"]
        assert results[7].request_id == "r7"


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_an_input_error_in_a_resumed_run_stops_it_and_keeps_what_was_paid_for(
    serve: Serve, tmp_path: Path, *, asynchronous: bool
) -> None:
    server = serve()
    recorded = record_items(tmp_path, 300)

    def items() -> Iterator[dict[str, str]]:
        yield from recorded
        yield {"id": "new-1", "prompt": "new one"}
        raise ValueError("line 302 of prompts.jsonl is not JSON")

    async with client_for(server) as client:
        batch = client.images.generate_many(
            as_async(items()) if asynchronous else items(), output_dir=tmp_path, rps=None
        )
        with pytest.raises(ValueError, match="line 302"):
            await batch.run()
    assert batch.summary.skipped == 300
    assert server.fake.stats.generations == batch.summary.ok <= 1
    latest = {row["id"]: row for row in rows(tmp_path)}
    assert len(latest) == 300 + batch.summary.ok
    assert all(latest[f"item-{i}"]["status"] == "ok" for i in range(300))
    if batch.summary.ok:  # paid for: recorded, with its file
        assert latest["new-1"]["status"] == "ok"
        assert_every_row_matches_its_files(tmp_path)
