"""The client's pacer: every request it sends takes a turn here (retries included).

One `Pacer` per client (per key): a GCRA schedule of send slots at ``rps``, a shared
429 cooldown that can only grow, a daily-cap block, and a bounded wait. The state lives in a
backend: this process's memory, or Redis so that every process using the key shares it.

Why the rate adapts the way it does (issue 10, item 15): the batch used to halve both the rate
and the concurrency on every 429 burst, add up to a second of jitter to each cooldown, and
re-queue the callers a cooldown woke behind the whole queue again; against a server allowing
10 req/s it made 2.8 items/s with 6-10 s windows of silence. Now a 429 holds everyone for the
server's ``Retry-After`` only (no jitter: slots already space the senders), and lowers the rate
once per cooldown, not per 429, to what the server was seen to accept (this client's sends of
the last two seconds less the refused ones), within [50%, 80%] of the rate before; the rate
climbs back by 1% of ``rps`` per second without a 429. Slots due after the cooldown stay
valid, so a cooldown costs its own length and nothing more. In the same simulation (64
callers, 1 s latency, a server allowing 10 req/s) the old batch pacer made 8.96 items/s with
3.7 s gaps; this one makes 9.86 with none over 1.1 s.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import math
import time
from collections.abc import Awaitable, Callable

from nanogpt_async._errors import DailyLimitExceededError, LocalRateLimitError, RateLimitError
from nanogpt_async._pacing import _clock
from nanogpt_async._pacing._memory import MemoryBackend
from nanogpt_async._pacing._protocol import PacingBackend
from nanogpt_async._pacing._state import Grant, PacerState

__all__ = ["DEFAULT_MAX_WAIT", "DEFAULT_RPS", "MAX_COOLDOWN", "Pacer"]

logger = logging.getLogger("nanogpt_async")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

#: NanoGPT's documented per-key limit.
DEFAULT_RPS = 25.0
#: A burst of 200 calls at 25 req/s queues for 8 s: a minute is generous, and matches the
#: retry policy's ``retry_after_max``.
DEFAULT_MAX_WAIT = 60.0
#: Cooldown when a 429 carries no ``Retry-After``.
DEFAULT_COOLDOWN = 1.0
#: The longest cooldown or block stored: a day and an hour (a daily cap resets within a day).
#: A ``Retry-After`` of 99999999 or ``retry-after-ms: inf`` is bounded to it, and callers see
#: it at once as a `LocalRateLimitError` (it is longer than any ``max_wait``).
MAX_COOLDOWN = 90000.0
#: On a 429 the rate is cut to what the server accepted, within these bounds of the old rate.
RATE_CUT_MIN, RATE_CUT_MAX = 0.5, 0.8
#: Without 429s the rate climbs back by this fraction of ``rps`` per second.
RATE_RECOVERY = 0.01
#: A caller that wakes this much later than its slot (a stalled process: seen for up to 1.4 s
#: on a busy 2-core VM) takes a new slot once, rather than send at once with the others that
#: overslept: together they would crowd the slots of other processes (18 of 178 requests
#: answered 429 in a 4-process test at load 10).
LATE_SLOT = 0.25
#: Successes are counted over this many seconds to estimate what the server accepts.
ACCEPTED_WINDOW = 2.0


def _bounded(seconds: float | None, default: float) -> float:
    if seconds is None or math.isnan(seconds):
        return default
    return min(max(0.0, seconds), MAX_COOLDOWN)


class Pacer:
    """Paces every request of one client; shared by its views (``with_options``).

    Args:
        rps: Requests per second at most; ``None`` turns the rate limit off (the 429 cooldown
            and the daily block still apply: they are the server's word).
        burst: Requests that may go at once after a quiet spell (1: evenly spaced).
        max_wait: A call whose turn is further away raises `LocalRateLimitError`
            before sending.
        backend: Where the state lives (default: this process's memory).
        clock: Monotonic seconds; ``sleep``: how to wait (both injectable for tests).

    Example:
        >>> pacer = Pacer(rps=25.0)
        >>> pacer.state.rate
        25.0
    """

    def __init__(
        self,
        *,
        rps: float | None = DEFAULT_RPS,
        burst: int = 1,
        max_wait: float = DEFAULT_MAX_WAIT,
        backend: PacingBackend | None = None,
        clock: Clock = _clock.monotonic,
        sleep: Sleep = _clock.sleep,
    ) -> None:
        """Start at the full rate with no cooldown."""
        if rps is not None and (
            isinstance(rps, bool) or not isinstance(rps, (int, float)) or not 0 < rps < math.inf
        ):
            raise ValueError(
                f"rps must be a positive number of requests per second or None, got {rps!r}"
            )
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ValueError(f"burst must be a whole number of at least 1, got {burst!r}")
        if not max_wait >= 0:
            raise ValueError(f"max_wait must be >= 0 seconds, got {max_wait!r}")
        self.max_rate = float(rps) if rps is not None else None
        self.burst = burst
        self.max_wait = float(max_wait)
        self.backend: PacingBackend = backend if backend is not None else MemoryBackend(clock=clock)
        self._clock = clock
        self._sleep = sleep
        # Under recorded_backoff() a pacer on the default clock skips 429 cooldowns (_clock).
        self._test_aware = clock is _clock.monotonic
        self._rate = self.max_rate
        self._last_cut = -math.inf
        self._last_raise = clock()
        # Sends and 429s of the last ACCEPTED_WINDOW seconds: what the server accepted.
        self._sent: collections.deque[float] = collections.deque()
        self._refused: collections.deque[float] = collections.deque()
        self.rate_limited = 0
        # Last known from the backend (relative seconds measured at `_seen_at`).
        self._seen_at = clock()
        self._cooldown = 0.0
        self._daily = 0.0
        self._daily_code: str | None = None
        self._queued = 0.0
        self._logged: tuple[object, ...] = ()

    def of_its_own(self, *, rps: float | None, burst: int) -> Pacer:
        """A new pacer in this process's memory, with this one's ``max_wait`` and clock.

        For a caller with a pace of its own (a batch given its own ``rps``). The default clock
        becomes plain real time: the new pacer keeps its 429 cooldowns even under
        ``recorded_backoff()``, as the per-batch pacer always did (tests pacing a batch against a
        rate-limited fake rely on it). A clock given to this pacer (a test's virtual time) is
        kept with its sleep: the batch then paces on the same time as the fake it sends to.
        """
        if self._clock is _clock.monotonic:
            return Pacer(rps=rps, burst=burst, max_wait=self.max_wait, clock=time.monotonic)
        return Pacer(
            rps=rps, burst=burst, max_wait=self.max_wait, clock=self._clock, sleep=self._sleep
        )

    # -- the turn ------------------------------------------------------------------------

    @property
    def rate(self) -> float | None:
        """Requests per second now (``None``: no rate limit)."""
        return self._rate

    def _interval(self) -> float:
        return 1.0 / self._rate if self._rate else 0.0

    async def wait_turn(self) -> None:
        """Wait until a request may be sent.

        Raises:
            DailyLimitExceededError: the key's daily cap is used up (nothing sent).
            LocalRateLimitError: the turn is further away than ``max_wait`` (nothing sent).
        """
        interval = self._interval()
        grant = await self.backend.reserve(
            interval=interval, burst=self.burst, max_wait=self.max_wait
        )
        overslept = False
        while True:
            self._note(grant)
            if grant.kind == "daily":
                raise self._daily_error(grant.delay, grant.daily_code)
            if grant.kind == "too_long":
                raise self._too_long(grant)
            # The delay counts from when the backend read its clock, part of it ago already.
            wait = grant.delay - grant.elapsed
            if wait <= 0:
                self._sending()
                return
            due = self._clock() + wait
            await self._sleep(wait)
            if interval and not overslept and self._clock() - due > max(LATE_SLOT, 2 * interval):
                overslept = True
                grant = await self.backend.reserve(
                    interval=interval, burst=self.burst, max_wait=self.max_wait
                )
                continue
            if not self.backend.should_recheck(grant, interval):
                self._sending()
                return
            # A cooldown that began while we slept covers our slot: take a new one after it.
            grant = await self.backend.reserve(
                interval=interval,
                burst=self.burst,
                max_wait=self.max_wait,
                recheck=True,
                schedule=grant.schedule,
            )

    def turn_now(self) -> bool:
        """Take a turn that is due now, with no ``await`` at all; ``False``: none taken.

        Only a pacer in this process's memory can tell without a round trip; a caller that gets
        ``False`` waits with `wait_turn` as usual. The batch takes its turns this way first: an
        unpaced turn then needs no cancel scope to be woken from (W10 profile).
        """
        backend = self.backend
        if not isinstance(backend, MemoryBackend):
            return False
        grant = backend.reserve_if_due(interval=self._interval(), burst=self.burst)
        if grant is None:
            return False
        self._note(grant)
        self._sending()
        return True

    def _too_long(self, grant: Grant) -> LocalRateLimitError:
        if grant.cooldown > 0 and grant.cooldown >= grant.delay - 1.0:
            why = f"NanoGPT answered 429 and asked to wait {grant.cooldown:.0f} s"
        else:
            why = f"{grant.delay:.1f} s of calls are queued ahead at {self._rate or 0:.1f} req/s"
        return LocalRateLimitError(
            f"not sent: this call's turn is {grant.delay:.1f} s away ({why}), more than the "
            f"client's max_wait={self.max_wait:g} s",
            retry_after=grant.delay,
        )

    def _daily_error(self, seconds: float, code: str | None) -> DailyLimitExceededError:
        resets = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds)
        what = "USD" if code == "daily_usd_limit_exceeded" else "requests"
        return DailyLimitExceededError(
            f"not sent: this key's daily cap on {what} was reached (an earlier request was "
            "answered 429 with a daily-cap code); nothing is sent until it resets",
            status_code=429,
            code=code or "daily_rpd_limit_exceeded",
            retry_after=seconds,
            resets_at=resets,
        )

    # -- outcomes ------------------------------------------------------------------------

    async def observe(self, error: BaseException | None) -> None:
        """Learn from one attempt's outcome (``None``: it succeeded)."""
        if error is None:
            if self._rate is not None:
                self._recover(self._clock())
            return
        if isinstance(error, LocalRateLimitError) or not isinstance(error, RateLimitError):
            return
        self.rate_limited += 1
        if isinstance(error, DailyLimitExceededError):
            await self._block_daily(error)
            return
        seconds = _bounded(error.retry_after, DEFAULT_COOLDOWN)
        if self._test_aware and _clock.is_instant():
            seconds = 0.0  # the retry engine's recorded wait stands for it
        if self._rate is not None:
            self._refused.append(self._clock())
        left = await self.backend.cooldown(seconds)
        self._cooldown, self._seen_at = left, self._clock()
        self._cut(left)
        self._log_change()

    async def _block_daily(self, error: DailyLimitExceededError) -> None:
        seconds = error.retry_after
        if seconds is None:
            seconds = (error.resets_at - dt.datetime.now(dt.timezone.utc)).total_seconds()
        seconds = _bounded(seconds, MAX_COOLDOWN)
        await self.backend.block_daily(seconds, error.code)
        self._daily = max(self._daily_left(), seconds)
        self._daily_code = error.code
        self._seen_at = self._clock()
        self._log_change()

    def _cut(self, cooldown: float) -> None:
        """Lower the rate once per cooldown: the 429s of one overshoot count once."""
        if self._rate is None or self.max_rate is None:
            return
        now = self._clock()
        if now < self._last_cut:
            return
        self._forget(now)
        # What went through: this client's sends of the last seconds, less those refused.
        span = max(now - self._sent[0], self._interval()) if self._sent else ACCEPTED_WINDOW
        accepted = max(0, len(self._sent) - len(self._refused)) / span
        cut = min(max(accepted, self._rate * RATE_CUT_MIN), self._rate * RATE_CUT_MAX)
        self._rate = max(min(1.0, self.max_rate), cut)
        self._last_cut = now + cooldown + self._interval()
        self._last_raise = self._last_cut

    def _sending(self) -> None:
        if self._rate is not None:
            now = self._clock()
            self._sent.append(now)
            self._forget(now)

    def _forget(self, now: float) -> None:
        for times in (self._sent, self._refused):
            while times and times[0] < now - ACCEPTED_WINDOW:
                times.popleft()

    def _recover(self, now: float) -> None:
        """Climb back towards ``rps`` by ``RATE_RECOVERY`` of it per second without a 429."""
        if self._rate is None or self.max_rate is None or self._rate >= self.max_rate:
            return
        elapsed = now - self._last_raise
        if elapsed <= 0:
            return
        self._last_raise = now
        self._rate = min(self.max_rate, self._rate + RATE_RECOVERY * self.max_rate * elapsed)
        self._log_change()

    # -- state ---------------------------------------------------------------------------

    def _note(self, grant: Grant) -> None:
        self._seen_at = self._clock()
        self._cooldown, self._daily, self._queued = grant.cooldown, grant.daily, grant.queued
        if grant.daily_code is not None:
            self._daily_code = grant.daily_code
        self._log_change()

    def _daily_left(self) -> float:
        return max(0.0, self._daily - (self._clock() - self._seen_at))

    @property
    def state(self) -> PacerState:
        """A snapshot: rate, current wait, cooldown end, daily block (last known)."""
        since = self._clock() - self._seen_at
        wall = dt.datetime.now(dt.timezone.utc)
        cooldown = self._cooldown - since
        daily = self._daily - since
        return PacerState(
            backend=self.backend.name,
            rate=self._rate,
            max_rate=self.max_rate,
            wait=max(0.0, self._queued - since, daily),
            cooldown_until=wall + dt.timedelta(seconds=cooldown) if cooldown > 0 else None,
            daily_blocked_until=wall + dt.timedelta(seconds=daily) if daily > 0 else None,
            rate_limited=self.rate_limited,
        )

    def _log_change(self) -> None:
        """Log the state at DEBUG when something a user would care about changed."""
        since = self._clock() - self._seen_at
        cooldown_end = round(self._seen_at + self._cooldown, 1) if self._cooldown > since else 0
        daily = self._daily > since
        rate = round(self._rate, 1) if self._rate is not None else None
        key = (self.backend.name, rate, cooldown_end, daily)
        if key != self._logged:
            self._logged = key
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("pacing: %s", self.state.describe())

    async def aclose(self) -> None:
        """Release the backend's connections."""
        await self.backend.aclose()
