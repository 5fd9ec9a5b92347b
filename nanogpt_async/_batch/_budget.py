"""Batch bookkeeping: the ``max_cost`` budget, its price estimates, and latency percentiles.

Every request is budgeted at an estimate *before* it is sent, and settled at what it really
cost after. An answer that does not say its price (``cost`` missing, not a number, negative),
or a request whose answer was lost after the server may have charged it, counts at its
estimate, never at $0: a budget must hold even against a server that never reports a price.

The estimate of one image is, in this order:

1. the image-models pricing for the item's model and size (fetched once when a budgeted
   batch starts); an unknown size or ``auto`` takes the model's highest price;
2. else the highest price per image observed so far in this run;
3. else there is none, and the item is not sent (a budgeted run with no estimate at all
   refuses to start).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from nanogpt_async._output._responses import ImageModel

__all__ = [
    "DEFAULT_MODEL",
    "SAMPLE_SIZE",
    "Budget",
    "PriceList",
    "Reservation",
    "Sample",
    "known_cost",
]

#: Latency percentiles come from a uniform sample of this many items.
SAMPLE_SIZE = 10_000
#: The model NanoGPT uses when a request names none (its documented server default).
DEFAULT_MODEL = "hidream"


def known_cost(value: object) -> Decimal | None:
    """``value`` as a USD amount when it is a real one: finite and not negative; else ``None``.

    A server may send ``cost`` missing, as text, ``NaN`` or negative: all of those mean "the
    price is unknown" here, so the caller budgets the estimate instead.

    Example:
        >>> known_cost(0.01), known_cost(float("nan")), known_cost(-1), known_cost(None)
        (Decimal('0.01'), None, None, None)
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return None
    return amount if amount.is_finite() and amount >= 0 else None


class Sample:
    """A uniform reservoir sample (and the exact maximum) of a stream of numbers.

    Memory stays at ``size`` numbers however many are added.
    """

    def __init__(self, size: int = SAMPLE_SIZE) -> None:
        """Keep at most ``size`` values."""
        self._size = size
        self._values: list[float] = []
        self._seen = 0
        self._rng = random.Random(0)
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


class PriceList:
    """USD per image by model and size, from the image-models pricing.

    Example:
        >>> from nanogpt_async import ImageModel
        >>> prices = PriceList([ImageModel("m", pricing={"1024*1024": 0.01, "2048*2048": 0.04})])
        >>> prices.per_image("m", "1024x1024"), prices.per_image("m", "auto")
        (Decimal('0.01'), Decimal('0.04'))
        >>> prices.per_image("typo", None) is None
        True
    """

    def __init__(self, models: Iterable[ImageModel]) -> None:
        """Index the prices of ``models`` (entries without a usable price are left out)."""
        self._prices: dict[str, dict[str, Decimal]] = {}
        for model in models:
            sizes = {}
            for key, value in model.pricing.items():
                price = known_cost(value)
                if price is not None:
                    sizes[key] = price
            if sizes:
                self._prices[model.id] = sizes

    def __len__(self) -> int:
        """How many models have a price."""
        return len(self._prices)

    def has_model(self, model: str | None) -> bool:
        """Whether ``model`` (``None``: the server default) has a price."""
        return (model or DEFAULT_MODEL) in self._prices

    def per_image(self, model: str | None, size: str | None) -> Decimal | None:
        """The price of one image of ``model`` at ``size``; ``None`` when the model is unpriced.

        ``model=None`` means NanoGPT's default model. A size without its own price (``auto``,
        none given, or one the list does not name) takes the model's highest price: an
        estimate may be high, never low.
        """
        sizes = self._prices.get(model or DEFAULT_MODEL)
        if not sizes:
            return None
        if isinstance(size, str):
            for key in (size.replace("x", "*"), size):
                if key in sizes:
                    return sizes[key]
        return max(sizes.values())


@dataclass(frozen=True, slots=True)
class Reservation:
    """What one admitted request holds of the budget until it settles."""

    per_image: Decimal
    images: int

    @property
    def amount(self) -> Decimal:
        """The reserved USD: the per-image estimate times the images asked for."""
        return self.per_image * self.images


#: What a request admitted without a budget holds (nothing).
_FREE = Reservation(Decimal(0), 1)


class Budget:
    """``max_cost`` bookkeeping: spent money, and estimates held by requests in flight.

    A request is admitted only if the money spent plus every in-flight reservation plus its own
    estimate stays within ``max_cost``; otherwise it waits for an in-flight request to settle,
    and when none is in flight the budget is reached (``admit`` answers ``None``).
    """

    def __init__(self, max_cost: Decimal | None, prices: PriceList | None = None) -> None:
        """Track spending against ``max_cost`` (``None``: no budget, only bookkeeping)."""
        self.max_cost = max_cost
        self.prices = prices
        self.spent = Decimal(0)  # charged, plus estimates for charges of unknown price
        self.reserved = Decimal(0)
        self.in_flight = 0
        #: Highest price per image observed in an answer so far.
        self.largest_per_image: Decimal | None = None
        #: Requests charged (or maybe charged) whose price was not stated: counted at estimates.
        self.unpriced = 0
        #: Set when a request settles, for admissions waiting on a full budget; made only when
        #: one waits (an event per settled item cost ~8 us of CPU for nothing: W2 profile).
        self._changed: anyio.Event | None = None

    def estimate(self, model: str | None, size: str | None) -> Decimal | None:
        """The budgeted price of one image of ``model`` at ``size`` (see the module doc)."""
        listed = self.prices.per_image(model, size) if self.prices is not None else None
        return listed if listed is not None else self.largest_per_image

    async def admit(self, per_image: Decimal | None, n: int) -> Reservation | None:
        """Reserve ``per_image * n`` for one request; ``None``: the budget is reached.

        Without a budget this admits at once. With one, ``per_image`` must be an estimate.
        """
        if self.max_cost is None:
            self.in_flight += 1
            return _FREE
        while True:
            if self.spent >= self.max_cost:
                return None
            if per_image is None:
                raise ValueError("a budgeted request needs a price estimate")
            reservation = Reservation(per_image, max(1, n))
            if self.spent + self.reserved + reservation.amount <= self.max_cost:
                self.in_flight += 1
                self.reserved += reservation.amount
                return reservation
            if self.in_flight == 0:
                return None  # not even one more fits, and nothing will free any budget
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()  # an in-flight request may cost less than reserved

    def settle(
        self, reservation: Reservation, cost: Decimal | None, images: int, *, charged: bool
    ) -> None:
        """An admitted request ended: turn its reservation into what it cost.

        Args:
            reservation: What `admit` gave it.
            cost: The price the answer stated, when it stated a real one.
            images: Images in the answer (or asked for, when there was none).
            charged: Whether it was (or may have been) charged: an answer came, or the
                request was sent and its answer lost. Counted at the estimate when ``cost``
                is unknown.
        """
        self.in_flight -= 1
        self.reserved -= reservation.amount
        images = max(1, images)
        if cost is not None:
            self.spent += cost
            per_image = cost / images
            if self.largest_per_image is None or per_image > self.largest_per_image:
                self.largest_per_image = per_image
        elif charged:
            self.spent += reservation.per_image * images
            self.unpriced += 1
        if self._changed is not None:
            self._changed.set()
            self._changed = None
