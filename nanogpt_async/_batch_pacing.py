"""Pacing for the batch runner: a request-rate limit, a shared 429 cooldown, and AIMD.

* `RateLimiter` is a token bucket handing out reservations in FIFO order: each caller
  learns at once how long to wait, so many waiters cost no polling.
* `AIMD` is additive-increase / multiplicative-decrease (TCP's congestion control): each
  success adds ``1/value`` (about +1 per round of ``value`` successes), a 429 multiplies by
  ``beta``, at most once per ``hold`` seconds so one burst of 429s counts once.
* `Pacer` ties them together for a batch: every attempt (retries included) waits for the
  cooldown and a token; a 429 starts a cooldown for everyone, empties the bucket and lowers both
  the request rate and the concurrency.

Clock and sleep are injectable so all of this is tested without real time.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Awaitable, Callable

import anyio

from nanogpt_async._errors import DailyLimitExceededError, RateLimitError

__all__ = ["AIMD", "Pacer", "RateLimiter"]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

#: Cooldown when a 429 carries no Retry-After.
DEFAULT_COOLDOWN = 1.0


class RateLimiter:
    """A token bucket: ``rate`` tokens per second, at most ``burst`` saved up.

    ``burst=1`` (the default) spaces requests evenly, which never trips a server's own bucket
    whatever its capacity.

    Example:
        >>> limiter = RateLimiter(25.0)
        >>> limiter.reserve()  # first token is free
        0.0
    """

    def __init__(
        self,
        rate: float,
        burst: int = 1,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        """Start full (``burst`` tokens)."""
        if not rate > 0 or math.isinf(rate):
            raise ValueError(f"rate must be a positive number of requests per second, got {rate}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        self._rate = float(rate)
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._updated = clock()

    @property
    def rate(self) -> float:
        """Tokens per second."""
        return self._rate

    @rate.setter
    def rate(self, value: float) -> None:
        self._refill()
        self._rate = max(1e-6, float(value))

    def _refill(self) -> float:
        now = self._clock()
        if now > self._updated:
            self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self._rate)
            self._updated = now
        return now

    def reserve(self) -> float:
        """Take a token now and return the seconds to wait before using it (FIFO order)."""
        now = self._refill()
        self._tokens -= 1.0
        wait = max(0.0, self._updated - now)
        if self._tokens < 0:
            wait += -self._tokens / self._rate
        return wait

    async def acquire(self) -> None:
        """Wait for a token."""
        wait = self.reserve()
        if wait > 0:
            await self._sleep(wait)

    def pause_until(self, when: float) -> None:
        """Hand out no token before ``when`` and start empty then (used by the 429 cooldown)."""
        self._refill()
        self._tokens = min(self._tokens, 0.0)
        self._updated = max(self._updated, when)


class AIMD:
    """A value in ``[floor, ceiling]`` raised additively on success, cut on overload.

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


class Pacer:
    """The shared pacing state of one batch.

    Attributes:
        concurrency: AIMD over the generation limit; the runner copies ``int(value)`` into its
            ``CapacityLimiter`` after each change.
        rate: AIMD over the request rate, or ``None`` without a rate limit.
        cooldown_until: Clock time before which no attempt is sent.
        rate_limited: 429 answers seen.
    """

    def __init__(
        self,
        *,
        concurrency: int,
        rps: float | None,
        burst: int | None,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
        jitter: Callable[[float, float], float] = random.uniform,
        on_concurrency: Callable[[int], None] | None = None,
    ) -> None:
        """Pace at ``rps`` (``None``: unlimited) with up to ``concurrency`` in flight."""
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._on_concurrency = on_concurrency
        self.limiter = (
            RateLimiter(rps, burst or 1, clock=clock, sleep=sleep) if rps is not None else None
        )
        self.rate = AIMD(rps, floor=min(1.0, rps), beta=0.5) if rps is not None else None
        self.concurrency = AIMD(concurrency, floor=1, beta=0.5)
        self.cooldown_until = -math.inf
        self.rate_limited = 0

    @property
    def concurrency_limit(self) -> int:
        """The generation limit to apply now."""
        return max(1, int(self.concurrency.value))

    def in_cooldown(self) -> bool:
        """Whether a 429 cooldown is running."""
        return self._clock() < self.cooldown_until

    async def wait_turn(self) -> None:
        """Wait until an attempt may be sent: no cooldown running, a token in hand."""
        while True:
            now = self._clock()
            if now < self.cooldown_until:
                await self._sleep(self.cooldown_until - now)
                continue
            if self.limiter is not None:
                await self.limiter.acquire()
            # A 429 seen while we slept on our token starts a cooldown we must honour too.
            if not self.in_cooldown():
                return

    def observe(self, error: BaseException | None) -> None:
        """Learn from one attempt's outcome."""
        if error is None:
            self._adjust(increase=True)
            return
        if isinstance(error, RateLimitError):
            self.rate_limited += 1
            if isinstance(error, DailyLimitExceededError):
                return  # no cooldown helps: the runner stops the batch
            self.start_cooldown(error.retry_after)

    def start_cooldown(self, retry_after: float | None) -> None:
        """Pause every attempt for ``retry_after`` (+ jitter) and slow down."""
        now = self._clock()
        base = DEFAULT_COOLDOWN if retry_after is None else max(0.0, retry_after)
        until = now + base + self._jitter(0.0, min(1.0, 0.1 * base + 0.05))
        if until > self.cooldown_until:
            self.cooldown_until = until
            if self.limiter is not None:
                self.limiter.pause_until(until)
        # Cuts are held for the cooldown's length: the 429s of one overshoot count once.
        self._adjust(increase=False, now=now, hold=max(base, 0.5))

    def _adjust(self, *, increase: bool, now: float = 0.0, hold: float = 1.0) -> None:
        before = self.concurrency_limit
        if increase:
            self.concurrency.increase()
            if self.rate is not None:
                self.rate.increase()
        else:
            self.concurrency.hold = hold
            self.concurrency.decrease(now)
            if self.rate is not None:
                self.rate.hold = hold
                self.rate.decrease(now)
        if self.rate is not None and self.limiter is not None:
            self.limiter.rate = self.rate.value
        after = self.concurrency_limit
        if after != before and self._on_concurrency is not None:
            self._on_concurrency(after)
