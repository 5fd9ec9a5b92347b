"""Counters of the manifest's file work: which files a check hashed, which manifests it opened.

Resume's speed rests on not reading what it need not read; these record each call (and still
make it), so a test can assert what was read.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

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
