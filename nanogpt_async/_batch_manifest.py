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
import stat
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from nanogpt_async._batch_models import OutputWriteError
from nanogpt_async._batch_names import safe_path
from nanogpt_async._codec import loads
from nanogpt_async._files import TEMP_SUFFIX, open_no_follow, write_atomic

__all__ = [
    "FileEntry",
    "ManifestIndex",
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


def _id_key(item_id: str) -> int:
    """A 64-bit hash of an item id, never 0 (0 marks an empty slot)."""
    digest = hashlib.blake2b(item_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


def _parse_record(line: bytes) -> dict[str, Any] | None:
    try:
        record = loads(line)
    except ValueError:  # torn by a crash, or not ours: that line only is lost
        return None
    if not isinstance(record, dict):
        return None
    if not isinstance(record.get("id"), str) or record.get("status") not in ("ok", "failed"):
        return None
    return record


class ManifestIndex:
    """Where each recorded item's latest manifest line is, in about 32 bytes per item.

    A resumed run must know, for every item it meets, whether an earlier run finished it. Holding
    the records themselves costs hundreds of bytes each (gigabytes for ten million items); this
    holds only a 64-bit hash of each id and the byte offset of its latest line, in two flat arrays
    (open addressing, at most half full), and reads a record back from the file when its item
    comes up. Later lines win, so a retried item's new line replaces its old one.
    """

    def __init__(self, path: Path) -> None:
        """An empty index of ``path``; :meth:`build` fills it."""
        self.path = path
        self._keys = array("Q", bytes(8 * 1024))
        self._offsets = array("Q", bytes(8 * 1024))
        self._used = 0

    @classmethod
    def build(cls, path: Path) -> ManifestIndex:
        """Index every parsable line of ``path`` (none if the file does not exist)."""
        index = cls(path)
        try:
            file = _open_for_reading(path)
        except FileNotFoundError:
            return index
        with file:
            offset = 0
            for line in file:
                record = _parse_record(line)
                if record is not None:
                    index._put(_id_key(record["id"]), offset)
                offset += len(line)
        return index

    def __len__(self) -> int:
        """How many distinct items are recorded."""
        return self._used

    def _slot(self, key: int) -> int:
        mask = len(self._keys) - 1
        slot = key & mask
        while self._keys[slot] not in (0, key):
            slot = (slot + 1) & mask
        return slot

    def _put(self, key: int, offset: int) -> None:
        if (self._used + 1) * 2 > len(self._keys):
            self._grow()
        slot = self._slot(key)
        if self._keys[slot] == 0:
            self._keys[slot] = key
            self._used += 1
        self._offsets[slot] = offset

    def _grow(self) -> None:
        keys, offsets = self._keys, self._offsets
        self._keys = array("Q", bytes(16 * len(keys)))
        self._offsets = array("Q", bytes(16 * len(keys)))
        for key, offset in zip(keys, offsets, strict=True):
            if key:
                slot = self._slot(key)
                self._keys[slot] = key
                self._offsets[slot] = offset

    def get(self, item_id: str) -> RecordedItem | None:
        """The latest record of ``item_id`` (read from the file: blocking), or ``None``."""
        if not self._used:
            return None
        slot = self._slot(_id_key(item_id))
        if self._keys[slot] == 0:
            return None
        with _open_for_reading(self.path) as file:
            file.seek(self._offsets[slot])
            record = _parse_record(file.readline())
        # The id check guards against a 64-bit hash collision, however unlikely.
        if record is None or record["id"] != item_id:
            return None
        files = _file_entries(record.get("files", []))
        if files is None:
            return None
        request_id = record.get("request_id")
        return RecordedItem(
            record["status"], files, request_id if isinstance(request_id, str) else None
        )


def _open_for_reading(path: Path) -> IO[bytes]:
    """The manifest, opened for reading without following a symbolic link.

    O_NONBLOCK: a FIFO planted at the name must not hang the batch before it starts.
    """
    fd = open_no_follow(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        _check_regular(path, os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def read_manifest(path: Path) -> ManifestIndex:
    """Index the items recorded in ``path``; an empty index if there is no file."""
    return ManifestIndex.build(path)


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


def files_intact(folder: Path, files: Sequence[FileEntry]) -> bool:
    """Whether every recorded file is still there with its recorded size.

    A size check, not a SHA-256 one: resuming must not re-read every image already written
    (terabytes for a large batch). Truncated or deleted files are caught; the manifest keeps
    each file's SHA-256 for a full verification when you want one.
    """
    return bool(files) and all(_file_intact(folder, entry) for entry in files)


def _file_intact(folder: Path, entry: FileEntry) -> bool:
    try:
        return safe_path(folder, entry.path).stat().st_size == entry.bytes
    except (OSError, ValueError):
        return False


def write_images(folder: Path, named: Sequence[tuple[str, bytes]]) -> list[FileEntry]:
    """Write each ``(name, data)`` atomically into ``folder``; return the manifest entries.

    A symbolic link, folder or anything else but a regular file at a name is never followed
    nor replaced: that image goes to the first free ``{stem}~{k}{suffix}`` instead (recorded in
    its entry), because it is paid for and must land somewhere.
    """
    entries = []
    for wanted, data in named:
        name = _writable_name(folder, wanted)
        write_atomic(safe_path(folder, name), data)
        entries.append(FileEntry(name, hashlib.sha256(data).hexdigest(), len(data)))
    return entries


def _writable_name(folder: Path, name: str) -> str:
    """``name`` if nothing or a regular file is there, else the first free ``stem~k`` name."""
    if _is_file_or_free(folder / name):
        return name
    stem, suffix = os.path.splitext(name)  # noqa: PTH122 - a bare name, not a path
    number = 2
    while True:
        candidate = f"{stem}~{number}{suffix}"
        try:
            (folder / candidate).lstat()
        except FileNotFoundError:
            return candidate
        number += 1


def _is_file_or_free(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except FileNotFoundError:
        return True


class ManifestWriter:
    """Appends records to the manifest, one whole line per ``write`` to the OS.

    Lines go straight to the file descriptor (no Python buffer), so a failed write leaves
    nothing behind to be flushed later. A write that fails part-way (disk full) is cut back to
    the last whole line, so the next line still parses; if even that fails, the next line starts
    on a fresh line and only the torn one is lost.
    """

    def __init__(self, path: Path) -> None:
        """Open ``path`` for appending (never through a symbolic link), ending a torn last line.

        Raises:
            OutputWriteError: ``path`` is a symbolic link or not a regular file.
            OSError: it cannot be opened.
        """
        self.path = path
        # O_NONBLOCK: a FIFO planted at the name must not block the open; no effect on files.
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NONBLOCK", 0)
        self._fd: int | None = open_no_follow(path, flags)
        try:
            info = os.fstat(self._fd)
            _check_regular(path, info.st_mode)
            self._end = info.st_size
            self._torn = False
            if self._end > 0:
                os.lseek(self._fd, -1, os.SEEK_END)
                self._torn = os.read(self._fd, 1) != b"\n"
        except BaseException:
            os.close(self._fd)
            raise

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record as a JSON line (to the OS, not yet fsynced).

        Raises:
            OSError: the write failed (disk full...); the manifest still ends with a whole line
                where the OS lets it be cut back.
        """
        if self._fd is None:
            raise ValueError("the manifest writer is closed")
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)
        # backslashreplace turns a stray surrogate into a valid JSON escape, never a bad line.
        data = line.encode("utf-8", "backslashreplace") + b"\n"
        if self._torn:
            data = b"\n" + data
        try:
            view = memoryview(data)
            while view:
                view = view[_write(self._fd, view) :]
        except OSError:
            try:
                os.ftruncate(self._fd, self._end)
            except OSError:
                self._torn = True  # could not cut it back: start the next line afresh
            raise
        self._end += len(data)
        self._torn = False

    def close(self) -> None:
        """Flush to disk (fsync) and close."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _check_regular(path: Path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise OutputWriteError(
            f"{str(path)!r} is not a regular file; the manifest must be one. Move it away or "
            "use another output folder"
        )


#: ``os.write``, as a seam: tests inject a full disk here rather than filling one.
_write = os.write
