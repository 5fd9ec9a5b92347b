"""Bounded waits for tests that watch another thread or process (a fake server, a CLI run).

They poll; nothing is asserted on how long anything took, only that it happened in time.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import anyio


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Return once ``condition()`` holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


async def until(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """`wait_until` in an async test, on its event loop.

    It needs no worker thread (a batch under test may hold them all, waiting for something the
    test would only release after this wait), and a cancellation ends it.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await anyio.sleep(0.02)


@contextlib.contextmanager
def within(seconds: float, what: str) -> Iterator[None]:
    """Fail naming ``what`` if the block (in an async test) is not done in ``seconds``.

    The block is cancelled then, under asyncio and trio alike, and the test fails with a
    traceback where it was: long before pytest-timeout (120 s) would kill the whole worker,
    saying only that it did. A wait no cancellation can end (a worker-thread call) still holds it.
    """
    try:
        with anyio.fail_after(seconds):
            yield
    except TimeoutError as exc:
        raise AssertionError(f"{what}: not done within {seconds:g} s") from exc
