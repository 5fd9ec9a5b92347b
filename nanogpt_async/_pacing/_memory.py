"""The in-process pacing backend: one GCRA schedule, cooldown and daily block per client."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from nanogpt_async._pacing._state import Grant

__all__ = ["MemoryBackend"]


class MemoryBackend:
    """Pacing state held in this process (the default).

    Reservations are made without an ``await`` in between, so callers get slots in the order
    they asked (first come, first served).

    Example:
        >>> backend = MemoryBackend()
        >>> backend.reserve_now(interval=0.04, burst=1, max_wait=60.0).delay
        0.0
    """

    @property
    def name(self) -> str:
        """Always ``memory``."""
        return "memory"

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        """Start with no queue, no cooldown and no block."""
        self._clock = clock
        self._tat = -math.inf  # theoretical arrival time of the next slot
        self._cooldown_until = -math.inf
        self._daily_until = -math.inf
        self._daily_code: str | None = None

    async def reserve(
        self,
        *,
        interval: float,
        burst: int,
        max_wait: float,
        recheck: bool = False,
        schedule: str | None = None,
    ) -> Grant:
        """See `PacingBackend.reserve`."""
        return self.reserve_now(interval=interval, burst=burst, max_wait=max_wait, recheck=recheck)

    def reserve_now(
        self, *, interval: float, burst: int, max_wait: float, recheck: bool = False
    ) -> Grant:
        """The synchronous core of `reserve`."""
        now = self._clock()
        if now < self._daily_until:
            return self._grant("daily", self._daily_until - now, now, new_slot=False)
        if recheck and now >= self._cooldown_until:
            return self._grant("go", 0.0, now, new_slot=False)
        tat = max(self._tat, now, self._cooldown_until)
        start = max(now, self._cooldown_until, tat - (burst - 1) * interval)
        delay = start - now
        if delay > max_wait:
            return self._grant("too_long", delay, now, new_slot=False)
        self._tat = tat + interval
        return self._grant("go", delay, now)

    def reserve_if_due(self, *, interval: float, burst: int) -> Grant | None:
        """Reserve a slot only if it is due now (no cooldown, no block, none queued ahead).

        ``None``: nothing reserved, the caller takes the usual way (`reserve`, then waits).
        """
        now = self._clock()
        if now < self._daily_until or now < self._cooldown_until:
            return None
        tat = max(self._tat, now)
        if tat - (burst - 1) * interval > now:
            return None
        self._tat = tat + interval
        return self._grant("go", 0.0, now)

    def _grant(self, kind: str, delay: float, now: float, *, new_slot: bool = True) -> Grant:
        return Grant(
            kind=kind,  # type: ignore[arg-type]
            delay=max(0.0, delay),
            cooldown=max(0.0, self._cooldown_until - now),
            daily=max(0.0, self._daily_until - now),
            queued=max(0.0, self._tat - now, self._cooldown_until - now),
            daily_code=self._daily_code if now < self._daily_until else None,
            new_slot=new_slot,
        )

    def should_recheck(self, grant: Grant, interval: float) -> bool:
        """Always: a recheck costs nothing here."""
        return True

    async def cooldown(self, seconds: float) -> float:
        """See `PacingBackend.cooldown`."""
        now = self._clock()
        self._cooldown_until = max(self._cooldown_until, now + seconds)
        # Slots handed out before the cooldown and due inside it are re-reserved by their
        # holders (``recheck``); slots after it stay valid, so none is wasted.
        self._tat = max(self._tat, self._cooldown_until)
        return self._cooldown_until - now

    async def block_daily(self, seconds: float, code: str | None) -> None:
        """See `PacingBackend.block_daily`."""
        until = self._clock() + seconds
        if until > self._daily_until:
            self._daily_until = until
            self._daily_code = code

    async def aclose(self) -> None:
        """Nothing to release."""

    def seed(self, *, cooldown: float, daily: float, daily_code: str | None) -> None:
        """Start from another backend's last known cooldown and block (Redis fallback)."""
        now = self._clock()
        self._cooldown_until = max(self._cooldown_until, now + cooldown)
        self._tat = max(self._tat, self._cooldown_until)
        if daily > 0:
            self._daily_until = max(self._daily_until, now + daily)
            self._daily_code = daily_code
