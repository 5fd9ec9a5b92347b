"""The manifest's resume rules that mutation testing found unpinned (``nox -s mutation``).

Each test here was written to kill mutants that survived the suite (docs/reliability.md,
"Mutation testing"): what a recorded file stamp means when it is read back, how the index
finds and grows its slots on the path a resume really takes (`ManifestIndex.build` and its
lookups), and which files of a partly changed item a resume reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nanogpt_async._batch import _manifest as manifest_module
from nanogpt_async._batch._manifest import (
    FileEntry,
    ManifestIndex,
    ManifestWriter,
    RecordedItem,
    read_manifest,
    write_images,
)
from nanogpt_async._batch._shards import Shard
from tests._counting import hash_counter


def record(path: Path, *records: dict[str, Any]) -> Path:
    writer = ManifestWriter(path)
    writer.append_many(records)
    writer.close()
    return path


# -- a file's stamp, read back ------------------------------------------------------------------


def test_a_recorded_stamp_is_read_back_with_its_file(tmp_path: Path) -> None:
    entry = {"path": "a.png", "sha256": "ab", "bytes": 3, "stamp": [11, 22, 33]}
    path = record(tmp_path / "manifest.jsonl", {"id": "a", "status": "ok", "files": [entry]})
    recorded = read_manifest(path).get("a")
    assert recorded is not None
    assert recorded.files == (FileEntry("a.png", "ab", 3, (11, 22, 33)),)


@pytest.mark.parametrize(
    "stamp",
    [
        [11, 22],  # too short
        [11, 22, 33, 44],  # too long
        [11.0, 22, 33],  # not integers: each of the three is checked
        [11, "22", 33],
        [11, 22, None],
        [11, 22, True],  # a bool is not a stamp either
        "11 22 33",
    ],
)
def test_a_malformed_stamp_is_read_as_none_so_the_file_is_hashed(
    tmp_path: Path, stamp: object
) -> None:
    entry = {"path": "a.png", "sha256": "ab", "bytes": 3, "stamp": stamp}
    path = record(tmp_path / "manifest.jsonl", {"id": "a", "status": "ok", "files": [entry]})
    recorded = read_manifest(path).get("a")
    assert recorded is not None  # the record still counts: only its file gets hashed
    assert recorded.files == (FileEntry("a.png", "ab", 3, None),)


def test_of_an_item_with_one_changed_file_a_resume_hashes_only_that_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = write_images(tmp_path, [("a.png", b"first image"), ("b.png", b"other image")])
    files = [entry.as_json() for entry in entries]
    path = record(tmp_path / "manifest.jsonl", {"id": "a", "status": "ok", "files": files})
    index = read_manifest(path)
    (tmp_path / "b.png").write_bytes(b"other image")  # rewritten, same bytes: a new ctime
    hashed = hash_counter(monkeypatch)
    found = index.finished(tmp_path, ["a"], retry_failed=False)
    assert found[0] is not None  # both files still hold what was paid for: skipped
    # a.png still has the stamp it was written with: nothing wrote to it, it is not read.
    assert hashed == [str(tmp_path / "b.png")]
    (tmp_path / "b.png").write_bytes(b"other imagE")
    assert index.finished(tmp_path, ["a"], retry_failed=False) == [None]


# -- the index as a resume builds and reads it --------------------------------------------------


def ok_line(item_id: str) -> dict[str, Any]:
    return {"id": item_id, "status": "ok", "files": [], "request_id": f"r-{item_id}"}


def keyed_by_number(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ids ``"<n>"`` or ``"<n>-<tag>"`` hash to ``n``: the test decides where each one lands."""
    monkeypatch.setattr(manifest_module, "_id_key", lambda item_id: int(item_id.split("-")[0]))


def test_a_built_index_stays_at_most_half_full_and_grows_by_doubling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyed_by_number(monkeypatch)
    path = record(tmp_path / "m.jsonl", *(ok_line(str(key)) for key in range(1, 513)))
    index = ManifestIndex.build(path)
    assert (len(index), len(index._keys)) == (512, 1024)  # half full: no growth yet
    path = record(tmp_path / "m.jsonl", ok_line("513"))
    index = ManifestIndex.build(path)
    assert (len(index), len(index._keys)) == (513, 2048)
    found = index.get_many([str(key) for key in range(1, 514)])
    assert [item.request_id if item else None for item in found] == [
        f"r-{key}" for key in range(1, 514)
    ]


def test_ids_colliding_at_the_end_of_the_index_wrap_around_to_its_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyed_by_number(monkeypatch)
    # 1023 is the last slot of the first 1024: keys 1023, 2047 and 3071 all start there.
    ids = ["1023", "2047", "3071", "1"]
    path = record(tmp_path / "m.jsonl", *(ok_line(item_id) for item_id in ids))
    index = ManifestIndex.build(path)
    assert len(index._keys) == 1024
    found = index.get_many([*ids, "4095", "2"])
    assert [item.request_id if item else None for item in found] == [
        "r-1023",
        "r-2047",
        "r-3071",
        "r-1",
        None,  # starts at the end too, meets the wrapped keys, then a free slot
        None,
    ]


def test_a_key_growing_the_index_lands_where_lookups_find_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyed_by_number(monkeypatch)
    # Crowd slot 5 of the first table; after growing, each key must be found again from its
    # home slot in the larger table, colliding ones included.
    crowded = [str(5 + 1024 * k) for k in range(4)]
    rest = [str(key) for key in range(2000, 2600)]
    path = record(tmp_path / "m.jsonl", *(ok_line(item_id) for item_id in crowded + rest))
    index = ManifestIndex.build(path)
    assert len(index._keys) == 2048
    found = index.get_many(crowded + rest)
    assert all(
        item is not None and item.request_id == f"r-{i}"
        for item, i in zip(found, crowded + rest, strict=True)
    )


def test_the_latest_line_of_a_colliding_id_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyed_by_number(monkeypatch)
    path = record(
        tmp_path / "m.jsonl",
        ok_line("7"),
        {"id": "7", "status": "failed", "files": [], "request_id": "second"},
    )
    index = ManifestIndex.build(path)
    assert len(index) == 1
    recorded = index.get("7")
    assert recorded is not None
    assert (recorded.status, recorded.request_id) == ("failed", "second")


def test_lines_far_apart_in_a_large_manifest_are_each_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manifest_module, "_SPAN_READ", 100)  # far apart: one line at a time
    padding = "x" * 300
    lines = [{**ok_line(f"item-{i}"), "prompt": padding} for i in range(5)]
    path = record(tmp_path / "m.jsonl", *lines)
    index = read_manifest(path)
    found = index.get_many(["item-4", "new", "item-0", "item-2"])
    assert [item.request_id if item else None for item in found] == [
        "r-item-4",
        None,
        "r-item-0",
        "r-item-2",
    ]


def test_a_last_line_without_a_newline_is_read_whole_in_a_span(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(
        b"".join(json.dumps(ok_line(i)).encode() + b"\n" for i in ("a", "b"))
        + json.dumps(ok_line("c")).encode()  # a last line that was not ended
    )
    index = read_manifest(path)
    found = index.get_many(["c", "a"])
    assert [item.request_id if item else None for item in found] == ["r-c", "r-a"]


# -- a resume's one-pass check of unchanged items ----------------------------------------------


def stamped_record(folder: Path, item_id: str, data: bytes, **fields: Any) -> dict[str, Any]:
    [entry] = write_images(folder, [(f"{item_id}.png", data)])
    return {"id": item_id, "status": "ok", "files": [entry.as_json()], **fields}


def slow_path_counter(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids `ManifestIndex.finished` had to settle the long way (parse, then check files)."""
    settled: list[str] = []
    real = manifest_module._recorded

    def counting(line: bytes, item_id: str) -> Any:
        settled.append(item_id)
        return real(line, item_id)

    monkeypatch.setattr(manifest_module, "_recorded", counting)
    return settled


def test_a_resume_settles_unchanged_stamped_items_in_one_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The common case of a resume (a million items: about 10 µs each this way, twice that
    # through the general parse and file check): every file still has its recorded stamp.
    records = [
        stamped_record(tmp_path, f"i{n}", b"image %d" % n, request_id=f"r{n}") for n in range(3)
    ]
    index = read_manifest(record(tmp_path / "manifest.jsonl", *records))
    settled = slow_path_counter(monkeypatch)
    hashed = hash_counter(monkeypatch)
    found = index.finished(tmp_path, ["i0", "i1", "i2"], retry_failed=False)
    expected = []
    for n, written in enumerate(records):
        entry = written["files"][0]
        stamp = tuple(entry["stamp"])
        files = (FileEntry(entry["path"], entry["sha256"], entry["bytes"], stamp),)
        expected.append(RecordedItem("ok", files, f"r{n}"))
    assert found == expected
    assert (settled, hashed) == ([], [])


def test_a_request_id_that_is_not_text_is_read_as_none_in_one_pass_too(tmp_path: Path) -> None:
    index = read_manifest(
        record(tmp_path / "manifest.jsonl", stamped_record(tmp_path, "a", b"x", request_id=5))
    )
    [found] = index.finished(tmp_path, ["a"], retry_failed=False)
    assert found is not None
    assert found.request_id is None


def test_a_record_naming_a_file_below_the_folder_is_never_trusted(tmp_path: Path) -> None:
    # The batch writes plain names only: "sub/a.png" was not written by it, whatever it holds.
    (tmp_path / "sub").mkdir()
    [entry] = write_images(tmp_path / "sub", [("a.png", b"paid image")])
    moved = {**entry.as_json(), "path": "sub/a.png"}
    index = read_manifest(
        record(tmp_path / "manifest.jsonl", {"id": "a", "status": "ok", "files": [moved]})
    )
    assert index.finished(tmp_path, ["a"], retry_failed=False) == [None]


def test_a_failed_record_listing_intact_files_is_still_retried(tmp_path: Path) -> None:
    failed = {**stamped_record(tmp_path, "a", b"part of it"), "status": "failed"}
    index = read_manifest(record(tmp_path / "manifest.jsonl", failed))
    assert index.finished(tmp_path, ["a"], retry_failed=True) == [None]
    [kept] = index.finished(tmp_path, ["a"], retry_failed=False)
    assert kept is not None
    assert kept.status == "failed"  # reported as the failure it was, never as done


def test_a_colliding_id_is_never_skipped_on_another_items_intact_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manifest_module, "_id_key", lambda _: 7)  # every id collides
    index = read_manifest(
        record(tmp_path / "manifest.jsonl", stamped_record(tmp_path, "done", b"paid image"))
    )
    assert index.finished(tmp_path, ["other", "done"], retry_failed=False)[0] is None
    assert index.finished(tmp_path, ["done"], retry_failed=False)[0] is not None


@pytest.mark.parametrize("line", [b"[1, 2, 3]", b'"a string"', b"{torn"])
def test_a_manifest_line_replaced_after_indexing_means_not_recorded(
    tmp_path: Path, line: bytes
) -> None:
    path = record(tmp_path / "manifest.jsonl", stamped_record(tmp_path, "a", b"paid image"))
    index = read_manifest(path)
    path.write_bytes(line + b"\n")  # the same offset now holds something else
    assert index.finished(tmp_path, ["a"], retry_failed=False) == [None]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_records_number_that_is_not_finite_reads_as_missing(value: float) -> None:
    # A NaN cost would turn a job's total cost into NaN (the gallery, the shard report).
    assert manifest_module.record_number(value) is None


@pytest.mark.parametrize(
    "change",
    [
        {"sha256": None},
        {"bytes": 10.0},  # the right size, but not an integer
        {"path": 5},
    ],
)
def test_an_ok_record_with_a_malformed_file_entry_is_run_again_even_with_its_file_intact(
    tmp_path: Path, change: dict[str, Any]
) -> None:
    written = stamped_record(tmp_path, "a", b"paid image")  # 10 bytes, stamp unchanged
    entry = {**written["files"][0], **change}
    index = read_manifest(record(tmp_path / "manifest.jsonl", {**written, "files": [entry]}))
    # As `get` reads it (test_batch_manifest.py): a record it cannot trust is not recorded.
    assert index.get("a") is None
    assert index.finished(tmp_path, ["a"], retry_failed=False) == [None]


def test_an_ok_record_without_files_is_run_again(tmp_path: Path) -> None:
    index = read_manifest(
        record(tmp_path / "manifest.jsonl", {"id": "a", "status": "ok", "files": []})
    )
    assert index.finished(tmp_path, ["a"], retry_failed=False) == [None]


def test_an_ids_check_bits_depend_on_the_id() -> None:
    # A record the index found intact is skipped without reading its line back: the 32 check
    # bits stored beside each 64-bit key tell apart two ids whose keys collide. Bits that were
    # the same for every id would tell nothing apart.
    checks = {manifest_module._id_check(f"item-{i}") for i in range(100)}
    assert len(checks) > 90  # 100 ids in 2**32 values: all distinct but by a rare chance


def test_an_image_written_but_not_stat_able_afterwards_is_recorded_without_a_stamp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without a stamp a resume hashes the file instead of trusting it unchanged.
    def unstatable(_: object) -> tuple[int, int, int]:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(manifest_module, "_stamp_of", unstatable)
    [entry] = write_images(tmp_path, [("a.png", b"paid image")])
    assert entry.stamp is None
    assert (entry.path, entry.bytes) == ("a.png", 10)
    assert (tmp_path / "a.png").read_bytes() == b"paid image"


def test_a_shards_sweep_removes_its_own_temp_files_and_leaves_the_others(tmp_path: Path) -> None:
    mine = tmp_path / ".000005-a-fox-1234-0.png.abcd.nanogpt-tmp"
    theirs = tmp_path / ".000006-a-fox-1234-0.png.abcd.nanogpt-tmp"
    for path in (mine, theirs):
        path.write_bytes(b"half an image")
    assert manifest_module.sweep_temp_files(tmp_path, Shard(1, 4).owns_temp_file) == 1
    assert not mine.exists()
    assert theirs.exists()  # another shard may be writing it right now
