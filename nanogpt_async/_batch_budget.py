"""Batch bookkeeping: the ``max_cost`` budget and latency percentiles."""

from __future__ import annotations

import math
import random
from decimal import Decimal

import anyio

__all__ = ["SAMPLE_SIZE", "Budget", "Sample"]

#: Latency percentiles come from a uniform sample of this many items.
SAMPLE_SIZE = 10_000


class Sample:
    """A uniform reservoir sample (and the exact maximum) of a stream of numbers.

    Memory stays at ``size`` numbers however many are added.
    """

    def __init__(self, size: int = SAMPLE_SIZE) -> None:
        """Keep at most ``size`` values."""
        self._size = size
        self._values: list[float] = []
        self._seen = 0
        self._rng = random.Random(0)  # noqa: S311 - sampling, not cryptography
        self.max: float | None = None

    def add(self, value: float) -> None:
        """Add one observation."""
        self._seen += 1
        self.max = value if self.max is None else max(self.max, value)
        if len(self._values) < self._size:
            self._values.append(value)
        else:
            slot = self._rng.randrange(self._seen)
            if slot < self._size:
                self._values[slot] = value

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (nearest rank) of the sample; ``None`` when empty."""
        if not self._values:
            return None
        ordered = sorted(self._values)
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class Budget:
    """``max_cost`` bookkeeping: what was spent, what in-flight items are expected to cost.

    An item's estimate is the observed price per image times its ``n``. Until a price has been
    observed, one request at a time is admitted. Requests that may have been charged without
    an answer (reset mid-response) count as spent at the estimate.
    """

    def __init__(self, max_cost: Decimal | None) -> None:
        """Track spending against ``max_cost`` (``None``: no budget, only bookkeeping)."""
        self.max_cost = max_cost
        self.spent = Decimal(0)  # charged, plus estimates for requests that may have been
        self.reserved = Decimal(0)
        self.in_flight = 0
        self._observed_cost = Decimal(0)
        self._observed_images = 0
        self._changed = anyio.Event()

    @property
    def per_image(self) -> Decimal | None:
        """The average observed price of one image, once any was observed."""
        if self._observed_images == 0:
            return None
        return self._observed_cost / self._observed_images

    async def admit(self, n: int) -> Decimal | None:
        """Reserve the estimated cost of an ``n``-image request; ``None``: budget reached."""
        while True:
            if self.max_cost is None:
                estimate: Decimal | None = Decimal(0)
            elif self.spent >= self.max_cost:
                return None
            else:
                per_image = self.per_image
                estimate = per_image * n if per_image is not None else None
            if estimate is None:
                # No price seen yet: one request at a time until one is.
                if self.in_flight == 0:
                    estimate = Decimal(0)
            elif self.max_cost is not None and self.spent + self.reserved + estimate > (
                self.max_cost
            ):
                if self.in_flight == 0:
                    return None
                estimate = None  # wait: an in-flight item may cost less than reserved
            if estimate is not None:
                self.in_flight += 1
                self.reserved += estimate
                return estimate
            await self._changed.wait()

    def settle(
        self, reservation: Decimal, cost: float | None, images: int, *, maybe_charged: bool
    ) -> None:
        """An admitted request ended: turn its reservation into what it really cost."""
        self.in_flight -= 1
        self.reserved -= reservation
        if cost is not None:
            self.spent += Decimal(str(cost))
            self._observed_cost += Decimal(str(cost))
            self._observed_images += max(1, images)
        elif maybe_charged:
            per_image = self.per_image
            self.spent += per_image * max(1, images) if per_image is not None else reservation
        self._changed.set()
        self._changed = anyio.Event()
