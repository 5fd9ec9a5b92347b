"""Pacing of every request a client sends: rate, shared 429 cooldown, daily block, budget.

* `Pacer` is the client's (one per key); every attempt takes its turn there.
* Backends hold the state: `MemoryBackend` (this process) or ``RedisBackend`` (every
  process using the key; imported lazily, it needs the ``[redis]`` extra).
* `AIMD` adapts the batch runner's concurrency.
"""

from __future__ import annotations

from nanogpt_async._pacing._aimd import AIMD
from nanogpt_async._pacing._hooks import PacedAttempts, TurnHooks
from nanogpt_async._pacing._memory import MemoryBackend
from nanogpt_async._pacing._pacer import (
    DEFAULT_MAX_WAIT,
    DEFAULT_RPS,
    MAX_COOLDOWN,
    Pacer,
)
from nanogpt_async._pacing._protocol import PacingBackend
from nanogpt_async._pacing._state import Grant, PacerState

__all__ = [
    "AIMD",
    "DEFAULT_MAX_WAIT",
    "DEFAULT_RPS",
    "MAX_COOLDOWN",
    "Grant",
    "MemoryBackend",
    "PacedAttempts",
    "Pacer",
    "PacerState",
    "PacingBackend",
    "TurnHooks",
]
