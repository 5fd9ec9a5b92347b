"""Counters of resume's work: files hashed, manifests opened, worker-thread hops.

Resume's speed rests on not reading what it need not read; these record each call (and still
make it), so a test can assert what was read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.to_thread
import pytest

from nanogpt_async._batch import _manifest as manifest_module


def hash_counter(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the files the manifest hashes from now on (each is still hashed)."""
    hashed: list[str] = []
    real = manifest_module._sha256_of

    def counting(path: str) -> str | None:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(manifest_module, "_sha256_of", counting)
    return hashed


def open_counter(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The manifests opened for reading from now on (each is still opened)."""
    opened: list[Path] = []
    real = manifest_module._open_for_reading

    def counting(where: Path) -> IO[bytes]:
        opened.append(where)
        return real(where)

    monkeypatch.setattr(manifest_module, "_open_for_reading", counting)
    return opened


def hop_counter(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The functions handed to a worker thread from now on (each is still run there)."""
    hops: list[object] = []
    real = anyio.to_thread.run_sync

    async def counting(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        hops.append(func)
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    return hops
