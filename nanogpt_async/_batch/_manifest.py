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
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from nanogpt_async._batch._filecheck import (
    CHECKED_TO,
    FileCheck,
    TempListing,
    Verdicts,
    holds,
)
from nanogpt_async._batch._names import safe_path
from nanogpt_async._codec import loads
from nanogpt_async._errors import OutputWriteError
from nanogpt_async._output._files import TEMP_SUFFIX, open_no_follow

__all__ = [
    "FileEntry",
    "ManifestIndex",
    "ManifestWriter",
    "RecordedItem",
    "check_files_main",
    "files_intact",
    "iter_records",
    "open_folder",
    "open_recorded",
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
#: An index offset's top bit: the record is ok and its files were found unchanged.
_INTACT = 1 << 63
#: The next bit: the record is ok and its files are checked by another process (`FileCheck`):
#: intact once the check has passed its line without finding it changed.
_PENDING = 1 << 62
_OFFSET = _PENDING - 1
#: A manifest of this size or more has its files checked by another process (`FileCheck`),
#: beside the index's build; a smaller one as its lines are read (about 20,000 records: the
#: ``stat`` calls take less time than starting that process, about 0.3 s of CPU).
_CHECK_APART_BYTES = 8 << 20
#: A manifest of this size or more has its index sized up front (`_table_size`).
_RESERVE_BYTES = 8 << 20
#: How much of a manifest's start `_table_size` reads to estimate its line count.
_ESTIMATE_BYTES = 1 << 16
#: The index's build reads the manifest in pieces of this size. Each read lets go of the GIL,
#: and a thread running Python meanwhile (the input read ahead) keeps it for up to 5 ms: with
#: the default 8 KB a million-line build beside a busy thread took 17-21 s, with 1 MB 12-13 s.
_BUILD_BUFFER = 1 << 20
#: The check says how far it got after every this many lines (and at the end).
_CHECKED_EVERY = 8192
#: What a file's stamp holds (see `FileEntry`).
_STAMP_FIELDS = ("st_ino", "st_mtime_ns", "st_ctime_ns")
#: A resume group's lines are read in one piece when they lie within this many bytes.
_SPAN_READ = 4 << 20
#: What ends a name's first part: a path separator, or on Windows a drive's colon.
_SEPARATORS = tuple({"/", os.sep, *((os.altsep, ":") if os.name == "nt" else ())} - {None})
#: Characters a plain file name never holds (each separator is one character).
_NOT_IN_NAMES = frozenset({"\0", *_SEPARATORS})
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
        if not isinstance(item, dict):  # what JSON parses to (no Mapping ABC check: a resume
            return None  # reads a million of these)
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
    """A 64-bit hash of an item id, never 0 (0 marks an empty slot).

    Python's own string hash (SipHash, keyed per process): the index lives and dies with the
    process, so a per-process key is all it needs, and the hash is cached on the id string,
    which the batch hashes anyway (`RepeatedIds`). blake2b cost about 0.6 µs an id, twice per
    item on a resume (index and lookup). A collision only makes an item run again (`_recorded`
    checks the id), with the same odds as any 64-bit hash.
    """
    return hash(item_id) & 0xFFFFFFFFFFFFFFFF or 1


def _id_check(item_id: str) -> int:
    """32 more bits of an item id's hash, independent of `_id_key` (as `RepeatedIds` does).

    A record the index found intact is skipped without reading its line back, so a 64-bit
    collision would skip an item that was never done; with these 96 bits the odds are about
    n² / 2⁹⁷ (10⁻¹⁵ for ten million ids).
    """
    return hash(item_id + "\x00") & 0xFFFFFFFF


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

    Built with the output ``folder``, it also checks each ok record's files as it reads the line
    (`_files_unchanged`: one ``stat`` each, no hashing) and marks the records whose files all
    still carry their recorded stamp: `intact` then answers for them from memory, without
    reading their lines back (4 more bytes a slot, for the 96-bit id check).
    """

    def __init__(self, path: Path) -> None:
        """An empty index of ``path``; `build` fills it."""
        self.path = path
        self._keys = array("Q", bytes(8 * 1024))
        self._offsets = array("Q", bytes(8 * 1024))
        self._checks = array("I", bytes(4 * 1024))
        self._used = 0
        #: What the file check in another process found so far (none yet); stop waits: `interrupt`.
        self.verdicts = Verdicts(None)

    @classmethod
    def build(cls, path: Path, folder: Path | None = None) -> ManifestIndex:
        """Index every parsable line of ``path`` (none if the file does not exist).

        ``folder``: the files' folder, to mark the records whose files are unchanged (`intact`).
        A big manifest's files are checked by another process (`FileCheck`) while the lines
        are read and after: `intact` waits only for the records it is asked about. Call
        `close` when done with the index.
        """
        index = cls(path)
        try:
            file = _open_for_reading(path, _BUILD_BUFFER)
        except FileNotFoundError:
            return index
        with file:
            index._make_table(_table_size(file))
            dir_fd = open_folder(folder) if folder is not None else None
            try:
                if dir_fd is not None and folder is not None:
                    check = _check_apart(path, folder, os.fstat(file.fileno()).st_size)
                    index.verdicts = Verdicts(check)
                    if check is not None:
                        os.close(dir_fd)
                        dir_fd = None
                skipped = index._index_lines(file, dir_fd)
            except BaseException:
                index.close()  # a check already started is not left running
                raise
            finally:
                if dir_fd is not None:
                    os.close(dir_fd)
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

    def _index_lines(self, lines: Iterable[bytes], dir_fd: int | None = None) -> list[int]:
        """Index each record line; the numbers of the lines that are not records.

        One tight loop: a million lines took 3.6 s through `_parse_record` and a per-line insert,
        of which orjson's parse is 1.4 s. A line orjson parses into a record needs nothing
        else; any other line goes through `_parse_record`, which decides exactly as before.
        With ``dir_fd`` (the output folder), an ok record whose files are unchanged is marked
        intact: checking it here, from the record already parsed, saves reading and parsing its
        line again when its item comes up (about 8 µs an item on a resume). With a check in
        another process instead (`FileCheck`), an ok record is marked pending: `intact` then
        answers from what the check found (`Verdicts`).
        """
        skipped: list[int] = []
        parse, id_key, id_check, unchanged = _orjson_loads, _id_key, _id_check, _files_unchanged
        keys, offsets, checks, used = self._keys, self._offsets, self._checks, self._used
        mask = len(keys) - 1
        offset = 0
        apart = self.verdicts.running
        mark = _PENDING if apart else _INTACT  # what an ok record is marked (see above)
        for number, line in enumerate(lines, start=1):
            try:
                record = parse(line)
            except (ValueError, RecursionError):
                record = None
            if not (
                type(record) is dict
                and type(record.get("id")) is str
                and record.get("status") in ("ok", "failed")
            ):
                record = _parse_record(line, _loads_for_resume)
            if record is not None:
                if (used + 1) * 2 > mask + 1:
                    self._used = used
                    self._grow()
                    keys, offsets, checks = self._keys, self._offsets, self._checks
                    mask = len(keys) - 1
                item_id = record["id"]
                key = id_key(item_id)
                slot = key & mask
                while (found := keys[slot]) != key:
                    if not found:
                        keys[slot] = key
                        used += 1
                        break
                    slot = (slot + 1) & mask
                if record["status"] == "ok" and (
                    apart or (dir_fd is not None and unchanged(record.get("files"), dir_fd))
                ):
                    offsets[slot] = offset | mark
                    checks[slot] = id_check(item_id)
                else:
                    offsets[slot] = offset
            elif line.strip():
                skipped.append(number)
            offset += len(line)
        self._used = used
        return skipped

    def _make_table(self, slots: int) -> None:
        """An empty table of ``slots`` slots (a power of two), if bigger than the one it has."""
        if slots > len(self._keys):
            self._keys = array("Q", bytes(8 * slots))
            self._offsets = array("Q", bytes(8 * slots))
            self._checks = array("I", bytes(4 * slots))

    def close(self) -> None:
        """Stop the file check if it still runs (blocking: waits for it to end)."""
        self.verdicts.close()

    def __len__(self) -> int:
        """How many distinct items are recorded."""
        return self._used

    def _grow(self) -> None:
        self._keys, self._offsets, self._checks = _doubled(self._keys, self._offsets, self._checks)

    def get(self, item_id: str) -> RecordedItem | None:
        """The latest record of ``item_id`` (read from the file: blocking), or ``None``."""
        return self.get_many([item_id])[0]

    def get_many(self, item_ids: Sequence[str]) -> list[RecordedItem | None]:
        """`get` for several ids, opening the file once (blocking).

        Resume looks items up in groups: reopening the manifest for each of a million items
        cost about 20 µs an item.
        """
        found: list[RecordedItem | None] = [None] * len(item_ids)
        for position, line in self._lines(item_ids):
            found[position] = _recorded(line, item_ids[position])
        return found

    def _lines(self, item_ids: Sequence[str]) -> list[tuple[int, bytes]]:
        """``(position in item_ids, latest manifest line)`` of each recorded id (blocking)."""
        if not self._used:
            return []
        keys, offsets, id_key = self._keys, self._offsets, _id_key
        mask = len(keys) - 1
        located = []
        for position, item_id in enumerate(item_ids):
            key = id_key(item_id)
            slot = key & mask
            while (found := keys[slot]) != key:
                if not found:
                    break
                slot = (slot + 1) & mask
            else:
                located.append((offsets[slot] & _OFFSET, position))
        if not located:
            return []
        located.sort()
        first, last = located[0][0], located[-1][0]
        with _open_for_reading(self.path) as file:
            if last - first > _SPAN_READ:  # far apart: one line at a time
                lines = []
                for offset, position in located:
                    file.seek(offset)
                    lines.append((position, file.readline()))
                return lines
            # Close together (items are mostly met in the order they were recorded): one read
            # for the whole span instead of a seek and a read per line.
            file.seek(first)
            span = file.read(last - first) + file.readline()
        lines = []
        for offset, position in located:
            start = offset - first
            end = span.find(b"\n", start) + 1
            lines.append((position, span[start:end] if end else span[start:]))
        return lines

    def intact(self, item_ids: Sequence[str]) -> list[bool]:
        """Per id: recorded ok, and its files were found unchanged (blocking).

        Answered from memory (no file is read): only an index built with its folder marks
        records intact (`build`); ``False`` says nothing either way (`finished` decides). An id
        whose files another process still checks (`FileCheck`) waits for it (if not interrupted).
        """
        verdicts = self.verdicts
        verdicts.settle(wait=False)
        keys, offsets, checks = self._keys, self._offsets, self._checks
        mask = len(keys) - 1
        checked_to, changed = verdicts.checked_to, verdicts.changed
        answers: list[bool] = []
        late: list[tuple[int, int, str]] = []  # ``(position, slot, id)``: the check is not there
        # Locals, and `_id_key` inline: a resume asks about a million ids.
        pending, intact = _PENDING, _INTACT
        for item_id in item_ids:
            key = hash(item_id) & 0xFFFFFFFFFFFFFFFF or 1
            slot = key & mask
            while (at := keys[slot]) and at != key:
                slot = (slot + 1) & mask
            offset = offsets[slot] if at else 0
            if offset < pending:  # not recorded, not ok, or its files changed
                answers.append(False)
            elif offset < intact and offset - pending >= checked_to:
                late.append((len(answers), slot, item_id))
                answers.append(False)
            else:
                answers.append(
                    (offset >= intact or not (changed and holds(changed, offset - pending)))
                    and checks[slot] == _id_check(item_id)
                )
        if late:
            self._answer_late(late, answers)
        return answers

    def _answer_late(self, late: list[tuple[int, int, str]], answers: list[bool]) -> None:
        """`intact`'s answers for pending records the check had not got to: waits for it."""
        offsets, checks, verdicts = self._offsets, self._checks, self.verdicts
        verdicts.wait_past(max(offsets[slot] for _, slot, _ in late) - _PENDING)
        for position, slot, item_id in late:
            line = offsets[slot] - _PENDING
            answers[position] = verdicts.unchanged(line) and checks[slot] == _id_check(item_id)

    def finished(
        self, folder: Path, item_ids: Sequence[str], *, retry_failed: bool
    ) -> list[RecordedItem | None]:
        """What an earlier run did that this one should not redo, per id (blocking).

        ``None`` when the item must run: never recorded, recorded failed with
        ``retry_failed``, or recorded ok but a file has gone or changed since (size, then stamp
        or SHA-256, see `files_intact`). One manifest read and one open of the folder for all.
        """
        found: list[RecordedItem | None] = [None] * len(item_ids)
        lines = self._lines(item_ids)
        if not lines:
            return found
        dir_fd = open_folder(folder)
        try:
            for position, line in lines:
                item_id = item_ids[position]
                recorded = _unchanged_record(line, item_id, dir_fd)
                if recorded is None:  # anything else than an ok record whose stamps all match
                    recorded = _recorded(line, item_id)
                    if recorded is None or (
                        retry_failed
                        if recorded.status == "failed"
                        else not files_intact(folder, recorded.files, dir_fd)
                    ):
                        continue
                found[position] = recorded
        finally:
            if dir_fd is not None:
                os.close(dir_fd)
        return found


def _doubled(
    old_keys: array[int], old_offsets: array[int], old_checks: array[int]
) -> tuple[array[int], array[int], array[int]]:
    """`ManifestIndex`'s table with twice the slots, its entries inserted again."""
    keys = array("Q", bytes(16 * len(old_keys)))
    offsets = array("Q", bytes(16 * len(old_keys)))
    checks = array("I", bytes(8 * len(old_keys)))
    mask = len(keys) - 1
    for key, offset, check in zip(old_keys, old_offsets, old_checks, strict=True):
        if key:  # keys are distinct: the first free slot is the one
            slot = key & mask
            while keys[slot]:
                slot = (slot + 1) & mask
            keys[slot] = key
            offsets[slot] = offset
            checks[slot] = check
    return keys, offsets, checks


def _table_size(file: IO[bytes]) -> int:
    """`ManifestIndex`'s table size for a big manifest's records, estimated from its ends.

    Growing the table by doubling on the way to a million records re-inserted two million
    keys in `ManifestIndex._grow` (about 0.5 s of the index's 4 s build). The estimate: the
    lines of the first and of the last `_ESTIMATE_BYTES`, whichever are the longer, scaled to
    the file's size, less an eighth. A table too big stays in memory (a manifest of short
    failed lines first and long ok ones later would get twice the table it needs), one too
    small only grows as before. 0: no estimate (a small manifest). Leaves ``file`` at its start.
    """
    size = os.fstat(file.fileno()).st_size
    if size < _RESERVE_BYTES:
        return 0
    head = file.read(_ESTIMATE_BYTES)
    file.seek(max(0, size - _ESTIMATE_BYTES))
    tail = file.read(_ESTIMATE_BYTES)
    file.seek(0)
    lines = min(head.count(b"\n") * len(tail), tail.count(b"\n") * len(head))
    if not lines:  # a line longer than the sample: no estimate
        return 0
    records = size * lines // (len(head) * len(tail)) * 7 // 8
    return 1 << (2 * records).bit_length()


def _unchanged_record(line: bytes, item_id: str, dir_fd: int | None) -> RecordedItem | None:
    """``item_id``'s ok record in ``line`` if each of its files still has its recorded stamp.

    The common case of a resume, in one function (a million items: about 10 µs an item through
    `_recorded` and `files_intact`). ``None`` means "not settled here": `_recorded` and
    `files_intact` then decide, exactly as for any record.
    """
    if dir_fd is None:
        return None
    try:
        record = _orjson_loads(line)
    except (ValueError, RecursionError):
        return None
    if type(record) is not dict or record.get("id") != item_id or record.get("status") != "ok":
        return None
    if not _files_unchanged(record.get("files"), dir_fd):
        return None
    entries = tuple(  # `_files_unchanged` checked each field
        FileEntry(item["path"], item["sha256"], item["bytes"], _stamp(item["stamp"]))
        for item in record["files"]
    )
    request_id = record.get("request_id")
    return RecordedItem("ok", entries, request_id if type(request_id) is str else None)


def _check_apart(path: Path, folder: Path, end: int) -> FileCheck | None:
    """A check of the files by another process, for a manifest of `_CHECK_APART_BYTES` or more.

    ``None`` for a smaller one, or if the process cannot be started (the files are then
    checked as the lines are read, as for a small one).
    """
    if end < _CHECK_APART_BYTES or not sys.executable or getattr(sys, "frozen", False):
        return None  # small; or no interpreter to run it (a frozen app would start itself)
    try:
        return FileCheck(path, folder, end)
    except OSError as exc:
        logger.debug("cannot start the file check (%s): checking the files in this process", exc)
        return None


def check_files_main() -> None:
    """The file check's process (`FileCheck`): ``MANIFEST FOLDER END`` on the command line."""
    manifest, folder, end = sys.argv[1:4]
    check_files(Path(manifest), Path(folder), int(end), sys.stdout.buffer)


def check_files(manifest: Path, folder: Path, end: int, out: IO[bytes]) -> None:
    """Write what `ManifestIndex` needs to know of ``manifest``'s first ``end`` bytes to ``out``.

    64-bit native numbers: the offset of each line it does not find an ok record with its files
    unchanged (`_files_unchanged`), except the records of another status (never pending); and
    after every `_CHECKED_EVERY` lines, and at the end, how far it got (the offset of the next
    line, plus `CHECKED_TO`), flushed, so the index can answer while the rest is checked.
    """
    dir_fd = open_folder(folder)
    if dir_fd is None:
        return  # nothing checked: every record is checked the exact way
    try:
        verdicts = array("Q")
        offset = 0
        with _open_for_reading(manifest) as file:
            for number, line in enumerate(file, start=1):
                if offset >= end:
                    break
                try:
                    record = _orjson_loads(line)
                except (ValueError, RecursionError):
                    record = None
                if type(record) is not dict or (
                    record.get("status") == "ok"
                    and not _files_unchanged(record.get("files"), dir_fd)
                ):
                    verdicts.append(offset)
                offset += len(line)
                if not number % _CHECKED_EVERY:
                    verdicts.append(CHECKED_TO + offset)
                    out.write(verdicts.tobytes())
                    out.flush()
                    verdicts = array("Q")
        verdicts.append(CHECKED_TO + offset)
        out.write(verdicts.tobytes())
        out.flush()
    finally:
        os.close(dir_fd)


def _files_unchanged(files: object, dir_fd: int) -> bool:
    """Whether a record's ``files`` are well formed and each still has its recorded stamp.

    A regular file, directly in the folder (``dir_fd``), of the recorded size, whose ``stamp``
    is the recorded one: nothing wrote to it since (see `FileEntry`). Anything else (no files, a
    malformed entry, no stamp, a name that is not a plain file name) is ``False``: the exact
    checks (`files_intact`) then decide.
    """
    if type(files) is not list or not files:
        return False
    for item in files:
        if type(item) is not dict:
            return False
        name, sha, size, stamp = (
            item.get("path"),
            item.get("sha256"),
            item.get("bytes"),
            item.get("stamp"),
        )
        if not (
            type(name) is str
            and type(sha) is str
            and type(size) is int
            and type(stamp) is list
            and _is_plain_name(name)
        ):
            return False
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except (OSError, ValueError):
            return False
        if (
            info.st_size != size
            or stamp != [info.st_ino, info.st_mtime_ns, info.st_ctime_ns]
            or not stat.S_ISREG(info.st_mode)
        ):
            return False
    return True


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


def _open_for_reading(path: Path, buffering: int = -1) -> IO[bytes]:
    """The manifest, opened for reading without following a symbolic link.

    O_NONBLOCK: a FIFO planted at the name must not hang the batch before it starts.
    ``buffering``: the read buffer's size (``-1``: the default).
    """
    fd = open_no_follow(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        _check_regular(path, os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb", buffering)


def read_manifest(path: Path, folder: Path | None = None) -> ManifestIndex:
    """Index the items recorded in ``path``; an empty index if there is no file.

    ``folder``: where the files are, to find the records whose files are unchanged as the lines
    are read (`ManifestIndex.intact`).
    """
    return ManifestIndex.build(path, folder)


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


def sweep_temp_files(
    folder: Path, owned: Callable[[str], bool] | None = None, names: Iterable[str] | None = None
) -> int:
    """Delete temp files a crashed run left in ``folder``; return how many.

    ``owned``: only the temp files it accepts (by name): a shard leaves the other shards'.
    ``names``: the folder's temp file names, listed already (`TempListing`); else it is
    listed here. Only regular files are removed, never a symlink or a folder.
    """
    if names is None:
        with os.scandir(folder) as entries:
            names = [
                entry.name
                for entry in entries
                if entry.name.endswith(TEMP_SUFFIX) and entry.is_file(follow_symlinks=False)
            ]
    removed = 0
    for name in names:
        path = folder / name
        if name.endswith(TEMP_SUFFIX) and (owned is None or owned(name)):
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISREG(path.lstat().st_mode):
                    path.unlink()
                    removed += 1
    return removed


def open_recorded(
    manifest: Path, folder: Path, owned: Callable[[str], bool] | None = None
) -> ManifestIndex:
    """Sweep ``folder``'s temp files (`sweep_temp_files`) and index ``manifest`` (`read_manifest`).

    Beside a big manifest (`_CHECK_APART_BYTES`, about 20,000 records), the folder is listed by
    another process while the manifest is read (`TempListing`), and the few temp files found
    are removed before this returns: before this run writes any file of its own.
    """
    listing = _list_apart(manifest, folder)
    if listing is None:
        sweep_temp_files(folder, owned)
        return read_manifest(manifest, folder)
    try:
        recorded = read_manifest(manifest, folder)
        names = listing.names()
    finally:
        listing.close()
    try:
        sweep_temp_files(folder, owned, names)
    except BaseException:
        recorded.close()
        raise
    return recorded


def _list_apart(manifest: Path, folder: Path) -> TempListing | None:
    """A listing of ``folder`` by another process, beside a big manifest; else ``None``."""
    try:
        size = manifest.stat().st_size
    except OSError:
        return None  # no manifest (or none readable: `read_manifest` says why)
    if size < _CHECK_APART_BYTES or not sys.executable or getattr(sys, "frozen", False):
        return None
    try:
        return TempListing(folder, TEMP_SUFFIX)
    except OSError as exc:
        logger.debug("cannot start the temp file listing (%s): listing here", exc)
        return None


def files_intact(folder: Path, files: Sequence[FileEntry], dir_fd: int | None = None) -> bool:
    """Whether every recorded file is still there, with its recorded size and SHA-256.

    Sizes first, for all the files (one ``stat`` each): a missing or truncated file is found
    without reading anything. Only when every size matches are the files read and hashed, so
    a resume reads the images it skips once, and never those it is about to redo. A file whose
    ``stat`` still shows the stamp recorded when it was written is not hashed: nothing wrote
    to it since (see `FileEntry`). A million skipped items cost about 3 s of ``stat`` calls
    this way, against minutes of reading and hashing.

    ``dir_fd``: ``folder`` opened as a directory (`open_folder`), so each ``lstat`` resolves
    a name in it instead of the whole path again.
    """
    if not files:
        return False
    checks = [_unchanged(folder, entry, dir_fd) for entry in files]
    if None in checks:
        return False
    return all(
        unchanged or _sha256_of(os.path.join(folder, entry.path)) == entry.sha256
        for unchanged, entry in zip(checks, files, strict=True)
    )


def open_folder(folder: Path) -> int | None:
    """``folder`` opened for `files_intact`'s ``dir_fd`` (close it after), or ``None``.

    ``None`` where the OS cannot ``lstat`` relative to a directory: full paths are used then.
    """
    if not (
        os.stat in os.supports_dir_fd
        and os.stat in os.supports_follow_symlinks
        and hasattr(os, "O_DIRECTORY")
    ):
        return None
    try:
        return os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None


def _is_plain_name(name: str) -> bool:
    """A single file name: no separator, drive, NUL, ``.`` or ``..`` (what `safe_path` allows)."""
    # One set test in C, not any() over the separators: a resume checks a million names.
    return name not in ("", ".", "..") and _NOT_IN_NAMES.isdisjoint(name)


def _unchanged(folder: Path, entry: FileEntry, dir_fd: int | None) -> bool | None:
    """Whether the file's stamp is the recorded one, if it is a regular file of the recorded size.

    ``None``: missing, resized, not a file, or a name that is not a plain file name in
    ``folder`` (the batch only writes those).
    """
    name = entry.path
    # What `safe_path` allows, without its two ``resolve()`` calls (a dozen system calls a
    # file, a third of a million-item resume): one plain name directly in the folder.
    if not _is_plain_name(name):
        return None
    try:
        # A symlink swapped in for a recorded file is not that file: lstat, never stat.
        if dir_fd is None:
            info = os.lstat(os.path.join(folder, name))
        else:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except (OSError, ValueError):
        return None
    if not (stat.S_ISREG(info.st_mode) and info.st_size == entry.bytes):
        return None
    return entry.stamp is not None and _stamp_of(info) == entry.stamp


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
