"""Additive-increase / multiplicative-decrease of one value (the batch's concurrency)."""

from __future__ import annotations

import math

__all__ = ["AIMD"]


class AIMD:
    """A value in ``[floor, ceiling]`` raised additively on success, cut on overload.

    Each success adds ``1/value`` (about +1 per round of ``value`` successes); an overload
    signal multiplies by ``beta``, at most once per ``hold`` seconds so that one burst of
    errors counts once.

    Example:
        >>> aimd = AIMD(64, floor=1)
        >>> aimd.decrease(now=0.0)
        True
        >>> aimd.value
        32.0
    """

    def __init__(
        self, ceiling: float, *, floor: float = 1.0, beta: float = 0.5, hold: float = 1.0
    ) -> None:
        """Start at ``ceiling``."""
        if not 0 < beta < 1:
            raise ValueError("beta must be between 0 and 1")
        self.ceiling = float(ceiling)
        self.floor = min(float(floor), self.ceiling)
        self.beta = beta
        self.hold = hold
        self.value = self.ceiling
        self._last_decrease = -math.inf

    def increase(self) -> None:
        """One success: about +1 per ``value`` successes (one round trip's worth)."""
        self.value = min(self.ceiling, self.value + 1.0 / max(self.value, 1.0))

    def decrease(self, now: float) -> bool:
        """One overload signal; ignored within ``hold`` seconds of the last cut."""
        if now - self._last_decrease < self.hold:
            return False
        self._last_decrease = now
        self.value = max(self.floor, self.value * self.beta)
        return True
