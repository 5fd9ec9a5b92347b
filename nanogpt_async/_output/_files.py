"""Files in the output folder: atomic writes, the folder lock, opens that never follow links.

Every function here does blocking I/O: call them through ``anyio.to_thread.run_sync`` (or use
`write_atomic_async`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import socket
import sys
import time
import warnings
from pathlib import Path

import anyio.to_thread

from nanogpt_async._errors import FolderInUseError, OutputWriteError

__all__ = [
    "LOCK_NAME",
    "TEMP_SUFFIX",
    "FolderLock",
    "describe_write_error",
    "open_no_follow",
    "write_atomic",
    "write_atomic_async",
]

#: Temporary files end with this, so a resumed batch can sweep what a crash left behind.
TEMP_SUFFIX = ".nanogpt-tmp"
#: The file a running batch holds an OS lock on, inside its output folder.
LOCK_NAME = ".nanogpt-batch.lock"

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation on raw fds
# flock() answers these when the file system keeps no locks (some FUSE and old NFS mounts).
_NO_LOCKS = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP})
#: Windows locks a byte range; one byte far past the holder's note keeps the note readable.
_WINDOWS_LOCK_OFFSET = 1 << 30


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder, fsync, then rename.

    ``os.replace`` is atomic on POSIX and Windows, so ``path`` holds either the old content or
    all of the new, even if the process is killed mid-write. Neither the temp file nor ``path``
    is ever followed if it is a symbolic link: the temp file is created exclusively, and a
    rename replaces a link at ``path`` rather than writing where it points.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_BINARY, 0o644)
        with os.fdopen(fd, "wb") as file:
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


def open_no_follow(path: Path, flags: int, mode: int = 0o644) -> int:
    """``os.open(path, flags)``, refusing a symbolic link at ``path`` with a clear error.

    A link named ``manifest.jsonl`` could otherwise make a batch read or append to a file
    anywhere the user can write. Where the OS has no ``O_NOFOLLOW`` (Windows) the path is
    checked with ``lstat`` first.

    Raises:
        OutputWriteError: ``path`` is a symbolic link.
        OSError: it cannot be opened otherwise (``FileNotFoundError`` without ``O_CREAT``...).
    """
    if not _O_NOFOLLOW and path.is_symlink():
        raise _symlink_error(path)
    try:
        return os.open(path, flags | _O_NOFOLLOW | _O_BINARY, mode)
    except OSError as exc:
        # ELOOP on Linux and macOS; some BSDs answer EMLINK for a link under O_NOFOLLOW.
        if exc.errno in (errno.ELOOP, errno.EMLINK) and path.is_symlink():
            raise _symlink_error(path) from None
        raise


def _symlink_error(path: Path) -> OutputWriteError:
    return OutputWriteError(
        f"{str(path)!r} is a symbolic link; refusing to follow it out of the output folder. "
        "Replace the link with the file itself (or remove it), or use another output folder"
    )


def describe_write_error(folder: Path, exc: OSError) -> str:
    """``exc`` as one line, with the free space of ``folder``'s disk when that is the cause."""
    text = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            return f"{text} (free space unknown)"
        return f"{text} ({_size(free)} free on the disk of {str(folder)!r})"
    return text


def _size(count: int) -> str:
    value = float(count)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"  # pragma: no cover - the loop returns at GB


class FolderLock:
    """An OS lock on ``LOCK_NAME`` inside an output folder, held while a batch runs.

    ``flock`` on POSIX, ``msvcrt.locking`` on Windows: the kernel drops the lock when the
    process dies (even ``kill -9``), so a crashed run never leaves the folder locked. The file
    itself stays (unlinking a locked file would let a later run lock a new file of the same
    name while this one still runs); it holds the holder's pid, host and start time, which a
    second run shows in its error.
    """

    def __init__(self, fd: int | None, path: Path) -> None:
        """Take `acquire`'s result; ``fd`` is ``None`` where locks are unsupported."""
        self._fd = fd
        self.path = path

    @classmethod
    def acquire(cls, folder: Path, name: str = LOCK_NAME) -> FolderLock:
        """Lock ``folder`` now, or raise `FolderInUseError` at once (never waits).

        ``name``: the lock file; a shard of a job locks its own, so shards share a folder.
        """
        path = folder / name
        fd = open_no_follow(path, os.O_RDWR | os.O_CREAT)
        try:
            locked = _try_lock(fd)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in _NO_LOCKS:
                raise
            warnings.warn(
                f"cannot lock the output folder {str(folder)!r}: its file system keeps no locks "
                f"({exc.strerror}). Make sure no other run writes into it meanwhile",
                stacklevel=2,
            )
            return cls(None, path)
        if not locked:
            note = _read_note(fd)
            os.close(fd)
            raise _in_use(folder, note)
        try:
            _write_note(fd)
        except BaseException:
            os.close(fd)  # closing unlocks
            raise
        return cls(fd, path)

    def release(self) -> None:
        """Clear the holder's note and unlock (closing the file unlocks in any case)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            with contextlib.suppress(OSError):  # a full disk must not keep the folder locked
                os.ftruncate(fd, 0)
            _unlock(fd)
        finally:
            os.close(fd)


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except PermissionError:
            return False
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EDEADLK):
                return False
            raise
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                return False
            raise
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _write_note(fd: int) -> None:
    note = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(note).encode() + b"\n")


def _read_note(fd: int) -> dict[str, object]:
    with contextlib.suppress(OSError, ValueError):
        os.lseek(fd, 0, os.SEEK_SET)
        note = json.loads(os.read(fd, 4096) or b"{}")
        if isinstance(note, dict):
            return note
    return {}


def _in_use(folder: Path, note: dict[str, object]) -> FolderInUseError:
    pid = note.get("pid")
    host = note.get("host")
    started = note.get("started")
    who = "another run"
    if isinstance(pid, int) and not isinstance(pid, bool):
        who += f" (pid {pid}"
        who += f" on {host}" if isinstance(host, str) else ""
        who += f", started {started}" if isinstance(started, str) else ""
        who += ")"
    return FolderInUseError(
        f"{who} is writing into the output folder {str(folder)!r}: two runs into one folder "
        "would each pay for every item. Wait for it to finish or stop it (running again later "
        "resumes), or write into another folder",
        folder=folder,
        pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
        host=host if isinstance(host, str) else None,
    )
