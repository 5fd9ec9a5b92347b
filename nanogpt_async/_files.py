"""Atomic file writes: a reader (or a crash) never sees half an image."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

import anyio.to_thread

__all__ = ["TEMP_SUFFIX", "write_atomic", "write_atomic_async"]

#: Temporary files end with this, so a resumed batch can sweep what a crash left behind.
TEMP_SUFFIX = ".nanogpt-tmp"


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder, fsync, then rename.

    ``os.replace`` is atomic on POSIX and Windows, so ``path`` holds either the old content or
    all of the new, even if the process is killed mid-write.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    try:
        with tmp.open("wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


async def write_atomic_async(path: Path, data: bytes) -> None:
    """`write_atomic` in a worker thread, so disk latency never blocks the event loop."""
    await anyio.to_thread.run_sync(write_atomic, path, data)
