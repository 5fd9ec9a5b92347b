"""The output folder under hostile conditions: a second run, symbolic links, a full disk."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import pytest

from nanogpt_async import AsyncNanoGPT, OutputWriteError
from nanogpt_async._batch import _manifest as manifest_module
from nanogpt_async._errors import FolderInUseError
from nanogpt_async._output._files import LOCK_NAME, FolderLock
from nanogpt_async.testing import FakeNanoGPT, FakeServer
from tests._serving import Serve, fake_client, fake_servers

KEY = "ngk_output_folder_SECRET_5521"
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="symbolic links need privileges")


@pytest.fixture
def serve() -> Iterator[Serve]:
    """Start fake servers with the given knobs (stopped at the end of the test)."""
    with fake_servers(KEY) as start:
        yield start


def client_for(server: FakeServer, **options: Any) -> AbstractAsyncContextManager[AsyncNanoGPT]:
    return fake_client(server, KEY, **options)


def pngs(folder: Path) -> list[Path]:
    return list(folder.glob("*.png"))


def rows(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


# -- the folder lock ---------------------------------------------------------------------------


async def test_a_second_batch_into_a_running_batchs_folder_is_refused_before_it_sends_anything(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve(latency=0.05)
    async with client_for(server) as client:
        first = client.images.generate_many(["a", "b"], output_dir=tmp_path, rps=None)
        async with first:
            second = client.images.generate_many(["a", "b"], output_dir=tmp_path, rps=None)
            with pytest.raises(FolderInUseError) as caught:
                await second.run()
            async for _ in first:
                pass
        # Once the first run is over the folder is free again: a resume skips both items.
        again = await client.images.generate_many(["a", "b"], output_dir=tmp_path).run()
    assert again.skipped == 2
    message = str(caught.value)
    assert f"pid {os.getpid()}" in message
    assert str(tmp_path) in message
    assert "another folder" in message
    assert caught.value.pid == os.getpid()
    # Money: the refused run sent nothing; two items were charged once each and recorded.
    assert server.fake.stats.generations == 2
    assert len(rows(tmp_path)) == 2


_HOLD_LOCK = """
import sys, time
from pathlib import Path
from nanogpt_async._output._files import FolderLock
FolderLock.acquire(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(600)  # until the test kills it
"""


def test_the_lock_is_an_os_lock_that_a_killed_holder_does_not_keep(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(FolderInUseError) as caught:
            FolderLock.acquire(tmp_path)
        assert caught.value.pid == holder.pid
        assert caught.value.host == socket.gethostname()
    finally:
        holder.kill()  # SIGKILL: no clean-up code of the holder runs
        holder.wait()
    FolderLock.acquire(tmp_path).release()
    # The file stays (unlinking a locked file breaks exclusion); it carries no stale holder.
    assert (tmp_path / LOCK_NAME).read_bytes() == b""


@posix_only
def test_a_symlink_at_the_lock_file_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("not yours")
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / LOCK_NAME).symlink_to(elsewhere)
    with pytest.raises(OutputWriteError, match="symbolic link"):
        FolderLock.acquire(folder)
    assert elsewhere.read_text() == "not yours"


# -- symbolic links ----------------------------------------------------------------------------


@posix_only
async def test_a_symlink_at_an_images_name_is_never_followed_and_the_paid_image_is_kept(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve()
    items = ["a red fox", "an owl"]
    learn = tmp_path / "learn"
    async with client_for(server) as client:
        await client.images.generate_many(items, output_dir=learn).run()
    names = [row["files"][0]["path"] for row in sorted(rows(learn), key=lambda r: r["index"])]
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / names[0]).symlink_to(outside)
    (out / names[1]).symlink_to(tmp_path / "dangling")
    server.fake.reset_stats()

    async with client_for(server) as client:
        summary = await client.images.generate_many(items, output_dir=out).run()

    assert summary.ok == 2
    assert outside.read_bytes() == b"precious"
    assert (out / names[0]).is_symlink()
    assert not (tmp_path / "dangling").exists()
    recorded = rows(out)
    for row in recorded:
        path = out / row["files"][0]["path"]
        assert not path.is_symlink()
        assert path.stem.endswith("-v2")
        assert path.read_bytes().startswith(b"\x89PNG")
    # Money: both generations were charged once and both are recorded.
    assert server.fake.stats.generations == len(recorded) == 2


@posix_only
async def test_a_symlinked_manifest_is_refused_and_its_target_untouched(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve()
    elsewhere = tmp_path / "elsewhere.jsonl"
    elsewhere.write_text("someone else's file\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.jsonl").symlink_to(elsewhere)
    async with client_for(server) as client:
        batch = client.images.generate_many(["a"], output_dir=out)
        with pytest.raises(OutputWriteError, match="symbolic link") as caught:
            await batch.run()
    assert "manifest.jsonl" in str(caught.value)
    assert elsewhere.read_text() == "someone else's file\n"
    assert server.fake.stats.generation_requests == 0
    # The refused run left the folder unlocked.
    FolderLock.acquire(out).release()


# -- a full disk -------------------------------------------------------------------------------


class DiskFullAfter:
    """``os.write`` that writes ``lines`` manifest lines, then half of a write, then ENOSPC.

    Lines of items finishing together share one write: whole writes are let through until
    ``lines`` lines are written (``written`` counts them), so it may be a few more.
    """

    def __init__(self, lines: int) -> None:
        self.left = lines
        self.written = 0
        self.torn = False

    def __call__(self, fd: int, data: Any) -> int:
        if self.left > 0:
            count = bytes(data).count(b"\n")
            self.left -= count
            self.written += count
            return os.write(fd, data)
        if not self.torn:
            self.torn = True
            return os.write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


async def test_a_full_disk_on_the_manifest_stops_the_batch_clearly_and_keeps_it_readable(
    serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve()
    full = DiskFullAfter(3)
    monkeypatch.setattr(manifest_module, "_write", full)
    async with client_for(server) as client:
        batch = client.images.generate_many(
            [f"prompt {i}" for i in range(20)], output_dir=tmp_path, concurrency=1, rps=None
        )
        summary = await batch.run()

    assert isinstance(summary.fatal_error, OutputWriteError)
    message = str(summary.fatal_error)
    assert "No space left on device" in message
    assert "free on the disk of" in message
    assert str(tmp_path) in message
    # The torn half line was cut back: every line of the manifest parses.
    recorded = rows(tmp_path)
    assert len(recorded) == full.written >= 3
    # Money: every charged item is counted (ok when recorded, failed when not), none lost.
    charged = server.fake.stats.generations
    assert summary.ok == len(recorded)
    assert summary.ok + summary.failed == charged
    assert len(pngs(tmp_path)) == charged  # the unrecorded paid images stay


async def test_a_batch_keeps_running_under_trio_with_the_folder_lock(tmp_path: Path) -> None:
    fake = FakeNanoGPT(api_key=KEY)
    with fake.run_in_thread() as server:

        async def main() -> int:
            async with AsyncNanoGPT(api_key=KEY, base_url=server.base_url) as client:
                summary = await client.images.generate_many(["a"], output_dir=tmp_path).run()
            return summary.ok

        assert await anyio.to_thread.run_sync(lambda: anyio.run(main, backend="trio")) == 1
    FolderLock.acquire(tmp_path).release()


@posix_only
async def test_a_fifo_at_the_manifests_name_is_refused_instead_of_hanging(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve()
    os.mkfifo(tmp_path / "manifest.jsonl")
    async with client_for(server) as client:
        with pytest.raises(OutputWriteError, match="not a regular file"):
            await client.images.generate_many(["a"], output_dir=tmp_path).run()
    assert server.fake.stats.generation_requests == 0
