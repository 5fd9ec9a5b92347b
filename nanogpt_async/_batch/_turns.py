"""How many of a process's items wait for a pacing turn at once: the batch's look-ahead.

Each caller waiting in ``Pacer.wait_turn`` holds a slot of the key's schedule. Unbounded, a
batch's whole concurrency waited: 8 shards x 64 held 512 slots, 20 s of the schedule at
25 req/s (W11 profile: a turn's slot was 18.9 s away at the median). Then a killed shard's 64
slots went by unsent for up to 20 s (the rate after W11's kill-and-restart: 23.6 req/s), a
caller that overslept its slot was sent 20 s back, and 32 shards would have queued past the
pacer's 60 s ``max_wait`` and stopped. Bounded to this process's share of ``LOOKAHEAD`` seconds
of slots, the schedule is about that deep whatever the concurrency and the number of shards.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from nanogpt_async._pacing import Pacer

__all__ = ["LOOKAHEAD", "MIN_WAITING", "TurnGate"]

#: Seconds of the key's schedule a batch's waiting callers hold between them (all processes).
#: Two seconds covers a Redis round trip or a stalled process (up to 1.4 s seen at load 10)
#: before the schedule runs dry.
LOOKAHEAD = 2.0
#: At least this many wait, so a process with a tiny share still has its next turn booked.
MIN_WAITING = 2


class TurnGate:
    """Lets at most this process's share of ``LOOKAHEAD`` seconds of turns wait at once.

    The share is the pacer's rate times the share of it this process has (one over the
    processes that used the key lately, as Redis last said; all of it in memory). Without a
    rate limit nothing waits for a turn, and the gate lets ``ceiling`` through.

    Example:
        >>> from nanogpt_async._pacing import Pacer
        >>> TurnGate(Pacer(rps=25.0), ceiling=64).limit()
        50
    """

    def __init__(self, pacer: Pacer, ceiling: int) -> None:
        """Gate ``pacer``'s turns; never below ``MIN_WAITING`` nor above ``ceiling``."""
        self._pacer = pacer
        self._ceiling = max(1, ceiling)
        self._limiter: anyio.CapacityLimiter | None = None

    def limit(self) -> int:
        """How many may wait now."""
        rate = self._pacer.rate
        if rate is None:
            return self._ceiling
        share = getattr(self._pacer.backend, "share", 1.0)
        wanted = math.ceil(rate * share * LOOKAHEAD)
        return min(self._ceiling, max(MIN_WAITING, wanted))

    def has_room(self) -> bool:
        """Nobody waits for a place: a caller whose turn is due now may go without one."""
        limiter = self._limiter
        return limiter is None or limiter.available_tokens > 0

    async def enter(self, token: object) -> None:
        """Take one place among the waiting callers for ``token`` (`leave` gives it back)."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.limit())
        else:
            self._limiter.total_tokens = self.limit()
        try:
            # No checkpoint when there is room: an unpaced turn must not yield either (items
            # admitted before a bad input line are sent before the batch stops at it).
            self._limiter.acquire_on_behalf_of_nowait(token)
        except anyio.WouldBlock:
            await self._limiter.acquire_on_behalf_of(token)

    def leave(self, token: object) -> None:
        """Give back ``token``'s place (taken by `enter`)."""
        if self._limiter is not None:
            self._limiter.release_on_behalf_of(token)
