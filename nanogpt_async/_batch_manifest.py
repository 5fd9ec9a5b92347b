"""The output folder's journal: ``manifest.jsonl``, one JSON object per finished item.

A line is appended only after the item's files are fully written (atomically), and flushed at
once, so a crash or ``kill -9`` loses at most the items in flight, never a recorded one. Readers
skip lines that do not parse: a torn last line from a crash, or anything else odd, costs only
that line. Later lines win: a failed item retried by a resumed run gets a second, newer line.

Every function here does blocking I/O: call them through ``anyio.to_thread.run_sync``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import secrets
import stat
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from nanogpt_async._batch_models import OutputWriteError
from nanogpt_async._batch_names import safe_path
from nanogpt_async._codec import loads
from nanogpt_async._files import TEMP_SUFFIX, open_no_follow

__all__ = [
    "FileEntry",
    "ManifestIndex",
    "ManifestWriter",
    "RecordedItem",
    "files_intact",
    "iter_records",
    "read_manifest",
    "sweep_temp_files",
    "write_images",
    "write_new",
]

logger = logging.getLogger("nanogpt_async")

#: Line numbers of unreadable manifest lines quoted in the warning.
_LINES_SHOWN = 5
#: Resume hashes files in pieces of this size: memory stays flat whatever the image size.
_HASH_CHUNK = 1 << 20
#: ``{stem}-v{k}`` names tried before giving up on a name.
_MAX_VERSIONS = 100
#: ``link`` failing with these means "no hard links here", not "name taken".
_NO_HARD_LINKS = frozenset(
    code
    for code in (
        getattr(errno, name, None) for name in ("EPERM", "EOPNOTSUPP", "ENOTSUP", "ENOSYS")
    )
    if code is not None
)


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
    except RecursionError:
        return None
    except ValueError:
        # orjson refuses a lone surrogate escape ("\ud800"), which `ManifestWriter` writes for
        # a text that is not valid Unicode (an item id given through the Python API): the
        # stdlib reads it back as written. Else the line was torn by a crash, or is not ours.
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
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
        """An empty index of ``path``; `build` fills it."""
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
        skipped: list[int] = []
        with file:
            offset = 0
            for number, line in enumerate(file, start=1):
                record = _parse_record(line)
                if record is not None:
                    index._put(_id_key(record["id"]), offset)
                elif line.strip():
                    skipped.append(number)
                offset += len(line)
        if skipped:
            shown = ", ".join(map(str, skipped[:_LINES_SHOWN]))
            more = f" and {len(skipped) - _LINES_SHOWN} more" if len(skipped) > _LINES_SHOWN else ""
            logger.warning(
                "%s: skipped %d line(s) that are not a manifest record (line %s%s): a line torn "
                "by a crash, or edited by hand. Items recorded only there will be run again",
                path,
                len(skipped),
                shown,
                more,
            )
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


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """Every parsable record of ``path`` in file order (a bad or torn line is skipped).

    Nothing if there is no file. Later records of an id supersede earlier ones; the caller
    decides what that means (the gallery shows the latest and counts every cost).
    """
    try:
        file = path.open("rb")
    except FileNotFoundError:
        return
    with file:
        for line in file:
            record = _parse_record(line)
            if record is not None:
                yield record


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
    """Whether every recorded file is still there, with its recorded size and SHA-256.

    Sizes first, for all the files (one ``stat`` each): a missing or truncated file is found
    without reading anything. Only when every size matches are the files read and hashed, so
    a resume reads the images it skips once, and never those it is about to redo.
    """
    if not files:
        return False
    paths = [_sized_path(folder, entry) for entry in files]
    if any(path is None for path in paths):
        return False
    return all(
        path is not None and _sha256_of(path) == entry.sha256
        for path, entry in zip(paths, files, strict=True)
    )


def _sized_path(folder: Path, entry: FileEntry) -> Path | None:
    """The recorded file's path if it is a regular file of the recorded size, else ``None``."""
    try:
        path = safe_path(folder, entry.path)
        info = path.lstat()  # a symlink swapped in for a recorded file is not that file
    except (OSError, ValueError):
        return None
    return path if stat.S_ISREG(info.st_mode) and info.st_size == entry.bytes else None


def _sha256_of(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as file:
            while chunk := file.read(_HASH_CHUNK):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def write_images(folder: Path, named: Sequence[tuple[str, bytes]]) -> list[FileEntry]:
    """Write each ``(name, data)`` into ``folder`` as a new file; return the manifest entries.

    Nothing already there is ever replaced (a paid image of an earlier run, a file of the
    user's, a symlink): when ``name`` is taken, the next free ``{stem}-v{k}{ext}`` (k = 2,
    3, ...) is used, and the entry records the name actually written.
    """
    entries = []
    for name, data in named:
        written = _write_new_version(folder, name, data)
        entries.append(FileEntry(written, hashlib.sha256(data).hexdigest(), len(data)))
    return entries


def _write_new_version(folder: Path, name: str, data: bytes) -> str:
    stem, extension = os.path.splitext(name)  # noqa: PTH122 - a name, not a path
    for version in range(1, _MAX_VERSIONS + 1):
        candidate = name if version == 1 else f"{stem}-v{version}{extension}"
        try:
            write_new(safe_path(folder, candidate), data)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(
        errno.EEXIST,
        f"{_MAX_VERSIONS} files named like {name!r} already exist; move them away",
        str(folder / name),
    )


def write_new(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, only if nothing is there (else FileExistsError).

    The bytes go to a temp file (fsynced), then a hard link gives them the final name: ``link``
    fails if the name exists, even as a dangling symlink, so no check-then-write race can
    replace anything. File systems without hard links get an exclusive create and a direct
    write instead (a crash mid-write may leave a partial file, never recorded in the manifest).
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    try:
        with tmp.open("xb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            _write_exclusive(path, data)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _write_exclusive(path: Path, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags, 0o666)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


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
