"""A big manifest's index is sized up front from its first lines, not grown by doubling.

Growing the table on the way to a million records re-inserted two million keys (about 0.5 s of
a resume's build, `_manifest._table_size`). The threshold is patched down here, so a few
thousand small records stand for a big manifest.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

import pytest

from nanogpt_async._batch import _manifest as manifest_module
from nanogpt_async._batch._manifest import ManifestIndex


def manifest_of(path: Path, count: int, *, first: bytes = b"") -> Path:
    lines = [first] if first else []
    lines += [b'{"id":"item-%05d","status":"ok","files":[]}\n' % i for i in range(count)]
    path.write_bytes(b"".join(lines))
    return path


def count_grows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    grows: list[int] = []
    grow = ManifestIndex._grow

    def counted(index: ManifestIndex) -> None:
        grows.append(len(index._keys))
        grow(index)

    monkeypatch.setattr(ManifestIndex, "_grow", counted)
    return grows


def test_a_big_manifest_is_indexed_in_a_table_sized_from_its_first_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = manifest_of(tmp_path / "manifest.jsonl", 3000)  # 135,000 bytes, 45 a line
    monkeypatch.setattr(manifest_module, "_RESERVE_BYTES", path.stat().st_size)
    monkeypatch.setattr(manifest_module, "_ESTIMATE_BYTES", 4300)  # the first 95 lines
    grows = count_grows(monkeypatch)
    index = ManifestIndex.build(path)
    # 95 lines in 4300 bytes: 2982 records, less an eighth 2609; at most half full: 8192
    # slots, never grown.
    assert (grows, len(index._keys), len(index._offsets), len(index._checks)) == (
        [],
        8192,
        8192,
        8192,
    )
    # Every record found, the first lines (read for the estimate) included.
    assert len(index) == 3000
    assert index.intact(["item-00000"]) == [False]  # built without a folder: not checked
    found = index.get_many(["item-00000", "item-00094", "item-00095", "item-02999", "other"])
    assert [item.status if item else None for item in found] == ["ok"] * 4 + [None]


def test_the_estimate_is_an_eighth_short_so_a_table_grows_rather_than_comes_out_double(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = manifest_of(tmp_path / "manifest.jsonl", 2200)
    monkeypatch.setattr(manifest_module, "_RESERVE_BYTES", 0)
    monkeypatch.setattr(manifest_module, "_ESTIMATE_BYTES", 4300)
    grows = count_grows(monkeypatch)
    index = ManifestIndex.build(path)
    # 2187 records estimated, less an eighth 1913: 4096 slots, grown once at the 2049th.
    assert (len(index), grows, len(index._keys)) == (2200, [4096], 8192)


def test_a_manifest_whose_later_lines_are_shorter_grows_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_first = b'{"id":"first","status":"ok","files":[],"note":"' + b"x" * 4000 + b'"}\n'
    path = manifest_of(tmp_path / "manifest.jsonl", 1000, first=long_first)
    monkeypatch.setattr(manifest_module, "_RESERVE_BYTES", 0)
    monkeypatch.setattr(manifest_module, "_ESTIMATE_BYTES", 4100)  # the long line, one short
    grows = count_grows(monkeypatch)
    index = ManifestIndex.build(path)
    # 47,050 bytes at 2 lines per 4100: 22 records, 64 slots, less than the 1024 it starts with.
    assert len(index) == 1001
    assert grows == [1024]
    assert len(index._keys) == 2048


def test_a_manifest_below_the_size_is_grown_by_doubling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = manifest_of(tmp_path / "manifest.jsonl", 3000)
    monkeypatch.setattr(manifest_module, "_RESERVE_BYTES", path.stat().st_size + 1)
    grows = count_grows(monkeypatch)
    index = ManifestIndex.build(path)
    assert (len(index), grows, len(index._keys)) == (3000, [1024, 2048, 4096], 8192)


def test_a_manifest_whose_first_line_outgrows_the_sample_gets_no_estimate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_first = b'{"id":"first","status":"ok","files":[],"note":"' + b"x" * 4000 + b'"}\n'
    path = manifest_of(tmp_path / "manifest.jsonl", 3000, first=long_first)
    monkeypatch.setattr(manifest_module, "_RESERVE_BYTES", 0)
    monkeypatch.setattr(manifest_module, "_ESTIMATE_BYTES", 100)
    grows = count_grows(monkeypatch)
    index = ManifestIndex.build(path)
    assert (len(index), grows, len(index._keys)) == (3001, [1024, 2048, 4096], 8192)


def test_the_build_reads_the_manifest_in_big_pieces_and_a_lookup_in_default_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each read lets go of the GIL: a busy thread then holds it for up to 5 ms (see
    # `_BUILD_BUFFER`). A lookup seeks and reads a line or a span: a big buffer would read more.
    path = manifest_of(tmp_path / "manifest.jsonl", 10)
    buffers: list[int] = []
    fdopen = os.fdopen

    def spied(fd: int, mode: str, buffering: int) -> IO[bytes]:
        buffers.append(buffering)
        return fdopen(fd, mode, buffering)

    monkeypatch.setattr(os, "fdopen", spied)
    monkeypatch.setattr(manifest_module, "_BUILD_BUFFER", 12345)
    index = ManifestIndex.build(path)
    found = index.get_many(["item-00003"])
    assert found[0] is not None
    assert buffers == [12345, -1]


def test_a_manifest_whose_last_lines_are_longer_is_estimated_from_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Short lines first, long ones last: the head alone says 10,341 records (32,768 slots for
    # 3100): the tail's longer lines win, and the table grows as before instead.
    path = manifest_of(tmp_path / "manifest.jsonl", 3000)
    long_line = b'{"id":"long-%03d","status":"ok","files":[],"note":"' + b"x" * 3940 + b'"}\n'
    with path.open("ab") as file:
        file.writelines(long_line % i for i in range(100))
    monkeypatch.setattr(manifest_module, "_RESERVE_BYTES", 0)
    monkeypatch.setattr(manifest_module, "_ESTIMATE_BYTES", 4300)
    grows = count_grows(monkeypatch)
    index = ManifestIndex.build(path)
    assert (len(index), grows, len(index._keys)) == (3100, [1024, 2048, 4096], 8192)
    assert index.get("long-099") is not None
