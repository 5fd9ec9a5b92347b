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
import math
import os
import secrets
import stat
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from nanogpt_async._batch._names import safe_path
from nanogpt_async._codec import loads
from nanogpt_async._errors import OutputWriteError
from nanogpt_async._output._files import TEMP_SUFFIX, open_no_follow

__all__ = [
    "FileEntry",
    "ManifestIndex",
    "ManifestWriter",
    "RecordedItem",
    "files_intact",
    "iter_records",
    "read_manifest",
    "record_number",
    "sweep_temp_files",
    "write_images",
    "write_new",
]

logger = logging.getLogger("nanogpt_async")

_orjson_loads: Callable[[bytes], Any]
try:
    from orjson import loads as _orjson_loads
except ImportError:  # the "speed" extra is not installed
    _orjson_loads = loads

#: Line numbers of unreadable manifest lines quoted in the warning.
_LINES_SHOWN = 5
#: Resume hashes files in pieces of this size: memory stays flat whatever the image size.
_HASH_CHUNK = 1 << 20
#: What a file's stamp holds (see `FileEntry`).
_STAMP_FIELDS = ("st_ino", "st_mtime_ns", "st_ctime_ns")
#: A resume group's lines are read in one piece when they lie within this many bytes.
_SPAN_READ = 4 << 20
#: What ends a name's first part: a path separator, or on Windows a drive's colon.
_SEPARATORS = tuple({"/", os.sep, *((os.altsep, ":") if os.name == "nt" else ())} - {None})
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
    """One written image: path relative to the folder, its SHA-256 and size.

    ``stamp`` is the file's ``(inode, mtime_ns, ctime_ns)`` just after it was written, or
    ``None`` (a manifest older than stamps). A resume that finds the same stamp and size knows
    the file was not written to since (any write, ``utime`` or rename-over changes the ctime,
    which no user call can set back), so it need not hash it; any other file is hashed.
    """

    path: str
    sha256: str
    bytes: int
    stamp: tuple[int, int, int] | None = None

    def as_json(self) -> dict[str, Any]:
        """The manifest's ``files[]`` entry."""
        entry: dict[str, Any] = {"path": self.path, "sha256": self.sha256, "bytes": self.bytes}
        if self.stamp is not None:
            entry["stamp"] = list(self.stamp)
        return entry


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
        entries.append(FileEntry(path, sha, size, _stamp(item.get("stamp"))))
    return tuple(entries)


def _stamp(value: object) -> tuple[int, int, int] | None:
    """A recorded stamp, or ``None`` (absent or malformed: the file is then hashed)."""
    if isinstance(value, list) and len(value) == len(_STAMP_FIELDS):
        inode, mtime, ctime = value
        if type(inode) is int and type(mtime) is int and type(ctime) is int:
            return inode, mtime, ctime
    return None


def _stamp_of(info: os.stat_result) -> tuple[int, int, int]:
    return info.st_ino, info.st_mtime_ns, info.st_ctime_ns


def _id_key(item_id: str) -> int:
    """A 64-bit hash of an item id, never 0 (0 marks an empty slot)."""
    digest = hashlib.blake2b(item_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


def _loads_for_resume(line: bytes) -> Any:
    """Parse a line for resume, which reads ids, statuses, paths, hashes and integers only.

    orjson's result as it is: `loads` walks every parsed value for floats that might be
    integers beyond 64 bits (a third of the index's build time); here such a value could only
    be a file's size or stamp, which then fails its check and the item runs again.
    """
    try:
        return _orjson_loads(line)
    except ValueError:  # NaN, a number overflowing a double, invalid: the exact parser decides
        return loads(line)


def _parse_record(line: bytes, parse: Callable[[bytes], Any] = loads) -> dict[str, Any] | None:
    try:
        record = parse(line)
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
                record = _parse_record(line, _loads_for_resume)
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
        return self.get_many([item_id])[0]

    def get_many(self, item_ids: Sequence[str]) -> list[RecordedItem | None]:
        """`get` for several ids, opening the file once (blocking).

        Resume looks items up in groups: reopening the manifest for each of a million items
        cost about 20 µs an item.
        """
        found: list[RecordedItem | None] = [None] * len(item_ids)
        if not self._used:
            return found
        offsets = []
        for position, item_id in enumerate(item_ids):
            slot = self._slot(_id_key(item_id))
            if self._keys[slot]:
                offsets.append((position, self._offsets[slot]))
        if not offsets:
            return found
        offsets.sort(key=lambda pair: pair[1])
        first, last = offsets[0][1], offsets[-1][1]
        with _open_for_reading(self.path) as file:
            if last - first > _SPAN_READ:  # far apart: one line at a time
                for position, offset in offsets:
                    file.seek(offset)
                    found[position] = _recorded(file.readline(), item_ids[position])
                return found
            # Close together (items are mostly met in the order they were recorded): one read
            # for the whole span instead of a seek and a read per line.
            file.seek(first)
            span = file.read(last - first) + file.readline()
        for position, offset in offsets:
            start = offset - first
            end = span.find(b"\n", start)
            line = span[start:] if end < 0 else span[start : end + 1]
            found[position] = _recorded(line, item_ids[position])
        return found


def _recorded(line: bytes, item_id: str) -> RecordedItem | None:
    """The item recorded by ``line``, if the line parses and is ``item_id``'s."""
    record = _parse_record(line, _loads_for_resume)
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


def record_number(value: object) -> float | None:
    """A record's number field (``cost``, ``started_at``...): a finite float, else ``None``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


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


def sweep_temp_files(folder: Path, owned: Callable[[str], bool] | None = None) -> int:
    """Delete temp files a crashed run left in ``folder``; return how many.

    ``owned``: only the temp files it accepts (by name): a shard leaves the other shards'.
    """
    removed = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if (
                entry.name.endswith(TEMP_SUFFIX)
                and (owned is None or owned(entry.name))
                and entry.is_file(follow_symlinks=False)
            ):
                with contextlib.suppress(FileNotFoundError):
                    Path(entry.path).unlink()
                    removed += 1
    return removed


def files_intact(folder: Path, files: Sequence[FileEntry]) -> bool:
    """Whether every recorded file is still there, with its recorded size and SHA-256.

    Sizes first, for all the files (one ``stat`` each): a missing or truncated file is found
    without reading anything. Only when every size matches are the files read and hashed, so
    a resume reads the images it skips once, and never those it is about to redo. A file whose
    ``stat`` still shows the stamp recorded when it was written is not hashed: nothing wrote
    to it since (see `FileEntry`). A million skipped items cost about 3 s of ``stat`` calls
    this way, against minutes of reading and hashing.
    """
    if not files:
        return False
    checks = [_sized_path(folder, entry) for entry in files]
    if any(check is None for check in checks):
        return False
    return all(
        check is not None and (check[1] or _sha256_of(check[0]) == entry.sha256)
        for check, entry in zip(checks, files, strict=True)
    )


def _is_plain_name(name: str) -> bool:
    """A single file name: no separator, drive, NUL, ``.`` or ``..`` (what `safe_path` allows)."""
    return (
        name not in ("", ".", "..")
        and "\0" not in name
        and not any(separator in name for separator in _SEPARATORS)
    )


def _sized_path(folder: Path, entry: FileEntry) -> tuple[str, bool] | None:
    """``(path, unchanged)`` if the recorded file is a regular file of the recorded size.

    ``unchanged``: its stamp is the recorded one. ``None``: missing, resized, not a file, or a
    name that is not a plain file name in ``folder`` (the batch only writes those).
    """
    name = entry.path
    # What `safe_path` allows, without its two ``resolve()`` calls (a dozen system calls a
    # file, a third of a million-item resume): one plain name directly in the folder.
    if not _is_plain_name(name):
        return None
    path = os.path.join(folder, name)
    try:
        info = os.lstat(path)  # a symlink swapped in for a recorded file is not that file
    except (OSError, ValueError):
        return None
    if not (stat.S_ISREG(info.st_mode) and info.st_size == entry.bytes):
        return None
    return path, entry.stamp is not None and _stamp_of(info) == entry.stamp


def _sha256_of(path: str) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
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
        try:
            # After the temp name's unlink (which changes the ctime): the stamp to find again.
            stamp: tuple[int, int, int] | None = _stamp_of(safe_path(folder, written).lstat())
        except OSError:
            stamp = None  # written, but not stat-able now: a resume hashes it instead
        entries.append(FileEntry(written, hashlib.sha256(data).hexdigest(), len(data), stamp))
    return entries


def _write_new_version(folder: Path, name: str, data: bytes) -> str:
    stem, extension = os.path.splitext(name)
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
        self.append_many([record])

    def append_many(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Write records as JSON lines in one ``write`` (to the OS, not yet fsynced).

        All or none: a write that fails part-way is cut back to where it started.

        Raises:
            OSError: the write failed (disk full...); the manifest still ends with a whole line
                where the OS lets it be cut back.
        """
        if self._fd is None:
            raise ValueError("the manifest writer is closed")
        lines = [
            json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)
            # backslashreplace turns a stray surrogate into a valid JSON escape, never a bad line.
            .encode("utf-8", "backslashreplace")
            + b"\n"
            for record in records
        ]
        data = b"".join(lines)
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
