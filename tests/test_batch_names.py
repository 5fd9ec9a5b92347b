"""File names, item ids and the manifest reader, without any server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nanogpt_async._batch._manifest import (
    FileEntry,
    ManifestWriter,
    files_intact,
    read_manifest,
    sweep_temp_files,
    write_images,
)
from nanogpt_async._batch._names import (
    IdentityCounter,
    image_file_name,
    public_body,
    request_digest,
    safe_path,
    slugify,
)
from nanogpt_async._output._files import TEMP_SUFFIX
from nanogpt_async.testing import make_png

HOSTILE = [
    "../../x",
    "/etc/passwd",
    "..\\..\\x",
    "nul\x00byte",
    "CON",
    "😀" * 500,
    "Ünïcödé ẞtraße " * 20,
    "",
    "   ",
    ".",
    "..",
]


@pytest.mark.parametrize("prompt", HOSTILE)
def test_slug_of_any_prompt_is_plain_ascii_and_short(prompt: str) -> None:
    slug = slugify(prompt)
    assert slug
    assert len(slug) <= 40
    assert set(slug) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
    assert not slug.startswith("-")


@pytest.mark.parametrize("prompt", HOSTILE)
def test_file_name_of_any_prompt_stays_inside_the_folder(tmp_path: Path, prompt: str) -> None:
    name = image_file_name(7, prompt, "item-7", 0, ".png")
    assert name.startswith("000007-")
    assert name.endswith("-0.png")
    assert safe_path(tmp_path, name).resolve().parent == tmp_path.resolve()


def test_slug_transliterates_accents_and_keeps_words() -> None:
    assert slugify("Crème Brûlée, à la carte!") == "creme-brulee-a-la-carte"
    assert slugify("😀😀") == "image"


def test_safe_path_refuses_names_that_escape() -> None:
    with pytest.raises(ValueError, match="outside"):
        safe_path(Path("out"), "../evil.png")
    with pytest.raises(ValueError, match="outside"):
        safe_path(Path("out"), "sub/dir.png")


@pytest.mark.parametrize("name", ["", ".", "..", "a\0b.png", "/etc/passwd"])
def test_safe_path_refuses_names_that_are_not_one_plain_name(name: str) -> None:
    with pytest.raises(ValueError, match="outside"):
        safe_path(Path("out"), name)


def test_safe_path_joins_a_plain_name_without_resolving_any_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each resolve() is a dozen system calls, and every saved file was checked twice (W10).
    def no_resolve(self: Path, strict: bool = False) -> Path:
        raise AssertionError(f"resolved {self}")

    monkeypatch.setattr(Path, "resolve", no_resolve)
    assert safe_path(Path("out"), "000001-a-fox-1a2b3c-0.png") == Path(
        "out/000001-a-fox-1a2b3c-0.png"
    )
    assert safe_path(Path("out"), "..x") == Path("out/..x")


def test_request_digest_is_stable_across_runs_and_processes() -> None:
    # A literal: the same request must hash the same in every process, forever.
    assert request_digest({"prompt": "a red fox", "model": "hidream"}) == "3885e4da75098eec"


def test_request_digest_ignores_delivery_fields_and_key_order() -> None:
    base = request_digest({"prompt": "x", "size": "1024x1024", "seed": 1})
    assert base == request_digest({"seed": 1, "size": "1024x1024", "prompt": "x"})
    assert base == request_digest(
        {"prompt": "x", "size": "1024x1024", "seed": 1, "response_format": "url"}
    )
    assert base != request_digest({"prompt": "x", "size": "1024x1024", "seed": 2})


def test_request_digest_counts_input_images_by_content() -> None:
    one = request_digest({"prompt": "x", "imageDataUrl": "data:image/png;base64,AAAA"})
    other = request_digest({"prompt": "x", "imageDataUrl": "data:image/png;base64,BBBB"})
    assert one != other


def test_duplicate_requests_get_distinct_ids_in_order() -> None:
    counter = IdentityCounter()
    assert [counter.next_id("abc") for _ in range(3)] == ["abc-0", "abc-1", "abc-2"]
    assert counter.next_id("def") == "def-0"


def test_public_request_replaces_data_urls_with_a_short_placeholder() -> None:
    url = "data:image/png;base64," + "A" * 10_000
    shown = public_body({"prompt": "x", "imageDataUrl": url, "imageDataUrls": [url]})
    assert shown["prompt"] == "x"
    assert shown["imageDataUrl"].startswith("<image/png, ~7500 bytes, sha256:")
    assert len(shown["imageDataUrl"]) < 80
    assert len(shown["imageDataUrls"][0]) < 80


def test_manifest_reader_skips_a_torn_last_line_and_garbage(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.jsonl"
    good = {"id": "a", "status": "ok", "files": [], "request_id": "req_1"}
    manifest.write_bytes(
        json.dumps(good).encode()
        + b"\nnot json at all\n[1, 2]\n"
        + b'{"id": "b", "status": "weird", "files": []}\n'
        + b'{"id": "c", "status": "ok", "fil'
    )
    recorded = read_manifest(manifest)
    assert len(recorded) == 1
    item = recorded.get("a")
    assert item is not None
    assert item.request_id == "req_1"
    assert recorded.get("b") is None
    assert recorded.get("c") is None


def test_manifest_later_lines_win(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.jsonl"
    writer = ManifestWriter(manifest)
    writer.append({"id": "a", "status": "failed", "files": []})
    writer.append({"id": "a", "status": "ok", "files": []})
    writer.close()
    item = read_manifest(manifest).get("a")
    assert item is not None
    assert item.status == "ok"


def test_manifest_writer_ends_a_torn_line_before_appending(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_bytes(b'{"id": "a", "status": "ok", "files": []}\n{"id": "torn", "sta')
    writer = ManifestWriter(manifest)
    writer.append({"id": "b", "status": "ok", "files": []})
    writer.close()
    recorded = read_manifest(manifest)
    assert len(recorded) == 2
    assert recorded.get("a") is not None
    assert recorded.get("b") is not None


def test_missing_manifest_reads_as_empty(tmp_path: Path) -> None:
    recorded = read_manifest(tmp_path / "nope.jsonl")
    assert len(recorded) == 0
    assert recorded.get("a") is None


def test_sweep_removes_only_temp_files(tmp_path: Path) -> None:
    (tmp_path / f".000001-x-0.png.abcd{TEMP_SUFFIX}").write_bytes(b"half")
    (tmp_path / "000001-x-0.png").write_bytes(b"whole")
    assert sweep_temp_files(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["000001-x-0.png"]


def test_written_files_are_intact_until_changed(tmp_path: Path) -> None:
    png = make_png("x")
    entries = write_images(tmp_path, [("000000-x-0.png", png)])
    assert entries == [FileEntry("000000-x-0.png", entries[0].sha256, len(png), entries[0].stamp)]
    assert files_intact(tmp_path, entries)
    (tmp_path / "000000-x-0.png").write_bytes(png[:-1])  # truncated
    assert not files_intact(tmp_path, entries)
    (tmp_path / "000000-x-0.png").unlink()
    assert not files_intact(tmp_path, entries)
    assert not files_intact(tmp_path, [])


def test_manifest_index_holds_many_items_and_later_lines_win(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.jsonl"
    writer = ManifestWriter(manifest)
    for i in range(3000):  # several times the index's first capacity
        writer.append({"id": f"item-{i}", "status": "failed", "files": []})
    for i in range(0, 3000, 2):
        writer.append({"id": f"item-{i}", "status": "ok", "files": [], "request_id": f"r{i}"})
    writer.close()

    recorded = read_manifest(manifest)

    assert len(recorded) == 3000
    statuses = {i: recorded.get(f"item-{i}") for i in (0, 1, 1500, 2999)}
    assert {i: (item.status if item else None) for i, item in statuses.items()} == {
        0: "ok",
        1: "failed",
        1500: "ok",
        2999: "failed",
    }
    assert recorded.get("item-3000") is None


def test_identity_counter_numbers_duplicates_in_order() -> None:
    counter = IdentityCounter()
    ids = [counter.next_id(d) for d in ["00000000000000aa", "00000000000000bb"] * 3]
    assert ids == [
        "00000000000000aa-0",
        "00000000000000bb-0",
        "00000000000000aa-1",
        "00000000000000bb-1",
        "00000000000000aa-2",
        "00000000000000bb-2",
    ]
