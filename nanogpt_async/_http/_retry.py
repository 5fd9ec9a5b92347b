"""The one retry engine every call goes through (tenacity inside).

What is retried:

* statuses 408, 429, 500, 502, 503, 504 (configurable), honouring ``retry-after-ms`` and
  ``Retry-After`` (seconds or an HTTP date) up to ``retry_after_max``; a server that asks for
  longer than that is not slept on: the error is raised with ``retry_after`` set;
* a daily-cap 429 never (the cap resets at midnight UTC: `DailyLimitExceededError`);
* connection failures where the request certainly never left (refused, pool timeout) always;
* failures after the request may have reached the server (read timeout, reset mid-response, a
  malformed answer, a gateway's 502/504/520-524 page instead of NanoGPT's JSON error) only for
  idempotent calls, or for paid POSTs when ``retry_ambiguous=True``: NanoGPT has no
  idempotency key, so such a retry may generate and charge twice.

Waits are exponential with full jitter (AWS's recommendation) capped at ``backoff_max``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import logging
import math
import random
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar

import anyio

from nanogpt_async._errors import (
    APIConnectionError,
    APIStatusError,
    DailyLimitExceededError,
    GatewayError,
    LocalRateLimitError,
)
from nanogpt_async._pacing import _clock as pacing_clock

if TYPE_CHECKING:
    from tenacity import RetryCallState

__all__ = [
    "AttemptHooks",
    "RetryPolicy",
    "parse_retry_after",
    "recorded_backoff",
    "run_with_retries",
]

logger = logging.getLogger("nanogpt_async")

_T = TypeVar("_T")

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """How failed requests are retried.

    Attributes:
        max_retries: Retries after the first attempt (0 disables retrying).
        backoff_initial: First backoff ceiling in seconds; doubles each retry (full jitter).
        backoff_max: Largest backoff ceiling in seconds.
        retry_after_max: Longest ``Retry-After`` honoured; a longer one ends the retries and
            raises, rather than sleeping for minutes inside a call.
        retry_statuses: HTTP statuses that are retried.
        retry_ambiguous: Retry paid requests that may already have reached the server (read
            timeout, the attempt's deadline, connection reset mid-response, a malformed answer,
            a gateway's 502/504/520-524 page). Off by default because NanoGPT has no
            idempotency key: such a retry may generate, and charge, twice.

    Example:
        >>> policy = RetryPolicy(max_retries=5, retry_ambiguous=True)
    """

    max_retries: int = 2
    backoff_initial: float = 0.5
    backoff_max: float = 8.0
    retry_after_max: float = 60.0
    retry_statuses: frozenset[int] = field(default=RETRY_STATUSES)
    retry_ambiguous: bool = False

    def __post_init__(self) -> None:
        """Refuse settings that cannot work."""
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.backoff_initial < 0 or self.backoff_max < 0 or self.retry_after_max < 0:
            raise ValueError("backoff_initial, backoff_max and retry_after_max must be >= 0")


class AttemptHooks(Protocol):
    """Lets the client pace every attempt, retries included (see ``nanogpt_async._pacing``)."""

    async def before_attempt(self) -> None:
        """Wait until this attempt may be sent (rate limit, shared cooldown)."""

    async def after_attempt(self, error: BaseException | None) -> None:
        """Learn how the attempt went (``None`` on success); may tell a shared store."""


def parse_retry_after(headers: Mapping[str, str], now: dt.datetime | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date).

    Returns ``None`` when absent or unparsable; negative values become 0.
    """
    ms = headers.get("retry-after-ms")
    if ms is not None:
        with contextlib.suppress(ValueError):
            value = float(ms) / 1000
            if not math.isnan(value):
                return max(0.0, value)
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
    except ValueError:
        pass
    else:
        if not math.isfinite(value):
            return None
        return max(0.0, value)
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    now = now or dt.datetime.now(dt.timezone.utc)
    return max(0.0, (when - now).total_seconds())


# The sleep used between attempts. Swapped by `recorded_backoff()` so test suites (ours and
# users') run retries instantly while still seeing what would have been waited.
_sleep: Callable[[float], Awaitable[None]] = anyio.sleep


@contextlib.contextmanager
def recorded_backoff() -> Iterator[list[float]]:
    """Make retry waits instant for the duration, recording each wait (in seconds) instead.

    Use it in tests so retries do not slow the suite::

        with recorded_backoff() as waits:
            await client.images.generate(prompt="x")
        assert waits == [2.0]  # e.g. after a 429 with Retry-After: 2 (jitter aside)
    """
    global _sleep  # noqa: PLW0603 - a process-wide testing switch, like stamina.set_testing
    waits: list[float] = []
    previous = _sleep

    async def record(seconds: float) -> None:
        waits.append(seconds)
        await anyio.lowlevel.checkpoint()

    _sleep = record
    try:
        with pacing_clock.instant():  # and the client pacer's 429 cooldowns too
            yield waits
    finally:
        _sleep = previous


def should_retry(policy: RetryPolicy, exc: BaseException, *, idempotent: bool) -> bool:
    """Whether ``exc`` is worth another attempt under ``policy``."""
    if isinstance(exc, (DailyLimitExceededError, LocalRateLimitError)):
        return False
    if isinstance(exc, GatewayError) and not (idempotent or policy.retry_ambiguous):
        return False
    if isinstance(exc, APIStatusError):
        if exc.status_code not in policy.retry_statuses:
            return False
        return exc.retry_after is None or exc.retry_after <= policy.retry_after_max
    if isinstance(exc, APIConnectionError):
        return not exc.request_sent or idempotent or policy.retry_ambiguous
    return False


def backoff_seconds(policy: RetryPolicy, retry_number: int, exc: BaseException | None) -> float:
    """The wait before retry number ``retry_number`` (1-based)."""
    if isinstance(exc, APIStatusError) and exc.retry_after is not None:
        # A little jitter on top so many clients told the same time do not return in lockstep.
        return exc.retry_after + random.uniform(0, min(1.0, exc.retry_after * 0.1))
    ceiling = min(policy.backoff_max, policy.backoff_initial * 2 ** (retry_number - 1))
    return random.uniform(0, ceiling)


async def _attempt_once(attempt: Callable[[], Awaitable[_T]], hooks: AttemptHooks | None) -> _T:
    if hooks is None:
        return await attempt()
    await hooks.before_attempt()
    try:
        result = await attempt()
    except Exception as exc:
        await hooks.after_attempt(exc)
        raise
    await hooks.after_attempt(None)
    return result


async def _current_sleep(seconds: float) -> None:
    """Sleep with whatever `_sleep` is now (`recorded_backoff` swaps it)."""
    await _sleep(seconds)


async def run_with_retries(
    policy: RetryPolicy,
    attempt: Callable[[], Awaitable[_T]],
    *,
    idempotent: bool,
    describe: str,
    hooks: AttemptHooks | None = None,
) -> _T:
    """Run ``attempt`` until it succeeds or ``policy`` says stop; re-raise the last error."""

    # Tenacity counts from the second attempt overall (the first ran before it).
    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return backoff_seconds(policy, state.attempt_number + 1, exc)

    def log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.upcoming_sleep
        logger.info(
            "retrying %s in %.2fs (attempt %d of %d) after: %s",
            describe,
            delay,
            state.attempt_number + 2,
            policy.max_retries + 1,
            exc,
        )

    # The first attempt runs outside tenacity: it is the common case, and setting up the retry
    # machinery costs ~0.1 ms of CPU per call, 10% of the request path at fan-out (benchmark
    # W1). Every retry goes through tenacity below.
    try:
        return await _attempt_once(attempt, hooks)
    except Exception as exc:
        if policy.max_retries == 0 or not should_retry(policy, exc, idempotent=idempotent):
            raise
        first_error = exc
    delay = backoff_seconds(policy, 1, first_error)
    logger.info(
        "retrying %s in %.2fs (attempt 2 of %d) after: %s",
        describe,
        delay,
        policy.max_retries + 1,
        first_error,
    )
    await _sleep(delay)

    # Imported at the first retry, not with the client: tenacity is ~5 ms of CPU to import
    # (this machine), paid at the start of every CLI run that never retries (benchmark W10).
    from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.max_retries),
        wait=wait,
        retry=retry_if_exception(lambda e: should_retry(policy, e, idempotent=idempotent)),
        # Not `_sleep` itself: looked up per call so recorded_backoff() can swap it.
        sleep=_current_sleep,
        before_sleep=log_retry,
        reraise=True,
    )
    async for attempt_state in retrying:
        with attempt_state:
            return await _attempt_once(attempt, hooks)
    raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover
