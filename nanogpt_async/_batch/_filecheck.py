"""A big manifest's recorded files, checked by a process of its own while the batch goes on.

A resume must know which recorded files are still the ones it wrote: one ``stat`` each against
the stamp the manifest recorded (`_manifest._files_unchanged`). For a million items that was
4 of the 14 s before the first new request went out, done while the index was built. A thread
does not help: each ``stat`` hands the GIL to the thread reading the manifest and waits to get
it back (measured: the index's build took 3.6 s more CPU, not less). So a child process reads
the manifest on its own and checks every ok record's files (`_manifest.check_files_main`) on
the machine's other core, while this process builds the index and reads its input. It writes
64-bit numbers, in line order: the offset of each line whose record is not known intact, and
now and then how far it got (`CHECKED_TO` plus the offset of the next line to check). Every
pending record before that line and not named is intact; the index takes this in as it comes
(`ManifestIndex.intact`). An intact record, nearly all of them, costs nothing to send.

The child gets the manifest's path, the folder's path and where the manifest ended when it was
opened (lines this run appends are not its business), and no API key (its environment drops
``NANOGPT_*``). If it cannot be started, or dies, nothing is lost: a record without a verdict
is simply not known intact, and the exact checks (`ManifestIndex.finished`) decide for it.
The index keeps what the child said in `Verdicts`.

Beside such a manifest the folder's temp files are listed by a process of its own too
(`TempListing`), for the same reason: a million names took 0.5-0.9 s before the first request.
"""

from __future__ import annotations

import logging
import os
import queue
import subprocess
import sys
import threading
from array import array
from bisect import bisect_left
from pathlib import Path

__all__ = ["CHECKED_TO", "FileCheck", "TempListing", "Verdicts", "holds"]

logger = logging.getLogger("nanogpt_async")

#: A number with this bit says how far the check got: every line before the offset (the rest).
CHECKED_TO = 1 << 63
#: The child's output is read in pieces of this size.
_READ_SIZE = 1 << 16
#: Where the package lives: the child imports it from there, whatever ``sys.path`` it starts with.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_CHILD_CODE = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); "
    "from nanogpt_async._batch._manifest import check_files_main; check_files_main()"
)


class FileCheck:
    """The child process checking a manifest's files, and what it sent so far."""

    __slots__ = ("_process", "_reader", "_verdicts")

    def __init__(self, manifest: Path, folder: Path, end: int) -> None:
        """Start checking the records of ``manifest``'s first ``end`` bytes against ``folder``.

        Raises:
            OSError: the child process could not be started.
        """
        self._process = spawn(_command(manifest, folder, end))
        self._verdicts: queue.SimpleQueue[array[int] | None] = queue.SimpleQueue()
        # A daemon: a child hanging on a dead network mount must not keep this process alive.
        self._reader = threading.Thread(target=self._read, name="nanogpt-file-check", daemon=True)
        try:
            self._reader.start()
        except BaseException:
            self._process.kill()
            self._process.wait()
            raise

    def verdicts(self, *, wait: bool) -> array[int] | None:
        """The numbers that came in since (empty: none yet); ``None`` once they all came.

        ``wait``: block until some come (or the end).
        """
        try:
            return self._verdicts.get(block=wait)
        except queue.Empty:
            return array("Q")

    def wake(self) -> None:
        """Wake a `verdicts` call waiting: it returns none (non-blocking, from any thread)."""
        self._verdicts.put(array("Q"))

    def close(self) -> None:
        """Stop the child if it still runs, and wait for it (blocking)."""
        if self._process.poll() is None:
            self._process.kill()
        self._reader.join()

    def _read(self) -> None:
        stdout = self._process.stdout
        assert stdout is not None  # noqa: S101 - spawned with stdout=PIPE
        try:
            rest = b""
            while data := os.read(stdout.fileno(), _READ_SIZE):
                data = rest + data
                whole = len(data) - len(data) % 8
                self._verdicts.put(array("Q", data[:whole]))
                rest = data[whole:]
        finally:
            stdout.close()
            if self._process.wait():
                logger.debug("the file check ended with %s", self._process.returncode)
            self._verdicts.put(None)


class Verdicts:
    """What a `FileCheck` found so far: how far it got, and the lines it found changed.

    A record's line before `checked_to` and not in `changed` is intact; one the check has not
    got to is not known yet (`wait_past`), and once the check ended (or none runs) never will
    be: the exact checks decide for it (`_manifest.ManifestIndex.finished`). Nor once the waits
    were given up (`interrupt`): a stopped or cancelled batch waits for no check.
    """

    __slots__ = ("_check", "_interrupted", "changed", "checked_to")

    def __init__(self, check: FileCheck | None) -> None:
        """The verdicts of ``check`` (``None``: no check runs, none will come)."""
        self._check = check
        #: The offset of the first line not checked yet.
        self.checked_to = 0
        #: The offsets of the lines it found not intact, in line order.
        self.changed: array[int] = array("Q")
        self._interrupted = False

    @property
    def running(self) -> bool:
        """More verdicts may come."""
        return self._check is not None

    def settle(self, *, wait: bool) -> None:
        """Take in what the check sent so far; ``wait``: at least something (blocking)."""
        check = self._check
        if check is None:
            return
        while (verdicts := check.verdicts(wait=wait)) is not None:
            if not verdicts:
                return
            for verdict in verdicts:
                if verdict >= CHECKED_TO:
                    self.checked_to = verdict - CHECKED_TO
                else:
                    self.changed.append(verdict)
            wait = False  # then whatever else came, without waiting
        self._check = None  # the end: a record it did not get to is not intact

    def wait_past(self, line: int) -> None:
        """Wait until the check got past ``line`` (an offset), ended, or `interrupt` (blocking)."""
        while self._check is not None and line >= self.checked_to and not self._interrupted:
            self.settle(wait=True)

    def interrupt(self) -> None:
        """Wait no more, now or later: what the check has not got to yet stays unknown.

        Non-blocking, from any thread (the event loop's, as the batch is stopped or cancelled
        while a worker thread waits in `wait_past`). The flag is set before the wake-up is
        sent: a wait either sees the flag or gets the wake-up. The check itself goes on until
        `close`.
        """
        self._interrupted = True
        check = self._check
        if check is not None:
            check.wake()

    def unchanged(self, line: int) -> bool:
        """Whether the check got past ``line`` and found its record intact."""
        return line < self.checked_to and not (self.changed and holds(self.changed, line))

    def close(self) -> None:
        """Stop the check if it still runs (blocking: waits for it to end)."""
        check, self._check = self._check, None
        if check is not None:
            check.close()


def holds(lines: array[int], line: int) -> bool:
    """Whether the sorted ``lines`` hold ``line``."""
    at = bisect_left(lines, line)
    return at < len(lines) and lines[at] == line


#: The temp listing's process: the names in a folder that end with a suffix, each ended by a
#: NUL. Isolated and without ``site`` (no package import): it starts in about 10 ms.
_LIST_CODE = (
    "import os, sys; folder, suffix = sys.argv[1:3]; sys.stdout.buffer.write(b''.join("
    "os.fsencode(e.name) + bytes(1) for e in os.scandir(folder) if e.name.endswith(suffix)))"
)


class TempListing:
    """A big folder's temp files, listed by a process of its own while the manifest is read.

    Listing a million-file folder takes about 0.6 s (0.5-0.9 s measured), before the first
    request of a resume. A thread does not help: ``scandir`` lets go of the GIL for each name
    and waits to get it back from the thread building the index. This process lists them on
    the machine's other core; only the few names it finds are checked and removed here
    (`_manifest.sweep_temp_files`).
    """

    __slots__ = ("_process",)

    def __init__(self, folder: Path, suffix: str) -> None:
        """Start listing the names in ``folder`` that end with ``suffix``.

        Raises:
            OSError: the process could not be started.
        """
        command = [sys.executable, "-I", "-S", "-c", _LIST_CODE, str(folder), suffix]
        self._process = _start(command)

    def names(self) -> list[str] | None:
        """The names it found (blocking: waits for it); ``None`` if it failed."""
        out, _ = self._process.communicate()
        if self._process.returncode:
            return None
        return [os.fsdecode(name) for name in out.split(bytes(1)) if name]

    def close(self) -> None:
        """Stop it if it still runs, and wait for it (blocking)."""
        process = self._process
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _command(manifest: Path, folder: Path, end: int) -> list[str]:
    return [sys.executable, "-c", _CHILD_CODE, _PACKAGE_ROOT, str(manifest), str(folder), str(end)]


def spawn(command: list[str]) -> subprocess.Popen[bytes]:
    """Start the check's child (`_start`). A seam: tests start it behind a gate of their own."""
    return _start(command)


def _start(command: list[str]) -> subprocess.Popen[bytes]:
    """Start a child: its output on stdout; no stdin, no stderr, no ``NANOGPT_*`` variable."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NANOGPT_")}
    return subprocess.Popen(  # noqa: S603 - our own interpreter running our own code
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=environment,
    )
