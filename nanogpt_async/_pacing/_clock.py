"""The pacer's default clock and sleep, and how test suites' instant retries reach the pacer.

Under `nanogpt_async._http._retry.recorded_backoff` (autouse in our tests, and what users' test
suites use to make retries instant) the retry engine's waits are recorded, not slept. The
client pacer's 429 cooldown is the same wait (the server's ``Retry-After``) for every caller:
so in that mode a pacer on the default clock does not hold callers for it, and a test
answering 429 with ``Retry-After: 20`` finishes at once, as it did before pacing moved into the
client. Spacing between requests (the rate) stays real time, and so does the queue order.
Pacers given their own clock are never affected.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import anyio

__all__ = ["instant", "is_instant", "monotonic", "sleep"]

_instant = 0


def monotonic() -> float:
    """Monotonic seconds (the default pacing clock)."""
    return time.monotonic()


async def sleep(seconds: float) -> None:
    """Sleep in real time (the default pacing sleep)."""
    await anyio.sleep(seconds)


def is_instant() -> bool:
    """Whether retry waits are instant (``recorded_backoff`` is active)."""
    return _instant > 0


@contextlib.contextmanager
def instant() -> Iterator[None]:
    """Make 429 cooldowns of pacers on the default clock instant for the duration."""
    global _instant  # noqa: PLW0603 - the process-wide testing switch's state
    _instant += 1
    try:
        yield
    finally:
        _instant -= 1
