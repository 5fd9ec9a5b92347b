"""Property tests (hypothesis) for file naming and the manifest under crashes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanogpt_async._batch._manifest import read_manifest
from nanogpt_async._batch._names import IdentityCounter, image_file_name, safe_path, slugify

#: Text that tries to escape: separators, dot-dot, NUL, reserved names, any unicode, long.
hostile_text = st.one_of(
    st.text(max_size=3000),
    st.lists(
        st.sampled_from(["..", "/", "\\", "\x00", "CON", "NUL", "aux.txt", ".", "~", ":", "é"]),
        max_size=50,
    ).map("".join),
)

RESERVED_WINDOWS = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10))}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for every example: a folder per example cost ~3 ms (mkdir, rmdir) each."""
    return tmp_path_factory.mktemp("properties")


@settings(max_examples=300)
@given(hostile_text, st.integers(0, 10**7), st.integers(0, 9))
def test_file_names_never_leave_the_folder_and_are_deterministic(folder, prompt, index, number):
    name = image_file_name(index, prompt, prompt, number, ".png")

    assert name == image_file_name(index, prompt, prompt, number, ".png")
    assert "/" not in name
    assert "\\" not in name
    assert "\x00" not in name
    assert name.split(".")[0].lower() not in RESERVED_WINDOWS
    assert len(name.encode()) < 100  # far under every file system's 255-byte limit
    assert safe_path(folder, name).resolve().parent == folder.resolve()  # safe_path writes nothing


@given(hostile_text)
def test_slugs_are_plain_ascii(prompt):
    assert set(slugify(prompt)) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")


def _record(i: int) -> dict[str, object]:
    return {
        "id": f"item-{i}",
        "index": i,
        "prompt": f"prompt {i} ünïcode",
        "status": "ok" if i % 3 else "failed",
        "files": [{"path": f"{i:06d}-x-0.png", "sha256": "0" * 64, "bytes": 10}],
        "request_id": f"req_{i}",
    }


@settings(max_examples=300)
@given(st.integers(1, 12), st.data())
def test_the_manifest_reader_tolerates_any_truncation(folder, count, data):
    lines = [json.dumps(_record(i), ensure_ascii=False).encode() + b"\n" for i in range(count)]
    whole = b"".join(lines)
    cut = data.draw(st.integers(0, len(whole)))
    path = folder / "manifest.jsonl"
    path.write_bytes(whole[:cut])  # replaces the last example's: the reader writes nothing

    recorded = read_manifest(path)

    complete = whole[:cut].count(b"\n")
    found = {i: recorded.get(f"item-{i}") for i in range(count)}

    # Every complete line is read; the torn one (if any) is dropped, never misread.
    assert complete <= len(recorded) <= complete + 1
    for i, item in found.items():
        if i < complete:
            assert item is not None
        if item is not None:
            assert i <= complete
            assert item.status == _record(i)["status"]
            assert item.request_id == _record(i)["request_id"]


@settings(max_examples=100)
@given(st.lists(st.integers(0, 40), max_size=400))
def test_item_ids_are_unique_and_the_same_on_every_run(choices):
    digests = [f"{c:016x}" for c in choices]  # few distinct values: many duplicates

    counter_a, counter_b = IdentityCounter(), IdentityCounter()
    run_a = [counter_a.next_id(d) for d in digests]
    run_b = [counter_b.next_id(d) for d in digests]

    assert run_a == run_b
    assert len(set(run_a)) == len(run_a)
    for digest in set(digests):
        numbers = [int(i.rsplit("-", 1)[1]) for i in run_a if i.startswith(digest)]
        assert numbers == sorted(numbers)
