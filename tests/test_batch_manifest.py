"""The manifest module's rules, unit by unit: the index, the writer, file writes and checks.

The money-level behaviours (resume skips only intact paid items, a re-run never overwrites one)
are tested against the fake server in test_batch_resume.py and test_output_folder.py; these
pin the details under them that a resume of a large or damaged folder depends on. Each test
here was written to kill a mutant that survived ``nox -s mutation`` (docs/reliability.md).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import stat
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import pytest
from typing_extensions import Self

from nanogpt_async._batch import _manifest as manifest_module
from nanogpt_async._batch._manifest import (
    FileEntry,
    ManifestIndex,
    ManifestWriter,
    RecordedItem,
    files_intact,
    read_manifest,
    sweep_temp_files,
    write_images,
    write_new,
)
from nanogpt_async._errors import OutputWriteError
from nanogpt_async._output._files import TEMP_SUFFIX
from tests._counting import hash_counter, open_counter

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes and FIFOs")


def write_lines(path: Path, *lines: bytes) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


# -- the index --------------------------------------------------------------------------------


def test_a_record_gives_its_status_files_and_request_id(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "manifest.jsonl",
        b'{"id":"a","status":"ok","files":[{"path":"a.png","sha256":"ab","bytes":3}],'
        b'"request_id":"req-1"}',
        b'{"id":"b","status":"failed"}',  # a failed item may have no files at all
        b'{"id":"c","status":"failed","files":[],"request_id":5}',
    )
    index = read_manifest(path)
    assert index.get("a") == RecordedItem("ok", (FileEntry("a.png", "ab", 3),), "req-1")
    assert index.get("b") == RecordedItem("failed", (), None)
    assert index.get("c") == RecordedItem("failed", (), None)  # a request id is text or nothing


@pytest.mark.parametrize(
    "entry",
    [
        {"path": 5, "sha256": "ab", "bytes": 3},
        {"path": "a.png", "sha256": None, "bytes": 3},
        {"path": "a.png", "sha256": "ab", "bytes": "3"},
    ],
)
def test_a_record_with_a_malformed_file_entry_counts_as_not_recorded(
    tmp_path: Path, entry: dict[str, Any]
) -> None:
    record = {"id": "a", "status": "ok", "files": [entry]}
    path = write_lines(tmp_path / "manifest.jsonl", json.dumps(record).encode())
    assert read_manifest(path).get("a") is None  # run again rather than trust a bad entry


def test_an_id_that_is_not_valid_unicode_is_still_indexed(tmp_path: Path) -> None:
    # JSON input can carry a lone surrogate ("\ud800"); the manifest writes it escaped.
    writer = ManifestWriter(tmp_path / "manifest.jsonl")
    writer.append({"id": "odd\ud800", "status": "ok", "files": [], "prompt": "x\udfff"})
    writer.close()
    index = read_manifest(tmp_path / "manifest.jsonl")
    assert index.get("odd\ud800") is not None
    assert index.get("odd") is None


def test_ids_whose_hashes_collide_are_never_mistaken_for_each_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manifest_module, "_id_key", lambda _: 7)  # every id collides
    path = write_lines(
        tmp_path / "manifest.jsonl",
        b'{"id":"first","status":"ok","files":[]}',
        b'{"id":"second","status":"ok","files":[]}',
    )
    index = read_manifest(path)
    assert index.get("second") is not None
    assert index.get("first") is None  # its slot holds the other id: run it again, never skip


def test_a_manifest_changed_after_indexing_is_read_as_not_recorded(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "manifest.jsonl", b'{"id":"a","status":"ok","files":[]}')
    index = read_manifest(path)
    path.write_bytes(b"garbage\n")
    assert index.get("a") is None


def test_looking_up_an_unrecorded_item_reads_nothing_from_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_lines(tmp_path / "manifest.jsonl", b'{"id":"a","status":"ok","files":[]}')
    index = read_manifest(path)
    opened = open_counter(monkeypatch)
    assert [index.get(f"new-{i}") for i in range(50)] == [None] * 50
    assert opened == []  # a resume of ten million new items must not read a line for each
    assert index.get("a") is not None
    assert opened == [path]


def test_a_warning_names_the_file_and_every_skipped_line_when_few(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = b'{"id":"a","status":"ok","files":[]}'
    path = write_lines(tmp_path / "manifest.jsonl", good, b"bad", good, b"bad", b"bad", b"x", b"y")
    with caplog.at_level(logging.WARNING, logger="nanogpt_async"):
        read_manifest(path)
    expected = (
        f"{path}: skipped 5 line(s) that are not a manifest record (line 2, 4, 5, 6, 7): a line "
        "torn by a crash, or edited by hand. Items recorded only there will be run again"
    )
    assert [r.getMessage() for r in caplog.records] == [expected]


def test_a_warning_about_many_skipped_lines_says_how_many_more(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_lines(tmp_path / "manifest.jsonl", *[b"bad"] * 7)
    with caplog.at_level(logging.WARNING, logger="nanogpt_async"):
        read_manifest(path)
    assert "(line 1, 2, 3, 4, 5 and 2 more)" in caplog.records[0].getMessage()


# -- checking and writing files ---------------------------------------------------------------


def test_resume_hashes_no_file_of_the_wrong_size_or_kind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = write_images(tmp_path, [("a.png", b"12345678"), ("b.png", b"abcdefgh")])
    hashed = hash_counter(monkeypatch)
    (tmp_path / "b.png").write_bytes(b"abcd")  # truncated
    assert not files_intact(tmp_path, entries)
    (tmp_path / "b.png").unlink()
    (tmp_path / "b.png").mkdir()
    assert not files_intact(tmp_path, entries)
    assert hashed == []  # the sizes settled it: nothing read


def test_files_are_hashed_in_pieces_never_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without a stamp (a manifest older than stamps) the file must be hashed: in pieces.
    entries = [
        dataclasses.replace(entry, stamp=None)
        for entry in write_images(tmp_path, [("a.png", b"x" * 10)])
    ]
    sizes: list[int | None] = []

    class Recording:
        def __init__(self, file: IO[bytes]) -> None:
            self.file = file

        def __enter__(self) -> Self:
            return self

        def __exit__(self, *_: object) -> None:
            self.file.close()

        def read(self, size: int | None = -1) -> bytes:
            sizes.append(size)
            return self.file.read(-1 if size is None else size)

    def recording_open(path: str, *args: Any, **kwargs: Any) -> Any:
        return Recording(open(path, *args, **kwargs))  # noqa: PTH123 - the real open

    monkeypatch.setattr(manifest_module, "_HASH_CHUNK", 4)
    monkeypatch.setattr(manifest_module, "open", recording_open, raising=False)
    assert files_intact(tmp_path, entries)
    assert sizes == [4, 4, 4, 4]  # 4 + 4 + 2, then the empty read that ends it


def test_a_hundred_versions_of_a_name_are_tried_then_a_clear_error(tmp_path: Path) -> None:
    names = ["a.png", *(f"a-v{k}.png" for k in range(2, 100))]
    for name in names:
        (tmp_path / name).write_bytes(b"taken")
    assert write_images(tmp_path, [("a.png", b"new")])[0].path == "a-v100.png"
    with pytest.raises(FileExistsError) as caught:
        write_images(tmp_path, [("a.png", b"newer")])
    assert caught.value.errno == errno.EEXIST
    assert caught.value.strerror == "100 files named like 'a.png' already exist; move them away"
    assert caught.value.filename == str(tmp_path / "a.png")
    assert not (tmp_path / "a-v101.png").exists()


def test_a_temp_file_that_cannot_be_created_raises_its_own_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*_: object, **__: object) -> IO[bytes]:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "open", disk_full)
    with pytest.raises(OSError, match="No space left") as caught:
        write_new(tmp_path / "a.png", b"data")
    assert caught.value.errno == errno.ENOSPC  # not hidden by the cleanup of a missing temp file


@posix_only
def test_without_hard_links_a_file_gets_the_same_permissions_as_with_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_new(tmp_path / "linked.png", b"data")

    def no_links(*_: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    write_new(tmp_path / "direct.png", b"data")
    linked = stat.S_IMODE((tmp_path / "linked.png").stat().st_mode)
    direct = stat.S_IMODE((tmp_path / "direct.png").stat().st_mode)
    assert direct == linked
    assert direct & 0o111 == 0  # an image is never executable


def test_sweeping_counts_every_temp_file_and_leaves_other_things(tmp_path: Path) -> None:
    for name in (f".a{TEMP_SUFFIX}", f".b{TEMP_SUFFIX}", "keep.png"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / f"dir{TEMP_SUFFIX}").mkdir()
    target = tmp_path / "target.png"
    target.write_bytes(b"the user's")
    (tmp_path / f"link{TEMP_SUFFIX}").symlink_to(target)
    assert sweep_temp_files(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"dir{TEMP_SUFFIX}",
        "keep.png",
        f"link{TEMP_SUFFIX}",
        "target.png",
    ]


def test_a_temp_file_removed_by_someone_else_meanwhile_is_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / f".a{TEMP_SUFFIX}").write_bytes(b"x")

    def already_gone(self: Path, missing_ok: bool = False) -> None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(self))

    monkeypatch.setattr(Path, "unlink", already_gone)
    assert sweep_temp_files(tmp_path) == 0


# -- the writer -------------------------------------------------------------------------------


def test_records_are_written_as_compact_utf8_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    writer = ManifestWriter(path)
    assert writer.path == path
    writer.append({"id": "a", "prompt": "un renard, café", "cost": Decimal("0.01")})
    writer.close()
    expected = '{"id":"a","prompt":"un renard, café","cost":"0.01"}\n'
    assert path.read_bytes() == expected.encode("utf-8")


@pytest.mark.parametrize("before", [b"x", b'{"id":"a","status":"ok","files":[]}'])
def test_a_torn_last_line_is_ended_before_the_next_record(tmp_path: Path, before: bytes) -> None:
    path = tmp_path / "manifest.jsonl"
    path.write_bytes(before)  # a crash tore the last line: no newline at the end
    writer = ManifestWriter(path)
    writer.append({"id": "b", "status": "ok", "files": []})
    writer.close()
    assert path.read_bytes() == before + b'\n{"id":"b","status":"ok","files":[]}\n'
    assert read_manifest(path).get("b") is not None


def test_a_write_that_cannot_be_cut_back_leaves_the_next_record_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "manifest.jsonl"
    writer = ManifestWriter(path)
    writer.append({"id": "a", "status": "ok", "files": []})
    calls = {"n": 0}

    def half_then_full(fd: int, data: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return os.write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def no_truncate(*_: object) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(manifest_module, "_write", half_then_full)
    monkeypatch.setattr(os, "ftruncate", no_truncate)
    with pytest.raises(OSError, match="No space left"):
        writer.append({"id": "lost", "status": "ok", "files": []})
    monkeypatch.setattr(manifest_module, "_write", os.write)
    writer.append({"id": "c", "status": "ok", "files": []})
    writer.close()
    index = read_manifest(path)
    assert (index.get("a") is not None, index.get("lost"), index.get("c") is not None) == (
        True,
        None,
        True,
    )


def test_a_write_cut_back_leaves_no_hole_before_the_next_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "manifest.jsonl"
    writer = ManifestWriter(path)
    writer.append({"id": "a", "status": "ok", "files": []})
    calls = {"n": 0}

    def half_then_full(fd: int, data: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return os.write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(manifest_module, "_write", half_then_full)
    with pytest.raises(OSError, match="No space left"):
        writer.append({"id": "lost", "status": "ok", "files": []})
    monkeypatch.setattr(manifest_module, "_write", os.write)
    writer.append({"id": "c", "status": "ok", "files": []})
    writer.close()
    assert path.read_bytes() == (
        b'{"id":"a","status":"ok","files":[]}\n{"id":"c","status":"ok","files":[]}\n'
    )  # appended at the end as cut back, not after a run of NUL bytes


@posix_only
@pytest.mark.parametrize("opener", [ManifestWriter, read_manifest])
def test_a_fifo_at_the_manifests_name_is_refused_saying_which(
    tmp_path: Path, opener: Callable[[Path], object]
) -> None:
    path = tmp_path / "manifest.jsonl"
    os.mkfifo(path)
    with pytest.raises(OutputWriteError) as caught:
        opener(path)
    assert str(caught.value) == (
        f"{str(path)!r} is not a regular file; the manifest must be one. Move it away or use "
        "another output folder"
    )


def test_a_closed_writer_refuses_more_records(tmp_path: Path) -> None:
    writer = ManifestWriter(tmp_path / "manifest.jsonl")
    writer.close()
    with pytest.raises(ValueError, match=r"^the manifest writer is closed$"):
        writer.append({"id": "a", "status": "ok", "files": []})


# -- what a resume skips ---------------------------------------------------------------------


def recorded_folder(folder: Path, *, stamped: bool = True) -> tuple[ManifestIndex, Path]:
    [entry] = write_images(folder, [("a.png", b"12345678")])
    if not stamped:
        entry = dataclasses.replace(entry, stamp=None)
    writer = ManifestWriter(folder / "manifest.jsonl")
    writer.append({"id": "a", "status": "ok", "files": [entry.as_json()], "request_id": "r"})
    writer.append({"id": "f", "status": "failed", "files": []})
    writer.close()
    return read_manifest(folder / "manifest.jsonl"), folder / "a.png"


def test_finished_items_are_those_recorded_ok_with_their_files_unchanged(tmp_path: Path) -> None:
    index, _ = recorded_folder(tmp_path)
    found = index.finished(tmp_path, ["a", "f", "new"], retry_failed=True)
    assert [item.request_id if item else None for item in found] == ["r", None, None]
    [entry] = found[0].files if found[0] else ()
    assert entry.path == "a.png"
    assert entry.stamp is not None
    kept = index.finished(tmp_path, ["f"], retry_failed=False)  # a failed item, not retried
    assert kept == [RecordedItem("failed", (), None)]


def test_a_symlink_swapped_in_for_a_recorded_file_is_not_that_file(tmp_path: Path) -> None:
    index, image = recorded_folder(tmp_path)
    (tmp_path / "copy.png").write_bytes(image.read_bytes())  # same bytes, same size
    image.unlink()
    image.symlink_to(tmp_path / "copy.png")
    assert index.finished(tmp_path, ["a"], retry_failed=True) == [None]


@pytest.mark.parametrize("stamped", [True, False])
def test_a_recorded_file_whose_stamp_changed_is_hashed_before_it_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, stamped: bool
) -> None:
    index, image = recorded_folder(tmp_path, stamped=stamped)
    hashed = hash_counter(monkeypatch)
    assert index.finished(tmp_path, ["a"], retry_failed=True)[0] is not None
    assert len(hashed) == (0 if stamped else 1)  # the stamp settles it, else the hash does
    image.write_bytes(b"87654321")  # same size, other bytes: a new ctime
    assert index.finished(tmp_path, ["a"], retry_failed=True) == [None]
