"""What a pacer knows right now: a snapshot users can read and logs can show."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

__all__ = ["Grant", "GrantKind", "PacerState"]

#: ``go``: send after ``delay``; ``too_long``: the turn is further than ``max_wait`` (nothing
#: reserved); ``daily``: the key's daily cap is used up until the reset.
GrantKind = Literal["go", "too_long", "daily"]


@dataclass(frozen=True)
class Grant:
    """A backend's answer to "when may I send?".

    Attributes:
        kind: See `GrantKind`.
        delay: Seconds to wait before sending (``go``), the wait it would have needed
            (``too_long``), or seconds until the daily cap resets (``daily``).
        cooldown: Seconds left of a shared 429 cooldown (0 when none runs).
        daily: Seconds left of a daily-cap block (0 when none).
        queued: Seconds a new call would wait now (the queue ahead of it).
        daily_code: The daily cap's error code, when blocked.
        new_slot: Whether this answer took a send slot (a recheck that found no cooldown
            takes none).
        schedule: Which shared schedule (Redis) the slot is in, or ``None`` for this
            process's own. A slot is only valid in its schedule: one from before Redis lost
            its data, or from this process alone, is replaced when rechecked.
        elapsed: How much of ``delay`` had passed when the answer arrived: Redis reads its
            clock midway through the round trip, so half of it (the caller sleeps the rest;
            sleeping all of ``delay`` after the answer sent every request half a round trip
            after its slot).
        mark: What the backend knew of shared notices when it reserved the slot (Redis: the
            notice watch's count, ``None`` when not subscribed): tells it whether the slot
            must be rechecked before sending.
    """

    kind: GrantKind
    delay: float
    cooldown: float = 0.0
    daily: float = 0.0
    queued: float = 0.0
    daily_code: str | None = None
    new_slot: bool = True
    schedule: str | None = None
    elapsed: float = 0.0
    mark: int | None = None

    @property
    def shared(self) -> bool:
        """Whether the slot is in a shared schedule."""
        return self.schedule is not None


@dataclass(frozen=True)
class PacerState:
    """A snapshot of a client's pacing (``client.pacing``), for progress displays and logs.

    Attributes:
        backend: ``"memory"`` (this process), ``"redis"`` (shared), or
            ``"memory (redis unreachable)"`` while falling back.
        rate: Requests per second now (lowered after 429s, recovering after), or ``None``
            when the rate limit is off.
        max_rate: The configured rate (``rps``).
        wait: Seconds a call made now would wait for its turn.
        cooldown_until: When the shared 429 cooldown ends (UTC), or ``None``.
        daily_blocked_until: When the daily-cap block ends (UTC), or ``None``.
        rate_limited: 429 answers this client has seen.

    Example:
        >>> state = client.pacing  # doctest: +SKIP
        >>> state.rate, state.wait  # doctest: +SKIP
        (25.0, 0.0)
    """

    backend: str
    rate: float | None
    max_rate: float | None
    wait: float
    cooldown_until: dt.datetime | None
    daily_blocked_until: dt.datetime | None
    rate_limited: int

    def describe(self) -> str:
        """One line for logs."""
        parts = [f"backend={self.backend}"]
        parts.append("rate=off" if self.rate is None else f"rate={self.rate:.2f}/s")
        parts.append(f"wait={self.wait:.2f}s")
        if self.cooldown_until is not None:
            parts.append(f"cooldown until {self.cooldown_until:%H:%M:%S} UTC")
        if self.daily_blocked_until is not None:
            parts.append(f"daily cap until {self.daily_blocked_until:%Y-%m-%d %H:%M} UTC")
        return ", ".join(parts)
