"""A resumed run's input, taken in chunks: rules mutation testing found unpinned.

A resumed run reads its input in chunks (`Triage`): how much of the input it has read, which
entries of a chunk it has taken, and what it does with an error while the input is still being
read ahead all reach the caller: the summary's ``unread_input``, the items run, the error
raised. Money is asserted against the fake server's counts.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner

from nanogpt_async._batch import _resume
from nanogpt_async._batch._manifest import ManifestIndex
from nanogpt_async._cli._commands import cli
from nanogpt_async.testing import make_png
from tests._serving import Serve, fake_client, fake_servers

KEY = "ngk_mutation_triage_SECRET_91"


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start fake servers with the given knobs (stopped at the end of the test)."""
    with fake_servers(KEY) as start:
        yield start


async def test_a_resumed_generator_stopped_early_says_its_rest_was_not_read(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chunks of 8: the batch stops after the first chunks, long before the input's end. Only
    # the input's end (not a chunk read without error) means the whole input was read.
    monkeypatch.setattr(_resume, "_TRIAGE_CHUNK", 8)
    server = serve()

    def stream() -> Iterator[str]:  # no len(): like standard input
        yield from (f"prompt {i}" for i in range(100))

    async with fake_client(server, KEY) as client:
        await client.images.generate_many(["recorded"], output_dir=tmp_path, rps=None).run()
        stopped = client.images.generate_many(stream(), output_dir=tmp_path, rps=None)
        async with stopped:
            async for _ in stopped:
                stopped.stop()
    summary = stopped.summary
    assert summary.unread_input
    assert summary.total < 100
    assert server.fake.stats.generations == 1 + summary.ok


def test_a_resumed_prompt_file_runs_every_line_after_one_with_an_input_image(
    serve: Serve, tmp_path: Path
) -> None:
    # The CLI hands a prompt file over in lists; an entry naming an input image is prepared on
    # the event loop, in the middle of its list: the entries after it are taken all the same,
    # each once.
    server = serve()
    (tmp_path / "street.png").write_bytes(make_png("street"))
    lines = [
        {"id": "before", "prompt": "a plain one"},
        {"id": "snow", "prompt": "make it snow", "operation": "edit", "model": "flux-kontext"},
        {"id": "after", "prompt": "another plain one"},
        {"id": "last", "prompt": "the last one"},
    ]
    lines[1]["image"] = str(tmp_path / "street.png")
    first = tmp_path / "first.jsonl"
    first.write_text(json.dumps({"id": "earlier", "prompt": "recorded before"}) + "\n")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    env = {"NANOGPT_API_KEY": KEY, "NANOGPT_BASE_URL": server.base_url}
    for path in (first, prompts):
        result = CliRunner().invoke(cli, ["batch", str(path), "-o", str(out)], env=env)
        assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(row["id"] for row in rows) == ["after", "before", "earlier", "last", "snow"]
    assert {row["status"] for row in rows} == {"ok"}
    assert server.fake.stats.generations == 5  # each line once


async def test_a_manifest_that_cannot_be_read_mid_resume_stops_a_streamed_run_with_its_error(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The input is still being read ahead (a stream waiting for its next line) when the check
    # against the manifest fails: the run stops with that error, not as if the input had ended.
    server = serve()

    async def stream() -> AsyncIterator[str]:
        yield "recorded"
        yield "new"
        await anyio.sleep_forever()  # standard input, no next line yet

    def unreadable(*_: Any, **__: Any) -> Any:
        raise OSError(errno.EIO, "Input/output error")

    async with fake_client(server, KEY) as client:
        await client.images.generate_many(["recorded"], output_dir=tmp_path, rps=None).run()
        monkeypatch.setattr(ManifestIndex, "finished", unreadable)
        batch = client.images.generate_many(stream(), output_dir=tmp_path, rps=None)
        with pytest.raises(BaseException) as raised:  # noqa: PT011, PT012 - a task group's
            async with batch:
                async for _ in batch:
                    pass
    assert _leaves(raised.value) == [(OSError, errno.EIO)]
    assert server.fake.stats.generations == 1  # nothing sent after the failed check


def _leaves(exc: BaseException) -> list[tuple[type[BaseException], int | None]]:
    inner = getattr(exc, "exceptions", None)  # a task group's (exceptiongroup on 3.10)
    if isinstance(inner, tuple):
        return [leaf for each in inner for leaf in _leaves(each)]
    return [(type(exc), getattr(exc, "errno", None))]


@pytest.mark.parametrize("rewritten", [False, True], ids=["stamps-unchanged", "files-rehashed"])
async def test_a_budget_stop_counts_its_chunks_earlier_items_skipped_hashed_or_not(
    serve: Serve, tmp_path: Path, *, rewritten: bool
) -> None:
    # The first item of the chunk is new and the budget ($0) refuses it; the two after it were
    # done before. They count as skipped whether their files are known intact from their
    # recorded stamps or had to be hashed (touched since: same bytes, new stamp).
    server = serve()
    async with fake_client(server, KEY) as client:
        await client.images.generate_many(["one", "two"], output_dir=tmp_path, rps=None).run()
        if rewritten:
            _touch_images(tmp_path)
        summary = await client.images.generate_many(
            ["new", "one", "two"], output_dir=tmp_path, rps=None, max_cost=0
        ).run()
    assert summary.stopped_reason == "budget"
    assert (summary.total, summary.skipped, summary.ok, summary.not_started) == (3, 2, 0, 1)
    assert server.fake.stats.generations == 2  # the first run's


def _touch_images(folder: Path) -> None:
    """Give every image a new modification time: the same bytes, a new stamp."""
    for image in folder.glob("*.png"):
        stat = image.stat()
        os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="lists descriptors in /proc")
async def test_a_resume_checking_its_files_chunk_by_chunk_leaves_no_descriptor_of_the_folder(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each chunk's check opens the folder once (its files are looked up relative to it): a
    # million-item resume makes about a thousand such checks, so each must close what it opened.
    monkeypatch.setattr(_resume, "_TRIAGE_CHUNK", 8)
    server = serve()
    prompts = [f"prompt {i}" for i in range(30)]
    async with fake_client(server, KEY) as client:
        await client.images.generate_many(prompts, output_dir=tmp_path, rps=None).run()
        batch = client.images.generate_many(prompts, output_dir=tmp_path, rps=None)
        async with batch:  # results read: every chunk is looked up and its files checked
            statuses = [result.status async for result in batch]
    assert statuses == ["skipped"] * 30
    assert _descriptors_of(tmp_path) == []
    assert server.fake.stats.generations == 30  # the first run's, none again


def _descriptors_of(folder: Path) -> list[str]:
    """This process's open descriptors of ``folder`` itself."""
    target = folder.resolve()
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            if fd.readlink() == target:
                found.append(fd.name)
        except OSError:  # closed since it was listed
            continue
    return found


@pytest.mark.parametrize("skipped_results", [True, False], ids=["results-read", "run"])
async def test_a_record_whose_file_entry_is_not_an_object_is_generated_again(
    serve: Serve, tmp_path: Path, *, skipped_results: bool
) -> None:
    # Hand-edited or written by something else: "files" names the image as a bare string. The
    # record cannot be trusted, so the item runs again (both ways a resume checks records).
    server = serve()
    async with fake_client(server, KEY) as client:
        await client.images.generate_many(["a fox"], output_dir=tmp_path, rps=None).run()
        _rewrite_files_as_bare_names(tmp_path / "manifest.jsonl")
        summary = await client.images.generate_many(
            ["a fox"], output_dir=tmp_path, rps=None, skipped_results=skipped_results
        ).run()
    assert (summary.ok, summary.skipped) == (1, 0)
    assert server.fake.stats.generations == 2


def _rewrite_files_as_bare_names(manifest: Path) -> None:
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for row in rows:
        row["files"] = [entry["path"] for entry in row["files"]]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
