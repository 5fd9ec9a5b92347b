"""What a pacing backend does: hand out send slots, hold a shared cooldown and daily block."""

from __future__ import annotations

from typing import Protocol

from nanogpt_async._pacing._state import Grant

__all__ = ["PacingBackend"]


class PacingBackend(Protocol):
    """Where one key's pacing state lives: this process (memory) or Redis (shared).

    Every method is one step (one Redis round trip at most). Times are relative seconds: a
    shared backend measures them on its own clock, so hosts' clock skew does not matter.
    """

    @property
    def name(self) -> str:
        """``memory``, ``redis``, or what the backend falls back to."""
        ...

    async def reserve(
        self,
        *,
        interval: float,
        burst: int,
        max_wait: float,
        recheck: bool = False,
        schedule: str | None = None,
    ) -> Grant:
        """Reserve the next free send slot (GCRA: one slot every ``interval`` seconds).

        With ``recheck`` the caller already holds a slot that is due now (``schedule``: the
        grant's own): a new slot is only taken when a cooldown or daily block began
        meanwhile (else ``new_slot`` is false), or when the slot is from another schedule.
        A slot further than ``max_wait`` away is not reserved (``too_long``).
        """
        ...

    def should_recheck(self, grant: Grant, interval: float) -> bool:
        """Whether a caller that slept for ``grant`` must recheck for a cooldown before sending.

        A shared backend skips it for delays within one slot (a cooldown is then seen within
        one slot anyway), and when it knows no cooldown or daily block began since the slot
        was reserved (Redis: its notice watch heard none): the round trip is saved.
        """
        ...

    async def cooldown(self, seconds: float) -> float:
        """Hold every sender for ``seconds`` from now; grow-only. Returns the seconds left."""
        ...

    async def block_daily(self, seconds: float, code: str | None) -> None:
        """Refuse every send for ``seconds`` (the daily cap's reset); grow-only."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
