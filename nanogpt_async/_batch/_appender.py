"""Manifest lines of items finishing together go to the file in one write (group commit).

Each finished item used to take its own worker-thread hop to append its line. Now the first
item to find the manifest free writes every line waiting at that moment in one hop; the items
whose lines it wrote return without a hop of their own. A line is still only handed over after
its item's files are written, and `append` still returns only once its line is with the OS.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
import anyio.to_thread

__all__ = ["GroupAppender"]


class _Waiting:
    __slots__ = ("done", "error", "record")

    def __init__(self, record: Mapping[str, Any]) -> None:
        self.record = record
        self.done = False
        self.error: OSError | None = None


class GroupAppender:
    """Appends records through ``append_many`` (blocking, run in a thread), grouping them."""

    def __init__(self, append_many: Callable[[Sequence[Mapping[str, Any]]], None]) -> None:
        """Write with ``append_many``, e.g. `ManifestWriter.append_many`."""
        self._append_many = append_many
        self._lock = anyio.Lock()
        self._waiting: list[_Waiting] = []

    async def append(self, record: Mapping[str, Any]) -> None:
        """Return once ``record`` is written (with any others waiting then).

        Raises:
            OSError: the write of its group failed (every record of that group is unwritten).
        """
        mine = _Waiting(record)
        self._waiting.append(mine)
        try:
            async with self._lock:
                if not mine.done:  # nobody wrote it while this waited: write all that wait
                    group, self._waiting = self._waiting, []
                    error = None
                    try:
                        await anyio.to_thread.run_sync(
                            self._append_many, [waiting.record for waiting in group]
                        )
                    except OSError as exc:
                        error = exc
                    for waiting in group:
                        waiting.done, waiting.error = True, error
        except BaseException:
            if not mine.done and mine in self._waiting:  # cancelled before anyone took it
                self._waiting.remove(mine)
            raise
        if mine.error is not None:
            raise mine.error
