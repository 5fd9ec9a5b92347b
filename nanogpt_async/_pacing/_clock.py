"""The pacer's default clock, and how test suites' instant retries move it.

Under `nanogpt_async._retry.recorded_backoff` (autouse in our tests, and what users'
test suites use to make retries instant) the retry engine's waits are recorded, not slept.
The wait for a 429's ``Retry-After`` is then instant but the client pacer's cooldown (the same
``Retry-After``) would still be slept in real time. So in that mode every recorded wait also
moves the default pacing clock forward: a test answering 429 with ``Retry-After: 20`` finishes
at once, as it did before pacing moved into the client. Spacing between requests (the rate)
stays real time. Pacers given their own clock are never affected.

"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import anyio

__all__ = ["advance", "instant", "monotonic", "sleep"]

_instant = 0
_offset = 0.0


def monotonic() -> float:
    """Monotonic seconds (moved forward by instant sleeps in instant mode)."""
    return time.monotonic() + _offset


def advance(seconds: float) -> None:
    """In instant mode, move `monotonic` forward (the retry engine's recorded waits)."""
    global _offset  # noqa: PLW0603 - the process-wide testing switch's state
    if _instant and seconds > 0:
        _offset += seconds


async def sleep(seconds: float) -> None:
    """Sleep in real time (the default pacing sleep)."""
    await anyio.sleep(seconds)


@contextlib.contextmanager
def instant() -> Iterator[None]:
    """Run pacers on the default clock on virtual time for the duration (nestable)."""
    global _instant  # noqa: PLW0603
    _instant += 1
    try:
        yield
    finally:
        _instant -= 1
