"""What a batch has done so far: counts, cost and timings, as progress and as the summary."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from nanogpt_async._batch._budget import Sample
from nanogpt_async._batch._lifecycle import Lifecycle
from nanogpt_async._batch._results import BatchProgress, BatchSummary

if TYPE_CHECKING:
    from nanogpt_async._batch._settings import BatchSettings

__all__ = ["Tally"]


class Tally:
    """The batch's counters; every stage adds to them, `progress` and `summary` read them.

    Results are counted as they are handed out (`Results.emit`).
    """

    __slots__ = (
        "attempts",
        "consumed",
        "cost",
        "delay",
        "ended",
        "failed",
        "in_flight",
        "input_read",
        "latency",
        "ok",
        "rate_limited",
        "skipped",
        "started",
        "total",
    )

    def __init__(self, total: int | None) -> None:
        #: Items this process does, when known (else counted as read: `consumed`).
        self.total = total
        self.ok = self.failed = self.skipped = 0
        self.in_flight = 0
        self.attempts = 0
        self.rate_limited = 0
        self.consumed = 0
        self.input_read = False
        self.cost = Decimal(0)
        self.latency = Sample()
        self.delay = Sample()
        self.started = time.monotonic()
        self.ended: float | None = None

    def elapsed(self) -> float:
        """Seconds from the start to the end (or to now, while running)."""
        end = self.ended if self.ended is not None else time.monotonic()
        return max(0.0, end - self.started)

    def progress(self) -> BatchProgress:
        """A progress snapshot now."""
        done = self.ok + self.failed + self.skipped
        elapsed = self.elapsed()
        worked = self.ok + self.failed
        rate = worked / elapsed if elapsed > 0 else 0.0
        eta = None
        if self.total is not None:
            left = max(0, self.total - done)
            eta = 0.0 if left == 0 else (left / rate if rate > 0 else None)
        return BatchProgress(
            total=self.total,
            done=done,
            ok=self.ok,
            failed=self.failed,
            skipped=self.skipped,
            in_flight=self.in_flight,
            cost=float(self.cost),
            rate=rate,
            eta=eta,
            elapsed=elapsed,
        )

    def summary(self, lifecycle: Lifecycle, manifest: Path | None, unpriced: int) -> BatchSummary:
        """The summary: these counts, why the batch stopped, where it recorded."""
        done = self.ok + self.failed + self.skipped
        total = self.total if self.total is not None else self.consumed
        elapsed = self.elapsed()
        worked = self.ok + self.failed
        return BatchSummary(
            total=total,
            ok=self.ok,
            failed=self.failed,
            skipped=self.skipped,
            not_started=max(0, total - done - self.in_flight),
            cost=float(self.cost),
            elapsed=elapsed,
            rate=worked / elapsed if elapsed > 0 else 0.0,
            latency_p50=self.latency.quantile(0.5),
            latency_p99=self.latency.quantile(0.99),
            download_delay_p50=self.delay.quantile(0.5),
            download_delay_p99=self.delay.quantile(0.99),
            download_delay_max=self.delay.max,
            attempts=self.attempts,
            rate_limited=self.rate_limited,
            stopped_reason=lifecycle.stop_reason,
            fatal_error=lifecycle.fatal_error,
            manifest=manifest,
            unpriced=unpriced,
            # With no length given, what was never read cannot be counted: say so instead.
            unread_input=self.total is None and not self.input_read,
        )


async def report_every(settings: BatchSettings, progress: Callable[[], BatchProgress]) -> None:
    """Hand ``on_progress`` the progress every ``progress_interval`` seconds until cancelled."""
    if settings.on_progress is None:
        await anyio.sleep_forever()
    while True:
        await anyio.sleep(settings.progress_interval)
        report_once(settings, progress())


def report_once(settings: BatchSettings, progress: BatchProgress) -> None:
    """Hand ``on_progress`` (if any) this progress."""
    if settings.on_progress is not None:
        settings.on_progress(progress)
