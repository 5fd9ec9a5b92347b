"""Counters of resume's work: files hashed, manifests opened, worker-thread hops.

Resume's speed rests on not reading what it need not read; these record each call (and still
make it), so a test can assert what was read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.to_thread
import pytest

from nanogpt_async._batch import _manifest as manifest_module


def _first_arguments(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[Any]:
    """The first argument of every call of ``owner.name`` from now on (each call still made)."""
    seen: list[Any] = []
    real = getattr(owner, name)

    def counting(first: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(first)
        return real(first, *args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return seen


def hash_counter(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the files the manifest hashes from now on (each is still hashed)."""
    return cast("list[str]", _first_arguments(monkeypatch, manifest_module, "_sha256_of"))


def open_counter(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The manifests opened for reading from now on (each is still opened)."""
    return cast("list[Path]", _first_arguments(monkeypatch, manifest_module, "_open_for_reading"))


def hop_counter(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The functions handed to a worker thread from now on (each is still run there).

    A resume's triage hop (`_resume._Call`) is recorded as the triage it runs (a partial of
    `Resume.triage`).
    """
    hops: list[object] = []
    real = anyio.to_thread.run_sync

    async def counting(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(func, "triage", func))
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    return hops
