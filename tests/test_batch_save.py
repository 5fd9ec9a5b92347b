"""The save stage's own rules: one worker-thread call per saved answer, never abandoned."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from nanogpt_async._batch import _lifecycle as lifecycle_module
from nanogpt_async._batch import _manifest as manifest_module
from nanogpt_async._batch import _save as save_module
from nanogpt_async._batch._lifecycle import Lifecycle
from nanogpt_async.testing import FakeServer, Fault
from tests._serving import Serve, fake_client, fake_servers

KEY = "ngk_batch_save_SECRET_8812"


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start fake servers with the given knobs (stopped at the end of the test)."""
    with fake_servers(KEY) as start:
        yield start


def rows(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def thread_calls(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every function handed to a worker thread from now on, by anyio or the asyncio loop."""
    calls: list[object] = []
    real_run_sync = anyio.to_thread.run_sync
    real_executor = asyncio.BaseEventLoop.run_in_executor

    async def run_sync(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        calls.append(func)
        return await real_run_sync(func, *args, **kwargs)

    def run_in_executor(
        loop: asyncio.BaseEventLoop, executor: Any, func: Callable[..., Any], *args: Any
    ) -> asyncio.Future[Any]:
        calls.append(func)
        return real_executor(loop, executor, func, *args)

    monkeypatch.setattr(anyio.to_thread, "run_sync", run_sync)
    monkeypatch.setattr(asyncio.BaseEventLoop, "run_in_executor", run_in_executor)
    return calls


async def test_a_saved_answer_takes_one_worker_thread_call_for_its_files_and_manifest_line(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve()
    calls = thread_calls(monkeypatch)
    prompts = [f"prompt {i}" for i in range(12)]
    async with fake_client(server, KEY) as client:
        # One at a time: no two lines can share a grouped append.
        batch = client.images.generate_many(prompts, output_dir=tmp_path, concurrency=1, rps=None)
        summary = await batch.run()

    assert summary.ok == len(prompts) == server.fake.stats.generations
    recorded = rows(tmp_path)
    assert sorted(row["index"] for row in recorded) == list(range(len(prompts)))
    for row in recorded:  # each line names files that are there, with their size
        for entry in row["files"]:
            assert (tmp_path / entry["path"]).stat().st_size == entry["bytes"]
    # One call per item (files, then its line), plus opening and closing the folder; a second
    # call per item for its line made it 26.
    assert len(calls) <= len(prompts) + 2, calls


async def test_a_save_whose_deadline_passes_while_its_thread_writes_records_the_item_once_as_ok(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server: FakeServer = serve()
    writing, release = threading.Event(), threading.Event()
    real_write = manifest_module.write_images

    def write_images(folder: Path, named: list[tuple[str, bytes]]) -> Any:
        writing.set()
        assert release.wait(10), "the batch was never cancelled"
        return real_write(folder, named)

    real_abort = Lifecycle.abort

    def abort(self: Lifecycle) -> None:
        real_abort(self)  # the saves' deadline is now: it has passed once this returns
        release.set()

    monkeypatch.setattr(save_module, "write_images", write_images)
    monkeypatch.setattr(lifecycle_module, "SAVE_TIMEOUT", 0.0)
    monkeypatch.setattr(Lifecycle, "abort", abort)
    async with fake_client(server, KEY) as client:
        batch = client.images.generate_many(["a paid image"], output_dir=tmp_path, rps=None)
        with anyio.CancelScope() as cancel:
            async with batch:
                await anyio.to_thread.run_sync(writing.wait, 10)
                cancel.cancel()

    # The thread could not be stopped: its file and its line were written, and the item is
    # recorded once, as saved (not also as "cancelled before it was saved").
    assert release.is_set()
    assert batch.summary.stopped_reason == "cancelled"
    assert (batch.summary.ok, batch.summary.failed) == (1, 0)
    [row] = rows(tmp_path)
    assert row["status"] == "ok"
    assert server.fake.stats.generations == 1
    [entry] = row["files"]
    assert (tmp_path / entry["path"]).stat().st_size == entry["bytes"]


async def test_as_many_saves_write_at_once_as_download_concurrency_allows(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # More than a small machine's default executor has threads (min(32, cores + 4)).
    allowed = 16
    server = serve()
    real_write = manifest_module.write_images
    together = threading.Condition()
    inside, most = 0, 0

    def write_images(folder: Path, named: list[tuple[str, bytes]]) -> Any:
        nonlocal inside, most
        with together:
            inside += 1
            most = max(most, inside)
            together.notify_all()
            # Each waits until every save allowed at once is writing (or gives up).
            together.wait_for(lambda: most >= allowed, timeout=10)
            inside -= 1
        return real_write(folder, named)

    monkeypatch.setattr(save_module, "write_images", write_images)
    async with fake_client(server, KEY) as client:
        batch = client.images.generate_many(
            [f"prompt {i}" for i in range(allowed)],
            output_dir=tmp_path,
            concurrency=allowed,
            download_concurrency=allowed,
            rps=None,
        )
        summary = await batch.run()

    assert most == allowed
    assert summary.ok == allowed == len(rows(tmp_path)) == server.fake.stats.generations


async def test_a_saved_answers_base64_is_decoded_in_its_worker_thread_call_not_on_the_loop(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Decoding on the event loop cost it ~0.2 ms per item in W10 (a third of its CPU per item),
    # and the next wave of requests waited for it.
    pybase64 = pytest.importorskip("pybase64")
    server = serve()
    loop_thread = threading.get_ident()
    decoded_in: list[int] = []
    real_decode = pybase64.b64decode

    def b64decode(data: Any, *args: Any, **kwargs: Any) -> bytes:
        decoded_in.append(threading.get_ident())
        decoded: bytes = real_decode(data, *args, **kwargs)
        return decoded

    monkeypatch.setattr(pybase64, "b64decode", b64decode)
    prompts = [f"prompt {i}" for i in range(6)]
    async with fake_client(server, KEY) as client:
        batch = client.images.generate_many(prompts, output_dir=tmp_path, n=2, rps=None)
        summary = await batch.run()

    assert summary.ok == len(prompts)
    assert len(decoded_in) == 2 * len(prompts)
    assert loop_thread not in decoded_in


async def test_an_answer_with_one_bad_base64_image_keeps_the_good_one_and_records_the_error(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve()
    server.fake.enqueue(Fault.invalid_base64())  # the first image of the first answer
    async with fake_client(server, KEY) as client:
        batch = client.images.generate_many(["a paid pair"], output_dir=tmp_path, n=2, rps=None)
        summary = await batch.run()

    assert (summary.ok, summary.failed) == (0, 1)
    assert server.fake.stats.generations == 1
    [row] = rows(tmp_path)
    assert row["status"] == "failed"
    assert row["error"]["type"] == "InvalidImageError"
    assert "image 0 has invalid base64" in row["error"]["message"]
    [entry] = row["files"]  # the paid second image is kept, and its file is there
    assert entry["path"].endswith("-1.png")
    assert (tmp_path / entry["path"]).stat().st_size == entry["bytes"]


def counted_cancel_scopes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list whose length is the number of anyio cancel scopes made from now on."""
    made: list[int] = []
    real_new = anyio.CancelScope.__new__

    def new(cls: type[anyio.CancelScope], *args: Any, **kwargs: Any) -> anyio.CancelScope:
        made.append(1)
        return real_new(cls, *args, **kwargs)

    monkeypatch.setattr(anyio.CancelScope, "__new__", new)
    return made


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_unpaced_saved_item_costs_two_cancel_scopes_its_attempt_and_its_save(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each scope costs the event loop ~25 us (W10 profile). An unpaced turn is due at once
    # (nothing to be woken from), and the save's thread call is shielded by the save's own
    # scope while the batch is not being cancelled: 4 scopes per item became 2.
    server = serve()
    items = 40
    scopes = counted_cancel_scopes(monkeypatch)
    async with fake_client(server, KEY) as client:
        batch = client.images.generate_many(
            [f"prompt {i}" for i in range(items)], output_dir=tmp_path, concurrency=1, rps=None
        )
        summary = await batch.run()

    assert summary.ok == items == server.fake.stats.generations
    # 2 per item and a few for the batch itself (4 per item made it 171).
    assert len(scopes) < 3 * items, len(scopes)
