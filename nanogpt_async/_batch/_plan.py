"""A dry run of a batch: what it would send and cost, checked against the image-models list.

Nothing paid is sent: the only request is ``GET /image-models`` (free). Every item is read,
checked (model known, size supported, ``n`` within the model's maximum) and priced from the
list; items an earlier run finished into the same folder are counted as skipped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from nanogpt_async._batch._budget import DEFAULT_MODEL, PriceList
from nanogpt_async._batch._prepare import END, Entries, Job, Preparer, next_entry

if TYPE_CHECKING:
    from nanogpt_async._batch._resume import Resume
    from nanogpt_async._batch._shards import Shard
    from nanogpt_async._batch._tally import Tally
    from nanogpt_async._output._responses import ImageModel

__all__ = ["BatchPlan", "PlanLine", "Planner", "plan_input"]

#: Distinct problems listed in a plan; more are counted, not listed.
_MAX_PROBLEMS = 20


@dataclass(frozen=True, slots=True)
class PlanLine:
    """The requests of one model and size in a `BatchPlan`.

    Attributes:
        model: The model id (NanoGPT's default when the items name none).
        size: The size asked for, or ``None`` for the model's default.
        requests: Requests that would be sent.
        images: Images they ask for.
        per_image: USD per image from the image-models pricing, when it has one.
        cost: ``per_image * images``, when priced.
    """

    model: str
    size: str | None
    requests: int
    images: int
    per_image: Decimal | None
    cost: Decimal | None


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """What a batch would do, from `Batch.dry_run`; nothing was sent.

    Attributes:
        items: Items read from the input.
        requests: Generation requests the batch would send (one per item to do).
        images: Images those requests ask for.
        skipped: Items an earlier run finished into the same folder (not sent again).
        invalid: Items that would fail before sending (bad fields...).
        estimated_cost: USD for the priced requests, from the image-models pricing.
        unpriced: Requests without a price in the list (their model is unknown to it).
        lines: Requests by model and size, with their prices.
        problems: What would fail or cost blind: unknown models, unsupported sizes, ``n``
            over a model's maximum, invalid items (each with how many items it concerns).
    """

    items: int
    requests: int
    images: int
    skipped: int
    invalid: int
    estimated_cost: Decimal
    unpriced: int
    lines: list[PlanLine] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the batch can run as it is: no problem found."""
        return not self.problems


class Planner:
    """Accumulates a `BatchPlan` one item at a time, in memory bounded by the variety."""

    def __init__(self, models: Iterable[ImageModel]) -> None:
        """Check and price against ``models`` (the image-models list)."""
        self._models = {model.id: model for model in models}
        self._prices = PriceList(self._models.values())
        self._lines: Counter[tuple[str, str | None]] = Counter()
        self._images: Counter[tuple[str, str | None]] = Counter()
        self._problems: Counter[str] = Counter()
        self.items = self.skipped = self.invalid = 0

    def add_request(self, body: Mapping[str, Any], n: int) -> None:
        """Count one request that would be sent, and check it against the list."""
        self.items += 1
        model = body.get("model")
        model = model if isinstance(model, str) else DEFAULT_MODEL
        size = body.get("size")
        size = size if isinstance(size, str) else None
        key = (model, size)
        self._lines[key] += 1
        self._images[key] += n
        known = self._models.get(model)
        if known is None:
            self._problems[f"model {model!r} is not in the image-models list"] += 1
            return
        if size is not None and known.resolutions and size not in known.resolutions:
            supported = ", ".join(known.resolutions)
            self._problems[f"model {model!r} does not offer size {size!r} ({supported})"] += 1
        if known.max_images is not None and n > known.max_images:
            self._problems[
                f"model {model!r} makes at most {known.max_images} images per request"
            ] += 1

    def add_skipped(self) -> None:
        """Count an item an earlier run finished."""
        self.items += 1
        self.skipped += 1

    def add_invalid(self, reason: str) -> None:
        """Count an item that fails before sending."""
        self.items += 1
        self.invalid += 1
        self._problems[f"invalid item: {reason}"] += 1

    def plan(self) -> BatchPlan:
        """The plan so far."""
        lines = []
        total = Decimal(0)
        unpriced = 0
        for (model, size), requests in sorted(self._lines.items(), key=lambda kv: str(kv[0])):
            images = self._images[(model, size)]
            per_image = self._prices.per_image(model, size)
            cost = per_image * images if per_image is not None else None
            if cost is None:
                unpriced += requests
            else:
                total += cost
            lines.append(PlanLine(model, size, requests, images, per_image, cost))
        problems = [
            f"{text} ({count} item{'s' if count != 1 else ''})"
            for text, count in self._problems.most_common(_MAX_PROBLEMS)
        ]
        if len(self._problems) > _MAX_PROBLEMS:
            problems.append(f"... and {len(self._problems) - _MAX_PROBLEMS} more kinds of problem")
        return BatchPlan(
            items=self.items,
            requests=sum(self._lines.values()),
            images=sum(self._images.values()),
            skipped=self.skipped,
            invalid=self.invalid,
            estimated_cost=total,
            unpriced=unpriced,
            lines=lines,
            problems=problems,
        )


async def plan_input(
    planner: Planner,
    entries: Entries,
    *,
    preparer: Preparer,
    resume: Resume,
    shard: Shard | None,
    tally: Tally,
) -> BatchPlan:
    """Read the whole input into ``planner`` (items prepared and resume-checked, none sent).

    Raises:
        Exception: what the input raised (a bad line, a repeated id), at once.
    """
    index = 0
    while (entry := await next_entry(entries)) is not END:
        prepared = await preparer.prepare(entry, index)
        index += 1
        if shard is not None and not shard.owns(prepared.index):
            continue
        tally.consumed += 1
        if isinstance(prepared, Job):
            prepared = await resume.resumed(prepared)
        if isinstance(prepared, Job):
            planner.add_request(prepared.body, prepared.n)
        elif prepared.status == "skipped":
            planner.add_skipped()
        else:
            planner.add_invalid(str(prepared.error))
    tally.input_read = True
    return planner.plan()
