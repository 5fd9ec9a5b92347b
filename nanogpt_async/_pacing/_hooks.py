"""How one call's attempts take their turns from the client's pacer (retries included)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from nanogpt_async._pacing._pacer import Pacer

__all__ = ["PacedAttempts", "TurnHooks"]


class TurnHooks(Protocol):
    """A caller's part in pacing (the batch runner's): it decides when to take the turn.

    ``take_turn`` receives the client pacer's wait; the caller awaits it (inside its own
    cancel scope, say) and may refuse to send before or after it by raising.
    """

    async def take_turn(self, wait_turn: Callable[[], Awaitable[None]]) -> None:
        """Wait for this attempt's turn (by awaiting ``wait_turn``)."""
        ...

    async def after_attempt(self, error: BaseException | None) -> None:
        """Learn how the attempt went (``None`` on success)."""
        ...


class PacedAttempts:
    """The retry engine's ``AttemptHooks`` for one call: the pacer, then the caller's hooks."""

    __slots__ = ("_caller", "_pacer")

    def __init__(self, pacer: Pacer, caller: TurnHooks | None) -> None:
        self._pacer = pacer
        self._caller = caller

    async def before_attempt(self) -> None:
        """Take a turn from the pacer (through the caller's hooks when there are any)."""
        if self._caller is None:
            await self._pacer.wait_turn()
        else:
            await self._caller.take_turn(self._pacer.wait_turn)

    async def after_attempt(self, error: BaseException | None) -> None:
        """Tell the pacer (a 429 starts a cooldown for every caller), then the caller."""
        await self._pacer.observe(error)
        if self._caller is not None:
            await self._caller.after_attempt(error)
