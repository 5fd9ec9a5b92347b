"""The output folder's journal: ``manifest.jsonl``, one JSON object per finished item.

A line is appended only after the item's files are fully written (atomically), and flushed at
once, so a crash or ``kill -9`` loses at most the items in flight, never a recorded one. Readers
skip lines that do not parse: a torn last line from a crash, or anything else odd, costs only
that line. Later lines win: a failed item retried by a resumed run gets a second, newer line.

Every function here does blocking I/O: call them through ``anyio.to_thread.run_sync``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from nanogpt_async._batch_names import safe_path
from nanogpt_async._files import TEMP_SUFFIX, write_atomic

__all__ = [
    "FileEntry",
    "ManifestWriter",
    "RecordedItem",
    "files_intact",
    "read_manifest",
    "sweep_temp_files",
    "write_images",
]


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One written image: path relative to the folder, its SHA-256 and size."""

    path: str
    sha256: str
    bytes: int

    def as_json(self) -> dict[str, Any]:
        """The manifest's ``files[]`` entry."""
        return {"path": self.path, "sha256": self.sha256, "bytes": self.bytes}


@dataclass(frozen=True, slots=True)
class RecordedItem:
    """What a resumed run needs to know about an item an earlier run finished."""

    status: str
    files: tuple[FileEntry, ...]
    request_id: str | None


def _file_entries(value: object) -> tuple[FileEntry, ...] | None:
    if not isinstance(value, list):
        return None
    entries = []
    for item in value:
        if not isinstance(item, Mapping):
            return None
        path, sha, size = item.get("path"), item.get("sha256"), item.get("bytes")
        if not (isinstance(path, str) and isinstance(sha, str) and isinstance(size, int)):
            return None
        entries.append(FileEntry(path, sha, size))
    return tuple(entries)


def read_manifest(path: Path) -> dict[str, RecordedItem]:
    """Every item id recorded in ``path`` with its latest record; ``{}`` if there is no file."""
    recorded: dict[str, RecordedItem] = {}
    try:
        file = path.open("rb")
    except FileNotFoundError:
        return recorded
    with file:
        for line in file:
            try:
                record = json.loads(line)
            except ValueError:  # torn by a crash, or not ours: that line only is lost
                continue
            if not isinstance(record, dict):
                continue
            item_id, status = record.get("id"), record.get("status")
            files = _file_entries(record.get("files", []))
            if not isinstance(item_id, str) or status not in ("ok", "failed") or files is None:
                continue
            request_id = record.get("request_id")
            recorded[item_id] = RecordedItem(
                status, files, request_id if isinstance(request_id, str) else None
            )
    return recorded


def sweep_temp_files(folder: Path) -> int:
    """Delete temp files a crashed run left in ``folder``; return how many."""
    removed = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.endswith(TEMP_SUFFIX) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    Path(entry.path).unlink()
                    removed += 1
    return removed


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def files_intact(folder: Path, files: Sequence[FileEntry]) -> bool:
    """Whether every recorded file is still there with the recorded size and SHA-256."""
    return bool(files) and all(_file_intact(folder, entry) for entry in files)


def _file_intact(folder: Path, entry: FileEntry) -> bool:
    try:
        target = safe_path(folder, entry.path)
        return target.stat().st_size == entry.bytes and _sha256_of(target) == entry.sha256
    except (OSError, ValueError):
        return False


def write_images(folder: Path, named: Sequence[tuple[str, bytes]]) -> list[FileEntry]:
    """Write each ``(name, data)`` atomically into ``folder``; return the manifest entries."""
    entries = []
    for name, data in named:
        write_atomic(safe_path(folder, name), data)
        entries.append(FileEntry(name, hashlib.sha256(data).hexdigest(), len(data)))
    return entries


class ManifestWriter:
    """Appends records to the manifest, one flushed line each."""

    def __init__(self, path: Path) -> None:
        """Open ``path`` for appending, first ending a torn last line so the next one parses."""
        self.path = path
        self._file: IO[bytes] = path.open("ab")
        try:
            if self._file.tell() > 0:
                with path.open("rb") as existing:
                    existing.seek(-1, os.SEEK_END)
                    if existing.read(1) != b"\n":
                        self._file.write(b"\n")
        except BaseException:
            self._file.close()
            raise

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record as a JSON line and flush it to the OS."""
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)
        # backslashreplace turns a stray surrogate into a valid JSON escape, never a bad line.
        self._file.write(line.encode("utf-8", "backslashreplace") + b"\n")
        self._file.flush()

    def close(self) -> None:
        """Flush to disk (fsync) and close."""
        if self._file.closed:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()
